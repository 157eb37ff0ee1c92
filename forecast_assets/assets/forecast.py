"""forecasts/load_forecast: the next hours of load per device, from the best model a customer has."""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from forecast_assets import charts, paths, publication
from forecast_assets.assets.common import (
    GROUP,
    PROCESSING_POOL,
    StepEvent,
    blocked_customers,
    customer_ids,
    finish_step,
    job_failed,
    job_label,
    job_reports,
    job_tags,
    published_metadata,
    read_parquet,
    reused_metadata,
    reused_publications,
    stage_batch_file,
    stage_per_customer,
    stage_weather,
)
from forecast_assets.assets.model import load_forecast_model
from forecast_assets.assets.preprocessed import preprocessed_load
from forecast_assets.partitions import customers_partitions_def
from forecast_assets.publication import FORECASTS, PREPROCESSED
from forecast_core.sanity import forecast_problems
from resources.database import Database, ModelVersion
from resources.jobs import JobLauncher
from resources.jobs.requests import (
    PROCESSING_INPUT_ROOT,
    JobInput,
    JobOutput,
    job_name,
    processing_job_request,
    processing_local_path,
)
from resources.storage import ObjectStore, join_uri


class ForecastConfig(dg.Config):
    horizon_hours: float = Field(
        default=48,
        description="Hours to forecast after the last reading (at most the model's horizon; at "
        "most 168 for the seasonal-naive fallback).",
    )
    max_multiple_of_history: float = Field(
        default=10.0,
        description="forecast_sanity fails on a value above this multiple of the meter's own "
        "largest value in its history.",
    )


# Which model makes a customer's forecast, in order of preference.
Source = Literal["newest", "previous_approved", "seasonal_naive_fallback"]
FALLBACK_VERSION = "seasonal-naive"
KEY = dg.AssetKey(["forecasts", "load_forecast"])
# The check that keeps a forecast from being published when it fails.
BLOCKING_CHECKS = {"forecast_sanity"}


@dataclass(frozen=True)
class ModelChoice:
    source: Source
    model: ModelVersion | None
    why: str

    @property
    def version(self) -> str:
        return self.model.version if self.model is not None else FALLBACK_VERSION


def choose_model(database: Database, customer: str) -> ModelChoice:
    """The model that forecasts ``customer``: its newest version if Approved, else its latest
    Approved one, else seasonal naive (same time last week), which needs no model at all."""
    versions = database.model_versions(customer)  # newest first
    approved = next((m for m in versions if m.status == "Approved"), None)
    if versions and approved is versions[0]:
        return ModelChoice("newest", approved, f"newest model {approved.version} is Approved")
    newest = (
        f"newest model {versions[0].version} is {versions[0].status}" if versions else "no model"
    )
    if approved is not None:
        return ModelChoice(
            "previous_approved", approved, f"{newest}; {approved.version} is the latest Approved"
        )
    return ModelChoice(
        "seasonal_naive_fallback",
        None,
        f"{newest} and none is Approved; seasonal naive (same time last week) instead",
    )


@dg.asset(
    key=KEY,
    deps=[load_forecast_model, preprocessed_load],
    partitions_def=customers_partitions_def,
    group_name=GROUP,
    kinds={"sagemaker", "parquet", "postgres"},
    pool=PROCESSING_POOL,
    check_specs=[
        dg.AssetCheckSpec(
            "forecast_sanity",
            asset=KEY,
            blocking=True,
            partitions_def=customers_partitions_def,
            description="Every forecast value is finite, not negative and at most "
            "max_multiple_of_history times its meter's largest value so far; checked before the "
            "forecast is published.",
        )
    ],
)
def load_forecast(
    context: dg.AssetExecutionContext,
    config: ForecastConfig,
    store: ObjectStore,
    launcher: JobLauncher,
    database: Database,
) -> Iterator[StepEvent]:
    """Forecast load per device for the ``horizon_hours`` after the customer's last reading.

    Batch inference as a SageMaker Processing job (``containers/inference``). Every customer with
    preprocessed load is forecast: with its newest model if that is Approved, else with its
    latest Approved model, else with seasonal naive (same time last week); never with a
    rejected model. The forecast says which (``source``: newest, previous_approved,
    seasonal_naive_fallback) in its metadata, its file and the ``forecasts`` table. Grain: one
    row per device per interval, at the data's resolution: ``energy_kwh`` (the point forecast,
    P50), ``p10_kwh`` and ``p90_kwh`` (an interval meant to hold the actual load 8 times in 10,
    from the model's backtest errors), ``model_kind`` and ``weather_input`` (what weather a
    step used: ``not_used``, ``forecast``, ``observed``, or ``none_for_horizon`` when a model
    with weather features had no weather forecast for it; the metadata sums it up). A model the
    job cannot use (saved with an older feature spec) is replaced by seasonal naive, and the
    forecast says so.

    The forecast is checked (``forecast_sanity``) before anything is published; then its rows
    are stored in table ``forecasts`` in one transaction (a retried run replaces its own rows),
    and only after that commits does ``forecast.parquet`` become the customer's current version
    (``forecasts/<customer>/current.json``). A failed run leaves the last good forecast in both.
    Unchanged history, model, code and horizon reuse the current forecast. In a batch, a
    customer whose forecast fails (or fails its check) fails alone; the others are published.
    """
    customers = customer_ids(context)
    tables = publication.require(store, PREPROCESSED, customers, "cannot be forecast")
    choices = {c: choose_model(database, c) for c in customers}
    code_uri, entry = launcher.publish_code("inference")
    inputs = {
        c: publication.inputs_digest(
            history=tables[c].version,
            model=choices[c].version,
            source=choices[c].source,
            code=code_uri,
            horizon_hours=config.horizon_hours,
        )
        for c in customers
    }
    reused = reused_publications(store, FORECASTS, inputs)
    per_customer = {
        c: {
            **reused_metadata(p),
            **charts.forecast_metadata(
                read_parquet(store, p.uri(paths.FORECAST_FILE)),
                read_parquet(store, tables[c].uri("load.parquet")),
                c,
                choices[c].source,
            ),
        }
        for c, p in reused.items()
    }
    # Checked again with today's settings: reuse skips the job, not the check.
    checks = {
        c: [
            sanity_check(
                c,
                forecast_problems(
                    read_parquet(store, p.uri(paths.FORECAST_FILE)),
                    read_parquet(store, tables[c].uri("load.parquet")),
                    max_multiple=config.max_multiple_of_history,
                ),
                choices[c],
            )
        ]
        for c, p in reused.items()
    }
    to_run = [c for c in customers if c not in reused]
    for customer in to_run:
        if choices[customer].source != "newest":
            context.log.warning(f"customer '{customer}': {choices[customer].why}")
    if not to_run:
        failed = blocked_customers(checks, BLOCKING_CHECKS)
        per_customer = {c: m for c, m in per_customer.items() if c not in failed}
        yield from finish_step(context, per_customer, {}, checks, failed)
        return

    name = job_name("inference", job_label(to_run), context.run_id, context.retry_number)
    staging = paths.job_output(store, name, "forecast")
    issued_at = datetime.now(UTC).isoformat()
    with_model = {c: m for c in to_run if (m := choices[c].model) is not None}
    job_inputs: list[JobInput] = []
    if len(to_run) == 1:
        (customer,) = to_run
        choice = choices[customer]
        arguments = ["--customer-id", customer, "--source", choice.source]
        if choice.model is not None:
            arguments += ["--model-version", choice.model.version]
            job_inputs.append(JobInput("model", choice.model.model_uri))
        else:
            arguments += ["--fallback", "seasonal-naive"]
        job_inputs.append(JobInput("history", tables[customer].uri("load.parquet")))
        if paths.WEATHER_FILE in tables[customer].files:
            job_inputs.append(JobInput("weather", tables[customer].uri(paths.WEATHER_FILE)))
        staged = {customer: staging}
    else:
        entries = [
            {
                "customer_id": c,
                "model_version": choices[c].version if c in with_model else None,
                "source": choices[c].source,
            }
            for c in to_run
        ]
        arguments = ["--batch", f"{processing_local_path('input', 'batch')}/batch.json"]
        history_uris = {c: tables[c].uri("load.parquet") for c in to_run}
        job_inputs = [JobInput("batch", stage_batch_file(store, name, entries))]
        if with_model:
            model_uris = {c: m.model_uri for c, m in with_model.items()}
            job_inputs.append(
                JobInput("model", stage_per_customer(store, name, "model", model_uris))
            )
        job_inputs.append(
            JobInput("history", stage_per_customer(store, name, "history", history_uris))
        )
        job_inputs += stage_weather(store, name, tables, to_run)
        staged = {c: join_uri(staging, c) for c in to_run}
    request = processing_job_request(
        name=name,
        settings=launcher.settings_for("inference").for_batch(len(to_run), "inference"),
        role_arn=launcher.role_arn,
        entrypoint=["python3", f"{PROCESSING_INPUT_ROOT}/code/bootstrap.py", entry],
        arguments=[
            *arguments,
            "--model-dir",
            processing_local_path("input", "model"),
            "--history-dir",
            processing_local_path("input", "history"),
            "--weather-dir",
            processing_local_path("input", "weather"),
            "--output-dir",
            processing_local_path("output", "forecast"),
            "--horizon-hours",
            str(config.horizon_hours),
            "--issued-at",
            issued_at,
        ],
        inputs=[JobInput("code", code_uri), *launcher.dependency_inputs("inference"), *job_inputs],
        outputs=[JobOutput("forecast", staging)],
        tags=job_tags(context, to_run),
        platform=launcher.platform,
    )
    try:
        job = launcher.run_processing_job(
            context=context, request=request, extras={"customer_ids": to_run}
        )
    except dg.Failure as failure:
        # The job failed as a whole: its customers fail with its reason, on their partitions.
        failed = {**job_failed(failure, to_run), **blocked_customers(checks, BLOCKING_CHECKS)}
        per_customer = {c: m for c, m in per_customer.items() if c not in failed}
        yield from finish_step(context, per_customer, {}, checks, failed, cause=failure)
        return

    # Checked where the job left it, against the customer's own history, before publishing.
    reports = job_reports(job, to_run)
    failed = {c: reason for c, reason in job.failed_customers().items() if c in to_run}
    forecasts = {}
    for customer in to_run:
        if customer in failed:
            continue
        staged_file = join_uri(staged[customer], paths.FORECAST_FILE)
        if not store.exists(staged_file):
            failed[customer] = (
                f"customer '{customer}': the inference job {job.name} wrote no {staged_file}"
            )
            continue
        forecasts[customer] = (staged_file, read_parquet(store, staged_file))
        history = read_parquet(store, tables[customer].uri("load.parquet"))
        problems = forecast_problems(
            forecasts[customer][1], history, max_multiple=config.max_multiple_of_history
        )
        checks[customer] = [sanity_check(customer, problems, choices[customer])]
    failed.update(blocked_customers(checks, BLOCKING_CHECKS))
    per_customer = {c: m for c, m in per_customer.items() if c not in failed}

    for customer, (staged_file, forecast) in forecasts.items():
        if customer in failed:
            continue
        choice = choices[customer]
        made = made_by(forecast, choice, reports[customer])
        if made["source"] != choice.source:
            context.log.warning(f"customer '{customer}': {made['source_reason']}")
        if made["weather_input"].startswith("none for horizon"):
            context.log.warning(f"customer '{customer}': weather {made['weather_input']}")
        # The table first, in one transaction; the file becomes current only once it committed.
        rows = database.replace_forecast(customer, context.run_id, forecast)
        published = publication.publish(
            store,
            FORECASTS,
            customer,
            publication.new_version(name),
            sources={paths.FORECAST_FILE: staged_file},
            run_id=context.run_id,
            inputs=inputs[customer],
            info={
                "rows": rows,
                "devices": int(forecast["device_id"].nunique()),
                "start": forecast["timestamp"].min().isoformat(),
                "end": forecast["timestamp"].max().isoformat(),
                "total_kwh": round(float(forecast["energy_kwh"].sum()), 2),
                "total_p10_kwh": round(float(forecast["p10_kwh"].sum()), 2),
                "total_p90_kwh": round(float(forecast["p90_kwh"].sum()), 2),
                **made,
                "history_version": tables[customer].version,
                "issued_at": issued_at,
            },
        )
        per_customer[customer] = {
            **reports[customer],
            **published_metadata(published),
            **charts.forecast_metadata(
                forecast,
                read_parquet(store, tables[customer].uri("load.parquet")),
                customer,
                made["source"],  # what made the file, should the job have fallen back
            ),
            "reused": False,
        }
    yield from finish_step(
        context, per_customer, {**job.metadata(), "table": "forecasts"}, checks, failed
    )


def made_by(forecast: pd.DataFrame, choice: ModelChoice, report: dict[str, Any]) -> dict[str, str]:
    """Which model made the forecast, as its file says: normally the chosen one, but the job
    forecasts by seasonal naive when the chosen model cannot be used by this code (saved with
    an older feature spec), and reports why (``fallback_reason``)."""
    source = str(forecast["source"].iloc[0]) if len(forecast) else choice.source
    return {
        "source": source,
        "source_reason": reported_text(report, "fallback_reason") or choice.why,
        "model_version": str(forecast["model_version"].iloc[0])
        if len(forecast)
        else choice.version,
        "model_kind": str(forecast["model_kind"].iloc[0]) if "model_kind" in forecast else "",
        # One phrase for the whole forecast; the file and the table say it per step.
        "weather_input": reported_text(report, "weather_input") or weather_input_of(forecast),
    }


def reported_text(report: dict[str, Any], key: str) -> str:
    """A text the job reported: a metadata value (one customer's materialization) or a plain
    string (a batch's per-customer message); "" when it reported none."""
    value = report.get(key)
    if value is None:
        return ""
    return str(getattr(value, "value", value) or "")


def weather_input_of(forecast: pd.DataFrame) -> str:
    """The forecast's weather input from its column (a file of a job that did not report it)."""
    if "weather_input" not in forecast or forecast.empty:
        return ""
    values = sorted(set(forecast["weather_input"].astype(str)))
    return values[0] if len(values) == 1 else ", ".join(values)


def sanity_check(
    customer: str, problems: list[str], choice: ModelChoice | None = None
) -> dg.AssetCheckResult:
    """The forecast_sanity result of one customer's forecast."""
    made_by = f" by {choice.source} model {choice.version}" if choice is not None else ""
    return dg.AssetCheckResult(
        check_name="forecast_sanity",
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"customer '{customer}': the forecast{made_by} is implausible: "
        + "; ".join(problems)
        if problems
        else None,
        metadata={"customer": customer, "problems": len(problems)},
    )

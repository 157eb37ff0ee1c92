"""models/load_forecast_model: one customer's forecast model, trained by a SageMaker Training job."""

import io
import json
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from forecast_assets import charts, paths, publication
from forecast_assets.approval import history_table
from forecast_assets.assets.common import (
    GROUP,
    TRAINING_POOL,
    StepEvent,
    customer_ids,
    finish_step,
    job_failed,
    job_label,
    job_reports,
    job_tags,
    stage_batch_file,
    stage_per_customer,
    stage_weather,
    table_metadata,
)
from forecast_assets.assets.preprocessed import preprocessed_load
from forecast_assets.partitions import customers_partitions_def
from forecast_assets.publication import PREPROCESSED
from forecast_core.backtest import NAIVE_WEEK
from forecast_core.metrics import quality_gate
from resources.database import Database, ModelVersion
from resources.jobs import JobLauncher
from resources.jobs.requests import (
    JobInput,
    job_name,
    model_artifact_uri,
    output_data_uri,
    training_job_request,
)
from resources.storage import ObjectStore

KEY = dg.AssetKey(["models", "load_forecast_model"])


class TrainingConfig(dg.Config):
    """Hyperparameters (sent to the training job) and the quality gate (applied here)."""

    n_estimators: int = Field(default=100, description="Trees in the random forest.")
    max_depth: int | None = Field(default=None, description="Maximum tree depth; None grows fully.")
    min_samples_leaf: int = Field(default=5, description="Minimum samples per leaf.")
    max_features: float = Field(default=0.5, description="Share of features tried per split.")
    random_state: int = 42
    backtest_days: int = Field(
        default=28,
        description="Daily forecast origins of the rolling-origin backtest that chooses the model "
        "and feeds the gate (fewer when the history is short, at least 7).",
    )
    horizon_hours: int = Field(default=48, description="Longest horizon the model will forecast.")
    timezone: str = Field(
        default="Europe/Berlin", description="Local time zone for calendar features."
    )
    holiday_country: str = Field(
        default="DE", description="Country whose public holidays are a feature."
    )
    refit_full: bool = Field(default=True, description="Refit on all data after scoring.")
    max_wape_ratio: float = Field(
        default=1.0,
        description="Quality gate: the chosen model's backtest WAPE must be below this multiple "
        "of seasonal naive's (same time last week) on the same hours. 1.0: it must beat naive. "
        "A model that is seasonal naive itself (chosen when nothing beat it) is approved.",
    )
    min_r2: float | None = Field(
        default=None,
        description="Quality gate, optional: minimum R² on the backtest (the replaced workflow's "
        "0.7). Off by default: R² punishes noisy loads such as households even when the model "
        "beats naive clearly.",
    )
    auto_approve: bool = Field(
        default=True,
        description="Approve a model that passes its gate; otherwise it waits for manual approval.",
    )

    def hyperparameters(self) -> dict:
        gate_fields = {"max_wape_ratio", "min_r2", "auto_approve"}
        return {k: v for k, v in self.model_dump().items() if k not in gate_fields}


def read_training_outputs(
    store: ObjectStore, uri: str, members: dict[str, str]
) -> tuple[dict[str, tuple[dict, pd.DataFrame]], dict[str, str]]:
    """metrics.json and backtest.csv of each customer from a training job's output.tar.gz.

    ``members`` maps each customer to its folder in the archive ("" for a one-customer job).
    Returns what was found, and for each customer the job wrote nothing for, why.
    """
    found = {}
    missing = {}
    with tarfile.open(fileobj=io.BytesIO(store.read_bytes(uri))) as tar:
        names = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
        for customer, folder in members.items():
            try:
                metrics = json.load(tar.extractfile(names[f"{folder}metrics.json"]))  # type: ignore[arg-type]
                backtest = pd.read_csv(
                    tar.extractfile(names[f"{folder}backtest.csv"]),  # type: ignore[arg-type]
                    parse_dates=["origin", "timestamp"],
                )
            except KeyError as exc:
                missing[customer] = (
                    f"customer '{customer}': the training job wrote no {exc.args[0]} in {uri}"
                )
                continue
            found[customer] = (metrics, backtest)
    return found, missing


def split_model_archive(
    store: ObjectStore, archive_uri: str, job: str, customers: list[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Give each customer of a batch training job its own model.tar.gz; returns their URIs,
    and for each customer the job wrote no model for, why.

    The batch job's model directory holds a folder per customer. Each becomes a self-contained
    artifact at the place a one-customer job would have put it, so the model registry and
    inference never need to know the model was trained in a batch.
    """
    uris: dict[str, str] = {}
    missing: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "batch.tar.gz"
        store.download_file(archive_uri, local)
        with ExitStack() as stack:
            parts = {
                c: stack.enter_context(tarfile.open(Path(tmp) / f"{c}.tar.gz", "w:gz"))
                for c in customers
            }
            with tarfile.open(local) as tar:
                for member in tar:  # streamed: the batch archive is never held in memory
                    customer, _, inner = member.name.removeprefix("./").partition("/")
                    if customer in parts and inner and member.isfile():
                        member.name = inner
                        parts[customer].addfile(member, tar.extractfile(member))
        for customer in customers:
            with tarfile.open(Path(tmp) / f"{customer}.tar.gz") as part:
                if "model.joblib" not in part.getnames():
                    missing[customer] = (
                        f"customer '{customer}': the batch training job {job} wrote no model "
                        f"for it in {archive_uri}"
                    )
                    continue
            uris[customer] = paths.model_artifact(store, customer, job)
            store.upload_file(Path(tmp) / f"{customer}.tar.gz", uris[customer])
    return uris, missing


def backtest_table(backtest: pd.DataFrame, timezone: str) -> dg.TableMetadataValue:
    """Each backtest origin's forecast against actual over its horizon, for the UI."""
    by_origin = backtest.groupby("origin")[["actual", "forecast", "baseline"]].sum()
    records = [
        {
            "origin": str(pd.Timestamp(origin).tz_convert(timezone)),
            "actual_kwh": round(float(row.actual), 1),
            "forecast_kwh": round(float(row.forecast), 1),
            "baseline_kwh": round(float(row.baseline), 1),
            "forecast_error_pct": round(float((row.forecast - row.actual) / row.actual * 100), 2)
            if row.actual
            else 0.0,
        }
        for origin, row in by_origin.iterrows()
    ]
    return table_metadata(
        records,
        {
            "origin": "string",
            "actual_kwh": "float",
            "forecast_kwh": "float",
            "baseline_kwh": "float",
            "forecast_error_pct": "float",
        },
    )


@dg.asset(
    key=KEY,
    deps=[preprocessed_load],
    partitions_def=customers_partitions_def,
    group_name=GROUP,
    kinds={"sagemaker", "scikitlearn"},
    pool=TRAINING_POOL,
    check_specs=[
        dg.AssetCheckSpec(
            "quality_gate",
            asset=KEY,
            partitions_def=customers_partitions_def,
            description="The chosen model must beat the seasonal-naive baseline (same time last "
            "week) on the rolling-origin backtest: WAPE below max_wape_ratio times naive's (and "
            "R² at least min_r2, if set); a model that is seasonal naive week itself passes. A "
            "model that fails is recorded as Rejected and never forecasts; the customer keeps "
            "being forecast from its previous approved model, or seasonal naive.",
        )
    ],
)
def load_forecast_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    store: ObjectStore,
    launcher: JobLauncher,
    database: Database,
) -> Iterator[StepEvent]:
    """The customer's per-device load forecast up to ``horizon_hours``, of the kind a backtest
    chose: random forests (one per day of the horizon) or seasonal naive (week or day).

    Trained by a SageMaker Training job (``containers/training``) on the current
    ``preprocessed/load`` version. The candidates forecast from up to ``backtest_days`` daily
    origins, each from data before it only, and the one with the lowest WAPE on the customer's
    total load is the model; it is gated against seasonal naive (same time last week) on the
    same hours. When the customer has weather (``weather.parquet`` in its preprocessed version)
    covering its history, the tree candidates also get weather features, and the metadata says
    whether they did (``weather_features``, ``weather_note``, ``backtest_weather``).
    Artifact: ``models/<customer>/<job>/output/model.tar.gz`` with the model, its
    feature spec, normalization parameters and metrics. Each version is recorded in the
    model registry (table ``model_versions``), which is where models are published: Approved
    when it passes the quality gate, else Rejected (a recorded outcome, not a failure: the
    forecast goes on from the previous approved model or seasonal naive); with ``auto_approve``
    off a passing model waits for a person's decision (``model_approval_job`` or
    ``forecast-models approve``). The materialization shows who decided and why, the rejection
    reason, and the customer's recent versions (``model_history``). A re-run on the same data
    version with the same code and hyperparameters reuses the registered version. In a batch,
    a customer whose fit fails fails alone; the others are registered.
    """
    customers = customer_ids(context)
    tables = publication.require(store, PREPROCESSED, customers, "cannot be trained")
    code_uri, program = launcher.publish_code("training")
    hyperparameters = config.hyperparameters()
    inputs = {
        # The gate's settings too: a model is approved or rejected under them.
        c: publication.inputs_digest(
            data=tables[c].version,
            code=code_uri,
            hyperparameters=hyperparameters,
            gate=[config.max_wape_ratio, config.min_r2, config.auto_approve],
        )
        for c in customers
    }
    per_customer: dict[str, dict[str, Any]] = {}
    checks: dict[str, list[dg.AssetCheckResult]] = {}
    for customer in customers:
        known = database.model_by_inputs(customer, inputs[customer])
        if known is not None:
            per_customer[customer], checks[customer] = reused_model(
                known, database.model_versions(customer)
            )
    to_run = [c for c in customers if c not in per_customer]
    if not to_run:
        yield from finish_step(context, per_customer, {}, checks, {})
        return

    name = job_name("training", job_label(to_run), context.run_id, context.retry_number)
    if len(to_run) == 1:
        (customer,) = to_run
        hyperparameters["customer_id"] = customer
        channels = [JobInput("train", tables[customer].uri("load.parquet"))]
        if paths.WEATHER_FILE in tables[customer].files:
            channels.append(JobInput("weather", tables[customer].uri(paths.WEATHER_FILE)))
        output_uri = paths.models_prefix(store, customer)
        checkpoint_uri = paths.checkpoints(store, customer)
    else:
        sources = {c: tables[c].uri("load.parquet") for c in to_run}
        channels = [
            JobInput("train", stage_per_customer(store, name, "train", sources)),
            JobInput("batch", stage_batch_file(store, name, [{"customer_id": c} for c in to_run])),
        ]
        channels += stage_weather(store, name, tables, to_run)
        # The batch's archives stay with the job; each customer's model is split out below.
        output_uri = store.uri("jobs")
        checkpoint_uri = store.uri("checkpoints", "batches", name)
    request = training_job_request(
        name=name,
        settings=launcher.settings_for("training").for_batch(len(to_run), "training"),
        role_arn=launcher.role_arn,
        program=program,
        source_uri=code_uri,
        hyperparameters=hyperparameters,
        channels=[*channels, *launcher.dependency_inputs("training")],
        output_uri=output_uri,
        tags=job_tags(context, to_run),
        platform=launcher.platform,
        checkpoint_uri=checkpoint_uri,
    )
    try:
        job = launcher.run_training_job(
            context=context, request=request, extras={"customer_ids": to_run}
        )
    except dg.Failure as failure:
        # The job failed as a whole: its customers fail with its reason, on their partitions.
        failed = job_failed(failure, to_run)
        yield from finish_step(context, per_customer, {}, checks, failed, cause=failure)
        return

    # Where this job put them: a relaunched attempt may carry another name than the request.
    archive_uri = job.output_uris.get("model") or model_artifact_uri(request)
    outputs_uri = job.output_uris.get("output") or output_data_uri(request)
    # A batch customer whose fit failed has no model and no outputs; the others go on.
    failed = {c: reason for c, reason in job.failed_customers().items() if c in to_run}
    if len(to_run) == 1:
        model_uris = {to_run[0]: archive_uri}
        outputs, missing = read_training_outputs(store, outputs_uri, {to_run[0]: ""})
    else:
        model_uris, no_model = split_model_archive(store, archive_uri, job.name, to_run)
        outputs, missing = read_training_outputs(store, outputs_uri, {c: f"{c}/" for c in to_run})
        missing = {**no_model, **missing}
    failed = {**missing, **failed}  # the job's own reason, where it gave one

    reports = job_reports(job, to_run)
    for customer in to_run:
        if customer in failed:
            continue
        summary, backtest = outputs[customer]
        summary = {**summary, "data_version": tables[customer].version}
        metadata, checks[customer] = register(
            context,
            config,
            database,
            customer,
            job.name,
            model_uris[customer],
            summary,
            backtest,
            inputs[customer],
        )
        per_customer[customer] = {**reports[customer], **metadata}
    yield from finish_step(context, per_customer, job.metadata(), checks, failed)


def register(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    database: Database,
    customer: str,
    version: str,
    model_uri: str,
    summary: dict,
    backtest: pd.DataFrame,
    inputs: str,
) -> tuple[dict[str, Any], list[dg.AssetCheckResult]]:
    """Gate one customer's new model and record it in the model registry.

    Returns the materialization's metadata and the quality_gate check result. A model that
    fails its gate is recorded as Rejected and said so in one line of the run's log.
    """
    model_metrics, baseline = summary["model"], summary["baseline_seasonal_naive"]
    gate = quality_gate(
        model_metrics,
        baseline,
        max_wape_ratio=config.max_wape_ratio,
        min_r2=config.min_r2,
        is_baseline=summary.get("model_kind") == NAIVE_WEEK,
    )
    summary = {
        **summary,
        "gate": {
            "summary": gate.summary,
            "max_wape_ratio": config.max_wape_ratio,
            "min_r2": config.min_r2,
        },
    }
    registered = database.register_model(
        customer_id=customer,
        version=version,
        model_uri=model_uri,
        metrics=summary,
        gate_passed=gate.passed,
        gate_reasons=gate.reasons,
        run_id=context.run_id,
        auto_approve=config.auto_approve,
        inputs_digest=inputs,
    )
    if not gate.passed:
        context.log.warning(
            f"customer '{customer}': model {version} REJECTED by its quality gate: "
            f"{'; '.join(gate.reasons)}. It will not forecast; the customer is forecast from its "
            "previous approved model, or seasonal naive if it has none."
        )
    elif registered.status == "PendingManualApproval":
        context.log.info(
            f"customer '{customer}': model {version} passed its quality gate and waits for "
            "approval (auto_approve is off): launch model_approval_job, or run "
            f"`forecast-models approve {customer} {version} --reason ...`"
        )
    metadata = {
        "model_version": version,
        "model_uri": dg.MetadataValue.url(model_uri),
        "approval_status": registered.status,
        **decision_metadata(registered, database.model_versions(customer)),
        **score_metadata(summary),
        "backtest": backtest_table(backtest, config.timezone),
        "backtest_chart": dg.MetadataValue.md(
            charts.backtest_chart(backtest, customer, config.timezone)
        ),
        "backtest_origins": summary["backtest_origins"],
        "backtest_hours": summary["backtest_hours"],
        "train_rows": summary["train_rows"],
    }
    return {**metadata, "gate": gate.summary, "reused": False}, [
        gate_check(customer, registered, gate.passed, gate.summary)
    ]


def score_metadata(summary: dict[str, Any]) -> dict[str, Any]:
    """The chosen model's kind and its, seasonal naive's and every candidate's backtest
    scores, as the materialization shows them."""
    return {
        "model_kind": summary.get("model_kind", "forest"),
        **{
            f"candidate_{c}_wape": round(s["wape"], 4)
            for c, s in summary.get("candidates", {}).items()
        },
        **{f"model_{k}": round(v, 4) for k, v in summary["model"].items() if k != "n"},
        **{
            f"baseline_{k}": round(v, 4)
            for k, v in summary["baseline_seasonal_naive"].items()
            if k != "n"
        },
        "wape_ratio_model_to_baseline": round(summary["wape_ratio"], 4),
        # Whether the model had weather features (and why not); models from before weather: no.
        "weather_features": bool(summary.get("weather", {}).get("used", False)),
        "weather_note": str(summary.get("weather", {}).get("note", "")),
    }


def gate_check(
    customer: str, model: ModelVersion, passed: bool, summary: str
) -> dg.AssetCheckResult:
    """The quality_gate result of one customer's model version, as the UI shows it: for a
    rejected model the reasons first, in plain words."""
    metrics, baseline = model.metrics["model"], model.metrics["baseline_seasonal_naive"]
    if passed:
        description = f"customer '{customer}', model {model.version}: {summary}"
        if model.status != "Approved":
            description += f" (status {model.status})"
    else:
        reasons = "; ".join(model.gate_reasons) or summary
        description = (
            f"customer '{customer}', model {model.version} rejected: {reasons}. It does not "
            "forecast; the previous approved model or seasonal naive does."
        )
    return dg.AssetCheckResult(
        check_name="quality_gate",
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "customer": customer,
            "model_version": model.version,
            "approval_status": model.status,
            "wape": round(metrics["wape"], 3),
            "baseline_wape": round(baseline["wape"], 3),
            "r2": round(metrics["r2"], 4),
        },
    )


def decision_metadata(model: ModelVersion, history: Sequence[ModelVersion]) -> dict[str, Any]:
    """Who decided the version's status and why (the rejection reason plainly, for a rejected
    one), and the customer's recent versions as a table."""
    metadata: dict[str, Any] = {
        "decided_by": model.decided_by or "(nobody yet)",
        "decision_reason": model.decision_reason or "(none yet)",
    }
    if model.status == "Rejected":
        metadata["rejection_reason"] = model.decision_reason or "; ".join(model.gate_reasons)
    if history:
        metadata["model_history"] = history_table(history)
    return metadata


def reused_model(
    model: ModelVersion, history: Sequence[ModelVersion] = ()
) -> tuple[dict[str, Any], list[dg.AssetCheckResult]]:
    """A registered version trained on the same data, code and hyperparameters: no new job."""
    summary = model.metrics.get("gate", {}).get("summary") or "; ".join(model.gate_reasons)
    return {
        **score_metadata(model.metrics),
        "model_version": model.version,
        "model_uri": dg.MetadataValue.url(model.model_uri),
        "approval_status": model.status,
        **decision_metadata(model, history),
        "gate": summary or "passed",
        "reused": True,
        "reused_note": f"data, code and hyperparameters unchanged: model {model.version} "
        "reused, no training job run and no new version registered",
    }, [gate_check(model.customer_id, model, model.gate_passed, summary or "passed")]

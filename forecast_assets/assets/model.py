"""models/load_forecast_model: one customer's forecast model, trained by a SageMaker Training job."""

import io
import json
import tarfile
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from forecast_assets import paths
from forecast_assets.assets.common import (
    GROUP,
    TRAINING_POOL,
    customer_ids,
    job_label,
    job_reports,
    job_tags,
    materialize_result,
    require_inputs,
    stage_batch_file,
    stage_per_customer,
)
from forecast_assets.assets.preprocessed import preprocessed_load
from forecast_assets.partitions import customers_partitions_def
from forecast_core.metrics import quality_gate
from resources.database import Database
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
    holdout_days: int = Field(default=28, description="Most recent days held out for scoring.")
    horizon_hours: int = Field(default=48, description="Longest horizon the model will forecast.")
    timezone: str = Field(
        default="Europe/Berlin", description="Local time zone for calendar features."
    )
    holiday_country: str = Field(
        default="DE", description="Country whose public holidays are a feature."
    )
    refit_full: bool = Field(default=True, description="Refit on all data after scoring.")
    min_r2: float = Field(default=0.7, description="Quality gate: minimum R² on the holdout.")
    require_beating_baseline: bool = Field(
        default=True, description="Quality gate: WAPE must beat same-time-last-week."
    )
    auto_approve: bool = Field(
        default=True,
        description="Approve a model that passes its gate; otherwise it waits for manual approval.",
    )

    def hyperparameters(self) -> dict:
        gate_fields = {"min_r2", "require_beating_baseline", "auto_approve"}
        return {k: v for k, v in self.model_dump().items() if k not in gate_fields}


def read_training_outputs(
    store: ObjectStore, uri: str, members: dict[str, str]
) -> dict[str, tuple[dict, pd.DataFrame]]:
    """metrics.json and holdout.csv of each customer from a training job's output.tar.gz.

    ``members`` maps each customer to its folder in the archive ("" for a one-customer job).
    """
    found = {}
    with tarfile.open(fileobj=io.BytesIO(store.read_bytes(uri))) as tar:
        names = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
        for customer, folder in members.items():
            try:
                metrics = json.load(tar.extractfile(names[f"{folder}metrics.json"]))  # type: ignore[arg-type]
                holdout = pd.read_csv(
                    tar.extractfile(names[f"{folder}holdout.csv"]),  # type: ignore[arg-type]
                    parse_dates=["timestamp"],
                )
            except KeyError as exc:
                raise dg.Failure(
                    description=f"customer '{customer}': the training job wrote no {exc.args[0]} "
                    f"in {uri}"
                ) from exc
            found[customer] = (metrics, holdout)
    return found


def split_model_archive(
    store: ObjectStore, archive_uri: str, job: str, customers: list[str]
) -> dict[str, str]:
    """Give each customer of a batch training job its own model.tar.gz; returns their URIs.

    The batch job's model directory holds a folder per customer. Each becomes a self-contained
    artifact at the place a one-customer job would have put it, so the model registry and
    inference never need to know the model was trained in a batch.
    """
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
        uris = {}
        for customer in customers:
            with tarfile.open(Path(tmp) / f"{customer}.tar.gz") as part:
                if "model.joblib" not in part.getnames():
                    raise dg.Failure(
                        description=f"customer '{customer}': the batch training job {job} "
                        f"wrote no model for it in {archive_uri}"
                    )
            uris[customer] = paths.model_artifact(store, customer, job)
            store.upload_file(Path(tmp) / f"{customer}.tar.gz", uris[customer])
    return uris


def holdout_table(holdout: pd.DataFrame, timezone: str) -> dg.TableMetadataValue:
    """Forecast against actual over the holdout, one row per local day, for the UI."""
    local_day = holdout["timestamp"].dt.tz_convert(timezone).dt.date
    daily = holdout.groupby(local_day)[["actual", "forecast", "baseline"]].sum()
    records = [
        dg.TableRecord(
            {
                "day": str(day),
                "actual_kwh": round(float(row.actual), 1),
                "forecast_kwh": round(float(row.forecast), 1),
                "baseline_kwh": round(float(row.baseline), 1),
                "forecast_error_pct": round(
                    float((row.forecast - row.actual) / row.actual * 100), 2
                )
                if row.actual
                else 0.0,
            }
        )
        for day, row in daily.iterrows()
    ]
    return dg.MetadataValue.table(
        records=records,
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("day", "string"),
                dg.TableColumn("actual_kwh", "float"),
                dg.TableColumn("forecast_kwh", "float"),
                dg.TableColumn("baseline_kwh", "float"),
                dg.TableColumn("forecast_error_pct", "float"),
            ]
        ),
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
            blocking=True,
            description="R² on the holdout at least min_r2, and WAPE better than the seasonal-naive "
            "baseline. Blocks forecasting from a model that fails.",
        )
    ],
)
def load_forecast_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    store: ObjectStore,
    launcher: JobLauncher,
    database: Database,
) -> dg.MaterializeResult:
    """A RandomForestRegressor forecasting the customer's per-device load up to ``horizon_hours``.

    Trained by a SageMaker Training job (``containers/training``) on ``preprocessed/load`` with
    lag and calendar features (local time, public holidays). Scored on the last
    ``holdout_days`` (time-ordered) against a seasonal-naive baseline (same time last week).
    Artifact: ``models/<customer>/<job>/output/model.tar.gz`` with the model, its feature spec,
    normalization parameters and metrics. Each version is recorded in the model registry
    (table ``model_versions``): Approved when it passes the quality gate, else Rejected.
    """
    customers = customer_ids(context)
    require_inputs(
        store,
        customers,
        lambda c: paths.preprocessed(store, c),
        "preprocessed/load",
        "cannot be trained",
    )
    code_uri, program = launcher.publish_code("training")
    name = job_name("training", job_label(customers), context.run_id, context.retry_number)
    hyperparameters = config.hyperparameters()
    if len(customers) == 1:
        (customer,) = customers
        hyperparameters["customer_id"] = customer
        channels = [JobInput("train", paths.preprocessed(store, customer))]
        output_uri = paths.models_prefix(store, customer)
        checkpoint_uri = paths.checkpoints(store, customer)
    else:
        sources = {c: paths.preprocessed(store, c) for c in customers}
        channels = [
            JobInput("train", stage_per_customer(store, name, "train", sources)),
            JobInput(
                "batch", stage_batch_file(store, name, [{"customer_id": c} for c in customers])
            ),
        ]
        # The batch's archives stay with the job; each customer's model is split out below.
        output_uri = store.uri("jobs")
        checkpoint_uri = store.uri("checkpoints", "batches", name)
    request = training_job_request(
        name=name,
        settings=launcher.settings_for("training").for_batch(len(customers), "training"),
        role_arn=launcher.role_arn,
        program=program,
        source_uri=code_uri,
        hyperparameters=hyperparameters,
        channels=channels,
        output_uri=output_uri,
        tags=job_tags(context, customers),
        platform=launcher.platform,
        checkpoint_uri=checkpoint_uri,
    )
    job = launcher.run_training_job(
        context=context, request=request, extras={"customer_ids": customers}
    )

    # Where this job put them: a relaunched attempt may carry another name than the request.
    archive_uri = job.output_uris.get("model") or model_artifact_uri(request)
    outputs_uri = job.output_uris.get("output") or output_data_uri(request)
    if len(customers) == 1:
        model_uris = {customers[0]: archive_uri}
        outputs = read_training_outputs(store, outputs_uri, {customers[0]: ""})
    else:
        model_uris = split_model_archive(store, archive_uri, job.name, customers)
        outputs = read_training_outputs(store, outputs_uri, {c: f"{c}/" for c in customers})

    reports = job_reports(job, customers)
    per_customer, checks = {}, {}
    for customer in customers:
        summary, holdout = outputs[customer]
        per_customer[customer], checks[customer] = register(
            context, config, database, customer, job.name, model_uris[customer], summary, holdout
        )
        per_customer[customer] = {**reports[customer], **per_customer[customer]}
    return materialize_result(context, per_customer, job.metadata(), checks)


def register(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    database: Database,
    customer: str,
    version: str,
    model_uri: str,
    summary: dict,
    holdout: pd.DataFrame,
) -> tuple[dict[str, Any], list[dg.AssetCheckResult]]:
    """Gate one customer's new model and record it in the model registry.

    Returns the materialization's metadata and the quality_gate check result.
    """
    model_metrics, baseline = summary["model"], summary["baseline_seasonal_naive"]
    gate = quality_gate(
        model_metrics,
        baseline,
        min_r2=config.min_r2,
        require_beating_baseline=config.require_beating_baseline,
    )
    registered = database.register_model(
        customer_id=customer,
        version=version,
        model_uri=model_uri,
        metrics=summary,
        gate_passed=gate.passed,
        gate_reasons=gate.reasons,
        run_id=context.run_id,
        auto_approve=config.auto_approve,
    )
    if not gate.passed:
        context.log.warning(
            f"customer '{customer}': model {version} failed its quality gate: {'; '.join(gate.reasons)}"
        )
    metadata = {
        "model_version": version,
        "model_uri": dg.MetadataValue.url(model_uri),
        "approval_status": registered.status,
        **{f"model_{k}": round(v, 4) for k, v in model_metrics.items() if k != "n"},
        **{f"baseline_{k}": round(v, 4) for k, v in baseline.items() if k != "n"},
        "wape_ratio_model_to_baseline": round(summary["wape_ratio"], 4),
        "holdout": holdout_table(holdout, config.timezone),
        "holdout_hours": summary["holdout_hours"],
        "train_rows": summary["train_rows"],
    }
    check = dg.AssetCheckResult(
        check_name="quality_gate",
        passed=gate.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description="passed" if gate.passed else "; ".join(gate.reasons),
        metadata={
            "r2": round(model_metrics["r2"], 4),
            "min_r2": config.min_r2,
            "wape": round(model_metrics["wape"], 3),
            "baseline_wape": round(baseline["wape"], 3),
            "model_version": version,
        },
    )
    return metadata, [check]

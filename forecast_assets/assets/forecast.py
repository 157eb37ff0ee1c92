"""forecasts/load_forecast: the next hours of load per device, from the latest approved model."""

from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from forecast_assets import paths
from forecast_assets.assets.common import (
    GROUP,
    PROCESSING_POOL,
    customer_ids,
    fail_for_customers,
    job_label,
    job_reports,
    job_tags,
    materialize_result,
    promote,
    read_parquet,
    stage_batch_file,
    stage_per_customer,
)
from forecast_assets.assets.model import load_forecast_model
from forecast_assets.assets.preprocessed import preprocessed_load
from forecast_assets.partitions import customers_partitions_def
from resources.database import Database
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
        description="Hours to forecast after the last reading (at most the model's horizon).",
    )


@dg.asset(
    key=["forecasts", "load_forecast"],
    deps=[load_forecast_model, preprocessed_load],
    partitions_def=customers_partitions_def,
    group_name=GROUP,
    kinds={"sagemaker", "parquet", "postgres"},
    pool=PROCESSING_POOL,
)
def load_forecast(
    context: dg.AssetExecutionContext,
    config: ForecastConfig,
    store: ObjectStore,
    launcher: JobLauncher,
    database: Database,
) -> dg.MaterializeResult:
    """Forecast load per device for the ``horizon_hours`` after the customer's last reading.

    Batch inference as a SageMaker Processing job (``containers/inference``) with the
    customer's most recent model whose quality gate passed and that is Approved in the model
    registry; never from a rejected one. Grain: one row per device per interval, at the data's
    resolution. Published at ``forecasts/<customer>/forecast.parquet`` and in table
    ``forecasts`` (a retried run replaces its own rows).
    """
    customers = customer_ids(context)
    models = {c: database.latest_approved_model(c) for c in customers}
    fail_for_customers(
        {
            c: f"customer '{c}': no approved model to forecast with; materialize "
            "models/load_forecast_model (its quality gate must pass)"
            for c, model in models.items()
            if model is None
        },
        len(customers),
        "cannot be forecast",
    )
    approved = {c: model for c, model in models.items() if model is not None}
    code_uri, entry = launcher.publish_code("inference")
    name = job_name("inference", job_label(customers), context.run_id, context.retry_number)
    staging = paths.job_output(store, name, "forecast")
    issued_at = datetime.now(UTC).isoformat()
    if len(customers) == 1:
        (customer,) = customers
        arguments = ["--customer-id", customer, "--model-version", approved[customer].version]
        inputs = [
            JobInput("model", approved[customer].model_uri),
            JobInput("history", paths.preprocessed(store, customer)),
        ]
        staged = {customer: staging}
    else:
        entries = [{"customer_id": c, "model_version": approved[c].version} for c in customers]
        arguments = ["--batch", f"{processing_local_path('input', 'batch')}/batch.json"]
        model_uris = {c: approved[c].model_uri for c in customers}
        history_uris = {c: paths.preprocessed(store, c) for c in customers}
        inputs = [
            JobInput("batch", stage_batch_file(store, name, entries)),
            JobInput("model", stage_per_customer(store, name, "model", model_uris)),
            JobInput("history", stage_per_customer(store, name, "history", history_uris)),
        ]
        staged = {c: join_uri(staging, c) for c in customers}
    request = processing_job_request(
        name=name,
        settings=launcher.settings_for("inference").for_batch(len(customers), "inference"),
        role_arn=launcher.role_arn,
        entrypoint=["python3", f"{PROCESSING_INPUT_ROOT}/code/bootstrap.py", entry],
        arguments=[
            *arguments,
            "--model-dir",
            processing_local_path("input", "model"),
            "--history-dir",
            processing_local_path("input", "history"),
            "--output-dir",
            processing_local_path("output", "forecast"),
            "--horizon-hours",
            str(config.horizon_hours),
            "--issued-at",
            issued_at,
        ],
        inputs=[JobInput("code", code_uri), *inputs],
        outputs=[JobOutput("forecast", staging)],
        tags=job_tags(context, customers),
        platform=launcher.platform,
    )
    job = launcher.run_processing_job(
        context=context, request=request, extras={"customer_ids": customers}
    )

    reports = job_reports(job, customers)
    per_customer = {}
    for customer in customers:
        target = paths.forecast(store, customer)
        promote(store, staged[customer], {"forecast.parquet": target})
        forecast = read_parquet(store, target)
        rows = database.replace_forecast(customer, context.run_id, forecast)
        per_customer[customer] = {
            **reports[customer],
            "rows": rows,
            "devices": int(forecast["device_id"].nunique()),
            "start": forecast["timestamp"].min().isoformat(),
            "end": forecast["timestamp"].max().isoformat(),
            "total_kwh": round(float(forecast["energy_kwh"].sum()), 2),
            "model_version": approved[customer].version,
            "uri": dg.MetadataValue.url(target),
            "dagster/row_count": rows,
        }
    return materialize_result(
        context, per_customer, {**job.metadata(), "issued_at": issued_at, "table": "forecasts"}
    )

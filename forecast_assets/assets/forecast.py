"""forecasts/load_forecast: the next hours of load per device, from the latest approved model."""

from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from forecast_assets import paths
from forecast_assets.assets.common import GROUP, customer_id, job_tags, promote, read_parquet
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
from resources.storage import ObjectStore


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
    customer = customer_id(context)
    model = database.latest_approved_model(customer)
    if model is None:
        raise dg.Failure(
            description=f"customer '{customer}': no approved model to forecast with; materialize "
            "models/load_forecast_model (its quality gate must pass)"
        )
    code_uri, entry = launcher.publish_code("inference")
    name = job_name("inference", customer, context.run_id, context.retry_number)
    staging = paths.job_output(store, name, "forecast")
    issued_at = datetime.now(UTC).isoformat()
    request = processing_job_request(
        name=name,
        settings=launcher.settings_for("inference"),
        role_arn=launcher.role_arn,
        entrypoint=["python3", f"{PROCESSING_INPUT_ROOT}/code/bootstrap.py", entry],
        arguments=[
            "--customer-id",
            customer,
            "--model-version",
            model.version,
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
        inputs=[
            JobInput("code", code_uri),
            JobInput("model", model.model_uri),
            JobInput("history", paths.preprocessed(store, customer)),
        ],
        outputs=[JobOutput("forecast", staging)],
        tags=job_tags(context, customer),
        platform=launcher.platform,
    )
    job = launcher.run_processing_job(
        context=context, request=request, extras={"customer_id": customer}
    )

    target = paths.forecast(store, customer)
    promote(store, staging, {"forecast.parquet": target})
    forecast = read_parquet(store, target)
    rows = database.replace_forecast(customer, context.run_id, forecast)
    return dg.MaterializeResult(
        metadata={
            **job.reported_metadata(),
            **job.metadata(),
            "rows": rows,
            "devices": int(forecast["device_id"].nunique()),
            "start": forecast["timestamp"].min().isoformat(),
            "end": forecast["timestamp"].max().isoformat(),
            "total_kwh": round(float(forecast["energy_kwh"].sum()), 2),
            "model_version": model.version,
            "issued_at": issued_at,
            "uri": dg.MetadataValue.url(target),
            "table": "forecasts",
            "dagster/row_count": rows,
        }
    )

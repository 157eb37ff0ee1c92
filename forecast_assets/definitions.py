"""The only place that builds the code location's ``Definitions``.

Resources are chosen here, once, by environment (see ``forecast_assets.environment``): every
asset asks for ``store``, ``launcher`` and ``database`` by name (the approval job and the model
registry sensor for ``registry``) and never knows which implementation it got.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource

from forecast_assets.approval import model_registry_sensor
from forecast_assets.assets import ALL_ASSETS, REPORT_ASSETS, customer_overview_sensor
from forecast_assets.continuation import batch_continuation_sensor
from forecast_assets.environment import (
    NEW_FILES_QUEUE_VAR,
    Environment,
    backfill_batch_size,
    current_environment,
    new_files_queue_url,
)
from forecast_assets.jobs import ALL_JOBS
from forecast_assets.schedules import daily_forecast_schedule, weekly_training_schedule
from forecast_assets.sqs_sensor import new_file_sensors
from resources.database import Database
from resources.jobs import LocalJobLauncher
from resources.jobs.sagemaker import SageMakerJobLauncher
from resources.jobs.settings import JobName, JobSettings, PlatformSettings
from resources.queue import SqsQueue
from resources.registry import LocalModelRegistry, SageMakerModelRegistry
from resources.storage import LocalObjectStore, S3ObjectStore


def _job_settings_from_env(job: JobName) -> JobSettings:
    """One job's compute settings, from FORECAST_<JOB>_* variables (see .env.example)."""
    var = f"FORECAST_{job.upper()}"
    fields: dict[str, Any] = {
        "image_uri": dg.EnvVar(f"{var}_IMAGE_URI"),
        "instance_type": dg.EnvVar(f"{var}_INSTANCE_TYPE"),
        "instance_count": dg.EnvVar.int(f"{var}_INSTANCE_COUNT"),
        "volume_size_gb": dg.EnvVar.int(f"{var}_VOLUME_SIZE_GB"),
        "max_runtime_seconds": dg.EnvVar.int(f"{var}_MAX_RUNTIME_SECONDS"),
    }
    if job == "training":
        fields["spot_max_wait_seconds"] = dg.EnvVar.int("FORECAST_TRAINING_SPOT_MAX_WAIT_SECONDS")
    return JobSettings(**fields)


def resources_for(environment: Environment) -> dict[str, Any]:
    """The same resources in every environment; only their implementations differ.

    Nothing here reads the environment: ``dg.EnvVar`` values are resolved when a run starts.
    """
    if environment == "local":
        store = LocalObjectStore()
        database = Database()
        return {
            "store": store,
            "launcher": LocalJobLauncher(store=store),
            "database": database,
            # The database is the model registry.
            "registry": LocalModelRegistry(database=database),
        }
    region = dg.EnvVar("FORECAST_AWS_REGION")
    s3_store = S3ObjectStore(
        bucket=dg.EnvVar("FORECAST_BUCKET"),
        prefix=dg.EnvVar("FORECAST_PREFIX"),
        s3=S3Resource(region_name=region),
    )
    sagemaker_database = Database(url=dg.EnvVar("FORECAST_DATABASE_URL"))
    return {
        "store": s3_store,
        "launcher": SageMakerJobLauncher(
            store=s3_store,
            region_name=region,
            role_arn=dg.EnvVar("FORECAST_SAGEMAKER_ROLE_ARN"),
            platform=PlatformSettings(
                kms_key_id=dg.EnvVar("FORECAST_KMS_KEY_ID"),
                subnets=dg.EnvVar("FORECAST_SUBNETS"),
                security_group_ids=dg.EnvVar("FORECAST_SECURITY_GROUP_IDS"),
                tags=dg.EnvVar("FORECAST_TAGS"),
            ),
            preprocessing=_job_settings_from_env("preprocessing"),
            training=_job_settings_from_env("training"),
            inference=_job_settings_from_env("inference"),
        ),
        "database": sagemaker_database,
        # The database, and every version as a model package in SageMaker's Model Registry.
        "registry": SageMakerModelRegistry(database=sagemaker_database, region_name=region),
        # S3's event notifications for landing/ (raw_file_events_sensor, when configured).
        "new_files_queue": SqsQueue(queue_url=dg.EnvVar(NEW_FILES_QUEUE_VAR), region_name=region),
    }


def assets_with_batches(batch_size: int) -> list[dg.AssetsDefinition]:
    """The assets, with backfills cut into runs of ``batch_size`` customers.

    Every asset gets the same policy, so a batch goes through the whole graph in one run, and
    each step launches one SageMaker job for the batch. Sensor and schedule runs stay one per
    customer.
    """
    policy = dg.BackfillPolicy.multi_run(max_partitions_per_run=batch_size)
    return [asset.with_attributes(backfill_policy=policy) for asset in ALL_ASSETS]


def build_definitions(
    environment: Environment | None = None, batch_size: int | None = None
) -> dg.Definitions:
    return dg.Definitions(
        # The reports over every customer are unpartitioned: no backfill policy of their own.
        assets=[*assets_with_batches(batch_size or backfill_batch_size()), *REPORT_ASSETS],
        jobs=ALL_JOBS,
        sensors=[
            *new_file_sensors(environment or current_environment(), new_files_queue_url()),
            model_registry_sensor,
            customer_overview_sensor,
            batch_continuation_sensor,
        ],
        schedules=[weekly_training_schedule, daily_forecast_schedule],
        resources=resources_for(environment or current_environment()),
        # Every job (and the implicit asset job the UI and sensors use) runs its steps in the
        # run worker, one after another. A step's heavy work is a SageMaker job (locally a
        # subprocess), so a step process would do nothing but wait; yet the multiprocess
        # executor starts one per step, each importing Dagster and this code location again:
        # about 25 CPU-s per per-customer run, more than the customer's jobs. In process,
        # Dagster's CPU in a backfill fell 3.3x (benchmarks/README.md, backfill). Little is
        # lost by running steps in series: the steps that launch jobs form a chain (prep,
        # train, infer), and pools still cap SageMaker jobs across runs (the in-process
        # executor claims op-granularity slots too). A killed run worker takes its step with
        # it, and the job's guard stops the job (resources/jobs/sandbox.py).
        executor=dg.in_process_executor,
    )


defs = build_definitions()

"""Against real AWS: one small processing job through PipesSageMakerClient.

Skipped unless FORECAST_LIVE_AWS=1, credentials resolve, and the `sagemaker` environment's
variables are set (see .env.example; FORECAST_PREPROCESSING_IMAGE_URI may be empty for the
prebuilt image). Costs one ml.m5.large processing job of about a minute.
Run: FORECAST_LIVE_AWS=1 make pytest PYTEST_ARGS="-m aws"
"""

import os
import textwrap
import uuid

import dagster as dg
import pytest

pytestmark = pytest.mark.aws

REQUIRED = (
    "FORECAST_AWS_REGION",
    "FORECAST_BUCKET",
    "FORECAST_PREFIX",
    "FORECAST_SAGEMAKER_ROLE_ARN",
)


def _live_or_skip() -> None:
    if os.environ.get("FORECAST_LIVE_AWS") != "1":
        pytest.skip("set FORECAST_LIVE_AWS=1 to run against real AWS")
    missing = [v for v in REQUIRED if not os.environ.get(v)]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}")
    import boto3

    if boto3.Session().get_credentials() is None:
        pytest.skip("no AWS credentials")


def test_processing_job_on_sagemaker_reports_through_pipes():
    _live_or_skip()
    from resources.jobs.requests import JobInput, processing_job_request
    from resources.jobs.sagemaker import SageMakerJobLauncher
    from resources.jobs.settings import JobSettings
    from resources.storage import S3ObjectStore

    store = S3ObjectStore(
        bucket=os.environ["FORECAST_BUCKET"], prefix=os.environ["FORECAST_PREFIX"]
    )
    launcher = SageMakerJobLauncher(
        store=store,
        region_name=os.environ["FORECAST_AWS_REGION"],
        role_arn=os.environ["FORECAST_SAGEMAKER_ROLE_ARN"],
        preprocessing=JobSettings(
            image_uri=os.environ.get("FORECAST_PREPROCESSING_IMAGE_URI", ""),
            instance_type="ml.m5.large",
            max_runtime_seconds=900,
        ),
    )
    name = f"fa-live-{uuid.uuid4().hex[:12]}"
    script = textwrap.dedent(
        """
        from forecast_core.runtime import run_job
        run_job("processing", lambda report: report.materialization({"answer": 42}))
        """
    )
    code_uri, _ = launcher.publish_code("preprocessing")  # forecast_core, bootstrap, requirements
    store.write_bytes(store.uri("code", "live", name, "job.py"), script.encode())
    request = processing_job_request(
        name=name,
        settings=launcher.settings_for("preprocessing"),
        role_arn=launcher.role_arn,
        entrypoint=["python3", "/opt/ml/processing/input/code/bootstrap.py", "job.py"],
        inputs=[
            JobInput("code", code_uri),
            JobInput("script", store.uri("code", "live", name) + "/"),
        ],
    )
    # The script must sit beside bootstrap.py: stage both into the code folder.
    request["ProcessingInputs"][1]["S3Input"]["LocalPath"] = "/opt/ml/processing/input/code"

    @dg.asset
    def live(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        job = launcher.run_processing_job(context=context, request=request)
        return dg.MaterializeResult(metadata={**job.reported_metadata(), **job.metadata()})

    result = dg.materialize([live])
    meta = result.asset_materializations_for_node("live")[0].metadata
    assert meta["answer"].value == 42
    assert meta["job_arn"].value.endswith(f"processing-job/{name}")

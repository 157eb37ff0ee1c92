"""Against real AWS: what to check on the first day in a new account.

Run (from the repository root, with credentials of the Dagster role in the environment):

    FORECAST_LIVE_AWS=1 FORECAST_AWS_REGION=eu-central-1 FORECAST_BUCKET=my-forecast-bucket \\
    FORECAST_PREFIX=forecast-assets \\
    FORECAST_SAGEMAKER_ROLE_ARN=arn:aws:iam::123456789012:role/forecast-sagemaker-execution \\
        make pytest PYTEST_ARGS="-m aws tests/test_aws_live.py -v"

Or put those variables in ``.env`` (see ``.env.example``) and export it first
(``set -a; . ./.env; set +a``). ``FORECAST_PREPROCESSING_IMAGE_URI`` and
``FORECAST_TRAINING_IMAGE_URI`` may be empty: SageMaker's prebuilt scikit-learn image then runs
the scripts. Skipped unless ``FORECAST_LIVE_AWS=1``, credentials resolve and the four variables
above are set. Costs three short ml.m5.large jobs (two processing, one training), a few minutes
each, most of it SageMaker starting the instance.

Each test uses a job name never used before, so every launch goes through the path of a first
run in a new account. They check, in order:

1. a processing job: it starts, its CloudWatch log lines reach the Dagster run, and what its
   script reports through Pipes (a materialization and a custom message, via S3) arrives;
2. a training job in script mode: the same, and its model lands where the request says;
3. cancelling the run stops the job (StopProcessingJob), and it ends Stopped.

Everything the jobs write stays under ``FORECAST_PREFIX`` (``code/live/``, ``jobs/``,
``models/live/``, ``pipes/``), where the lifecycle rules of ``iam/s3-lifecycle-jobs.json`` expire
job folders and Pipes files.
"""

import io
import os
import tarfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import dagster as dg
import pytest

pytestmark = pytest.mark.aws

REQUIRED = (
    "FORECAST_AWS_REGION",
    "FORECAST_BUCKET",
    "FORECAST_PREFIX",
    "FORECAST_SAGEMAKER_ROLE_ARN",
)

PROCESSING_SCRIPT = """
import sys, time
from forecast_core.runtime import run_job

def main(report):
    print("live: hello from the processing job", flush=True)
    time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0)
    report.materialization({"answer": 42})

run_job("processing", main)
"""
TRAINING_SCRIPT = """
import os
from pathlib import Path
from forecast_core.runtime import run_job

def main(report):
    print("live: hello from the training job", flush=True)
    Path(os.environ["SM_MODEL_DIR"], "model.txt").write_text("a model")
    report.materialization({"answer": 43})

run_job("training", main)
"""


def _live_or_skip() -> None:
    if os.environ.get("FORECAST_LIVE_AWS") != "1":
        pytest.skip("set FORECAST_LIVE_AWS=1 to run against real AWS")
    missing = [v for v in REQUIRED if not os.environ.get(v)]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}")
    if boto3.Session().get_credentials() is None:
        pytest.skip("no AWS credentials")


@pytest.fixture(scope="module")
def launcher() -> Iterator[Any]:
    _live_or_skip()
    from resources.jobs.sagemaker import SageMakerJobLauncher
    from resources.jobs.settings import JobSettings
    from resources.storage import S3ObjectStore

    store = S3ObjectStore(
        bucket=os.environ["FORECAST_BUCKET"], prefix=os.environ["FORECAST_PREFIX"]
    )
    yield SageMakerJobLauncher(
        store=store,
        region_name=os.environ["FORECAST_AWS_REGION"],
        role_arn=os.environ["FORECAST_SAGEMAKER_ROLE_ARN"],
        preprocessing=JobSettings(
            image_uri=os.environ.get("FORECAST_PREPROCESSING_IMAGE_URI", ""),
            instance_type="ml.m5.large",
            max_runtime_seconds=900,
        ),
        training=JobSettings(
            image_uri=os.environ.get("FORECAST_TRAINING_IMAGE_URI", ""),
            instance_type="ml.m5.large",
            max_runtime_seconds=900,
        ),
        first_poll_seconds=10,
        max_poll_seconds=30,
    )


def fresh_name(kind: str) -> str:
    """A job name no earlier run used: the launch takes the path of a first run."""
    return f"fa-live-{kind}-{uuid.uuid4().hex[:12]}"


def processing_request(launcher: Any, name: str, args: tuple[str, ...] = ()) -> dict[str, Any]:
    """The job's published code folder with a small script added, as one ``code`` input."""
    from resources.jobs.requests import JobInput, processing_job_request
    from resources.storage import join_uri

    store = launcher.store
    code_uri, _ = launcher.publish_code("preprocessing")
    live_code = store.uri("code", "live", name)
    for obj in store.list_objects(code_uri):
        store.copy_object(obj.uri, join_uri(live_code, obj.uri[len(code_uri) :]))
    store.write_bytes(
        join_uri(live_code, "live_job.py"), textwrap.dedent(PROCESSING_SCRIPT).encode()
    )
    return processing_job_request(
        name=name,
        settings=launcher.settings_for("preprocessing"),
        role_arn=launcher.role_arn,
        entrypoint=["python3", "/opt/ml/processing/input/code/bootstrap.py", "live_job.py"],
        arguments=list(args),
        inputs=[JobInput("code", live_code + "/"), *launcher.dependency_inputs("preprocessing")],
    )


def training_request(launcher: Any, name: str) -> dict[str, Any]:
    """The job's published sourcedir.tar.gz with a small entry script added."""
    from resources.jobs.requests import training_job_request

    store = launcher.store
    code_uri, _ = launcher.publish_code("training")
    buffer = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(store.read_bytes(code_uri)), mode="r:gz") as published,
        tarfile.open(fileobj=buffer, mode="w:gz") as tar,
    ):
        for member in published.getmembers():
            tar.addfile(member, published.extractfile(member) if member.isfile() else None)
        script = textwrap.dedent(TRAINING_SCRIPT).encode()
        info = tarfile.TarInfo("live_train.py")
        info.size = len(script)
        tar.addfile(info, io.BytesIO(script))
    source = store.uri("code", "live", name, "sourcedir.tar.gz")
    store.write_bytes(source, buffer.getvalue())
    return training_job_request(
        name=name,
        settings=launcher.settings_for("training"),
        role_arn=launcher.role_arn,
        program="live_train.py",
        source_uri=source,
        hyperparameters={},
        channels=launcher.dependency_inputs("training"),
        output_uri=store.uri("models", "live"),
    )


def materialize(body: Any) -> tuple[dg.ExecuteInProcessResult, list[str]]:
    """Materialize an asset that runs ``body(context)``; the result and the run's log lines."""

    @dg.asset
    def live(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        job = body(context)
        return dg.MaterializeResult(metadata={**job.reported_metadata(), **job.metadata()})

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([live], instance=instance, raise_on_error=False)
    return result, [entry.user_message for entry in instance.all_logs(result.run_id)]


def failure(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(
        e.step_failure_data.error.message
        for e in result.all_events
        if e.is_step_failure and e.step_failure_data.error
    )


def test_a_processing_job_runs_reports_through_pipes_and_logs_into_the_run(launcher):
    name = fresh_name("prep")
    request = processing_request(launcher, name)
    result, logs = materialize(
        lambda context: launcher.run_processing_job(context=context, request=request)
    )
    assert result.success, failure(result)
    meta = result.asset_materializations_for_node("live")[0].metadata
    assert meta["answer"].value == 42  # through Pipes, from S3
    assert meta["job_arn"].value.endswith(f"processing-job/{name}")
    assert any(f"[{name}] live: hello from the processing job" in m for m in logs)  # CloudWatch
    assert any("[pipes] started processing job" in m and name in m for m in logs)


def test_a_training_job_runs_reports_through_pipes_and_logs_into_the_run(launcher):
    name = fresh_name("train")
    request = training_request(launcher, name)
    result, logs = materialize(
        lambda context: launcher.run_training_job(context=context, request=request)
    )
    assert result.success, failure(result)
    meta = result.asset_materializations_for_node("live")[0].metadata
    assert meta["answer"].value == 43
    assert meta["job_arn"].value.endswith(f"training-job/{name}")
    assert any(f"[{name}] live: hello from the training job" in m for m in logs)
    from resources.jobs.requests import model_artifact_uri

    assert launcher.store.exists(model_artifact_uri(request))


def test_cancelling_the_run_stops_the_job(launcher):
    name = fresh_name("stop")
    request = processing_request(launcher, name, ("600",))
    client = launcher.pipes_client()
    sagemaker = client.client

    def interrupt_once_running(seconds: float) -> None:
        status = sagemaker.describe_processing_job(ProcessingJobName=name)
        if status["ProcessingJobStatus"] == "InProgress":
            raise dg.DagsterExecutionInterruptedError()  # what Dagster raises on cancel
        time.sleep(seconds)

    client.wait.sleep = interrupt_once_running

    @dg.asset
    def live(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        invocation, _ = client.run(context=context, processing_job=request)
        return invocation.get_materialize_result()

    result = dg.materialize([live], raise_on_error=False)
    assert not result.success
    deadline = time.monotonic() + 900
    status = ""
    while time.monotonic() < deadline:
        status = sagemaker.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"]
        if status in ("Completed", "Failed", "Stopped"):
            break
        time.sleep(15)
    assert status == "Stopped"

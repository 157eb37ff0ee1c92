"""PipesSageMakerClient against a moto server, with a fake SageMaker whose jobs really run."""

import re
import textwrap
import threading

import boto3
import dagster as dg
import pytest

from resources.jobs.requests import JobInput, JobOutput, job_name, processing_job_request
from resources.jobs.sagemaker import PipesSageMakerClient, WaitPolicy, next_attempt_name
from resources.jobs.settings import JobSettings
from tests.fake_sagemaker import FakeSageMakerClient

SETTINGS = JobSettings(
    image_uri="123456789012.dkr.ecr.eu-central-1.amazonaws.com/fa:test", max_runtime_seconds=120
)
ROLE = "arn:aws:iam::123456789012:role/forecast-sagemaker-execution"

REPORTING_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from forecast_core.runtime import run_job

    def main(report):
        for i in range(3):
            print(f"line {i}", flush=True)
        time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0)
        report.materialization({"rows": 42})

    run_job("processing", main)
    """
)
FAILING_SCRIPT = textwrap.dedent(
    """
    from forecast_core.runtime import run_job

    def main(report):
        raise ValueError("customer 'acme', file 's3://b/landing/acme/x.csv': negative energy")

    run_job("processing", main)
    """
)


@pytest.fixture
def fake(s3_store, tmp_path):
    with FakeSageMakerClient(store=s3_store, jobs_root=tmp_path / "jobs") as client:
        yield client


def make_client(fake, store, sleep=None) -> PipesSageMakerClient:
    wait = WaitPolicy(first_poll_seconds=0.2, max_poll_seconds=0.5, wait_grace_seconds=60)
    if sleep is not None:
        wait.sleep = sleep
    return PipesSageMakerClient(
        pipes_bucket=store.bucket,
        client=fake,
        logs_client=boto3.client("logs"),
        s3_client=boto3.client("s3"),
        wait=wait,
        message_interval_seconds=0.5,
    )


def request_for(store, name: str, script: str, args: tuple[str, ...] = ()) -> dict:
    store.write_bytes(store.uri("code", name, "job.py"), script.encode())
    return processing_job_request(
        name=name,
        settings=SETTINGS,
        role_arn=ROLE,
        entrypoint=["python3", "/opt/ml/processing/input/code/job.py"],
        arguments=list(args),
        inputs=[JobInput("code", store.uri("code", name) + "/")],
        outputs=[JobOutput("out", store.uri("out", name))],
    )


def run_asset(client, request) -> tuple[dg.ExecuteInProcessResult, dict]:
    captured: dict = {}

    @dg.asset
    def probe(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        invocation, description = client.run(context=context, processing_job=request)
        captured["description"] = description
        return invocation.get_materialize_result()

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([probe], raise_on_error=False, instance=instance)
    captured["logs"] = [entry.user_message for entry in instance.all_logs(result.run_id)]
    return result, captured


def error_text(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(
        e.step_failure_data.error.message
        for e in result.all_events
        if e.is_step_failure and e.step_failure_data.error
    )


def created(fake, name_prefix: str) -> list[str]:
    return [
        kw["ProcessingJobName"]
        for op, kw in fake.calls
        if op == "CreateProcessingJob" and kw["ProcessingJobName"].startswith(name_prefix)
    ]


def test_job_runs_reports_through_s3_pipes_and_streams_its_log(fake, s3_store):
    client = make_client(fake, s3_store)
    request = request_for(s3_store, "fa-prep-acme-run1-0", REPORTING_SCRIPT)
    result, captured = run_asset(client, request)
    assert result.success, error_text(result)
    meta = result.asset_materializations_for_node("probe")[0].metadata
    assert meta["rows"].value == 42  # reported by the script through S3
    assert meta["job_arn"].value.endswith(":processing-job/fa-prep-acme-run1-0")
    assert "#/processing-jobs/fa-prep-acme-run1-0" in meta["console_url"].value
    seen = [h["status"] for h in meta["status_history"].value]
    assert seen[0] == "InProgress" and seen[-1] == "Completed"
    forwarded = [m for m in captured["logs"] if "[fa-prep-acme-run1-0] line" in m]
    assert [m.rsplit("] ", 1)[1] for m in forwarded] == ["line 0", "line 1", "line 2"]  # each once
    assert captured["description"]["ProcessingJobStatus"] == "Completed"
    create = next(kw for op, kw in fake.calls if op == "CreateProcessingJob")
    tags = {t["Key"]: t["Value"] for t in create["Tags"]}
    assert tags["dagster/run-id"] == result.run_id
    assert tags["dagster/asset"] == "probe"
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= set(create["Environment"])


def test_failure_reason_reaches_the_dagster_error(fake, s3_store):
    client = make_client(fake, s3_store)
    result, _ = run_asset(client, request_for(s3_store, "fa-prep-acme-fail-0", FAILING_SCRIPT))
    assert not result.success
    message = error_text(result)
    assert "processing job fa-prep-acme-fail-0 failed" in message
    assert "customer 'acme', file 's3://b/landing/acme/x.csv': negative energy" in message


def test_stopped_job_fails_the_step(fake, s3_store):
    client = make_client(fake, s3_store)
    name = "fa-prep-acme-stop-0"
    request = request_for(s3_store, name, REPORTING_SCRIPT, ("300",))

    def stop_when_running() -> None:
        fake.wait_until_running(name, timeout=60)
        fake.stop_processing_job(ProcessingJobName=name)

    stopper = threading.Thread(target=stop_when_running)
    stopper.start()
    result, _ = run_asset(client, request)
    stopper.join()
    assert not result.success
    assert f"processing job {name} stopped" in error_text(result)


def test_throttled_describe_does_not_fail_the_run(fake, s3_store):
    client = make_client(fake, s3_store)
    fake.throttle_next("DescribeProcessingJob", 4)
    result, _ = run_asset(client, request_for(s3_store, "fa-prep-acme-thr-0", REPORTING_SCRIPT))
    assert result.success, error_text(result)
    throttled = [op for op, _ in fake.calls if op == "DescribeProcessingJob"]
    assert len(throttled) >= 5


class _ProcessDied(BaseException):
    """Stands in for the Dagster process being killed: nothing gets to clean up."""


def test_cancelled_run_stops_the_job(fake, s3_store):
    name = "fa-prep-acme-cancel-0"

    def cancel_once_running(seconds: float) -> None:
        if (
            fake.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"]
            == "InProgress"
        ):
            raise dg.DagsterExecutionInterruptedError()

    client = make_client(fake, s3_store, sleep=cancel_once_running)
    result, _ = run_asset(client, request_for(s3_store, name, REPORTING_SCRIPT, ("300",)))
    assert not result.success
    done = fake.wait_until_done(name, timeout=60)
    assert done["ProcessingJobStatus"] == "Stopped"


def test_restarted_process_reattaches_instead_of_launching_again(fake, s3_store):
    name = "fa-prep-acme-restart-0"
    request = request_for(s3_store, name, REPORTING_SCRIPT, ("20",))

    def die_once_running(seconds: float) -> None:
        if (
            fake.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"]
            == "InProgress"
        ):
            raise _ProcessDied()

    died, _ = run_asset(make_client(fake, s3_store, sleep=die_once_running), dict(request))
    assert not died.success
    # Nothing stopped the job: only an interruption of the run does that.
    assert (
        fake.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"] == "InProgress"
    )
    # The "restarted" process runs the same step again with the same deterministic name.
    result, captured = run_asset(make_client(fake, s3_store), dict(request))
    assert result.success, error_text(result)
    assert created(fake, name) == [name]  # exactly one job
    assert any(f"reattaching to running processing job {name}" in m for m in captured["logs"])
    assert captured["description"]["ProcessingJobStatus"] == "Completed"
    meta = result.asset_materializations_for_node("probe")[0].metadata
    assert (
        meta["rows"].value == 42
    )  # messages read from where the first launch told the job to write


def test_completed_job_is_reused_and_failed_one_gets_a_new_attempt(fake, s3_store):
    client = make_client(fake, s3_store)
    name = "fa-prep-acme-again-0"
    first, _ = run_asset(client, request_for(s3_store, name, REPORTING_SCRIPT))
    assert first.success, error_text(first)
    second, _ = run_asset(client, request_for(s3_store, name, REPORTING_SCRIPT))
    assert second.success, error_text(second)
    assert created(fake, name) == [name]

    failing = "fa-prep-acme-flaky-0"
    assert not run_asset(client, request_for(s3_store, failing, FAILING_SCRIPT))[0].success
    retry, captured = run_asset(client, request_for(s3_store, failing, REPORTING_SCRIPT))
    assert retry.success, error_text(retry)
    assert created(fake, failing) == [failing, f"{failing}-a2"]
    assert captured["description"]["ProcessingJobName"] == f"{failing}-a2"


SAGEMAKER_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


@pytest.mark.parametrize("attempt", [2, 9, 99])
def test_names_stay_valid_with_the_longest_customer_id(attempt):
    customer = "c" * 31 + "x"
    for step in ("preprocessing", "training", "inference"):
        base = job_name(step, customer, "0123456789abcdef-run", 12)
        name = next_attempt_name(base, attempt)
        assert len(name) <= 63 and SAGEMAKER_NAME.fullmatch(name), name
        assert name.endswith(f"-a{attempt}")


def test_empty_image_uri_means_the_prebuilt_sklearn_image(s3_store):
    from resources.jobs.sagemaker import SageMakerJobLauncher

    launcher = SageMakerJobLauncher(
        store=s3_store,
        region_name="eu-central-1",
        training=JobSettings(image_uri="", instance_type="ml.m5.large"),
    )
    image = launcher.settings_for("training").image_uri
    assert (
        image
        == "492215442770.dkr.ecr.eu-central-1.amazonaws.com/sagemaker-scikit-learn:1.9-0-cpu-py3"
    )
    assert (
        launcher.settings_for("preprocessing").image_uri == launcher.preprocessing.image_uri
    )  # set: kept

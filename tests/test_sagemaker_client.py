"""PipesSageMakerClient against a moto server, with a fake SageMaker whose jobs really run."""

import logging
import re
import textwrap
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import boto3
import dagster as dg
import dagster._core.pipes.utils as pipes_utils
import pytest
from botocore.exceptions import ClientError
from dagster_pipes import decode_param

import resources.jobs.sagemaker as sagemaker_module
from resources.jobs.requests import (
    JobInput,
    JobOutput,
    job_name,
    processing_job_request,
)
from resources.jobs.sagemaker import (
    OWNER_ENV,
    PipesSageMakerClient,
    WaitPolicy,
    _LogFollower,
    _S3ContextInjector,
    next_attempt_name,
)
from resources.jobs.settings import JobSettings
from tests.conftest import TEST_REGION
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
TRAINING_SCRIPT = textwrap.dedent(
    """
    import os
    from pathlib import Path
    from forecast_core.runtime import run_job

    def main(report):
        rows = Path(os.environ["SM_CHANNEL_TRAIN"], "rows.txt").read_text()
        Path(os.environ["SM_MODEL_DIR"], "model.txt").write_text(rows.upper())
        print("trained", flush=True)
        report.materialization({"rows": len(rows)})

    run_job("training", main)
    """
)
# Writes each Pipes message as a chunk of its own (opened, 57 custom messages, a
# materialization, closed: 60 chunks), as a chatty job does over a long run.
SIXTY_CHUNKS_SCRIPT = textwrap.dedent(
    """
    import io, json, time
    import boto3
    from dagster_pipes import (
        PipesS3ContextLoader, PipesS3MessageWriter, PipesS3MessageWriterChannel,
        open_dagster_pipes,
    )

    class EachMessageAChunk(PipesS3MessageWriterChannel):
        index = 0

        def write_message(self, message):
            self.index += 1
            self.upload_messages_chunk(io.StringIO(json.dumps(message)), self.index)

    class Writer(PipesS3MessageWriter):
        def make_channel(self, params):
            return EachMessageAChunk(
                client=self._client, bucket=params["bucket"], key_prefix=params["key_prefix"]
            )

    s3 = boto3.client("s3")
    with open_dagster_pipes(
        context_loader=PipesS3ContextLoader(client=s3), message_writer=Writer(client=s3)
    ) as pipes:
        time.sleep(1)
        for i in range(57):
            pipes.report_custom_message({"i": i})
        pipes.report_asset_materialization(metadata={"chunks": 60})
    print("wrote 60 chunks", flush=True)
    """
)


@pytest.fixture
def fake(s3_store, tmp_path):
    with FakeSageMakerClient(store=s3_store, jobs_root=tmp_path / "jobs") as client:
        yield client


@pytest.fixture
def no_wait_for_missing_messages(monkeypatch):
    """Sessions whose job never reports wait 10 s for messages after they close: not here."""
    monkeypatch.setattr(pipes_utils, "WAIT_FOR_LOGS_AFTER_EXECUTION_INTERVAL", 0)


def make_client(
    fake, store, sleep=None, logs_client=None, pipes_bucket=None, pipes_prefix="pipes"
) -> PipesSageMakerClient:
    wait = WaitPolicy(first_poll_seconds=0.2, max_poll_seconds=0.5, wait_grace_seconds=60)
    if sleep is not None:
        wait.sleep = sleep
    return PipesSageMakerClient(
        pipes_bucket=pipes_bucket or store.bucket,
        pipes_prefix=pipes_prefix,
        client=fake,
        logs_client=logs_client or boto3.client("logs"),
        s3_client=boto3.client("s3"),
        wait=wait,
        message_interval_seconds=0.5,
    )


def request_for(
    store, name: str, script: str, args: tuple[str, ...] = (), code: str | None = None
) -> dict:
    """A processing request running ``script``, published under ``code/<code or name>/``."""
    code_uri = store.uri("code", code or name)
    store.write_bytes(f"{code_uri}/job.py", script.encode())
    return processing_job_request(
        name=name,
        settings=SETTINGS,
        role_arn=ROLE,
        entrypoint=["python3", "/opt/ml/processing/input/code/job.py"],
        arguments=list(args),
        inputs=[JobInput("code", code_uri + "/")],
        outputs=[JobOutput("out", store.uri("out", name))],
    )


def training_request_for(store, name: str, script: str = TRAINING_SCRIPT) -> dict:
    from tests.test_fake_sagemaker import training_request

    return training_request(store, name, script, settings=SETTINGS, role_arn=ROLE)


def run_asset(
    client,
    request,
    *,
    kind: str = "processing",
    run_id: str | None = None,
    first: dict | None = None,
) -> tuple[dg.ExecuteInProcessResult, dict]:
    """Materialize an asset that runs ``request`` through ``client``, as run ``run_id`` if
    given, on an instance of its own. With ``first``, the step runs that request before (a
    failure it raises is kept in ``captured["first"]``), as a retried attempt would."""
    captured: dict = {}

    @dg.asset
    def probe(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        argument = "processing_job" if kind == "processing" else "training_job"
        if first is not None:
            try:
                client.run(context=context, **{argument: first})
            except dg.Failure as failure:
                captured["first"] = failure
        invocation, description = client.run(context=context, **{argument: request})
        captured["description"] = description
        captured["custom"] = invocation.get_custom_messages()
        return invocation.get_materialize_result()

    instance = dg.DagsterInstance.ephemeral()
    job = dg.Definitions(assets=[probe]).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=instance, run_id=run_id, raise_on_error=False)
    captured["logs"] = [entry.user_message for entry in instance.all_logs(result.run_id)]
    return result, captured


def error_text(result: dg.ExecuteInProcessResult) -> str:
    """The step failures' messages, with their causes."""
    messages = []
    for event in result.all_events:
        error = event.step_failure_data.error if event.is_step_failure else None
        while error is not None:
            messages.append(error.message)
            error = error.cause
    return "\n".join(messages)


def creates(fake, name_prefix: str, kind: str = "Processing") -> list[dict[str, Any]]:
    """Every Create call for names starting with ``name_prefix``, refused ones included."""
    return [
        kw
        for op, kw in fake.calls
        if op == f"Create{kind}Job" and kw[f"{kind}JobName"].startswith(name_prefix)
    ]


def launched(fake, name_prefix: str) -> list[str]:
    """The jobs that exist, by name, in the order they were created."""
    return [n for n in fake.created_jobs() if n.startswith(name_prefix)]


def pipes_objects(store) -> list[str]:
    s3 = boto3.client("s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix="pipes/")
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


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
    (create,) = creates(fake, "fa-prep-acme-run1-0")
    tags = {t["Key"]: t["Value"] for t in create["Tags"]}
    assert tags["dagster/run-id"] == result.run_id
    assert tags["dagster/asset"] == "probe"
    # The job records who launched it, for a later reattach to check.
    environment = create["Environment"]
    assert environment[OWNER_ENV["run_id"]] == result.run_id
    assert environment[OWNER_ENV["step"]] == "probe"
    assert re.fullmatch(r"[0-9a-f]{32}", environment[OWNER_ENV["request_digest"]])
    # Context and messages under pipes/<16 hex characters>/; the context is gone afterwards.
    context = decode_param(environment["DAGSTER_PIPES_CONTEXT"])
    messages = decode_param(environment["DAGSTER_PIPES_MESSAGES"])
    key = re.fullmatch(r"pipes/([0-9a-f]{16})/context\.json", context["key"])
    assert key, context
    assert messages == {"bucket": s3_store.bucket, "key_prefix": f"pipes/{key[1]}/messages"}
    left = pipes_objects(s3_store)
    assert left and all(k.startswith(f"pipes/{key[1]}/messages/") for k in left), left


def test_a_first_time_name_launches_one_job_of_each_type(fake, s3_store):
    """No Describe decides whether a name is free (SageMaker answers a missing job with a
    ValidationException that differs by job type); the create is tried first."""
    client = make_client(fake, s3_store)
    processing, _ = run_asset(client, request_for(s3_store, "fa-prep-new-0", REPORTING_SCRIPT))
    assert processing.success, error_text(processing)
    training, captured = run_asset(
        client, training_request_for(s3_store, "fa-train-new-0"), kind="training"
    )
    assert training.success, error_text(training)
    assert captured["description"]["TrainingJobStatus"] == "Completed"
    assert training.asset_materializations_for_node("probe")[0].metadata["rows"].value == 3
    assert any("[fa-train-new-0] trained" in m for m in captured["logs"])
    assert launched(fake, "fa-") == ["fa-prep-new-0", "fa-train-new-0"]
    for kind, name in (("Processing", "fa-prep-new-0"), ("Training", "fa-train-new-0")):
        operations = [op for op, kw in fake.calls if kw.get(f"{kind}JobName") == name]
        assert operations[0] == f"Create{kind}Job", operations
        assert operations.count(f"Create{kind}Job") == 1


def test_bootstrap_values_fit_sagemakers_environment_limits(fake, s3_store, monkeypatch):
    """A 63-character bucket and a 39-character prefix with the longest job name: every
    Environment value stays within 256 characters, and the final body is validated."""
    bucket = "b" * 20 + uuid.uuid4().hex + "c" * 11  # 63 characters
    assert len(bucket) == 63
    boto3.client("s3").create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": TEST_REGION}
    )
    prefix = "forecast-assets/production/eu-central/x"  # 39 characters
    assert len(prefix) == 39
    validated: list[tuple[str, dict]] = []
    monkeypatch.setattr(
        sagemaker_module, "validate_request", lambda op, body: validated.append((op, body))
    )
    client = make_client(fake, s3_store, pipes_bucket=bucket, pipes_prefix=f"{prefix}/pipes")
    name = job_name("preprocessing", "c" * 32, uuid.uuid4().hex, 12)
    result, _ = run_asset(client, request_for(s3_store, name, REPORTING_SCRIPT))
    assert result.success, error_text(result)
    (create,) = creates(fake, name)
    assert validated == [("CreateProcessingJob", create)]  # the body exactly as sent
    lengths = {key: len(value) for key, value in create["Environment"].items()}
    assert max(lengths.values()) <= 256, lengths
    context = decode_param(create["Environment"]["DAGSTER_PIPES_CONTEXT"])
    assert context["bucket"] == bucket and context["key"].startswith(f"{prefix}/pipes/")


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
    assert not [k for k in pipes_objects(s3_store) if k.endswith("context.json")]


class _DeniedLogs:
    """A CloudWatch Logs client whose GetLogEvents is refused once ``denied`` is set."""

    def __init__(self):
        self._logs = boto3.client("logs")
        self.denied = threading.Event()

    def describe_log_streams(self, **kwargs: Any) -> Any:
        return self._logs.describe_log_streams(**kwargs)

    def get_log_events(self, **kwargs: Any) -> Any:
        if self.denied.is_set():
            error: Any = {"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}}
            raise ClientError(error, "GetLogEvents")
        return self._logs.get_log_events(**kwargs)


@pytest.mark.parametrize("failing", ["DescribeProcessingJob", "GetLogEvents"])
def test_an_error_while_waiting_stops_the_job(fake, s3_store, failing):
    """Not only an interrupt: any error that ends the wait stops the job, which would otherwise
    run on while a retry or re-execution (another job name) launches a second copy."""
    name = f"fa-prep-acme-err{failing[:4].lower()}-0"
    logs = _DeniedLogs()
    armed = threading.Event()

    def fail_once_running(seconds: float) -> None:
        fake.wait_until_running(name, timeout=60)
        if not armed.is_set():
            armed.set()
            if failing == "GetLogEvents":
                logs.denied.set()
            else:
                fake.fail_next(failing, "AccessDeniedException", "User is not authorized")
        time.sleep(seconds)

    client = make_client(fake, s3_store, sleep=fail_once_running, logs_client=logs)
    result, captured = run_asset(client, request_for(s3_store, name, REPORTING_SCRIPT, ("300",)))
    assert not result.success
    assert "AccessDeniedException" in error_text(result)
    assert fake.wait_until_done(name, timeout=60)["ProcessingJobStatus"] == "Stopped"
    assert any(f"stopping processing job {name}" in m for m in captured["logs"])


def test_restarted_process_reattaches_instead_of_launching_again(fake, s3_store):
    name = "fa-prep-acme-restart-0"
    request = request_for(s3_store, name, REPORTING_SCRIPT, ("20",))
    run_id = str(uuid.uuid4())

    def die_once_running(seconds: float) -> None:
        if (
            fake.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"]
            == "InProgress"
        ):
            raise _ProcessDied()

    died, _ = run_asset(make_client(fake, s3_store, sleep=die_once_running), request, run_id=run_id)
    assert not died.success
    # Nothing stopped the job, and its Pipes context is still there for it.
    assert (
        fake.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"] == "InProgress"
    )
    assert [k for k in pipes_objects(s3_store) if k.endswith("context.json")]
    # The "restarted" process runs the same step of the same run again, with the same name.
    result, captured = run_asset(make_client(fake, s3_store), request, run_id=run_id)
    assert result.success, error_text(result)
    assert launched(fake, name) == [name]  # exactly one job
    assert any(f"reattaching to running processing job {name}" in m for m in captured["logs"])
    assert captured["description"]["ProcessingJobStatus"] == "Completed"
    meta = result.asset_materializations_for_node("probe")[0].metadata
    assert meta["rows"].value == 42  # read from where the first launch told the job to write


def test_reattach_reads_every_message_chunk_a_job_wrote(fake, s3_store):
    """A finished job's 60 chunks all arrive, in order (dagster-aws's reader, one chunk a
    second for 10 s after the session closes, got about 11)."""
    name = "fa-prep-acme-chunks-0"
    request = request_for(s3_store, name, SIXTY_CHUNKS_SCRIPT)
    run_id = str(uuid.uuid4())

    def die_at_once(seconds: float) -> None:
        raise _ProcessDied()

    died, _ = run_asset(make_client(fake, s3_store, sleep=die_at_once), request, run_id=run_id)
    assert not died.success
    assert fake.wait_until_done(name, timeout=60)["ProcessingJobStatus"] == "Completed"
    (create,) = creates(fake, name)
    prefix = decode_param(create["Environment"]["DAGSTER_PIPES_MESSAGES"])["key_prefix"]
    chunks = [k for k in pipes_objects(s3_store) if k.startswith(prefix + "/")]
    assert len(chunks) == 60

    result, captured = run_asset(make_client(fake, s3_store), request, run_id=run_id)
    assert result.success, error_text(result)
    assert any(f"reusing completed processing job {name}" in m for m in captured["logs"])
    assert list(captured["custom"]) == [{"i": i} for i in range(57)]
    assert result.asset_materializations_for_node("probe")[0].metadata["chunks"].value == 60
    assert launched(fake, name) == [name]


def test_completed_job_is_reused_and_failed_one_gets_a_new_attempt(fake, s3_store):
    """Within one step of one run (a retry of the same attempt, a restarted process)."""
    client = make_client(fake, s3_store)
    name = "fa-prep-acme-again-0"
    request = request_for(s3_store, name, REPORTING_SCRIPT)
    result, captured = run_asset(client, request, first=request)
    assert result.success, error_text(result)
    assert launched(fake, name) == [name]
    assert any(f"reusing completed processing job {name}" in m for m in captured["logs"])
    assert result.asset_materializations_for_node("probe")[0].metadata["rows"].value == 42

    failing = "fa-prep-acme-flaky-0"
    flaky = request_for(s3_store, failing, FAILING_SCRIPT)
    fixed = request_for(s3_store, failing, REPORTING_SCRIPT, code="fixed")
    retry, captured = run_asset(client, fixed, first=flaky)
    assert "negative energy" in str(captured["first"])
    assert retry.success, error_text(retry)
    assert launched(fake, failing) == [failing, f"{failing}-a2"]
    assert captured["description"]["ProcessingJobName"] == f"{failing}-a2"


def test_a_job_of_another_run_with_the_same_name_is_refused(
    fake, s3_store, no_wait_for_missing_messages
):
    """Names carry 8 characters of the run id: another run's job of that name (running or
    Completed) is neither reused nor reattached to, nor touched."""
    client = make_client(fake, s3_store)
    name = "fa-prep-acme-0123abcd-0"
    request = request_for(s3_store, name, REPORTING_SCRIPT)
    first, _ = run_asset(client, request)
    assert first.success, error_text(first)
    second, captured = run_asset(client, request)
    assert not second.success
    message = error_text(second)
    assert f"processing job {name} already exists (Completed) and is not this step's" in message
    assert f"run {first.run_id}" in message and f"run {second.run_id}" in message
    assert "re-execute the run" in message
    assert launched(fake, name) == [name]
    assert len(creates(fake, name)) == 2  # the second create was refused: ResourceInUse
    assert "rows" not in str(captured.get("custom"))


def test_a_job_of_this_step_with_another_request_is_not_reused(
    fake, s3_store, no_wait_for_missing_messages
):
    """Same run, same step, same name, but the code or inputs changed in between."""
    name = "fa-prep-acme-changed-0"
    run_id = str(uuid.uuid4())
    first, _ = run_asset(
        make_client(fake, s3_store), request_for(s3_store, name, REPORTING_SCRIPT), run_id=run_id
    )
    assert first.success, error_text(first)
    changed = request_for(s3_store, name, REPORTING_SCRIPT, code="changed")
    second, _ = run_asset(make_client(fake, s3_store), changed, run_id=run_id)
    assert not second.success
    assert "launched with another request" in error_text(second)
    assert launched(fake, name) == [name]


# The wait's ceiling ------------------------------------------------------------------------------


class _StubTrainingJobs:
    """A SageMaker client whose one training job is InProgress for ``polls`` Describes."""

    def __init__(self, created: datetime, stopping: dict[str, int], polls: int):
        self.meta = SimpleNamespace(region_name=TEST_REGION)
        self.created, self.stopping, self.polls = created, stopping, polls
        self.described = 0
        self.stopped: list[str] = []

    def describe_training_job(self, TrainingJobName: str) -> dict[str, Any]:
        self.described += 1
        status = "Completed" if self.described > self.polls or self.stopped else "InProgress"
        return {
            "TrainingJobName": TrainingJobName,
            "TrainingJobStatus": status,
            "CreationTime": self.created,
            "StoppingCondition": self.stopping,
        }

    def stop_training_job(self, TrainingJobName: str) -> None:
        self.stopped.append(TrainingJobName)


class _NoLogs:
    def describe_log_streams(self, **kwargs: Any) -> dict[str, Any]:
        return {"logStreams": []}


def _wait(stub: _StubTrainingJobs, grace: float) -> dict[str, Any]:
    client = PipesSageMakerClient(
        pipes_bucket="unused",
        client=stub,
        logs_client=_NoLogs(),
        s3_client=object(),
        wait=WaitPolicy(first_poll_seconds=0.4, max_poll_seconds=0.4, wait_grace_seconds=grace),
    )
    context = SimpleNamespace(log=logging.getLogger("test_sagemaker_client"))
    injector = _S3ContextInjector(bucket="unused", client=object(), key="unused")
    api = sagemaker_module._APIS["training"]
    return client._wait_abandoning_safely(context, api, "fa-train-x-0", stub.stopping, injector)


def test_spot_training_may_wait_for_capacity_up_to_max_wait():
    """MaxRuntimeInSeconds 1 s is long past, MaxWaitTimeInSeconds (waiting for spot capacity
    included) is not: SageMaker would still run the job, so the client waits on."""
    stopping = {"MaxRuntimeInSeconds": 1, "MaxWaitTimeInSeconds": 120}
    stub = _StubTrainingJobs(datetime.now(UTC), stopping, polls=6)  # about 2.4 s InProgress
    assert _wait(stub, grace=0)["TrainingJobStatus"] == "Completed"
    assert stub.stopped == []


def test_a_job_past_its_limit_is_stopped_counting_from_its_creation():
    """A reattached job gets no fresh ceiling: its age counts from CreationTime."""
    created = datetime.now(UTC) - timedelta(seconds=900)
    stub = _StubTrainingJobs(created, {"MaxRuntimeInSeconds": 600}, polls=100)
    with pytest.raises(dg.Failure, match="past its limit plus wait_grace_seconds"):
        _wait(stub, grace=60)
    assert stub.stopped == ["fa-train-x-0"] and stub.described == 1
    spot = _StubTrainingJobs(
        created, {"MaxRuntimeInSeconds": 600, "MaxWaitTimeInSeconds": 3600}, polls=2
    )
    assert _wait(spot, grace=60)["TrainingJobStatus"] == "Completed"


# The log -----------------------------------------------------------------------------------------


def test_log_lines_of_many_instances_arrive_in_time_order(aws_env):
    """More streams than one DescribeLogStreams page (50), merged by timestamp."""
    logs = boto3.client("logs")
    group = "/aws/sagemaker/TrainingJobs"
    logs.create_log_group(logGroupName=group)
    base = int(time.time() * 1000) - 60_000  # all in the past: nothing is held back
    streams = [f"fa-train-many-0/algo-{i}-1700000000" for i in range(1, 61)]
    for i, stream in enumerate(streams):
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        # The last instance wrote first: time order is the reverse of the streams' names.
        stamps = [base + (60 - i) * 10, base + 1000 + (60 - i) * 10]
        events = [
            {"timestamp": t, "message": f"{n} {t}"} for n, t in zip("ab", stamps, strict=True)
        ]
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)
    logs.create_log_stream(logGroupName=group, logStreamName="fa-train-many-01/algo-1-1")
    logs.put_log_events(
        logGroupName=group,
        logStreamName="fa-train-many-01/algo-1-1",
        logEvents=[{"timestamp": base, "message": "another job"}],
    )
    follower = _LogFollower(logs, group, "fa-train-many-0", hold_back_seconds=0)
    lines = follower.new_lines()
    assert len(lines) == 120 and "another job" not in lines
    stamps = [int(line.split()[1]) for line in lines]
    assert stamps == sorted(stamps)
    assert [line[0] for line in lines] == ["a"] * 60 + ["b"] * 60
    logs.put_log_events(
        logGroupName=group,
        logStreamName=streams[4],
        logEvents=[{"timestamp": base + 5000, "message": "late"}],
    )
    assert follower.new_lines() == ["late"]  # each line once
    assert follower.new_lines() == []


def test_a_line_is_held_back_until_no_stream_can_still_show_an_earlier_one(aws_env):
    """Instances log concurrently: algo-2's line at t+80 may become readable after algo-1's
    t+100 was read. The follower shows a line only once every stream has passed it (or it is
    older than the hold-back), and everything when the job has ended."""
    logs = boto3.client("logs")
    group = "/aws/sagemaker/ProcessingJobs"
    logs.create_log_group(logGroupName=group)
    one, two = "fa-prep-order-0/algo-1-1700000000", "fa-prep-order-0/algo-2-1700000000"
    for stream in (one, two):
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
    t = int(time.time() * 1000)

    def put(stream: str, offset: int) -> None:
        event = {"timestamp": t + offset, "message": f"{stream.split('/')[1][:6]} {offset}"}
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=[event])

    put(one, 0)
    put(one, 100)
    put(two, 50)
    follower = _LogFollower(logs, group, "fa-prep-order-0", hold_back_seconds=600)
    assert follower.new_lines() == ["algo-1 0", "algo-2 50"]  # algo-2 may still log before 100
    put(two, 80)
    assert follower.new_lines() == ["algo-2 80"]
    put(two, 120)
    assert follower.new_lines() == ["algo-1 100"]  # both streams are past 100 now
    assert follower.new_lines(final=True) == ["algo-2 120"]


# Names -------------------------------------------------------------------------------------------

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


# The live test's requests ------------------------------------------------------------------------


def test_the_live_tests_requests_run_on_the_fake(fake, s3_store):
    """tests/test_aws_live.py runs only with an AWS account: its requests (code folder and
    sourcedir with a script added, no two inputs at one LocalPath) run here on the fake, so they
    cannot rot unnoticed."""
    from resources.jobs.sagemaker import SageMakerJobLauncher
    from tests import test_aws_live as live

    class FakeBacked(SageMakerJobLauncher):
        def _clients(self) -> dict[str, Any]:
            return {"sagemaker": fake, "logs": boto3.client("logs"), "s3": boto3.client("s3")}

    image = "123456789012.dkr.ecr.eu-central-1.amazonaws.com/fa:test"
    launcher = FakeBacked(
        store=s3_store,
        region_name=TEST_REGION,
        role_arn=ROLE,
        preprocessing=JobSettings(image_uri=image, max_runtime_seconds=120),
        training=JobSettings(image_uri=image, max_runtime_seconds=120),
        first_poll_seconds=0.2,
        max_poll_seconds=0.5,
        message_interval_seconds=0.5,
    )
    name = live.fresh_name("prep")
    request = live.processing_request(launcher, name)
    paths = [i["S3Input"]["LocalPath"] for i in request["ProcessingInputs"]]
    assert len(paths) == len(set(paths))
    result, logs = live.materialize(
        lambda context: launcher.run_processing_job(context=context, request=request)
    )
    assert result.success, live.failure(result)
    assert result.asset_materializations_for_node("live")[0].metadata["answer"].value == 42
    assert any(f"[{name}] live: hello from the processing job" in m for m in logs)

    name = live.fresh_name("train")
    training = live.training_request(launcher, name)
    result, logs = live.materialize(
        lambda context: launcher.run_training_job(context=context, request=training)
    )
    assert result.success, live.failure(result)
    assert result.asset_materializations_for_node("live")[0].metadata["answer"].value == 43
    assert any(f"[{name}] live: hello from the training job" in m for m in logs)

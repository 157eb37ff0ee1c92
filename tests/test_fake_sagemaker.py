"""The fake SageMaker is faithful: real staging from moto's S3, outputs back to S3, log lines in
CloudWatch Logs, SageMaker's statuses, response shapes and error codes."""

import io
import json
import tarfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, ParamValidationError
from botocore.validate import ParamValidator

from resources.jobs.requests import (
    JobInput,
    JobOutput,
    model_artifact_uri,
    processing_job_request,
    training_job_request,
)
from resources.jobs.settings import JobSettings
from resources.storage import S3ObjectStore
from tests.fake_sagemaker import TERMINAL, FakeSageMakerClient

SETTINGS = JobSettings(image_uri="test:local", max_runtime_seconds=60)
ROLE = "arn:aws:iam::123456789012:role/forecast-test"


@pytest.fixture
def sagemaker(
    aws_env: str, s3_store: S3ObjectStore, tmp_path: Path
) -> Iterator[FakeSageMakerClient]:
    fake = FakeSageMakerClient(store=s3_store, jobs_root=tmp_path / "jobs")
    try:
        yield fake
    finally:
        fake.close()


def processing_request(
    store: S3ObjectStore, name: str, script: str, **kwargs: Any
) -> dict[str, Any]:
    """A processing request running ``script`` as job.py, from a code input on S3."""
    store.write_bytes(store.uri("code", name, "job.py"), textwrap.dedent(script).encode())
    inputs = [JobInput("code", store.uri("code", name) + "/"), *kwargs.pop("inputs", [])]
    return processing_job_request(
        name=name,
        settings=kwargs.pop("settings", SETTINGS),
        role_arn=ROLE,
        entrypoint=["python3", "/opt/ml/processing/input/code/job.py"],
        inputs=inputs,
        **kwargs,
    )


def assert_shape(response: dict[str, Any], operation: str, client: FakeSageMakerClient) -> None:
    """The response fits botocore's output shape for the operation (names, types, required).

    Except that a training job shows ModelArtifacts only once Completed, though the model calls
    it required (SageMaker leaves it out too, at least for some jobs; callers must not count on
    it before Completed).
    """
    body = {k: v for k, v in response.items() if k != "ResponseMetadata"}
    if body.get("TrainingJobStatus") not in (None, "Completed"):
        assert "ModelArtifacts" not in body
        body["ModelArtifacts"] = {"S3ModelArtifacts": "s3://placeholder/model.tar.gz"}
    shape = client.meta.service_model.operation_model(operation).output_shape
    report = ParamValidator().validate(body, shape)
    assert not report.has_errors(), report.generate_report()


def log_messages(client: FakeSageMakerClient, name: str) -> list[str]:
    group, stream = client.log_stream(name)
    logs = boto3.client("logs")
    events = logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True)
    stamps = [e["timestamp"] for e in events["events"]]
    assert stamps == sorted(set(stamps)), "log timestamps must increase strictly"
    return [e["message"] for e in events["events"]]


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = exc.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_processing_job_stages_s3_uploads_outputs_and_logs_to_cloudwatch(sagemaker, s3_store):
    for key in ("a.csv", "sub/b.csv"):
        s3_store.write_bytes(s3_store.uri("in", key), key.encode())
    script = """
        import json, os, sys
        from pathlib import Path
        import boto3
        inp, out = Path(sys.argv[1]), Path(sys.argv[2])
        files = sorted(p.relative_to(inp).as_posix() for p in inp.rglob("*") if p.is_file())
        print("staged", files, flush=True)
        (out / "result.json").write_text(json.dumps({"files": files, "mode": os.environ["MODE"]}))
        # The job's own boto3 reaches the same moto server.
        bucket = os.environ["BUCKET"]
        boto3.client("s3").put_object(Bucket=bucket, Key="direct/hello.txt", Body=b"hi")
        print("done", flush=True)
    """
    request = processing_request(
        s3_store,
        "fa-prep-acme-1",
        script,
        arguments=["/opt/ml/processing/input/data", "/opt/ml/processing/output/result"],
        inputs=[JobInput("data", s3_store.uri("in") + "/")],
        outputs=[JobOutput("result", s3_store.uri("out", "run1"))],
        environment={"MODE": "test", "BUCKET": s3_store.bucket},
    )
    response = sagemaker.create_processing_job(**request)
    assert response["ProcessingJobArn"].endswith(":processing-job/fa-prep-acme-1")
    running = sagemaker.describe_processing_job(ProcessingJobName="fa-prep-acme-1")
    assert running["ProcessingJobStatus"] == "InProgress"
    assert "ProcessingEndTime" not in running
    assert_shape(running, "DescribeProcessingJob", sagemaker)

    done = sagemaker.wait_until_done("fa-prep-acme-1")
    assert done["ProcessingJobStatus"] == "Completed", done.get("FailureReason")
    assert_shape(done, "DescribeProcessingJob", sagemaker)
    assert done["ProcessingJobArn"] == response["ProcessingJobArn"]
    for key in ("AppSpecification", "ProcessingInputs", "ProcessingOutputConfig", "Environment"):
        assert done[key] == request[key]
    assert done["ProcessingStartTime"] <= done["ProcessingEndTime"]
    assert "FailureReason" not in done
    result = json.loads(s3_store.read_bytes(s3_store.uri("out", "run1", "result.json")))
    assert result == {"files": ["a.csv", "sub/b.csv"], "mode": "test"}
    assert s3_store.read_bytes(s3_store.uri("direct", "hello.txt")) == b"hi"
    assert log_messages(sagemaker, "fa-prep-acme-1") == ["staged ['a.csv', 'sub/b.csv']", "done"]
    group, stream = sagemaker.log_stream("fa-prep-acme-1")
    assert group == "/aws/sagemaker/ProcessingJobs"
    assert stream.startswith("fa-prep-acme-1/algo-1-")

    listed = sagemaker.list_processing_jobs(NameContains="prep-acme")
    assert_shape(listed, "ListProcessingJobs", sagemaker)
    assert [s["ProcessingJobStatus"] for s in listed["ProcessingJobSummaries"]] == ["Completed"]
    assert sagemaker.list_processing_jobs(NameContains="nobody")["ProcessingJobSummaries"] == []
    # moto recorded the job too.
    assert boto3.client("sagemaker").list_processing_jobs()["ProcessingJobSummaries"]


def test_failing_script_fails_with_its_message_and_uploads_nothing(sagemaker, s3_store):
    script = """
        import os, sys
        from pathlib import Path
        Path(sys.argv[1], "partial.txt").write_text("half done")
        Path(os.environ["SM_OUTPUT_DIR"], "message").write_text("customer 'acme': broken on purpose")
        print("about to fail", flush=True)
        sys.exit(3)
    """
    request = processing_request(
        s3_store,
        "fa-prep-fail-1",
        script,
        arguments=["/opt/ml/processing/output/result"],
        outputs=[JobOutput("result", s3_store.uri("out", "failed"))],
    )
    sagemaker.create_processing_job(**request)
    done = sagemaker.wait_until_done("fa-prep-fail-1")
    assert done["ProcessingJobStatus"] == "Failed"
    assert done["FailureReason"] == "customer 'acme': broken on purpose"
    assert done["ExitMessage"] == "customer 'acme': broken on purpose"
    assert_shape(done, "DescribeProcessingJob", sagemaker)
    assert s3_store.list_objects(s3_store.uri("out", "failed") + "/") == []
    assert log_messages(sagemaker, "fa-prep-fail-1") == ["about to fail"]


def test_stop_stops_the_job(sagemaker, s3_store):
    request = processing_request(
        s3_store, "fa-prep-stop-1", "import time\nprint('up', flush=True)\ntime.sleep(120)\n"
    )
    sagemaker.create_processing_job(**request)
    assert sagemaker.wait_until_running("fa-prep-stop-1") == "InProgress"
    started = time.monotonic()
    sagemaker.stop_processing_job(ProcessingJobName="fa-prep-stop-1")
    stopping = sagemaker.describe_processing_job(ProcessingJobName="fa-prep-stop-1")
    assert stopping["ProcessingJobStatus"] == "Stopping"
    done = sagemaker.wait_until_done("fa-prep-stop-1")
    assert done["ProcessingJobStatus"] == "Stopped"
    assert "FailureReason" not in done  # a requested stop is not a failure
    assert time.monotonic() - started < 15
    with pytest.raises(ClientError) as exc:
        sagemaker.stop_processing_job(ProcessingJobName="fa-prep-stop-1")
    assert error_code(exc) == ("ValidationException", 400)


def test_training_job_in_script_mode_packs_the_model(sagemaker, s3_store):
    train = textwrap.dedent(
        """
        import json, os
        from pathlib import Path
        hps = json.loads(Path(os.environ["SM_INPUT_CONFIG_DIR"], "hyperparameters.json").read_text())
        data = Path(os.environ["SM_CHANNEL_TRAIN"], "rows.txt").read_text()
        Path(os.environ["SM_MODEL_DIR"], "model.txt").write_text(data.upper() * json.loads(hps["depth"]))
        print("trained", flush=True)
        """
    ).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("train.py")
        info.size = len(train)
        tar.addfile(info, io.BytesIO(train))
    source = s3_store.uri("code", "train", "sourcedir.tar.gz")
    s3_store.write_bytes(source, buffer.getvalue())
    s3_store.write_bytes(s3_store.uri("data", "rows.txt"), b"abc")
    request = training_job_request(
        name="fa-train-acme-1",
        settings=SETTINGS,
        role_arn=ROLE,
        program="train.py",
        source_uri=source,
        hyperparameters={"depth": 2},
        channels=[JobInput("train", s3_store.uri("data", "rows.txt"))],
        output_uri=s3_store.uri("models", "acme"),
    )
    arn = sagemaker.create_training_job(**request)["TrainingJobArn"]
    assert arn.endswith(":training-job/fa-train-acme-1")
    running = sagemaker.describe_training_job(TrainingJobName="fa-train-acme-1")
    assert running["TrainingJobStatus"] == "InProgress"
    assert "ModelArtifacts" not in running

    done = sagemaker.wait_until_done("fa-train-acme-1")
    assert done["TrainingJobStatus"] == "Completed", done.get("FailureReason")
    assert_shape(done, "DescribeTrainingJob", sagemaker)
    assert done["SecondaryStatus"] == "Completed"
    transitions = done["SecondaryStatusTransitions"]
    assert [t["Status"] for t in transitions] == [
        "Starting",
        "Downloading",
        "Training",
        "Uploading",
        "Completed",
    ]
    assert all("EndTime" in t for t in transitions)
    uri = s3_store.uri("models", "acme", "fa-train-acme-1", "output", "model.tar.gz")
    assert uri == model_artifact_uri(request)
    assert done["ModelArtifacts"] == {"S3ModelArtifacts": uri}
    assert done["BillableTimeInSeconds"] >= 1
    assert done["HyperParameters"] == request["HyperParameters"]
    assert done["ResourceConfig"] == request["ResourceConfig"]
    with tarfile.open(fileobj=io.BytesIO(s3_store.read_bytes(uri))) as tar:
        assert tar.extractfile("model.txt").read() == b"ABCABC"  # type: ignore[union-attr]
    assert log_messages(sagemaker, "fa-train-acme-1") == ["trained"]
    assert sagemaker.log_stream("fa-train-acme-1")[0] == "/aws/sagemaker/TrainingJobs"
    listed = sagemaker.list_training_jobs(NameContains="train-acme")
    assert_shape(listed, "ListTrainingJobs", sagemaker)
    assert listed["TrainingJobSummaries"][0]["TrainingJobArn"] == arn


def test_setup_error_fails_the_job_and_a_duplicate_name_is_refused(sagemaker, s3_store):
    request = processing_request(
        s3_store,
        "fa-prep-missing-1",
        "print('never runs')",
        inputs=[JobInput("data", s3_store.uri("nothing-here") + "/")],
    )
    sagemaker.create_processing_job(**request)
    done = sagemaker.wait_until_done("fa-prep-missing-1")
    assert done["ProcessingJobStatus"] == "Failed"
    assert "matches no objects" in done["FailureReason"]
    with pytest.raises(sagemaker.exceptions.ResourceInUse) as exc:
        sagemaker.create_processing_job(**request)
    assert error_code(exc) == ("ResourceInUse", 400)
    assert "already exists" in str(exc.value)


def test_throttle_next_raises_exactly_n_times(sagemaker, s3_store):
    sagemaker.create_processing_job(**processing_request(s3_store, "fa-prep-t-1", "print(1)"))
    sagemaker.throttle_next("describe_processing_job", 2)
    for _ in range(2):
        with pytest.raises(ClientError) as exc:
            sagemaker.describe_processing_job(ProcessingJobName="fa-prep-t-1")
        assert error_code(exc) == ("ThrottlingException", 400)
        assert exc.value.operation_name == "DescribeProcessingJob"
    sagemaker.describe_processing_job(ProcessingJobName="fa-prep-t-1")
    # A throttled create creates nothing; the retry then succeeds.
    sagemaker.throttle_next("CreateProcessingJob", 1)
    request = processing_request(s3_store, "fa-prep-t-2", "print(2)")
    with pytest.raises(ClientError) as exc:
        sagemaker.create_processing_job(**request)
    assert error_code(exc) == ("ThrottlingException", 400)
    sagemaker.create_processing_job(**request)
    assert [op for op, _ in sagemaker.calls].count("DescribeProcessingJob") == 3
    with pytest.raises(ValueError):
        sagemaker.throttle_next("describe_endpoint", 1)
    # Any other error, queued in order behind a throttle; refused calls create nothing.
    sagemaker.throttle_next("DescribeProcessingJob")
    sagemaker.fail_next("DescribeProcessingJob", "AccessDeniedException", "not authorized")
    codes = []
    for _ in range(2):
        with pytest.raises(ClientError) as exc:
            sagemaker.describe_processing_job(ProcessingJobName="fa-prep-t-1")
        codes.append(error_code(exc))
    assert codes == [("ThrottlingException", 400), ("AccessDeniedException", 400)]
    sagemaker.describe_processing_job(ProcessingJobName="fa-prep-t-1")
    assert sagemaker.created_jobs() == ["fa-prep-t-1", "fa-prep-t-2"]


def test_unknown_jobs_and_bad_parameters_fail_as_sagemaker_does(sagemaker):
    """A missing job is a ValidationException (not the ResourceNotFound botocore's model
    documents), with a message that differs by job type; see MISSING_JOB_MESSAGES for sources."""
    with pytest.raises(ClientError) as exc:
        sagemaker.describe_processing_job(ProcessingJobName="no-such-job")
    assert error_code(exc) == ("ValidationException", 400)
    assert exc.value.response["Error"]["Message"] == (
        "Could not find requested job with name no-such-job"
    )
    for call in (sagemaker.describe_training_job, sagemaker.stop_training_job):
        with pytest.raises(ClientError) as exc:
            call(TrainingJobName="no-such-job")
        assert error_code(exc) == ("ValidationException", 400)
        assert exc.value.response["Error"]["Message"] == "Requested resource not found."
    with pytest.raises(ParamValidationError):
        sagemaker.describe_processing_job(Name="no-such-job")
    with pytest.raises(ParamValidationError):  # botocore's own checks, via the moto client
        sagemaker.create_processing_job(ProcessingJobName="bad_name!", RoleArn="x")
    assert sagemaker.meta.region_name == "eu-central-1"


def test_close_stops_running_jobs(aws_env, s3_store, tmp_path):
    fake = FakeSageMakerClient(store=s3_store, jobs_root=tmp_path / "jobs")
    fake.create_processing_job(
        **processing_request(s3_store, "fa-prep-close-1", "import time\ntime.sleep(120)\n")
    )
    fake.wait_until_running("fa-prep-close-1")
    started = time.monotonic()
    fake.close()
    assert time.monotonic() - started < 15
    assert fake.wait_until_done("fa-prep-close-1", timeout=0)["ProcessingJobStatus"] == "Stopped"


def training_request(store: S3ObjectStore, name: str, script: str, **kwargs: Any) -> dict:
    """A script-mode training request running ``script`` as train.py from a source bundle."""
    source = textwrap.dedent(script).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("train.py")
        info.size = len(source)
        tar.addfile(info, io.BytesIO(source))
    source_uri = store.uri("code", name, "sourcedir.tar.gz")
    store.write_bytes(source_uri, buffer.getvalue())
    store.write_bytes(store.uri("data", name, "rows.txt"), b"abc")
    return training_job_request(
        name=name,
        settings=kwargs.pop("settings", SETTINGS),
        role_arn=kwargs.pop("role_arn", ROLE),
        program="train.py",
        source_uri=source_uri,
        hyperparameters={},
        channels=[JobInput("train", store.uri("data", name) + "/")],
        output_uri=store.uri("models"),
    )


def statuses(describe: dict[str, Any]) -> list[str]:
    return [t["Status"] for t in describe["SecondaryStatusTransitions"]]


def test_training_failure_stop_and_time_limit(sagemaker, s3_store):
    failing = """
        import os, sys
        from pathlib import Path
        Path(os.environ["SM_OUTPUT_DIR"], "failure").write_text("ValueError: no rows for acme")
        sys.exit(1)
    """
    sleeping = "import time\nprint('up', flush=True)\ntime.sleep(120)\n"
    sagemaker.create_training_job(**training_request(s3_store, "fa-train-fail-1", failing))
    sagemaker.create_training_job(**training_request(s3_store, "fa-train-stop-1", sleeping))
    one_second = JobSettings(image_uri="test:local", max_runtime_seconds=1)
    sagemaker.create_training_job(
        **training_request(s3_store, "fa-train-slow-1", sleeping, settings=one_second)
    )

    failed = sagemaker.wait_until_done("fa-train-fail-1")
    assert (failed["TrainingJobStatus"], failed["SecondaryStatus"]) == ("Failed", "Failed")
    assert failed["FailureReason"] == "ValueError: no rows for acme"
    assert "ModelArtifacts" not in failed
    assert statuses(failed) == ["Starting", "Downloading", "Training", "Failed"]
    assert_shape(failed, "DescribeTrainingJob", sagemaker)

    sagemaker.wait_until_running("fa-train-stop-1")
    sagemaker.stop_training_job(TrainingJobName="fa-train-stop-1")
    stopping = sagemaker.describe_training_job(TrainingJobName="fa-train-stop-1")
    assert (stopping["TrainingJobStatus"], stopping["SecondaryStatus"]) == ("Stopping", "Stopping")
    stopped = sagemaker.wait_until_done("fa-train-stop-1")
    assert (stopped["TrainingJobStatus"], stopped["SecondaryStatus"]) == ("Stopped", "Stopped")
    assert statuses(stopped) == ["Starting", "Downloading", "Training", "Stopping", "Stopped"]
    assert log_messages(sagemaker, "fa-train-stop-1") == ["up"]

    slow = sagemaker.wait_until_done("fa-train-slow-1")
    assert (slow["TrainingJobStatus"], slow["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")
    assert slow["FailureReason"].startswith("MaxRuntimeExceeded")
    by_status = sagemaker.list_training_jobs(StatusEquals="Stopped", SortBy="Name")
    names = [s["TrainingJobName"] for s in by_status["TrainingJobSummaries"]]
    assert names == ["fa-train-stop-1", "fa-train-slow-1"]  # descending, the default order


def test_waiting_may_start_before_the_job_exists(sagemaker, s3_store):
    request = processing_request(s3_store, "fa-prep-later-1", "print('late')")
    timer = threading.Timer(0.3, lambda: sagemaker.create_processing_job(**request))
    timer.start()
    try:
        status = sagemaker.wait_until_running("fa-prep-later-1", timeout=10)
        assert status == "InProgress" or status in TERMINAL  # a quick job may be done already
        done = sagemaker.wait_until_done("fa-prep-later-1", timeout=10)
    finally:
        timer.join()
    assert done["ProcessingJobStatus"] == "Completed"
    with pytest.raises(TimeoutError):
        sagemaker.wait_until_done("fa-prep-never-1", timeout=0.2)

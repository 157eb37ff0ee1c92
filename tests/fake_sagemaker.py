"""A fake SageMaker for tests: the bookkeeping in a moto server, the jobs really run locally.

As dagster-aws tests its ECS Pipes client against moto with tasks that really run,
:class:`FakeSageMakerClient` looks like a boto3 ``sagemaker`` client to its callers and:

- forwards CreateProcessingJob / CreateTrainingJob to a real boto3 client on a moto server, so
  botocore validates the request exactly as it would for AWS and moto records the job;
- runs the job in a background thread with :class:`~resources.jobs.sandbox.JobSandbox`: inputs
  staged from the object store (S3 on the same moto server), the container command run as a
  local subprocess whose boto3 reaches moto (``AWS_ENDPOINT_URL`` and test credentials), outputs
  uploaded when it succeeds;
- writes every line the job prints to CloudWatch Logs on moto, in SageMaker's log group and
  stream (``/aws/sagemaker/ProcessingJobs`` or ``/aws/sagemaker/TrainingJobs``,
  ``<job name>/algo-1-<epoch>``);
- runs a processing job with ``InstanceCount`` N as N processes at once, one per host
  (``algo-1`` … ``algo-N``, see the sandbox), each with its own log stream
  ``<job name>/algo-<k>-<epoch>``; :attr:`FakeSageMakerClient.processes` names, per job, the hosts
  whose process wrote to its log;
- answers Describe*, List* and Stop* from the job's live state, in the response shapes of
  botocore's service model, with SageMaker's error codes and messages (``ResourceInUse`` for a
  duplicate name, ``ValidationException`` for an unknown job or stopping a finished one).

An unknown job is not answered with the ``ResourceNotFound`` that botocore's model documents for
DescribeProcessingJob and DescribeTrainingJob, but, as the real service does, with a
``ValidationException`` whose message differs by job type (:data:`MISSING_JOB_MESSAGES`).

moto alone is not enough: it marks every job Completed the moment it is created, accepts
duplicate names (replacing the first job) and has no StopTrainingJob.

For tests there are :meth:`FakeSageMakerClient.throttle_next` (the next N calls of an operation
raise ``ThrottlingException``), :meth:`~FakeSageMakerClient.fail_next` (any other error),
:meth:`~FakeSageMakerClient.wait_until_running`,
:meth:`~FakeSageMakerClient.wait_until_done` and :attr:`~FakeSageMakerClient.calls`.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.validate import validate_parameters

from resources.jobs.requests import instance_count
from resources.jobs.sandbox import JobSandbox, JobSetupError, SandboxResult
from resources.storage import ObjectStore, join_uri

JobType = Literal["processing", "training"]
TERMINAL = frozenset({"Completed", "Failed", "Stopped"})
LOG_GROUPS: dict[JobType, str] = {
    "processing": "/aws/sagemaker/ProcessingJobs",
    "training": "/aws/sagemaker/TrainingJobs",
}
# Operations the fake answers, by their API name.
OPERATIONS = (
    "CreateProcessingJob",
    "CreateTrainingJob",
    "DescribeProcessingJob",
    "DescribeTrainingJob",
    "StopProcessingJob",
    "StopTrainingJob",
    "ListProcessingJobs",
    "ListTrainingJobs",
)
# How SageMaker answers a Describe (or Stop) of a job that does not exist: not with the
# ResourceNotFound its API reference and botocore's model document, but with a
# ValidationException (HTTP 400) whose message depends on the job type. Sources: AWS's own
# SageMaker operator for Kubernetes, aws/amazon-sagemaker-operator-for-k8s
# controllers/sdkutil/clientwrapper/sagemaker_client.go (DescribeProcessingJob404Code
# "ValidationException", prefix "Could not find requested job"; DescribeTrainingJob and
# StopTrainingJob "ValidationException", prefix "Requested resource not found"), and the error as
# users saw it: "An error occurred (ValidationException) when calling the DescribeTrainingJob
# operation: Requested resource not found." (aws/amazon-sagemaker-examples#2360, boto/boto3#2808,
# aws/aws-sdk#165).
MISSING_JOB_MESSAGES: dict[JobType, str] = {
    "processing": "Could not find requested job with name {name}",
    "training": "Requested resource not found.",
}
_STATUS_MESSAGES = {
    "Starting": "Preparing the instances for training",
    "Downloading": "Downloading input data",
    "Training": "Training image download completed. Training in progress.",
    "Uploading": "Uploading generated training model",
    "Stopping": "Stopping the training job",
    "Stopped": "Training job stopped",
    "MaxRuntimeExceeded": "Training job exceeded the MaxRuntimeInSeconds provided",
    "Completed": "Training job completed",
}


@dataclass
class _Transition:
    status: str
    start: datetime
    end: datetime | None = None
    message: str = ""

    def shape(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Status": self.status, "StartTime": self.start}
        if self.end is not None:
            out["EndTime"] = self.end
        out["StatusMessage"] = self.message
        return out


@dataclass
class _Job:
    job_type: JobType
    name: str
    arn: str
    request: dict[str, Any]
    created: datetime
    status: str = "InProgress"
    modified: datetime | None = None
    started: datetime | None = None
    ended: datetime | None = None
    failure_reason: str | None = None
    exit_message: str | None = None
    transitions: list[_Transition] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    running: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    log_stream: str | None = None
    log_streams: dict[str, str] = field(default_factory=dict)  # host -> stream
    log_errors: list[str] = field(default_factory=list)
    error: str | None = None  # the traceback when the fake itself failed to run the job
    result: SandboxResult | None = None


class _ObservedStore:
    """The object store as the sandbox sees it, telling the fake when outputs start to upload."""

    def __init__(self, store: ObjectStore, on_upload):
        self._store = store
        self._on_upload = on_upload

    def upload_file(self, path: Path, uri: str):
        self._on_upload()
        return self._store.upload_file(path, uri)

    def upload_directory(self, directory: Path, prefix_uri: str) -> list[str]:
        # The base class's upload_directory calls self.upload_file: route it through this proxy.
        return ObjectStore.upload_directory(cast(ObjectStore, self), directory, prefix_uri)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class FakeSageMakerClient:
    """A boto3 ``sagemaker`` client whose jobs run as local subprocesses (see the module doc).

    ``store`` is where jobs stage inputs from and upload outputs to: an S3 store on the same moto
    server, so that the test, the job and the fake all see the same buckets. ``jobs_root`` holds
    one job directory per job (``<jobs_root>/<name>/job.log`` has the job's output).
    ``endpoint_url`` and ``region_name`` default to ``AWS_ENDPOINT_URL`` and
    ``AWS_DEFAULT_REGION`` (as the ``aws_env`` fixture sets them). Jobs get exactly these four
    variables for AWS, never this machine's own credentials.
    """

    def __init__(
        self,
        *,
        store: ObjectStore,
        jobs_root: Path,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        aws_access_key_id: str = "testing",
        aws_secret_access_key: str = "testing",
        python: str = sys.executable,
    ):
        endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        if not endpoint_url:
            raise ValueError("FakeSageMakerClient needs the moto server's endpoint_url")
        region_name = region_name or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        credentials = {
            "endpoint_url": endpoint_url,
            "region_name": region_name,
            "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
            # A moto error is a bug in the test, not something to retry for seconds.
            "config": Config(retries={"mode": "standard", "max_attempts": 1}),
        }
        self._moto = boto3.client("sagemaker", **credentials)
        self._logs = boto3.client("logs", **credentials)
        self._model = self._moto.meta.service_model
        self.store = store
        self.jobs_root = Path(jobs_root)
        self.python = python
        self.job_env = {
            "AWS_ENDPOINT_URL": endpoint_url,
            "AWS_ACCESS_KEY_ID": aws_access_key_id,
            "AWS_SECRET_ACCESS_KEY": aws_secret_access_key,
            "AWS_DEFAULT_REGION": region_name,
        }
        self.processes: dict[str, list[str]] = {}
        """Per job, the hosts whose container process wrote to its log, in order of first line."""
        self.calls: list[tuple[str, dict[str, Any]]] = []
        """Every call made to the fake, throttled ones included: (API operation name, kwargs)."""
        self._jobs: dict[tuple[JobType, str], _Job] = {}
        self._failures: dict[str, list[tuple[str, str]]] = {}
        self._lock = threading.RLock()
        self._log_groups: set[str] = set()
        self._last_log_ms = 0

    # boto3 client surface ----------------------------------------------------------------

    @property
    def meta(self) -> Any:
        return self._moto.meta

    @property
    def exceptions(self) -> Any:
        return self._moto.exceptions

    def create_processing_job(self, **request: Any) -> dict[str, Any]:
        return self._create("processing", "CreateProcessingJob", request)

    def create_training_job(self, **request: Any) -> dict[str, Any]:
        return self._create("training", "CreateTrainingJob", request)

    def describe_processing_job(self, **params: Any) -> dict[str, Any]:
        self._enter("DescribeProcessingJob", params)
        job = self._get("processing", params["ProcessingJobName"], "DescribeProcessingJob")
        return self._response(self._describe_processing(job))

    def describe_training_job(self, **params: Any) -> dict[str, Any]:
        self._enter("DescribeTrainingJob", params)
        job = self._get("training", params["TrainingJobName"], "DescribeTrainingJob")
        return self._response(self._describe_training(job))

    def stop_processing_job(self, **params: Any) -> dict[str, Any]:
        self._enter("StopProcessingJob", params)
        return self._stop("processing", params["ProcessingJobName"], "StopProcessingJob")

    def stop_training_job(self, **params: Any) -> dict[str, Any]:
        self._enter("StopTrainingJob", params)
        return self._stop("training", params["TrainingJobName"], "StopTrainingJob")

    def list_processing_jobs(self, **params: Any) -> dict[str, Any]:
        self._enter("ListProcessingJobs", params)
        return self._list("processing", params)

    def list_training_jobs(self, **params: Any) -> dict[str, Any]:
        self._enter("ListTrainingJobs", params)
        return self._list("training", params)

    # Test helpers ------------------------------------------------------------------------

    def throttle_next(self, operation: str, times: int = 1) -> None:
        """Make the next ``times`` calls of ``operation`` raise ``ThrottlingException``.

        ``operation`` is the API name (``DescribeTrainingJob``) or the method name
        (``describe_training_job``). The error is what boto3 raises once its own retries are
        spent: a ClientError with HTTP status 400 and message "Rate exceeded".
        """
        self.fail_next(operation, "ThrottlingException", "Rate exceeded", times)

    def fail_next(self, operation: str, code: str, message: str, times: int = 1) -> None:
        """Make the next ``times`` calls of ``operation`` raise ``code`` with ``message``
        (HTTP 400), e.g. ``AccessDeniedException``; queued after earlier failures."""
        name = self._operation_name(operation)
        with self._lock:
            self._failures.setdefault(name, []).extend([(code, message)] * times)

    def wait_until_running(self, name: str, timeout: float = 30) -> str:
        """Wait until the job's container process has started (or the job has ended).

        The job need not exist yet: a test's helper thread may start waiting before the code
        under test creates it. Returns the job's status then.
        """
        deadline = time.monotonic() + timeout
        job = self._await_job(name, deadline, timeout)
        while not (job.running.is_set() or job.done.is_set()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {name} did not start within {timeout} s")
            job.running.wait(0.05)
        return job.status

    def wait_until_done(self, name: str, timeout: float = 30) -> dict[str, Any]:
        """Wait for the job (created by now or soon) to reach Completed, Failed or Stopped.

        Returns its description, as DescribeProcessingJob / DescribeTrainingJob would.
        """
        deadline = time.monotonic() + timeout
        job = self._await_job(name, deadline, timeout)
        if not job.done.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"job {name} still {job.status} after {timeout} s")
        if job.job_type == "processing":
            return self._response(self._describe_processing(job))
        return self._response(self._describe_training(job))

    def _await_job(self, name: str, deadline: float, timeout: float) -> _Job:
        while True:
            try:
                return self._find(name)
            except KeyError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no job {name} was created within {timeout} s") from None
                time.sleep(0.05)

    def created_jobs(self) -> list[str]:
        """Names of the jobs created (refused creates excluded), oldest first."""
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda job: job.created)
        return [job.name for job in jobs]

    def job_dir(self, name: str) -> Path:
        return self.jobs_root / name

    def log_stream(self, name: str) -> tuple[str, str]:
        """(log group, log stream) of the job's CloudWatch log on moto (algo-1's)."""
        job = self._find(name)
        assert job.log_stream is not None, f"job {name} has no log stream yet"
        return LOG_GROUPS[job.job_type], job.log_stream

    def log_streams(self, name: str) -> dict[str, str]:
        """The job's log stream of each host."""
        return dict(self._find(name).log_streams)

    def close(self, timeout: float = 30) -> None:
        """Stop every job still running and wait for its thread."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            if not job.done.is_set():
                job.stop.set()
        for job in jobs:
            if job.thread is not None:
                job.thread.join(timeout)
        self._moto.close()
        self._logs.close()

    def __enter__(self) -> FakeSageMakerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Calls -------------------------------------------------------------------------------

    def _operation_name(self, operation: str) -> str:
        if operation in OPERATIONS:
            return operation
        for name in OPERATIONS:
            if _snake(name) == operation:
                return name
        raise ValueError(f"the fake does not implement {operation!r}; it has {OPERATIONS}")

    def _enter(self, operation: str, params: Mapping[str, Any]) -> None:
        """Record the call, raise a pending failure, validate the parameters as boto3 does."""
        with self._lock:
            self.calls.append((operation, copy.deepcopy(dict(params))))
            if self._failures.get(operation):
                code, message = self._failures[operation].pop(0)
                raise self._error(operation, code, message)
        validate_parameters(dict(params), self._model.operation_model(operation).input_shape)

    def _error(self, operation: str, code: str, message: str) -> ClientError:
        response: Any = {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {
                "RequestId": str(uuid.uuid4()),
                "HTTPStatusCode": 400,
                "HTTPHeaders": {"x-amzn-requestid": "fake", "content-type": "application/json"},
                "RetryAttempts": 0,
            },
        }
        # The modeled class (client.exceptions.ResourceInUse, …) where there is one, as boto3.
        return self._moto.exceptions.from_code(code)(response, operation)

    @staticmethod
    def _response(body: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(body)
        body["ResponseMetadata"] = {
            "RequestId": str(uuid.uuid4()),
            "HTTPStatusCode": 200,
            "HTTPHeaders": {"content-type": "application/x-amz-json-1.1"},
            "RetryAttempts": 0,
        }
        return body

    def _find(self, name: str) -> _Job:
        with self._lock:
            for job_type in ("processing", "training"):
                job = self._jobs.get((job_type, name))
                if job is not None:
                    return job
        raise KeyError(f"the fake has no job named {name!r}")

    def _get(self, job_type: JobType, name: str, operation: str) -> _Job:
        with self._lock:
            job = self._jobs.get((job_type, name))
        if job is None:
            message = MISSING_JOB_MESSAGES[job_type].format(name=name)
            raise self._error(operation, "ValidationException", message)
        return job

    # Create ------------------------------------------------------------------------------

    def _create(self, job_type: JobType, operation: str, request: dict[str, Any]) -> dict[str, Any]:
        self._enter(operation, request)
        kind = "Processing" if job_type == "processing" else "Training"
        name = request[f"{kind}JobName"]
        with self._lock:
            existing = self._jobs.get((job_type, name))
            if existing is not None:
                # What SageMaker answers; moto would accept the name again and replace the job.
                raise self._error(
                    operation,
                    "ResourceInUse",
                    f"{kind} job names must be unique within an AWS account and region, and a "
                    f"{kind.lower()} job with this name already exists ({existing.arn})",
                )
            create = getattr(self._moto, _snake(operation))
            response = create(**request)
            now = _now()
            job = _Job(
                job_type=job_type,
                name=name,
                arn=response[f"{kind}JobArn"],
                request=copy.deepcopy(request),
                created=now,
                modified=now,
            )
            if job_type == "training":
                job.transitions.append(
                    _Transition("Starting", now, message=_STATUS_MESSAGES["Starting"])
                )
            self._jobs[(job_type, name)] = job
            job.thread = threading.Thread(
                target=self._run, args=(job,), name=f"fake-sagemaker-{name}", daemon=True
            )
            job.thread.start()
        return response

    # Running -----------------------------------------------------------------------------

    def _run(self, job: _Job) -> None:
        with self._lock:
            job.started = _now()
            job.modified = job.started
            if job.job_type == "training":
                self._transition(job, "Downloading")
        try:
            self._open_log(job)
        except Exception:
            job.log_errors.append(traceback.format_exc())

        def on_upload() -> None:
            # Only a training job's model and output archives go up through upload_file.
            with self._lock:
                if job.job_type != "training":
                    return
                if job.transitions[-1].status == "Downloading":  # too quick to be seen running
                    self._transition(job, "Training")
                if job.transitions[-1].status == "Training":
                    self._transition(job, "Uploading")

        sandbox = JobSandbox(
            cast(ObjectStore, _ObservedStore(self.store, on_upload)), self.jobs_root, self.python
        )
        status, reason, secondary = "Failed", None, "Failed"
        try:
            run = sandbox.run_processing if job.job_type == "processing" else sandbox.run_training
            result = run(
                job.request,
                extra_env=self.job_env,
                log=lambda line: self._log(job, line),
                stop_requested=lambda: self._poll_stop(job),
                host_logs=lambda host: lambda line: self._log(job, line, host),
            )
            job.result = result
            status, reason = result.status, result.failure_reason
            if status == "Stopped":
                if reason and reason.startswith("MaxRuntimeExceeded"):
                    secondary = "MaxRuntimeExceeded"
                else:
                    secondary, reason = "Stopped", None  # a requested stop is not a failure
            else:
                secondary = status
            if job.job_type == "processing" and result.exit_message is not None:
                job.exit_message = result.exit_message
        except (JobSetupError, FileNotFoundError) as exc:
            reason = f"ClientError: {exc}"
        except Exception as exc:
            job.error = traceback.format_exc()
            reason = f"InternalServerError: {type(exc).__name__}: {exc}"
        try:
            with self._lock:
                job.ended = _now()
                job.modified = job.ended
                job.status = status
                job.failure_reason = reason[:1024] if reason else None
                if job.job_type == "training":
                    ran = job.result is not None  # not when setup failed
                    if ran and not any(t.status == "Training" for t in job.transitions):
                        self._transition(job, "Training", at=job.ended)
                    message = _STATUS_MESSAGES.get(
                        secondary, f"Training job failed. Reason: {reason}"
                    )
                    self._transition(job, secondary, at=job.ended, message=message)
                    job.transitions[-1].end = job.ended
        finally:
            job.done.set()

    def _poll_stop(self, job: _Job) -> bool:
        # The sandbox asks only while the container process runs: the first call is its start.
        if not job.running.is_set():
            with self._lock:
                job.running.set()
                if job.job_type == "training" and job.transitions[-1].status == "Downloading":
                    self._transition(job, "Training")
        return job.stop.is_set()

    def _transition(
        self, job: _Job, status: str, *, at: datetime | None = None, message: str | None = None
    ) -> None:
        at = at or _now()
        if job.transitions and job.transitions[-1].end is None:
            job.transitions[-1].end = at
        text = message if message is not None else _STATUS_MESSAGES.get(status, "")
        job.transitions.append(_Transition(status, at, message=text))
        job.modified = at

    # CloudWatch Logs ---------------------------------------------------------------------

    def _open_log(self, job: _Job) -> None:
        group = LOG_GROUPS[job.job_type]
        if group not in self._log_groups:
            try:
                self._logs.create_log_group(logGroupName=group)
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ResourceAlreadyExistsException":
                    raise
            self._log_groups.add(group)
        count = instance_count(job.request)
        for number in range(1, count + 1):
            # SageMaker's stream names: <job name>/algo-<k>-<epoch seconds>.
            stream = f"{job.name}/algo-{number}-{int(time.time())}"
            self._logs.create_log_stream(logGroupName=group, logStreamName=stream)
            job.log_streams[f"algo-{number}"] = stream
        job.log_stream = job.log_streams["algo-1"]

    def _log(self, job: _Job, line: str, host: str = "algo-1") -> None:
        if not job.running.is_set():
            self._poll_stop(job)
        with self._lock:
            seen = self.processes.setdefault(job.name, [])
            if host not in seen:
                seen.append(host)
        stream = job.log_streams.get(host)
        if stream is None:
            return
        with self._lock:
            # Strictly increasing, so a reader that resumes after the last timestamp it saw
            # neither repeats nor skips lines.
            stamp = max(int(time.time() * 1000), self._last_log_ms + 1)
            self._last_log_ms = stamp
        try:
            self._logs.put_log_events(
                logGroupName=LOG_GROUPS[job.job_type],
                logStreamName=stream,
                logEvents=[{"timestamp": stamp, "message": line}],
            )
        except Exception:
            # Losing a log line must not fail the job (the sandbox stops a job whose log raises).
            job.log_errors.append(traceback.format_exc())

    # Describe, stop, list ----------------------------------------------------------------

    def _echo(self, job: _Job, operation: str) -> dict[str, Any]:
        """The request's fields that the Describe response repeats."""
        members = self._model.operation_model(operation).output_shape.members
        return {k: copy.deepcopy(v) for k, v in job.request.items() if k in members}

    def _describe_processing(self, job: _Job) -> dict[str, Any]:
        with self._lock:
            out = self._echo(job, "DescribeProcessingJob")
            out.update(
                ProcessingJobArn=job.arn,
                ProcessingJobStatus=job.status,
                CreationTime=job.created,
                LastModifiedTime=job.modified,
            )
            if job.started:
                out["ProcessingStartTime"] = job.started
            if job.ended:
                out["ProcessingEndTime"] = job.ended
            if job.failure_reason:
                out["FailureReason"] = job.failure_reason
            if job.exit_message is not None:
                out["ExitMessage"] = job.exit_message
            return out

    def _describe_training(self, job: _Job) -> dict[str, Any]:
        with self._lock:
            out = self._echo(job, "DescribeTrainingJob")
            for flag in (
                "EnableNetworkIsolation",
                "EnableInterContainerTrafficEncryption",
                "EnableManagedSpotTraining",
            ):
                out.setdefault(flag, False)
            out.update(
                TrainingJobArn=job.arn,
                TrainingJobStatus=job.status,
                SecondaryStatus=job.transitions[-1].status,
                SecondaryStatusTransitions=[t.shape() for t in job.transitions],
                CreationTime=job.created,
                LastModifiedTime=job.modified,
            )
            if job.started:
                out["TrainingStartTime"] = job.started
            if job.ended and job.started:
                out["TrainingEndTime"] = job.ended
                seconds = max(1, math.ceil((job.ended - job.started).total_seconds()))
                out["TrainingTimeInSeconds"] = seconds
                out["BillableTimeInSeconds"] = seconds
            if job.failure_reason:
                out["FailureReason"] = job.failure_reason
            if job.status == "Completed":
                out["ModelArtifacts"] = {
                    "S3ModelArtifacts": join_uri(
                        job.request["OutputDataConfig"]["S3OutputPath"],
                        job.name,
                        "output",
                        "model.tar.gz",
                    )
                }
            return out

    def _stop(self, job_type: JobType, name: str, operation: str) -> dict[str, Any]:
        job = self._get(job_type, name, operation)
        with self._lock:
            if job.status in TERMINAL:
                raise self._error(
                    operation,
                    "ValidationException",
                    f"The request was rejected because the {job_type} job is in status "
                    f"{job.status}.",
                )
            if job.status == "InProgress":
                job.status = "Stopping"
                job.modified = _now()
                if job_type == "training":
                    self._transition(job, "Stopping")
            job.stop.set()
        return self._response({})

    def _list(self, job_type: JobType, params: Mapping[str, Any]) -> dict[str, Any]:
        kind = "Processing" if job_type == "processing" else "Training"
        with self._lock:
            jobs = [j for (t, _), j in self._jobs.items() if t == job_type]
            summaries = []
            for job in jobs:
                if params.get("NameContains", "") not in job.name:
                    continue
                if params.get("StatusEquals") not in (None, job.status):
                    continue
                if not _in_window(job.created, params, "CreationTime"):
                    continue
                if not _in_window(job.modified or job.created, params, "LastModifiedTime"):
                    continue
                summary: dict[str, Any] = {
                    f"{kind}JobName": job.name,
                    f"{kind}JobArn": job.arn,
                    "CreationTime": job.created,
                    "LastModifiedTime": job.modified,
                    f"{kind}JobStatus": job.status,
                }
                if job.ended:
                    summary[f"{kind}EndTime"] = job.ended
                if job_type == "training":
                    summary["SecondaryStatus"] = job.transitions[-1].status
                else:
                    if job.failure_reason:
                        summary["FailureReason"] = job.failure_reason
                    if job.exit_message is not None:
                        summary["ExitMessage"] = job.exit_message
                summaries.append(summary)
        sort_by = params.get("SortBy", "CreationTime")
        key = {"Name": f"{kind}JobName", "Status": f"{kind}JobStatus"}.get(sort_by, sort_by)
        summaries.sort(key=lambda s: s[key], reverse=params.get("SortOrder") != "Ascending")
        start = int(params.get("NextToken") or 0)
        size = params.get("MaxResults", 10)
        out: dict[str, Any] = {f"{kind}JobSummaries": summaries[start : start + size]}
        if start + size < len(summaries):
            out["NextToken"] = str(start + size)
        return self._response(out)


def _now() -> datetime:
    return datetime.now(UTC)


def _snake(operation: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")


def _in_window(moment: datetime, params: Mapping[str, Any], field_name: str) -> bool:
    after, before = params.get(f"{field_name}After"), params.get(f"{field_name}Before")
    return (after is None or moment > _aware(after)) and (before is None or moment < _aware(before))


def _aware(moment: Any) -> datetime:
    if isinstance(moment, (int, float)):
        return datetime.fromtimestamp(moment, UTC)
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

"""Dagster Pipes for SageMaker Processing and Training jobs.

:class:`PipesSageMakerClient` is shaped like dagster-aws's ``PipesECSClient``: keyword-only
``run(*, context, processing_job=… | training_job=…, extras=None)`` taking the boto3 request body.
It launches the job with the Pipes bootstrap (context and messages through S3) merged into the
job's environment and the Dagster run, asset and partition on its tags, then waits, streaming the
job's CloudWatch log lines into the run, in time order across its instances, without repeating any.

What it adds over a plain launch-and-wait:

- **One job per step, never someone else's.** Job names are deterministic (asset, customer, the
  first 8 characters of the run id, retry number). The client creates the job first and, when
  SageMaker answers ``ResourceInUse`` (the name is taken), describes the job of that name. Every
  job carries its owner in its environment (full run id, step, partitions and a digest of the
  request, which covers code, inputs and settings). A job of this step with the same request is
  reattached if running or reused if Completed; a Failed or Stopped one gets a new attempt name;
  any other job of that name is refused with an error that says whose it is. A retried step or a
  restarted process never launches a second copy of a job that is running, and a name collision
  never republishes another run's outputs.
- **Bounded waiting.** Polling backs off with jitter up to ``max_poll_seconds``, and gives up
  (stopping the job) once the job is older than its time limit (MaxRuntimeInSeconds, or
  MaxWaitTimeInSeconds for managed spot training, which includes waiting for capacity) plus
  ``wait_grace_seconds`` for provisioning and upload. Throttling on Describe is logged and
  retried, never fatal; every call also goes through botocore's adaptive retry mode.
- **A job never outlives its step by accident.** On every way out of the wait that abandons the
  job (the run interrupted, an error such as AccessDenied on the logs, throttling past every
  retry, the ceiling) the job is stopped before the error propagates. Only a process that dies
  outright leaves it running, for the restarted step to reattach to.
- **Failures with SageMaker's reason.** Failed and Stopped both fail the step with FailureReason
  (and ExitMessage for processing) in the error.
- **Metadata**: ARN, console URL, status history, billable seconds, instance type, input and
  output URIs.

Pipes files live under ``<pipes_prefix>/<key>/`` (``key``: 16 random hex characters, one per
session): ``context.json``, deleted when the session ends, and the job's message chunks under
``messages/``. The key is short on purpose: SageMaker caps an Environment value at 256 characters
for processing jobs (512 for training), and the encoded context names its bucket and key. A job
on several instances (``algo-1`` … ``algo-N``) is given that one place, as SageMaker gives every
instance the same environment; each instance writes its chunks under ``messages/<host>/``
(``forecast_core.runtime.host_message_params``), which cannot collide with each other nor with
a single instance's ``messages/<n>.json``. The reader then reads each host's chunks in order and
the session waits for a ``closed`` from every host. The job's log streams, one per instance,
are merged by time.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import heapq
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import boto3
import dagster as dg
from botocore.config import Config
from botocore.exceptions import ClientError
from dagster._core.definitions.resource_annotation import TreatAsResourceParam
from dagster._core.pipes.client import PipesContextInjector, PipesParams
from dagster._core.pipes.utils import PipesThreadedMessageReader
from dagster_pipes import PipesContextData, decode_param

from forecast_core.runtime import host_message_params, host_names
from resources.jobs.base import CompletedJob, JobFailedError, JobLauncher, failure_detail
from resources.jobs.requests import instance_count
from resources.jobs.settings import JobName, JobSettings
from resources.jobs.validation import validate_request

JobType = Literal["processing", "training"]

THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
)
TERMINAL = frozenset({"Completed", "Failed", "Stopped"})
MAX_JOB_NAME = 63
MAX_ATTEMPTS = 99
LOG_GROUPS = {
    "processing": "/aws/sagemaker/ProcessingJobs",
    "training": "/aws/sagemaker/TrainingJobs",
}
# SageMaker's cap on one Environment value; the owner's fields are cut to the smaller one.
ENVIRONMENT_VALUE_LIMIT = {"processing": 256, "training": 512}

# The owner of a job, in its Environment: DescribeProcessingJob and DescribeTrainingJob return a
# job's Environment (its tags need a separate ListTags call and permission).
OWNER_ENV = {
    "run_id": "FORECAST_JOB_RUN_ID",
    "step": "FORECAST_JOB_STEP",
    "partitions": "FORECAST_JOB_PARTITIONS",
    "request_digest": "FORECAST_JOB_REQUEST_DIGEST",
}
PIPES_ENV = ("DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES")

# The prebuilt image used when no image URI is configured: SageMaker's scikit-learn container
# with the scikit-learn the models are trained and loaded with (requirements.lock pins 1.9).
SKLEARN_FRAMEWORK_VERSION = "1.9-0"

# botocore's adaptive mode adds client-side rate limiting to retries on throttling.
BOTO_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 10})


@dataclass(frozen=True)
class _Api:
    """The SageMaker operations and field names of one job type."""

    job_type: JobType
    create_operation: Literal["CreateProcessingJob", "CreateTrainingJob"]
    create: str
    describe: str
    stop: str
    name_field: str
    status_field: str
    arn_field: str
    console_path: str


_APIS = {
    "processing": _Api(
        "processing",
        "CreateProcessingJob",
        "create_processing_job",
        "describe_processing_job",
        "stop_processing_job",
        "ProcessingJobName",
        "ProcessingJobStatus",
        "ProcessingJobArn",
        "processing-jobs",
    ),
    "training": _Api(
        "training",
        "CreateTrainingJob",
        "create_training_job",
        "describe_training_job",
        "stop_training_job",
        "TrainingJobName",
        "TrainingJobStatus",
        "TrainingJobArn",
        "jobs",
    ),
}


@dataclass
class WaitPolicy:
    """How to wait for a job: exponential backoff with jitter, and a ceiling."""

    first_poll_seconds: float = 5.0
    max_poll_seconds: float = 60.0
    backoff: float = 1.5
    wait_grace_seconds: float = 1800.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def delays(self) -> Iterator[float]:
        delay = self.first_poll_seconds
        while True:
            yield delay * random.uniform(0.8, 1.2)
            delay = min(self.max_poll_seconds, delay * self.backoff)

    def ceiling_seconds(self, stopping: Mapping[str, Any]) -> float:
        """How old a job may get before the client stops waiting (and stops it).

        A managed spot training job may take MaxWaitTimeInSeconds in all (waiting for capacity
        included), which is at least its MaxRuntimeInSeconds.
        """
        limit = max(
            int(stopping.get("MaxRuntimeInSeconds") or 0),
            int(stopping.get("MaxWaitTimeInSeconds") or 0),
        )
        return limit + self.wait_grace_seconds


@dataclass(frozen=True)
class JobOwner:
    """Who launched a job, recorded in its Environment and checked before it is reused."""

    run_id: str
    step: str
    partitions: str
    request_digest: str

    def environment(self, job_type: JobType) -> dict[str, str]:
        limit = ENVIRONMENT_VALUE_LIMIT[job_type]
        return {env: str(getattr(self, attr))[:limit] for attr, env in OWNER_ENV.items()}

    @classmethod
    def from_environment(cls, environment: Mapping[str, str]) -> JobOwner | None:
        if not all(env in environment for env in OWNER_ENV.values()):
            return None
        return cls(**{attr: environment[env] for attr, env in OWNER_ENV.items()})

    def same_step(self, other: JobOwner, job_type: JobType) -> bool:
        """Same run, step and partitions (compared as the job's Environment holds them)."""
        mine, theirs = self.environment(job_type), other.environment(job_type)
        keys = (OWNER_ENV["run_id"], OWNER_ENV["step"], OWNER_ENV["partitions"])
        return all(mine[k] == theirs[k] for k in keys)

    def __str__(self) -> str:
        partitions = f", partitions {self.partitions}" if self.partitions else ""
        return f"run {self.run_id}, step {self.step}{partitions}"


def request_digest(api: _Api, request: Mapping[str, Any]) -> str:
    """A digest of what a job does: its request without its name, tags and Pipes variables.

    The code (content-hashed URIs and image), inputs and settings all are in the request, so a
    job with the same digest ran the same code on the same inputs.
    """
    body = {k: v for k, v in request.items() if k not in (api.name_field, "Tags")}
    body["Environment"] = {
        k: v
        for k, v in (request.get("Environment") or {}).items()
        if k not in PIPES_ENV and k not in OWNER_ENV.values()
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class JobNameTakenError(dg.Failure):
    """A job of the requested name exists and is not this step's to reuse."""


class _WaitCeilingExceededError(Exception):
    pass


class _S3ContextInjector(PipesContextInjector):
    """Writes the Pipes context to one short key; deletes it when the session ends.

    dagster-aws's ``PipesS3ContextInjector`` appends 30 random letters to its prefix and deletes
    the object only after a normal exit. Here the context is also deleted after an error or an
    interruption (the job is stopped then); ``keep`` leaves it for a job that goes on running.
    """

    def __init__(self, *, bucket: str, client: Any, key: str):
        self.bucket, self.client, self.key = bucket, client, key
        self.keep = False

    @contextmanager
    def inject_context(self, context: PipesContextData) -> Iterator[PipesParams]:
        self.client.put_object(
            Bucket=self.bucket, Key=self.key, Body=json.dumps(context).encode("utf-8")
        )
        try:
            yield {"bucket": self.bucket, "key": self.key}
        finally:
            if not self.keep:
                self.client.delete_object(Bucket=self.bucket, Key=self.key)

    def no_messages_debug_text(self) -> str:
        return f"Wrote the Pipes context to s3://{self.bucket}/{self.key}."


class _PipesS3ChunkReader(PipesThreadedMessageReader):
    """Reads the message chunks a job writes under one key prefix (``<prefix>/<n>.json``), or,
    for a job on several instances, under each host's (``<prefix>/<host>/<n>.json``).

    Each read lists the prefix and reads every chunk not read yet, in order, so a reattached job's
    whole backlog arrives in one pass. dagster-aws's ``PipesS3MessageReader`` reads one chunk per
    second and stops 10 s after the session closes: about 11 chunks of a finished job. Only
    chunks that the listing shows are read, so a 403 is an error, never taken for "no more".
    Each host is one writer: the session waits until every host has sent ``closed``.
    """

    def __init__(
        self, *, bucket: str, client: Any, key_prefix: str, interval: float, instances: int = 1
    ):
        super().__init__(interval=interval)
        self.bucket, self.client = bucket, client
        self._lock = threading.Lock()
        self._key_prefix = key_prefix.rstrip("/")
        self.hosts = host_names(max(1, instances))
        self._next_chunk = dict.fromkeys(self.hosts, 1)
        self._last_check = float("-inf")

    @property
    def expected_writer_count(self) -> int:
        return len(self.hosts)

    @property
    def key_prefix(self) -> str:
        with self._lock:
            return self._key_prefix

    def host_prefix(self, host: str) -> str:
        """Where ``host`` writes its chunks (the job's own prefix for a single instance)."""
        params = host_message_params({"key_prefix": self.key_prefix}, host, len(self.hosts))
        return str(params["key_prefix"]).rstrip("/")

    def retarget(self, key_prefix: str) -> None:
        """Read from where an existing job was told to write (before any chunk was read)."""
        with self._lock:
            if any(n != 1 for n in self._next_chunk.values()):
                raise dg.DagsterInvariantViolationError("retarget after messages were read")
            self._key_prefix = key_prefix.rstrip("/")
            self._last_check = float("-inf")

    @contextmanager
    def get_params(self) -> Iterator[PipesParams]:
        yield {"bucket": self.bucket, "key_prefix": self.key_prefix}

    def _chunks(self, prefix: str) -> list[int]:
        """Indices of the chunks under ``prefix`` (its direct children only), sorted."""
        prefix = prefix + "/"
        found = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            for obj in page.get("Contents", []):
                stem = obj["Key"][len(prefix) :].removesuffix(".json")
                if stem.isdigit() and obj["Key"].endswith(".json"):
                    found.append(int(stem))
        return sorted(found)

    def messages_are_readable(self, params: PipesParams) -> bool:
        # Dagster asks every second until the first chunk exists: list at most every 2 s.
        now = time.monotonic()
        if now - self._last_check < min(self.interval, 2.0):
            return False
        self._last_check = now
        return any(self._chunks(self.host_prefix(host)) for host in self.hosts)

    def download_messages(self, cursor: Any, params: PipesParams) -> tuple[Any, str] | None:
        texts = []
        for host in self.hosts:
            prefix = self.host_prefix(host)
            for index in self._chunks(prefix):
                if index < self._next_chunk[host]:
                    continue
                if index != self._next_chunk[host]:
                    break  # a gap: keep the order, read the rest next time
                key = f"{prefix}/{index}.json"
                texts.append(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
                self._next_chunk[host] += 1
        if not texts:
            return None
        return dict(self._next_chunk), "\n".join(t.decode("utf-8") for t in texts)

    def no_messages_debug_text(self) -> str:
        where = "" if len(self.hosts) == 1 else f" (one folder per host, {len(self.hosts)} hosts)"
        return f"Read Pipes message chunks from s3://{self.bucket}/{self.key_prefix}/{where}."


def next_attempt_name(name: str, attempt: int) -> str:
    """``name`` with an attempt suffix, still within SageMaker's 63 characters."""
    suffix = f"-a{attempt}"
    return name[: MAX_JOB_NAME - len(suffix)].rstrip("-") + suffix


class PipesSageMakerClient(dg.PipesClient, TreatAsResourceParam):
    """A Dagster Pipes client for SageMaker Processing and Training jobs.

    Args:
        pipes_bucket: S3 bucket for the Pipes context and messages.
        pipes_prefix: key prefix under which they are written.
        client: boto3 ``sagemaker`` client (default: one with adaptive retries).
        logs_client: boto3 ``logs`` client for streaming the job's CloudWatch log.
        s3_client: boto3 ``s3`` client for the Pipes context and messages.
        wait: polling policy.
        forward_termination: stop the job when the Dagster run is interrupted.
    """

    def __init__(
        self,
        *,
        pipes_bucket: str,
        pipes_prefix: str = "pipes",
        client: Any = None,
        logs_client: Any = None,
        s3_client: Any = None,
        wait: WaitPolicy | None = None,
        forward_termination: bool = True,
        message_interval_seconds: float = 5.0,
    ):
        self.client = client or boto3.client("sagemaker", config=BOTO_CONFIG)
        self.logs = logs_client or boto3.client("logs", config=BOTO_CONFIG)
        self.s3 = s3_client or boto3.client("s3", config=BOTO_CONFIG)
        self.pipes_bucket = pipes_bucket
        self.pipes_prefix = pipes_prefix.strip("/")
        self.wait = wait or WaitPolicy()
        self.forward_termination = forward_termination
        self.message_interval_seconds = message_interval_seconds

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    def run(  # type: ignore[override]
        self,
        *,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        processing_job: Mapping[str, Any] | None = None,
        training_job: Mapping[str, Any] | None = None,
        extras: Mapping[str, Any] | None = None,
    ) -> tuple[dg.PipesClientCompletedInvocation, dict[str, Any]]:
        """Run (or reattach to) one job; returns the Pipes invocation and the final Describe."""
        if (processing_job is None) == (training_job is None):
            raise dg.DagsterInvariantViolationError(
                "pass exactly one of processing_job, training_job"
            )
        api = _APIS["processing" if processing_job is not None else "training"]
        request = copy.deepcopy(
            dict(processing_job if processing_job is not None else training_job or {})
        )
        owner = JobOwner(
            run_id=context.run_id,
            step=_step_of(context),
            partitions=_partitions_of(context),
            request_digest=request_digest(api, request),
        )
        location = f"{self.pipes_prefix}/{uuid.uuid4().hex[:16]}"
        injector = _S3ContextInjector(
            bucket=self.pipes_bucket, client=self.s3, key=f"{location}/context.json"
        )
        reader = _PipesS3ChunkReader(
            bucket=self.pipes_bucket,
            client=self.s3,
            key_prefix=f"{location}/messages",
            interval=self.message_interval_seconds,
            instances=instance_count(request),
        )
        with dg.open_pipes_session(
            context=context,
            context_injector=injector,
            message_reader=reader,
            extras=dict(extras or {}),
        ) as session:
            name, existing = self._launch(context, api, request, owner, session, reader)
            # A reused Completed job is waited for too: its log reaches this run as well.
            stopping = (existing or request).get("StoppingCondition", {})
            description = self._wait_abandoning_safely(context, api, name, stopping, injector)
        status = description[api.status_field]
        if status != "Completed":
            reason = description.get("FailureReason") or "no FailureReason given"
            exit_message = description.get("ExitMessage")
            detail = failure_detail(
                reason + (f" | ExitMessage: {exit_message}" if exit_message else ""),
                session.get_custom_messages(),
            )
            raise JobFailedError(
                description=f"{api.job_type} job {name} {status.lower()}: {detail}",
                metadata=self._metadata(api, description),
            )
        return dg.PipesClientCompletedInvocation(
            session, metadata=self._metadata(api, description)
        ), description

    # Launching -----------------------------------------------------------------------------------

    def _launch(
        self,
        context,
        api: _Api,
        request: dict[str, Any],
        owner: JobOwner,
        session: dg.PipesSession,
        reader: _PipesS3ChunkReader,
    ) -> tuple[str, dict[str, Any] | None]:
        """Create the job, or find this step's job of that name; returns its name and, for an
        existing job, its description.

        Create comes first: a taken name is answered with ``ResourceInUse`` ("Training job names
        must be unique within an AWS account and region, and a training job with this name
        already exists (arn:…)", aws/amazon-sagemaker-examples#3108), while a Describe of a
        missing job is not answered with the ResourceNotFound that the API reference documents
        but with a ValidationException whose message differs by job type: "Could not find
        requested job …" for processing, "Requested resource not found." for training (AWS's
        aws/amazon-sagemaker-operator-for-k8s, controllers/sdkutil/clientwrapper/
        sagemaker_client.go; aws/amazon-sagemaker-examples#2360; boto/boto3#2808). Matching
        those messages would break the day one changes; a refused create cannot be misread.
        """
        base = request[api.name_field]
        for attempt in range(1, MAX_ATTEMPTS + 1):
            name = base if attempt == 1 else next_attempt_name(base, attempt)
            body = self._final_body(context, api, request, name, owner, session)
            validate_request(api.create_operation, body)
            try:
                response = getattr(self.client, api.create)(**body)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ResourceInUse":
                    raise
                existing = self._describe(api, name)
                if self._takes_over(context, api, name, existing, owner):
                    messages = decode_param(existing["Environment"]["DAGSTER_PIPES_MESSAGES"])
                    reader.retarget(messages["key_prefix"])
                    return name, existing
                continue
            context.log.info(f"[pipes] started {api.job_type} job {response[api.arn_field]}")
            return name, None
        raise JobFailedError(
            description=f"{MAX_ATTEMPTS} earlier attempts of {api.job_type} job {base} exist"
        )

    def _takes_over(
        self, context, api: _Api, name: str, existing: Mapping[str, Any], owner: JobOwner
    ) -> bool:
        """True to reattach to (or reuse) the existing job ``name``, False to try the next
        attempt name; raises when the job is not this step's."""
        status = existing[api.status_field]
        theirs = JobOwner.from_environment(existing.get("Environment") or {})
        if theirs is None or not theirs.same_step(owner, api.job_type):
            whose = str(theirs) if theirs else "a launch that did not record its owner"
            raise JobNameTakenError(
                description=(
                    f"{api.job_type} job {name} already exists ({status}) and is not this "
                    f"step's: it belongs to {whose}; this step is {owner}. Job names carry only "
                    "the first 8 characters of the run id, so two runs can share one. The "
                    "existing job was left alone and none was launched: re-execute the run (a "
                    "new run id gives new job names)."
                ),
                metadata={"existing_job_arn": existing.get(api.arn_field, "")},
            )
        if status in ("Failed", "Stopped"):
            context.log.info(
                f"[pipes] {api.job_type} job {name} ended {status}; launching a new attempt"
            )
            return False
        if theirs.request_digest != owner.request_digest:
            raise JobNameTakenError(
                description=(
                    f"{api.job_type} job {name} of this step is {status}, but it was launched "
                    "with another request (code, inputs or settings changed since: request "
                    f"digest {theirs.request_digest}, now {owner.request_digest}). Its outputs "
                    "are not reused and no second job is launched beside it (both would write "
                    "the same staging folder). Stop it if it is still running (aws sagemaker "
                    f"stop-{api.job_type}-job --{api.job_type}-job-name {name}) and re-execute "
                    "the run."
                ),
                metadata={"existing_job_arn": existing.get(api.arn_field, "")},
            )
        verb = "reusing completed" if status == "Completed" else "reattaching to running"
        context.log.info(f"[pipes] {verb} {api.job_type} job {name}")
        return True

    def _final_body(
        self,
        context,
        api: _Api,
        request: Mapping[str, Any],
        name: str,
        owner: JobOwner,
        session: dg.PipesSession,
    ) -> dict[str, Any]:
        """The body sent to SageMaker: the request under ``name``, with the Pipes bootstrap and
        the owner in its environment and Dagster's run, asset and partition on its tags."""
        body = copy.deepcopy(dict(request))
        body[api.name_field] = name
        body["Environment"] = {
            **(request.get("Environment") or {}),
            **session.get_bootstrap_env_vars(),
            **owner.environment(api.job_type),
        }
        tags = {t["Key"]: t["Value"] for t in request.get("Tags", [])}
        for key, value in {
            **session.default_remote_invocation_info,
            **_asset_tags(context),
        }.items():
            tags.setdefault(key, str(value)[:256])
        body["Tags"] = [{"Key": k, "Value": v} for k, v in sorted(tags.items())]
        return body

    def _describe(self, api: _Api, name: str, attempts: int = 10) -> dict[str, Any]:
        """Describe ``name``. Throttling is waited out (bounded)."""
        delays = self.wait.delays()
        for attempt in range(attempts):
            try:
                return getattr(self.client, api.describe)(**{api.name_field: name})
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code not in THROTTLING_CODES or attempt == attempts - 1:
                    raise
                self.wait.sleep(next(delays))
        raise AssertionError("unreachable")  # pragma: no cover

    # Waiting -------------------------------------------------------------------------------------

    def _wait_abandoning_safely(
        self,
        context,
        api: _Api,
        name: str,
        stopping: Mapping[str, Any],
        injector: _S3ContextInjector,
    ) -> dict[str, Any]:
        """Wait for the job; on every way out that abandons it, stop it first.

        An interrupted run stops its job (unless ``forward_termination`` is off). Any other error
        (AccessDenied on the logs, throttling past every retry, a bug) fails the step, and a job
        left running would be orphaned: a retry or re-execution carries another name and would
        launch a second copy. Only a dying process (a BaseException that is neither an
        interrupt nor KeyboardInterrupt, standing in for SIGKILL in the tests) leaves the job
        running, with its Pipes context, for the restarted step to reattach to.
        """
        try:
            return self._wait_for(context, api, name, stopping)
        except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
            if self.forward_termination:
                context.log.warning(
                    f"[pipes] Dagster run interrupted: stopping {api.job_type} job {name}"
                )
                self._stop(context, api, name)
            else:
                injector.keep = True
            raise
        except _WaitCeilingExceededError as exc:
            self._stop(context, api, name)
            raise JobFailedError(description=str(exc)) from exc
        except Exception as exc:
            context.log.warning(
                f"[pipes] stopping {api.job_type} job {name}: waiting for it failed with "
                f"{type(exc).__name__}: {exc}"
            )
            self._stop(context, api, name)
            raise
        except BaseException:
            injector.keep = True
            raise

    def _wait_for(
        self, context, api: _Api, name: str, stopping: Mapping[str, Any]
    ) -> dict[str, Any]:
        started = time.monotonic()
        created: datetime | None = None
        logs = _LogFollower(self.logs, LOG_GROUPS[api.job_type], name)
        last_status = None
        self._observed: list[dict[str, str]] = []
        for delay in self.wait.delays():
            description = None
            try:
                description = getattr(self.client, api.describe)(**{api.name_field: name})
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in THROTTLING_CODES:
                    raise
                context.log.warning(f"[pipes] Describe of {name} throttled; retrying")
            if description is not None:
                for line in logs.new_lines():
                    context.log.info(f"[{name}] {line}")
                status = description[api.status_field]
                secondary = description.get("SecondaryStatus")
                if (status, secondary) != last_status:
                    context.log.info(
                        f"[pipes] {name}: {status}" + (f" ({secondary})" if secondary else "")
                    )
                    last_status = (status, secondary)
                    self._observed.append(
                        {
                            "status": status,
                            "secondary": secondary or "",
                            "seen_at": datetime.now(UTC).isoformat(),
                        }
                    )
                if status in TERMINAL:
                    for line in logs.new_lines(final=True):
                        context.log.info(f"[{name}] {line}")
                    return description
                created = description.get("CreationTime") or created
                stopping = description.get("StoppingCondition") or stopping
            # The job's age counts from its creation, so a reattached job gets no fresh ceiling.
            age = (
                (datetime.now(UTC) - created).total_seconds()
                if isinstance(created, datetime) and created.tzinfo
                else time.monotonic() - started
            )
            ceiling = self.wait.ceiling_seconds(stopping)
            if age > ceiling:
                raise _WaitCeilingExceededError(
                    f"{api.job_type} job {name} still "
                    f"{last_status[0] if last_status else 'not described'} {age:.0f} s after "
                    f"it was created, past its limit plus wait_grace_seconds ({ceiling:.0f} s); "
                    "stopped it"
                )
            self.wait.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _stop(self, context, api: _Api, name: str) -> None:
        # Never masks the error that made the client stop the job.
        try:
            getattr(self.client, api.stop)(**{api.name_field: name})
        except Exception as exc:
            context.log.warning(f"[pipes] could not stop {api.job_type} job {name}: {exc}")

    # Reporting -----------------------------------------------------------------------------------

    def _metadata(self, api: _Api, description: Mapping[str, Any]) -> dict[str, Any]:
        region = self.client.meta.region_name
        name = description[api.name_field]
        meta: dict[str, Any] = {
            "job_arn": description.get(api.arn_field, ""),
            "console_url": dg.MetadataValue.url(
                f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}#/{api.console_path}/{name}"
            ),
        }
        # SageMaker keeps a history for training jobs; for processing jobs, what this client saw.
        transitions = description.get("SecondaryStatusTransitions")
        history = (
            [
                {"status": t.get("Status"), "message": t.get("StatusMessage", "")}
                for t in transitions
            ]
            if transitions
            else list(getattr(self, "_observed", []))
        )
        if history:
            meta["status_history"] = dg.MetadataValue.json(history)
        return meta


def _asset_tags(context: Any) -> dict[str, str]:
    """The asset and partition a job is for, so the console leads back to Dagster."""
    tags: dict[str, str] = {}
    if getattr(context, "has_partition_key", False):
        tags["dagster/partition"] = context.partition_key
    # An op, or a multi-asset, has no single asset key to name.
    with contextlib.suppress(Exception):
        tags["dagster/asset"] = context.asset_key.to_user_string()
    return tags


def _step_of(context: Any) -> str:
    """The asset a job is for, or the op of a multi-asset or plain op."""
    with contextlib.suppress(Exception):
        return context.asset_key.to_user_string()
    return str(context.op_handle)


def _partitions_of(context: Any) -> str:
    """The step's partition, or range of partitions (a batch); empty when unpartitioned."""
    if not getattr(context, "has_partition_key_range", False):
        return ""
    keys = context.partition_key_range
    return keys.start if keys.start == keys.end else f"{keys.start}...{keys.end}"


class _LogFollower:
    """New CloudWatch log lines of one job, across its streams (one per instance), each line
    exactly once, in time order.

    Each stream is in time order, but one instance's line may become readable after a later
    line of another was already shown (the instances log concurrently and CloudWatch takes a
    moment to ingest). So a line is held back until no stream can still deliver an earlier one:
    until every stream has shown a later line, or ``hold_back_seconds`` have passed since its
    timestamp. When the job has ended (``final``), everything left is shown.
    """

    def __init__(self, logs: Any, group: str, job_name: str, hold_back_seconds: float = 10.0):
        self.logs, self.group, self.prefix = logs, group, f"{job_name}/"
        self.tokens: dict[str, str | None] = {}
        self.hold_back_ms = int(hold_back_seconds * 1000)
        self.latest: dict[str, int] = {}  # newest timestamp read from each stream
        self.pending: list[tuple[int, int, str]] = []  # (timestamp, order read, message)
        self._read = 0

    def _streams(self) -> list[str]:
        """The job's streams; DescribeLogStreams returns at most 50 a page."""
        names: list[str] = []
        kwargs: dict[str, Any] = {"logGroupName": self.group, "logStreamNamePrefix": self.prefix}
        while True:
            try:
                page = self.logs.describe_log_streams(**kwargs)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("ResourceNotFoundException", *THROTTLING_CODES):
                    return names  # no log yet, or throttled: the next poll catches up
                raise
            names.extend(s["logStreamName"] for s in page.get("logStreams", []))
            token = page.get("nextToken")
            if not token or token == kwargs.get("nextToken"):
                return names
            kwargs["nextToken"] = token

    def _new_events(self, stream: str, into: list[dict[str, Any]]) -> bool:
        """Append the stream's events not seen yet to ``into``; False if throttled."""
        while True:
            kwargs: dict[str, Any] = {
                "logGroupName": self.group,
                "logStreamName": stream,
                "startFromHead": True,
            }
            token = self.tokens.get(stream)
            if token:
                kwargs["nextToken"] = token
            try:
                page = self.logs.get_log_events(**kwargs)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in THROTTLING_CODES:
                    return False
                raise
            into.extend(page.get("events", []))
            next_token = page.get("nextForwardToken")
            self.tokens[stream] = next_token
            if not page.get("events") or next_token == token:
                return True

    def new_lines(self, final: bool = False) -> list[str]:
        """The lines that are now due, in time order (ties keep the streams' order)."""
        streams = sorted(self._streams())
        for stream in streams:
            events: list[dict[str, Any]] = []
            complete = self._new_events(stream, events)
            for event in events:
                stamp = int(event["timestamp"])
                heapq.heappush(self.pending, (stamp, self._read, event["message"]))
                self._read += 1
                self.latest[stream] = max(self.latest.get(stream, stamp), stamp)
            if not complete:
                break  # throttled: the rest next poll
        if final:
            due = None
        else:
            quiet = int(time.time() * 1000) - self.hold_back_ms
            every_stream = min((self.latest.get(s, 0) for s in streams), default=0)
            due = max(quiet, every_stream)
        lines = []
        while self.pending and (due is None or self.pending[0][0] <= due):
            lines.append(heapq.heappop(self.pending)[2])
        return lines


class SageMakerJobLauncher(JobLauncher):
    """Runs jobs on SageMaker through :class:`PipesSageMakerClient`.

    Pipes context and messages go under the object store's own bucket and prefix
    (``<prefix>/pipes/``). ``endpoint_url`` is for an AWS emulator and is empty in production
    (boto3 also honours ``AWS_ENDPOINT_URL``).
    """

    region_name: str
    endpoint_url: str = ""
    first_poll_seconds: float = 5.0
    max_poll_seconds: float = 60.0
    message_interval_seconds: float = 5.0

    def settings_for(self, job: JobName) -> JobSettings:
        """The job's settings; an empty image URI means SageMaker's prebuilt scikit-learn image."""
        settings = super().settings_for(job)
        if settings.image_uri:
            return settings
        from sagemaker.core import image_uris  # heavy import, and only needed here

        image = image_uris.retrieve(
            framework="sklearn",
            region=self.region_name,
            version=SKLEARN_FRAMEWORK_VERSION,
            py_version="py3",
            instance_type=settings.instance_type,
        )
        return settings.model_copy(update={"image_uri": image})

    def _clients(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"region_name": self.region_name, "config": BOTO_CONFIG}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        return {name: boto3.client(name, **kwargs) for name in ("sagemaker", "logs", "s3")}

    def pipes_client(self) -> PipesSageMakerClient:
        clients = self._clients()
        return PipesSageMakerClient(
            pipes_bucket=self.store.bucket,
            pipes_prefix="/".join(p for p in (self.store.prefix.strip("/"), "pipes") if p),
            client=clients["sagemaker"],
            logs_client=clients["logs"],
            s3_client=clients["s3"],
            wait=WaitPolicy(
                first_poll_seconds=self.first_poll_seconds, max_poll_seconds=self.max_poll_seconds
            ),
            message_interval_seconds=self.message_interval_seconds,
        )

    def run_processing_job(self, *, context, request, extras=None) -> CompletedJob:
        invocation, description = self.pipes_client().run(
            context=context, processing_job=request, extras=extras
        )
        return _completed("processing", description, invocation)

    def run_training_job(self, *, context, request, extras=None) -> CompletedJob:
        invocation, description = self.pipes_client().run(
            context=context, training_job=request, extras=extras
        )
        return _completed("training", description, invocation)


def _completed(
    job_type: JobType, d: Mapping[str, Any], invocation: dg.PipesClientCompletedInvocation
) -> CompletedJob:
    now = datetime.now(UTC)
    if job_type == "processing":
        started = d.get("ProcessingStartTime") or d.get("CreationTime") or now
        ended = d.get("ProcessingEndTime") or now
        cluster = d["ProcessingResources"]["ClusterConfig"]
        billable = round((ended - started).total_seconds()) * int(cluster["InstanceCount"])
        inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in d.get("ProcessingInputs", [])}
        outputs = {
            o["OutputName"]: o["S3Output"]["S3Uri"]
            for o in d.get("ProcessingOutputConfig", {}).get("Outputs", [])
        }
        instance_type = cluster["InstanceType"]
        instances = int(cluster["InstanceCount"])
        name, arn = d["ProcessingJobName"], d.get("ProcessingJobArn", "")
    else:
        started = d.get("TrainingStartTime") or d.get("CreationTime") or now
        ended = d.get("TrainingEndTime") or now
        billable = int(d.get("BillableTimeInSeconds") or round((ended - started).total_seconds()))
        inputs = {
            c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
            for c in d.get("InputDataConfig", [])
        }
        model = d.get("ModelArtifacts", {}).get("S3ModelArtifacts", "")
        outputs = {
            "model": model,
            "output": model.rsplit("/", 1)[0] + "/output.tar.gz" if model else "",
        }
        instance_type = d["ResourceConfig"]["InstanceType"]
        instances = int(d["ResourceConfig"].get("InstanceCount", 1))
        name, arn = d["TrainingJobName"], d.get("TrainingJobArn", "")
    console = invocation.metadata.get("console_url") if invocation.metadata else None
    return CompletedJob(
        job_type=job_type,
        name=name,
        arn=arn,
        status="Completed",
        started_at=started,
        ended_at=ended,
        billable_seconds=billable,
        instance_type=instance_type,
        input_uris=inputs,
        output_uris=outputs,
        console_url=console.value if isinstance(console, dg.UrlMetadataValue) else None,
        invocation=invocation,
        instance_count=instances,
    )

"""Dagster Pipes for SageMaker Processing and Training jobs.

:class:`PipesSageMakerClient` is shaped like dagster-aws's ``PipesECSClient``: keyword-only
``run(*, context, processing_job=… | training_job=…, extras=None)`` taking the boto3 request body.
It launches the job with the Pipes bootstrap (context and messages through S3) merged into the
job's environment and the Dagster run, asset and partition on its tags, then waits, streaming the
job's CloudWatch log lines into the run without repeating any.

What it adds over a plain launch-and-wait:

- **Reattach instead of duplicate.** Job names are deterministic (asset, customer, run, attempt).
  Before creating a job the client describes that name: a job still running is reattached (its
  Pipes messages are read from where that job writes them), a completed one is reused, and a
  failed or stopped one gets a new attempt name. A retried step or a restarted process never
  launches a second copy of a job that is running.
- **Bounded waiting.** Polling backs off with jitter up to ``max_poll_seconds``, and gives up
  (stopping the job) after the job's own MaxRuntimeInSeconds plus ``wait_grace_seconds`` for
  provisioning and upload. Throttling on Describe is logged and retried, never fatal; every
  call also goes through botocore's adaptive retry mode.
- **Failures with SageMaker's reason.** Failed and Stopped both fail the step with FailureReason
  (and ExitMessage for processing) in the error. When the Dagster run is interrupted, the job is
  stopped before the error propagates.
- **Metadata**: ARN, console URL, status history, billable seconds, instance type, input and
  output URIs.
"""

import contextlib
import random
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
from dagster_aws.pipes import PipesS3ContextInjector, PipesS3MessageReader
from dagster_pipes import decode_param

from resources.jobs.base import CompletedJob, JobFailedError, JobLauncher, failure_detail
from resources.jobs.settings import JobName, JobSettings

JobType = Literal["processing", "training"]

THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
)
TERMINAL = frozenset({"Completed", "Failed", "Stopped"})
MAX_JOB_NAME = 63
LOG_GROUPS = {
    "processing": "/aws/sagemaker/ProcessingJobs",
    "training": "/aws/sagemaker/TrainingJobs",
}

# The prebuilt image used when no image URI is configured: SageMaker's scikit-learn container
# with the scikit-learn the models are trained and loaded with (requirements.lock pins 1.9).
SKLEARN_FRAMEWORK_VERSION = "1.9-0"

# botocore's adaptive mode adds client-side rate limiting to retries on throttling.
BOTO_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 10})


@dataclass(frozen=True)
class _Api:
    """The SageMaker operations and field names of one job type."""

    job_type: JobType
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


class _FixedPrefixS3MessageReader(PipesS3MessageReader):
    """Reads Pipes messages from a key prefix we choose: under ``<prefix>/pipes/<job>/`` for a
    new job, or the prefix a reattached job was launched with."""

    def __init__(self, *, key_prefix: str, **kwargs: Any):
        super().__init__(**kwargs)
        self._fixed_prefix = key_prefix

    @contextmanager
    def get_params(self) -> Iterator[dict[str, Any]]:
        yield {"bucket": self.bucket, "key_prefix": self._fixed_prefix}


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
        request = dict(processing_job if processing_job is not None else training_job or {})
        name, existing = self._resolve_name(context, api, request[api.name_field])
        request[api.name_field] = name

        reader: PipesS3MessageReader
        if existing is not None:
            # Read what the running (or finished) job writes, where it was told to write it.
            params = decode_param(existing["Environment"]["DAGSTER_PIPES_MESSAGES"])
            reader = _FixedPrefixS3MessageReader(
                key_prefix=params["key_prefix"],
                bucket=self.pipes_bucket,
                client=self.s3,
                interval=self.message_interval_seconds,
            )
        else:
            # Under our own prefix, not at the bucket root where dagster-aws's reader would put
            # them: the IAM policies grant the jobs and Dagster nothing outside it.
            reader = _FixedPrefixS3MessageReader(
                key_prefix=f"{self.pipes_prefix}/{name}/messages-{uuid.uuid4().hex[:12]}",
                bucket=self.pipes_bucket,
                client=self.s3,
                interval=self.message_interval_seconds,
            )
        injector = PipesS3ContextInjector(
            bucket=self.pipes_bucket, client=self.s3, key_prefix=f"{self.pipes_prefix}/{name}/"
        )
        with dg.open_pipes_session(
            context=context,
            context_injector=injector,
            message_reader=reader,
            extras=dict(extras or {}),
        ) as session:
            if existing is None:
                self._create(context, api, request, session)
            description: dict[str, Any] | None = None
            try:
                description = self._wait_for(context, api, request)
            except dg.DagsterExecutionInterruptedError:
                if self.forward_termination:
                    context.log.warning(
                        f"[pipes] Dagster run interrupted: stopping {api.job_type} job {name}"
                    )
                    self._stop(context, api, name)
                raise
            except _WaitCeilingExceededError as exc:
                self._stop(context, api, name)
                raise JobFailedError(description=str(exc)) from exc
        assert description is not None
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

    def _describe(self, api: _Api, name: str, attempts: int = 10) -> dict[str, Any] | None:
        """Describe ``name``; None if there is no such job. Throttling is waited out (bounded)."""
        delays = self.wait.delays()
        for attempt in range(attempts):
            try:
                return getattr(self.client, api.describe)(**{api.name_field: name})
            except ClientError as exc:
                error = exc.response.get("Error", {})
                code, message = error.get("Code"), error.get("Message", "")
                if code == "ValidationException" and "not found" in message.lower():
                    return None
                if code not in THROTTLING_CODES or attempt == attempts - 1:
                    raise
                self.wait.sleep(next(delays))
        raise AssertionError("unreachable")  # pragma: no cover

    def _resolve_name(self, context, api: _Api, name: str) -> tuple[str, dict[str, Any] | None]:
        """The name to use, and the existing job of that name to reattach to (if any)."""
        for attempt in range(1, 100):
            candidate = name if attempt == 1 else next_attempt_name(name, attempt)
            existing = self._describe(api, candidate)
            if existing is None:
                return candidate, None
            status = existing[api.status_field]
            if status in ("InProgress", "Stopping", "Completed"):
                verb = "reusing completed" if status == "Completed" else "reattaching to running"
                context.log.info(f"[pipes] {verb} {api.job_type} job {candidate}")
                return candidate, existing
            context.log.info(
                f"[pipes] {api.job_type} job {candidate} ended {status}; launching a new attempt"
            )
        raise JobFailedError(description=f"too many earlier attempts of {api.job_type} job {name}")

    def _create(
        self, context, api: _Api, request: dict[str, Any], session: dg.PipesSession
    ) -> None:
        request["Environment"] = {
            **request.get("Environment", {}),
            **session.get_bootstrap_env_vars(),
        }
        tags = {t["Key"]: t["Value"] for t in request.get("Tags", [])}
        for key, value in {
            **session.default_remote_invocation_info,
            **_asset_tags(context),
        }.items():
            tags.setdefault(key, str(value)[:256])
        request["Tags"] = [{"Key": k, "Value": v} for k, v in sorted(tags.items())]
        response = getattr(self.client, api.create)(**request)
        context.log.info(f"[pipes] started {api.job_type} job {response[api.arn_field]}")

    # Waiting -------------------------------------------------------------------------------------

    def _wait_for(self, context, api: _Api, request: Mapping[str, Any]) -> dict[str, Any]:
        name = request[api.name_field]
        ceiling = request["StoppingCondition"]["MaxRuntimeInSeconds"] + self.wait.wait_grace_seconds
        started = time.monotonic()
        logs = _LogFollower(self.logs, LOG_GROUPS[api.job_type], name)
        last_status = None
        self._observed: list[dict[str, str]] = []
        for delay in self.wait.delays():
            try:
                description = getattr(self.client, api.describe)(**{api.name_field: name})
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in THROTTLING_CODES:
                    context.log.warning(f"[pipes] Describe of {name} throttled; retrying")
                    self.wait.sleep(delay)
                    continue
                raise
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
                for line in logs.new_lines():
                    context.log.info(f"[{name}] {line}")
                return description
            if time.monotonic() - started > ceiling:
                raise _WaitCeilingExceededError(
                    f"{api.job_type} job {name} still {status} after {ceiling:.0f} s "
                    "(MaxRuntimeInSeconds + wait_grace_seconds); stopped it"
                )
            self.wait.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _stop(self, context, api: _Api, name: str) -> None:
        try:
            getattr(self.client, api.stop)(**{api.name_field: name})
        except ClientError as exc:
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


class _WaitCeilingExceededError(Exception):
    pass


class _LogFollower:
    """New CloudWatch log lines of one job, across its streams, each line exactly once."""

    def __init__(self, logs: Any, group: str, job_name: str):
        self.logs, self.group, self.prefix = logs, group, f"{job_name}/"
        self.tokens: dict[str, str | None] = {}

    def new_lines(self) -> Iterator[str]:
        try:
            streams = self.logs.describe_log_streams(
                logGroupName=self.group, logStreamNamePrefix=self.prefix
            ).get("logStreams", [])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in (
                "ResourceNotFoundException",
                *THROTTLING_CODES,
            ):
                return  # no log yet, or throttled: the next poll catches up
            raise
        for stream in sorted(s["logStreamName"] for s in streams):
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
                        return
                    raise
                for event in page.get("events", []):
                    yield event["message"]
                next_token = page.get("nextForwardToken")
                if not page.get("events") or next_token == token:
                    self.tokens[stream] = next_token
                    break
                self.tokens[stream] = next_token


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
    )

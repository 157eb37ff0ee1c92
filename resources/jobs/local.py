"""The local job launcher: SageMaker job requests run as local processes, with Dagster Pipes.

Each job runs in ``<data home>/jobs/<job name>/`` through :class:`~resources.jobs.sandbox.JobSandbox`
(SageMaker's directory layout, staging, environment, time limit and output upload); this class
adds the Pipes session, streams the job's log into the Dagster run, and turns a Failed or
Stopped job into :class:`~resources.jobs.base.JobFailedError` with the job's own reason.

A job with ``InstanceCount`` N > 1 runs as N processes at once, one per host, as
on SageMaker; each host writes its Pipes messages to a file of its own
(``forecast_core.runtime.host_message_params``), and the session reads all N and waits for each
host's ``closed``.

A job outlives nothing that launched it. If the process that runs the step dies (the run worker
under the in-process executor the code location uses), the sandbox's guard kills the job. If the
run worker dies while a step process lives on (possible under a multiprocess executor: a spawned
step process is not killed with its parent), the code server marks the run failed, and the wait
loop here, which checks the run's status every few seconds, stops the job. Before each job starts, old
job folders are pruned (``resources.jobs.cleanup``).
"""

import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import dagster as dg
from dagster._core.pipes.client import PipesParams
from dagster._core.pipes.context import PipesMessageHandler
from dagster_pipes import PipesDefaultMessageWriter
from pydantic import Field

from forecast_core.runtime import host_message_params, host_names
from resources.data_home import data_home
from resources.jobs import cleanup
from resources.jobs.base import CompletedJob, JobFailedError, JobLauncher, failure_detail
from resources.jobs.requests import instance_count
from resources.jobs.sandbox import JobSandbox, JobSetupError, SandboxResult
from resources.jobs.settings import JobName
from resources.storage import LocalObjectStore, split_uri

# How often a running job checks that its Dagster run is still going.
RUN_CHECK_SECONDS = 5.0
# A run in one of these has ended (or is ending) without this step: its job must stop.
_ENDED = {
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
    dg.DagsterRunStatus.CANCELING,
}


class PipesHostFilesMessageReader(dg.PipesMessageReader):
    """Reads the Pipes message files of every host of a local job, one writer per host.

    Like ``dg.PipesTempFileMessageReader`` (one temporary file, tailed), but a job on several
    hosts gets one file per host, where each host's script derives it from the one path all
    hosts are given (``<path>.<host>``); the session waits for every host's ``closed``.
    """

    def __init__(self, instance_count: int = 1):
        self.hosts = host_names(max(1, instance_count))

    @property
    def expected_writer_count(self) -> int:
        return len(self.hosts)

    @contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[PipesParams]:
        with tempfile.TemporaryDirectory() as tempdir, ExitStack() as readers:
            path = os.path.join(tempdir, "messages")
            for host in self.hosts:
                own = host_message_params({"path": path}, host, len(self.hosts))["path"]
                readers.enter_context(dg.PipesFileMessageReader(own).read_messages(handler))
            yield {PipesDefaultMessageWriter.FILE_PATH_KEY: path}

    def no_messages_debug_text(self) -> str:
        return f"Attempted to read messages from {len(self.hosts)} local temporary file(s)."


class LocalJobLauncher(JobLauncher):
    """Runs each job's entry script as a local process in a SageMaker-shaped directory."""

    python: str = ""
    """Interpreter that stands in for the job image; empty means the one running Dagster."""
    completed_retention_hours: float = Field(
        default=24.0,
        ge=0,
        description="Hours a completed job keeps its staged inputs and outputs in "
        "<data home>/jobs/<job>/ (its log, request and describe.json stay). A day, to compare "
        "what a job saw with a surprising result; after that they are copies of what the "
        "object store holds.",
    )
    failed_retention_days: float = Field(
        default=14.0,
        ge=0,
        description="Days a failed or stopped job keeps its whole folder (inputs included, to "
        "rerun the script on them), and a completed job its log; also the age at which the "
        "local object store's jobs/<job>/ folders go. Two weeks: two weekly trainings, and a "
        "failure seen after a holiday can still be diagnosed.",
    )

    def prebuilt_image(self, job: JobName) -> bool:
        """Never: a local job runs on the Dagster interpreter, which has every requirement, so it
        needs no wheelhouse whatever its image URI says."""
        return False

    def sandbox(self) -> JobSandbox:
        return JobSandbox(self.store, data_home() / "jobs", self.python or sys.executable)

    def prune(self, *, force: bool = False) -> cleanup.PruneReport:
        """Prune old job folders here and in a local object store (see resources.jobs.cleanup).

        Runs when a job starts, at most every ``cleanup.PRUNE_INTERVAL_SECONDS`` unless forced.
        """
        store_jobs = None
        if isinstance(self.store, LocalObjectStore):  # on S3 a lifecycle rule does this
            bucket, key = split_uri(self.store.uri("jobs"))
            store_jobs = self.store.base / bucket / key
        return cleanup.prune(
            data_home() / "jobs",
            store_jobs,
            cleanup.Retention(self.completed_retention_hours, self.failed_retention_days),
            stamp=data_home() / ".jobs-pruned",
            min_interval_seconds=0 if force else cleanup.PRUNE_INTERVAL_SECONDS,
        )

    def run_processing_job(
        self,
        *,
        context: dg.AssetExecutionContext,
        request: Mapping[str, Any],
        extras: Mapping[str, Any] | None = None,
    ) -> CompletedJob:
        return self._run(context, request, extras, "processing")

    def run_training_job(
        self,
        *,
        context: dg.AssetExecutionContext,
        request: Mapping[str, Any],
        extras: Mapping[str, Any] | None = None,
    ) -> CompletedJob:
        return self._run(context, request, extras, "training")

    def _run(
        self,
        context: dg.AssetExecutionContext,
        request: Mapping[str, Any],
        extras: Mapping[str, Any] | None,
        job_type: str,
    ) -> CompletedJob:
        name = request["ProcessingJobName" if job_type == "processing" else "TrainingJobName"]
        sandbox = self.sandbox()
        pruned = self.prune()
        if pruned:
            context.log.info(pruned.summary())
        for error in pruned.errors:
            context.log.warning(f"could not prune {error}")
        context.log.info(f"starting {job_type} job {name} locally in {sandbox.jobs_root / name}")
        with dg.open_pipes_session(
            context=context,
            context_injector=dg.PipesTempFileContextInjector(),
            message_reader=PipesHostFilesMessageReader(instance_count(request)),
            extras=dict(extras or {}),
        ) as session:
            run = sandbox.run_processing if job_type == "processing" else sandbox.run_training
            try:
                result = run(
                    request,
                    extra_env=session.get_bootstrap_env_vars(),
                    log=lambda line: context.log.info(f"[{name}] {line}"),
                    stop_requested=_run_ended(context.instance, context.run_id),
                )
            except JobSetupError as exc:
                raise JobFailedError(
                    description=f"{job_type} job {name} could not start: {exc}"
                ) from exc
        return _completed(result, dg.PipesClientCompletedInvocation(session))


def _run_ended(
    instance: dg.DagsterInstance, run_id: str, every: float = RUN_CHECK_SECONDS
) -> Callable[[], str | None]:
    """A stop flag for the job: why, once its Dagster run has ended or is being cancelled.

    The run can end while this step still waits: cancelled from the UI, or (under a
    multiprocess executor) failed because its run worker died while the step process lives
    on; the step would otherwise wait for its job to the end and publish into a run that ended.
    """
    next_check = time.monotonic() + every

    def ended() -> str | None:
        nonlocal next_check
        if time.monotonic() < next_check:
            return None
        next_check = time.monotonic() + every
        run = instance.get_run_by_id(run_id)
        if run is None:
            return f"its Dagster run {run_id} no longer exists"
        if run.status in _ENDED:
            return (
                f"its Dagster run {run_id} is {run.status.value}: the run was cancelled, or its "
                "run worker died"
            )
        return None

    return ended


def _completed(
    result: SandboxResult, invocation: dg.PipesClientCompletedInvocation
) -> CompletedJob:
    if result.status != "Completed":
        raise JobFailedError(
            description=f"{result.job_type} job {result.name} {result.status.lower()}: "
            + failure_detail(
                result.failure_reason or "no reason given", invocation.get_custom_messages()
            ),
            metadata={
                "job_name": result.name,
                "job_status": result.status,
                "failure_reason": result.failure_reason or "",
                "job_log": dg.MetadataValue.path(str(result.job_dir / "job.log")),
            },
        )
    return CompletedJob(
        job_type=result.job_type,
        name=result.name,
        arn=f"local:{result.job_type}-job/{result.name}",
        status=result.status,
        started_at=result.started_at,
        ended_at=result.ended_at,
        billable_seconds=round((result.ended_at - result.started_at).total_seconds()),
        instance_type=f"local ({result.instance_type} requested)",
        input_uris=result.inputs,
        output_uris=result.outputs,
        invocation=invocation,
        instance_count=result.instance_count,
    )

"""The local job launcher: SageMaker job requests run as local processes, with Dagster Pipes.

Each job runs in ``<data home>/jobs/<job name>/`` through :class:`~resources.jobs.sandbox.JobSandbox`
(SageMaker's directory layout, staging, environment, time limit and output upload); this class
adds the Pipes session, streams the job's log into the Dagster run, and turns a Failed or
Stopped job into :class:`~resources.jobs.base.JobFailedError` with the job's own reason.
"""

import sys
from collections.abc import Mapping
from typing import Any

import dagster as dg

from resources.data_home import data_home
from resources.jobs.base import CompletedJob, JobFailedError, JobLauncher, failure_detail
from resources.jobs.sandbox import JobSandbox, JobSetupError, SandboxResult


class LocalJobLauncher(JobLauncher):
    """Runs each job's entry script as a local process in a SageMaker-shaped directory."""

    python: str = ""
    """Interpreter that stands in for the job image; empty means the one running Dagster."""

    def sandbox(self) -> JobSandbox:
        return JobSandbox(self.store, data_home() / "jobs", self.python or sys.executable)

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
        context.log.info(f"starting {job_type} job {name} locally in {sandbox.jobs_root / name}")
        with dg.open_pipes_session(
            context=context,
            context_injector=dg.PipesTempFileContextInjector(),
            message_reader=dg.PipesTempFileMessageReader(),
            extras=dict(extras or {}),
        ) as session:
            run = sandbox.run_processing if job_type == "processing" else sandbox.run_training
            try:
                result = run(
                    request,
                    extra_env=session.get_bootstrap_env_vars(),
                    log=lambda line: context.log.info(f"[{name}] {line}"),
                )
            except JobSetupError as exc:
                raise JobFailedError(
                    description=f"{job_type} job {name} could not start: {exc}"
                ) from exc
        return _completed(result, dg.PipesClientCompletedInvocation(session))


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
    )

"""The job-launching resource every asset uses, whatever runs the job."""

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import dagster as dg

from resources.jobs import code as job_code
from resources.jobs.requests import JobInput
from resources.jobs.settings import (
    LOCAL_ROLE_ARN,
    JobName,
    JobSettings,
    PlatformSettings,
    default_settings,
)
from resources.storage import ObjectStore

JobType = Literal["processing", "training"]
JobStatus = Literal["Completed", "Failed", "Stopped"]


@dataclass
class CompletedJob:
    """A job that finished successfully, with what it reported through Pipes."""

    job_type: JobType
    name: str
    arn: str
    status: JobStatus
    started_at: datetime
    ended_at: datetime
    billable_seconds: int
    instance_type: str
    input_uris: dict[str, str]
    output_uris: dict[str, str]
    console_url: str | None = None
    instance_count: int = 1
    invocation: dg.PipesClientCompletedInvocation | None = field(default=None, repr=False)

    @property
    def duration_seconds(self) -> float:
        return (self.ended_at - self.started_at).total_seconds()

    def reported_metadata(self) -> dict[str, Any]:
        """Metadata the job script reported through Pipes (its last materialization wins)."""
        merged: dict[str, Any] = {}
        if self.invocation is None:
            return merged
        for result in self.invocation.get_results():
            if isinstance(result, dg.MaterializeResult) and result.metadata:
                merged.update(result.metadata)
        return merged

    def reported_by_customer(self) -> dict[str, dict[str, Any]]:
        """Per-customer metadata a batch job reported (Pipes custom messages), by customer id.

        A batch job covers several partitions, so its script reports each customer's results as
        ``{"customer_id": ..., "metadata": {...}}`` rather than as one materialization.
        """
        reported: dict[str, dict[str, Any]] = {}
        if self.invocation is None:
            return reported
        for message in self.invocation.get_custom_messages():
            if isinstance(message, dict) and "metadata" in message and "customer_id" in message:
                reported.setdefault(str(message["customer_id"]), {}).update(message["metadata"])
        return reported

    def failed_customers(self) -> dict[str, str]:
        """Customers of a batch job that failed, each with the reason its script reported
        (Pipes custom messages ``{"customer_id": ..., "error": ...}``). The job itself completed:
        it fails only when every customer did (see ``forecast_core.batch.run_each``).
        """
        failed: dict[str, str] = {}
        if self.invocation is None:
            return failed
        for message in self.invocation.get_custom_messages():
            if isinstance(message, dict) and "error" in message and "customer_id" in message:
                failed[str(message["customer_id"])] = str(message["error"])
        return failed

    def metadata(self) -> dict[str, Any]:
        """What every asset records about the job that produced it."""
        meta: dict[str, Any] = {
            "job_name": self.name,
            "job_arn": self.arn,
            "job_status": self.status,
            "job_duration_s": round(self.duration_seconds, 2),
            "billable_seconds": self.billable_seconds,
            "instance_type": self.instance_type,
            "instance_count": self.instance_count,
            "job_inputs": dg.MetadataValue.json(self.input_uris),
            "job_outputs": dg.MetadataValue.json(self.output_uris),
        }
        if self.console_url:
            meta["console_url"] = dg.MetadataValue.url(self.console_url)
        return meta


class JobFailedError(dg.Failure):
    """A job ended Failed or Stopped; the description carries the job's own reason."""


def failure_detail(reason: str, messages: Sequence[Any]) -> str:
    """A failed job's reason, followed by each failed customer's reason a batch job reported.

    SageMaker keeps only the first 1 KB of a job's failure reason, which a batch of many failing
    customers overflows; the per-customer reasons come whole through Pipes.
    """
    errors = [
        str(m["error"])
        for m in messages
        if isinstance(m, dict) and "error" in m and "customer_id" in m
    ]
    if not errors:
        return reason
    return f"{reason}\nEach failed customer:\n" + "\n".join(errors)


class JobLauncher(dg.ConfigurableResource, ABC):
    """Runs SageMaker Processing and Training jobs described by their request bodies.

    Build requests with ``resources.jobs.requests``; ``run_*_job`` starts the job with a Dagster
    Pipes session attached, waits for it, streams its log, and returns a :class:`CompletedJob`
    or raises :class:`JobFailedError` with the job's failure reason.
    """

    store: dg.ResourceDependency[ObjectStore]
    role_arn: str = LOCAL_ROLE_ARN
    preprocessing: JobSettings = default_settings("preprocessing")
    training: JobSettings = default_settings("training")
    inference: JobSettings = default_settings("inference")
    platform: PlatformSettings = PlatformSettings()

    def settings_for(self, job: JobName) -> JobSettings:
        return {
            "preprocessing": self.preprocessing,
            "training": self.training,
            "inference": self.inference,
        }[job]

    def prebuilt_image(self, job: JobName) -> bool:
        """Whether the job runs on SageMaker's prebuilt scikit-learn image: its image URI is empty.

        That image lacks some of the job's requirements, which the job then installs from the
        wheelhouse, offline (``resources.jobs.code``). An image built from
        ``containers/<job>/Dockerfile`` has them all, and so has the local launcher's
        interpreter, whose image URIs are never empty.
        """
        return not JobLauncher.settings_for(self, job).image_uri

    def _wheelhouse(self, job: JobName) -> job_code.Wheelhouse | None:
        return job_code.prebuilt_image_wheelhouse(job) if self.prebuilt_image(job) else None

    def publish_code(self, job: JobName) -> tuple[str, str]:
        """Publish the job's code; returns (code URI, entry script).

        Processing jobs get a folder to stage as an input; training jobs a sourcedir.tar.gz. On
        the prebuilt image the wheelhouse is published first, and the bundle's requirements.txt
        installs from it without an index: the job must stage it (``dependency_inputs``).
        """
        wheels = self._wheelhouse(job)
        if wheels is not None:
            job_code.publish_wheelhouse(self.store, wheels)
        bundle = job_code.bundle(job, wheelhouse=wheels)
        if job == "training":
            return job_code.publish_tarball(self.store, bundle), bundle.entry_script
        return job_code.publish_folder(self.store, bundle), bundle.entry_script

    def dependency_inputs(self, job: JobName) -> list[JobInput]:
        """What the job stages besides its code, to add to its request's inputs (processing) or
        channels (training): the wheelhouse, as ``wheels``, on the prebuilt image; else nothing.
        """
        wheels = self._wheelhouse(job)
        if wheels is None:
            return []
        return [JobInput(job_code.WHEELS_INPUT, job_code.publish_wheelhouse(self.store, wheels))]

    @abstractmethod
    def run_processing_job(
        self,
        *,
        context: dg.AssetExecutionContext,
        request: Mapping[str, Any],
        extras: Mapping[str, Any] | None = None,
    ) -> CompletedJob: ...

    @abstractmethod
    def run_training_job(
        self,
        *,
        context: dg.AssetExecutionContext,
        request: Mapping[str, Any],
        extras: Mapping[str, Any] | None = None,
    ) -> CompletedJob: ...

"""Compute settings for each job, with the defaults the replaced workflows used."""

from typing import Literal

import dagster as dg

JobName = Literal["preprocessing", "training", "inference"]
JOB_NAMES: tuple[JobName, ...] = ("preprocessing", "training", "inference")

# Upper bounds of StoppingCondition.MaxRuntimeInSeconds (and training's MaxWaitTimeInSeconds).
MAX_RUNTIME_SECONDS = {"processing": 777_600, "training": 2_419_200}

# Stands in for an execution role where none is needed (the local launcher never assumes it).
LOCAL_ROLE_ARN = "arn:aws:iam::000000000000:role/forecast-assets-local"


class JobSettings(dg.Config):
    """What one kind of job runs on. Every field maps onto the SageMaker request."""

    image_uri: str
    """Empty on SageMaker means the prebuilt SageMaker scikit-learn image of the region."""
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    volume_size_gb: int = 30
    max_runtime_seconds: int = 3600
    spot_max_wait_seconds: int = 0
    """Training only: above 0, managed spot training that may wait this long in all (at least
    max_runtime_seconds), checkpointing to S3 so an interrupted job resumes."""

    def for_batch(self, customers: int, job: "JobName") -> "JobSettings":
        """The settings for one job that processes ``customers`` customers one after another.

        The time limits are per customer, so a batch gets that many times each, up to what
        SageMaker accepts for the kind of job.
        """
        if customers <= 1:
            return self
        cap = MAX_RUNTIME_SECONDS["training" if job == "training" else "processing"]
        return self.model_copy(
            update={
                "max_runtime_seconds": min(self.max_runtime_seconds * customers, cap),
                "spot_max_wait_seconds": min(self.spot_max_wait_seconds * customers, cap),
            }
        )


class PlatformSettings(dg.Config):
    """Settings every job of the deployment shares."""

    kms_key_id: str = ""
    """KMS key for job volumes and outputs; empty uses SageMaker's default encryption."""
    subnets: str = ""
    """Comma-separated VPC subnet ids; empty runs jobs outside a VPC."""
    security_group_ids: str = ""
    """Comma-separated security group ids (with subnets)."""
    tags: str = ""
    """Tags for every job, as ``key=value,key=value``."""

    def subnet_list(self) -> list[str]:
        return [s.strip() for s in self.subnets.split(",") if s.strip()]

    def security_group_list(self) -> list[str]:
        return [s.strip() for s in self.security_group_ids.split(",") if s.strip()]

    def tag_map(self) -> dict[str, str]:
        pairs = [t.strip() for t in self.tags.split(",") if t.strip()]
        tags = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"tag {pair!r} is not key=value")
            tags[key.strip()] = value.strip()
        return tags


def default_settings(job: JobName) -> JobSettings:
    # Weekly training was capped at 30 minutes and daily inference at 20 in the workflows this
    # replaces; preprocessing had an hour on a 20 GB volume.
    if job == "preprocessing":
        return JobSettings(
            image_uri="forecast-assets/preprocessing:local",
            instance_type="ml.m5.xlarge",
            volume_size_gb=20,
            max_runtime_seconds=3600,
        )
    if job == "training":
        return JobSettings(image_uri="forecast-assets/training:local", max_runtime_seconds=1800)
    return JobSettings(image_uri="forecast-assets/inference:local", max_runtime_seconds=1200)

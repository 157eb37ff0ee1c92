"""Compute settings for each job, with the defaults the replaced workflows used."""

from typing import Literal

import dagster as dg

JobName = Literal["preprocessing", "training", "inference"]
JOB_NAMES: tuple[JobName, ...] = ("preprocessing", "training", "inference")

# Stands in for an execution role where none is needed (the local launcher never assumes it).
LOCAL_ROLE_ARN = "arn:aws:iam::000000000000:role/forecast-assets-local"


class JobSettings(dg.Config):
    """What one kind of job runs on. Every field maps onto the SageMaker request."""

    image_uri: str
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    volume_size_gb: int = 30
    max_runtime_seconds: int = 3600


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

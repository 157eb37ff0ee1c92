"""Launching SageMaker Processing and Training jobs, on SageMaker or on this machine.

- ``settings``: per-job compute settings (image, instance type and count, volume, max runtime).
- ``requests``: pure functions that build CreateProcessingJob / CreateTrainingJob bodies.
- ``code``: bundles a job's scripts from ``containers/`` and publishes them under a content hash.
- ``base``: the :class:`JobLauncher` resource interface every asset uses.
- ``local``: :class:`LocalJobLauncher`, which executes those same request bodies locally.
"""

from resources.jobs.base import CompletedJob, JobLauncher
from resources.jobs.local import LocalJobLauncher
from resources.jobs.settings import JobSettings

__all__ = ["CompletedJob", "JobLauncher", "JobSettings", "LocalJobLauncher"]

"""The one place that decides which environment this code location runs in.

``FORECAST_ENV`` selects it: ``local`` (the default: jobs run as local processes, objects live
under the data home, the database is a SQLite file) or ``sagemaker`` (jobs run on SageMaker,
objects on S3, the database is PostgreSQL; configured by the variables in ``.env.example``).
Nothing else reads that variable; ``forecast_assets.definitions`` asks
:func:`current_environment` and picks resources to match. How backfills are cut into runs is
one of the other deployment choices read here (:func:`backfill_batch_size`,\n:func:`schedule_timezone`).
"""

from __future__ import annotations

import os
from typing import Literal, cast

Environment = Literal["local", "sagemaker"]
BATCH_SIZE_VAR = "FORECAST_BACKFILL_BATCH_SIZE"
# A SageMaker job's start-up (instance, image, staging) is paid once per batch; past a few dozen
# customers it is already small next to the work, while the failure of one customer fails the rest.
MAX_BATCH_SIZE = 100
ENVIRONMENTS: tuple[Environment, ...] = ("local", "sagemaker")
ENV_VAR = "FORECAST_ENV"


def current_environment() -> Environment:
    value = os.environ.get(ENV_VAR, "local").strip().lower() or "local"
    if value not in ENVIRONMENTS:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of {', '.join(ENVIRONMENTS)}")
    return cast(Environment, value)


def backfill_batch_size() -> int:
    """Customers per run (and so per SageMaker job) in a backfill, from ``FORECAST_BACKFILL_BATCH_SIZE``.

    1, the default, gives every customer its own run and jobs. A larger number makes backfills
    run batches of that many customers, each step launching one job for the whole batch.
    """
    raw = os.environ.get(BATCH_SIZE_VAR, "").strip() or "1"
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if not 1 <= size <= MAX_BATCH_SIZE:
        raise ValueError(
            f"{BATCH_SIZE_VAR}={raw!r} is not a whole number from 1 to {MAX_BATCH_SIZE}"
        )
    return size


TIMEZONE_VAR = "FORECAST_SCHEDULE_TIMEZONE"


def schedule_timezone() -> str:
    """The IANA time zone the schedules fire in, from ``FORECAST_SCHEDULE_TIMEZONE`` (default UTC).

    Read when the code location loads, like the schedules' cron strings.
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = os.environ.get(TIMEZONE_VAR, "").strip() or "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{TIMEZONE_VAR}={name!r} is not an IANA time zone name") from exc
    return name

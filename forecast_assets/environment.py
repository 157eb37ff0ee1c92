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
import re
from typing import Literal, cast

Environment = Literal["local", "sagemaker"]
BATCH_SIZE_VAR = "FORECAST_BACKFILL_BATCH_SIZE"
# A SageMaker job's start-up (instance, image, staging) is paid once per batch; past a few dozen
# customers it is already small next to the work, while a bigger batch's job runs longer (its
# time limit grows with it, up to SageMaker's maximum) and holds more customers' results.
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

    1, the default, gives every customer its own run and jobs. A larger number makes backfills,
    schedules and follow-up runs (``batch_continuation_sensor``) run batches of that many
    customers, each step launching one job for the whole batch.
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


NEW_FILES_QUEUE_VAR = "FORECAST_NEW_FILES_QUEUE_URL"
# A standard queue's URL as SQS gives it (https://sqs.<region>.amazonaws.com/<account>/<name>), or
# an emulator's. S3 cannot send event notifications to a FIFO queue (names ending in .fifo).
_QUEUE_URL = re.compile(r"https?://[^/\s]+/\d{12}/[A-Za-z0-9_-]{1,80}")


def new_files_queue_url() -> str | None:
    """The SQS queue S3 sends ``landing/`` ObjectCreated events to, from
    ``FORECAST_NEW_FILES_QUEUE_URL``; None when unset.

    Read when the code location loads, like the batch size: with a queue, the ``sagemaker``
    environment finds new files in its events (``raw_file_events_sensor``) and lists the bucket
    only hourly, as a reconciler; without one it lists every minute (``raw_files_sensor``). The
    sensor's resource resolves the same variable again when it ticks.
    """
    url = os.environ.get(NEW_FILES_QUEUE_VAR, "").strip()
    if not url:
        return None
    if not _QUEUE_URL.fullmatch(url):
        raise ValueError(
            f"{NEW_FILES_QUEUE_VAR}={url!r} is not a standard SQS queue URL "
            "(https://sqs.<region>.amazonaws.com/<account id>/<queue name>; S3 cannot notify a "
            "FIFO queue)"
        )
    return url

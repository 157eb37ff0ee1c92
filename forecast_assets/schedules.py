"""Weekly retraining and daily forecasting for every customer, on the replaced workflows' clock.

The SageMaker Pipelines workflows this replaces were EventBridge rules: training
``cron(0 2 ? * SUN *)`` and inference ``cron(0 6 * * ? *)``. EventBridge cron is always UTC, so
these schedules keep UTC (see ``SCHEDULE_TIMEZONE``). Each tick requests runs of
``FORECAST_BACKFILL_BATCH_SIZE`` customers, as a backfill does: each run covers consecutive
customers of the partition set, and each of its steps launches one SageMaker job for them all (1,
the default, is one run per customer). A customer that fails in a batch fails alone, and
``batch_continuation_sensor`` carries the rest of its batch on (see
``forecast_assets.assets.common.finish_step``). A run key made of the batch's customers and the
scheduled date keeps a re-evaluated tick from requesting the same run twice.
"""

from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg

from forecast_assets import publication
from forecast_assets.environment import backfill_batch_size, schedule_timezone
from forecast_assets.jobs import inference_job, training_job
from forecast_assets.partitions import batch_ranges, batch_run_request, customers_partitions_def
from forecast_assets.publication import PREPROCESSED
from resources.storage import ObjectStore

# The one setting for when schedules fire, FORECAST_SCHEDULE_TIMEZONE. UTC by default because the
# EventBridge rules this replaces ran in UTC, so forecasts keep arriving when consumers expect
# them; and because 02:00 on a Sunday is the very hour European clocks change (it does not exist
# on the last Sunday of March and happens twice on the last Sunday of October in Europe/Berlin),
# which would move or skip the weekly training. An IANA name such as "Europe/Berlin" follows
# local time instead.
SCHEDULE_TIMEZONE = schedule_timezone()

TRAINING_CRON = "0 2 * * 0"  # Sundays 02:00
INFERENCE_CRON = "0 6 * * *"  # daily 06:00

# Customers named in a skip message or log line; the rest are counted.
MAX_NAMED = 20


def _customers(context: dg.ScheduleEvaluationContext) -> list[str]:
    """Every customer, in the partition set's order (the order batches are cut in)."""
    name = customers_partitions_def.name
    assert name is not None
    return list(context.instance.get_dynamic_partitions(name))


def _batches(
    ordered: list[str], selected: list[str], date: str, tags: dict[str, str] | None = None
) -> list[dg.RunRequest]:
    """One run per batch of consecutive selected customers, keyed by its customers and date."""
    requests = []
    for keys in batch_ranges(ordered, selected, backfill_batch_size()):
        label = keys.start if keys.start == keys.end else f"{keys.start}...{keys.end}"
        requests.append(batch_run_request(keys, run_key=f"{label}:{date}", tags=tags))
    return requests


def _scheduled_date(context: dg.ScheduleEvaluationContext) -> str:
    """The tick's date in the schedule's time zone (now, when evaluated by hand without one)."""
    zone = ZoneInfo(SCHEDULE_TIMEZONE)
    moment = context.scheduled_execution_time or datetime.now(zone)
    return moment.astimezone(zone).date().isoformat()


def _listed(items: list[str]) -> str:
    shown = "; ".join(items[:MAX_NAMED])
    return shown + (f"; and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else "")


NO_CUSTOMERS = (
    "no customers in the 'customers' partition set (raw_files_sensor adds them when their "
    "files land; or `forecast-customers add ID`)"
)


@dg.schedule(
    job=training_job,
    cron_schedule=TRAINING_CRON,
    execution_timezone=SCHEDULE_TIMEZONE,
    description="Retrains every customer's model weekly (Sundays 02:00): validate, preprocess, "
    "register devices, train and gate.",
)
def weekly_training_schedule(
    context: dg.ScheduleEvaluationContext,
) -> list[dg.RunRequest] | dg.SkipReason:
    customers = _customers(context)
    if not customers:
        return dg.SkipReason(NO_CUSTOMERS)
    return _batches(customers, customers, _scheduled_date(context))


def _not_forecastable(store: ObjectStore, customer: str) -> str | None:
    """Why ``customer`` cannot be forecast today, or None when it can.

    Every customer with preprocessed load is forecast: by its newest Approved model, its previous
    Approved one, or seasonal naive (see ``forecast_assets.assets.forecast.choose_model``).
    """
    if publication.current(store, PREPROCESSED, customer) is None:
        return f"{customer}: no preprocessed load yet (materialize forecast_job for it)"
    return None


@dg.schedule(
    job=inference_job,
    cron_schedule=INFERENCE_CRON,
    execution_timezone=SCHEDULE_TIMEZONE,
    description="Forecasts every customer daily (06:00): with its newest model if Approved, else "
    "its latest Approved model, else seasonal naive. Customers with no preprocessed load yet are "
    "skipped: named in the tick's logs (Automation -> this schedule -> a tick -> logs), in its "
    "skip reason when nobody is forecast, and counted in each run's "
    "forecast-assets/customers-skipped tag.",
)
def daily_forecast_schedule(
    context: dg.ScheduleEvaluationContext, store: ObjectStore
) -> list[dg.RunRequest] | dg.SkipReason:
    customers = _customers(context)
    if not customers:
        return dg.SkipReason(NO_CUSTOMERS)
    date = _scheduled_date(context)
    forecastable: list[str] = []
    skipped: list[str] = []
    for customer in customers:
        reason = _not_forecastable(store, customer)
        if reason is None:
            forecastable.append(customer)
        else:
            skipped.append(reason)
    # context.log is the tick's captured log: the daemon stores its key on the tick, and the UI
    # lists these lines under the tick's "logs" (not only in the `dagster dev` terminal).
    for reason in skipped[:MAX_NAMED]:
        context.log.warning(f"skipped {reason}")
    if len(skipped) > MAX_NAMED:
        context.log.warning(f"... and {len(skipped) - MAX_NAMED} more customer(s) skipped")
    if not forecastable:
        return dg.SkipReason(
            f"no customer has preprocessed load yet ({len(skipped)} skipped): {_listed(skipped)}"
        )
    if skipped:
        context.log.warning(
            f"forecasting {len(forecastable)} customer(s); {len(skipped)} skipped: "
            f"{_listed(skipped)}"
        )
    else:
        context.log.info(f"forecasting all {len(forecastable)} customer(s)")
    # On every run of the tick, so a run's page says its tick left customers out.
    tags = {"forecast-assets/customers-skipped": str(len(skipped))}
    return _batches(customers, forecastable, date, tags)

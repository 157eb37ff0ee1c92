"""Weekly retraining and daily forecasting for every customer, on the replaced workflows' clock.

The SageMaker Pipelines workflows this replaces were EventBridge rules: training
``cron(0 2 ? * SUN *)`` and inference ``cron(0 6 * * ? *)``. EventBridge cron is always UTC, so
these schedules keep UTC (see ``SCHEDULE_TIMEZONE``). Each tick requests one run per customer;
a run key made of the customer and the scheduled date keeps a re-evaluated tick from requesting
the same run twice.
"""

from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg

from forecast_assets import publication
from forecast_assets.environment import schedule_timezone
from forecast_assets.jobs import inference_job, training_job
from forecast_assets.partitions import customers_partitions_def
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
    name = customers_partitions_def.name
    assert name is not None
    return sorted(context.instance.get_dynamic_partitions(name))


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
    date = _scheduled_date(context)
    return [
        dg.RunRequest(run_key=f"{customer}:{date}", partition_key=customer)
        for customer in customers
    ]


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
    return [
        dg.RunRequest(run_key=f"{customer}:{date}", partition_key=customer, tags=tags)
        for customer in forecastable
    ]

"""reports/customer_overview: every customer on one page, what needs attention first."""

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import pandas as pd
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.events import DagsterEventType
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.tags import PARTITION_NAME_TAG
from pydantic import Field

from forecast_assets import publication
from forecast_assets.assets.common import FAILED_REASON, GROUP, table_metadata
from forecast_assets.assets.forecast import load_forecast
from forecast_assets.assets.model import load_forecast_model
from forecast_assets.assets.preprocessed import preprocessed_load
from forecast_assets.assets.raw import raw_load
from forecast_assets.partitions import customers_partitions_def
from forecast_assets.publication import FORECASTS, PREPROCESSED
from resources.database import Database, ModelVersion
from resources.storage import ObjectStore

KEY = dg.AssetKey(["reports", "customer_overview"])
CHECKED_ASSETS = (preprocessed_load, load_forecast_model, load_forecast)
# The steps a batch customer can fail alone in (see assets.common.finish_step).
STEPS = (raw_load, preprocessed_load, load_forecast_model, load_forecast)

# What a row's status means, most urgent first: the overview is sorted by this.
ATTENTION = ("failed", "rejected", "pending", "stale", "warning", "ok")

# Re-materialized at the first 5-minute mark after any customer's data, model or forecast was
# materialized (the automation sensor evaluates this every 30 s), and at least hourly, so ages
# stay true and a run that failed without materializing anything (a blocked forecast) shows
# within the hour. The 5 minutes bound it to 12 runs an hour however many customers' runs finish:
# at 10,000 customers the daily batches finish one every few seconds, and each overview reads
# every customer (benchmarks/README.md, "The customer overview at 10,000 customers").
OVERVIEW_REFRESH_CRON = "*/5 * * * *"
OVERVIEW_CONDITION = (
    (
        dg.AutomationCondition.cron_tick_passed(OVERVIEW_REFRESH_CRON)
        & dg.AutomationCondition.any_deps_updated().since_last_handled()
    )
    | dg.AutomationCondition.cron_tick_passed("0 * * * *")
    | dg.AutomationCondition.missing().newly_true()
) & ~dg.AutomationCondition.in_progress()


class OverviewConfig(dg.Config):
    max_data_age_hours: float = Field(
        default=48, description="A customer whose newest reading is older than this is stale."
    )
    max_forecast_age_hours: float = Field(
        default=30,
        description="A customer whose forecast was issued longer ago than this is stale (the "
        "daily forecast runs every 24 h).",
    )


@dataclass
class CustomerStatus:
    """One customer's row of the overview."""

    customer: str
    problems: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in ATTENTION})
    latest_data: str = ""
    data_age_hours: float | None = None
    model_version: str = ""
    approval: str = ""
    decided_by: str = ""
    decision_reason: str = ""
    model_kind: str = ""
    wape: float | None = None
    baseline_wape: float | None = None
    wape_ratio: float | None = None
    gate: str = ""
    forecast_source: str = ""
    forecast_model: str = ""
    forecast_issued: str = ""
    forecast_age_hours: float | None = None

    def add(self, status: str, why: str) -> None:
        self.problems[status].append(why)

    @property
    def status(self) -> str:
        return next((s for s in ATTENTION if self.problems[s]), "ok")

    @property
    def why(self) -> str:
        return "; ".join(why for s in ATTENTION for why in self.problems[s]) or "all checks passed"

    def record(self) -> dict[str, Any]:
        return {
            "status": self.status.upper(),
            "customer": self.customer,
            "why": self.why,
            "approval": self.approval,
            "forecast_source": self.forecast_source,
            "forecast_age_h": _rounded(self.forecast_age_hours),
            "wape_ratio": _rounded(self.wape_ratio, 3),
            "latest_data": self.latest_data,
            "data_age_h": _rounded(self.data_age_hours),
            "model_version": self.model_version,
            "gate": self.gate,
            "decided_by": self.decided_by,
            "model_kind": self.model_kind,
            "wape": _rounded(self.wape, 3),
            "baseline_wape": _rounded(self.baseline_wape, 3),
            "forecast_model": self.forecast_model,
            "forecast_issued": self.forecast_issued,
        }


# The table's columns, in the order a reader needs them.
COLUMNS = {
    "status": "string",
    "customer": "string",
    "why": "string",
    "approval": "string",
    "forecast_source": "string",
    "forecast_age_h": "float",
    "wape_ratio": "float",
    "latest_data": "string",
    "data_age_h": "float",
    "model_version": "string",
    "gate": "string",
    "decided_by": "string",
    "model_kind": "string",
    "wape": "float",
    "baseline_wape": "float",
    "forecast_model": "string",
    "forecast_issued": "string",
}


def _rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _hours_since(when: Any, now: datetime) -> float:
    ts = pd.Timestamp(when)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts
    return (pd.Timestamp(now) - ts).total_seconds() / 3600


def _age(hours: float) -> str:
    return f"{hours:.0f} h" if hours < 72 else f"{hours / 24:.0f} days"


def _short_time(when: Any) -> str:
    ts = pd.Timestamp(when)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return f"{ts:%Y-%m-%d %H:%M} UTC"


CheckResult = tuple[str, str, dg.AssetCheckSeverity]
"""A check whose latest evaluation did not pass: name, description, severity."""
COMPLETED = {AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED}


@dataclass(frozen=True)
class InstanceFacts:
    """What the Dagster instance says about the customers, read once per overview in a few
    queries per asset and per check rather than per customer: at 10,000 customers, 3 s instead
    of about nine queries per customer, 225 s even with the event log in memory
    (benchmarks/README.md, "The customer overview at 10,000 customers"). Only a customer with
    something to report costs a query of its own."""

    failed_checks: Mapping[str, list[CheckResult]]
    batch_failures: Mapping[str, list[tuple[str, str]]]
    failed_latest_runs: Mapping[str, dg.DagsterRun]

    @classmethod
    def load(
        cls, instance: dg.DagsterInstance, customers: Iterable[str], now: datetime | None = None
    ) -> "InstanceFacts":
        wanted = set(customers)
        return cls(
            failed_checks=failed_checks(instance, wanted),
            batch_failures=batch_failures(instance, wanted),
            failed_latest_runs=failed_latest_runs(instance, wanted, now or datetime.now(UTC)),
        )


@dataclass(frozen=True)
class PublishedFacts:
    """What the published pointers and the model registry say about the customers, read once
    per overview: the pointers ``PARALLEL_READS`` at a time (on S3 each is one GET, bound by its
    round trip), every customer's newest model version in one query."""

    tables: Mapping[str, publication.Publication | None]
    forecasts: Mapping[str, publication.Publication | None]
    newest_models: Mapping[str, ModelVersion]

    @classmethod
    def load(
        cls, store: ObjectStore, database: Database, customers: Sequence[str]
    ) -> "PublishedFacts":
        return cls(
            tables=publication.current_many(store, PREPROCESSED, customers),
            forecasts=publication.current_many(store, FORECASTS, customers),
            newest_models=database.newest_models(),
        )


# A failed run older than this is not looked at: by then a customer whose runs keep failing is
# stale (max_data_age_hours, max_forecast_age_hours), and a failed step's reason stays on its
# partition until the step succeeds (batch_failures).
FAILED_RUN_WINDOW = timedelta(days=7)


def failed_latest_runs(
    instance: dg.DagsterInstance, customers: set[str], now: datetime
) -> dict[str, dg.DagsterRun]:
    """Per customer whose latest one-customer run failed within ``FAILED_RUN_WINDOW``: that run.
    One query for the window's failed runs of these customers, then one per customer that has
    one (a later run may have succeeded)."""
    if not customers:
        return {}
    failed = instance.get_runs(
        dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.FAILURE],
            tags={PARTITION_NAME_TAG: sorted(customers)},
            created_after=now - FAILED_RUN_WINDOW,
        )
    )
    found: dict[str, dg.DagsterRun] = {}
    for customer in sorted({run.tags.get(PARTITION_NAME_TAG, "") for run in failed} & customers):
        latest = instance.get_runs(dg.RunsFilter(tags={PARTITION_NAME_TAG: customer}), limit=1)
        if latest and latest[0].status == dg.DagsterRunStatus.FAILURE:
            found[customer] = latest[0]
    return found


def batch_failures(
    instance: dg.DagsterInstance, customers: set[str]
) -> dict[str, list[tuple[str, str]]]:
    """Per customer, the steps whose latest outcome is a failure inside a batch: the step's
    asset and the recorded reason (an observation newer than its latest materialization)."""
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for assets_def in STEPS:
        key = assets_def.key
        observed = instance.get_latest_storage_id_by_partition(
            key, DagsterEventType.ASSET_OBSERVATION
        )
        if not observed:
            continue
        materialized = instance.get_latest_storage_id_by_partition(
            key, DagsterEventType.ASSET_MATERIALIZATION
        )
        for customer, observation_id in observed.items():
            if customer not in customers or materialized.get(customer, -1) > observation_id:
                continue  # materialized again since
            partition = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[customer])
            records = instance.fetch_observations(partition, limit=1).records
            observation = records[0].asset_observation if records else None
            reason = observation.metadata.get(FAILED_REASON) if observation else None
            if reason is not None:
                found[customer].append((key.to_user_string(), str(reason.value)))
    return found


def failed_checks(
    instance: dg.DagsterInstance, customers: set[str]
) -> dict[str, list[CheckResult]]:
    """Per customer, every partitioned check whose latest completed evaluation did not pass."""
    keys = [spec.key for assets_def in CHECKED_ASSETS for spec in assets_def.check_specs]
    storage = instance.event_log_storage
    found: dict[str, list[CheckResult]] = defaultdict(list)
    for info in storage.get_asset_check_partition_info(keys):
        customer = info.partition_key
        if customer not in customers:
            continue
        if info.latest_execution_status == AssetCheckExecutionRecordStatus.SUCCEEDED:
            continue
        # Failed, or a later execution still planned or skipped: the latest completed one
        # decides, as it does for a customer the check has just started on.
        records = storage.get_asset_check_execution_history(
            info.check_key,
            limit=1,
            status=COMPLETED,
            partition_filter=PartitionKeyFilter(key=customer),
        )
        evaluation = records[0].evaluation if records else None
        if evaluation is not None and not evaluation.passed:
            found[customer].append(
                (info.check_key.name, evaluation.description or "", evaluation.severity)
            )
    return found


def _model_figures(row: CustomerStatus, model: ModelVersion) -> None:
    metrics = model.metrics
    row.model_version = model.version
    row.approval = model.status
    # Recorded by the approval workflow when the database has these columns.
    row.decided_by = getattr(model, "decided_by", "") or ""
    row.decision_reason = getattr(model, "decision_reason", "") or ""
    row.model_kind = str(metrics.get("model_kind", ""))
    row.wape = metrics.get("model", {}).get("wape")
    row.baseline_wape = metrics.get("baseline_seasonal_naive", {}).get("wape")
    row.wape_ratio = metrics.get("wape_ratio")
    summary = metrics.get("gate", {}).get("summary") or "; ".join(model.gate_reasons)
    row.gate = ("passed" if model.gate_passed else "FAILED") + (f": {summary}" if summary else "")


def customer_status(
    customer: str,
    published: PublishedFacts,
    facts: InstanceFacts,
    config: OverviewConfig,
    now: datetime,
) -> CustomerStatus:
    """What is true of one customer now: data, model, forecast, checks, latest run."""
    row = CustomerStatus(customer)

    table = published.tables.get(customer)
    if table is None:
        row.add("failed", "no preprocessed load yet")
    elif "end" in table.info:
        row.latest_data = _short_time(table.info["end"])
        row.data_age_hours = _hours_since(table.info["end"], now)
        if row.data_age_hours > config.max_data_age_hours:
            row.add("stale", f"newest reading {_age(row.data_age_hours)} old")

    newest = published.newest_models.get(customer)
    if newest is None:
        row.add("pending", "no model yet")
    else:
        _model_figures(row, newest)
        if newest.status == "Rejected":
            by = f" by {row.decided_by}" if row.decided_by else ""
            why = row.decision_reason or row.gate.removeprefix("FAILED: ")
            row.add("rejected", f"model {newest.version} rejected{by}: {why}")
        elif newest.status == "PendingManualApproval":
            row.add("pending", f"model {newest.version} waits for approval")

    forecast = published.forecasts.get(customer)
    if forecast is None:
        row.add("failed", "no forecast yet")
    else:
        issued = forecast.info.get("issued_at") or forecast.published_at
        row.forecast_source = str(forecast.info.get("source", ""))
        row.forecast_model = str(forecast.info.get("model_version", ""))
        row.forecast_issued = _short_time(issued)
        row.forecast_age_hours = _hours_since(issued, now)
        if row.forecast_age_hours > config.max_forecast_age_hours:
            row.add("stale", f"forecast issued {_age(row.forecast_age_hours)} ago")
        if row.forecast_source == "seasonal_naive_fallback":
            row.add("warning", "forecast by seasonal naive: no approved model")
        elif row.forecast_source == "previous_approved":
            row.add("warning", f"forecast by the previous approved model {row.forecast_model}")

    for name, description, severity in facts.failed_checks.get(customer, []):
        status = "warning" if severity == dg.AssetCheckSeverity.WARN else "failed"
        if name == "quality_gate" and row.problems["rejected"]:
            continue  # already said, with its reason
        row.add(status, f"{name}: {description}" if description else f"{name} failed")

    for asset, reason in facts.batch_failures.get(customer, []):
        row.add("failed", f"{asset} failed: {reason}")

    run = facts.failed_latest_runs.get(customer)
    if run is not None:
        row.add("failed", f"latest run {run.run_id[:8]} ({run.job_name}) failed")
    return row


def overview_markdown(rows: Sequence[CustomerStatus], now: datetime) -> str:
    """The overview as a markdown table, most urgent first."""
    counts = {s: sum(1 for r in rows if r.status == s) for s in ATTENTION}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines = [
        f"**{len(rows)} customers** as of {now:%Y-%m-%d %H:%M} UTC: {summary or 'none yet'}.",
        "",
        "| status | customer | why | latest data | model (approval) | WAPE / naive | "
        "forecast by | forecast age |",
        "| --- | --- | --- | --- | --- | ---: | --- | ---: |",
    ]
    for r in rows:
        ratio = f"{r.wape_ratio:.2f}" if r.wape_ratio is not None else ""
        age = f"{r.forecast_age_hours:.0f} h" if r.forecast_age_hours is not None else ""
        model = f"{r.model_version} ({r.approval})" if r.model_version else ""
        why = r.why.replace("|", "/")
        # The fallback's "model version" only repeats that it is seasonal naive.
        by = r.forecast_source
        if r.forecast_source != "seasonal_naive_fallback":
            by = f"{by} {r.forecast_model}".strip()
        lines.append(
            f"| **{r.status.upper()}** | {r.customer} | {why} | {r.latest_data} | {model} | "
            f"{ratio} | {by} | {age} |"
        )
    return "\n".join(lines)


def sort_rows(rows: list[CustomerStatus]) -> list[CustomerStatus]:
    return sorted(rows, key=lambda r: (ATTENTION.index(r.status), r.customer))


@dg.asset(
    key=KEY,
    deps=[preprocessed_load, load_forecast_model, load_forecast],
    group_name=GROUP,
    kinds={"sqlite", "postgres"},
    automation_condition=OVERVIEW_CONDITION,
)
def customer_overview(
    context: dg.AssetExecutionContext,
    config: OverviewConfig,
    store: ObjectStore,
    database: Database,
) -> dg.MaterializeResult:
    """Every customer on one page, what needs attention first: FAILED (a check failed, a run
    failed, nothing published), REJECTED (newest model failed its gate, and why), PENDING (a
    model waits for approval, or none yet), STALE (old data or forecast), WARNING (forecast not
    by the newest model, a warning check), then OK.

    Per customer: newest reading, newest model version with its backtest WAPE against seasonal
    naive and its gate result, approval status and who decided, which model made the current
    forecast (newest, previous_approved, seasonal_naive_fallback) and how old it is. Read from
    the published pointers, the model registry and the instance's latest check results per
    partition. Re-materialized automatically at the first 5-minute mark after any customer's load,
    model or forecast is materialized, and hourly.
    """
    now = datetime.now(UTC)
    customers = context.instance.get_dynamic_partitions(customers_partitions_def.name)
    facts = InstanceFacts.load(context.instance, customers, now)
    published = PublishedFacts.load(store, database, customers)
    rows = sort_rows([customer_status(c, published, facts, config, now) for c in customers])
    attention = [r.customer for r in rows if r.status != "ok"]
    if attention:
        context.log.info(f"{len(attention)} customer(s) need attention: {', '.join(attention)}")
    return dg.MaterializeResult(
        metadata={
            "overview": dg.MetadataValue.md(overview_markdown(rows, now)),
            "customers": table_metadata([r.record() for r in rows], COLUMNS, limit=1000),
            "customers_total": len(rows),
            "needs_attention": len(attention),
            "needs_attention_customers": dg.MetadataValue.json(attention),
            **{f"status_{s}": sum(1 for r in rows if r.status == s) for s in ATTENTION},
        }
    )


# Evaluates OVERVIEW_CONDITION; running from the start, since a report nobody switched on is no
# report. Only the overview is its target: the customer assets are run by jobs, sensor, schedules.
customer_overview_sensor = dg.AutomationConditionSensorDefinition(
    "customer_overview_sensor",
    target=dg.AssetSelection.assets(KEY),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Re-materializes reports/customer_overview within 5 minutes of customers' runs "
    "finishing, and hourly.",
)

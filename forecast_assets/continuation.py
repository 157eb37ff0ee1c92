"""batch_continuation_sensor: the customers a failed batch run got through carry on.

A batch step whose customers partly fail materializes the others on their own partitions and
then fails, naming the failed ones (``forecast_assets.assets.common.finish_step``). Dagster then
skips every step after it in that run, for every customer of the batch. This sensor finds such
runs and requests, for the customers that got through every step that failed, the rest of the
run's assets: in batches of ``FORECAST_BACKFILL_BATCH_SIZE`` consecutive customers, one run per
batch (so a batch of 50 with one bad file becomes a follow-up run of 49, or two when the bad
customer sits in the middle of the partition order). A failed customer is left failed, with its
reason on its partition, until a person or the next schedule runs it again.

Each request's run key names the failed run and its batch, so a tick evaluated twice, or runs
scanned again, never start a follow-up twice. A follow-up run that fails for some customers is
continued in turn; the chain ends with the graph.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)

from forecast_assets.environment import backfill_batch_size
from forecast_assets.jobs import forecast_job
from forecast_assets.partitions import batch_ranges, batch_run_request, customers_partitions_def

CONTINUES_TAG = "forecast-assets/continues-run"
# Failed runs looked at per tick; the rest wait for the next tick.
MAX_RUNS_PER_TICK = 20
# Runs whose failure was recorded this long before the cursor are read again, in case two
# failed in the same instant; run keys keep them from being continued twice.
OVERLAP = timedelta(minutes=5)


def step_key(asset: dg.AssetKey) -> str:
    """The step that materializes ``asset`` in an asset job: its key path joined by ``__``."""
    return "__".join(asset.path)


def run_customers(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """The customers a run was for: its partition, or its partition range, in partition order."""
    tags = run.tags
    if PARTITION_NAME_TAG in tags:
        return [tags[PARTITION_NAME_TAG]]
    start, end = tags.get(ASSET_PARTITION_RANGE_START_TAG), tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if start is None or end is None:
        return []
    name = customers_partitions_def.name
    assert name is not None
    ordered = list(instance.get_dynamic_partitions(name))
    if start not in ordered or end not in ordered:
        return []  # a customer removed since: the range no longer resolves
    return ordered[ordered.index(start) : ordered.index(end) + 1]


def remaining_work(
    instance: dg.DagsterInstance, run: dg.DagsterRun, selected: Iterable[dg.AssetKey]
) -> dict[str, frozenset[dg.AssetKey]]:
    """Per customer that got through every failed step of ``run``: the selected assets the run
    did not materialize for it. Customers that failed somewhere are left out."""
    selected = set(selected)
    customers = run_customers(instance, run)
    if not customers or not selected:
        return {}
    materialized: dict[str, set[dg.AssetKey]] = defaultdict(set)
    failed_steps: set[str] = set()
    records = instance.get_records_for_run(
        run.run_id,
        of_type={dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.STEP_FAILURE},
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_FAILURE and event.step_key:
            failed_steps.add(event.step_key)
        elif event.asset_key is not None and event.partition is not None:
            materialized[event.partition].add(event.asset_key)
    failed_assets = {a for a in selected if step_key(a) in failed_steps}
    if not failed_assets:
        return {}  # no step of ours failed (a run-level failure): nothing to tell apart
    remaining = {}
    for customer in customers:
        done = materialized.get(customer, set())
        if failed_assets <= done:
            left = frozenset(selected - done)
            if left:
                remaining[customer] = left
    return remaining


def continuation_requests(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    remaining: dict[str, frozenset[dg.AssetKey]],
    batch_size: int,
) -> list[dg.RunRequest]:
    """The follow-up runs of a failed run (``remaining``: see :func:`remaining_work`), one per
    batch of consecutive customers with the same work left."""
    by_work: dict[frozenset[dg.AssetKey], list[str]] = defaultdict(list)
    for customer, left in remaining.items():
        by_work[left].append(customer)
    if not by_work:
        return []
    name = customers_partitions_def.name
    assert name is not None
    ordered = list(instance.get_dynamic_partitions(name))
    requests = []
    for left, customers in by_work.items():
        for keys in batch_ranges(ordered, customers, batch_size):
            requests.append(
                batch_run_request(
                    keys,
                    run_key=f"continue:{run.run_id}:{keys.start}:{keys.end}",
                    tags={CONTINUES_TAG: run.run_id},
                    asset_selection=sorted(left, key=lambda k: k.to_user_string()),
                )
            )
    return requests


def _selected_assets(context: dg.SensorEvaluationContext, run: dg.DagsterRun) -> Sequence:
    if run.asset_selection:
        return sorted(run.asset_selection, key=lambda k: k.to_user_string())
    repository = context.repository_def
    if repository is None or not repository.has_job(run.job_name):
        return []
    return sorted(
        repository.get_job(run.job_name).asset_layer.selected_asset_keys,
        key=lambda k: k.to_user_string(),
    )


@dg.sensor(
    job=forecast_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="When a batch run fails for some of its customers, runs the rest of the graph "
    "for the customers that got through (in batches of FORECAST_BACKFILL_BATCH_SIZE), so one "
    "bad customer never holds back the others' forecasts.",
)
def batch_continuation_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    after = datetime.fromisoformat(cursor["after"]) if "after" in cursor else None
    records = context.instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.FAILURE],
            updated_after=after - OVERLAP if after is not None else None,
        ),
        order_by="update_timestamp",
        ascending=True,
        limit=MAX_RUNS_PER_TICK,
    )
    size = backfill_batch_size()
    requests: list[dg.RunRequest] = []
    newest = after
    for record in records:
        run = record.dagster_run
        newest = max(newest, record.update_timestamp) if newest else record.update_timestamp
        remaining = remaining_work(context.instance, run, _selected_assets(context, run))
        found = continuation_requests(context.instance, run, remaining, size)
        if found:
            context.log.info(
                f"run {run.run_id[:8]} failed for some customers; the {len(remaining)} that got "
                f"through carry on in {len(found)} run(s)"
            )
        requests += found
    if newest is None:
        return dg.SensorResult(run_requests=[], cursor=context.cursor)
    return dg.SensorResult(run_requests=requests, cursor=json.dumps({"after": newest.isoformat()}))

"""One bad customer does not stop its batch: per-customer failure, and the rest carry on.

The scenario of the issue: a batch of five customers, one with a file that is not a meter export
and one with too little history to train on. Three get forecasts; the two failed partitions say
why on their own partition; the continuation sensor takes the others through the graph.
"""

from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pytest
from dagster._core.storage.partition_status_cache import AssetPartitionStatus

from forecast_assets import publication
from forecast_assets.assets.common import FAILED_REASON
from forecast_assets.assets.overview import (
    InstanceFacts,
    OverviewConfig,
    PublishedFacts,
    customer_status,
)
from forecast_assets.continuation import CONTINUES_TAG, batch_continuation_sensor
from forecast_assets.definitions import build_definitions
from forecast_assets.demo_data import DEMO_CUSTOMERS
from forecast_assets.partitions import batch_ranges, customers_partitions_def
from forecast_assets.publication import FORECASTS, MANIFESTS
from resources.database import Database
from tests.conftest import land

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
FAST_TRAINING = {"ops": {"models__load_forecast_model": {"config": {"n_estimators": 30}}}}
RAW = dg.AssetKey(["landing", "raw_load"])
MODEL = dg.AssetKey(["models", "load_forecast_model"])
FORECAST = dg.AssetKey(["forecasts", "load_forecast"])


def test_batch_ranges_never_span_a_customer_left_out():
    ordered = ["a", "b", "c", "d", "e", "f", "g"]
    assert batch_ranges(ordered, ["a", "c", "d", "e", "g"], 2) == [
        dg.PartitionKeyRange("a", "a"),
        dg.PartitionKeyRange("c", "d"),
        dg.PartitionKeyRange("e", "e"),
        dg.PartitionKeyRange("g", "g"),
    ]
    assert batch_ranges(ordered, ordered, 50) == [dg.PartitionKeyRange("a", "g")]
    assert batch_ranges(ordered, ["zz"], 5) == []


def _failed_reason(instance: dg.DagsterInstance, key: dg.AssetKey, customer: str) -> str:
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[customer]), limit=1
    ).records
    assert records, f"no failure recorded on {key.to_user_string()} for {customer}"
    observation = records[0].asset_observation
    assert observation is not None
    return str(observation.metadata[FAILED_REASON].value)


def _run(job: dg.JobDefinition, instance: dg.DagsterInstance, request: dg.RunRequest) -> Any:
    return job.execute_in_process(
        instance=instance,
        tags=request.tags,
        partition_key=request.partition_key,
        asset_selection=request.asset_selection,
        run_config=FAST_TRAINING,
        raise_on_error=False,
    )


@pytest.mark.slow
def test_a_batch_of_five_with_a_bad_file_and_a_failing_fit_forecasts_the_other_three(
    instance, data_home, store, monkeypatch
):
    monkeypatch.setenv("FORECAST_BACKFILL_BATCH_SIZE", "5")
    customers = [c.customer_id for c in DEMO_CUSTOMERS[:5]]
    first, bad_file, third, short, fifth = customers
    land(store, [first, bad_file, third, fifth], days=75)
    land(store, [short], days=30)  # too little history to train on: its fit fails
    store.write_bytes(store.uri("landing", bad_file, "broken.csv"), b"not a meter export\n")
    instance.add_dynamic_partitions("customers", customers)
    defs = build_definitions("local")
    job = defs.resolve_job_def("forecast_job")

    result = job.execute_in_process(
        instance=instance,
        tags={RANGE_START: first, RANGE_END: fifth},
        run_config=FAST_TRAINING,
        raise_on_error=False,
    )
    # The bad file fails its customer alone: the other four manifests are published.
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "landing__raw_load"
    message = failure.step_failure_data.error.message
    assert "1 of 5 customer(s) failed at landing/raw_load" in message
    assert f"customer '{bad_file}'" in message and "broken.csv" in message
    assert "the other 4 were materialized" in message
    for customer in (first, third, short, fifth):
        assert publication.current(store, MANIFESTS, customer) is not None
    assert publication.current(store, MANIFESTS, bad_file) is None
    assert "broken.csv" in _failed_reason(instance, RAW, bad_file)
    status = instance.get_status_by_partition(RAW, customers, customers_partitions_def)
    assert status is not None
    assert status[bad_file] == AssetPartitionStatus.FAILED
    assert {status[c] for c in (first, third, short, fifth)} == {AssetPartitionStatus.MATERIALIZED}

    # The sensor continues the four through the rest of the graph: the bad customer sits
    # between them in partition order, so as two runs.
    context = dg.build_sensor_context(instance=instance, repository_def=defs.get_repository_def())
    tick = batch_continuation_sensor(context)
    assert isinstance(tick, dg.SensorResult)
    requests = tick.run_requests or []
    assert [
        (r.partition_key, r.tags.get(RANGE_START), r.tags.get(RANGE_END)) for r in requests
    ] == [
        (first, None, None),
        (None, third, fifth),
    ]
    assert all(r.tags[CONTINUES_TAG] == result.run_id for r in requests)
    assert all(RAW not in (r.asset_selection or []) for r in requests)
    assert all(FORECAST in (r.asset_selection or []) for r in requests)
    # Evaluated again from its cursor, the same runs are requested with the same run keys
    # (the daemon launches a run key once).
    again = batch_continuation_sensor(
        dg.build_sensor_context(
            instance=instance, repository_def=defs.get_repository_def(), cursor=tick.cursor
        )
    )
    assert isinstance(again, dg.SensorResult)
    assert {r.run_key for r in again.run_requests or []} == {r.run_key for r in requests}

    single, batch = (_run(job, instance, r) for r in requests)
    assert single.success
    # In the batch of three, the short customer's fit fails; the other two are registered.
    assert not batch.success
    (failure,) = [e for e in batch.all_events if e.is_step_failure]
    assert failure.step_key == "models__load_forecast_model"
    message = failure.step_failure_data.error.message
    assert "1 of 3 customer(s) failed at models/load_forecast_model" in message
    assert f"customer '{short}'" in message and "days of load data" in message
    assert "days of load data" in _failed_reason(instance, MODEL, short)
    database = Database()
    assert database.latest_approved_model(short) is None
    for customer in (third, fifth):
        assert database.model_versions(customer)

    # Their forecasts come in the next follow-up runs.
    tick = batch_continuation_sensor(
        dg.build_sensor_context(
            instance=instance, repository_def=defs.get_repository_def(), cursor=tick.cursor
        )
    )
    assert isinstance(tick, dg.SensorResult)
    # (one each: the short customer sits between them in partition order)
    follow_ups = [r for r in tick.run_requests or [] if r.tags[CONTINUES_TAG] == batch.run_id]
    assert [r.partition_key for r in follow_ups] == [third, fifth]
    for request in follow_ups:
        assert request.asset_selection == [FORECAST]
        assert _run(job, instance, request).success

    forecast = instance.get_status_by_partition(FORECAST, customers, customers_partitions_def)
    assert forecast is not None
    assert {c for c in customers if forecast[c] == AssetPartitionStatus.MATERIALIZED} == {
        first,
        third,
        fifth,
    }
    for customer in (first, third, fifth):
        assert publication.current(store, FORECASTS, customer) is not None
        assert len(database.latest_forecast(customer)) > 0
    for customer in (bad_file, short):
        assert publication.current(store, FORECASTS, customer) is None
    model = instance.get_status_by_partition(MODEL, customers, customers_partitions_def)
    assert model is not None and model[short] == AssetPartitionStatus.FAILED

    # The overview puts both failed customers first, each with its step and reason.
    now = datetime.now(UTC)
    facts = InstanceFacts.load(instance, customers)
    published = PublishedFacts.load(store, database, customers)
    rows = {c: customer_status(c, published, facts, OverviewConfig(), now) for c in customers}
    assert rows[bad_file].status == "failed" and "landing/raw_load failed" in rows[bad_file].why
    assert "broken.csv" in rows[bad_file].why
    assert rows[short].status == "failed"
    assert "models/load_forecast_model failed" in rows[short].why
    assert not any("failed" in rows[c].why for c in (first, third, fifth))


@pytest.mark.slow
def test_a_one_customer_run_whose_job_fails_records_the_reason_on_its_partition(
    instance, data_home, store
):
    """Not only batches: a one-customer job that fails (here its fit) leaves the job's reason on
    the customer's partition too, where the overview reads it."""
    short = DEMO_CUSTOMERS[0].customer_id
    land(store, [short], days=30)
    instance.add_dynamic_partitions("customers", [short])
    job = build_definitions("local").resolve_job_def("forecast_job")
    result = job.execute_in_process(
        instance=instance, partition_key=short, run_config=FAST_TRAINING, raise_on_error=False
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "models__load_forecast_model"
    # The run shows the job's own error, as before.
    assert "training job" in failure.step_failure_data.error.message
    assert "days of load data" in _failed_reason(instance, MODEL, short)
    facts = InstanceFacts.load(instance, [short])
    published = PublishedFacts.load(store, Database(), [short])
    row = customer_status(short, published, facts, OverviewConfig(), datetime.now(UTC))
    assert row.status == "failed" and "models/load_forecast_model failed" in row.why

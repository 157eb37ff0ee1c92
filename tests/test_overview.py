"""Per-customer check status and the overview: three customers through the graph (one model
approved, one rejected, one waiting for approval), each check's result on its own customer's
partition, the overview ordered by what needs attention, and its automation condition."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from forecast_assets.assets import REPORT_ASSETS, customer_overview_sensor
from forecast_assets.assets.overview import (
    FAILED_RUN_WINDOW,
    CustomerStatus,
    failed_latest_runs,
    overview_markdown,
    sort_rows,
)
from forecast_assets.assets.overview import KEY as OVERVIEW
from forecast_assets.definitions import build_definitions
from forecast_assets.demo_data import DEMO_CUSTOMERS
from tests.conftest import land

APPROVED, REJECTED, PENDING = (c.customer_id for c in DEMO_CUSTOMERS[:3])
CUSTOMERS = [APPROVED, REJECTED, PENDING]
GATE = dg.AssetCheckKey(dg.AssetKey(["models", "load_forecast_model"]), "quality_gate")
SANITY = dg.AssetCheckKey(dg.AssetKey(["forecasts", "load_forecast"]), "forecast_sanity")
TRAINING = "models__load_forecast_model"
FORECAST = "forecasts__load_forecast"
# Old test data must not hide the model states behind "stale".
FRESH_ENOUGH = {"ops": {"reports__customer_overview": {"config": {"max_data_age_hours": 1e6}}}}


def definitions() -> dg.Definitions:
    """The code location with the overview, as definitions.py is asked to add it."""
    defs = build_definitions("local")
    if OVERVIEW in defs.resolve_asset_graph().get_all_asset_keys():
        return defs
    return dg.Definitions.merge(
        defs, dg.Definitions(assets=REPORT_ASSETS, sensors=[customer_overview_sensor])
    )


def run_customer(defs: dg.Definitions, instance, customer: str, **training) -> None:
    config = {"n_estimators": 20, "backtest_days": 14, **training}
    result = defs.resolve_job_def("forecast_job").execute_in_process(
        instance=instance,
        partition_key=customer,
        run_config={"ops": {TRAINING: {"config": config}}},
        raise_on_error=False,
    )
    assert result.success, customer


def partition_status(instance, key: dg.AssetCheckKey) -> dict[str, str]:
    infos = instance.event_log_storage.get_asset_check_partition_info([key])
    return {
        i.partition_key: i.latest_execution_status.value + ("" if i.is_current else " (stale)")
        for i in infos
    }


@pytest.mark.slow
def test_each_customer_has_its_own_check_status_and_the_overview_puts_problems_first(
    instance, data_home, store, local_resources
):
    land(store, CUSTOMERS, days=60)
    instance.add_dynamic_partitions("customers", CUSTOMERS)
    defs = definitions()
    run_customer(defs, instance, APPROVED)
    run_customer(defs, instance, REJECTED, max_wape_ratio=0.01)
    run_customer(defs, instance, PENDING, auto_approve=False)

    # Every check result landed on its own customer's partition, current with its materialization.
    gate = partition_status(instance, GATE)
    assert gate == {APPROVED: "SUCCEEDED", REJECTED: "FAILED", PENDING: "SUCCEEDED"}
    assert partition_status(instance, SANITY) == dict.fromkeys(CUSTOMERS, "SUCCEEDED")
    (latest,) = instance.event_log_storage.get_asset_check_execution_history(
        GATE,
        limit=1,
        partition_filter=PartitionKeyFilter(key=REJECTED),
    )
    assert latest.status == AssetCheckExecutionRecordStatus.FAILED
    assert latest.evaluation is not None and latest.evaluation.partition == REJECTED
    assert f"customer '{REJECTED}'" in (latest.evaluation.description or "")
    assert latest.evaluation.metadata["customer"].value == REJECTED

    # The overview: the rejected model first, then the one waiting, then the healthy one.
    result = dg.materialize(
        REPORT_ASSETS, resources=local_resources, instance=instance, run_config=FRESH_ENOUGH
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata = event.step_materialization_data.materialization.metadata
    records = [r.data for r in metadata["customers"].value.records]
    assert [r["customer"] for r in records] == [REJECTED, PENDING, APPROVED], records
    assert [r["status"] for r in records][:2] == ["REJECTED", "PENDING"]
    # (a gap_ratio warning would make it WARNING; nothing worse)
    assert records[2]["status"] in ("OK", "WARNING"), records[2]
    by_customer = {r["customer"]: r for r in records}
    assert by_customer[REJECTED]["why"].startswith("model ")
    assert "rejected" in by_customer[REJECTED]["why"]
    assert by_customer[REJECTED]["gate"].startswith("FAILED")
    assert by_customer[REJECTED]["approval"] == "Rejected"
    assert by_customer[REJECTED]["forecast_source"] == "seasonal_naive_fallback"
    assert by_customer[PENDING]["approval"] == "PendingManualApproval"
    assert by_customer[APPROVED]["approval"] == "Approved"
    assert by_customer[APPROVED]["forecast_source"] == "newest"
    assert by_customer[APPROVED]["wape_ratio"] < 1
    assert by_customer[APPROVED]["forecast_age_h"] < 1
    assert metadata["needs_attention"].value >= 2
    markdown = metadata["overview"].value
    assert markdown.index(REJECTED) < markdown.index(PENDING) < markdown.index(APPROVED)

    # A forecast stopped by its blocking check: failed on that customer's partition only, the
    # last good forecast stays, and the overview puts that customer first.
    blocked = defs.resolve_job_def("inference_job").execute_in_process(
        instance=instance,
        partition_key=APPROVED,
        run_config={"ops": {FORECAST: {"config": {"max_multiple_of_history": 0.01}}}},
        raise_on_error=False,
    )
    assert not blocked.success
    assert partition_status(instance, SANITY) == {
        APPROVED: "FAILED",
        REJECTED: "SUCCEEDED",
        PENDING: "SUCCEEDED",
    }
    result = dg.materialize(
        REPORT_ASSETS, resources=local_resources, instance=instance, run_config=FRESH_ENOUGH
    )
    (event,) = result.get_asset_materialization_events()
    records = [
        r.data
        for r in event.step_materialization_data.materialization.metadata["customers"].value.records
    ]
    assert (records[0]["customer"], records[0]["status"]) == (APPROVED, "FAILED")
    assert f"forecast_sanity: customer '{APPROVED}'" in records[0]["why"]
    assert "latest run" in records[0]["why"] and "failed" in records[0]["why"]
    assert records[0]["forecast_source"] == "newest"  # the last good forecast is still current


@pytest.mark.slow
def test_a_batch_puts_each_customers_check_results_on_its_own_partition(instance, data_home, store):
    customers = CUSTOMERS[:2]
    land(store, customers, days=60)
    instance.add_dynamic_partitions("customers", customers)
    result = (
        build_definitions("local", batch_size=2)
        .resolve_job_def("forecast_job")
        .execute_in_process(
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": customers[0],
                "dagster/asset_partition_range_end": customers[-1],
            },
            run_config={"ops": {TRAINING: {"config": {"n_estimators": 20, "backtest_days": 14}}}},
        )
    )
    assert result.success
    gates = [e for e in result.get_asset_check_evaluations() if e.check_name == "quality_gate"]
    assert sorted(e.partition for e in gates) == sorted(customers)
    assert all(f"customer '{e.partition}'" in (e.description or "") for e in gates)
    for key in (GATE, SANITY):
        assert set(partition_status(instance, key)) == set(customers)
        assert "(stale)" not in "".join(partition_status(instance, key).values())


@pytest.mark.slow
def test_the_overview_is_requested_after_a_customer_is_materialized_and_hourly(
    instance, data_home, store, local_resources
):
    land(store, [APPROVED], days=60)
    instance.add_dynamic_partitions("customers", [APPROVED])
    defs = definitions()
    selection = dg.AssetSelection.assets(OVERVIEW)
    t0 = datetime(2026, 1, 5, 10, 5)

    def tick(at: datetime, cursor=None):
        return dg.evaluate_automation_conditions(
            defs=defs,
            instance=instance,
            asset_selection=selection,
            evaluation_time=at,
            cursor=cursor,
        )

    first = tick(t0)
    assert first.total_requested == 1  # never materialized
    dg.materialize(REPORT_ASSETS, resources=local_resources, instance=instance)
    quiet = tick(t0 + timedelta(minutes=1), first.cursor)
    assert quiet.total_requested == 0

    run_customer(defs, instance, APPROVED)  # the customer's data, model and forecast update
    # Not at once: at the next 5-minute mark (10:10), however many customers updated by then.
    waiting = tick(t0 + timedelta(minutes=2), quiet.cursor)
    assert waiting.total_requested == 0
    updated = tick(t0 + timedelta(minutes=5, seconds=30), waiting.cursor)
    assert updated.total_requested == 1
    dg.materialize(REPORT_ASSETS, resources=local_resources, instance=instance)
    again = tick(t0 + timedelta(minutes=6), updated.cursor)
    assert again.total_requested == 0
    # A 5-minute mark with nothing new requests nothing.
    nothing_new = tick(t0 + timedelta(minutes=10, seconds=30), again.cursor)
    assert nothing_new.total_requested == 0
    hourly = tick(t0 + timedelta(minutes=56), nothing_new.cursor)
    assert hourly.total_requested == 1


def test_rows_are_ordered_by_what_needs_attention_first():
    rows = [CustomerStatus(c) for c in ("ok-co", "stale-co", "failed-co", "pending-co")]
    rows[1].add("stale", "forecast issued 40 h ago")
    rows[2].add("failed", "forecast_sanity: implausible")
    rows[2].add("warning", "forecast by seasonal naive")
    rows[3].add("pending", "model v2 waits for approval")
    ordered = sort_rows(rows)
    assert [r.customer for r in ordered] == ["failed-co", "pending-co", "stale-co", "ok-co"]
    assert ordered[0].why == "forecast_sanity: implausible; forecast by seasonal naive"
    assert ordered[-1].status == "ok" and ordered[-1].why == "all checks passed"
    markdown = overview_markdown(ordered, datetime(2026, 1, 5, 6, 0))
    assert "4 customers" in markdown and "1 failed, 1 pending, 1 stale, 1 ok" in markdown
    assert markdown.index("failed-co") < markdown.index("ok-co")
    assert "| **FAILED** | failed-co |" in markdown


@dg.op(config_schema={"fail": bool})
def _step(context: dg.OpExecutionContext) -> None:
    if context.op_config["fail"]:
        raise RuntimeError("planted failure")


@dg.job
def _one_step() -> None:
    _step()


def test_only_customers_whose_latest_run_failed_are_named(instance):
    """The overview's run read: one query for the window's failed runs, then the latest run of
    each customer that has one; a customer whose failed run was followed by a good one is fine."""

    def run(customer: str, fail: bool) -> dg.ExecuteInProcessResult:
        return _one_step.execute_in_process(
            instance=instance,
            run_config={"ops": {"_step": {"config": {"fail": fail}}}},
            tags={"dagster/partition": customer},
            raise_on_error=False,
        )

    failed = run("failed-last", True)
    run("recovered", True)
    run("recovered", False)
    run("never-failed", False)
    run("not-asked-for", True)
    now = datetime.now(UTC)
    found = failed_latest_runs(instance, {"failed-last", "recovered", "never-failed"}, now)
    assert {c: r.run_id for c, r in found.items()} == {"failed-last": failed.run_id}
    # Older than the window: by then the overview calls the customer stale instead.
    assert failed_latest_runs(instance, {"failed-last"}, now + FAILED_RUN_WINDOW * 2) == {}
    assert failed_latest_runs(instance, set(), now) == {}

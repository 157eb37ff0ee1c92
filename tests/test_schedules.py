"""Weekly training and daily forecasting schedules, evaluated with build_schedule_context."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from forecast_assets import publication
from forecast_assets.assets import ALL_ASSETS
from forecast_assets.definitions import resources_for
from forecast_assets.environment import schedule_timezone
from forecast_assets.jobs import ALL_JOBS, inference_job, training_job
from forecast_assets.partitions import customers_partitions_def
from forecast_assets.publication import PREPROCESSED
from forecast_assets.schedules import (
    SCHEDULE_TIMEZONE,
    daily_forecast_schedule,
    weekly_training_schedule,
)
from forecast_assets.sensors import raw_files_sensor
from resources.database import Database
from resources.storage import LocalObjectStore

PARTITIONS = customers_partitions_def.name or "customers"
SUNDAY_2AM = datetime(2025, 11, 9, 2, 0, tzinfo=UTC)
MONDAY_6AM = datetime(2025, 11, 10, 6, 0, tzinfo=UTC)


def evaluate(schedule: dg.ScheduleDefinition, instance: dg.DagsterInstance, when, **resources):
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=when, resources=resources
    ) as context:
        result = schedule(context)
    return list(result) if isinstance(result, list) else result


def register(db: Database, customer: str, version: str, status: str) -> None:
    db.register_model(
        customer_id=customer,
        version=version,
        model_uri=f"s3://forecast-assets/models/{customer}/{version}/output/model.tar.gz",
        metrics={"r2": 0.9 if status != "Rejected" else 0.2},
        gate_passed=status != "Rejected",
        gate_reasons=[] if status != "Rejected" else ["r2 0.20 < 0.70"],
        run_id=f"run-{customer}-{version}",
        auto_approve=status == "Approved",
    )


@pytest.fixture
def database(data_home: Path) -> Database:
    return Database()


# When ------------------------------------------------------------------------------------------


def test_cron_strings_and_time_zone():
    # The replaced EventBridge rules: cron(0 2 ? * SUN *) and cron(0 6 * * ? *), which are UTC.
    assert SCHEDULE_TIMEZONE == "UTC"
    assert weekly_training_schedule.cron_schedule == "0 2 * * 0"
    assert daily_forecast_schedule.cron_schedule == "0 6 * * *"
    assert weekly_training_schedule.execution_timezone == SCHEDULE_TIMEZONE
    assert daily_forecast_schedule.execution_timezone == SCHEDULE_TIMEZONE
    assert weekly_training_schedule.job_name == "training_job"
    assert daily_forecast_schedule.job_name == "inference_job"


def test_time_zone_comes_from_the_environment(monkeypatch):
    """The code location reads FORECAST_SCHEDULE_TIMEZONE when it loads (a fresh interpreter)."""
    probe = (
        "from forecast_assets.schedules import weekly_training_schedule as w, "
        "daily_forecast_schedule as d; print(w.execution_timezone, d.execution_timezone)"
    )
    env = {**os.environ, "FORECAST_SCHEDULE_TIMEZONE": "Europe/Berlin"}
    loaded = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.split() == ["Europe/Berlin", "Europe/Berlin"]
    monkeypatch.setenv("FORECAST_SCHEDULE_TIMEZONE", "Mars/Olympus")
    with pytest.raises(ValueError, match="FORECAST_SCHEDULE_TIMEZONE='Mars/Olympus'"):
        schedule_timezone()
    monkeypatch.delenv("FORECAST_SCHEDULE_TIMEZONE")
    assert schedule_timezone() == "UTC"


def test_jobs_select_the_training_and_inference_assets(data_home: Path):
    graph = dg.Definitions(
        assets=ALL_ASSETS, jobs=ALL_JOBS, resources=resources_for("local")
    ).resolve_asset_graph()

    def selected(job: dg.UnresolvedAssetJobDefinition) -> set[str]:
        return {key.to_user_string() for key in job.selection.resolve(graph)}

    assert selected(training_job) == {
        "landing/raw_load",
        "preprocessed/load",
        "warehouse/devices",
        "models/load_forecast_model",
    }
    assert selected(inference_job) == {"forecasts/load_forecast"}
    # The blocking quality gate runs with the weekly training.
    gate = dg.AssetCheckKey(dg.AssetKey(["models", "load_forecast_model"]), "quality_gate")
    assert gate in training_job.selection.resolve_checks(graph)


def test_sensor_and_schedules_load_with_the_local_resources(data_home: Path):
    """What definitions.py gains: sensors=[raw_files_sensor] and both schedules."""
    defs = dg.Definitions(
        assets=ALL_ASSETS,
        jobs=ALL_JOBS,
        sensors=[raw_files_sensor],
        schedules=[weekly_training_schedule, daily_forecast_schedule],
        resources=resources_for("local"),
    )
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_schedule_def("daily_forecast_schedule").job_name == "inference_job"
    assert defs.resolve_sensor_def("raw_files_sensor").job_name == "forecast_job"


# Weekly training -------------------------------------------------------------------------------


def test_training_requests_one_run_per_customer(instance: dg.DagsterInstance):
    instance.add_dynamic_partitions(PARTITIONS, ["globex", "acme", "initech"])
    runs = evaluate(weekly_training_schedule, instance, SUNDAY_2AM)
    # In the partition set's order, the order batches are cut in.
    assert [(r.partition_key, r.run_key) for r in runs] == [
        ("globex", "globex:2025-11-09"),
        ("acme", "acme:2025-11-09"),
        ("initech", "initech:2025-11-09"),
    ]
    next_week = evaluate(weekly_training_schedule, instance, datetime(2025, 11, 16, 2, tzinfo=UTC))
    assert {r.run_key for r in next_week}.isdisjoint({r.run_key for r in runs})


def test_training_skips_without_customers(instance: dg.DagsterInstance):
    result = evaluate(weekly_training_schedule, instance, SUNDAY_2AM)
    assert isinstance(result, dg.SkipReason)
    assert "no customers" in (result.skip_message or "")


# Daily forecasting -------------------------------------------------------------------------------


def publish_load(store: LocalObjectStore, customer: str) -> None:
    publication.publish(store, PREPROCESSED, customer, "v1", contents={"load.parquet": b"x"})


def test_forecasting_runs_every_customer_with_preprocessed_load(
    instance: dg.DagsterInstance,
    database: Database,
    store: LocalObjectStore,
    capsys: pytest.CaptureFixture[str],
):
    # Whatever its models: newest approved, previous approved, or none (seasonal naive).
    register(database, "acme", "v1", "Approved")
    register(database, "globex", "v1", "Approved")
    register(database, "globex", "v2", "Rejected")
    register(database, "hooli", "v1", "Rejected")
    for customer in ("acme", "globex", "hooli", "umbrella"):
        publish_load(store, customer)
    instance.add_dynamic_partitions(PARTITIONS, ["acme", "globex", "hooli", "initech", "umbrella"])

    runs = evaluate(daily_forecast_schedule, instance, MONDAY_6AM, store=store)
    assert [(r.partition_key, r.run_key) for r in runs] == [
        ("acme", "acme:2025-11-10"),
        ("globex", "globex:2025-11-10"),
        ("hooli", "hooli:2025-11-10"),
        ("umbrella", "umbrella:2025-11-10"),
    ]
    logged = capsys.readouterr().err
    assert "forecasting 4 customer(s); 1 skipped" in logged
    assert "initech: no preprocessed load yet" in logged


RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def _batches(runs: list[dg.RunRequest]) -> list[tuple[str | None, str | None, str | None]]:
    return [(r.partition_key, r.tags.get(RANGE_START), r.tags.get(RANGE_END)) for r in runs]


def test_schedules_request_batches_that_never_span_a_skipped_customer(
    instance: dg.DagsterInstance, store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("FORECAST_BACKFILL_BATCH_SIZE", "2")
    customers = ["c1", "c2", "c3", "c4", "c5", "c6"]
    instance.add_dynamic_partitions(PARTITIONS, customers)
    training = evaluate(weekly_training_schedule, instance, SUNDAY_2AM)
    assert _batches(training) == [(None, "c1", "c2"), (None, "c3", "c4"), (None, "c5", "c6")]
    assert [r.run_key for r in training] == [
        "c1...c2:2025-11-09",
        "c3...c4:2025-11-09",
        "c5...c6:2025-11-09",
    ]
    # c3 has no preprocessed load: the forecasts' batches go around it.
    for customer in ("c1", "c2", "c4", "c5", "c6"):
        publish_load(store, customer)
    forecasts = evaluate(daily_forecast_schedule, instance, MONDAY_6AM, store=store)
    assert _batches(forecasts) == [(None, "c1", "c2"), (None, "c4", "c5"), ("c6", None, None)]
    assert all(r.tags["forecast-assets/customers-skipped"] == "1" for r in forecasts)


def test_a_batched_schedule_run_gives_each_step_the_batch(
    instance: dg.DagsterInstance, store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
):
    """The range run a tick requests is what the job executes: one step for the three."""
    monkeypatch.setenv("FORECAST_BACKFILL_BATCH_SIZE", "3")
    customers = ["acme", "globex", "hooli"]
    instance.add_dynamic_partitions(PARTITIONS, customers)
    (request,) = evaluate(weekly_training_schedule, instance, SUNDAY_2AM)
    seen: list[list[str]] = []

    @dg.asset(partitions_def=customers_partitions_def)
    def probe(context):  # (no annotation: this module postpones them)
        seen.append(list(context.partition_keys))
        return dg.MaterializeResult()

    job = dg.Definitions(
        assets=[probe],
        jobs=[dg.define_asset_job("probe_job", partitions_def=customers_partitions_def)],
    ).resolve_job_def("probe_job")
    result = job.execute_in_process(instance=instance, tags=request.tags)
    assert result.success
    assert seen == [customers]
    materialized = instance.get_materialized_partitions(probe.key)
    assert materialized == set(customers)


def test_forecasting_skips_when_no_customer_has_preprocessed_load(
    instance: dg.DagsterInstance, store: LocalObjectStore
):
    instance.add_dynamic_partitions(PARTITIONS, ["globex", "initech"])
    result = evaluate(daily_forecast_schedule, instance, MONDAY_6AM, store=store)
    assert isinstance(result, dg.SkipReason)
    assert result.skip_message == (
        "no customer has preprocessed load yet (2 skipped): globex: no preprocessed load yet "
        "(materialize forecast_job for it); initech: no preprocessed load yet (materialize "
        "forecast_job for it)"
    )


def test_forecasting_skips_without_customers(instance: dg.DagsterInstance, store: LocalObjectStore):
    result = evaluate(daily_forecast_schedule, instance, MONDAY_6AM, store=store)
    assert isinstance(result, dg.SkipReason)
    assert "no customers" in (result.skip_message or "")

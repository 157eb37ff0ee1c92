"""What the UI shows of a schedule's and a sensor's ticks: evaluated by Dagster's own scheduler
and sensor daemon code against a real instance, then read back from what the instance stored.

The UI's Automation pages read the same records: each tick's status, skip reason, requested
runs, and its "logs" (the tick's captured log, read here as the UI's GraphQL does, through
``get_instigation_log_records``). Runs go to a queued run coordinator, so nothing is executed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.instigation_logger import get_instigation_log_records
from dagster._core.log_manager import LOG_RECORD_METADATA_ATTR
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.scheduler.instigation import InstigatorTick, TickStatus
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.sensor import execute_sensor_iteration
from dagster._scheduler.scheduler import launch_scheduled_runs

from forecast_assets import publication, sensors
from forecast_assets.partitions import customers_partitions_def
from forecast_assets.publication import PREPROCESSED
from resources.storage import LocalObjectStore

PARTITIONS = customers_partitions_def.name or "customers"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def queued_instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """A real instance (SQLite storage, local compute logs) whose runs wait in the queue."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    overrides = {
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
        }
    }
    with dg.instance_for_test(temp_dir=str(home), overrides=overrides) as instance:
        yield instance


@pytest.fixture
def workspace(
    queued_instance: dg.DagsterInstance, data_home: Path
) -> Iterator[WorkspaceProcessContext]:
    """The code location of workspace.yaml, loaded in this process with the local resources."""
    origin = InProcessCodeLocationOrigin(
        loadable_target_origin=LoadableTargetOrigin(
            module_name="forecast_assets.definitions",
            attribute="defs",
            working_directory=str(ROOT),
        ),
        location_name="forecast_assets",
    )
    with create_test_daemon_workspace_context(
        InProcessWorkspaceLoadTarget(origin), queued_instance
    ) as context:
        yield context


def instigator(workspace: WorkspaceProcessContext, name: str):
    (location,) = workspace.create_request_context().get_code_location_entries().values()
    assert location.code_location is not None, location.load_error
    (repo,) = location.code_location.get_repositories().values()
    return repo.get_schedule(name) if repo.has_schedule(name) else repo.get_sensor(name)


def stored_ticks(instance: dg.DagsterInstance, remote) -> list[InstigatorTick]:
    return list(instance.get_ticks(remote.get_remote_origin_id(), remote.selector_id))


def tick_log(instance: dg.DagsterInstance, tick: InstigatorTick) -> list[tuple[str, str]]:
    """(level, message) of each line of the tick's "logs", read as the UI's GraphQL reads them
    (``dagster_graphql.implementation.fetch_instigators.get_tick_log_events``)."""
    assert tick.log_key, "the tick stored no log key: the UI would show no logs"
    return [
        (record["levelname"], record[LOG_RECORD_METADATA_ATTR]["orig_message"])
        for record in get_instigation_log_records(instance, tick.log_key)
    ]


def publish_load(customer: str) -> None:
    publication.publish(
        LocalObjectStore(), PREPROCESSED, customer, "v1", contents={"load.parquet": b"x"}
    )


def run_schedule_tick(workspace: WorkspaceProcessContext, name: str, at: datetime):
    """Turn the schedule on a minute before ``at`` and let the scheduler tick at ``at``."""
    instance = workspace.instance
    remote = instigator(workspace, name)
    with freeze_time(at - timedelta(minutes=1)):
        instance.start_schedule(remote)
    with freeze_time(at + timedelta(seconds=30)):
        list(
            launch_scheduled_runs(
                workspace, logging.getLogger("test-scheduler"), at + timedelta(seconds=30), {}
            )
        )
    return remote


def run_sensor_tick(workspace: WorkspaceProcessContext, name: str):
    """Turn the sensor on and let the sensor daemon evaluate it once; returns the sensor."""
    remote = instigator(workspace, name)
    workspace.instance.start_sensor(remote)
    list(
        execute_sensor_iteration(
            workspace,
            logging.getLogger("test-sensor"),
            threadpool_executor=None,
            submit_threadpool_executor=None,
        )
    )
    return remote


MONDAY_6AM = datetime(2025, 11, 10, 6, 0, tzinfo=UTC)


def test_daily_schedule_names_skipped_customers_in_the_tick_logs(
    workspace: WorkspaceProcessContext,
):
    instance = workspace.instance
    instance.add_dynamic_partitions(PARTITIONS, ["acme", "globex", "initech"])
    publish_load("acme")
    publish_load("globex")

    remote = run_schedule_tick(workspace, "daily_forecast_schedule", MONDAY_6AM)

    (tick,) = stored_ticks(instance, remote)
    assert tick.status == TickStatus.SUCCESS
    runs = [instance.get_run_by_id(run_id) for run_id in tick.run_ids]
    assert sorted(r.tags["dagster/partition"] for r in runs if r) == ["acme", "globex"]
    logged = tick_log(instance, tick)
    assert (
        "WARNING",
        "skipped initech: no preprocessed load yet (materialize forecast_job for it)",
    ) in logged
    assert (
        "WARNING",
        "forecasting 2 customer(s); 1 skipped: initech: no preprocessed load yet "
        "(materialize forecast_job for it)",
    ) in logged
    # The runs say which tick's selection they came from, for a reader of the run page.
    assert all(r and r.tags["forecast-assets/customers-skipped"] == "1" for r in runs)


def test_daily_schedule_with_nothing_to_forecast_stores_its_skip_reason(
    workspace: WorkspaceProcessContext,
):
    instance = workspace.instance
    instance.add_dynamic_partitions(PARTITIONS, ["initech"])

    remote = run_schedule_tick(workspace, "daily_forecast_schedule", MONDAY_6AM)

    (tick,) = stored_ticks(instance, remote)
    assert tick.status == TickStatus.SKIPPED
    assert tick.skip_reason == (
        "no customer has preprocessed load yet (1 skipped): initech: no preprocessed load yet "
        "(materialize forecast_job for it)"
    )
    assert (
        "WARNING",
        "skipped initech: no preprocessed load yet (materialize forecast_job for it)",
    ) in tick_log(instance, tick)


def test_sensor_skip_for_consumed_files_is_stored_on_its_tick(
    workspace: WorkspaceProcessContext, store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
):
    """raw_files_sensor after ``make demo``: files already consumed, no run, and the tick says
    why (its skip reason and its logs)."""
    from tests.conftest import land
    from tests.test_sensors import materialize_raw_load

    instance = workspace.instance
    land(store, ["hansa-offices"], days=10)
    materialize_raw_load(instance, store, ["hansa-offices"])
    # The settle time has passed for every file (the code location runs in this process).
    monkeypatch.setattr(
        sensors, "now", lambda: datetime.now(UTC) + timedelta(seconds=sensors.SETTLE_SECONDS + 1)
    )
    remote = run_sensor_tick(workspace, "raw_files_sensor")

    (tick,) = stored_ticks(instance, remote)
    assert tick.status == TickStatus.SKIPPED
    assert tick.run_ids == []
    assert tick.skip_reason is not None
    assert (
        "1 customer(s) whose new files their latest raw_load already consumed (same keys and "
        "ETags), so not run: hansa-offices" in tick.skip_reason
    )
    assert tick.cursor  # moved over the consumed files
    assert any("so not run: hansa-offices" in msg for _, msg in tick_log(instance, tick))

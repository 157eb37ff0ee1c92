"""Backfills across customers: batched runs, the SageMaker pools, and launching from UI and CLI."""

import json
import os
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from forecast_assets import paths, publication
from forecast_assets.assets import ALL_ASSETS
from forecast_assets.assets.common import PROCESSING_POOL, TRAINING_POOL
from forecast_assets.backfill import (
    BackfillError,
    load_env_file,
    submit_backfill,
    wait_for_backfill,
)
from forecast_assets.definitions import build_definitions
from forecast_assets.demo_data import DEMO_CUSTOMERS
from forecast_assets.environment import backfill_batch_size
from forecast_assets.publication import PREPROCESSED
from resources.database import Database
from resources.jobs.settings import MAX_RUNTIME_SECONDS, default_settings
from resources.storage import LocalObjectStore
from tests.conftest import _free_port, land
from tests.live_dagster import (
    REPO_ROOT,
    GraphQL,
    dagster_dev,
    executable,
    tail,
)

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
FAST_TRAINING = {"ops": {"models__load_forecast_model": {"config": {"n_estimators": 30}}}}


def _customers(n: int) -> list[str]:
    return [c.customer_id for c in DEMO_CUSTOMERS[:n]]


def _batch_tags(customers: list[str]) -> dict[str, str]:
    """The tags a batched backfill puts on a run: a range of the customers partitions."""
    return {RANGE_START: customers[0], RANGE_END: customers[-1]}


def _jobs_launched(data_home: Path) -> list[str]:
    root = data_home / "jobs"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# Settings and policies --------------------------------------------------------------------------


def test_batch_size_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("FORECAST_BACKFILL_BATCH_SIZE", raising=False)
    assert backfill_batch_size() == 1
    monkeypatch.setenv("FORECAST_BACKFILL_BATCH_SIZE", "25")
    assert backfill_batch_size() == 25
    for bad in ("0", "-3", "ten", "101", "2.5"):
        monkeypatch.setenv("FORECAST_BACKFILL_BATCH_SIZE", bad)
        with pytest.raises(ValueError, match="FORECAST_BACKFILL_BATCH_SIZE"):
            backfill_batch_size()


def test_forecast_backfill_reads_the_batch_size_from_env_file_unless_the_shell_sets_it(
    monkeypatch, tmp_path
):
    (tmp_path / ".env").write_text("FORECAST_BACKFILL_BATCH_SIZE=10\nFORECAST_TAGS=team=a b\n")
    for name in ("FORECAST_BACKFILL_BATCH_SIZE", "FORECAST_TAGS"):
        monkeypatch.setenv(name, "")  # so that monkeypatch restores it afterwards
        monkeypatch.delenv(name)
    load_env_file(str(tmp_path))
    assert backfill_batch_size() == 10
    assert os.environ["FORECAST_TAGS"] == "team=a b"
    monkeypatch.setenv("FORECAST_BACKFILL_BATCH_SIZE", "3")
    load_env_file(str(tmp_path))
    assert backfill_batch_size() == 3


def test_every_asset_shares_the_backfill_policy_and_jobs_take_pool_slots():
    graph = build_definitions("local", batch_size=7).resolve_asset_graph()
    # Every per-customer asset; the overview across customers is unpartitioned, never backfilled.
    partitioned = [k for k in graph.get_all_asset_keys() if graph.get(k).partitions_def]
    assert {k.to_user_string() for k in partitioned} == {a.key.to_user_string() for a in ALL_ASSETS}
    policies = {graph.get(key).backfill_policy for key in partitioned}
    assert policies == {dg.BackfillPolicy.multi_run(max_partitions_per_run=7)}
    pools = {asset.key.to_user_string(): asset.op.pool for asset in ALL_ASSETS}
    assert pools == {
        "landing/raw_load": None,
        "preprocessed/load": PROCESSING_POOL,
        "warehouse/devices": None,
        "models/load_forecast_model": TRAINING_POOL,
        "forecasts/load_forecast": PROCESSING_POOL,
    }


def test_repo_instance_caps_pools_at_the_op():
    """The dagster.yaml `make ui` uses: runs queue, and each SageMaker step holds a pool slot."""
    with dg.instance_for_test(
        overrides=_repo_instance_config(default_limit=None),
    ) as instance:
        config = instance.get_concurrency_config()
        assert config.pool_config.pool_granularity.value == "op"
        assert config.pool_config.default_pool_limit == 2
        assert config.run_queue_config is not None
        assert config.run_queue_config.max_concurrent_runs >= 2
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"


def test_batch_time_limits_are_per_customer_up_to_sagemaker_maximum():
    training = default_settings("training").model_copy(update={"spot_max_wait_seconds": 3600})
    assert training.for_batch(1, "training") == training
    batch = training.for_batch(10, "training")
    assert batch.max_runtime_seconds == 10 * training.max_runtime_seconds
    assert batch.spot_max_wait_seconds == 36_000
    assert batch.instance_type == training.instance_type
    huge = default_settings("preprocessing").for_batch(1000, "preprocessing")
    assert huge.max_runtime_seconds == MAX_RUNTIME_SECONDS["processing"]


# forecast-backfill ------------------------------------------------------------------------------


def test_submit_backfill_refuses_what_it_cannot_run(instance):
    defs = build_definitions("local")
    with pytest.raises(BackfillError, match="no customers to backfill"):
        submit_backfill(instance, defs, "forecast_job")
    instance.add_dynamic_partitions("customers", ["acme"])
    with pytest.raises(BackfillError, match="not in the customers partition set: nope"):
        submit_backfill(instance, defs, "forecast_job", ["acme", "nope"])
    with pytest.raises(BackfillError, match="customer id"):
        submit_backfill(instance, defs, "forecast_job", ["../etc"])
    with pytest.raises(BackfillError, match="no job named 'nightly'"):
        submit_backfill(instance, defs, "nightly")


def test_submit_backfill_targets_the_jobs_assets_for_every_customer(instance):
    defs = build_definitions("local")
    instance.add_dynamic_partitions("customers", ["acme", "globex", "initech"])
    backfill = submit_backfill(instance, defs, "inference_job")
    stored = instance.get_backfill(backfill.backfill_id)
    assert stored is not None and stored.status.value == "REQUESTED"
    assert stored.asset_selection == [dg.AssetKey(["forecasts", "load_forecast"])]
    target = stored.asset_backfill_data.target_subset
    assert {key.partition_key for key in target.iterate_asset_partitions()} == {
        "acme",
        "globex",
        "initech",
    }
    assert stored.tags["forecast-assets/job"] == "inference_job"


# A batch through the whole graph -----------------------------------------------------------------


def _materializations(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    """Per asset, per partition: the metadata of its materialization."""
    found: dict[str, dict[str, Any]] = defaultdict(dict)
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        found[materialization.asset_key.to_user_string()][materialization.partition] = (
            materialization.metadata
        )
    return found


def current_uri(store, dataset: str, customer: str, name: str) -> str:
    published = publication.current(store, dataset, customer)
    assert published is not None, f"{customer}: nothing published in {dataset}"
    return published.uri(name)


@pytest.mark.slow
def test_batched_run_launches_one_job_per_step_and_reports_each_customer(
    instance, data_home, store
):
    customers = _customers(3)
    land(store, customers, days=75)
    instance.add_dynamic_partitions("customers", customers)
    job = build_definitions("local", batch_size=3).resolve_job_def("forecast_job")
    result = job.execute_in_process(
        instance=instance, tags=_batch_tags(customers), run_config=FAST_TRAINING
    )
    assert result.success

    # Three SageMaker jobs for three customers, one per step that launches one.
    launched = _jobs_launched(data_home)
    assert len(launched) == 3, launched
    assert all("-batch3-" in name for name in launched)

    # Every asset is materialized once per customer, each with that customer's own figures.
    materialized = _materializations(result)
    assert set(materialized) == {a.key.to_user_string() for a in ALL_ASSETS}
    for asset, by_partition in materialized.items():
        assert set(by_partition) == set(customers), asset
    by_id = {c.customer_id: c for c in DEMO_CUSTOMERS}
    database = Database()
    for customer in customers:
        pre = materialized["preprocessed/load"][customer]
        assert pre["devices"].value == by_id[customer].devices
        assert pre["uri"].value == current_uri(store, PREPROCESSED, customer, "load.parquet")
        assert pre["job_name"].value in launched  # the shared job, on every partition
        assert pre["batch_customers"].value == 3
        model = materialized["models/load_forecast_model"][customer]
        assert model["model_uri"].value == paths.model_artifact(
            store, customer, model["job_name"].value
        )
        assert len(model["backtest"].value.records) >= 14
        assert "wape" in model and "r2" in model  # reported by the job through Pipes
        assert materialized["landing/raw_load"][customer]["files_version"].value

        # The registry holds a self-contained model per customer, and forecasts used it.
        approved = database.latest_approved_model(customer)
        assert approved is not None and approved.model_uri == model["model_uri"].value
        forecast = database.latest_forecast(customer)
        assert len(forecast) == 48 * by_id[customer].devices
        assert set(forecast["model_version"]) == {approved.version}
        assert materialized["forecasts/load_forecast"][customer]["rows"].value == len(forecast)
    rows = {c: materialized["preprocessed/load"][c]["rows"].value for c in customers}
    assert len(set(rows.values())) > 1, rows  # not one customer's figures copied to all

    gates = {
        e.partition: e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "quality_gate"
    }
    assert set(gates) == set(customers) and all(e.passed for e in gates.values())


@pytest.mark.slow
def test_a_batch_forecasts_every_customer_with_the_best_model_it_has(instance, data_home, store):
    customers = _customers(3)
    land(store, customers, days=75)
    instance.add_dynamic_partitions("customers", customers)
    defs = build_definitions("local", batch_size=3)
    first = defs.resolve_job_def("forecast_job").execute_in_process(
        instance=instance, tags=_batch_tags(customers), run_config=FAST_TRAINING
    )
    assert first.success
    unchanged, no_model, newest_rejected = customers
    database = Database()
    # One customer loses its only approved model; another gets a newer, rejected one.
    only = database.latest_approved_model(no_model)
    assert only is not None
    database.set_model_status(no_model, only.version, "Rejected")
    kept = database.latest_approved_model(newest_rejected)
    assert kept is not None
    database.register_model(
        customer_id=newest_rejected,
        version="fa-train-newer",
        model_uri=kept.model_uri,
        metrics=kept.metrics,
        gate_passed=False,
        gate_reasons=["WAPE ratio 1.20 is not below 1.00"],
        run_id="another-run",
    )
    jobs_before = _jobs_launched(data_home)

    result = defs.resolve_job_def("inference_job").execute_in_process(
        instance=instance, tags=_batch_tags(customers)
    )
    assert result.success
    # The customer whose inputs did not change reuses its forecast; the other two share one job.
    launched = sorted(set(_jobs_launched(data_home)) - set(jobs_before))
    assert len(launched) == 1 and "-batch2-" in launched[0], launched
    forecasts = _materializations(result)["forecasts/load_forecast"]
    assert forecasts[unchanged]["reused"].value is True
    assert forecasts[unchanged]["source"].value == "newest"
    assert forecasts[no_model]["source"].value == "seasonal_naive_fallback"
    assert forecasts[newest_rejected]["source"].value == "previous_approved"
    assert forecasts[newest_rejected]["model_version"].value == kept.version
    for customer, source in (
        (no_model, "seasonal_naive_fallback"),
        (newest_rejected, "previous_approved"),
    ):
        stored = database.latest_forecast(customer)
        assert set(stored["source"]) == {source}, customer
        assert len(stored) == 48 * next(
            c.devices for c in DEMO_CUSTOMERS if c.customer_id == customer
        )


# The UI and the command line, through the daemon ---------------------------------------------


def _repo_instance_config(default_limit: int | None) -> dict[str, Any]:
    import yaml

    config = yaml.safe_load((REPO_ROOT / "instance" / "dagster.yaml").read_text())
    if default_limit is not None:
        config["concurrency"]["pools"]["default_limit"] = default_limit
    return config


LAUNCH_BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
  }
}
"""


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def _pool_intervals(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, list]:
    """When each SageMaker-launching step ran, by pool, from the runs' event logs."""
    pool_of_step = {
        "preprocessed__load": PROCESSING_POOL,
        "forecasts__load_forecast": PROCESSING_POOL,
        "models__load_forecast_model": TRAINING_POOL,
    }
    intervals: dict[str, list] = defaultdict(list)
    for run_id in run_ids:
        started: dict[str, float] = {}
        for record in instance.all_logs(run_id):
            event = record.dagster_event
            if event is None or event.step_key not in pool_of_step:
                continue
            if event.event_type_value == "STEP_START":
                started[event.step_key] = record.timestamp
            elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
                intervals[pool_of_step[event.step_key]].append(
                    (started.pop(event.step_key), record.timestamp)
                )
    return intervals


@pytest.mark.slow
def test_backfills_from_the_ui_and_the_command_line_run_batched_under_the_pool_cap(
    data_home: Path, store: LocalObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dagster dev` (webserver and daemon) with the repo's dagster.yaml, pools capped at 1."""
    import yaml

    customers = _customers(3)
    land(store, customers, days=75)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(_repo_instance_config(default_limit=1)))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FORECAST_BACKFILL_BATCH_SIZE": "2",
        "PYTHONUNBUFFERED": "1",
    }
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("customers", customers)
        port = _free_port()
        log = tmp_path / "dagster-dev.log"
        with dagster_dev(env, log, port):
            graphql = GraphQL(f"http://127.0.0.1:{port}")

            # The UI's "Launch backfill" for forecast_job's assets over every customer.
            keys = build_definitions("local").resolve_job_def("forecast_job")
            selection = [{"path": k.path} for k in keys.asset_layer.selected_asset_keys]
            launched = graphql(
                LAUNCH_BACKFILL,
                {"params": {"partitionNames": customers, "assetSelection": selection}},
            )["launchPartitionBackfill"]
            assert launched["__typename"] == "LaunchBackfillSuccess", launched
            ui_backfill = launched["backfillId"]
            status = wait_for_backfill(instance, ui_backfill, poll_seconds=2, timeout_seconds=600)
            assert status.value == "COMPLETED_SUCCESS", tail(log)

            # The same from the command line: daily inference for every customer.
            cli = subprocess.run(
                [executable("forecast-backfill"), "--all", "--job", "inference_job", "--wait"],
                cwd=REPO_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert cli.returncode == 0, cli.stdout + cli.stderr + tail(log)
            assert "for 3 customer(s), 2 per run (about 2 runs)" in cli.stdout
            assert "COMPLETED_SUCCESS" in cli.stdout

        runs_by_backfill: dict[str, list[dg.DagsterRun]] = defaultdict(list)
        for run in instance.get_runs():
            runs_by_backfill[run.tags.get("dagster/backfill", "")].append(run)
        cli_backfill = next(b for b in runs_by_backfill if b not in ("", ui_backfill))
        for backfill_id in (ui_backfill, cli_backfill):
            runs = runs_by_backfill[backfill_id]
            # Three customers, two per run: one run of two and one of one, all successful.
            assert sorted(_run_size(instance, r) for r in runs) == [1, 2]
            assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}

        for key in (
            dg.AssetKey(["forecasts", "load_forecast"]),
            dg.AssetKey(["preprocessed", "load"]),
        ):
            assert instance.get_materialized_partitions(key) == set(customers)
        # Two forecast runs per customer (UI, then CLI), each reported on its own partition.
        forecasts = instance.fetch_materializations(
            dg.AssetKey(["forecasts", "load_forecast"]), limit=20
        ).records
        assert sorted(r.partition_key for r in forecasts) == sorted(customers * 2)

        # The pool cap held: never two jobs of one pool at once, although the runs overlapped.
        ui_runs = [instance.get_run_record_by_id(r.run_id) for r in runs_by_backfill[ui_backfill]]
        starts = [r.start_time for r in ui_runs if r and r.start_time]
        ends = [r.end_time for r in ui_runs if r and r.end_time]
        assert len(starts) == len(ends) == 2 and max(starts) < min(ends)
        all_runs = [r.run_id for runs in runs_by_backfill.values() for r in runs]
        intervals = _pool_intervals(instance, all_runs)
        assert len(intervals[PROCESSING_POOL]) == 6 and len(intervals[TRAINING_POOL]) == 2
        for pool, spans in intervals.items():
            assert _max_overlap(spans) == 1, (pool, spans)
        print(json.dumps({pool: len(spans) for pool, spans in intervals.items()}))


def _run_size(instance: dg.DagsterInstance, run: dg.DagsterRun) -> int:
    if RANGE_START not in run.tags:
        return 1
    keys = instance.get_dynamic_partitions("customers")
    return keys.index(run.tags[RANGE_END]) - keys.index(run.tags[RANGE_START]) + 1

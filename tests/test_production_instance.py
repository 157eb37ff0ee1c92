"""The production deployment in deploy/: its dagster.yaml on a real PostgreSQL, and its image.

The ECS run launcher cannot launch anything here, so the instance test swaps only the
``run_launcher`` section for Dagster's default one and keeps the rest of the production file
(storage, run queue, pools, run monitoring) as it is. No Docker engine either: the Dockerfile is
read and held to the workspace it must match and the lock file it must install from.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from forecast_assets.backfill import submit_backfill, wait_for_backfill
from forecast_assets.definitions import build_definitions
from forecast_assets.demo_data import DEMO_CUSTOMERS
from resources.database import Database
from tests.conftest import _free_port, land
from tests.live_dagster import REPO_ROOT, executable, start_in_group, stop_process_group, tail

DEPLOY = REPO_ROOT / "deploy"
PG_VARS = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_DB")
DEFAULT_RUN_LAUNCHER = {"module": "dagster._core.launcher", "class": "DefaultRunLauncher"}
FAST_TRAINING = {"ops": {"models__load_forecast_model": {"config": {"n_estimators": 30}}}}
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
FORECAST = dg.AssetKey(["forecasts", "load_forecast"])


def production_config() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())


def with_default_run_launcher(config: dict[str, Any]) -> dict[str, Any]:
    """The production instance with runs launched on this machine instead of ECS."""
    swapped = copy.deepcopy(config)
    swapped["run_launcher"] = DEFAULT_RUN_LAUNCHER
    return swapped


# The file itself --------------------------------------------------------------------------------


def test_production_instance_keeps_the_local_queue_pools_and_monitoring():
    production = production_config()
    local = yaml.safe_load((REPO_ROOT / "instance" / "dagster.yaml").read_text())
    assert production["concurrency"]["pools"] == local["concurrency"]["pools"]
    assert production["concurrency"]["runs"]["max_concurrent_runs"] >= 1
    assert production["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert production["run_monitoring"]["enabled"] is True
    assert production["run_monitoring"]["max_resume_run_attempts"] == 0
    for key in ("free_slots_after_run_end_seconds", "poll_interval_seconds"):
        assert production["run_monitoring"][key] == local["run_monitoring"][key]
    # Every connection value comes from the environment; nothing is written into the file.
    postgres_db = production["storage"]["postgres"]["postgres_db"]
    connection = {k: v for k, v in postgres_db.items() if k != "scheme"}
    assert set(connection) == {"hostname", "port", "username", "password", "db_name"}
    assert all(set(value) == {"env"} for value in connection.values()), connection
    assert {v["env"] for v in connection.values()} == {*PG_VARS, "DAGSTER_PG_PASSWORD"}
    # SQLAlchemy 2.1 takes a bare postgresql:// for psycopg 3; the driver installed is psycopg2.
    assert postgres_db["scheme"] == "postgresql+psycopg2"


def test_production_runs_leave_on_ecs_with_a_valid_launcher_config(monkeypatch):
    from dagster._config import process_config
    from dagster_aws.ecs import EcsRunLauncher

    launcher = production_config()["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_aws.ecs", "EcsRunLauncher")
    assert getattr(__import__(launcher["module"], fromlist=["x"]), launcher["class"]) is (
        EcsRunLauncher
    )
    result = process_config(EcsRunLauncher.config_type(), launcher["config"])
    assert result.success, [e.message for e in result.errors or []]
    # The run task is a copy of the launching task's definition with the code location's image,
    # so the run worker opens this instance with the same environment and secrets: nothing
    # overrides that copy (no task definition of its own, no lookup of tagged secrets).
    processed = result.value or {}
    assert processed["use_current_ecs_task_config"] is True
    assert "task_definition" not in processed
    assert processed["secrets_tag"] is None
    assert not processed.get("env_vars") and not processed.get("secrets")
    # The launcher builds from that config (its constructor makes boto3 clients, calls nothing).
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    ecs = EcsRunLauncher(**processed)
    assert ecs.use_current_ecs_task_config and ecs.secrets_tags == []
    assert "dagster/backfill" in (ecs.propagate_tags or {})["allow_list"]


# The image --------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def _option(argv: list[str], *names: str) -> str:
    for i, arg in enumerate(argv):
        if arg in names:
            return argv[i + 1]
    raise AssertionError(f"none of {names} in {argv}")


def _locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO_ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.split(";")[0].strip().partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_the_image_serves_the_definitions_on_the_workspace_port():
    instructions = dockerfile_instructions()
    (cmd,) = [args for word, args in instructions if word == "CMD"]
    argv = json.loads(cmd)
    assert argv[:3] == ["dagster", "code-server", "start"]
    module, attribute = _option(argv, "-m", "--module-name"), _option(argv, "-a", "--attribute")
    port = int(_option(argv, "-p", "--port"))
    assert _option(argv, "-h", "--host") == "0.0.0.0"  # reachable from the other containers
    # What the image serves exists and is the code location's Definitions.
    assert isinstance(getattr(__import__(module, fromlist=[attribute]), attribute), dg.Definitions)
    assert module == "forecast_assets.definitions"

    (entry,) = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())["load_from"]
    assert entry["grpc_server"]["port"] == port
    assert ("EXPOSE", str(port)) in instructions

    # The instance it carries is deploy/dagster.yaml, where DAGSTER_HOME says.
    env = " ".join(args for word, args in instructions if word == "ENV")
    home = re.search(r"DAGSTER_HOME=(\S+)", env)
    assert home is not None
    assert ("COPY", f"deploy/dagster.yaml {home.group(1)}/dagster.yaml") in instructions
    # Every COPY source exists in the build context (the repository root).
    for word, args in instructions:
        if word == "COPY":
            *sources, _ = [a for a in shlex.split(args) if not a.startswith("--")]
            for source in sources:
                assert (REPO_ROOT / source).exists(), source


def test_the_image_installs_only_locked_versions():
    runs = [args for word, args in dockerfile_instructions() if word == "RUN"]
    installs = [
        shlex.split(part)
        for run in runs
        for part in run.split("&&")
        if shlex.split(part)[:2] == ["pip", "install"]
    ]
    assert installs, "the image installs nothing"
    locked = _locked()
    for argv in installs:
        # Always constrained by the lock file, so pip cannot pick a newer release.
        assert _option(argv, "-c", "--constraint") == "requirements.lock", argv
        targets = [a for a in argv[2:] if not a.startswith("-") and a != "requirements.lock"]
        assert targets == ["."], argv  # the project itself, as pyproject.toml declares it
    # Everything the project depends on has its version in the lock, dagster-postgres included.
    import tomllib

    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    for spec in pyproject["project"]["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in requirements.lock"
        assert requirement.specifier.contains(locked[name]), (spec, locked[name])
    # Dagster's libraries are released together, each at one version: dagster-postgres must be
    # the one that goes with this dagster, as dagster-aws is.
    assert locked["dagster-postgres"] == locked["dagster-aws"]


# The instance on PostgreSQL ---------------------------------------------------------------------


@pytest.fixture
def production_home(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, sa.Engine]]:
    """DAGSTER_HOME with deploy/dagster.yaml (default run launcher) on a database of its own in
    the throwaway PostgreSQL server, connected through the DAGSTER_PG_* variables it reads; and
    an engine on that database to look at what Dagster stored."""
    server = sa.engine.make_url(postgres_url)
    name = f"dagster_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    monkeypatch.setenv("DAGSTER_PG_HOST", str(server.host))
    monkeypatch.setenv("DAGSTER_PG_PORT", str(server.port))
    monkeypatch.setenv("DAGSTER_PG_USER", str(server.username))
    # The server trusts local connections; any password is accepted, but one must be set.
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused-with-trust-auth")
    monkeypatch.setenv("DAGSTER_PG_DB", name)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        yaml.safe_dump(with_default_run_launcher(production_config()))
    )
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    engine = sa.create_engine(server.set(database=name))
    try:
        yield home, engine
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _wait_for_code_server(process: subprocess.Popen, port: int, log: Path) -> None:
    """Until the code server answers with the code location loaded (at most two minutes)."""
    from dagster._grpc.client import DagsterGrpcClient

    client = DagsterGrpcClient(port=port, host="127.0.0.1")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the code server exited with {process.returncode}:\n{tail(log)}")
        try:
            if "forecast_assets" in client.list_repositories():
                return
        except Exception:  # not listening yet, or still loading the definitions
            pass
        time.sleep(0.5)
    pytest.fail(f"the code server did not load the definitions in 120 s:\n{tail(log)}")


def _deploy_command(port: int) -> list[str]:
    """The image's CMD, on ``port`` and 127.0.0.1, with this virtualenv's dagster."""
    (cmd,) = [args for word, args in dockerfile_instructions() if word == "CMD"]
    argv = json.loads(cmd)
    argv[0] = executable(argv[0])
    argv[argv.index("-p") + 1] = str(port)
    argv[argv.index("-h") + 1] = "127.0.0.1"
    return argv


@pytest.mark.slow
@pytest.mark.postgres
def test_the_production_instance_runs_the_graph_and_a_backfill_on_postgresql(
    production_home: tuple[Path, sa.Engine], data_home: Path, store, tmp_path: Path
) -> None:
    home, engine = production_home
    customers = [c.customer_id for c in DEMO_CUSTOMERS[:3]]
    land(store, customers, days=75)

    with dg.DagsterInstance.get() as instance:
        # Every storage is PostgreSQL's; runs queue; pools are per op.
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 2
        assert instance.run_monitoring_enabled

        # The whole graph for three customers in one batched run.
        instance.add_dynamic_partitions("customers", customers)
        job = build_definitions("local", batch_size=3).resolve_job_def("forecast_job")
        graph_run = job.execute_in_process(
            instance=instance,
            tags={RANGE_START: customers[0], RANGE_END: customers[-1]},
            run_config=FAST_TRAINING,
        )
        assert graph_run.success

        # Daily forecasts for every customer as a backfill, through the image's command (the
        # code server) and the daemon on deploy/workspace.yaml's gRPC entry: two per run.
        port = _free_port()
        workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
        workspace["load_from"][0]["grpc_server"].update(host="127.0.0.1", port=port)
        (home / "workspace.yaml").write_text(yaml.safe_dump(workspace))
        env = {**os.environ, "FORECAST_BACKFILL_BATCH_SIZE": "2", "PYTHONUNBUFFERED": "1"}
        code_log, daemon_log = tmp_path / "code-server.log", tmp_path / "daemon.log"
        code_server = start_in_group(_deploy_command(port), env, code_log)
        try:
            _wait_for_code_server(code_server, port, code_log)
            daemon = start_in_group(
                [executable("dagster-daemon"), "run", "-w", str(home / "workspace.yaml")],
                env,
                daemon_log,
            )
            try:
                backfill = submit_backfill(instance, build_definitions("local"), "inference_job")
                status = wait_for_backfill(
                    instance, backfill.backfill_id, poll_seconds=2, timeout_seconds=600
                )
                assert status.value == "COMPLETED_SUCCESS", tail(daemon_log) + tail(code_log)
            finally:
                stop_process_group(daemon)
        finally:
            stop_process_group(code_server)

        backfill_runs = instance.get_runs(
            filters=dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id})
        )
        assert len(backfill_runs) == 2  # three customers, two per run
        assert {r.status for r in backfill_runs} == {dg.DagsterRunStatus.SUCCESS}
        assert instance.get_materialized_partitions(FORECAST) == set(customers)
    database = Database()
    for customer in customers:
        assert len(database.latest_forecast(customer)) > 0

    # What PostgreSQL holds: the runs, the customers partitions, every materialization on its
    # own partition, the backfill, and the daemon's heartbeats.
    with engine.connect() as db:
        runs: dict[str, str] = dict(db.execute(sa.text("SELECT run_id, status FROM runs")).all())
        # Besides ours, only runs a sensor of the code location requested while the daemon ran
        # (the customer overview follows new forecasts), each tagged with its sensor.
        by_sensor: dict[str, str] = dict(
            db.execute(
                sa.text("SELECT run_id, value FROM run_tags WHERE key = 'dagster/sensor_name'")
            ).all()
        )
        assert set(by_sensor.values()) <= {"customer_overview_sensor"}, by_sensor
        ours = {graph_run.run_id, *(r.run_id for r in backfill_runs)}
        assert set(runs) == ours | set(by_sensor)
        assert {runs[run_id] for run_id in ours} == {"SUCCESS"}
        partitions = db.execute(
            sa.text("SELECT partition FROM dynamic_partitions WHERE partitions_def_name = :name"),
            {"name": "customers"},
        ).scalars()
        assert sorted(partitions) == sorted(customers)
        materialized = db.execute(
            sa.text(
                "SELECT asset_key, partition, run_id FROM event_logs "
                "WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
            )
        ).all()
        by_run: dict[str, set[tuple[tuple[str, ...], str]]] = {}
        for asset_key, partition, run_id in materialized:
            by_run.setdefault(run_id, set()).add((tuple(json.loads(asset_key)), partition))
        graph_assets = {tuple(k.path) for k in job.asset_layer.selected_asset_keys}
        assert by_run[graph_run.run_id] == {(a, c) for a in graph_assets for c in customers}
        forecasts_by_backfill = set().union(*(by_run[r.run_id] for r in backfill_runs))
        assert forecasts_by_backfill == {(tuple(FORECAST.path), c) for c in customers}
        (stored_backfill,) = db.execute(sa.text("SELECT key, status FROM bulk_actions")).all()
        assert stored_backfill == (backfill.backfill_id, "COMPLETED_SUCCESS")
        heartbeats = db.execute(sa.text("SELECT daemon_type FROM daemon_heartbeats")).scalars()
        assert {"BACKFILL", "QUEUED_RUN_COORDINATOR", "MONITORING"} <= set(heartbeats)

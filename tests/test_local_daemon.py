"""``scripts/daemon.sh``, the local daemon of ``make backfill`` and the backfill benchmark: one
standing code server that the daemon asks over gRPC (as in production and under ``dagster dev``),
where ``dagster-daemon run -w workspace.yaml`` alone would start a new code server every 60 s.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, BulkActionStatus
from dagster._core.instance.ref import InstanceRef

from forecast_assets.backfill import submit_backfill, wait_for_backfill
from forecast_assets.definitions import build_definitions
from forecast_assets.demo_data import DEMO_CUSTOMERS
from resources.database import Database
from resources.storage import LocalObjectStore
from tests.conftest import land
from tests.live_dagster import REPO_ROOT, start_in_group, stop_process_group, tail

pytestmark = pytest.mark.slow

FORECAST = dg.AssetKey(["forecasts", "load_forecast"])
# Dagster's daemon replaces a code server it manages every 60 s (RELOAD_WORKSPACE_INTERVAL).
RELOAD_INTERVAL = 60


def processes_in_group(pgid: int) -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process in the process group."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid:
            found[int(entry.name)] = (int(fields[1]), cmdline)
    return found


def code_servers(pgid: int) -> set[int]:
    """The code servers the daemon asks: `dagster code-server start` (this script's), or a
    `dagster api grpc` that the daemon started itself."""
    procs = processes_in_group(pgid)
    daemons = {pid for pid, (_, cmd) in procs.items() if "dagster-daemon run" in cmd}
    return {
        pid
        for pid, (ppid, cmd) in procs.items()
        if "code-server start" in cmd or ("api grpc" in cmd and ppid in daemons)
    }


def test_the_daemon_keeps_one_code_server_runs_a_backfill_and_stops_whole(
    tmp_path: Path, data_home: Path
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO_ROOT / "instance" / "dagster.yaml", home / "dagster.yaml")
    customers = [c.customer_id for c in DEMO_CUSTOMERS[:2]]
    land(LocalObjectStore(), customers, days=60)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FORECAST_DATA_HOME": str(data_home),
        "FORECAST_BACKFILL_BATCH_SIZE": "2",
        "TMPDIR": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "daemon.log"
    process = start_in_group(["bash", "scripts/daemon.sh"], env, log)
    started = time.monotonic()
    try:
        with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
            instance.add_dynamic_partitions("customers", customers)
            seen: set[int] = set()

            def look() -> None:
                assert process.poll() is None, tail(log)
                seen.update(code_servers(process.pid))

            backfill = submit_backfill(instance, build_definitions("local"), "forecast_job")
            deadline = time.monotonic() + 900
            while (
                status := instance.get_backfill(backfill.backfill_id)
            ) is None or status.status not in BULK_ACTION_TERMINAL_STATUSES:
                look()
                assert time.monotonic() < deadline, tail(log)
                time.sleep(2)
            end = wait_for_backfill(instance, backfill.backfill_id, timeout_seconds=60)
            assert end == BulkActionStatus.COMPLETED_SUCCESS, tail(log)
            # Past the interval at which the daemon would have replaced a code server of its own.
            while time.monotonic() - started < RELOAD_INTERVAL + 15:
                look()
                time.sleep(2)
            assert len(seen) == 1, f"code servers seen: {seen}\n{tail(log)}"
            assert instance.get_materialized_partitions(FORECAST) == set(customers)
        database = Database()
        for customer in customers:
            assert len(database.latest_forecast(customer)) > 0

        # SIGTERM to the script alone (as make backfill's trap sends it) stops the whole group.
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=90)
        deadline = time.monotonic() + 30
        while processes_in_group(process.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert processes_in_group(process.pid) == {}, tail(log)
        assert not list(tmp_path.glob("forecast-daemon.*")), "temporary workspace left behind"
    finally:
        if process.poll() is None or processes_in_group(process.pid):
            stop_process_group(process)


def test_the_script_fails_when_the_code_location_does_not_load(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO_ROOT / "instance" / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        # Read when the definitions load: not a batch size, so the code location fails to load.
        "FORECAST_BACKFILL_BATCH_SIZE": "many",
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(
        ["bash", "scripts/daemon.sh"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "the code location did not load" in result.stderr
    assert "FORECAST_BACKFILL_BATCH_SIZE" in result.stderr
    assert not list(tmp_path.glob("forecast-daemon.*"))

"""The code location as the UI sees it: loaded from ``workspace.yaml`` like ``dagster dev`` does,
and one customer's ``forecast_job`` launched through the webserver's GraphQL API and run by the
default run launcher in a separate process (the way a click on "Materialize" runs it)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from resources.storage import LocalObjectStore
from tests.conftest import _free_port, land
from tests.live_dagster import (
    REPO_ROOT,
    GraphQL,
    executable,
    stop_process_group,
    tail,
    wait_for_webserver,
)

pytestmark = pytest.mark.slow

CUSTOMER = "polar-cold-storage"
ASSET_KEYS = {
    dg.AssetKey(["landing", "raw_load"]),
    dg.AssetKey(["preprocessed", "load"]),
    dg.AssetKey(["warehouse", "devices"]),
    dg.AssetKey(["models", "load_forecast_model"]),
    dg.AssetKey(["forecasts", "load_forecast"]),
}
RUN_TIMEOUT = 600  # seconds until the launched run reaches a terminal status

# Runs start at once, without a daemon: the webserver hands them straight to the run launcher.
DAGSTER_YAML = """\
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
run_launcher:
  module: dagster._core.launcher
  class: DefaultRunLauncher
telemetry:
  enabled: false
"""


def _dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    return home


def _env(dagster_home: Path) -> dict[str, str]:
    """This process's environment (FORECAST_DATA_HOME already points at the test's data home)."""
    env = dict(os.environ)
    env["DAGSTER_HOME"] = str(dagster_home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_code_location_loads_from_workspace(data_home: Path, tmp_path: Path) -> None:
    dagster_home = _dagster_home(tmp_path)
    result = subprocess.run(
        [executable("dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        env=_env(dagster_home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"

    from forecast_assets.definitions import defs

    job = defs.resolve_job_def("forecast_job")
    assert job.partitions_def is not None
    assert set(defs.resolve_all_asset_keys()) >= ASSET_KEYS


# GraphQL ---------------------------------------------------------------------------------------

REPOSITORIES_QUERY = """
query {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection {
      nodes { name location { name } jobs { name } }
    }
    ... on PythonError { message stack }
  }
}
"""

LAUNCH_MUTATION = """
mutation Launch($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on Error { message }
    ... on PythonError { stack }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""

RUN_QUERY = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status tags { key value } }
    ... on Error { message }
  }
}
"""


def _failure_report(instance: dg.DagsterInstance, run_id: str) -> str:
    out = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or not (
            event.is_failure or event.event_type_value in ("ENGINE_EVENT", "PIPELINE_FAILURE")
        ):
            continue
        error = getattr(event.event_specific_data, "error", None)
        detail = error.to_string() if error is not None else (event.message or entry.user_message)
        out.append(f"[{event.event_type_value}] {event.step_key or ''} {detail}")
    return "\n".join(out)


def test_run_launched_through_webserver_graphql_succeeds(
    data_home: Path,
    store: LocalObjectStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    land(store, [CUSTOMER], days=75)
    dagster_home = _dagster_home(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("customers", [CUSTOMER])

        port = _free_port()
        base_url = f"http://127.0.0.1:{port}"
        log = tmp_path / "webserver.log"
        started = time.monotonic()
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    executable("dagster-webserver"),
                    *("-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)),
                ],
                cwd=REPO_ROOT,
                env=_env(dagster_home),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as a whole below
            )
        try:
            wait_for_webserver(process, base_url, log)
            print(f"webserver up in {time.monotonic() - started:.1f} s")
            graphql = GraphQL(base_url)

            repositories = graphql(REPOSITORIES_QUERY)["repositoriesOrError"]
            assert repositories["__typename"] == "RepositoryConnection", repositories
            (repository,) = [
                node
                for node in repositories["nodes"]
                if "forecast_job" in {job["name"] for job in node["jobs"]}
            ]

            launched_at = time.monotonic()
            launch = graphql(
                LAUNCH_MUTATION,
                {
                    "executionParams": {
                        "selector": {
                            "repositoryLocationName": repository["location"]["name"],
                            "repositoryName": repository["name"],
                            "jobName": "forecast_job",
                        },
                        "executionMetadata": {
                            "tags": [{"key": "dagster/partition", "value": CUSTOMER}]
                        },
                        "runConfigData": {},
                    }
                },
            )["launchRun"]
            assert launch["__typename"] == "LaunchRunSuccess", launch
            run_id = launch["run"]["runId"]

            deadline = launched_at + RUN_TIMEOUT
            while True:
                run = graphql(RUN_QUERY, {"runId": run_id})["runOrError"]
                assert run["__typename"] == "Run", run
                if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                    break
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"run {run_id} still {run['status']} after {RUN_TIMEOUT} s:\n"
                        f"{_failure_report(instance, run_id)}\n{tail(log)}"
                    )
                time.sleep(2)
            print(f"run {run_id} {run['status']} in {time.monotonic() - launched_at:.1f} s")
            assert run["status"] == "SUCCESS", (
                f"run {run_id} ended {run['status']}:\n{_failure_report(instance, run_id)}\n"
                f"webserver log:\n{tail(log)}"
            )
            assert {"key": "dagster/partition", "value": CUSTOMER} in run["tags"]
        finally:
            stop_process_group(process)

        forecast_key = dg.AssetKey(["forecasts", "load_forecast"])
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=forecast_key, asset_partitions=[CUSTOMER]), limit=10
        ).records
        assert [r.run_id for r in records] == [run_id]
        assert CUSTOMER in instance.get_materialized_partitions(forecast_key)
        # The run worker (webserver -> code server -> run process) inherited FORECAST_DATA_HOME:
        # the forecast it reports is in this test's object store.
        materialization = records[0].asset_materialization
        assert materialization is not None
        assert store.exists(str(materialization.metadata["uri"].value))

"""Dagster's own processes for tests: a webserver (or ``dagster dev``) to talk GraphQL to, and
runs launched through it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 120  # seconds until the webserver answers /server_info


def executable(name: str) -> str:
    """The console script of the interpreter running the tests (the project's virtualenv)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed")
    return found


class GraphQL:
    def __init__(self, base_url: str) -> None:
        self.url = f"{base_url}/graphql"
        self.session = requests.Session()
        self.session.trust_env = False  # never through a proxy: the server is on 127.0.0.1

    def __call__(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.session.post(
            self.url, json={"query": query, "variables": variables or {}}, timeout=60
        )
        response.raise_for_status()
        body = response.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]


def wait_for_webserver(process: subprocess.Popen, base_url: str, log: Path) -> None:
    session = requests.Session()
    session.trust_env = False
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dagster-webserver exited with {process.returncode}:\n{tail(log)}")
        try:
            if session.get(f"{base_url}/server_info", timeout=5).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    pytest.fail(f"dagster-webserver did not answer within {STARTUP_TIMEOUT} s:\n{tail(log)}")


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to the webserver's whole process group (it, its code server, any run worker)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # stragglers left in the group
    process.wait(timeout=30)


def tail(path: Path, lines: int = 60) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def dagster_dev(env: dict[str, str], log: Path, port: int) -> Iterator[subprocess.Popen]:
    """`dagster dev -w workspace.yaml` (webserver, daemon, code server) in its own process
    group, answering on ``port``; stopped as a whole on exit."""
    with serving(
        [executable("dagster"), "dev", "-w", "workspace.yaml", "-p", str(port)], env, log, port
    ) as process:
        yield process


def start_in_group(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``command`` started in its own process group from the repository root, its output in
    ``log`` (stop it with :func:`stop_process_group`)."""
    with log.open("wb") as log_file:
        return subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextlib.contextmanager
def serving(
    command: list[str], env: dict[str, str], log: Path, port: int
) -> Iterator[subprocess.Popen]:
    """``command`` in its own process group from the repository root, its output in ``log``,
    once a webserver answers on ``port``; the whole group stopped on exit."""
    process = start_in_group(command, env, log)
    try:
        wait_for_webserver(process, f"http://127.0.0.1:{port}", log)
        yield process
    finally:
        stop_process_group(process)


REPOSITORIES = """
query {
  repositoriesOrError {
    ... on RepositoryConnection { nodes { name location { name } jobs { name } } }
    ... on PythonError { message stack }
  }
}
"""

LAUNCH_RUN = """
mutation Launch($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
    ... on PythonError { stack }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""


def launch_run(
    graphql: GraphQL,
    job_name: str,
    partition: str,
    run_config: dict[str, Any] | None = None,
    assets: list[list[str]] | None = None,
) -> str:
    """Launch one partition of ``job_name`` (only ``assets``, if given) as the UI does; its id."""
    nodes = graphql(REPOSITORIES)["repositoriesOrError"]["nodes"]
    (repository,) = [n for n in nodes if job_name in {j["name"] for j in n["jobs"]}]
    selector: dict[str, Any] = {
        "repositoryLocationName": repository["location"]["name"],
        "repositoryName": repository["name"],
        "jobName": job_name,
    }
    if assets is not None:
        selector["assetSelection"] = [{"path": path} for path in assets]
    launched = graphql(
        LAUNCH_RUN,
        {
            "executionParams": {
                "selector": selector,
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
                "runConfigData": run_config or {},
            }
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def overview_definitions() -> Any:
    """The code location with ``reports/customer_overview`` and its sensor: ``definitions.py``'s
    own once it includes them, else that merged with them (``-m tests.live_dagster -a
    overview_definitions`` for a webserver)."""
    import dagster as dg

    from forecast_assets.assets import REPORT_ASSETS, customer_overview_sensor
    from forecast_assets.definitions import build_definitions

    defs = build_definitions()
    if set(REPORT_ASSETS[0].keys) <= set(defs.resolve_asset_graph().get_all_asset_keys()):
        return defs
    return dg.Definitions.merge(
        defs, dg.Definitions(assets=REPORT_ASSETS, sensors=[customer_overview_sensor])
    )


@contextlib.contextmanager
def dagster_webserver(
    env: dict[str, str], log: Path, port: int, code: list[str] | None = None
) -> Iterator[subprocess.Popen]:
    """`dagster-webserver` alone (no daemon) on ``code`` (default: workspace.yaml), in its own
    process group, answering on ``port``; stopped as a whole on exit."""
    command = [
        executable("dagster-webserver"),
        *(code or ["-w", "workspace.yaml"]),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    with serving(command, env, log, port) as process:
        yield process

"""Dagster's own processes for tests: a webserver (or ``dagster dev``) to talk GraphQL to."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
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

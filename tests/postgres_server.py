"""A throwaway PostgreSQL server from the installed binaries, for tests and benchmarks.

PostgreSQL is installed but not running on a fresh machine (``make postgres`` installs it): the
tests' ``postgres_url`` fixture and ``benchmarks/partitions.py`` each start a server of their own
in a temporary folder with :func:`throwaway_postgres`, and it is stopped and deleted after.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def pg_bindir() -> Path | None:
    """The folder of the newest installed ``initdb``, or None when PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_postgres(bindir: Path, prefix: str = "forecast-pg-") -> Iterator[str]:
    """A PostgreSQL server of our own on 127.0.0.1: its URL (psycopg2 driver, user postgres)."""
    # The server refuses to run as root: run it as the postgres user in a folder it owns.
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        base.chmod(0o755)
        shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    port = free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True)  # noqa: E731
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        run(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(base / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )
    except subprocess.CalledProcessError as exc:
        log = (base / "server.log").read_text() if (base / "server.log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {exc.stderr.decode()} {log}") from exc
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(
            [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
        ).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not become ready")
            time.sleep(0.2)
        yield url
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)

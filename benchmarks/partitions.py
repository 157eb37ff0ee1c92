"""Customers as dynamic partitions at scale: add, list and submit a backfill, on PostgreSQL.

``python -m benchmarks.run --only partitions [--partition-customers 10000] [--partition-repeats 3]
[--postgres-url URL] --output benchmarks/partitions_results.json``

For each repeat, a fresh Dagster instance with ``deploy/dagster.yaml``'s storage (PostgreSQL
through dagster-postgres; the ECS run launcher swapped for the default one, which nothing here
uses) on a database of its own, and for comparison the local SQLite instance
(``instance/dagster.yaml``) in a fresh ``DAGSTER_HOME``:

add_one_call    ``instance.add_dynamic_partitions("customers", ids)``: all N in one call, as
                ``forecast-customers add`` does with many ids
add_chunks      the same N as N/100 calls of 100 (a sensor adds at most a tick's worth)
list            ``instance.get_dynamic_partitions("customers")`` with N partitions
has_one         ``instance.has_dynamic_partition`` for the last id (the check before a run)
submit_backfill ``forecast_assets.backfill.submit_backfill`` of ``forecast_job`` for all N:
                validates every id against the partition set and stores the backfill's
                target (the daemon plans the runs later; ``benchmarks/backfill.py`` times that)

Wall seconds (``time.perf_counter``) and this process's CPU seconds (``time.process_time``: the
Dagster side; PostgreSQL's own CPU is in its server process). Without ``--postgres-url`` a
throwaway server is started from the installed binaries (as the tests do) and removed after.
Timings are from a shared machine: figures to compare within one run, not thresholds.

``benchmarks/backfill.py``'s run plan uses the same server, configuration and databases
(``postgres_config``, ``postgres_database``) for a daemon's DAGSTER_HOME.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = "customers"
CHUNK = 100


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 in a temporary folder (as the tests start one): its URL;
    stopped and deleted after."""
    from tests.postgres_server import pg_bindir
    from tests.postgres_server import throwaway_postgres as server

    bindir = pg_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL server binaries not found (make postgres installs them)")
    with server(bindir, prefix="forecast-bench-pg-") as url:
        yield url


def postgres_config(max_concurrent_runs: int | None = None) -> dict[str, Any]:
    """deploy/dagster.yaml (PostgreSQL storage, run queue, pools, monitoring) with the ECS run
    launcher swapped for the default one (no ECS here); optionally another run-queue limit."""
    config = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    config["run_launcher"] = {"module": "dagster._core.launcher", "class": "DefaultRunLauncher"}
    if max_concurrent_runs is not None:
        config["concurrency"]["runs"]["max_concurrent_runs"] = max_concurrent_runs
    return dict(config)


@contextlib.contextmanager
def postgres_database(server_url: str) -> Iterator[dict[str, str]]:
    """A new database on the server: the ``DAGSTER_PG_*`` variables deploy/dagster.yaml reads for
    it, also set in ``os.environ`` (so a daemon or CLI started after sees them); dropped after."""
    import sqlalchemy as sa

    server = sa.engine.make_url(server_url)
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    env = {
        "DAGSTER_PG_HOST": str(server.host),
        "DAGSTER_PG_PORT": str(server.port),
        "DAGSTER_PG_USER": str(server.username),
        "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
        "DAGSTER_PG_DB": name,
    }
    os.environ.update(env)
    try:
        yield env
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_server_pid(server_url: str) -> int | None:
    """The pid of the local PostgreSQL server (postmaster) listening on the URL's port; None if
    there is none on this machine. Its backends are its children, so its process tree's CPU is
    the server's. Read from ``postmaster.pid`` in the data folder named by a process started as
    ``postgres -D DATA -p PORT``: a backend just forked shows the postmaster's command line too,
    until it sets its own title, so the command line alone can name a backend."""
    import sqlalchemy as sa

    port = str(sa.engine.make_url(server_url).port).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        pairs = list(itertools.pairwise(argv))
        if not argv[0].endswith(b"postgres") or (b"-p", port) not in pairs:
            continue
        data = next((b for a, b in pairs if a == b"-D"), b"")
        try:
            return int((Path(os.fsdecode(data)) / "postmaster.pid").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return None
    return None


DATABASE_ACTIVITY = (
    "sessions",
    "xact_commit",
    "xact_rollback",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
)


def database_activity(server_url: str, database: str) -> dict[str, int] | None:
    """The server's cumulative counters for one database (``pg_stat_database``: connections
    opened, transactions, rows); None if they cannot be read (``sessions`` needs PostgreSQL 14)."""
    import sqlalchemy as sa

    engine = sa.create_engine(sa.engine.make_url(server_url))
    try:
        with engine.connect() as connection:
            row = connection.execute(
                sa.text(
                    f"SELECT {', '.join(DATABASE_ACTIVITY)} FROM pg_stat_database "
                    "WHERE datname = :name"
                ),
                {"name": database},
            ).one_or_none()
    except sa.exc.SQLAlchemyError:
        return None
    finally:
        engine.dispose()
    return None if row is None else dict(zip(DATABASE_ACTIVITY, map(int, row), strict=True))


@contextlib.contextmanager
def postgres_instance(server_url: str) -> Iterator[Any]:
    """A Dagster instance with deploy/dagster.yaml's storage on a new database of the server."""
    import dagster as dg

    with postgres_database(server_url):
        home = Path(tempfile.mkdtemp(prefix="forecast-bench-home-"))
        try:
            (home / "dagster.yaml").write_text(yaml.safe_dump(postgres_config()))
            with dg.DagsterInstance.from_config(str(home)) as instance:
                yield instance
        finally:
            shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def sqlite_instance() -> Iterator[Any]:
    """The local instance (instance/dagster.yaml, SQLite) in a fresh DAGSTER_HOME."""
    import dagster as dg

    home = Path(tempfile.mkdtemp(prefix="forecast-bench-sqlite-"))
    try:
        config = yaml.safe_load((REPO_ROOT / "instance" / "dagster.yaml").read_text())
        (home / "dagster.yaml").write_text(yaml.safe_dump(copy.deepcopy(config)))
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance
    finally:
        shutil.rmtree(home, ignore_errors=True)


def timed(action: Callable[[], Any]) -> tuple[dict[str, float], Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = action()
    return {
        "wall_s": round(time.perf_counter() - wall, 4),
        "cpu_s": round(time.process_time() - cpu, 4),
    }, result


def measure(make_instance: Callable[[], Any], customers: list[str]) -> dict[str, Any]:
    """One repeat of every measurement on fresh instances of one kind."""
    from forecast_assets.backfill import submit_backfill
    from forecast_assets.definitions import build_definitions

    defs = build_definitions("local")
    found: dict[str, Any] = {}
    with make_instance() as instance:
        found["add_one_call"], _ = timed(
            lambda: instance.add_dynamic_partitions(PARTITIONS, customers)
        )
        found["list"], listed = timed(lambda: instance.get_dynamic_partitions(PARTITIONS))
        assert list(listed) == customers, "partitions listed out of order or missing"
        found["has_one"], present = timed(
            lambda: instance.has_dynamic_partition(PARTITIONS, customers[-1])
        )
        assert present
        found["submit_backfill"], backfill = timed(
            lambda: submit_backfill(instance, defs, "forecast_job")
        )
        stored = instance.get_backfill(backfill.backfill_id)
        target = stored.asset_backfill_data.target_subset
        found["backfill_targets"] = len(list(target.iterate_asset_partitions()))
    with make_instance() as instance:

        def in_chunks() -> None:
            for start in range(0, len(customers), CHUNK):
                instance.add_dynamic_partitions(PARTITIONS, customers[start : start + CHUNK])

        found["add_chunks"], _ = timed(in_chunks)
        assert len(instance.get_dynamic_partitions(PARTITIONS)) == len(customers)
    return found


def summarize(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for key in ("add_one_call", "add_chunks", "list", "has_one", "submit_backfill"):
        summary[key] = {
            f"median_{unit}": round(statistics.median(r[key][unit] for r in repeats), 4)
            for unit in ("wall_s", "cpu_s")
        }
    summary["backfill_targets"] = repeats[0]["backfill_targets"]
    return summary


def bench_partitions(work: Path, args: Any, cache: dict) -> dict[str, Any]:
    """The benchmark as ``benchmarks.run`` runs it (``--only partitions``): every measurement
    ``args.partition_repeats`` times on PostgreSQL (a throwaway server unless
    ``--postgres-url``) and on SQLite."""
    import warnings

    import dagster as dg

    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    customers = [f"cust-{i:06d}" for i in range(1, args.partition_customers + 1)]
    results: dict[str, Any] = {
        "customers": args.partition_customers,
        "chunk": CHUNK,
        "repeats": args.partition_repeats,
        "dagster": dg.__version__,
    }
    with contextlib.ExitStack() as stack:
        url = args.postgres_url or stack.enter_context(throwaway_postgres())
        kinds: dict[str, Callable[[], Any]] = {
            "postgres": lambda: postgres_instance(url),
            "sqlite": sqlite_instance,
        }
        for kind, make in kinds.items():
            repeats = []
            for i in range(args.partition_repeats):
                repeats.append(measure(make, customers))
                print(f"{kind} repeat {i + 1}: {json.dumps(repeats[-1])}", flush=True)
            results[kind] = {"summary": summarize(repeats), "repeats": repeats}
    return results


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What ``benchmarks.run`` prints: medians per instance kind."""
    lines = [f"partitions: {result['customers']:,} customers, median of {result['repeats']}"]
    for kind in ("postgres", "sqlite"):
        s = result[kind]["summary"]
        lines.append(
            f"  {kind:<8} "
            + ", ".join(
                f"{k} {s[k]['median_wall_s']:.3f} s"
                for k in ("add_one_call", "add_chunks", "list", "has_one", "submit_backfill")
            )
        )
    return lines

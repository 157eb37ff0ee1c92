"""Backfill many customers through the Dagster daemon, against the job scripts in a plain loop.

``python -m benchmarks.backfill [--customers 100] [--days 75] [--batch-sizes 1 10]
[--customers-at 1=40] [--failing 2] [--direct-customers N] [--out PATH]``;
``python -m benchmarks.backfill --only plan --plan-customers 10000 --plan-variants
postgres:50 postgres:10:480 sqlite:50:480`` for the run plan alone

1. **backfill**: a local backfill of ``--customers`` demo-style customers (``cust-001`` ...,
   cycling the five demo profiles, vendors and meter counts; ``--days`` of 15-minute data each,
   the same bytes for every variant) through the real machinery: a fresh ``DAGSTER_HOME`` with
   the repo's ``dagster.yaml`` (run queue, SageMaker pools), a fresh ``FORECAST_DATA_HOME``,
   the files landed and the customers added to the partition set, the daemon as
   ``scripts/daemon.sh`` starts it (one standing code server) in a subprocess, ``forecast-backfill --all --job forecast_job`` submitted and followed until the
   backfill ends. Once per ``--batch-sizes`` value (``FORECAST_BACKFILL_BATCH_SIZE``), each on
   the first ``--customers-at SIZE=N`` customers if given, else on all of them.
   With ``--failing N``, N of the customers fail (alternately: a file that is not a meter
   export beside their good files, which ``raw_load`` refuses; and ``--short-days`` of history,
   too little to train on, so the fit fails). They are spread over the first customers, so
   every variant holds all of them. The backfill then ends failed, and the customers that got
   through a batch's failed step are carried on by ``batch_continuation_sensor`` (run by the
   daemon, every 60 s): the benchmark also waits for those follow-up runs (tagged
   ``forecast-assets/continues-run``), and for every failed run checks, with the sensor's own
   ``remaining_work``, that each follow-up it should have had was started. The clock stops at
   the end of the last backfill or follow-up run. Then it counts published forecasts
   (``forecasts/<customer>/current.json``), failed partitions with their reasons, runs and
   jobs.
2. **direct**: the three job scripts for the customers that can be forecast (the first
   ``--direct-customers`` customers, failing ones left out), one customer after another,
   with ``benchmarks.run.run_direct`` (preprocess, train, predict, default parameters).
   Ratios to a backfill of other customers are per forecast customer (the customers cycle the
   same 5 profiles).
3. **plan**: ``--plan-customers`` partitions (no data) on an instance whose run queue admits no
   run (``max_concurrent_runs: 0``), a backfill of ``forecast_job`` submitted to a live daemon,
   and the runs it queues counted until the daemon has created every run of its own plan (the
   run requests it stores in the backfill before creating any), for each of
   ``--plan-batch-sizes`` on SQLite (the repo's instance/dagster.yaml), or each of
   ``--plan-variants STORAGE:SIZE[:SECONDS]``, where STORAGE ``postgres`` is
   deploy/dagster.yaml's storage on a new database of ``--postgres-url`` or of a throwaway
   server (``benchmarks/partitions.py``). ``--plan-time-limit`` (or a variant's SECONDS) stops
   the count early: a PARTIAL measurement, the rest only extrapolated, labelled as such.
   Recorded: submit, the daemon's iteration start (its log), first and last run created, runs
   per second and per minute, CPU of the daemon's process tree and of the PostgreSQL server's,
   the database's connections and transactions, the load average. Jobs launched = runs x 3;
   SageMaker start-up cost is then modelled with assumed per-job start-up times
   (``--startup-seconds``) and a pool limit (``--pool-limit``), and the create calls at an
   assumed ``--creates-per-second`` (1) per account and region.

CPU: ``/proc/stat`` every second (system-wide: includes anything else running on the machine)
and, every quarter second, the CPU time of this benchmark's own process tree (the daemon and
everything under it, or the direct loop's scripts), split into job scripts (processes whose
working directory is a job directory, and their children) and the rest (Dagster).

Everything goes to one JSON file (``--out``, default
``benchmarks/.work/backfill/results.json``); work directories stay under
``benchmarks/.work/backfill/`` for inspection. Daemons and any job process they left are
stopped on exit, also on Ctrl-C, SIGTERM and errors. ``python -m benchmarks.run`` does not run
this benchmark: it is its own entry point, using the shared runner's helpers.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import copy
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from benchmarks.run import (
    CODE_DIRS,
    DATA_END,
    REPO_ROOT,
    SEED,
    _git,
    fresh_dir,
    log,
    machine_info,
    run_direct,
)
from forecast_assets.demo_data import DEMO_CUSTOMERS, DemoCustomer, generate_customer_files
from resources.jobs.code import bundle

DEFAULT_WORK_DIR = REPO_ROOT / "benchmarks" / ".work" / "backfill"
BIN = Path(sys.executable).parent
BACKFILL_TAG = "dagster/backfill"
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
PARTITION_TAG = "dagster/partition"
PARTITIONS = "customers"
JOB = "forecast_job"
# The steps of forecast_job that launch a SageMaker job (tests/test_backfill.py checks that a
# batched run launches exactly one job per such step, and a per-customer run one each).
JOB_STEPS = ("prep", "train", "infer")
# The daemons a backfill needs: the backfill daemon cuts it into runs, the run queue starts them.
REQUIRED_DAEMONS = ("BACKFILL", "QUEUED_RUN_COORDINATOR")
CLK_TCK = os.sysconf("SC_CLK_TCK")
DATA_ENV_DROP = ("FORECAST_ENV", "FORECAST_DATABASE_URL", "FORECAST_BACKFILL_BATCH_SIZE")
CONTINUATION_SENSOR = "batch_continuation_sensor"
# How a failing customer fails (tests/test_batch_failures.py has the same two).
BAD_FILE, SHORT_HISTORY = "bad_file", "short_history"
BAD_FILE_NAME = "broken.csv"
BAD_FILE_BYTES = b"not a meter export\n"
# Goals of the issue: a backfill's CPU over the direct loop's, per forecast customer.
GOAL_BATCHED_CPU_RATIO = 1.1
GOAL_PER_CUSTOMER_CPU_RATIO = 1.5


# Cleanup ---------------------------------------------------------------------------------------

_DAEMONS: list[Daemon] = []


def _cleanup() -> None:
    for daemon in list(_DAEMONS):
        daemon.stop()


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _processes_under(roots: Iterable[Path]) -> list[int]:
    """Pids of processes whose working directory is under one of ``roots`` (job processes run
    in their own session, so stopping the daemon's process group does not reach them)."""
    resolved = [str(r.resolve()) for r in roots]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if any(cwd == r or cwd.startswith(r + "/") for r in resolved):
            found.append(int(entry.name))
    return found


def _signal(pid: int, sig: int, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# The daemon --------------------------------------------------------------------------------------


def open_instance(home: Path) -> Any:
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def write_instance_yaml(
    home: Path, max_concurrent_runs: int | None = None, config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The repo's dagster.yaml, as the Makefile copies it, or ``config`` (another instance's
    settings, e.g. ``benchmarks.partitions.postgres_config()``); optionally another run-queue
    limit."""
    home.mkdir(parents=True, exist_ok=True)
    source = REPO_ROOT / "instance" / "dagster.yaml"
    if max_concurrent_runs is None and config is None:
        shutil.copyfile(source, home / "dagster.yaml")
        return dict(yaml.safe_load(source.read_text()))
    written = copy.deepcopy(
        dict(config) if config is not None else yaml.safe_load(source.read_text())
    )
    if max_concurrent_runs is not None:
        written["concurrency"]["runs"]["max_concurrent_runs"] = max_concurrent_runs
    (home / "dagster.yaml").write_text(yaml.safe_dump(written))
    return dict(written)


def code_location_env(home: Path, data_home: Path, batch_size: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DATA_ENV_DROP}
    return {
        **env,
        "DAGSTER_HOME": str(home),
        "FORECAST_DATA_HOME": str(data_home),
        "FORECAST_BACKFILL_BATCH_SIZE": str(batch_size),
        "PYTHONUNBUFFERED": "1",
    }


@dataclass
class Daemon:
    """``scripts/daemon.sh`` from the repo root, in its own process group: ``dagster-daemon
    run`` with the code location served by one standing code server, as in production (the
    script says why not ``dagster-daemon run -w workspace.yaml``)."""

    env: dict[str, str]
    log_path: Path
    data_home: Path
    proc: subprocess.Popen | None = None
    started_at: float = 0.0

    def start(self, instance: Any, timeout: float = 300.0) -> dict[str, Any]:
        """Start it and wait until the backfill and run-queue daemons have sent a heartbeat
        (the daemon loads the code location before its daemons start)."""
        self.started_at = time.time()
        start = time.perf_counter()
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                ["bash", "scripts/daemon.sh"],
                cwd=REPO_ROOT,
                # The virtualenv of this interpreter, wherever the tree being measured is.
                env={**self.env, "VENV": str(BIN.parent)},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _DAEMONS.append(self)
        first: dict[str, float] = {}
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited early:\n{tail(self.log_path)}")
            beats = instance.get_daemon_heartbeats()
            for name in REQUIRED_DAEMONS:
                beat = beats.get(name)
                if name not in first and beat is not None and beat.timestamp >= self.started_at:
                    first[name] = beat.timestamp - self.started_at
            if len(first) == len(REQUIRED_DAEMONS):
                break
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"dagster-daemon not ready after {timeout} s")
            time.sleep(0.25)
        return {
            "seconds_until_heartbeats": time.perf_counter() - start,
            "first_heartbeat_seconds": first,
            "method": "scripts/daemon.sh (a standing code server, then dagster-daemon run on "
            "it) started as a subprocess until the BACKFILL and "
            "QUEUED_RUN_COORDINATOR daemons each wrote a heartbeat (polled every 0.25 s); the "
            "daemon loads the code location (a gRPC code server) before starting its daemons",
        }

    def stop(self) -> None:
        """SIGTERM the script (it stops the daemon, then the code server), then whatever is left
        of its process group, then any job process still running in this data home."""
        if self.proc is not None and self.proc.poll() is None:
            _signal(self.proc.pid, signal.SIGTERM, group=False)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _signal(self.proc.pid, signal.SIGKILL, group=True)
                self.proc.wait()
        if self.proc is not None:
            _signal(self.proc.pid, signal.SIGTERM, group=True)
        for pid in _processes_under([self.data_home]):
            try:
                group = os.getpgid(pid) == pid
            except ProcessLookupError:
                continue
            _signal(pid, signal.SIGTERM, group=group)
        if self in _DAEMONS:
            _DAEMONS.remove(self)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def submit(env: Mapping[str, str], log_path: Path) -> dict[str, Any]:
    """``forecast-backfill --all --job forecast_job`` (without --wait); the backfill id."""
    start = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "forecast-backfill"), "--all", "--job", JOB],
        cwd=REPO_ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.perf_counter() - start
    log_path.write_text(done.stdout + done.stderr)
    match = re.search(r"submitted backfill (\S+):", done.stdout)
    if done.returncode != 0 or not match:
        raise RuntimeError(
            f"forecast-backfill failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return {
        "backfill_id": match.group(1),
        "cli_seconds": seconds,
        "cli_output": done.stdout.strip(),
    }


# CPU ---------------------------------------------------------------------------------------------


def read_proc_stat() -> dict[str, tuple[int, int]]:
    """Per ``cpuN`` line: (busy, total) jiffies. Busy = user+nice+system+irq+softirq+steal."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        v = [int(x) for x in rest.split()]
        user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
        busy = user + nice + system + irq + softirq + steal
        out[name] = (busy, busy + idle + iowait)
    return out


@dataclass
class ProcInfo:
    ppid: int
    own: int  # utime + stime, jiffies
    reaped: int  # cutime + cstime: children it has waited for
    start: int


def read_processes() -> dict[int, ProcInfo]:
    procs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        procs[int(entry.name)] = ProcInfo(
            ppid=int(fields[1]),
            own=int(fields[11]) + int(fields[12]),
            reaped=int(fields[13]) + int(fields[14]),
            start=int(fields[19]),
        )
    return procs


@dataclass
class CpuSampler:
    """Samples system CPU (``/proc/stat``, every ``stat_every`` ticks) and the CPU time of the
    process tree under ``root_pid`` (every tick), split into job and other processes.

    The tree's CPU at an instant is the sum, over its live processes, of their own CPU time and
    that of the children they have reaped: a process's time moves into its parent's
    ``cutime`` when the parent waits for it, so the sum stays exact as long as the tree reaps
    its own children. A job process is one whose working directory is under ``job_roots``, or
    a child of one. A job's CPU (own and reaped children) is taken from its parent's ``cutime``
    growth across the tick in which the job ended, when the parent is still there (each job
    launcher waits for one job at a time); otherwise from the job's last sample, which misses
    at most one tick of its end (a lower bound).
    """

    root_pid: int
    job_roots: Sequence[Path]
    interval: float = 0.25
    stat_every: int = 4
    stat_samples: list[tuple[float, dict[str, tuple[int, int]]]] = field(default_factory=list)
    tree_samples: list[tuple[float, int, int]] = field(default_factory=list)  # t, tree, live jobs
    job_total: dict[tuple[int, int], int] = field(default_factory=dict)
    jobs_resolved_from_parent: int = 0
    jobs_from_last_sample: int = 0
    _jobs: set[tuple[int, int]] = field(default_factory=set)
    # live top-level jobs: (ppid, parent start, parent's reaped jiffies, job's own + reaped)
    _alive: dict[tuple[int, int], tuple[int, int, int, int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample(force_stat=True)
        for key, (_, _, _, last) in self._alive.items():  # still running: as last seen
            self.job_total[key] = last
            self.jobs_from_last_sample += 1
        self._alive = {}

    def _loop(self) -> None:
        tick = 0
        while not self._stop.is_set():
            self.sample(force_stat=tick % self.stat_every == 0)
            tick += 1
            self._stop.wait(self.interval)

    def _is_job(self, pid: int, info: ProcInfo, parent: ProcInfo | None) -> bool:
        # Only a positive answer is kept: a process sampled between fork and chdir is looked at
        # again on the next tick.
        key = (pid, info.start)
        if key in self._jobs:
            return True
        parent_job = parent is not None and (info.ppid, parent.start) in self._jobs
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        roots = [str(r) for r in self.job_roots]
        if parent_job or any(cwd == r or cwd.startswith(r + "/") for r in roots):
            self._jobs.add(key)
            return True
        return False

    def sample(self, force_stat: bool = False) -> None:
        now = time.time()
        if force_stat:
            self.stat_samples.append((now, read_proc_stat()))
        procs = read_processes()
        children: dict[int, list[int]] = {}
        for pid, proc in procs.items():
            children.setdefault(proc.ppid, []).append(pid)
        alive: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        tree, stack = 0, [self.root_pid]
        while stack:  # parents before their children
            pid = stack.pop()
            info = procs.get(pid)
            if info is None:
                continue
            tree += info.own + info.reaped
            parent = procs.get(info.ppid)
            if pid != self.root_pid and self._is_job(pid, info, parent):
                top = parent is None or (info.ppid, parent.start) not in self._jobs
                if top and parent is not None:
                    alive[(pid, info.start)] = (
                        info.ppid,
                        parent.start,
                        parent.reaped,
                        info.own + info.reaped,
                    )
            stack.extend(children.get(pid, []))
        for key, (ppid, pstart, preaped, last) in self._alive.items():
            if key in alive:
                continue
            parent = procs.get(ppid)
            if parent is not None and parent.start == pstart and parent.reaped - preaped >= last:
                self.job_total[key] = parent.reaped - preaped
                self.jobs_resolved_from_parent += 1
            else:
                self.job_total[key] = last
                self.jobs_from_last_sample += 1
        self._alive = alive
        self.tree_samples.append((now, tree, len(alive)))

    def window(self, start: float, end: float) -> dict[str, Any]:
        """CPU between two wall-clock times (the nearest samples inside the window)."""
        stats = [s for s in self.stat_samples if start - 0.6 <= s[0] <= end + 0.6]
        trees = [s for s in self.tree_samples if start - 0.6 <= s[0] <= end + 0.6]
        if len(stats) < 2 or len(trees) < 2:
            return {"error": "too few samples"}
        (t0, first), (t1, last) = stats[0], stats[-1]
        cpus = sorted(first, key=lambda n: int(n[3:]))
        per_core = {}
        for cpu in cpus:
            busy = last[cpu][0] - first[cpu][0]
            total = last[cpu][1] - first[cpu][1]
            per_core[cpu] = busy / total if total else 0.0
        series = []
        for (_, a), (tb, b) in itertools.pairwise(stats):
            series.append(
                [round(tb - start, 2)]
                + [round((b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]), 3) for c in cpus]
            )
        tree_seconds = (trees[-1][1] - trees[0][1]) / CLK_TCK
        sampled_seconds = t1 - t0
        return {
            "sampled_seconds": sampled_seconds,
            "mean_busy_cores": sum(per_core.values()),
            "per_core_busy_fraction": per_core,
            "cores": len(cpus),
            "busy_core_seconds": sum(per_core.values()) * (end - start),
            "tree_cpu_seconds": tree_seconds,
            "tree_mean_busy_cores": tree_seconds / (trees[-1][0] - trees[0][0]),
            "samples_per_second_busy_by_core": {
                "columns": ["seconds_from_start", *cpus],
                "rows": series,
            },
        }

    def job_cpu_seconds(self) -> float:
        return sum(self.job_total.values()) / CLK_TCK

    def job_accounting(self) -> dict[str, int]:
        return {
            "jobs_seen": len(self.job_total),
            "job_cpu_from_parent_cutime": self.jobs_resolved_from_parent,
            "job_cpu_from_last_sample_lower_bound": self.jobs_from_last_sample,
        }


CPU_METHOD = (
    "mean_busy_cores / per_core_busy_fraction: /proc/stat cpuN lines every 1 s, busy = "
    "user+nice+system+irq+softirq+steal over all jiffies, whole machine (other work included); "
    "busy_core_seconds = mean_busy_cores x wall. tree_cpu_seconds: CPU time of this benchmark's "
    "own process tree (own + reaped children of every live process, sampled every 0.5 s), so "
    "not affected by other work on the machine; job_cpu_seconds: the part in job processes "
    "(working directory in a job directory, and their children), a lower bound (each job's last "
    "<0.5 s is missed); the rest of the tree is Dagster (daemon, code server, run and step "
    "workers) plus that small miss"
)


# Data --------------------------------------------------------------------------------------------


def bench_customers(n: int) -> list[DemoCustomer]:
    """``cust-001`` ... cycling the demo customers' vendor, meter count and profile."""
    return [
        DemoCustomer(
            f"cust-{i + 1:03d}",
            DEMO_CUSTOMERS[i % len(DEMO_CUSTOMERS)].vendor,
            DEMO_CUSTOMERS[i % len(DEMO_CUSTOMERS)].devices,
            DEMO_CUSTOMERS[i % len(DEMO_CUSTOMERS)].profile,
        )
        for i in range(n)
    ]


def failing_customers(ids: Sequence[str], count: int, within: int) -> dict[str, str]:
    """``count`` customers spread over the first ``within`` of ``ids`` (so a variant on the
    first ``within`` customers holds them all), each with how it fails: alternately a file
    raw_load refuses and too short a history to train on."""
    if count <= 0:
        return {}
    if count > within or within > len(ids):
        raise ValueError(f"cannot spread {count} failing customers over {within} of {len(ids)}")
    spacing = within / count
    # A quarter into each stretch, so a failing customer sits inside a batch rather than at its
    # edge; ``+ j`` keeps two of them off the same demo profile (the profiles cycle every 5).
    return {
        ids[min(within - 1, int(j * spacing + spacing / 4) + j)]: BAD_FILE
        if j % 2 == 0
        else SHORT_HISTORY
        for j in range(count)
    }


def customer_files(
    customer: DemoCustomer, days: int, failure: str | None, short_days: int
) -> dict[str, bytes]:
    """The customer's landing files: ``days`` of demo data, or as ``failure`` makes them."""
    span = short_days if failure == SHORT_HISTORY else days
    files = generate_customer_files(customer, end=DATA_END, days=span, seed=SEED)
    if failure == BAD_FILE:
        files = {**files, BAD_FILE_NAME: BAD_FILE_BYTES}
    return files


def land(data_home: Path, files: Mapping[str, Mapping[str, bytes]]) -> None:
    from forecast_assets import paths
    from resources.storage import LocalObjectStore

    store = LocalObjectStore(root=str(data_home / "s3"))
    for customer, named in files.items():
        prefix = paths.landing_prefix(store, customer)
        for name, data in sorted(named.items()):
            store.write_bytes(prefix + name, data)


# Reading results ---------------------------------------------------------------------------------


def describe_jobs(data_home: Path) -> list[dict[str, Any]]:
    """Every local SageMaker job: its step, status, customers and StartTime->EndTime."""
    jobs = []
    root = data_home / "jobs"
    for job_dir in sorted(root.iterdir()) if root.exists() else []:
        describe = job_dir / "describe.json"
        info = json.loads(describe.read_text()) if describe.exists() else {}
        batch = re.search(r"-batch(\d+)-", job_dir.name)
        seconds = None
        if info:
            seconds = (
                datetime.fromisoformat(info["EndTime"]) - datetime.fromisoformat(info["StartTime"])
            ).total_seconds()
        jobs.append(
            {
                "name": job_dir.name,
                "step": job_dir.name.split("-")[1],
                "customers": int(batch.group(1)) if batch else 1,
                "status": info.get("ProcessingJobStatus") or info.get("TrainingJobStatus"),
                "seconds": seconds,
            }
        )
    return jobs


def run_size(run_tags: Mapping[str, str], order: Mapping[str, int]) -> int:
    if RANGE_START in run_tags:
        return order[run_tags[RANGE_END]] - order[run_tags[RANGE_START]] + 1
    return 1 if PARTITION_TAG in run_tags else 0


def stats(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "sum": 0.0, "mean": None, "median": None, "min": None, "max": None}
    return {
        "n": len(values),
        "sum": sum(values),
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def model_wapes(data_home: Path, customers: Sequence[str]) -> dict[str, Any]:
    """Per customer: forecast file present, forecast rows and latest model WAPE in the db."""
    from forecast_assets import publication
    from forecast_assets.publication import FORECASTS
    from resources.database import Database
    from resources.storage import LocalObjectStore

    store = LocalObjectStore(root=str(data_home / "s3"))
    database = Database(url=f"sqlite:///{data_home / 'forecast.db'}")
    out = {}
    for customer in customers:
        versions = database.model_versions(customer) if (data_home / "forecast.db").exists() else []
        latest = max(versions, key=lambda v: v.created_at) if versions else None
        forecast = database.latest_forecast(customer) if versions else []
        out[customer] = {
            "forecast_file": publication.current(store, FORECASTS, customer) is not None,
            "forecast_rows": len(forecast),
            "model_status": latest.status if latest else None,
            "model_wape_pct": latest.metrics["model"]["wape"] if latest else None,
        }
    return out


# 1. Backfill through the daemon ----------------------------------------------------------------


def chain_runs(records: Sequence[Any], backfill_id: str) -> tuple[list[Any], list[Any]]:
    """The backfill's own runs, and the follow-up runs of batch_continuation_sensor (a
    follow-up of a follow-up included: every continued run in this instance started there)."""
    from forecast_assets.continuation import CONTINUES_TAG

    own = [r for r in records if r.dagster_run.tags.get(BACKFILL_TAG) == backfill_id]
    follow_ups = [r for r in records if CONTINUES_TAG in r.dagster_run.tags]
    return own, follow_ups


def await_follow_ups(
    instance: Any,
    backfill_id: str,
    job_assets: Sequence[Any],
    batch_size: int,
    grace: float,
    deadline: float,
) -> dict[str, Any]:
    """After the backfill ended: wait until every run of it and of its follow-ups has ended and
    each failed one has as many follow-up runs as ``batch_continuation_sensor`` would request
    for it (computed with the sensor's own ``remaining_work`` and ``continuation_requests``).
    A failed run still without them ``grace`` seconds after it ended is recorded as not
    continued, and not waited for any longer."""
    from forecast_assets.continuation import (
        CONTINUES_TAG,
        continuation_requests,
        remaining_work,
    )

    expected: dict[str, dict[str, Any]] = {}
    given_up: set[str] = set()
    last = ""
    while True:
        own, follow_ups = chain_runs(instance.get_run_records(), backfill_id)
        chain = own + follow_ups
        started = Counter(r.dagster_run.tags[CONTINUES_TAG] for r in follow_ups)
        waiting = []
        for record in chain:
            run = record.dagster_run
            if run.status.value != "FAILURE":
                continue
            if run.run_id not in expected:
                selected = sorted(run.asset_selection or job_assets, key=lambda k: k.path)
                remaining = remaining_work(instance, run, selected)
                requests = continuation_requests(instance, run, remaining, batch_size)
                expected[run.run_id] = {
                    "customers_to_carry_on": len(remaining),
                    "follow_up_runs_expected": len(requests),
                }
            if started[run.run_id] >= expected[run.run_id]["follow_up_runs_expected"]:
                continue
            if record.end_time and time.time() - record.end_time > grace:
                given_up.add(run.run_id)
            if run.run_id not in given_up:
                waiting.append(run.run_id)
        unfinished = [r for r in chain if not r.dagster_run.is_finished]
        if not unfinished and not waiting:
            break
        line = (
            f"follow-ups: {len(follow_ups)} started, {len(unfinished)} runs unfinished, "
            f"{len(waiting)} failed run(s) waiting for the sensor"
        )
        if line != last:
            log(f"  {line}")
            last = line
        if time.monotonic() > deadline:
            raise TimeoutError(f"backfill {backfill_id}: follow-up runs still going ({line})")
        time.sleep(2.0)
    for run_id, row in expected.items():
        row["follow_up_runs_started"] = started[run_id]
    return {
        "failed_runs": expected,
        "failed_runs_never_continued": sorted(given_up),
        "grace_seconds": grace,
    }


def continuation_ticks(instance: Any) -> dict[str, Any]:
    """The continuation sensor's ticks on this instance: how many, their statuses, runs."""
    from dagster._core.scheduler.instigation import InstigatorType

    states = [
        s
        for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        if s.name == CONTINUATION_SENSOR
    ]
    if not states:
        return {"ticks": 0, "note": "no instigator state: the sensor never ticked"}
    ticks = instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id)
    return {
        "ticks": len(ticks),
        "by_status": dict(Counter(t.status.value for t in ticks)),
        "runs_requested": sum(len(t.run_ids) for t in ticks),
        "errors": [t.error.message[:500] for t in ticks if t.error is not None][:3],
    }


def failed_partitions(
    instance: Any, job_assets: Sequence[Any], customers: Sequence[str]
) -> dict[str, Any]:
    """Per asset of the job, its FAILED partitions; per failed customer, the reason
    ``finish_step`` recorded on its partition (an observation) where it failed. Dagster also
    marks FAILED the customer's partitions of the assets after it that the run planned."""
    import dagster as dg
    from dagster._core.storage.partition_status_cache import AssetPartitionStatus

    from forecast_assets.assets.common import FAILED_REASON
    from forecast_assets.partitions import customers_partitions_def

    by_asset: dict[str, list[str]] = {}
    failed_at: dict[str, list[Any]] = {}
    for key in sorted(job_assets, key=lambda k: k.path):
        status = instance.get_status_by_partition(key, customers, customers_partitions_def) or {}
        failed = sorted(c for c, v in status.items() if v == AssetPartitionStatus.FAILED)
        if failed:
            by_asset[key.to_user_string()] = failed
        for customer in failed:
            failed_at.setdefault(customer, []).append(key)
    reasons: dict[str, str] = {}
    for customer, keys in failed_at.items():
        reasons[customer] = "(no failed_reason recorded)"
        for key in keys:
            records = instance.fetch_observations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[customer]), limit=1
            ).records
            observation = records[0].asset_observation if records else None
            value = observation.metadata.get(FAILED_REASON) if observation else None
            if value is not None:
                reasons[customer] = f"{key.to_user_string()}: {str(value.value)[:300]}"
                break
    return {
        "by_asset": by_asset,
        "customers": sorted(reasons),
        "reasons": reasons,
    }


def bench_backfill(
    work: Path,
    name: str,
    batch_size: int,
    customers: Sequence[DemoCustomer],
    files: Mapping[str, Mapping[str, bytes]],
    failing: Mapping[str, str],
    timeout: float,
    follow_up_grace: float,
) -> dict[str, Any]:
    import dagster as dg
    from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES

    from forecast_assets.definitions import build_definitions

    base = fresh_dir(work / name)
    home, data_home = base / "dagster_home", base / "data"
    write_instance_yaml(home)
    ids = [c.customer_id for c in customers]
    failing = {c: how for c, how in failing.items() if c in ids}
    job_assets = list(
        build_definitions("local", batch_size)
        .get_repository_def()
        .get_job(JOB)
        .asset_layer.selected_asset_keys
    )
    start = time.perf_counter()
    land(data_home, {c: files[c] for c in ids})
    land_seconds = time.perf_counter() - start
    instance = open_instance(home)
    instance.add_dynamic_partitions(PARTITIONS, ids)
    concurrency = instance.get_concurrency_config()
    env = code_location_env(home, data_home, batch_size)
    daemon = Daemon(env, base / "daemon.log", data_home)
    log(
        f"{name}: starting dagster-daemon (batch size {batch_size}, {len(ids)} customers, "
        f"{len(failing)} failing)"
    )
    startup = daemon.start(instance)
    log(f"  daemon ready in {startup['seconds_until_heartbeats']:.1f} s; submitting the backfill")
    sampler = CpuSampler(daemon.proc.pid if daemon.proc else 0, [data_home / "jobs"])
    loadavg_before = os.getloadavg()[0]
    sampler.start()
    try:
        sub = submit(env, base / "forecast-backfill.log")
        backfill_id = sub["backfill_id"]
        backfill = instance.get_backfill(backfill_id)
        submitted_at = backfill.backfill_timestamp
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            backfill = instance.get_backfill(backfill_id)
            observed_end = time.time()
            if backfill.status in BULK_ACTION_TERMINAL_STATUSES:
                break
            counts = Counter(
                r.status.value
                for r in instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL_TAG: backfill_id}))
            )
            line = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
            jobs_dir = data_home / "jobs"
            n_jobs = len(list(jobs_dir.iterdir())) if jobs_dir.exists() else 0
            line = f"{backfill.status.value}: {line or 'no runs yet'}; {n_jobs} jobs"
            if line != last:
                log(f"  {line}")
                last = line
            if time.monotonic() > deadline:
                raise TimeoutError(f"backfill {backfill_id} still {backfill.status.value}")
            time.sleep(1.0)
        backfill_end = getattr(backfill, "backfill_end_timestamp", None) or observed_end
        log(f"  backfill {backfill.status.value} in {backfill_end - submitted_at:.1f} s")
        continued = await_follow_ups(
            instance, backfill_id, job_assets, batch_size, follow_up_grace, deadline
        )
        ticks = continuation_ticks(instance)
    finally:
        sampler.stop()
        daemon.stop()

    records = instance.get_run_records()
    own, follow_ups = chain_runs(records, backfill_id)
    in_chain = {r.dagster_run.run_id for r in own + follow_ups}
    others = [r for r in records if r.dagster_run.run_id not in in_chain]
    chain = own + follow_ups
    order = {c: i for i, c in enumerate(instance.get_dynamic_partitions(PARTITIONS))}
    run_seconds = [
        r.end_time - r.start_time for r in chain if r.start_time is not None and r.end_time
    ]
    last_run_end = max((r.end_time for r in chain if r.end_time), default=None)
    # All forecasts that will come are in when the backfill is done and its last follow-up
    # run has ended.
    end = max(backfill_end, last_run_end or backfill_end)
    wall = end - submitted_at
    log(
        f"  done in {wall:.1f} s: {len(own)} backfill runs, {len(follow_ups)} follow-up runs, "
        f"{len(others)} other runs"
    )
    first_created = min((r.create_timestamp.timestamp() for r in own), default=None)
    first_start = min((r.start_time for r in own if r.start_time), default=None)
    own_last_end = max((r.end_time for r in own if r.end_time), default=None)
    jobs = describe_jobs(data_home)
    cpu = sampler.window(submitted_at, end)
    job_cpu = sampler.job_cpu_seconds()
    by_step: dict[str, Any] = {}
    for step in JOB_STEPS:
        step_jobs = [j for j in jobs if j["step"] == step and j["seconds"] is not None]
        by_step[step] = {
            "jobs": len(step_jobs),
            "seconds": stats([j["seconds"] for j in step_jobs]),
            "seconds_per_customer": stats([j["seconds"] / j["customers"] for j in step_jobs]),
            "customers_per_job": stats([j["customers"] for j in step_jobs]),
        }
    job_seconds = sum(j["seconds"] or 0.0 for j in jobs)
    checks = model_wapes(data_home, ids)
    failures = failed_partitions(instance, job_assets, ids)
    instance.dispose()
    forecasts = sum(c["forecast_file"] for c in checks.values())
    dagster_cpu = cpu.get("tree_cpu_seconds", 0.0) - job_cpu
    return {
        "variant": name,
        "batch_size": batch_size,
        "customers": len(ids),
        "failing_customers": failing,
        "instance": {
            "dagster_yaml": "repo dagster.yaml, copied",
            "max_concurrent_runs": concurrency.run_queue_config.max_concurrent_runs
            if concurrency.run_queue_config
            else None,
            "pool_granularity": concurrency.pool_config.pool_granularity.value
            if concurrency.pool_config.pool_granularity
            else None,
            "pool_default_limit": concurrency.pool_config.default_pool_limit,
        },
        "land_seconds": land_seconds,
        "daemon_startup": startup,
        "submit": sub,
        "backfill_status": backfill.status.value,
        "backfill_seconds": backfill_end - submitted_at,
        "wall_seconds": wall,
        "wall_method": "backfill_timestamp (set by forecast-backfill when it submits) to the "
        "later of the backfill's backfill_end_timestamp (set by the backfill daemon when it "
        "marks the backfill done) and the end of the last follow-up run "
        "(batch_continuation_sensor), polled every 1-2 s",
        "phases_seconds": {
            "submit_to_first_run_created": (first_created - submitted_at)
            if first_created
            else None,
            "submit_to_first_run_started": (first_start - submitted_at) if first_start else None,
            "last_backfill_run_end_to_backfill_done": (backfill_end - own_last_end)
            if own_last_end
            else None,
            "backfill_done_to_last_follow_up_end": (end - backfill_end) if follow_ups else None,
            "note": "the backfill daemon ticks every 30 s: it creates the runs on its first tick "
            "after the submit and marks the backfill done on its first tick after the last run; "
            "batch_continuation_sensor ticks every 60 s",
        },
        "customers_per_minute": len(ids) / wall * 60,
        "forecasts_per_minute": forecasts / wall * 60,
        "runs": len(own),
        "runs_by_status": dict(Counter(r.dagster_run.status.value for r in own)),
        "customers_per_run": stats([run_size(r.dagster_run.tags, order) for r in own]),
        "follow_up_runs": len(follow_ups),
        "follow_up_runs_by_status": dict(Counter(r.dagster_run.status.value for r in follow_ups)),
        "customers_per_follow_up_run": stats(
            [run_size(r.dagster_run.tags, order) for r in follow_ups]
        ),
        "continuation": {**continued, "sensor_ticks": ticks},
        "other_runs": len(others),
        "other_runs_by_job": dict(Counter(r.dagster_run.job_name for r in others)),
        "run_seconds": stats(run_seconds),
        "jobs_launched": len(jobs),
        "jobs_by_status": dict(Counter(str(j["status"]) for j in jobs)),
        "jobs_by_step": by_step,
        "job_seconds_total": job_seconds,
        "cpu": {
            **cpu,
            "job_cpu_seconds": job_cpu,
            "job_cpu_accounting": sampler.job_accounting(),
            "job_share_of_tree_cpu": job_cpu / cpu["tree_cpu_seconds"]
            if cpu.get("tree_cpu_seconds")
            else None,
            "dagster_cpu_seconds": dagster_cpu,
            "dagster_cpu_seconds_per_run": dagster_cpu / len(chain) if chain else None,
            "job_wall_seconds_share_of_busy_core_seconds": job_seconds / cpu["busy_core_seconds"]
            if cpu.get("busy_core_seconds")
            else None,
            "method": CPU_METHOD,
        },
        "loadavg_1min_before": loadavg_before,
        "loadavg_1min_after": os.getloadavg()[0],
        "correctness": {
            "customers_with_forecast_file": forecasts,
            "expected_forecasts": len(ids) - len(failing),
            "customers_with_forecast_rows": sum(c["forecast_rows"] > 0 for c in checks.values()),
            "models_by_status": dict(Counter(str(c["model_status"]) for c in checks.values())),
            "failed_partitions": failures,
            "as_expected": forecasts == len(ids) - len(failing)
            and set(failures["customers"]) == set(failing)
            and not any(checks[c]["forecast_file"] for c in failing)
            and not continued["failed_runs_never_continued"],
            "per_customer": checks,
        },
        "work_dir": str(base),
    }


# 2. The scripts directly, in a loop ------------------------------------------------------------


def bench_direct(
    work: Path, customers: Sequence[DemoCustomer], files: Mapping[str, Mapping[str, bytes]]
) -> dict[str, Any]:
    base = fresh_dir(work / "direct")
    sampler = CpuSampler(os.getpid(), [base])
    loadavg_before = os.getloadavg()[0]
    runs: dict[str, Any] = {}
    sampler.start()
    start_wall = time.time()
    start = time.perf_counter()
    try:
        for i, customer in enumerate(customers):
            runs[customer.customer_id] = run_direct(
                fresh_dir(base / customer.customer_id), customer, files[customer.customer_id]
            )
            if (i + 1) % 10 == 0 or i + 1 == len(customers):
                log(f"  direct: {i + 1}/{len(customers)} in {time.perf_counter() - start:.0f} s")
    finally:
        wall = time.perf_counter() - start
        sampler.stop()
    cpu = sampler.window(start_wall, start_wall + wall)
    job_cpu = sampler.job_cpu_seconds()
    scripts = {
        step: [r["script_seconds"][step] for r in runs.values()]
        for step in ("preprocessing", "training", "inference")
    }
    return {
        "customers": len(customers),
        "wall_seconds": wall,
        "wall_method": "the whole loop: per customer, write the raw files and manifest (what "
        "landing provides), then benchmarks.run.run_direct (preprocess.py, train.py, predict.py "
        "one after another, each in its own SageMaker-shaped folder, with the glue between them)",
        "sum_run_direct_wall_seconds": sum(r["wall_seconds"] for r in runs.values()),
        "customers_per_minute": len(customers) / wall * 60,
        "script_seconds": {step: stats(v) for step, v in scripts.items()},
        "cpu": {
            **cpu,
            "job_cpu_seconds": job_cpu,
            "job_cpu_accounting": sampler.job_accounting(),
            "job_share_of_tree_cpu": job_cpu / cpu["tree_cpu_seconds"]
            if cpu.get("tree_cpu_seconds")
            else None,
            "method": CPU_METHOD.replace(
                "Dagster (daemon, code server, run and step workers)", "this benchmark process"
            ),
        },
        "loadavg_1min_before": loadavg_before,
        "loadavg_1min_after": os.getloadavg()[0],
        "per_customer": {
            c: {
                "wall_seconds": r["wall_seconds"],
                "script_seconds": r["script_seconds"],
                "model_wape_pct": r["model_wape_pct"],
                "rows": r["rows"],
            }
            for c, r in runs.items()
        },
        "work_dir": str(base),
    }


# 3. The run plan of a large backfill, without running it -----------------------------------------


PLAN_STORAGES = ("sqlite", "postgres")
# SageMaker's create-call limit the submission model assumes (the figure, not checked
# here): about one CreateProcessingJob / CreateTrainingJob call per second per account and region.
CREATES_PER_SECOND = 1.0
LOADAVG_EVERY = 30.0


def plan_coverage(tags: Sequence[Mapping[str, str]], ids: Sequence[str]) -> dict[str, Any]:
    """Customers per run and how often each customer is in a run (by the runs' partition tags,
    or a run request's range tags)."""
    order = {c: i for i, c in enumerate(ids)}
    sizes = [run_size(t, order) for t in tags]
    seen: Counter[str] = Counter()
    for t in tags:
        if RANGE_START in t:
            seen.update(ids[order[t[RANGE_START]] : order[t[RANGE_END]] + 1])
        elif PARTITION_TAG in t:
            seen[t[PARTITION_TAG]] += 1
    return {
        "runs": len(tags),
        "customers_per_run": stats(sizes),
        "customers_per_run_histogram": {str(k): v for k, v in sorted(Counter(sizes).items())},
        "customers_covered": len(seen),
        "customers_in_more_than_one_run": sum(1 for v in seen.values() if v > 1),
        "every_customer_in_exactly_one_run": len(seen) == len(ids)
        and all(v == 1 for v in seen.values()),
    }


def dagster_plan(instance: Any, backfill_id: str, filters: Any) -> dict[str, dict[str, str]]:
    """The daemon's whole plan for the backfill, by run id: the partition tags of every run it
    will create. Before creating any run the daemon stores all of its run requests, with a
    reserved run id each, in the backfill (``submitting_run_requests``) and removes them in
    chunks of 25 as it creates the runs; so the runs created so far plus the requests still
    stored (the backfill read first: a run in both counts once) are the plan."""
    backfill = instance.get_backfill(backfill_id)
    requests = backfill.submitting_run_requests
    reserved = backfill.reserved_run_ids or [f"request-{i}" for i in range(len(requests))]
    plan = {run_id: dict(r.tags) for run_id, r in zip(reserved, requests, strict=True)}
    for record in instance.get_run_records(filters=filters):
        plan[record.dagster_run.run_id] = dict(record.dagster_run.tags)
    return plan


def daemon_log_times(log_path: Path, backfill_id: str) -> dict[str, float | None]:
    """Epoch seconds of the backfill daemon's first ``Evaluating asset backfill <id>`` line and of
    its first ``completed iteration`` line for it (the daemon logs whole seconds, local time)."""
    stamp = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) ([+-]\d{4})")
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    found: dict[str, float | None] = {"iteration_started": None, "iteration_completed": None}
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return found
    for line in map(lambda text: ansi.sub("", text), lines):
        match = stamp.match(line)
        if not match:
            continue
        at = datetime.strptime(" ".join(match.groups()), "%Y-%m-%d %H:%M:%S %z").timestamp()
        if (
            found["iteration_started"] is None
            and f"Evaluating asset backfill {backfill_id}" in line
        ):
            found["iteration_started"] = at
        elif (
            found["iteration_completed"] is None
            and f"Asset backfill {backfill_id} completed iteration" in line
        ):
            found["iteration_completed"] = at
    return found


def per_minute(times: Sequence[float], since: float) -> list[int]:
    """How many of ``times`` fall in each minute after ``since``."""
    if not times:
        return []
    counts = Counter(int((t - since) // 60) for t in times)
    return [counts.get(m, 0) for m in range(max(counts) + 1)]


def bench_plan(
    work: Path,
    n: int,
    batch_size: int,
    settle: float,
    timeout: float,
    storage: str = "sqlite",
    postgres_url: str | None = None,
    time_limit: float | None = None,
) -> dict:
    """One backfill of ``n`` customers planned and queued by a live daemon, no run started.

    ``storage`` "sqlite": the repo's instance/dagster.yaml; "postgres": deploy/dagster.yaml's
    storage on a new database of ``postgres_url`` (launcher swapped for the default one, as
    ``benchmarks/partitions.py`` does). Either with ``max_concurrent_runs: 0``. The count ends
    when the daemon has created every run of its plan (``dagster_plan``), when no new run came
    for ``settle`` seconds, or, as a partial measurement, ``time_limit`` seconds after submit.
    """
    import dagster as dg

    from benchmarks.partitions import (
        database_activity,
        postgres_config,
        postgres_database,
        postgres_server_pid,
    )

    prefix = "plan" if storage == "sqlite" else f"plan-{storage}"
    base = fresh_dir(work / f"{prefix}-{n}-batch{batch_size}")
    home, data_home = base / "dagster_home", base / "data"
    width = max(4, len(str(n)))
    ids = [f"cust-{i + 1:0{width}d}" for i in range(n)]
    load_at_start = list(os.getloadavg())
    with contextlib.ExitStack() as stack:
        if storage == "postgres":
            if postgres_url is None:
                raise ValueError("storage postgres needs a server URL")
            database = stack.enter_context(postgres_database(postgres_url))["DAGSTER_PG_DB"]
            written = write_instance_yaml(home, 0, postgres_config())
        else:
            written = write_instance_yaml(home, max_concurrent_runs=0)
        instance = open_instance(home)
        stack.callback(instance.dispose)
        concurrency = instance.get_concurrency_config()
        accepted = (
            concurrency.run_queue_config is not None
            and concurrency.run_queue_config.max_concurrent_runs == 0
        )
        t = time.perf_counter()
        instance.add_dynamic_partitions(PARTITIONS, ids)
        add_seconds = time.perf_counter() - t
        env = code_location_env(home, data_home, batch_size)
        daemon = Daemon(env, base / "daemon.log", data_home)
        log(f"plan: {n} customers, batch size {batch_size}, {storage}: starting dagster-daemon")
        startup = daemon.start(instance)
        assert daemon.proc is not None
        samplers = {"daemon_tree": CpuSampler(daemon.proc.pid, [data_home], 0.5, 2)}
        server_pid = (
            postgres_server_pid(postgres_url) if postgres_url and storage == "postgres" else None
        )
        if server_pid is not None:
            samplers["postgres_server_tree"] = CpuSampler(server_pid, [], 1.0, 1)
        for sampler in samplers.values():
            sampler.start()
        loads: list[list[float]] = []
        activity: list[dict[str, int] | None] = []
        if storage == "postgres" and postgres_url:
            activity.append(database_activity(postgres_url, database))
        try:
            sub = submit(env, base / "forecast-backfill.log")
            backfill_id = sub["backfill_id"]
            submitted_at = instance.get_backfill(backfill_id).backfill_timestamp
            filters = dg.RunsFilter(tags={BACKFILL_TAG: backfill_id})
            plan: dict[str, dict[str, str]] | None = None
            count, changed_at, first_run_at, logged_at = -1, time.time(), None, 0.0
            stopped_by = "settle"
            deadline = time.monotonic() + timeout
            while True:
                now_count = instance.get_runs_count(filters=filters)
                now = time.time()
                if not loads or now - submitted_at - loads[-1][0] >= LOADAVG_EVERY:
                    loads.append([round(now - submitted_at, 1), *os.getloadavg()])
                if now_count != count:
                    if now_count and first_run_at is None:
                        first_run_at = now
                    count, changed_at = now_count, now
                    if now - logged_at >= 15:
                        log(f"  {count} runs queued ({now - submitted_at:.0f} s after submit)")
                        logged_at = now
                if count > 0 and plan is None:
                    plan = dagster_plan(instance, backfill_id, filters)
                    log(f"  the daemon's plan: {len(plan)} runs")
                if (
                    plan is not None
                    and count >= len(plan)
                    and not instance.get_backfill(backfill_id).submitting_run_requests
                ):
                    stopped_by = "every run of the daemon's plan created"
                    break
                if count > 0 and now - changed_at >= settle:
                    break
                if time_limit is not None and now - submitted_at >= time_limit:
                    stopped_by = f"time limit ({time_limit:.0f} s after submit): PARTIAL"
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"plan backfill still growing after {timeout} s ({count} runs)"
                    )
                time.sleep(1.0)
            ended_at = time.time()
            if activity and postgres_url:
                activity.append(database_activity(postgres_url, database))
            backfill = instance.get_backfill(backfill_id)
            requested = backfill.asset_backfill_data.requested_subset
        finally:
            for sampler in samplers.values():
                sampler.stop()
            daemon.stop()
        load_at_end = list(os.getloadavg())
        records = instance.get_run_records(filters=filters)
        created = sorted(r.create_timestamp.timestamp() for r in records)
        complete = stopped_by.startswith("every run")
        jobs_dir = data_home / "jobs"
        planned = len(plan) if plan is not None else None
        first_created = created[0] if created else None
        last_created = created[-1] if created else None
        enqueue = created[-1] - created[0] if created else None
        rate = (len(created) - 1) / enqueue if enqueue else None
        logged = daemon_log_times(base / "daemon.log", backfill_id)
        cpu: dict[str, Any] = {}
        for key, sampler in samplers.items():
            cpu[key] = {
                "submit_to_last_run_created": sampler.window(
                    submitted_at, last_created or ended_at
                ),
                "submit_to_end_of_count": sampler.window(submitted_at, ended_at),
            }
            for window in cpu[key].values():
                window.pop("samples_per_second_busy_by_core", None)
        result: dict[str, Any] = {
            "storage": storage,
            "customers": n,
            "batch_size": batch_size,
            "instance": {
                "storage": "postgres (deploy/dagster.yaml)"
                if storage == "postgres"
                else "sqlite (instance/dagster.yaml)",
                "run_launcher": written.get("run_launcher", {}).get("class", "DefaultRunLauncher"),
                "run_coordinator": type(instance.run_coordinator).__name__,
            },
            "max_concurrent_runs_in_dagster_yaml": written["concurrency"]["runs"][
                "max_concurrent_runs"
            ],
            "dagster_accepted_max_concurrent_runs_0": accepted,
            "add_partitions_seconds": add_seconds,
            "daemon_startup": startup,
            "submit": sub,
            "stopped_by": stopped_by,
            "complete": complete,
            "backfill_status_at_end": backfill.status.value,
            "asset_partitions_requested_at_end": requested.num_partitions_and_non_partitioned_assets,
            "planned_runs": planned,
            "plan": plan_coverage(list(plan.values()), ids) if plan is not None else None,
            "runs": len(records),
            "runs_by_status": dict(Counter(r.dagster_run.status.value for r in records)),
            "created": plan_coverage([dict(r.dagster_run.tags) for r in records], ids),
            "seconds_submit_to_iteration_start_daemon_log": logged["iteration_started"]
            - submitted_at
            if logged["iteration_started"]
            else None,
            "seconds_submit_to_iteration_completed_daemon_log": logged["iteration_completed"]
            - submitted_at
            if logged["iteration_completed"]
            else None,
            "seconds_submit_to_first_run": first_created - submitted_at if first_created else None,
            "seconds_submit_to_first_run_seen_polling": first_run_at - submitted_at
            if first_run_at
            else None,
            "seconds_first_to_last_run_created": enqueue,
            "seconds_submit_to_last_run_created": last_created - submitted_at
            if last_created
            else None,
            "seconds_submit_to_end_of_count": ended_at - submitted_at,
            "runs_created_per_second": rate,
            "runs_created_per_minute_after_first": per_minute(created, created[0])
            if created
            else [],
            "timing_method": "run record create_timestamp (set by the storage on insert); submit "
            "= the backfill's backfill_timestamp; iteration start/completed = the backfill "
            "daemon's log lines (whole seconds); runs/s = (runs - 1) / (last - first created)",
            "settle_seconds": settle,
            "time_limit_seconds": time_limit,
            "cpu": cpu,
            "postgres_server_pid": server_pid,
            "cpu_method": "CpuSampler on the daemon's process tree (daemon, its code server, "
            "all its daemons: backfill, run queue, sensors, schedules, monitoring) every 0.5 s "
            "and, on PostgreSQL, on the server's postmaster tree every 1 s; mean_busy_cores is "
            "the whole machine (/proc/stat), other work included",
            "loadavg": {"at_start": load_at_start, "at_end": load_at_end, "every_30s": loads},
            "jobs_launched_locally": len(list(jobs_dir.iterdir())) if jobs_dir.exists() else 0,
            "jobs_launched_if_run": (planned if planned is not None else len(records))
            * len(JOB_STEPS),
            "work_dir": str(base),
        }
        before, after = [*activity, None, None][:2]
        if before is not None and after is not None:
            delta = {k: after[k] - before[k] for k in after}
            result["postgres_activity"] = {
                "window": "just before submit to the end of the count "
                f"({ended_at - submitted_at:.0f} s)",
                "totals": delta,
                "per_second": {k: v / (ended_at - submitted_at) for k, v in delta.items()},
                "per_run_created": {k: v / len(records) for k, v in delta.items()}
                if records
                else None,
                "method": "pg_stat_database of the variant's database (sessions = connections "
                "opened), every client together: the daemon and its code server, the "
                "forecast-backfill CLI, and this benchmark's own polling (about one "
                "connection a second: get_runs_count, and get_backfill near the end)",
            }
        if not complete and rate and planned:
            result["EXTRAPOLATED_not_measured"] = {
                "seconds_first_to_last_run_at_measured_rate": (planned - 1) / rate,
                "seconds_submit_to_last_run_at_measured_rate": (first_created or 0)
                - submitted_at
                + (planned - 1) / rate,
                "basis": f"{len(records)} of {planned} runs created in {enqueue:.0f} s; the rest "
                "assumed at the same rate (the per-minute counts show whether it held)",
            }
    return result


def plan_row(plan: Mapping[str, Any]) -> dict[str, Any]:
    """What a modelled row says of its plan: storage, batch size, customers, runs and the jobs
    they launch (one per step per run)."""
    runs = plan.get("planned_runs") or plan["runs"]
    return {
        "storage": plan.get("storage", "sqlite"),
        "batch_size": plan["batch_size"],
        "customers": plan["customers"],
        "runs": runs,
        "jobs": runs * len(JOB_STEPS),
    }


def submission_model(
    plans: Sequence[Mapping[str, Any]], creates_per_second: float = CREATES_PER_SECOND
) -> list[dict[str, Any]]:
    """MODELLED, not measured: the time to make the create calls of every job of the plan at
    ``creates_per_second`` per account and region, one call after another."""
    rows = []
    for plan in plans:
        row = plan_row(plan)
        runs, jobs = row["runs"], row["jobs"]
        rows.append(
            {
                **row,
                "creates_per_second_assumed": creates_per_second,
                "seconds_per_step": runs / creates_per_second,
                "seconds_all_steps": jobs / creates_per_second,
                "hours_all_steps": jobs / creates_per_second / 3600,
            }
        )
    return rows


def startup_model(
    plans: Sequence[Mapping[str, Any]], startup_seconds: Sequence[float], pool_limit: int
) -> list[dict[str, Any]]:
    """Assumed SageMaker start-up per job (not measured): total and on the critical path."""
    rows = []
    for plan in plans:
        row = plan_row(plan)
        runs, jobs = row["runs"], row["jobs"]
        for s in startup_seconds:
            total = jobs * s
            # Each of the 3 steps launches one job per run; at most pool_limit at once.
            critical = sum(math.ceil(runs / pool_limit) * s for _ in JOB_STEPS)
            rows.append(
                {
                    **row,
                    "jobs_per_step": runs,
                    "startup_seconds_per_job_assumed": s,
                    "pool_limit": pool_limit,
                    "total_instance_startup_hours": total / 3600,
                    "startup_per_customer_seconds": total / plan["customers"],
                    "critical_path_startup_hours": critical / 3600,
                }
            )
    return rows


def local_overhead(
    per_customer: Mapping[str, Any], batched: Mapping[str, Any], direct: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Measured locally: job seconds per customer, one customer per job vs batched, and the
    per-job overhead o solving T1 = o + w, TN = o + N w (T1 per-customer mean, TN batch mean;
    follow-up runs' smaller jobs are among the batched ones, N is their mean size)."""
    direct_name = {"prep": "preprocessing", "train": "training", "infer": "inference"}
    out: dict[str, Any] = {}
    for step in JOB_STEPS:
        one = per_customer["jobs_by_step"][step]
        many = batched["jobs_by_step"][step]
        t1 = one["seconds"]["mean"]
        tn = many["seconds"]["mean"]
        n = many["customers_per_job"]["mean"]
        overhead = (n * t1 - tn) / (n - 1) if t1 is not None and tn is not None and n > 1 else None
        out[step] = {
            "per_customer_job_seconds_mean": t1,
            "batched_job_seconds_mean": tn,
            "batched_customers_per_job_mean": n,
            "batched_job_seconds_per_customer": tn / n if tn is not None and n else None,
            "per_job_overhead_seconds_estimate": overhead,
            "direct_script_seconds_mean": direct["script_seconds"][direct_name[step]]["mean"]
            if direct
            else None,
        }
    return out


# Main --------------------------------------------------------------------------------------------


def code_files() -> dict[str, str]:
    """Content digest of every product source file (the job bundles are among them)."""
    return {
        path.relative_to(REPO_ROOT).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        for directory in CODE_DIRS
        for path in sorted((REPO_ROOT / directory).rglob("*.py"))
    }


def code_digest(files: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for name, digest in sorted(files.items()):
        h.update(name.encode() + b"\0" + digest.encode())
    return h.hexdigest()[:16]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def comparison(results: Mapping[str, Any]) -> dict[str, Any]:
    """Each backfill against the direct loop, per forecast customer: the loop's figure per
    customer times the backfill's forecasts (the failing customers' work is in the backfill,
    not in the loop: it is part of what a backfill with failures costs)."""
    b = results["benchmarks"]
    direct = b.get("direct")
    backfills = b.get("backfill", {})
    out: dict[str, Any] = {
        "note": "the backfill runs up to 4 runs at once with 2 slots per SageMaker pool, so its "
        "jobs use both cores; the loop runs one script at a time (train.py's forest still uses "
        "both cores through n_jobs=-1): a wall-clock ratio below 1 is expected. CPU compares "
        "the work done. goal_ratio is checked on cpu_to_loop_scripts: all CPU of the "
        "backfill's processes (Dagster and jobs) over the CPU of the loop's scripts alone, the "
        "stricter of the two (the loop's own process also does the glue between scripts and "
        "this benchmark's sampling)",
        "goals": {
            "batched_max_cpu_ratio": GOAL_BATCHED_CPU_RATIO,
            "per_customer_max_cpu_ratio": GOAL_PER_CUSTOMER_CPU_RATIO,
        },
        "by_batch_size": {},
    }
    if not direct or not direct["customers"]:
        return out
    n = direct["customers"]
    loop = {
        "wall": direct["wall_seconds"] / n,
        "busy_core_seconds": direct["cpu"].get("busy_core_seconds", 0.0) / n,
        "tree_cpu": direct["cpu"].get("tree_cpu_seconds", 0.0) / n,
        "script_cpu": direct["cpu"]["job_cpu_seconds"] / n,
    }
    out["direct_per_customer"] = loop
    for size, x in backfills.items():
        forecasts = x["correctness"]["customers_with_forecast_file"]
        if not forecasts:
            continue
        c = x["cpu"]
        goal = GOAL_PER_CUSTOMER_CPU_RATIO if x["batch_size"] == 1 else GOAL_BATCHED_CPU_RATIO
        cpu_to_scripts = ratio(c.get("tree_cpu_seconds"), loop["script_cpu"] * forecasts)
        out["by_batch_size"][size] = {
            "forecasts": forecasts,
            "wall_to_loop": ratio(x["wall_seconds"], loop["wall"] * forecasts),
            "busy_core_seconds_to_loop": ratio(
                c.get("busy_core_seconds"), loop["busy_core_seconds"] * forecasts
            ),
            "cpu_to_loop_tree": ratio(c.get("tree_cpu_seconds"), loop["tree_cpu"] * forecasts),
            "cpu_to_loop_scripts": cpu_to_scripts,
            "job_cpu_to_loop_scripts": ratio(c["job_cpu_seconds"], loop["script_cpu"] * forecasts),
            "dagster_cpu_to_loop_scripts": ratio(
                c["dagster_cpu_seconds"], loop["script_cpu"] * forecasts
            ),
            "goal_ratio": goal,
            "meets_goal": cpu_to_scripts is not None and cpu_to_scripts <= goal,
        }
    diffs: dict[str, dict[str, float | None]] = {}
    for customer, d in direct["per_customer"].items():
        row: dict[str, float | None] = {"direct": d["model_wape_pct"]}
        for size, x in backfills.items():
            row[size] = x["correctness"]["per_customer"].get(customer, {}).get("model_wape_pct")
        diffs[customer] = row
    rel = [
        abs(value - r["direct"]) / r["direct"]
        for r in diffs.values()
        for k, value in r.items()
        if k != "direct" and value is not None and r["direct"]
    ]
    out["model_wape"] = {
        "max_relative_difference_to_direct": max(rel) if rel else None,
        "compared": len(rel),
        "first_customers": dict(list(diffs.items())[:3]),
    }
    return out


def summary(results: Mapping[str, Any]) -> str:
    lines = []
    m = results["machine"]
    lines.append(
        f"machine: {m['nproc']} CPUs, Python {m['python']}, dagster {m['packages'].get('dagster')}"
    )
    b = results["benchmarks"]
    for x in b.get("backfill", {}).values():
        c = x["cpu"]
        k = x["correctness"]
        lines.append(
            f"backfill batch {x['batch_size']}: {x['customers']} customers "
            f"({len(x['failing_customers'])} failing): {x['backfill_status']}, all done in "
            f"{x['wall_seconds']:.0f} s ({x['customers_per_minute']:.1f} customers/min); "
            f"{x['runs']} runs + {x['follow_up_runs']} follow-ups (+{x['other_runs']} other), "
            f"{x['jobs_launched']} jobs; forecasts {k['customers_with_forecast_file']}/"
            f"{k['expected_forecasts']} expected, failed customers "
            f"{k['failed_partitions']['customers']}{'' if k['as_expected'] else ' NOT AS EXPECTED'}"
        )
        lines.append(
            f"  CPU {c['mean_busy_cores']:.2f} of {c['cores']} cores busy; own processes "
            f"{c['tree_cpu_seconds']:.0f} CPU-s = jobs {c['job_cpu_seconds']:.0f} + Dagster "
            f"{c['dagster_cpu_seconds']:.0f} ({_fmt(c['dagster_cpu_seconds_per_run'])} per run); "
            f"daemon start-up {x['daemon_startup']['seconds_until_heartbeats']:.1f} s (not counted)"
        )
    if "direct" in b:
        x = b["direct"]
        c = x["cpu"]
        lines.append(
            f"direct loop: {x['customers']} customers in {x['wall_seconds']:.0f} s "
            f"({x['customers_per_minute']:.1f}/min); CPU {c['mean_busy_cores']:.2f} cores busy, "
            f"own processes {c['tree_cpu_seconds']:.0f} CPU-s, scripts {c['job_cpu_seconds']:.0f}"
        )
    comp = results.get("comparison", {})
    for size, r in comp.get("by_batch_size", {}).items():
        lines.append(
            f"batch {size} / loop, per forecast: CPU {_fmt(r['cpu_to_loop_scripts'])} of the "
            f"loop's scripts (goal <= {r['goal_ratio']}: "
            f"{'met' if r['meets_goal'] else 'NOT met'}), {_fmt(r['cpu_to_loop_tree'])} of its "
            f"processes; jobs {_fmt(r['job_cpu_to_loop_scripts'])} + Dagster "
            f"{_fmt(r['dagster_cpu_to_loop_scripts'])}; wall {_fmt(r['wall_to_loop'])}"
        )
    if comp.get("model_wape"):
        lines.append(
            f"model WAPE: max relative difference to direct "
            f"{_fmt(comp['model_wape']['max_relative_difference_to_direct'])} over "
            f"{comp['model_wape']['compared']} comparisons"
        )
    for plan in b.get("plan", {}).get("plans", []):
        created = plan.get("created") or {
            "customers_covered": plan.get("customers_covered"),
            "customers_per_run": plan["customers_per_run"],
        }
        lines.append(
            f"plan {plan['customers']} customers, {plan.get('storage', 'sqlite')}, batch "
            f"{plan['batch_size']}: {plan['runs']} of {plan.get('planned_runs')} planned runs "
            f"created ({plan['runs_by_status']}), {plan['jobs_launched_if_run']} jobs, "
            f"customers/run {created['customers_per_run']['min']}-"
            f"{created['customers_per_run']['max']}, covered {created['customers_covered']}; "
            f"{plan.get('stopped_by', 'settle')}"
        )
        if "runs_created_per_second" in plan:
            lines.append(
                f"  submit {plan['submit']['cli_seconds']:.1f} s; first run "
                f"{_fmt(plan['seconds_submit_to_first_run'])} s, last "
                f"{_fmt(plan['seconds_submit_to_last_run_created'])} s after submit; "
                f"{_fmt(plan['runs_created_per_second'])} runs/s"
            )
        if "EXTRAPOLATED_not_measured" in plan:
            x = plan["EXTRAPOLATED_not_measured"]
            lines.append(
                f"  EXTRAPOLATED (not measured): all runs "
                f"{x['seconds_submit_to_last_run_at_measured_rate']:.0f} s after submit"
            )
    for row in b.get("plan", {}).get("submission_model", []):
        lines.append(
            f"  MODEL {row['storage']} batch {row['batch_size']:>3}: {row['jobs']} jobs at "
            f"{row['creates_per_second_assumed']:g} create/s = {row['seconds_all_steps']:.0f} s "
            f"({row['seconds_per_step']:.0f} s per step)"
        )
    for row in b.get("plan", {}).get("startup_model", []):
        lines.append(
            f"  batch {row['batch_size']:>3} S={row['startup_seconds_per_job_assumed']:>4.0f}s: "
            f"{row['jobs']} jobs, instance start-up {row['total_instance_startup_hours']:.1f} h,"
            f" critical path {row['critical_path_startup_hours']:.2f} h (P={row['pool_limit']})"
        )
    if results.get("code_changed_during_run"):
        lines.append(
            "WARNING: product code changed during the run: "
            + ", ".join(results.get("files_changed_during_run", {}))
        )
    lines.append(f"total {results['total_seconds']:.0f} s")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def size_and_count(text: str) -> tuple[int, int]:
    size, sep, count = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected SIZE=CUSTOMERS, got {text!r}")
    return int(size), int(count)


def plan_variant(text: str) -> tuple[str, int, float | None]:
    """``STORAGE:SIZE`` or ``STORAGE:SIZE:SECONDS`` (that variant's own time limit)."""
    storage, _, rest = text.partition(":")
    size, _, limit = rest.partition(":")
    try:
        variant = (storage, int(size), float(limit) if limit else None)
    except ValueError:
        variant = ("", 0, None)
    if storage not in PLAN_STORAGES or variant[1] < 1:
        raise argparse.ArgumentTypeError(
            f"expected STORAGE:SIZE[:SECONDS], STORAGE one of {PLAN_STORAGES}; got {text!r}"
        )
    return variant


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.backfill", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument(
        "--days",
        type=int,
        default=75,
        help="days of 15-minute data each (training needs 36; 57 give its full 28-day backtest)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[1, 10],
        help="one backfill per size (FORECAST_BACKFILL_BATCH_SIZE)",
    )
    parser.add_argument(
        "--customers-at",
        type=size_and_count,
        action="append",
        default=[],
        metavar="SIZE=N",
        help="the backfill at batch size SIZE takes only the first N customers (repeatable)",
    )
    parser.add_argument(
        "--failing",
        type=int,
        default=0,
        help="customers that fail: alternately a file that is not a meter export, and "
        "--short-days of history (the fit fails)",
    )
    parser.add_argument("--short-days", type=int, default=30, help="a short-history customer")
    parser.add_argument(
        "--direct-customers",
        type=int,
        default=None,
        help="the direct loop takes the first N customers, less the failing ones (default all)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=("backfill", "direct", "plan"),
        default=["backfill", "direct", "plan"],
    )
    parser.add_argument("--plan-customers", type=int, default=500)
    parser.add_argument("--plan-batch-sizes", type=int, nargs="+", default=[1, 10, 25, 50])
    parser.add_argument(
        "--plan-variants",
        type=plan_variant,
        nargs="+",
        default=None,
        metavar="STORAGE:SIZE[:SECONDS]",
        help="plan variants in this order, e.g. postgres:50 postgres:10:600 sqlite:10 "
        f"(STORAGE one of {', '.join(PLAN_STORAGES)}; SECONDS: that variant's time limit, "
        "else --plan-time-limit); default sqlite at each --plan-batch-sizes",
    )
    parser.add_argument(
        "--plan-time-limit",
        type=float,
        default=None,
        help="stop counting a plan this many seconds after submit, recorded as PARTIAL (runs "
        "created so far, their rate; the time to create all of them only extrapolated)",
    )
    parser.add_argument(
        "--postgres-url",
        default=None,
        help="server for the postgres plan variants (a new database each); default a "
        "throwaway PostgreSQL server (benchmarks/partitions.py), removed after",
    )
    parser.add_argument(
        "--creates-per-second",
        type=float,
        default=CREATES_PER_SECOND,
        help="ASSUMED SageMaker create calls per second per account and region, for the model",
    )
    parser.add_argument(
        "--plan-settle-seconds",
        type=float,
        default=40.0,
        help="no new run for this long ends the count (the backfill daemon ticks every 30 s)",
    )
    parser.add_argument(
        "--startup-seconds",
        type=float,
        nargs="+",
        default=[60.0, 180.0, 300.0],
        help="ASSUMED SageMaker start-up per job for the model",
    )
    parser.add_argument("--pool-limit", type=int, default=10, help="concurrent jobs, modelled")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="per backfill and its follow-ups, seconds"
    )
    parser.add_argument(
        "--follow-up-grace",
        type=float,
        default=300.0,
        help="a failed run without its follow-up runs this long after it ended is recorded as "
        "not continued (batch_continuation_sensor ticks every 60 s)",
    )
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--out", type=Path, default=DEFAULT_WORK_DIR / "results.json")
    args = parser.parse_args(argv)
    counts = dict(args.customers_at)
    if any(n > args.customers or n < 1 for n in counts.values()):
        parser.error("--customers-at: N must be between 1 and --customers")
    args.customers_by_size = {size: counts.get(size, args.customers) for size in args.batch_sizes}
    if args.plan_variants is None:
        args.plan_variants = [("sqlite", size, None) for size in args.plan_batch_sizes]
    if args.direct_customers is None:
        args.direct_customers = args.customers
    smallest = min([*args.customers_by_size.values(), args.direct_customers])
    if args.failing > smallest:
        parser.error(f"--failing {args.failing}: more than the smallest variant ({smallest})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    import dagster as dg

    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    atexit.register(_cleanup)
    work = args.work_dir.resolve()  # DAGSTER_HOME must be an absolute path
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    start = time.perf_counter()
    files_at_start = code_files()
    customers = bench_customers(args.customers)
    ids = [c.customer_id for c in customers]
    # Spread over the smallest variant's customers, so every variant has all of them.
    within = min([*args.customers_by_size.values(), args.direct_customers])
    failing = failing_customers(ids, args.failing, within)
    results: dict[str, Any] = {
        "command": "python -m benchmarks.backfill "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "started_at": started.isoformat(timespec="seconds"),
        "machine": {**machine_info(), "cpu_count": os.cpu_count()},
        "code_at_start": {
            "git_commit": _git("rev-parse", "HEAD"),
            "code_sha256": code_digest(files_at_start),
            "bundle_digests": {
                job: bundle(job).digest  # type: ignore[arg-type]
                for job in ("preprocessing", "training", "inference")
            },
        },
        "data": {
            "customers": args.customers,
            "customers_by_batch_size": args.customers_by_size,
            "days": args.days,
            "interval_minutes": 15,
            "end": DATA_END.isoformat(),
            "seed": SEED,
            "customer_ids": f"cust-001 .. cust-{args.customers:03d}, cycling the vendor, meter "
            "count and profile of the 5 DEMO_CUSTOMERS; a variant on N customers takes the "
            "first N",
            "failing": failing,
            "failing_how": {
                BAD_FILE: f"its good files plus {BAD_FILE_NAME} holding {BAD_FILE_BYTES!r}",
                SHORT_HISTORY: f"{args.short_days} days of data instead of {args.days}",
            },
        },
        "benchmarks": {},
    }
    stack = contextlib.ExitStack()
    try:
        files: dict[str, dict[str, bytes]] = {}
        if {"backfill", "direct"} & set(args.only):
            log(f"generating {args.customers} customers x {args.days} days ({failing} failing)")
            t = time.perf_counter()
            for c in customers:
                files[c.customer_id] = customer_files(
                    c, args.days, failing.get(c.customer_id), args.short_days
                )
            results["data"]["generate_seconds"] = time.perf_counter() - t
            results["data"]["raw_bytes"] = sum(
                len(d) for named in files.values() for d in named.values()
            )
            results["data"]["raw_files"] = sum(len(named) for named in files.values())
            results["data"]["devices"] = sum(c.devices for c in customers)
        b = results["benchmarks"]
        if "backfill" in args.only:
            b["backfill"] = {}
            for size in args.batch_sizes:
                n = args.customers_by_size[size]
                log(f"== backfill of {n} customers, batches of {size}")
                b["backfill"][str(size)] = bench_backfill(
                    work,
                    f"backfill-batch{size}",
                    size,
                    customers[:n],
                    files,
                    failing,
                    args.timeout,
                    args.follow_up_grace,
                )
        if "direct" in args.only:
            forecastable = [
                c for c in customers[: args.direct_customers] if c.customer_id not in failing
            ]
            log(f"== the three scripts directly for {len(forecastable)} customers, in turn")
            b["direct"] = bench_direct(work, forecastable, files)
        backfills = b.get("backfill", {})
        if "1" in backfills:
            b["local_per_job_overhead"] = {
                size: local_overhead(backfills["1"], x, b.get("direct"))
                for size, x in backfills.items()
                if size != "1"
            }
        files.clear()
        if "plan" in args.only:
            variants = " ".join(":".join(map(str, filter(None, v))) for v in args.plan_variants)
            log(f"== run plan for {args.plan_customers} customers (runs stay queued): {variants}")
            url = args.postgres_url
            if url is None and any(v[0] == "postgres" for v in args.plan_variants):
                from benchmarks.partitions import throwaway_postgres

                url = stack.enter_context(throwaway_postgres())
            b["plan"] = {
                "method": "fresh instance with concurrency.runs.max_concurrent_runs set to 0 "
                "(Dagster accepts it: the run queue launches max_concurrent_runs - in_progress = "
                "0 runs; -1 would mean unlimited): sqlite = the repo's instance/dagster.yaml; "
                "postgres = deploy/dagster.yaml's storage (dagster-postgres) on a new database "
                "of the server, its ECS run launcher swapped for the default one. Partitions "
                "added, dagster-daemon started, forecast-backfill --all --job forecast_job, "
                "then the runs tagged with the backfill counted every 1 s until the daemon had "
                "created every run of its own plan (the run requests it stores in the backfill "
                "before creating any), or no new run for settle_seconds, or the time limit "
                "(then PARTIAL). Jobs if run = runs x 3 (one per job-launching step per run, "
                "per customer or batched: tests/test_backfill.py, "
                "test_batched_run_launches_one_job_per_step_and_reports_each_customer)",
                "postgres_server": None
                if url is None
                else ("--postgres-url" if args.postgres_url else "throwaway (partitions.py)"),
                "plans": [],
            }
            plans = b["plan"]["plans"]
            for storage, size, limit in args.plan_variants:
                plans.append(
                    bench_plan(
                        work,
                        args.plan_customers,
                        size,
                        args.plan_settle_seconds,
                        args.timeout,
                        storage,
                        url,
                        limit if limit is not None else args.plan_time_limit,
                    )
                )
                # Written after each variant: a later failure keeps the earlier ones.
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
            b["plan"]["startup_model_assumptions"] = {
                "startup_seconds_per_job": args.startup_seconds,
                "pool_limit_concurrent_jobs": args.pool_limit,
                "note": "ASSUMED, not measured: per SageMaker job a start-up S before the "
                "script runs (instance provisioning, image pull, input staging). total "
                "instance start-up = jobs x S; start-up on the critical path ~ sum over "
                "the 3 steps of ceil(jobs_per_step / P) x S",
            }
            b["plan"]["startup_model"] = startup_model(plans, args.startup_seconds, args.pool_limit)
            b["plan"]["submission_model_assumptions"] = {
                "creates_per_second": args.creates_per_second,
                "note": "MODELLED, not measured (no AWS account here): SageMaker allows about "
                "one CreateProcessingJob / CreateTrainingJob call per second per account and "
                "region (the issue's figure); the create calls are made one after another, so "
                "all jobs need jobs / rate seconds and each of the 3 steps runs / rate. Runs = "
                "the daemon's plan (all runs it would create), also where only part was created",
            }
            b["plan"]["submission_model"] = submission_model(plans, args.creates_per_second)
        results["comparison"] = comparison(results)
    finally:
        _cleanup()
        stack.close()  # the throwaway PostgreSQL server, after the daemons that use it
        results["total_seconds"] = time.perf_counter() - start
        results["machine"]["loadavg_at_end"] = list(os.getloadavg())
        files_at_end = code_files()
        results["code_at_end"] = {
            "code_sha256": code_digest(files_at_end),
            "bundle_digests": {
                job: bundle(job).digest  # type: ignore[arg-type]
                for job in ("preprocessing", "training", "inference")
            },
        }
        changed = sorted(
            name
            for name in set(files_at_start) | set(files_at_end)
            if files_at_start.get(name) != files_at_end.get(name)
        )
        results["code_changed_during_run"] = bool(changed)
        results["files_changed_during_run"] = {
            name: datetime.fromtimestamp((REPO_ROOT / name).stat().st_mtime, UTC).isoformat(
                timespec="seconds"
            )
            if (REPO_ROOT / name).exists()
            else "removed"
            for name in changed
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print(summary(results))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

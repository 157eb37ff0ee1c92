"""Tick time and peak memory of ``raw_files_sensor`` (listing) and ``raw_file_events_sensor``
(S3 event notifications on SQS) at 10,000 to 1,000,000 landed objects.

``python -m benchmarks.sensor [--sizes 10000 100000 1000000] [--stores local s3 sqs] [--out PATH]``

Store ``sqs`` is the event sensor: the same N objects in the moto bucket, then the bucket's
notification configured to a moto SQS queue (after populating, so the N objects send no
events). Its scenarios: ``steady`` (an empty queue: a SkipReason), ``new_object`` (one object put
over HTTP, so moto's S3 sends its event: one run) and ``burst`` (``BURST_CUSTOMERS`` customers x
20 objects put at once: ``MAX_RUNS_PER_TICK`` runs). The puts happen in the worker before the
timed block; each repeat puts new content. The instance holds every customer (N/20), as after
a drain. Its ReceiveMessage calls do not long-poll (``wait_seconds=0``; production waits up to
1 s on the last, empty, call: wall time, not CPU). Above ``--s3-max`` objects the listing
sensor is not run on moto (its listing is quadratic there, see below); ``--local-reduced-above``
gives the local store one repeat and no drain, warm repeat or tracemalloc.

For each size N and each store (``LocalObjectStore`` in a temporary directory, and
``S3ObjectStore`` on a moto server in its own process), N tiny objects are landed across N/20
customers (``landing/c00001/d00.csv`` ...), then each measurement runs in a **fresh
subprocess** so that its peak memory is its own:

first_tick   empty cursor, empty instance: lists N objects, requests 25 runs
steady       cursor after every customer was served (nothing new): a SkipReason
new_object   the same cursor after one more object landed (for a known customer): one run

Each is repeated ``--repeats`` times (median and every value are reported), plus one more
subprocess with tracemalloc on (``--no-tracemalloc`` skips it). At sizes up to ``--drain-max``
the whole backlog is also drained tick by tick, as the daemon would, in one subprocess (on the
stores of ``--drain-stores``: by default only the local one, since on moto 10,000 objects take
20 ticks of several seconds). On S3 each worker also reads the moto server's CPU time around
the tick, so the wall time can be split into the sensor's own CPU and the fake server's.

The evaluation is the daemon's code path: ``raw_files_sensor(context)`` inside
``dg.build_sensor_context(instance=..., cursor=..., resources={"store": store})`` on a SQLite
instance in a temporary ``DAGSTER_HOME``. Only that block is timed: interpreter start, imports
and opening the instance are not. Memory per measurement: RSS just before the tick (after
imports and ``gc.collect()``), the peak RSS during the tick (``VmHWM`` reset just before it
through ``/proc/self/clear_refs``) and ``ru_maxrss`` of the subprocess afterwards.

Layout: objects land day by day (day-major), 20 days, each customer's daily file one
timestamp of its own (distinct whole seconds, at most ``TIMESTAMP_SPACING`` apart), the local
store by ``os.utime`` and moto by setting the key's LastModified in its backend. So every
customer has files spanning the whole period (the first tick's cursor carries an ``ahead``
entry per served customer) and the drained cursor holds the objects of one second.

moto is populated through its in-process backend (the server process itself calls
``S3Backend.put_object``): PutObject over HTTP runs at a few hundred objects per second on two
cores (measured on a small probe bucket each run). The object that arrives for ``new_object``
is written through the store's own ``write_bytes`` (a real PutObject on moto).

This parent process stays small (no dagster, no boto3): on Linux a child's ``ru_maxrss`` starts
at the parent's RSS at fork, so each worker also reports its ``ru_maxrss`` at start.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "sensor_results.json"

FILES_PER_CUSTOMER = 20
BUCKET = "forecast-assets"
REGION = "eu-central-1"
# Day 0 of the landed files; day d of customer i lands at BASE + d days + i * spacing seconds.
BASE_EPOCH = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
TIMESTAMP_SPACING = 10
NEW_OBJECT_KEY = "landing/c00001/late-arrival.csv"
SCENARIOS = ("first_tick", "steady", "new_object")
SQS_SCENARIOS = ("steady", "new_object", "burst")
BURST_CUSTOMERS = 25
QUEUE_NAME = "new-files"
PROBE_PUTS = 600
PROBE_THREADS = 16
PROBE_BUCKET = "put-rate-probe"
RESULT_PREFIX = "@@RESULT "
PACKAGES = ("dagster", "dagster-aws", "boto3", "botocore", "moto", "pydantic")


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# Layout ------------------------------------------------------------------------------------------


def customer_id(i: int) -> str:
    return f"c{i:05d}"


def layout(n: int) -> Iterator[tuple[str, bytes, int]]:
    """(key, body, LastModified epoch seconds) of the N landed objects, in landing order."""
    if n % FILES_PER_CUSTOMER:
        raise ValueError(f"size {n} is not a multiple of {FILES_PER_CUSTOMER}")
    customers = n // FILES_PER_CUSTOMER
    spacing = max(1, min(TIMESTAMP_SPACING, 86_400 // customers))
    for day in range(FILES_PER_CUSTOMER):
        for i in range(1, customers + 1):
            customer = customer_id(i)
            yield (
                f"landing/{customer}/d{day:02d}.csv",
                f"{customer},{day}\n".encode(),
                BASE_EPOCH + day * 86_400 + i * spacing,
            )


def populate_local(root: Path, n: int) -> float:
    """Files where ``LocalObjectStore(root=root)`` keeps them: ``<root>/<bucket>/<key>``."""
    started = time.perf_counter()
    bucket_dir = root / BUCKET
    made: set[Path] = set()
    for key, body, epoch in layout(n):
        path = bucket_dir / key
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(body)
        ns = epoch * 1_000_000_000
        os.utime(path, ns=(ns, ns))
    return time.perf_counter() - started


# Memory of this process ------------------------------------------------------------------------


def maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in KiB."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


def cpu_seconds_of(pid: int | None) -> float | None:
    """User + system CPU seconds of another process, from /proc/<pid>/stat."""
    if pid is None:
        return None
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# Workers (each a fresh subprocess) ---------------------------------------------------------------


def make_store(spec: dict[str, Any]) -> Any:
    from resources.storage import LocalObjectStore, S3ObjectStore

    if spec["store"] == "local":
        return LocalObjectStore(root=spec["root"], bucket=BUCKET)
    return S3ObjectStore(bucket=BUCKET)


def settle_now() -> None:
    """Tick as if every file had settled: this measures listing and planning, not the latency
    ``SETTLE_SECONDS`` adds (the "one new object" was written a moment before its tick)."""
    from datetime import UTC, datetime, timedelta

    from forecast_assets import sensors

    shift = timedelta(seconds=sensors.SETTLE_SECONDS + 1)
    sensors.now = lambda: datetime.now(UTC) + shift  # type: ignore[assignment]


def worker_tick(spec: dict[str, Any]) -> dict[str, Any]:
    """One sensor evaluation, measured; optionally a second one (warm) in the same process."""
    inherited = maxrss_kib()
    import gc
    import logging
    import tracemalloc

    import dagster as dg

    from forecast_assets.sensors import raw_files_sensor

    settle_now()
    cursor_path = spec.get("cursor_file")
    cursor = Path(cursor_path).read_text() if cursor_path else None
    instance = dg.DagsterInstance.get()  # DAGSTER_HOME, as the daemon
    checked: list[int] = []

    class Checked(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found = re.search(r"(\d+) objects checked", record.getMessage())
            if found:
                checked.append(int(found.group(1)))

    def evaluate(traced: bool) -> dict[str, Any]:
        store = make_store(spec)  # a fresh resource per tick, as the daemon builds them
        checked.clear()
        gc.collect()
        before = proc_status()
        maxrss_before = maxrss_kib()
        hwm_reset = reset_peak_rss()
        if traced:
            tracemalloc.start()
        load = os.getloadavg()[0]
        server_cpu = cpu_seconds_of(spec.get("moto_pid"))
        started, cpu_started = time.perf_counter(), time.process_time()
        with dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"store": store}
        ) as context:
            context.log.addHandler(Checked())
            result = raw_files_sensor(context)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        server_after = cpu_seconds_of(spec.get("moto_pid"))
        traced_peak = None
        if traced:
            traced_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        after = proc_status()
        skipped = isinstance(result, dg.SkipReason)
        message = result.skip_message if isinstance(result, dg.SkipReason) else None
        if message:
            checked.extend(int(m) for m in re.findall(r"\((\d+) objects checked", message))
        assert isinstance(result, dg.SensorResult | dg.SkipReason), result
        new_cursor = None if isinstance(result, dg.SkipReason) else result.cursor
        requests = [] if isinstance(result, dg.SkipReason) else list(result.run_requests or [])
        partitions = (
            []
            if isinstance(result, dg.SkipReason)
            else [
                key
                for request in result.dynamic_partitions_requests or []
                for key in getattr(request, "partition_keys", [])
            ]
        )
        return {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "moto_server_cpu_seconds": (
                None if server_cpu is None or server_after is None else server_after - server_cpu
            ),
            "loadavg_1min_before": load,
            "rss_before_kib": before["VmRSS"],
            "maxrss_before_kib": maxrss_before,
            "peak_rss_during_tick_kib": after["VmHWM"] if hwm_reset else None,
            "rss_after_kib": after["VmRSS"],
            "maxrss_after_kib": maxrss_kib(),
            "tracemalloc_peak_bytes": traced_peak,
            "result": "SkipReason" if skipped else "SensorResult",
            "skip_message": message,
            "run_requests": len(requests),
            "new_partitions": len(partitions),
            "objects_listed": checked[0] if checked else None,
            "cursor_in_bytes": len((cursor or "").encode()),
            "cursor_out_bytes": None if new_cursor is None else len(new_cursor.encode()),
        }

    first = evaluate(spec.get("traced", False))
    out = {"inherited_maxrss_kib": inherited, **first}
    if spec.get("warm_repeat"):
        warm = evaluate(False)
        out["warm_seconds"] = warm["seconds"]
        out["warm_cpu_seconds"] = warm["cpu_seconds"]
    return out


def worker_prepare(spec: dict[str, Any]) -> dict[str, Any]:
    """List once (twice, for the warm figure), compute the cursor after the whole backlog is
    served, and add every customer to the partition set of the "drained" instance."""
    import dagster as dg

    from forecast_assets.partitions import customers_partitions_def
    from forecast_assets.sensors import LandingCursor, landing_root, plan_tick, split_landing

    store = make_store(spec)
    landing = landing_root(store)
    started = time.perf_counter()
    objects = store.list_objects(landing)
    list_cold = time.perf_counter() - started
    list_warm = None
    if spec.get("list_twice", True):
        started = time.perf_counter()
        store.list_objects(landing)
        list_warm = time.perf_counter() - started
    files, ignored = split_landing(landing, objects)
    customers = sorted({f.customer for f in files})
    started = time.perf_counter()
    first = plan_tick(files, LandingCursor())
    plan_first = time.perf_counter() - started
    # Served all at once: the same final cursor as 25 at a time (checked by the drain, where run).
    drained = plan_tick(files, LandingCursor(), max_runs=len(customers)).cursor
    assert not drained.ahead
    Path(spec["cursor_file"]).write_text(drained.to_json())
    name = customers_partitions_def.name
    assert name is not None
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions(name, customers)
    out: dict[str, Any] = {
        "objects": len(objects),
        "ignored_folders": len(ignored),
        "customers": len(customers),
        "list_objects_seconds_first_in_process": list_cold,
        "list_objects_seconds_second": list_warm,
        "plan_tick_seconds_first_tick": plan_first,
        "first_tick_cursor_bytes": len(first.cursor.to_json()),
        "drained_cursor_bytes": len(drained.to_json()),
        "drained_cursor_at_mark": len(drained.at_mark),
        "drained_cursor_mark": drained.mark.isoformat() if drained.mark else None,
    }
    if spec["store"] == "s3":
        page = store.client.list_objects_v2(Bucket=BUCKET, Prefix="landing/")
        out["list_page_size"] = page.get("KeyCount")
        out["list_requests_per_listing"] = -(-len(objects) // max(1, page.get("KeyCount") or 1))
    return out


def worker_drain(spec: dict[str, Any]) -> dict[str, Any]:
    """Ticks until a SkipReason, applying partition requests and the cursor as the daemon does."""
    import dagster as dg

    from forecast_assets.sensors import raw_files_sensor

    settle_now()
    instance = dg.DagsterInstance.get()
    cursor: str | None = None
    ticks = []
    started_all = time.perf_counter()
    while True:
        started = time.perf_counter()
        with dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"store": make_store(spec)}
        ) as context:
            result = raw_files_sensor(context)
        seconds = time.perf_counter() - started
        if isinstance(result, dg.SkipReason):
            ticks.append({"seconds": seconds, "runs": 0})
            break
        assert isinstance(result, dg.SensorResult)
        for request in result.dynamic_partitions_requests or []:
            assert isinstance(request, dg.AddDynamicPartitionsRequest)
            instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        cursor = result.cursor
        ticks.append(
            {
                "seconds": seconds,
                "runs": len(result.run_requests or []),
                "cursor_bytes": len((cursor or "").encode()),
            }
        )
        if len(ticks) > 10_000:
            raise RuntimeError("the backlog never drained")
    expected = Path(spec["cursor_file"]).read_text()
    return {
        "ticks_with_runs": len(ticks) - 1,
        "total_seconds": time.perf_counter() - started_all,
        "tick_seconds": [t["seconds"] for t in ticks],
        "runs_per_tick": [t["runs"] for t in ticks],
        "cursor_bytes_per_tick": [t.get("cursor_bytes") for t in ticks[:-1]],
        "final_cursor_equals_prepared": cursor == expected,
        "peak_rss_kib": maxrss_kib(),
    }


def worker_add(spec: dict[str, Any]) -> dict[str, Any]:
    """One object arrives, written through the store itself (PutObject on moto)."""
    store = make_store(spec)
    info = store.write_bytes(store.uri(*NEW_OBJECT_KEY.split("/")), b"c00001,late\n")
    return {"key": info.key, "last_modified": info.last_modified.isoformat()}


def worker_moto(spec: dict[str, Any]) -> None:
    """A moto server (as tests/conftest.py starts it), answering commands on stdin."""
    import logging
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from botocore.config import Config
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    client = boto3.client("s3", config=Config(max_pool_connections=PROBE_THREADS))

    def reply(payload: dict[str, Any]) -> None:
        print(RESULT_PREFIX + json.dumps(payload), flush=True)

    reply({"endpoint": endpoint})
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "stop":
            break
        if command["cmd"] == "status":
            reply(proc_status())
        elif command["cmd"] == "probe":
            # PutObject over HTTP, many threads: the rate that rules out that route at 100k.
            client.create_bucket(
                Bucket=PROBE_BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
            )
            started = time.perf_counter()
            with ThreadPoolExecutor(PROBE_THREADS) as pool:
                list(
                    pool.map(
                        lambda i: client.put_object(
                            Bucket=PROBE_BUCKET, Key=f"p/{i}.csv", Body=b"x\n"
                        ),
                        range(command["n"]),
                    )
                )
            seconds = time.perf_counter() - started
            # Left in place: a bucket of its own, never listed by the sensor.
            reply({"puts": command["n"], "threads": PROBE_THREADS, "seconds": seconds})
        elif command["cmd"] == "populate":
            from moto.s3.models import s3_backends

            client.create_bucket(
                Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
            )
            partition, account = s3_backends.bucket_accounts[BUCKET]
            backend = s3_backends[account][partition]
            started = time.perf_counter()
            count = 0
            for key, body, epoch in layout(command["n"]):
                fake = backend.put_object(BUCKET, key, body)
                # moto keeps naive UTC datetimes; S3 lists LastModified in whole seconds.
                fake.last_modified = datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)
                count += 1
            reply({"objects": count, "seconds": time.perf_counter() - started})
        elif command["cmd"] == "notify":
            # After populating: from here on every object put sends its event to the queue.
            sqs = boto3.client("sqs")
            url = sqs.create_queue(QueueName=QUEUE_NAME)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            client.put_bucket_notification_configuration(
                Bucket=BUCKET,
                NotificationConfiguration={
                    "QueueConfigurations": [
                        {
                            "QueueArn": arn,
                            "Events": ["s3:ObjectCreated:*"],
                            "Filter": {
                                "Key": {"FilterRules": [{"Name": "prefix", "Value": "landing/"}]}
                            },
                        }
                    ]
                },
            )
            sqs.purge_queue(QueueUrl=url)  # the s3:TestEvent
            reply({"queue_url": url})
    server.stop()


def worker_partitions(spec: dict[str, Any]) -> dict[str, Any]:
    """Every customer of the layout in the partition set, in order (what a drain leaves)."""
    import dagster as dg

    from forecast_assets.partitions import customers_partitions_def

    name = customers_partitions_def.name
    assert name is not None
    customers = [customer_id(i) for i in range(1, spec["objects"] // FILES_PER_CUSTOMER + 1)]
    started = time.perf_counter()
    dg.DagsterInstance.get().add_dynamic_partitions(name, customers)
    return {"customers": len(customers), "seconds": time.perf_counter() - started}


def worker_sqs_tick(spec: dict[str, Any]) -> dict[str, Any]:
    """Put the scenario's new objects (moto sends their events), then one timed evaluation of
    ``raw_file_events_sensor``."""
    inherited = maxrss_kib()
    import gc

    import dagster as dg

    from forecast_assets.sqs_sensor import raw_file_events_sensor
    from resources.queue import SqsQueue

    settle_now()
    instance = dg.DagsterInstance.get()
    store = make_store(spec)
    queue = SqsQueue(queue_url=spec["queue_url"], wait_seconds=0)
    nonce = f"{time.time_ns()}"
    puts = 0
    if spec["scenario"] == "new_object":
        store.write_bytes(store.uri(*NEW_OBJECT_KEY.split("/")), f"c00001,{nonce}\n".encode())
        puts = 1
    elif spec["scenario"] == "burst":
        for i in range(1, BURST_CUSTOMERS + 1):
            for day in range(FILES_PER_CUSTOMER):
                key = f"landing/{customer_id(i)}/burst-{day:02d}.csv"
                store.write_bytes(store.uri(*key.split("/")), f"{i},{day},{nonce}\n".encode())
                puts += 1
    waiting = queue.backlog()
    gc.collect()
    before = proc_status()
    hwm_reset = reset_peak_rss()
    load = os.getloadavg()[0]
    server_cpu = cpu_seconds_of(spec.get("moto_pid"))
    started, cpu_started = time.perf_counter(), time.process_time()
    with dg.build_sensor_context(
        instance=instance, resources={"store": store, "new_files_queue": queue}
    ) as context:
        result = raw_file_events_sensor(context)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    server_after = cpu_seconds_of(spec.get("moto_pid"))
    after = proc_status()
    assert isinstance(result, dg.SensorResult | dg.SkipReason), result
    requests = [] if isinstance(result, dg.SkipReason) else list(result.run_requests or [])
    return {
        "inherited_maxrss_kib": inherited,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "moto_server_cpu_seconds": (
            None if server_cpu is None or server_after is None else server_after - server_cpu
        ),
        "loadavg_1min_before": load,
        "rss_before_kib": before["VmRSS"],
        "peak_rss_during_tick_kib": after["VmHWM"] if hwm_reset else None,
        "rss_after_kib": after["VmRSS"],
        "maxrss_after_kib": maxrss_kib(),
        "objects_put": puts,
        "messages_waiting_before": waiting["visible"],
        "messages_left_after": sum(queue.backlog().values()),
        "result": "SkipReason" if isinstance(result, dg.SkipReason) else "SensorResult",
        "skip_message": result.skip_message if isinstance(result, dg.SkipReason) else None,
        "run_requests": len(requests),
        "new_partitions": 0,
        "objects_listed": 0,
        "cursor_in_bytes": 0,
        "cursor_out_bytes": None,
    }


WORKERS = {
    "tick": worker_tick,
    "prepare": worker_prepare,
    "drain": worker_drain,
    "add": worker_add,
    "partitions": worker_partitions,
    "sqs_tick": worker_sqs_tick,
}


def worker_main(raw: str) -> None:
    spec = json.loads(raw)
    if spec["worker"] == "moto":
        worker_moto(spec)
        return
    result = WORKERS[spec["worker"]](spec)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# Parent ---------------------------------------------------------------------------------------------


def base_env(work: Path) -> dict[str, str]:
    """This environment without any AWS setting of the developer's, with moto's fake ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.pop("FORECAST_ENV", None)
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "FORECAST_DATA_HOME": str(work / "data_home"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def run_worker(spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Run one worker subprocess; its result, plus ru_maxrss of exactly that pid (wait4)."""
    cmd = [sys.executable, "-m", "benchmarks.sensor", "--worker", json.dumps(spec)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode or not lines:
        raise RuntimeError(
            f"worker {spec['worker']} failed ({proc.returncode}):\n{stdout[-3000:]}\n"
            f"{stderr[-5000:]}"
        )
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    result["wait4_maxrss_kib"] = usage.ru_maxrss
    return result


class Moto:
    """The moto server subprocess and its command channel."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self._log = log_path.open("wb")
        spec = json.dumps({"worker": "moto"})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.sensor", "--worker", spec],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.endpoint = self._read()["endpoint"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(RESULT_PREFIX):
                return dict(json.loads(line[len(RESULT_PREFIX) :]))
        raise RuntimeError(f"moto server exited ({self.proc.wait()}); see {self._log.name}")

    def call(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"cmd": "stop"}) + "\n")
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and every value of the per-run figures, and the run's constant outputs."""

    def values(name: str) -> list[Any]:
        return [r.get(name) for r in runs]

    def med(name: str) -> float | None:
        found = [v for v in values(name) if v is not None]
        return statistics.median(found) if found else None

    increments = [
        (r["peak_rss_during_tick_kib"] or r["maxrss_after_kib"]) - r["rss_before_kib"] for r in runs
    ]
    for r, inc in zip(runs, increments, strict=True):
        r["rss_increment_kib"] = inc
    out: dict[str, Any] = {}
    for name in (
        "seconds",
        "cpu_seconds",
        "moto_server_cpu_seconds",
        "loadavg_1min_before",
        "warm_seconds",
        "warm_cpu_seconds",
        "rss_before_kib",
        "peak_rss_during_tick_kib",
        "rss_increment_kib",
        "maxrss_after_kib",
        "wait4_maxrss_kib",
        "inherited_maxrss_kib",
    ):
        if any(v is not None for v in values(name)):
            out[name] = {"median": med(name), "values": values(name)}
    for name in (
        "result",
        "run_requests",
        "new_partitions",
        "objects_listed",
        "cursor_in_bytes",
        "cursor_out_bytes",
        "skip_message",
    ):
        distinct = {json.dumps(v) for v in values(name)}
        out[name] = runs[0][name] if len(distinct) == 1 else values(name)
    return out


def measure_store(
    store: str, n: int, work: Path, args: argparse.Namespace, env: dict[str, str]
) -> dict[str, Any]:
    base = work / f"{store}-{n}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    homes = {name: base / f"dagster_{name}" for name in ("empty", "drained", "drain")}
    for home in homes.values():
        home.mkdir()
    cursor_file = base / "drained_cursor.json"
    spec: dict[str, Any] = {"store": store, "root": str(base / "s3")}
    out: dict[str, Any] = {"objects": n, "customers": n // FILES_PER_CUSTOMER}
    reduced = (store == "s3" and n > args.s3_reduced_above) or (
        store == "local" and n > args.local_reduced_above
    )
    protocol = {
        "repeats": args.s3_reduced_repeats if reduced else args.repeats,
        "warm_repeat": args.warm_repeat and not reduced,
        "tracemalloc": args.tracemalloc and not reduced,
        "full_drain": n <= args.drain_max and store in args.drain_stores,
    }
    if reduced and store == "s3":
        protocol["reduced"] = (
            f"S3 above {args.s3_reduced_above} objects: moto's ListObjectsV2 collects and "
            "sorts the whole bucket for every page, so a listing grows quadratically (see "
            "prepare.list_objects_seconds_first_in_process)"
        )
    elif reduced:
        protocol["reduced"] = (
            f"local above {args.local_reduced_above} objects: one repeat, no warm repeat, no "
            "tracemalloc (a tick is about a minute)"
        )
        protocol["repeats"] = args.s3_reduced_repeats
    out["protocol"] = protocol
    moto = None
    try:
        if store == "local":
            seconds = populate_local(base / "s3", n)
            out["setup"] = {"how": "files written directly + os.utime", "seconds": seconds}
        else:
            moto = Moto(env, base / "moto.log")
            env = {**env, "AWS_ENDPOINT_URL": moto.endpoint}
            spec["moto_pid"] = moto.proc.pid
            probe = moto.call(cmd="probe", n=PROBE_PUTS)
            populated = moto.call(cmd="populate", n=n)
            out["setup"] = {
                "how": "moto in-process backend (S3Backend.put_object in the server process)",
                "seconds": populated["seconds"],
                "http_put_probe": {
                    **probe,
                    "puts_per_second": probe["puts"] / probe["seconds"],
                },
            }
        log(f"{store} {n}: populated in {out['setup']['seconds']:.1f} s")

        def worker(kind: str, home: str, **extra: Any) -> dict[str, Any]:
            return run_worker(
                {"worker": kind, **spec, **extra}, {**env, "DAGSTER_HOME": str(homes[home])}
            )

        out["prepare"] = worker(
            "prepare", "drained", cursor_file=str(cursor_file), list_twice=not reduced
        )
        log(
            f"{store} {n}: prepared ({out['prepare']['list_objects_seconds_first_in_process']:.2f} s to list)"
        )
        if protocol["full_drain"]:
            drain = worker("drain", "drain", cursor_file=str(cursor_file))
            out["full_drain"] = drain
            log(
                f"{store} {n}: drained in {drain['ticks_with_runs']} ticks, {drain['total_seconds']:.1f} s"
            )

        scenarios: dict[str, Any] = {}
        setups = {
            "first_tick": ("empty", None),
            "steady": ("drained", str(cursor_file)),
            "new_object": ("drained", str(cursor_file)),
        }
        for scenario in SCENARIOS:
            if scenario == "new_object":
                out["new_object_written"] = worker("add", "drained")
            home, cursor = setups[scenario]
            runs = []
            for _ in range(protocol["repeats"]):
                runs.append(
                    worker("tick", home, cursor_file=cursor, warm_repeat=protocol["warm_repeat"])
                )
                log(
                    f"{store} {n} {scenario}: {runs[-1]['seconds']:.3f} s, peak RSS during tick {runs[-1]['peak_rss_during_tick_kib']} KiB"
                )
            summary = summarize(runs)
            if protocol["tracemalloc"]:
                traced = worker("tick", home, cursor_file=cursor, traced=True)
                summary["tracemalloc"] = {
                    "peak_bytes": traced["tracemalloc_peak_bytes"],
                    "seconds_while_tracing": traced["seconds"],
                }
                log(
                    f"{store} {n} {scenario}: tracemalloc peak {traced['tracemalloc_peak_bytes']} B"
                )
            scenarios[scenario] = summary
        out["scenarios"] = scenarios
        if moto is not None:
            out["moto_server_memory_kib"] = moto.call(cmd="status")
    finally:
        if moto is not None:
            moto.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return out


def measure_sqs(
    n: int, work: Path, args: argparse.Namespace, env: dict[str, str]
) -> dict[str, Any]:
    """raw_file_events_sensor with N objects in the bucket: it reads the queue, never the bucket."""
    base = work / f"sqs-{n}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    home = base / "dagster_drained"
    home.mkdir()
    out: dict[str, Any] = {
        "objects": n,
        "customers": n // FILES_PER_CUSTOMER,
        "protocol": {"repeats": args.repeats, "scenarios": list(SQS_SCENARIOS)},
    }
    moto = Moto(env, base / "moto.log")
    try:
        env = {**env, "AWS_ENDPOINT_URL": moto.endpoint, "DAGSTER_HOME": str(home)}
        populated = moto.call(cmd="populate", n=n)
        out["setup"] = {
            "how": "moto in-process backend (S3Backend.put_object in the server process), then "
            "the bucket notification to an SQS queue",
            "seconds": populated["seconds"],
        }
        log(f"sqs {n}: populated in {populated['seconds']:.1f} s")
        queue_url = moto.call(cmd="notify")["queue_url"]
        out["partitions"] = run_worker({"worker": "partitions", "objects": n}, env)
        spec = {"store": "s3", "queue_url": queue_url, "moto_pid": moto.proc.pid}
        scenarios: dict[str, Any] = {}
        for scenario in SQS_SCENARIOS:
            runs = []
            for _ in range(args.repeats):
                runs.append(run_worker({"worker": "sqs_tick", "scenario": scenario, **spec}, env))
                log(
                    f"sqs {n} {scenario}: {runs[-1]['seconds']:.3f} s, "
                    f"{runs[-1]['run_requests']} runs, "
                    f"{runs[-1]['messages_waiting_before']} messages"
                )
            summary = summarize(runs)
            for name in ("objects_put", "messages_waiting_before", "messages_left_after"):
                summary[name] = [r[name] for r in runs]
            scenarios[scenario] = summary
        out["scenarios"] = scenarios
        out["moto_server_memory_kib"] = moto.call(cmd="status")
    finally:
        moto.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return out


def machine_info() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    digests = {
        path: hashlib.sha256((REPO_ROOT / path).read_bytes()).hexdigest()[:16]
        for path in (
            "forecast_assets/sensors.py",
            "forecast_assets/sqs_sensor.py",
            "resources/queue.py",
            "resources/storage.py",
        )
    }
    return {
        "cpu_count": os.cpu_count(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "code_sha256": digests,
        "loadavg_at_start": list(os.getloadavg()),
    }


def ratios(results: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    """Largest size over smallest, per store and scenario, of the median figures."""
    if len(sizes) < 2:
        return {}
    small, large = min(sizes), max(sizes)
    label = f"{large}/{small}"
    out: dict[str, Any] = {"sizes": label, "objects": large / small}
    for store, by_size in results.items():
        if str(small) not in by_size or str(large) not in by_size:
            continue
        lo, hi = by_size[str(small)]["scenarios"], by_size[str(large)]["scenarios"]
        per: dict[str, Any] = {}
        for scenario in lo.keys() & hi.keys():
            entry = {}
            for figure in (
                "seconds",
                "cpu_seconds",
                "moto_server_cpu_seconds",
                "warm_seconds",
                "rss_increment_kib",
            ):
                a = lo[scenario].get(figure, {}).get("median")
                b = hi[scenario].get(figure, {}).get("median")
                if a and b is not None:
                    entry[figure] = b / a
            per[scenario] = entry
        out[store] = per
    return out


def summary_table(report: dict[str, Any]) -> str:
    """The medians as a Markdown table, one row per store, size and scenario."""
    rows = [
        "| store | objects | tick | s (median) | CPU s | moto CPU s "
        "| peak RSS - RSS before, MiB | tracemalloc peak, MiB | cursor out, B | runs | listed | n |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for store, by_size in report["results"].items():
        for n, entry in by_size.items():
            for scenario, s in entry.get("scenarios", {}).items():
                traced = s.get("tracemalloc", {}).get("peak_bytes")
                server = s.get("moto_server_cpu_seconds", {}).get("median")
                rows.append(
                    f"| {store} | {int(n):,} | {scenario} | {s['seconds']['median']:.2f} "
                    f"| {s['cpu_seconds']['median']:.2f} "
                    f"| {'-' if server is None else f'{server:.2f}'} "
                    f"| {s['rss_increment_kib']['median'] / 1024:.1f} "
                    f"| {'-' if traced is None else f'{traced / 2**20:.1f}'} "
                    f"| {s['cursor_out_bytes'] if s['cursor_out_bytes'] is not None else '-'} "
                    f"| {s['run_requests']} | {s['objects_listed']} "
                    f"| {len(s['seconds']['values'])} |"
                )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument(
        "--stores", nargs="+", choices=["local", "s3", "sqs"], default=["local", "s3", "sqs"]
    )
    parser.add_argument(
        "--s3-max",
        type=int,
        default=100_000,
        help="skip the listing sensor on moto above this size (its listing is quadratic there)",
    )
    parser.add_argument(
        "--local-reduced-above",
        type=int,
        default=100_000,
        help="local sizes above this get one repeat, no warm repeat, no tracemalloc",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument("--keep", action="store_true", help="keep the landed objects")
    parser.add_argument(
        "--drain-max", type=int, default=10_000, help="drain the backlog up to this size"
    )
    parser.add_argument("--drain-stores", nargs="*", choices=["local", "s3"], default=["local"])
    parser.add_argument("--no-tracemalloc", dest="tracemalloc", action="store_false")
    parser.add_argument(
        "--no-warm-repeat",
        dest="warm_repeat",
        action="store_false",
        help="skip the second evaluation in the same process",
    )
    parser.add_argument(
        "--s3-reduced-above",
        type=int,
        default=10_000,
        help="S3 sizes above this get --s3-reduced-repeats, no warm repeat, no tracemalloc",
    )
    parser.add_argument("--s3-reduced-repeats", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0

    started = time.perf_counter()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="sensor-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = base_env(work)
    report: dict[str, Any] = {
        "benchmark": "raw_files_sensor and raw_file_events_sensor tick",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.sensor", *sys.argv[1:]]),
        "machine": machine_info(),
        "method": {
            "files_per_customer": FILES_PER_CUSTOMER,
            "repeats": args.repeats,
            "timestamps": f"day-major, {FILES_PER_CUSTOMER} days from "
            f"{datetime.fromtimestamp(BASE_EPOCH, UTC).date()}, one distinct second per object",
            "timed": "build_sensor_context(...) + raw_files_sensor(context), in a fresh subprocess",
            "rss_increment": "peak RSS during the tick (VmHWM reset just before) minus RSS "
            "just before it",
            "warm_seconds": "a second evaluation in the same process (local: ETag cache warm, "
            "as in the long-lived code server)",
        },
        "results": {},
    }
    try:
        for store in args.stores:
            report["results"][store] = {}
        for n in args.sizes:
            for store in args.stores:
                log(f"{store}: {n} objects")
                if store == "sqs":
                    report["results"][store][str(n)] = measure_sqs(n, work, args, env)
                elif store == "s3" and n > args.s3_max:
                    report["skipped"] = {
                        **report.get("skipped", {}),
                        f"s3 {n}": f"above --s3-max {args.s3_max}: moto's listing sorts the "
                        "whole bucket for every 1,000-key page",
                    }
                else:
                    report["results"][store][str(n)] = measure_store(store, n, work, args, env)
    finally:
        if not args.keep and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    report["ratios"] = ratios(report["results"], args.sizes)
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    report["orchestrator_maxrss_kib"] = maxrss_kib()
    report["total_seconds"] = time.perf_counter() - started
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(summary_table(report), file=sys.stderr)
    log(f"wrote {args.out} ({report['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""raw_files_sensor, evaluated tick by tick with build_sensor_context as the daemon would.

Each tick's dynamic partition requests are applied to the instance and its cursor is carried to
the next, so a sequence of ticks here is what the sensor daemon does with the same listing. Small
landing areas on the local store (where timestamps can be set by hand), and 10,000 objects across
500 customers on the moto S3 server.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from botocore.exceptions import EndpointConnectionError
from dagster_aws.s3 import S3Resource

from forecast_assets import sensors
from forecast_assets.partitions import customers_partitions_def
from forecast_assets.sensors import MAX_RUNS_PER_TICK, raw_files_sensor
from resources.storage import LocalObjectStore, ObjectStore, S3ObjectStore
from tests.conftest import land as land_demo

PARTITIONS = customers_partitions_def.name or "customers"


@pytest.fixture(autouse=True)
def settled_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ticks happen after the settle time: every file written so far is old enough to handle.
    ``test_young_files_wait_*`` sets the clock itself."""
    monkeypatch.setattr(
        sensors, "now", lambda: datetime.now(UTC) + timedelta(seconds=sensors.SETTLE_SECONDS + 1)
    )


@dataclass
class Tick:
    result: dg.SensorResult | dg.SkipReason
    seconds: float

    @property
    def runs(self) -> list[dg.RunRequest]:
        if isinstance(self.result, dg.SkipReason):
            return []
        return list(self.result.run_requests or [])

    @property
    def added(self) -> list[str]:
        if isinstance(self.result, dg.SkipReason):
            return []
        return [k for r in self.result.dynamic_partitions_requests or [] for k in r.partition_keys]

    @property
    def skip_message(self) -> str:
        """The tick's skip reason: a SkipReason, or a SensorResult that requests nothing but moves
        the cursor (over files found consumed already)."""
        result = self.result
        if isinstance(result, dg.SensorResult) and not result.run_requests and result.skip_reason:
            return result.skip_reason.skip_message or ""
        assert isinstance(result, dg.SkipReason), f"expected a skip, got {result}"
        return result.skip_message or ""


@dataclass
class Daemon:
    """Plays the sensor daemon: evaluates ticks, applies partition requests, keeps the cursor."""

    instance: dg.DagsterInstance
    store: ObjectStore
    cursor: str | None = None
    ticks: list[Tick] = field(default_factory=list)

    def tick(self) -> Tick:
        started = time.perf_counter()
        # As a context manager: the S3 store's nested S3Resource is set up and torn down there.
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources={"store": self.store}
        ) as context:
            result = raw_files_sensor(context)
        assert isinstance(result, dg.SensorResult | dg.SkipReason)
        tick = Tick(result, time.perf_counter() - started)
        if isinstance(result, dg.SensorResult):
            for request in result.dynamic_partitions_requests or []:
                assert isinstance(request, dg.AddDynamicPartitionsRequest)
                assert request.partitions_def_name == PARTITIONS
                self.instance.add_dynamic_partitions(PARTITIONS, list(request.partition_keys))
            if result.cursor is not None:
                self.cursor = result.cursor
        self.ticks.append(tick)
        return tick

    def drain(self, max_ticks: int = 100) -> list[Tick]:
        """Ticks until one skips; every tick before it (the skip is self.ticks[-1])."""
        ran: list[Tick] = []
        for _ in range(max_ticks):
            tick = self.tick()
            if isinstance(tick.result, dg.SkipReason):
                return ran
            ran.append(tick)
        raise AssertionError(f"no SkipReason after {max_ticks} ticks")

    def partitions(self) -> set[str]:
        return set(self.instance.get_dynamic_partitions(PARTITIONS))


def runs_by_customer(ticks: list[Tick]) -> Counter[str]:
    return Counter(r.partition_key or "" for t in ticks for r in t.runs)


def all_run_keys(ticks: list[Tick]) -> list[str]:
    return [r.run_key for t in ticks for r in t.runs if r.run_key]


def landing(store: ObjectStore, customer: str, name: str) -> str:
    return store.uri("landing", customer, name)


def local_path(store: LocalObjectStore, uri: str) -> Path:
    return store.base / store.bucket / uri.split("/", 3)[3]


def set_mtime(store: LocalObjectStore, uri: str, seconds: int) -> None:
    """What ``touch -d`` or ``cp -p`` does: a LastModified of our choosing."""
    ns = seconds * 1_000_000_000
    os.utime(local_path(store, uri), ns=(ns, ns))


def customers(n: int, prefix: str = "cust") -> list[str]:
    return [f"{prefix}-{i:03d}" for i in range(n)]


@pytest.fixture
def daemon(instance: dg.DagsterInstance, store: LocalObjectStore) -> Daemon:
    return Daemon(instance, store)


# Local store ---------------------------------------------------------------------------------------


def test_nothing_landed_skips_naming_the_prefix(daemon: Daemon):
    tick = daemon.tick()
    assert tick.skip_message == (
        "no new or changed files under s3://forecast-assets/landing/ (0 objects checked)"
    )
    assert daemon.cursor is None


def test_first_tick_adds_customers_and_is_bounded_later_ticks_drain(
    daemon: Daemon, store: LocalObjectStore
):
    ids = customers(MAX_RUNS_PER_TICK + 5)
    for customer in ids:
        for name in ("a.csv", "b.csv"):
            store.write_bytes(landing(store, customer, name), f"{customer},{name}\n".encode())

    first = daemon.tick()
    assert len(first.runs) == MAX_RUNS_PER_TICK
    assert sorted(first.added) == sorted(r.partition_key or "" for r in first.runs)
    assert daemon.partitions() == set(first.added)
    assert all(r.tags["forecast-assets/changed-files"] == "2" for r in first.runs)

    rest = daemon.drain()
    assert [len(t.runs) for t in rest] == [5]
    assert runs_by_customer([first, *rest]) == dict.fromkeys(ids, 1)
    keys = all_run_keys([first, *rest])
    assert len(keys) == len(set(keys)) == len(ids)
    assert daemon.partitions() == set(ids)
    assert daemon.ticks[-1].skip_message == (
        f"no new or changed files under s3://forecast-assets/landing/ ({2 * len(ids)} objects "
        "checked)"
    )
    # Evaluating the last tick again (a daemon restart before its cursor was saved) would request
    # the same run keys, which Dagster refuses to launch twice.
    replay = Daemon(daemon.instance, store, cursor=None)
    assert set(all_run_keys(replay.drain())) == set(keys)


def test_customers_whose_files_span_the_cut_get_one_run(daemon: Daemon, store: LocalObjectStore):
    """Everyone's files interleaved in time (a backfill uploaded in parallel): the bound cuts
    through every customer's files, yet nobody gets a second, redundant run."""
    ids = customers(60)
    base = 1_750_000_000
    for i, customer in enumerate(ids):
        for j in range(4):
            uri = landing(store, customer, f"{j}.csv")
            store.write_bytes(uri, f"{customer},{j}\n".encode())
            set_mtime(store, uri, base + 100 * j + i % 7)

    ticks = daemon.drain()
    assert [len(t.runs) for t in ticks] == [25, 25, 10]
    assert runs_by_customer(ticks) == dict.fromkeys(ids, 1)
    assert all(r.tags["forecast-assets/changed-files"] == "4" for t in ticks for r in t.runs)
    cursor = json.loads(daemon.cursor or "")
    assert cursor["mark"] == "2025-06-15T15:11:46+00:00"  # base + 306, the newest file
    assert "ahead" not in cursor


def test_files_arriving_between_ticks_are_picked_up(daemon: Daemon, store: LocalObjectStore):
    for customer in ("acme", "globex"):
        store.write_bytes(landing(store, customer, "jan.csv"), b"1\n")
    first = daemon.drain()
    assert runs_by_customer(first) == {"acme": 1, "globex": 1}

    store.write_bytes(landing(store, "globex", "feb.csv"), b"2\n")
    store.write_bytes(landing(store, "initech", "jan.csv"), b"3\n")
    tick = daemon.tick()
    assert runs_by_customer([tick]) == {"globex": 1, "initech": 1}
    assert tick.added == ["initech"]  # globex is in the partition set already
    assert all(r.tags["forecast-assets/changed-files"] == "1" for r in tick.runs)
    assert daemon.tick().skip_message.endswith("(4 objects checked)")


def test_a_rewritten_file_triggers_a_new_run_with_a_new_run_key(
    daemon: Daemon, store: LocalObjectStore
):
    uri = landing(store, "acme", "jan.csv")
    store.write_bytes(uri, b"original\n")
    store.write_bytes(landing(store, "globex", "jan.csv"), b"other\n")
    (first,) = daemon.drain()
    old_key = next(r.run_key for r in first.runs if r.partition_key == "acme")

    store.write_bytes(uri, b"corrected\n")
    tick = daemon.tick()
    assert [r.partition_key for r in tick.runs] == ["acme"]
    assert tick.runs[0].run_key != old_key
    assert tick.added == []
    assert isinstance(daemon.tick().result, dg.SkipReason)


def test_files_sharing_a_timestamp_are_all_picked_up_when_the_bound_cuts_through_them(
    daemon: Daemon, store: LocalObjectStore
):
    same = 1_760_000_000
    ids = customers(MAX_RUNS_PER_TICK + 5)
    for customer in ids:
        uri = landing(store, customer, "data.csv")
        store.write_bytes(uri, customer.encode())
        set_mtime(store, uri, same)

    first = daemon.tick()
    assert len(first.runs) == MAX_RUNS_PER_TICK
    cursor = json.loads(daemon.cursor or "")
    # The mark stops at the shared second, remembering which files in it were handled.
    assert cursor["mark"] == "2025-10-09T08:53:20+00:00"
    assert len(cursor["at_mark"]) == MAX_RUNS_PER_TICK

    second = daemon.tick()
    assert len(second.runs) == 5
    assert runs_by_customer([first, second]) == dict.fromkeys(ids, 1)
    assert isinstance(daemon.tick().result, dg.SkipReason)

    # Files landing later but with that same LastModified are new, not mistaken for handled.
    late = [landing(store, ids[0], "late.csv"), landing(store, "newcomer", "data.csv")]
    for uri in late:
        store.write_bytes(uri, b"late\n")
        set_mtime(store, uri, same)
    tick = daemon.tick()
    assert runs_by_customer([tick]) == {ids[0]: 1, "newcomer": 1}
    assert isinstance(daemon.tick().result, dg.SkipReason)


def test_a_file_older_than_the_mark_is_missed_as_documented(
    daemon: Daemon, store: LocalObjectStore
):
    """The cursor's one assumption (see the sensors module): LastModified only increases. An
    mtime set back by hand breaks it; S3 cannot."""
    store.write_bytes(landing(store, "acme", "jan.csv"), b"1\n")
    daemon.drain()
    uri = landing(store, "acme", "backdated.csv")
    store.write_bytes(uri, b"2\n")
    set_mtime(store, uri, 1_600_000_000)
    assert isinstance(daemon.tick().result, dg.SkipReason)


@pytest.mark.parametrize("settle", [sensors.SETTLE_SECONDS, 0])
def test_young_files_wait_for_the_settle_time_so_a_slow_upload_is_not_missed(
    daemon: Daemon, store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch, settle: int
):
    """S3 stamps an upload's start but lists it at its end: a slow upload started at T completes
    after a fast one started at T+10 was listed. Without the settle time it is missed."""
    start = 1_700_000_000
    clock = [start + 20]
    monkeypatch.setattr(sensors, "SETTLE_SECONDS", settle)
    monkeypatch.setattr(sensors, "now", lambda: datetime.fromtimestamp(clock[0], tz=UTC))
    fast = landing(store, "acme", "fast.csv")
    store.write_bytes(fast, b"1\n")
    set_mtime(store, fast, start + 10)

    first = daemon.tick()  # the slow upload (globex, started at T) is still in flight
    store.write_bytes(slow := landing(store, "globex", "slow.csv"), b"2\n")
    set_mtime(store, slow, start)
    clock[0] = start + 200
    later = daemon.drain()

    if settle:
        assert first.skip_message.endswith(
            f"(1 objects checked; 1 file(s) younger than {settle} s wait for a later tick)"
        )
        assert runs_by_customer(later) == {"acme": 1, "globex": 1}
    else:  # what the settle time prevents
        assert runs_by_customer([first]) == {"acme": 1}
        assert runs_by_customer(later) == {}


def test_invalid_customer_folders_are_ignored_with_a_message(
    daemon: Daemon, store: LocalObjectStore, capsys: pytest.CaptureFixture[str]
):
    store.write_bytes(landing(store, "acme", "jan.csv"), b"1\n")
    store.write_bytes(landing(store, "Bad_Customer", "jan.csv"), b"2\n")
    store.write_bytes(landing(store, "Bad_Customer", "feb.csv"), b"3\n")
    store.write_bytes(landing(store, "-dash", "jan.csv"), b"4\n")
    store.write_bytes(store.uri("landing", "README.txt"), b"not a customer\n")

    tick = daemon.tick()
    assert [r.partition_key for r in tick.runs] == ["acme"]
    assert tick.added == ["acme"]
    logged = capsys.readouterr().err
    assert (
        "WARNING - ignoring 2 object(s) under s3://forecast-assets/landing/Bad_Customer/: "
        "invalid customer id 'Bad_Customer'" in logged
    )
    assert "ignoring 1 object(s) under s3://forecast-assets/landing/-dash/" in logged
    assert (
        "ignoring 1 object(s) under s3://forecast-assets/landing/: not inside a customer folder"
        in logged
    )
    assert "4 object(s) in 3 invalid customer folder(s) ignored" in logged

    assert daemon.tick().skip_message == (
        "no new or changed files under s3://forecast-assets/landing/ (5 objects checked; "
        "4 object(s) in 3 invalid customer folder(s) ignored)"
    )
    assert daemon.partitions() == {"acme"}


def test_objects_that_are_not_meter_files_start_no_run(daemon: Daemon, store: LocalObjectStore):
    for name in (".DS_Store", "_SUCCESS", "upload.tmp", "~$book.xlsx", "jan.csv.part"):
        store.write_bytes(landing(store, "acme", name), b"x\n")
    store.write_bytes(store.uri("landing", ".DS_Store"), b"x\n")  # beside the customer folders
    tick = daemon.tick()
    assert tick.skip_message == (
        "no new or changed files under s3://forecast-assets/landing/ (6 objects checked; "
        "6 object(s) skipped as not meter files (folder markers, hidden or temporary files))"
    )
    assert daemon.partitions() == set()
    assert daemon.cursor is None

    store.write_bytes(landing(store, "acme", "jan.csv"), b"1\n")
    tick = daemon.tick()
    assert [r.partition_key for r in tick.runs] == ["acme"]
    assert tick.runs[0].tags["forecast-assets/changed-files"] == "1"
    # A skipped file written later moves nothing: still no new run.
    store.write_bytes(landing(store, "acme", "feb.csv.crdownload"), b"2\n")
    assert daemon.tick().skip_message.endswith(
        "(8 objects checked; 7 object(s) skipped as not meter files (folder markers, hidden or "
        "temporary files))"
    )


# Files a materialization already consumed ------------------------------------------------------

CONSUMED = ["hansa-offices", "polar-cold-storage"]


def materialize_raw_load(
    instance: dg.DagsterInstance, store: ObjectStore, customers: list[str]
) -> None:
    """What ``make demo`` (or a run from the UI) does before the sensor is ever turned on."""
    from forecast_assets.assets.raw import raw_load

    instance.add_dynamic_partitions(PARTITIONS, customers)
    for customer in customers:
        result = dg.materialize(
            [raw_load], partition_key=customer, instance=instance, resources={"store": store}
        )
        assert result.success


def test_files_a_materialization_already_consumed_start_no_run(
    daemon: Daemon, store: LocalObjectStore, instance: dg.DagsterInstance
):
    land_demo(store, CONSUMED, days=10)
    materialize_raw_load(instance, store, CONSUMED)

    # The sensor's first tick sees every file as new to it, but raw_load consumed them all.
    first = daemon.tick()
    assert first.runs == []
    message = first.skip_message
    assert message.startswith("nothing new to run under s3://forecast-assets/landing/ (")
    assert (
        "2 customer(s) whose new files their latest raw_load already consumed (same keys and "
        "ETags), so not run: hansa-offices, polar-cold-storage)" in message
    )
    # ... and the cursor moved over them: the next tick has nothing to look up.
    assert daemon.cursor is not None
    assert daemon.tick().skip_message.endswith("objects checked)")

    # The same bytes uploaded again (a new LastModified, the same ETag) are still consumed.
    (hansa_file, *_) = sorted(
        o.uri for o in store.list_objects(landing(store, "hansa-offices", ""))
    )
    store.write_bytes(hansa_file, store.read_bytes(hansa_file))
    assert "so not run: hansa-offices)" in daemon.tick().skip_message

    # One file of one customer changes: exactly that customer runs, for exactly that file.
    (polar_file, *_) = sorted(
        o.uri for o in store.list_objects(landing(store, "polar-cold-storage", ""))
    )
    store.write_bytes(polar_file, store.read_bytes(polar_file) + b"\n")
    tick = daemon.tick()
    assert [r.partition_key for r in tick.runs] == ["polar-cold-storage"]
    assert tick.runs[0].tags["forecast-assets/changed-files"] == "1"
    assert tick.added == []
    assert isinstance(daemon.tick().result, dg.SkipReason)

    # Once raw_load has consumed the change, the same file is done, whoever looks at it.
    materialize_raw_load(instance, store, ["polar-cold-storage"])
    fresh = Daemon(instance, store)
    assert fresh.tick().runs == []


def test_a_customer_outside_the_partition_set_runs_whatever_the_store_holds(
    daemon: Daemon, store: LocalObjectStore, instance: dg.DagsterInstance
):
    """An instance without the customer has no record of it: its manifest is not looked up."""
    land_demo(store, ["hansa-offices"], days=10)
    materialize_raw_load(instance, store, ["hansa-offices"])
    instance.delete_dynamic_partition(PARTITIONS, "hansa-offices")
    tick = daemon.tick()
    assert [r.partition_key for r in tick.runs] == ["hansa-offices"]
    assert tick.added == ["hansa-offices"]


def test_a_broken_manifest_pointer_fails_the_tick(
    daemon: Daemon, store: LocalObjectStore, instance: dg.DagsterInstance
):
    """Never "nothing consumed" (a run for every customer) nor "all consumed" (nothing runs)."""
    from forecast_assets import publication

    land_demo(store, ["hansa-offices"], days=10)
    materialize_raw_load(instance, store, ["hansa-offices"])
    store.write_bytes(
        publication.pointer_uri(store, publication.MANIFESTS, "hansa-offices"), b"{not json"
    )
    with pytest.raises(dg.Failure, match="is not a publication record"):
        daemon.tick()


def test_look_ups_of_consumed_files_are_bounded_per_tick():
    """plan_tick alone: 250 customers all consumed, looked up at most max_checked per tick, and
    each one once."""
    from resources.storage import ObjectInfo

    start = datetime(2025, 1, 1, tzinfo=UTC)
    files = [
        sensors.LandingFile(
            f"c-{i:03d}",
            ObjectInfo(
                uri=f"s3://b/landing/c-{i:03d}/{day}.csv",
                key=f"landing/c-{i:03d}/{day}.csv",
                size=1,
                etag=f'"{i:016x}{day:016x}"',
                last_modified=start + timedelta(seconds=i),
            ),
        )
        for i in range(250)
        for day in range(3)
    ]
    looked_up: list[str] = []

    def consumed(customer: str, changed: list[sensors.LandingFile]) -> bool:
        looked_up.append(customer)
        assert len(changed) == 3
        return customer != "c-120"  # the one customer with something new

    cursor = sensors.LandingCursor()
    per_tick, runs = [], []
    while True:
        before = len(looked_up)
        plan = sensors.plan_tick(files, cursor, consumed=consumed, max_checked=100)
        if not plan.runs and not plan.done:
            break
        per_tick.append(len(looked_up) - before)
        runs += list(plan.runs)
        cursor = plan.cursor
    assert per_tick == [100, 100, 50]
    assert runs == ["c-120"]
    assert sorted(looked_up) == sorted({f.customer for f in files})
    assert cursor.mark == files[-1].info.last_modified


def test_an_unreadable_cursor_raises(daemon: Daemon, store: LocalObjectStore):
    store.write_bytes(landing(store, "acme", "jan.csv"), b"1\n")
    daemon.cursor = "not json"
    with pytest.raises(ValueError, match="cannot read its cursor"):
        daemon.tick()


def test_an_unreachable_store_raises(instance: dg.DagsterInstance, aws_env: str):
    """A store that cannot be listed fails the tick; it is never taken for "nothing new"."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens here once the socket is closed
    store = S3ObjectStore(
        bucket="forecast-assets",
        s3=S3Resource(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1),
    )
    with pytest.raises(EndpointConnectionError):
        Daemon(instance, store).tick()


# S3 (moto server) ---------------------------------------------------------------------------------

S3_CUSTOMERS = 500
FILES_PER_CUSTOMER = 20


def put_objects(bucket: str, bodies: dict[str, bytes], threads: int = 16) -> None:
    """PutObject for every key, on a thread pool (moto handles ~150 puts/s on two cores)."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", config=Config(max_pool_connections=threads))
    with ThreadPoolExecutor(threads) as pool:
        list(
            pool.map(
                lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), bodies.items()
            )
        )


def test_s3_folder_markers_start_no_run_and_bad_keys_reach_raw_load(
    s3_store: S3ObjectStore, instance: dg.DagsterInstance
):
    client, bucket = s3_store.client, s3_store.bucket
    # What the S3 console's "Create folder" writes, for a customer and inside one.
    for key in ("landing/", "landing/acme/", "landing/acme/sub/", "landing/acme/.DS_Store"):
        client.put_object(Bucket=bucket, Key=key, Body=b"")
    daemon = Daemon(instance, s3_store)
    tick = daemon.tick()
    assert tick.skip_message.endswith(
        "(4 objects checked; 4 object(s) skipped as not meter files (folder markers, hidden or "
        "temporary files))"
    )
    assert daemon.partitions() == set()

    client.put_object(Bucket=bucket, Key="landing/acme/sub/jan.csv", Body=b"1\n")
    tick = daemon.tick()
    assert [r.partition_key for r in tick.runs] == ["acme"]
    assert tick.runs[0].tags["forecast-assets/changed-files"] == "1"

    # A key no store can map to a file is not skipped: its run's raw_load names it.
    client.put_object(Bucket=bucket, Key="landing/globex//jan.csv", Body=b"1\n")
    tick = daemon.tick()
    assert [r.partition_key for r in tick.runs] == ["globex"]


@pytest.mark.slow
def test_ten_thousand_objects_on_s3(
    s3_store: S3ObjectStore,
    instance: dg.DagsterInstance,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
):
    caplog.set_level(logging.ERROR, logger="werkzeug")  # moto's request log
    ids = customers(S3_CUSTOMERS, prefix="meter")
    bodies = {
        f"landing/{customer}/{day:02d}.csv": f"{customer},{day}\n".encode()
        for day in range(FILES_PER_CUSTOMER)
        for customer in ids
    }
    invalid = {"landing/Not_A_Customer/x.csv": b"x", "landing/stray.csv": b"y"}
    started = time.perf_counter()
    put_objects(s3_store.bucket, {**bodies, **invalid})
    setup_seconds = time.perf_counter() - started
    total = len(bodies) + len(invalid)
    prefix = f"s3://{s3_store.bucket}/landing/"

    daemon = Daemon(instance, s3_store)
    cursor_sizes = []
    first = daemon.tick()
    cursor_sizes.append(len(daemon.cursor or ""))
    assert len(first.runs) == MAX_RUNS_PER_TICK
    assert sorted(first.added) == sorted(r.partition_key or "" for r in first.runs)

    rest = []
    while not isinstance((tick := daemon.tick()).result, dg.SkipReason):
        rest.append(tick)
        cursor_sizes.append(len(daemon.cursor or ""))
        assert len(rest) < S3_CUSTOMERS, "the backlog never drained"
    drained = [first, *rest]
    assert all(len(t.runs) <= MAX_RUNS_PER_TICK for t in drained)
    assert len(drained) == S3_CUSTOMERS // MAX_RUNS_PER_TICK
    assert runs_by_customer(drained) == dict.fromkeys(ids, 1)
    keys = all_run_keys(drained)
    assert len(keys) == len(set(keys))
    assert daemon.partitions() == set(ids)
    assert all(
        r.tags["forecast-assets/changed-files"] == str(FILES_PER_CUSTOMER)
        for t in drained
        for r in t.runs
    )
    assert tick.skip_message == (
        f"no new or changed files under {prefix} ({total} objects checked; "
        "2 object(s) in 2 invalid customer folder(s) ignored)"
    )
    # Small: a timestamp and the objects of its second, never a list of every key (~700 kB).
    final = json.loads(daemon.cursor or "")
    assert "ahead" not in final
    assert len(daemon.cursor or "") < 20_000
    assert max(cursor_sizes) < 64_000
    assert "invalid customer id 'Not_A_Customer'" in capsys.readouterr().err

    # New files between ticks: one for a known customer, one for a customer never seen.
    put_objects(
        s3_store.bucket, {"landing/meter-007/new.csv": b"new\n", "landing/fresh/a.csv": b"a\n"}
    )
    arrivals = daemon.tick()
    assert runs_by_customer([arrivals]) == {"meter-007": 1, "fresh": 1}
    assert arrivals.added == ["fresh"]

    # A rewrite (new content, so a new ETag) of a file handled long ago, likely within the very
    # second of the mark: a new run, under a new run key.
    put_objects(s3_store.bucket, {"landing/meter-123/05.csv": b"corrected\n"})
    rewrite = daemon.tick()
    assert [r.partition_key for r in rewrite.runs] == ["meter-123"]
    assert rewrite.runs[0].run_key not in keys
    assert rewrite.runs[0].tags["forecast-assets/changed-files"] == "1"
    assert daemon.tick().skip_message.startswith(f"no new or changed files under {prefix} (")

    timings = [round(t.seconds, 2) for t in daemon.ticks]
    with capsys.disabled():
        print(
            f"\n{total} objects put in {setup_seconds:.1f} s; {len(daemon.ticks)} ticks, "
            f"{total}-{total + 2} objects listed per tick, tick seconds {timings}; "
            f"cursor bytes per draining tick {cursor_sizes}; final cursor "
            f"{len(daemon.cursor or '')} bytes"
        )


def test_cursor_is_independent_of_the_number_of_objects():
    """plan_tick alone, at 100,000 objects: the cursor holds the mark's second, not the keys."""
    from datetime import UTC, datetime, timedelta

    from resources.storage import ObjectInfo

    start = datetime(2025, 1, 1, tzinfo=UTC)
    files = [
        sensors.LandingFile(
            f"c-{i % 1000}",
            ObjectInfo(
                uri=f"s3://b/landing/c-{i % 1000}/{i}.csv",
                key=f"landing/c-{i % 1000}/{i}.csv",
                size=1,
                etag=f'"{i:032x}"',
                last_modified=start + timedelta(seconds=i // 10),  # 10 objects per second
            ),
        )
        for i in range(100_000)
    ]
    cursor = sensors.LandingCursor()
    sizes = []
    while (plan := sensors.plan_tick(files, cursor)).runs:
        cursor = plan.cursor
        sizes.append(len(cursor.to_json()))
    assert len(sizes) == 1000 // MAX_RUNS_PER_TICK
    # Every customer has files in every second, so until the last tick the mark cannot pass
    # them and the cursor holds one entry per customer served: it grows with customers waiting,
    # never with objects, and empties when the backlog is drained.
    assert max(sizes) < 64_000
    assert cursor.mark == files[-1].info.last_modified
    assert len(cursor.at_mark) == 10
    assert len(cursor.to_json()) < 400


# Batches ------------------------------------------------------------------------------------------


def test_run_batches_count_the_runs_batch_ranges_makes():
    """RunBatches' incremental count, customer by customer, against batch_ranges on the same
    choice, for random partition sets, choices and batch sizes."""
    import random

    from forecast_assets.partitions import batch_ranges

    rng = random.Random(12)
    for _ in range(300):
        ordered = customers(rng.randint(1, 40))
        size = rng.randint(1, 6)
        batches = sensors.RunBatches(lambda ordered=ordered: ordered, size)
        chosen: list[str] = []
        candidates = [*ordered, "new-1", "new-2"]
        rng.shuffle(candidates)
        for customer in candidates[: rng.randint(1, len(candidates))]:
            expected_cost = batches.cost(customer)
            batches.add(customer)
            chosen.append(customer)
            known = [c for c in chosen if c in ordered]
            expected = len(batch_ranges(ordered, known, size)) + len(chosen) - len(known)
            assert batches.runs == expected, (ordered, size, chosen)
            assert expected_cost <= 1


def test_batches_fill_the_run_bound_with_consecutive_customers():
    """plan_tick with batches: 60 known customers changed, batch size 10, 4 runs allowed: 40
    customers in 4 runs; the rest wait, and the cursor stops at the first of them."""
    from resources.storage import ObjectInfo

    start = datetime(2025, 1, 1, tzinfo=UTC)
    ordered = customers(60)
    files = [
        sensors.LandingFile(
            c,
            ObjectInfo(f"s3://b/landing/{c}/a.csv", f"landing/{c}/a.csv", 1, f'"{i}"', start),
        )
        for i, c in enumerate(ordered)
    ]
    plan = sensors.plan_tick(
        files, sensors.LandingCursor(), max_runs=4, batches=sensors.RunBatches(lambda: ordered, 10)
    )
    assert list(plan.runs) == ordered[:40]
    assert plan.waiting == ordered[40:]
    requests, new = sensors.run_requests_for(plan.runs, ordered, 10)
    assert new == []
    assert [
        (r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
        for r in requests
    ] == [(ordered[i], ordered[i + 9]) for i in range(0, 40, 10)]
    assert all(r.tags[sensors.BATCH_CUSTOMERS_TAG] == "10" for r in requests)
    # A batch's key names its ends and digests every customer's pairs: idempotent, and new
    # content (a new ETag) for any one customer makes a new key.
    again, _ = sensors.run_requests_for(plan.runs, ordered, 10)
    assert [r.run_key for r in again] == [r.run_key for r in requests]
    changed = dict(plan.runs)
    old = changed[ordered[5]][0]
    changed[ordered[5]] = [
        sensors.LandingFile(old.customer, ObjectInfo(old.info.uri, old.info.key, 1, '"x"', start))
    ]
    rekeyed, _ = sensors.run_requests_for(changed, ordered, 10)
    assert rekeyed[0].run_key != requests[0].run_key
    assert [r.run_key for r in rekeyed[1:]] == [r.run_key for r in requests[1:]]


def test_a_sensor_tick_launches_range_runs_that_materialize_exactly_their_batch(
    tmp_path: Path, data_home: Path, monkeypatch: pytest.MonkeyPatch
):
    """The sensor daemon's own code: raw_files_sensor with FORECAST_BACKFILL_BATCH_SIZE=3 over
    four changed customers of the partition set, with one unchanged customer between them, and
    one customer new this tick. Two range runs and one single run are created; executing a range
    run's tags materializes raw_load for exactly its customers."""
    from dagster._core.storage.dagster_run import RunsFilter
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    from forecast_assets.assets.raw import raw_load
    from tests.test_automation_ticks import run_sensor_tick, stored_ticks

    monkeypatch.setenv("FORECAST_BACKFILL_BATCH_SIZE", "3")
    store = LocalObjectStore()
    changed = ["hansa-offices", "polar-cold-storage", "lindenschule", "rhein-metallbau"]
    land_demo(store, [*changed, "nordmarkt-retail"], days=10)
    with _workspace_context(tmp_path) as workspace:
        instance = workspace.instance
        # Partition order: a quiet customer (no files) between the two stretches.
        instance.add_dynamic_partitions(
            PARTITIONS, ["hansa-offices", "polar-cold-storage", "quiet", *changed[2:]]
        )
        remote = run_sensor_tick(workspace, "raw_files_sensor")
        (tick,) = stored_ticks(instance, remote)
        runs = [instance.get_run_by_id(run_id) for run_id in tick.run_ids]
        assert all(runs)
        ranges = sorted(
            (r.tags[ASSET_PARTITION_RANGE_START_TAG], r.tags[ASSET_PARTITION_RANGE_END_TAG])
            for r in runs
            if r and ASSET_PARTITION_RANGE_START_TAG in r.tags
        )
        assert ranges == [
            ("hansa-offices", "polar-cold-storage"),
            ("lindenschule", "rhein-metallbau"),
        ]
        singles = [
            r.tags.get("dagster/partition") for r in runs if r and "dagster/partition" in r.tags
        ]
        assert singles == ["nordmarkt-retail"]  # new this tick: a run of its own
        assert instance.get_dynamic_partitions(PARTITIONS)[-1] == "nordmarkt-retail"
        assert len(instance.get_runs(RunsFilter(job_name="forecast_job"))) == 3

        batch = next(
            r for r in runs if r and r.tags.get(ASSET_PARTITION_RANGE_START_TAG) == "hansa-offices"
        )
        assert batch.tags[sensors.BATCH_CUSTOMERS_TAG] == "2"
        range_tags = {
            k: v
            for k, v in batch.tags.items()
            if k in (ASSET_PARTITION_RANGE_START_TAG, ASSET_PARTITION_RANGE_END_TAG)
        }
        result = dg.materialize(
            [raw_load], instance=instance, tags=range_tags, resources={"store": store}
        )
        assert result.success
        materialized = {
            e.materialization.partition for e in result.get_asset_materialization_events()
        }
        assert materialized == {"hansa-offices", "polar-cold-storage"}  # not "quiet"


@contextmanager
def _workspace_context(tmp_path: Path) -> Iterator[Any]:
    """The code location of workspace.yaml in this process, on an instance whose runs wait in
    the queue (as tests.test_automation_ticks' fixtures; here after the test set its env)."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

    home = tmp_path / "dagster_home_ws"
    home.mkdir()
    overrides = {
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
        }
    }
    origin = InProcessCodeLocationOrigin(
        loadable_target_origin=LoadableTargetOrigin(
            module_name="forecast_assets.definitions",
            attribute="defs",
            working_directory=str(Path(__file__).resolve().parents[1]),
        ),
        location_name="forecast_assets",
    )
    with (
        dg.instance_for_test(temp_dir=str(home), overrides=overrides) as instance,
        create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as ws,
    ):
        yield ws

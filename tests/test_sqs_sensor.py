"""raw_file_events_sensor against moto: a bucket whose notification configuration sends
ObjectCreated events under landing/ to an SQS queue, as deploy/README.md sets it up.

moto 5.2.5 sends these events itself when an object is put (S3's JSON: URL-encoded key, size,
unquoted eTag, eventTime), and an ``s3:TestEvent`` when the notification is configured, so the
messages here are the ones moto's S3 wrote. Every call is a real boto3 call to the moto server.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import dagster as dg
import pytest

from forecast_assets import sensors, sqs_sensor
from forecast_assets.partitions import customers_partitions_def
from forecast_assets.sensors import MAX_RUNS_PER_TICK, raw_files_sensor
from forecast_assets.sqs_sensor import raw_file_events_sensor
from resources.queue import FailedDelete, SqsQueue
from resources.storage import S3ObjectStore
from tests.conftest import TEST_REGION
from tests.test_iam import ACCOUNT_ID, Request, allowing_statements

PARTITIONS = customers_partitions_def.name or "customers"


@pytest.fixture(autouse=True)
def settled_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ticks happen after the settle time (test_young_files_* moves the clock itself)."""
    monkeypatch.setattr(
        sensors, "now", lambda: datetime.now(UTC) + timedelta(seconds=sensors.SETTLE_SECONDS + 1)
    )


@pytest.fixture
def queue(s3_store: S3ObjectStore) -> SqsQueue:
    """A queue receiving the bucket's ObjectCreated events under landing/ (and the TestEvent
    S3 sends when the notification is configured)."""
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName=f"new-files-{s3_store.bucket}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    s3_store.client.put_bucket_notification_configuration(
        Bucket=s3_store.bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": "forecast-assets-new-files",
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "landing/"}]}},
                }
            ]
        },
    )
    # Short polls: moto answers every visible message (real SQS would need the long poll).
    return SqsQueue(queue_url=url, wait_seconds=0)


@dataclass
class Tick:
    result: dg.SensorResult | dg.SkipReason

    @property
    def runs(self) -> list[dg.RunRequest]:
        if isinstance(self.result, dg.SkipReason):
            return []
        return list(self.result.run_requests or [])

    @property
    def message(self) -> str:
        if isinstance(self.result, dg.SkipReason):
            return self.result.skip_message or ""
        return ""


@dataclass
class Daemon:
    """Plays the sensor daemon for the event sensor: applies its partition requests."""

    instance: dg.DagsterInstance
    store: S3ObjectStore
    queue: SqsQueue
    ticks: list[Tick] = field(default_factory=list)

    def tick(self) -> Tick:
        with dg.build_sensor_context(
            instance=self.instance,
            resources={"store": self.store, "new_files_queue": self.queue},
        ) as context:
            result = raw_file_events_sensor(context)
        assert isinstance(result, dg.SensorResult | dg.SkipReason)
        if isinstance(result, dg.SensorResult):
            for request in result.dynamic_partitions_requests or []:
                assert isinstance(request, dg.AddDynamicPartitionsRequest)
                self.instance.add_dynamic_partitions(PARTITIONS, list(request.partition_keys))
        tick = Tick(result)
        self.ticks.append(tick)
        return tick


@pytest.fixture
def daemon(instance: dg.DagsterInstance, s3_store: S3ObjectStore, queue: SqsQueue) -> Daemon:
    return Daemon(instance, s3_store, queue)


def put(store: S3ObjectStore, key: str, body: bytes) -> None:
    store.client.put_object(Bucket=store.bucket, Key=key, Body=body)


def backlog(queue: SqsQueue) -> dict[str, int]:
    return queue.backlog()


def wait_until_visible(queue: SqsQueue, count: int, timeout: float = 30) -> None:
    """Until ``count`` messages are visible again (their visibility timeout ran out)."""
    deadline = time.monotonic() + timeout
    while queue.backlog()["visible"] < count:
        assert time.monotonic() < deadline, f"messages never came back: {queue.backlog()}"
        time.sleep(0.2)


def listing_run_keys(instance: dg.DagsterInstance, store: S3ObjectStore) -> dict[str, str]:
    """What raw_files_sensor requests for the same bucket, from an empty cursor."""
    with dg.build_sensor_context(instance=instance, resources={"store": store}) as context:
        result = raw_files_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return {r.partition_key or "": r.run_key or "" for r in result.run_requests or []}


def by_customer(tick: Tick) -> dict[str, str]:
    return {r.partition_key or "": r.run_key or "" for r in tick.runs}


# ----------------------------------------------------------------------------------------------


def test_the_test_event_is_dropped_and_nothing_runs(daemon: Daemon, queue: SqsQueue):
    tick = daemon.tick()
    assert tick.runs == []
    assert "1 s3:TestEvent message(s) dropped" in tick.message
    assert "1 message(s) deleted, 0 left" in tick.message
    assert backlog(queue) == {"visible": 0, "in_flight": 0, "delayed": 0}
    assert "no messages in" in daemon.tick().message


def test_new_files_run_with_the_listing_sensors_run_keys(
    daemon: Daemon, s3_store: S3ObjectStore, queue: SqsQueue, tmp_path
):
    # A space (S3 sends '+') and a literal '+' (S3 sends %2B) in keys.
    put(s3_store, "landing/acme/jan 2025.csv", b"1\n")
    put(s3_store, "landing/acme/feb+mar.csv", b"2\n")
    put(s3_store, "landing/globex/jan.csv", b"3\n")
    put(s3_store, "elsewhere/not-landing.csv", b"x\n")  # outside the notification's filter

    tick = daemon.tick()
    assert sorted(by_customer(tick)) == ["acme", "globex"]
    assert {r.partition_key: r.tags[sensors.CHANGED_FILES_TAG] for r in tick.runs} == {
        "acme": "2",
        "globex": "1",
    }
    assert isinstance(tick.result, dg.SensorResult)
    added = [k for r in tick.result.dynamic_partitions_requests or [] for k in r.partition_keys]
    assert sorted(added) == ["acme", "globex"]
    assert backlog(queue) == {"visible": 0, "in_flight": 0, "delayed": 0}

    (tmp_path / "other").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "other")) as fresh:
        assert by_customer(tick) == listing_run_keys(fresh, s3_store)

    # A rewrite: a new ETag, a new run key; the second tick sees only that file.
    put(s3_store, "landing/acme/jan 2025.csv", b"corrected\n")
    rewrite = daemon.tick()
    assert list(by_customer(rewrite)) == ["acme"]
    assert rewrite.runs[0].tags[sensors.CHANGED_FILES_TAG] == "1"
    assert rewrite.runs[0].run_key != by_customer(tick)["acme"]


def test_duplicates_and_redelivery_request_the_same_run_once(
    daemon: Daemon,
    s3_store: S3ObjectStore,
    queue: SqsQueue,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    daemon.tick()  # the TestEvent
    put(s3_store, "landing/acme/jan.csv", b"1\n")
    # S3 delivers at least once: the same event a second time.
    (original,) = queue.receive(max_messages=10, visibility_timeout=0)
    queue.client.send_message(QueueUrl=queue.queue_url, MessageBody=original.body)
    wait_until_visible(queue, 2)

    # A tick that fails after reading (here: planning raises) deletes nothing ...
    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the tick failed half-way")

    monkeypatch.setattr(sqs_sensor, "VISIBILITY_TIMEOUT_SECONDS", 1)
    with monkeypatch.context() as patched:
        patched.setattr(sqs_sensor, "decide", fail)
        with pytest.raises(RuntimeError, match="half-way"):
            daemon.tick()
    # ... so both messages come back after their visibility timeout,
    wait_until_visible(queue, 2)
    capsys.readouterr()
    first = daemon.tick()
    # and the two copies make one run.
    assert len(first.runs) == 1
    assert "2 message(s) deleted, 0 left" in capsys.readouterr().err
    assert backlog(queue)["visible"] == backlog(queue)["in_flight"] == 0

    # A delete SQS refuses is logged, not raised: the message comes back and is planned into
    # the same run key, which Dagster does not launch twice for this sensor.
    put(s3_store, "landing/globex/jan.csv", b"2\n")
    with monkeypatch.context() as patched:
        patched.setattr(
            SqsQueue,
            "delete",
            lambda self, messages: [
                FailedDelete(m.message_id, "ReceiptHandleIsInvalid: stale") for m in messages
            ],
        )
        refused = daemon.tick()
    assert "SQS did not delete message" in capsys.readouterr().err
    wait_until_visible(queue, 1)
    again = daemon.tick()
    assert [r.run_key for r in again.runs] == [r.run_key for r in refused.runs]
    assert "1 message(s) delivered before" in capsys.readouterr().err
    assert backlog(queue)["visible"] == backlog(queue)["in_flight"] == 0


def test_young_files_wait_in_the_queue_until_they_settle(
    daemon: Daemon, s3_store: S3ObjectStore, queue: SqsQueue, monkeypatch: pytest.MonkeyPatch
):
    clock = [datetime.now(UTC)]
    monkeypatch.setattr(sensors, "now", lambda: clock[0])
    monkeypatch.setattr(sqs_sensor, "VISIBILITY_TIMEOUT_SECONDS", 1)
    daemon.tick()  # the TestEvent
    put(s3_store, "landing/acme/jan.csv", b"1\n")
    young = daemon.tick()
    assert young.runs == []
    assert f"1 file(s) younger than {sensors.SETTLE_SECONDS} s wait for a later tick" in (
        young.message
    )
    assert "0 message(s) deleted, 1 left for a later tick" in young.message
    wait_until_visible(queue, 1)  # not deleted: back after the visibility timeout

    clock[0] += timedelta(seconds=sensors.SETTLE_SECONDS + 1)
    settled = daemon.tick()
    assert [r.partition_key for r in settled.runs] == ["acme"]
    assert backlog(queue)["visible"] == backlog(queue)["in_flight"] == 0


def test_runs_are_bounded_per_tick_and_the_rest_stay_in_the_queue(
    daemon: Daemon,
    s3_store: S3ObjectStore,
    queue: SqsQueue,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    monkeypatch.setattr(sqs_sensor, "VISIBILITY_TIMEOUT_SECONDS", 3)
    daemon.tick()  # the TestEvent
    ids = [f"cust-{i:03d}" for i in range(MAX_RUNS_PER_TICK + 5)]
    for customer in ids:
        put(s3_store, f"landing/{customer}/a.csv", customer.encode())
    put(s3_store, "landing/cust-000/b.csv", b"second file of the first customer")

    capsys.readouterr()
    first = daemon.tick()
    assert len(first.runs) == MAX_RUNS_PER_TICK
    logged = capsys.readouterr().err
    assert "5 customer(s) left for the next tick" in logged
    # Left: exactly the messages of the customers not served, received and hidden, not deleted.
    assert backlog(queue) == {"visible": 0, "in_flight": 5, "delayed": 0}
    assert f"{MAX_RUNS_PER_TICK + 1} message(s) deleted, 5 left for a later tick" in logged

    wait_until_visible(queue, 5)
    second = daemon.tick()
    assert len(second.runs) == 5
    served = [r.partition_key for t in (first, second) for r in t.runs]
    assert sorted(served) == ids  # each once
    assert backlog(queue)["visible"] == backlog(queue)["in_flight"] == 0


def test_bad_folders_and_malformed_messages_are_logged_and_dropped(
    daemon: Daemon,
    s3_store: S3ObjectStore,
    queue: SqsQueue,
    capsys: pytest.CaptureFixture[str],
):
    daemon.tick()  # the TestEvent
    put(s3_store, "landing/acme/jan.csv", b"1\n")
    put(s3_store, "landing/Bad_Customer/jan.csv", b"2\n")
    put(s3_store, "landing/acme/.DS_Store", b"x")
    send = queue.client.send_message
    send(QueueUrl=queue.queue_url, MessageBody="not json at all")
    send(QueueUrl=queue.queue_url, MessageBody=json.dumps({"Records": [{"s3": {}}]}))
    send(QueueUrl=queue.queue_url, MessageBody=json.dumps({"hello": "world"}))

    tick = daemon.tick()
    assert [r.partition_key for r in tick.runs] == ["acme"]
    logged = capsys.readouterr().err
    assert (
        f"ignoring 1 object(s) under s3://{s3_store.bucket}/landing/Bad_Customer/: "
        "invalid customer id 'Bad_Customer'" in logged
    )
    assert logged.count("dropping message") == 3
    assert "not JSON" in logged and "no Records and not an s3:TestEvent" in logged
    assert "an S3 record without a usable" in logged
    assert "3 message(s) that are not S3 events dropped" in logged
    assert "1 object(s) skipped as not meter files" in logged
    assert backlog(queue)["visible"] == backlog(queue)["in_flight"] == 0
    assert daemon.instance.get_dynamic_partitions(PARTITIONS) == ["acme"]


def test_files_a_materialization_already_consumed_start_no_run(
    daemon: Daemon, s3_store: S3ObjectStore, queue: SqsQueue, instance: dg.DagsterInstance
):
    from forecast_assets.demo import land_demo_files
    from tests.conftest import TEST_END
    from tests.test_sensors import materialize_raw_load

    daemon.tick()  # the TestEvent
    land_demo_files(s3_store, ["hansa-offices"], days=10, end=TEST_END, seed=0)
    materialize_raw_load(instance, s3_store, ["hansa-offices"])
    tick = daemon.tick()
    assert tick.runs == []
    assert "so not run: hansa-offices" in tick.message
    assert backlog(queue)["visible"] == backlog(queue)["in_flight"] == 0

    # One file changes: exactly that customer, for exactly that file.
    key = sorted(
        o.key for o in s3_store.list_objects(s3_store.uri("landing", "hansa-offices") + "/")
    )[0]
    put(s3_store, key, s3_store.read_bytes(f"s3://{s3_store.bucket}/{key}") + b"\n")
    changed = daemon.tick()
    assert [r.partition_key for r in changed.runs] == ["hansa-offices"]
    assert changed.runs[0].tags[sensors.CHANGED_FILES_TAG] == "1"


def test_batches_of_known_customers_and_new_customers_alone(
    daemon: Daemon,
    s3_store: S3ObjectStore,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("FORECAST_BACKFILL_BATCH_SIZE", "10")
    instance.add_dynamic_partitions(PARTITIONS, [f"known-{i}" for i in range(4)])
    daemon.tick()  # the TestEvent
    for customer in ("known-0", "known-1", "known-3", "brand-new"):
        put(s3_store, f"landing/{customer}/a.csv", customer.encode())
    tick = daemon.tick()
    described = sorted(
        (
            r.partition_key
            or f"{r.tags['dagster/asset_partition_range_start']}.."
            f"{r.tags['dagster/asset_partition_range_end']}"
        )
        for r in tick.runs
    )
    # known-2 did not change: two stretches; the new customer alone.
    assert described == ["brand-new", "known-0..known-1", "known-3"]


# Configuration and IAM -----------------------------------------------------------------------


def test_the_sensors_per_environment(monkeypatch: pytest.MonkeyPatch):
    from forecast_assets.definitions import build_definitions
    from forecast_assets.environment import new_files_queue_url

    def names(environment: str) -> dict[str, int | None]:
        defs = build_definitions(environment)  # type: ignore[arg-type]
        sensors_ = {s.name: s for s in defs.sensors or []}
        return {
            name: sensors_[name].minimum_interval_seconds
            for name in ("raw_files_sensor", "raw_file_events_sensor")
            if name in sensors_
        }

    monkeypatch.delenv("FORECAST_NEW_FILES_QUEUE_URL", raising=False)
    assert names("local") == {"raw_files_sensor": 60}
    assert names("sagemaker") == {"raw_files_sensor": 60}
    url = f"https://sqs.{TEST_REGION}.amazonaws.com/{ACCOUNT_ID}/forecast-new-files"
    monkeypatch.setenv("FORECAST_NEW_FILES_QUEUE_URL", url)
    assert new_files_queue_url() == url
    assert names("local") == {"raw_files_sensor": 60}
    assert names("sagemaker") == {
        "raw_files_sensor": sensors.RECONCILE_INTERVAL_SECONDS,
        "raw_file_events_sensor": 30,
    }
    monkeypatch.setenv("FORECAST_NEW_FILES_QUEUE_URL", url + ".fifo")
    with pytest.raises(ValueError, match="not a standard SQS queue URL"):
        new_files_queue_url()


def _policy(name: str, queue_name: str) -> dict[str, Any]:
    """An iam/ file with its placeholders filled, as iam/README.md shows."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "iam" / name).read_text()
    for key, value in {
        "REGION": TEST_REGION,
        "ACCOUNT_ID": ACCOUNT_ID,
        "QUEUE_NAME": queue_name,
        "BUCKET": "test-bucket",
    }.items():
        text = text.replace("${" + key + "}", value)
    assert "${" not in text
    return json.loads(text)


def test_the_iam_policy_allows_every_queue_call_and_nothing_else(
    daemon: Daemon, s3_store: S3ObjectStore, queue: SqsQueue, monkeypatch: pytest.MonkeyPatch
):
    import resources.queue as queue_module

    calls: list[str] = []
    make_client = queue_module.boto3.client

    def recording_client(*args: Any, **kwargs: Any) -> Any:
        # Every client the resource makes (the sensor context builds its own copy of it).
        client = make_client(*args, **kwargs)
        client.meta.events.register(
            "provide-client-params.sqs", lambda params, model, **_: calls.append(model.name)
        )
        return client

    monkeypatch.setattr(queue_module.boto3, "client", recording_client)
    queue = SqsQueue(queue_url=queue.queue_url, wait_seconds=0)
    daemon.queue = queue
    daemon.tick()
    put(s3_store, "landing/acme/jan.csv", b"1\n")
    daemon.tick()
    queue.backlog()
    name = queue.queue_url.rsplit("/", 1)[1]
    arn = f"arn:aws:sqs:{TEST_REGION}:{ACCOUNT_ID}:{name}"
    # DeleteMessageBatch is authorized as sqs:DeleteMessage.
    action = {"DeleteMessageBatch": "sqs:DeleteMessage"}
    requests = [Request(action.get(c, f"sqs:{c}"), arn) for c in calls]
    assert {r.action for r in requests} == {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
    }
    role = _policy("new-files-queue-policy.json", name)
    assert [r for r in requests if not allowing_statements(role, r)] == []
    granted = {a for s in role["Statement"] for a in s["Action"]}
    assert granted == {r.action for r in requests}
    other = f"arn:aws:sqs:{TEST_REGION}:{ACCOUNT_ID}:someone-elses-queue"
    assert not allowing_statements(role, Request("sqs:ReceiveMessage", other))
    assert not allowing_statements(role, Request("sqs:SendMessage", arn))
    # The queue's own policy lets only S3, for this bucket and account, send to it.
    send = Request(
        "sqs:SendMessage",
        arn,
        (
            ("aws:SourceArn", "arn:aws:s3:::test-bucket"),
            ("aws:SourceAccount", ACCOUNT_ID),
        ),
    )
    queue_policy = _policy("new-files-queue-access-policy.json", name)
    assert queue_policy["Statement"][0]["Principal"] == {"Service": "s3.amazonaws.com"}
    assert allowing_statements(queue_policy, send)
    wrong_bucket = Request(
        "sqs:SendMessage",
        arn,
        (("aws:SourceArn", "arn:aws:s3:::other-bucket"), ("aws:SourceAccount", ACCOUNT_ID)),
    )
    assert not allowing_statements(queue_policy, wrong_bucket)

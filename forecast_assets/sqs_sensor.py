"""raw_file_events_sensor: raw_files_sensor's runs, from S3 event notifications instead of a listing.

Listing ``landing/`` every tick costs time in proportion to the bucket (about 6 s of CPU at
100,000 objects). In the ``sagemaker`` environment the bucket can instead send an event for every
object created under ``landing/`` to an SQS queue (``deploy/README.md``, *New files*); this sensor
reads that queue, so a tick costs what is new, not what is there.

Each tick receives at most ``MAX_MESSAGES_PER_TICK`` messages, turns their S3 records into the
files a listing would have shown (key, ETag, size; the event's time stands for LastModified) and
plans them with the listing sensor's own functions (``forecast_assets.sensors``: customer folders
and skipped files, the settle rule, the bound on runs per tick, files a raw_load already
consumed, run keys and batches). A file's run key is therefore the one ``raw_files_sensor``
gives the same files.

When messages are deleted
-------------------------
A message is deleted once the tick has decided every file in it: its customer's run is among
the tick's run requests, or its customer's manifest shows the file consumed, or it is not a file
to run (a folder marker, an invalid customer folder, another bucket or prefix, an event other
than ObjectCreated, S3's ``s3:TestEvent``, a message that is not an S3 event at all: each is
logged). Deleting happens last in the tick, after the run requests are built. A message not
deleted (a file younger than ``SETTLE_SECONDS``, a customer beyond the tick's bound) stays
hidden for ``VISIBILITY_TIMEOUT_SECONDS`` and is delivered again: by then a young file has
settled. If the tick fails before deleting (an error, a timeout, a daemon restart), every
message it received comes back the same way, is planned again and gets the same run keys, which
Dagster does not launch twice for this sensor. A delete SQS refuses is logged, not raised: the
tick's runs still go out, and the message, back later, is planned again harmlessly. What the
queue cannot protect is the moment between this function returning and the daemon storing its
run requests: a daemon killed exactly then loses those runs. ``raw_files_reconciler`` (the
listing sensor, hourly) catches that, and anything else the queue never delivered: a
notification left unconfigured for a while, messages that outlived the queue's retention period
while the sensor was off.

Duplicates
----------
S3 delivers each event at least once, and SQS each message at least once. Within a tick the
same (key, ETag) counts once; for a key with several events (rewritten in quick succession) only
the newest counts, as only the newest content is listed. A duplicate arriving in a later tick,
after its first copy's run was requested, is a new tick's file: if that run has published its
manifest, the customer is found consumed and nothing runs; if it has not, a second run is
requested (under its own run key), as the listing sensor would for a rewrite.

What it does not do: list anything, keep a cursor (the queue is its state), or create the queue
or the bucket notification (``deploy/README.md``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

import dagster as dg
from botocore.exceptions import BotoCoreError, ClientError

from forecast_assets import sensors
from forecast_assets.environment import Environment
from forecast_assets.jobs import forecast_job
from forecast_assets.sensors import (
    LandingCursor,
    decide,
    landing_root,
    log_ignored,
    notes,
    read_landing,
    requested_note,
    settled,
)
from resources.queue import QueueMessage, SqsQueue
from resources.storage import ObjectInfo, ObjectStore

# Ten per ReceiveMessage call: 100 calls, a few seconds against SQS, and the plan and deletes of
# 1,000 files stay far inside the visibility timeout. A larger backlog drains over several ticks.
MAX_MESSAGES_PER_TICK = 1000
# How long a received message stays hidden. Longer than SETTLE_SECONDS, so a file too young for
# this tick has settled when it comes back; longer than a tick, so a message is not delivered
# again while the tick that holds it is still deciding (its receipt handle would then be stale).
VISIBILITY_TIMEOUT_SECONDS = 150
# Messages quoted in warnings per tick; the rest are only counted.
MAX_LOGGED_MESSAGES = 10


@dataclass(frozen=True)
class ObjectEvent:
    """One S3 event record: what happened to which object, and when."""

    name: str
    bucket: str
    key: str
    etag: str
    size: int
    time: datetime


@dataclass
class ParsedMessage:
    message: QueueMessage
    events: list[ObjectEvent] = field(default_factory=list)
    test_event: bool = False
    problem: str = ""
    """Why the message is not an S3 event notification (it is then dropped): empty if it is."""


def parse_message(message: QueueMessage) -> ParsedMessage:
    """The S3 event records of one SQS message body.

    The body is S3's event JSON (``Records[].s3``: bucket name, the object's URL-encoded key
    with ``+`` for spaces, its size and ETag, and ``eventTime``), or S3's ``s3:TestEvent`` (sent
    when a notification is configured), either possibly inside an SNS envelope (S3 to SNS to SQS
    fan-out). Anything else, or a record lacking one of those fields, makes the whole message
    malformed.
    """
    parsed = ParsedMessage(message)
    try:
        data: Any = json.loads(message.body)
        if isinstance(data, dict) and data.get("Type") == "Notification":
            data = json.loads(data["Message"])
    except (ValueError, TypeError, KeyError) as exc:
        parsed.problem = f"not JSON ({exc})"
        return parsed
    if not isinstance(data, dict):
        parsed.problem = "not a JSON object"
        return parsed
    if data.get("Event") == "s3:TestEvent":
        parsed.test_event = True
        return parsed
    records = data.get("Records")
    if not isinstance(records, list) or not records:
        parsed.problem = "no Records and not an s3:TestEvent"
        return parsed
    try:
        parsed.events = [_event(record) for record in records]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        parsed.events = []
        parsed.problem = f"an S3 record without a usable {exc}"
    return parsed


def _event(record: dict[str, Any]) -> ObjectEvent:
    s3 = record["s3"]
    obj = s3["object"]
    try:
        time = datetime.fromisoformat(record["eventTime"])
    except ValueError as exc:
        raise ValueError(f"eventTime ({exc})") from exc
    if time.tzinfo is None:
        raise ValueError(f"eventTime (no time zone in {record['eventTime']!r})")
    etag = str(obj.get("eTag") or obj.get("etag") or "")
    name = str(record["eventName"])
    if not etag and name.startswith("ObjectCreated:"):
        raise ValueError("eTag")
    return ObjectEvent(
        name=name,
        bucket=str(s3["bucket"]["name"]),
        # S3 URL-encodes keys in events, spaces as '+' (a literal '+' is %2B).
        key=unquote_plus(str(obj["key"])),
        # Quoted, as ListObjectsV2 and HeadObject give it: the same pair, the same run key.
        etag=etag if etag.startswith('"') else f'"{etag}"',
        size=int(obj.get("size", 0)),
        time=time,
    )


@dataclass
class EventFiles:
    """A tick's messages, read as the landing files their events name."""

    objects: list[ObjectInfo]
    """The newest created object of each key under landing/ in the store's bucket."""
    test_events: int = 0
    malformed: list[ParsedMessage] = field(default_factory=list)
    other_events: int = 0
    """Records that are not ObjectCreated (a notification configured for more than that)."""
    elsewhere: int = 0
    """ObjectCreated records of another bucket, or outside landing/."""


def event_files(parsed: Sequence[ParsedMessage], bucket: str, landing: str) -> EventFiles:
    newest: dict[str, ObjectEvent] = {}
    found = EventFiles(objects=[])
    for message in parsed:
        found.test_events += message.test_event
        if message.problem:
            found.malformed.append(message)
        for event in message.events:
            if not event.name.startswith("ObjectCreated:"):
                found.other_events += 1
                continue
            if event.bucket != bucket or not f"s3://{bucket}/{event.key}".startswith(landing):
                found.elsewhere += 1
                continue
            held = newest.get(event.key)
            if held is None or event.time > held.time:
                newest[event.key] = event
    found.objects = [
        ObjectInfo(
            uri=f"s3://{bucket}/{event.key}",
            key=event.key,
            size=event.size,
            etag=event.etag,
            last_modified=event.time,
        )
        for event in newest.values()
    ]
    return found


def deletable(
    parsed: Iterable[ParsedMessage], bucket: str, undecided_keys: set[str]
) -> tuple[list[QueueMessage], list[QueueMessage]]:
    """(to delete, to leave): a message is left while any of its records names a key of this
    bucket that the tick did not decide."""
    delete: list[QueueMessage] = []
    leave: list[QueueMessage] = []
    for message in parsed:
        held = any(
            event.bucket == bucket and event.key in undecided_keys for event in message.events
        )
        (leave if held else delete).append(message.message)
    return delete, leave


@dg.sensor(
    job=forecast_job,
    minimum_interval_seconds=30,
    description="Runs forecast_job for customers with new files under landing/, read from the "
    "S3 event notifications in the FORECAST_NEW_FILES_QUEUE_URL queue instead of a listing: "
    "the same run keys, settle time, bound, batches and consumed-files check as "
    "raw_files_sensor, which stays on as an hourly reconciler.",
)
def raw_file_events_sensor(
    context: dg.SensorEvaluationContext, store: ObjectStore, new_files_queue: SqsQueue
) -> dg.SensorResult | dg.SkipReason:
    landing = landing_root(store)
    queue = new_files_queue.queue_url
    # No try/except: a queue that cannot be read fails the tick, visibly.
    messages = new_files_queue.receive(
        max_messages=MAX_MESSAGES_PER_TICK, visibility_timeout=VISIBILITY_TIMEOUT_SECONDS
    )
    if not messages:
        return dg.SkipReason(f"no messages in {queue}")
    parsed = [parse_message(m) for m in messages]
    found = event_files(parsed, store.bucket, landing)
    for message in found.malformed[:MAX_LOGGED_MESSAGES]:
        context.log.warning(
            f"dropping message {message.message.message_id} from {queue}: {message.problem}: "
            f"{message.message.body[:200]!r}"
        )
    listing = read_landing(landing, found.objects)
    log_ignored(context, listing.ignored)
    ready = settled(listing.files)
    # The queue is the cursor: an empty LandingCursor makes every file of the tick new.
    decision = decide(context, store, ready, LandingCursor())
    plan = decision.plan
    served = plan.served
    ready_keys = {f.info.key for f in ready}
    undecided = {
        f.info.key
        for f in listing.files
        if f.info.key not in ready_keys or f.customer not in served
    }
    to_delete, to_leave = deletable(parsed, store.bucket, undecided)

    note = notes(listing, len(listing.files) - len(ready), sensors.SETTLE_SECONDS, plan)
    note += _event_note(found, messages)
    summary = (
        f"{len(messages)} message(s) from {queue}: {len(listing.files)} new file(s)"
        f"{note}; {len(to_delete)} message(s) deleted, {len(to_leave)} left for a later tick"
    )
    # Last: every run request of the tick is built. See "When messages are deleted".
    try:
        refused = new_files_queue.delete(to_delete)
    except (BotoCoreError, ClientError) as exc:
        context.log.warning(
            f"could not delete {len(to_delete)} message(s) from {queue} ({exc}); they come "
            "back after the visibility timeout and are planned again"
        )
    else:
        for failure in refused[:MAX_LOGGED_MESSAGES]:
            context.log.warning(
                f"SQS did not delete message {failure.message_id} ({failure.reason}); it comes "
                "back and is planned again"
            )
    if not plan.runs:
        context.log.info(summary)
        return dg.SkipReason(summary)
    context.log.info(f"{summary}; {requested_note(decision)}")
    return decision.result(None, "")


def _event_note(found: EventFiles, messages: Sequence[QueueMessage]) -> str:
    note = ""
    if found.test_events:
        note += f"; {found.test_events} s3:TestEvent message(s) dropped"
    if found.malformed:
        note += f"; {len(found.malformed)} message(s) that are not S3 events dropped"
    if found.other_events:
        note += f"; {found.other_events} event(s) other than ObjectCreated ignored"
    if found.elsewhere:
        note += f"; {found.elsewhere} event(s) outside landing/ of this bucket ignored"
    again = sum(1 for m in messages if m.receive_count > 1)
    if again:
        note += f"; {again} message(s) delivered before"
    return note


def new_file_sensors(environment: Environment, queue_url: str | None) -> list[dg.SensorDefinition]:
    """The sensors that find new files: on S3 with an event queue, this sensor and the hourly
    reconciler; otherwise the listing sensor every minute."""
    if environment == "sagemaker" and queue_url:
        return [raw_file_events_sensor, sensors.raw_files_reconciler]
    return [sensors.raw_files_sensor]

"""raw_files_sensor: a run of ``forecast_job`` for each customer whose raw files are new or changed.

Every tick lists everything under ``landing/`` (the store paginates), takes the customer from the
first path segment after ``landing/``, and compares each object with the cursor. A customer with
new or changed files gets one run (partition = customer); a customer not yet in the ``customers``
partition set is added in the same tick as its run. A key whose customer folder is not a valid
customer id is logged and left out, never a sensor error; a store that cannot be listed is.
Objects that are not meter files (folder markers, hidden and temporary files: the one rule in
``forecast_assets.landing``, which raw_load applies too) are counted and left out: they never
start a run, nor move the cursor. A key raw_load calls bad (an empty, ``.`` or ``..`` segment)
is a file here, so its run fails naming it rather than the sensor hiding it.

The cursor
----------
The cursor is JSON with three parts:

``mark``
    A high-water mark of LastModified: every object modified before it has been handled.
``at_mark``
    The (key, ETag) pairs handled whose LastModified is exactly ``mark``. S3 keeps LastModified
    in whole seconds, so many objects share one; without this set, an object landing in the
    same second as the mark, but listed only on the next tick, would be missed (with ``>``) or
    everything in that second handled twice (with ``>=``).
``ahead``
    Per customer whose run was requested although the mark could not pass all of its files
    (the bound cut the tick short before another customer's older file): the newest LastModified
    of its handled files and the pairs at that instant. Without it a customer whose files span
    the cut would get a second, redundant run on the next tick. It is empty in steady state and
    emptied as soon as a backlog is drained.

Pairs are stored as 64-bit digests of ``key\\0etag``: a new key, or a new ETag for an old key (a
rewrite: new content gives a new ETag and a new LastModified), is a new pair.

Why this scales: the cursor's size does not grow with the number of objects. It holds one
timestamp, the objects of one second, and (only while a backlog is being drained) one small
entry per customer already served, so it stays a few kilobytes at 100,000 objects, where a cursor
listing every key seen would be megabytes rewritten every minute. The cost that does grow is the
listing itself: one ListObjectsV2 request per 1,000 objects per tick (S3 keys are not in time
order, so there is no StartAfter shortcut). At hundreds of thousands of objects that is seconds
of CPU per tick, which is why S3 event notifications to SQS take over on S3 (see "Two sensors,
one plan" below).

What it assumes: an object's LastModified is set when it is uploaded and later uploads get
later LastModified values, so no object can appear in a listing with a LastModified the mark has
already passed. Two ways that can be broken, both of which make the sensor miss the object:

- A file in the local store given an OLDER mtime than the mark (``os.utime``, ``cp -p``,
  ``touch -d``, unpacking an archive): impossible in S3, easy by hand.
- In S3, LastModified is when an upload *started* (for a multipart upload, when it was
  initiated), but the object is listed only once the upload completes. If a tick listed while
  an upload was in flight and saw a newer object from a faster upload, the mark would pass the
  slow upload's LastModified and miss it when it completes. So files younger than
  ``SETTLE_SECONDS`` wait for a later tick: the mark only passes instants by which every upload
  that started earlier has completed, if it took less than that. The cost is that much latency.
  An upload slower than ``SETTLE_SECONDS`` (or a clock between S3 and the daemon off by more) can
  still be missed.

Files a materialization already consumed
----------------------------------------
The cursor says which files this sensor has seen, not which ones the graph has used: after
``make demo`` (or a backfill, or a run from the UI) materialized every customer, a sensor turned
on for the first time would see every file as new and re-run every customer. So before it
requests a run for a customer already in the partition set, the sensor reads the customer's
current ``manifests`` publication (the ``raw_load.json`` its latest successful ``raw_load``
materialization published, with each file's URI and ETag: see ``forecast_assets.assets.raw``).
If every new or changed file is there with the same ETag, the content was consumed already:
the customer is done, no run is requested, the cursor moves over its files, and the tick's skip
reason (or log line) names it. A customer with any file not in its manifest, or with another
ETag there, gets its run as before. The ETag is a content hash: S3's MD5 for a plain upload (a
multipart upload's ETag depends on the part size, so the same bytes uploaded in other parts look
changed and run once more, which is safe), the MD5 of the file on the local store. A re-upload of
identical content (a new LastModified, the same ETag) is therefore done as well. At most
``MAX_CUSTOMERS_CHECKED_PER_TICK`` customers are looked up per tick (two small reads each), so a
tick's cost stays bounded even when hundreds of customers were materialized before the sensor
first ran; the rest are looked up on later ticks.

A customer not in the partition set is never looked up: it gets its run and is added, whatever
the store holds (an instance that never ran it has no record of it).

Runs are idempotent: a run key is the customer plus a digest of the (key, ETag) pairs that
triggered it, so evaluating the same tick twice (a daemon restart before the cursor was saved)
requests nothing new, while a rewritten file produces a new key. At most ``MAX_RUNS_PER_TICK``
runs are requested per tick; the rest wait for the next tick, and the cursor moves only over
files whose runs were requested (in (LastModified, key) order).

Batches
-------
With ``FORECAST_BACKFILL_BATCH_SIZE=N`` (``forecast_assets.environment.backfill_batch_size``), a
tick in which many customers changed requests runs of up to N customers, as a backfill does:
each step then launches one SageMaker job for the batch. A run covers a range of the partition
set, which Dagster resolves in the order partitions were added, so only customers already in the
set are batched, cut into the consecutive stretches of ``forecast_assets.partitions.batch_ranges``
(a customer between two changed ones that did not change is never swept in). A customer added in
this very tick gets a run of its own: its partition is added by the same SensorResult, and a
range naming it would depend on the order in which the daemon applies the two. The bound is on
runs, not customers: a customer joins the tick if the runs it adds (none when it extends a
stretch that is not full) keep the tick within ``MAX_RUNS_PER_TICK``. A batch's run key is its
first and last customer plus a digest of every customer's (key, ETag) pairs; a batch of one
keeps the per-customer run key above, so batch size 1 requests exactly what it always did.

Two sensors, one plan
---------------------
``raw_files_sensor`` finds new files by listing. ``forecast_assets.sqs_sensor`` finds them in S3
event notifications instead (the ``sagemaker`` environment, with a queue configured), and plans
with the same functions: ``read_landing`` (customer folders, skipped files), ``settled`` (the
settle rule), ``plan_tick`` (run bound, consumed files) and ``run_requests_for`` (run keys,
batches). There the listing sensor stays as a reconciler (``raw_files_reconciler``: the same
sensor, same name, every ``RECONCILE_INTERVAL_SECONDS``) for whatever the queue lost, looking
only at files older than ``RECONCILE_LAG_SECONDS``, by when the event path has normally run them
and their manifests show them consumed.
"""

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from forecast_assets import paths, publication
from forecast_assets.customers import InvalidCustomerIdError, validate_customer_id
from forecast_assets.environment import backfill_batch_size
from forecast_assets.jobs import forecast_job
from forecast_assets.landing import classify
from forecast_assets.partitions import batch_ranges, batch_run_request, customers_partitions_def
from forecast_assets.publication import MANIFESTS
from resources.storage import ObjectInfo, ObjectStore

# Each run launches SageMaker jobs for one customer (or one batch): the bound makes a backfill of
# hundreds of customers drain over several ticks instead of flooding the run queue and the
# SageMaker quotas in one.
MAX_RUNS_PER_TICK = 25
# Longer than a meter file's upload, with room for clock skew between S3 and the daemon; the
# price is this much extra latency before a new file's run (see "What it assumes" above).
SETTLE_SECONDS = 120
# Each look-up reads a customer's manifest pointer and manifest (two small GETs): a hundred keep a
# tick to seconds on S3, and drain even a large landing area materialized before the sensor ran
# in a few ticks.
MAX_CUSTOMERS_CHECKED_PER_TICK = 100
CURSOR_VERSION = 1
# Folders named in warnings per tick; the rest are only counted.
MAX_LOGGED_FOLDERS = 20
# The reconciler behind the S3 event path: it lists the whole landing area, so not every minute.
# Its lag leaves recent files to the event path, whose runs have usually published their
# manifests by then, so the reconciler finds them consumed instead of running them again.
RECONCILE_INTERVAL_SECONDS = 3600
RECONCILE_LAG_SECONDS = 3600
CHANGED_FILES_TAG = "forecast-assets/changed-files"
BATCH_CUSTOMERS_TAG = "forecast-assets/batch-customers"


def now() -> datetime:
    """The sensor's clock; a function of its own so tests can move it."""
    return datetime.now(UTC)


def landing_root(store: ObjectStore) -> str:
    """``s3://<bucket>/<prefix>/landing/``: the prefix every customer folder sits under."""
    return store.uri("landing") + "/"


@dataclass(frozen=True)
class LandingFile:
    customer: str
    info: ObjectInfo

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.info.last_modified, self.info.key)

    @property
    def digest(self) -> str:
        return pair_digest(self.info.key, self.info.etag)


def pair_digest(key: str, etag: str) -> str:
    # 64 bits: a new pair passes for one of the n handled pairs with probability about n / 2**64.
    return hashlib.blake2b(f"{key}\0{etag}".encode(), digest_size=8).hexdigest()


def consumed_files(store: ObjectStore, customer: str) -> frozenset[tuple[str, str]]:
    """The (URI, ETag) of every file the customer's current raw_load manifest holds: the
    content its latest successful raw_load materialization consumed (empty if none)."""
    published = publication.current(store, MANIFESTS, customer)
    if published is None:
        return frozenset()
    # No try/except: a pointer naming a manifest that cannot be read is a broken publication,
    # which must fail the tick rather than pass for "nothing consumed" (a run for everyone).
    manifest = json.loads(store.read_bytes(published.uri(paths.RAW_MANIFEST)))
    return frozenset(
        (str(f["uri"]), str(f["etag"])) for f in manifest.get("files", []) if f.get("etag")
    )


def run_key(customer: str, files: Iterable[LandingFile]) -> str:
    """The customer plus a digest of the (key, ETag) pairs that triggered its run."""
    digest = hashlib.blake2b(digest_size=8)
    for key, etag in sorted((f.info.key, f.info.etag) for f in files):
        digest.update(f"{key}\0{etag}\n".encode())
    return f"{customer}:{digest.hexdigest()}"


def batch_run_key(customers: Sequence[str], files: Mapping[str, Sequence[LandingFile]]) -> str:
    """The batch's first and last customer plus a digest of every customer's (key, ETag)
    pairs; a batch of one has the per-customer :func:`run_key`."""
    if len(customers) == 1:
        return run_key(customers[0], files[customers[0]])
    digest = hashlib.blake2b(digest_size=8)
    for customer in sorted(customers):
        digest.update(f"{customer}\n".encode())
        for key, etag in sorted((f.info.key, f.info.etag) for f in files[customer]):
            digest.update(f"{key}\0{etag}\n".encode())
    return f"{customers[0]}..{customers[-1]}:{digest.hexdigest()}"


@dataclass(frozen=True)
class LandingCursor:
    """What the sensor has handled: see the module docstring."""

    mark: datetime | None = None
    at_mark: frozenset[str] = frozenset()
    ahead: Mapping[str, tuple[datetime, frozenset[str]]] = field(default_factory=dict)

    def handled(self, file: LandingFile) -> bool:
        modified = file.info.last_modified
        if self.mark is not None and (
            modified < self.mark or (modified == self.mark and file.digest in self.at_mark)
        ):
            return True
        entry = self.ahead.get(file.customer)
        if entry is None:
            return False
        through, pairs = entry
        return modified < through or (modified == through and file.digest in pairs)

    @classmethod
    def from_json(cls, raw: str | None) -> "LandingCursor":
        if not raw:
            return cls()
        # A cursor this sensor cannot read is a real error: starting over would request a run
        # for every customer, so it raises rather than resets.
        try:
            data = json.loads(raw)
            if data.get("v") != CURSOR_VERSION:
                raise ValueError(f"unknown cursor version {data.get('v')!r}")
            mark = data.get("mark")
            return cls(
                mark=datetime.fromisoformat(mark) if mark else None,
                at_mark=frozenset(data.get("at_mark", [])),
                ahead={
                    customer: (datetime.fromisoformat(through), frozenset(pairs))
                    for customer, (through, pairs) in data.get("ahead", {}).items()
                },
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"raw_files_sensor cannot read its cursor {raw[:200]!r}: {exc}"
            ) from exc

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "v": CURSOR_VERSION,
            "mark": self.mark.isoformat() if self.mark else None,
            "at_mark": sorted(self.at_mark),
        }
        if self.ahead:
            data["ahead"] = {
                customer: [through.isoformat(), sorted(pairs)]
                for customer, (through, pairs) in sorted(self.ahead.items())
            }
        return json.dumps(data, separators=(",", ":"))


@dataclass
class IgnoredFolder:
    objects: int
    reason: str


@dataclass
class LandingListing:
    files: list[LandingFile]
    """Meter files (and bad keys, for raw_load to name) in valid customer folders."""
    ignored: dict[str, IgnoredFolder]
    """Folders left out, with the reason: not customer folders."""
    skipped: int
    """Objects that are not meter files (see ``forecast_assets.landing``)."""


def read_landing(landing: str, objects: Iterable[ObjectInfo]) -> LandingListing:
    """Sort objects under ``landing`` (a listing, or the objects of S3 events) into files,
    ignored folders and skipped objects."""
    files: list[LandingFile] = []
    ignored: dict[str, IgnoredFolder] = {}
    skipped = 0
    for info in objects:
        relative = info.uri[len(landing) :]
        # The whole path below landing/: a valid customer id is never a marker, hidden or
        # temporary name, so this is the verdict raw_load reaches on the path below the customer.
        if classify(relative).kind == "skip":
            skipped += 1
            continue
        segment, sep, _ = relative.partition("/")
        if not sep:
            folder, reason = landing, "not inside a customer folder"
        else:
            folder = f"{landing}{segment}/"
            try:
                validate_customer_id(segment)
                reason = ""
            except InvalidCustomerIdError as exc:
                reason = str(exc)
        if reason:
            ignored.setdefault(folder, IgnoredFolder(0, reason)).objects += 1
        else:
            files.append(LandingFile(segment, info))
    return LandingListing(files, ignored, skipped)


def split_landing(
    landing: str, objects: Iterable[ObjectInfo]
) -> tuple[list[LandingFile], dict[str, IgnoredFolder]]:
    """Files in valid customer folders, and the folders left out (by folder, with the reason)."""
    listing = read_landing(landing, objects)
    return listing.files, listing.ignored


def settled(files: Iterable[LandingFile], settle_seconds: int | None = None) -> list[LandingFile]:
    """The files at least ``settle_seconds`` (default ``SETTLE_SECONDS``) old by ``now()``: the
    rest wait for a later tick (see "What it assumes" above)."""
    seconds = SETTLE_SECONDS if settle_seconds is None else settle_seconds
    cutoff = now() - timedelta(seconds=seconds)
    return [f for f in files if f.info.last_modified <= cutoff]


class RunBatches:
    """How many runs a tick's customers make, as they are chosen one by one.

    Customers in the partition set (``ordered``, in the order they were added) are batched by
    consecutive stretches of chosen customers, each stretch cut every ``size`` customers, as
    :func:`forecast_assets.partitions.batch_ranges` cuts them; any other customer (new this
    tick) is a run of its own. Counting is incremental (a stretch is found by its ends), so a
    tick over many customers stays linear in them.
    """

    def __init__(self, ordered: Callable[[], Sequence[str]], size: int):
        self._ordered = ordered  # read on the first choice: a tick with nothing new reads nothing
        self._index: dict[str, int] | None = None
        self.size = size
        self._start_of: dict[int, int] = {}  # a stretch's last index -> its first
        self._end_of: dict[int, int] = {}  # a stretch's first index -> its last
        self.runs = 0

    def _position(self, customer: str) -> int | None:
        if self._index is None:
            self._index = {c: i for i, c in enumerate(self._ordered())}
        return self._index.get(customer)

    def _runs(self, length: int) -> int:
        return -(-length // self.size)

    def _neighbours(self, i: int) -> tuple[int, int]:
        start = self._start_of.get(i - 1, i)
        end = self._end_of.get(i + 1, i)
        return start, end

    def cost(self, customer: str) -> int:
        """The runs choosing ``customer`` adds (0 or fewer when it joins stretches)."""
        i = self._position(customer)
        if i is None:
            return 1
        start, end = self._neighbours(i)
        left, right = i - start, end - i
        return self._runs(end - start + 1) - self._runs(left) - self._runs(right)

    def add(self, customer: str) -> None:
        cost = self.cost(customer)
        self.runs += cost
        i = self._position(customer)
        if i is None:
            return
        start, end = self._neighbours(i)
        self._start_of.pop(i - 1, None)
        self._end_of.pop(i + 1, None)
        self._start_of[end] = start
        self._end_of[start] = end


@dataclass(frozen=True)
class TickPlan:
    runs: dict[str, list[LandingFile]]
    """Customers to run now, in order of their oldest new file, with their new or changed files."""
    waiting: list[str]
    """Customers with new or changed files left for a later tick."""
    cursor: LandingCursor
    done: list[str] = field(default_factory=list)
    """Customers whose new or changed files a materialization already consumed: no run."""

    @property
    def served(self) -> set[str]:
        """Customers this tick decided: run, or found consumed."""
        return set(self.runs) | set(self.done)


def plan_tick(
    files: Sequence[LandingFile],
    cursor: LandingCursor,
    max_runs: int = MAX_RUNS_PER_TICK,
    consumed: Callable[[str, list[LandingFile]], bool] | None = None,
    max_checked: int = MAX_CUSTOMERS_CHECKED_PER_TICK,
    batches: RunBatches | None = None,
) -> TickPlan:
    """Which customers to run this tick and the cursor after it.

    A pure function of the files, the cursor (empty for the event sensor, whose queue is its
    cursor), and of ``consumed`` when given: called with a customer and its new or changed
    files, at most ``max_checked`` times, it says whether a materialization already consumed
    exactly those files (the customer is then done, not run). ``batches`` counts the runs the
    chosen customers make (without it, one per customer); at most ``max_runs`` are chosen.
    """
    ordered = sorted(files, key=lambda f: f.order)
    pending: dict[str, list[LandingFile]] = {}  # in order of each customer's oldest new file
    for file in ordered:
        if not cursor.handled(file):
            pending.setdefault(file.customer, []).append(file)
    runs: dict[str, list[LandingFile]] = {}
    done: list[str] = []
    checked = 0
    run_count = 0
    for customer, changed in pending.items():
        if consumed is not None and checked >= max_checked:
            break
        cost = 1 if batches is None else batches.cost(customer)
        if run_count + cost > max_runs:
            # A later customer may still fit (one that extends a batch), so go on looking.
            continue
        if consumed is not None:
            checked += 1
            if consumed(customer, changed):
                done.append(customer)
                continue
        runs[customer] = changed
        run_count += cost
        if batches is not None:
            batches.add(customer)
    served = runs.keys() | set(done)
    waiting = sorted(pending.keys() - served)

    def covered(file: LandingFile) -> bool:
        # A requested run covers all of its customer's files, including those past the cut; so
        # does finding them all consumed already.
        return file.customer in served or cursor.handled(file)

    first_open = next((f for f in ordered if not covered(f)), None)
    if first_open is not None:
        mark = first_open.info.last_modified
    elif ordered:
        mark = ordered[-1].info.last_modified
        if cursor.mark is not None and mark < cursor.mark:
            mark = cursor.mark  # the newest files were deleted: never move back
    else:
        return TickPlan(runs, waiting, cursor, done)

    at_mark = frozenset(f.digest for f in ordered if f.info.last_modified == mark and covered(f))
    ahead: dict[str, tuple[datetime, frozenset[str]]] = {}
    for file in ordered:  # ascending, so the last instant seen per customer is its newest
        modified = file.info.last_modified
        if modified <= mark or not covered(file):
            continue
        through, pairs = ahead.get(file.customer, (modified, frozenset()))
        ahead[file.customer] = (
            (modified, frozenset({file.digest}))
            if modified > through
            else (through, pairs | {file.digest})
        )
    return TickPlan(runs, waiting, LandingCursor(mark, at_mark, ahead), done)


def run_requests_for(
    runs: Mapping[str, Sequence[LandingFile]], ordered: Sequence[str], batch_size: int
) -> tuple[list[dg.RunRequest], list[str]]:
    """The run requests for a plan's customers, and the customers new to the partition set.

    Customers in ``ordered`` (the partition set, in the order added) go in batches by
    :func:`batch_ranges`; new ones each get a run of their own (see "Batches" above). Requests
    follow the plan's order (each batch where its earliest customer is).
    """
    known = set(ordered)
    new_customers = [c for c in runs if c not in known]
    position = {customer: i for i, customer in enumerate(runs)}
    ranges = batch_ranges(ordered, [c for c in runs if c in known], batch_size)
    index = {customer: i for i, customer in enumerate(ordered)} if ranges else {}
    groups: list[list[str]] = [list(ordered[index[r.start] : index[r.end] + 1]) for r in ranges] + [
        [customer] for customer in new_customers
    ]
    groups.sort(key=lambda group: min(position[c] for c in group))
    requests = []
    for group in groups:
        changed = sum(len(runs[c]) for c in group)
        tags = {CHANGED_FILES_TAG: str(changed)}
        if len(group) > 1:
            tags[BATCH_CUSTOMERS_TAG] = str(len(group))
        requests.append(
            batch_run_request(
                dg.PartitionKeyRange(group[0], group[-1]),
                run_key=batch_run_key(group, runs),
                tags=tags,
            )
        )
    return requests, new_customers


class PartitionSet:
    """The customers partition set, read at most once per tick and only when needed."""

    def __init__(self, instance: dg.DagsterInstance):
        self._instance = instance
        self._ordered: list[str] | None = None
        self._known: set[str] = set()

    def ordered(self) -> list[str]:
        if self._ordered is None:
            name = customers_partitions_def.name
            assert name is not None
            self._ordered = list(self._instance.get_dynamic_partitions(name))
            self._known = set(self._ordered)
        return self._ordered

    def __contains__(self, customer: str) -> bool:
        self.ordered()
        return customer in self._known


@dataclass
class Decision:
    """What one tick of either new-file sensor decided (see "Two sensors, one plan")."""

    plan: TickPlan
    run_requests: list[dg.RunRequest]
    new_customers: list[str]

    @property
    def changed_files(self) -> int:
        return sum(len(changed) for changed in self.plan.runs.values())

    def result(self, cursor: str | None, message: str) -> dg.SensorResult:
        return dg.SensorResult(
            run_requests=self.run_requests,
            cursor=cursor,
            dynamic_partitions_requests=(
                [customers_partitions_def.build_add_request(self.new_customers)]
                if self.new_customers
                else []
            ),
            skip_reason=None if self.run_requests else message,
        )


def decide(
    context: dg.SensorEvaluationContext,
    store: ObjectStore,
    files: Sequence[LandingFile],
    cursor: LandingCursor,
) -> Decision:
    """Plan a tick over settled ``files`` and turn it into run requests: the one planning path
    of both new-file sensors. Customers in the partition set whose new files their current
    raw_load manifest holds are done; the rest run, batched by ``backfill_batch_size()``."""
    partitions = PartitionSet(context.instance)

    def consumed(customer: str, changed: list[LandingFile]) -> bool:
        if customer not in partitions:
            return False
        held = consumed_files(store, customer)
        return all((f.info.uri, f.info.etag) in held for f in changed)

    size = backfill_batch_size()
    batches = RunBatches(partitions.ordered, size) if size > 1 else None
    plan = plan_tick(files, cursor, consumed=consumed, batches=batches)
    if not plan.runs:
        return Decision(plan, [], [])
    requests, new_customers = run_requests_for(plan.runs, partitions.ordered(), size)
    return Decision(plan, requests, new_customers)


def log_ignored(context: dg.SensorEvaluationContext, ignored: Mapping[str, IgnoredFolder]) -> None:
    for folder, info in list(ignored.items())[:MAX_LOGGED_FOLDERS]:
        context.log.warning(f"ignoring {info.objects} object(s) under {folder}: {info.reason}")
    if len(ignored) > MAX_LOGGED_FOLDERS:
        context.log.warning(f"... and {len(ignored) - MAX_LOGGED_FOLDERS} more invalid folder(s)")


def notes(
    listing: LandingListing, young: int, settle_seconds: int, plan: TickPlan | None = None
) -> str:
    """The "; ..." notes of a tick's message: what was left out, and why."""
    note = _ignored_note(listing.ignored)
    if listing.skipped:
        note += (
            f"; {listing.skipped} object(s) skipped as not meter files (folder markers, hidden "
            "or temporary files)"
        )
    if young:
        note += f"; {young} file(s) younger than {settle_seconds} s wait for a later tick"
    if plan is not None and plan.done:
        note += (
            f"; {len(plan.done)} customer(s) whose new files their latest raw_load already "
            f"consumed (same keys and ETags), so not run: {_names(plan.done)}"
        )
    if plan is not None and plan.waiting:
        note += f"; {len(plan.waiting)} customer(s) left for the next tick"
    return note


def requested_note(decision: Decision) -> str:
    """``requested N run(s) for M customer(s) (names)``, for a tick's log line."""
    customers = list(decision.plan.runs)
    return (
        f"requested {len(decision.run_requests)} run(s) for {len(customers)} customer(s) "
        f"({_names(customers)}); {len(decision.new_customers)} new customer(s)"
    )


def _ignored_note(ignored: Mapping[str, IgnoredFolder]) -> str:
    if not ignored:
        return ""
    count = sum(f.objects for f in ignored.values())
    return f"; {count} object(s) in {len(ignored)} invalid customer folder(s) ignored"


def _names(customers: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(customers[:limit])
    return shown + (f" and {len(customers) - limit} more" if len(customers) > limit else "")


def build_raw_files_sensor(
    *, minimum_interval_seconds: int, settle_seconds: int | None = None, role: str = ""
) -> dg.SensorDefinition:
    """``raw_files_sensor``, ticking every ``minimum_interval_seconds`` and handling files at
    least ``settle_seconds`` old (default ``SETTLE_SECONDS``, read at each tick)."""

    @dg.sensor(
        name="raw_files_sensor",
        job=forecast_job,
        minimum_interval_seconds=minimum_interval_seconds,
        description=f"{role}Runs forecast_job for each customer whose files under landing/ are "
        f"new or changed (at most {MAX_RUNS_PER_TICK} runs per tick; batches of "
        "FORECAST_BACKFILL_BATCH_SIZE customers already in the partition set), adding new "
        "customers to the partition set. Files the customer's latest raw_load already consumed "
        "(same key and ETag) start no run; the tick's skip reason names those customers.",
    )
    def raw_files_sensor(
        context: dg.SensorEvaluationContext, store: ObjectStore
    ) -> dg.SensorResult | dg.SkipReason:
        landing = landing_root(store)
        # No try/except: an unreachable store or a denied listing must fail the tick, visibly,
        # not pass for "nothing new".
        objects = store.list_objects(landing)
        listing = read_landing(landing, objects)
        log_ignored(context, listing.ignored)
        settle = SETTLE_SECONDS if settle_seconds is None else settle_seconds
        ready = settled(listing.files, settle)
        decision = decide(context, store, ready, LandingCursor.from_json(context.cursor))
        plan = decision.plan
        note = notes(listing, len(listing.files) - len(ready), settle, plan)
        if not plan.runs:
            if not plan.done:
                return dg.SkipReason(
                    f"no new or changed files under {landing} ({len(objects)} objects "
                    f"checked{note})"
                )
            # Nothing to run, but the cursor moves over the files found consumed, so the next
            # tick does not look them up again.
            message = f"nothing new to run under {landing} ({len(objects)} objects checked{note})"
            context.log.info(message)
            return decision.result(plan.cursor.to_json(), message)
        context.log.info(
            f"{len(objects)} objects checked under {landing}: {decision.changed_files} new or "
            f"changed file(s); {requested_note(decision)}{note}"
        )
        return decision.result(plan.cursor.to_json(), "")

    return raw_files_sensor


raw_files_sensor = build_raw_files_sensor(minimum_interval_seconds=60)
"""Every minute: the new-file path of the local store, and of S3 without an event queue."""

raw_files_reconciler = build_raw_files_sensor(
    minimum_interval_seconds=RECONCILE_INTERVAL_SECONDS,
    settle_seconds=RECONCILE_LAG_SECONDS,
    role="Reconciler behind raw_file_events_sensor: lists landing/ every "
    f"{RECONCILE_INTERVAL_SECONDS // 60} minutes for files older than "
    f"{RECONCILE_LAG_SECONDS // 60} minutes that the event queue did not deliver. ",
)
"""The same sensor (same name, so its cursor and on/off state carry over) beside the S3 event
sensor: hourly, and only for files an hour old (see the module docstring)."""

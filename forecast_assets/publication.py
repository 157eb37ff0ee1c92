"""How a step's outputs become visible: together, only after their checks, through one pointer.

Every asset publishes through here, and every reader (the next step, the schedules, the demo,
the UI's metadata) reads through here. A step's job writes to its own staging prefix
(``jobs/<job>/output/...``); the step runs its checks on what the job produced there; only then
are the outputs copied into a new version folder of their published place,
``<dataset>/<customer>/<version>/<file>``, which no reader looks at yet, and last one small
pointer object, ``<dataset>/<customer>/current.json``, is replaced. That one atomic write switches
readers from the previous set of files to the new one: a crash before it leaves the last good set
in place, and a reader never sees a new ``load.parquet`` beside an old ``devices.json``.

The pointer also records what the outputs were made from (``inputs``: a digest of the input
versions, the code and the settings), so a re-run with the same inputs can reuse them instead of
running its job again, and what the step said about them (``info``: figures for the UI).

Models are the one exception: the model registry (``resources.database``) is their pointer, a
single row written in one transaction, and each model artifact lives under its own job's name.
"""

from __future__ import annotations

import errno
import hashlib
import json
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from resources.storage import ObjectStore, join_uri

POINTER = "current.json"
# Versions kept besides the current one: a job launched a moment ago may still be staging the
# previous version, and an operator may want to compare with it.
KEEP_PREVIOUS = 2
# Unreferenced version folders younger than this are left alone: they may belong to a publication
# of the same customer under way in another run.
PRUNE_GRACE = timedelta(hours=1)

# The datasets published per customer, and the asset that publishes each.
MANIFESTS = "manifests"
PREPROCESSED = "preprocessed"
FORECASTS = "forecasts"
PUBLISHED_BY = {
    MANIFESTS: "landing/raw_load",
    PREPROCESSED: "preprocessed/load",
    FORECASTS: "forecasts/load_forecast",
}
# The file a person opens first, linked from the asset's metadata.
MAIN_FILE = {
    MANIFESTS: "raw_load.json",
    PREPROCESSED: "load.parquet",
    FORECASTS: "forecast.parquet",
}


@dataclass(frozen=True)
class Publication:
    """One published version of a customer's dataset: the set of files readers see now."""

    dataset: str
    customer_id: str
    version: str
    prefix: str
    files: dict[str, dict[str, Any]]
    published_at: str
    run_id: str = ""
    inputs: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    previous: tuple[str, ...] = ()

    def uri(self, name: str) -> str:
        """The URI of one of this version's files."""
        if name not in self.files:
            raise KeyError(
                f"customer '{self.customer_id}': {self.dataset} version {self.version} has no "
                f"file '{name}' (it has {', '.join(sorted(self.files))})"
            )
        return join_uri(self.prefix, name)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Publication:
        data = json.loads(raw)
        data["previous"] = tuple(data.get("previous", ()))
        return cls(**data)


def dataset_prefix(store: ObjectStore, dataset: str, customer: str) -> str:
    return store.uri(dataset, customer)


def pointer_uri(store: ObjectStore, dataset: str, customer: str) -> str:
    return store.uri(dataset, customer, POINTER)


def pointer_uri_of(published: Publication) -> str:
    """The pointer that names ``published`` (beside its version folder)."""
    return join_uri(published.prefix.rsplit("/", 1)[0], POINTER)


def current(store: ObjectStore, dataset: str, customer: str) -> Publication | None:
    """The customer's published version of ``dataset``, or None if nothing is published yet."""
    uri = pointer_uri(store, dataset, customer)
    try:
        raw = store.read_bytes(uri)
    except FileNotFoundError:
        return None
    try:
        return Publication.from_json(raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise dg.Failure(
            description=f"customer '{customer}': the pointer {uri} is not a publication record "
            f"({exc}); materialize {PUBLISHED_BY.get(dataset, dataset)} again to replace it"
        ) from exc


# Pointer reads in flight at once in current_many: botocore's connection pool per client holds 10.
PARALLEL_READS = 10


def current_many(
    store: ObjectStore, dataset: str, customers: Iterable[str], workers: int = PARALLEL_READS
) -> dict[str, Publication | None]:
    """:func:`current` of every customer, ``workers`` pointer reads at a time. On S3 each read
    is one GET whose time is mostly the round trip, so reading many customers' pointers one after
    another is bound by latency, not by work."""
    wanted = list(customers)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = pool.map(lambda customer: current(store, dataset, customer), wanted)
        return dict(zip(wanted, found, strict=True))


def require(
    store: ObjectStore, dataset: str, customers: list[str], what: str
) -> dict[str, Publication]:
    """Each customer's current ``dataset``; fails the step naming every customer that has none."""
    found = current_many(store, dataset, customers)
    missing = [c for c, p in found.items() if p is None]
    if missing:
        upstream = PUBLISHED_BY.get(dataset, dataset)
        raise dg.Failure(
            description=f"{len(missing)} of {len(customers)} customer(s) {what}:\n"
            + "\n".join(
                f"customer '{c}': nothing published at {pointer_uri(store, dataset, c)}; "
                f"materialize {upstream} first"
                for c in missing
            ),
            metadata={"failed_customers": dg.MetadataValue.json(missing)},
        )
    return {c: p for c, p in found.items() if p is not None}


def inputs_digest(**parts: Any) -> str:
    """A digest of what outputs are made from (input versions, code URI, settings).

    Two runs with the same digest would produce the same outputs, so the second may reuse the
    first's instead of running its job again.
    """
    canonical = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def reusable(store: ObjectStore, dataset: str, customer: str, inputs: str) -> Publication | None:
    """The current publication if it was made from exactly ``inputs``, else None."""
    published = current(store, dataset, customer)
    return published if published is not None and published.inputs == inputs else None


def new_version(label: str) -> str:
    """A version name that sorts by time and says which job or content it came from."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{label}"[:120]


def publish(
    store: ObjectStore,
    dataset: str,
    customer: str,
    version: str,
    *,
    sources: Mapping[str, str] | None = None,
    contents: Mapping[str, bytes] | None = None,
    run_id: str = "",
    inputs: str = "",
    info: Mapping[str, Any] | None = None,
) -> Publication:
    """Make one set of outputs the customer's current ``dataset``, all together.

    ``sources`` (file name -> URI, e.g. in a job's staging prefix) are copied and ``contents``
    (file name -> bytes) written into the version folder; then the pointer is replaced, which is
    the moment readers switch. Call it only after the outputs' checks have passed.
    """
    prefix = join_uri(dataset_prefix(store, dataset, customer), version)
    files: dict[str, dict[str, Any]] = {}
    try:
        for name, source in (sources or {}).items():
            copied = store.copy_object(source, join_uri(prefix, name))
            files[name] = {"bytes": copied.size, "etag": copied.etag}
        for name, data in (contents or {}).items():
            written = store.write_bytes(join_uri(prefix, name), data)
            files[name] = {"bytes": written.size, "etag": written.etag}
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise dg.Failure(
            description=f"customer '{customer}': no space left on the device holding {prefix} "
            f"while publishing {dataset} version {version}; free space there (or move the data "
            "home, FORECAST_DATA_HOME) and run again. Nothing was published: the last good "
            "version is still current."
        ) from exc
    before = current(store, dataset, customer)
    previous: tuple[str, ...] = ()
    if before is not None and before.version != version:
        previous = (before.version, *before.previous)[:KEEP_PREVIOUS]
    elif before is not None:
        previous = before.previous
    publication = Publication(
        dataset=dataset,
        customer_id=customer,
        version=version,
        prefix=prefix,
        files=files,
        published_at=datetime.now(UTC).isoformat(),
        run_id=run_id,
        inputs=inputs,
        info=dict(info or {}),
        previous=previous,
    )
    store.write_bytes(pointer_uri(store, dataset, customer), publication.to_json())
    prune(store, publication)
    return publication


def prune(store: ObjectStore, publication: Publication) -> list[str]:
    """Remove version folders the pointer no longer names (older than ``PRUNE_GRACE``).

    Returns the versions removed. Only ``<dataset>/<customer>/<version>/`` folders are touched.
    """
    root = dataset_prefix(store, publication.dataset, publication.customer_id) + "/"
    keep = {publication.version, *publication.previous}
    cutoff = datetime.now(UTC) - PRUNE_GRACE
    by_version: dict[str, list[Any]] = {}
    for obj in store.list_objects(root):
        version, sep, _ = obj.uri[len(root) :].partition("/")
        if sep and version not in keep:
            by_version.setdefault(version, []).append(obj)
    removed = []
    for version, objects in sorted(by_version.items()):
        if all(o.last_modified < cutoff for o in objects):
            for obj in objects:
                store.delete_object(obj.uri)
            removed.append(version)
    return removed

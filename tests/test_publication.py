"""The one publication mechanism: versions, the pointer readers follow, all-or-nothing switches,
reuse, and pruning."""

import threading
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from forecast_assets import publication
from forecast_assets.publication import PREPROCESSED, Publication
from resources.storage import LocalObjectStore
from tests.conftest import published_snapshot

CUSTOMER = "acme"


def stage(store: LocalObjectStore, job: str, files: dict[str, bytes]) -> dict[str, str]:
    sources = {}
    for name, data in files.items():
        sources[name] = store.uri("jobs", job, "output", name)
        store.write_bytes(sources[name], data)
    return sources


def test_readers_see_a_version_only_once_its_pointer_names_it(store: LocalObjectStore):
    assert publication.current(store, PREPROCESSED, CUSTOMER) is None
    sources = stage(store, "job-1", {"load.parquet": b"table 1", "devices.json": b"[1]"})
    first = publication.publish(
        store, PREPROCESSED, CUSTOMER, "v1", sources=sources, inputs="in-1", info={"rows": 1}
    )
    current = publication.current(store, PREPROCESSED, CUSTOMER)
    assert current == first
    assert store.read_bytes(current.uri("load.parquet")) == b"table 1"
    assert store.read_bytes(current.uri("devices.json")) == b"[1]"
    assert current.info == {"rows": 1} and current.inputs == "in-1"
    with pytest.raises(KeyError, match=r"has no file 'quality\.json'"):
        current.uri("quality.json")

    sources = stage(store, "job-2", {"load.parquet": b"table 2", "devices.json": b"[2]"})
    second = publication.publish(store, PREPROCESSED, CUSTOMER, "v2", sources=sources)
    assert publication.current(store, PREPROCESSED, CUSTOMER) == second
    assert second.previous == ("v1",)
    # The previous version's files are still there, untouched, for readers that started on it.
    assert store.read_bytes(first.uri("load.parquet")) == b"table 1"


def test_a_crash_between_copies_leaves_the_last_good_set_in_place(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
):
    sources = stage(store, "job-1", {"load.parquet": b"old table", "devices.json": b"old"})
    publication.publish(store, PREPROCESSED, CUSTOMER, "v1", sources=sources)
    before = published_snapshot(store, CUSTOMER)
    sources = stage(store, "job-2", {"load.parquet": b"new table", "devices.json": b"new"})

    copies = []
    real_copy = LocalObjectStore.copy_object

    def crash_on_second_copy(self, src, dst):
        copies.append(dst)
        if len(copies) == 2:
            raise OSError("the process was killed here")
        return real_copy(self, src, dst)

    monkeypatch.setattr(LocalObjectStore, "copy_object", crash_on_second_copy)
    with pytest.raises(OSError):
        publication.publish(store, PREPROCESSED, CUSTOMER, "v2", sources=sources)
    current = publication.current(store, PREPROCESSED, CUSTOMER)
    assert current is not None and current.version == "v1"
    assert store.read_bytes(current.uri("load.parquet")) == b"old table"
    assert store.read_bytes(current.uri("devices.json")) == b"old"
    # Only the unreferenced half-copied version folder is new; nothing readers see changed.
    after = published_snapshot(store, CUSTOMER)
    assert {k: v for k, v in after.items() if "/v2/" not in k} == before


def test_require_names_every_customer_with_nothing_published(store: LocalObjectStore):
    publication.publish(store, PREPROCESSED, "acme", "v1", contents={"load.parquet": b"x"})
    with pytest.raises(dg.Failure) as failure:
        publication.require(store, PREPROCESSED, ["acme", "globex", "hooli"], "cannot be trained")
    message = failure.value.description or ""
    assert message.startswith("2 of 3 customer(s) cannot be trained:")
    assert "customer 'globex': nothing published at s3://" in message
    assert "materialize preprocessed/load first" in message
    assert "'acme'" not in message


def test_a_corrupt_pointer_is_a_clear_error(store: LocalObjectStore):
    store.write_bytes(publication.pointer_uri(store, PREPROCESSED, CUSTOMER), b"{not json")
    with pytest.raises(dg.Failure, match="is not a publication record"):
        publication.current(store, PREPROCESSED, CUSTOMER)


def test_reuse_only_for_the_same_inputs(store: LocalObjectStore):
    digest = publication.inputs_digest(raw="abc", code="s3://b/code/x", interval="1h")
    assert digest == publication.inputs_digest(interval="1h", code="s3://b/code/x", raw="abc")
    assert digest != publication.inputs_digest(raw="abd", code="s3://b/code/x", interval="1h")
    publication.publish(store, PREPROCESSED, CUSTOMER, "v1", contents={"a": b"1"}, inputs=digest)
    assert publication.reusable(store, PREPROCESSED, CUSTOMER, digest) is not None
    assert publication.reusable(store, PREPROCESSED, CUSTOMER, "other") is None
    assert publication.reusable(store, PREPROCESSED, "nobody", digest) is None


def test_old_versions_are_pruned_keeping_the_current_and_previous(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
):
    for n in range(1, 6):
        publication.publish(store, PREPROCESSED, CUSTOMER, f"v{n}", contents={"f": b"%d" % n})
    # Within the grace period nothing is removed: another run may be publishing.
    versions = {o.key.split("/")[2] for o in store.list_objects(store.uri(PREPROCESSED) + "/")}
    assert versions == {"v1", "v2", "v3", "v4", "v5", "current.json"}

    later = datetime.now(UTC) + publication.PRUNE_GRACE + timedelta(minutes=1)

    class Later(datetime):
        @classmethod
        def now(cls, tz=None):
            return later

    monkeypatch.setattr(publication, "datetime", Later)
    publication.publish(store, PREPROCESSED, CUSTOMER, "v6", contents={"f": b"6"})
    current = publication.current(store, PREPROCESSED, CUSTOMER)
    assert isinstance(current, Publication) and current.previous == ("v5", "v4")
    versions = {o.key.split("/")[2] for o in store.list_objects(store.uri(PREPROCESSED) + "/")}
    assert versions == {"v4", "v5", "v6", "current.json"}
    # Another customer's versions are never touched.
    publication.publish(store, PREPROCESSED, "other", "v1", contents={"f": b"x"})
    assert store.exists(store.uri(PREPROCESSED, "other", "v1", "f"))


def test_a_full_disk_while_publishing_names_customer_and_place_and_keeps_the_last_version(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
):
    import errno

    publication.publish(store, PREPROCESSED, CUSTOMER, "v1", contents={"load.parquet": b"old"})
    before = published_snapshot(store, CUSTOMER)

    def full(self, uri, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch, pytest.raises(dg.Failure) as failure:
        patch.setattr(LocalObjectStore, "write_bytes", full)
        publication.publish(store, PREPROCESSED, CUSTOMER, "v2", contents={"load.parquet": b"n"})
    message = failure.value.description or ""
    assert message.startswith(f"customer '{CUSTOMER}': no space left on the device holding s3://")
    assert "the last good version is still current" in message
    assert published_snapshot(store, CUSTOMER) == before


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_current_many_reads_every_pointer_several_at_a_time(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
):
    """The overview's read: the same answer as current() per customer (None where nothing is
    published), with reads in flight at once, on the local store and on S3 (one lazily built
    client shared by the threads)."""
    store = request.getfixturevalue("store" if kind == "local" else "s3_store")
    customers = [f"cust-{i:03d}" for i in range(24)]
    for customer in customers[::2]:
        publication.publish(store, PREPROCESSED, customer, "v1", contents={"a": customer.encode()})
    in_flight, most = [0], [0]
    lock = threading.Lock()
    real_read = type(store).read_bytes

    def slow_read(self, uri: str) -> bytes:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            time.sleep(0.02)
            return real_read(self, uri)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(type(store), "read_bytes", slow_read)
    found = publication.current_many(store, PREPROCESSED, customers)
    assert list(found) == customers
    for customer in customers:
        assert found[customer] == publication.current(store, PREPROCESSED, customer)
    assert all(found[c] is not None for c in customers[::2])
    assert all(found[c] is None for c in customers[1::2])
    assert 1 < most[0] <= publication.PARALLEL_READS

    # A corrupt pointer is the same clear error as from current().
    store.write_bytes(publication.pointer_uri(store, PREPROCESSED, customers[1]), b"{not json")
    with pytest.raises(dg.Failure, match=f"customer '{customers[1]}'.*not a publication record"):
        publication.current_many(store, PREPROCESSED, customers)

"""Both object stores give S3's semantics: flat keys, prefix listing in key order, whole-object
replacement, MD5 ETags, and refusal of keys that are not plain object keys.

Every test of those semantics runs on LocalObjectStore and on S3ObjectStore against a moto
server; the local store's own machinery (temporary files, renames, the ETag cache, its layout on
disk) and a few things only S3 has (pagination, multipart ETags, the managed copy) are tested
on their own."""

from __future__ import annotations

import hashlib
import os
import time
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource

from resources import storage
from resources.storage import LocalObjectStore, ObjectStore, S3ObjectStore, join_uri, split_uri


def _md5_etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def _files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def at(store: ObjectStore, key: str = "") -> str:
    """``s3://<the store's bucket>/<key>``, verbatim (``store.uri`` would strip slashes)."""
    return f"s3://{store.bucket}/{key}"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, data_home: Path) -> ObjectStore:
    """Both implementations; in this module it replaces conftest's local-only ``store``."""
    if request.param == "s3":
        return request.getfixturevalue("s3_store")
    return LocalObjectStore()


@pytest.fixture
def local_store(data_home: Path) -> LocalObjectStore:
    return LocalObjectStore()


@pytest.fixture
def other_bucket(store: ObjectStore, request: pytest.FixtureRequest) -> str:
    """A second bucket the store can use (created in moto; implied by the local store)."""
    if isinstance(store, S3ObjectStore):
        make_bucket: Callable[[], str] = request.getfixturevalue("make_bucket")
        return make_bucket()
    return "other-bucket"


# Round trip and layout ---------------------------------------------------------------------------


def test_write_read_round_trip(store: ObjectStore):
    uri = at(store, "a/b/c.csv")
    info = store.write_bytes(uri, b"x,y\n1,2\n")
    assert store.read_bytes(uri) == b"x,y\n1,2\n"
    assert info.uri == uri
    assert info.key == "a/b/c.csv"
    assert info.size == 8
    assert info.etag == _md5_etag(b"x,y\n1,2\n")
    assert info.last_modified.tzinfo is not None
    assert info == store.head(uri)
    assert [o.key for o in store.list_objects(at(store))] == ["a/b/c.csv"]


def test_local_layout(local_store: LocalObjectStore, data_home: Path):
    local_store.write_bytes("s3://bkt/a/b/c.csv", b"x,y\n1,2\n")
    # s3://bucket/key is <data home>/s3/<bucket>/<key>, and nothing else is left behind.
    assert local_store.base == data_home.resolve() / "s3"
    assert _files_under(data_home / "s3") == ["bkt/a/b/c.csv"]


def test_root_overrides_data_home(tmp_path: Path, data_home: Path):
    store = LocalObjectStore(root=str(tmp_path / "elsewhere"))
    store.write_bytes("s3://b/k", b"1")
    assert (tmp_path / "elsewhere" / "b" / "k").read_bytes() == b"1"
    assert not (data_home / "s3").exists()


def test_write_replaces_whole_object(store: ObjectStore):
    uri = at(store, "k.txt")
    store.write_bytes(uri, b"a much longer first version")
    store.write_bytes(uri, b"short")
    assert store.read_bytes(uri) == b"short"
    assert store.head(uri).size == 5


# Listing ---------------------------------------------------------------------------------------


def _keys(store: ObjectStore, prefix: str) -> list[str]:
    return [o.key for o in store.list_objects(prefix)]


@pytest.fixture
def populated(store: ObjectStore, other_bucket: str) -> ObjectStore:
    # Written out of order; '-' (0x2d) < '/' (0x2f) < '0' (0x30) so key order is not walk order.
    for key in [
        "data/ab/x.csv",
        "data/a0.csv",
        "data/a-c.csv",
        "data/ab/deep/er/y.csv",
        "data/abc.csv",
        "data/b.csv",
        "data/cust-10/z.csv",
        "data/cust-1/z.csv",
        "top.csv",
    ]:
        store.write_bytes(at(store, key), key.encode())
    store.write_bytes(f"s3://{other_bucket}/data/ab/x.csv", b"other bucket")
    return store


def test_list_objects_by_prefix_in_key_order(populated: ObjectStore):
    assert _keys(populated, at(populated, "data/a")) == [
        "data/a-c.csv",
        "data/a0.csv",
        "data/ab/deep/er/y.csv",
        "data/ab/x.csv",
        "data/abc.csv",
    ]


def test_list_objects_folder_prefix_includes_nested_and_excludes_siblings(populated: ObjectStore):
    assert _keys(populated, at(populated, "data/ab/")) == ["data/ab/deep/er/y.csv", "data/ab/x.csv"]
    # cust-10 shares the directory and the first characters, but not the prefix "cust-1/".
    assert _keys(populated, at(populated, "data/cust-1/")) == ["data/cust-1/z.csv"]
    # Without the slash, S3 prefix semantics include cust-10 too.
    assert _keys(populated, at(populated, "data/cust-1")) == [
        "data/cust-1/z.csv",
        "data/cust-10/z.csv",
    ]
    assert _keys(populated, at(populated, "data/ab/x.csv")) == ["data/ab/x.csv"]
    assert _keys(populated, at(populated, "data/nothing")) == []
    assert _keys(populated, at(populated, "nowhere/")) == []
    assert _keys(populated, "s3://missing-bucket-of-the-tests/") == []


def test_list_objects_bucket_only_prefix(populated: ObjectStore, other_bucket: str):
    expected = [
        "data/a-c.csv",
        "data/a0.csv",
        "data/ab/deep/er/y.csv",
        "data/ab/x.csv",
        "data/abc.csv",
        "data/b.csv",
        "data/cust-1/z.csv",
        "data/cust-10/z.csv",
        "top.csv",
    ]
    assert _keys(populated, at(populated)) == expected
    assert _keys(populated, f"s3://{populated.bucket}") == expected
    assert _keys(populated, f"s3://{other_bucket}/") == ["data/ab/x.csv"]


def test_list_objects_infos(populated: ObjectStore):
    (info,) = populated.list_objects(at(populated, "data/b.csv"))
    assert info.uri == at(populated, "data/b.csv")
    assert info.key == "data/b.csv"
    assert info.size == len(b"data/b.csv")
    assert info.etag == _md5_etag(b"data/b.csv")
    assert info.last_modified.tzinfo is not None
    assert info == populated.head(at(populated, "data/b.csv"))


@pytest.mark.parametrize("uri", ["http://bkt/x", "bkt/x", "s3:///x", "/tmp/x"])
def test_list_objects_rejects_non_s3(store: ObjectStore, uri: str):
    with pytest.raises(ValueError, match="not an s3:// URI"):
        store.list_objects(uri)


# Atomic replacement (the local store's temporary files) ----------------------------------------


def test_failed_rename_keeps_old_object_and_leaves_no_temp(
    local_store: LocalObjectStore, data_home: Path, monkeypatch: pytest.MonkeyPatch
):
    local_store.write_bytes("s3://b/dir/k.csv", b"old")

    def broken_replace(src, dst):
        raise OSError("disk went away")

    # A context of its own: undoing the fixture's monkeypatch would also drop the data home.
    with monkeypatch.context() as patch, pytest.raises(OSError, match="disk went away"):
        patch.setattr(os, "replace", broken_replace)
        local_store.write_bytes("s3://b/dir/k.csv", b"new content")

    assert local_store.read_bytes("s3://b/dir/k.csv") == b"old"
    assert _files_under(data_home / "s3") == ["b/dir/k.csv"]
    assert [o.key for o in local_store.list_objects("s3://b/")] == ["dir/k.csv"]


def test_failure_mid_write_keeps_old_object_and_temp_is_never_listed(
    local_store: LocalObjectStore, data_home: Path
):
    store = local_store
    store.write_bytes("s3://b/dir/k.csv", b"old")
    seen: dict[str, object] = {}

    def half_then_fail(handle) -> None:
        handle.write(b"half of the new ")
        handle.flush()
        # A write in progress: the temp file exists on disk but is not an object.
        seen["on_disk"] = _files_under(data_home / "s3")
        seen["listed"] = [o.key for o in store.list_objects("s3://b/")]
        seen["read"] = store.read_bytes("s3://b/dir/k.csv")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        store._replace(store._path("s3://b/dir/k.csv"), half_then_fail)

    on_disk = seen["on_disk"]
    assert isinstance(on_disk, list) and len(on_disk) == 2
    temp = next(p for p in on_disk if p != "b/dir/k.csv")
    assert temp.startswith("b/dir/.k.csv.") and temp.endswith(".tmp")
    assert seen["listed"] == ["dir/k.csv"]
    assert seen["read"] == b"old"
    # Afterwards: old content, temp file gone.
    assert store.read_bytes("s3://b/dir/k.csv") == b"old"
    assert _files_under(data_home / "s3") == ["b/dir/k.csv"]


def test_failed_upload_keeps_old_object(store: ObjectStore, data_home: Path, tmp_path: Path):
    uri = at(store, "k")
    store.write_bytes(uri, b"old")
    with pytest.raises(FileNotFoundError):
        store.upload_file(tmp_path / "does-not-exist", uri)
    assert store.read_bytes(uri) == b"old"
    assert [o.key for o in store.list_objects(at(store))] == ["k"]
    if isinstance(store, LocalObjectStore):
        assert _files_under(data_home / "s3") == [f"{store.bucket}/k"]


# ETags -----------------------------------------------------------------------------------------


def test_etag_is_quoted_md5_and_follows_content(store: ObjectStore):
    uri = at(store, "k")
    first = store.write_bytes(uri, b"aaaa")
    assert first.etag == '"' + hashlib.md5(b"aaaa").hexdigest() + '"'
    assert store.head(uri).etag == first.etag
    second = store.write_bytes(uri, b"bbbb")
    assert second.etag == _md5_etag(b"bbbb")
    assert store.head(uri).etag == _md5_etag(b"bbbb")
    assert store.write_bytes(at(store, "other"), b"aaaa").etag == first.etag
    assert store.write_bytes(at(store, "empty"), b"").etag == '"d41d8cd98f00b204e9800998ecf8427e"'


def test_etag_changes_with_same_size_and_same_mtime(local_store: LocalObjectStore):
    """On coarse-timestamp filesystems two quick same-size writes share an mtime."""
    store = local_store
    path = store._path("s3://b/k")
    pinned = 1_700_000_000_123_456_789
    for content in (b"aaaa", b"bbbb", b"cccc", b"bbbb"):
        store.write_bytes("s3://b/k", content)
        os.utime(path, ns=(pinned, pinned))
        assert store.head("s3://b/k").etag == _md5_etag(content)
        (info,) = store.list_objects("s3://b/k")
        assert info.etag == _md5_etag(content)


def test_etag_of_a_file_changed_within_the_timestamp_tick(tmp_path: Path):
    """Same path, size, mtime and ctime (one coarse clock tick): the content still decides."""
    path = tmp_path / "f"
    now_ns = time.time_ns()
    stat = types.SimpleNamespace(st_size=4, st_mtime_ns=now_ns, st_ctime_ns=now_ns)
    path.write_bytes(b"aaaa")
    assert storage._etag(path, stat) == _md5_etag(b"aaaa")  # type: ignore[arg-type]
    path.write_bytes(b"bbbb")
    assert storage._etag(path, stat) == _md5_etag(b"bbbb")  # type: ignore[arg-type]


def test_etag_of_a_settled_file_is_hashed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "f"
    path.write_bytes(b"settled content")
    old_ns = time.time_ns() - 3600 * 1_000_000_000
    stat = types.SimpleNamespace(st_size=15, st_mtime_ns=old_ns, st_ctime_ns=old_ns)
    expected = _md5_etag(b"settled content")
    calls = []
    real_md5 = hashlib.md5

    def counting_md5(*args, **kwargs):
        calls.append(1)
        return real_md5(*args, **kwargs)

    monkeypatch.setattr(storage.hashlib, "md5", counting_md5)
    for _ in range(3):
        assert storage._etag(path, stat) == expected  # type: ignore[arg-type]
    assert len(calls) == 1


# copy, exists, head, missing objects -----------------------------------------------------------


def test_copy_object(store: ObjectStore, other_bucket: str):
    src = at(store, "a/k.bin")
    dst = f"s3://{other_bucket}/b/k.bin"
    store.write_bytes(src, b"\x00\x01payload")
    store.write_bytes(dst, b"old destination")
    info = store.copy_object(src, dst)
    assert info.uri == dst
    assert info.key == "b/k.bin"
    assert info.size == 9
    assert info.etag == _md5_etag(b"\x00\x01payload")
    assert info == store.head(dst)
    assert store.read_bytes(dst) == b"\x00\x01payload"
    assert store.read_bytes(src) == b"\x00\x01payload"
    store.copy_object(src, f"s3://{other_bucket}/new/deeper/k.bin")
    assert store.read_bytes(f"s3://{other_bucket}/new/deeper/k.bin") == b"\x00\x01payload"
    # Within one bucket too.
    store.copy_object(src, at(store, "a/copy.bin"))
    assert store.read_bytes(at(store, "a/copy.bin")) == b"\x00\x01payload"


def test_copy_object_onto_itself_keeps_it(store: ObjectStore):
    uri = at(store, "k.bin")
    written = store.write_bytes(uri, b"same")
    copied = store.copy_object(uri, uri)
    # S3 refuses a CopyObject onto itself: the S3 store leaves the object as it is.
    assert (copied.uri, copied.key, copied.size, copied.etag) == (
        written.uri,
        written.key,
        written.size,
        written.etag,
    )
    assert store.read_bytes(uri) == b"same"
    assert [o.key for o in store.list_objects(at(store))] == ["k.bin"]


def test_copy_object_missing_source(store: ObjectStore, other_bucket: str):
    with pytest.raises(FileNotFoundError, match=f"{at(store)}nope"):
        store.copy_object(at(store, "nope"), f"s3://{other_bucket}/k")
    assert not store.exists(f"s3://{other_bucket}/k")


def test_exists_and_head(store: ObjectStore):
    assert store.exists(at(store, "k")) is False
    store.write_bytes(at(store, "dir/k"), b"12345")
    assert store.exists(at(store, "dir/k")) is True
    assert store.exists(at(store, "dir/k2")) is False
    info = store.head(at(store, "dir/k"))
    assert (info.uri, info.key, info.size, info.etag) == (
        at(store, "dir/k"),
        "dir/k",
        5,
        _md5_etag(b"12345"),
    )


def test_a_folder_is_not_an_object(store: ObjectStore):
    store.write_bytes(at(store, "dir/k"), b"1")
    assert store.exists(at(store, "dir")) is False
    with pytest.raises(FileNotFoundError, match=at(store, "dir")):
        store.read_bytes(at(store, "dir"))
    with pytest.raises(FileNotFoundError, match=at(store, "dir")):
        store.head(at(store, "dir"))


@pytest.mark.parametrize("method", ["read_bytes", "head"])
def test_missing_object_raises_file_not_found_with_uri(store: ObjectStore, method: str):
    with pytest.raises(FileNotFoundError, match=rf"^no object at {at(store)}missing/k\.csv$"):
        getattr(store, method)(at(store, "missing/k.csv"))


def test_download_missing_object(store: ObjectStore, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=at(store, "missing")):
        store.download_file(at(store, "missing"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# Keys that are not plain object keys -----------------------------------------------------------


# What follows s3://<bucket>.
BAD_KEYS = ["/a/../k", "/../k", "/..", "/a/./k", "/a//k", "/a/k/", "/", ""]


@pytest.mark.parametrize("suffix", BAD_KEYS)
def test_bad_keys_are_rejected_everywhere(store: ObjectStore, tmp_path: Path, suffix: str):
    uri = f"s3://{store.bucket}{suffix}"
    source = tmp_path / "f"
    source.write_bytes(b"x")
    store.write_bytes(at(store, "good"), b"x")
    calls = [
        lambda: store.write_bytes(uri, b"x"),
        lambda: store.read_bytes(uri),
        lambda: store.exists(uri),
        lambda: store.head(uri),
        lambda: store.copy_object(at(store, "good"), uri),
        lambda: store.copy_object(uri, at(store, "other")),
        lambda: store.download_file(uri, tmp_path / "out"),
        lambda: store.upload_file(source, uri),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"names a prefix|not a plain object key"):
            call()
    # Nothing escaped the bucket or was created.
    assert [o.key for o in store.list_objects(at(store))] == ["good"]
    if isinstance(store, LocalObjectStore):
        assert _files_under(store.base) == [f"{store.bucket}/good"]


def test_prefix_as_object_message(store: ObjectStore):
    b = store.bucket
    with pytest.raises(ValueError, match=rf"^'s3://{b}/dir/' names a prefix, not an object$"):
        store.write_bytes(f"s3://{b}/dir/", b"x")
    with pytest.raises(ValueError, match=rf"^'s3://{b}/a/\.\./k' is not a plain object key$"):
        store.write_bytes(f"s3://{b}/a/../k", b"x")


@pytest.mark.parametrize("uri", ["http://b/k", "b/k", "s3:///k", "file:///tmp/k"])
def test_non_s3_uris_are_rejected(store: ObjectStore, uri: str):
    with pytest.raises(ValueError, match="not an s3:// URI"):
        store.write_bytes(uri, b"x")
    with pytest.raises(ValueError, match="not an s3:// URI"):
        store.read_bytes(uri)


# Prefix download and directory upload ----------------------------------------------------------


def test_download_prefix_of_a_folder_keeps_relative_paths(populated: ObjectStore, tmp_path: Path):
    target = tmp_path / "in"
    paths = populated.download_prefix(at(populated, "data/ab/"), target)
    assert paths == [target / "deep" / "er" / "y.csv", target / "x.csv"]
    assert _files_under(target) == ["deep/er/y.csv", "x.csv"]
    assert (target / "deep/er/y.csv").read_bytes() == b"data/ab/deep/er/y.csv"
    # Same without the trailing slash on the folder name.
    again = tmp_path / "again"
    populated.download_prefix(at(populated, "data/cust-1/"), again)
    assert _files_under(again) == ["z.csv"]


def test_download_prefix_naming_one_object_stages_that_object(
    populated: ObjectStore, tmp_path: Path
):
    target = tmp_path / "in"
    paths = populated.download_prefix(at(populated, "data/ab/x.csv"), target)
    assert paths == [target / "x.csv"]
    assert _files_under(target) == ["x.csv"]
    assert (target / "x.csv").read_bytes() == b"data/ab/x.csv"


def test_download_prefix_matching_nothing(populated: ObjectStore, tmp_path: Path):
    assert populated.download_prefix(at(populated, "none/"), tmp_path / "in") == []
    assert not (tmp_path / "in").exists() or _files_under(tmp_path / "in") == []


def test_upload_directory(store: ObjectStore, tmp_path: Path):
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "b.txt").write_bytes(b"B")
    (src / "a.txt").write_bytes(b"A")
    (src / "sub" / "deeper" / "c.txt").write_bytes(b"C")
    (src / "empty").mkdir()
    uris = store.upload_directory(src, at(store, "up/"))
    assert uris == [
        at(store, "up/a.txt"),
        at(store, "up/b.txt"),
        at(store, "up/sub/deeper/c.txt"),
    ]
    assert [o.key for o in store.list_objects(at(store, "up/"))] == [
        "up/a.txt",
        "up/b.txt",
        "up/sub/deeper/c.txt",
    ]
    assert store.read_bytes(at(store, "up/sub/deeper/c.txt")) == b"C"
    # Round trip through download_prefix.
    back = tmp_path / "back"
    store.download_prefix(at(store, "up"), back)
    assert _files_under(back) == ["a.txt", "b.txt", "sub/deeper/c.txt"]
    assert (back / "a.txt").read_bytes() == b"A"


# URIs ------------------------------------------------------------------------------------------


def test_split_uri():
    assert split_uri("s3://bucket/some/key.csv") == ("bucket", "some/key.csv")
    assert split_uri("s3://bucket/some/prefix/") == ("bucket", "some/prefix/")
    assert split_uri("s3://bucket") == ("bucket", "")
    assert split_uri("s3://bucket/") == ("bucket", "")
    for bad in ["http://bucket/k", "bucket/k", "s3:///k", ""]:
        with pytest.raises(ValueError, match="not an s3:// URI"):
            split_uri(bad)


def test_join_uri():
    assert join_uri("s3://b") == "s3://b"
    assert join_uri("s3://b/", "a") == "s3://b/a"
    assert join_uri("s3://b/x/", "/a/", "b/", "c.csv") == "s3://b/x/a/b/c.csv"
    assert join_uri("s3://b/x", "a/b") == "s3://b/x/a/b"


@pytest.mark.parametrize("cls", [LocalObjectStore, S3ObjectStore])
def test_uri_without_and_with_prefix(cls: type[ObjectStore]):
    plain = cls(bucket="bkt")
    assert plain.uri() == "s3://bkt"
    assert plain.uri("code", "training", "x.py") == "s3://bkt/code/training/x.py"
    prefixed = cls(bucket="bkt", prefix="team/proj")
    assert prefixed.uri() == "s3://bkt/team/proj"
    assert prefixed.uri("landing", "acme") == "s3://bkt/team/proj/landing/acme"
    assert cls(bucket="bkt", prefix="/team/proj/").uri("k") == "s3://bkt/team/proj/k"


def test_local_store_default_bucket():
    assert LocalObjectStore().uri("k") == "s3://forecast-assets/k"


def test_hash_and_question_mark_are_part_of_the_key(store: ObjectStore):
    uri = at(store, "landing/file#1?v=2.csv")
    store.write_bytes(uri, b"x")
    assert [o.key for o in store.list_objects(at(store, "landing/"))] == ["landing/file#1?v=2.csv"]
    assert store.read_bytes(uri) == b"x"
    assert not store.exists(at(store, "landing/file"))


def test_list_refuses_parent_segments(store: ObjectStore, other_bucket: str):
    store.write_bytes(f"s3://{other_bucket}/secret.csv", b"x")
    with pytest.raises(ValueError, match="not a plain prefix"):
        store.list_objects(f"s3://{store.bucket}/../{other_bucket}/")


# S3 only ---------------------------------------------------------------------------------------

MB = 1024 * 1024


def test_s3_store_builds_its_client_when_first_used(monkeypatch: pytest.MonkeyPatch):
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    store = S3ObjectStore(bucket="bkt", prefix="p")
    assert store.uri("k") == "s3://bkt/p/k"
    assert store._s3_client is None


def test_s3_listing_paginates_past_1000_keys(s3_store: S3ObjectStore):
    keys = [f"many/{i}.csv" for i in range(1050)]
    client, bucket = s3_store.client, s3_store.bucket
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=k.encode()), keys))
    # Neighbours that share the first characters but not the prefix.
    s3_store.write_bytes(at(s3_store, "many-more/x.csv"), b"x")
    s3_store.write_bytes(at(s3_store, "man/y.csv"), b"y")
    pages: list[int] = []
    client.meta.events.register("after-call.s3.ListObjectsV2", lambda **_: pages.append(1))

    listed = s3_store.list_objects(at(s3_store, "many/"))

    assert len(pages) == 2  # 1000 + 50
    # Every key once, in key order ("many/10.csv" before "many/2.csv").
    assert [o.key for o in listed] == sorted(keys)
    assert [o.key for o in listed[:4]] == [
        "many/0.csv",
        "many/1.csv",
        "many/10.csv",
        "many/100.csv",
    ]
    assert all(o.etag == _md5_etag(o.key.encode()) for o in listed)
    assert all(o.uri == at(s3_store, o.key) for o in listed)
    assert len(s3_store.list_objects(at(s3_store, "man"))) == 1052


def test_s3_missing_object_or_bucket_is_file_not_found_with_the_uri(
    s3_store: S3ObjectStore, tmp_path: Path
):
    out = tmp_path / "out"
    for uri in (at(s3_store, "missing.csv"), "s3://missing-bucket-of-the-tests/k.csv"):
        pattern = f"^no object at {uri}$"
        with pytest.raises(FileNotFoundError, match=pattern) as read:
            s3_store.read_bytes(uri)
        assert isinstance(read.value.__cause__, ClientError)
        with pytest.raises(FileNotFoundError, match=pattern):
            s3_store.head(uri)
        with pytest.raises(FileNotFoundError, match=pattern):
            s3_store.download_file(uri, out)
        with pytest.raises(FileNotFoundError, match=pattern):
            s3_store.copy_object(uri, at(s3_store, "copy.csv"))
        assert s3_store.exists(uri) is False
    assert not out.exists()
    assert s3_store.list_objects("s3://missing-bucket-of-the-tests/") == []
    # Buckets are not created on demand: writing into a missing one is S3's error.
    with pytest.raises(ClientError, match="NoSuchBucket"):
        s3_store.write_bytes("s3://missing-bucket-of-the-tests/k.csv", b"x")


def test_s3_etag_is_the_md5_of_single_part_uploads(s3_store: S3ObjectStore, tmp_path: Path):
    data = os.urandom(3 * MB)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    infos = [
        s3_store.upload_file(path, at(s3_store, "up/f.bin")),
        s3_store.write_bytes(at(s3_store, "w/f.bin"), data),
        s3_store.copy_object(at(s3_store, "up/f.bin"), at(s3_store, "c/f.bin")),
    ]
    assert [(i.size, i.etag) for i in infos] == [(len(data), _md5_etag(data))] * 3
    # As S3 itself reports it, quoted.
    raw = s3_store.client.head_object(Bucket=s3_store.bucket, Key="up/f.bin")
    assert raw["ETag"] == _md5_etag(data)
    assert [o.etag for o in s3_store.list_objects(at(s3_store))] == [_md5_etag(data)] * 3


def test_s3_multipart_upload_etag_is_not_the_md5_but_follows_content(
    s3_store: S3ObjectStore, tmp_path: Path
):
    data = os.urandom(9 * MB)  # past boto3's 8 MB multipart threshold: two parts
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    uri = at(s3_store, "big.bin")
    info = s3_store.upload_file(path, uri)
    part_md5s = b"".join(hashlib.md5(p).digest() for p in (data[: 8 * MB], data[8 * MB :]))
    assert info.etag == f'"{hashlib.md5(part_md5s).hexdigest()}-2"' != _md5_etag(data)
    assert info.size == len(data)
    s3_store.download_file(uri, tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert s3_store.upload_file(path, uri).etag != info.etag


def test_s3_copy_past_the_copy_object_limit_is_a_managed_copy(
    s3_store: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
):
    calls: list[str] = []
    s3_store.client.meta.events.register(
        "before-call.s3.*", lambda model, **_: calls.append(model.name)
    )
    data = os.urandom(9 * MB)
    s3_store.write_bytes(at(s3_store, "big.bin"), data)

    calls.clear()
    small = s3_store.copy_object(at(s3_store, "big.bin"), at(s3_store, "copy1.bin"))
    assert "CopyObject" in calls and "UploadPartCopy" not in calls
    assert small.etag == _md5_etag(data)

    # Pretend 9 MB is past the 5 GiB limit: boto3's managed copy, in 8 MB parts.
    monkeypatch.setattr(storage, "_COPY_OBJECT_LIMIT", MB)
    calls.clear()
    big = s3_store.copy_object(at(s3_store, "big.bin"), at(s3_store, "copy2.bin"))
    assert calls.count("UploadPartCopy") == 2 and "CopyObject" not in calls
    assert big.etag.endswith('-2"')
    assert big.size == len(data)
    assert s3_store.read_bytes(at(s3_store, "copy2.bin")) == data


def test_s3_copy_of_a_source_replaced_meanwhile_copies_the_new_one(s3_store: S3ObjectStore):
    """S3 answers 412 to a CopyObject whose CopySourceIfMatch no longer holds. moto ignores that
    header, so the test plays S3's part: it replaces the source and answers 412, once."""
    src, dst = at(s3_store, "src.bin"), at(s3_store, "dst.bin")
    s3_store.write_bytes(src, b"first")
    conditions: list[str] = []

    def replace_source_once(params, **_):
        conditions.append(params["headers"]["x-amz-copy-source-if-match"])
        if len(conditions) > 1:
            return None  # on to moto
        # Another writer, between the store's HeadObject and its CopyObject.
        s3_store.client.put_object(Bucket=s3_store.bucket, Key="src.bin", Body=b"second!")
        error = {
            "Error": {"Code": "PreconditionFailed", "Message": "pre-conditions did not hold"},
            "ResponseMetadata": {"HTTPStatusCode": 412},
        }
        return AWSResponse(dst, 412, {}, None), error

    s3_store.client.meta.events.register("before-call.s3.CopyObject", replace_source_once)
    info = s3_store.copy_object(src, dst)
    assert conditions == [_md5_etag(b"first"), _md5_etag(b"second!")]
    assert s3_store.read_bytes(dst) == b"second!"
    assert (info.size, info.etag) == (7, _md5_etag(b"second!"))


def test_s3_write_describes_what_it_wrote_even_if_replaced_at_once(s3_store: S3ObjectStore):
    uri = at(s3_store, "k")
    replaced: list[bool] = []

    def replace_once(**_) -> None:
        if not replaced:  # another writer, between the store's PutObject and its HeadObject
            replaced.append(True)
            s3_store.client.put_object(Bucket=s3_store.bucket, Key="k", Body=b"theirs")

    s3_store.client.meta.events.register("after-call.s3.PutObject", replace_once)
    info = s3_store.write_bytes(uri, b"mine")
    assert replaced
    assert (info.uri, info.key, info.size, info.etag) == (uri, "k", 4, _md5_etag(b"mine"))
    assert info.last_modified.tzinfo is not None
    assert s3_store.read_bytes(uri) == b"theirs"


def test_s3_upload_directory_and_download_prefix_round_trip(
    s3_store: S3ObjectStore, tmp_path: Path
):
    files = {
        "a.txt": b"A",
        "empty.txt": b"",
        "model/meta data.json": b'{"k": 1}',
        "model/weights.bin": os.urandom(300_000),
        "model/\u00fc/\u00df #1?.txt": "\u00fc".encode(),
    }
    src = tmp_path / "src"
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)

    uris = s3_store.upload_directory(src, at(s3_store, "art/"))

    assert sorted(uris) == sorted(at(s3_store, f"art/{name}") for name in files)
    listed = s3_store.list_objects(at(s3_store, "art/"))
    assert [o.key for o in listed] == sorted(f"art/{name}" for name in files)
    assert {o.key: o.etag for o in listed} == {
        f"art/{name}": _md5_etag(data) for name, data in files.items()
    }
    back = tmp_path / "back"
    paths = s3_store.download_prefix(at(s3_store, "art"), back)
    assert {p.relative_to(back).as_posix(): p.read_bytes() for p in paths} == files
    assert _files_under(back) == sorted(files)


def test_s3_store_as_a_dagster_resource_with_its_own_s3_resource(
    aws_env: str, make_bucket: Callable[[], str], monkeypatch: pytest.MonkeyPatch
):
    bucket = make_bucket()
    # Configured on the S3Resource, not by the environment.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    store = S3ObjectStore(
        bucket=bucket,
        prefix="proj",
        s3=S3Resource(endpoint_url=aws_env, region_name="eu-central-1"),
    )

    @dg.asset
    def written(store: ObjectStore) -> None:
        store.write_bytes(store.uri("from-dagster.txt"), b"hello")

    assert dg.materialize([written], resources={"store": store}).success
    assert store.read_bytes(f"s3://{bucket}/proj/from-dagster.txt") == b"hello"


def test_s3_head_tells_missing_from_forbidden_when_s3_answers_403(s3_store, monkeypatch):
    """Without an unconditional s3:ListBucket, S3 answers 403 for a missing key."""
    from botocore.exceptions import ClientError

    present = s3_store.uri("k", "present.csv")
    s3_store.write_bytes(present, b"x")
    client = s3_store.client

    def forbidden(**kwargs):
        raise ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "HeadObject")

    monkeypatch.setattr(client, "head_object", forbidden)
    assert s3_store.exists(s3_store.uri("k", "missing.csv")) is False
    with pytest.raises(ClientError):  # there, but not ours to read: a real permission error
        s3_store.head(present)

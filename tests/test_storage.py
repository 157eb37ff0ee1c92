"""LocalObjectStore gives local files S3's semantics: flat keys, prefix listing in key order,
whole-object replacement, MD5 ETags, and refusal of keys that are not plain object keys."""

from __future__ import annotations

import hashlib
import os
import time
import types
from pathlib import Path

import pytest

from resources import storage
from resources.storage import LocalObjectStore, join_uri, split_uri


def _md5_etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def _files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# Round trip and layout ---------------------------------------------------------------------------


def test_write_read_round_trip_and_layout(store: LocalObjectStore, data_home: Path):
    info = store.write_bytes("s3://bkt/a/b/c.csv", b"x,y\n1,2\n")
    assert store.read_bytes("s3://bkt/a/b/c.csv") == b"x,y\n1,2\n"
    assert info.uri == "s3://bkt/a/b/c.csv"
    assert info.key == "a/b/c.csv"
    assert info.size == 8
    assert info.etag == _md5_etag(b"x,y\n1,2\n")
    assert info.last_modified.tzinfo is not None
    # s3://bucket/key is <data home>/s3/<bucket>/<key>, and nothing else is left behind.
    assert store.base == data_home.resolve() / "s3"
    assert _files_under(data_home / "s3") == ["bkt/a/b/c.csv"]


def test_root_overrides_data_home(tmp_path: Path, data_home: Path):
    store = LocalObjectStore(root=str(tmp_path / "elsewhere"))
    store.write_bytes("s3://b/k", b"1")
    assert (tmp_path / "elsewhere" / "b" / "k").read_bytes() == b"1"
    assert not (data_home / "s3").exists()


def test_write_replaces_whole_object(store: LocalObjectStore):
    store.write_bytes("s3://b/k.txt", b"a much longer first version")
    store.write_bytes("s3://b/k.txt", b"short")
    assert store.read_bytes("s3://b/k.txt") == b"short"
    assert store.head("s3://b/k.txt").size == 5


# Listing ---------------------------------------------------------------------------------------


def _keys(store: LocalObjectStore, prefix: str) -> list[str]:
    return [o.key for o in store.list_objects(prefix)]


@pytest.fixture
def populated(store: LocalObjectStore) -> LocalObjectStore:
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
        store.write_bytes(f"s3://bkt/{key}", key.encode())
    store.write_bytes("s3://other/data/ab/x.csv", b"other bucket")
    return store


def test_list_objects_by_prefix_in_key_order(populated: LocalObjectStore):
    assert _keys(populated, "s3://bkt/data/a") == [
        "data/a-c.csv",
        "data/a0.csv",
        "data/ab/deep/er/y.csv",
        "data/ab/x.csv",
        "data/abc.csv",
    ]


def test_list_objects_folder_prefix_includes_nested_and_excludes_siblings(
    populated: LocalObjectStore,
):
    assert _keys(populated, "s3://bkt/data/ab/") == ["data/ab/deep/er/y.csv", "data/ab/x.csv"]
    # cust-10 shares the directory and the first characters, but not the prefix "cust-1/".
    assert _keys(populated, "s3://bkt/data/cust-1/") == ["data/cust-1/z.csv"]
    # Without the slash, S3 prefix semantics include cust-10 too.
    assert _keys(populated, "s3://bkt/data/cust-1") == ["data/cust-1/z.csv", "data/cust-10/z.csv"]
    assert _keys(populated, "s3://bkt/data/ab/x.csv") == ["data/ab/x.csv"]
    assert _keys(populated, "s3://bkt/data/nothing") == []
    assert _keys(populated, "s3://bkt/nowhere/") == []
    assert _keys(populated, "s3://missing-bucket/") == []


def test_list_objects_bucket_only_prefix(populated: LocalObjectStore):
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
    assert _keys(populated, "s3://bkt/") == expected
    assert _keys(populated, "s3://bkt") == expected
    assert _keys(populated, "s3://other/") == ["data/ab/x.csv"]


def test_list_objects_infos(populated: LocalObjectStore):
    (info,) = populated.list_objects("s3://bkt/data/b.csv")
    assert info.uri == "s3://bkt/data/b.csv"
    assert info.key == "data/b.csv"
    assert info.size == len(b"data/b.csv")
    assert info.etag == _md5_etag(b"data/b.csv")
    assert info == populated.head("s3://bkt/data/b.csv")


@pytest.mark.parametrize("uri", ["http://bkt/x", "bkt/x", "s3:///x", "/tmp/x"])
def test_list_objects_rejects_non_s3(store: LocalObjectStore, uri: str):
    with pytest.raises(ValueError, match="not an s3:// URI"):
        store.list_objects(uri)


# Atomic replacement ----------------------------------------------------------------------------


def test_failed_rename_keeps_old_object_and_leaves_no_temp(
    store: LocalObjectStore, data_home: Path, monkeypatch: pytest.MonkeyPatch
):
    store.write_bytes("s3://b/dir/k.csv", b"old")

    def broken_replace(src, dst):
        raise OSError("disk went away")

    # A context of its own: undoing the fixture's monkeypatch would also drop the data home.
    with monkeypatch.context() as patch, pytest.raises(OSError, match="disk went away"):
        patch.setattr(os, "replace", broken_replace)
        store.write_bytes("s3://b/dir/k.csv", b"new content")

    assert store.read_bytes("s3://b/dir/k.csv") == b"old"
    assert _files_under(data_home / "s3") == ["b/dir/k.csv"]
    assert [o.key for o in store.list_objects("s3://b/")] == ["dir/k.csv"]


def test_failure_mid_write_keeps_old_object_and_temp_is_never_listed(
    store: LocalObjectStore, data_home: Path
):
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


def test_failed_upload_keeps_old_object(store: LocalObjectStore, data_home: Path, tmp_path: Path):
    store.write_bytes("s3://b/k", b"old")
    with pytest.raises(FileNotFoundError):
        store.upload_file(tmp_path / "does-not-exist", "s3://b/k")
    assert store.read_bytes("s3://b/k") == b"old"
    assert _files_under(data_home / "s3") == ["b/k"]


# ETags -----------------------------------------------------------------------------------------


def test_etag_is_quoted_md5_and_follows_content(store: LocalObjectStore):
    first = store.write_bytes("s3://b/k", b"aaaa")
    assert first.etag == '"' + hashlib.md5(b"aaaa").hexdigest() + '"'
    assert store.head("s3://b/k").etag == first.etag
    second = store.write_bytes("s3://b/k", b"bbbb")
    assert second.etag == _md5_etag(b"bbbb")
    assert store.head("s3://b/k").etag == _md5_etag(b"bbbb")
    assert store.write_bytes("s3://b/other", b"aaaa").etag == first.etag
    assert store.write_bytes("s3://b/empty", b"").etag == '"d41d8cd98f00b204e9800998ecf8427e"'


def test_etag_changes_with_same_size_and_same_mtime(store: LocalObjectStore):
    """On coarse-timestamp filesystems two quick same-size writes share an mtime."""
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


def test_copy_object(store: LocalObjectStore):
    store.write_bytes("s3://src/a/k.bin", b"\x00\x01payload")
    store.write_bytes("s3://dst/b/k.bin", b"old destination")
    info = store.copy_object("s3://src/a/k.bin", "s3://dst/b/k.bin")
    assert info.uri == "s3://dst/b/k.bin"
    assert info.key == "b/k.bin"
    assert info.size == 9
    assert info.etag == _md5_etag(b"\x00\x01payload")
    assert store.read_bytes("s3://dst/b/k.bin") == b"\x00\x01payload"
    assert store.read_bytes("s3://src/a/k.bin") == b"\x00\x01payload"
    store.copy_object("s3://src/a/k.bin", "s3://dst/new/deeper/k.bin")
    assert store.read_bytes("s3://dst/new/deeper/k.bin") == b"\x00\x01payload"


def test_copy_object_missing_source(store: LocalObjectStore):
    with pytest.raises(FileNotFoundError, match="s3://src/nope"):
        store.copy_object("s3://src/nope", "s3://dst/k")
    assert not store.exists("s3://dst/k")


def test_exists_and_head(store: LocalObjectStore):
    assert store.exists("s3://b/k") is False
    store.write_bytes("s3://b/dir/k", b"12345")
    assert store.exists("s3://b/dir/k") is True
    assert store.exists("s3://b/dir/k2") is False
    info = store.head("s3://b/dir/k")
    assert (info.uri, info.key, info.size, info.etag) == (
        "s3://b/dir/k",
        "dir/k",
        5,
        _md5_etag(b"12345"),
    )


def test_a_folder_is_not_an_object(store: LocalObjectStore):
    store.write_bytes("s3://b/dir/k", b"1")
    assert store.exists("s3://b/dir") is False
    with pytest.raises(FileNotFoundError, match="s3://b/dir"):
        store.read_bytes("s3://b/dir")
    with pytest.raises(FileNotFoundError, match="s3://b/dir"):
        store.head("s3://b/dir")


@pytest.mark.parametrize("method", ["read_bytes", "head"])
def test_missing_object_raises_file_not_found_with_uri(store: LocalObjectStore, method: str):
    with pytest.raises(FileNotFoundError, match=r"^no object at s3://b/missing/k\.csv$"):
        getattr(store, method)("s3://b/missing/k.csv")


def test_download_missing_object(store: LocalObjectStore, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="s3://b/missing"):
        store.download_file("s3://b/missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# Keys that are not plain object keys -----------------------------------------------------------


BAD_KEYS = [
    "s3://b/a/../k",
    "s3://b/../k",
    "s3://b/..",
    "s3://b/a/./k",
    "s3://b/a//k",
    "s3://b/a/k/",
    "s3://b/",
    "s3://b",
]


@pytest.mark.parametrize("uri", BAD_KEYS)
def test_bad_keys_are_rejected_everywhere(store: LocalObjectStore, tmp_path: Path, uri: str):
    source = tmp_path / "f"
    source.write_bytes(b"x")
    store.write_bytes("s3://b/good", b"x")
    calls = [
        lambda: store.write_bytes(uri, b"x"),
        lambda: store.read_bytes(uri),
        lambda: store.exists(uri),
        lambda: store.head(uri),
        lambda: store.copy_object("s3://b/good", uri),
        lambda: store.copy_object(uri, "s3://b/other"),
        lambda: store.download_file(uri, tmp_path / "out"),
        lambda: store.upload_file(source, uri),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"names a prefix|not a plain object key"):
            call()
    # Nothing escaped the bucket or was created.
    assert _files_under(store.base) == ["b/good"]


def test_prefix_as_object_message(store: LocalObjectStore):
    with pytest.raises(ValueError, match=r"^'s3://b/dir/' names a prefix, not an object$"):
        store.write_bytes("s3://b/dir/", b"x")
    with pytest.raises(ValueError, match=r"^'s3://b/a/\.\./k' is not a plain object key$"):
        store.write_bytes("s3://b/a/../k", b"x")


@pytest.mark.parametrize("uri", ["http://b/k", "b/k", "s3:///k", "file:///tmp/k"])
def test_non_s3_uris_are_rejected(store: LocalObjectStore, uri: str):
    with pytest.raises(ValueError, match="not an s3:// URI"):
        store.write_bytes(uri, b"x")
    with pytest.raises(ValueError, match="not an s3:// URI"):
        store.read_bytes(uri)


# Prefix download and directory upload ----------------------------------------------------------


def test_download_prefix_of_a_folder_keeps_relative_paths(populated: LocalObjectStore, tmp_path):
    target = tmp_path / "in"
    paths = populated.download_prefix("s3://bkt/data/ab/", target)
    assert paths == [target / "deep" / "er" / "y.csv", target / "x.csv"]
    assert _files_under(target) == ["deep/er/y.csv", "x.csv"]
    assert (target / "deep/er/y.csv").read_bytes() == b"data/ab/deep/er/y.csv"
    # Same without the trailing slash on the folder name.
    again = tmp_path / "again"
    populated.download_prefix("s3://bkt/data/cust-1/", again)
    assert _files_under(again) == ["z.csv"]


def test_download_prefix_naming_one_object_stages_that_object(
    populated: LocalObjectStore, tmp_path: Path
):
    target = tmp_path / "in"
    paths = populated.download_prefix("s3://bkt/data/ab/x.csv", target)
    assert paths == [target / "x.csv"]
    assert _files_under(target) == ["x.csv"]
    assert (target / "x.csv").read_bytes() == b"data/ab/x.csv"


def test_download_prefix_matching_nothing(populated: LocalObjectStore, tmp_path: Path):
    assert populated.download_prefix("s3://bkt/none/", tmp_path / "in") == []
    assert not (tmp_path / "in").exists() or _files_under(tmp_path / "in") == []


def test_upload_directory(store: LocalObjectStore, tmp_path: Path):
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "b.txt").write_bytes(b"B")
    (src / "a.txt").write_bytes(b"A")
    (src / "sub" / "deeper" / "c.txt").write_bytes(b"C")
    (src / "empty").mkdir()
    uris = store.upload_directory(src, "s3://bkt/up/")
    assert uris == [
        "s3://bkt/up/a.txt",
        "s3://bkt/up/b.txt",
        "s3://bkt/up/sub/deeper/c.txt",
    ]
    assert [o.key for o in store.list_objects("s3://bkt/up/")] == [
        "up/a.txt",
        "up/b.txt",
        "up/sub/deeper/c.txt",
    ]
    assert store.read_bytes("s3://bkt/up/sub/deeper/c.txt") == b"C"
    # Round trip through download_prefix.
    back = tmp_path / "back"
    store.download_prefix("s3://bkt/up", back)
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


def test_uri_without_and_with_prefix():
    plain = LocalObjectStore(bucket="bkt")
    assert plain.uri() == "s3://bkt"
    assert plain.uri("code", "training", "x.py") == "s3://bkt/code/training/x.py"
    assert LocalObjectStore().uri("k") == "s3://forecast-assets/k"
    prefixed = LocalObjectStore(bucket="bkt", prefix="team/proj")
    assert prefixed.uri() == "s3://bkt/team/proj"
    assert prefixed.uri("landing", "acme") == "s3://bkt/team/proj/landing/acme"
    assert LocalObjectStore(bucket="bkt", prefix="/team/proj/").uri("k") == "s3://bkt/team/proj/k"


def test_hash_and_question_mark_are_part_of_the_key(store):
    uri = "s3://b/landing/file#1?v=2.csv"
    store.write_bytes(uri, b"x")
    assert [o.key for o in store.list_objects("s3://b/landing/")] == ["landing/file#1?v=2.csv"]
    assert not store.exists("s3://b/landing/file")


def test_list_refuses_parent_segments(store):
    store.write_bytes("s3://other/secret.csv", b"x")
    with pytest.raises(ValueError, match="not a plain prefix"):
        store.list_objects("s3://b/../other/")

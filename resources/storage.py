"""Object storage addressed by ``s3://bucket/key`` URIs, wherever the bytes really live.

:class:`ObjectStore` is the interface every asset, sensor and job launcher uses. The local
implementation keeps objects as files under a data home and gives them S3's semantics: keys are
flat strings, listing is by prefix and in key order, an object is replaced whole or not at all,
and every object has an ETag that changes when its content does (the MD5 of the content, as S3's
is for single-part uploads). :class:`S3ObjectStore`, the S3 implementation (the ``sagemaker``
environment), swaps in with no change to callers: both refuse the same keys, so code tested on
one behaves the same on the other.
"""

import hashlib
import os
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import dagster as dg
from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from resources.data_home import data_home


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    key: str
    size: int
    etag: str
    last_modified: datetime


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> (``bucket``, ``some/key``).

    Split by hand rather than as a URL: in S3 keys ``#`` and ``?`` are ordinary characters.
    """
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return bucket, key


def join_uri(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def object_key(uri: str) -> tuple[str, str]:
    """(bucket, key) of a URI that names one object.

    Refuses a prefix (empty key, trailing ``/``) and keys with empty, ``.`` or ``..`` segments:
    S3 would store those, but they cannot be files, and both stores must accept the same keys.
    """
    bucket, key = split_uri(uri)
    if not key or key.endswith("/"):
        raise ValueError(f"{uri!r} names a prefix, not an object")
    if any(p in ("", ".", "..") for p in key.split("/")):
        raise ValueError(f"{uri!r} is not a plain object key")
    return bucket, key


def list_prefix(prefix_uri: str) -> tuple[str, str]:
    """(bucket, key prefix) of a listing prefix; a ``..`` segment is refused."""
    bucket, prefix = split_uri(prefix_uri)
    if ".." in prefix.split("/"):
        raise ValueError(f"{prefix_uri!r} is not a plain prefix")
    return bucket, prefix


class ObjectStore(dg.ConfigurableResource, ABC):
    """Where raw files, tables, models and job code live, as ``s3://`` URIs."""

    bucket: str
    prefix: str = ""

    def uri(self, *parts: str) -> str:
        """URI of a key under this project's bucket and prefix."""
        base = f"s3://{self.bucket}"
        if self.prefix:
            base = join_uri(base, self.prefix)
        return join_uri(base, *parts) if parts else base

    @abstractmethod
    def list_objects(self, prefix_uri: str) -> list[ObjectInfo]:
        """Objects whose URI starts with ``prefix_uri``, in key order."""

    @abstractmethod
    def read_bytes(self, uri: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, uri: str, data: bytes) -> ObjectInfo:
        """Replace the object at ``uri`` atomically: readers see the old or the new, never half."""

    @abstractmethod
    def exists(self, uri: str) -> bool: ...

    @abstractmethod
    def head(self, uri: str) -> ObjectInfo: ...

    @abstractmethod
    def copy_object(self, src_uri: str, dst_uri: str) -> ObjectInfo:
        """Copy one object, replacing the destination atomically."""

    @abstractmethod
    def delete_object(self, uri: str) -> None:
        """Remove one object; removing a missing object is not an error (as in S3)."""

    @abstractmethod
    def download_file(self, uri: str, path: Path) -> None: ...

    @abstractmethod
    def upload_file(self, path: Path, uri: str) -> ObjectInfo: ...

    def download_prefix(self, prefix_uri: str, directory: Path) -> list[Path]:
        """Copy every object under ``prefix_uri`` into ``directory``, keeping relative keys.

        Like SageMaker's S3Prefix input: a prefix that names one object stages that object.
        """
        paths = []
        prefix = prefix_uri.rstrip("/")
        for info in self.list_objects(prefix_uri):
            relative = info.uri[len(prefix) :].lstrip("/") or info.key.rsplit("/", 1)[-1]
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            self.download_file(info.uri, target)
            paths.append(target)
        return paths

    def upload_directory(self, directory: Path, prefix_uri: str) -> list[str]:
        uris = []
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            uri = join_uri(prefix_uri, path.relative_to(directory).as_posix())
            self.upload_file(path, uri)
            uris.append(uri)
        return uris


class LocalObjectStore(ObjectStore):
    """S3 semantics on local files: ``s3://bucket/key`` is ``<root>/<bucket>/<key>``.

    ``root`` defaults to ``<data home>/s3`` (see ``forecast_assets.environment``).
    """

    bucket: str = "forecast-assets"
    root: str | None = None

    @property
    def base(self) -> Path:
        # Resolved when used, not when definitions load.
        return Path(self.root) if self.root else data_home() / "s3"

    def _path(self, uri: str) -> Path:
        bucket, key = object_key(uri)
        return self.base / bucket / key

    def _info(self, uri: str, path: Path) -> ObjectInfo:
        stat = path.stat()
        return ObjectInfo(
            uri=uri,
            key=split_uri(uri)[1],
            size=stat.st_size,
            etag=_etag(path, stat),
            last_modified=datetime.fromtimestamp(stat.st_mtime, tz=UTC),
        )

    def list_objects(self, prefix_uri: str) -> list[ObjectInfo]:
        bucket, prefix = list_prefix(prefix_uri)
        bucket_dir = self.base / bucket
        # Walk only the deepest directory the prefix fully names.
        start = bucket_dir / prefix.rsplit("/", 1)[0] if "/" in prefix else bucket_dir
        if not start.is_dir():
            return []
        found = []
        for path in _walk_files(start):
            key = path.relative_to(bucket_dir).as_posix()
            if key.startswith(prefix):
                found.append(self._info(f"s3://{bucket}/{key}", path))
        return sorted(found, key=lambda o: o.key)

    def read_bytes(self, uri: str) -> bytes:
        path = self._path(uri)
        if not path.is_file():
            raise FileNotFoundError(f"no object at {uri}")
        return path.read_bytes()

    def _replace(self, path: Path, write) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A temporary file in the same directory, renamed into place: os.replace is atomic on
        # one filesystem, so a crash leaves the old object, never a torn one.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def write_bytes(self, uri: str, data: bytes) -> ObjectInfo:
        path = self._path(uri)
        self._replace(path, lambda h: h.write(data))
        return self._info(uri, path)

    def exists(self, uri: str) -> bool:
        return self._path(uri).is_file()

    def head(self, uri: str) -> ObjectInfo:
        path = self._path(uri)
        if not path.is_file():
            raise FileNotFoundError(f"no object at {uri}")
        return self._info(uri, path)

    def copy_object(self, src_uri: str, dst_uri: str) -> ObjectInfo:
        src = self._path(src_uri)
        if not src.is_file():
            raise FileNotFoundError(f"no object at {src_uri}")
        dst = self._path(dst_uri)

        def write(handle) -> None:
            with src.open("rb") as source:
                shutil.copyfileobj(source, handle, 1 << 20)

        self._replace(dst, write)
        return self._info(dst_uri, dst)

    def delete_object(self, uri: str) -> None:
        self._path(uri).unlink(missing_ok=True)

    def download_file(self, uri: str, path: Path) -> None:
        src = self._path(uri)
        if not src.is_file():
            raise FileNotFoundError(f"no object at {uri}")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)

    def upload_file(self, path: Path, uri: str) -> ObjectInfo:
        dst = self._path(uri)

        def write(handle) -> None:
            with path.open("rb") as source:
                shutil.copyfileobj(source, handle, 1 << 20)

        self._replace(dst, write)
        return self._info(uri, dst)


# CopyObject copies at most 5 GiB in one request; larger objects need a multipart copy.
_COPY_OBJECT_LIMIT = 5 * 1024**3


class S3ObjectStore(ObjectStore):
    """The object store on Amazon S3: ``s3://bucket/key`` is that very S3 object.

    Keys map 1:1, with no translation: what the local store keeps as a file, this one keeps as
    the object of the same key. Listing is a paginated ListObjectsV2 (key order, ETags quoted as
    S3 gives them); a write is one PutObject, which S3 applies whole or not at all; a copy is a
    CopyObject (a managed multipart copy past 5 GiB); files move with boto3's managed transfers
    (multipart past 8 MB, so such an object's ETag is not the MD5 of its content, but still
    changes when the content does). A missing object or bucket reads as FileNotFoundError
    naming the URI, as in the local store; writing to a missing bucket is S3's error, since
    buckets are not created on demand. Without ``s3:ListBucket`` S3 answers 403, not 404, for a
    missing key: that is raised as it is, never taken for absence.

    The client comes from ``s3``, dagster-aws's S3Resource: by default boto3's usual chain
    (environment, profile, instance role) for credentials, region and ``AWS_ENDPOINT_URL``,
    read when the first call is made, not when definitions load.
    """

    bucket: str
    # ResourceDependency is a descriptor that mypy takes for the field's type.
    s3: dg.ResourceDependency[S3Resource] = Field(default_factory=S3Resource)  # type: ignore[arg-type]
    _s3_client: Any = PrivateAttr(default=None)

    @property
    def client(self) -> Any:
        # One client per store: building one costs tens of milliseconds, and clients are
        # thread-safe.
        if self._s3_client is None:
            self._s3_client = self.s3.get_client()
        return self._s3_client

    def _head(self, bucket: str, key: str, uri: str) -> ObjectInfo:
        try:
            response = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                raise FileNotFoundError(f"no object at {uri}") from exc
            # Without an unconditional s3:ListBucket, S3 answers 403 rather than 404 for a
            # missing key; a one-key listing (allowed under our prefix) tells the two apart.
            if exc.response.get("Error", {}).get("Code") in ("403", "AccessDenied", "Forbidden"):
                listed = self.client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
                if not any(o["Key"] == key for o in listed.get("Contents", [])):
                    raise FileNotFoundError(f"no object at {uri}") from exc
            raise
        return ObjectInfo(
            uri=uri,
            key=key,
            size=response["ContentLength"],
            etag=response["ETag"],
            last_modified=_utc_seconds(response["LastModified"]),
        )

    def list_objects(self, prefix_uri: str) -> list[ObjectInfo]:
        bucket, prefix = list_prefix(prefix_uri)
        found = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    found.append(
                        ObjectInfo(
                            uri=f"s3://{bucket}/{key}",
                            key=key,
                            size=obj["Size"],
                            etag=obj["ETag"],
                            last_modified=_utc_seconds(obj["LastModified"]),
                        )
                    )
        except ClientError as exc:
            if _error_code(exc) == "NoSuchBucket":
                return []  # as in the local store: no bucket, no objects
            raise
        # S3 lists in UTF-8 byte order, which is code point order: sorting only guards it.
        return sorted(found, key=lambda o: o.key)

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = object_key(uri)
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                raise FileNotFoundError(f"no object at {uri}") from exc
            raise
        with response["Body"] as body:
            return body.read()

    def write_bytes(self, uri: str, data: bytes) -> ObjectInfo:
        bucket, key = object_key(uri)
        response = self.client.put_object(Bucket=bucket, Key=key, Body=data)
        info = self._head(bucket, key, uri)
        if info.etag == response["ETag"]:
            return info
        # Another writer replaced it since: describe what this call wrote.
        date = response["ResponseMetadata"]["HTTPHeaders"]["date"]
        return ObjectInfo(
            uri=uri,
            key=key,
            size=len(data),
            etag=response["ETag"],
            last_modified=_utc_seconds(parsedate_to_datetime(date)),
        )

    def exists(self, uri: str) -> bool:
        bucket, key = object_key(uri)
        try:
            self._head(bucket, key, uri)
        except FileNotFoundError:
            return False
        return True

    def head(self, uri: str) -> ObjectInfo:
        bucket, key = object_key(uri)
        return self._head(bucket, key, uri)

    def copy_object(self, src_uri: str, dst_uri: str) -> ObjectInfo:
        src_bucket, src_key = object_key(src_uri)
        dst_bucket, dst_key = object_key(dst_uri)
        copy_source = {"Bucket": src_bucket, "Key": src_key}
        for attempt in range(3):
            source = self._head(src_bucket, src_key, src_uri)
            if (src_bucket, src_key) == (dst_bucket, dst_key):
                return source  # S3 refuses a copy onto itself that changes nothing
            # Copy exactly the object that was measured: if it was replaced since (the size
            # may now call for the other way), S3 answers 412 and we measure again.
            condition = {"CopySourceIfMatch": source.etag}
            try:
                if source.size <= _COPY_OBJECT_LIMIT:
                    self.client.copy_object(
                        CopySource=copy_source, Bucket=dst_bucket, Key=dst_key, **condition
                    )
                else:
                    self.client.copy(copy_source, dst_bucket, dst_key, ExtraArgs=condition)
                break
            except ClientError as exc:
                if _error_code(exc) in {"NoSuchKey", "404"}:
                    raise FileNotFoundError(f"no object at {src_uri}") from exc
                if _error_code(exc) not in {"PreconditionFailed", "412"} or attempt == 2:
                    raise
        return self._head(dst_bucket, dst_key, dst_uri)

    def delete_object(self, uri: str) -> None:
        bucket, key = object_key(uri)
        self.client.delete_object(Bucket=bucket, Key=key)

    def download_file(self, uri: str, path: Path) -> None:
        bucket, key = object_key(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Into a temporary file beside the target, renamed when complete.
            self.client.download_file(bucket, key, str(path))
        except ClientError as exc:
            if _is_missing(exc):
                raise FileNotFoundError(f"no object at {uri}") from exc
            raise

    def upload_file(self, path: Path, uri: str) -> ObjectInfo:
        bucket, key = object_key(uri)
        self.client.upload_file(str(path), bucket, key)
        return self._head(bucket, key, uri)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _is_missing(exc: ClientError) -> bool:
    # HEAD responses have no body, so a missing key or bucket is only "404".
    return _error_code(exc) in {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}


def _utc_seconds(moment: datetime) -> datetime:
    # HeadObject's Last-Modified has whole seconds, listings milliseconds: keep what both have.
    return moment.astimezone(UTC).replace(microsecond=0)


def _walk_files(start: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(start):
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith(".") and name.endswith(".tmp"):
                continue  # a write in progress is not an object yet
            yield Path(dirpath) / name


# MD5 is S3's ETag for single-part objects; cache it by (path, size, mtime, ctime) so listing a
# large landing area does not re-read every file on every sensor tick. ctime is in the key because
# mtime can be set back (cp -p, os.utime) and ctime cannot.
_ETAG_CACHE: dict[tuple[str, int, int, int], str] = {}
# File timestamps come from a coarse clock (a scheduler tick, or 1-2 s on some filesystems): a
# same-size rewrite within one tick keeps every key field. So only a file whose ctime is older
# than this is cached (git's "racily clean" rule); a later change then gets a newer ctime.
_SETTLED_NS = 2_000_000_000


def _etag(path: Path, stat: os.stat_result) -> str:
    key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    cached = _ETAG_CACHE.get(key)
    if cached is None:
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        cached = f'"{digest.hexdigest()}"'
        if time.time_ns() - stat.st_ctime_ns > _SETTLED_NS:
            _ETAG_CACHE[key] = cached
    return cached

"""Bundle a job's scripts from ``containers/`` and publish them under a content hash.

A bundle is the job's entry script, its requirements and the shared ``forecast_core`` package;
processing bundles also carry ``bootstrap.py``, which installs the requirements in an image that
lacks them and then runs the script.
It is published once per content (``code/<job>/<sha256>/``): processing jobs stage the folder as
an input, training jobs get it as ``sourcedir.tar.gz`` (script mode). Unchanged code is never
uploaded twice, and every job records exactly which code it ran.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from resources.data_home import REPO_ROOT
from resources.jobs.settings import JobName
from resources.storage import ObjectStore, join_uri

CONTAINERS_DIR = REPO_ROOT / "containers"
ENTRY_SCRIPTS: dict[JobName, str] = {
    "preprocessing": "preprocess.py",
    "training": "train.py",
    "inference": "predict.py",
}


@dataclass(frozen=True)
class CodeBundle:
    job: JobName
    entry_script: str
    files: dict[str, bytes]

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
        return h.hexdigest()[:16]

    def write_to(self, directory: Path) -> Path:
        """Lay the bundle out in ``directory`` as an image (or SageMaker's code input) has it;
        returns the entry script's path."""
        for name, data in self.files.items():
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return directory / self.entry_script

    def tarball(self) -> bytes:
        """A reproducible tar.gz: sorted names, zero mtimes and owners."""
        buffer = io.BytesIO()
        # gzip's own header has a timestamp too (tarfile's "w:gz" sets it to now): zero it.
        with (
            gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w") as tar,
        ):
            for name in sorted(self.files):
                info = tarfile.TarInfo(name)
                info.size = len(self.files[name])
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(self.files[name]))
        return buffer.getvalue()


def bundle(job: JobName, containers_dir: Path = CONTAINERS_DIR) -> CodeBundle:
    job_dir = containers_dir / job
    entry = ENTRY_SCRIPTS[job]
    files = {
        entry: (job_dir / entry).read_bytes(),
        "requirements.txt": (job_dir / "requirements.txt").read_bytes(),
    }
    shared = containers_dir / "shared"
    if job != "training":  # script mode installs training's requirements itself
        files["bootstrap.py"] = (shared / "bootstrap.py").read_bytes()
    for path in sorted((shared / "forecast_core").rglob("*.py")):
        files[path.relative_to(shared).as_posix()] = path.read_bytes()
    return CodeBundle(job=job, entry_script=entry, files=files)


def publish_folder(store: ObjectStore, code: CodeBundle) -> str:
    """Upload the bundle as a folder; returns its prefix URI (ends with '/')."""
    prefix = store.uri("code", code.job, code.digest)
    for name, data in sorted(code.files.items()):
        uri = join_uri(prefix, name)
        if not store.exists(uri):
            store.write_bytes(uri, data)
    return prefix + "/"


def publish_tarball(store: ObjectStore, code: CodeBundle) -> str:
    """Upload the bundle as sourcedir.tar.gz; returns its URI."""
    uri = store.uri("code", code.job, code.digest, "sourcedir.tar.gz")
    if not store.exists(uri):
        store.write_bytes(uri, code.tarball())
    return uri

"""Bundle a job's scripts from ``containers/`` and publish them under a content hash, with the
wheels of what SageMaker's prebuilt image lacks.

A bundle is the job's entry script, its requirements and the shared ``forecast_core`` package;
processing bundles also carry ``bootstrap.py``, which installs the requirements in an image that
lacks them and then runs the script.
It is published once per content (``code/<job>/<sha256>/``): processing jobs stage the folder as
an input, training jobs get it as ``sourcedir.tar.gz`` (script mode). Unchanged code is never
uploaded twice, and every job records exactly which code it ran.

**Jobs start without PyPI.** SageMaker's prebuilt scikit-learn image has the scientific stack but
not ``holidays`` nor ``dagster-pipes``. Rather than ``pip install`` them from PyPI at every job
start (impossible in a VPC whose only way out is an S3 endpoint), their wheels are downloaded
once, for the image's platform and Python, into a *wheelhouse*: ``.wheelhouse/<key>/`` here
(``make wheelhouse``, or the first publish that misses it; ``key`` hashes the requirements and
the target), published once under the hash of its wheels at ``code/wheels/<sha256>/``. The job
stages it as its input (processing) or channel (training) ``wheels``, and the bundle's
``requirements.txt`` then reads ``--no-index --find-links <that folder>``: the same file works
for ``bootstrap.py`` and for the training toolkit's own ``pip install -r requirements.txt``.
Images built from ``containers/<job>/Dockerfile`` have every package, and the local launcher's
interpreter too: their bundles keep the plain requirements and need no wheelhouse.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging import tags
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from resources.data_home import REPO_ROOT
from resources.jobs.settings import JobName
from resources.storage import ObjectStore, join_uri

CONTAINERS_DIR = REPO_ROOT / "containers"
ENTRY_SCRIPTS: dict[JobName, str] = {
    "preprocessing": "preprocess.py",
    "training": "train.py",
    "inference": "predict.py",
}

# The input (processing) or channel (training) the wheelhouse is staged as, and where the job
# finds it from its requirements.txt: processing inputs are siblings under
# /opt/ml/processing/input/, and training channels are at /opt/ml/input/data/<name> while the
# toolkit unpacks sourcedir.tar.gz into /opt/ml/code. pip reads a relative --find-links in a
# requirements file relative to that file.
WHEELS_INPUT = "wheels"
FIND_LINKS: dict[str, str] = {
    "processing": f"../{WHEELS_INPUT}",
    "training": f"../input/data/{WHEELS_INPUT}",
}
WHEELHOUSE_DIR = REPO_ROOT / ".wheelhouse"
MANIFEST = "wheelhouse.json"

# What SageMaker's prebuilt scikit-learn image (SKLEARN_FRAMEWORK_VERSION in
# resources/jobs/sagemaker.py: 1.9-0, Python 3.12) already has, of the packages our jobs'
# requirements name: its scientific stack with their dependencies, and the AWS SDK its training
# toolkit uses. Jobs there run with the image's versions of these; only the rest of the job's
# requirements goes into the wheelhouse. An image built from containers/<job>/Dockerfile has
# requirements.lock's versions of everything instead.
PREBUILT_IMAGE_PACKAGES = frozenset(
    {
        "numpy",
        "pandas",
        "pyarrow",
        "scikit-learn",
        "scipy",
        "joblib",
        "threadpoolctl",
        "narwhals",
        "cloudpickle",
        "python-dateutil",
        "six",
        "tzdata",
        "pytz",
        "boto3",
        "botocore",
        "jmespath",
        "s3transfer",
        "urllib3",
    }
)


@dataclass(frozen=True)
class WheelTarget:
    """The interpreter a wheelhouse is for, as ``pip download`` takes it."""

    python_version: str
    platforms: tuple[str, ...]
    implementation: str = "cp"

    @classmethod
    def current(cls) -> WheelTarget:
        """This interpreter (for tests that install the wheelhouse here)."""
        platforms: list[str] = []
        for tag in tags.sys_tags():
            if tag.platform not in platforms:
                platforms.append(tag.platform)
        return cls(
            python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
            platforms=tuple(platforms),
            implementation=tags.interpreter_name(),
        )

    def pip_args(self) -> list[str]:
        args = ["--only-binary=:all:", "--python-version", self.python_version]
        args += ["--implementation", self.implementation]
        for platform in self.platforms:
            args += ["--platform", platform]
        return args


# The prebuilt image's interpreter: CPython 3.12 on x86_64 Linux. manylinux_2_28 too, because
# LightGBM publishes its Linux wheels only for glibc 2.28 or newer, so the image needs that glibc
# (not checked here against the image itself: the first-day live test in tests/test_aws_live.py
# imports every wheel on the real image).
IMAGE_TARGET = WheelTarget(
    python_version="3.12", platforms=("manylinux2014_x86_64", "manylinux_2_28_x86_64")
)


class WheelhouseError(RuntimeError):
    """The wheelhouse could not be built (no PyPI here, an unpinned requirement, ...)."""


@dataclass(frozen=True)
class Wheelhouse:
    """Wheels for a set of pinned requirements and one target, in a local folder."""

    directory: Path
    requirements: tuple[str, ...]
    files: dict[str, str]
    """Wheel file name -> SHA-256 (hex) of its bytes."""

    @property
    def digest(self) -> str:
        """The hash of the wheels themselves (names and contents), as a code bundle's."""
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + bytes.fromhex(self.files[name]))
        return h.hexdigest()[:16]

    @classmethod
    def load(cls, directory: Path) -> Wheelhouse:
        manifest = json.loads((directory / MANIFEST).read_text())
        return cls(directory, tuple(manifest["requirements"]), dict(manifest["files"]))

    def manifest(self) -> bytes:
        return (
            json.dumps(
                {"requirements": list(self.requirements), "files": self.files},
                indent=2,
                sort_keys=True,
            )
            + "\n"
        ).encode()


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


def job_kind(job: JobName) -> str:
    return "training" if job == "training" else "processing"


def bundle(
    job: JobName, containers_dir: Path = CONTAINERS_DIR, wheelhouse: Wheelhouse | None = None
) -> CodeBundle:
    """The job's code. With ``wheelhouse`` (SageMaker's prebuilt image), its requirements.txt
    installs what the image lacks from that wheelhouse, staged as the job's ``wheels``."""
    job_dir = containers_dir / job
    entry = ENTRY_SCRIPTS[job]
    files = {
        entry: (job_dir / entry).read_bytes(),
        "requirements.txt": (job_dir / "requirements.txt").read_bytes(),
    }
    if wheelhouse is not None:
        files["requirements.txt"] = offline_requirements(job, wheelhouse, containers_dir)
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


# Requirements and the wheelhouse ---------------------------------------------------------------


def pinned_requirements(path: Path) -> dict[str, str]:
    """A requirements file's lines by package name (normalized); every one must be ``==``."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            raise WheelhouseError(f"{path}:{number}: {exc}") from exc
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==":
            raise WheelhouseError(
                f"{path}:{number}: {line!r} is not pinned with ==: a wheelhouse (and an image) "
                "must hold exactly requirements.lock's version"
            )
        pins[canonicalize_name(requirement.name)] = line
    return pins


def wheel_requirements(job: JobName, containers_dir: Path = CONTAINERS_DIR) -> tuple[str, ...]:
    """The job's requirements that SageMaker's prebuilt image lacks, as pinned for the job."""
    pins = pinned_requirements(containers_dir / job / "requirements.txt")
    return tuple(line for name, line in sorted(pins.items()) if name not in PREBUILT_IMAGE_PACKAGES)


def offline_requirements(
    job: JobName, wheelhouse: Wheelhouse, containers_dir: Path = CONTAINERS_DIR
) -> bytes:
    """requirements.txt for the prebuilt image: only what it lacks, only from the wheelhouse."""
    needed = wheel_requirements(job, containers_dir)
    if needed != wheelhouse.requirements:
        raise WheelhouseError(
            f"the wheelhouse {wheelhouse.directory} holds {', '.join(wheelhouse.requirements)}, "
            f"but the {job} job needs {', '.join(needed)}"
        )
    lines = [
        "# SageMaker's prebuilt image lacks these: pip installs them without an index, from the",
        f"# wheelhouse {wheelhouse.digest} staged as the job's '{WHEELS_INPUT}' input.",
        "--no-index",
        f"--find-links {FIND_LINKS[job_kind(job)]}",
        *needed,
    ]
    return ("\n".join(lines) + "\n").encode()


def wheelhouse_key(
    requirements: Sequence[str], constraints: Sequence[str], target: WheelTarget
) -> str:
    """Names the wheelhouse's local folder: what was asked for, pinned how, for which Python."""
    spec = {
        "requirements": sorted(requirements),
        "constraints": sorted(constraints),
        "python_version": target.python_version,
        "platforms": list(target.platforms),
        "implementation": target.implementation,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


Downloader = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _pip(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=900
    )


def build_wheelhouse(
    requirements: Sequence[str],
    constraints: Sequence[str] = (),
    target: WheelTarget = IMAGE_TARGET,
    cache_dir: Path = WHEELHOUSE_DIR,
    pip: Downloader = _pip,
) -> Wheelhouse:
    """The wheelhouse for ``requirements`` and their dependencies, pinned by ``constraints``.

    Built once into ``cache_dir/<key>/`` with ``pip download`` (PyPI, or whatever index pip is
    configured with) and found there afterwards without any download. A folder appears whole or
    not at all: it is downloaded beside it and renamed into place, so concurrent builds are safe.
    """
    if not requirements:
        raise WheelhouseError("a wheelhouse needs at least one requirement")
    folder = cache_dir / wheelhouse_key(requirements, constraints, target)
    if (folder / MANIFEST).exists():
        return Wheelhouse.load(folder)
    cache_dir.mkdir(parents=True, exist_ok=True)
    scratch = cache_dir / f".{folder.name}-{uuid.uuid4().hex[:8]}.tmp"
    scratch.mkdir()
    try:
        constraint_file = scratch / "constraints.txt"
        constraint_file.write_text("".join(f"{c}\n" for c in constraints))
        args = ["download", "--dest", str(scratch), *target.pip_args()]
        args += ["--constraint", str(constraint_file), *requirements]
        result = pip(args)
        constraint_file.unlink()
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
            raise WheelhouseError(
                f"pip download of {', '.join(requirements)} for Python {target.python_version} "
                f"failed (exit {result.returncode}):\n{tail}\nRun `make wheelhouse` where PyPI "
                "is reachable, or run the jobs on images built from containers/<job>/Dockerfile."
            )
        files = {p.name: _sha256(p) for p in sorted(scratch.iterdir())}
        if not files or any(not name.endswith(".whl") for name in files):
            raise WheelhouseError(f"pip download left {sorted(files)}: expected only wheels")
        house = Wheelhouse(folder, tuple(requirements), files)
        (scratch / MANIFEST).write_bytes(house.manifest())
        try:
            scratch.rename(folder)
        except OSError:
            if not (folder / MANIFEST).exists():  # not a concurrent build that won
                raise
        return Wheelhouse.load(folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def prebuilt_image_wheelhouse(
    job: JobName,
    containers_dir: Path = CONTAINERS_DIR,
    target: WheelTarget = IMAGE_TARGET,
    cache_dir: Path = WHEELHOUSE_DIR,
    pip: Downloader = _pip,
) -> Wheelhouse:
    """The wheelhouse of what the prebuilt image lacks for ``job``.

    The job's requirements.txt pins every package and dependency (as requirements.lock), so it
    is also the constraints file: the wheelhouse holds exactly those versions.
    """
    pins = pinned_requirements(containers_dir / job / "requirements.txt")
    return build_wheelhouse(
        wheel_requirements(job, containers_dir),
        sorted(pins.values()),
        target,
        cache_dir,
        pip,
    )


def publish_wheelhouse(store: ObjectStore, wheelhouse: Wheelhouse) -> str:
    """Upload the wheelhouse once under the hash of its wheels; returns its prefix URI (ends
    with '/'). Its manifest goes last, so a manifest in the store means a complete upload."""
    prefix = store.uri("code", "wheels", wheelhouse.digest)
    manifest = join_uri(prefix, MANIFEST)
    if store.exists(manifest):
        return prefix + "/"
    for name in sorted(wheelhouse.files):
        uri = join_uri(prefix, name)
        if not store.exists(uri):
            store.upload_file(wheelhouse.directory / name, uri)
    store.write_bytes(manifest, wheelhouse.manifest())
    return prefix + "/"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

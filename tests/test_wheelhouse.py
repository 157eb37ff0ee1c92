"""Jobs start without PyPI: one set of pins for images and wheelhouse, the prebuilt image's jobs
install what it lacks from a wheelhouse staged beside their code, and the custom images carry the
locked versions and run the code they are sent.

The tests marked ``pypi`` download wheels from PyPI (``pip download``); the last one then installs
them into a clean virtual environment and runs real job scripts with the network blocked.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from resources.data_home import REPO_ROOT
from resources.jobs import code as job_code
from resources.jobs.local import LocalJobLauncher
from resources.jobs.requests import PROCESSING_INPUT_ROOT, JobInput, processing_local_path
from resources.jobs.sagemaker import SageMakerJobLauncher
from resources.jobs.settings import JOB_NAMES, JobSettings
from resources.storage import LocalObjectStore

LOCK = REPO_ROOT / "requirements.lock"
CONTAINERS = job_code.CONTAINERS_DIR
DOCKERFILES: dict[str, Path] = {job: CONTAINERS / job / "Dockerfile" for job in JOB_NAMES}


def lock_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            versions[canonicalize_name(name)] = version
    return versions


def pinned_version(line: str) -> str:
    return next(iter(Requirement(line).specifier)).version


# One set of pins ------------------------------------------------------------------------------


@pytest.mark.parametrize("job", JOB_NAMES)
def test_job_requirements_pin_the_lock_and_every_dependency(job: str):
    """requirements.txt is what an image installs: each package at requirements.lock's version,
    and every dependency of each (as installed here from the lock) pinned too, so nothing in an
    image floats."""
    pins = job_code.pinned_requirements(CONTAINERS / job / "requirements.txt")
    lock = lock_versions()
    assert {n: pinned_version(line) for n, line in pins.items()} == {n: lock[n] for n in pins}
    for name in pins:
        for dependency in importlib.metadata.distribution(name).requires or []:
            requirement = Requirement(dependency)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            assert canonicalize_name(requirement.name) in pins, (
                f"{job}: {name} needs {requirement.name}, which requirements.txt does not pin"
            )


def test_toolkit_requirements_are_pinned_as_the_lock_where_it_has_them():
    pins = job_code.pinned_requirements(CONTAINERS / "training" / "requirements-toolkit.txt")
    lock = lock_versions()
    assert "sagemaker-training" in pins
    for name, line in pins.items():
        if name in lock:
            assert pinned_version(line) == lock[name], line


@dataclass
class Stage:
    base: str
    copies: dict[str, str]  # destination in the image -> source in the build context
    pip_commands: list[list[str]]
    instructions: list[str]


def parse_dockerfile(path: Path) -> list[Stage]:
    """The stages of a Dockerfile: base image, COPY sources, pip commands, instructions."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append(Stage(rest.split()[0], {}, [], []))
            continue
        stage = stages[-1]
        stage.instructions.append(instruction)
        if instruction == "COPY":
            words = [w for w in shlex.split(rest) if not w.startswith("--")]
            if not rest.startswith("--from"):
                stage.copies[words[-1]] = words[0]
        elif instruction == "RUN":
            for command in re.split(r"&&|;", rest):
                words = shlex.split(command)
                if words[:1] == ["pip"] and words[1:2] in (["install"], ["wheel"]):
                    stage.pip_commands.append(words)
    return stages


# pip options that take a value: the value is not a package.
PIP_VALUE_OPTIONS = {
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "-f",
    "--find-links",
    "-w",
    "--wheel-dir",
}


def installed_requirement_files(stage: Stage) -> list[Path]:
    """The requirement files a stage's pip commands install, as files in containers/; fails on
    a package named on a pip command line (it would escape the pins)."""
    files = []
    for words in stage.pip_commands:
        i = 2
        while i < len(words):
            word = words[i]
            if word in PIP_VALUE_OPTIONS:
                if word in ("-r", "--requirement"):
                    files.append(CONTAINERS / stage.copies[words[i + 1]])
                i += 2
                continue
            assert word.startswith("-"), f"pip installs {word!r} outside a requirements file"
            i += 1
    return files


@pytest.mark.parametrize("job", JOB_NAMES)
def test_each_dockerfile_installs_the_locked_versions(job: str):
    stages = parse_dockerfile(DOCKERFILES[job])
    final = stages[-1]
    installed = [f for stage in stages for f in installed_requirement_files(stage)]
    assert CONTAINERS / job / "requirements.txt" in installed_requirement_files(final)
    lock = lock_versions()
    for requirements in installed:
        for name, line in job_code.pinned_requirements(requirements).items():
            assert name not in lock or pinned_version(line) == lock[name], (requirements, line)
    # The lock is resolved for the Python the project targets (ruff's and mypy's target).
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    python = pyproject["tool"]["mypy"]["python_version"]
    for stage in stages:
        assert stage.base.startswith(f"python:{python}-"), stage.base


def test_the_training_image_runs_the_code_it_is_sent():
    """SageMaker starts a training image as `train` with the content-hashed sourcedir.tar.gz in
    its hyperparameters: the toolkit's `train` must run it, not code baked into the image, or the
    job would record one code version and run another."""
    stages = parse_dockerfile(DOCKERFILES["training"])
    final = stages[-1]
    assert "ENTRYPOINT" not in final.instructions and "CMD" not in final.instructions
    copied = [source for stage in stages for source in stage.copies.values()]
    assert not [s for s in copied if s.endswith(".py") or "forecast_core" in s], copied
    toolkit = CONTAINERS / "training" / "requirements-toolkit.txt"
    assert toolkit in installed_requirement_files(final)
    assert "sagemaker-training" in job_code.pinned_requirements(toolkit)


# What the prebuilt image lacks, and the bundle that installs it -----------------------------


@pytest.mark.parametrize("job", JOB_NAMES)
def test_wheel_requirements_are_what_the_prebuilt_image_lacks(job: str):
    wheels = job_code.wheel_requirements(job)  # type: ignore[arg-type]
    # Training and inference also need LightGBM (a backtest candidate, and its models' forecasts).
    lightgbm = ("lightgbm==4.7.0",) if job in ("training", "inference") else ()
    assert wheels == ("dagster-pipes==1.13.27", "holidays==0.109", *lightgbm)
    pins = job_code.pinned_requirements(CONTAINERS / job / "requirements.txt")
    assert set(wheels) == {
        line for name, line in pins.items() if name not in job_code.PREBUILT_IMAGE_PACKAGES
    }


def fake_wheelhouse(directory: Path, job: str = "inference", content: bytes = b"wheel") -> Any:
    """A wheelhouse folder with made-up wheels for the job's wheel requirements."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for line in job_code.wheel_requirements(job):  # type: ignore[arg-type]
        name, version = line.split("==")
        wheel = f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
        (directory / wheel).write_bytes(content + wheel.encode())
        files[wheel] = hashlib.sha256(content + wheel.encode()).hexdigest()
    house = job_code.Wheelhouse(directory, job_code.wheel_requirements(job), files)  # type: ignore[arg-type]
    (directory / job_code.MANIFEST).write_bytes(house.manifest())
    return house


@pytest.mark.parametrize(
    ("job", "code_dir", "wheels_dir"),
    [
        (
            "preprocessing",
            f"{PROCESSING_INPUT_ROOT}/code",
            processing_local_path("input", job_code.WHEELS_INPUT),
        ),
        ("inference", f"{PROCESSING_INPUT_ROOT}/code", f"{PROCESSING_INPUT_ROOT}/wheels"),
        # The toolkit unpacks sourcedir.tar.gz into /opt/ml/code; channels are input/data/<name>.
        ("training", "/opt/ml/code", f"/opt/ml/input/data/{job_code.WHEELS_INPUT}"),
    ],
)
def test_offline_requirements_read_only_the_staged_wheels(
    tmp_path: Path, job: str, code_dir: str, wheels_dir: str
):
    house = fake_wheelhouse(tmp_path / "house", job)
    text = job_code.offline_requirements(job, house).decode()  # type: ignore[arg-type]
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines[0] == "--no-index"
    option, link = lines[1].split()
    assert option == "--find-links"
    # pip reads a relative --find-links in a requirements file relative to that file.
    assert posixpath.normpath(posixpath.join(code_dir, link)) == wheels_dir
    assert tuple(lines[2:]) == job_code.wheel_requirements(job)  # type: ignore[arg-type]
    assert house.digest in text


def test_the_offline_bundle_differs_only_in_requirements_and_follows_the_wheels(tmp_path: Path):
    plain = job_code.bundle("inference")
    house = fake_wheelhouse(tmp_path / "a")
    offline = job_code.bundle("inference", wheelhouse=house)
    assert (
        plain.files["requirements.txt"] == (CONTAINERS / "inference/requirements.txt").read_bytes()
    )
    assert {k: v for k, v in offline.files.items() if k != "requirements.txt"} == {
        k: v for k, v in plain.files.items() if k != "requirements.txt"
    }
    assert offline.digest != plain.digest
    other = fake_wheelhouse(tmp_path / "b", content=b"other build")
    assert job_code.bundle("inference", wheelhouse=other).digest != offline.digest
    assert job_code.bundle("inference", wheelhouse=house).digest == offline.digest


def test_a_wheelhouse_for_other_requirements_is_refused(tmp_path: Path):
    house = fake_wheelhouse(tmp_path / "house")
    wrong = job_code.Wheelhouse(house.directory, ("holidays==0.1",), house.files)
    with pytest.raises(job_code.WheelhouseError, match="needs dagster-pipes"):
        job_code.bundle("inference", wheelhouse=wrong)


def test_an_unpinned_requirement_is_refused(tmp_path: Path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pandas==3.1.1\nholidays>=0.100  # a range\n")
    with pytest.raises(job_code.WheelhouseError, match=r"requirements.txt:2: .*not pinned"):
        job_code.pinned_requirements(requirements)


# Building and publishing -----------------------------------------------------------------------


class FakePip:
    """Stands in for `python -m pip`: `download` writes one wheel per requirement."""

    def __init__(self, returncode: int = 0, content: bytes = b"wheel"):
        self.calls: list[list[str]] = []
        self.returncode = returncode
        self.content = content

    def __call__(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        if self.returncode:
            return subprocess.CompletedProcess(args, self.returncode, "", "ERROR: no network\n")
        dest = Path(args[args.index("--dest") + 1])
        for arg in args:
            if "==" in arg:
                name, version = arg.split("==")
                wheel = dest / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
                wheel.write_bytes(self.content + arg.encode())
        return subprocess.CompletedProcess(args, 0, "", "")


def test_a_wheelhouse_is_downloaded_once_for_the_image_and_reused(tmp_path: Path):
    pip = FakePip()
    house = job_code.prebuilt_image_wheelhouse("training", cache_dir=tmp_path, pip=pip)
    assert len(pip.calls) == 1
    args = pip.calls[0]
    assert args[0] == "download" and "--only-binary=:all:" in args
    assert args[args.index("--python-version") + 1] == "3.12"
    assert args[args.index("--platform") + 1] == "manylinux2014_x86_64"
    # Dependencies are pinned by the job's own requirements (the lock's versions).
    constraints = args[args.index("--constraint") + 1]
    assert constraints.startswith(str(tmp_path))
    assert args[-3:] == ["dagster-pipes==1.13.27", "holidays==0.109", "lightgbm==4.7.0"]
    assert sorted(house.files) == [
        "dagster_pipes-1.13.27-py3-none-any.whl",
        "holidays-0.109-py3-none-any.whl",
        "lightgbm-4.7.0-py3-none-any.whl",
    ]
    assert [p.name for p in tmp_path.iterdir()] == [house.directory.name]  # no leftovers
    # Inference needs the same: one folder, and no second download.
    again = job_code.prebuilt_image_wheelhouse("inference", cache_dir=tmp_path, pip=pip)
    assert again == house
    assert len(pip.calls) == 1
    # Preprocessing needs no LightGBM: a wheelhouse of its own, downloaded once too.
    for _ in range(2):
        other = job_code.prebuilt_image_wheelhouse("preprocessing", cache_dir=tmp_path, pip=pip)
    assert other.directory != house.directory
    assert "lightgbm-4.7.0-py3-none-any.whl" not in other.files
    assert len(pip.calls) == 2


def test_the_folder_follows_the_request_and_the_digest_the_wheels(tmp_path: Path):
    def build(requirements=("holidays==0.109",), constraints=(), target=job_code.IMAGE_TARGET):
        return job_code.build_wheelhouse(requirements, constraints, target, tmp_path, FakePip())

    first = build()
    assert build().directory == first.directory
    other_python = job_code.WheelTarget("3.11", ("manylinux2014_x86_64",))
    others = [
        build(requirements=("holidays==0.108",)),
        build(constraints=("six==1.16.0",)),
        build(target=other_python),
    ]
    assert len({first.directory, *(o.directory for o in others)}) == 4
    # The same wheels, whatever pinned or asked for them, publish to the same place.
    assert others[1].digest == first.digest == others[2].digest
    assert others[0].digest != first.digest


def test_a_failed_download_leaves_nothing_and_says_what_to_do(tmp_path: Path):
    with pytest.raises(job_code.WheelhouseError, match=r"(?s)no network.*make wheelhouse"):
        job_code.prebuilt_image_wheelhouse("inference", cache_dir=tmp_path, pip=FakePip(1))
    assert list(tmp_path.iterdir()) == []


def test_the_wheelhouse_is_published_once_under_the_hash_of_its_wheels(
    store: LocalObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    house = fake_wheelhouse(tmp_path / "house")
    writes: list[str] = []
    for method in ("write_bytes", "upload_file"):
        real = getattr(LocalObjectStore, method)

        def counting(self, *args, _real=real, _method=method):
            writes.append(args[0] if _method == "write_bytes" else args[1])
            return _real(self, *args)

        monkeypatch.setattr(LocalObjectStore, method, counting)
    prefix = job_code.publish_wheelhouse(store, house)
    assert prefix == f"s3://forecast-assets/code/wheels/{house.digest}/"
    assert writes == [prefix + name for name in sorted(house.files)] + [
        prefix + job_code.MANIFEST
    ]  # the manifest last: it marks a complete upload
    for name in house.files:
        assert store.read_bytes(prefix + name) == (house.directory / name).read_bytes()
    writes.clear()
    assert job_code.publish_wheelhouse(store, house) == prefix
    assert writes == []


# The launchers ---------------------------------------------------------------------------------


def no_wheelhouse(*_: Any, **__: Any) -> Any:
    raise AssertionError("a wheelhouse was asked for")


def test_the_local_launcher_needs_no_wheelhouse(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(job_code, "prebuilt_image_wheelhouse", no_wheelhouse)
    launcher = LocalJobLauncher(store=store)
    for job in JOB_NAMES:
        assert not launcher.prebuilt_image(job)
        assert launcher.dependency_inputs(job) == []
        uri, _ = launcher.publish_code(job)
    # The plain bundle, as before.
    assert uri == job_code.publish_folder(store, job_code.bundle("inference"))
    assert not store.list_objects(store.uri("code", "wheels"))


def test_a_custom_image_needs_no_wheelhouse(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(job_code, "prebuilt_image_wheelhouse", no_wheelhouse)
    image = "123456789012.dkr.ecr.eu-central-1.amazonaws.com/forecast-assets/training:abc"
    launcher = SageMakerJobLauncher(
        store=store, region_name="eu-central-1", training=JobSettings(image_uri=image)
    )
    assert launcher.dependency_inputs("training") == []
    uri, _ = launcher.publish_code("training")
    assert store.read_bytes(uri) == job_code.bundle("training").tarball()


@pytest.fixture
def prebuilt(
    store: LocalObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[SageMakerJobLauncher, Any]]:
    house = fake_wheelhouse(tmp_path / "house")
    monkeypatch.setattr(job_code, "prebuilt_image_wheelhouse", lambda job: house)
    empty = JobSettings(image_uri="")
    yield (
        SageMakerJobLauncher(
            store=store,
            region_name="eu-central-1",
            preprocessing=empty,
            training=empty,
            inference=empty,
        ),
        house,
    )


def test_prebuilt_image_jobs_get_offline_code_and_the_wheels(prebuilt, store: LocalObjectStore):
    launcher, house = prebuilt
    wheels = f"s3://forecast-assets/code/wheels/{house.digest}/"
    for job in JOB_NAMES:
        assert launcher.prebuilt_image(job)
        assert launcher.dependency_inputs(job) == [JobInput(job_code.WHEELS_INPUT, wheels)]
    uri, entry = launcher.publish_code("inference")
    assert entry == "predict.py"
    requirements = store.read_bytes(uri + "requirements.txt")
    assert requirements == job_code.offline_requirements("inference", house)
    uri, _ = launcher.publish_code("training")
    with tarfile.open(fileobj=io.BytesIO(store.read_bytes(uri)), mode="r:gz") as tar:
        member = tar.extractfile("requirements.txt")
        assert member is not None
        assert b"--find-links ../input/data/wheels" in member.read()
    # Published once, for every job.
    assert {o.key for o in store.list_objects(store.uri("code", "wheels"))} == {
        f"code/wheels/{house.digest}/{name}" for name in [*house.files, job_code.MANIFEST]
    }


# bootstrap.py ----------------------------------------------------------------------------------


def load_bootstrap(code_dir: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("bootstrap", code_dir / "bootstrap.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bootstrap_names_the_missing_wheelhouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ml = tmp_path / "opt/ml"
    code = ml / "processing/input/code"
    house = fake_wheelhouse(tmp_path / "house")
    job_code.bundle("inference", wheelhouse=house).write_to(code)
    bootstrap = load_bootstrap(code)
    assert bootstrap.find_links(code / "requirements.txt") == [ml / "processing/input/wheels"]
    # Everything the bundle names is installed here; one package more is not.
    assert bootstrap.missing_packages(code / "requirements.txt") == []
    with (code / "requirements.txt").open("a") as requirements:
        requirements.write("no-such-package-here==1.0  # not in the image\n")
    assert bootstrap.missing_packages(code / "requirements.txt") == ["no-such-package-here"]
    monkeypatch.setattr(sys, "argv", ["bootstrap.py", "predict.py"])
    monkeypatch.setenv("SM_OUTPUT_DIR", str(ml / "output"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as exited:
        bootstrap.main()
    assert exited.value.code == 1
    message = (ml / "output/message").read_text()
    assert "no-such-package-here not in the image" in message
    assert f"{ml / 'processing/input/wheels'}, is not staged" in message


# scripts/build_images.sh -----------------------------------------------------------------------

BASH = shutil.which("bash") or "/bin/bash"
BUILD_IMAGES = REPO_ROOT / "scripts" / "build_images.sh"


def run_build_images(path: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BASH, str(BUILD_IMAGES), *args],
        env={"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def fake_docker(bin_dir: Path, log: Path, info_exit: int = 0) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(
        f'#!{BASH}\necho "$*" >> {shlex.quote(str(log))}\n'
        f'if [ "$1" = info ]; then exit {info_exit}; fi\nexit 0\n'
    )
    docker.chmod(0o755)


def test_build_images_without_docker_says_so(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_build_images(str(empty))
    assert result.returncode == 2
    assert "docker is not installed" in result.stderr


def test_build_images_without_a_docker_daemon_says_so(tmp_path: Path):
    fake_docker(tmp_path / "bin", tmp_path / "docker.log", info_exit=1)
    result = run_build_images(f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert result.returncode == 2
    assert "cannot reach its daemon" in result.stderr


def test_build_images_builds_each_dockerfile_under_a_content_tag(tmp_path: Path):
    log = tmp_path / "docker.log"
    fake_docker(tmp_path / "bin", log)
    path = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    result = run_build_images(path, "training", "inference", PUSH="0")
    assert result.returncode == 0, result.stderr
    builds = [line.split() for line in log.read_text().splitlines() if line.startswith("build")]
    assert [b[:5] for b in builds] == [
        ["build", "--platform", "linux/amd64", "-f", f"containers/{job}/Dockerfile"]
        for job in ("training", "inference")
    ]
    assert all(b[-1] == "containers" for b in builds)
    uris = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert set(uris) == {"FORECAST_TRAINING_IMAGE_URI", "FORECAST_INFERENCE_IMAGE_URI"}
    assert re.fullmatch(
        r"local/forecast-assets/training:[0-9a-f]{16}", uris["FORECAST_TRAINING_IMAGE_URI"]
    )
    # Unchanged files, unchanged tag.
    again = run_build_images(path, "training", PUSH="0")
    assert (
        again.stdout.strip() == f"FORECAST_TRAINING_IMAGE_URI={uris['FORECAST_TRAINING_IMAGE_URI']}"
    )


def test_build_images_wants_a_registry_to_push(tmp_path: Path):
    fake_docker(tmp_path / "bin", tmp_path / "docker.log")
    result = run_build_images(f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert result.returncode == 2
    assert "ECR_REGISTRY" in result.stderr


# From PyPI, then without any network -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.pypi
def test_the_image_wheelhouse_comes_from_pypi_for_python_312(tmp_path: Path):
    house = job_code.prebuilt_image_wheelhouse("training", cache_dir=tmp_path)
    names: dict[str, str] = {canonicalize_name(n.split("-")[0]): n for n in house.files}
    assert {"holidays", "dagster-pipes", "python-dateutil", "six"} <= set(names)
    assert names["holidays"].startswith("holidays-0.109-")
    for name in house.files:
        python, abi, platform = name[: -len(".whl")].split("-")[-3:]
        assert python in ("py3", "py2.py3", "cp312"), name
        assert platform == "any" or "manylinux" in platform, name
        assert abi in ("none", "abi3", "cp312"), name
    assert job_code.prebuilt_image_wheelhouse("training", cache_dir=tmp_path) == house


BLOCK_NETWORK = '''
"""Loaded by a .pth file at interpreter start: no connection leaves this environment."""
import socket


def _refuse(*args, **kwargs):
    raise OSError("network blocked by tests/test_wheelhouse.py")


socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
'''


def image_base_distributions() -> list[importlib.metadata.Distribution]:
    """What the prebuilt image ships, as installed here: PREBUILT_IMAGE_PACKAGES and their
    dependencies."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = sorted(job_code.PREBUILT_IMAGE_PACKAGES)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            found[name] = dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # e.g. pytz: the image has it, our jobs do not need it
        for dependency in dist.requires or []:
            requirement = Requirement(dependency)
            if not requirement.marker or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


def image_base_venv(root: Path) -> tuple[Path, dict[str, str]]:
    """A clean virtual environment standing in for the prebuilt image: the image's packages
    (taken from this environment: no download) and nothing else, with the network blocked.
    Returns its python and the environment to run it with."""
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    python = root / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    for dist in image_base_distributions():
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    (site / "_block_network.py").write_text(BLOCK_NETWORK)
    (site / "_block_network.pth").write_text("import _block_network\n")
    env = {
        "PATH": f"{root / 'bin'}:/usr/bin:/bin",
        "HOME": str(root / "home"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONNOUSERSITE": "1",
        # pip as on a fresh machine: no configured indexes or find-links of this one.
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    return python, env


def run_in(
    python: Path, args: list[str], env: dict[str, str], cwd: Path, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args],
        env={**env, **extra},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def stage_wheels(house: Any, folder: Path) -> None:
    """As SageMaker stages the input or channel: the published prefix, manifest included."""
    shutil.copytree(house.directory, folder)


@pytest.mark.slow
@pytest.mark.pypi
def test_jobs_install_and_run_with_the_network_blocked(tmp_path: Path):
    from tests.test_containers import (
        CUSTOMER,
        ISSUED_AT,
        TRAIN_HPS,
        pack_model,
        training_env,
        write_hyperparameters,
        write_raw,
    )

    # Each job's wheelhouse, from PyPI, for this interpreter: the one the stand-in image runs.
    # Training and inference need LightGBM on top of what preprocessing needs.
    houses = {
        job: job_code.prebuilt_image_wheelhouse(
            job, target=job_code.WheelTarget.current(), cache_dir=tmp_path / "wheelhouse"
        )
        for job in JOB_NAMES
    }
    for job in JOB_NAMES:
        assert job_code.wheel_requirements(job) == houses[job].requirements
    assert "lightgbm==4.7.0" in houses["training"].requirements
    assert "lightgbm==4.7.0" not in houses["preprocessing"].requirements
    house = houses["preprocessing"]

    processing_python, env = image_base_venv(tmp_path / "processing-venv")
    probe = run_in(
        processing_python,
        [
            "-c",
            "import importlib.util as u, socket\n"
            "print([m for m in ('holidays', 'dagster_pipes') if u.find_spec(m)])\n"
            "import pandas, sklearn, pyarrow, joblib, scipy, boto3\n"
            "try:\n    socket.create_connection(('pypi.org', 443), timeout=5)\n"
            "except OSError as e:\n    print(e)\n",
        ],
        env,
        tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines() == ["[]", "network blocked by tests/test_wheelhouse.py"]

    # Preprocessing, as a processing job on the prebuilt image: bootstrap installs from the
    # staged wheels, then runs the script.
    ml = tmp_path / "prep/opt/ml"
    raw, manifest, output = (
        ml / "processing/input/raw",
        ml / "processing/input/manifest",
        ml / "processing/output/preprocessed",
    )
    raw.mkdir(parents=True)
    manifest.mkdir(parents=True)
    (manifest / "raw_load.json").write_text(json.dumps(write_raw(raw, days=70)))
    code = ml / "processing/input/code"
    job_code.bundle("preprocessing", wheelhouse=house).write_to(code)
    stage_wheels(house, ml / "processing/input/wheels")
    args = ["--customer-id", CUSTOMER.customer_id, "--raw-dir", str(raw)]
    args += ["--manifest", str(manifest / "raw_load.json"), "--output-dir", str(output)]
    prep = run_in(
        processing_python,
        [str(code / "bootstrap.py"), "preprocess.py", *args],
        env,
        tmp_path,
        SM_OUTPUT_DIR=str(ml / "output"),
    )
    assert prep.returncode == 0, prep.stdout + prep.stderr
    assert "installing requirements.txt offline" in prep.stdout
    assert (output / "load.parquet").exists()

    # Training, as the training toolkit runs it on the prebuilt image: sourcedir.tar.gz
    # unpacked into /opt/ml/code, `pip install -r requirements.txt` there, then the program.
    training_python, env = image_base_venv(tmp_path / "training-venv")
    ml = tmp_path / "train/opt/ml"
    code = ml / "code"
    code.mkdir(parents=True)
    tarball = job_code.bundle("training", wheelhouse=houses["training"]).tarball()
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        tar.extractall(code, filter="data")
    stage_wheels(houses["training"], ml / "input/data/wheels")
    channel = ml / "input/data/train"
    channel.mkdir(parents=True)
    shutil.copy(output / "load.parquet", channel / "load.parquet")
    write_hyperparameters(ml / "input/config", {"customer_id": CUSTOMER.customer_id, **TRAIN_HPS})
    install = run_in(training_python, ["-m", "pip", "install", "-r", "requirements.txt"], env, code)
    assert install.returncode == 0, install.stdout + install.stderr
    train = run_in(
        training_python, [str(code / "train.py")], {**env, **training_env(ml, train=channel)}, code
    )
    assert train.returncode == 0, train.stdout + train.stderr
    assert (ml / "model" / "metrics.json").exists()
    # A custom image's bundle keeps the plain requirements.txt, which the toolkit installs too:
    # with every pin already satisfied, that needs no network either.
    plain = run_in(
        training_python,
        ["-m", "pip", "install", "-r", str(CONTAINERS / "training/requirements.txt")],
        env,
        code,
    )
    assert plain.returncode == 0, plain.stdout + plain.stderr

    # Inference on the processing stand-in, where preprocessing installed its packages: only
    # what inference needs on top (LightGBM) is installed, from its own wheelhouse.
    model_dir = ml / "model"
    ml = tmp_path / "infer/opt/ml"
    model_in, history, forecast = (
        ml / "processing/input/model",
        ml / "processing/input/history",
        ml / "processing/output/forecast",
    )
    history.mkdir(parents=True)
    pack_model(model_dir, model_in / "model.tar.gz")
    shutil.copy(output / "load.parquet", history / "load.parquet")
    code = ml / "processing/input/code"
    job_code.bundle("inference", wheelhouse=houses["inference"]).write_to(code)
    stage_wheels(houses["inference"], ml / "processing/input/wheels")
    args = ["--customer-id", CUSTOMER.customer_id, "--model-version", "v1"]
    args += ["--model-dir", str(model_in), "--history-dir", str(history)]
    args += ["--output-dir", str(forecast), "--horizon-hours", "24", "--issued-at", ISSUED_AT]
    infer = run_in(
        processing_python,
        [str(code / "bootstrap.py"), "predict.py", *args],
        env,
        tmp_path,
        SM_OUTPUT_DIR=str(ml / "output"),
    )
    assert infer.returncode == 0, infer.stdout + infer.stderr
    assert "(lightgbm not in the image)" in infer.stdout
    assert (forecast / "forecast.parquet").exists()

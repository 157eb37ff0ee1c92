"""Start a processing job's script, installing its requirements first if the image lacks them.

Prebuilt SageMaker images do not install a processing job's requirements.txt (the SageMaker SDK's
FrameworkProcessor wraps scripts the same way). On SageMaker's prebuilt scikit-learn image the
bundle's requirements.txt names only what that image lacks, with ``--no-index --find-links
../wheels``: pip installs it from the wheelhouse the job stages as its ``wheels`` input, and no
job needs PyPI (a VPC with only an S3 endpoint has none). In an image built from
containers/<job>/ every package is already there and this only hands over to the script.

Usage (ContainerEntrypoint): python3 bootstrap.py <script.py> [script arguments...]
"""

import importlib
import importlib.metadata
import re
import runpy
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def missing_packages(requirements: Path) -> list[str]:
    """The packages ``requirements`` names that are not installed. The bundle's requirements.txt
    names what the job needs beyond its image (every package, in a custom image that has them
    all), so each job asks for its own: inference needs LightGBM, preprocessing does not."""
    missing = []
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name = re.split(r"[\s=<>!~;\[]", line, maxsplit=1)[0]
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def find_links(requirements: Path) -> list[Path]:
    """The wheel folders a requirements file names, resolved as pip resolves them: relative to
    the file."""
    folders = []
    for line in requirements.read_text().splitlines():
        words = shlex.split(line, comments=True)
        for i, word in enumerate(words):
            if word in ("--find-links", "-f") and i + 1 < len(words):
                folders.append(requirements.parent / words[i + 1])
            elif word.startswith("--find-links="):
                folders.append(requirements.parent / word.partition("=")[2])
    return [folder.resolve() for folder in folders]


def fail(reason: str) -> None:
    """Stop the job with ``reason`` as its ExitMessage, as the job scripts do."""
    from forecast_core.runtime import write_failure

    write_failure("processing", reason)
    print(f"bootstrap: {reason}", file=sys.stderr, flush=True)
    sys.exit(1)


def install(missing: list[str]) -> None:
    requirements = HERE / "requirements.txt"
    folders = find_links(requirements)
    absent = [str(folder) for folder in folders if not folder.is_dir()]
    if absent:
        fail(
            f"{', '.join(missing)} not in the image, and the wheelhouse to install them from, "
            f"{', '.join(absent)}, is not staged: the job needs its 'wheels' input "
            "(JobLauncher.dependency_inputs)"
        )
    source = f"offline from {', '.join(map(str, folders))}" if folders else "from the index"
    print(
        f"bootstrap: installing requirements.txt {source} ({', '.join(missing)} not in the image)",
        flush=True,
    )
    started = time.monotonic()
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    result = subprocess.run([*pip, "-r", str(requirements)], check=False)
    if result.returncode != 0:
        fail(f"pip could not install requirements.txt {source} (exit {result.returncode})")
    importlib.invalidate_caches()  # the finders' listings predate the install
    print(f"bootstrap: installed in {time.monotonic() - started:.1f} s", flush=True)


def main() -> None:
    script, *args = sys.argv[1:]
    sys.path.insert(0, str(HERE))
    missing = missing_packages(HERE / "requirements.txt")
    if missing:
        install(missing)
    sys.argv = [str(HERE / script), *args]
    runpy.run_path(str(HERE / script), run_name="__main__")


if __name__ == "__main__":
    main()

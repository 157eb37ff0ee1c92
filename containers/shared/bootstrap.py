"""Start a processing job's script, installing its requirements first if the image lacks them.

Prebuilt SageMaker images do not install a processing job's requirements.txt (the SageMaker SDK's
FrameworkProcessor wraps scripts the same way). In an image built from containers/<job>/ every
package is already there and this only hands over to the script.

Usage (ContainerEntrypoint): python3 bootstrap.py <script.py> [script arguments...]
"""

import importlib.util
import runpy
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIRED_MODULES = ("pandas", "pyarrow", "sklearn", "joblib", "holidays", "dagster_pipes")


def main() -> None:
    script, *args = sys.argv[1:]
    missing = [m for m in REQUIRED_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"bootstrap: installing requirements.txt ({', '.join(missing)} not in the image)",
            flush=True,
        )
        subprocess.check_call(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "-r",
                str(HERE / "requirements.txt"),
            ]
        )
    sys.path.insert(0, str(HERE))
    sys.argv = [str(HERE / script), *args]
    runpy.run_path(str(HERE / script), run_name="__main__")


if __name__ == "__main__":
    main()

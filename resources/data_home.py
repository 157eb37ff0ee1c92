"""Where the local implementations keep their state."""

from __future__ import annotations

import os
from pathlib import Path

DATA_HOME_VAR = "FORECAST_DATA_HOME"
REPO_ROOT = Path(__file__).resolve().parents[1]


def data_home() -> Path:
    """Root of the local object store, the SQLite file and the local job directories.

    ``FORECAST_DATA_HOME`` moves it (tests point it at a temporary directory); by default it is
    ``.forecast_data`` in the repository. Called when a resource is used, never at import.
    """
    return Path(os.environ.get(DATA_HOME_VAR) or REPO_ROOT / ".forecast_data").resolve()

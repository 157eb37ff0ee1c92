"""Which objects under ``landing/<customer>/`` are meter files: one rule for raw_load and the sensor.

People and tools leave more than meter files in a landing folder: the S3 console's "Create
folder" writes an empty object whose key ends in ``/``, macOS copies ``.DS_Store``, Spark and Glue
write ``_SUCCESS``, uploads and editors leave partial and temporary files. Those are *skipped*:
never read, never a reason to run, listed with the reason in raw_load's metadata. Keys that S3
stores but that cannot become files (an empty, ``.`` or ``..`` segment) are *bad*: raw_load fails
naming them, because SageMaker and the local store cannot stage them and a skip would hide data.

Files under ``landing/<customer>/weather/`` are the customer's optional *weather* files
(``forecast_core.weather`` documents their format): validated and recorded by raw_load, but never
taken for meter files, so vendor detection never sees them. Anything there that is not a ``.csv``
file is *bad*: a weather file in another format would otherwise be silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Exact file names (compared case-insensitively) that tools write beside data.
_MARKER_NAMES = {
    "_success": "job marker written by Spark, Hadoop or Glue",
    "_failure": "job marker written by Spark, Hadoop or Glue",
    "thumbs.db": "Windows thumbnail cache",
    "desktop.ini": "Windows folder settings",
}
# Name prefixes and suffixes (case-insensitive) of files still being written or left behind.
_TEMPORARY_PREFIXES = {"~$": "Office lock file"}
_TEMPORARY_SUFFIXES = {
    ".tmp": "temporary file",
    ".temp": "temporary file",
    ".part": "partial download or upload",
    ".partial": "partial download or upload",
    ".crdownload": "partial Chrome download",
    ".filepart": "partial WinSCP upload",
    ".swp": "editor swap file",
    ".swo": "editor swap file",
    "~": "editor backup file",
}


@dataclass(frozen=True)
class LandingKey:
    """What an object under a customer's landing folder is, and why when it is not a file."""

    kind: Literal["file", "weather", "skip", "bad"]
    reason: str = ""


METER_FILE = LandingKey("file")
WEATHER_FILE = LandingKey("weather")
# The folder below landing/<customer>/ that holds weather files (compared case-insensitively).
WEATHER_FOLDER = "weather"


def classify(relative: str) -> LandingKey:
    """Classify a key by its path below ``landing/<customer>/`` (``""`` is the folder itself).

    ``file``: a meter file to validate. ``weather``: a weather file (under ``weather/``). ``skip``: not a meter file (folder marker, hidden or
    temporary file, tool marker). ``bad``: a key with an empty, ``.`` or ``..`` segment.
    """
    if relative == "" or relative.endswith("/"):
        return LandingKey(
            "skip", "folder marker (an empty object ending in '/', as 'Create folder' writes)"
        )
    segments = relative.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return LandingKey(
            "bad",
            "key has an empty, '.' or '..' path segment ('//', './' or '../'): S3 stores it, "
            "but it cannot be staged as a file for the jobs; rename it to a plain key",
        )
    hidden = next((s for s in segments if s.startswith(".")), None)
    if hidden is not None:
        return LandingKey("skip", f"hidden ('{hidden}' starts with '.')")
    name = segments[-1].lower()
    if name in _MARKER_NAMES:
        return LandingKey("skip", _MARKER_NAMES[name])
    for prefix, what in _TEMPORARY_PREFIXES.items():
        if name.startswith(prefix):
            return LandingKey("skip", f"{what} (name starts with '{prefix}')")
    for suffix, what in _TEMPORARY_SUFFIXES.items():
        if name.endswith(suffix):
            return LandingKey("skip", f"{what} (name ends with '{suffix}')")
    if len(segments) > 1 and segments[0].lower() == WEATHER_FOLDER:
        if not name.endswith(".csv"):
            return LandingKey(
                "bad",
                f"under '{segments[0]}/' only weather CSV files (*.csv) are allowed; move other "
                "files elsewhere, or convert it to the weather CSV format",
            )
        return WEATHER_FILE
    return METER_FILE

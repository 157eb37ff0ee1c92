"""A customer's weather files: their format, their validation, and the table preprocessing makes.

**Where.** Optional, per customer: CSV files anywhere under ``landing/<customer>/weather/``
(e.g. ``weather/observed-2025.csv``, ``weather/forecast-20251103T0600.csv``). Every file there
must end in ``.csv``; they are never taken for meter files (``forecast_assets.landing``).

**Format.** UTF-8 text, comma-separated, a header line, every line (the last too) ending in a
line break. Columns, by name, in any order; no others:

- ``timestamp`` (required): the instant the temperature is for, ISO 8601 **with** its offset
  (``2025-06-01T14:00:00+02:00``) or in UTC (``2025-06-01T12:00:00Z``). A time without an offset
  is refused: nobody can tell which clock it is on.
- ``temperature_c`` (required): air temperature in °C, a decimal point, within -60..60.
- ``kind`` (optional): ``observed`` (measured; the default when the column is absent or empty)
  or ``forecast`` (a weather forecast).
- ``issued_at`` (optional; required on ``forecast`` lines, empty on ``observed`` ones): when the
  forecast was issued, ISO 8601 with offset or ``Z``. It is what makes the backtest honest:
  a forecast from an origin uses only weather forecasts issued at or before it.

Duplicates are refused: the same ``timestamp``, ``kind`` and ``issued_at`` twice in one file, or
in two files with different temperatures (the same value delivered twice is one reading).
Observations may not lie in the future (beyond the raw-validation tolerance). Files are read,
never changed.

**The table** (``weather.parquet``, beside ``load.parquet`` in the preprocessed publication):
``timestamp`` (interval start, UTC, on the load table's grid), ``temperature_c`` (the mean of
the readings in that interval, gaps of up to ``MAX_INTERPOLATED_GAP`` filled linearly between
readings of the same series), ``kind`` and ``issued_at`` (UTC; missing for observations). One
row per interval per series: each forecast issue is its own series, so a forecast archive keeps
every issue.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import pandas as pd

WEATHER_FOLDER = "weather"
WEATHER_FILE = "weather.parquet"
COLUMNS = ("timestamp", "temperature_c", "kind", "issued_at")
REQUIRED_COLUMNS = ("timestamp", "temperature_c")
OBSERVED, FORECAST = "observed", "forecast"
KINDS = (OBSERVED, FORECAST)
# The coldest and hottest air temperatures ever measured are about -89 °C and +57 °C; where
# people meter electricity, a value beyond -60..60 is a unit (°F, K) or a scale error.
MIN_TEMPERATURE_C, MAX_TEMPERATURE_C = -60.0, 60.0
MAX_INTERPOLATED_GAP = pd.Timedelta(hours=3)
# Lines quoted in an error; the rest are counted.
_QUOTED = 3


class WeatherFileError(ValueError):
    """A weather file cannot be used; the message names the file and the problem."""

    def __init__(self, file: str, problem: str):
        super().__init__(f"weather file '{file}': {problem}")
        self.file = file
        self.problem = problem


def _lines(mask: pd.Series | np.ndarray, index: pd.Index) -> str:
    """'lines 3, 7, 9 and 4 more' for the rows where ``mask`` holds (line 1 is the header)."""
    rows = [int(i) + 2 for i in index[np.asarray(mask)]]
    quoted = ", ".join(str(r) for r in rows[:_QUOTED])
    more = f" and {len(rows) - _QUOTED} more" if len(rows) > _QUOTED else ""
    return f"line{'s' if len(rows) > 1 else ''} {quoted}{more}"


def _instants(raw: pd.Series, file: str, column: str) -> pd.Series:
    """ISO 8601 instants with an offset (or Z) as UTC; refuses unreadable or offset-less ones."""
    text = raw.fillna("").astype(str).str.strip()
    parsed = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
    bad = parsed.isna() & (text != "")
    if bad.any():
        raise WeatherFileError(
            file,
            f"unreadable {column} at {_lines(bad, raw.index)} (e.g. {text[bad].iloc[0]!r}): "
            "expected ISO 8601 such as 2025-06-01T12:00:00Z or 2025-06-01T14:00:00+02:00",
        )
    # A trailing Z or a +hh:mm / -hh:mm / +hhmm offset after the time of day.
    naive = (text != "") & ~text.str.contains(r"(?:[zZ]|[+-]\d{2}:?\d{2})$", regex=True)
    if naive.any():
        raise WeatherFileError(
            file,
            f"{column} without a UTC offset at {_lines(naive, raw.index)} (e.g. "
            f"{text[naive].iloc[0]!r}): write it with its offset (+02:00) or in UTC (Z)",
        )
    return parsed


def parse_weather_file(
    data: bytes, file: str, *, latest: pd.Timestamp | None = None
) -> pd.DataFrame:
    """The file's readings as ``timestamp``, ``temperature_c``, ``kind``, ``issued_at`` (UTC).

    Raises :class:`WeatherFileError` for anything the module docstring's format refuses;
    ``latest`` (UTC) is the latest instant an observation may be for.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise WeatherFileError(file, f"is not UTF-8 text ({exc})") from exc
    if not text.strip():
        raise WeatherFileError(file, "is empty")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise WeatherFileError(file, f"is not a readable CSV file ({exc})") from exc
    columns = [str(c).strip() for c in frame.columns]
    frame.columns = pd.Index(columns)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in COLUMNS]
    if missing or unknown or len(set(columns)) != len(columns):
        raise WeatherFileError(
            file,
            f"header {','.join(columns)!r} is not a weather header: it needs "
            f"{' and '.join(REQUIRED_COLUMNS)}, may have {' and '.join(COLUMNS[2:])}, "
            "each once, and nothing else",
        )
    if frame.empty:
        raise WeatherFileError(file, "has a header but no readings")
    if not text.endswith(("\n", "\r")):
        raise WeatherFileError(
            file,
            f"its last line (line {len(frame) + 1}) does not end with a line break: the file "
            "may be cut off inside that line; re-deliver the complete file",
        )

    timestamps = _instants(frame["timestamp"], file, "timestamp")
    if timestamps.isna().any():
        raise WeatherFileError(file, f"empty timestamp at {_lines(timestamps.isna(), frame.index)}")
    raw_temperature = frame["temperature_c"].str.strip()
    temperature = pd.to_numeric(raw_temperature, errors="coerce")
    unreadable = temperature.isna() | ~np.isfinite(temperature.fillna(0.0))
    if unreadable.any():
        raise WeatherFileError(
            file,
            f"temperature_c is not a number at {_lines(unreadable, frame.index)} (e.g. "
            f"{raw_temperature[unreadable].iloc[0]!r}): write °C with a decimal point",
        )
    outside = (temperature < MIN_TEMPERATURE_C) | (temperature > MAX_TEMPERATURE_C)
    if outside.any():
        raise WeatherFileError(
            file,
            f"temperature_c {temperature[outside].iloc[0]:g} outside "
            f"{MIN_TEMPERATURE_C:g}..{MAX_TEMPERATURE_C:g} °C at {_lines(outside, frame.index)} "
            "(°F or kelvin instead of °C?)",
        )

    kind = frame["kind"].str.strip().str.lower() if "kind" in frame else pd.Series("", frame.index)
    kind = kind.replace("", OBSERVED)
    wrong = ~kind.isin(KINDS)
    if wrong.any():
        raise WeatherFileError(
            file,
            f"kind {kind[wrong].iloc[0]!r} at {_lines(wrong, frame.index)} is not "
            f"{' or '.join(KINDS)}",
        )
    raw_issued = frame["issued_at"] if "issued_at" in frame else pd.Series("", frame.index)
    issued = _instants(raw_issued, file, "issued_at")
    forecast = kind == FORECAST
    if (forecast & issued.isna()).any():
        raise WeatherFileError(
            file,
            f"forecast without issued_at at {_lines(forecast & issued.isna(), frame.index)}: a "
            "forecast must say when it was issued",
        )
    if (~forecast & issued.notna()).any():
        raise WeatherFileError(
            file,
            f"observed reading with an issued_at at {_lines(~forecast & issued.notna(), frame.index)}:"
            " only forecasts are issued (set kind to forecast, or leave issued_at empty)",
        )
    if latest is not None:
        future = ~forecast & (timestamps > latest)
        if future.any():
            raise WeatherFileError(
                file,
                f"observation in the future at {_lines(future, frame.index)} "
                f"({timestamps[future].iloc[0].isoformat()}, after {latest.isoformat()}): a "
                "forecast must say kind=forecast",
            )

    readings = pd.DataFrame(
        {
            "timestamp": timestamps,
            "temperature_c": temperature.astype(float),
            "kind": kind.astype(str),
            "issued_at": issued,
        },
        index=frame.index,
    )
    keys = readings[["timestamp", "kind", "issued_at"]]
    duplicated = keys.duplicated(keep=False)
    if duplicated.any():
        first = readings[duplicated].iloc[0]
        raise WeatherFileError(
            file,
            f"duplicate {first['kind']} readings for {first['timestamp'].isoformat()} at "
            f"{_lines(duplicated, frame.index)}: one temperature per timestamp"
            + (" and issue" if first["kind"] == FORECAST else ""),
        )
    return readings.reset_index(drop=True)


def conflicts(frames: Mapping[str, pd.DataFrame]) -> list[str]:
    """One line per pair of files that give the same reading different temperatures."""
    if len(frames) < 2:
        return []
    tagged = pd.concat(
        [f.assign(_file=name) for name, f in frames.items()], ignore_index=True
    ).fillna({"issued_at": pd.Timestamp(0, tz="UTC")})
    spread = tagged.groupby(["timestamp", "kind", "issued_at"], sort=True)[
        "temperature_c"
    ].transform(lambda s: s.max() - s.min())
    clashing = tagged[spread > 1e-9]
    by_files: dict[str, list[tuple]] = {}
    for key, rows in clashing.groupby(["timestamp", "kind", "issued_at"], sort=True):
        by_files.setdefault(" and ".join(sorted(set(rows["_file"]))), []).append(key)
    return [
        f"weather files {files} give different temperatures for {len(keys)} reading(s), e.g. "
        f"{keys[0][1]} at {keys[0][0].isoformat()}: remove or correct one of them"
        for files, keys in by_files.items()
    ]


def summarize(frame: pd.DataFrame) -> dict[str, object]:
    """A weather file's figures for the manifest: readings of each kind, first and last time."""
    return {
        "rows": len(frame),
        "observed_rows": int((frame["kind"] == OBSERVED).sum()),
        "forecast_rows": int((frame["kind"] == FORECAST).sum()),
        "forecast_issues": int(frame.loc[frame["kind"] == FORECAST, "issued_at"].nunique()),
        "start": frame["timestamp"].min().isoformat(),
        "end": frame["timestamp"].max().isoformat(),
    }


def to_interval(readings: pd.DataFrame, interval: str | pd.Timedelta) -> pd.DataFrame:
    """The weather table at the load table's ``interval`` (see the module docstring)."""
    step = pd.Timedelta(interval)
    if readings.empty:
        return pd.DataFrame(
            {
                "timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
                "temperature_c": pd.Series(dtype=float),
                "kind": pd.Series(dtype=str),
                "issued_at": pd.Series(dtype="datetime64[ns, UTC]"),
            }
        )
    # The same reading delivered by two files (validated identical) counts once.
    readings = readings.drop_duplicates(["timestamp", "kind", "issued_at"])
    limit = max(0, int(MAX_INTERPOLATED_GAP / step))
    parts = []
    # dropna=False: observations have no issue time and are a series of their own.
    for _, series in readings.groupby(["kind", "issued_at"], sort=True, dropna=False):
        values = pd.Series(
            series["temperature_c"].to_numpy(), index=series["timestamp"].dt.floor(step)
        )
        means = values.groupby(level=0).mean()
        grid = pd.date_range(means.index.min(), means.index.max(), freq=step)
        filled = means.reindex(grid).interpolate(limit=limit, limit_area="inside")
        filled = filled.dropna()
        parts.append(
            pd.DataFrame(
                {
                    "timestamp": filled.index,
                    "temperature_c": filled.to_numpy(dtype=float),
                    "kind": series["kind"].iloc[0],
                    "issued_at": series["issued_at"].iloc[0],
                }
            )
        )
    table = pd.concat(parts, ignore_index=True)
    table["issued_at"] = pd.to_datetime(table["issued_at"], utc=True)
    return table.sort_values(["timestamp", "kind", "issued_at"], ignore_index=True)

"""Meter-file vendor formats: detect which one a file is, and map it onto the canonical schema.

The canonical schema is one row per reading: ``timestamp`` (start of the reading interval, UTC),
``device_id`` (string) and ``energy_kwh`` (energy used during the interval). Vendors differ in
column names, separators, decimal marks, units (mean power in W, energy in Wh or kWh) and how they
write time (UTC, local time with offsets, or naive local time that repeats an hour every autumn).

Every problem found in a file raises :class:`MeterFileError`, whose message names the file, the
line and what is wrong, so an operator can fix the file without reading code.
"""

from __future__ import annotations

import codecs
import io
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

Unit = Literal["W", "Wh", "kWh"]
TimeConvention = Literal["utc", "offset", "local"]

# How many offending lines an error message quotes before it summarises the rest.
_MAX_QUOTED_LINES = 5

# The device registry's limit (``devices.device_id`` is VARCHAR(128)); see device_id_problem.
DEVICE_ID_MAX_LENGTH = 128
# Characters a device id may not hold, by Unicode category. NUL (a control character) cannot be
# stored in PostgreSQL text at all; the other control characters (tab, line breaks, DEL) break
# CSV exports and log lines; format characters (zero-width space, byte-order mark, direction
# overrides) and the Unicode line separators make two different ids look identical; a lone
# surrogate cannot be encoded for any database.
_REFUSED_ID_CHARACTERS = {
    "Cc": "a control character",
    "Cf": "an invisible format character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Cs": "a lone surrogate",
}
# How much of an offending device id a message quotes.
_QUOTED_ID_CHARACTERS = 40
# A device with a single reading in a file has no spacing to measure its interval by, nor do the
# file's other devices: its power is judged as if the reading covered a day, the longest interval
# meter exports use, so the plausibility check never refuses a reading for a power it may not
# have had.
_FALLBACK_INTERVAL_HOURS = 24.0


class MeterFileError(ValueError):
    """A raw meter file cannot be used; the message says which file and why."""

    def __init__(self, file: str, problem: str):
        super().__init__(f"file '{file}': {problem}")
        self.file = file
        self.problem = problem


@dataclass(frozen=True)
class VendorFormat:
    """How one vendor writes its meter exports."""

    name: str
    description: str
    separator: str
    decimal: str
    timestamp_column: str
    device_column: str
    value_column: str
    unit: Unit
    time: TimeConvention
    # strftime-style format for naive local timestamps; ISO 8601 is parsed without one.
    timestamp_format: str | None = None
    # Zone of naive local timestamps (only for time == "local").
    timezone: str | None = None

    @property
    def columns(self) -> tuple[str, str, str]:
        return (self.timestamp_column, self.device_column, self.value_column)


VENDORS: tuple[VendorFormat, ...] = (
    VendorFormat(
        name="enerlog",
        description="German gateway export: ';'-separated, decimal comma, mean power in W, "
        "naive Europe/Berlin local time (the autumn hour appears twice)",
        separator=";",
        decimal=",",
        timestamp_column="Zeitstempel",
        device_column="Zaehlpunkt",
        value_column="Leistung_W",
        unit="W",
        time="local",
        timestamp_format="%d.%m.%Y %H:%M",
        timezone="Europe/Berlin",
    ),
    VendorFormat(
        name="gridsense",
        description="Cloud API export: ','-separated, energy in Wh, ISO 8601 UTC timestamps",
        separator=",",
        decimal=".",
        timestamp_column="timestamp_utc",
        device_column="meter_id",
        value_column="energy_wh",
        unit="Wh",
        time="utc",
    ),
    VendorFormat(
        name="kilowatch",
        description="Logger export: tab-separated, energy in kWh, ISO 8601 local time with "
        "UTC offsets",
        separator="\t",
        decimal=".",
        timestamp_column="reading_start",
        device_column="device",
        value_column="kwh",
        unit="kWh",
        time="offset",
    ),
)

VENDORS_BY_NAME = {v.name: v for v in VENDORS}


def device_id_problem(device_id: str) -> str | None:
    """What makes ``device_id`` unusable as a device id, or None when it is fine.

    The one rule for device ids, for meter files and the device registry alike: 1 to
    :data:`DEVICE_ID_MAX_LENGTH` characters, no control or invisible characters, no leading or
    trailing whitespace. SQLite would store anything; PostgreSQL cannot store NUL, and the
    registry's column holds 128 characters, so an id is refused before it reaches either.
    """
    if not isinstance(device_id, str):
        return f"is a {type(device_id).__name__}, not text"
    if not device_id:
        return "is empty"
    if len(device_id) > DEVICE_ID_MAX_LENGTH:
        return (
            f"is {len(device_id)} characters long, more than the {DEVICE_ID_MAX_LENGTH} the "
            "device registry holds"
        )
    for character in device_id:
        kind = _REFUSED_ID_CHARACTERS.get(unicodedata.category(character))
        if kind is not None:
            return f"contains {kind} (U+{ord(character):04X})"
    if device_id != device_id.strip():
        return "has leading or trailing whitespace"
    return None


def quote_device_id(device_id: str) -> str:
    """A device id for a message: its start only if long, with unprintable characters escaped."""
    if len(device_id) <= _QUOTED_ID_CHARACTERS:
        return repr(device_id)
    return f"{device_id[:_QUOTED_ID_CHARACTERS]!r}… ({len(device_id)} characters)"


def _header_fields(header: str, separator: str) -> list[str]:
    return [f.strip().strip('"').strip() for f in header.split(separator)]


def _decode(data: bytes, file: str, *, final: bool = True) -> str:
    try:
        # utf-8-sig drops the byte-order mark spreadsheet exports like to add.
        if final:
            return data.decode("utf-8-sig")
        # A prefix cut at a fixed byte count may end inside a multi-byte character: the
        # incremental decoder holds that incomplete tail back instead of calling it invalid.
        return codecs.getincrementaldecoder("utf-8-sig")().decode(data, final=False)
    except UnicodeDecodeError as exc:
        raise MeterFileError(
            file, f"is not UTF-8 text (byte {exc.start}); is it a compressed or binary file?"
        ) from exc


def detect_vendor(data: bytes, file: str) -> VendorFormat:
    """Return the vendor format whose header the file carries."""
    text = _decode(data[:4096], file, final=False) if len(data) > 4096 else _decode(data, file)
    if not text.strip():
        raise MeterFileError(file, "is empty")
    header = text.splitlines()[0]
    for vendor in VENDORS:
        fields = _header_fields(header, vendor.separator)
        if set(vendor.columns) <= set(fields):
            return vendor
    # No full match: say what is closest, so a missing timestamp column reads as that and not
    # as an unknown vendor.
    for vendor in VENDORS:
        names = set(_header_fields(header, vendor.separator))
        present = [c for c in vendor.columns if c in names]
        if len(present) >= 2:
            missing = [c for c in vendor.columns if c not in names]
            what = (
                "has no timestamp column"
                if vendor.timestamp_column in missing
                else f"lacks column(s) {missing}"
            )
            raise MeterFileError(
                file,
                f"looks like vendor '{vendor.name}' but {what} "
                f"(expected columns {list(vendor.columns)}, header is {header[:200]!r})",
            )
    known = "; ".join(f"{v.name}: {list(v.columns)}" for v in VENDORS)
    raise MeterFileError(
        file, f"unknown vendor format: header {header[:200]!r} matches none of {known}"
    )


def _lines(mask: pd.Series | np.ndarray, index: pd.Index) -> str:
    """Human line numbers (1-based, header is line 1) of the rows where mask is true."""
    rows = index[np.asarray(mask, dtype=bool)]
    quoted = ", ".join(str(int(r) + 2) for r in rows[:_MAX_QUOTED_LINES])
    more = len(rows) - _MAX_QUOTED_LINES
    return quoted + (f" and {more} more" if more > 0 else "")


def _parse_timestamps(raw: pd.Series, vendor: VendorFormat, devices: pd.Series, file: str):
    # pandas reads words such as 'now' or 'today' as the current time; a meter never writes them.
    not_a_date = ~raw.str.match(r"\d")
    if not_a_date.any():
        _raise_bad_timestamps(raw, not_a_date, vendor, file)
    if vendor.time in ("utc", "offset"):
        ts = pd.to_datetime(raw, format="ISO8601", utc=True, errors="coerce")
    else:
        naive = pd.to_datetime(raw, format=vendor.timestamp_format, errors="coerce")
        bad = naive.isna()
        if bad.any():
            _raise_bad_timestamps(raw, bad, vendor, file)
        ts = _localize_naive(naive, devices, vendor, file)
    bad = ts.isna()
    if bad.any():
        _raise_bad_timestamps(raw, bad, vendor, file)
    return ts


def _raise_bad_timestamps(raw: pd.Series, bad: pd.Series, vendor: VendorFormat, file: str):
    if bad.all():
        raise MeterFileError(
            file,
            f"has no readable timestamps in column '{vendor.timestamp_column}' "
            f"(first value {raw.iloc[0]!r})",
        )
    first = raw[bad].iloc[0]
    raise MeterFileError(
        file,
        f"unreadable timestamp {first!r} in column '{vendor.timestamp_column}' "
        f"on line(s) {_lines(bad, raw.index)}",
    )


def _localize_naive(naive: pd.Series, devices: pd.Series, vendor: VendorFormat, file: str):
    """Attach the vendor's zone to naive local times, resolving the repeated autumn hour.

    In the hour that occurs twice, a reading is taken as the second (standard-time) pass when
    the same device already had the same or a later local time earlier in the file: meters
    write in time order, so the clock going backwards (or repeating the hour's last reading)
    is the moment of the change.
    """
    assert vendor.timezone is not None
    earlier_max = naive.groupby(devices, sort=False).cummax().groupby(devices, sort=False).shift(1)
    is_dst = ~(earlier_max >= naive).to_numpy()
    try:
        localized = naive.dt.tz_localize(vendor.timezone, ambiguous=is_dst, nonexistent="NaT")
    except (ValueError, TypeError) as exc:  # pragma: no cover - pandas refuses odd arrays
        raise MeterFileError(file, f"cannot place local times in {vendor.timezone}: {exc}") from exc
    missing = localized.isna()
    if missing.any():
        raise MeterFileError(
            file,
            f"local time(s) that do not exist in {vendor.timezone} (clocks jump forward for "
            f"daylight saving) on line(s) {_lines(missing, naive.index)}, "
            f"first {naive[missing].iloc[0]}",
        )
    return localized.dt.tz_convert("UTC")


def _reading_hours(ts: pd.Series, devices: pd.Series) -> pd.Series:
    """Length in hours of each reading's interval, from the device's usual reading spacing."""
    hours = ts.groupby(devices, sort=False).transform(
        lambda s: s.sort_values().diff().median() / pd.Timedelta(hours=1) if len(s) > 1 else np.nan
    )
    return hours.astype("float64")


def parse_meter_file(data: bytes, file: str, vendor: VendorFormat | None = None) -> pd.DataFrame:
    """Parse one raw meter file into canonical rows, in file order.

    Raises :class:`MeterFileError` for an unknown format, an empty or truncated file (including
    one whose last line has no line break), unreadable timestamps, non-numeric or negative
    energy, and device ids :func:`device_id_problem` refuses.
    """
    vendor = vendor or detect_vendor(data, file)
    text = _decode(data, file)
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            sep=vendor.separator,
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
            engine="c",
        )
    except pd.errors.EmptyDataError as exc:
        raise MeterFileError(file, "is empty") from exc
    except pd.errors.ParserError as exc:
        raise MeterFileError(file, f"is not valid {vendor.name} CSV: {exc}") from exc
    frame.columns = [str(c).strip().strip('"') for c in frame.columns]
    absent = [c for c in vendor.columns if c not in frame.columns]
    if absent:
        raise MeterFileError(file, f"lacks column(s) {absent} of vendor '{vendor.name}'")
    if frame.empty:
        raise MeterFileError(file, "has a header but no readings")
    frame = frame[list(vendor.columns)]

    missing = frame.isna().any(axis=1) | (frame == "").any(axis=1)
    if missing.any():
        last_only = bool(missing.iloc[-1]) and int(missing.sum()) == 1
        hint = " (the file looks truncated)" if last_only else ""
        raise MeterFileError(
            file, f"missing field(s) on line(s) {_lines(missing, frame.index)}{hint}"
        )
    # Every line a meter writes ends with a line break. Without one the last line may have been
    # cut mid-number ('375.3' delivered as '3') and would read as a smaller, valid value.
    if not text.endswith(("\n", "\r")):
        raise MeterFileError(
            file,
            f"its last line (line {int(frame.index[-1]) + 2}) does not end with a line break: "
            "the file may be cut off (truncated) inside that line, e.g. in its last number; "
            "re-deliver the complete file",
        )

    raw_value = frame[vendor.value_column].str.strip()
    if vendor.decimal != ".":
        # With a decimal comma a '.' may only group thousands (1.234,5); '400.5' is ambiguous
        # and is refused rather than silently read as 4005.
        grouped = raw_value.str.fullmatch(r"-?\d{1,3}(\.\d{3})+(,\d*)?")
        ambiguous = raw_value.str.contains(".", regex=False) & ~grouped
        if ambiguous.any():
            raise MeterFileError(
                file,
                f"number {raw_value[ambiguous].iloc[0]!r} in column '{vendor.value_column}' uses "
                f"'.' but this vendor writes decimal '{vendor.decimal}' (line(s) "
                f"{_lines(ambiguous, frame.index)})",
            )
        raw_value = raw_value.str.replace(".", "", regex=False).str.replace(
            vendor.decimal, ".", regex=False
        )
    value = pd.to_numeric(raw_value, errors="coerce")
    bad = value.isna() | ~np.isfinite(value)
    if bad.any():
        first = frame[vendor.value_column][bad].iloc[0]
        raise MeterFileError(
            file,
            f"non-numeric energy value {first!r} in column '{vendor.value_column}' "
            f"on line(s) {_lines(bad, frame.index)}",
        )
    negative = value < 0
    if negative.any():
        raise MeterFileError(
            file,
            f"negative energy value {value[negative].iloc[0]} in column "
            f"'{vendor.value_column}' on line(s) {_lines(negative, frame.index)}",
        )

    devices = frame[vendor.device_column].str.strip()
    for device in devices.unique():
        problem = device_id_problem(device)
        if problem is not None:
            raise MeterFileError(
                file,
                f"device id {quote_device_id(device)} in column '{vendor.device_column}' "
                f"{problem} (line(s) {_lines(devices == device, frame.index)})",
            )
    ts = _parse_timestamps(frame[vendor.timestamp_column].str.strip(), vendor, devices, file)

    if vendor.unit == "kWh":
        energy = value
    elif vendor.unit == "Wh":
        energy = value / 1000.0
    else:  # mean power over the interval: energy = P * t
        hours = _reading_hours(ts, devices)
        if hours.isna().any():
            lonely = devices[hours.isna()].iloc[0]
            raise MeterFileError(
                file,
                f"device '{lonely}' has a single reading, so its power (W) cannot be turned "
                "into energy: the reading interval is unknown",
            )
        energy = value * hours / 1000.0

    return pd.DataFrame(
        {
            "timestamp": ts.astype("datetime64[ns, UTC]"),
            "device_id": devices.astype(object),
            "energy_kwh": energy.astype("float64"),
        }
    )


@dataclass(frozen=True)
class FileSummary:
    """What a parsed file holds, recorded by the raw-data asset."""

    vendor: str
    rows: int
    devices: tuple[str, ...]
    start: pd.Timestamp
    end: pd.Timestamp


@dataclass(frozen=True)
class PlausibilityLimits:
    """Absolute bounds on what one meter can report, whatever its own history says.

    Powers are mean power over a reading's interval, so one bound fits 15-minute and hourly
    meters alike. The raw-data asset takes them from its configuration (same field names).
    """

    max_interval_power_kw: float
    """No single reading may stand for more mean power than this."""
    max_median_power_kw: float
    """No device's median power in a file may exceed this."""
    earliest: pd.Timestamp
    """No reading may start before this instant (UTC)."""
    latest: pd.Timestamp
    """No reading may start after this instant (UTC): now plus a small tolerance."""


def _interval_hours(ts: pd.Series, devices: pd.Series) -> pd.Series:
    """Each reading's interval in hours: its device's median spacing in the file.

    Repeated timestamps are ignored (a spacing of zero would make any energy infinite power); a
    device with one distinct timestamp takes the median of the file's other devices, or else
    :data:`_FALLBACK_INTERVAL_HOURS`.
    """

    def spacing(s: pd.Series) -> float:
        steps = s.drop_duplicates().sort_values().diff().dropna()
        return steps.median() / pd.Timedelta(hours=1) if len(steps) else np.nan

    hours = ts.groupby(devices, sort=False).transform(spacing).astype("float64")
    if hours.isna().any():
        known = hours.dropna()
        hours = hours.fillna(float(known.median()) if len(known) else _FALLBACK_INTERVAL_HOURS)
    return hours


def check_plausible(frame: pd.DataFrame, file: str, limits: PlausibilityLimits) -> None:
    """Refuse a parsed file (see :func:`parse_meter_file`) whose readings no meter could report.

    Raises :class:`MeterFileError` naming the lines for a reading that starts before
    ``limits.earliest`` or after ``limits.latest``, a reading whose mean power exceeds
    ``limits.max_interval_power_kw``, and a device whose median power exceeds
    ``limits.max_median_power_kw`` (a whole meter off by a unit or a scale).
    """
    ts, devices, energy = frame["timestamp"], frame["device_id"], frame["energy_kwh"]
    early = ts < limits.earliest
    if early.any():
        raise MeterFileError(
            file,
            f"timestamp {ts[early].iloc[0].isoformat()} is before "
            f"{limits.earliest.isoformat()} (earliest_year) on line(s) "
            f"{_lines(early, frame.index)}; is the meter's clock or the date format wrong?",
        )
    late = ts > limits.latest
    if late.any():
        raise MeterFileError(
            file,
            f"timestamp {ts[late].iloc[0].isoformat()} is in the future (later than "
            f"{limits.latest.isoformat()}, now plus future_tolerance_minutes) on line(s) "
            f"{_lines(late, frame.index)}; is the meter's clock or time zone wrong?",
        )

    hours = _interval_hours(ts, devices)
    power_kw = energy / hours
    too_high = power_kw > limits.max_interval_power_kw
    if too_high.any():
        first = too_high.to_numpy().argmax()
        raise MeterFileError(
            file,
            f"implausible value on line(s) {_lines(too_high, frame.index)}: "
            f"{energy.iloc[first]:.6g} kWh in {hours.iloc[first] * 60:g} min of device "
            f"{quote_device_id(str(devices.iloc[first]))} is a mean power of "
            f"{power_kw.iloc[first]:.6g} kW, above the {limits.max_interval_power_kw:g} kW "
            "one meter can plausibly draw (max_interval_power_kw); is the file's unit or "
            "scale wrong?",
        )
    medians = power_kw.groupby(devices, sort=True).median()
    absurd = medians[medians > limits.max_median_power_kw]
    if not absurd.empty:
        device = str(absurd.index[0])
        raise MeterFileError(
            file,
            f"device {quote_device_id(device)} has a median power of {absurd.iloc[0]:.6g} kW, "
            f"above the {limits.max_median_power_kw:g} kW a whole meter can plausibly draw "
            f"most of the time (max_median_power_kw; lines "
            f"{_lines(devices == device, frame.index)}); are its values in the wrong unit?",
        )


def summarize(frame: pd.DataFrame, vendor: VendorFormat) -> FileSummary:
    return FileSummary(
        vendor=vendor.name,
        rows=len(frame),
        devices=tuple(sorted(frame["device_id"].unique())),
        start=frame["timestamp"].min(),
        end=frame["timestamp"].max(),
    )


def known_vendor_names() -> Sequence[str]:
    return [v.name for v in VENDORS]

"""Turn canonical readings from many files into one regular, gap-flagged series per device.

Steps, in order:
1. duplicates: readings repeated with the same value are dropped; readings of the same device and
   time with *different* values are conflicts: the one from the later file (by key order, then
   line order) wins and every conflict is reported. Values are compared in kWh, after unit
   conversion, to 9 significant digits (see :func:`comparable_kwh`);
2. each device is put on its own native grid (its usual reading spacing), short runs of missing
   readings are filled by linear interpolation and longer ones are left empty;
3. readings are summed into the target interval (hourly by default). An interval is a gap unless
   every native reading in it is present (measured or filled). A device with too few readings to
   fill a single interval (or only one reading) is left out of the output and reported, with the
   reason, in :attr:`GapReport.dropped_devices`; only if every device is left out is it an error.

Output columns: ``timestamp`` (interval start, UTC), ``device_id``, ``energy_kwh`` (NaN in a
gap), ``is_filled`` (some reading in the interval was interpolated), ``is_gap``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

OUTPUT_COLUMNS = ("timestamp", "device_id", "energy_kwh", "is_filled", "is_gap")


# Significant digits to which two readings of the same device and time must agree to be the
# same reading. One meter delivered in Wh by one file and in kWh by another gives values that
# differ only by float rounding of the unit conversion (4.1 Wh / 1000 is 0.0041000000000000003,
# the kWh file's 0.0041 is 0.0041): about 1e-16 relative. Meter registers write at most about 8
# significant digits, so 9 digits keeps every real difference and absorbs the conversion noise,
# which sits 7 orders of magnitude below. An absolute step (say 1e-6 kWh) would instead call a
# small meter's real differences equal, or a large meter's conversion noise a conflict.
SIGNIFICANT_DIGITS = 9


class CleaningError(ValueError):
    """The readings cannot be put on the requested grid; the message says which device and why."""


class _TooFewReadings(CleaningError):
    """One device's readings cannot fill a single interval; it is left out and reported."""


@dataclass
class DedupReport:
    exact_duplicates: int = 0
    conflicts: int = 0
    conflict_examples: list[dict] = field(default_factory=list)


@dataclass
class GapReport:
    native_interval_minutes: dict[str, float] = field(default_factory=dict)
    filled_readings: int = 0
    gap_intervals: int = 0
    long_gaps: list[dict] = field(default_factory=list)
    dropped_devices: list[dict] = field(default_factory=list)
    """Devices left out of the output for too few readings: device_id, readings, reason."""


def comparable_kwh(energy_kwh: pd.Series) -> np.ndarray:
    """Energy rounded to :data:`SIGNIFICANT_DIGITS` significant digits, for comparing readings.

    Equal inputs to the rounding (mantissa and decimal exponent) give bit-identical outputs, so
    the result can be compared with ``==`` and used as a key.
    """
    values = energy_kwh.to_numpy(dtype="float64")
    exponent = np.zeros_like(values)
    nonzero = np.isfinite(values) & (values != 0)
    np.floor(np.log10(np.abs(values), where=nonzero, out=exponent), where=nonzero, out=exponent)
    with np.errstate(over="ignore", invalid="ignore"):
        mantissa = np.round(values * 10.0 ** (SIGNIFICANT_DIGITS - 1 - exponent))
        # 9.9999999999e2 rounds up to 10 digits: carry into the exponent, so it is written as
        # 1.00000000e3 is, with the same mantissa and exponent.
        carry = np.abs(mantissa) >= 10.0**SIGNIFICANT_DIGITS
        mantissa = np.where(carry, np.round(mantissa / 10), mantissa)
        exponent = exponent + carry
        rounded = mantissa / 10.0 ** (SIGNIFICANT_DIGITS - 1 - exponent)
    # Values whose scaling overflows (subnormal, infinite, NaN) are compared as they are.
    return np.where(np.isfinite(rounded), rounded, values)


def deduplicate(readings: pd.DataFrame, max_examples: int = 5) -> tuple[pd.DataFrame, DedupReport]:
    """Drop exact duplicates; resolve conflicting readings (last wins) and report them.

    ``readings`` must already be in priority order (later files last). Two readings of a device
    and time are the same when their energy agrees to :data:`SIGNIFICANT_DIGITS` digits, so the
    same reading in Wh and in kWh is a duplicate, not a conflict; the later one is kept.
    """
    report = DedupReport()
    keys = ["device_id", "timestamp"]
    comparable = readings.assign(_kwh=comparable_kwh(readings["energy_kwh"]))
    exact = comparable.duplicated(subset=[*keys, "_kwh"], keep="last")
    report.exact_duplicates = int(exact.sum())
    readings = readings[~exact.to_numpy()]
    conflicted = readings.duplicated(subset=keys, keep=False)
    if conflicted.any():
        clashes = readings[conflicted]
        groups = clashes.groupby(keys, sort=True)["energy_kwh"]
        report.conflicts = int(groups.ngroups)
        for (device, ts), values in list(groups)[:max_examples]:
            report.conflict_examples.append(
                {
                    "device_id": device,
                    "timestamp": ts.isoformat(),
                    "values_kwh": [round(float(v), 6) for v in values],
                    "kept_kwh": round(float(values.iloc[-1]), 6),
                }
            )
        readings = readings[~readings.duplicated(subset=keys, keep="last")]
    return readings, report


def _runs_of_missing(missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index and length of every run of True in ``missing``."""
    padded = np.concatenate([[False], missing, [False]]).astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return starts, ends - starts


def _regularize_device(
    device: str,
    series: pd.Series,
    interval: pd.Timedelta,
    max_fill: pd.Timedelta,
    report: GapReport,
) -> pd.DataFrame:
    series = series.sort_index()
    steps = series.index.to_series().diff().dropna()
    if steps.empty:
        raise _TooFewReadings(
            f"device '{device}' has a single reading, so its reading interval is unknown and "
            "there is nothing to resample",
        )
    native = steps.median()
    if native <= pd.Timedelta(0) or interval % native != pd.Timedelta(0):
        raise CleaningError(
            f"device '{device}' reads every {native}, which does not divide the target "
            f"interval {interval}; choose an interval that is a multiple of it"
        )
    report.native_interval_minutes[device] = native.total_seconds() / 60
    grid = pd.date_range(series.index[0], series.index[-1], freq=native)
    regular = series.reindex(grid)
    missing = regular.isna().to_numpy()
    filled = np.zeros(len(regular), dtype=bool)
    if missing.any():
        max_fill_steps = int(max_fill / native)
        starts, lengths = _runs_of_missing(missing)
        interpolated = regular.interpolate(method="linear", limit_area="inside").to_numpy()
        values = regular.to_numpy(copy=True)
        for start, length in zip(starts, lengths, strict=True):
            if length <= max_fill_steps:
                values[start : start + length] = interpolated[start : start + length]
                filled[start : start + length] = True
            else:
                report.long_gaps.append(
                    {
                        "device_id": device,
                        "start": grid[start].isoformat(),
                        "end": (grid[start + length - 1] + native).isoformat(),
                        "missing_readings": int(length),
                    }
                )
        regular = pd.Series(values, index=grid)
        report.filled_readings += int(filled.sum())

    per_interval = int(interval / native)
    frame = pd.DataFrame(
        {"energy": regular.to_numpy(), "present": ~np.isnan(regular.to_numpy()), "filled": filled},
        index=grid,
    )
    buckets = frame.groupby(frame.index.floor(interval))
    energy = buckets["energy"].sum(min_count=1)
    present = buckets["present"].sum()
    size = buckets["present"].size()
    complete = (present == per_interval) & (size == per_interval)
    # Buckets cut by the first or last reading are partial by construction, not gaps.
    first_ok = complete.to_numpy().argmax() if complete.any() else 0
    last_ok = len(complete) - 1 - complete.to_numpy()[::-1].argmax() if complete.any() else -1
    if not complete.any():
        raise _TooFewReadings(
            f"device '{device}' has {len(series)} reading(s) from {series.index[0].isoformat()} "
            f"to {series.index[-1].isoformat()}, which fill no complete "
            f"{interval / pd.Timedelta(minutes=1):g}-minute interval",
        )
    sl = slice(first_ok, last_ok + 1)
    out = pd.DataFrame(
        {
            "timestamp": energy.index[sl],
            "device_id": device,
            "energy_kwh": energy.where(complete).to_numpy()[sl],
            "is_filled": buckets["filled"].any().to_numpy()[sl] & complete.to_numpy()[sl],
            "is_gap": ~complete.to_numpy()[sl],
        }
    )
    return out


def regularize(
    readings: pd.DataFrame,
    interval: str | pd.Timedelta = "1h",
    max_fill_gap: str | pd.Timedelta = "1h",
) -> tuple[pd.DataFrame, GapReport]:
    """Resample de-duplicated readings to ``interval``, filling gaps up to ``max_fill_gap``."""
    interval_td = pd.Timedelta(interval)
    max_fill_td = pd.Timedelta(max_fill_gap)
    if interval_td <= pd.Timedelta(0):
        raise CleaningError(f"interval must be positive, got {interval!r}")
    report = GapReport()
    parts = []
    for device, group in readings.groupby("device_id", sort=True):
        series = pd.Series(
            group["energy_kwh"].to_numpy(), index=pd.DatetimeIndex(group["timestamp"])
        )
        filled, long_gaps = report.filled_readings, len(report.long_gaps)
        try:
            parts.append(_regularize_device(str(device), series, interval_td, max_fill_td, report))
        except _TooFewReadings as exc:
            # Left out, never silently: the caller reports these with the reason. What was
            # counted for the device is taken back, so the report describes the output.
            report.dropped_devices.append(
                {"device_id": str(device), "readings": len(series), "reason": str(exc)}
            )
            report.native_interval_minutes.pop(str(device), None)
            report.filled_readings = filled
            del report.long_gaps[long_gaps:]
    if not parts:
        if report.dropped_devices:
            reasons = "; ".join(d["reason"] for d in report.dropped_devices[:5])
            more = len(report.dropped_devices) - 5
            raise CleaningError(
                "no device has enough readings to fill one complete interval: "
                + reasons
                + (f"; and {more} more" if more > 0 else "")
            )
        raise CleaningError("there are no readings to resample")
    out = pd.concat(parts, ignore_index=True)
    out["timestamp"] = out["timestamp"].astype("datetime64[ns, UTC]")
    out["device_id"] = out["device_id"].astype(object)
    report.gap_intervals = int(out["is_gap"].sum())
    return out[list(OUTPUT_COLUMNS)], report

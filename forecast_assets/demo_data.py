"""Deterministic, realistic raw meter files for demo customers, in each vendor's own format.

Every device's load is built from a few parts, all in kW, then turned into energy per reading:

* a base load (servers, fridges, standby) plus a daily profile that follows the *local*
  Europe/Berlin clock: office hours, shop opening hours, school lessons, factory shifts, or a
  near-flat cold store with compressor cycles;
* a weekly pattern (weekends low, factories also run a Saturday shift) in which German public
  holidays (``holidays`` package, country ``DE``) behave like Sundays, plus a few seasonal
  closures (Christmas week, school vacations);
* heating in winter and cooling in summer, driven by one smooth synthetic outdoor temperature
  (annual and daily cycle plus weather swings lasting days) that all customers share;
* multiplicative noise: an AR(1) process, a day-to-day level and a little white noise, kept
  moderate so the load stays forecastable; and rare short spikes.

Files then get the defects real exports have: short runs of missing readings (~0.3 %), exact
duplicate rows (~0.1 %), one ~2-day outage of one device for the customers in
:data:`LONG_GAP_CUSTOMERS`, and 2-3 conflicting readings (same device and time, other value)
for :data:`CONFLICT_CUSTOMER`. No defect touches the repeated autumn hour, whose naive local
times (enerlog) can only be told apart by the order of the readings.

Reproducibility: everything follows from ``seed``, the customer id and absolute time. Noise and
the recurring defects are drawn per device and UTC month, so two windows (say, today's and
yesterday's ``end``) agree wherever they overlap; only the one-off events (the long gap and the
conflicts) are placed relative to the window, so that every window has them.

The module is pure: it returns bytes and never touches files, the network or Dagster.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any

import holidays as holidays_lib
import numpy as np
import pandas as pd
from scipy.signal import lfilter

from forecast_core.vendors import VENDORS_BY_NAME

TIMEZONE = "Europe/Berlin"
HOLIDAY_COUNTRY = "DE"
PROFILES = ("office", "retail", "cold-storage", "factory", "school")

# Defect rates (fractions of a device's readings) and sizes.
MISSING_RATE = 0.003
DUPLICATE_RATE = 0.001
SPIKE_RATE = 0.0003
MAX_MISSING_RUN = 3

_CUSTOMER_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")

# Decimals written per vendor unit: W and Wh to 0.1, kWh to 0.0001.
VENDOR_DECIMALS = {"W": 1, "Wh": 1, "kWh": 4}

# Tags that keep the random streams of different purposes apart.
_TAG_PARAMS, _TAG_MONTH, _TAG_GAP, _TAG_CONFLICT, _TAG_WEATHER = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class DemoCustomer:
    """One demo customer: whose meters, which export format, how many meters, what building."""

    customer_id: str  # lowercase letters, digits, hyphens
    vendor: str  # one of "enerlog", "gridsense", "kilowatch"
    devices: int  # number of meters
    profile: str  # shape of the load, one of PROFILES

    def __post_init__(self) -> None:
        if not _CUSTOMER_ID.match(self.customer_id):
            raise ValueError(
                f"customer id {self.customer_id!r} must be lowercase letters, digits and "
                "single hyphens"
            )
        if self.vendor not in VENDORS_BY_NAME:
            raise ValueError(
                f"customer '{self.customer_id}': unknown vendor {self.vendor!r}, "
                f"expected one of {sorted(VENDORS_BY_NAME)}"
            )
        if not 1 <= self.devices <= 99:
            raise ValueError(
                f"customer '{self.customer_id}': devices must be 1..99, got {self.devices}"
            )
        if self.profile not in PROFILES:
            raise ValueError(
                f"customer '{self.customer_id}': unknown profile {self.profile!r}, "
                f"expected one of {list(PROFILES)}"
            )


DEMO_CUSTOMERS: tuple[DemoCustomer, ...] = (
    DemoCustomer("hansa-offices", "enerlog", 4, "office"),
    DemoCustomer("nordmarkt-retail", "gridsense", 5, "retail"),
    DemoCustomer("polar-cold-storage", "kilowatch", 3, "cold-storage"),
    DemoCustomer("rhein-metallbau", "enerlog", 6, "factory"),
    DemoCustomer("lindenschule", "kilowatch", 4, "school"),
)

# Customers with one ~2-day outage of one device; the customer with conflicting readings.
LONG_GAP_CUSTOMERS: frozenset[str] = frozenset({"nordmarkt-retail", "rhein-metallbau"})
CONFLICT_CUSTOMER = "hansa-offices"


def demo_end_date(today: pd.Timestamp | None = None) -> pd.Timestamp:
    """UTC midnight of today (or of the given day): where demo data ends.

    A naive ``today`` is taken as UTC; an aware one is converted to UTC first.
    """
    ts = pd.Timestamp.now(tz="UTC") if today is None else pd.Timestamp(today)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.normalize().as_unit("ns")


# --------------------------------------------------------------------------------------------
# Helpers


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _rng(seed: int, customer: DemoCustomer, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, _crc(customer.customer_id), *keys])


def _sig(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _window(h: np.ndarray, start: Any, end: Any, width: float) -> np.ndarray:
    """Smooth 0-1 switch that is on between ``start`` and ``end`` (hours)."""
    return _sig((h - start) / width) * _sig((end - h) / width)


def device_ids(customer: DemoCustomer) -> list[str]:
    """Meter ids of the customer's devices, styled after the vendor."""
    crc = _crc(customer.customer_id)
    if customer.vendor == "enerlog":  # German metering-point style
        return [f"DE{crc % 10**9:09d}{k + 1:03d}" for k in range(customer.devices)]
    if customer.vendor == "gridsense":
        return [f"gs-{crc:08x}-{k + 1}" for k in range(customer.devices)]
    return [f"KW{crc % 10**5:05d}-{k + 1:02d}" for k in range(customer.devices)]


def _validate_window(end: pd.Timestamp, days: int, interval_minutes: int) -> pd.Timestamp:
    end = pd.Timestamp(end)
    end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
    if end != end.normalize():
        raise ValueError(f"end must be a UTC midnight, got {end}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if interval_minutes < 1 or 60 % interval_minutes:
        raise ValueError(f"interval_minutes must divide 60, got {interval_minutes}")
    return end.as_unit("ns")


class _Calendar:
    """Local-time calendar of a timeline, shared by all devices of a customer."""

    def __init__(self, utc: pd.DatetimeIndex):
        local = utc.tz_convert(TIMEZONE)
        self.hour = (local.hour + local.minute / 60.0).to_numpy(dtype=float)
        self.dow = local.day_of_week.to_numpy()
        self.month = local.month.to_numpy()
        self.day = local.day.to_numpy()
        dates = local.tz_localize(None).normalize()
        years = range(int(dates.year.min()) - 1, int(dates.year.max()) + 2)
        calendar = holidays_lib.country_holidays(HOLIDAY_COUNTRY, years=years)
        holiday_days = pd.DatetimeIndex(sorted(pd.Timestamp(d) for d in calendar))
        self.holiday = dates.isin(holiday_days)
        # 0: working day, 1: Saturday, 2: Sunday or public holiday.
        self.day_type = np.where(self.holiday | (self.dow == 6), 2, np.where(self.dow == 5, 1, 0))
        # Christmas Eve to New Year's Day, when many workplaces run at reduced strength.
        self.christmas = ((self.month == 12) & (self.day >= 24)) | (
            (self.month == 1) & (self.day <= 1)
        )
        self.school_vacation = self._school_vacation(dates)
        # Absolute time, for the weather and the compressor cycles.
        self.t_days = (
            (utc - pd.Timestamp("1970-01-01", tz="UTC")) / pd.Timedelta(days=1)
        ).to_numpy(dtype=float)
        self.utc_hour = (utc.hour + utc.minute / 60.0).to_numpy(dtype=float)

    @staticmethod
    def _school_vacation(dates: pd.DatetimeIndex) -> np.ndarray:
        """Rough school vacations: six summer weeks and two at Christmas."""
        month_day = dates.month * 100 + dates.day
        vacation = (
            ((month_day >= 714) & (month_day <= 826)) | (month_day >= 1222) | (month_day <= 106)
        )
        return np.asarray(vacation, dtype=bool)


def _temperature(cal: _Calendar, seed: int) -> np.ndarray:
    """Smooth synthetic outdoor temperature in deg C (a Berlin-like climate)."""
    t = cal.t_days
    annual = -np.cos(2 * np.pi * (t - 17.0) / 365.2425)  # -1 on 18 January, +1 in July
    mean = 9.5 + 9.0 * annual
    daily_amplitude = 4.25 + 1.75 * annual
    daily = daily_amplitude * np.cos(2 * np.pi * (cal.utc_hour - 13.0) / 24.0)
    rng = np.random.default_rng([seed, _TAG_WEATHER])
    periods = rng.uniform(3.0, 25.0, size=5)
    phases = rng.uniform(0.0, 2 * np.pi, size=5)
    swings = sum(1.6 * np.sin(2 * np.pi * t / p + f) for p, f in zip(periods, phases, strict=True))
    return mean + daily + swings


# --------------------------------------------------------------------------------------------
# Load shapes (fractions of a device's scale)


# Mean of each profile's shape over a year, so that ``scale`` sets a device's mean load.
_TYPICAL_SHAPE_MEAN = {
    "office": 0.65,
    "retail": 0.7,
    "cold-storage": 1.0,
    "factory": 0.6,
    "school": 0.5,
}


def _device_params(customer: DemoCustomer, seed: int, k: int) -> dict[str, float]:
    rng = _rng(seed, customer, _TAG_PARAMS, k)
    # Devices of one customer average roughly 2 to 35 kWh per hour.
    n = customer.devices
    sizes = np.geomspace(2.5, 35.0, n) if n > 1 else np.array([10.0])
    sizes = sizes / _TYPICAL_SHAPE_MEAN[customer.profile]
    order = np.random.default_rng([seed, _crc(customer.customer_id), _TAG_PARAMS]).permutation(n)
    u = rng.uniform
    steady = customer.profile == "cold-storage"
    return {
        "scale": float(sizes[order[k]] * u(0.85, 1.15)),
        "start": u(-0.6, 0.6),
        "end": u(-0.8, 0.8),
        "base": u(0.0, 1.0),
        "heat": u(0.5, 1.5),
        "cool": u(0.5, 1.5),
        "shifts": float(rng.integers(2, 4)),
        "cycle_minutes": float(rng.choice([40, 45, 60, 72, 90])),
        "cycle_phase": u(0.0, 2 * np.pi),
        "defrost_hour": float(rng.integers(0, 24)) / 4.0,
        # Noise (log scale): a cold store hums along, people make the other buildings vary.
        "ar_sd": u(0.02, 0.03) if steady else u(0.06, 0.08),
        "daily_sd": 0.015 if steady else 0.04,
        "white_sd": 0.01 if steady else 0.015,
    }


def _shape(profile: str, p: dict[str, float], cal: _Calendar, temp: np.ndarray) -> np.ndarray:
    h, dt = cal.hour, cal.day_type
    work, sat = dt == 0, dt == 1
    hdd = np.maximum(0.0, 15.0 - temp)
    cdd = np.maximum(0.0, temp - 19.0)
    if profile == "office":
        base = 0.25 + 0.1 * p["base"]
        start, end = 7.5 + p["start"], 18.0 + p["end"] - 1.5 * (cal.dow == 4)
        occ = _window(h, start, end, 0.4) * (1.0 - 0.12 * _window(h, 12.0, 13.0, 0.25))
        occ = np.where(work, occ, np.where(sat, 0.12 * _window(h, 9.0, 14.0, 0.4), 0.0))
        occ = occ * np.where(cal.christmas, 0.75, 1.0)  # many take the week off
        heat = 0.025 * p["heat"] * hdd * (0.35 + 0.65 * occ)
        cool = 0.035 * p["cool"] * cdd * (0.2 + 0.8 * occ)
        return base + (1.0 - base) * occ + heat + cool
    if profile == "retail":
        base = 0.3 + 0.15 * p["base"]
        open_ = 9.0 + 0.5 * p["start"]
        close = np.where(sat, 18.5 + 0.5 * p["end"], 20.0 + 0.5 * p["end"])
        occ = 0.35 * _window(h, open_ - 1.5, close + 1.0, 0.3) + 0.65 * _window(
            h, open_, close, 0.3
        )
        occ = np.where(dt == 2, 0.0, occ * np.where(sat, 1.05, 1.0))
        advent = (cal.month == 12) & (cal.day < 24)
        occ = occ * np.where(advent, 1.08, 1.0)
        heat = 0.015 * p["heat"] * hdd * (0.4 + 0.6 * occ)
        cool = 0.05 * p["cool"] * cdd * (0.3 + 0.7 * occ)
        return base + (1.0 - base) * occ + heat + cool
    if profile == "cold-storage":
        base = 0.55 + 0.1 * p["base"]
        # Loading bays, lights and forklift chargers by day; compressors and defrost always.
        occ = np.where(
            work,
            0.75 * _window(h, 6.0 + p["start"], 20.0 + p["end"], 0.5),
            np.where(sat, 0.35 * _window(h, 6.0, 14.0, 0.5), 0.0),
        )
        minutes = cal.t_days * 1440.0
        compressor = 0.1 * np.tanh(
            2.5 * np.sin(2 * np.pi * minutes / p["cycle_minutes"] + p["cycle_phase"])
        )
        defrost_hour = np.mod(h - p["defrost_hour"], 6.0)
        defrost = 0.25 * _window(defrost_hour, 0.0, 0.5, 0.05)
        cool = 0.02 * p["cool"] * np.maximum(0.0, temp - 5.0)
        return base + (1.0 - base) * occ + compressor + defrost + cool
    if profile == "factory":
        base = 0.15 + 0.15 * p["base"]
        w = 0.15
        running = ~cal.holiday
        early = _window(h, 6.0, 14.0, w) * (running & (cal.dow <= 5)) * np.where(sat, 0.7, 1.0)
        late = 0.85 * _window(h, 14.0, 22.0, w) * (running & (cal.dow <= 4))
        occ = early + late
        if p["shifts"] >= 3:
            night = 0.55 * (
                _sig((h - 22.0) / w) * (running & (cal.dow <= 3))
                + _sig((6.0 - h) / w) * (running & (cal.dow >= 1) & (cal.dow <= 4))
            )
            occ = occ + night
        occ = occ * np.where(cal.christmas, 0.75, 1.0)  # reduced crews between the holidays
        heat = 0.025 * p["heat"] * hdd * (0.5 + 0.5 * np.minimum(occ, 1.0))  # hall heating
        cool = 0.015 * p["cool"] * cdd * (0.3 + 0.7 * np.minimum(occ, 1.0))
        return base + (1.0 - base) * occ + heat + cool
    if profile == "school":
        base = 0.12 + 0.08 * p["base"]
        start = 7.5 + 0.5 * p["start"]
        lessons = _window(h, start, 13.5, 0.3) + 0.45 * _window(h, 13.5, 16.5 + p["end"], 0.3)
        occ = np.where(work, lessons, 0.0)
        occ = np.where(cal.school_vacation, 0.35 * _window(h, 8.0, 15.0, 0.4) * work, occ)
        in_use = np.where(work & ~cal.school_vacation, _window(h, 5.0, 17.0, 0.5), 0.0)
        heat = 0.04 * p["heat"] * hdd * (0.3 + 0.7 * in_use)
        cool = 0.005 * p["cool"] * cdd * occ
        return base + (1.0 - base) * occ + heat + cool
    raise ValueError(f"unknown profile {profile!r}")  # pragma: no cover - DemoCustomer checks


# --------------------------------------------------------------------------------------------
# Noise and defects, drawn per device and UTC month


def _month_starts(start: pd.Timestamp, end: pd.Timestamp) -> pd.DatetimeIndex:
    first = start.tz_localize(None).to_period("M").to_timestamp().tz_localize("UTC")
    return pd.date_range(first, end, freq="MS", inclusive="left").as_unit("ns")


def _month_draws(
    customer: DemoCustomer, seed: int, k: int, month: pd.Timestamp, step: pd.Timedelta
) -> dict[str, np.ndarray]:
    """Noise and defect positions of device ``k`` for one whole UTC month."""
    grid_end = month + pd.offsets.MonthBegin(1)
    n = int((grid_end - month) / step)
    rng = _rng(seed, customer, _TAG_MONTH, k, month.year * 12 + month.month - 1)
    steps_per_15 = pd.Timedelta(minutes=15) / step
    phi = 0.9 ** (1.0 / steps_per_15)
    shocks = rng.standard_normal(n)
    shocks[0] /= np.sqrt(1.0 - phi**2)  # start in the stationary distribution
    ar = lfilter([np.sqrt(1.0 - phi**2)], [1.0, -phi], shocks)
    days = int(np.ceil(n * step / pd.Timedelta(days=1)))
    daily = rng.standard_normal(days)
    day_of_step = (np.arange(n) * step // pd.Timedelta(days=1)).astype(int)
    white = rng.standard_normal(n)
    spikes = np.zeros(n)
    for _ in range(rng.poisson(SPIKE_RATE * n)):
        at, length = int(rng.integers(n)), int(rng.integers(1, 3))
        spikes[at : at + length] = rng.uniform(0.8, 2.0)
    # Short runs of missing readings, each in its own slot of 6 readings (at most 5 of them
    # used) so that runs never merge into longer ones and a month's last reading is kept.
    missing = np.zeros(n, dtype=bool)
    slots = (n - 1) // 6
    runs = min(slots, round(MISSING_RATE * n / ((1 + MAX_MISSING_RUN) / 2)))
    lengths = rng.integers(1, MAX_MISSING_RUN + 1, size=runs)
    starts = 6 * rng.choice(slots, size=runs, replace=False) + rng.integers(0, 6 - lengths)
    for at, length in zip(starts, lengths, strict=True):
        missing[at : at + length] = True
    duplicated = np.zeros(n, dtype=bool)
    duplicated[rng.choice(n, size=round(DUPLICATE_RATE * n), replace=False)] = True
    return {
        "ar": ar,
        "daily": daily[day_of_step],
        "white": white,
        "spikes": spikes,
        "missing": missing,
        "duplicated": duplicated,
    }


def _long_gap(
    customer: DemoCustomer, seed: int, start: pd.Timestamp, end: pd.Timestamp
) -> tuple[int, pd.Timestamp, pd.Timestamp] | None:
    """Device and [from, to) of the customer's ~2-day outage, inside the window."""
    if customer.customer_id not in LONG_GAP_CUSTOMERS:
        return None
    days = int((end - start) / pd.Timedelta(days=1))
    if days < 8:
        return None
    rng = _rng(seed, customer, _TAG_GAP)
    k = int(rng.integers(customer.devices))
    # Whole days clear of both window edges; daytime (UTC) boundaries, never in the DST hours.
    day = int(rng.integers(2, days - 5))
    begin = start + pd.Timedelta(days=day, hours=int(rng.integers(6, 17)))
    finish = start + pd.Timedelta(days=day + 2, hours=int(rng.integers(6, 17)))
    return k, begin, finish


# --------------------------------------------------------------------------------------------
# Readings


@dataclass(frozen=True)
class _Readings:
    utc: pd.DatetimeIndex  # the window's full timeline
    t: np.ndarray  # per row: index into utc
    device: np.ndarray  # per row: device number
    energy_kwh: np.ndarray  # per row: exact energy
    kind: np.ndarray  # per row: 0 reading, 1 exact duplicate, 2 conflict
    device_ids: list[str]


_KINDS = np.array(["reading", "duplicate", "conflict"], dtype=object)


def _simulate(
    customer: DemoCustomer, end: pd.Timestamp, days: int, interval_minutes: int, seed: int
) -> _Readings:
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    end = _validate_window(end, days, interval_minutes)
    start = end - pd.Timedelta(days=days)
    step = pd.Timedelta(minutes=interval_minutes)
    utc = pd.date_range(start, end, freq=step, inclusive="left").as_unit("ns")
    n = len(utc)
    cal = _Calendar(utc)
    temp = _temperature(cal, seed)

    # Readings whose naive local time occurs twice (the autumn hour) stay untouched by defects.
    local_naive = utc.tz_convert(TIMEZONE).tz_localize(None)
    protected = np.asarray(local_naive.duplicated(keep=False))

    months = _month_starts(start, end)
    shape_ = (customer.devices, n)
    energy, missing, duplicated = np.empty(shape_), np.zeros(shape_, bool), np.zeros(shape_, bool)
    hours_per_step = step / pd.Timedelta(hours=1)
    for k in range(customer.devices):
        params = _device_params(customer, seed, k)
        shape = _shape(customer.profile, params, cal, temp)
        ar, level, spikes = np.empty(n), np.empty(n), np.empty(n)
        for month in months:
            draws = _month_draws(customer, seed, k, month, step)
            # Where this month's grid and the window overlap, in both index spaces.
            lo = max(0, int((start - month) / step))
            first = int((month + lo * step - start) / step)
            count = min(len(draws["ar"]) - lo, n - first)
            win, part = slice(first, first + count), slice(lo, lo + count)
            ar[win] = draws["ar"][part] * params["ar_sd"]
            level[win] = (
                draws["daily"][part] * params["daily_sd"]
                + draws["white"][part] * params["white_sd"]
            )
            spikes[win] = draws["spikes"][part]
            missing[k, win] = draws["missing"][part]
            duplicated[k, win] = draws["duplicated"][part]
        power_kw = params["scale"] * (shape * np.exp(ar + level) + spikes)
        energy[k] = power_kw * hours_per_step

    gap = _long_gap(customer, seed, start, end)
    if gap is not None:
        k, begin, finish = gap
        missing[k, (utc >= begin) & (utc < finish)] = True
    missing &= ~protected
    duplicated &= ~missing & ~protected

    dev, t = np.nonzero(~missing)
    parts = [(t, dev, energy[dev, t], np.zeros(len(t), dtype=np.int8))]
    dup_dev, dup_t = np.nonzero(duplicated)
    parts.append((dup_t, dup_dev, energy[dup_dev, dup_t], np.ones(len(dup_t), dtype=np.int8)))
    if customer.customer_id == CONFLICT_CUSTOMER:
        rng = _rng(seed, customer, _TAG_CONFLICT)
        candidates = np.flatnonzero(~missing & ~duplicated & ~protected[None, :])
        count = min(int(rng.integers(2, 4)), len(candidates))
        picks = np.sort(rng.choice(candidates, size=count, replace=False))
        c_dev, c_t = np.unravel_index(picks, shape_)
        lower = rng.random(count) < 0.5
        factor = np.where(lower, rng.uniform(0.6, 0.9, count), rng.uniform(1.15, 1.5, count))
        parts.append((c_t, c_dev, energy[c_dev, c_t] * factor, np.full(count, 2, dtype=np.int8)))
    t_all, dev_all, e_all, kind_all = (np.concatenate(cols) for cols in zip(*parts, strict=True))
    # Time order; at one time the devices in turn; a copy right after its original.
    order = np.lexsort((kind_all, dev_all, t_all))
    return _Readings(
        utc=utc,
        t=t_all[order],
        device=dev_all[order],
        energy_kwh=e_all[order],
        kind=kind_all[order],
        device_ids=device_ids(customer),
    )


def demo_readings(
    customer: DemoCustomer,
    *,
    end: pd.Timestamp,
    days: int = 365,
    interval_minutes: int = 15,
    seed: int = 0,
) -> pd.DataFrame:
    """The readings :func:`generate_customer_files` writes, in file order, before rounding.

    Columns: ``file`` (relative file name), ``timestamp`` (interval start, UTC), ``device_id``,
    ``energy_kwh`` (exact, before the vendor's unit and rounding) and ``kind``: ``reading``,
    ``duplicate`` (an exact copy of the row before it) or ``conflict`` (same device and time as
    an earlier row, another value). Readings missing from the files are absent here too.
    """
    r = _simulate(customer, end, days, interval_minutes, seed)
    return pd.DataFrame(
        {
            "file": monthly_file_names(r.utc)[r.t],
            "timestamp": r.utc[r.t],
            "device_id": np.asarray(r.device_ids, dtype=object)[r.device],
            "energy_kwh": r.energy_kwh,
            "kind": _KINDS[r.kind],
        }
    )


# --------------------------------------------------------------------------------------------
# Writing the vendor formats (vectorized string building, no per-row Python)


def _zfill(values, width: int) -> np.ndarray:
    return np.strings.zfill(np.asarray(values).astype(str), width)


def concat_text(*parts) -> np.ndarray:
    out = parts[0]
    for part in parts[1:]:
        out = np.strings.add(out, part)
    return out


def monthly_file_names(utc: pd.DatetimeIndex) -> np.ndarray:
    """One file per UTC month, "YYYY-MM.csv": every file holds whole UTC days."""
    return concat_text(_zfill(utc.year, 4), "-", _zfill(utc.month, 2), ".csv").astype(object)


def _iso(naive: pd.DatetimeIndex) -> np.ndarray:
    return concat_text(
        _zfill(naive.year, 4), "-", _zfill(naive.month, 2), "-", _zfill(naive.day, 2), "T",
        _zfill(naive.hour, 2), ":", _zfill(naive.minute, 2), ":", _zfill(naive.second, 2),
    )  # fmt: skip


def vendor_timestamps(utc: pd.DatetimeIndex, vendor: str) -> np.ndarray:
    """The vendor's timestamp text for every time of the timeline."""
    utc_naive = utc.tz_convert("UTC").tz_localize(None)
    if vendor == "gridsense":
        return concat_text(_iso(utc_naive), "Z")
    local = utc.tz_convert(TIMEZONE).tz_localize(None)
    if vendor == "kilowatch":
        offset = ((local - utc_naive) // pd.Timedelta(minutes=1)).to_numpy()
        sign = np.where(offset < 0, "-", "+")
        offset = np.abs(offset)
        return concat_text(_iso(local), sign, _zfill(offset // 60, 2), ":", _zfill(offset % 60, 2))
    # enerlog: naive local time, "%d.%m.%Y %H:%M"
    return concat_text(
        _zfill(local.day, 2), ".", _zfill(local.month, 2), ".", _zfill(local.year, 4), " ",
        _zfill(local.hour, 2), ":", _zfill(local.minute, 2),
    )  # fmt: skip


def decimal_text(values: np.ndarray, decimals: int, mark: str) -> np.ndarray:
    """Non-negative numbers as fixed-point text with the given decimal mark (round half even)."""
    scaled = np.rint(values * 10**decimals).astype(np.int64)
    whole, frac = np.divmod(scaled, 10**decimals)
    return concat_text(whole.astype(str), mark, _zfill(frac, decimals))


def generate_customer_files(
    customer: DemoCustomer,
    *,
    end: pd.Timestamp,
    days: int = 365,
    interval_minutes: int = 15,
    seed: int = 0,
) -> dict[str, bytes]:
    """Monthly files: relative name (e.g. "2025-03.csv") -> file bytes, in that vendor's format.

    Data covers [end - days, end) in UTC; end is a UTC midnight. Files are split by UTC month.
    Rows are in time order, the customer's devices interleaved; a duplicate or conflicting
    reading follows its original. Values are mean power in W (enerlog), energy in Wh
    (gridsense) or kWh (kilowatch).
    """
    r = _simulate(customer, end, days, interval_minutes, seed)
    vendor = VENDORS_BY_NAME[customer.vendor]
    hours = interval_minutes / 60.0
    if vendor.unit == "W":
        values = r.energy_kwh * 1000.0 / hours
    elif vendor.unit == "Wh":
        values = r.energy_kwh * 1000.0
    else:
        values = r.energy_kwh
    newline = "\r\n" if customer.vendor == "enerlog" else "\n"
    sep = vendor.separator
    lines = concat_text(
        vendor_timestamps(r.utc, customer.vendor)[r.t],
        sep,
        np.asarray(r.device_ids)[r.device],
        sep,
        decimal_text(values, VENDOR_DECIMALS[vendor.unit], vendor.decimal),
        newline,
    )
    header = sep.join(vendor.columns) + newline
    names = monthly_file_names(r.utc)[r.t]
    bounds = np.flatnonzero(names[1:] != names[:-1]) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [len(names)]])
    return {
        str(names[a]): (header + "".join(lines[a:b].tolist())).encode("utf-8")
        for a, b in zip(starts, stops, strict=True)
    }

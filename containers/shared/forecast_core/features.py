"""Lag and calendar features, built the same way for training and for inference.

Direct multi-horizon forecasting in **horizon buckets**. The horizon is cut into whole days:
bucket ``L`` (in steps: one day, two days, …) serves the forecast steps whose distance from the
origin (the first step after the last reading) is at most ``L``, and its features use only values
at least ``L`` steps older than the target. So the first day of a 48 h forecast sees the last
day before the origin (same hour yesterday, yesterday's level), the second day the day before
that; nothing is ever fed back. One model is fitted per bucket (:func:`bucket_for_lead` says
which serves a step). Training and inference build the features with the same function, so a
step sees exactly what it will see when forecast.

Lags per bucket: the same hour on each whole day from the freshest one the bucket allows up to
a week, the **median** of the same hour over the last ``median_weeks`` weeks (robust: one
unusual day two weeks ago, a working Saturday say, does not carry into the forecast the way a
fixed 14-day lag did), and the mean of the last day before the bucket's cut-off.

Two normalizations, both undone on the way out:
- each device's series is divided by that device's mean load (its *normalization scale*, saved
  with the model), so one model learns from devices of very different size;
- the target and the lags are then expressed relative to the device's *recent level* (its mean
  over the week ending ``L`` before the target). A forest cannot predict outside the range it
  was trained on, so a model trained in summer would cap an autumn heating load; as a ratio to
  the recent level, the model learns the daily and weekly shape and the level carries the
  season. The level itself is deliberately not a feature: from a few weeks of training data a
  forest would learn "high level, falling ratio" as a rule and carry a past trend into the
  forecast (on the England & Wales demand benchmark it cost 16% of WAPE).

Calendar features are in the customer's local time zone, because people and buildings follow
the local clock: public holidays from the `holidays` package, **bridge days** (a working day
between a holiday and a weekend or another holiday), the **year-end** period (24 December to
1 January), and whether the days the week lag and the day lag come from were such special days
(so a holiday a week ago is not copied into a normal week). There is deliberately no month or
day-of-year feature: with less than a few years of history a forest can only map an unseen day
of the year onto the last days it trained on; the recent level carries the season instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import holidays as holidays_lib
import numpy as np
import pandas as pd

FEATURE_SPEC_VERSION = 4

CALENDAR_FEATURES = (
    "time_of_day",
    "day_of_week",
    "is_weekend",
    "is_holiday",
    "is_bridge_day",
    "is_year_end",
    "week_ago_special",
    "day_lag_special",
)


class FeatureSpecVersionError(ValueError):
    """A saved feature spec from another version of this code: its model's inputs cannot be
    rebuilt. ``found`` is the version it was saved with."""

    def __init__(self, found: object):
        self.found = found
        super().__init__(
            f"feature spec version {found} is not {FEATURE_SPEC_VERSION}; "
            "retrain the model with this code"
        )


@dataclass(frozen=True)
class FeatureSpec:
    """Everything needed to rebuild the model's inputs; saved inside ``model.tar.gz``.

    ``bucket_steps``: the horizon buckets, each the largest distance from the origin (in steps)
    it serves and at the same time the youngest value its features may use.
    """

    resolution_minutes: int
    horizon_steps: int
    bucket_steps: tuple[int, ...]
    median_weeks: int
    timezone: str
    holiday_country: str
    device_codes: dict[str, int] = field(default_factory=dict)
    version: int = FEATURE_SPEC_VERSION

    @property
    def resolution(self) -> pd.Timedelta:
        return pd.Timedelta(minutes=self.resolution_minutes)

    @property
    def day_steps(self) -> int:
        return round(pd.Timedelta(days=1) / self.resolution)

    @property
    def week_steps(self) -> int:
        return 7 * self.day_steps

    def day_lags(self, bucket: int) -> tuple[int, ...]:
        """Same-hour lags of ``bucket``: each whole day from the freshest allowed up to a week."""
        first = -(-bucket // self.day_steps)  # ceil: the first whole day at least `bucket` old
        return tuple(d * self.day_steps for d in range(first, 8))

    def feature_names(self, bucket: int) -> list[str]:
        names = [f"lag_{s}" for s in self.day_lags(bucket)]
        names += [f"median_same_hour_{self.median_weeks}w", "mean_last_day"]
        return [*names, *CALENDAR_FEATURES, "device_code"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        raw = json.loads(text)
        if raw.get("version") != FEATURE_SPEC_VERSION:
            raise FeatureSpecVersionError(raw.get("version"))
        raw["bucket_steps"] = tuple(raw["bucket_steps"])
        return cls(**raw)


def make_feature_spec(
    *,
    resolution: pd.Timedelta,
    horizon_hours: float,
    timezone: str,
    holiday_country: str,
    devices: list[str],
    median_weeks: int = 4,
) -> FeatureSpec:
    """Buckets of whole days up to the horizon (48 h: 1-24 h and 25-48 h ahead)."""
    steps_per_hour = pd.Timedelta(hours=1) / resolution
    horizon_steps = round(horizon_hours * steps_per_hour)
    if horizon_steps < 1:
        raise ValueError(f"horizon of {horizon_hours} h is shorter than one step ({resolution})")
    day = round(24 * steps_per_hour)
    if horizon_steps > 7 * day:
        raise ValueError(f"horizon of {horizon_hours} h is longer than a week")
    buckets = tuple(min(d * day, horizon_steps) for d in range(1, -(-horizon_steps // day) + 1))
    codes = {d: i for i, d in enumerate(sorted(devices))}
    return FeatureSpec(
        resolution_minutes=int(resolution / pd.Timedelta(minutes=1)),
        horizon_steps=horizon_steps,
        bucket_steps=buckets,
        median_weeks=median_weeks,
        timezone=timezone,
        holiday_country=holiday_country,
        device_codes=codes,
    )


def bucket_for_lead(spec: FeatureSpec, lead_steps: np.ndarray) -> np.ndarray:
    """The bucket serving each step ``lead_steps`` after the last reading (1 = the first)."""
    lead = np.asarray(lead_steps)
    if lead.size and (lead.min() < 1 or lead.max() > spec.horizon_steps):
        raise ValueError(f"steps ahead must be within 1..{spec.horizon_steps}")
    buckets = np.asarray(spec.bucket_steps)
    return buckets[np.searchsorted(buckets, lead, side="left")]


def normalization_scales(series: pd.DataFrame) -> dict[str, float]:
    """Mean load per device, the divisor that puts devices on one scale."""
    means = series.groupby("device_id")["energy_kwh"].mean()
    return {str(d): (float(m) if np.isfinite(m) and m > 0 else 1.0) for d, m in means.items()}


def special_days(local_dates: pd.DatetimeIndex, country: str) -> pd.DataFrame:
    """Per distinct local date: ``is_holiday``, ``is_bridge_day``, ``is_year_end``, indexed by date.

    A bridge day is a working weekday whose neighbour on one side is a holiday and on the other a
    weekend day or a holiday (Friday after Ascension, Monday before a Tuesday holiday).
    """
    dates = pd.DatetimeIndex(sorted(set(local_dates)))
    if dates.empty:
        return pd.DataFrame(columns=["is_holiday", "is_bridge_day", "is_year_end"], dtype=np.int8)
    span = pd.date_range(dates[0] - pd.Timedelta(days=1), dates[-1] + pd.Timedelta(days=1))
    if country:
        try:
            calendar = holidays_lib.country_holidays(
                country, years=sorted({int(y) for y in span.year.unique()})
            )
        except NotImplementedError as exc:
            raise ValueError(f"unknown holiday country code {country!r}") from exc
        holiday = span.isin([pd.Timestamp(d) for d in calendar])
    else:
        holiday = np.zeros(len(span), dtype=bool)
    off = holiday | (span.dayofweek >= 5)
    before, after = np.roll(off, 1), np.roll(off, -1)
    hol_before, hol_after = np.roll(holiday, 1), np.roll(holiday, -1)
    bridge = ~off & ((hol_before & after) | (hol_after & before))
    year_end = ((span.month == 12) & (span.day >= 24)) | ((span.month == 1) & (span.day == 1))
    table = pd.DataFrame(
        {
            "is_holiday": holiday.astype(np.int8),
            "is_bridge_day": bridge.astype(np.int8),
            "is_year_end": np.asarray(year_end, dtype=np.int8),
        },
        index=span,
    )
    return table.iloc[1:-1].reindex(dates)


def calendar_features(timestamps: pd.Series, spec: FeatureSpec, day_lag: int = 0) -> pd.DataFrame:
    """Calendar of each target time (local), and whether the local days its week lag and its
    ``day_lag`` come from were special (holiday, bridge day or year-end)."""
    local = pd.DatetimeIndex(timestamps).tz_convert(spec.timezone)
    dates = local.normalize().tz_localize(None)
    week_ago = (local - pd.Timedelta(days=7)).normalize().tz_localize(None)
    lagged = (local - day_lag * spec.resolution).normalize().tz_localize(None)
    table = special_days(dates.append(week_ago).append(lagged), spec.holiday_country)
    special = table.max(axis=1)

    def at(days: pd.DatetimeIndex, column: str | None = None) -> np.ndarray:
        values = special if column is None else table[column]
        return values.reindex(days).to_numpy(dtype=np.int8)

    return pd.DataFrame(
        {
            "time_of_day": (local.hour + local.minute / 60.0).to_numpy(),
            "day_of_week": local.dayofweek.to_numpy(),
            "is_weekend": (local.dayofweek >= 5).astype(np.int8),
            "is_holiday": at(dates, "is_holiday"),
            "is_bridge_day": at(dates, "is_bridge_day"),
            "is_year_end": at(dates, "is_year_end"),
            "week_ago_special": at(week_ago),
            "day_lag_special": at(lagged),
        }
    )


def regular_grid(series: pd.DataFrame, spec: FeatureSpec, until: pd.Timestamp | None = None):
    """Each device on one complete grid at the model's resolution, up to ``until`` if given.

    Rows for times without a value have NaN energy: that is how future rows are asked for.
    """
    parts = []
    for device, group in series.groupby("device_id", sort=True):
        values = pd.Series(
            group["energy_kwh"].to_numpy(), index=pd.DatetimeIndex(group["timestamp"])
        ).sort_index()
        values = values[~values.index.duplicated(keep="last")]
        end = until if until is not None else values.index[-1]
        grid = pd.date_range(values.index[0], end, freq=spec.resolution)
        parts.append(
            pd.DataFrame(
                {
                    "timestamp": grid,
                    "device_id": device,
                    "energy_kwh": values.reindex(grid).to_numpy(),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


class Design(NamedTuple):
    """Model inputs for every row of a grid, and how to turn predictions back into kWh."""

    features: pd.DataFrame
    target: pd.Series  # energy / scale / level; NaN where energy is unknown
    kwh_per_unit: np.ndarray  # scale * level: multiply a prediction by this to get kWh


def build_features(
    grid: pd.DataFrame, spec: FeatureSpec, scales: dict[str, float], bucket: int
) -> Design:
    """Features of horizon bucket ``bucket``, target and de-normalization for every row of
    ``grid`` (see :func:`regular_grid`). Every feature of a row at ``t`` uses only values at
    ``t - bucket`` or earlier.

    Lag values that fall in a gap are NaN; scikit-learn's forests route missing values. Where a
    device has no recent level (a week-long gap), its mean load stands in.
    """
    if bucket not in spec.bucket_steps:
        raise ValueError(f"{bucket} is not one of the spec's buckets {spec.bucket_steps}")
    unknown = sorted(set(grid["device_id"]) - set(spec.device_codes))
    if unknown:
        raise ValueError(f"device(s) {unknown} were not seen in training; retrain the model")
    scale = grid["device_id"].map(scales).astype(float).to_numpy()
    y = grid["energy_kwh"].to_numpy() / scale
    normalized = pd.Series(y, index=grid.index)
    devices = grid["device_id"].to_numpy()
    by_device = normalized.groupby(devices, sort=False)
    shifted = by_device.shift(bucket)
    shifted_by_device = shifted.groupby(devices, sort=False)

    def rolling_mean(window: int) -> np.ndarray:
        return (
            shifted_by_device.rolling(window, min_periods=max(1, window // 2))
            .mean()
            .reset_index(level=0, drop=True)
            .reindex(grid.index)
            .to_numpy()
        )

    level = rolling_mean(spec.week_steps)
    level = np.where(np.isfinite(level) & (level > 1e-6), level, 1.0)
    columns: dict[str, np.ndarray] = {}
    day_lags = spec.day_lags(bucket)
    for lag in day_lags:
        columns[f"lag_{lag}"] = by_device.shift(lag).to_numpy() / level
    weeks = np.column_stack(
        [by_device.shift(w * spec.week_steps).to_numpy() for w in range(1, spec.median_weeks + 1)]
    )
    with np.errstate(all="ignore"):
        known = np.isfinite(weeks).any(axis=1)
        median = np.full(len(grid), np.nan)
        median[known] = np.nanmedian(weeks[known], axis=1)
    columns[f"median_same_hour_{spec.median_weeks}w"] = median / level
    columns["mean_last_day"] = rolling_mean(spec.day_steps) / level
    features = pd.DataFrame(columns, index=grid.index)
    cal = calendar_features(grid["timestamp"], spec, day_lag=day_lags[0])
    cal.index = grid.index
    features = pd.concat([features, cal], axis=1)
    features["device_code"] = grid["device_id"].map(spec.device_codes).astype(int).to_numpy()
    return Design(
        features=features[spec.feature_names(bucket)],
        target=pd.Series(y / level, index=grid.index, name="target"),
        kwh_per_unit=scale * level,
    )

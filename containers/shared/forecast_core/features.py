"""Lag and calendar features, built the same way for training and for inference.

The model forecasts every step of the horizon directly (no feeding predictions back in), so all
lags are at least the horizon long: a value at ``t - lag`` is known for every ``t`` up to
``last_observed + horizon``.

Two normalizations, both undone on the way out:
- each device's series is divided by that device's mean load (its *normalization scale*, saved
  with the model), so one model learns from devices of very different size;
- the target and the lags are then expressed relative to the device's *recent level* (its mean
  over the week ending ``horizon`` before the target). A forest cannot predict outside the range
  it was trained on, so a model trained in summer would cap an autumn heating load; as a ratio
  to the recent level, the model learns the daily and weekly shape and the level carries the
  season. The level itself is deliberately not a feature: from a few weeks of training data a
  forest would learn "high level, falling ratio" as a rule and carry a past trend into the
  forecast (on the England & Wales demand benchmark it cost 16% of WAPE).

Calendar features are in the customer's local time zone, because people and buildings follow
the local clock, and include public holidays from the `holidays` package. There is deliberately
no month or day-of-year feature: with less than a few years of history a forest can only map an
unseen day of the year onto the last days it trained on (a holiday week, say); the recent level
carries the season instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import holidays as holidays_lib
import numpy as np
import pandas as pd

FEATURE_SPEC_VERSION = 3


@dataclass(frozen=True)
class FeatureSpec:
    """Everything needed to rebuild the model's inputs; saved inside ``model.tar.gz``."""

    resolution_minutes: int
    horizon_steps: int
    lag_steps: tuple[int, ...]
    rolling_steps: tuple[int, ...]
    timezone: str
    holiday_country: str
    device_codes: dict[str, int] = field(default_factory=dict)
    version: int = FEATURE_SPEC_VERSION

    @property
    def resolution(self) -> pd.Timedelta:
        return pd.Timedelta(minutes=self.resolution_minutes)

    @property
    def min_history_steps(self) -> int:
        return max(self.lag_steps + tuple(self.horizon_steps + w for w in self.rolling_steps))

    def feature_names(self) -> list[str]:
        names = [f"lag_{s}" for s in self.lag_steps]
        names += [f"rolling_mean_{w}" for w in self.rolling_steps]
        names += [
            "time_of_day",
            "day_of_week",
            "is_weekend",
            "is_holiday",
            "device_code",
        ]
        return names

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        raw = json.loads(text)
        if raw.get("version") != FEATURE_SPEC_VERSION:
            raise ValueError(
                f"feature spec version {raw.get('version')} is not {FEATURE_SPEC_VERSION}; "
                "retrain the model with this code"
            )
        raw["lag_steps"] = tuple(raw["lag_steps"])
        raw["rolling_steps"] = tuple(raw["rolling_steps"])
        return cls(**raw)


def make_feature_spec(
    *,
    resolution: pd.Timedelta,
    horizon_hours: int,
    timezone: str,
    holiday_country: str,
    devices: list[str],
) -> FeatureSpec:
    """Default lags: the horizon, then whole days up to a week, and two weeks."""
    steps_per_hour = pd.Timedelta(hours=1) / resolution
    horizon_steps = round(horizon_hours * steps_per_hour)
    if horizon_steps < 1:
        raise ValueError(f"horizon of {horizon_hours} h is shorter than one step ({resolution})")
    day = round(24 * steps_per_hour)
    candidates = {horizon_steps, *(d * day for d in range(2, 8)), 14 * day}
    lag_steps = tuple(sorted(s for s in candidates if s >= horizon_steps))
    rolling = (day, 7 * day)
    codes = {d: i for i, d in enumerate(sorted(devices))}
    return FeatureSpec(
        resolution_minutes=int(resolution / pd.Timedelta(minutes=1)),
        horizon_steps=horizon_steps,
        lag_steps=lag_steps,
        rolling_steps=rolling,
        timezone=timezone,
        holiday_country=holiday_country,
        device_codes=codes,
    )


def normalization_scales(series: pd.DataFrame) -> dict[str, float]:
    """Mean load per device, the divisor that puts devices on one scale."""
    means = series.groupby("device_id")["energy_kwh"].mean()
    return {str(d): (float(m) if np.isfinite(m) and m > 0 else 1.0) for d, m in means.items()}


def _holiday_flags(local_dates: pd.Series, country: str) -> np.ndarray:
    if not country:
        return np.zeros(len(local_dates), dtype=np.int8)
    years = sorted({int(y) for y in pd.DatetimeIndex(local_dates).year.unique()})
    try:
        calendar = holidays_lib.country_holidays(country, years=years)
    except NotImplementedError as exc:
        raise ValueError(f"unknown holiday country code {country!r}") from exc
    days = {pd.Timestamp(d) for d in calendar}
    return np.asarray(pd.DatetimeIndex(local_dates).isin(list(days)), dtype=np.int8)


def calendar_features(timestamps: pd.Series, spec: FeatureSpec) -> pd.DataFrame:
    local = pd.DatetimeIndex(timestamps).tz_convert(spec.timezone)
    return pd.DataFrame(
        {
            "time_of_day": (local.hour + local.minute / 60.0).to_numpy(),
            "day_of_week": local.dayofweek.to_numpy(),
            "is_weekend": (local.dayofweek >= 5).astype(np.int8),
            "is_holiday": _holiday_flags(local.normalize().tz_localize(None), spec.holiday_country),
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


def build_features(grid: pd.DataFrame, spec: FeatureSpec, scales: dict[str, float]) -> Design:
    """Features, target and de-normalization for every row of ``grid`` (see :func:`regular_grid`).

    Lag values that fall in a gap are NaN; scikit-learn's forests route missing values. Where a
    device has no recent level (a week-long gap), its mean load stands in.
    """
    unknown = sorted(set(grid["device_id"]) - set(spec.device_codes))
    if unknown:
        raise ValueError(f"device(s) {unknown} were not seen in training; retrain the model")
    scale = grid["device_id"].map(scales).astype(float).to_numpy()
    y = grid["energy_kwh"].to_numpy() / scale
    normalized = pd.Series(y, index=grid.index)
    by_device = normalized.groupby(grid["device_id"].to_numpy(), sort=False)
    columns: dict[str, np.ndarray] = {}
    for lag in spec.lag_steps:
        columns[f"lag_{lag}"] = by_device.shift(lag).to_numpy()
    shifted = by_device.shift(spec.horizon_steps)
    shifted_by_device = shifted.groupby(grid["device_id"].to_numpy(), sort=False)

    def rolling_mean(window: int) -> np.ndarray:
        return (
            shifted_by_device.rolling(window, min_periods=max(1, window // 2))
            .mean()
            .reset_index(level=0, drop=True)
            .reindex(grid.index)
            .to_numpy()
        )

    level = rolling_mean(max(spec.rolling_steps))
    level = np.where(np.isfinite(level) & (level > 1e-6), level, 1.0)
    for name in list(columns):
        columns[name] = columns[name] / level
    for window in spec.rolling_steps:
        columns[f"rolling_mean_{window}"] = rolling_mean(window) / level
    features = pd.DataFrame(columns, index=grid.index)
    cal = calendar_features(grid["timestamp"], spec)
    cal.index = grid.index
    features = pd.concat([features, cal], axis=1)
    features["device_code"] = grid["device_id"].map(spec.device_codes).astype(int).to_numpy()
    return Design(
        features=features[spec.feature_names()],
        target=pd.Series(y / level, index=grid.index, name="target"),
        kwh_per_unit=scale * level,
    )

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

from forecast_core.weather import FORECAST, OBSERVED

# 5: the spec records whether the model has weather features. A version-4 spec is read as one
# without (its features are exactly those), so a model trained before weather keeps forecasting.
FEATURE_SPEC_VERSION = 5
READABLE_SPEC_VERSIONS = (4, 5)

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

WEATHER_FEATURES = (
    "temperature_c",
    "daily_mean_temperature_c",
    "heating_degree_hours",
    "cooling_degree_hours",
    "temperature_change_vs_day_lag",
    "temperature_change_vs_week_lag",
)
HEATING_BASE_C = 15.0
COOLING_BASE_C = 22.0
# Weather features only when the weather table has a temperature for this share of the load
# history's hours: a model must not learn from a few weeks of weather and guess the rest.
WEATHER_MIN_COVERAGE = 0.9
# Stand-in for an archived weather forecast: the observation plus an error of this standard
# deviation (°C) for a step on the first day ahead, plus PER_DAY for each further day. Typical
# 2 m temperature errors of a national weather service's forecast, day one and two.
SIMULATED_ERROR_C, SIMULATED_ERROR_PER_DAY_C = 1.0, 0.5
# Filling an hour of the horizon without a forecast: the mean of the last week at that time.
FILL_DAYS = 7
# What a forecast step's weather input was (the forecast's ``weather_input`` column).
WEATHER_FORECAST, WEATHER_OBSERVED = "forecast", "observed"
WEATHER_NONE, WEATHER_NOT_USED = "none_for_horizon", "not_used"


class FeatureSpecVersionError(ValueError):
    """A saved feature spec from another version of this code: its model's inputs cannot be
    rebuilt. ``found`` is the version it was saved with."""

    def __init__(self, found: object):
        self.found = found
        super().__init__(
            f"feature spec version {found} is not {FEATURE_SPEC_VERSION} (nor an older one this "
            f"code reads: {', '.join(str(v) for v in READABLE_SPEC_VERSIONS[:-1])}); "
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
    weather: bool = False
    """Whether the model has :data:`WEATHER_FEATURES` (the customer's weather covered its
    history when it was trained)."""
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
        weather = list(WEATHER_FEATURES) if self.weather else []
        return [*names, *CALENDAR_FEATURES, *weather, "device_code"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        raw = json.loads(text)
        if raw.get("version") not in READABLE_SPEC_VERSIONS:
            raise FeatureSpecVersionError(raw.get("version"))
        raw["bucket_steps"] = tuple(raw["bucket_steps"])
        raw["version"] = FEATURE_SPEC_VERSION  # a version 4 spec is one without weather
        return cls(**raw)


def make_feature_spec(
    *,
    resolution: pd.Timedelta,
    horizon_hours: float,
    timezone: str,
    holiday_country: str,
    devices: list[str],
    median_weeks: int = 4,
    weather: bool = False,
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
        weather=weather,
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
    grid: pd.DataFrame,
    spec: FeatureSpec,
    scales: dict[str, float],
    bucket: int,
    weather: pd.DataFrame | None = None,
    forecast_from: pd.Timestamp | None = None,
) -> Design:
    """Features of horizon bucket ``bucket``, target and de-normalization for every row of
    ``grid`` (see :func:`regular_grid`). Every feature of a row at ``t`` uses only values at
    ``t - bucket`` or earlier, and weather as it was known then (see the module docstring).

    ``weather``: the customer's weather table (read only if ``spec.weather``; None or empty
    makes the weather features missing). ``forecast_from``: when forecasting, the origin; rows
    from it on take the horizon's weather (:func:`horizon_weather`).

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
    if spec.weather:
        table = weather_features(grid["timestamp"], spec, bucket, weather, forecast_from)
        table.index = grid.index
        features = pd.concat([features, table], axis=1)
    features["device_code"] = grid["device_id"].map(spec.device_codes).astype(int).to_numpy()
    return Design(
        features=features[spec.feature_names(bucket)],
        target=pd.Series(y / level, index=grid.index, name="target"),
        kwh_per_unit=scale * level,
    )


# Weather -----------------------------------------------------------------------------------------


def _utc_index(values: pd.Series | pd.DatetimeIndex) -> pd.DatetimeIndex:
    index = pd.DatetimeIndex(values)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    return index.as_unit("ns")


def _latest(weather: pd.DataFrame | None, kind: str) -> pd.Series:
    """Temperature per timestamp of ``kind`` readings (forecasts: the newest issue's)."""
    if weather is None or weather.empty:
        return pd.Series(dtype=float, index=pd.DatetimeIndex([], tz="UTC"))
    rows = weather[weather["kind"] == kind]
    if kind == FORECAST:
        rows = rows.sort_values("issued_at", kind="stable")
    rows = rows.drop_duplicates("timestamp", keep="last")
    return pd.Series(
        rows["temperature_c"].to_numpy(dtype=float), index=_utc_index(rows["timestamp"])
    )


def weather_history(weather: pd.DataFrame | None, index: pd.DatetimeIndex) -> pd.Series:
    """The temperature at each of ``index``: the observation, else the newest forecast."""
    index = _utc_index(index)
    observed = _latest(weather, OBSERVED).reindex(index)
    return observed.fillna(_latest(weather, FORECAST).reindex(index))


def weather_coverage(weather: pd.DataFrame | None, timestamps: pd.Series) -> float:
    """The share of the distinct ``timestamps`` the weather table has a temperature for."""
    index = _utc_index(pd.Series(timestamps).drop_duplicates())
    if len(index) == 0:
        return 0.0
    return float(weather_history(weather, index).notna().mean())


def _uniform(keys: np.ndarray, salt: int) -> np.ndarray:
    """A uniform in [0, 1) per integer key (SplitMix64): the same key, the same number, on any
    machine, without a random state to carry around."""
    with np.errstate(over="ignore"):
        x = keys.astype(np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


def _normal(keys: np.ndarray, salt: int) -> np.ndarray:
    u1 = np.maximum(_uniform(keys, salt), 1e-12)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * _uniform(keys, salt + 1))


def simulated_forecast_error(
    timestamps: pd.DatetimeIndex, origins: pd.DatetimeIndex, days_ahead: int
) -> np.ndarray:
    """The error (°C) added to an observation that stands in for a weather forecast of
    ``timestamps`` issued at ``origins``, ``days_ahead`` days ahead. Normal, with a standard
    deviation of ``SIMULATED_ERROR_C`` + ``SIMULATED_ERROR_PER_DAY_C`` per further day; 80 % of
    its variance shared by all hours of one issue day (a forecast that is too warm is too warm
    all day), the rest hour by hour. Deterministic: the same hours get the same errors."""
    sigma = SIMULATED_ERROR_C + SIMULATED_ERROR_PER_DAY_C * max(days_ahead - 1, 0)
    day = pd.Timedelta(days=1).value
    issue_days = _utc_index(origins).asi8 // day
    hours = _utc_index(timestamps).asi8 // pd.Timedelta(minutes=1).value
    shared = _normal(issue_days, 1000 + days_ahead)
    own = _normal(hours, 2000 + days_ahead)
    return sigma * (np.sqrt(0.8) * shared + np.sqrt(0.2) * own)


def archived_forecast(
    weather: pd.DataFrame | None, index: pd.DatetimeIndex, spec: FeatureSpec, bucket: int
) -> np.ndarray:
    """The newest weather forecast of each of ``index`` issued at or before the origin that
    forecasts it in ``bucket`` (``bucket - 1`` steps before it); NaN where there is none."""
    index = _utc_index(index)
    values = np.full(len(index), np.nan)
    if weather is None or weather.empty:
        return values
    forecasts = weather[weather["kind"] == FORECAST]
    if forecasts.empty:
        return values
    origins = index - (bucket - 1) * spec.resolution
    left = pd.DataFrame({"timestamp": index, "origin": origins, "_row": np.arange(len(index))})
    right = pd.DataFrame(
        {
            "timestamp": _utc_index(forecasts["timestamp"]),
            "issued_at": _utc_index(forecasts["issued_at"]),
            "temperature_c": forecasts["temperature_c"].to_numpy(dtype=float),
        }
    )
    merged = pd.merge_asof(
        left.sort_values("origin"),
        right.sort_values("issued_at"),
        left_on="origin",
        right_on="issued_at",
        by="timestamp",
        direction="backward",
    )
    values[merged["_row"].to_numpy()] = merged["temperature_c"].to_numpy(dtype=float)
    return values


def weather_as_known(
    weather: pd.DataFrame | None, index: pd.DatetimeIndex, spec: FeatureSpec, bucket: int
) -> np.ndarray:
    """The temperature at each of ``index`` as known at the origin that forecasts it in
    ``bucket``: :func:`archived_forecast`, else the observation plus
    :func:`simulated_forecast_error`, else NaN."""
    index = _utc_index(index)
    values = archived_forecast(weather, index, spec, bucket)
    origins = index - (bucket - 1) * spec.resolution
    days_ahead = -(-bucket // spec.day_steps)
    observed = _latest(weather, OBSERVED).reindex(index).to_numpy(dtype=float)
    stand_in = observed + simulated_forecast_error(index, origins, days_ahead)
    return np.where(np.isfinite(values), values, stand_in)


def horizon_weather(
    weather: pd.DataFrame | None, future: pd.DatetimeIndex, origin: pd.Timestamp
) -> tuple[np.ndarray, np.ndarray]:
    """The temperature of each forecast step (``future``, from ``origin`` on) and where it came
    from: the newest ``forecast`` for it, else an ``observed`` value, else ``none_for_horizon``:
    the mean at that time of day of the last ``FILL_DAYS`` days of weather before the origin
    (NaN if the customer has no weather at all)."""
    future = _utc_index(future)
    values = np.array(_latest(weather, FORECAST).reindex(future), dtype=float)  # writable
    sources = np.where(np.isfinite(values), WEATHER_FORECAST, WEATHER_NONE).astype(object)
    observed = _latest(weather, OBSERVED).reindex(future).to_numpy(dtype=float)
    use_observed = ~np.isfinite(values) & np.isfinite(observed)
    values[use_observed] = observed[use_observed]
    sources[use_observed] = WEATHER_OBSERVED
    missing = ~np.isfinite(values)
    if missing.any() and weather is not None and not weather.empty:
        everything = _utc_index(weather["timestamp"].drop_duplicates().sort_values())
        before = everything[everything < _utc_index(pd.DatetimeIndex([origin]))[0]]
        if len(before):
            recent = before[before > before[-1] - pd.Timedelta(days=FILL_DAYS)]
            past = weather_history(weather, recent)
            by_time = past.groupby(past.index.hour * 60 + past.index.minute).mean()
            slot = pd.Series(future.hour * 60 + future.minute)
            fill = slot.map(by_time).fillna(past.mean()).to_numpy(dtype=float)
            values[missing] = fill[missing]
    return values, sources


def weather_features(
    timestamps: pd.Series,
    spec: FeatureSpec,
    bucket: int,
    weather: pd.DataFrame | None,
    forecast_from: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """:data:`WEATHER_FEATURES` for rows at ``timestamps`` in ``bucket`` (module docstring)."""
    stamps = _utc_index(timestamps)
    index = pd.date_range(stamps.min(), stamps.max(), freq=spec.resolution).as_unit("ns")
    past = weather_history(weather, index)
    known = weather_as_known(weather, index, spec, bucket)
    if forecast_from is not None:
        ahead = index >= _utc_index(pd.DatetimeIndex([forecast_from]))[0]
        known[ahead], _ = horizon_weather(weather, index[ahead], forecast_from)
    temperature = pd.Series(known, index=index)
    day, week = spec.day_steps, spec.week_steps

    def degree_hours(base: float, sign: float) -> pd.Series:
        # At the target, minus their mean over the week the recent level comes from.
        at_target = (sign * (temperature - base)).clip(lower=0)
        before = (sign * (past - base)).clip(lower=0).shift(bucket)
        return at_target - before.rolling(week, min_periods=week // 2).mean()

    columns = {
        "temperature_c": temperature,
        "daily_mean_temperature_c": temperature.rolling(day, min_periods=day // 2).mean(),
        "heating_degree_hours": degree_hours(HEATING_BASE_C, -1.0),
        "cooling_degree_hours": degree_hours(COOLING_BASE_C, 1.0),
        "temperature_change_vs_day_lag": temperature - past.shift(spec.day_lags(bucket)[0]),
        "temperature_change_vs_week_lag": temperature - past.shift(week),
    }
    return pd.DataFrame(
        {name: values.reindex(stamps).to_numpy() for name, values in columns.items()}
    )

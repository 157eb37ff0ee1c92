"""Probabilistic forecasts: P10 and P90 around the point forecast, from backtest errors.

One method for every model kind (forest, LightGBM, seasonal naive week or day, the fallback):
the **empirical quantiles of the backtest's errors, per horizon bucket**. An error is made
comparable across hours, seasons and customers by dividing it by a *scale* known when the
forecast is made::

    scale = (|forecast| + level) / 2

where ``level`` is the mean load over the week before the origin. Half the forecast makes the
interval follow the hour (a household's evening peak is less certain, in kWh, than its night);
half the level keeps it finite and non-zero when the forecast is zero or near it (a shop at night,
a meter that went quiet). The interval of a step is then::

    P10 = forecast + q10(bucket) * scale,   P90 = forecast + q90(bucket) * scale

clipped to ``0 <= P10 <= P50 <= P90`` (energy is not negative; a biased model's error quantiles
may both lie on one side of zero, but P50 is the point forecast). The P10-P90 interval is meant
to hold the actual value 80 % of the time.

Coverage is measured **out of sample**: each backtest origin's interval from the errors of the
hours before that origin only (earlier origins, and of those only the hours already past), so
the coverage reported is what the method would have achieved, not how well it fits its own
errors. Origins with fewer than :data:`MIN_PAST_ORIGINS` days of past errors are not scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

QUANTILES = (0.1, 0.9)
METHOD = "empirical quantiles of backtest errors per horizon bucket, scaled by (|forecast|+level)/2"
# Out-of-sample coverage needs a few days of earlier errors before an origin's interval means
# anything: fewer than this many earlier origins and the origin is not scored.
MIN_PAST_ORIGINS = 5


def error_scale(forecast: np.ndarray, level: np.ndarray) -> np.ndarray:
    """The divisor that makes an error comparable: the mean of |forecast| and the level."""
    return (np.abs(np.asarray(forecast, dtype=float)) + np.asarray(level, dtype=float)) / 2.0


def origin_levels(actual: pd.Series, at: pd.DatetimeIndex) -> pd.Series:
    """Mean of ``actual`` (the customer's total, by time) over the week before each origin."""
    week = pd.Timedelta(days=7)
    values = [float(actual[(actual.index >= o - week) & (actual.index < o)].mean()) for o in at]
    return pd.Series(values, index=at).fillna(0.0).clip(lower=0.0)


def scaled_errors(frame: pd.DataFrame, candidate: str, levels: pd.Series) -> pd.Series:
    """(actual - forecast) / scale for each row of a backtest frame (``forecast_core.backtest``)
    that has both; NaN elsewhere, and where the scale is zero (nothing to scale by)."""
    level = frame["origin"].map(levels).to_numpy(dtype=float)
    forecast = frame[candidate].to_numpy(dtype=float)
    scale = error_scale(forecast, level)
    with np.errstate(all="ignore"):
        errors = (frame["actual"].to_numpy(dtype=float) - forecast) / scale
    errors[~(scale > 0)] = np.nan
    return pd.Series(errors, index=frame.index)


def bucket_quantiles(errors: pd.Series, buckets: pd.Series) -> dict[int, dict[str, float]]:
    """Per bucket: the 10 % and 90 % quantiles of the finite errors and how many there were."""
    out: dict[int, dict[str, float]] = {}
    finite = errors.notna() & np.isfinite(errors)
    for bucket in sorted(buckets.unique()):
        values = errors[finite & (buckets == bucket)].to_numpy()
        if values.size == 0:
            continue
        q10, q90 = np.quantile(values, QUANTILES)
        out[int(bucket)] = {"q10": float(q10), "q90": float(q90), "n": int(values.size)}
    return out


def apply(
    forecast: np.ndarray, level: np.ndarray, steps_ahead: np.ndarray, quantiles: Mapping[Any, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """P10 and P90 for point forecasts ``forecast`` with their ``level``, ``steps_ahead`` of the
    last reading (1 = the first step; a bucket's own value, its last step, serves too).

    ``quantiles`` maps a horizon bucket (int, or its string in JSON) to ``{"q10", "q90"}``; a
    step takes the quantiles of the bucket that serves it, the shortest bucket at least as long
    as its distance (as ``forecast_core.features.bucket_for_lead``), else the longest bucket's
    (a longer horizon is at least as uncertain).
    """
    table = {int(k): v for k, v in quantiles.items()}
    if not table:
        raise ValueError("no error quantiles to make an interval from")
    known = np.array(sorted(table))
    forecast = np.asarray(forecast, dtype=float)
    pick = known[np.minimum(np.searchsorted(known, np.asarray(steps_ahead)), len(known) - 1)]
    q10 = np.array([table[int(b)]["q10"] for b in pick], dtype=float)
    q90 = np.array([table[int(b)]["q90"] for b in pick], dtype=float)
    scale = error_scale(forecast, level)
    p10 = np.clip(np.minimum(forecast + q10 * scale, forecast), 0.0, None)
    p90 = np.maximum(forecast + q90 * scale, forecast)
    return p10, np.clip(p90, 0.0, None)


def out_of_sample_coverage(
    frame: pd.DataFrame, candidate: str, levels: pd.Series, buckets: pd.Series
) -> dict[str, Any]:
    """How often the P10-P90 interval held the actual value, each origin's interval made from
    the errors of the hours before that origin only (see the module docstring)."""
    errors = scaled_errors(frame, candidate, levels)
    at = sorted(frame["origin"].unique())
    inside = total = 0
    scored_origins = 0
    for number, origin in enumerate(at):
        if number < MIN_PAST_ORIGINS:
            continue
        past = (frame["timestamp"] < origin).to_numpy()
        quantiles = bucket_quantiles(errors[past], buckets[past])
        rows = (frame["origin"] == origin).to_numpy() & frame[candidate].notna().to_numpy()
        if not quantiles or not rows.any():
            continue
        level = np.full(int(rows.sum()), float(levels[origin]))
        p10, p90 = apply(
            frame.loc[rows, candidate].to_numpy(), level, buckets[rows].to_numpy(), quantiles
        )
        actual = frame.loc[rows, "actual"].to_numpy(dtype=float)
        inside += int(((actual >= p10) & (actual <= p90)).sum())
        total += int(rows.sum())
        scored_origins += 1
    return {
        "coverage_p10_p90": inside / total if total else None,
        "hours": total,
        "origins": scored_origins,
    }


def in_sample_coverage(
    frame: pd.DataFrame,
    candidate: str,
    levels: pd.Series,
    buckets: pd.Series,
    quantiles: Mapping[Any, Any],
) -> float | None:
    """Coverage of the intervals from ``quantiles`` on the very errors they were taken from
    (about 80 % by construction; reported only next to the out-of-sample figure)."""
    rows = frame[candidate].notna().to_numpy()
    if not rows.any() or not quantiles:
        return None
    level = frame.loc[rows, "origin"].map(levels).to_numpy(dtype=float)
    p10, p90 = apply(
        frame.loc[rows, candidate].to_numpy(), level, buckets[rows].to_numpy(), quantiles
    )
    actual = frame.loc[rows, "actual"].to_numpy(dtype=float)
    return float(((actual >= p10) & (actual <= p90)).mean())


def device_levels(history: pd.DataFrame, before: pd.Timestamp | None = None) -> dict[str, float]:
    """Each device's mean load over the week up to its last known reading (``before`` caps it);
    the level its forecast's interval is scaled by. A device without readings that week: 0."""
    known = history[np.isfinite(pd.to_numeric(history["energy_kwh"], errors="coerce"))]
    if "is_gap" in known.columns:
        known = known[~known["is_gap"].fillna(False).astype(bool)]
    if before is not None:
        known = known[known["timestamp"] < before]
    out: dict[str, float] = {}
    for device, group in known.groupby(known["device_id"].astype(str)):
        last = group["timestamp"].max()
        week = group[group["timestamp"] > last - pd.Timedelta(days=7)]
        value = float(week["energy_kwh"].mean())
        out[device] = max(value, 0.0) if np.isfinite(value) else 0.0
    return out


def interval_summary(
    frame: pd.DataFrame, candidate: str, levels: pd.Series, buckets: pd.Series
) -> dict[str, Any]:
    """What a model saves and reports about its intervals: the quantiles from every backtest
    hour, and their coverage out of sample and in sample."""
    errors = scaled_errors(frame, candidate, levels)
    quantiles = bucket_quantiles(errors, buckets)
    oos = out_of_sample_coverage(frame, candidate, levels, buckets)
    return {
        "method": METHOD,
        "kind": candidate,
        "quantiles": {str(b): q for b, q in quantiles.items()},
        "coverage_p10_p90_out_of_sample": oos["coverage_p10_p90"],
        "coverage_hours": oos["hours"],
        "coverage_origins": oos["origins"],
        "coverage_p10_p90_in_sample": in_sample_coverage(
            frame, candidate, levels, buckets, quantiles
        ),
    }


# How many daily origins of seasonal-naive errors a forecast without a model looks back over.
HISTORY_ORIGINS = 28


def naive_history_intervals(
    history: pd.DataFrame, resolution: pd.Timedelta, horizon_steps: int, candidate: str
) -> dict[str, Any]:
    """Interval quantiles for a seasonal-naive forecast made without a model (``candidate``
    ``seasonal_naive_week`` or ``seasonal_naive_day``): the same method, on the errors that
    forecast would have made from up to :data:`HISTORY_ORIGINS` daily origins in the history,
    at the time of day of the forecast to come. ``quantiles`` is empty when the history is too
    short for a single scored hour (less than a week and a horizon)."""
    from forecast_core.backtest import available_origins, backtest_frame, origins, total_load
    from forecast_core.features import bucket_for_lead, make_feature_spec, regular_grid

    known = history[np.isfinite(pd.to_numeric(history["energy_kwh"], errors="coerce"))]
    if "is_gap" in known.columns:
        known = known[~known["is_gap"].fillna(False).astype(bool)]
    hours = horizon_steps * resolution / pd.Timedelta(hours=1)
    spec = make_feature_spec(
        resolution=resolution,
        horizon_hours=hours,
        timezone="UTC",
        holiday_country="",
        devices=sorted(known["device_id"].astype(str).unique()),
    )
    first, last = known["timestamp"].min(), known["timestamp"].max()
    count = min(HISTORY_ORIGINS, available_origins(first, last, spec, fit_days=7))
    empty = {"method": METHOD, "kind": candidate, "quantiles": {}, "history_origins": 0}
    if count < 1:
        return empty
    at = origins(last, spec, count)
    grid = regular_grid(known.assign(device_id=known["device_id"].astype(str)), spec)
    frame = backtest_frame(grid, spec, at, {})
    frame = frame[frame[candidate].notna()]
    if frame.empty:
        return empty
    levels = origin_levels(total_load(grid), at)
    buckets = pd.Series(bucket_for_lead(spec, frame["lead_steps"].to_numpy()), index=frame.index)
    errors = scaled_errors(frame, candidate, levels)
    quantiles = bucket_quantiles(errors, buckets)
    return {
        "method": METHOD,
        "kind": candidate,
        "quantiles": {str(b): q for b, q in quantiles.items()},
        "history_origins": int(frame["origin"].nunique()),
        "coverage_p10_p90_in_sample": in_sample_coverage(
            frame, candidate, levels, buckets, quantiles
        ),
    }

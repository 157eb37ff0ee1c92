"""P10/P90 intervals from backtest errors (forecast_core.intervals)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecast_core import intervals
from forecast_core.backtest import NAIVE_DAY, NAIVE_WEEK

HOUR = pd.Timedelta(hours=1)


def test_apply_scales_the_quantiles_and_keeps_p10_p50_p90_in_order():
    quantiles = {"24": {"q10": -0.2, "q90": 0.4}, "48": {"q10": -0.5, "q90": 0.8}}
    forecast = np.array([10.0, 10.0, 0.0, 0.0, 4.0])
    level = np.array([10.0, 10.0, 2.0, 0.0, 2.0])
    steps = np.array([1, 30, 24, 24, 60])  # 60: beyond every bucket, the longest one's
    p10, p90 = intervals.apply(forecast, level, steps, quantiles)
    # scale = (|forecast| + level) / 2: 10, 10, 1, 0, 3
    assert p10.tolist() == pytest.approx([8.0, 5.0, 0.0, 0.0, 2.5])
    assert p90.tolist() == pytest.approx([14.0, 18.0, 0.4, 0.0, 6.4])


def test_apply_never_puts_the_point_forecast_outside_its_interval_nor_goes_negative():
    # A biased model's errors: both quantiles above zero (it forecast too low every time).
    quantiles = {"24": {"q10": 0.1, "q90": 0.5}}
    p10, p90 = intervals.apply(np.array([10.0]), np.array([10.0]), np.array([3]), quantiles)
    assert (p10[0], p90[0]) == (10.0, 15.0)
    quantiles = {"24": {"q10": -3.0, "q90": -0.1}}
    p10, p90 = intervals.apply(np.array([10.0]), np.array([10.0]), np.array([3]), quantiles)
    assert (p10[0], p90[0]) == (0.0, 10.0)


def test_apply_refuses_an_empty_table():
    with pytest.raises(ValueError, match="no error quantiles"):
        intervals.apply(np.array([1.0]), np.array([1.0]), np.array([1]), {})


def frame_of(errors_by_origin: list[np.ndarray], steps: int = 4) -> pd.DataFrame:
    """A backtest frame: daily origins, ``steps`` hourly steps each, forecast 100, actual
    100 + the origin's errors (in kWh)."""
    parts = []
    start = pd.Timestamp("2026-01-10", tz="UTC")
    for number, errors in enumerate(errors_by_origin):
        origin = start + pd.Timedelta(days=number)
        parts.append(
            pd.DataFrame(
                {
                    "origin": origin,
                    "timestamp": origin + HOUR * np.arange(steps),
                    "lead_steps": np.arange(1, steps + 1),
                    "actual": 100.0 + errors,
                    NAIVE_WEEK: 100.0,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def test_out_of_sample_coverage_uses_only_errors_from_before_each_origin():
    # Ten calm days (errors within ±1 kWh), then five wild ones (±30 kWh). Calibrated on
    # everything the interval would hold most hours; made from the past only, it misses the
    # first wild day entirely, and that is what must be reported.
    rng = np.random.default_rng(0)
    calm = [rng.uniform(-1, 1, 4) for _ in range(10)]
    wild = [np.array([30.0, -30.0, 30.0, -30.0]) for _ in range(5)]
    frame = frame_of(calm + wild)
    levels = pd.Series(100.0, index=pd.DatetimeIndex(frame["origin"].unique()))
    buckets = pd.Series(4, index=frame.index)
    result = intervals.out_of_sample_coverage(frame, NAIVE_WEEK, levels, buckets)
    assert result["origins"] == 15 - intervals.MIN_PAST_ORIGINS
    assert result["hours"] == 4 * result["origins"]
    # Calm origins 5-9 (20 hours): their 10-90 % band holds about 80 %; the first wild origin
    # (day 10) only has calm errors to go by and holds nothing. Later wild ones learn from it.
    calm_scored = 5 * 4
    assert result["coverage_p10_p90"] < (calm_scored * 0.95 + 4 * 4) / result["hours"]
    summary = intervals.interval_summary(frame, NAIVE_WEEK, levels, buckets)
    # From all errors (a third of them ±30) the band spans ±30: in sample, every hour is inside.
    assert summary["coverage_p10_p90_in_sample"] == 1.0
    assert summary["coverage_p10_p90_out_of_sample"] == result["coverage_p10_p90"]
    assert summary["coverage_p10_p90_out_of_sample"] < summary["coverage_p10_p90_in_sample"]


def test_an_errors_origin_is_not_used_before_its_hours_have_happened():
    # Day 5 alone has a huge error in its last hour; the forecast from day 5 is scored with the
    # errors of days 0-4 only, so its interval does not anticipate its own error.
    errors = [np.array([1.0, -1.0, 0.5, -0.5]) for _ in range(6)]
    errors[5] = np.array([0.0, 0.0, 0.0, 500.0])
    frame = frame_of(errors)
    levels = pd.Series(100.0, index=pd.DatetimeIndex(frame["origin"].unique()))
    result = intervals.out_of_sample_coverage(
        frame, NAIVE_WEEK, levels, pd.Series(4, index=frame.index)
    )
    assert result["origins"] == 1 and result["hours"] == 4
    assert result["coverage_p10_p90"] < 1.0


def test_zero_load_gives_a_zero_width_interval_not_a_division_error():
    frame = frame_of([np.zeros(4)] * 6).assign(actual=0.0, **{NAIVE_WEEK: 0.0})
    levels = pd.Series(0.0, index=pd.DatetimeIndex(frame["origin"].unique()))
    errors = intervals.scaled_errors(frame, NAIVE_WEEK, levels)
    assert errors.isna().all()  # nothing to scale by: no error to learn from
    assert intervals.bucket_quantiles(errors, pd.Series(4, index=frame.index)) == {}


def history(days: int, device: str = "m1") -> pd.DataFrame:
    times = pd.date_range("2026-01-01", periods=24 * days, freq="1h", tz="UTC")
    hour = times.hour.to_numpy()
    rng = np.random.default_rng(1)
    values = 1.0 + 0.5 * np.sin(hour / 24 * 2 * np.pi) + rng.normal(0, 0.1, len(times))
    return pd.DataFrame({"timestamp": times, "device_id": device, "energy_kwh": values})


@pytest.mark.parametrize("candidate", [NAIVE_WEEK, NAIVE_DAY])
def test_naive_history_intervals_come_from_the_naive_errors_in_the_history(candidate):
    table = intervals.naive_history_intervals(history(50), HOUR, 48, candidate)
    assert table["history_origins"] == intervals.HISTORY_ORIGINS
    assert set(table["quantiles"]) == {"24", "48"}
    for q in table["quantiles"].values():
        assert q["q10"] < 0 < q["q90"]
        assert q["n"] == 24 * intervals.HISTORY_ORIGINS
    assert table["coverage_p10_p90_in_sample"] == pytest.approx(0.8, abs=0.02)


def test_naive_history_intervals_of_a_too_short_history_are_empty():
    table = intervals.naive_history_intervals(history(8), HOUR, 48, NAIVE_WEEK)
    assert table["quantiles"] == {} and table["history_origins"] == 0


def test_device_levels_are_each_devices_mean_over_its_last_week():
    both = pd.concat([history(20), history(20, "m2").assign(energy_kwh=3.0)])
    levels = intervals.device_levels(both)
    assert levels["m2"] == pytest.approx(3.0)
    last_week = history(20).tail(24 * 7)["energy_kwh"].mean()
    assert levels["m1"] == pytest.approx(last_week, rel=1e-3)

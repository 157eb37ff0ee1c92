"""Accuracy metrics, the seasonal-naive baseline and the quality gate."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from forecast_core.metrics import GateResult, quality_gate, regression_metrics, seasonal_naive


def test_regression_metrics_against_hand_computed_values():
    # The last two pairs have a missing side and are ignored.
    actual = [2.0, 0.0, 5.0, 8.0, np.nan, 1.0]
    predicted = [3.0, 1.0, 3.0, 8.0, 5.0, np.nan]
    m = regression_metrics(actual, predicted)
    # errors: +1, +1, -2, 0
    assert m["n"] == 4
    assert m["mae"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(math.sqrt(6 / 4))
    # MAPE skips the zero actual: (1/2 + 2/5 + 0) / 3
    assert m["mape"] == pytest.approx(30.0)
    # WAPE: 4 / (2 + 0 + 5 + 8)
    assert m["wape"] == pytest.approx(100 * 4 / 15)
    # mean 3.75; SS_tot = 1.75² + 3.75² + 1.25² + 4.25² = 36.75; SSE = 6
    assert m["r2"] == pytest.approx(1 - 6 / 36.75)
    assert set(m) == {"mae", "rmse", "mape", "wape", "r2", "n"}


def test_regression_metrics_perfect_forecast():
    m = regression_metrics(pd.Series([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]))
    assert m == {"mae": 0.0, "rmse": 0.0, "mape": 0.0, "wape": 0.0, "r2": 1.0, "n": 3}


def test_regression_metrics_undefined_parts_are_nan():
    m = regression_metrics([0.0, 0.0], [1.0, 3.0])
    assert m["mae"] == 2.0
    assert math.isnan(m["mape"])
    assert math.isnan(m["wape"])
    assert math.isnan(m["r2"])  # constant actuals: no variance to explain
    assert m["n"] == 2


def test_regression_metrics_ignores_infinite_values():
    m = regression_metrics([1.0, np.inf, 3.0], [2.0, 1.0, -np.inf])
    assert m["n"] == 1
    assert m["mae"] == 1.0


@pytest.mark.parametrize(("actual", "predicted"), [([], []), ([np.nan, 1.0], [2.0, np.nan])])
def test_regression_metrics_without_pairs_raises(actual, predicted):
    with pytest.raises(ValueError, match="no pairs of actual and predicted values"):
        regression_metrics(actual, predicted)


def test_seasonal_naive_is_the_value_one_season_earlier():
    index = pd.date_range("2025-01-01", periods=6, freq="1h", tz="UTC")
    series = pd.Series([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], index=index)
    naive = seasonal_naive(series, pd.Timedelta(hours=2))
    assert naive.index.equals(series.index)
    assert naive.iloc[:2].isna().all()
    assert naive.iloc[2:].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_seasonal_naive_default_week_and_missing_times():
    index = pd.DatetimeIndex(
        [
            pd.Timestamp("2025-01-01 00:00", tz="UTC"),
            pd.Timestamp("2025-01-01 01:00", tz="UTC"),
            pd.Timestamp("2025-01-08 00:00", tz="UTC"),
            pd.Timestamp("2025-01-08 02:00", tz="UTC"),  # a week earlier is not in the series
        ]
    )
    series = pd.Series([10.0, 11.0, 12.0, 13.0], index=index)
    naive = seasonal_naive(series)
    assert naive.iloc[2] == 10.0
    assert naive.iloc[[0, 1, 3]].isna().all()
    # The input is left alone.
    assert series.index.equals(index)


def test_quality_gate_passes():
    result = quality_gate({"r2": 0.8, "wape": 10.0}, {"wape": 20.0}, min_r2=0.5)
    assert result == GateResult(passed=True, reasons=())


def test_quality_gate_r2_below_minimum():
    result = quality_gate({"r2": 0.3, "wape": 10.0}, {"wape": 20.0}, min_r2=0.5)
    assert result.passed is False
    assert result.reasons == ("R² 0.300 is below the minimum 0.500",)


def test_quality_gate_missing_r2_fails():
    result = quality_gate({"wape": 10.0}, {"wape": 20.0}, min_r2=0.0)
    assert result.reasons == ("R² nan is below the minimum 0.000",)


@pytest.mark.parametrize("wape", [20.0, 25.0])
def test_quality_gate_wape_must_beat_the_baseline(wape):
    result = quality_gate({"r2": 0.9, "wape": wape}, {"wape": 20.0}, min_r2=0.5)
    assert result.passed is False
    assert result.reasons == (
        f"WAPE {wape:.2f}% does not beat the seasonal-naive baseline's 20.00%",
    )


def test_quality_gate_reports_every_reason_and_baseline_can_be_waived():
    both = quality_gate({"r2": 0.1, "wape": 30.0}, {"wape": 20.0}, min_r2=0.5)
    assert both.passed is False
    assert len(both.reasons) == 2
    assert both.reasons[0].startswith("R² 0.100")
    assert both.reasons[1].startswith("WAPE 30.00%")

    waived = quality_gate(
        {"r2": 0.9, "wape": 30.0}, {"wape": 20.0}, min_r2=0.5, require_beating_baseline=False
    )
    assert waived == GateResult(passed=True, reasons=())


def test_quality_gate_unknown_baseline_fails():
    result = quality_gate({"r2": 0.9, "wape": 10.0}, {"wape": float("nan")}, min_r2=0.5)
    assert result.reasons == ("WAPE 10.00% does not beat the seasonal-naive baseline's nan%",)

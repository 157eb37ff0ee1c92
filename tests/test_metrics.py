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
    # bias: (+1 + 1 - 2 + 0) / 15: too high and too low cancel
    assert m["bias_pct"] == pytest.approx(0.0)
    assert set(m) == {"mae", "rmse", "mape", "wape", "bias_pct", "r2", "n"}


def test_regression_metrics_bias_is_signed_share_of_actual_energy():
    assert regression_metrics([10.0, 10.0], [12.0, 11.0])["bias_pct"] == pytest.approx(15.0)
    assert regression_metrics([10.0, 10.0], [8.0, 10.0])["bias_pct"] == pytest.approx(-10.0)


def test_regression_metrics_perfect_forecast():
    m = regression_metrics(pd.Series([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]))
    assert m == {
        "mae": 0.0,
        "rmse": 0.0,
        "mape": 0.0,
        "wape": 0.0,
        "bias_pct": 0.0,
        "r2": 1.0,
        "n": 3,
    }


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


# The gate: beat seasonal naive, the forecast the customer gets without a model ---------------

HOUSEHOLD = {"r2": 0.35, "wape": 18.2, "n": 336}  # noisy load: low R², clearly better than naive
NAIVE = {"r2": 0.1, "wape": 23.6, "n": 336}


def test_quality_gate_approves_a_model_that_beats_naive_whatever_its_r2():
    result = quality_gate(HOUSEHOLD, NAIVE)
    assert result.passed is True
    assert result.reasons == ()
    assert result.wape_ratio == pytest.approx(18.2 / 23.6)
    assert result.summary == "WAPE 18.2% vs seasonal naive 23.6% (ratio 0.77 < 1.00): approved"


@pytest.mark.parametrize(("wape", "shown"), [(24.5, "1.04"), (23.6, "1.00")])
def test_quality_gate_rejects_a_model_not_strictly_better_than_naive(wape, shown):
    result = quality_gate({**HOUSEHOLD, "wape": wape}, NAIVE)
    assert result.passed is False
    assert result.summary == (
        f"WAPE {wape:.1f}% vs seasonal naive 23.6% (ratio {shown} ≥ 1.00): rejected"
    )
    assert result.reasons == (
        f"WAPE {wape:.1f}% is not below seasonal naive's 23.6% × 1.00 (ratio {shown})",
    )


def test_quality_gate_shows_a_ratio_just_below_the_limit_as_below_it():
    result = quality_gate({**HOUSEHOLD, "wape": 23.5}, NAIVE)
    assert result.passed is True
    assert "(ratio 0.996 < 1.000)" in result.summary


@pytest.mark.parametrize(("max_ratio", "passed"), [(0.8, True), (0.75, False), (1.2, True)])
def test_quality_gate_max_wape_ratio_sets_the_margin(max_ratio, passed):
    result = quality_gate(HOUSEHOLD, NAIVE, max_wape_ratio=max_ratio)  # ratio 0.771
    assert result.passed is passed
    sign, verdict = ("<", "approved") if passed else ("≥", "rejected")
    assert result.summary.endswith(f"(ratio 0.77 {sign} {max_ratio:.2f}): {verdict}")


def test_quality_gate_min_r2_is_an_optional_extra_condition():
    strict = quality_gate(HOUSEHOLD, NAIVE, min_r2=0.7)
    assert strict.passed is False
    assert strict.reasons == ("R² 0.350 is below the minimum 0.700",)
    assert strict.summary == (
        "WAPE 18.2% vs seasonal naive 23.6% (ratio 0.77 < 1.00); R² 0.350 < 0.700: rejected"
    )
    assert quality_gate(HOUSEHOLD, NAIVE, min_r2=0.3).passed is True
    # Off by default, so an unknown R² (constant actuals) does not matter...
    assert quality_gate({"wape": 18.2}, NAIVE).passed is True
    # ...unless asked for.
    assert quality_gate({"wape": 18.2}, NAIVE, min_r2=0.0).reasons == (
        "R² nan is below the minimum 0.000",
    )


def test_quality_gate_reports_every_reason():
    result = quality_gate({"r2": 0.1, "wape": 30.0}, NAIVE, min_r2=0.5)
    assert result.passed is False
    assert len(result.reasons) == 2
    assert result.reasons[0].startswith("WAPE 30.0% is not below")
    assert result.reasons[1].startswith("R² 0.100")


@pytest.mark.parametrize(
    ("model_wape", "naive_wape"),
    [(float("nan"), 23.6), (18.2, float("nan")), (float("inf"), 23.6), (0.0, 0.0), (None, 23.6)],
)
def test_quality_gate_rejects_metrics_it_cannot_compare(model_wape, naive_wape):
    metrics = {"r2": 0.9} if model_wape is None else {"r2": 0.9, "wape": model_wape}
    result = quality_gate(metrics, {"wape": naive_wape})
    assert result.passed is False
    assert math.isnan(result.wape_ratio)
    assert "(ratio not defined): rejected" in result.summary
    assert result.reasons[0].endswith("both must be finite and naive's above 0")


def test_quality_gate_rejects_a_model_whose_forecast_was_not_finite_somewhere():
    # regression_metrics drops non-finite forecasts, so such a model is scored on fewer hours.
    result = quality_gate({**HOUSEHOLD, "n": 330}, NAIVE)
    assert result.passed is False
    assert result.reasons == ("the model's forecast is not finite for 6 of 336 holdout intervals",)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_quality_gate_refuses_a_meaningless_max_wape_ratio(bad):
    with pytest.raises(ValueError, match="max_wape_ratio must be a positive number"):
        quality_gate(HOUSEHOLD, NAIVE, max_wape_ratio=bad)


def test_quality_gate_settings_are_keyword_only():
    with pytest.raises(TypeError):
        quality_gate(HOUSEHOLD, NAIVE, 1.0)  # type: ignore[misc]


def test_gate_result_fields():
    result = quality_gate(HOUSEHOLD, NAIVE)
    assert isinstance(result, GateResult)
    assert {f for f in GateResult.__dataclass_fields__} == {
        "passed",
        "reasons",
        "summary",
        "wape_ratio",
    }


@pytest.mark.parametrize("max_ratio", [0.5, 1.0, 1.2])
def test_quality_gate_approves_seasonal_naive_chosen_as_the_model(max_ratio):
    """A model that is seasonal naive week itself forecasts what the fallback would: approved
    whatever the margin asked, so an older model the backtest did not choose stops forecasting."""
    result = quality_gate(NAIVE, NAIVE, max_wape_ratio=max_ratio, min_r2=0.7, is_baseline=True)
    assert result.passed is True
    assert result.reasons == ()
    assert result.wape_ratio == 1.0
    assert "seasonal naive (same time last week) chosen, WAPE 23.6%" in result.summary
    assert result.summary.endswith(": approved")

"""Forecast accuracy metrics and the seasonal-naive baseline they are judged against."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


def regression_metrics(actual, predicted) -> dict[str, float]:
    """MAE, RMSE, MAPE (%), WAPE (%) and R² over the pairs where both values are known.

    MAPE skips zero actuals (it is undefined there); WAPE, the sum of absolute errors over the
    sum of actuals, does not need to and is the fairer figure for load that can be near zero.
    """
    a = np.asarray(actual, dtype=float)
    p = np.asarray(predicted, dtype=float)
    keep = np.isfinite(a) & np.isfinite(p)
    a, p = a[keep], p[keep]
    if a.size == 0:
        raise ValueError("no pairs of actual and predicted values to score")
    err = p - a
    nonzero = a != 0
    ss_tot = float(np.sum((a - a.mean()) ** 2))
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mape": float(np.mean(np.abs(err[nonzero] / a[nonzero])) * 100)
        if nonzero.any()
        else float("nan"),
        "wape": float(np.sum(np.abs(err)) / np.sum(np.abs(a)) * 100) if np.any(a) else float("nan"),
        "r2": float(1 - np.sum(err**2) / ss_tot) if ss_tot > 0 else float("nan"),
        "n": int(a.size),
    }


ONE_WEEK = pd.Timedelta(days=7)


def seasonal_naive(series: pd.Series, season: pd.Timedelta = ONE_WEEK) -> pd.Series:
    """The value one season earlier (same time last week by default), aligned on the index."""
    shifted = series.copy()
    shifted.index = shifted.index + season
    return shifted.reindex(series.index)


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: tuple[str, ...]


def quality_gate(
    metrics: dict[str, float],
    baseline: dict[str, float],
    *,
    min_r2: float,
    require_beating_baseline: bool = True,
) -> GateResult:
    """Whether a model may be used for forecasts: R² high enough and better WAPE than naive."""
    reasons: list[str] = []
    r2 = metrics.get("r2", float("nan"))
    if not (np.isfinite(r2) and r2 >= min_r2):
        reasons.append(f"R² {r2:.3f} is below the minimum {min_r2:.3f}")
    if require_beating_baseline:
        wape, base = metrics.get("wape", float("nan")), baseline.get("wape", float("nan"))
        if not (np.isfinite(wape) and np.isfinite(base) and wape < base):
            reasons.append(
                f"WAPE {wape:.2f}% does not beat the seasonal-naive baseline's {base:.2f}%"
            )
    return GateResult(passed=not reasons, reasons=tuple(reasons))

"""Forecast accuracy metrics, the seasonal-naive baseline they are judged against, and the
quality gate that decides from both whether a model may forecast."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd


def regression_metrics(actual, predicted) -> dict[str, float]:
    """MAE, RMSE, MAPE (%), WAPE (%), bias (% of actual energy, + = too high) and R² over the
    pairs where both values are known.

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
        "bias_pct": float(np.sum(err) / np.sum(np.abs(a)) * 100) if np.any(a) else float("nan"),
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
    """The gate's verdict: ``passed``, one line ``summary`` for logs and UIs, and ``reasons``
    (empty when approved) saying what failed. ``wape_ratio`` is the model's backtest WAPE over
    seasonal naive's, NaN when either is unknown."""

    passed: bool
    reasons: tuple[str, ...]
    summary: str
    wape_ratio: float


def quality_gate(
    metrics: Mapping[str, float],
    baseline: Mapping[str, float],
    *,
    max_wape_ratio: float = 1.0,
    min_r2: float | None = None,
    is_baseline: bool = False,
) -> GateResult:
    """Whether a model may be used for forecasts: it must beat the forecast the customer would
    otherwise get.

    The rule: approved when the model's backtest WAPE is strictly below seasonal naive's WAPE on
    the same backtest hours times ``max_wape_ratio``, i.e. ``model WAPE / naive WAPE < max_wape_ratio``,
    with both WAPEs finite and the model scored on every holdout interval the baseline was (a model
    whose forecast is infinite or NaN somewhere loses those intervals from its own metrics, see
    :func:`regression_metrics`, and must not look better for it).

    Why this and not R²: when no approved model exists the customer gets a seasonal-naive
    forecast, so a model that beats seasonal naive is strictly better than what the customer
    would otherwise get, and withholding it helps nobody. R² measures how much of the load's
    variance the model explains; a household's load is mostly noise (a kettle, a shower) that no
    model can explain, so its R² stays low (0.3-0.5) even for a model that is clearly better than
    naive (WAPE ratio 0.77). ``min_r2`` remains as an optional extra condition, off by default.
    ``max_wape_ratio`` below 1 demands a margin over naive; above 1 tolerates a slightly worse
    model (rarely wanted: the fallback is then the better forecast).

    ``is_baseline``: the model *is* seasonal naive (same time last week), chosen by the backtest
    because no candidate beat it. It is approved whatever the limits: it forecasts exactly what
    the fallback would, so approving it serves the customer nothing worse than the fallback,
    and it stops an older approved model, which the backtest did not choose, from forecasting.
    """
    if not (math.isfinite(max_wape_ratio) and max_wape_ratio > 0):
        raise ValueError(f"max_wape_ratio must be a positive number, got {max_wape_ratio}")
    if min_r2 is not None and not math.isfinite(min_r2):
        raise ValueError(f"min_r2 must be a number or None, got {min_r2}")
    reasons: list[str] = []
    wape = float(metrics.get("wape", float("nan")))
    if is_baseline:
        return GateResult(
            passed=True,
            reasons=(),
            summary=f"seasonal naive (same time last week) chosen, WAPE {_pct(wape)}: no candidate "
            "beat it; it forecasts as the fallback would: approved",
            wape_ratio=1.0,
        )
    base = float(baseline.get("wape", float("nan")))
    comparable = math.isfinite(wape) and math.isfinite(base) and base > 0
    ratio = wape / base if comparable else float("nan")
    limit = _fmt(max_wape_ratio, 2)
    if not comparable:
        comparison = f"WAPE {_pct(wape)} vs seasonal naive {_pct(base)} (ratio not defined)"
        reasons.append(
            f"WAPE {_pct(wape)} cannot be compared with seasonal naive's {_pct(base)}: "
            "both must be finite and naive's above 0"
        )
    else:
        shown, limit = _distinct(ratio, max_wape_ratio)
        beats = ratio < max_wape_ratio
        comparison = (
            f"WAPE {_pct(wape)} vs seasonal naive {_pct(base)} "
            f"(ratio {shown} {'<' if beats else '≥'} {limit})"
        )
        if not beats:
            reasons.append(
                f"WAPE {_pct(wape)} is not below seasonal naive's {_pct(base)} × {limit} "
                f"(ratio {shown})"
            )
    scored, expected = metrics.get("n"), baseline.get("n")
    if scored is not None and expected is not None and scored < expected:
        reasons.append(
            f"the model's forecast is not finite for {int(expected - scored)} of "
            f"{int(expected)} holdout intervals"
        )
    if min_r2 is not None:
        r2 = float(metrics.get("r2", float("nan")))
        r2_ok = math.isfinite(r2) and r2 >= min_r2
        comparison += f"; R² {r2:.3f} {'≥' if r2_ok else '<'} {min_r2:.3f}"
        if not r2_ok:
            reasons.append(f"R² {r2:.3f} is below the minimum {min_r2:.3f}")
    passed = not reasons
    return GateResult(
        passed=passed,
        reasons=tuple(reasons),
        summary=f"{comparison}: {'approved' if passed else 'rejected'}",
        wape_ratio=ratio,
    )


def _pct(value: float) -> str:
    return f"{value:.1f}%" if math.isfinite(value) else f"{value}%"


def _fmt(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def _distinct(ratio: float, limit: float) -> tuple[str, str]:
    """Ratio and limit with two decimals, or more where two would show a ratio just below the
    limit as equal to it ("ratio 1.00 < 1.00")."""
    for decimals in range(2, 7):
        shown, bound = _fmt(ratio, decimals), _fmt(limit, decimals)
        if shown != bound or ratio == limit:
            return shown, bound
    return shown, bound

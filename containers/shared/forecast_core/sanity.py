"""Whether a forecast is fit to publish, judged against the load it was made from.

A model can pass its quality gate on the holdout and still produce nonsense for tomorrow (a
feature it never saw, a recent level near zero dividing a lag): NaN, negative energy, or
values orders of magnitude beyond anything the meter has ever measured (4.6e27 kWh). These
checks catch that before anyone sees it. They are deliberately coarse: a value ten times a
device's own historical maximum for one interval is not a forecast, whatever the model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

DEFAULT_MAX_MULTIPLE = 10.0
DEFAULT_MAX_LINES = 20


def forecast_problems(
    forecast: pd.DataFrame,
    history: pd.DataFrame,
    *,
    max_multiple: float = DEFAULT_MAX_MULTIPLE,
    max_lines: int = DEFAULT_MAX_LINES,
) -> list[str]:
    """Every reason not to publish ``forecast``, one human line each; empty when it is fine.

    ``forecast`` has ``timestamp``, ``device_id`` and ``energy_kwh`` (kWh per interval);
    ``history`` is the preprocessed load table (``timestamp, device_id, energy_kwh, is_gap,
    is_filled``), at the same resolution. Problems, in this order:

    - the forecast is empty;
    - a forecast device has no known reading in the history (nothing to judge it by);
    - a value is NaN or infinite;
    - a value is negative;
    - a value is above ``max_multiple`` × the device's own largest known reading per interval;
    - where the forecast has an interval (``p10_kwh``, ``p90_kwh``): a bound that is not finite,
      or not ``0 <= p10_kwh <= energy_kwh <= p90_kwh``.

    Each value line names the device, the time and the value. At most ``max_lines`` lines come
    back; if there are more, the last line says ``"and N more"``.
    """
    if not (math.isfinite(max_multiple) and max_multiple > 0):
        raise ValueError(f"max_multiple must be a positive number, got {max_multiple}")
    if max_lines < 1:
        raise ValueError(f"max_lines must be at least 1, got {max_lines}")
    missing = [c for c in ("timestamp", "device_id", "energy_kwh") if c not in forecast.columns]
    if missing:
        return [f"forecast has no column(s) {', '.join(missing)}"]
    if forecast.empty:
        return ["forecast is empty: no rows"]

    devices = forecast["device_id"].astype(str).to_numpy()
    values = pd.to_numeric(forecast["energy_kwh"], errors="coerce").to_numpy(dtype=float)
    times = pd.DatetimeIndex(forecast["timestamp"])
    maxima = historical_maxima(history)

    problems: list[str] = []
    problems += [
        f"device '{d}': no known reading in the history to judge its forecast by"
        for d in sorted(set(devices) - set(maxima.index))
    ]
    order = np.lexsort((times.asi8, devices))  # by device, then time
    device_max = pd.Series(devices).map(maxima).to_numpy(dtype=float)
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore"):
        negative = finite & (values < 0)
        too_high = finite & np.isfinite(device_max) & (values > max_multiple * device_max)

    def lines(mask: np.ndarray, text: Callable[[int], str]) -> Iterator[str]:
        for i in order[mask[order]]:
            yield f"device '{devices[i]}' at {times[i].isoformat()}: {text(i)}"

    if {"p10_kwh", "p90_kwh"} <= set(forecast.columns):
        p10 = pd.to_numeric(forecast["p10_kwh"], errors="coerce").to_numpy(dtype=float)
        p90 = pd.to_numeric(forecast["p90_kwh"], errors="coerce").to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            # A float's rounding is not a disorder worth refusing a forecast for.
            slack = 1e-9 * np.maximum(np.abs(values), 1.0)
            bad_interval = finite & ~(
                np.isfinite(p10)
                & np.isfinite(p90)
                & (p10 >= 0)
                & (p10 <= values + slack)
                & (values <= p90 + slack)
            )
    else:
        p10 = p90 = np.full(len(values), np.nan)
        bad_interval = np.zeros(len(values), dtype=bool)

    # Only the lines that will be shown are formatted; the rest are counted.
    total = len(problems) + int(
        (~finite).sum() + negative.sum() + too_high.sum() + bad_interval.sum()
    )
    shown = max_lines if total <= max_lines else max_lines - 1
    every = itertools.chain(
        problems,
        lines(~finite, lambda i: f"energy_kwh is {values[i]}"),
        lines(negative, lambda i: f"{values[i]:.4g} kWh is negative"),
        lines(
            too_high,
            lambda i: (
                f"{values[i]:.4g} kWh is above {max_multiple:g} × the device's largest reading "
                f"of {device_max[i]:.4g} kWh per interval"
            ),
        ),
        lines(
            bad_interval,
            lambda i: (
                f"interval P10 {p10[i]:.4g} .. P90 {p90[i]:.4g} kWh does not hold "
                f"0 <= P10 <= {values[i]:.4g} <= P90"
            ),
        ),
    )
    problems = list(itertools.islice(every, shown))
    if total > shown:
        problems.append(f"and {total - shown} more")
    return problems


def historical_maxima(history: pd.DataFrame) -> pd.Series:
    """Each device's largest known reading per interval, by device id (as a string).

    Gaps (``is_gap``, or a missing or infinite value) are not readings; filled intervals are.
    """
    known = np.isfinite(pd.to_numeric(history["energy_kwh"], errors="coerce").to_numpy(float))
    if "is_gap" in history.columns:
        known &= ~history["is_gap"].fillna(False).to_numpy(dtype=bool)
    readings = history.loc[known]
    return readings["energy_kwh"].astype(float).groupby(readings["device_id"].astype(str)).max()

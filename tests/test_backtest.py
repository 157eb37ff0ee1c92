"""Rolling-origin backtest: origins, what each candidate may see, and the choice between them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecast_core.backtest import (
    FOREST,
    LIGHTGBM,
    NAIVE_DAY,
    NAIVE_WEEK,
    available_origins,
    backtest_frame,
    choose,
    latest_origin,
    origins,
)
from forecast_core.features import make_feature_spec, regular_grid

HOUR = pd.Timedelta(hours=1)


def spec(devices=("a",)):
    return make_feature_spec(
        resolution=HOUR,
        horizon_hours=48,
        timezone="UTC",
        holiday_country="",
        devices=list(devices),
    )


def test_origins_are_daily_at_the_next_forecasts_time_of_day():
    s = spec()
    last = pd.Timestamp("2025-03-31 05:00", tz="UTC")  # the next forecast starts at 06:00
    assert latest_origin(last, s) == pd.Timestamp("2025-03-30 06:00", tz="UTC") - pd.Timedelta(
        days=1
    )
    at = origins(last, s, 3)
    assert list(at) == [pd.Timestamp(f"2025-03-{d} 06:00", tz="UTC") for d in (27, 28, 29)]
    # The last origin's 48 h end exactly at the last reading.
    assert at[-1] + 47 * HOUR == last


def test_available_origins_leave_the_fit_days_before_the_first():
    s = spec()
    first = pd.Timestamp("2025-01-01 00:00", tz="UTC")
    last = first + pd.Timedelta(days=60) - HOUR
    # latest origin: day 58 00:00; earliest allowed: day 28 00:00 -> 31 origins
    assert available_origins(first, last, s, 28) == 31
    assert available_origins(first, first + pd.Timedelta(days=20), s, 28) == 0


def history(values, start="2025-01-01 00:00", device="a"):
    values = np.asarray(values, dtype=float)
    return pd.DataFrame(
        {
            "timestamp": pd.date_range(start, periods=len(values), freq="1h", tz="UTC"),
            "device_id": device,
            "energy_kwh": values,
        }
    )


def test_backtest_frame_naive_candidates_use_only_values_before_each_origin():
    s = spec()
    values = np.arange(24 * 20, dtype=float) + 1  # the value is its own position + 1
    grid = regular_grid(history(values), s)
    at = origins(grid["timestamp"].max(), s, 2)
    forest = {b: pd.Series(np.full(len(grid), float(b)), index=grid.index) for b in s.bucket_steps}
    frame = backtest_frame(grid, s, at, {FOREST: forest})
    assert len(frame) == 2 * 48
    position = ((frame["timestamp"] - grid["timestamp"].min()) / HOUR).astype(int).to_numpy()
    assert frame["actual"].tolist() == (position + 1).tolist()
    assert (frame[NAIVE_WEEK] == frame["actual"] - 168).all()
    # Day naive: the same hour on the last day before the origin (two days back in day two).
    lead = frame["lead_steps"].to_numpy()
    assert (
        frame[NAIVE_DAY].to_numpy() == frame["actual"].to_numpy() - 24 * ((lead + 23) // 24)
    ).all()
    for origin, rows in frame.groupby("origin"):
        assert (rows["timestamp"] >= origin).all()
        known = rows[[NAIVE_WEEK, NAIVE_DAY]].to_numpy() - 1  # positions they were read from
        assert (known < ((origin - grid["timestamp"].min()) / HOUR)).all()
    # The forest's forecast of each step comes from its bucket.
    assert frame.loc[frame["lead_steps"] <= 24, FOREST].eq(24).all()
    assert frame.loc[frame["lead_steps"] > 24, FOREST].eq(48).all()
    # A kind not fitted is there, unknown: it cannot win by being absent.
    assert frame[LIGHTGBM].isna().all()


def test_backtest_frame_scores_only_hours_every_device_and_both_naives_have():
    s = spec(devices=("a", "b"))
    values = np.ones(24 * 20)
    b_values = values.copy()
    b_values[-30] = np.nan  # a gap in one device in the last origin's horizon
    grid = regular_grid(pd.concat([history(values), history(b_values, device="b")]), s)
    at = origins(grid["timestamp"].max(), s, 1)
    forest = {b: pd.Series(np.ones(len(grid)), index=grid.index) for b in s.bucket_steps}
    frame = backtest_frame(grid, s, at, {FOREST: forest})
    assert len(frame) == 47
    assert (frame["actual"] == 2.0).all() and (frame[FOREST] == 2.0).all()


def scores(**wapes):
    return {name: {"wape": w, "n": 10} for name, w in wapes.items()}


@pytest.mark.parametrize(
    ("wapes", "chosen"),
    [
        ({NAIVE_WEEK: 20.0, NAIVE_DAY: 25.0, FOREST: 15.0}, FOREST),
        ({NAIVE_WEEK: 20.0, NAIVE_DAY: 18.0, FOREST: 19.0}, NAIVE_DAY),
        ({NAIVE_WEEK: 20.0, NAIVE_DAY: 25.0, FOREST: 21.0}, NAIVE_WEEK),
        ({NAIVE_WEEK: 20.0, NAIVE_DAY: 20.0, FOREST: 20.0}, NAIVE_WEEK),  # ties: the simpler
        ({NAIVE_WEEK: 20.0, NAIVE_DAY: 25.0, FOREST: float("nan")}, NAIVE_WEEK),
        # A narrow win (under 3 %) does not replace the simpler candidate.
        ({NAIVE_WEEK: 20.0, NAIVE_DAY: 25.0, FOREST: 19.5}, NAIVE_WEEK),
        ({NAIVE_WEEK: 20.0, NAIVE_DAY: 19.0, FOREST: 18.6}, NAIVE_DAY),
        ({NAIVE_WEEK: 20.0, NAIVE_DAY: 19.0, FOREST: 18.0}, FOREST),
        # LightGBM must beat the forest (or whatever is chosen so far) by the margin too.
        ({NAIVE_WEEK: 20.0, NAIVE_DAY: 25.0, FOREST: 15.0, LIGHTGBM: 14.8}, FOREST),
        ({NAIVE_WEEK: 20.0, NAIVE_DAY: 25.0, FOREST: 15.0, LIGHTGBM: 14.0}, LIGHTGBM),
        ({NAIVE_WEEK: 20.0, NAIVE_DAY: 25.0, FOREST: 21.0, LIGHTGBM: 19.0}, LIGHTGBM),
        ({NAIVE_WEEK: 20.0, NAIVE_DAY: 25.0, FOREST: 21.0, LIGHTGBM: 19.5}, NAIVE_WEEK),
    ],
)
def test_choose_takes_the_lowest_wape(wapes, chosen):
    assert choose(scores(**wapes)) == chosen


def test_choose_never_takes_a_candidate_scored_on_fewer_hours():
    s = scores(**{NAIVE_WEEK: 20.0, NAIVE_DAY: 25.0, FOREST: 5.0})
    s[FOREST]["n"] = 9
    assert choose(s) == NAIVE_WEEK

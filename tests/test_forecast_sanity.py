"""The checks a forecast must pass before it is published."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecast_core.sanity import forecast_problems, historical_maxima

START = pd.Timestamp("2025-11-03 00:00", tz="UTC")


def history_table(values: dict[str, list[float]], gaps: dict[str, list[int]] | None = None):
    """The preprocessed load table: hourly values per device, NaN (and is_gap) where listed."""
    rows = []
    for device, series in values.items():
        for hour, value in enumerate(series):
            gap = hour in (gaps or {}).get(device, [])
            rows.append(
                {
                    "timestamp": START - pd.Timedelta(hours=len(series) - hour),
                    "device_id": device,
                    "energy_kwh": np.nan if gap else value,
                    "is_filled": False,
                    "is_gap": gap,
                }
            )
    return pd.DataFrame(rows)


def forecast_table(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {
            "timestamp": START + pd.Timedelta(hours=hour),
            "device_id": device,
            "energy_kwh": value,
            "model_version": "v1",
        }
        for device, series in values.items()
        for hour, value in enumerate(series)
    ]
    return pd.DataFrame(rows)


HISTORY = history_table({"heat-pump": [1.0, 2.5, 2.0], "pv": [0.0, 0.3, 0.2]})


def test_a_plausible_forecast_has_no_problems():
    forecast = forecast_table({"heat-pump": [0.0, 2.4, 25.0], "pv": [0.0, 0.1, 3.0]})
    assert forecast_problems(forecast, HISTORY) == []


def test_each_problem_names_device_time_and_value():
    forecast = forecast_table({"heat-pump": [4.6e27, -0.5, np.nan], "pv": [np.inf, 0.2, 3.01]})
    assert forecast_problems(forecast, HISTORY) == [
        "device 'heat-pump' at 2025-11-03T02:00:00+00:00: energy_kwh is nan",
        "device 'pv' at 2025-11-03T00:00:00+00:00: energy_kwh is inf",
        "device 'heat-pump' at 2025-11-03T01:00:00+00:00: -0.5 kWh is negative",
        "device 'heat-pump' at 2025-11-03T00:00:00+00:00: 4.6e+27 kWh is above 10 × the "
        "device's largest reading of 2.5 kWh per interval",
        "device 'pv' at 2025-11-03T02:00:00+00:00: 3.01 kWh is above 10 × the device's largest "
        "reading of 0.3 kWh per interval",
    ]


def test_max_multiple_is_per_device_and_adjustable():
    forecast = forecast_table({"heat-pump": [5.1], "pv": [0.61]})
    assert len(forecast_problems(forecast, HISTORY, max_multiple=2.0)) == 2
    assert forecast_problems(forecast, HISTORY, max_multiple=2.5) == []


def test_gaps_are_not_readings():
    # A value in an interval flagged as a gap must not raise the device's maximum.
    history = history_table({"pv": [0.3, 0.0, 0.2]}, gaps={"pv": [1]})
    history.loc[history["is_gap"], "energy_kwh"] = 99.0
    assert historical_maxima(history).to_dict() == {"pv": 0.3}
    assert len(forecast_problems(forecast_table({"pv": [5.0]}), history)) == 1


def test_a_device_without_history_is_a_problem():
    history = history_table({"pv": [0.3], "dead": [1.0]}, gaps={"dead": [0]})
    forecast = forecast_table({"pv": [0.1], "dead": [0.0], "new": [1.0]})
    assert forecast_problems(forecast, history) == [
        "device 'dead': no known reading in the history to judge its forecast by",
        "device 'new': no known reading in the history to judge its forecast by",
    ]


def test_device_ids_compare_as_strings():
    history = history_table({"7": [1.0]})
    forecast = forecast_table({"7": [1.0]}).assign(device_id=7)
    assert forecast_problems(forecast, history) == []


def test_an_empty_forecast_is_a_problem():
    assert forecast_problems(forecast_table({}).reindex(columns=list(HISTORY)), HISTORY) == [
        "forecast is empty: no rows"
    ]
    assert forecast_problems(pd.DataFrame({"timestamp": []}), HISTORY) == [
        "forecast has no column(s) device_id, energy_kwh"
    ]


def test_the_list_is_capped_with_a_count_of_the_rest():
    forecast = forecast_table({"heat-pump": [-1.0] * 48, "pv": [np.nan] * 48})
    problems = forecast_problems(forecast, HISTORY, max_lines=5)
    assert len(problems) == 5
    assert problems[:4] == [
        f"device 'pv' at 2025-11-03T0{h}:00:00+00:00: energy_kwh is nan" for h in range(4)
    ]
    assert problems[4] == "and 92 more"
    # Exactly at the cap: no "more" line.
    assert len(forecast_problems(forecast_table({"pv": [-1.0] * 5}), HISTORY, max_lines=5)) == 5
    assert (
        "more"
        not in forecast_problems(forecast_table({"pv": [-1.0] * 5}), HISTORY, max_lines=5)[-1]
    )


def test_a_large_forecast_yields_only_the_shown_lines():
    # 500 devices × a week of quarter hours, every value absurd: only the shown lines are built.
    devices = {f"d{i}": [1.0] * 10 for i in range(500)}
    forecast = forecast_table({d: [1e9] * 672 for d in devices})
    problems = forecast_problems(forecast, history_table(devices))
    assert len(problems) == 20  # the shown lines and one count, not a line per bad value
    assert problems[-1] == f"and {500 * 672 - 19} more"


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_a_meaningless_max_multiple_is_refused(bad):
    with pytest.raises(ValueError, match="max_multiple must be a positive number"):
        forecast_problems(forecast_table({"pv": [0.1]}), HISTORY, max_multiple=bad)


def test_an_interval_that_does_not_hold_its_point_forecast_is_a_problem():
    history = history_table({"m1": [1.0, 2.0, 3.0]})
    forecast = forecast_table({"m1": [1.0, 2.0, 3.0, 2.0]}).assign(
        p10_kwh=[0.5, 2.5, -0.1, np.nan], p90_kwh=[1.5, 3.0, 4.0, 3.0]
    )
    problems = forecast_problems(forecast, history)
    assert problems == [
        f"device 'm1' at {(START + pd.Timedelta(hours=h)).isoformat()}: interval P10 {p10} .. "
        f"P90 {p90} kWh does not hold 0 <= P10 <= {value} <= P90"
        for h, p10, p90, value in [
            (1, "2.5", "3", "2"),
            (2, "-0.1", "4", "3"),
            (3, "nan", "3", "2"),
        ]
    ]
    fine = forecast.assign(p10_kwh=[0.5, 1.0, 3.0, 0.0], p90_kwh=[1.5, 3.0, 3.0, 2.5])
    assert forecast_problems(fine, history) == []

"""Feature spec, grid and feature matrix: lags never look into the forecast horizon."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from forecast_core.features import (
    FEATURE_SPEC_VERSION,
    FeatureSpec,
    build_features,
    calendar_features,
    make_feature_spec,
    normalization_scales,
    regular_grid,
)


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def small_spec(**overrides) -> FeatureSpec:
    values = {
        "resolution_minutes": 60,
        "horizon_steps": 2,
        "lag_steps": (2, 3, 5),
        "rolling_steps": (2, 4),
        "timezone": "Europe/Berlin",
        "holiday_country": "DE",
        "device_codes": {"a": 0, "b": 1},
    }
    values.update(overrides)
    return FeatureSpec(**values)


def hourly(device: str, start: str, values) -> pd.DataFrame:
    values = np.asarray(values, dtype=float)
    return pd.DataFrame(
        {
            "timestamp": pd.date_range(start, periods=len(values), freq="1h", tz="UTC"),
            "device_id": device,
            "energy_kwh": values,
        }
    )


N = 12
SCALES = {"a": 2.0, "b": 10.0}


def two_devices(a_values=None, b_values=None) -> pd.DataFrame:
    a_values = np.arange(1, N + 1, dtype=float) if a_values is None else a_values
    b_values = 100 + np.arange(N, dtype=float) * 10 if b_values is None else b_values
    return pd.concat(
        [hourly("a", "2025-01-06 00:00", a_values), hourly("b", "2025-01-06 00:00", b_values)],
        ignore_index=True,
    )


# --- make_feature_spec -------------------------------------------------------------------


def test_make_feature_spec_hourly():
    spec = make_feature_spec(
        resolution=pd.Timedelta(hours=1),
        horizon_hours=24,
        timezone="Europe/Berlin",
        holiday_country="DE",
        devices=["z", "a", "m"],
    )
    assert spec.resolution_minutes == 60
    assert spec.resolution == pd.Timedelta(hours=1)
    assert spec.horizon_steps == 24
    assert spec.lag_steps == (24, 48, 72, 96, 120, 144, 168, 336)
    assert spec.rolling_steps == (24, 168)
    assert spec.device_codes == {"a": 0, "m": 1, "z": 2}
    assert spec.min_history_steps == 336
    assert spec.version == FEATURE_SPEC_VERSION


def test_make_feature_spec_steps_scale_with_30_minute_resolution():
    spec = make_feature_spec(
        resolution=pd.Timedelta(minutes=30),
        horizon_hours=24,
        timezone="UTC",
        holiday_country="",
        devices=["a"],
    )
    assert spec.resolution_minutes == 30
    assert spec.horizon_steps == 48
    assert spec.lag_steps == (48, 96, 144, 192, 240, 288, 336, 672)
    assert spec.rolling_steps == (48, 336)


@pytest.mark.parametrize(
    ("horizon_hours", "expected_lags"),
    [
        (36, (36, 48, 72, 96, 120, 144, 168, 336)),
        (72, (72, 96, 120, 144, 168, 336)),
        (400, (400,)),
    ],
)
def test_make_feature_spec_lags_are_never_shorter_than_the_horizon(horizon_hours, expected_lags):
    spec = make_feature_spec(
        resolution=pd.Timedelta(hours=1),
        horizon_hours=horizon_hours,
        timezone="UTC",
        holiday_country="",
        devices=["a"],
    )
    assert spec.horizon_steps == horizon_hours
    assert spec.lag_steps == expected_lags
    assert min(spec.lag_steps) >= spec.horizon_steps


def test_make_feature_spec_rejects_horizon_shorter_than_a_step():
    with pytest.raises(ValueError, match="shorter than one step"):
        make_feature_spec(
            resolution=pd.Timedelta(hours=2),
            horizon_hours=0,
            timezone="UTC",
            holiday_country="",
            devices=["a"],
        )


def test_feature_names():
    assert small_spec().feature_names() == [
        "lag_2",
        "lag_3",
        "lag_5",
        "rolling_mean_2",
        "rolling_mean_4",
        "time_of_day",
        "day_of_week",
        "is_weekend",
        "is_holiday",
        "device_code",
    ]


# --- FeatureSpec JSON --------------------------------------------------------------------


def test_feature_spec_json_round_trip():
    spec = make_feature_spec(
        resolution=pd.Timedelta(minutes=15),
        horizon_hours=6,
        timezone="Europe/Berlin",
        holiday_country="DE",
        devices=["b", "a"],
    )
    text = spec.to_json()
    raw = json.loads(text)
    assert raw["version"] == FEATURE_SPEC_VERSION
    assert raw["lag_steps"][0] == 24
    assert raw["device_codes"] == {"a": 0, "b": 1}
    again = FeatureSpec.from_json(text)
    assert again == spec
    assert isinstance(again.lag_steps, tuple) and isinstance(again.rolling_steps, tuple)


@pytest.mark.parametrize("version", [FEATURE_SPEC_VERSION + 1, None])
def test_feature_spec_from_json_rejects_other_versions(version):
    raw = json.loads(small_spec().to_json())
    if version is None:
        del raw["version"]
    else:
        raw["version"] = version
    with pytest.raises(
        ValueError, match=f"feature spec version {version} is not {FEATURE_SPEC_VERSION}"
    ):
        FeatureSpec.from_json(json.dumps(raw))


# --- normalization and grid --------------------------------------------------------------


def test_normalization_scales():
    frame = pd.concat(
        [
            hourly("a", "2025-01-01", [1.0, 3.0, np.nan]),
            hourly("b", "2025-01-01", [0.0, 0.0]),
            hourly("c", "2025-01-01", [np.nan]),
        ]
    )
    assert normalization_scales(frame) == {"a": 2.0, "b": 1.0, "c": 1.0}


def test_regular_grid_fills_missing_times_and_adds_future_rows():
    history = pd.concat(
        [
            hourly("b", "2025-01-01 00:00", [1.0, 2.0, 3.0]).drop(index=[1]),  # 01:00 missing
            hourly("a", "2025-01-01 01:00", [5.0, 6.0]),
        ],
        ignore_index=True,
    )
    grid = regular_grid(history, small_spec(), until=utc("2025-01-01 04:00"))
    assert list(grid.columns) == ["timestamp", "device_id", "energy_kwh"]
    got = list(zip(grid["device_id"], grid["timestamp"], grid["energy_kwh"], strict=True))
    expected = [
        ("a", utc("2025-01-01 01:00"), 5.0),
        ("a", utc("2025-01-01 02:00"), 6.0),
        ("a", utc("2025-01-01 03:00"), None),
        ("a", utc("2025-01-01 04:00"), None),
        ("b", utc("2025-01-01 00:00"), 1.0),
        ("b", utc("2025-01-01 01:00"), None),
        ("b", utc("2025-01-01 02:00"), 3.0),
        ("b", utc("2025-01-01 03:00"), None),
        ("b", utc("2025-01-01 04:00"), None),
    ]
    assert len(got) == len(expected)
    for (d, t, e), (xd, xt, xe) in zip(got, expected, strict=True):
        assert (d, t) == (xd, xt)
        assert math.isnan(e) if xe is None else e == xe


def test_regular_grid_without_until_ends_at_last_reading_and_keeps_last_duplicate():
    history = pd.DataFrame(
        {
            "timestamp": [
                utc("2025-01-01 00:00"),
                utc("2025-01-01 01:00"),
                utc("2025-01-01 01:00"),
            ],
            "device_id": ["a", "a", "a"],
            "energy_kwh": [1.0, 2.0, 9.0],
        }
    )
    grid = regular_grid(history, small_spec())
    assert grid["timestamp"].tolist() == [utc("2025-01-01 00:00"), utc("2025-01-01 01:00")]
    assert grid["energy_kwh"].tolist() == [1.0, 9.0]


# --- build_features ----------------------------------------------------------------------


def expected_level(norm: np.ndarray, t: int, h: int, window: int) -> float:
    """Mean of the normalized series over the window ending h steps before t (or 1.0)."""
    available = norm[max(0, t - h - window + 1) : max(0, t - h + 1)]
    available = available[~np.isnan(available)]
    if len(available) < max(1, window // 2):
        return 1.0
    return float(available.mean())


NORMS = {"a": np.arange(1, N + 1) / 2.0, "b": (100 + np.arange(N) * 10) / 10.0}


def test_build_features_target_and_lags_are_relative_to_the_recent_level():
    spec = small_spec()
    grid = regular_grid(two_devices(), spec)
    design = build_features(grid, spec, SCALES)
    X, y = design.features, design.target
    assert list(X.columns) == spec.feature_names()
    assert y.name == "target"
    h, window = spec.horizon_steps, max(spec.rolling_steps)
    for device, norm in NORMS.items():
        mask = (grid["device_id"] == device).to_numpy()
        levels = np.array([expected_level(norm, t, h, window) for t in range(N)])
        assert "level" not in X.columns  # it would let the forest learn a past trend
        assert y[mask].to_numpy() == pytest.approx(norm / levels)
        assert design.kwh_per_unit[mask] == pytest.approx(SCALES[device] * levels)
        # target * kwh_per_unit gives back the energy itself.
        assert (y[mask].to_numpy() * design.kwh_per_unit[mask]) == pytest.approx(
            grid.loc[mask, "energy_kwh"].to_numpy()
        )
        for lag in spec.lag_steps:
            values = X.loc[mask, f"lag_{lag}"].to_numpy()
            # The first `lag` rows of each device have no history: never the other device's.
            assert np.isnan(values[:lag]).all()
            assert values[lag:] == pytest.approx(norm[:-lag] / levels[lag:])
    assert X.loc[grid["device_id"] == "a", "device_code"].tolist() == [0] * N
    assert X.loc[grid["device_id"] == "b", "device_code"].tolist() == [1] * N


def test_build_features_rolling_means_end_at_t_minus_horizon():
    spec = small_spec()
    grid = regular_grid(two_devices(), spec)
    X = build_features(grid, spec, SCALES).features
    h, longest = spec.horizon_steps, max(spec.rolling_steps)
    for device, norm in NORMS.items():
        rows = X[grid["device_id"] == device]
        for window in spec.rolling_steps:
            got = rows[f"rolling_mean_{window}"].to_numpy()
            for t in range(N):
                available = norm[max(0, t - h - window + 1) : max(0, t - h + 1)]
                level = expected_level(norm, t, h, longest)
                if len(available) < max(1, window // 2):
                    assert math.isnan(got[t]), (device, window, t)
                else:
                    assert got[t] == pytest.approx(available.mean() / level), (device, window, t)
    # By hand: device a, row 6: window 4 covers rows 1..4 (1, 1.5, 2, 2.5), which is also the
    # level, so the relative rolling mean is exactly 1.
    assert X.loc[grid.index[6], "rolling_mean_4"] == pytest.approx(1.0)
    design = build_features(grid, spec, SCALES)
    assert design.kwh_per_unit[6] == pytest.approx(SCALES["a"] * 1.75)


@pytest.mark.parametrize("cut", [3, 5, 8])
def test_build_features_never_use_values_inside_the_horizon(cut):
    """Features at row t only use values up to t - horizon: perturbing later ones changes none."""
    spec = small_spec()
    h = spec.horizon_steps
    base = regular_grid(two_devices(), spec)
    X_base, y_base, _ = build_features(base, spec, SCALES)
    rng = np.random.default_rng(cut)
    perturbed = base.copy()
    position = perturbed.groupby("device_id").cumcount()
    later = position > cut
    perturbed.loc[later, "energy_kwh"] = rng.uniform(1000, 2000, int(later.sum()))
    perturbed.loc[later & (position % 3 == 0), "energy_kwh"] = np.nan
    X_new, y_new, _ = build_features(perturbed, spec, SCALES)
    # Rows t with t - horizon <= cut saw only unchanged values.
    safe = (position <= cut + h).to_numpy()
    pd.testing.assert_frame_equal(X_new[safe], X_base[safe])
    # The perturbation did reach the target and the features just after the safe rows.
    assert not np.allclose(y_new[later], y_base[later])
    first_unsafe = (position == cut + h + 1).to_numpy()
    assert not X_new[first_unsafe].equals(X_base[first_unsafe])


def test_build_features_other_device_values_do_not_leak():
    spec = small_spec()
    grid = regular_grid(two_devices(), spec)
    X = build_features(grid, spec, SCALES).features
    other = regular_grid(two_devices(b_values=np.full(N, 7777.0)), spec)
    X_other = build_features(other, spec, SCALES).features
    a = (grid["device_id"] == "a").to_numpy()
    pd.testing.assert_frame_equal(X_other[a], X[a])
    assert not X_other[~a].equals(X[~a])


def test_build_features_lag_in_a_gap_is_nan():
    spec = small_spec()
    values = np.arange(1, N + 1, dtype=float)
    values[4] = np.nan
    grid = regular_grid(hourly("a", "2025-01-06", values), spec)
    X, y, kwh_per_unit = build_features(grid, spec, {"a": 1.0})
    assert math.isnan(y[4])
    assert math.isnan(X.loc[6, "lag_2"]) and math.isnan(X.loc[7, "lag_3"])
    # Row 7: level = mean of rows 2..5 without the gap = (3 + 4 + 6) / 3.
    level = (3 + 4 + 6) / 3
    assert kwh_per_unit[7] == pytest.approx(level)
    assert X.loc[7, "lag_2"] == pytest.approx(6.0 / level)
    # Rolling means skip the missing value: row 7 with window 2 covers rows 4..5.
    assert X.loc[7, "rolling_mean_2"] == pytest.approx(6.0 / level)


def test_build_features_unknown_device_raises():
    spec = small_spec(device_codes={"a": 0})
    grid = regular_grid(two_devices(), spec)
    with pytest.raises(ValueError, match=r"device\(s\) \['b'\] were not seen in training"):
        build_features(grid, spec, SCALES)


# --- calendar ----------------------------------------------------------------------------


def test_calendar_features_use_local_time():
    spec = small_spec()
    stamps = pd.Series(
        [
            utc("2025-01-06 10:30"),  # Monday, CET: 11:30
            utc("2025-07-05 10:00"),  # Saturday, CEST: 12:00
            utc("2025-03-29 23:15"),  # Saturday UTC, Sunday 00:15 local
        ]
    )
    cal = calendar_features(stamps, spec)
    assert cal["time_of_day"].tolist() == [11.5, 12.0, 0.25]
    assert cal["day_of_week"].tolist() == [0, 5, 6]
    assert cal["is_weekend"].tolist() == [0, 1, 1]
    assert cal["is_holiday"].tolist() == [0, 0, 0]
    # No season features: an unseen day of the year would be mapped onto the last trained days.
    assert not {"month", "day_of_year_sin", "day_of_year_cos"} & set(cal.columns)


def test_calendar_holidays_follow_the_local_date():
    stamps = pd.Series(
        [
            utc("2025-12-23 12:00"),  # ordinary Tuesday
            utc("2025-12-24 22:30"),  # 23:30 on Christmas Eve in Berlin: not a public holiday
            utc("2025-12-24 23:30"),  # 00:30 on 25 Dec in Berlin
            utc("2025-12-25 12:00"),
            utc("2025-12-26 23:30"),  # 00:30 on 27 Dec in Berlin
        ]
    )
    assert calendar_features(stamps, small_spec())["is_holiday"].tolist() == [0, 0, 1, 1, 0]
    assert calendar_features(stamps, small_spec(timezone="UTC"))["is_holiday"].tolist() == [
        0,
        0,
        0,
        1,
        1,
    ]
    assert (
        calendar_features(stamps, small_spec(holiday_country=""))["is_holiday"].tolist() == [0] * 5
    )


def test_calendar_unknown_holiday_country_raises():
    with pytest.raises(ValueError, match="unknown holiday country code 'XX'"):
        calendar_features(pd.Series([utc("2025-12-25")]), small_spec(holiday_country="XX"))


def test_build_features_holiday_flag_on_christmas():
    spec = small_spec()
    grid = regular_grid(hourly("a", "2025-12-24 20:00", np.ones(6)), spec)
    X = build_features(grid, spec, {"a": 1.0}).features
    # 20:00..01:00 UTC = 21:00..02:00 local; 25 Dec begins at 23:00 UTC.
    assert X["is_holiday"].tolist() == [0, 0, 0, 1, 1, 1]
    assert X["time_of_day"].tolist() == [21.0, 22.0, 23.0, 0.0, 1.0, 2.0]

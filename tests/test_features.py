"""Feature spec, grid and feature matrix: a horizon bucket's features never use a value younger
than the bucket."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from forecast_core.features import (
    FEATURE_SPEC_VERSION,
    FeatureSpec,
    bucket_for_lead,
    build_features,
    calendar_features,
    make_feature_spec,
    normalization_scales,
    regular_grid,
)


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def small_spec(**overrides) -> FeatureSpec:
    """Six-hour steps: a day is 4 steps, a week 28; buckets of one and two days."""
    values = {
        "resolution_minutes": 360,
        "horizon_steps": 8,
        "bucket_steps": (4, 8),
        "median_weeks": 2,
        "timezone": "Europe/Berlin",
        "holiday_country": "DE",
        "device_codes": {"a": 0, "b": 1},
    }
    values.update(overrides)
    return FeatureSpec(**values)


def hourly(device: str, start: str, values, freq: str = "1h") -> pd.DataFrame:
    values = np.asarray(values, dtype=float)
    return pd.DataFrame(
        {
            "timestamp": pd.date_range(start, periods=len(values), freq=freq, tz="UTC"),
            "device_id": device,
            "energy_kwh": values,
        }
    )


N = 90  # six-hour steps: 22.5 days
SCALES = {"a": 2.0, "b": 10.0}


def two_devices(a_values=None, b_values=None) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    a_values = 1 + rng.uniform(0, 1, N) + np.arange(N) / N if a_values is None else a_values
    b_values = 100 + rng.uniform(0, 50, N) if b_values is None else b_values
    return pd.concat(
        [
            hourly("a", "2025-01-06 00:00", a_values, "6h"),
            hourly("b", "2025-01-06 00:00", b_values, "6h"),
        ],
        ignore_index=True,
    )


# --- make_feature_spec -------------------------------------------------------------------


def test_make_feature_spec_hourly_48h_has_a_bucket_per_day():
    spec = make_feature_spec(
        resolution=pd.Timedelta(hours=1),
        horizon_hours=48,
        timezone="Europe/Berlin",
        holiday_country="DE",
        devices=["z", "a", "m"],
    )
    assert spec.resolution_minutes == 60
    assert spec.horizon_steps == 48
    assert spec.bucket_steps == (24, 48)
    assert spec.median_weeks == 4
    # The first day sees yesterday; the second the day before; no fixed two-week lag.
    assert spec.day_lags(24) == (24, 48, 72, 96, 120, 144, 168)
    assert spec.day_lags(48) == (48, 72, 96, 120, 144, 168)
    assert spec.device_codes == {"a": 0, "m": 1, "z": 2}
    assert spec.version == FEATURE_SPEC_VERSION


def test_make_feature_spec_steps_scale_with_30_minute_resolution():
    spec = make_feature_spec(
        resolution=pd.Timedelta(minutes=30),
        horizon_hours=24,
        timezone="UTC",
        holiday_country="",
        devices=["a"],
    )
    assert spec.horizon_steps == 48
    assert spec.bucket_steps == (48,)
    assert spec.day_lags(48) == tuple(48 * d for d in range(1, 8))


@pytest.mark.parametrize(
    ("horizon_hours", "buckets"), [(6, (6,)), (36, (24, 36)), (72, (24, 48, 72))]
)
def test_make_feature_spec_buckets_are_whole_days_up_to_the_horizon(horizon_hours, buckets):
    spec = make_feature_spec(
        resolution=pd.Timedelta(hours=1),
        horizon_hours=horizon_hours,
        timezone="UTC",
        holiday_country="",
        devices=["a"],
    )
    assert spec.bucket_steps == buckets
    for b in buckets:
        assert min(spec.day_lags(b)) >= b


@pytest.mark.parametrize(("hours", "error"), [(0, "shorter than one step"), (200, "a week")])
def test_make_feature_spec_rejects_a_horizon_out_of_range(hours, error):
    with pytest.raises(ValueError, match=error):
        make_feature_spec(
            resolution=pd.Timedelta(hours=2) if hours == 0 else pd.Timedelta(hours=1),
            horizon_hours=hours,
            timezone="UTC",
            holiday_country="",
            devices=["a"],
        )


def test_bucket_for_lead():
    spec = small_spec()
    assert bucket_for_lead(spec, np.arange(1, 9)).tolist() == [4, 4, 4, 4, 8, 8, 8, 8]
    with pytest.raises(ValueError, match=r"within 1\.\.8"):
        bucket_for_lead(spec, np.array([9]))
    with pytest.raises(ValueError, match=r"within 1\.\.8"):
        bucket_for_lead(spec, np.array([0]))


def test_feature_names():
    calendar = [
        "time_of_day",
        "day_of_week",
        "is_weekend",
        "is_holiday",
        "is_bridge_day",
        "is_year_end",
        "week_ago_special",
        "day_lag_special",
        "device_code",
    ]
    spec = small_spec()
    assert spec.feature_names(4) == [
        *[f"lag_{s}" for s in (4, 8, 12, 16, 20, 24, 28)],
        "median_same_hour_2w",
        "mean_last_day",
        *calendar,
    ]
    assert spec.feature_names(8)[:7] == [f"lag_{s}" for s in (8, 12, 16, 20, 24, 28)] + [
        "median_same_hour_2w"
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
    assert raw["bucket_steps"] == [24]
    assert raw["device_codes"] == {"a": 0, "b": 1}
    again = FeatureSpec.from_json(text)
    assert again == spec
    assert isinstance(again.bucket_steps, tuple)


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
    grid = regular_grid(history, small_spec(resolution_minutes=60), until=utc("2025-01-01 04:00"))
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
    grid = regular_grid(history, small_spec(resolution_minutes=60))
    assert grid["timestamp"].tolist() == [utc("2025-01-01 00:00"), utc("2025-01-01 01:00")]
    assert grid["energy_kwh"].tolist() == [1.0, 9.0]


# --- build_features ----------------------------------------------------------------------


def expected_level(norm: np.ndarray, t: int, bucket: int, window: int) -> float:
    """Mean of the normalized series over the window ending ``bucket`` steps before t (or 1.0)."""
    available = norm[max(0, t - bucket - window + 1) : max(0, t - bucket + 1)]
    available = available[~np.isnan(available)]
    if len(available) < max(1, window // 2):
        return 1.0
    return float(available.mean())


def norms(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {
        d: g["energy_kwh"].to_numpy() / SCALES[d] for d, g in frame.groupby("device_id", sort=True)
    }


@pytest.mark.parametrize("bucket", [4, 8])
def test_build_features_target_and_lags_are_relative_to_the_recent_level(bucket):
    spec = small_spec()
    frame = two_devices()
    grid = regular_grid(frame, spec)
    design = build_features(grid, spec, SCALES, bucket)
    X, y = design.features, design.target
    assert list(X.columns) == spec.feature_names(bucket)
    assert y.name == "target"
    for device, norm in norms(frame).items():
        mask = (grid["device_id"] == device).to_numpy()
        levels = np.array([expected_level(norm, t, bucket, spec.week_steps) for t in range(N)])
        assert "level" not in X.columns  # it would let the forest learn a past trend
        assert y[mask].to_numpy() == pytest.approx(norm / levels)
        assert design.kwh_per_unit[mask] == pytest.approx(SCALES[device] * levels)
        assert (y[mask].to_numpy() * design.kwh_per_unit[mask]) == pytest.approx(
            grid.loc[mask, "energy_kwh"].to_numpy()
        )
        for lag in spec.day_lags(bucket):
            values = X.loc[mask, f"lag_{lag}"].to_numpy()
            # The first `lag` rows of each device have no history: never the other device's.
            assert np.isnan(values[:lag]).all()
            assert values[lag:] == pytest.approx(norm[:-lag] / levels[lag:])
        day = spec.day_steps
        last_day = X.loc[mask, "mean_last_day"].to_numpy()
        t = 40
        assert last_day[t] == pytest.approx(
            norm[t - bucket - day + 1 : t - bucket + 1].mean() / levels[t]
        )
    assert X.loc[grid["device_id"] == "a", "device_code"].tolist() == [0] * N
    assert X.loc[grid["device_id"] == "b", "device_code"].tolist() == [1] * N


def test_build_features_median_of_the_same_hour_shrugs_off_one_unusual_week():
    spec = small_spec(median_weeks=4, device_codes={"a": 0})
    week = spec.week_steps
    values = np.ones(5 * week)
    t = 4 * week + 2
    values[t - 2 * week] = 50.0  # one unusual day two weeks before the target
    values[t - 3 * week] = 3.0
    grid = regular_grid(hourly("a", "2025-01-06", values, "6h"), spec)
    X = build_features(grid, spec, {"a": 1.0}, 4).features
    level = expected_level(values, t, 4, week)
    # Weeks 1-4 before t: 1, 50, 3, 1: the median is 2, not pulled towards 50.
    assert X.loc[t, "median_same_hour_4w"] == pytest.approx(2.0 / level)
    # With only one week of history, the median is that week's value.
    assert X.loc[week + 1, "median_same_hour_4w"] == pytest.approx(
        1.0 / expected_level(values, week + 1, 4, week)
    )
    assert math.isnan(X.loc[week - 1, "median_same_hour_4w"])


@pytest.mark.parametrize("bucket", [4, 8])
@pytest.mark.parametrize("cut", [30, 45, 60])
def test_build_features_never_use_values_younger_than_the_bucket(bucket, cut):
    """Features at row t use only values up to t - bucket: perturbing later ones changes none."""
    spec = small_spec()
    base = regular_grid(two_devices(), spec)
    X_base, y_base, _ = build_features(base, spec, SCALES, bucket)
    rng = np.random.default_rng(cut)
    perturbed = base.copy()
    position = perturbed.groupby("device_id").cumcount()
    later = position > cut
    perturbed.loc[later, "energy_kwh"] = rng.uniform(1000, 2000, int(later.sum()))
    perturbed.loc[later & (position % 3 == 0), "energy_kwh"] = np.nan
    X_new, y_new, _ = build_features(perturbed, spec, SCALES, bucket)
    safe = (position <= cut + bucket).to_numpy()
    pd.testing.assert_frame_equal(X_new[safe], X_base[safe])
    assert not np.allclose(y_new[later], y_base[later])
    first_unsafe = (position == cut + bucket + 1).to_numpy()
    assert not X_new[first_unsafe].equals(X_base[first_unsafe])


def test_build_features_refuses_a_bucket_the_spec_does_not_have():
    spec = small_spec()
    with pytest.raises(ValueError, match="not one of the spec's buckets"):
        build_features(regular_grid(two_devices(), spec), spec, SCALES, 5)


def test_build_features_other_device_values_do_not_leak():
    spec = small_spec()
    grid = regular_grid(two_devices(), spec)
    X = build_features(grid, spec, SCALES, 4).features
    other = regular_grid(two_devices(b_values=np.full(N, 7777.0)), spec)
    X_other = build_features(other, spec, SCALES, 4).features
    a = (grid["device_id"] == "a").to_numpy()
    pd.testing.assert_frame_equal(X_other[a], X[a])
    assert not X_other[~a].equals(X[~a])


def test_build_features_lag_in_a_gap_is_nan():
    spec = small_spec(device_codes={"a": 0})
    values = np.arange(1, N + 1, dtype=float)
    values[40] = np.nan
    grid = regular_grid(hourly("a", "2025-01-06", values, "6h"), spec)
    X, y, kwh_per_unit = build_features(grid, spec, {"a": 1.0}, 4)
    assert math.isnan(y[40])
    assert math.isnan(X.loc[44, "lag_4"]) and math.isnan(X.loc[48, "lag_8"])
    # Row 50: level = mean of rows 19..46 without the gap at 40.
    window = np.delete(np.arange(19, 47) + 1.0, 40 - 19)
    assert kwh_per_unit[50] == pytest.approx(window.mean())


def test_build_features_unknown_device_raises():
    spec = small_spec(device_codes={"a": 0})
    grid = regular_grid(two_devices(), spec)
    with pytest.raises(ValueError, match=r"device\(s\) \['b'\] were not seen in training"):
        build_features(grid, spec, SCALES, 4)


# --- calendar ----------------------------------------------------------------------------


def test_calendar_features_use_local_time():
    spec = small_spec(resolution_minutes=60)
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
    spec = small_spec(resolution_minutes=60, horizon_steps=24, bucket_steps=(24,))
    grid = regular_grid(hourly("a", "2025-12-24 20:00", np.ones(6)), spec)
    X = build_features(grid, spec, {"a": 1.0}, 24).features
    # 20:00..01:00 UTC = 21:00..02:00 local; 25 Dec begins at 23:00 UTC.
    assert X["is_holiday"].tolist() == [0, 0, 0, 1, 1, 1]
    assert X["time_of_day"].tolist() == [21.0, 22.0, 23.0, 0.0, 1.0, 2.0]


def test_calendar_bridge_days_and_year_end_in_local_dates():
    spec = small_spec(resolution_minutes=60, horizon_steps=24, bucket_steps=(24,))
    days = {
        "2025-05-30": (0, 1, 0),  # Friday after Ascension (Thursday 29 May): bridge day
        "2025-05-29": (1, 0, 0),  # Ascension itself
        "2023-10-02": (0, 1, 0),  # Monday before German Unity Day on a Tuesday
        "2025-10-02": (0, 0, 0),  # Thursday before a Friday holiday: a normal working day
        "2025-12-23": (0, 0, 0),
        "2025-12-29": (0, 0, 1),  # between Christmas and New Year
        "2026-01-01": (1, 0, 1),
        "2026-01-02": (0, 1, 0),  # Friday after New Year's Day: bridge, no longer year-end
    }
    stamps = pd.Series([pd.Timestamp(f"{d} 12:00", tz="Europe/Berlin") for d in days])
    cal = calendar_features(stamps, spec)
    got = list(zip(cal["is_holiday"], cal["is_bridge_day"], cal["is_year_end"], strict=True))
    assert got == list(days.values())


def test_calendar_says_whether_the_lagged_days_were_special():
    spec = small_spec(resolution_minutes=60, horizon_steps=24, bucket_steps=(24,))
    stamps = pd.Series(
        [
            pd.Timestamp("2025-06-06 12:00", tz="Europe/Berlin"),  # a week after a bridge day
            pd.Timestamp("2025-05-30 12:00", tz="Europe/Berlin"),  # the day after Ascension
            pd.Timestamp("2025-06-12 12:00", tz="Europe/Berlin"),  # an ordinary Thursday
        ]
    )
    cal = calendar_features(stamps, spec, day_lag=24)
    assert cal["week_ago_special"].tolist() == [1, 0, 0]
    assert cal["day_lag_special"].tolist() == [0, 1, 0]

"""De-duplication and resampling of canonical readings onto a regular, gap-flagged grid."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from forecast_core.cleaning import (
    OUTPUT_COLUMNS,
    CleaningError,
    comparable_kwh,
    deduplicate,
    regularize,
)
from forecast_core.vendors import parse_meter_file


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def readings(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime([r[0] for r in rows], utc=True),
            "device_id": [r[1] for r in rows],
            "energy_kwh": [float(r[2]) for r in rows],
        }
    )


def series(device: str, start: str, values, freq: str = "15min") -> pd.DataFrame:
    values = np.asarray(values, dtype=float)
    return pd.DataFrame(
        {
            "timestamp": pd.date_range(start, periods=len(values), freq=freq, tz="UTC"),
            "device_id": device,
            "energy_kwh": values,
        }
    )


# --- deduplicate -------------------------------------------------------------------------


def test_exact_duplicates_are_dropped_and_counted():
    frame = readings(
        [
            ("2025-01-01 00:00", "a", 1.0),
            ("2025-01-01 00:15", "a", 2.0),
            ("2025-01-01 00:00", "a", 1.0),
            ("2025-01-01 00:00", "b", 1.0),  # same time, other device: not a duplicate
            ("2025-01-01 00:00", "a", 1.0),
        ]
    )
    out, report = deduplicate(frame)
    assert report.exact_duplicates == 2
    assert report.conflicts == 0
    assert report.conflict_examples == []
    assert sorted(zip(out["device_id"], out["timestamp"], out["energy_kwh"], strict=True)) == [
        ("a", utc("2025-01-01 00:00"), 1.0),
        ("a", utc("2025-01-01 00:15"), 2.0),
        ("b", utc("2025-01-01 00:00"), 1.0),
    ]


def test_conflicting_readings_last_wins_and_are_reported():
    frame = readings(
        [
            ("2025-01-01 00:15", "a", 1.0),  # older file
            ("2025-01-01 00:00", "a", 5.0),
            ("2025-01-01 00:15", "a", 3.0),  # newer file: wins
            ("2025-01-01 00:00", "b", 7.0),
            ("2025-01-01 00:00", "b", 7.0),  # exact duplicate, not a conflict
            ("2025-01-01 01:00", "c", 0.1234567),
            ("2025-01-01 01:00", "c", 0.2),
            ("2025-01-01 01:00", "c", 0.3),
        ]
    )
    out, report = deduplicate(frame)
    assert report.exact_duplicates == 1
    assert report.conflicts == 2
    assert report.conflict_examples == [
        {
            "device_id": "a",
            "timestamp": "2025-01-01T00:15:00+00:00",
            "values_kwh": [1.0, 3.0],
            "kept_kwh": 3.0,
        },
        {
            "device_id": "c",
            "timestamp": "2025-01-01T01:00:00+00:00",
            "values_kwh": [0.123457, 0.2, 0.3],
            "kept_kwh": 0.3,
        },
    ]
    kept = {
        (d, t): e
        for d, t, e in zip(out["device_id"], out["timestamp"], out["energy_kwh"], strict=True)
    }
    assert kept == {
        ("a", utc("2025-01-01 00:15")): 3.0,
        ("a", utc("2025-01-01 00:00")): 5.0,
        ("b", utc("2025-01-01 00:00")): 7.0,
        ("c", utc("2025-01-01 01:00")): 0.3,
    }


def test_repeated_value_after_a_conflict_still_wins():
    # File 1 says 1, file 2 says 2, file 3 repeats 1: the latest file's value is kept.
    frame = readings(
        [
            ("2025-01-01 00:00", "a", 1.0),
            ("2025-01-01 00:00", "a", 2.0),
            ("2025-01-01 00:00", "a", 1.0),
        ]
    )
    out, report = deduplicate(frame)
    assert out["energy_kwh"].tolist() == [1.0]
    assert report.exact_duplicates == 1
    assert report.conflicts == 1


def test_conflict_examples_are_capped_but_all_conflicts_counted():
    rows = []
    for minute in range(0, 60, 15):
        rows += [
            (f"2025-01-01 00:{minute:02d}", "a", 1.0),
            (f"2025-01-01 00:{minute:02d}", "a", 2.0),
        ]
    out, report = deduplicate(readings(rows), max_examples=2)
    assert report.conflicts == 4
    assert [e["timestamp"] for e in report.conflict_examples] == [
        "2025-01-01T00:00:00+00:00",
        "2025-01-01T00:15:00+00:00",
    ]
    assert out["energy_kwh"].tolist() == [2.0] * 4


# --- regularize --------------------------------------------------------------------------


def test_quarter_hours_sum_to_hours_and_partial_edge_buckets_are_trimmed():
    # 00:30 .. 03:15: the 00:00 bucket lacks 00:00/00:15 and the 03:00 bucket lacks 03:30/03:45.
    frame = series("a", "2025-01-01 00:30", np.arange(1, 13))
    out, report = regularize(frame, "1h")
    assert list(out.columns) == list(OUTPUT_COLUMNS)
    assert list(out["timestamp"]) == [utc("2025-01-01 01:00"), utc("2025-01-01 02:00")]
    assert out["energy_kwh"].tolist() == [3 + 4 + 5 + 6, 7 + 8 + 9 + 10]
    assert out["is_filled"].tolist() == [False, False]
    assert out["is_gap"].tolist() == [False, False]
    assert report.native_interval_minutes == {"a": 15.0}
    assert report.filled_readings == 0
    assert report.gap_intervals == 0
    assert report.long_gaps == []
    assert str(out["timestamp"].dtype) == "datetime64[ns, UTC]"


def test_short_gap_is_interpolated_and_flagged():
    frame = series(
        "a", "2025-01-01 00:00", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2]
    )
    frame = frame.drop(index=[5])  # 01:15 missing
    out, report = regularize(frame, "1h", max_fill_gap="30min")
    assert out["timestamp"].tolist() == [
        utc("2025-01-01 00:00"),
        utc("2025-01-01 01:00"),
        utc("2025-01-01 02:00"),
    ]
    assert out["energy_kwh"].tolist() == pytest.approx([1.0, 0.5 + 0.6 + 0.7 + 0.8, 4.2])
    assert out["is_filled"].tolist() == [False, True, False]
    assert out["is_gap"].tolist() == [False, False, False]
    assert report.filled_readings == 1
    assert report.long_gaps == []


def test_long_gap_is_left_empty_and_reported():
    frame = series("b", "2025-01-01 00:00", np.ones(24))  # 00:00 .. 05:45
    # 01:15 .. 03:00 missing: 8 readings = 2 h > max_fill_gap of 1 h.
    frame = frame[~frame["timestamp"].between(utc("2025-01-01 01:15"), utc("2025-01-01 03:00"))]
    out, report = regularize(frame, "1h", max_fill_gap="1h")
    assert out["timestamp"].tolist() == [utc(f"2025-01-01 0{h}:00") for h in range(6)]
    energy = out["energy_kwh"].tolist()
    assert energy[0] == 4.0 and energy[4] == 4.0 and energy[5] == 4.0
    assert all(math.isnan(v) for v in energy[1:4])
    assert out["is_gap"].tolist() == [False, True, True, True, False, False]
    assert out["is_filled"].tolist() == [False] * 6
    assert report.gap_intervals == 3
    assert report.filled_readings == 0
    assert report.long_gaps == [
        {
            "device_id": "b",
            "start": "2025-01-01T01:15:00+00:00",
            "end": "2025-01-01T03:15:00+00:00",
            "missing_readings": 8,
        }
    ]


def test_gap_exactly_max_fill_is_filled_one_longer_is_not():
    base = series("a", "2025-01-01 00:00", np.ones(16))
    four_missing = base.drop(index=[4, 5, 6, 7])  # the whole 01:00 hour, 1 h
    out, report = regularize(four_missing, "1h", max_fill_gap="1h")
    assert out["energy_kwh"].tolist() == [4.0, 4.0, 4.0, 4.0]
    assert out["is_filled"].tolist() == [False, True, False, False]
    assert report.filled_readings == 4

    five_missing = base.drop(index=[4, 5, 6, 7, 8])
    out, report = regularize(five_missing, "1h", max_fill_gap="1h")
    assert out["is_gap"].tolist() == [False, True, True, False]
    assert report.long_gaps[0]["missing_readings"] == 5


def test_interval_not_a_multiple_of_native_interval_raises():
    frame = series("a", "2025-01-01 00:00", np.ones(8), freq="40min")
    with pytest.raises(CleaningError, match=r"device 'a' reads every 0 days 00:40:00"):
        regularize(frame, "1h")
    frame = series("a", "2025-01-01 00:00", np.ones(8), freq="1h")
    with pytest.raises(CleaningError, match="does not divide the target interval"):
        regularize(frame, "15min")


def test_single_reading_and_no_readings_raise():
    with pytest.raises(CleaningError, match="device 'a' has a single reading"):
        regularize(series("a", "2025-01-01", [1.0]))
    with pytest.raises(CleaningError, match="no readings"):
        regularize(series("a", "2025-01-01", []))
    with pytest.raises(CleaningError, match="interval must be positive"):
        regularize(series("a", "2025-01-01", [1.0, 2.0]), "0h")


def test_multiple_devices_each_on_their_own_native_grid():
    quarter = series("q", "2025-01-01 00:00", np.full(8, 0.25))  # 00:00 .. 01:45
    half = series("h", "2025-01-01 00:00", np.full(6, 0.5), freq="30min")  # 00:00 .. 02:30
    out, report = regularize(pd.concat([quarter, half], ignore_index=True), "1h")
    assert report.native_interval_minutes == {"h": 30.0, "q": 15.0}
    assert list(zip(out["device_id"], out["timestamp"], out["energy_kwh"], strict=True)) == [
        ("h", utc("2025-01-01 00:00"), 1.0),
        ("h", utc("2025-01-01 01:00"), 1.0),
        ("h", utc("2025-01-01 02:00"), 1.0),
        ("q", utc("2025-01-01 00:00"), 1.0),
        ("q", utc("2025-01-01 01:00"), 1.0),
    ]
    assert out["device_id"].dtype == object


def test_two_hour_interval():
    out, _ = regularize(series("a", "2025-01-01 00:00", np.arange(8)), "2h", max_fill_gap="0h")
    # 15-min readings 00:00 .. 01:45 fill exactly one 2-hour bucket.
    assert out["timestamp"].tolist() == [utc("2025-01-01 00:00")]
    assert out["energy_kwh"].tolist() == [28.0]


# --- one reading in two units -----------------------------------------------------------------


def test_the_same_reading_in_wh_and_kwh_is_a_duplicate_not_a_conflict():
    wh = parse_meter_file(
        b"timestamp_utc,meter_id,energy_wh\n"
        b"2025-01-01T00:00:00Z,m1,4.1\n2025-01-01T00:15:00Z,m1,375.3\n",
        "a.csv",
    )
    kwh = parse_meter_file(
        b"reading_start\tdevice\tkwh\n"
        b"2025-01-01T01:00:00+01:00\tm1\t0.0041\n2025-01-01T01:15:00+01:00\tm1\t0.3753\n",
        "b.csv",
    )
    # Float rounding of the unit conversion makes them differ in the last bit...
    assert wh["energy_kwh"].iloc[0] != kwh["energy_kwh"].iloc[0]
    out, report = deduplicate(pd.concat([wh, kwh], ignore_index=True))
    # ...but they are one reading each, kept from the later file.
    assert report.conflicts == 0
    assert report.exact_duplicates == 2
    assert out["energy_kwh"].tolist() == [0.0041, 0.3753]


def test_readings_that_really_differ_are_still_conflicts():
    frame = readings(
        [
            ("2025-01-01 00:00", "a", 0.0041),
            ("2025-01-01 00:00", "a", 0.0041001),  # one part in 40,000
            ("2025-01-01 00:15", "a", 1e-7),
            ("2025-01-01 00:15", "a", 2e-7),  # tiny, but twice as much
        ]
    )
    _, report = deduplicate(frame)
    assert report.conflicts == 2
    assert report.exact_duplicates == 0


def test_comparable_kwh_equates_conversion_noise_and_keeps_real_differences():
    magnitudes = np.array([1e-12, 3.7e-4, 0.0041, 0.3753, 1.0, 123456.789, 9.87e9, 1e300])
    same = comparable_kwh(pd.Series(magnitudes))
    assert (comparable_kwh(pd.Series(magnitudes * (1 + 1e-13))) == same).all()
    assert (comparable_kwh(pd.Series(magnitudes * (1 - 1e-13))) == same).all()
    assert (comparable_kwh(pd.Series(magnitudes * (1 + 1e-7))) != same).all()
    assert comparable_kwh(pd.Series([4.1 / 1000]))[0] == comparable_kwh(pd.Series([0.0041]))[0]
    edge = comparable_kwh(pd.Series([0.0, 5e-324, np.nan]))
    assert edge[:2].tolist() == [0.0, 5e-324]
    assert math.isnan(edge[2])


# --- devices too short to resample --------------------------------------------------------------


def test_a_device_that_fills_no_interval_is_left_out_and_reported():
    long = series("long", "2025-01-01 00:00", np.full(8, 0.25))
    short = series("short", "2025-01-01 00:15", [0.1, 0.2, 0.3])  # 00:15 .. 00:45: no whole hour
    lone = series("lone", "2025-01-01 00:00", [0.5])
    out, report = regularize(pd.concat([long, short, lone], ignore_index=True), "1h")
    assert set(out["device_id"]) == {"long"}
    assert report.native_interval_minutes == {"long": 15.0}
    assert report.dropped_devices == [
        {
            "device_id": "lone",
            "readings": 1,
            "reason": "device 'lone' has a single reading, so its reading interval is unknown "
            "and there is nothing to resample",
        },
        {
            "device_id": "short",
            "readings": 3,
            "reason": "device 'short' has 3 reading(s) from 2025-01-01T00:15:00+00:00 to "
            "2025-01-01T00:45:00+00:00, which fill no complete 60-minute interval",
        },
    ]


def test_a_dropped_device_leaves_no_trace_in_the_gap_report():
    long = series("long", "2025-01-01 00:00", np.full(8, 0.25))
    # Quarter-hours with 00:45 missing (filled) and 01:30-01:45 missing (a long gap): no hour
    # is ever complete, so nothing of the device reaches the output or the gap report.
    times = ["00:15", "00:30", "01:00", "01:15", "02:00", "02:15"]
    gappy = readings([(f"2025-01-01 {t}", "gappy", 0.1) for t in times])
    out, report = regularize(pd.concat([long, gappy], ignore_index=True), "1h", "15min")
    assert set(out["device_id"]) == {"long"}
    assert [d["device_id"] for d in report.dropped_devices] == ["gappy"]
    assert report.filled_readings == 0
    assert report.long_gaps == []
    assert report.native_interval_minutes == {"long": 15.0}


def test_when_every_device_is_too_short_it_is_an_error_naming_them():
    frame = pd.concat(
        [series("a", "2025-01-01 00:15", [1.0, 2.0]), series("b", "2025-01-01", [1.0])],
        ignore_index=True,
    )
    with pytest.raises(CleaningError) as info:
        regularize(frame, "1h")
    message = str(info.value)
    assert message.startswith("no device has enough readings to fill one complete interval: ")
    assert "device 'a' has 2 reading(s)" in message
    assert "device 'b' has a single reading" in message

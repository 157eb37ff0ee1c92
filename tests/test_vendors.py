"""Vendor detection and parsing of raw meter files into the canonical schema."""

from __future__ import annotations

import pandas as pd
import pytest

from forecast_core.vendors import (
    DEVICE_ID_MAX_LENGTH,
    VENDORS_BY_NAME,
    MeterFileError,
    PlausibilityLimits,
    check_plausible,
    detect_vendor,
    device_id_problem,
    parse_meter_file,
    summarize,
)

ENERLOG_HEADER = "Zeitstempel;Zaehlpunkt;Leistung_W\n"
GRIDSENSE_HEADER = "timestamp_utc,meter_id,energy_wh\n"
KILOWATCH_HEADER = "reading_start\tdevice\tkwh\n"


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def enerlog(*rows: str) -> bytes:
    return (ENERLOG_HEADER + "".join(f"{r}\n" for r in rows)).encode()


def gridsense(*rows: str) -> bytes:
    return (GRIDSENSE_HEADER + "".join(f"{r}\n" for r in rows)).encode()


def parse_error(data: bytes, file: str = "cust/meter.csv") -> MeterFileError:
    with pytest.raises(MeterFileError) as info:
        parse_meter_file(data, file)
    assert info.value.file == file
    assert str(info.value).startswith(f"file '{file}': ")
    return info.value


# --- detection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (enerlog("01.01.2025 00:00;DE1;400"), "enerlog"),
        (gridsense("2025-01-01T00:00:00Z,m1,100"), "gridsense"),
        ((KILOWATCH_HEADER + "2025-01-01T00:00:00+01:00\tk1\t0.5\n").encode(), "kilowatch"),
        # Quoted header fields and extra columns still identify the vendor.
        (b'"meter_id","timestamp_utc","energy_wh","status"\n', "gridsense"),
    ],
)
def test_detect_vendor_recognises_each_format(data: bytes, name: str):
    assert detect_vendor(data, "f.csv").name == name


def test_detect_vendor_with_utf8_character_across_the_sniffing_cut():
    # The header sniff reads the first 4096 bytes; a valid multi-byte character split by that
    # cut must not make a UTF-8 file look binary.
    head = GRIDSENSE_HEADER.encode()
    filler = b"2025-01-01T00:00:00Z,m1,1\n" * ((4095 - len(head)) // 26 + 1)
    data = head + filler
    data = data[:4095] + "ä".encode() + b"\n"
    assert len(data) > 4096 and data[4095:4097] == "ä".encode()
    assert detect_vendor(data, "f.csv").name == "gridsense"


# --- parsing and units -------------------------------------------------------------------


def test_enerlog_mean_power_over_15_min_becomes_kwh_with_decimal_comma():
    frame = parse_meter_file(
        enerlog(
            "01.01.2025 00:00;DE1;400",
            "01.01.2025 00:15;DE1;1.200,5",  # thousands dot, decimal comma
            "01.01.2025 00:30;DE1;0,4",
        ),
        "e.csv",
    )
    assert list(frame.columns) == ["timestamp", "device_id", "energy_kwh"]
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    # January: Berlin is UTC+1.
    assert list(frame["timestamp"]) == [
        utc("2024-12-31 23:00"),
        utc("2024-12-31 23:15"),
        utc("2024-12-31 23:30"),
    ]
    assert list(frame["device_id"]) == ["DE1", "DE1", "DE1"]
    # P [W] * 0.25 h / 1000
    assert frame["energy_kwh"].tolist() == pytest.approx([0.1, 0.300125, 0.0001])


def test_enerlog_mean_power_uses_each_devices_own_spacing():
    frame = parse_meter_file(
        enerlog(
            "01.07.2025 00:00;A;1000",
            "01.07.2025 00:00;B;1000",
            "01.07.2025 00:15;A;1000",
            "01.07.2025 01:00;B;1000",
        ),
        "e.csv",
    )
    # A reads every 15 min, B hourly; July: Berlin is UTC+2.
    assert frame["energy_kwh"].tolist() == pytest.approx([0.25, 1.0, 0.25, 1.0])
    assert frame["timestamp"].iloc[3] == utc("2025-06-30 23:00")


def test_gridsense_wh_to_kwh_utc():
    frame = parse_meter_file(
        gridsense("2025-03-01T10:00:00Z,m1,1500", "2025-03-01T10:15:00Z,m1,250.5"), "g.csv"
    )
    assert list(frame["timestamp"]) == [utc("2025-03-01 10:00"), utc("2025-03-01 10:15")]
    assert frame["energy_kwh"].tolist() == pytest.approx([1.5, 0.2505])


def test_kilowatch_kwh_with_offsets_and_bom():
    data = "\ufeff".encode() + (
        KILOWATCH_HEADER
        + "2025-10-26T02:15:00+02:00\tk1\t0.5\n"
        + "2025-10-26T02:15:00+01:00\tk1\t0.25\n"
        + "2025-10-26T03:00:00+01:00\tk1\t1\n"
    ).encode("utf-8")
    assert data.startswith(b"\xef\xbb\xbf")
    assert detect_vendor(data, "k.tsv").name == "kilowatch"
    frame = parse_meter_file(data, "k.tsv")
    assert list(frame["timestamp"]) == [
        utc("2025-10-26 00:15"),
        utc("2025-10-26 01:15"),
        utc("2025-10-26 02:00"),
    ]
    assert frame["energy_kwh"].tolist() == [0.5, 0.25, 1.0]
    assert list(frame["device_id"]) == ["k1", "k1", "k1"]


def test_bom_before_enerlog_header_is_dropped():
    frame = parse_meter_file(
        b"\xef\xbb\xbf" + enerlog("01.01.2025 00:00;DE1;400", "01.01.2025 00:15;DE1;400"), "e.csv"
    )
    assert frame["energy_kwh"].tolist() == pytest.approx([0.1, 0.1])


def test_explicit_vendor_skips_detection():
    frame = parse_meter_file(
        gridsense("2025-03-01T10:00:00Z,m1,1000"), "g.csv", VENDORS_BY_NAME["gridsense"]
    )
    assert frame["energy_kwh"].tolist() == [1.0]


def test_summarize():
    frame = parse_meter_file(
        gridsense("2025-03-01T10:15:00Z,m2,1", "2025-03-01T10:00:00Z,m1,1"), "g.csv"
    )
    summary = summarize(frame, VENDORS_BY_NAME["gridsense"])
    assert summary.vendor == "gridsense"
    assert summary.rows == 2
    assert summary.devices == ("m1", "m2")
    assert summary.start == utc("2025-03-01 10:00")
    assert summary.end == utc("2025-03-01 10:15")


# --- daylight saving in naive local time -------------------------------------------------


def test_enerlog_autumn_repeated_hour_first_pass_summer_second_pass_winter():
    # Last Sunday of October 2025: 03:00 CEST -> 02:00 CET, so 02:00-02:59 occurs twice.
    local = ["01:45"] + [f"02:{m:02d}" for m in (0, 15, 30, 45)] * 2 + ["03:00"]
    frame = parse_meter_file(enerlog(*(f"26.10.2025 {t};DE1;400" for t in local)), "e.csv")
    expected = [
        "2025-10-25 23:45",
        # first pass (CEST, UTC+2)
        "2025-10-26 00:00",
        "2025-10-26 00:15",
        "2025-10-26 00:30",
        "2025-10-26 00:45",
        # second pass (CET, UTC+1)
        "2025-10-26 01:00",
        "2025-10-26 01:15",
        "2025-10-26 01:30",
        "2025-10-26 01:45",
        "2025-10-26 02:00",
    ]
    assert list(frame["timestamp"]) == [utc(t) for t in expected]
    assert frame["timestamp"].is_unique
    assert frame["energy_kwh"].tolist() == pytest.approx([0.1] * 10)


def test_enerlog_autumn_repeated_hour_hourly_readings():
    frame = parse_meter_file(
        enerlog(*(f"26.10.2025 {t};DE1;1000" for t in ("01:00", "02:00", "02:00", "03:00"))),
        "e.csv",
    )
    assert list(frame["timestamp"]) == [
        utc("2025-10-25 23:00"),
        utc("2025-10-26 00:00"),
        utc("2025-10-26 01:00"),
        utc("2025-10-26 02:00"),
    ]
    assert frame["energy_kwh"].tolist() == pytest.approx([1.0] * 4)


def test_enerlog_autumn_repeated_hour_resolved_per_device():
    # Two devices interleaved: B's first pass must not be read as a second pass because A
    # already went back in time.
    rows = [
        "26.10.2025 02:30;A;400",
        "26.10.2025 02:45;A;400",
        "26.10.2025 02:00;A;400",
        "26.10.2025 02:30;B;400",
        "26.10.2025 02:45;B;400",
    ]
    frame = parse_meter_file(enerlog(*rows), "e.csv")
    assert list(frame["timestamp"]) == [
        utc("2025-10-26 00:30"),
        utc("2025-10-26 00:45"),
        utc("2025-10-26 01:00"),
        utc("2025-10-26 00:30"),
        utc("2025-10-26 00:45"),
    ]


def test_enerlog_spring_nonexistent_local_time_raises():
    err = parse_error(
        enerlog("30.03.2025 01:45;DE1;400", "30.03.2025 02:15;DE1;400", "30.03.2025 03:00;DE1;4")
    )
    assert "daylight saving" in err.problem
    assert "Europe/Berlin" in err.problem
    assert "line(s) 3" in err.problem
    assert "2025-03-30 02:15:00" in err.problem


# --- bad input ---------------------------------------------------------------------------


def test_unknown_vendor_header():
    err = parse_error(b"time;meter;value\n2025-01-01;x;1\n")
    assert "unknown vendor format" in err.problem
    assert "'time;meter;value'" in err.problem


@pytest.mark.parametrize("data", [b"", b"  \n\n"])
def test_empty_file(data: bytes):
    assert parse_error(data).problem == "is empty"


def test_header_only():
    assert parse_error(GRIDSENSE_HEADER.encode()).problem == "has a header but no readings"


def test_truncated_last_line():
    err = parse_error(
        gridsense("2025-01-01T00:00:00Z,m1,100", "2025-01-01T00:15:00Z,m1,100")
        + b"2025-01-01T00:30:00Z,m1"
    )
    assert "missing field(s) on line(s) 4" in err.problem
    assert "truncated" in err.problem


def test_missing_field_in_the_middle_is_not_called_truncated():
    err = parse_error(
        gridsense(
            "2025-01-01T00:00:00Z,m1,100", "2025-01-01T00:15:00Z,,100", "2025-01-01T00:30:00Z,m1,1"
        )
    )
    assert "missing field(s) on line(s) 3" in err.problem
    assert "truncated" not in err.problem


def test_non_numeric_energy_names_the_line():
    err = parse_error(
        gridsense("2025-01-01T00:00:00Z,m1,100", "2025-01-01T00:15:00Z,m1,abc"), "bad.csv"
    )
    assert err.file == "bad.csv"
    assert "non-numeric energy value 'abc'" in err.problem
    assert "'energy_wh'" in err.problem
    assert err.problem.endswith("on line(s) 3")


def test_non_numeric_energy_lists_at_most_five_lines():
    rows = ["2025-01-01T00:00:00Z,m1,1"] + [f"2025-01-01T0{i}:15:00Z,m1,x" for i in range(7)]
    err = parse_error(gridsense(*rows))
    assert err.problem.endswith("on line(s) 3, 4, 5, 6, 7 and 2 more")


def test_negative_energy():
    err = parse_error(gridsense("2025-01-01T00:00:00Z,m1,100", "2025-01-01T00:15:00Z,m1,-3"))
    assert "negative energy value -3" in err.problem
    assert err.problem.endswith("on line(s) 3")


def test_missing_timestamp_column():
    err = parse_error(b"time,meter_id,energy_wh\n2025-01-01T00:00:00Z,m1,1\n")
    assert "looks like vendor 'gridsense' but has no timestamp column" in err.problem


def test_missing_other_column():
    err = parse_error(b"timestamp_utc,meter,energy_wh\n2025-01-01T00:00:00Z,m1,1\n")
    assert "lacks column(s) ['meter_id']" in err.problem


def test_no_readable_timestamps():
    err = parse_error(gridsense("yesterday,m1,1", "tomorrow,m1,2"))
    assert (
        err.problem
        == "has no readable timestamps in column 'timestamp_utc' (first value 'yesterday')"
    )


def test_one_unreadable_timestamp_names_the_line():
    err = parse_error(gridsense("2025-01-01T00:00:00Z,m1,1", "2025-13-45T00:00:00Z,m1,2"))
    assert err.problem == (
        "unreadable timestamp '2025-13-45T00:00:00Z' in column 'timestamp_utc' on line(s) 3"
    )


def test_unreadable_local_timestamp():
    err = parse_error(enerlog("01.01.2025 00:00;DE1;1", "2025-01-01 00:15;DE1;1"))
    assert err.problem == (
        "unreadable timestamp '2025-01-01 00:15' in column 'Zeitstempel' on line(s) 3"
    )


def test_non_utf8_bytes():
    err = parse_error(b"\x1f\x8b\x08\x00\xff\xfe binary")
    assert "is not UTF-8 text (byte 1)" in err.problem


def test_non_utf8_after_a_valid_header():
    err = parse_error(
        gridsense("2025-01-01T00:00:00Z,m1,1") + "2025-01-01T00:15:00Z,Zähler,1\n".encode("latin-1")
    )
    assert "is not UTF-8 text" in err.problem


def test_single_power_reading_cannot_become_energy():
    err = parse_error(
        enerlog("01.01.2025 00:00;A;400", "01.01.2025 00:15;A;400", "01.01.2025 00:00;B;1")
    )
    assert "device 'B' has a single reading" in err.problem


# --- device ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device_id", ["m1", "DE0001234567890000000000000000001", "Zähler 7", "x" * DEVICE_ID_MAX_LENGTH]
)
def test_device_id_problem_accepts_ordinary_ids(device_id: str):
    assert device_id_problem(device_id) is None


@pytest.mark.parametrize(
    ("device_id", "problem"),
    [
        ("", "is empty"),
        ("x" * (DEVICE_ID_MAX_LENGTH + 1), "is 129 characters long, more than the 128"),
        ("x" * 10_000, "is 10000 characters long"),
        ("a\x00b", "contains a control character (U+0000)"),
        ("a\tb", "contains a control character (U+0009)"),
        ("a\x7fb", "contains a control character (U+007F)"),
        ("a\u200bb", "contains an invisible format character (U+200B)"),
        ("\ufeffm1", "contains an invisible format character (U+FEFF)"),
        ("a\u2028b", "contains a line separator (U+2028)"),
        (" m1", "has leading or trailing whitespace"),
        ("m1\u00a0", "has leading or trailing whitespace"),
    ],
)
def test_device_id_problem_names_what_is_wrong(device_id: str, problem: str):
    assert (device_id_problem(device_id) or "").startswith(problem)


def test_a_device_id_too_long_for_the_registry_is_refused_naming_lines():
    err = parse_error(
        gridsense("2025-01-01T00:00:00Z,m1,1", f"2025-01-01T00:00:00Z,{'y' * 10_000},1")
    )
    assert err.problem.startswith(
        "device id 'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy'… (10000 characters)"
    )
    assert "is 10000 characters long" in err.problem
    assert err.problem.endswith("(line(s) 3)")


def test_a_nul_in_a_device_id_is_refused_and_shown_escaped():
    err = parse_error(gridsense("2025-01-01T00:00:00Z,m\x001,1", "2025-01-01T00:15:00Z,m\x001,1"))
    assert err.problem == (
        "device id 'm\\x001' in column 'meter_id' contains a control character (U+0000) "
        "(line(s) 2, 3)"
    )


def test_whitespace_around_a_device_id_is_trimmed_not_refused():
    frame = parse_meter_file(gridsense("2025-01-01T00:00:00Z, m1 ,1"), "f.csv")
    assert frame["device_id"].tolist() == ["m1"]


# --- files cut off ------------------------------------------------------------------------------


def test_a_file_cut_inside_its_last_number_is_refused():
    # The meter wrote 375.3; the file ends after the 3, with no line break.
    data = gridsense("2025-01-01T00:00:00Z,m1,100", "2025-01-01T00:15:00Z,m1,375.3")[
        : -len("75.3\n")
    ]
    err = parse_error(data)
    assert err.problem == (
        "its last line (line 3) does not end with a line break: the file may be cut off "
        "(truncated) inside that line, e.g. in its last number; re-deliver the complete file"
    )


def test_crlf_line_ends_are_complete_lines():
    data = enerlog("01.01.2025 00:00;DE1;400", "01.01.2025 00:15;DE1;400").replace(b"\n", b"\r\n")
    assert len(parse_meter_file(data, "e.csv")) == 2


# --- plausibility ------------------------------------------------------------------------------

LIMITS = PlausibilityLimits(
    max_interval_power_kw=100_000.0,
    max_median_power_kw=20_000.0,
    earliest=utc("2000-01-01"),
    latest=utc("2025-06-01 13:00"),
)


def plausibility_error(data: bytes, limits: PlausibilityLimits = LIMITS) -> MeterFileError:
    frame = parse_meter_file(data, "f.csv")
    with pytest.raises(MeterFileError) as info:
        check_plausible(frame, "f.csv", limits)
    return info.value


def quarter_hours(device: str, start: str, values: list[str]) -> list[str]:
    times = pd.date_range(start, periods=len(values), freq="15min")
    return [
        f"{t.strftime('%Y-%m-%dT%H:%M:%SZ')},{device},{v}"
        for t, v in zip(times, values, strict=True)
    ]


def test_ordinary_readings_are_plausible():
    frame = parse_meter_file(gridsense(*quarter_hours("m1", "2025-01-01", ["375.3"] * 8)), "f.csv")
    check_plausible(frame, "f.csv", LIMITS)


def test_every_value_scaled_by_1e27_is_refused():
    err = plausibility_error(gridsense(*quarter_hours("m1", "2025-01-01", ["375.3e27"] * 8)))
    assert err.problem.startswith(
        "implausible value on line(s) 2, 3, 4, 5, 6 and 3 more: 3.753e+26 kWh in 15 min of "
        "device 'm1' is a mean power of 1.5012e+27 kW, above the 100000 kW"
    )


def test_the_interval_bound_is_mean_power_so_hourly_meters_get_four_times_the_energy():
    hourly = [
        f"2025-01-01T{h:02d}:00:00Z,m1,{v}" for h, v in enumerate(["90000000"] * 2 + ["1"] * 4)
    ]
    frame = parse_meter_file(gridsense(*hourly), "f.csv")
    check_plausible(frame, "f.csv", LIMITS)  # 90 MWh in an hour is 90 MW
    quarter = quarter_hours("m1", "2025-01-01", ["1"] * 5 + ["90000000"])
    assert "line(s) 7:" in plausibility_error(gridsense(*quarter)).problem  # 360 MW


def test_a_meter_level_above_the_median_bound_is_refused():
    values = ["6000000"] * 6 + ["1"] * 2  # 24 MW most of the time
    err = plausibility_error(gridsense(*quarter_hours("big", "2025-01-01", values)))
    assert err.problem.startswith("device 'big' has a median power of 24000 kW, above the 20000")
    # A few high readings among ordinary ones are the spike check's business, not this one's.
    values = ["6000000"] * 2 + ["1"] * 6
    frame = parse_meter_file(gridsense(*quarter_hours("m1", "2025-01-01", values)), "f.csv")
    check_plausible(frame, "f.csv", LIMITS)


def test_repeated_readings_do_not_shrink_the_interval():
    rows = quarter_hours("m1", "2025-01-01", ["375.3"] * 4)
    frame = parse_meter_file(gridsense(*rows, *rows), "f.csv")
    check_plausible(frame, "f.csv", LIMITS)


def test_a_single_reading_is_judged_by_the_other_devices_spacing_or_a_day():
    rows = [*quarter_hours("m1", "2025-01-01", ["1"] * 4), "2025-01-01T00:00:00Z,lone,30000000"]
    # 30 MWh in the file's 15 minutes is 120 MW.
    assert "device 'lone'" in plausibility_error(gridsense(*rows)).problem
    # Alone in its file, its interval is unknown: judged as a day (1.25 MW), it passes.
    frame = parse_meter_file(gridsense("2025-01-01T00:00:00Z,lone,30000000"), "f.csv")
    check_plausible(frame, "f.csv", LIMITS)


def test_readings_before_the_earliest_instant_are_refused():
    err = plausibility_error(gridsense(*quarter_hours("m1", "1999-12-31 23:30", ["1"] * 4)))
    assert err.problem.startswith(
        "timestamp 1999-12-31T23:30:00+00:00 is before 2000-01-01T00:00:00+00:00 (earliest_year) "
        "on line(s) 2, 3;"
    )


def test_readings_after_the_latest_instant_are_refused():
    frame = parse_meter_file(
        gridsense(*quarter_hours("m1", "2025-06-01 12:15", ["1"] * 4)), "f.csv"
    )
    check_plausible(frame, "f.csv", LIMITS)  # the last starts at 13:00, the latest allowed
    err = plausibility_error(gridsense(*quarter_hours("m1", "2025-06-01 12:15", ["1"] * 5)))
    assert err.problem.startswith(
        "timestamp 2025-06-01T13:15:00+00:00 is in the future (later than "
        "2025-06-01T13:00:00+00:00, now plus future_tolerance_minutes) on line(s) 6;"
    )

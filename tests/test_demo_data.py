"""The demo-data generator writes files the vendor parsers read back to the intended readings."""

from __future__ import annotations

import re
import time

import numpy as np
import pandas as pd
import pytest

from forecast_assets.demo_data import (
    CONFLICT_CUSTOMER,
    DEMO_CUSTOMERS,
    LONG_GAP_CUSTOMERS,
    DemoCustomer,
    demo_end_date,
    demo_readings,
    device_ids,
    generate_customer_files,
)
from forecast_core.cleaning import deduplicate, regularize
from forecast_core.vendors import detect_vendor, parse_meter_file

VENDOR_NAMES = ("enerlog", "gridsense", "kilowatch")
BY_ID = {c.customer_id: c for c in DEMO_CUSTOMERS}
STEP = pd.Timedelta(minutes=15)

# 2025's clock changes (Europe/Berlin): 30 March 02:00 -> 03:00, 26 October 03:00 -> 02:00.
SPRING_END = pd.Timestamp("2025-04-06", tz="UTC")  # 20 days: 17 March .. 5 April
AUTUMN_END = pd.Timestamp("2025-11-09", tz="UTC")  # 20 days: 20 October .. 8 November
END = pd.Timestamp("2025-06-10", tz="UTC")


def parse_all(files: dict[str, bytes]) -> pd.DataFrame:
    """All files parsed in name order, rows in file order."""
    return pd.concat(
        [parse_meter_file(data, name) for name, data in sorted(files.items())], ignore_index=True
    )


def one_per_vendor() -> list[DemoCustomer]:
    return [next(c for c in DEMO_CUSTOMERS if c.vendor == v) for v in VENDOR_NAMES]


# ---------------------------------------------------------------------------------------------
# The customer list and the API


def test_demo_customers_cover_every_vendor_with_3_to_6_devices():
    assert len(DEMO_CUSTOMERS) >= 5
    assert {c.vendor for c in DEMO_CUSTOMERS} == set(VENDOR_NAMES)
    assert len({c.customer_id for c in DEMO_CUSTOMERS}) == len(DEMO_CUSTOMERS)
    for c in DEMO_CUSTOMERS:
        assert re.fullmatch(r"[a-z0-9-]+", c.customer_id)
        assert 3 <= c.devices <= 6
    assert len({c.profile for c in DEMO_CUSTOMERS}) >= 4
    assert CONFLICT_CUSTOMER in BY_ID
    assert LONG_GAP_CUSTOMERS and set(BY_ID) >= LONG_GAP_CUSTOMERS


@pytest.mark.parametrize(
    "kwargs",
    [
        {"customer_id": "Bad_Id", "vendor": "enerlog", "devices": 3, "profile": "office"},
        {"customer_id": "ok", "vendor": "acme", "devices": 3, "profile": "office"},
        {"customer_id": "ok", "vendor": "enerlog", "devices": 0, "profile": "office"},
        {"customer_id": "ok", "vendor": "enerlog", "devices": 3, "profile": "zoo"},
    ],
)
def test_invalid_customers_are_refused(kwargs):
    with pytest.raises(ValueError):
        DemoCustomer(**kwargs)


def test_end_must_be_utc_midnight_and_interval_must_divide_an_hour():
    customer = DEMO_CUSTOMERS[0]
    with pytest.raises(ValueError, match="midnight"):
        generate_customer_files(customer, end=pd.Timestamp("2025-06-10 06:00", tz="UTC"), days=3)
    with pytest.raises(ValueError, match="divide"):
        generate_customer_files(customer, end=END, days=3, interval_minutes=7)


def test_demo_end_date_is_utc_midnight():
    assert demo_end_date(pd.Timestamp("2025-03-30 15:20")) == pd.Timestamp("2025-03-30", tz="UTC")
    # 01:30 in Berlin on 31 March is still 30 March in UTC.
    berlin = pd.Timestamp("2025-03-31 01:30", tz="Europe/Berlin")
    assert demo_end_date(berlin) == pd.Timestamp("2025-03-30", tz="UTC")
    today = demo_end_date()
    assert str(today.tz) == "UTC"
    assert today == today.normalize()
    assert pd.Timestamp.now(tz="UTC") - today < pd.Timedelta(days=1)


# ---------------------------------------------------------------------------------------------
# Files parse, with the intended vendor, to the intended readings


@pytest.mark.parametrize("customer", DEMO_CUSTOMERS, ids=lambda c: c.customer_id)
def test_every_file_parses_as_the_customers_vendor(customer):
    files = generate_customer_files(customer, end=END, days=40)
    # 1 May .. 9 June: two UTC months.
    assert sorted(files) == ["2025-05.csv", "2025-06.csv"]
    expected = demo_readings(customer, end=END, days=40)
    for name, data in files.items():
        assert detect_vendor(data, name).name == customer.vendor
        parsed = parse_meter_file(data, name)
        want = expected[expected["file"] == name]
        assert len(parsed) == len(want)
        assert (parsed["timestamp"].to_numpy() == want["timestamp"].to_numpy()).all()
        assert (parsed["device_id"].to_numpy() == want["device_id"].to_numpy()).all()
        assert set(parsed["device_id"]) == set(device_ids(customer))
        assert (parsed["energy_kwh"] > 0).all()
        # Every file holds whole UTC days of its own month.
        month = pd.Timestamp(name.removesuffix(".csv") + "-01", tz="UTC")
        assert parsed["timestamp"].min() >= month
        assert parsed["timestamp"].max() < month + pd.offsets.MonthBegin(1)


@pytest.mark.parametrize("customer", one_per_vendor(), ids=lambda c: c.vendor)
def test_data_covers_exactly_the_window_in_time_order(customer):
    start = END - pd.Timedelta(days=40)
    parsed = parse_all(generate_customer_files(customer, end=END, days=40))
    grid = pd.date_range(start, END, freq=STEP, inclusive="left")
    assert parsed["timestamp"].isin(grid).all()
    # Rows are in time order, and within one device never go back in time.
    assert parsed["timestamp"].is_monotonic_increasing
    for _, group in parsed.groupby("device_id"):
        assert group["timestamp"].is_monotonic_increasing
        assert group["timestamp"].min() < start + pd.Timedelta(hours=2)
        assert group["timestamp"].max() > END - pd.Timedelta(hours=2)


# ---------------------------------------------------------------------------------------------
# Time conventions across both clock changes


@pytest.mark.parametrize("end", [SPRING_END, AUTUMN_END], ids=["spring", "autumn"])
@pytest.mark.parametrize("customer", one_per_vendor(), ids=lambda c: c.vendor)
def test_timestamps_round_trip_to_utc_across_clock_changes(customer, end):
    files = generate_customer_files(customer, end=end, days=20)
    parsed = parse_all(files)
    intended = demo_readings(customer, end=end, days=20)
    np.testing.assert_array_equal(parsed["timestamp"].to_numpy(), intended["timestamp"].to_numpy())
    # Independently of the generator's bookkeeping: around the change, the devices together have
    # a reading for every quarter hour of UTC, and in autumn each device has all of them (no
    # defect touches the repeated hour).
    change = pd.Timestamp("2025-03-30 01:00" if end == SPRING_END else "2025-10-26 01:00", tz="UTC")
    near = pd.date_range(
        change - pd.Timedelta(hours=1), change + pd.Timedelta(hours=1), freq=STEP, inclusive="left"
    )
    got = parsed["timestamp"][parsed["timestamp"].isin(near)]
    assert sorted(set(got)) == list(near)
    if end == AUTUMN_END:
        for device, group in parsed.groupby("device_id"):
            assert list(group["timestamp"][group["timestamp"].isin(near)]) == list(near), device
    else:
        assert (
            parsed["timestamp"]
            .isin(pd.date_range(end - pd.Timedelta(days=20), end, freq=STEP, inclusive="left"))
            .all()
        )


def test_enerlog_writes_the_autumn_hour_twice_and_skips_the_spring_hour():
    customer = BY_ID["hansa-offices"]
    assert customer.vendor == "enerlog"
    autumn = generate_customer_files(customer, end=AUTUMN_END, days=20)["2025-10.csv"].decode()
    spring = generate_customer_files(customer, end=SPRING_END, days=20)["2025-03.csv"].decode()
    hour = ["26.10.2025 02:00", "26.10.2025 02:15", "26.10.2025 02:30", "26.10.2025 02:45"]
    for device in device_ids(customer):
        times = [
            line.split(";")[0]
            for line in autumn.splitlines()
            if re.match(r"26\.10\.2025 0[123]:", line) and f";{device};" in line
        ]
        first = times.index(hour[0])
        # 01:xx, then the hour in summer time, again in winter time, then 03:xx.
        assert times[first : first + 8] == hour + hour
        assert all(t.startswith("26.10.2025 01:") for t in times[:first])
        assert all(t.startswith("26.10.2025 03:") for t in times[first + 8 :])
    assert "30.03.2025 01:45" in spring
    assert "30.03.2025 03:00" in spring
    assert "30.03.2025 02:" not in spring
    assert spring.splitlines()[0] == "Zeitstempel;Zaehlpunkt;Leistung_W"
    assert re.search(r";\d+,\d\r?$", spring.splitlines()[1])  # decimal comma, 0.1 W


def test_kilowatch_offsets_and_gridsense_utc():
    kilowatch = generate_customer_files(BY_ID["polar-cold-storage"], end=AUTUMN_END, days=20)
    text = kilowatch["2025-10.csv"].decode()
    assert "2025-10-26T02:45:00+02:00\t" in text
    assert "2025-10-26T02:00:00+01:00\t" in text
    assert "2025-10-26T03:00:00+01:00\t" in text
    assert "2025-10-26T03:00:00+02:00" not in text
    assert text.splitlines()[0] == "reading_start\tdevice\tkwh"
    gridsense = generate_customer_files(BY_ID["nordmarkt-retail"], end=AUTUMN_END, days=20)
    lines = gridsense["2025-10.csv"].decode().splitlines()
    assert lines[0] == "timestamp_utc,meter_id,energy_wh"
    assert re.fullmatch(r"2025-10-20T00:00:00Z,gs-[0-9a-f]{8}-1,\d+\.\d", lines[1])


# ---------------------------------------------------------------------------------------------
# Units


def test_same_energy_reads_back_equal_for_all_three_vendors():
    """One customer written by each vendor: the parsed kWh agree with each other and the truth."""
    tolerance = {"enerlog": 0.05 * 0.25 / 1000, "gridsense": 0.05 / 1000, "kilowatch": 0.00005}
    parsed = {}
    for vendor in VENDOR_NAMES:
        customer = DemoCustomer("unit-check", vendor, 3, "factory")
        frame = parse_all(generate_customer_files(customer, end=AUTUMN_END, days=20))
        truth = demo_readings(customer, end=AUTUMN_END, days=20)
        error = (frame["energy_kwh"] - truth["energy_kwh"]).abs()
        assert error.max() <= tolerance[vendor] * 1.0001, vendor
        assert error.max() > 0  # values really are rounded
        # The device numbering is shared; only the vendor's id style differs.
        number = {d: k for k, d in enumerate(device_ids(customer))}
        parsed[vendor] = frame.assign(device=frame["device_id"].map(number))
    base = parsed["kilowatch"]
    for vendor in ("enerlog", "gridsense"):
        other = parsed[vendor]
        assert (other["timestamp"].to_numpy() == base["timestamp"].to_numpy()).all()
        assert (other["device"].to_numpy() == base["device"].to_numpy()).all()
        np.testing.assert_allclose(other["energy_kwh"], base["energy_kwh"], rtol=0, atol=1.1e-4)
    # Devices differ in size: roughly 2 to 40 kWh per hour.
    hourly = base.groupby("device")["energy_kwh"].mean() * 4
    assert hourly.min() < 6 and hourly.max() > 20


# ---------------------------------------------------------------------------------------------
# Defects


def missing_runs(frame: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> list[int]:
    """Lengths of the runs of missing readings, over all devices."""
    grid = pd.date_range(start, end, freq=STEP, inclusive="left")
    runs: list[int] = []
    for _, group in frame.groupby("device_id"):
        missing = ~grid.isin(group["timestamp"])
        edges = np.diff(np.concatenate([[0], missing.astype(int), [0]]))
        runs += list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
    return runs


@pytest.mark.parametrize("customer", DEMO_CUSTOMERS, ids=lambda c: c.customer_id)
def test_defects_appear_as_specified(customer):
    days = 60
    end = AUTUMN_END
    parsed = parse_all(generate_customer_files(customer, end=end, days=days))
    readings = days * 96 * customer.devices

    exact = parsed.duplicated(keep="first")
    assert 0.0004 * readings <= exact.sum() <= 0.002 * readings

    unique = parsed[~exact]
    clashes = unique[unique.duplicated(["device_id", "timestamp"], keep=False)]
    groups = clashes.groupby(["device_id", "timestamp"])["energy_kwh"].nunique()
    if customer.customer_id == CONFLICT_CUSTOMER:
        assert 2 <= len(groups) <= 3
        assert (groups == 2).all()
    else:
        assert len(groups) == 0

    runs = missing_runs(parsed, end - pd.Timedelta(days=days), end)
    short = [r for r in runs if r <= 3]
    long = [r for r in runs if r > 3]
    assert 0.0015 * readings <= sum(short) <= 0.006 * readings
    if customer.customer_id in LONG_GAP_CUSTOMERS:
        assert len(long) == 1
        assert 36 * 4 <= long[0] <= 60 * 4  # about two days
    else:
        assert long == []

    # Nothing is missing, repeated or contradicted in the repeated autumn hour.
    hour = pd.date_range(
        "2025-10-26 00:00", "2025-10-26 02:00", freq=STEP, inclusive="left", tz="UTC"
    )
    in_hour = parsed[parsed["timestamp"].isin(hour)]
    assert len(in_hour) == len(hour) * customer.devices


def test_cleaning_finds_the_generated_defects():
    for customer_id in sorted({CONFLICT_CUSTOMER, *LONG_GAP_CUSTOMERS}):
        customer = BY_ID[customer_id]
        parsed = parse_all(generate_customer_files(customer, end=END, days=40))
        readings, dedup = deduplicate(parsed)
        series, gaps = regularize(readings, "1h", "1h")
        assert dedup.exact_duplicates > 0
        assert (2 <= dedup.conflicts <= 3) == (customer_id == CONFLICT_CUSTOMER)
        assert gaps.filled_readings > 0
        assert len(gaps.long_gaps) == (customer_id in LONG_GAP_CUSTOMERS)
        if customer_id in LONG_GAP_CUSTOMERS:
            assert 36 <= series["is_gap"].sum() <= 62
        else:
            assert series["is_gap"].sum() == 0


# ---------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_bytes_other_seed_other_bytes():
    customer = BY_ID["rhein-metallbau"]
    first = generate_customer_files(customer, end=END, days=20, seed=3)
    again = generate_customer_files(customer, end=END, days=20, seed=3)
    other = generate_customer_files(customer, end=END, days=20, seed=4)
    assert first == again
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first)
    # The seed moves the defects, not only the values.
    keys = [
        set(zip(frame["device_id"], frame["timestamp"], strict=True))
        for frame in (parse_all(first), parse_all(other))
    ]
    assert keys[0] != keys[1]
    # Different customers differ too, even with the same vendor and seed.
    office = generate_customer_files(BY_ID["hansa-offices"], end=END, days=20, seed=3)
    assert office["2025-06.csv"][200:2000] != first["2025-06.csv"][200:2000]


def test_overlapping_windows_agree():
    """Noise and recurring defects follow absolute time, so yesterday's files stay valid."""
    customer = BY_ID["polar-cold-storage"]  # no window-relative one-off events
    assert customer.customer_id not in LONG_GAP_CUSTOMERS | {CONFLICT_CUSTOMER}
    early = demo_readings(customer, end=END, days=30)
    late = demo_readings(customer, end=END + pd.Timedelta(days=9), days=30)
    overlap_start = END + pd.Timedelta(days=9) - pd.Timedelta(days=30)
    a = early[early["timestamp"] >= overlap_start].reset_index(drop=True)
    b = late[late["timestamp"] < END].reset_index(drop=True)
    pd.testing.assert_frame_equal(a.drop(columns="file"), b.drop(columns="file"))


# ---------------------------------------------------------------------------------------------
# Realism


def hourly_total(customer: DemoCustomer, end: pd.Timestamp, days: int) -> pd.Series:
    truth = demo_readings(customer, end=end, days=days)
    truth = truth[truth["kind"] == "reading"]
    total = truth.groupby("timestamp")["energy_kwh"].sum().resample("1h").sum()
    return total.tz_convert("Europe/Berlin")


def test_office_follows_local_working_hours_weekends_and_holidays():
    # 12 September .. 10 November 2025: German Unity Day (Friday 3 October) and the clock change.
    load = hourly_total(BY_ID["hansa-offices"], end=pd.Timestamp("2025-11-11", tz="UTC"), days=60)
    day = pd.Series(load.index.normalize().tz_localize(None), index=load.index)
    midday = load[(load.index.hour >= 10) & (load.index.hour < 15)]
    by_day = midday.groupby(day[midday.index]).mean()
    weekdays = by_day[(by_day.index.day_of_week < 4)]  # Monday..Thursday
    sundays = by_day[by_day.index.day_of_week == 6]
    assert weekdays.median() > 1.6 * sundays.median()
    assert by_day[pd.Timestamp("2025-10-03")] < 1.2 * sundays.median()
    # The morning ramp is at the same local hour in summer time and in winter time.
    for period in (slice("2025-09-15", "2025-10-24"), slice("2025-10-27", "2025-11-10")):
        part = load[period]
        workday = part[(part.index.day_of_week < 5)]
        profile = workday.groupby(workday.index.hour).mean()
        half = (profile.min() + profile.max()) / 2
        assert int(np.argmax(profile.to_numpy() > half)) in (7, 8)


def test_heating_and_cooling_follow_the_seasons():
    load = hourly_total(
        BY_ID["polar-cold-storage"], end=pd.Timestamp("2026-01-01", tz="UTC"), days=365
    )
    assert load["2025-07"].mean() > 1.15 * load["2025-01"].mean()
    school = hourly_total(BY_ID["lindenschule"], end=pd.Timestamp("2026-01-01", tz="UTC"), days=365)
    lessons = school[(school.index.day_of_week < 5) & (school.index.hour == 10)]
    assert lessons["2025-02"].mean() > 1.2 * lessons["2025-06"].mean()


def test_load_is_forecastable_but_not_trivially_weekly():
    """A small random forest on lag and calendar features beats same-time-last-week."""
    from sklearn.ensemble import RandomForestRegressor

    load = hourly_total(BY_ID["hansa-offices"], end=pd.Timestamp("2025-12-01", tz="UTC"), days=150)
    frame = pd.DataFrame({"y": load})
    for lag in (48, 72, 96, 120, 144, 168, 336):
        frame[f"lag_{lag}"] = load.shift(lag)
    frame["mean_24"] = load.shift(48).rolling(24).mean()
    frame["hour"] = load.index.hour
    frame["weekday"] = load.index.day_of_week
    frame = frame.dropna()
    test = frame.index >= frame.index[-1] - pd.Timedelta(days=28)
    features = frame.drop(columns="y")
    model = RandomForestRegressor(n_estimators=60, min_samples_leaf=3, random_state=0, n_jobs=1)
    model.fit(features[~test], frame["y"][~test])
    actual = frame["y"][test].to_numpy()
    forecast = model.predict(features[test])
    naive = frame["lag_168"][test].to_numpy()
    r2 = 1 - np.sum((actual - forecast) ** 2) / np.sum((actual - actual.mean()) ** 2)
    assert r2 > 0.8
    assert np.abs(actual - forecast).sum() < np.abs(actual - naive).sum()
    # ... and not noise-free either.
    assert r2 < 0.995


# ---------------------------------------------------------------------------------------------
# Speed


def test_five_customers_for_a_year_generate_quickly():
    started = time.perf_counter()
    sizes = [
        sum(map(len, generate_customer_files(c, end=END, days=365).values()))
        for c in DEMO_CUSTOMERS[:5]
    ]
    elapsed = time.perf_counter() - started
    assert min(sizes) > 1_000_000
    assert elapsed < 30, f"{elapsed:.1f} s"

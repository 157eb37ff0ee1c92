"""benchmarks.real_load: real series become landed customers the product accepts, and scoring.

The SimBench tests run on a small stand-in of LoadProfile.csv written here in the same layout
(``;``, naive Europe/Berlin times with the spring gap and the repeated autumn hour,
``_qload``/``_pload`` pairs); the checks against the real file skip unless its wheel was
already downloaded into ``benchmarks/.work/wheels`` (tests download nothing).
"""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import real_load
from benchmarks.real_load import (
    CUSTOMERS,
    RealCustomer,
    landed_files,
    origins_for,
    pooled_figures,
    read_simbench_profiles,
    scaled_energy,
    score_forecast,
    vendor_files,
)
from forecast_assets.assets.raw import RawLoadConfig, validate_files
from forecast_assets.customers import validate_customer_id
from forecast_core.vendors import parse_meter_file
from resources.storage import LocalObjectStore, join_uri

WHEELS = Path(__file__).resolve().parents[1] / "benchmarks" / ".work" / "wheels"


def simbench_stand_in(days: list[str]) -> bytes:
    """LoadProfile.csv's layout for the given local days: 15-minute rows of naive local time,
    the clock as it was in Europe/Berlin (92 rows on 27 March 2016, 100 on 30 October)."""
    rows = []
    for day in days:
        start = pd.Timestamp(day, tz="Europe/Berlin")
        utc = pd.date_range(start, start + pd.DateOffset(days=1), freq="15min", inclusive="left")
        utc = utc[utc.normalize() == start]  # a local day is 23, 24 or 25 hours long
        rows += list(utc.strftime("%d.%m.%Y %H:%M"))
    n = len(rows)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "time": rows,
            "H0-A_qload": rng.uniform(-0.1, 0.1, n).round(6),
            "H0-A_pload": rng.uniform(0.05, 1.0, n).round(6),
            "G1-A_qload": rng.uniform(0, 0.1, n).round(6),
            "G1-A_pload": rng.uniform(0.02, 1.0, n).round(6),
            "hv_urban_pload": rng.uniform(0.07, 0.43, n).round(6),
            "hv_urban_qload": rng.uniform(0, 0.1, n).round(6),
        }
    )
    return frame.to_csv(sep=";", index=False).encode()


SPRING = ["2016-03-26", "2016-03-27", "2016-03-28"]
AUTUMN = ["2016-10-29", "2016-10-30", "2016-10-31"]


def test_stand_in_has_the_clock_changes_of_the_real_file():
    text = simbench_stand_in(SPRING + AUTUMN).decode().splitlines()[1:]
    per_day = pd.Series([line[:10] for line in text]).value_counts()
    assert per_day["27.03.2016"] == 92 and per_day["30.10.2016"] == 100
    assert per_day["26.03.2016"] == 96


def test_simbench_times_are_placed_in_utc_by_their_order():
    power = read_simbench_profiles(simbench_stand_in(AUTUMN), ["H0-A", "hv_urban"])
    # The repeated autumn hour: 02:00 summer time (00:00 UTC), then 02:00 winter (01:00 UTC).
    autumn = power.index[(power.index >= "2016-10-30 00:00Z") & (power.index < "2016-10-30 02:00Z")]
    assert len(autumn) == 8
    assert power.index[0] == pd.Timestamp("2016-10-28 22:00", tz="UTC")
    assert list(power.columns) == ["H0-A", "hv_urban"]
    spring = read_simbench_profiles(simbench_stand_in(SPRING), ["H0-A"]).index
    assert spring[0] == pd.Timestamp("2016-03-25 23:00", tz="UTC")
    # 01:45 local (CET) is followed by 03:00 local (CEST): 00:45 then 01:00 UTC.
    day = spring[spring.normalize() == pd.Timestamp("2016-03-27", tz="UTC")]
    assert len(day) == 96  # a UTC day is whole although the local day had 92 rows


def test_a_gap_in_the_clock_is_refused():
    with pytest.raises(ValueError, match="15-minute grid"):
        read_simbench_profiles(simbench_stand_in(["2016-03-26", "2016-03-28"]), ["H0-A"])


def test_a_shuffled_clock_is_refused():
    lines = simbench_stand_in(["2016-03-26", "2016-03-27"]).decode().splitlines()
    lines[10], lines[11] = lines[11], lines[10]
    with pytest.raises(ValueError):
        read_simbench_profiles(("\n".join(lines) + "\n").encode(), ["H0-A"])


def test_scaling_gives_the_stated_energy():
    power = pd.Series([0.5, 1.0, 0.25, 0.25])
    energy = scaled_energy(power, 3_500.0, 15)
    assert energy.sum() == pytest.approx(3_500.0)
    assert energy.iloc[1] == pytest.approx(2 * energy.iloc[0])


def test_customers_have_valid_ids_and_cover_every_kind():
    for customer in CUSTOMERS:
        assert validate_customer_id(customer.customer_id) == customer.customer_id
    kinds = {c.kind for c in CUSTOMERS}
    assert kinds == {"household", "commercial", "agricultural", "grid-aggregate", "national-demand"}
    assert len([c for c in CUSTOMERS if c.source == "simbench"]) >= 12
    assert {c.vendor for c in CUSTOMERS} == {"enerlog", "gridsense", "kilowatch"}
    quick = real_load.pick_customers(2)
    assert [c.kind for c in quick] == ["household", "commercial"]


def land(tmp_path: Path, customer_id: str, files: dict[str, bytes]) -> LocalObjectStore:
    store = LocalObjectStore(root=str(tmp_path / "s3"))
    prefix = store.uri("landing", customer_id) + "/"
    for name, data in files.items():
        store.write_bytes(join_uri(prefix, name), data)
    return store


@pytest.mark.parametrize("vendor", ["enerlog", "kilowatch", "gridsense"])
def test_files_pass_raw_validation_and_parse_back_to_the_same_energy(tmp_path, vendor):
    power = read_simbench_profiles(simbench_stand_in(AUTUMN), ["H0-A", "hv_urban"])
    big = RealCustomer("sb-hv-urban", "simbench", "hv_urban", "grid-aggregate", vendor, 100e6)
    # Scaled as the benchmark scales a year, so these few days are at its real power.
    energy = scaled_energy(power["hv_urban"], big.annual_kwh * len(power) / 35_136, 15)
    files = vendor_files(big, energy, 15)
    assert sorted(files) == ["2016-10.csv"]
    store = land(tmp_path, big.customer_id, files)
    validated = validate_files(store, big.customer_id, RawLoadConfig(), at=datetime.now(UTC))
    assert {f["vendor"] for f in validated.files} == {vendor}
    parsed = pd.concat(parse_meter_file(data, name) for name, data in sorted(files.items()))
    parsed = parsed.set_index("timestamp")["energy_kwh"].sort_index()
    assert parsed.index.equals(energy.index)
    np.testing.assert_allclose(parsed.to_numpy(), energy.to_numpy(), rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("days", [SPRING, AUTUMN])
def test_enerlog_writes_the_simbench_clock_back_exactly(days):
    data = simbench_stand_in(days)
    power = read_simbench_profiles(data, ["H0-A"])
    customer = RealCustomer("sb-h0-a", "simbench", "H0-A", "household", "enerlog", 3_500)
    files = vendor_files(customer, scaled_energy(power["H0-A"], 20.0, 15), 15)
    written = [
        line.split(";")[0]
        for name in sorted(files)
        for line in files[name].decode().splitlines()[1:]
    ]
    original = [line.split(";")[0] for line in data.decode().splitlines()[1:]]
    assert written == original


def test_only_readings_before_the_origin_are_landed():
    power = read_simbench_profiles(simbench_stand_in(AUTUMN), ["G1-A"])
    customer = RealCustomer("sb-g1-a", "simbench", "G1-A", "commercial", "gridsense", 200_000)
    energy = scaled_energy(power["G1-A"], 2_000.0, 15)
    origin = pd.Timestamp("2016-10-30 06:00", tz="UTC")
    files = landed_files(customer, energy, 15, origin)
    parsed = pd.concat(parse_meter_file(d, n) for n, d in files.items())
    assert parsed["timestamp"].max() == origin - pd.Timedelta(minutes=15)
    assert parsed["energy_kwh"].sum() == pytest.approx(energy[energy.index < origin].sum(), 1e-6)


def test_origins_are_spread_and_at_the_issue_hour():
    household = CUSTOMERS[0]
    two = origins_for(household, 2)
    assert [o.strftime("%Y-%m-%d %H:%M") for o in two] == ["2016-03-16 06:00", "2016-12-08 06:00"]
    six = origins_for(household, 6)
    assert [f"{o:%m-%d}" for o in six] == ["03-16", "05-13", "07-04", "08-27", "10-18", "12-08"]
    # Past six, the origins between them are added, in time order.
    eight = [f"{o:%m-%d}" for o in origins_for(household, 8)]
    assert eight == ["03-16", "04-14", "05-13", "07-04", "08-27", "10-18", "12-08", "12-20"]
    assert len(origins_for(household, 99)) == 12
    taylor = next(c for c in CUSTOMERS if c.source == "taylor")
    assert all(o.hour == 6 for o in origins_for(taylor, 5))


def test_scoring_compares_model_and_naive_on_the_same_hours():
    hours = pd.date_range("2016-05-01", periods=24 * 14, freq="1h", tz="UTC")
    actual = pd.Series(10.0 + (np.arange(len(hours)) % 24), index=hours)
    usual = actual.iloc[-30]
    actual.iloc[-30] = 100.0  # a spike naive cannot see
    origin = hours[-48]
    forecast = pd.DataFrame(
        {"timestamp": hours[-48:], "device_id": "d", "energy_kwh": actual.iloc[-48:] * 1.1}
    )
    forecast.loc[forecast.index[-1], "energy_kwh"] = np.nan  # one hour the model did not give
    scored = score_forecast(forecast.dropna(), actual, origin)
    assert scored["hours_scored"] == 47 and scored["hours_without_forecast"] == 1
    assert scored["model"]["bias_pct"] == pytest.approx(10.0)
    assert scored["model"]["wape_pct"] == pytest.approx(10.0)
    naive_error = 100.0 - usual  # only the spike hour differs from last week
    assert scored["naive"]["wape_pct"] == pytest.approx(
        naive_error / scored["actual_kwh"] * 100.0, rel=1e-9
    )
    pooled = pooled_figures([{"customer_id": "x", "kind": "household", "frame": scored["_frame"]}])
    ratio = pooled["customers"]["x"]["wape_ratio"]
    assert ratio == pytest.approx(scored["model"]["wape_pct"] / scored["naive"]["wape_pct"])
    assert pooled["pooled_wape_ratio"] == pytest.approx(ratio)
    assert pooled["customers_worse_than_naive"] == (["x"] if ratio > 1 else [])
    # A forecast without intervals has no coverage to report.
    assert scored["coverage_p10_p90"] is None and pooled["coverage_p10_p90_hours"] is None


def test_coverage_counts_the_hours_inside_the_published_interval():
    hours = pd.date_range("2016-05-01", periods=24 * 14, freq="1h", tz="UTC")
    # Within 9.5-10.5 kWh, and not weekly, so naive has errors too.
    actual = pd.Series(10.0 + 0.5 * np.sin(np.arange(len(hours)) * 0.1), index=hours)
    origin = hours[-48]
    forecast = pd.DataFrame(
        {
            "timestamp": hours[-48:],
            "device_id": "d",
            "energy_kwh": 10.0,
            "p10_kwh": [9.0] * 36 + [10.6] * 12,  # the last 12 hours' interval misses
            "p90_kwh": 11.0,
        }
    )
    scored = score_forecast(forecast, actual, origin)
    assert scored["coverage_p10_p90"] == pytest.approx(36 / 48)
    rows = [
        {"customer_id": "x", "kind": "household", "frame": scored["_frame"], "model_kind": k}
        for k in ("forest", "lightgbm")
    ]
    pooled = pooled_figures(rows)
    assert pooled["coverage_p10_p90_hours"] == pytest.approx(36 / 48)
    assert pooled["customers"]["x"]["model_kinds"] == {"forest": 1, "lightgbm": 1}
    assert pooled["forecasts_by_model_kind"] == {"forest": 1, "lightgbm": 1}
    assert pooled["goals"]["coverage_met"] is True  # 75 % is within 70-90 %


def _simbench_wheel() -> Path:
    found = sorted(WHEELS.glob("simbench-*.whl"))
    if not found:
        pytest.skip(
            "the simbench wheel is not in benchmarks/.work/wheels (tests download nothing; "
            "`pip download --no-deps simbench -d benchmarks/.work/wheels` fetches it)"
        )
    return found[-1]


@pytest.mark.slow
def test_every_real_simbench_customer_passes_raw_validation(tmp_path):
    """The real file at the benchmark's scales, a whole year, against the product's bounds."""
    with zipfile.ZipFile(_simbench_wheel()) as wheel:
        data = wheel.read(real_load.SIMBENCH_CSV)
    simbench = [c for c in CUSTOMERS if c.source == "simbench"]
    power = read_simbench_profiles(data, [c.profile for c in simbench])
    assert len(power) == 366 * 96
    for customer in simbench:
        energy = scaled_energy(power[customer.profile], customer.annual_kwh, 15)
        files = vendor_files(customer, energy, 15)
        store = land(tmp_path / customer.customer_id, customer.customer_id, files)
        validated = validate_files(store, customer.customer_id, at=datetime.now(UTC))
        assert sum(f["rows"] for f in validated.files) == 366 * 96, customer.customer_id
        total = sum(parse_meter_file(d, n)["energy_kwh"].sum() for n, d in files.items())
        assert total == pytest.approx(customer.annual_kwh, rel=1e-5), customer.customer_id


def test_taylor_customer_passes_raw_validation(tmp_path):
    import importlib.util

    from benchmarks.run import taylor_values

    if importlib.util.find_spec("pmdarima") is None and not list(WHEELS.glob("pmdarima-*.whl")):
        pytest.skip(
            "neither pmdarima (not a project dependency) nor its wheel in benchmarks/.work/wheels "
            "is available (tests download nothing)"
        )
    customer = next(c for c in CUSTOMERS if c.source == "taylor")
    values, _ = taylor_values(WHEELS.parent / "accuracy")
    energy = real_load.taylor_energy(values)
    files = vendor_files(customer, energy, 30)
    store = land(tmp_path, customer.customer_id, files)
    validated = validate_files(store, customer.customer_id, at=datetime.now(UTC))
    assert sum(f["rows"] for f in validated.files) == 4032
    assert energy.mean() * 2 == pytest.approx(real_load.TAYLOR_MEAN_KW)
    parsed = pd.concat(parse_meter_file(d, n) for n, d in files.items())
    assert parsed["energy_kwh"].sum() == pytest.approx(energy.sum(), rel=1e-6)

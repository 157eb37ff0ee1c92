"""A customer's optional weather: its files' format and validation, the features it gives, an
honest backtest with it, and forecasts that say when the horizon had no weather forecast.

The synthetic customer's load rises as it gets colder (heating below 15 °C) on top of a working
week profile, and its weather moves over days as fronts do, so last week's load cannot know
this week's temperature: weather has something real to add.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest

from forecast_assets.landing import classify
from forecast_core.features import (
    WEATHER_FEATURES,
    FeatureSpec,
    FeatureSpecVersionError,
    build_features,
    horizon_weather,
    make_feature_spec,
    normalization_scales,
    regular_grid,
    weather_as_known,
)
from forecast_core.weather import WeatherFileError, conflicts, parse_weather_file, to_interval
from resources.database import Database
from tests.test_assets import FORECAST, MODEL, PRE, RAW, materialize, step_errors

CONTAINERS = Path(__file__).resolve().parents[1] / "containers"
END = pd.Timestamp("2025-03-01T00:00:00Z")
WEATHER_CUSTOMER = "heated-hall"


def load_script(job: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"weather_{job}", CONTAINERS / job / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic(days: int = 84, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hourly load of one meter that depends on temperature, and the observed temperature."""
    rng = np.random.default_rng(seed)
    times = pd.date_range(end=END - pd.Timedelta(hours=1), periods=days * 24, freq="1h")
    fronts = np.repeat(np.cumsum(rng.normal(0, 2.5, days)) * 0.6, 24)
    fronts = pd.Series(fronts).rolling(12, min_periods=1, center=True).mean().to_numpy()
    hour = times.hour.to_numpy()
    temperature = (
        6 + fronts + 4 * np.sin((hour - 9) / 24 * 2 * np.pi) + rng.normal(0, 0.5, len(times))
    )
    profile = np.where((hour >= 7) & (hour <= 19), 1.0, 0.6)
    weekday = np.where(times.dayofweek < 5, 1.0, 0.8)
    heating = 2.5 * np.clip(15 - temperature, 0, None)
    load = (20 * profile * weekday + heating) * (1 + rng.normal(0, 0.03, len(times)))
    series = pd.DataFrame(
        {
            "timestamp": times,
            "device_id": "m1",
            "energy_kwh": load,
            "is_filled": False,
            "is_gap": False,
        }
    )
    weather = pd.DataFrame(
        {
            "timestamp": times,
            "temperature_c": temperature,
            "kind": "observed",
            "issued_at": pd.Series(pd.NaT, index=range(len(times)), dtype="datetime64[ns, UTC]"),
        }
    )
    return series, weather


def weather_csv(weather: pd.DataFrame) -> bytes:
    lines = ["timestamp,temperature_c,kind,issued_at"]
    for row in weather.itertuples(index=False):
        issued = "" if pd.isna(row.issued_at) else row.issued_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        lines.append(
            f"{row.timestamp.strftime('%Y-%m-%dT%H:%M:%SZ')},{row.temperature_c:.2f},"
            f"{row.kind},{issued}"
        )
    return ("\n".join(lines) + "\n").encode()


# --- the format ---------------------------------------------------------------------------------


def test_a_weather_file_reads_offsets_kinds_and_issue_times():
    data = (
        b"timestamp,temperature_c,kind,issued_at\n"
        b"2025-06-01T14:00:00+02:00,21.5,,\n"
        b"2025-06-02T12:00:00Z,19.0,forecast,2025-06-01T06:00:00Z\n"
        b"2025-06-02T12:00:00Z,18.0,forecast,2025-06-02T06:00:00Z\n"
    )
    frame = parse_weather_file(data, "w.csv")
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2025-06-01T12:00:00Z")
    assert frame["kind"].tolist() == ["observed", "forecast", "forecast"]
    assert frame["issued_at"].isna().tolist() == [True, False, False]
    only_required = parse_weather_file(
        b"temperature_c,timestamp\n-3.5,2025-01-01T00:00Z\n", "o.csv"
    )
    assert only_required["kind"].tolist() == ["observed"]


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"timestamp,temperature_c\nyesterday,10\n", "unreadable timestamp at line 2"),
        (b"timestamp,temperature_c\n2025-06-01T12:00:00,10\n", "without a UTC offset at line 2"),
        (b"timestamp,temperature_c\n2025-06-01T12:00Z,75.2\n", "outside -60..60"),
        (b"timestamp,temperature_c\n2025-06-01T12:00Z,warm\n", "not a number at line 2"),
        (
            b"timestamp,temperature_c\n2025-06-01T12:00Z,10\n2025-06-01T14:00+02:00,11\n",
            "duplicate observed readings for 2025-06-01T12:00:00+00:00 at lines 2, 3",
        ),
        (b"timestamp,temperature_c,kind\n2025-06-01T12:00Z,10,forecast\n", "without issued_at"),
        (b"timestamp,temperature_c,kind\n2025-06-01T12:00Z,10,guess\n", "kind 'guess'"),
        (b"timestamp,temp\n2025-06-01T12:00Z,10\n", "is not a weather header"),
        (b"timestamp,temperature_c\n2025-06-01T12:00Z,10", "does not end with a line break"),
    ],
)
def test_a_bad_weather_file_is_refused_naming_file_and_problem(body: bytes, problem: str):
    with pytest.raises(WeatherFileError) as caught:
        parse_weather_file(body, "s3://b/landing/c/weather/w.csv")
    assert str(caught.value).startswith("weather file 's3://b/landing/c/weather/w.csv': ")
    assert problem in str(caught.value)


def test_an_observation_in_the_future_is_refused_but_a_forecast_is_not():
    now = pd.Timestamp("2025-06-01T12:00Z")
    forecast = (
        b"timestamp,temperature_c,kind,issued_at\n2025-06-03T00:00Z,9,forecast,2025-06-01T06:00Z\n"
    )
    assert len(parse_weather_file(forecast, "f.csv", latest=now)) == 1
    with pytest.raises(WeatherFileError, match="observation in the future"):
        parse_weather_file(b"timestamp,temperature_c\n2025-06-03T00:00Z,9\n", "o.csv", latest=now)


def test_two_files_that_disagree_on_a_reading_conflict_but_repeats_do_not():
    a = parse_weather_file(b"timestamp,temperature_c\n2025-06-01T12:00Z,10\n", "a.csv")
    same = parse_weather_file(b"timestamp,temperature_c\n2025-06-01T12:00Z,10\n", "b.csv")
    other = parse_weather_file(b"timestamp,temperature_c\n2025-06-01T12:00Z,12\n", "c.csv")
    assert conflicts({"a.csv": a, "b.csv": same}) == []
    (line,) = conflicts({"a.csv": a, "c.csv": other})
    assert "a.csv and c.csv" in line and "2025-06-01T12:00:00+00:00" in line


def test_the_table_is_the_interval_mean_per_series_with_short_gaps_filled():
    readings = parse_weather_file(
        b"timestamp,temperature_c,kind,issued_at\n"
        b"2025-06-01T00:00Z,10,,\n2025-06-01T00:30Z,12,,\n2025-06-01T03:00Z,14,,\n"
        b"2025-06-01T05:00Z,20,forecast,2025-05-31T06:00Z\n",
        "w.csv",
    )
    table = to_interval(readings, "1h")
    observed = table[table["kind"] == "observed"].set_index("timestamp")["temperature_c"]
    assert observed.tolist() == [11.0, 12.0, 13.0, 14.0]  # a mean, then a gap of 2 h filled
    assert len(table[table["kind"] == "forecast"]) == 1


def test_weather_files_are_never_taken_for_meter_files():
    assert classify("weather/2025.csv").kind == "weather"
    assert classify("Weather/deep/forecast.csv").kind == "weather"
    assert classify("weather/notes.txt").kind == "bad"
    assert classify("weather/.DS_Store").kind == "skip"
    assert classify("meters/weather.csv").kind == "file"  # only the weather/ folder
    assert classify("weather.csv").kind == "file"


# --- features -----------------------------------------------------------------------------------


def spec_for(series: pd.DataFrame, weather: bool) -> FeatureSpec:
    return make_feature_spec(
        resolution=pd.Timedelta(hours=1),
        horizon_hours=48,
        timezone="UTC",
        holiday_country="DE",
        devices=["m1"],
        weather=weather,
    )


def test_a_customer_without_weather_has_exactly_the_features_it_had():
    series, _ = synthetic(days=35)
    plain = spec_for(series, weather=False)
    assert not set(WEATHER_FEATURES) & set(plain.feature_names(24))
    grid = regular_grid(series, plain)
    design = build_features(grid, plain, normalization_scales(series), 24)
    assert list(design.features.columns) == plain.feature_names(24)
    # A spec saved before weather existed (version 4) is read as one without weather.
    saved = json.loads(plain.to_json())
    del saved["weather"]
    saved["version"] = 4
    assert FeatureSpec.from_json(json.dumps(saved)) == plain
    saved["version"] = 3
    with pytest.raises(FeatureSpecVersionError):
        FeatureSpec.from_json(json.dumps(saved))


def test_weather_after_the_cutoff_is_a_forecast_not_the_observation():
    series, weather = synthetic(days=35)
    spec = spec_for(series, weather=True)
    index = pd.DatetimeIndex(weather["timestamp"])
    observed = weather["temperature_c"].to_numpy()
    for bucket, sigma in ((24, 1.0), (48, 1.5)):
        known = weather_as_known(weather, index, spec, bucket)
        error = known - observed
        assert np.all(error != 0)
        assert np.std(error) == pytest.approx(sigma, rel=0.25)
    # With an archived forecast issued before the origin, that forecast is what is known.
    target = index[-1]
    archived = pd.DataFrame(
        {
            "timestamp": [target, target],
            "temperature_c": [-5.0, 30.0],
            "kind": "forecast",
            "issued_at": [target - pd.Timedelta(hours=30), target - pd.Timedelta(hours=2)],
        }
    )
    both = pd.concat([weather, archived], ignore_index=True)
    known = weather_as_known(both, pd.DatetimeIndex([target]), spec, 24)
    assert known[0] == -5.0  # the later issue came after the origin 23 h before the target


def test_the_horizon_takes_forecasts_and_fills_and_flags_the_rest():
    _, weather = synthetic(days=14)
    origin = weather["timestamp"].max() + pd.Timedelta(hours=1)
    future = pd.date_range(origin, periods=48, freq="1h")
    forecast = pd.DataFrame(
        {
            "timestamp": future[:20],
            "temperature_c": 3.0,
            "kind": "forecast",
            "issued_at": origin - pd.Timedelta(hours=1),
        }
    )
    values, sources = horizon_weather(pd.concat([weather, forecast]), future, origin)
    assert list(sources[:20]) == ["forecast"] * 20 and set(sources[20:]) == {"none_for_horizon"}
    assert np.all(values[:20] == 3.0)
    recent = weather[weather["timestamp"] >= origin - pd.Timedelta(days=7)]
    at_hour = recent.groupby(recent["timestamp"].dt.hour)["temperature_c"].mean()
    assert values[20:] == pytest.approx(at_hour.reindex(future[20:].hour).to_numpy())


# --- training and inference ---------------------------------------------------------------------

HPS = {"n_estimators": 30, "backtest_days": 14, "timezone": "UTC"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Any]:
    """The synthetic customer trained without and with its weather (observations only)."""
    train = load_script("training", "train.py")
    base = tmp_path_factory.mktemp("weather-training")
    series, weather = synthetic()
    (base / "train").mkdir()
    (base / "weather").mkdir()
    series.to_parquet(base / "train" / "load.parquet")
    weather.to_parquet(base / "weather" / "weather.parquet")
    hp = {**train.DEFAULTS, **HPS}
    out: dict[str, Any] = {"base": base, "series": series, "weather": weather}
    for name, weather_dir in (("without", None), ("with", base / "weather")):
        report = train.train(
            WEATHER_CUSTOMER,
            base / "train",
            "load.parquet",
            base / name / "model",
            base / name / "output",
            hp,
            log=lambda line: None,
            weather_dir=weather_dir,
        )
        summary = json.loads((base / name / "model" / "metrics.json").read_text())
        out[name] = {"report": report, "summary": summary, "model": base / name / "model"}
    return out


def test_weather_improves_the_backtest_of_a_temperature_driven_load(trained):
    without, with_ = trained["without"]["summary"], trained["with"]["summary"]
    assert without["weather"]["used"] is False
    assert with_["weather"]["used"] is True
    assert with_["weather"]["coverage_of_history"] == 1.0
    assert "simulated forecast error" in with_["weather"]["backtest_weather"]
    assert set(WEATHER_FEATURES) <= set(with_["features"]["24"])
    assert not set(WEATHER_FEATURES) & set(without["features"]["24"])
    # The same hours, the same naive baselines: only the weather differs.
    assert with_["baseline_seasonal_naive"] == without["baseline_seasonal_naive"]
    for kind in ("forest", "lightgbm"):
        before, after = without["candidates"][kind]["wape"], with_["candidates"][kind]["wape"]
        assert after < 0.85 * before, (kind, before, after)
    assert with_["model"]["wape"] < 0.85 * without["model"]["wape"]
    assert trained["with"]["report"]["weather_features"] is True


def forecast_with(
    trained, tmp_path: Path, weather: pd.DataFrame | None
) -> tuple[dict, pd.DataFrame]:
    predict = load_script("inference", "predict.py")
    shutil.make_archive(str(tmp_path / "model" / "model"), "gztar", trained["with"]["model"])
    history = tmp_path / "history"
    history.mkdir()
    trained["series"].to_parquet(history / "load.parquet")
    weather_dir = None
    if weather is not None:
        weather_dir = tmp_path / "weather"
        weather_dir.mkdir()
        weather.to_parquet(weather_dir / "weather.parquet")
    lines: list[str] = []
    report = predict.predict(
        WEATHER_CUSTOMER,
        "v1",
        tmp_path / "model",
        history,
        tmp_path / "out",
        48.0,
        END,
        log=lines.append,
        weather_dir=weather_dir,
    )
    report["log"] = lines
    return report, pd.read_parquet(tmp_path / "out" / "forecast.parquet")


def test_a_forecast_with_a_weather_forecast_says_so(trained, tmp_path):
    weather = trained["weather"]
    future = pd.date_range(END, periods=48, freq="1h")
    issued = pd.Series(END - pd.Timedelta(hours=2), index=range(48))
    ahead = pd.DataFrame(
        {"timestamp": future, "temperature_c": 2.0, "kind": "forecast", "issued_at": issued}
    )
    report, forecast = forecast_with(trained, tmp_path, pd.concat([weather, ahead]))
    assert set(forecast["weather_input"]) == {"forecast"}
    assert report["weather_input"] == "weather forecast for all 48 h"
    assert report["weather_forecast_hours"] == 48
    assert report["log"] == []
    # Colder than the history's last week: a heating load forecasts more.
    warm = ahead.assign(temperature_c=14.0)
    _, warmer = forecast_with(trained, tmp_path / "warm", pd.concat([weather, warm]))
    assert forecast["energy_kwh"].sum() > 1.1 * warmer["energy_kwh"].sum()


def test_weather_history_without_a_forecast_still_forecasts_and_says_so(trained, tmp_path):
    report, forecast = forecast_with(trained, tmp_path, trained["weather"])
    assert len(forecast) == 48 and forecast["energy_kwh"].notna().all()
    assert set(forecast["weather_input"]) == {"none_for_horizon"}
    assert report["weather_input"].startswith("none for horizon: 48 of 48 h")
    assert report["weather_forecast_hours"] == 0
    assert report["log"] == [f"customer '{WEATHER_CUSTOMER}': {report['weather_input']}"]
    # No weather at all reaches the job: still a forecast, flagged the same way.
    report, forecast = forecast_with(trained, tmp_path / "none", None)
    assert forecast["energy_kwh"].notna().all()
    assert set(forecast["weather_input"]) == {"none_for_horizon"}


# --- through the graph --------------------------------------------------------------------------


def land_synthetic(store, customer: str, weather_file: bytes | None) -> None:
    """The synthetic load as a gridsense export (15-minute Wh, UTC) and a weather file."""
    series, weather = synthetic(days=60)
    lines = ["timestamp_utc,meter_id,energy_wh"]
    for row in series.itertuples(index=False):
        for quarter in range(4):
            at = row.timestamp + pd.Timedelta(minutes=15 * quarter)
            lines.append(f"{at.strftime('%Y-%m-%dT%H:%M:%SZ')},m1,{row.energy_kwh * 250:.1f}")
    store.write_bytes(
        store.uri("landing", customer, "gridsense.csv"), ("\n".join(lines) + "\n").encode()
    )
    store.write_bytes(
        store.uri("landing", customer, "weather", "observed.csv"),
        weather_csv(weather) if weather_file is None else weather_file,
    )


def test_a_bad_weather_file_fails_raw_load_naming_customer_file_and_problem(
    instance, local_resources, store
):
    bad = b"timestamp,temperature_c\n2025-02-01T00:00:00Z,12.5\n2025-02-01T01:00:00Z,99.0\n"
    land_synthetic(store, WEATHER_CUSTOMER, bad)
    result = materialize(instance, local_resources, WEATHER_CUSTOMER, [RAW])
    assert not result.success
    message = step_errors(result)
    uri = store.uri("landing", WEATHER_CUSTOMER, "weather", "observed.csv")
    assert f"customer '{WEATHER_CUSTOMER}', weather file '{uri}': temperature_c 99" in message
    assert "outside -60..60 °C at line 3" in message


def test_weather_goes_from_landing_to_the_forecast(instance, local_resources, store):
    land_synthetic(store, WEATHER_CUSTOMER, None)
    fast = {"ops": {"models__load_forecast_model": {"config": {**HPS}}}}
    fast["ops"]["models__load_forecast_model"]["config"].pop("timezone")
    result = materialize(
        instance, local_resources, WEATHER_CUSTOMER, [RAW, PRE, MODEL, FORECAST], fast
    )
    assert result.success, step_errors(result)

    raw = result.asset_materializations_for_node("landing__raw_load")[0].metadata
    assert raw["files"].value == 1 and raw["weather_files"].value == 1  # not a meter file
    from forecast_assets import paths, publication

    manifest = json.loads(
        store.read_bytes(
            publication.current(store, "manifests", WEATHER_CUSTOMER).uri(paths.RAW_MANIFEST)  # type: ignore[union-attr]
        )
    )
    assert [f["relative_path"] for f in manifest["weather_files"]] == ["weather/observed.csv"]
    assert [f["vendor"] for f in manifest["files"]] == ["gridsense"]
    preprocessed = publication.current(store, "preprocessed", WEATHER_CUSTOMER)
    assert preprocessed is not None and paths.WEATHER_FILE in preprocessed.files

    model = result.asset_materializations_for_node("models__load_forecast_model")[0].metadata
    assert model["weather_features"].value is True
    assert model["model_kind"].value in ("forest", "lightgbm")

    forecast = result.asset_materializations_for_node("forecasts__load_forecast")[0].metadata
    assert forecast["weather_input"].text.startswith("none for horizon: 48 of 48 h")
    stored = Database().latest_forecast(WEATHER_CUSTOMER)
    assert set(stored["weather_input"]) == {"none_for_horizon"}


@pytest.mark.slow
def test_a_batch_stages_weather_only_for_the_customer_that_has_it(instance, store):
    """A batch of two, one with weather: one job per step; the weather customer's model uses
    it, the other's does not, and each forecast says so."""
    from forecast_assets.definitions import build_definitions
    from tests.conftest import land

    other = "hansa-offices"
    land_synthetic(store, WEATHER_CUSTOMER, None)
    land(store, [other], days=75)
    instance.add_dynamic_partitions("customers", [WEATHER_CUSTOMER, other])
    config = {k: v for k, v in HPS.items() if k != "timezone"}
    job = build_definitions("local", batch_size=2).resolve_job_def("forecast_job")
    result = job.execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": WEATHER_CUSTOMER,
            "dagster/asset_partition_range_end": other,
        },
        run_config={"ops": {"models__load_forecast_model": {"config": config}}},
        raise_on_error=False,
    )
    assert result.success, step_errors(result)
    models = {
        m.partition: m.metadata
        for m in result.asset_materializations_for_node("models__load_forecast_model")
    }
    assert models[WEATHER_CUSTOMER]["weather_features"].value is True
    assert models[other]["weather_features"].value is False
    database = Database()
    assert set(database.latest_forecast(WEATHER_CUSTOMER)["weather_input"]) == {"none_for_horizon"}
    assert set(database.latest_forecast(other)["weather_input"]) == {"not_used"}

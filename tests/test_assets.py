"""Materializations of single partitions in a temporary data home, bad input, and what a failed
step leaves behind."""

import hashlib
import io
import json

import dagster as dg
import pandas as pd
import pytest

from forecast_assets import publication
from forecast_assets.assets import ALL_ASSETS
from forecast_assets.demo import summary_line
from forecast_assets.demo_data import DEMO_CUSTOMERS
from forecast_assets.publication import FORECASTS, MANIFESTS
from resources.database import Database
from resources.storage import LocalObjectStore
from tests.conftest import land, published_snapshot

CUSTOMER = DEMO_CUSTOMERS[1].customer_id  # gridsense: UTC, Wh
RAW = dg.AssetKey(["landing", "raw_load"])
PRE = dg.AssetKey(["preprocessed", "load"])
DEVICES = dg.AssetKey(["warehouse", "devices"])
MODEL = dg.AssetKey(["models", "load_forecast_model"])
FORECAST = dg.AssetKey(["forecasts", "load_forecast"])

FAST_TRAINING = {"n_estimators": 20, "backtest_days": 14}


def materialize(instance, resources, customer, keys, run_config=None) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions("customers", [customer])
    return dg.materialize(
        ALL_ASSETS,
        selection=keys,
        partition_key=customer,
        resources=resources,
        instance=instance,
        run_config=run_config or {},
        raise_on_error=False,
    )


def step_errors(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(
        e.event_specific_data.error.message  # type: ignore[union-attr]
        for e in result.all_events
        if e.is_step_failure
    )


def landing_snapshot(store: LocalObjectStore, customer: str) -> dict[str, str]:
    return {
        o.key: hashlib.sha256(store.read_bytes(o.uri)).hexdigest()
        for o in store.list_objects(store.uri("landing", customer) + "/")
    }


def test_raw_load_records_files_without_changing_them(instance, local_resources, store):
    land(store, [CUSTOMER], days=40)
    before = landing_snapshot(store, CUSTOMER)
    result = materialize(instance, local_resources, CUSTOMER, [RAW])
    assert result.success, step_errors(result)
    assert landing_snapshot(store, CUSTOMER) == before
    published = publication.current(store, MANIFESTS, CUSTOMER)
    assert published is not None
    manifest = json.loads(store.read_bytes(published.uri("raw_load.json")))
    assert {f["relative_path"] for f in manifest["files"]} == {k.rsplit("/", 1)[1] for k in before}
    assert all(f["vendor"] == "gridsense" for f in manifest["files"])
    assert {f["sha256"] for f in manifest["files"]} == set(before.values())
    meta = result.asset_materializations_for_node("landing__raw_load")[0].metadata
    assert meta["files"].value == len(before)
    assert meta["rows"].value == sum(f["rows"] for f in manifest["files"])
    assert meta["devices"].value == DEMO_CUSTOMERS[1].devices


BAD_FILES = {
    "unknown-vendor.csv": (b"time|meter|value\n2025-01-01|a|1\n", "unknown vendor format"),
    "empty.csv": (b"", "is empty"),
    "truncated.csv": (
        b"timestamp_utc,meter_id,energy_wh\n2025-01-01T00:00:00Z,m1,100.0\n2025-01-01T00:15:00Z,m1",
        "truncated",
    ),
    "text-energy.csv": (
        b"timestamp_utc,meter_id,energy_wh\n2025-01-01T00:00:00Z,m1,abc\n",
        "non-numeric energy value 'abc'",
    ),
    "negative.csv": (
        b"timestamp_utc,meter_id,energy_wh\n2025-01-01T00:00:00Z,m1,-5\n",
        "negative energy value",
    ),
    "no-timestamps.csv": (b"meter_id,energy_wh\nm1,100\n", "no timestamp column"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_raw_file_fails_naming_customer_file_and_problem(
    name, instance, local_resources, store
):
    land(store, [CUSTOMER], days=10)
    data, problem = BAD_FILES[name]
    uri = store.uri("landing", CUSTOMER, "extra", name)
    store.write_bytes(uri, data)
    before = landing_snapshot(store, CUSTOMER)
    result = materialize(instance, local_resources, CUSTOMER, [RAW])
    assert not result.success
    message = step_errors(result)
    assert f"customer '{CUSTOMER}', file '{uri}'" in message
    assert problem in message
    assert "1 of " in message  # only the bad file is blamed
    assert landing_snapshot(store, CUSTOMER) == before
    assert publication.current(store, MANIFESTS, CUSTOMER) is None


def test_customer_without_files_fails_clearly(instance, local_resources, store):
    result = materialize(instance, local_resources, "nobody", [RAW])
    assert not result.success
    assert "customer 'nobody': no raw files under s3://" in step_errors(result)


def test_invalid_customer_id_is_refused_before_use(instance, local_resources, store):
    result = materialize(instance, local_resources, "Bad_Customer", [RAW])
    assert not result.success
    assert "invalid customer id 'Bad_Customer'" in step_errors(result)


def test_failed_preprocessing_keeps_last_good_output(instance, local_resources, store):
    land(store, [CUSTOMER], days=30)
    result = materialize(instance, local_resources, CUSTOMER, [RAW, PRE, DEVICES])
    assert result.success, step_errors(result)
    published = published_snapshot(store, CUSTOMER)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"no_duplicate_readings": True, "gap_ratio": True, "plausible_values": True}
    devices = Database().devices(CUSTOMER)
    assert len(devices) == DEMO_CUSTOMERS[1].devices

    # A raw file is rewritten after validation: preprocessing must refuse it...
    victim = store.list_objects(store.uri("landing", CUSTOMER) + "/")[0]
    store.write_bytes(victim.uri, store.read_bytes(victim.uri) + b"\n")
    published[victim.key] = published_snapshot(store, CUSTOMER)[victim.key]
    # (another setting, so that the step cannot reuse its current table and must run its job)
    other_setting = {"ops": {"preprocessed__load": {"config": {"max_fill_gap": "2h"}}}}
    result = materialize(instance, local_resources, CUSTOMER, [PRE], other_setting)
    assert not result.success
    message = step_errors(result)
    assert f"customer '{CUSTOMER}', file '{victim.uri}'" in message
    assert "content changed since it was validated" in message
    # ...and the last good table stays published.
    assert published_snapshot(store, CUSTOMER) == published


def test_model_failing_its_gate_is_recorded_and_the_customer_is_still_forecast(
    instance, local_resources, store
):
    land(store, [CUSTOMER], days=60)
    rejecting = {
        "ops": {
            "models__load_forecast_model": {"config": {**FAST_TRAINING, "max_wape_ratio": 0.01}}
        }
    }
    result = materialize(
        instance, local_resources, CUSTOMER, [RAW, PRE, MODEL, FORECAST], rejecting
    )
    # A rejection is an outcome, not a crash: the run succeeds and says why in one line.
    assert result.success, step_errors(result)
    gate = [e for e in result.get_asset_check_evaluations() if e.check_name == "quality_gate"]
    assert len(gate) == 1 and not gate[0].passed
    assert f"customer '{CUSTOMER}'" in (gate[0].description or "")
    assert "rejected" in (gate[0].description or "")
    warnings = [
        e.message
        for e in instance.all_logs(result.run_id)
        if e.level >= 30 and "REJECTED by its quality gate" in e.message
    ]
    assert len(warnings) == 1 and f"customer '{CUSTOMER}'" in warnings[0]
    assert "model REJECTED" not in summary_line(CUSTOMER, result)
    assert "REJECTED | forecast by seasonal_naive_fallback" in summary_line(CUSTOMER, result)
    versions = Database().model_versions(CUSTOMER)
    assert [v.status for v in versions] == ["Rejected"]

    # With no approved model at all, seasonal naive forecasts, and says so everywhere.
    forecast_meta = result.asset_materializations_for_node("forecasts__load_forecast")[0].metadata
    assert forecast_meta["source"].value == "seasonal_naive_fallback"
    assert forecast_meta["model_version"].value == "seasonal-naive"
    current = publication.current(store, FORECASTS, CUSTOMER)
    assert current is not None
    frame = pd.read_parquet(io.BytesIO(store.read_bytes(current.uri("forecast.parquet"))))
    assert set(frame["source"]) == {"seasonal_naive_fallback"}
    assert set(Database().latest_forecast(CUSTOMER)["source"]) == {"seasonal_naive_fallback"}

    # An approved model, then a rejected one: the previous approved model forecasts.
    fast = {"ops": {"models__load_forecast_model": {"config": FAST_TRAINING}}}
    result = materialize(instance, local_resources, CUSTOMER, [MODEL, FORECAST], fast)
    assert result.success, step_errors(result)
    approved = Database().latest_approved_model(CUSTOMER)
    assert approved is not None
    forecast_meta = result.asset_materializations_for_node("forecasts__load_forecast")[0].metadata
    assert forecast_meta["source"].value == "newest"
    rejecting["ops"]["models__load_forecast_model"]["config"]["n_estimators"] = 21  # new inputs
    result = materialize(instance, local_resources, CUSTOMER, [MODEL, FORECAST], rejecting)
    assert result.success, step_errors(result)
    assert [v.status for v in Database().model_versions(CUSTOMER)][:2] == ["Rejected", "Approved"]
    forecast_meta = result.asset_materializations_for_node("forecasts__load_forecast")[0].metadata
    assert forecast_meta["source"].value == "previous_approved"
    assert forecast_meta["model_version"].value == approved.version
    assert set(Database().latest_forecast(CUSTOMER)["model_version"]) == {approved.version}

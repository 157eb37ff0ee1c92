"""Materializations of single partitions in a temporary data home, bad input, and what a failed
step leaves behind."""

import hashlib
import json

import dagster as dg
import pytest

from forecast_assets.assets import ALL_ASSETS
from forecast_assets.demo import rejected_by_gate, summary_line
from forecast_assets.demo_data import DEMO_CUSTOMERS
from resources.database import Database
from resources.storage import LocalObjectStore
from tests.conftest import land

CUSTOMER = DEMO_CUSTOMERS[1].customer_id  # gridsense: UTC, Wh
RAW = dg.AssetKey(["landing", "raw_load"])
PRE = dg.AssetKey(["preprocessed", "load"])
DEVICES = dg.AssetKey(["warehouse", "devices"])
MODEL = dg.AssetKey(["models", "load_forecast_model"])
FORECAST = dg.AssetKey(["forecasts", "load_forecast"])

FAST_TRAINING = {"n_estimators": 20, "holdout_days": 14}


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
    manifest = json.loads(store.read_bytes(store.uri("manifests", CUSTOMER, "raw_load.json")))
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
    assert not store.exists(store.uri("manifests", CUSTOMER, "raw_load.json"))


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
    published = store.read_bytes(store.uri("preprocessed", CUSTOMER, "load.parquet"))
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"no_duplicate_readings": True, "gap_ratio": True, "plausible_values": True}
    devices = Database().devices(CUSTOMER)
    assert len(devices) == DEMO_CUSTOMERS[1].devices

    # A raw file is rewritten after validation: preprocessing must refuse it...
    victim = store.list_objects(store.uri("landing", CUSTOMER) + "/")[0]
    store.write_bytes(victim.uri, store.read_bytes(victim.uri) + b"\n")
    result = materialize(instance, local_resources, CUSTOMER, [PRE])
    assert not result.success
    message = step_errors(result)
    assert f"customer '{CUSTOMER}', file '{victim.uri}'" in message
    assert "content changed since it was validated" in message
    # ...and the last good table stays published.
    assert store.read_bytes(store.uri("preprocessed", CUSTOMER, "load.parquet")) == published


def test_model_failing_its_gate_blocks_the_forecast(instance, local_resources, store):
    land(store, [CUSTOMER], days=60)
    run_config = {
        "ops": {"models__load_forecast_model": {"config": {**FAST_TRAINING, "min_r2": 0.9999}}}
    }
    result = materialize(
        instance, local_resources, CUSTOMER, [RAW, PRE, MODEL, FORECAST], run_config
    )
    gate = [e for e in result.get_asset_check_evaluations() if e.check_name == "quality_gate"]
    assert len(gate) == 1 and not gate[0].passed
    assert "below the minimum 1.000" in (gate[0].description or "")
    assert not result.asset_materializations_for_node("forecasts__load_forecast")
    # make demo reports this as the gate working, not as a failed customer.
    assert rejected_by_gate(result)
    assert "model REJECTED by its quality gate" in summary_line(CUSTOMER, result)
    versions = Database().model_versions(CUSTOMER)
    assert [v.status for v in versions] == ["Rejected"]
    assert not store.exists(store.uri("forecasts", CUSTOMER, "forecast.parquet"))

    # Forecasting on its own still refuses: there is no approved model.
    result = materialize(instance, local_resources, CUSTOMER, [FORECAST])
    assert not result.success
    assert f"customer '{CUSTOMER}': no approved model" in step_errors(result)

"""Nothing bad is published, nothing good is withheld: checks run before publication, a failed
step leaves every published output as it was (by hashes), unchanged inputs are reused."""

import io

import pandas as pd
import pytest

from forecast_assets import publication
from forecast_assets.publication import FORECASTS, PREPROCESSED
from resources.database import Database, DatabaseWriteError
from resources.storage import LocalObjectStore
from tests.conftest import land, published_snapshot
from tests.test_assets import (
    CUSTOMER,
    FAST_TRAINING,
    FORECAST,
    MODEL,
    PRE,
    RAW,
    materialize,
    step_errors,
)

TRAIN = {"ops": {"models__load_forecast_model": {"config": FAST_TRAINING}}}


def forecast_frame(store: LocalObjectStore) -> pd.DataFrame:
    current = publication.current(store, FORECASTS, CUSTOMER)
    assert current is not None
    return pd.read_parquet(io.BytesIO(store.read_bytes(current.uri("forecast.parquet"))))


def spiky_meter_file() -> bytes:
    """A gridsense file of a meter that reads 100 Wh for two days and then 1 MWh once: physically
    possible (4 MW), so it passes raw validation, but 2,500 times the meter's median."""
    start = pd.Timestamp("2025-10-20", tz="UTC")
    lines = ["timestamp_utc,meter_id,energy_wh"]
    for i in range(192):
        value = 1_000_000 if i == 100 else 100
        lines.append(f"{(start + pd.Timedelta(minutes=15 * i)):%Y-%m-%dT%H:%M:%SZ},spiky-1,{value}")
    return ("\n".join(lines) + "\n").encode()


def test_a_failed_blocking_check_publishes_nothing_and_names_meter_value_and_file(
    instance, local_resources, store
):
    land(store, [CUSTOMER], days=30)
    result = materialize(instance, local_resources, CUSTOMER, [RAW, PRE])
    assert result.success, step_errors(result)
    good_table = publication.current(store, PREPROCESSED, CUSTOMER)
    before = published_snapshot(store, CUSTOMER)

    spiky = store.uri("landing", CUSTOMER, "extra", "spiky.csv")
    store.write_bytes(spiky, spiky_meter_file())
    result = materialize(instance, local_resources, CUSTOMER, [RAW, PRE])
    assert not result.success
    message = step_errors(result)
    assert "failed at preprocessed/load; nothing of theirs was published" in message
    assert "plausible_values failed" in message
    assert f"customer '{CUSTOMER}'" in message
    assert "meter 'spiky-1' 1000.3 kWh at 2025-10-21 01:00 UTC" in message
    assert spiky in message  # where the value came from
    # The check's failure is recorded on the asset, and no materialization of the bad table.
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations["plausible_values"] is False
    assert not result.asset_materializations_for_node("preprocessed__load")
    # Every published output of the customer is exactly as it was (the raw manifest moves on:
    # the new file was validated, and the old manifest version is kept beside it).
    after = published_snapshot(store, CUSTOMER)
    assert {k: v for k, v in after.items() if not k.startswith(("landing/", "manifests/"))} == {
        k: v for k, v in before.items() if not k.startswith(("landing/", "manifests/"))
    }
    assert publication.current(store, PREPROCESSED, CUSTOMER) == good_table


def test_an_implausible_forecast_is_not_published_and_the_last_good_one_stays(
    instance, local_resources, store
):
    land(store, [CUSTOMER], days=60)
    result = materialize(instance, local_resources, CUSTOMER, [RAW, PRE, MODEL, FORECAST], TRAIN)
    assert result.success, step_errors(result)
    before = published_snapshot(store, CUSTOMER)
    stored = Database().latest_forecast(CUSTOMER)

    # Any forecast above 1 % of the meter's own maximum counts as implausible here.
    strict = {"ops": {"forecasts__load_forecast": {"config": {"max_multiple_of_history": 0.01}}}}
    result = materialize(instance, local_resources, CUSTOMER, [FORECAST], strict)
    assert not result.success
    message = step_errors(result)
    assert "forecast_sanity failed" in message and f"customer '{CUSTOMER}'" in message
    assert "nothing of theirs was published and their last good outputs stay" in message
    assert published_snapshot(store, CUSTOMER) == before
    pd.testing.assert_frame_equal(Database().latest_forecast(CUSTOMER), stored)


def test_a_failing_forecast_insert_leaves_file_and_table_agreeing(
    instance, local_resources, store, monkeypatch: pytest.MonkeyPatch
):
    land(store, [CUSTOMER], days=60)
    result = materialize(instance, local_resources, CUSTOMER, [RAW, PRE, MODEL, FORECAST], TRAIN)
    assert result.success, step_errors(result)
    before = published_snapshot(store, CUSTOMER)
    stored = Database().latest_forecast(CUSTOMER)

    def refuse(self, customer, run_id, forecast):
        raise DatabaseWriteError(description=f"customer '{customer}': the database refused")

    monkeypatch.setattr(Database, "replace_forecast", refuse)
    horizon = {"ops": {"forecasts__load_forecast": {"config": {"horizon_hours": 24}}}}
    result = materialize(instance, local_resources, CUSTOMER, [FORECAST], horizon)
    assert not result.success
    assert f"customer '{CUSTOMER}': the database refused" in step_errors(result)
    assert published_snapshot(store, CUSTOMER) == before
    pd.testing.assert_frame_equal(Database().latest_forecast(CUSTOMER), stored)
    assert len(forecast_frame(store)) == len(stored)


def test_an_unchanged_rerun_reuses_every_output_and_runs_no_job(
    instance, local_resources, store, data_home
):
    land(store, [CUSTOMER], days=60)
    keys = [RAW, PRE, MODEL, FORECAST]
    first = materialize(instance, local_resources, CUSTOMER, keys, TRAIN)
    assert first.success, step_errors(first)
    jobs = sorted(p.name for p in (data_home / "jobs").iterdir())
    assert len(jobs) == 3
    before = published_snapshot(store, CUSTOMER)
    versions = Database().model_versions(CUSTOMER)

    again = materialize(instance, local_resources, CUSTOMER, keys, TRAIN)
    assert again.success, step_errors(again)
    assert sorted(p.name for p in (data_home / "jobs").iterdir()) == jobs
    assert published_snapshot(store, CUSTOMER) == before
    assert Database().model_versions(CUSTOMER) == versions
    for node in ("preprocessed__load", "models__load_forecast_model", "forecasts__load_forecast"):
        metadata = again.asset_materializations_for_node(node)[0].metadata
        assert metadata["reused"].value is True, node
        assert "reused" in str(metadata["reused_note"].value)

    # A changed setting is a changed input: that step and the ones after it run again.
    retrain = {
        "ops": {"models__load_forecast_model": {"config": {**FAST_TRAINING, "n_estimators": 21}}}
    }
    third = materialize(instance, local_resources, CUSTOMER, keys, retrain)
    assert third.success, step_errors(third)
    assert len(list((data_home / "jobs").iterdir())) == 5
    assert len(Database().model_versions(CUSTOMER)) == len(versions) + 1
    pre = third.asset_materializations_for_node("preprocessed__load")[0].metadata
    assert pre["reused"].value is True


def test_nothing_published_means_a_clear_error_naming_the_step_to_run(
    instance, local_resources, store
):
    result = materialize(instance, local_resources, CUSTOMER, [FORECAST])
    assert not result.success
    message = step_errors(result)
    assert f"customer '{CUSTOMER}': nothing published at s3://" in message
    assert "materialize preprocessed/load first" in message

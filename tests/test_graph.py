"""The whole graph for two customers through forecast_job, as `make demo` runs it."""

import dagster as dg
import pandas as pd
import pytest

from forecast_assets.definitions import build_definitions
from forecast_assets.demo import summary_line
from forecast_assets.demo_data import DEMO_CUSTOMERS
from resources.database import Database
from tests.conftest import land

# enerlog (naive local time, W, decimal comma) and kilowatch (offsets, kWh, tabs).
CUSTOMERS = [DEMO_CUSTOMERS[0], DEMO_CUSTOMERS[2]]


@pytest.mark.slow
def test_forecast_job_for_two_customers(instance, data_home, store):
    land(store, [c.customer_id for c in CUSTOMERS], days=75)
    defs = build_definitions("local")
    job = defs.resolve_job_def("forecast_job")
    instance.add_dynamic_partitions("customers", [c.customer_id for c in CUSTOMERS])
    database = Database()
    for customer in CUSTOMERS:
        result = job.execute_in_process(
            instance=instance,
            partition_key=customer.customer_id,
            run_config={"ops": {"models__load_forecast_model": {"config": {"n_estimators": 40}}}},
            raise_on_error=False,
        )
        assert result.success, summary_line(customer.customer_id, result)
        materialized = {
            e.asset_key.to_user_string() for e in result.get_asset_materialization_events()
        }
        assert materialized == {
            "landing/raw_load",
            "preprocessed/load",
            "warehouse/devices",
            "models/load_forecast_model",
            "forecasts/load_forecast",
        }
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks["quality_gate"] is True
        assert checks["no_duplicate_readings"] and checks["plausible_values"]

        model_meta = {
            e.step_materialization_data.materialization.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
            for e in result.get_asset_materialization_events()
        }
        meta = model_meta["models/load_forecast_model"]
        for key in (
            "job_name",
            "job_arn",
            "billable_seconds",
            "model_uri",
            "model_r2",
            "baseline_wape",
            "holdout",
        ):
            assert key in meta, key
        assert meta["model_wape"].value < meta["baseline_wape"].value
        assert len(meta["holdout"].value.records) >= 14
        pre = model_meta["preprocessed/load"]
        assert pre["devices"].value == customer.devices
        assert pre["rows"].value > 70 * 24 * customer.devices

        # The registry, the devices table and the forecasts table agree with the files.
        assert len(database.devices(customer.customer_id)) == customer.devices
        approved = database.latest_approved_model(customer.customer_id)
        assert approved is not None and approved.gate_passed
        assert store.exists(approved.model_uri)
        forecast = database.latest_forecast(customer.customer_id)
        assert len(forecast) == 48 * customer.devices
        assert set(forecast["model_version"]) == {approved.version}
        published = pd.read_parquet(
            data_home
            / "s3"
            / "forecast-assets"
            / "forecasts"
            / customer.customer_id
            / "forecast.parquet"
        )
        assert len(published) == len(forecast)
        assert "gate PASSED" in summary_line(customer.customer_id, result)

    # Each customer's outputs live under its own prefixes.
    assert {o.key.split("/")[1] for o in store.list_objects(store.uri("forecasts") + "/")} == {
        c.customer_id for c in CUSTOMERS
    }
    assert isinstance(defs, dg.Definitions)

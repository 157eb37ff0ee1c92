"""The whole graph for several customers through forecast_job, as `make demo` runs it: one
customer's model fails its gate, and every customer still ends with a forecast that says where
it came from."""

import io

import dagster as dg
import pandas as pd
import pytest

from forecast_assets import publication
from forecast_assets.definitions import build_definitions
from forecast_assets.demo import summary_line
from forecast_assets.demo_data import DEMO_CUSTOMERS
from forecast_assets.publication import FORECASTS
from resources.database import Database
from tests.conftest import land

# enerlog (naive local time, W, decimal comma) and kilowatch (offsets, kWh, tabs).
CUSTOMERS = [DEMO_CUSTOMERS[0], DEMO_CUSTOMERS[2]]
# gridsense (UTC, Wh), whose model is held to a gate no model passes.
REJECTED = DEMO_CUSTOMERS[1]


@pytest.mark.slow
def test_forecast_job_for_several_customers_one_with_a_failing_model(instance, data_home, store):
    land(store, [c.customer_id for c in [*CUSTOMERS, REJECTED]], days=75)
    defs = build_definitions("local")
    job = defs.resolve_job_def("forecast_job")
    instance.add_dynamic_partitions("customers", [c.customer_id for c in [*CUSTOMERS, REJECTED]])
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
            "backtest",
        ):
            assert key in meta, key
        assert meta["model_wape"].value < meta["baseline_wape"].value
        assert len(meta["backtest"].value.records) >= 14
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
        assert set(forecast["source"]) == {"newest"}
        current = publication.current(store, FORECASTS, customer.customer_id)
        assert current is not None
        published = pd.read_parquet(io.BytesIO(store.read_bytes(current.uri("forecast.parquet"))))
        assert len(published) == len(forecast)
        assert set(published["source"]) == {"newest"}
        assert "APPROVED | forecast by newest" in summary_line(customer.customer_id, result)

    # The third customer's model fails its gate: recorded, not a crash, and it is still forecast.
    result = job.execute_in_process(
        instance=instance,
        partition_key=REJECTED.customer_id,
        run_config={
            "ops": {
                "models__load_forecast_model": {
                    "config": {"n_estimators": 40, "max_wape_ratio": 0.01}
                }
            }
        },
        raise_on_error=False,
    )
    assert result.success, summary_line(REJECTED.customer_id, result)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["quality_gate"] is False and checks["forecast_sanity"] is True
    assert [v.status for v in database.model_versions(REJECTED.customer_id)] == ["Rejected"]
    forecast = database.latest_forecast(REJECTED.customer_id)
    assert len(forecast) == 48 * REJECTED.devices
    assert set(forecast["source"]) == {"seasonal_naive_fallback"}
    assert set(forecast["model_version"]) == {"seasonal-naive"}
    assert "REJECTED | forecast by seasonal_naive_fallback" in summary_line(
        REJECTED.customer_id, result
    )

    # Every customer has a forecast, under its own prefix, saying where it came from.
    for customer in [*CUSTOMERS, REJECTED]:
        current = publication.current(store, FORECASTS, customer.customer_id)
        assert current is not None
        assert current.info["source"] in ("newest", "seasonal_naive_fallback")
        assert current.prefix.startswith(store.uri("forecasts", customer.customer_id) + "/")
    assert isinstance(defs, dg.Definitions)

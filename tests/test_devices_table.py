"""warehouse/devices lists the customer's devices as a table the UI shows, bounded in size."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import pandas as pd

from forecast_assets.assets.devices import MAX_LISTED_DEVICES, device_list, device_list_metadata
from forecast_assets.demo_data import DEMO_CUSTOMERS
from tests.conftest import land
from tests.test_assets import CUSTOMER, DEVICES, PRE, RAW, materialize, step_errors
from tests.test_raw_validation import gridsense


def test_devices_materialization_lists_every_device_with_the_ones_left_out_first(
    instance, local_resources, store
):
    land(store, [CUSTOMER], days=10)
    # Three quarter-hours never fill one hour: registered, but left out of the load table.
    store.write_bytes(
        store.uri("landing", CUSTOMER, "short.csv"),
        gridsense(device="zz-short", start="2025-10-30T00:15:00Z", n=3),
    )
    result = materialize(instance, local_resources, CUSTOMER, [RAW, PRE, DEVICES])
    assert result.success, step_errors(result)
    (event,) = result.asset_materializations_for_node("warehouse__devices")
    meta = event.metadata
    table = meta["device_list"]
    assert isinstance(table, dg.TableMetadataValue)
    assert [c.name for c in table.schema.columns] == [
        "device_id",
        "vendor",
        "unit",
        "first_reading",
        "last_reading",
        "readings",
        "in_load_table",
        "note",
    ]
    rows = [r.data for r in table.records]
    assert len(rows) == DEMO_CUSTOMERS[1].devices + 1 == meta["devices"].value
    assert meta["device_list_not_shown"].value == 0
    assert meta["devices_left_out"].value == 1
    short = rows[0]  # the one needing attention comes first
    assert short["device_id"] == "zz-short"
    assert short["in_load_table"] is False
    assert short["note"].startswith("left out of the load table: ")
    assert "fill no complete 60-minute interval" in short["note"]
    assert short["readings"] == 3
    assert short["first_reading"] == "2025-10-30T00:15:00+00:00"
    assert short["last_reading"] == "2025-10-30T00:45:00+00:00"
    assert all(r["vendor"] == "gridsense" and r["unit"] == "Wh" for r in rows)
    assert all(r["in_load_table"] and r["note"] == "" for r in rows[1:])
    assert [r["device_id"] for r in rows[1:]] == sorted(r["device_id"] for r in rows[1:])
    assert all(r["readings"] > 96 for r in rows[1:])


def test_a_customer_with_many_devices_gets_a_bounded_table_and_a_count_of_the_rest():
    start = datetime(2025, 1, 1, tzinfo=UTC)
    n = MAX_LISTED_DEVICES + 37
    registered = pd.DataFrame(
        {
            "device_id": [f"m{i:04d}" for i in range(n)],
            # SQLite gives naive UTC datetimes back, PostgreSQL aware ones: both read as UTC.
            "vendor": ["kilowatch"] * n,
            "first_reading": [start.replace(tzinfo=None)] * n,
            "last_reading": [start + timedelta(days=30)] * n,
            "readings": [2880] * n,
        }
    )
    current = [{"device_id": f"m{i:04d}"} for i in range(n - 1)]  # m0136 is no longer delivered
    dropped = [{"device_id": "m0100", "reason": "too few readings"}]
    listed = device_list(registered, current, dropped)
    meta = device_list_metadata(listed)
    records = meta["device_list"].records
    assert len(records) == MAX_LISTED_DEVICES
    assert meta["device_list_not_shown"] == 37
    assert meta["devices_left_out"] == 2
    assert [r.data["device_id"] for r in records[:3]] == ["m0100", "m0136", "m0000"]
    assert records[0].data["note"] == "left out of the load table: too few readings"
    assert records[1].data["note"] == "registered earlier, not in the current files"
    assert records[2].data["first_reading"] == "2025-01-01T00:00:00+00:00"
    assert records[2].data["last_reading"] == "2025-01-31T00:00:00+00:00"
    assert records[2].data["unit"] == "kWh"

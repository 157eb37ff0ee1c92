"""warehouse/devices: the device registry, one row per customer and meter."""

from typing import Any

import dagster as dg
import pandas as pd

from forecast_assets import publication
from forecast_assets.assets.common import (
    GROUP,
    customer_ids,
    materialize_result,
    read_json,
    table_metadata,
)
from forecast_assets.assets.preprocessed import preprocessed_load
from forecast_assets.partitions import customers_partitions_def
from forecast_assets.publication import PREPROCESSED
from forecast_core.vendors import VENDORS_BY_NAME
from resources.database import Database
from resources.storage import ObjectStore

# Rows of the device_list table. Dagster stores metadata in its event log and the UI renders
# every row, so a customer with thousands of meters gets the first ones (those left out of the
# load table first) and a count of the rest, not a table of megabytes.
MAX_LISTED_DEVICES = 100
DEVICE_LIST_COLUMNS = {
    "device_id": "string",
    "vendor": "string",
    "unit": "string",
    "first_reading": "string",
    "last_reading": "string",
    "readings": "int",
    "in_load_table": "bool",
    "note": "string",
}


def _iso(value: Any) -> str:
    moment = pd.Timestamp(value)
    # SQLite hands back naive datetimes; the registry writes UTC.
    return (moment.tz_localize("UTC") if moment.tzinfo is None else moment).isoformat()


def device_list(
    registered: pd.DataFrame, current: list[dict[str, Any]], dropped: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One row per registered device, those needing attention first.

    ``registered`` is the customer's rows of the ``devices`` table; ``current`` the devices of the
    current preprocessed version (``devices.json``); ``dropped`` those preprocessing left out of
    the load table, with the reason (``quality.json``). The unit is the one the vendor's format
    delivers (readings are converted to kWh).
    """
    in_files = {str(d["device_id"]) for d in current}
    left_out = {str(d["device_id"]): str(d.get("reason", "")) for d in dropped}
    rows = []
    for record in registered.to_dict("records"):
        device = str(record["device_id"])
        vendor = VENDORS_BY_NAME.get(str(record["vendor"]))
        if device in left_out:
            note = f"left out of the load table: {left_out[device]}"
        elif device not in in_files:
            note = "registered earlier, not in the current files"
        else:
            note = ""
        rows.append(
            {
                "device_id": device,
                "vendor": str(record["vendor"]),
                "unit": vendor.unit if vendor is not None else "",
                "first_reading": _iso(record["first_reading"]),
                "last_reading": _iso(record["last_reading"]),
                "readings": int(record["readings"]),
                "in_load_table": device in in_files and device not in left_out,
                "note": note,
            }
        )
    rows.sort(key=lambda r: (r["in_load_table"], r["device_id"]))
    return rows


def device_list_metadata(listed: list[dict[str, Any]]) -> dict[str, Any]:
    """The device list as metadata: at most ``MAX_LISTED_DEVICES`` rows, and how many are not."""
    return {
        "devices_left_out": sum(not row["in_load_table"] for row in listed),
        "device_list": table_metadata(listed, DEVICE_LIST_COLUMNS, limit=MAX_LISTED_DEVICES),
        "device_list_not_shown": max(0, len(listed) - MAX_LISTED_DEVICES),
    }


@dg.asset(
    key=["warehouse", "devices"],
    deps=[preprocessed_load],
    partitions_def=customers_partitions_def,
    group_name=GROUP,
    kinds={"postgres"},
)
def device_registry(
    context: dg.AssetExecutionContext, store: ObjectStore, database: Database
) -> dg.MaterializeResult:
    """Every meter of the customer: vendor, first and last reading, number of readings.

    Source: ``devices.json`` of the customer's current ``preprocessed/load`` version. Table
    ``devices`` (customer_id, device_id) in the database (PostgreSQL in production, SQLite
    locally), written in one transaction per customer. Re-registering a device widens its
    first/last reading, never narrows it.

    The materialization lists the devices in ``device_list`` (id, vendor, the unit its files
    deliver, first and last reading, readings, whether it is in the load table and why not),
    those left out of the load table first; at most 100 rows, ``device_list_not_shown`` counts
    the rest.
    """
    customers = customer_ids(context)
    tables = publication.require(store, PREPROCESSED, customers, "have no devices to register")
    per_customer = {}
    for customer in customers:
        devices = read_json(store, tables[customer].uri("devices.json"))
        quality = read_json(store, tables[customer].uri("quality.json"))
        counts = database.upsert_devices(customer, devices)
        table = database.devices(customer)
        listed = device_list(table, devices, quality.get("dropped_devices", []))
        if len(listed) > MAX_LISTED_DEVICES:
            context.log.info(
                f"customer '{customer}': device_list shows {MAX_LISTED_DEVICES} of "
                f"{len(listed)} devices; all are in the devices table"
            )
        per_customer[customer] = {
            "devices": len(table),
            "new_devices": counts["new"],
            "updated_devices": counts["updated"],
            "vendors": ", ".join(sorted(table["vendor"].unique())) if len(table) else "",
            **device_list_metadata(listed),
            "preprocessed_version": tables[customer].version,
            "dagster/row_count": len(table),
        }
    return materialize_result(context, per_customer, {"table": "devices"})

"""warehouse/devices: the device registry, one row per customer and meter."""

import dagster as dg

from forecast_assets import publication
from forecast_assets.assets.common import GROUP, customer_ids, materialize_result, read_json
from forecast_assets.assets.preprocessed import preprocessed_load
from forecast_assets.partitions import customers_partitions_def
from forecast_assets.publication import PREPROCESSED
from resources.database import Database
from resources.storage import ObjectStore


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
    """
    customers = customer_ids(context)
    tables = publication.require(store, PREPROCESSED, customers, "have no devices to register")
    per_customer = {}
    for customer in customers:
        devices = read_json(store, tables[customer].uri("devices.json"))
        counts = database.upsert_devices(customer, devices)
        table = database.devices(customer)
        per_customer[customer] = {
            "devices": len(table),
            "new_devices": counts["new"],
            "updated_devices": counts["updated"],
            "vendors": ", ".join(sorted(table["vendor"].unique())) if len(table) else "",
            "preprocessed_version": tables[customer].version,
            "dagster/row_count": len(table),
        }
    return materialize_result(context, per_customer, {"table": "devices"})

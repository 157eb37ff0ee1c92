"""warehouse/devices: the device registry, one row per customer and meter."""

import dagster as dg

from forecast_assets import paths
from forecast_assets.assets.common import GROUP, customer_ids, materialize_result, read_json
from forecast_assets.assets.preprocessed import preprocessed_load
from forecast_assets.partitions import customers_partitions_def
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

    Source: ``devices.json`` written by the preprocessing job. Table ``devices`` (customer_id,
    device_id) in the database (PostgreSQL in production, SQLite locally). Re-registering a
    device widens its first/last reading, never narrows it.
    """
    per_customer = {}
    for customer in customer_ids(context):
        devices = read_json(store, paths.preprocessed(store, customer, "devices.json"))
        counts = database.upsert_devices(customer, devices)
        table = database.devices(customer)
        per_customer[customer] = {
            "devices": len(table),
            "new_devices": counts["new"],
            "updated_devices": counts["updated"],
            "vendors": ", ".join(sorted(table["vendor"].unique())) if len(table) else "",
            "dagster/row_count": len(table),
        }
    return materialize_result(context, per_customer, {"table": "devices"})

"""The forecast asset graph, one partition per customer:

landing/raw_load -> preprocessed/load -> warehouse/devices
                                      -> models/load_forecast_model -> forecasts/load_forecast

and reports/customer_overview (unpartitioned), every customer on one page, re-materialized as
their runs finish.
"""

from forecast_assets.assets.devices import device_registry
from forecast_assets.assets.forecast import load_forecast
from forecast_assets.assets.model import load_forecast_model
from forecast_assets.assets.overview import customer_overview, customer_overview_sensor
from forecast_assets.assets.preprocessed import preprocessed_load
from forecast_assets.assets.raw import raw_load

# The per-customer graph: every job and the backfill policy select exactly these.
ALL_ASSETS = [raw_load, preprocessed_load, device_registry, load_forecast_model, load_forecast]
# Unpartitioned reports over every customer, kept out of the per-customer jobs.
REPORT_ASSETS = [customer_overview]

__all__ = [
    "ALL_ASSETS",
    "REPORT_ASSETS",
    "customer_overview",
    "customer_overview_sensor",
    "device_registry",
    "load_forecast",
    "load_forecast_model",
    "preprocessed_load",
    "raw_load",
]

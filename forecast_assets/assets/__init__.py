"""The forecast asset graph, one partition per customer:

landing/raw_load -> preprocessed/load -> warehouse/devices
                                      -> models/load_forecast_model -> forecasts/load_forecast
"""

from forecast_assets.assets.devices import device_registry
from forecast_assets.assets.forecast import load_forecast
from forecast_assets.assets.model import load_forecast_model
from forecast_assets.assets.preprocessed import preprocessed_load
from forecast_assets.assets.raw import raw_load

ALL_ASSETS = [raw_load, preprocessed_load, device_registry, load_forecast_model, load_forecast]

__all__ = [
    "ALL_ASSETS",
    "device_registry",
    "load_forecast",
    "load_forecast_model",
    "preprocessed_load",
    "raw_load",
]

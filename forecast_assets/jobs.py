"""Jobs: named selections of the asset graph, all partitioned by customer."""

import dagster as dg

from forecast_assets.assets import ALL_ASSETS
from forecast_assets.partitions import customers_partitions_def

forecast_job = dg.define_asset_job(
    "forecast_job",
    selection=dg.AssetSelection.assets(*ALL_ASSETS),
    partitions_def=customers_partitions_def,
    description="Everything for a customer: validate raw files, preprocess, register devices, "
    "train and gate the model, forecast.",
)

ALL_JOBS = [forecast_job]

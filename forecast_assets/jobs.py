"""Jobs: named selections of the asset graph, all partitioned by customer, and the model
approval job (``forecast_assets.approval``)."""

from typing import TYPE_CHECKING

import dagster as dg

from forecast_assets.approval import model_approval_job
from forecast_assets.assets import (
    ALL_ASSETS,
    device_registry,
    load_forecast,
    load_forecast_model,
    preprocessed_load,
    raw_load,
)
from forecast_assets.partitions import customers_partitions_def

if TYPE_CHECKING:  # what define_asset_job returns; Dagster does not export the name
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

forecast_job = dg.define_asset_job(
    "forecast_job",
    selection=dg.AssetSelection.assets(*ALL_ASSETS),
    partitions_def=customers_partitions_def,
    description="Everything for a customer: validate raw files, preprocess, register devices, "
    "train and gate the model, forecast.",
)

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.assets(
        raw_load, preprocessed_load, device_registry, load_forecast_model
    ),
    partitions_def=customers_partitions_def,
    description="Weekly retraining for a customer: validate raw files, preprocess, register "
    "devices, train and gate a new model version.",
)

inference_job = dg.define_asset_job(
    "inference_job",
    selection=dg.AssetSelection.assets(load_forecast),
    partitions_def=customers_partitions_def,
    description="Daily forecast for a customer from its latest approved model.",
)

ALL_JOBS: list["dg.JobDefinition | UnresolvedAssetJobDefinition"] = [
    forecast_job,
    training_job,
    inference_job,
    model_approval_job,
]

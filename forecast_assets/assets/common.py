"""Small helpers every asset step uses."""

from __future__ import annotations

import io
import json
from typing import Any

import dagster as dg
import pandas as pd

from forecast_assets.customers import InvalidCustomerIdError, validate_customer_id
from resources.storage import ObjectStore, join_uri

GROUP = "forecasting"


def customer_id(context: dg.AssetExecutionContext) -> str:
    """The run's customer, validated before it is used in a path, a job name or a query."""
    try:
        return validate_customer_id(context.partition_key)
    except InvalidCustomerIdError as exc:
        raise dg.Failure(description=str(exc)) from exc


def job_tags(context: dg.AssetExecutionContext, customer: str) -> dict[str, str]:
    """Tags put on every job, so a job in the SageMaker console leads back to its Dagster run."""
    return {
        "dagster/run-id": context.run_id,
        "dagster/asset": context.asset_key.to_user_string(),
        "dagster/partition": customer,
        "forecast-assets/customer": customer,
    }


def promote(store: ObjectStore, staging_prefix: str, target_uris: dict[str, str]) -> None:
    """Copy a job's finished outputs from its staging prefix to their published URIs.

    Jobs never write published data directly: a failed or half-finished job leaves the last good
    outputs in place, and each copy replaces its object atomically.
    """
    for name, target in target_uris.items():
        store.copy_object(join_uri(staging_prefix, name), target)


def read_json(store: ObjectStore, uri: str) -> Any:
    return json.loads(store.read_bytes(uri))


def read_parquet(store: ObjectStore, uri: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(store.read_bytes(uri)))


def span_metadata(frame: pd.DataFrame, column: str = "timestamp") -> dict[str, Any]:
    if frame.empty:
        return {}
    return {
        "start": dg.MetadataValue.timestamp(frame[column].min().to_pydatetime()),
        "end": dg.MetadataValue.timestamp(frame[column].max().to_pydatetime()),
    }

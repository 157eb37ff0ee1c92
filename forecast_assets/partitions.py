"""Partitions, defined once: one partition per customer; and how many customers make one run.

Customers are added only by the explicit command (``forecast-customers add``), the demo, or (with
the new-data sensor) when their first files land; never implicitly by an asset.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

customers_partitions_def = dg.DynamicPartitionsDefinition(name="customers")


def batch_ranges(
    ordered: Sequence[str], selected: Iterable[str], size: int
) -> list[dg.PartitionKeyRange]:
    """``selected`` customers cut into runs of at most ``size`` customers each.

    A run covers a range of partitions, which Dagster takes in the partition set's own order
    (``ordered``: for dynamic partitions, the order they were added). So a batch never spans a
    customer that is not selected: the ranges are the selected customers' consecutive stretches,
    each cut every ``size`` customers. Customers not in ``ordered`` are left out.
    """
    chosen = set(selected)
    ranges: list[dg.PartitionKeyRange] = []
    run: list[str] = []
    for key in ordered:
        if key in chosen:
            run.append(key)
            if len(run) < size:
                continue
        if run:
            ranges.append(dg.PartitionKeyRange(run[0], run[-1]))
            run = []
    if run:
        ranges.append(dg.PartitionKeyRange(run[0], run[-1]))
    return ranges


def batch_run_request(
    keys: dg.PartitionKeyRange,
    *,
    run_key: str | None = None,
    tags: Mapping[str, str] | None = None,
    asset_selection: Sequence[dg.AssetKey] | None = None,
) -> dg.RunRequest:
    """A run of one batch: one partition as a plain partitioned run, more as a range run (the
    tags a backfill's batched runs carry), so each step gets the batch's customers at once."""
    if keys.start == keys.end:
        return dg.RunRequest(
            run_key=run_key,
            partition_key=keys.start,
            tags=dict(tags or {}),
            asset_selection=asset_selection,
        )
    return dg.RunRequest(
        run_key=run_key,
        tags={
            **(tags or {}),
            ASSET_PARTITION_RANGE_START_TAG: keys.start,
            ASSET_PARTITION_RANGE_END_TAG: keys.end,
        },
        asset_selection=asset_selection,
    )

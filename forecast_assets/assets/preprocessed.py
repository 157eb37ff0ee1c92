"""preprocessed/load: one regular load table per customer, made by a SageMaker Processing job."""

import json

import dagster as dg
import pandas as pd
from pydantic import Field

from forecast_assets import paths
from forecast_assets.assets.common import (
    GROUP,
    PROCESSING_POOL,
    customer_ids,
    job_label,
    job_reports,
    job_tags,
    materialize_result,
    promote,
    read_json,
    read_parquet,
    require_inputs,
    stage_batch_file,
    stage_per_customer,
)
from forecast_assets.assets.raw import raw_load
from forecast_assets.partitions import customers_partitions_def
from resources.jobs import JobLauncher
from resources.jobs.requests import (
    PROCESSING_INPUT_ROOT,
    JobInput,
    JobOutput,
    job_name,
    processing_job_request,
    processing_local_path,
)
from resources.storage import ObjectStore, join_uri

KEY = dg.AssetKey(["preprocessed", "load"])


class PreprocessingConfig(dg.Config):
    interval: str = Field(
        default="1h", description="Resolution of the output table (pandas offset, e.g. 1h, 30min)."
    )
    max_fill_gap: str = Field(
        default="1h", description="Gaps up to this long are interpolated; longer ones stay gaps."
    )
    max_gap_ratio: float = Field(
        default=0.05, description="The gap_ratio check warns above this share of gap intervals."
    )
    max_spike_factor: float = Field(
        default=100.0,
        description="plausible_values fails on a value more than this many times its device's median.",
    )


def quality_checks(table: pd.DataFrame, config: PreprocessingConfig) -> list[dg.AssetCheckResult]:
    """Data-quality checks on the published table, read back independently of the job."""
    duplicates = int(table.duplicated(subset=["device_id", "timestamp"]).sum())
    gap_ratio = float(table["is_gap"].mean()) if len(table) else 1.0
    values = table.loc[~table["is_gap"], ["device_id", "energy_kwh"]]
    negative = int((values["energy_kwh"] < 0).sum())
    missing = int(values["energy_kwh"].isna().sum())
    median = values.groupby("device_id")["energy_kwh"].transform("median")
    spikes = int((values["energy_kwh"] > config.max_spike_factor * median.clip(lower=1e-9)).sum())
    return [
        dg.AssetCheckResult(
            check_name="no_duplicate_readings",
            passed=duplicates == 0,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"duplicate_rows": duplicates},
        ),
        dg.AssetCheckResult(
            check_name="gap_ratio",
            passed=gap_ratio <= config.max_gap_ratio,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"gap_ratio": round(gap_ratio, 6), "max_gap_ratio": config.max_gap_ratio},
        ),
        dg.AssetCheckResult(
            check_name="plausible_values",
            passed=negative == 0 and missing == 0 and spikes == 0,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "negative_values": negative,
                "missing_outside_gaps": missing,
                "spikes": spikes,
                "max_spike_factor": config.max_spike_factor,
            },
        ),
    ]


@dg.asset(
    key=KEY,
    deps=[raw_load],
    partitions_def=customers_partitions_def,
    group_name=GROUP,
    kinds={"sagemaker", "parquet"},
    pool=PROCESSING_POOL,
    check_specs=[
        dg.AssetCheckSpec(
            "no_duplicate_readings",
            asset=KEY,
            blocking=True,
            description="At most one row per device and interval.",
        ),
        dg.AssetCheckSpec(
            "gap_ratio",
            asset=KEY,
            description="Share of intervals with no usable value stays under max_gap_ratio.",
        ),
        dg.AssetCheckSpec(
            "plausible_values",
            asset=KEY,
            blocking=True,
            description="No negative, missing (outside gaps) or absurdly large energy values.",
        ),
    ],
)
def preprocessed_load(
    context: dg.AssetExecutionContext,
    config: PreprocessingConfig,
    store: ObjectStore,
    launcher: JobLauncher,
) -> dg.MaterializeResult:
    """Clean, regular electricity load per device for one customer.

    Made by a SageMaker Processing job (``containers/preprocessing``) from exactly the files
    ``landing/raw_load`` validated. Every vendor format is mapped onto one schema: ``timestamp``
    (interval start, UTC), ``device_id``, ``energy_kwh``, ``is_filled`` and ``is_gap``. Exact
    duplicate readings are dropped, conflicting ones reported (the later file wins), gaps up to
    ``max_fill_gap`` interpolated and longer ones kept as flagged gaps, and readings summed to
    ``interval`` (hourly by default). Grain: one row per device per interval.
    Published at ``preprocessed/<customer>/load.parquet``, with ``devices.json`` and
    ``quality.json`` beside it.
    """
    customers = customer_ids(context)
    require_inputs(
        store,
        customers,
        lambda c: paths.raw_manifest(store, c),
        "landing/raw_load",
        "cannot be preprocessed",
    )
    code_uri, entry = launcher.publish_code("preprocessing")
    name = job_name("preprocessing", job_label(customers), context.run_id, context.retry_number)
    staging = paths.job_output(store, name, "preprocessed")
    if len(customers) == 1:
        (customer,) = customers
        arguments = [
            "--customer-id",
            customer,
            "--manifest",
            f"{processing_local_path('input', 'manifest')}/raw_load.json",
        ]
        inputs = [
            JobInput("raw", paths.raw_sagemaker_manifest(store, customer), "ManifestFile"),
            JobInput("manifest", paths.raw_manifest(store, customer)),
        ]
        staged = {customer: staging}
    else:
        arguments = [
            "--batch",
            f"{processing_local_path('input', 'batch')}/batch.json",
            "--manifest-dir",
            processing_local_path("input", "manifest"),
        ]
        inputs = stage_batch_inputs(store, name, customers)
        staged = {c: join_uri(staging, c) for c in customers}
    request = processing_job_request(
        name=name,
        settings=launcher.settings_for("preprocessing").for_batch(len(customers), "preprocessing"),
        role_arn=launcher.role_arn,
        entrypoint=["python3", f"{PROCESSING_INPUT_ROOT}/code/bootstrap.py", entry],
        arguments=[
            *arguments,
            "--raw-dir",
            processing_local_path("input", "raw"),
            "--output-dir",
            processing_local_path("output", "preprocessed"),
            "--interval",
            config.interval,
            "--max-fill-gap",
            config.max_fill_gap,
        ],
        inputs=[JobInput("code", code_uri), *inputs],
        outputs=[JobOutput("preprocessed", staging)],
        tags=job_tags(context, customers),
        platform=launcher.platform,
    )
    job = launcher.run_processing_job(
        context=context, request=request, extras={"customer_ids": customers}
    )

    reports = job_reports(job, customers)
    per_customer, checks = {}, {}
    for customer in customers:
        targets = {f: paths.preprocessed(store, customer, f) for f in paths.PREPROCESSED_FILES}
        promote(store, staged[customer], targets)
        table = read_parquet(store, targets["load.parquet"])
        quality = read_json(store, targets["quality.json"])
        per_customer[customer] = {
            **reports[customer],
            "rows": len(table),
            "devices": int(table["device_id"].nunique()),
            "start": table["timestamp"].min().isoformat(),
            "end": table["timestamp"].max().isoformat(),
            "interval": config.interval,
            "gap_ratio": round(float(table["is_gap"].mean()), 6),
            "conflicting_readings": quality["conflicting_readings"],
            "exact_duplicates_dropped": quality["exact_duplicates_dropped"],
            "long_gaps": dg.MetadataValue.json(quality["long_gaps"]),
            "uri": dg.MetadataValue.url(targets["load.parquet"]),
            "dagster/row_count": len(table),
        }
        checks[customer] = quality_checks(table, config)
    return materialize_result(context, per_customer, job.metadata(), checks)


def stage_batch_inputs(store: ObjectStore, job: str, customers: list[str]) -> list[JobInput]:
    """A batch job's inputs: ``raw/<customer>/...`` and ``manifest/<customer>/raw_load.json``.

    The raw files are not copied: one ManifestFile lists every customer's validated files
    relative to the landing root, so SageMaker stages them into a folder per customer.
    """
    root = paths.landing_root(store)
    entries: list[str] = []
    for customer in customers:
        manifest = read_json(store, paths.raw_manifest(store, customer))
        prefix = manifest["landing_prefix"][len(root) :]
        entries += [f"{prefix}{f['relative_path']}" for f in manifest["files"]]
    raw_manifest = join_uri(paths.job_input(store, job, "raw"), "raw.manifest")
    store.write_bytes(raw_manifest, json.dumps([{"prefix": root}, *entries]).encode())
    manifests = {c: paths.raw_manifest(store, c) for c in customers}
    return [
        JobInput("batch", stage_batch_file(store, job, [{"customer_id": c} for c in customers])),
        JobInput("raw", raw_manifest, "ManifestFile"),
        JobInput("manifest", stage_per_customer(store, job, "manifest", manifests)),
    ]

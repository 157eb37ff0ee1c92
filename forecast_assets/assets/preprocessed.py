"""preprocessed/load: one regular load table per customer, made by a SageMaker Processing job."""

import json
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from forecast_assets import paths, publication
from forecast_assets.assets.common import (
    GROUP,
    PROCESSING_POOL,
    StepEvent,
    blocked_customers,
    customer_ids,
    finish_step,
    job_failed,
    job_label,
    job_reports,
    job_tags,
    published_metadata,
    read_json,
    read_parquet,
    reused_metadata,
    reused_publications,
    stage_batch_file,
    stage_per_customer,
)
from forecast_assets.assets.raw import raw_load
from forecast_assets.partitions import customers_partitions_def
from forecast_assets.publication import MANIFESTS, PREPROCESSED, Publication
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
# Checks that keep a table from being published when they fail.
BLOCKING_CHECKS = {"no_duplicate_readings", "plausible_values"}


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


def quality_checks(
    customer: str,
    table: pd.DataFrame,
    config: PreprocessingConfig,
    manifest: dict[str, Any],
) -> list[dg.AssetCheckResult]:
    """Data-quality checks on the table the job produced, read back independently of the job.

    A failed check's description names the customer, the meters and values at fault and the
    raw files those readings came from.
    """
    duplicated = table.duplicated(subset=["device_id", "timestamp"], keep=False)
    gap_ratio = float(table["is_gap"].mean()) if len(table) else 1.0
    values = table.loc[~table["is_gap"], ["timestamp", "device_id", "energy_kwh"]]
    median = values.groupby("device_id")["energy_kwh"].transform("median")
    negative = values["energy_kwh"] < 0
    missing = values["energy_kwh"].isna()
    spikes = values["energy_kwh"] > config.max_spike_factor * median.clip(lower=1e-9)
    spike_rows = values[spikes].assign(median=median[spikes])
    findings = [
        ("negative value(s)", values[negative], lambda row: "negative"),
        ("missing value(s) outside a gap", values[missing], lambda row: "missing"),
        (
            "implausible spike(s)",
            spike_rows,
            lambda row: (
                f"over {config.max_spike_factor:g} times the meter's median {row.median:.4g} kWh"
            ),
        ),
    ]
    return [
        dg.AssetCheckResult(
            check_name="no_duplicate_readings",
            passed=not duplicated.any(),
            severity=dg.AssetCheckSeverity.ERROR,
            description=None
            if not duplicated.any()
            else f"customer '{customer}': {int(duplicated.sum())} rows share a meter and interval: "
            + describe_rows(table[duplicated], lambda row: "duplicate", manifest),
            metadata={"duplicate_rows": int(duplicated.sum())},
        ),
        dg.AssetCheckResult(
            check_name="gap_ratio",
            passed=gap_ratio <= config.max_gap_ratio,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"customer '{customer}': {gap_ratio:.1%} of intervals are gaps "
            f"(at most {config.max_gap_ratio:.1%} expected)",
            metadata={"gap_ratio": round(gap_ratio, 6), "max_gap_ratio": config.max_gap_ratio},
        ),
        dg.AssetCheckResult(
            check_name="plausible_values",
            passed=not (negative.any() or missing.any() or spikes.any()),
            severity=dg.AssetCheckSeverity.ERROR,
            description="; ".join(
                f"customer '{customer}': {len(rows)} {label}: {describe_rows(rows, why, manifest)}"
                for label, rows, why in findings
                if len(rows)
            )
            or None,
            metadata={
                "negative_values": int(negative.sum()),
                "missing_outside_gaps": int(missing.sum()),
                "spikes": int(spikes.sum()),
                "max_spike_factor": config.max_spike_factor,
            },
        ),
    ]


# Rows quoted in a failed check's description; the rest are counted.
MAX_QUOTED = 3


def describe_rows(rows: pd.DataFrame, why: Callable[[Any], str], manifest: dict[str, Any]) -> str:
    """The first offending rows as 'meter, value, time, source files' for a check's description."""
    quoted = []
    for row in rows.head(MAX_QUOTED).itertuples(index=False):
        detail = why(row)
        files = source_files(manifest, str(row.device_id), pd.Timestamp(row.timestamp))
        quoted.append(
            f"meter '{row.device_id}' {row.energy_kwh:.6g} kWh at {row.timestamp:%Y-%m-%d %H:%M} "
            f"UTC ({detail}; from {', '.join(files) or 'no listed file'})"
        )
    more = len(rows) - len(quoted)
    return "; ".join(quoted) + (f"; and {more} more" if more > 0 else "")


def source_files(manifest: dict[str, Any], device: str, at: pd.Timestamp) -> list[str]:
    """The raw files (as validated by landing/raw_load) that hold ``device`` around ``at``."""
    hour = pd.Timedelta(hours=1)
    return [
        f["uri"]
        for f in manifest.get("files", [])
        if device in f.get("devices", ())
        and pd.Timestamp(f["start"]) < at + hour
        and pd.Timestamp(f["end"]) >= at
    ][:3]


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
            partitions_def=customers_partitions_def,
            description="At most one row per device and interval.",
        ),
        dg.AssetCheckSpec(
            "gap_ratio",
            asset=KEY,
            partitions_def=customers_partitions_def,
            description="Share of intervals with no usable value stays under max_gap_ratio.",
        ),
        dg.AssetCheckSpec(
            "plausible_values",
            asset=KEY,
            blocking=True,
            partitions_def=customers_partitions_def,
            description="No negative, missing (outside gaps) or absurdly large energy values.",
        ),
    ],
)
def preprocessed_load(
    context: dg.AssetExecutionContext,
    config: PreprocessingConfig,
    store: ObjectStore,
    launcher: JobLauncher,
) -> Iterator[StepEvent]:
    """Clean, regular electricity load per device for one customer.

    Made by a SageMaker Processing job (``containers/preprocessing``) from exactly the files
    ``landing/raw_load`` validated. Every vendor format is mapped onto one schema: ``timestamp``
    (interval start, UTC), ``device_id``, ``energy_kwh``, ``is_filled`` and ``is_gap``. Exact
    duplicate readings are dropped, conflicting ones reported (the later file wins), gaps up to
    ``max_fill_gap`` interpolated and longer ones kept as flagged gaps, and readings summed to
    ``interval`` (hourly by default). Grain: one row per device per interval. When the customer
    has weather files, ``weather.parquet`` (temperature per interval, observed and forecast; see
    ``forecast_core.weather``) is published with them.

    The blocking checks run on what the job produced, before anything is published; only then do
    ``load.parquet``, ``devices.json`` and ``quality.json`` become the customer's current version
    together (``preprocessed/<customer>/current.json`` names it; see
    ``forecast_assets.publication``). A re-run with the same validated files, code and settings
    reuses the current version instead of running the job again. In a batch, a customer whose
    preprocessing or blocking checks fail fails alone; the others are published.
    """
    customers = customer_ids(context)
    manifests = publication.require(store, MANIFESTS, customers, "cannot be preprocessed")
    code_uri, entry = launcher.publish_code("preprocessing")
    inputs = {
        c: publication.inputs_digest(
            raw=manifests[c].version,
            code=code_uri,
            interval=config.interval,
            max_fill_gap=config.max_fill_gap,
        )
        for c in customers
    }
    reused = reused_publications(store, PREPROCESSED, inputs)
    per_customer = {c: reused_metadata(p) for c, p in reused.items()}
    # Checked again with today's settings: reuse skips the job, not the checks.
    checks: dict[str, list[dg.AssetCheckResult]] = {
        c: quality_checks(
            c,
            read_parquet(store, p.uri("load.parquet")),
            config,
            read_json(store, manifests[c].uri(paths.RAW_MANIFEST)),
        )
        for c, p in reused.items()
    }
    to_run = [c for c in customers if c not in reused]
    if not to_run:
        failed = blocked_customers(checks, BLOCKING_CHECKS)
        per_customer = {c: m for c, m in per_customer.items() if c not in failed}
        yield from finish_step(context, per_customer, {}, checks, failed)
        return

    name = job_name("preprocessing", job_label(to_run), context.run_id, context.retry_number)
    staging = paths.job_output(store, name, "preprocessed")
    if len(to_run) == 1:
        (customer,) = to_run
        arguments = [
            "--customer-id",
            customer,
            "--manifest",
            f"{processing_local_path('input', 'manifest')}/raw_load.json",
        ]
        job_inputs = [
            JobInput("raw", manifests[customer].uri(paths.RAW_SAGEMAKER_MANIFEST), "ManifestFile"),
            JobInput("manifest", manifests[customer].uri(paths.RAW_MANIFEST)),
        ]
        staged = {customer: staging}
    else:
        arguments = [
            "--batch",
            f"{processing_local_path('input', 'batch')}/batch.json",
            "--manifest-dir",
            processing_local_path("input", "manifest"),
        ]
        job_inputs = stage_batch_inputs(store, name, {c: manifests[c] for c in to_run})
        staged = {c: join_uri(staging, c) for c in to_run}
    request = processing_job_request(
        name=name,
        settings=launcher.settings_for("preprocessing").for_batch(len(to_run), "preprocessing"),
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
        inputs=[
            JobInput("code", code_uri),
            *launcher.dependency_inputs("preprocessing"),
            *job_inputs,
        ],
        outputs=[JobOutput("preprocessed", staging)],
        tags=job_tags(context, to_run),
        platform=launcher.platform,
    )
    try:
        job = launcher.run_processing_job(
            context=context, request=request, extras={"customer_ids": to_run}
        )
    except dg.Failure as failure:
        # The job failed as a whole: its customers fail with its reason, on their partitions.
        failed = {**job_failed(failure, to_run), **blocked_customers(checks, BLOCKING_CHECKS)}
        per_customer = {c: m for c, m in per_customer.items() if c not in failed}
        yield from finish_step(context, per_customer, {}, checks, failed, cause=failure)
        return

    # Checked where the job left them, before anything is published.
    reports = job_reports(job, to_run)
    failed = {c: reason for c, reason in job.failed_customers().items() if c in to_run}
    produced = {}
    for customer in to_run:
        if customer in failed:
            continue
        manifest = read_json(store, manifests[customer].uri(paths.RAW_MANIFEST))
        # weather.parquet too when the customer has weather files: one version, all together.
        expected = paths.preprocessed_files(manifest)
        staged_files = {f: join_uri(staged[customer], f) for f in expected}
        if not store.exists(staged_files["load.parquet"]):
            failed[customer] = (
                f"customer '{customer}': the preprocessing job {job.name} wrote no "
                f"{staged_files['load.parquet']}"
            )
            continue
        table = read_parquet(store, staged_files["load.parquet"])
        checks[customer] = quality_checks(customer, table, config, manifest)
        produced[customer] = (staged_files, table, read_json(store, staged_files["quality.json"]))
    failed.update(blocked_customers(checks, BLOCKING_CHECKS))
    per_customer = {c: m for c, m in per_customer.items() if c not in failed}

    for customer, (staged_files, table, quality) in produced.items():
        if customer in failed:
            continue
        figures = {
            "rows": len(table),
            "devices": int(table["device_id"].nunique()),
            "start": table["timestamp"].min().isoformat(),
            "end": table["timestamp"].max().isoformat(),
            "interval": config.interval,
            "gap_ratio": round(float(table["is_gap"].mean()), 6),
            "conflicting_readings": quality["conflicting_readings"],
            "exact_duplicates_dropped": quality["exact_duplicates_dropped"],
            "long_gaps": quality["long_gaps"],
            "dropped_devices": quality.get("dropped_devices", []),
            "raw_version": manifests[customer].version,
            "weather": paths.WEATHER_FILE in staged_files,
        }
        published = publication.publish(
            store,
            PREPROCESSED,
            customer,
            publication.new_version(name),
            sources=staged_files,
            run_id=context.run_id,
            inputs=inputs[customer],
            info=figures,
        )
        per_customer[customer] = {
            **reports[customer],
            **published_metadata(published),
            "reused": False,
        }
    yield from finish_step(context, per_customer, job.metadata(), checks, failed)


def stage_batch_inputs(
    store: ObjectStore, job: str, manifests: dict[str, Publication]
) -> list[JobInput]:
    """A batch job's inputs: ``raw/<customer>/...`` and ``manifest/<customer>/raw_load.json``.

    The raw files are not copied: one ManifestFile lists every customer's validated files
    relative to the landing root, so SageMaker stages them into a folder per customer.
    """
    root = paths.landing_root(store)
    entries: list[str] = []
    for published in manifests.values():
        manifest = read_json(store, published.uri(paths.RAW_MANIFEST))
        prefix = manifest["landing_prefix"][len(root) :]
        # The weather files too, as the one-customer ManifestFile lists them (raw_load).
        files = [*manifest["files"], *manifest.get("weather_files", [])]
        entries += [f"{prefix}{f['relative_path']}" for f in files]
    raw_manifest = join_uri(paths.job_input(store, job, "raw"), "raw.manifest")
    store.write_bytes(raw_manifest, json.dumps([{"prefix": root}, *entries]).encode())
    sources = {c: p.uri(paths.RAW_MANIFEST) for c, p in manifests.items()}
    return [
        JobInput("batch", stage_batch_file(store, job, [{"customer_id": c} for c in manifests])),
        JobInput("raw", raw_manifest, "ManifestFile"),
        JobInput("manifest", stage_per_customer(store, job, "manifest", sources)),
    ]

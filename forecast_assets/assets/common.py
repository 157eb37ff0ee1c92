"""Small helpers every asset step uses."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
import pandas as pd

from forecast_assets import paths, publication
from forecast_assets.customers import InvalidCustomerIdError, validate_customer_id
from forecast_assets.publication import Publication
from resources.jobs.base import CompletedJob
from resources.jobs.requests import JobInput
from resources.storage import ObjectStore, join_uri

GROUP = "forecasting"

# Dagster pools that cap how many SageMaker jobs run at once, one per kind of job because
# SageMaker's instance quotas are per instance type *for processing* or *for training*. Set their
# limits in the instance (dagster.yaml's default, or `dagster instance concurrency set`).
PROCESSING_POOL = "sagemaker-processing"
TRAINING_POOL = "sagemaker-training"

# The metadata key of the observation that records why a customer's step failed.
FAILED_REASON = "failed_reason"
# A failed_reason is metadata on a partition, not the job's whole log.
MAX_REASON_CHARS = 2000

StepEvent = (
    dg.MaterializeResult
    | dg.AssetMaterialization
    | dg.AssetObservation
    | dg.AssetCheckEvaluation
    | dg.Output
)
"""What a step yields (see :func:`finish_step`)."""


def customer_ids(context: dg.AssetExecutionContext) -> list[str]:
    """The step's customers, validated before they are used in a path, a job name or a query.

    One for a per-customer run (sensor, schedules, a one-run-per-customer backfill); several
    when a batched backfill gives the step a range of partitions (see ``backfill_policy``).
    """
    try:
        return [validate_customer_id(key) for key in context.partition_keys]
    except InvalidCustomerIdError as exc:
        raise dg.Failure(description=str(exc)) from exc


def job_label(customers: list[str]) -> str:
    """The customer part of a job's name: the customer, or ``batch<n>`` for a batch job."""
    return customers[0] if len(customers) == 1 else f"batch{len(customers)}"


def job_tags(context: dg.AssetExecutionContext, customers: list[str]) -> dict[str, str]:
    """Tags put on every job, so a job in the SageMaker console leads back to its Dagster run."""
    partition = customers[0] if len(customers) == 1 else f"{customers[0]}...{customers[-1]}"
    return {
        "dagster/run-id": context.run_id,
        "dagster/asset": context.asset_key.to_user_string(),
        "dagster/partition": partition,
        "forecast-assets/customer": partition,
        "forecast-assets/customers": str(len(customers)),
    }


def materialize_result(
    context: dg.AssetExecutionContext,
    per_customer: dict[str, dict[str, Any]],
    shared: dict[str, Any],
    **kwargs: Any,
) -> dg.MaterializeResult:
    """One materialization per customer, each with its own metadata.

    A step for one customer returns its metadata directly. A batch step attaches each
    customer's metadata to that customer's partition (Dagster records one materialization per
    partition) and the shared metadata, such as the job that did the work, to all of them.
    """
    if len(per_customer) == 1:
        (metadata,) = per_customer.values()
        return dg.MaterializeResult(metadata={**shared, **metadata}, **kwargs)
    for customer, metadata in per_customer.items():
        context.add_asset_metadata(metadata, partition_key=customer)
    return dg.MaterializeResult(metadata={**shared, "batch_customers": len(per_customer)}, **kwargs)


def materialize_with_checks(
    context: dg.AssetExecutionContext,
    per_customer: dict[str, dict[str, Any]],
    shared: dict[str, Any],
    check_results: dict[str, list[dg.AssetCheckResult]],
    **kwargs: Any,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckEvaluation | dg.Output]:
    """:func:`materialize_result`, then each customer's check results on that customer's
    partition; each customer's metadata also says its checks' outcome (``checks``). Used as
    ``yield from materialize_with_checks(...)``.
    """
    per_customer = {
        c: {**metadata, **check_summary(check_results.get(c, []))}
        for c, metadata in per_customer.items()
    }
    yield materialize_result(context, per_customer, shared, **kwargs)
    # After the materializations, so each result points at the one it checked.
    yield from check_evaluations(context, check_results)


def check_summary(results: list[dg.AssetCheckResult]) -> dict[str, Any]:
    """A customer's check outcomes in its own materialization's metadata, so the partition's
    page says them too: ``checks`` is "passed" or names each failed check."""
    if not results:
        return {}
    failed = [r for r in results if not r.passed]
    return {
        "checks": "; ".join(
            f"{r.check_name} {'WARNING' if r.severity == dg.AssetCheckSeverity.WARN else 'FAILED'}"
            for r in failed
        )
        or f"passed ({', '.join(r.check_name or '' for r in results)})"
    }


def check_evaluations(
    context: dg.AssetExecutionContext, by_customer: dict[str, list[dg.AssetCheckResult]]
) -> Iterator[dg.AssetCheckEvaluation | dg.Output]:
    """Each customer's check results as evaluations of that customer's partition.

    The checks are partitioned like their asset (``AssetCheckSpec(partitions_def=...)``), so the
    UI keeps a status per customer. Dagster would give an ``AssetCheckResult`` the step's one
    partition, which a batch step does not have; an evaluation names its partition, and points
    at the customer's latest materialization, which is what makes its status current.
    """
    specs = {spec.name: spec for spec in context.assets_def.check_specs}
    selected = context.selected_asset_check_keys
    evaluated: set[dg.AssetCheckKey] = set()
    for customer, results in by_customer.items():
        for result in results:
            name = result.check_name or ""
            key = dg.AssetCheckKey(result.asset_key or context.asset_key, name)
            if key not in selected:
                continue
            evaluated.add(key)
            yield dg.AssetCheckEvaluation(
                asset_key=key.asset_key,
                check_name=name,
                passed=result.passed,
                metadata={**as_text(result.metadata), "customer": dg.MetadataValue.text(customer)},
                target_materialization_data=latest_materialization(
                    context.instance, key.asset_key, customer
                ),
                severity=result.severity,
                description=result.description,
                blocking=specs[name].blocking if name in specs else False,
                partition=customer,
            )
    # Each evaluated check's (empty) output, once per step, as an AssetCheckResult would emit it:
    # a step that reports through Pipes must emit every selected check's output.
    for output_name, spec in context.assets_def.check_specs_by_output_name.items():
        if spec.key in evaluated:
            yield dg.Output(None, output_name=output_name)


def as_text(metadata: Mapping[str, dg.MetadataValue]) -> dict[str, dg.MetadataValue]:
    """Numbers as text: the UI plots a check's numeric metadata over its evaluations, which are
    of different customers, and a line through unrelated customers' figures means nothing."""
    return {
        k: dg.MetadataValue.text(str(v.value))
        if isinstance(v, dg.IntMetadataValue | dg.FloatMetadataValue)
        else v
        for k, v in metadata.items()
    }


def latest_materialization(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> Any:
    """The partition's latest materialization as a check evaluation's target, or None."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return None
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=records[0].storage_id,
        run_id=records[0].run_id,
        timestamp=records[0].timestamp,
    )


def stage_batch_file(store: ObjectStore, job: str, entries: list[dict[str, Any]]) -> str:
    """Write the ``batch.json`` a batch job reads (which customers, in order, with their
    parameters) as the job's ``batch`` input; returns the input's prefix."""
    prefix = paths.job_input(store, job, "batch")
    store.write_bytes(join_uri(prefix, "batch.json"), json.dumps({"customers": entries}).encode())
    return prefix + "/"


def stage_per_customer(store: ObjectStore, job: str, name: str, sources: dict[str, str]) -> str:
    """Copy each customer's object to the batch job's input ``name``, in a folder per customer.

    The copies stay with the job, so a batch reads exactly what was current when it was
    launched; returns the input's prefix.
    """
    prefix = paths.job_input(store, job, name)
    for customer, uri in sources.items():
        store.copy_object(uri, join_uri(prefix, customer, uri.rsplit("/", 1)[-1]))
    return prefix + "/"


def stage_weather(
    store: ObjectStore, job: str, tables: Mapping[str, Publication], customers: list[str]
) -> list[JobInput]:
    """A batch job's ``weather`` input: the preprocessed weather of each customer that has
    some, in a folder per customer; no input when none of them has weather."""
    sources = {
        c: tables[c].uri(paths.WEATHER_FILE)
        for c in customers
        if paths.WEATHER_FILE in tables[c].files
    }
    if not sources:
        return []
    return [JobInput("weather", stage_per_customer(store, job, "weather", sources))]


def job_reports(job: CompletedJob, customers: list[str]) -> dict[str, dict[str, Any]]:
    """What the job reported for each customer: one materialization, or one message each."""
    if len(customers) == 1:
        return {customers[0]: job.reported_metadata()}
    reported = job.reported_by_customer()
    return {customer: reported.get(customer, {}) for customer in customers}


def blocked_customers(
    checks: dict[str, list[dg.AssetCheckResult]], blocking: set[str]
) -> dict[str, str]:
    """The customers whose blocking check failed, each with one line per failed check.

    Nothing of theirs may be published; the other customers of the step go on.
    """
    blocked = {}
    for customer, results in checks.items():
        lines = [
            f"{r.check_name} failed: {r.description or f'customer {customer!r}'}"
            for r in results
            if r.check_name in blocking and not r.passed
        ]
        if lines:
            blocked[customer] = "; ".join(lines)
    return blocked


def finish_step(
    context: dg.AssetExecutionContext,
    per_customer: dict[str, dict[str, Any]],
    shared: dict[str, Any],
    check_results: dict[str, list[dg.AssetCheckResult]],
    failed: dict[str, str],
    cause: dg.Failure | None = None,
    **kwargs: Any,
) -> Iterator[StepEvent]:
    """How every step ends: its customers' materializations and check results, and a failure
    naming each customer that could not go on. Used as ``yield from finish_step(...)``.

    ``per_customer`` holds the customers whose outputs were published (or reused), ``failed``
    the others with their reason (a bad file, a blocking check, a failed fit). With no failure
    this is :func:`materialize_with_checks`. Otherwise one batch customer's failure must not
    withhold the others' outputs: each published customer gets its own
    ``AssetMaterialization`` on its partition, every customer's check results land on its
    partition, each failed customer gets an ``AssetObservation`` on its partition carrying
    ``failed_reason`` (the overview and the partition's page show it), and then the step fails
    naming every failed customer. Dagster then shows the published partitions Materialized and
    the failed ones Failed; the steps after this one skip in this run, and
    ``batch_continuation_sensor`` (``forecast_assets.continuation``) runs them next for the
    customers that got through. ``cause``, when the step's job failed as a whole, is raised
    instead of the step's own summary, so the job's error (name, reason, log) stays what the run
    shows.
    """
    if not failed:
        yield from materialize_with_checks(context, per_customer, shared, check_results, **kwargs)
        return
    for customer, metadata in per_customer.items():
        yield dg.AssetMaterialization(
            asset_key=context.asset_key,
            partition=customer,
            metadata={
                **shared,
                **metadata,
                **check_summary(check_results.get(customer, [])),
                "batch_customers": len(per_customer) + len(failed),
            },
        )
    yield from check_evaluations(context, check_results)
    for customer, reason in failed.items():
        yield dg.AssetObservation(
            asset_key=context.asset_key,
            partition=customer,
            metadata={FAILED_REASON: reason, "run_id": context.run_id},
        )
    raise cause or customers_failure(context.asset_key, failed, sorted(per_customer))


def job_failed(failure: dg.Failure, customers: list[str]) -> dict[str, str]:
    """Each customer of a job that failed as a whole (a one-customer job, or a batch job whose
    every customer failed), with the job's reason, for :func:`finish_step`."""
    reason = (failure.description or "the job failed")[:MAX_REASON_CHARS]
    return dict.fromkeys(customers, reason)


def customers_failure(
    asset_key: dg.AssetKey, failed: dict[str, str], materialized: list[str]
) -> dg.Failure:
    """The step's failure: which customers failed and why, and which were materialized."""
    total = len(failed) + len(materialized)
    went_on = (
        f"; the other {len(materialized)} were materialized and their next steps run in a "
        "follow-up run (batch_continuation_sensor)"
        if materialized
        else ""
    )
    return dg.Failure(
        description=f"{len(failed)} of {total} customer(s) failed at "
        f"{asset_key.to_user_string()}; nothing of theirs was published and their last good "
        f"outputs stay{went_on}:\n" + "\n".join(failed.values()),
        metadata={
            "failed_customers": dg.MetadataValue.json(sorted(failed)),
            "materialized_customers": dg.MetadataValue.json(materialized),
        },
    )


def reused_publications(
    store: ObjectStore, dataset: str, inputs: dict[str, str]
) -> dict[str, Publication]:
    """The customers whose current ``dataset`` was made from exactly these inputs.

    Their job need not run again: same validated data, same code, same settings give the same
    outputs (data versions are content hashes).
    """
    found = {c: publication.reusable(store, dataset, c, digest) for c, digest in inputs.items()}
    return {c: p for c, p in found.items() if p is not None}


def published_metadata(published: Publication) -> dict[str, Any]:
    """What a materialization says about the version it published (or reused)."""
    main = publication.MAIN_FILE[published.dataset]
    info = {
        k: dg.MetadataValue.json(v) if isinstance(v, list | dict) else v
        for k, v in published.info.items()
    }
    if "rows" in published.info:
        info["dagster/row_count"] = published.info["rows"]
    return {
        **info,
        "version": published.version,
        "uri": dg.MetadataValue.url(published.uri(main)),
        "pointer": dg.MetadataValue.url(publication.pointer_uri_of(published)),
    }


def reused_metadata(published: Publication) -> dict[str, Any]:
    """Metadata of a step that reused a customer's current version instead of running a job."""
    return {
        **published_metadata(published),
        "reused": True,
        "reused_note": f"inputs, code and settings unchanged since run {published.run_id}: "
        f"version {published.version} reused, no job run",
    }


def table_metadata(
    records: list[dict[str, Any]], columns: dict[str, str], limit: int = 200
) -> dg.TableMetadataValue:
    """A table for the UI: the first ``limit`` records, with ``columns`` (name -> type)."""
    return dg.MetadataValue.table(
        records=[dg.TableRecord({c: r[c] for c in columns}) for r in records[:limit]],
        schema=dg.TableSchema(columns=[dg.TableColumn(n, t) for n, t in columns.items()]),
    )


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

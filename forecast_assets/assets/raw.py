"""landing/raw_load: the customer's meter files as delivered, validated and recorded."""

import hashlib
import json
from typing import Any

import dagster as dg

from forecast_assets import paths
from forecast_assets.assets.common import (
    GROUP,
    customer_ids,
    fail_for_customers,
    materialize_result,
)
from forecast_assets.partitions import customers_partitions_def
from forecast_core.vendors import MeterFileError, detect_vendor, parse_meter_file, summarize
from resources.storage import ObjectStore


@dg.asset(
    key=["landing", "raw_load"],
    partitions_def=customers_partitions_def,
    group_name=GROUP,
    kinds={"s3", "csv"},
)
def raw_load(context: dg.AssetExecutionContext, store: ObjectStore) -> dg.MaterializeResult:
    """Raw electricity-meter exports for one customer, as the vendors deliver them.

    Source: files landed under ``landing/<customer>/`` (any depth), one or more meter vendors
    (see ``forecast_core.vendors``). Grain: one reading per device per 15 minutes, in the vendor's
    own units and clock. Cadence: whenever new files land.

    Materializing reads every file, recognises its vendor format and parses it fully, but never
    changes it. It records each file's size, SHA-256, vendor, readings, devices and time span in
    ``manifests/<customer>/raw_load.json`` (and a SageMaker ManifestFile beside it), which pins
    exactly these files and contents for preprocessing. Any unusable file fails the step with
    one line per bad file, naming the customer, the file and the problem.
    """
    customers = customer_ids(context)
    validated: dict[str, tuple[str, list[dict[str, Any]], str]] = {}
    problems: dict[str, str] = {}
    for customer in customers:
        try:
            validated[customer] = validate_files(store, customer)
        except RawFilesError as exc:
            problems[customer] = str(exc)
    # Nothing is recorded unless every customer of the step is usable: a batch is all or none.
    fail_for_customers(problems, len(customers), "have raw files that cannot be used")

    per_customer = {}
    for customer, (prefix, files, version) in validated.items():
        per_customer[customer] = {
            **record_manifest(store, customer, prefix, files),
            "files_version": version,
        }
    # Same files, same contents -> same version: downstream is stale only when data changed.
    # Dagster takes one data version per step, so a batch step keeps each in its metadata only.
    data_version = (
        dg.DataVersion(per_customer[customers[0]]["files_version"]) if len(customers) == 1 else None
    )
    return materialize_result(context, per_customer, {}, data_version=data_version)


class RawFilesError(ValueError):
    """A customer's raw files cannot be used; the message names the customer and files."""


def validate_files(store: ObjectStore, customer: str) -> tuple[str, list[dict[str, Any]], str]:
    """Parse every file under the customer's landing prefix, without changing any.

    Returns the prefix, one record per file and a version of the whole set of files.
    """
    prefix = paths.landing_prefix(store, customer)
    objects = store.list_objects(prefix)
    if not objects:
        raise RawFilesError(f"customer '{customer}': no raw files under {prefix}")

    files: list[dict[str, Any]] = []
    problems: list[str] = []
    combined = hashlib.sha256()
    for obj in objects:
        data = store.read_bytes(obj.uri)
        digest = hashlib.sha256(data).hexdigest()
        try:
            vendor = detect_vendor(data, obj.uri)
            summary = summarize(parse_meter_file(data, obj.uri, vendor), vendor)
        except MeterFileError as exc:
            problems.append(f"customer '{customer}', {exc}")
            continue
        combined.update(f"{obj.key}\0{digest}\n".encode())
        files.append(
            {
                "uri": obj.uri,
                "relative_path": obj.uri[len(prefix) :],
                "bytes": len(data),
                "sha256": digest,
                "etag": obj.etag,
                "vendor": summary.vendor,
                "rows": summary.rows,
                "devices": list(summary.devices),
                "start": summary.start.isoformat(),
                "end": summary.end.isoformat(),
            }
        )
    if problems:
        raise RawFilesError(
            f"{len(problems)} of {len(objects)} raw file(s) cannot be used:\n" + "\n".join(problems)
        )
    return prefix, files, combined.hexdigest()[:16]


def record_manifest(
    store: ObjectStore, customer: str, prefix: str, files: list[dict[str, Any]]
) -> dict[str, Any]:
    """Write the customer's manifests; returns the materialization's metadata."""
    manifest = {"customer_id": customer, "landing_prefix": prefix, "files": files}
    manifest_uri = paths.raw_manifest(store, customer)
    store.write_bytes(manifest_uri, json.dumps(manifest, indent=2).encode())
    sagemaker_manifest = [{"prefix": prefix}, *(f["relative_path"] for f in files)]
    store.write_bytes(
        paths.raw_sagemaker_manifest(store, customer), json.dumps(sagemaker_manifest).encode()
    )

    devices = sorted({d for f in files for d in f["devices"]})
    vendors = sorted({f["vendor"] for f in files})
    return {
        "files": len(files),
        "bytes": sum(f["bytes"] for f in files),
        "rows": sum(f["rows"] for f in files),
        "devices": len(devices),
        "vendors": ", ".join(vendors),
        "start": min(f["start"] for f in files),
        "end": max(f["end"] for f in files),
        "landing_prefix": dg.MetadataValue.url(prefix),
        "manifest_uri": dg.MetadataValue.url(manifest_uri),
        "file_list": dg.MetadataValue.table(
            records=[
                dg.TableRecord(
                    {
                        "file": f["relative_path"],
                        "vendor": f["vendor"],
                        "rows": f["rows"],
                        "bytes": f["bytes"],
                        "sha256": f["sha256"][:12],
                    }
                )
                for f in files[:200]
            ],
            schema=dg.TableSchema(
                columns=[
                    dg.TableColumn("file", "string"),
                    dg.TableColumn("vendor", "string"),
                    dg.TableColumn("rows", "int"),
                    dg.TableColumn("bytes", "int"),
                    dg.TableColumn("sha256", "string"),
                ]
            ),
        ),
    }

"""landing/raw_load: the customer's meter files as delivered, validated and recorded."""

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from forecast_assets import paths, publication
from forecast_assets.assets.common import (
    GROUP,
    StepEvent,
    customer_ids,
    finish_step,
    table_metadata,
)
from forecast_assets.landing import classify
from forecast_assets.partitions import customers_partitions_def
from forecast_assets.publication import MANIFESTS
from forecast_core.vendors import (
    MeterFileError,
    PlausibilityLimits,
    check_plausible,
    detect_vendor,
    parse_meter_file,
    summarize,
)
from forecast_core.weather import WeatherFileError, conflicts, parse_weather_file
from forecast_core.weather import summarize as summarize_weather
from resources.storage import ObjectStore


class RawLoadConfig(dg.Config):
    """Bounds past which a meter file is refused, whatever the meter's own history says."""

    # The largest single sites (a steelworks' arc furnaces, a hyperscale data centre) draw on the
    # order of 100 MW through their grid connection; more through one meter in one interval is a
    # unit or scale error (Wh written as mWh, a value times 1e27), not consumption.
    max_interval_power_kw: float = Field(
        default=100_000.0,
        gt=0,
        description="A reading whose mean power over its interval (energy / interval length) "
        "exceeds this many kW fails the file. Default 100,000 kW = 100 MW per meter.",
    )
    # A meter that draws 20 MW most of the time is among the very largest industrial sites; a
    # median above that means a whole file in the wrong unit (e.g. Wh written as kWh, x1000).
    max_median_power_kw: float = Field(
        default=20_000.0,
        gt=0,
        description="A device whose median power in a file exceeds this many kW fails the file "
        "(a whole meter off by a unit or a scale). Default 20,000 kW = 20 MW.",
    )
    # Interval meters with exports like ours date from the 2000s; an earlier date is a clock
    # reset (1970) or a misread date format, and would stretch the series over decades.
    earliest_year: int = Field(
        default=2000,
        ge=1900,
        le=2200,
        description="Readings starting before 1 January of this year (UTC) fail the file.",
    )
    # A reading names the start of its interval, so the current one starts at most an interval
    # ago; an hour of slack covers clock skew, never a time zone error (a whole hour or more).
    future_tolerance_minutes: float = Field(
        default=60.0,
        ge=0,
        description="Readings starting more than this many minutes after now fail the file.",
    )
    # One day of quarter-hour readings: less cannot give even one daily profile to learn from.
    min_readings_per_meter: int = Field(
        default=96,
        ge=1,
        description="Meters with fewer distinct readings (over all their files) are listed in "
        "the meters_too_short metadata table; they do not fail the step.",
    )

    def limits(self, at: datetime) -> PlausibilityLimits:
        """The bounds for files validated at ``at`` (timezone-aware)."""
        return PlausibilityLimits(
            max_interval_power_kw=self.max_interval_power_kw,
            max_median_power_kw=self.max_median_power_kw,
            earliest=pd.Timestamp(year=self.earliest_year, month=1, day=1, tz="UTC"),
            latest=pd.Timestamp(at).tz_convert("UTC")
            + pd.Timedelta(minutes=self.future_tolerance_minutes),
        )


def now() -> datetime:
    """The clock future timestamps are judged by; a function of its own so tests can move it."""
    return datetime.now(UTC)


@dg.asset(
    key=["landing", "raw_load"],
    partitions_def=customers_partitions_def,
    group_name=GROUP,
    kinds={"s3", "csv"},
)
def raw_load(
    context: dg.AssetExecutionContext, config: RawLoadConfig, store: ObjectStore
) -> Iterator[StepEvent]:
    """Raw electricity-meter exports for one customer, as the vendors deliver them.

    Source: files landed under ``landing/<customer>/`` (any depth), one or more meter vendors
    (see ``forecast_core.vendors``). Grain: one reading per device per 15 minutes, in the vendor's
    own units and clock. Cadence: whenever new files land.

    Materializing reads every file, recognises its vendor format and parses it fully, but never
    changes it. It records each file's size, SHA-256, vendor, readings, devices and time span in
    ``raw_load.json`` (and a SageMaker ManifestFile beside it), published together as the
    customer's current ``manifests`` version, named by its content (see
    ``forecast_assets.publication``); it pins exactly these files and contents for preprocessing. Any unusable file fails the step with
    one line per bad file, naming the customer, the file and the problem: malformed content, a
    last line without a line break (possibly cut off), device ids the registry cannot hold,
    readings before ``earliest_year`` or in the future, or powers no meter draws (config).
    Folder markers, hidden and temporary files are skipped and listed in ``skipped_files``;
    meters with fewer than ``min_readings_per_meter`` readings are listed in
    ``meters_too_short``. In a batch, a customer with unusable files fails alone: the others'
    manifests are published (see ``forecast_assets.assets.common.finish_step``).

    Optional weather files under ``landing/<customer>/weather/`` (format in
    ``forecast_core.weather``) are validated too (unreadable or offset-less timestamps,
    temperatures outside -60..60 °C, duplicates, conflicting files, observations in the future)
    and listed apart from the meter files (``weather_files`` in the manifest), so a change in
    weather is a new version of the raw data.
    """
    customers = customer_ids(context)
    at = now()
    validated: dict[str, ValidatedFiles] = {}
    problems: dict[str, str] = {}
    for customer in customers:
        try:
            validated[customer] = validate_files(store, customer, config, at=at)
        except RawFilesError as exc:
            problems[customer] = str(exc)
    per_customer = {}
    for customer, result in validated.items():
        for entry in result.skipped:
            context.log.info(f"customer '{customer}': skipped {entry['file']}: {entry['reason']}")
        for meter in result.meters_too_short:
            context.log.warning(f"customer '{customer}': {meter['reason']}")
        per_customer[customer] = {
            **record_manifest(store, customer, result.prefix, result.files, result.weather_files),
            "files_version": result.version,
            **problem_metadata(result),
        }
    # Same files, same contents -> same version: downstream is stale only when data changed.
    # Dagster takes one data version per step, so a batch step keeps each in its metadata only.
    data_version = (
        dg.DataVersion(per_customer[customers[0]]["files_version"])
        if len(customers) == 1 and not problems
        else None
    )
    yield from finish_step(context, per_customer, {}, {}, problems, data_version=data_version)


class RawFilesError(ValueError):
    """A customer's raw files cannot be used; the message names the customer and files."""


@dataclass(frozen=True)
class ValidatedFiles:
    """What :func:`validate_files` found under one customer's landing prefix."""

    prefix: str
    files: list[dict[str, Any]]
    """One record per meter file (see ``record_manifest``)."""
    version: str
    """A digest of every meter file's key and content."""
    weather_files: list[dict[str, Any]] = field(default_factory=list)
    """One record per weather file (uri, relative_path, bytes, sha256, etag, readings, span)."""
    skipped: list[dict[str, str]] = field(default_factory=list)
    """Objects that are not meter files: ``file`` (relative path) and ``reason``."""
    meters_too_short: list[dict[str, Any]] = field(default_factory=list)
    """Meters with fewer readings than configured: device_id, readings, files, first, last,
    reason."""


def validate_files(
    store: ObjectStore,
    customer: str,
    config: RawLoadConfig | None = None,
    *,
    at: datetime | None = None,
) -> ValidatedFiles:
    """Parse and check every file under the customer's landing prefix, without changing any.

    Objects that are not meter files are skipped (see ``forecast_assets.landing``). Every
    unusable file is one line of the :class:`RawFilesError` raised; ``at`` (default: now) is
    the instant future timestamps are judged against.
    """
    config = config or RawLoadConfig()
    limits = config.limits(at or now())
    prefix = paths.landing_prefix(store, customer)
    objects = store.list_objects(prefix)

    skipped: list[dict[str, str]] = []
    candidates = []
    weather_objects = []
    problems: list[str] = []
    for obj in objects:
        relative = obj.uri[len(prefix) :]
        key = classify(relative)
        if key.kind == "skip":
            skipped.append({"file": relative, "reason": key.reason})
        elif key.kind == "bad":
            problems.append(f"customer '{customer}', file '{obj.uri}': {key.reason}")
        elif key.kind == "weather":
            weather_objects.append(obj)
        else:
            candidates.append(obj)
    if not candidates and not problems:
        note = (
            f" ({len(skipped)} object(s) skipped: "
            + "; ".join(f"{s['file']!r}: {s['reason']}" for s in skipped[:5])
            + (" ..." if len(skipped) > 5 else "")
            + ")"
            if skipped
            else ""
        )
        raise RawFilesError(f"customer '{customer}': no raw files under {prefix}{note}")

    files: list[dict[str, Any]] = []
    readings = _MeterReadings()
    combined = hashlib.sha256()
    for obj in candidates:
        data = store.read_bytes(obj.uri)
        digest = hashlib.sha256(data).hexdigest()
        try:
            vendor = detect_vendor(data, obj.uri)
            frame = parse_meter_file(data, obj.uri, vendor)
            check_plausible(frame, obj.uri, limits)
        except MeterFileError as exc:
            problems.append(f"customer '{customer}', {exc}")
            continue
        summary = summarize(frame, vendor)
        readings.add(frame)
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
    weather_files: list[dict[str, Any]] = []
    weather_frames: dict[str, pd.DataFrame] = {}
    for obj in weather_objects:
        data = store.read_bytes(obj.uri)
        digest = hashlib.sha256(data).hexdigest()
        try:
            temperatures = parse_weather_file(data, obj.uri, latest=limits.latest)
        except WeatherFileError as exc:
            problems.append(f"customer '{customer}', {exc}")
            continue
        weather_frames[obj.uri] = temperatures
        combined.update(f"{obj.key}\0{digest}\n".encode())
        weather_files.append(
            {
                "uri": obj.uri,
                "relative_path": obj.uri[len(prefix) :],
                "bytes": len(data),
                "sha256": digest,
                "etag": obj.etag,
                **summarize_weather(temperatures),
            }
        )
    problems += [f"customer '{customer}', {line}" for line in conflicts(weather_frames)]
    if problems:
        raise RawFilesError(
            f"{len(problems)} of {len(objects) - len(skipped)} raw file(s) cannot be used:\n"
            + "\n".join(problems)
        )
    return ValidatedFiles(
        prefix=prefix,
        files=files,
        version=combined.hexdigest()[:16],
        weather_files=weather_files,
        skipped=skipped,
        meters_too_short=readings.too_short(config.min_readings_per_meter),
    )


class _MeterReadings:
    """The distinct reading times of each meter over all of a customer's files.

    Kept as int64 arrays (8 bytes a reading), so a year of quarter-hours for a hundred meters is
    tens of megabytes at most; a reading delivered by two files counts once.
    """

    def __init__(self) -> None:
        self._times: dict[str, list[np.ndarray]] = {}

    def add(self, frame: pd.DataFrame) -> None:
        utc = frame["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None)
        ns = utc.to_numpy(dtype="datetime64[ns]").view("int64")
        devices = frame["device_id"].to_numpy()
        for device, rows in pd.Series(np.arange(len(frame))).groupby(devices, sort=False):
            self._times.setdefault(str(device), []).append(ns[rows.to_numpy()])

    def too_short(self, minimum: int) -> list[dict[str, Any]]:
        found = []
        for device in sorted(self._times):
            arrays = self._times[device]
            times = np.unique(np.concatenate(arrays))
            if len(times) >= minimum:
                continue
            first = pd.Timestamp(times[0], tz="UTC").isoformat()
            last = pd.Timestamp(times[-1], tz="UTC").isoformat()
            found.append(
                {
                    "device_id": device,
                    "readings": len(times),
                    "files": len(arrays),
                    "first": first,
                    "last": last,
                    "reason": f"meter '{device}' has {len(times)} distinct reading(s) in "
                    f"{len(arrays)} file(s), from {first} to {last}: fewer than "
                    f"min_readings_per_meter ({minimum}), too few to forecast from",
                }
            )
        return found


def problem_metadata(result: ValidatedFiles) -> dict[str, Any]:
    """What was skipped and which meters are too short, as metadata (tables even when empty)."""
    return {
        "skipped": len(result.skipped),
        "skipped_files": table_metadata(result.skipped, {"file": "string", "reason": "string"}),
        "meters_too_short": table_metadata(
            result.meters_too_short,
            {"device_id": "string", "readings": "int", "files": "int", "reason": "string"},
        ),
    }


def record_manifest(
    store: ObjectStore,
    customer: str,
    prefix: str,
    files: list[dict[str, Any]],
    weather_files: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Publish the customer's manifests (unchanged files: the same version, left as it is);
    returns the materialization's metadata. Weather files are listed apart from the meter files
    (``weather_files``), and only when there are any, so a customer without weather keeps the
    manifest (and its version) it had."""
    weather_files = weather_files or []
    manifest: dict[str, Any] = {"customer_id": customer, "landing_prefix": prefix, "files": files}
    if weather_files:
        manifest["weather_files"] = weather_files
    sagemaker_manifest = [
        {"prefix": prefix},
        *(f["relative_path"] for f in [*files, *weather_files]),
    ]
    contents = {
        paths.RAW_MANIFEST: json.dumps(manifest, indent=2).encode(),
        paths.RAW_SAGEMAKER_MANIFEST: json.dumps(sagemaker_manifest).encode(),
    }
    # Named by its content: the same files validated again are the same version, kept as it is.
    version = hashlib.sha256(contents[paths.RAW_MANIFEST]).hexdigest()[:16]
    published = publication.current(store, MANIFESTS, customer)
    if published is None or published.version != version:
        published = publication.publish(
            store, MANIFESTS, customer, version, contents=contents, inputs=version
        )
    manifest_uri = published.uri(paths.RAW_MANIFEST)

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
        "weather_files": len(weather_files),
        "weather_start": min((f["start"] for f in weather_files), default=""),
        "weather_end": max((f["end"] for f in weather_files), default=""),
        "landing_prefix": dg.MetadataValue.url(prefix),
        "manifest_uri": dg.MetadataValue.url(manifest_uri),
        "file_list": table_metadata(
            [{**f, "file": f["relative_path"], "sha256": f["sha256"][:12]} for f in files],
            {
                "file": "string",
                "vendor": "string",
                "rows": "int",
                "bytes": "int",
                "sha256": "string",
            },
        ),
    }

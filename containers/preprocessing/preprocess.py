"""SageMaker Processing job: raw meter files of one customer -> one clean, regular load table.

Inputs (ProcessingInputs, staged by SageMaker):
  /opt/ml/processing/input/raw        the customer's raw files (a ManifestFile input)
  /opt/ml/processing/input/manifest   raw_load.json: the files validated by Dagster, with hashes
Outputs (ProcessingOutputs, uploaded by SageMaker):
  /opt/ml/processing/output/preprocessed/load.parquet   timestamp, device_id, energy_kwh, is_filled, is_gap
  /opt/ml/processing/output/preprocessed/devices.json   one entry per device (vendor, first/last reading)
  /opt/ml/processing/output/preprocessed/quality.json   duplicates, conflicts, filled and missing
                                                        readings, devices left out (and why)
  /opt/ml/processing/output/preprocessed/weather.parquet only when the manifest lists weather
      files (``weather_files``): timestamp, temperature_c, kind, issued_at at the load table's
      interval (see forecast_core.weather for the files' format and the table)

Batch mode (``--batch <batch input>/batch.json`` instead of ``--customer-id``; see
forecast_core.batch) does the same for each customer ``<c>`` of the batch, in folders named after
it: raw files under ``<raw-dir>/<c>/``, the manifest at ``<manifest-dir>/<c>/raw_load.json``,
outputs in ``<output-dir>/<c>/``. ``--interval`` and ``--max-fill-gap`` apply to every customer.

Only files listed in the manifest are read, and each must still have the SHA-256 it was validated
with: a file rewritten after validation fails the job instead of slipping in unchecked.

A device with too few readings to fill one interval of the output is left out of load.parquet,
never silently: quality.json's ``dropped_devices`` and the reported metadata name each one and
why. devices.json still lists it (it is a meter of the customer, with readings).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # forecast_core ships beside this script

from forecast_core.batch import read_batch, run_each
from forecast_core.cleaning import deduplicate, regularize
from forecast_core.runtime import Report, run_job
from forecast_core.vendors import VENDORS_BY_NAME, MeterFileError, parse_meter_file
from forecast_core.weather import WEATHER_FILE, WeatherFileError, parse_weather_file, to_interval

PROCESSING = Path("/opt/ml/processing")


class InputError(ValueError):
    """Raised with the customer and file in the message."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--customer-id")
    who.add_argument("--batch", type=Path, help="batch.json: preprocess each customer it lists")
    parser.add_argument("--raw-dir", type=Path, default=PROCESSING / "input" / "raw")
    parser.add_argument("--manifest", type=Path, help="one customer's raw_load.json")
    parser.add_argument("--manifest-dir", type=Path, help="batch: holds <customer>/raw_load.json")
    parser.add_argument("--output-dir", type=Path, default=PROCESSING / "output" / "preprocessed")
    parser.add_argument("--interval", default="1h", help="target resolution, e.g. 1h or 30min")
    parser.add_argument("--max-fill-gap", default="1h", help="longest gap filled by interpolation")
    args = parser.parse_args(argv)
    manifests = PROCESSING / "input" / "manifest"
    if args.batch is None:
        if args.manifest_dir is not None:
            parser.error("--manifest-dir is for --batch; one customer takes --manifest")
        args.manifest = args.manifest or manifests / "raw_load.json"
    else:
        if args.manifest is not None:
            parser.error("--manifest is for one customer; --batch takes --manifest-dir")
        args.manifest_dir = args.manifest_dir or manifests
    return args


def read_manifest(customer: str, manifest_path: Path) -> dict[str, Any]:
    if not manifest_path.exists():
        raise InputError(f"customer '{customer}': no manifest at {manifest_path}")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("customer_id") != customer:
        raise InputError(
            f"customer '{customer}': manifest {manifest_path} is for customer "
            f"'{manifest.get('customer_id')}'"
        )
    return manifest


def validated_bytes(customer: str, raw_dir: Path, entry: dict[str, Any]) -> bytes:
    """A listed file's content, refused if it is missing or not what was validated."""
    path = raw_dir / entry["relative_path"]
    uri = entry["uri"]
    if not path.exists():
        raise InputError(f"customer '{customer}', file '{uri}': was not staged into {path}")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise InputError(
            f"customer '{customer}', file '{uri}': content changed since it was validated "
            f"(sha256 {digest[:12]}… != {entry['sha256'][:12]}…); materialize raw_load again"
        )
    return data


def load_weather(customer: str, raw_dir: Path, manifest: dict[str, Any]) -> pd.DataFrame | None:
    """Every weather file the manifest lists, parsed (None when it lists none)."""
    entries = manifest.get("weather_files") or []
    if not entries:
        return None
    frames = []
    for entry in entries:
        data = validated_bytes(customer, raw_dir, entry)
        try:
            frames.append(parse_weather_file(data, entry["uri"]))
        except WeatherFileError as exc:
            raise InputError(f"customer '{customer}', {exc}") from exc
    return pd.concat(frames, ignore_index=True)


def load_files(
    customer: str, raw_dir: Path, manifest_path: Path
) -> tuple[pd.DataFrame, dict[str, dict]]:
    manifest = read_manifest(customer, manifest_path)
    frames = []
    device_vendor: dict[str, dict] = {}
    for entry in manifest["files"]:
        uri = entry["uri"]
        data = validated_bytes(customer, raw_dir, entry)
        try:
            frame = parse_meter_file(data, uri, VENDORS_BY_NAME[entry["vendor"]])
        except MeterFileError as exc:
            raise InputError(f"customer '{customer}', {exc}") from exc
        for device in frame["device_id"].unique():
            device_vendor.setdefault(str(device), {"vendor": entry["vendor"], "files": 0})
            device_vendor[str(device)]["files"] += 1
        frames.append(frame)
    if not frames:
        raise InputError(f"customer '{customer}': the manifest lists no files")
    return pd.concat(frames, ignore_index=True), device_vendor


def describe_devices(readings: pd.DataFrame, device_vendor: dict[str, dict]) -> list[dict]:
    """devices.json: each device's vendor, first and last reading, and number of readings."""
    return [
        {
            "device_id": str(device),
            "vendor": device_vendor[str(device)]["vendor"],
            "first_reading": group["timestamp"].min().isoformat(),
            "last_reading": group["timestamp"].max().isoformat(),
            "readings": len(group),
        }
        for device, group in readings.groupby("device_id", sort=True)
    ]


def preprocess(
    report: Report,
    customer: str,
    raw_dir: Path,
    manifest: Path,
    output_dir: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Preprocess one customer's files into ``output_dir``; returns the metadata to report."""
    readings, device_vendor = load_files(customer, raw_dir, manifest)
    report.log(f"parsed {len(readings)} readings from {len(device_vendor)} device(s)")
    readings, dedup = deduplicate(readings)
    try:
        table, gaps = regularize(readings, args.interval, args.max_fill_gap)
    except ValueError as exc:
        raise InputError(f"customer '{customer}': {exc}") from exc

    output_dir.mkdir(parents=True, exist_ok=True)
    table.to_parquet(output_dir / "load.parquet", index=False)
    devices = describe_devices(readings, device_vendor)
    (output_dir / "devices.json").write_text(json.dumps(devices, indent=2))
    quality = {
        "input_readings": int(len(readings) + dedup.exact_duplicates),
        "exact_duplicates_dropped": dedup.exact_duplicates,
        "conflicting_readings": dedup.conflicts,
        "conflict_examples": dedup.conflict_examples,
        "filled_readings": gaps.filled_readings,
        "gap_intervals": gaps.gap_intervals,
        "long_gaps": gaps.long_gaps,
        "native_interval_minutes": gaps.native_interval_minutes,
        "dropped_devices": gaps.dropped_devices,
        "interval": args.interval,
    }
    for dropped in gaps.dropped_devices:
        report.log(f"customer '{customer}': left out of the load table: {dropped['reason']}")
    (output_dir / "quality.json").write_text(json.dumps(quality, indent=2))

    weather = load_weather(customer, raw_dir, read_manifest(customer, manifest))
    weather_figures: dict[str, Any] = {"weather_rows": 0}
    if weather is not None:
        table_weather = to_interval(weather, args.interval)
        table_weather.to_parquet(output_dir / WEATHER_FILE, index=False)
        weather_figures = {
            "weather_rows": len(table_weather),
            "weather_start": table_weather["timestamp"].min().isoformat(),
            "weather_end": table_weather["timestamp"].max().isoformat(),
        }
        report.log(
            f"customer '{customer}': {len(weather)} weather readings -> {len(table_weather)} "
            f"rows at {args.interval}"
        )

    return {
        **weather_figures,
        "rows": len(table),
        "devices": len(devices),
        "start": table["timestamp"].min().isoformat(),
        "end": table["timestamp"].max().isoformat(),
        "gap_ratio": round(float(table["is_gap"].mean()), 6),
        "exact_duplicates_dropped": dedup.exact_duplicates,
        "conflicting_readings": dedup.conflicts,
        "filled_readings": gaps.filled_readings,
        "long_gaps": len(gaps.long_gaps),
        # Always present, so "none left out" is as visible as the ones that were.
        "devices_dropped": len(gaps.dropped_devices),
        "dropped_devices": gaps.dropped_devices,
    }


def main(report: Report, argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.batch is None:
        customer = args.customer_id
        report.materialization(
            preprocess(report, customer, args.raw_dir, args.manifest, args.output_dir, args)
        )
        return

    def one(entry: Mapping[str, Any]) -> dict[str, Any]:
        customer = entry["customer_id"]
        manifest = args.manifest_dir / customer / "raw_load.json"
        raw_dir, output_dir = args.raw_dir / customer, args.output_dir / customer
        return preprocess(report, customer, raw_dir, manifest, output_dir, args)

    run_each(report, read_batch(args.batch), one)


if __name__ == "__main__":
    run_job("processing", main)

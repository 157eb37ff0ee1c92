"""SageMaker Processing job: forecast one customer's load for the hours after its last reading.

Inputs (ProcessingInputs):
  /opt/ml/processing/input/model     model.tar.gz from a training job that passed its gate
  /opt/ml/processing/input/history   load.parquet, the preprocessed load table
Output (ProcessingOutput):
  /opt/ml/processing/output/forecast/forecast.parquet
      timestamp, device_id, energy_kwh, model_version, issued_at

Batch mode (``--batch <batch input>/batch.json`` instead of ``--customer-id`` and
``--model-version``; see forecast_core.batch) does the same for each customer ``<c>`` of the
batch, whose entry names its ``model_version``: the model at ``<model-dir>/<c>/model.tar.gz``,
the history at ``<history-dir>/<c>/load.parquet``, the forecast written to
``<output-dir>/<c>/forecast.parquet``. ``--horizon-hours`` and ``--issued-at`` apply to all.

The horizon is ``--horizon-hours`` at the data's resolution. It may not exceed the horizon the
model was trained for: its lags are exactly long enough for that and no longer.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # forecast_core ships beside this script

from forecast_core import runtime
from forecast_core.batch import read_batch, run_each
from forecast_core.features import FeatureSpec, build_features, regular_grid

PROCESSING = Path("/opt/ml/processing")


class InferenceInputError(ValueError):
    pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--customer-id")
    who.add_argument("--batch", type=Path, help="batch.json: forecast each customer it lists")
    parser.add_argument("--model-version", help="one customer's; a batch names each customer's")
    parser.add_argument("--model-dir", type=Path, default=PROCESSING / "input" / "model")
    parser.add_argument("--history-dir", type=Path, default=PROCESSING / "input" / "history")
    parser.add_argument("--output-dir", type=Path, default=PROCESSING / "output" / "forecast")
    parser.add_argument("--horizon-hours", type=float, default=None, help="default: the model's")
    parser.add_argument("--issued-at", default=None, help="ISO time the forecast is issued")
    args = parser.parse_args(argv)
    if args.batch is None and args.model_version is None:
        parser.error("the following arguments are required: --model-version")
    if args.batch is not None and args.model_version is not None:
        parser.error("--model-version is for one customer; a batch names each customer's")
    return args


def load_model(model_dir: Path, workdir: Path, customer: str):
    archive = model_dir / "model.tar.gz"
    if not archive.exists():
        raise InferenceInputError(f"customer '{customer}': no model.tar.gz in {model_dir}")
    with tarfile.open(archive) as tar:
        tar.extractall(workdir, filter="data")
    spec = FeatureSpec.from_json((workdir / "feature_spec.json").read_text())
    scales = json.loads((workdir / "normalization.json").read_text())["scale_kwh"]
    model = joblib.load(workdir / "model.joblib")
    return model, spec, scales


def issue_time(issued_at: str | None) -> pd.Timestamp:
    """When the forecast is issued: the given ISO time (naive means UTC), or now."""
    timestamp = pd.Timestamp(issued_at or datetime.now(UTC).isoformat())
    return timestamp.tz_localize("UTC") if timestamp.tzinfo is None else timestamp


def horizon(customer: str, spec: FeatureSpec, horizon_hours: float | None) -> tuple[float, int]:
    """The forecast's length in hours and in steps: ``horizon_hours``, or else the model's own."""
    trained = spec.horizon_steps * spec.resolution / pd.Timedelta(hours=1)
    hours = horizon_hours if horizon_hours is not None else trained
    steps = round(pd.Timedelta(hours=hours) / spec.resolution)
    if steps < 1 or steps > spec.horizon_steps:
        raise InferenceInputError(
            f"customer '{customer}': horizon of {hours} h is outside 1 step..{trained:g} h, "
            "the horizon the model was trained for"
        )
    return hours, steps


def predict(
    customer: str,
    model_version: str,
    model_dir: Path,
    history_dir: Path,
    output_dir: Path,
    horizon_hours: float | None,
    issued_at: pd.Timestamp,
) -> dict[str, Any]:
    """Forecast one customer into ``output_dir``/forecast.parquet; returns the metadata to report."""
    with tempfile.TemporaryDirectory() as tmp:
        model, spec, scales = load_model(model_dir, Path(tmp), customer)
    history_file = history_dir / "load.parquet"
    if not history_file.exists():
        raise InferenceInputError(f"customer '{customer}': no {history_file.name} in {history_dir}")
    history = pd.read_parquet(history_file)
    history["device_id"] = history["device_id"].astype(str)
    resolution = spec.resolution
    hours, steps = horizon(customer, spec, horizon_hours)
    last = history.loc[history["energy_kwh"].notna(), "timestamp"].max()
    until = last + steps * resolution
    grid = regular_grid(history, spec, until=until)
    try:
        design = build_features(grid, spec, scales)
    except ValueError as exc:
        raise InferenceInputError(f"customer '{customer}': {exc}") from exc
    future = (grid["timestamp"] > last).to_numpy()
    predicted = model.predict(design.features[future]) * design.kwh_per_unit[future]
    energy = np.clip(predicted, 0.0, None)
    forecast = pd.DataFrame(
        {
            "timestamp": grid.loc[future, "timestamp"].to_numpy(),
            "device_id": grid.loc[future, "device_id"].to_numpy(),
            "energy_kwh": energy,
            "model_version": model_version,
            "issued_at": issued_at,
        }
    )
    forecast["timestamp"] = pd.to_datetime(forecast["timestamp"], utc=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    forecast.to_parquet(output_dir / "forecast.parquet", index=False)
    return {
        "rows": len(forecast),
        "devices": int(forecast["device_id"].nunique()),
        "start": forecast["timestamp"].min().isoformat(),
        "end": forecast["timestamp"].max().isoformat(),
        "horizon_hours": float(hours),
        "total_kwh": round(float(forecast["energy_kwh"].sum()), 3),
        "model_version": model_version,
    }


def main(report: runtime.Report, argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # One issue time for the whole job, so every customer of a batch has the same.
    issued_at = issue_time(args.issued_at)

    def run(customer: str, model_version: str, folder: str) -> dict[str, Any]:
        # A batch customer's files sit in a folder named after it; a lone customer's in "".
        return predict(
            customer,
            model_version,
            args.model_dir / folder,
            args.history_dir / folder,
            args.output_dir / folder,
            args.horizon_hours,
            issued_at,
        )

    if args.batch is None:
        report.materialization(run(args.customer_id, args.model_version, ""))
        return
    entries = read_batch(args.batch, required=("model_version",))
    run_each(report, entries, lambda e: run(e["customer_id"], e["model_version"], e["customer_id"]))


if __name__ == "__main__":
    runtime.run_job("processing", main)

"""SageMaker Processing job: forecast one customer's load for the hours after its last reading.

Inputs (ProcessingInputs):
  /opt/ml/processing/input/model     model.tar.gz from a training job that passed its gate
  /opt/ml/processing/input/history   load.parquet, the preprocessed load table
Output (ProcessingOutput):
  /opt/ml/processing/output/forecast/forecast.parquet
      timestamp, device_id, energy_kwh, model_version, issued_at

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

import joblib
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # forecast_core ships beside this script

from forecast_core import runtime
from forecast_core.features import FeatureSpec, build_features, regular_grid

PROCESSING = Path("/opt/ml/processing")


class InferenceInputError(ValueError):
    pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customer-id", required=True)
    parser.add_argument("--model-version", required=True)
    parser.add_argument("--model-dir", type=Path, default=PROCESSING / "input" / "model")
    parser.add_argument("--history-dir", type=Path, default=PROCESSING / "input" / "history")
    parser.add_argument("--output-dir", type=Path, default=PROCESSING / "output" / "forecast")
    parser.add_argument("--horizon-hours", type=float, default=None, help="default: the model's")
    parser.add_argument("--issued-at", default=None, help="ISO time the forecast is issued")
    return parser.parse_args(argv)


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


def main(report: runtime.Report, argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    customer = args.customer_id
    with tempfile.TemporaryDirectory() as tmp:
        model, spec, scales = load_model(args.model_dir, Path(tmp), customer)
    history_file = args.history_dir / "load.parquet"
    if not history_file.exists():
        raise InferenceInputError(
            f"customer '{customer}': no {history_file.name} in {args.history_dir}"
        )
    history = pd.read_parquet(history_file)
    history["device_id"] = history["device_id"].astype(str)
    resolution = spec.resolution
    horizon_hours = (
        args.horizon_hours
        if args.horizon_hours is not None
        else spec.horizon_steps * resolution / pd.Timedelta(hours=1)
    )
    steps = round(pd.Timedelta(hours=horizon_hours) / resolution)
    if steps < 1 or steps > spec.horizon_steps:
        trained = spec.horizon_steps * resolution / pd.Timedelta(hours=1)
        raise InferenceInputError(
            f"customer '{customer}': horizon of {horizon_hours} h is outside 1 step..{trained:g} h, "
            "the horizon the model was trained for"
        )
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
    issued_at = pd.Timestamp(args.issued_at or datetime.now(UTC).isoformat())
    if issued_at.tzinfo is None:
        issued_at = issued_at.tz_localize("UTC")
    forecast = pd.DataFrame(
        {
            "timestamp": grid.loc[future, "timestamp"].to_numpy(),
            "device_id": grid.loc[future, "device_id"].to_numpy(),
            "energy_kwh": energy,
            "model_version": args.model_version,
            "issued_at": issued_at,
        }
    )
    forecast["timestamp"] = pd.to_datetime(forecast["timestamp"], utc=True)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    forecast.to_parquet(args.output_dir / "forecast.parquet", index=False)
    report.materialization(
        {
            "rows": len(forecast),
            "devices": int(forecast["device_id"].nunique()),
            "start": forecast["timestamp"].min().isoformat(),
            "end": forecast["timestamp"].max().isoformat(),
            "horizon_hours": float(horizon_hours),
            "total_kwh": round(float(forecast["energy_kwh"].sum()), 3),
            "model_version": args.model_version,
        }
    )


if __name__ == "__main__":
    runtime.run_job("processing", main)

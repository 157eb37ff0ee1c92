"""Each job script, run on its own in a SageMaker-shaped directory from its shipped bundle,
with no Dagster around it: preprocessing -> training -> inference, as SageMaker would chain them."""

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from forecast_assets.demo_data import DEMO_CUSTOMERS, generate_customer_files
from resources.jobs.code import bundle
from tests.conftest import TEST_END

CUSTOMER = DEMO_CUSTOMERS[0]  # enerlog: decimal comma, W, naive local time


def install_bundle(job: str, code_dir: Path) -> Path:
    """Lay the job's shipped bundle out as the image (or SageMaker's code input) would."""
    return bundle(job).write_to(code_dir)  # type: ignore[arg-type]


def run(
    script: Path, args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess:
    # Only what a container would have: no inherited PYTHONPATH, no Pipes variables.
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return subprocess.run(
        [sys.executable, str(script), *args],
        env={**base, "PYTHONUNBUFFERED": "1", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def write_raw(raw_dir: Path, days: int) -> dict:
    files = generate_customer_files(CUSTOMER, end=TEST_END, days=days, seed=1)
    entries = []
    for name, data in sorted(files.items()):
        (raw_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (raw_dir / name).write_bytes(data)
        entries.append(
            {
                "uri": f"s3://bucket/landing/{CUSTOMER.customer_id}/{name}",
                "relative_path": name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "vendor": CUSTOMER.vendor,
            }
        )
    return {"customer_id": CUSTOMER.customer_id, "files": entries}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Path]:
    """Run the three scripts in sequence, each in its own /opt/ml stand-in."""
    base = tmp_path_factory.mktemp("containers")
    out: dict[str, Path] = {}

    # Preprocessing (processing job).
    ml = base / "prep" / "opt" / "ml"
    raw, manifest_dir, output = (
        ml / "processing/input/raw",
        ml / "processing/input/manifest",
        ml / "processing/output/preprocessed",
    )
    raw.mkdir(parents=True)
    manifest_dir.mkdir(parents=True)
    (manifest_dir / "raw_load.json").write_text(json.dumps(write_raw(raw, days=70)))
    script = install_bundle("preprocessing", ml / "processing/input/code")
    proc = run(
        script,
        [
            "--customer-id",
            CUSTOMER.customer_id,
            "--raw-dir",
            str(raw),
            "--manifest",
            str(manifest_dir / "raw_load.json"),
            "--output-dir",
            str(output),
        ],
        {"SM_OUTPUT_DIR": str(ml / "output")},
        base,
    )
    assert proc.returncode == 0, proc.stderr
    out["preprocessed"] = output

    # Training (training job, script mode).
    ml = base / "train" / "opt" / "ml"
    channel = ml / "input/data/train"
    channel.mkdir(parents=True)
    (channel / "load.parquet").write_bytes((output / "load.parquet").read_bytes())
    config = ml / "input/config"
    config.mkdir(parents=True)
    hps = {
        "customer_id": CUSTOMER.customer_id,
        "n_estimators": 30,
        "holdout_days": 14,
        "horizon_hours": 48,
    }
    (config / "hyperparameters.json").write_text(
        json.dumps({k: json.dumps(v) for k, v in hps.items()})
    )
    script = install_bundle("training", ml / "code")
    env = {
        "SM_MODEL_DIR": str(ml / "model"),
        "SM_OUTPUT_DIR": str(ml / "output"),
        "SM_OUTPUT_DATA_DIR": str(ml / "output/data"),
        "SM_INPUT_CONFIG_DIR": str(config),
        "SM_CHANNEL_TRAIN": str(channel),
    }
    proc = run(script, ["train"], env, base)  # SageMaker passes "train" to a custom image
    assert proc.returncode == 0, proc.stderr
    out["model"], out["train_output"] = ml / "model", ml / "output/data"

    # Inference (processing job) with model.tar.gz packed as SageMaker packs /opt/ml/model.
    ml = base / "infer" / "opt" / "ml"
    model_in, history, forecast_out = (
        ml / "processing/input/model",
        ml / "processing/input/history",
        ml / "processing/output/forecast",
    )
    model_in.mkdir(parents=True)
    history.mkdir(parents=True)
    with tarfile.open(model_in / "model.tar.gz", "w:gz") as tar:
        for path in sorted(out["model"].iterdir()):
            tar.add(path, arcname=path.name)
    (history / "load.parquet").write_bytes((output / "load.parquet").read_bytes())
    script = install_bundle("inference", ml / "processing/input/code")
    proc = run(
        script,
        [
            "--customer-id",
            CUSTOMER.customer_id,
            "--model-version",
            "v1",
            "--model-dir",
            str(model_in),
            "--history-dir",
            str(history),
            "--output-dir",
            str(forecast_out),
            "--horizon-hours",
            "24",
            "--issued-at",
            "2025-11-03T06:00:00Z",
        ],
        {"SM_OUTPUT_DIR": str(ml / "output")},
        base,
    )
    assert proc.returncode == 0, proc.stderr
    out["forecast"] = forecast_out
    return out


def test_preprocessing_output_is_regular_hourly_and_canonical(pipeline):
    table = pd.read_parquet(pipeline["preprocessed"] / "load.parquet")
    assert list(table.columns) == ["timestamp", "device_id", "energy_kwh", "is_filled", "is_gap"]
    assert str(table["timestamp"].dt.tz) == "UTC"
    assert table["device_id"].nunique() == CUSTOMER.devices
    for _, group in table.groupby("device_id"):
        steps = group["timestamp"].sort_values().diff().dropna().unique()
        assert list(steps) == [pd.Timedelta(hours=1)]
    assert not table.duplicated(["device_id", "timestamp"]).any()
    assert (table.loc[~table["is_gap"], "energy_kwh"] >= 0).all()
    devices = json.loads((pipeline["preprocessed"] / "devices.json").read_text())
    assert {d["vendor"] for d in devices} == {CUSTOMER.vendor}
    quality = json.loads((pipeline["preprocessed"] / "quality.json").read_text())
    assert quality["native_interval_minutes"] == {d["device_id"]: 15.0 for d in devices}


def test_training_writes_sagemaker_model_layout_and_metrics(pipeline):
    assert sorted(p.name for p in pipeline["model"].iterdir()) == [
        "feature_spec.json",
        "metrics.json",
        "model.joblib",
        "normalization.json",
    ]
    metrics = json.loads((pipeline["model"] / "metrics.json").read_text())
    for block in ("model", "baseline_seasonal_naive"):
        assert set(metrics[block]) >= {"mae", "rmse", "mape", "wape", "r2"}
    assert metrics["holdout_hours"] > 24 * 10
    holdout = pd.read_csv(pipeline["train_output"] / "holdout.csv")
    assert list(holdout.columns) == ["timestamp", "actual", "forecast", "baseline"]
    assert len(holdout) == metrics["holdout_hours"]


def test_inference_forecasts_the_requested_horizon_after_the_last_reading(pipeline):
    forecast = pd.read_parquet(pipeline["forecast"] / "forecast.parquet")
    history = pd.read_parquet(pipeline["preprocessed"] / "load.parquet")
    last = history.loc[history["energy_kwh"].notna(), "timestamp"].max()
    assert len(forecast) == 24 * CUSTOMER.devices
    assert forecast["timestamp"].min() == last + pd.Timedelta(hours=1)
    assert forecast["timestamp"].max() == last + pd.Timedelta(hours=24)
    assert (forecast["energy_kwh"] >= 0).all()
    assert set(forecast["model_version"]) == {"v1"}


def test_preprocessing_refuses_a_file_changed_after_validation(tmp_path):
    ml = tmp_path / "opt" / "ml"
    raw, manifest = ml / "processing/input/raw", ml / "processing/input/manifest/raw_load.json"
    raw.mkdir(parents=True)
    manifest.parent.mkdir(parents=True)
    entries = write_raw(raw, days=3)
    manifest.write_text(json.dumps(entries))
    changed = raw / entries["files"][0]["relative_path"]
    original = changed.read_bytes()
    changed.write_bytes(original + b"\n")
    script = install_bundle("preprocessing", ml / "processing/input/code")
    proc = run(
        script,
        [
            "--customer-id",
            CUSTOMER.customer_id,
            "--raw-dir",
            str(raw),
            "--manifest",
            str(manifest),
            "--output-dir",
            str(ml / "processing/output/preprocessed"),
        ],
        {"SM_OUTPUT_DIR": str(ml / "output")},
        tmp_path,
    )
    assert proc.returncode == 1
    message = (ml / "output" / "message").read_text()
    assert f"customer '{CUSTOMER.customer_id}'" in message
    assert entries["files"][0]["uri"] in message
    assert "content changed since it was validated" in message


def test_inference_refuses_a_horizon_beyond_the_trained_one(pipeline, tmp_path):
    ml = tmp_path / "opt" / "ml"
    script = install_bundle("inference", ml / "processing/input/code")
    model_in = ml / "processing/input/model"
    model_in.mkdir(parents=True)
    with tarfile.open(model_in / "model.tar.gz", "w:gz") as tar:
        for path in sorted(pipeline["model"].iterdir()):
            tar.add(path, arcname=path.name)
    proc = run(
        script,
        [
            "--customer-id",
            "acme",
            "--model-version",
            "v1",
            "--model-dir",
            str(model_in),
            "--history-dir",
            str(pipeline["preprocessed"]),
            "--output-dir",
            str(tmp_path / "o"),
            "--horizon-hours",
            "72",
        ],
        {"SM_OUTPUT_DIR": str(ml / "output")},
        tmp_path,
    )
    assert proc.returncode == 1
    assert "horizon of 72.0 h is outside" in (ml / "output" / "message").read_text()

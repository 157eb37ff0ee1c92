"""Each job script, run on its own in a SageMaker-shaped directory from its shipped bundle,
with no Dagster around it: preprocessing -> training -> inference, as SageMaker would chain them;
then the same in batch mode, several customers per job, and the batch file they read."""

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest

from forecast_assets.demo_data import DEMO_CUSTOMERS, DemoCustomer, generate_customer_files
from forecast_core.batch import BatchFailed, BatchFileError, read_batch, run_each
from forecast_core.features import READABLE_SPEC_VERSIONS, FeatureSpec
from forecast_core.runtime import Report
from forecast_core.sanity import forecast_problems
from resources.jobs.code import CONTAINERS_DIR, ENTRY_SCRIPTS, bundle
from tests.conftest import TEST_END

CUSTOMER = DEMO_CUSTOMERS[0]  # enerlog: decimal comma, W, naive local time
OTHER = DEMO_CUSTOMERS[2]  # kilowatch, the second customer of a batch
ISSUED_AT = "2025-11-03T06:00:00Z"


TRAIN_HPS = {"n_estimators": 30, "backtest_days": 14, "horizon_hours": 48}


def write_hyperparameters(config: Path, hps: dict[str, Any]) -> None:
    """As SageMaker writes them: every value a string (JSON-encoded here)."""
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(
        json.dumps({k: json.dumps(v) for k, v in hps.items()})
    )


def pack_model(model_dir: Path, archive: Path) -> None:
    """Pack a model folder as SageMaker packs /opt/ml/model."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)


def training_env(ml: Path, **channels: Path) -> dict[str, str]:
    return {
        "SM_MODEL_DIR": str(ml / "model"),
        "SM_OUTPUT_DIR": str(ml / "output"),
        "SM_OUTPUT_DATA_DIR": str(ml / "output/data"),
        "SM_INPUT_CONFIG_DIR": str(ml / "input/config"),
        **{f"SM_CHANNEL_{name.upper()}": str(path) for name, path in channels.items()},
    }


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


def write_raw(raw_dir: Path, days: int, customer: DemoCustomer = CUSTOMER) -> dict:
    files = generate_customer_files(customer, end=TEST_END, days=days, seed=1)
    entries = []
    for name, data in sorted(files.items()):
        (raw_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (raw_dir / name).write_bytes(data)
        entries.append(
            {
                "uri": f"s3://bucket/landing/{customer.customer_id}/{name}",
                "relative_path": name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "vendor": customer.vendor,
            }
        )
    return {"customer_id": customer.customer_id, "files": entries}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Any]:
    """Run the three scripts in sequence, each in its own /opt/ml stand-in."""
    base = tmp_path_factory.mktemp("containers")
    out: dict[str, Any] = {"stdout": {}}

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
    out["preprocessed"], out["stdout"]["preprocessing"] = output, proc.stdout

    # Training (training job, script mode).
    ml = base / "train" / "opt" / "ml"
    channel = ml / "input/data/train"
    channel.mkdir(parents=True)
    (channel / "load.parquet").write_bytes((output / "load.parquet").read_bytes())
    write_hyperparameters(ml / "input/config", {"customer_id": CUSTOMER.customer_id, **TRAIN_HPS})
    script = install_bundle("training", ml / "code")
    env = training_env(ml, train=channel)
    proc = run(script, ["train"], env, base)  # SageMaker passes "train" to a custom image
    assert proc.returncode == 0, proc.stderr
    out["model"], out["train_output"] = ml / "model", ml / "output/data"
    out["stdout"]["training"] = proc.stdout

    # Inference (processing job) with model.tar.gz packed as SageMaker packs /opt/ml/model.
    ml = base / "infer" / "opt" / "ml"
    model_in, history, forecast_out = (
        ml / "processing/input/model",
        ml / "processing/input/history",
        ml / "processing/output/forecast",
    )
    history.mkdir(parents=True)
    pack_model(out["model"], model_in / "model.tar.gz")
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
            ISSUED_AT,
        ],
        {"SM_OUTPUT_DIR": str(ml / "output")},
        base,
    )
    assert proc.returncode == 0, proc.stderr
    out["forecast"], out["stdout"]["inference"] = forecast_out, proc.stdout
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
        "intervals.json",
        "metrics.json",
        "model.joblib",
        "normalization.json",
    ]
    metrics = json.loads((pipeline["model"] / "metrics.json").read_text())
    for block in ("model", "baseline_seasonal_naive"):
        assert set(metrics[block]) >= {"mae", "rmse", "mape", "wape", "r2"}
    assert set(metrics["candidates"]) == {
        "forest",
        "lightgbm",
        "seasonal_naive_week",
        "seasonal_naive_day",
    }
    assert metrics["model"] == metrics["candidates"][metrics["model_kind"]]
    # The interval table saved with the model is the chosen kind's, one per horizon bucket,
    # and its coverage was measured on origins whose intervals saw only earlier errors.
    table = json.loads((pipeline["model"] / "intervals.json").read_text())
    assert table == metrics["intervals"]
    assert table["kind"] == metrics["model_kind"]
    assert set(table["quantiles"]) == {"24", "48"}  # 48 h of hourly steps: two day buckets
    assert all(q["q10"] <= q["q90"] for q in table["quantiles"].values())
    assert 0.5 <= table["coverage_p10_p90_out_of_sample"] <= 1.0
    assert table["coverage_origins"] == 14 - 5  # the first five have too few earlier errors
    assert set(metrics["candidates_coverage_p10_p90_out_of_sample"]) == set(metrics["candidates"])
    assert metrics["baseline_seasonal_naive"] == metrics["candidates"]["seasonal_naive_week"]
    assert metrics["backtest_origins"] == 14  # TRAIN_HPS
    assert metrics["backtest_hours"] > 24 * 10
    backtest = pd.read_csv(pipeline["train_output"] / "backtest.csv")
    assert list(backtest.columns) == [
        "origin",
        "timestamp",
        "lead_steps",
        "actual",
        "forest",
        "lightgbm",
        "seasonal_naive_week",
        "seasonal_naive_day",
        "forecast",
        "baseline",
    ]
    assert len(backtest) == metrics["backtest_hours"]
    assert backtest["origin"].nunique() == 14


def test_inference_forecasts_the_requested_horizon_after_the_last_reading(pipeline):
    forecast = pd.read_parquet(pipeline["forecast"] / "forecast.parquet")
    history = pd.read_parquet(pipeline["preprocessed"] / "load.parquet")
    last = history.loc[history["energy_kwh"].notna(), "timestamp"].max()
    assert len(forecast) == 24 * CUSTOMER.devices
    assert forecast["timestamp"].min() == last + pd.Timedelta(hours=1)
    assert forecast["timestamp"].max() == last + pd.Timedelta(hours=24)
    assert (forecast["energy_kwh"] >= 0).all()
    assert set(forecast["model_version"]) == {"v1"}
    assert set(forecast["source"]) == {"newest"}  # the default with a model
    assert list(forecast.columns) == SOURCE_COLUMNS
    assert (forecast["p10_kwh"] <= forecast["energy_kwh"]).all()
    assert (forecast["energy_kwh"] <= forecast["p90_kwh"]).all()
    assert (forecast["p90_kwh"] > forecast["p10_kwh"]).mean() > 0.9  # a real interval
    metrics = json.loads((pipeline["model"] / "metrics.json").read_text())
    assert set(forecast["model_kind"]) == {metrics["model_kind"]}
    report = reports(pipeline["stdout"]["inference"])["report"]
    assert (report["model_version"], report["source"]) == ("v1", "newest")
    assert report["model_kind"] == metrics["model_kind"]
    assert report["interval_method"] == metrics["intervals"]["method"]


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
    pack_model(pipeline["model"], model_in / "model.tar.gz")
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


# Batch mode: several customers in one job -------------------------------------------------------


def write_batch(directory: Path, entries: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "batch.json").write_text(json.dumps({"customers": entries}))
    return directory / "batch.json"


def reports(stdout: str) -> dict[str, Any]:
    """A job's report lines by label ("report" or "report[<customer>]") and failure lines
    ("failed[<customer>]", the reason as a string)."""
    found: dict[str, Any] = {}
    for line in stdout.splitlines():
        label, sep, rest = line.partition(": ")
        if sep and label.startswith("report"):
            found[label] = json.loads(rest)
        elif sep and label.startswith("failed["):
            found[label] = rest
    return found


def preprocess_batch(
    base: Path, customers: list[DemoCustomer], days: int, tamper: str | None = None
) -> tuple[subprocess.CompletedProcess, Path, dict[str, dict]]:
    """Preprocessing in batch mode; ``tamper`` names a customer whose first file is changed
    after validation. Returns the run, the output folder and the manifests by customer."""
    ml = base / "opt" / "ml"
    inputs = ml / "processing/input"
    manifests = {}
    for customer in customers:
        c = customer.customer_id
        manifests[c] = write_raw(inputs / "raw" / c, days, customer)
        (inputs / "manifest" / c).mkdir(parents=True)
        (inputs / "manifest" / c / "raw_load.json").write_text(json.dumps(manifests[c]))
    if tamper is not None:
        changed = inputs / "raw" / tamper / manifests[tamper]["files"][0]["relative_path"]
        changed.write_bytes(changed.read_bytes() + b"\n")
    batch = write_batch(inputs / "batch", [{"customer_id": c} for c in manifests])
    output = ml / "processing/output/preprocessed"
    script = install_bundle("preprocessing", inputs / "code")
    args = ["--batch", str(batch), "--raw-dir", str(inputs / "raw")]
    args += ["--manifest-dir", str(inputs / "manifest"), "--output-dir", str(output)]
    proc = run(script, args, {"SM_OUTPUT_DIR": str(ml / "output")}, base)
    return proc, output, manifests


def train_batch(
    base: Path, loads: Mapping[str, Path | None]
) -> tuple[subprocess.CompletedProcess, Path]:
    """Training in batch mode on each customer's load.parquet (None: the channel lacks it)."""
    ml = base / "opt" / "ml"
    channel = ml / "input/data/train"
    for customer, load in loads.items():
        (channel / customer).mkdir(parents=True)
        if load is not None:
            (channel / customer / "load.parquet").write_bytes(load.read_bytes())
    batch = write_batch(ml / "input/data/batch", [{"customer_id": c} for c in loads]).parent
    write_hyperparameters(ml / "input/config", TRAIN_HPS)
    script = install_bundle("training", ml / "code")
    proc = run(script, ["train"], training_env(ml, train=channel, batch=batch), base)
    return proc, ml


def infer_batch(
    base: Path,
    customers: Mapping[str, tuple[str | None, Path | None, Path | None]],
    sources: Mapping[str, str] | None = None,
    horizon_hours: str | None = "24",
) -> tuple[subprocess.CompletedProcess, Path]:
    """Inference in batch mode; per customer its model version, model folder (None: no model
    folder at all) and history (None: not staged), and, if given, its source (else the entry has
    none). Returns the run and the output folder."""
    ml = base / "opt" / "ml"
    inputs = ml / "processing/input"
    for customer, (_, model, history) in customers.items():
        if model is not None:
            pack_model(model, inputs / "model" / customer / "model.tar.gz")
        (inputs / "history" / customer).mkdir(parents=True)
        if history is not None:
            (inputs / "history" / customer / "load.parquet").write_bytes(history.read_bytes())
    entries = [
        {
            "customer_id": c,
            "model_version": v,
            **({"source": sources[c]} if sources and c in sources else {}),
        }
        for c, (v, _, _) in customers.items()
    ]
    batch = write_batch(inputs / "batch", entries)
    output = ml / "processing/output/forecast"
    script = install_bundle("inference", inputs / "code")
    args = ["--batch", str(batch), "--model-dir", str(inputs / "model")]
    args += ["--history-dir", str(inputs / "history"), "--output-dir", str(output)]
    args += ["--issued-at", ISSUED_AT]
    if horizon_hours is not None:
        args += ["--horizon-hours", horizon_hours]
    proc = run(script, args, {"SM_OUTPUT_DIR": str(ml / "output")}, base)
    return proc, output


@pytest.fixture(scope="module")
def batch_pipeline(tmp_path_factory) -> dict[str, Any]:
    """The three scripts in batch mode for CUSTOMER (the same data as ``pipeline``) and OTHER."""
    base = tmp_path_factory.mktemp("batch")
    c, o = CUSTOMER.customer_id, OTHER.customer_id
    proc, preprocessed, _ = preprocess_batch(base / "prep", [CUSTOMER, OTHER], days=70)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = {"preprocessed": preprocessed, "stdout": {"preprocessing": proc.stdout}}

    loads = {x: preprocessed / x / "load.parquet" for x in (c, o)}
    proc, ml = train_batch(base / "train", loads)
    assert proc.returncode == 0, proc.stderr
    out["model"], out["train_output"] = ml / "model", ml / "output/data"
    out["stdout"]["training"] = proc.stdout

    models = {x: (version, out["model"] / x, loads[x]) for x, version in ((c, "v1"), (o, "v2"))}
    proc, out["forecast"] = infer_batch(base / "infer", models)
    assert proc.returncode == 0, proc.stderr
    out["stdout"]["inference"] = proc.stdout
    return out


@pytest.mark.parametrize("job", ["preprocessing", "training", "inference"])
def test_batch_reports_each_customer_as_single_mode_reports_it(pipeline, batch_pipeline, job):
    single, batch = reports(pipeline["stdout"][job]), reports(batch_pipeline["stdout"][job])
    assert sorted(batch) == [f"report[{CUSTOMER.customer_id}]", f"report[{OTHER.customer_id}]"]
    # Numbers approximately: training's model metrics vary in their last digits from run to run.
    # (pytest.approx refuses a mapping that holds a list, so each value is compared on its own.)
    same = batch[f"report[{CUSTOMER.customer_id}]"]
    assert same.keys() == single["report"].keys()
    for key, value in single["report"].items():
        if key.endswith("_seconds"):  # timings differ from run to run
            continue
        assert same[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    assert batch[f"report[{OTHER.customer_id}]"].keys() == single["report"].keys()


def test_batch_preprocessing_writes_each_customer_as_single_mode(pipeline, batch_pipeline):
    out = batch_pipeline["preprocessed"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [CUSTOMER.customer_id, OTHER.customer_id]
    )
    same = out / CUSTOMER.customer_id
    pd.testing.assert_frame_equal(
        pd.read_parquet(same / "load.parquet"),
        pd.read_parquet(pipeline["preprocessed"] / "load.parquet"),
    )
    for name in ("devices.json", "quality.json"):
        assert (same / name).read_text() == (pipeline["preprocessed"] / name).read_text()
    other = pd.read_parquet(out / OTHER.customer_id / "load.parquet")
    assert list(other.columns) == ["timestamp", "device_id", "energy_kwh", "is_filled", "is_gap"]
    assert other["device_id"].nunique() == OTHER.devices
    devices = json.loads((out / OTHER.customer_id / "devices.json").read_text())
    assert {d["vendor"] for d in devices} == {OTHER.vendor}


def test_batch_training_writes_each_customer_as_single_mode(pipeline, batch_pipeline):
    model, data = batch_pipeline["model"], batch_pipeline["train_output"]
    customers = sorted([CUSTOMER.customer_id, OTHER.customer_id])
    assert sorted(p.name for p in model.iterdir()) == customers
    assert sorted(p.name for p in data.iterdir()) == customers
    for customer in customers:
        assert sorted(p.name for p in (model / customer).iterdir()) == sorted(
            p.name for p in pipeline["model"].iterdir()
        )
        assert sorted(p.name for p in (data / customer).iterdir()) == [
            "backtest.csv",
            "metrics.json",
        ]
    # The forest sums its trees' predictions in parallel, in no fixed order: the last digits vary.
    same = CUSTOMER.customer_id
    for folder, single in (
        (model / same, pipeline["model"]),
        (data / same, pipeline["train_output"]),
    ):
        batch_metrics = json.loads((folder / "metrics.json").read_text())
        single_metrics = json.loads((single / "metrics.json").read_text())
        for block in ("model", "baseline_seasonal_naive", "wape_ratio"):
            assert batch_metrics.pop(block) == pytest.approx(single_metrics.pop(block))
        batch_scores, single_scores = (
            batch_metrics.pop("candidates"),
            single_metrics.pop("candidates"),
        )
        assert batch_scores.keys() == single_scores.keys()
        for name, scores in batch_scores.items():
            assert scores == pytest.approx(single_scores[name])
        del batch_metrics["fit_seconds"], single_metrics["fit_seconds"]  # timings differ
        batch_table, single_table = batch_metrics.pop("intervals"), single_metrics.pop("intervals")
        batch_quantiles, single_quantiles = (
            batch_table.pop("quantiles"),
            single_table.pop("quantiles"),
        )
        assert batch_table == pytest.approx(single_table)
        assert batch_quantiles.keys() == single_quantiles.keys()
        for bucket, quantiles in batch_quantiles.items():
            assert quantiles == pytest.approx(single_quantiles[bucket])
        assert batch_metrics == single_metrics
    pd.testing.assert_frame_equal(
        pd.read_csv(data / same / "backtest.csv"),
        pd.read_csv(pipeline["train_output"] / "backtest.csv"),
    )
    other = json.loads((model / OTHER.customer_id / "metrics.json").read_text())
    assert other["customer_id"] == OTHER.customer_id


def test_batch_inference_writes_each_customer_as_single_mode(pipeline, batch_pipeline):
    out = batch_pipeline["forecast"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / CUSTOMER.customer_id / "forecast.parquet"),
        pd.read_parquet(pipeline["forecast"] / "forecast.parquet"),
    )
    other = pd.read_parquet(out / OTHER.customer_id / "forecast.parquet")
    assert len(other) == 24 * OTHER.devices
    assert set(other["model_version"]) == {"v2"}
    assert set(other["issued_at"]) == {pd.Timestamp(ISSUED_AT)}


def test_preprocessing_batch_goes_on_after_a_failed_customer(tmp_path):
    bad, good = OTHER.customer_id, CUSTOMER.customer_id
    # The failing customer comes first: the next one must still run.
    proc, output, manifests = preprocess_batch(tmp_path, [OTHER, CUSTOMER], days=3, tamper=bad)
    # The job completes, so SageMaker uploads the good customer's output.
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "opt/ml/output/message").exists()
    assert sorted(p.name for p in (output / good).iterdir()) == [
        "devices.json",
        "load.parquet",
        "quality.json",
    ]
    assert not (output / bad).exists()
    uri = manifests[bad]["files"][0]["uri"]
    lines = reports(proc.stdout)
    assert sorted(lines) == [f"failed[{bad}]", f"report[{good}]"]
    reason = lines[f"failed[{bad}]"]
    assert reason.startswith(f"customer '{bad}', file '{uri}': ")
    assert "content changed since it was validated" in reason
    assert f"1 of 2 customers failed: {reason} (the others' outputs are written" in proc.stdout


def test_preprocessing_batch_fails_when_every_customer_failed(tmp_path):
    proc, _, _ = preprocess_batch(tmp_path, [OTHER], days=3, tamper=OTHER.customer_id)
    assert proc.returncode == 1
    message = (tmp_path / "opt/ml/output/message").read_text()
    assert message.startswith(f"1 of 1 customers failed: customer '{OTHER.customer_id}', file ")


def test_training_batch_goes_on_after_a_failed_customer(batch_pipeline, tmp_path):
    bad, good = OTHER.customer_id, CUSTOMER.customer_id
    load = batch_pipeline["preprocessed"] / good / "load.parquet"
    proc, ml = train_batch(tmp_path, {good: load, bad: None})
    assert proc.returncode == 0, proc.stderr
    assert not (ml / "output/failure").exists()
    assert (ml / "model" / good / "model.joblib").exists()
    assert (ml / "output/data" / good / "backtest.csv").exists()
    assert not (ml / "model" / bad).exists()
    lines = reports(proc.stdout)
    assert sorted(lines) == [f"failed[{bad}]", f"report[{good}]"]
    assert lines[f"failed[{bad}]"] == (
        f"customer '{bad}': training channel has no {bad}/load.parquet"
    )


def test_inference_batch_goes_on_after_a_failed_customer(batch_pipeline, tmp_path):
    bad, good = OTHER.customer_id, CUSTOMER.customer_id
    model, load = batch_pipeline["model"], batch_pipeline["preprocessed"] / good / "load.parquet"
    proc, output = infer_batch(
        tmp_path, {bad: ("v2", model / bad, None), good: ("v1", model / good, load)}
    )
    assert proc.returncode == 0, proc.stderr
    assert (output / good / "forecast.parquet").exists()
    assert not (output / bad).exists()
    history = tmp_path / "opt/ml/processing/input/history" / bad
    lines = reports(proc.stdout)
    assert sorted(lines) == [f"failed[{bad}]", f"report[{good}]"]
    assert lines[f"failed[{bad}]"] == f"customer '{bad}': no load.parquet in {history}"


def test_inference_batch_refuses_an_entry_without_model_version(tmp_path):
    ml = tmp_path / "opt" / "ml"
    batch = write_batch(ml / "processing/input/batch", [{"customer_id": "a"}])
    script = install_bundle("inference", ml / "processing/input/code")
    proc = run(script, ["--batch", str(batch)], {"SM_OUTPUT_DIR": str(ml / "output")}, tmp_path)
    assert proc.returncode == 1
    assert (ml / "output/message").read_text() == (
        f"BatchFileError: batch file {batch}: customer 'a' has no \"model_version\" string"
    )


def load_script(job: str) -> ModuleType:
    """A job script imported into this process, for what needs no run of its own."""
    path = CONTAINERS_DIR / job / ENTRY_SCRIPTS[job]  # type: ignore[index]
    spec = importlib.util.spec_from_file_location(f"{job}_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved  # the script puts its own folder first
    return module


def test_training_batch_refuses_a_customer_id_hyperparameter(tmp_path, monkeypatch):
    batch = write_batch(tmp_path / "batch", [{"customer_id": "a"}]).parent
    write_hyperparameters(tmp_path / "config", {"customer_id": "a", **TRAIN_HPS})
    monkeypatch.setenv("SM_CHANNEL_BATCH", str(batch))
    monkeypatch.setenv("SM_INPUT_CONFIG_DIR", str(tmp_path / "config"))
    with pytest.raises(ValueError, match="hyperparameter customer_id names one customer"):
        load_script("training").main(Report())


@pytest.mark.parametrize(
    ("job", "args", "error"),
    [
        ("preprocessing", ["--customer-id", "a", "--batch", "b.json"], "not allowed with"),
        ("preprocessing", ["--batch", "b.json", "--manifest", "m.json"], "--manifest is for one"),
        ("preprocessing", ["--customer-id", "a", "--manifest-dir", "m"], "--manifest-dir is for"),
        ("preprocessing", [], "one of the arguments --customer-id --batch is required"),
        ("inference", ["--batch", "b.json", "--model-version", "v1"], "--model-version is for"),
        ("inference", ["--customer-id", "a"], "one of the arguments --model-version --fallback"),
        (
            "inference",
            ["--customer-id", "a", "--model-version", "v1", "--fallback", "seasonal-naive"],
            "not allowed with argument",
        ),
        ("inference", ["--customer-id", "a", "--fallback", "naive"], "invalid choice"),
        (
            "inference",
            ["--customer-id", "a", "--fallback", "seasonal-naive"],
            "--fallback needs --horizon-hours",
        ),
        (
            "inference",
            [
                "--customer-id",
                "a",
                "--fallback",
                "seasonal-naive",
                "--horizon-hours",
                "24",
                "--source",
                "newest",
            ],
            "--fallback forecasts with source seasonal_naive_fallback, not newest",
        ),
        (
            "inference",
            ["--customer-id", "a", "--model-version", "v1", "--source", "seasonal_naive_fallback"],
            "source seasonal_naive_fallback is for --fallback",
        ),
        ("inference", ["--batch", "b.json", "--fallback", "seasonal-naive"], "--fallback is for"),
        ("inference", ["--batch", "b.json", "--source", "newest"], "--source is for one"),
    ],
)
def test_batch_and_single_arguments_do_not_mix(capsys, job, args, error):
    with pytest.raises(SystemExit) as info:
        load_script(job).parse_args(args)
    assert info.value.code == 2
    assert error in capsys.readouterr().err


@pytest.mark.parametrize("job", ["preprocessing", "inference"])
def test_batch_arguments_default_to_sagemaker_paths(job):
    args = load_script(job).parse_args(["--batch", "/opt/ml/processing/input/batch/batch.json"])
    assert args.output_dir.parent == Path("/opt/ml/processing/output")
    if job == "preprocessing":
        assert args.manifest_dir == Path("/opt/ml/processing/input/manifest")
        assert args.manifest is None


# The batch file and the loop over its customers -------------------------------------------------


def test_read_batch_keeps_order_and_extra_fields(tmp_path):
    path = write_batch(
        tmp_path, [{"customer_id": "b", "model_version": "v9"}, {"customer_id": "a"}]
    )
    assert read_batch(path) == [{"customer_id": "b", "model_version": "v9"}, {"customer_id": "a"}]


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (None, "does not exist"),
        ("{not json", "cannot be read as JSON"),
        ('["a"]', '"customers" must be a non-empty list'),
        ("{}", '"customers" must be a non-empty list'),
        ('{"customers": []}', '"customers" must be a non-empty list'),
        ('{"customers": {"customer_id": "a"}}', '"customers" must be a non-empty list'),
        ('{"customers": ["a"]}', 'customers[0] must be an object with a "customer_id" string'),
        ('{"customers": [{"id": "a"}]}', 'customers[0] must be an object with a "customer_id"'),
        ('{"customers": [{"customer_id": "a"}, {"customer_id": 7}]}', "customers[1] must be"),
        ('{"customers": [{"customer_id": "../x"}]}', "cannot name a folder"),
        ('{"customers": [{"customer_id": ""}]}', "cannot name a folder"),
        ('{"customers": [{"customer_id": "a"}, {"customer_id": "a"}]}', "'a' is listed twice"),
    ],
)
def test_read_batch_refuses_a_malformed_file_naming_it(tmp_path, content, error):
    path = tmp_path / "batch.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BatchFileError) as info:
        read_batch(path)
    assert str(info.value).startswith(f"batch file {path}")
    assert error in str(info.value)


def test_read_batch_requires_the_named_fields(tmp_path):
    path = write_batch(tmp_path, [{"customer_id": "a", "model_version": 3}])
    with pytest.raises(BatchFileError, match="customer 'a' has no \"model_version\" string"):
        read_batch(path, required=("model_version",))


def test_run_each_goes_on_after_failures_and_sums_them_up(capsys):
    def work(entry):
        customer = entry["customer_id"]
        if customer == "b":
            raise ValueError("customer 'b', file 'x.csv': broken")
        if customer == "c":
            raise KeyError("energy_kwh")  # names no customer: the reason gets one
        return {"rows": len(customer)}

    entries = [{"customer_id": c} for c in ("b", "a", "c", "dd")]
    failures = run_each(Report(), entries, work)
    assert failures == [
        "customer 'b', file 'x.csv': broken",
        "customer 'c': KeyError: 'energy_kwh'",
    ]
    out = capsys.readouterr().out
    assert (
        "2 of 4 customers failed: customer 'b', file 'x.csv': broken; "
        "customer 'c': KeyError: 'energy_kwh' (the others' outputs are written; the job completes)"
    ) in out
    assert reports(out) == {
        "failed[b]": "customer 'b', file 'x.csv': broken",
        "report[a]": {"rows": 1},
        "failed[c]": "customer 'c': KeyError: 'energy_kwh'",
        "report[dd]": {"rows": 2},
    }
    assert list(reports(out)) == ["failed[b]", "report[a]", "failed[c]", "report[dd]"]


def test_run_each_fails_the_job_only_when_every_customer_failed(capsys):
    def work(entry):
        raise ValueError(f"customer '{entry['customer_id']}': no rows")

    with pytest.raises(BatchFailed) as info:
        run_each(Report(), [{"customer_id": "a"}, {"customer_id": "b"}], work)
    assert (
        str(info.value) == "2 of 2 customers failed: customer 'a': no rows; customer 'b': no rows"
    )


def test_run_each_without_failures_returns(capsys):
    run_each(Report(), [{"customer_id": "a"}], lambda entry: {"ok": True})
    assert 'report[a]: {"ok": true}' in capsys.readouterr().out


# Where a forecast comes from: its source, and the seasonal-naive fallback -----------------------

SOURCE_COLUMNS = [
    "timestamp",
    "device_id",
    "energy_kwh",
    "p10_kwh",
    "p90_kwh",
    "model_kind",
    "model_version",
    "source",
    "issued_at",
    "weather_input",
]


@pytest.mark.parametrize(
    ("args", "model_version", "source"),
    [
        (["--model-version", "v1"], "v1", "newest"),
        (["--model-version", "v1", "--source", "previous_approved"], "v1", "previous_approved"),
        (
            ["--fallback", "seasonal-naive", "--horizon-hours", "48"],
            None,
            "seasonal_naive_fallback",
        ),
    ],
)
def test_inference_arguments_name_the_source_of_one_customer(args, model_version, source):
    parsed = load_script("inference").parse_args(["--customer-id", "a", *args])
    assert (parsed.model_version, parsed.source) == (model_version, source)


def test_fallback_forecasts_the_same_time_last_week_without_a_model(pipeline, tmp_path):
    ml = tmp_path / "opt" / "ml"
    script = install_bundle("inference", ml / "processing/input/code")
    output = ml / "processing/output/forecast"
    proc = run(
        script,
        [
            "--customer-id",
            CUSTOMER.customer_id,
            "--fallback",
            "seasonal-naive",
            "--model-dir",
            str(tmp_path / "no-such-folder"),  # no model is read
            "--history-dir",
            str(pipeline["preprocessed"]),
            "--output-dir",
            str(output),
            "--horizon-hours",
            "48",
            "--issued-at",
            ISSUED_AT,
        ],
        {"SM_OUTPUT_DIR": str(ml / "output")},
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    forecast = pd.read_parquet(output / "forecast.parquet")
    history = pd.read_parquet(pipeline["preprocessed"] / "load.parquet")
    last = history.loc[history["energy_kwh"].notna(), "timestamp"].max()
    assert list(forecast.columns) == SOURCE_COLUMNS
    assert len(forecast) == 48 * CUSTOMER.devices
    assert forecast.groupby("device_id")["timestamp"].agg(["min", "max"]).to_dict("list") == {
        "min": [last + pd.Timedelta(hours=1)] * CUSTOMER.devices,
        "max": [last + pd.Timedelta(hours=48)] * CUSTOMER.devices,
    }
    assert forecast["energy_kwh"].notna().all()
    assert set(forecast["model_version"]) == {"seasonal-naive"}
    assert set(forecast["source"]) == {"seasonal_naive_fallback"}
    assert set(forecast["model_kind"]) == {"seasonal_naive_week"}
    # Its interval comes from the errors seasonal naive made in the history.
    assert (forecast["p10_kwh"] <= forecast["energy_kwh"]).all()
    assert (forecast["energy_kwh"] <= forecast["p90_kwh"]).all()
    assert (forecast["p90_kwh"] > forecast["p10_kwh"]).mean() > 0.9
    assert (
        "seasonal_naive_week from 28 daily origins in the history"
        in (reports(proc.stdout)["report"]["interval_method"])
    )
    assert set(forecast["issued_at"]) == {pd.Timestamp(ISSUED_AT)}
    # Where last week's value is known, it is the forecast, as the gate's baseline has it.
    week_ago = history.assign(timestamp=history["timestamp"] + pd.Timedelta(days=7))
    both = forecast.merge(week_ago, on=["timestamp", "device_id"], suffixes=("", "_week_ago"))
    known = both["energy_kwh_week_ago"].notna()
    assert known.sum() > 0.9 * len(forecast)
    assert (both.loc[known, "energy_kwh"] == both.loc[known, "energy_kwh_week_ago"]).all()
    # It passes the checks before publishing, and says where it comes from.
    assert forecast_problems(forecast, history) == []
    report = reports(proc.stdout)["report"]
    assert report["model_version"] == "seasonal-naive"
    assert report["source"] == "seasonal_naive_fallback"
    assert report["horizon_hours"] == 48.0
    assert report["rows"] == len(forecast)


def write_history(folder: Path, frame: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / "load.parquet", index=False)
    return folder


def half_hourly_history() -> pd.DataFrame:
    """Three weeks of half-hours for devices "a" and "b", every value distinct; "b" stops
    eight days before "a"."""
    times = pd.date_range("2025-10-13", "2025-11-02 23:30", freq="30min", tz="UTC")
    a = pd.DataFrame({"timestamp": times, "device_id": "a", "energy_kwh": range(len(times))})
    b_times = times[times < times[-1] - pd.Timedelta(days=8)]
    b = pd.DataFrame({"timestamp": b_times, "device_id": "b", "energy_kwh": 1000.0})
    b.loc[b["timestamp"].dt.hour == 12, "energy_kwh"] = 2000.0
    frame = pd.concat([a, b], ignore_index=True)
    frame["energy_kwh"] = frame["energy_kwh"].astype(float)
    return frame.assign(is_filled=False, is_gap=False)


def test_fallback_fills_gaps_from_a_day_earlier_then_the_time_of_day_mean(tmp_path):
    predict = load_script("inference")
    history = half_hourly_history()
    last = history["timestamp"].max()
    step, day, week = pd.Timedelta(minutes=30), pd.Timedelta(days=1), pd.Timedelta(days=7)
    t0, t1, t2 = (last + k * step for k in (1, 2, 3))
    a = history["device_id"] == "a"

    def gap(at: pd.Timestamp) -> None:
        row = a & (history["timestamp"] == at)
        history.loc[row, ["energy_kwh", "is_gap"]] = [float("nan"), True]

    value = dict(zip(history.loc[a, "timestamp"], history.loc[a, "energy_kwh"], strict=True))
    gap(t0 - week)  # -> a day earlier
    gap(t1 - week)  # and a day earlier too -> the mean at that time of day
    gap(t1 - day)
    gap(t2 - week + day)  # a day after t2: a day earlier is t2's own forecast
    metadata = predict.predict_fallback(
        "acme",
        write_history(tmp_path / "history", history),
        tmp_path / "out",
        48.0,
        pd.Timestamp(ISSUED_AT),
    )
    forecast = pd.read_parquet(tmp_path / "out" / "forecast.parquet")
    assert metadata["horizon_hours"] == 48.0
    assert len(forecast) == 2 * 96  # two devices, 48 h of half-hours: the resolution is inferred
    assert forecast["energy_kwh"].notna().all()
    got = forecast[forecast["device_id"] == "a"].set_index("timestamp")["energy_kwh"]
    assert got[t0] == value[t0 - day]
    slot = history[a & (history["timestamp"].dt.time == t1.time()) & ~history["is_gap"]]
    assert got[t1] == pytest.approx(slot["energy_kwh"].mean())
    assert got[t2] == value[t2 - week]
    assert got[t2 + day] == got[t2]
    assert got[t2 + step] == value[t2 + step - week]
    # "b" has nothing from last week or yesterday: its own mean at each time of day.
    b = forecast[forecast["device_id"] == "b"]
    assert set(b.loc[b["timestamp"].dt.hour == 12, "energy_kwh"]) == {2000.0}
    assert set(b.loc[b["timestamp"].dt.hour != 12, "energy_kwh"]) == {1000.0}


@pytest.mark.parametrize(
    ("hours", "error"),
    [
        (None, "the seasonal-naive fallback needs --horizon-hours"),
        (168.5, "horizon of 168.5 h is outside 1 step..168 h"),
        (0.1, "horizon of 0.1 h is outside 1 step..168 h"),
    ],
)
def test_fallback_horizon_is_given_and_at_most_a_week(tmp_path, hours, error):
    predict = load_script("inference")
    history = write_history(tmp_path / "history", half_hourly_history())
    with pytest.raises(ValueError, match=error):
        predict.predict_fallback("acme", history, tmp_path / "out", hours, pd.Timestamp(ISSUED_AT))
    assert not (tmp_path / "out").exists()


def test_batch_mixes_models_and_the_fallback_and_labels_each_source(
    pipeline, batch_pipeline, tmp_path
):
    model, preprocessed = batch_pipeline["model"], batch_pipeline["preprocessed"]
    c, o = CUSTOMER.customer_id, OTHER.customer_id
    proc, output = infer_batch(
        tmp_path,
        {
            c: ("v1", model / c, preprocessed / c / "load.parquet"),
            o: (None, None, preprocessed / o / "load.parquet"),  # no model folder at all
        },
        sources={c: "previous_approved", o: "seasonal_naive_fallback"},
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "opt/ml/processing/input/model" / o).exists()
    with_model = pd.read_parquet(output / c / "forecast.parquet")
    single = pd.read_parquet(pipeline["forecast"] / "forecast.parquet")
    pd.testing.assert_frame_equal(with_model, single.assign(source="previous_approved"))
    fallback = pd.read_parquet(output / o / "forecast.parquet")
    assert list(fallback.columns) == SOURCE_COLUMNS
    assert len(fallback) == 24 * OTHER.devices
    assert set(fallback["model_version"]) == {"seasonal-naive"}
    assert set(fallback["source"]) == {"seasonal_naive_fallback"}
    lines = reports(proc.stdout)
    assert (lines[f"report[{c}]"]["model_version"], lines[f"report[{c}]"]["source"]) == (
        "v1",
        "previous_approved",
    )
    assert (lines[f"report[{o}]"]["model_version"], lines[f"report[{o}]"]["source"]) == (
        "seasonal-naive",
        "seasonal_naive_fallback",
    )


def test_batch_fallback_without_a_horizon_fails_that_customer(batch_pipeline, tmp_path):
    o = OTHER.customer_id
    proc, output = infer_batch(
        tmp_path,
        {o: (None, None, batch_pipeline["preprocessed"] / o / "load.parquet")},
        sources={o: "seasonal_naive_fallback"},
        horizon_hours=None,
    )
    assert proc.returncode == 1
    assert not output.exists()
    assert (tmp_path / "opt/ml/output/message").read_text() == (
        f"1 of 1 customers failed: customer '{o}': the seasonal-naive fallback needs "
        "--horizon-hours"
    )


def test_batch_entries_default_to_newest_and_a_fallback_has_no_model(tmp_path):
    batch = write_batch(
        tmp_path,
        [
            {"customer_id": "a", "model_version": "v1"},
            {"customer_id": "b", "model_version": "v0", "source": "previous_approved"},
            {"customer_id": "c", "source": "seasonal_naive_fallback"},
            {"customer_id": "d", "model_version": None, "source": "seasonal_naive_fallback"},
        ],
    )
    entries = load_script("inference").batch_entries(batch)
    assert [(e["customer_id"], e["model_version"], e["source"]) for e in entries] == [
        ("a", "v1", "newest"),
        ("b", "v0", "previous_approved"),
        ("c", None, "seasonal_naive_fallback"),
        ("d", None, "seasonal_naive_fallback"),
    ]


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        (
            {"model_version": "v1", "source": "latest"},
            "customer 'a' has source 'latest', not one of newest, previous_approved, "
            "seasonal_naive_fallback",
        ),
        (
            {"model_version": "v1", "source": "seasonal_naive_fallback"},
            "customer 'a' has source seasonal_naive_fallback and model_version 'v1': "
            "the fallback uses no model",
        ),
        (
            {"model_version": None, "source": "newest"},
            "customer 'a' has no \"model_version\" string",
        ),
        ({"source": "previous_approved"}, "customer 'a' has no \"model_version\" string"),
    ],
)
def test_batch_entries_must_say_consistently_where_their_forecast_comes_from(
    tmp_path, entry, error
):
    batch = write_batch(tmp_path, [{"customer_id": "a", **entry}])
    with pytest.raises(BatchFileError) as info:
        load_script("inference").batch_entries(batch)
    assert str(info.value) == f"batch file {batch}: {error}"


class AbsurdModel:
    """Every other prediction astronomically high, the rest negative."""

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        return np.where(np.arange(len(features)) % 2 == 0, 1e27, -3.0)


def test_inference_clips_negatives_but_leaves_an_absurd_forecast_visible(
    pipeline, tmp_path, monkeypatch
):
    predict = load_script("inference")
    spec = FeatureSpec.from_json((pipeline["model"] / "feature_spec.json").read_text())
    scales = json.loads((pipeline["model"] / "normalization.json").read_text())["scale_kwh"]
    absurd = {"kind": "forest", "forests": {b: AbsurdModel() for b in spec.bucket_steps}}
    monkeypatch.setattr(predict, "load_model", lambda *_: (absurd, spec, scales, None))
    predict.predict(
        CUSTOMER.customer_id,
        "v9",
        tmp_path / "model",
        pipeline["preprocessed"],
        tmp_path / "out",
        24.0,
        pd.Timestamp(ISSUED_AT),
    )
    forecast = pd.read_parquet(tmp_path / "out" / "forecast.parquet")
    energy = forecast["energy_kwh"].to_numpy()
    assert (energy[1::2] == 0).all()  # negative: clipped to 0
    assert (energy[::2] > 1e20).all()  # absurd: left as it is
    history = pd.read_parquet(pipeline["preprocessed"] / "load.parquet")
    problems = forecast_problems(forecast, history)
    assert "kWh is above 10 × the device's largest reading" in problems[0]


@pytest.mark.parametrize(
    ("kind", "days_back"), [("seasonal_naive_week", 7), ("seasonal_naive_day", 1)]
)
def test_inference_forecasts_a_naive_model_version_as_seasonal_naive(
    pipeline, tmp_path, monkeypatch, kind, days_back
):
    """A version whose backtest chose seasonal naive forecasts as that naive: a week earlier, or
    the last day before the forecast repeated."""
    predict = load_script("inference")
    spec = FeatureSpec.from_json((pipeline["model"] / "feature_spec.json").read_text())
    scales = json.loads((pipeline["model"] / "normalization.json").read_text())["scale_kwh"]
    naive = {"kind": kind, "forests": {}}
    monkeypatch.setattr(predict, "load_model", lambda *_: (naive, spec, scales, None))
    report = predict.predict(
        CUSTOMER.customer_id,
        "v7",
        tmp_path / "model",
        pipeline["preprocessed"],
        tmp_path / "out",
        48.0,
        pd.Timestamp(ISSUED_AT),
    )
    assert (report["model_kind"], report["model_version"]) == (kind, "v7")
    forecast = pd.read_parquet(tmp_path / "out" / "forecast.parquet")
    history = pd.read_parquet(pipeline["preprocessed"] / "load.parquet")
    assert len(forecast) == 48 * CUSTOMER.devices
    last = history["timestamp"].max()
    known = history.set_index(["device_id", "timestamp"])["energy_kwh"]
    for row in forecast.sample(20, random_state=0).itertuples():
        lead_days = -(-(row.timestamp - last) // pd.Timedelta(days=1))
        back = pd.Timedelta(days=days_back * (lead_days if days_back == 1 else 1))
        assert row.energy_kwh == pytest.approx(max(known[(row.device_id, row.timestamp - back)], 0))


def test_inference_forecasts_a_model_of_an_older_feature_spec_by_seasonal_naive(pipeline, tmp_path):
    """A code upgrade that changes the features must not leave a customer without a forecast:
    the old model is set aside, seasonal naive forecasts instead, and the job says so."""
    predict = load_script("inference")
    old = tmp_path / "old-model"
    shutil.copytree(pipeline["model"], old)
    spec = json.loads((old / "feature_spec.json").read_text())
    # Older than any version this code reads (version 4, from before weather, is still read).
    unreadable = min(READABLE_SPEC_VERSIONS) - 1
    spec["version"] = unreadable
    (old / "feature_spec.json").write_text(json.dumps(spec))
    pack_model(old, tmp_path / "model" / "model.tar.gz")
    lines: list[str] = []
    report = predict.predict(
        CUSTOMER.customer_id,
        "v-old",
        tmp_path / "model",
        pipeline["preprocessed"],
        tmp_path / "out",
        48.0,
        pd.Timestamp(ISSUED_AT),
        log=lines.append,
    )
    forecast = pd.read_parquet(tmp_path / "out" / "forecast.parquet")
    assert len(forecast) == 48 * CUSTOMER.devices
    assert set(forecast["source"]) == {"seasonal_naive_fallback"}
    assert set(forecast["model_kind"]) == {"seasonal_naive_week"}
    assert (report["source"], report["skipped_model_version"]) == (
        "seasonal_naive_fallback",
        "v-old",
    )
    assert lines == [f"customer '{CUSTOMER.customer_id}': {report['fallback_reason']}"]
    assert f"model v-old was saved with feature spec version {unreadable}" in lines[0]
    # The same forecast as the fallback's own.
    fallback = predict.predict_fallback(
        CUSTOMER.customer_id,
        pipeline["preprocessed"],
        tmp_path / "fb",
        48.0,
        pd.Timestamp(ISSUED_AT),
    )
    assert fallback["total_kwh"] == report["total_kwh"]
    pd.testing.assert_frame_equal(forecast, pd.read_parquet(tmp_path / "fb" / "forecast.parquet"))


def test_training_logs_its_progress_as_it_goes(pipeline):
    """The run page is not silent while a customer trains: each stage says what it did, for
    whom, and how long the training has taken so far."""
    lines = [
        line
        for line in pipeline["stdout"]["training"].splitlines()
        if line.startswith(f"customer '{CUSTOMER.customer_id}': ")
    ]
    metrics = json.loads((pipeline["model"] / "metrics.json").read_text())
    expected = [
        f"rows, {CUSTOMER.devices} device(s); backtest of 14 daily origins",
        "features built for 2 horizon bucket(s)",
        "forest fitted on",
        "lightgbm fitted on",
        f": {metrics['model_kind']} chosen",
        "P10-P90 coverage out of sample",
        *(["refitted on all"] if metrics["refit_full"] else []),
        "model written",
    ]
    assert len(lines) == len(expected)
    for line, part in zip(lines, expected, strict=True):
        assert part in line, line
        assert re.search(r"\(\d+\.\d s\)$", line), line
    assert f"forest {metrics['candidates']['forest']['wape']:.2f} %" in lines[4]

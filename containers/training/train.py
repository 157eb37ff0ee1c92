"""SageMaker Training job: fit one customer's load-forecast model and score it on a holdout.

Contract (SageMaker training, script mode or custom image):
  channel "train"   SM_CHANNEL_TRAIN/load.parquet, the preprocessed load table
  hyperparameters   /opt/ml/input/config/hyperparameters.json (see DEFAULTS)
  SM_MODEL_DIR      model.joblib, feature_spec.json, normalization.json, metrics.json
                    (SageMaker packs this folder into model.tar.gz)
  SM_OUTPUT_DATA_DIR holdout.csv (customer load against forecast and baseline), metrics.json

Batch mode, when the job has a channel "batch" (SM_CHANNEL_BATCH/batch.json, see
forecast_core.batch): the same for each customer ``<c>`` of the batch, with its input at
SM_CHANNEL_TRAIN/<c>/load.parquet and its outputs in SM_MODEL_DIR/<c>/ and SM_OUTPUT_DATA_DIR/<c>/.
The hyperparameters apply to every customer; ``customer_id`` is not one of them in this mode.

The last ``holdout_days`` are held out, in time order. The model and a seasonal-naive baseline
(same time last week) are scored on the customer's total load over the same holdout hours, so
the two figures are comparable. With ``refit_full`` the saved model is then refitted on all data.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
from sklearn.ensemble import RandomForestRegressor

sys.path.insert(0, str(Path(__file__).resolve().parent))  # forecast_core ships beside this script

from forecast_core import runtime
from forecast_core.batch import BATCH_FILE, read_batch, run_each
from forecast_core.features import (
    FeatureSpec,
    build_features,
    make_feature_spec,
    normalization_scales,
    regular_grid,
)
from forecast_core.metrics import regression_metrics, seasonal_naive

DEFAULTS: dict[str, Any] = {
    "n_estimators": 100,
    "max_depth": None,
    "min_samples_leaf": 5,
    "max_features": 0.5,
    "random_state": 42,
    "holdout_days": 28,
    "horizon_hours": 48,
    "timezone": "Europe/Berlin",
    "holiday_country": "DE",
    "refit_full": True,
}
# Beyond the holdout, at least this much history must remain to learn from.
MIN_TRAIN_DAYS = 21


class TrainingInputError(ValueError):
    pass


def fit(X: pd.DataFrame, y: pd.Series, hp: dict[str, Any]) -> RandomForestRegressor:
    model = RandomForestRegressor(
        n_estimators=int(hp["n_estimators"]),
        max_depth=None if hp["max_depth"] in (None, "", "None") else int(hp["max_depth"]),
        min_samples_leaf=int(hp["min_samples_leaf"]),
        max_features=float(hp["max_features"]),
        random_state=int(hp["random_state"]),
        n_jobs=-1,
    )
    return model.fit(X, y)


def load_series(customer: Any, channel: Path, name: str) -> pd.DataFrame:
    """The load table at ``name`` in the training channel."""
    source = channel / name
    if not source.exists():
        raise TrainingInputError(f"customer '{customer}': training channel has no {name}")
    series = pd.read_parquet(source)
    if series.empty or series["energy_kwh"].notna().sum() == 0:
        raise TrainingInputError(f"customer '{customer}', file '{name}': no load values")
    series["device_id"] = series["device_id"].astype(str)
    return series


def check_span(customer: Any, series: pd.DataFrame, spec: FeatureSpec, hp: dict[str, Any]) -> None:
    span = series["timestamp"].max() - series["timestamp"].min()
    needed = (
        pd.Timedelta(days=int(hp["holdout_days"]) + MIN_TRAIN_DAYS)
        + spec.resolution * spec.min_history_steps
    )
    if span < needed:
        raise TrainingInputError(
            f"customer '{customer}': {span.days} days of load data, need at least {needed.days} "
            f"({hp['holdout_days']} holdout + {MIN_TRAIN_DAYS} training + feature history)"
        )


def total_load_holdout(
    customer: Any, per_device: pd.DataFrame, is_holdout: pd.Series, cutoff: pd.Timestamp
) -> pd.DataFrame:
    """Actual, forecast and baseline of the customer's total load over the holdout.

    Only hours where every device has a value count, so that the totals compare.
    """
    actual_all = per_device.pivot_table(
        index="timestamp", columns="device_id", values="energy_kwh", dropna=False
    )
    complete = actual_all.notna().all(axis=1)
    total_actual = actual_all.sum(axis=1, min_count=1).where(complete)
    holdout_rows = per_device[is_holdout]
    total_pred = holdout_rows.groupby("timestamp")["predicted"].sum().reindex(total_actual.index)
    total_base = seasonal_naive(total_actual)
    holdout = pd.DataFrame({"actual": total_actual, "forecast": total_pred, "baseline": total_base})
    holdout = holdout[holdout.index > cutoff].dropna()
    if holdout.empty:
        raise TrainingInputError(
            f"customer '{customer}': no complete hours in the holdout to score"
        )
    return holdout


def write_outputs(
    model_out: Path,
    data_out: Path,
    model: RandomForestRegressor,
    spec: FeatureSpec,
    scales: dict[str, float],
    holdout: pd.DataFrame,
    summary: dict[str, Any],
) -> None:
    """The model folder SageMaker packs into model.tar.gz, and the holdout beside the metrics."""
    model_out.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, model_out / "model.joblib", compress=3)
    (model_out / "feature_spec.json").write_text(spec.to_json())
    (model_out / "normalization.json").write_text(
        json.dumps({"scale_kwh": scales}, indent=2, sort_keys=True)
    )
    (model_out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    data_out.mkdir(parents=True, exist_ok=True)
    holdout.rename_axis("timestamp").reset_index().to_csv(data_out / "holdout.csv", index=False)
    (data_out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))


def train(
    customer: Any, channel: Path, name: str, model_out: Path, data_out: Path, hp: dict[str, Any]
) -> dict[str, Any]:
    """Train and score one customer's model on load table ``name`` in the training channel,
    write it to ``model_out`` and its holdout to ``data_out``; returns the metadata to report."""
    series = load_series(customer, channel, name)
    resolution = pd.Series(series["timestamp"].sort_values().unique()).diff().median()
    spec = make_feature_spec(
        resolution=resolution,
        horizon_hours=int(hp["horizon_hours"]),
        timezone=str(hp["timezone"]),
        holiday_country=str(hp["holiday_country"]),
        devices=sorted(series["device_id"].unique()),
    )
    check_span(customer, series, spec, hp)

    scales = normalization_scales(series)
    grid = regular_grid(series, spec)
    design = build_features(grid, spec, scales)
    X, y = design.features, design.target
    usable = y.notna() & X[f"lag_{spec.lag_steps[-1]}"].notna()
    cutoff = grid["timestamp"].max() - pd.Timedelta(days=int(hp["holdout_days"]))
    is_train = usable & (grid["timestamp"] <= cutoff)
    is_holdout = (grid["timestamp"] > cutoff) & y.notna()

    model = fit(X[is_train], y[is_train], hp)
    predicted = pd.Series(
        model.predict(X[is_holdout]) * design.kwh_per_unit[is_holdout.to_numpy()],
        index=grid.index[is_holdout],
    )

    holdout = total_load_holdout(customer, grid.assign(predicted=predicted), is_holdout, cutoff)
    metrics = regression_metrics(holdout["actual"], holdout["forecast"])
    baseline = regression_metrics(holdout["actual"], holdout["baseline"])

    if hp["refit_full"]:
        model = fit(X[usable], y[usable], hp)

    summary = {
        "customer_id": customer,
        "model": metrics,
        "baseline_seasonal_naive": baseline,
        "wape_ratio": metrics["wape"] / baseline["wape"] if baseline["wape"] else float("nan"),
        "holdout_start": holdout.index.min().isoformat(),
        "holdout_end": holdout.index.max().isoformat(),
        "train_rows": int(is_train.sum()),
        "holdout_hours": len(holdout),
        "refit_full": bool(hp["refit_full"]),
        "hyperparameters": {k: hp[k] for k in DEFAULTS},
        "features": spec.feature_names(),
    }
    write_outputs(model_out, data_out, model, spec, scales, holdout, summary)

    return {
        **{f"{k}": round(v, 6) for k, v in metrics.items() if k != "n"},
        **{f"baseline_{k}": round(v, 6) for k, v in baseline.items() if k != "n"},
        "wape_ratio": round(float(summary["wape_ratio"]), 6),
        "train_rows": summary["train_rows"],
        "holdout_hours": summary["holdout_hours"],
        "holdout_start": summary["holdout_start"],
        "holdout_end": summary["holdout_end"],
    }


def main(report: runtime.Report) -> None:
    hp = {**DEFAULTS, **runtime.hyperparameters()}
    channel, model_out, data_out = (
        runtime.channel_dir("train"),
        runtime.model_dir(),
        runtime.output_data_dir(),
    )
    batch_channel = runtime.channel_dir("batch")
    if not batch_channel.exists():
        customer = hp.get("customer_id", "?")
        report.materialization(train(customer, channel, "load.parquet", model_out, data_out, hp))
        return
    if "customer_id" in hp:
        raise TrainingInputError(
            "hyperparameter customer_id names one customer, but this is a batch job "
            f"(channel {batch_channel}): its customers are in {BATCH_FILE}"
        )

    def one(entry: Mapping[str, Any]) -> dict[str, Any]:
        c = entry["customer_id"]
        return train(c, channel, f"{c}/load.parquet", model_out / c, data_out / c, hp)

    run_each(report, read_batch(batch_channel / BATCH_FILE), one)


if __name__ == "__main__":
    runtime.run_job("training", main)

"""SageMaker Training job: choose and fit one customer's load-forecast model by a backtest.

Contract (SageMaker training, script mode or custom image):
  channel "train"   SM_CHANNEL_TRAIN/load.parquet, the preprocessed load table
  hyperparameters   /opt/ml/input/config/hyperparameters.json (see DEFAULTS)
  SM_MODEL_DIR      model.joblib, feature_spec.json, normalization.json, metrics.json
                    (SageMaker packs this folder into model.tar.gz)
  SM_OUTPUT_DATA_DIR backtest.csv (every origin's forecast against actual), metrics.json

Batch mode, when the job has a channel "batch" (SM_CHANNEL_BATCH/batch.json, see
forecast_core.batch): the same for each customer ``<c>`` of the batch, with its input at
SM_CHANNEL_TRAIN/<c>/load.parquet and its outputs in SM_MODEL_DIR/<c>/ and SM_OUTPUT_DATA_DIR/<c>/.
The hyperparameters apply to every customer; ``customer_id`` is not one of them in this mode.

Rolling-origin backtest (``forecast_core.backtest``): up to ``backtest_days`` daily origins at
the time of day the next forecast will start, the last one as late as leaves a whole horizon of
actuals. The forest is fitted once, on targets before the first origin, and then forecasts every
origin from that origin's own features (which end before it), so no value after an origin
reaches its forecast. The window shrinks with a short history, down to ``MIN_BACKTEST_ORIGINS``
origins after ``MIN_FIT_DAYS`` of data. The candidates (forest, seasonal naive week, seasonal
naive day) are scored on the same hours; the one with the lowest WAPE is the model. A chosen
forest is refitted on all data (``refit_full``); a chosen naive model is just its kind.
``model.joblib`` holds ``{"kind": ..., "forests": {bucket: model}}`` (no forests for naive).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor

sys.path.insert(0, str(Path(__file__).resolve().parent))  # forecast_core ships beside this script

from forecast_core import runtime
from forecast_core.backtest import (
    CANDIDATES,
    FOREST,
    NAIVE_WEEK,
    available_origins,
    backtest_frame,
    choose,
    horizon_days,
    origins,
)
from forecast_core.batch import BATCH_FILE, read_batch, run_each
from forecast_core.features import (
    Design,
    FeatureSpec,
    build_features,
    make_feature_spec,
    normalization_scales,
    regular_grid,
)
from forecast_core.metrics import regression_metrics

DEFAULTS: dict[str, Any] = {
    "n_estimators": 100,
    "max_depth": None,
    "min_samples_leaf": 5,
    "max_features": 0.5,
    "random_state": 42,
    "backtest_days": 28,
    "horizon_hours": 48,
    "timezone": "Europe/Berlin",
    "holiday_country": "DE",
    "refit_full": True,
}
# Before the first backtest origin: a week of lag warm-up, then three weeks of rows to fit on.
MIN_FIT_DAYS = 28
# Fewer daily origins than this say too little to choose a model by.
MIN_BACKTEST_ORIGINS = 7


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


def backtest_origins(
    customer: Any, series: pd.DataFrame, spec: FeatureSpec, hp: dict[str, Any]
) -> pd.DatetimeIndex:
    """The backtest's origins: ``backtest_days`` of them, fewer if the history is short."""
    first, last = series["timestamp"].min(), series["timestamp"].max()
    wanted = int(hp["backtest_days"])
    if wanted < 1:
        raise TrainingInputError(f"backtest_days must be at least 1, got {wanted}")
    available = available_origins(first, last, spec, MIN_FIT_DAYS)
    needed = min(wanted, MIN_BACKTEST_ORIGINS)
    if available < needed:
        days = MIN_FIT_DAYS + needed - 1 + horizon_days(spec)
        raise TrainingInputError(
            f"customer '{customer}': {(last - first).days} days of load data, need at least "
            f"{days} ({MIN_FIT_DAYS} before the first backtest origin, then {needed} daily "
            f"origins each with {spec.horizon_steps * spec.resolution / pd.Timedelta(hours=1):g} h "
            "of actuals after it)"
        )
    return origins(last, spec, min(wanted, available))


def fit_buckets(
    designs: dict[int, Design], rows: dict[int, pd.Series], hp: dict[str, Any]
) -> dict[int, RandomForestRegressor]:
    return {b: fit(d.features[rows[b]], d.target[rows[b]], hp) for b, d in designs.items()}


def write_outputs(
    model_out: Path,
    data_out: Path,
    model: dict[str, Any],
    spec: FeatureSpec,
    scales: dict[str, float],
    backtest: pd.DataFrame,
    summary: dict[str, Any],
) -> None:
    """The model folder SageMaker packs into model.tar.gz, and the backtest beside the metrics."""
    model_out.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, model_out / "model.joblib", compress=3)
    (model_out / "feature_spec.json").write_text(spec.to_json())
    (model_out / "normalization.json").write_text(
        json.dumps({"scale_kwh": scales}, indent=2, sort_keys=True)
    )
    (model_out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    data_out.mkdir(parents=True, exist_ok=True)
    backtest.to_csv(data_out / "backtest.csv", index=False)
    (data_out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))


def train(
    customer: Any, channel: Path, name: str, model_out: Path, data_out: Path, hp: dict[str, Any]
) -> dict[str, Any]:
    """Backtest the candidates on load table ``name`` in the training channel, write the chosen
    model to ``model_out`` and the backtest to ``data_out``; returns the metadata to report."""
    series = load_series(customer, channel, name)
    resolution = pd.Series(series["timestamp"].sort_values().unique()).diff().median()
    spec = make_feature_spec(
        resolution=resolution,
        horizon_hours=int(hp["horizon_hours"]),
        timezone=str(hp["timezone"]),
        holiday_country=str(hp["holiday_country"]),
        devices=sorted(series["device_id"].unique()),
    )
    at = backtest_origins(customer, series, spec, hp)

    scales = normalization_scales(series)
    grid = regular_grid(series, spec)
    designs = {b: build_features(grid, spec, scales, b) for b in spec.bucket_steps}
    week = f"lag_{spec.week_steps}"
    usable = {b: d.target.notna() & d.features[week].notna() for b, d in designs.items()}
    before = grid["timestamp"] < at[0]
    fit_rows = {b: u & before for b, u in usable.items()}
    if min(int(r.sum()) for r in fit_rows.values()) == 0:
        raise TrainingInputError(f"customer '{customer}': no complete rows before {at[0]}")

    forests = fit_buckets(designs, fit_rows, hp)
    scored = ~before.to_numpy()
    forest_kwh = {}
    for b, d in designs.items():
        values = np.full(len(grid), np.nan)
        values[scored] = forests[b].predict(d.features[scored]) * d.kwh_per_unit[scored]
        forest_kwh[b] = pd.Series(values, index=grid.index)
    frame = backtest_frame(grid, spec, at, forest_kwh)
    if frame.empty:
        raise TrainingInputError(
            f"customer '{customer}': no complete hours in the backtest to score"
        )
    scores = {c: regression_metrics(frame["actual"], frame[c]) for c in CANDIDATES}
    kind = choose(scores)

    if kind == FOREST and hp["refit_full"]:
        forests = fit_buckets(designs, usable, hp)
    model = {"kind": kind, "forests": forests if kind == FOREST else {}}
    backtest = frame.assign(forecast=frame[kind], baseline=frame[NAIVE_WEEK])
    metrics, baseline = scores[kind], scores[NAIVE_WEEK]
    summary = {
        "customer_id": customer,
        "model_kind": kind,
        "model": metrics,
        "baseline_seasonal_naive": baseline,
        "wape_ratio": metrics["wape"] / baseline["wape"] if baseline["wape"] else float("nan"),
        "candidates": scores,
        "backtest_origins": len(at),
        "backtest_first_origin": at[0].isoformat(),
        "backtest_last_origin": at[-1].isoformat(),
        "backtest_hours": len(frame),
        "backtest_fit": "one fit on targets before the first origin; each origin forecast from "
        "its own features, which end before it",
        "train_rows": int(fit_rows[spec.bucket_steps[0]].sum()),
        "refit_full": bool(hp["refit_full"]) and kind == FOREST,
        "hyperparameters": {k: hp[k] for k in DEFAULTS},
        "features": {str(b): spec.feature_names(b) for b in spec.bucket_steps},
        "horizon_buckets_steps": list(spec.bucket_steps),
    }
    write_outputs(model_out, data_out, model, spec, scales, backtest, summary)

    return {
        "model_kind": kind,
        **{f"{k}": round(v, 6) for k, v in metrics.items() if k != "n"},
        **{f"baseline_{k}": round(v, 6) for k, v in baseline.items() if k != "n"},
        **{f"{c}_wape": round(s["wape"], 6) for c, s in scores.items()},
        "wape_ratio": round(float(summary["wape_ratio"]), 6),
        "train_rows": summary["train_rows"],
        "backtest_origins": summary["backtest_origins"],
        "backtest_hours": summary["backtest_hours"],
        "backtest_first_origin": summary["backtest_first_origin"],
        "backtest_last_origin": summary["backtest_last_origin"],
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

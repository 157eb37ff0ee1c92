"""SageMaker Training job: choose and fit one customer's load-forecast model by a backtest.

Contract (SageMaker training, script mode or custom image):
  channel "train"   SM_CHANNEL_TRAIN/load.parquet, the preprocessed load table
  channel "weather" optional: SM_CHANNEL_WEATHER/weather.parquet, the customer's weather table
                    (forecast_core.weather); in a batch SM_CHANNEL_WEATHER/<c>/weather.parquet
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
actuals. The forests and the LightGBM models (gradient-boosted trees on the same features) are
fitted once, on targets before the first origin, and then forecast every origin from that
origin's own features (which end before it), so no value after an origin reaches its forecast.
The window shrinks with a short history, down to ``MIN_BACKTEST_ORIGINS`` origins after
``MIN_FIT_DAYS`` of data. The candidates (seasonal naive week, seasonal naive day, forest,
lightgbm) are scored on the same hours; the one with the lowest WAPE is the model, a more complex
one only if it wins by the margin (``forecast_core.backtest.choose``). A chosen forest or
LightGBM is refitted on all data (``refit_full``); a chosen naive model is just its kind.
``model.joblib`` holds ``{"kind": ..., "models": {bucket: model}}`` (no models for naive).

Weather: when the customer's weather table covers at least ``WEATHER_MIN_COVERAGE`` of its load
history's hours, the forest and LightGBM candidates get the weather features
(``forecast_core.features``), built from weather as known at each origin: archived forecasts
issued by then, else observations plus a simulated forecast error (never the observation itself).
Whether weather was used, why (not), its coverage and what the backtest's weather was are in
metrics.json (``weather``) and the reported metadata.

Intervals (``forecast_core.intervals``): the chosen candidate's backtest errors give P10/P90
quantiles per horizon bucket, saved as ``intervals.json`` beside the model; their P10-P90
coverage out of sample (each origin's interval from earlier hours' errors only) is in
metrics.json. Progress (origins, each candidate's fit and score, the refit, with timings) is
logged through the job's report as it goes.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeAlias

import joblib
import numpy as np
import pandas as pd
from lightgbm import LGBMRegressor
from sklearn.ensemble import RandomForestRegressor

sys.path.insert(0, str(Path(__file__).resolve().parent))  # forecast_core ships beside this script

from forecast_core import intervals, runtime
from forecast_core.backtest import (
    CANDIDATES,
    FOREST,
    LIGHTGBM,
    MODEL_KINDS,
    NAIVE_WEEK,
    available_origins,
    backtest_frame,
    choose,
    horizon_days,
    origins,
    total_load,
)
from forecast_core.batch import BATCH_FILE, read_batch, run_each
from forecast_core.features import (
    WEATHER_FEATURES,
    WEATHER_MIN_COVERAGE,
    Design,
    FeatureSpec,
    archived_forecast,
    bucket_for_lead,
    build_features,
    make_feature_spec,
    normalization_scales,
    regular_grid,
    weather_coverage,
)
from forecast_core.metrics import regression_metrics
from forecast_core.weather import WEATHER_FILE

DEFAULTS: dict[str, Any] = {
    "n_estimators": 100,
    "max_depth": None,
    "min_samples_leaf": 5,
    "max_features": 0.5,
    "random_state": 42,
    # LightGBM's (gradient-boosted trees, the same features as the forest).
    "lgbm_n_estimators": 300,
    "lgbm_learning_rate": 0.05,
    "lgbm_num_leaves": 31,
    "lgbm_min_child_samples": 20,
    "lgbm_subsample": 0.8,
    "lgbm_colsample_bytree": 0.8,
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


Regressor: TypeAlias = RandomForestRegressor | LGBMRegressor
Log = Callable[[str], None]


def fit(kind: str, X: pd.DataFrame, y: pd.Series, hp: dict[str, Any]) -> Regressor:
    """One bucket's model of ``kind`` (``forest`` or ``lightgbm``) fitted on ``X``, ``y``."""
    if kind == FOREST:
        forest = RandomForestRegressor(
            n_estimators=int(hp["n_estimators"]),
            max_depth=None if hp["max_depth"] in (None, "", "None") else int(hp["max_depth"]),
            min_samples_leaf=int(hp["min_samples_leaf"]),
            max_features=float(hp["max_features"]),
            random_state=int(hp["random_state"]),
            n_jobs=-1,
        )
        return forest.fit(X, y)
    if kind == LIGHTGBM:
        boosted = LGBMRegressor(
            n_estimators=int(hp["lgbm_n_estimators"]),
            learning_rate=float(hp["lgbm_learning_rate"]),
            num_leaves=int(hp["lgbm_num_leaves"]),
            min_child_samples=int(hp["lgbm_min_child_samples"]),
            subsample=float(hp["lgbm_subsample"]),
            subsample_freq=1,
            colsample_bytree=float(hp["lgbm_colsample_bytree"]),
            random_state=int(hp["random_state"]),
            # One thread: on a shared 2-CPU machine OpenMP's threads waited on each other, 14×
            # slower (9.7 s against 0.7 s for one customer's two buckets).
            n_jobs=1,
            verbose=-1,
        )
        # A pandas frame, so the fitted model knows the feature names inference passes.
        return boosted.fit(X, y)
    raise ValueError(f"unknown model kind {kind!r}")


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


def load_weather(weather_dir: Path | None, name: str) -> pd.DataFrame | None:
    """The weather table at ``name`` in the weather channel, or None without one."""
    if weather_dir is None or not (weather_dir / name).exists():
        return None
    return pd.read_parquet(weather_dir / name)


def weather_decision(weather: pd.DataFrame | None, series: pd.DataFrame) -> tuple[bool, float, str]:
    """Whether the model gets weather features, the weather's coverage of the load history's
    hours, and why, in one sentence."""
    if weather is None or weather.empty:
        return False, 0.0, "no weather for this customer: the model has no weather features"
    coverage = weather_coverage(weather, series.loc[series["energy_kwh"].notna(), "timestamp"])
    if coverage < WEATHER_MIN_COVERAGE:
        return (
            False,
            coverage,
            f"weather covers {coverage:.0%} of the load history's hours, under "
            f"{WEATHER_MIN_COVERAGE:.0%}: the model has no weather features",
        )
    return True, coverage, f"weather covers {coverage:.0%} of the load history's hours: used"


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
    kind: str, designs: dict[int, Design], rows: dict[int, pd.Series], hp: dict[str, Any]
) -> dict[int, Regressor]:
    return {b: fit(kind, d.features[rows[b]], d.target[rows[b]], hp) for b, d in designs.items()}


def write_outputs(
    model_out: Path,
    data_out: Path,
    model: dict[str, Any],
    spec: FeatureSpec,
    scales: dict[str, float],
    backtest: pd.DataFrame,
    summary: dict[str, Any],
    interval_table: dict[str, Any],
) -> None:
    """The model folder SageMaker packs into model.tar.gz, and the backtest beside the metrics."""
    model_out.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, model_out / "model.joblib", compress=3)
    (model_out / "intervals.json").write_text(json.dumps(interval_table, indent=2))
    (model_out / "feature_spec.json").write_text(spec.to_json())
    (model_out / "normalization.json").write_text(
        json.dumps({"scale_kwh": scales}, indent=2, sort_keys=True)
    )
    (model_out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    data_out.mkdir(parents=True, exist_ok=True)
    backtest.to_csv(data_out / "backtest.csv", index=False)
    (data_out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))


def train(
    customer: Any,
    channel: Path,
    name: str,
    model_out: Path,
    data_out: Path,
    hp: dict[str, Any],
    log: Log = print,
    weather_dir: Path | None = None,
    weather_name: str = WEATHER_FILE,
) -> dict[str, Any]:
    """Backtest the candidates on load table ``name`` in the training channel, write the chosen
    model to ``model_out`` and the backtest to ``data_out``; returns the metadata to report.
    ``log`` receives a line at each stage, so a long training is not silent. The weather table,
    if the customer has one, is ``weather_name`` in ``weather_dir``."""
    started = time.perf_counter()

    def say(message: str) -> None:
        log(f"customer '{customer}': {message} ({time.perf_counter() - started:.1f} s)")

    series = load_series(customer, channel, name)
    weather = load_weather(weather_dir, weather_name)
    use_weather, coverage_of_history, weather_note = weather_decision(weather, series)
    resolution = pd.Series(series["timestamp"].sort_values().unique()).diff().median()
    spec = make_feature_spec(
        resolution=resolution,
        horizon_hours=int(hp["horizon_hours"]),
        timezone=str(hp["timezone"]),
        holiday_country=str(hp["holiday_country"]),
        devices=sorted(series["device_id"].unique()),
        weather=use_weather,
    )
    at = backtest_origins(customer, series, spec, hp)
    say(
        f"{len(series)} rows, {series['device_id'].nunique()} device(s); backtest of {len(at)} "
        f"daily origins {at[0]:%Y-%m-%d %H:%M} .. {at[-1]:%Y-%m-%d %H:%M} UTC"
    )

    scales = normalization_scales(series)
    grid = regular_grid(series, spec)
    designs = {b: build_features(grid, spec, scales, b, weather) for b in spec.bucket_steps}
    week = f"lag_{spec.week_steps}"
    usable = {b: d.target.notna() & d.features[week].notna() for b, d in designs.items()}
    before = grid["timestamp"] < at[0]
    fit_rows = {b: u & before for b, u in usable.items()}
    if min(int(r.sum()) for r in fit_rows.values()) == 0:
        raise TrainingInputError(f"customer '{customer}': no complete rows before {at[0]}")
    say(f"features built for {len(spec.bucket_steps)} horizon bucket(s); {weather_note}")
    backtest_weather = describe_backtest_weather(weather, grid, spec, at) if use_weather else ""

    scored = ~before.to_numpy()
    fitted: dict[str, dict[int, Regressor]] = {}
    models_kwh: dict[str, dict[int, pd.Series]] = {}
    seconds: dict[str, float] = {}
    for kind in MODEL_KINDS:
        tic = time.perf_counter()
        fitted[kind] = fit_buckets(kind, designs, fit_rows, hp)
        models_kwh[kind] = {}
        for b, d in designs.items():
            values = np.full(len(grid), np.nan)
            values[scored] = fitted[kind][b].predict(d.features[scored]) * d.kwh_per_unit[scored]
            models_kwh[kind][b] = pd.Series(values, index=grid.index)
        seconds[kind] = time.perf_counter() - tic
        say(
            f"{kind} fitted on {int(fit_rows[spec.bucket_steps[0]].sum())} rows per bucket "
            f"and forecast every origin in {seconds[kind]:.1f} s"
        )
    frame = backtest_frame(grid, spec, at, models_kwh)
    if frame.empty:
        raise TrainingInputError(
            f"customer '{customer}': no complete hours in the backtest to score"
        )
    scores = {c: regression_metrics(frame["actual"], frame[c]) for c in CANDIDATES}
    kind = choose(scores)
    say(
        "backtest WAPE "
        + ", ".join(f"{c} {scores[c]['wape']:.2f} %" for c in CANDIDATES)
        + f" on {len(frame)} hours: {kind} chosen"
    )

    # Intervals: the chosen kind's error quantiles, and every candidate's coverage for comparison.
    levels = intervals.origin_levels(total_load(grid), at)
    buckets = pd.Series(bucket_for_lead(spec, frame["lead_steps"].to_numpy()), index=frame.index)
    interval_table = intervals.interval_summary(frame, kind, levels, buckets)
    candidate_coverage = {
        c: intervals.out_of_sample_coverage(frame, c, levels, buckets)["coverage_p10_p90"]
        for c in CANDIDATES
    }
    coverage = interval_table["coverage_p10_p90_out_of_sample"]
    say(
        "P10-P90 coverage out of sample "
        + (f"{coverage:.1%}" if coverage is not None else "not measurable (too few origins)")
        + f" over {interval_table['coverage_hours']} hours"
    )

    refit = bool(hp["refit_full"]) and kind in MODEL_KINDS
    if refit:
        tic = time.perf_counter()
        fitted[kind] = fit_buckets(kind, designs, usable, hp)
        seconds["refit"] = time.perf_counter() - tic
        say(f"{kind} refitted on all {int(usable[spec.bucket_steps[0]].sum())} rows per bucket")
    model = {"kind": kind, "models": fitted[kind] if kind in MODEL_KINDS else {}}
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
        "refit_full": refit,
        "intervals": interval_table,
        "candidates_coverage_p10_p90_out_of_sample": candidate_coverage,
        "fit_seconds": {k: round(v, 2) for k, v in seconds.items()},
        "hyperparameters": {k: hp[k] for k in DEFAULTS},
        "features": {str(b): spec.feature_names(b) for b in spec.bucket_steps},
        "horizon_buckets_steps": list(spec.bucket_steps),
        "weather": {
            "used": use_weather,
            "coverage_of_history": round(coverage_of_history, 4),
            "note": weather_note,
            "features": list(WEATHER_FEATURES) if use_weather else [],
            "backtest_weather": backtest_weather,
        },
    }
    write_outputs(model_out, data_out, model, spec, scales, backtest, summary, interval_table)
    total_seconds = time.perf_counter() - started
    say("model written")

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 6)

    return {
        "model_kind": kind,
        **{f"{k}": round(v, 6) for k, v in metrics.items() if k != "n"},
        **{f"baseline_{k}": round(v, 6) for k, v in baseline.items() if k != "n"},
        **{f"{c}_wape": round(s["wape"], 6) for c, s in scores.items()},
        "wape_ratio": round(float(summary["wape_ratio"]), 6),
        "coverage_p10_p90": rounded(coverage),
        "coverage_p10_p90_in_sample": rounded(interval_table["coverage_p10_p90_in_sample"]),
        "train_rows": summary["train_rows"],
        "backtest_origins": summary["backtest_origins"],
        "backtest_hours": summary["backtest_hours"],
        "backtest_first_origin": summary["backtest_first_origin"],
        "backtest_last_origin": summary["backtest_last_origin"],
        **{f"{k}_fit_seconds": round(v, 2) for k, v in seconds.items()},
        "training_seconds": round(total_seconds, 2),
        "weather_features": use_weather,
        "weather_coverage": round(coverage_of_history, 4),
        "weather_note": weather_note,
        **({"backtest_weather": backtest_weather} if use_weather else {}),
    }


def describe_backtest_weather(
    weather: pd.DataFrame | None, grid: pd.DataFrame, spec: FeatureSpec, at: pd.DatetimeIndex
) -> str:
    """What the backtest's weather for its horizons was, in one sentence: archived forecasts
    issued by each origin, or observations with a simulated forecast error."""
    times = pd.DatetimeIndex(grid.loc[grid["timestamp"] >= at[0], "timestamp"].unique())
    shares = [
        float(np.isfinite(archived_forecast(weather, times, spec, b)).mean())
        for b in spec.bucket_steps
    ]
    share = float(np.mean(shares)) if shares else 0.0
    simulated = (
        "observed temperatures plus a simulated forecast error (1.0 °C standard deviation the "
        "first day ahead, 1.5 °C the second; forecast_core.features.simulated_forecast_error)"
    )
    if share >= 0.999:
        return "weather forecasts archived by the customer, each issued at or before its origin"
    if share <= 0.0:
        return f"no archived weather forecasts: {simulated}"
    return (
        f"weather forecasts issued at or before each origin for {share:.0%} of the backtest's "
        f"hours, elsewhere {simulated}"
    )


def main(report: runtime.Report) -> None:
    hp = {**DEFAULTS, **runtime.hyperparameters()}
    channel, model_out, data_out = (
        runtime.channel_dir("train"),
        runtime.model_dir(),
        runtime.output_data_dir(),
    )
    batch_channel = runtime.channel_dir("batch")
    weather_dir = runtime.channel_dir("weather")
    if not batch_channel.exists():
        customer = hp.get("customer_id", "?")
        report.materialization(
            train(
                customer, channel, "load.parquet", model_out, data_out, hp, report.log, weather_dir
            )
        )
        return
    if "customer_id" in hp:
        raise TrainingInputError(
            "hyperparameter customer_id names one customer, but this is a batch job "
            f"(channel {batch_channel}): its customers are in {BATCH_FILE}"
        )

    def one(entry: Mapping[str, Any]) -> dict[str, Any]:
        c = entry["customer_id"]
        return train(
            c,
            channel,
            f"{c}/load.parquet",
            model_out / c,
            data_out / c,
            hp,
            report.log,
            weather_dir,
            f"{c}/{WEATHER_FILE}",
        )

    run_each(report, read_batch(batch_channel / BATCH_FILE), one)


if __name__ == "__main__":
    runtime.run_job("training", main)

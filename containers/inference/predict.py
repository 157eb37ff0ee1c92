"""SageMaker Processing job: forecast one customer's load for the hours after its last reading.

Inputs (ProcessingInputs):
  /opt/ml/processing/input/model     model.tar.gz from a training job that passed its gate
                                     (not needed, and may be absent, for the fallback)
  /opt/ml/processing/input/history   load.parquet, the preprocessed load table
  /opt/ml/processing/input/weather   optional: weather.parquet, the customer's weather table
                                     (batch: <c>/weather.parquet)
Output (ProcessingOutput):
  /opt/ml/processing/output/forecast/forecast.parquet
      timestamp, device_id, energy_kwh (= P50, the point forecast), p10_kwh, p90_kwh,
      model_kind, model_version, source, issued_at, weather_input

``weather_input`` says, per step, what weather the forecast used: ``not_used`` (the model has
no weather features: the customer has no weather, or a seasonal-naive model or the fallback),
``forecast`` (a weather forecast for that hour), ``observed`` (an observation of that hour) or
``none_for_horizon``: the model has weather features but nothing was delivered for that hour, so
the mean temperature at that time of day over the last 7 days of weather stood in
(``forecast_core.features.horizon_weather``). The report's ``weather_input`` sums it up
(``none for horizon: 30 of 48 h ...``) and ``weather_forecast_hours`` counts the covered hours.

``source`` says where the forecast comes from, as the caller chose it: ``newest`` (the newest
model, which is approved), ``previous_approved`` (an older approved model, because the newest
was rejected) or ``seasonal_naive_fallback`` (no approved model at all). One customer:
``--model-version V [--source newest|previous_approved]`` forecasts with the model, or
``--fallback seasonal-naive`` without one (``model_version`` is then ``seasonal-naive``).

The seasonal-naive fallback forecasts each device's value at the same time one week earlier
(as ``forecast_core.metrics.seasonal_naive``, the baseline every model is gated against); where
that is a gap, the value one day earlier (itself forecast, beyond the first day); where that is
missing too, the device's mean at that time of day (UTC) over its last four weeks of readings,
else over all its readings. It never leaves a value missing. Its horizon, ``--horizon-hours``, is
required and at most one week, at the resolution of the history's timestamps.

Batch mode (``--batch <batch input>/batch.json`` instead of ``--customer-id``; see
forecast_core.batch) does the same for each customer ``<c>`` of the batch. Each entry names its
``source`` (default ``newest``) and ``model_version``: a string for a model, at
``<model-dir>/<c>/model.tar.gz``; null (or absent) for ``seasonal_naive_fallback``, which reads
no model and whose model folder may be absent. The history is at
``<history-dir>/<c>/load.parquet``, the forecast is written to ``<output-dir>/<c>/forecast.parquet``.
``--horizon-hours`` and ``--issued-at`` apply to all::

    {"customers": [{"customer_id": "a", "model_version": "20251102-...", "source": "newest"},
                   {"customer_id": "b", "model_version": null, "source": "seasonal_naive_fallback"}]}

With a model, the horizon is ``--horizon-hours`` at the data's resolution. It may not exceed the
horizon the model was trained for: it has a horizon bucket (``forecast_core.features``) for each
day of that and no more. A model is of the kind its training backtest chose: ``forest`` (a
forest per horizon bucket, each step forecast by its bucket's forest from the same features
training built), or ``seasonal_naive_week`` / ``seasonal_naive_day``, which forecast as
:func:`seasonal_naive_forecast` does with a week or a day.

A model saved with a feature spec of another version (code upgraded since it was trained) cannot
rebuild its inputs: the customer is then forecast by seasonal naive (same time last week), with
source ``seasonal_naive_fallback``, a ``fallback_reason`` naming the model version, and a log
line, so an upgrade never leaves a customer without a forecast.

Every forecast carries a P10-P90 interval (``forecast_core.intervals``): ``p10_kwh`` and
``p90_kwh`` around ``energy_kwh``, from the error quantiles its model saved (``intervals.json``),
or, for a forecast without a usable model (the fallback, or a model saved without intervals),
from the errors seasonal naive would have made from daily origins in the customer's history.
With no such error at all (under a week and a horizon of history) the interval is 0 to the
meter's largest reading, and the report says so (``interval_method``).

Negative forecasts are set to 0 (energy drawn is never negative); nothing else is clipped, so
an absurd model shows as absurd values for the publishing side's checks to reject.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # forecast_core ships beside this script

from forecast_core import intervals, runtime
from forecast_core.backtest import MODEL_KINDS, NAIVE_SEASONS, NAIVE_WEEK
from forecast_core.batch import BatchFileError, read_batch, run_each
from forecast_core.features import (
    WEATHER_NONE,
    WEATHER_NOT_USED,
    FeatureSpec,
    FeatureSpecVersionError,
    bucket_for_lead,
    build_features,
    horizon_weather,
    regular_grid,
)
from forecast_core.metrics import ONE_WEEK, seasonal_naive
from forecast_core.sanity import historical_maxima
from forecast_core.weather import WEATHER_FILE

PROCESSING = Path("/opt/ml/processing")

NEWEST, PREVIOUS_APPROVED, FALLBACK = "newest", "previous_approved", "seasonal_naive_fallback"
SOURCES = (NEWEST, PREVIOUS_APPROVED, FALLBACK)
FALLBACK_MODEL_VERSION = "seasonal-naive"
FALLBACK_MAX_HORIZON_HOURS = 168.0  # one week: every value a week earlier is then known
ONE_DAY = pd.Timedelta(days=1)
RECENT = pd.Timedelta(days=28)


class InferenceInputError(ValueError):
    pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--customer-id")
    who.add_argument("--batch", type=Path, help="batch.json: forecast each customer it lists")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--model-version", help="one customer's; a batch names each customer's")
    how.add_argument(
        "--fallback",
        choices=["seasonal-naive"],
        help="one customer without a model: same time last week (needs --horizon-hours)",
    )
    parser.add_argument(
        "--source",
        choices=SOURCES,
        help=f"one customer's: {NEWEST} (default with a model) or {PREVIOUS_APPROVED}; "
        f"{FALLBACK} with --fallback",
    )
    parser.add_argument("--model-dir", type=Path, default=PROCESSING / "input" / "model")
    parser.add_argument("--history-dir", type=Path, default=PROCESSING / "input" / "history")
    parser.add_argument(
        "--weather-dir",
        type=Path,
        default=PROCESSING / "input" / "weather",
        help="the customer's weather.parquet (batch: <customer>/weather.parquet), if it has one",
    )
    parser.add_argument("--output-dir", type=Path, default=PROCESSING / "output" / "forecast")
    parser.add_argument("--horizon-hours", type=float, default=None, help="default: the model's")
    parser.add_argument("--issued-at", default=None, help="ISO time the forecast is issued")
    args = parser.parse_args(argv)
    if args.batch is not None:
        for name in ("model_version", "fallback", "source"):
            if getattr(args, name) is not None:
                option = "--" + name.replace("_", "-")
                parser.error(f"{option} is for one customer; a batch names each customer's")
        return args
    if args.model_version is None and args.fallback is None:
        parser.error("one of the arguments --model-version --fallback is required")
    if args.fallback is not None:
        if args.source not in (None, FALLBACK):
            parser.error(f"--fallback forecasts with source {FALLBACK}, not {args.source}")
        if args.horizon_hours is None:
            parser.error("--fallback needs --horizon-hours (it has no model to take one from)")
        args.source = FALLBACK
    else:
        if args.source == FALLBACK:
            parser.error(f"source {FALLBACK} is for --fallback, not a --model-version")
        args.source = args.source or NEWEST
    return args


def batch_entries(path: Path) -> list[dict[str, Any]]:
    """The batch's customers, each with a valid ``source`` (default ``newest``) and a
    ``model_version`` string, or None for the fallback."""
    entries = read_batch(path)
    for entry in entries:
        customer = entry["customer_id"]
        source = entry.setdefault("source", NEWEST)
        if source not in SOURCES:
            raise BatchFileError(
                f"batch file {path}: customer '{customer}' has source {source!r}, "
                f"not one of {', '.join(SOURCES)}"
            )
        version = entry.get("model_version")
        if source == FALLBACK and version is not None:
            raise BatchFileError(
                f"batch file {path}: customer '{customer}' has source {FALLBACK} "
                f"and model_version {version!r}: the fallback uses no model"
            )
        if source != FALLBACK and not isinstance(version, str):
            raise BatchFileError(
                f"batch file {path}: customer '{customer}' has no \"model_version\" string"
            )
        entry["model_version"] = version
    return entries


def load_model(model_dir: Path, workdir: Path, customer: str):
    """The model, its feature spec, normalization scales and interval table (None if it was
    saved without one). Raises FeatureSpecVersionError, before loading anything else, for a
    model of another feature-spec version."""
    archive = model_dir / "model.tar.gz"
    if not archive.exists():
        raise InferenceInputError(f"customer '{customer}': no model.tar.gz in {model_dir}")
    with tarfile.open(archive) as tar:
        tar.extractall(workdir, filter="data")
    spec = FeatureSpec.from_json((workdir / "feature_spec.json").read_text())
    scales = json.loads((workdir / "normalization.json").read_text())["scale_kwh"]
    model = joblib.load(workdir / "model.joblib")
    table = workdir / "intervals.json"
    interval_table = json.loads(table.read_text()) if table.exists() else None
    return model, spec, scales, interval_table


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


def read_history(customer: str, history_dir: Path) -> pd.DataFrame:
    history_file = history_dir / "load.parquet"
    if not history_file.exists():
        raise InferenceInputError(f"customer '{customer}': no {history_file.name} in {history_dir}")
    history = pd.read_parquet(history_file)
    history["device_id"] = history["device_id"].astype(str)
    return history


def read_weather(weather_dir: Path | None) -> pd.DataFrame | None:
    """The customer's weather table, or None if it has none."""
    if weather_dir is None or not (weather_dir / WEATHER_FILE).exists():
        return None
    return pd.read_parquet(weather_dir / WEATHER_FILE)


def predict(
    customer: str,
    model_version: str,
    model_dir: Path,
    history_dir: Path,
    output_dir: Path,
    horizon_hours: float | None,
    issued_at: pd.Timestamp,
    source: str = NEWEST,
    log: Callable[[str], None] = print,
    weather_dir: Path | None = None,
) -> dict[str, Any]:
    """Forecast one customer with its model into ``output_dir``/forecast.parquet; returns the
    metadata to report. ``weather_dir`` holds the customer's weather.parquet, if it has one."""
    history = read_history(customer, history_dir)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model, spec, scales, interval_table = load_model(model_dir, Path(tmp), customer)
        except FeatureSpecVersionError as exc:
            reason = (
                f"model {model_version} was saved with feature spec version {exc.found}, which "
                "this code cannot rebuild; forecast by seasonal naive (same time last week) "
                "instead until the customer is retrained"
            )
            log(f"customer '{customer}': {reason}")
            if horizon_hours is None:  # the model's own horizon, as far as its old spec says
                raw = json.loads((Path(tmp) / "feature_spec.json").read_text())
                horizon_hours = raw["horizon_steps"] * raw["resolution_minutes"] / 60.0
            report = forecast_without_model(customer, history, output_dir, horizon_hours, issued_at)
            return {**report, "fallback_reason": reason, "skipped_model_version": model_version}
    hours, steps = horizon(customer, spec, horizon_hours)
    kind = model["kind"]
    weather_report: dict[str, Any] = {"weather_input": WEATHER_NOT_USED}
    if kind in NAIVE_SEASONS:
        forecast, hours = naive_forecast(customer, history, hours, NAIVE_SEASONS[kind])
    elif kind in MODEL_KINDS:
        weather = read_weather(weather_dir) if spec.weather else None
        forecast = model_forecast(customer, model, spec, scales, history, steps, weather)
        if spec.weather:
            weather_report = weather_summary(forecast, spec)
            if weather_report["weather_forecast_hours"] < weather_report["horizon_steps"]:
                log(f"customer '{customer}': {weather_report['weather_input']}")
    else:
        raise InferenceInputError(f"customer '{customer}': unknown model kind {kind!r}")
    if interval_table is not None and interval_table.get("quantiles"):
        method = str(interval_table["method"])
        quantiles = interval_table["quantiles"]
    else:
        # Saved before models carried intervals: seasonal naive's errors are the honest stand-in.
        method, quantiles = history_quantiles(customer, history, steps, NAIVE_WEEK)
    forecast = with_intervals(customer, forecast, history, quantiles)
    report = write_forecast(forecast, output_dir, hours, model_version, source, issued_at, kind)
    return {**report, **weather_report, "interval_method": method}


def weather_summary(forecast: pd.DataFrame, spec: FeatureSpec) -> dict[str, Any]:
    """What weather a weather model's forecast had, in one phrase and in hours."""
    per_step = forecast.drop_duplicates("timestamp")
    steps = len(per_step)
    missing = int((per_step["weather_input"] == WEATHER_NONE).sum())
    hours = spec.resolution / pd.Timedelta(hours=1)
    if missing:
        text = (
            f"none for horizon: {missing * hours:g} of {steps * hours:g} h without a weather "
            "forecast, filled with the mean temperature at that time of day over the last 7 "
            "days of weather"
        )
    else:
        text = f"weather forecast for all {steps * hours:g} h"
    return {
        "weather_input": text,
        "weather_forecast_hours": round((steps - missing) * hours, 3),
        "horizon_steps": steps,
    }


def model_forecast(
    customer: str,
    model: dict[str, Any],
    spec: FeatureSpec,
    scales: dict[str, float],
    history: pd.DataFrame,
    steps: int,
    weather: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The ``steps`` after the last reading from a bucket model (forest or LightGBM): each step
    by its bucket's model from the same features training built, with ``weather_input`` per
    step (see the module docstring)."""
    # Models trained before LightGBM was a candidate saved their forests under "forests".
    per_bucket = model.get("models", model.get("forests", {}))
    resolution = spec.resolution
    last = history.loc[history["energy_kwh"].notna(), "timestamp"].max()
    until = last + steps * resolution
    grid = regular_grid(history, spec, until=until)
    future = (grid["timestamp"] > last).to_numpy()
    lead = np.rint((grid["timestamp"] - last) / resolution).to_numpy()[future].astype(int)
    bucket = bucket_for_lead(spec, lead)
    predicted = np.full(int(future.sum()), np.nan)
    origin = last + resolution
    for b in np.unique(bucket):
        try:
            design = build_features(grid, spec, scales, int(b), weather, forecast_from=origin)
        except ValueError as exc:
            raise InferenceInputError(f"customer '{customer}': {exc}") from exc
        rows = bucket == b
        X = design.features[future][rows]
        predicted[rows] = per_bucket[int(b)].predict(X) * design.kwh_per_unit[future][rows]
    # Only below: an absurdly high forecast must stay visible to the checks before publishing.
    energy = np.clip(predicted, 0.0, None)
    timestamps = grid.loc[future, "timestamp"]
    if spec.weather:
        _, weather_input = horizon_weather(weather, pd.DatetimeIndex(timestamps), origin)
    else:
        weather_input = np.full(len(timestamps), WEATHER_NOT_USED, dtype=object)
    return pd.DataFrame(
        {
            "timestamp": timestamps.to_numpy(),
            "device_id": grid.loc[future, "device_id"].to_numpy(),
            "energy_kwh": energy,
            "weather_input": weather_input,
        }
    )


def history_quantiles(
    customer: str, history: pd.DataFrame, steps: int, candidate: str
) -> tuple[str, dict[str, Any]]:
    """Interval quantiles from the errors ``candidate`` (a seasonal naive) would have made in
    the customer's history; the method's description and the table (empty if none)."""
    resolution = data_resolution(customer, history)
    table = intervals.naive_history_intervals(history, resolution, steps, candidate)
    if not table["quantiles"]:
        return NO_ERRORS_METHOD, {}
    origins = table["history_origins"]
    return f"{table['method']}, of {candidate} from {origins} daily origins in the history", table[
        "quantiles"
    ]


NO_ERRORS_METHOD = (
    "no backtest errors to estimate from (history under a week and a horizon): "
    "0 to the meter's largest reading"
)


def with_intervals(
    customer: str, forecast: pd.DataFrame, history: pd.DataFrame, quantiles: dict[str, Any]
) -> pd.DataFrame:
    """``forecast`` with ``p10_kwh`` and ``p90_kwh`` (see ``forecast_core.intervals``); each
    device's interval scaled by its own level over the week before its last reading."""
    if forecast.empty:
        return forecast.assign(p10_kwh=np.nan, p90_kwh=np.nan)
    timestamps = pd.DatetimeIndex(pd.to_datetime(forecast["timestamp"], utc=True))
    resolution = data_resolution(customer, history)
    first = timestamps.min()
    steps_ahead = np.rint((timestamps - first) / resolution).astype(int) + 1
    devices = forecast["device_id"].astype(str)
    energy = forecast["energy_kwh"].to_numpy(dtype=float)
    if not quantiles:
        maxima = historical_maxima(history)
        top = devices.map(maxima).fillna(0.0).to_numpy(dtype=float)
        return forecast.assign(p10_kwh=0.0, p90_kwh=np.maximum(top, energy))
    level = devices.map(intervals.device_levels(history)).fillna(0.0).to_numpy(dtype=float)
    p10, p90 = intervals.apply(energy, level, np.asarray(steps_ahead), quantiles)
    return forecast.assign(p10_kwh=p10, p90_kwh=p90)


def forecast_without_model(
    customer: str,
    history: pd.DataFrame,
    output_dir: Path,
    horizon_hours: float | None,
    issued_at: pd.Timestamp,
) -> dict[str, Any]:
    """The seasonal-naive fallback (same time last week) with its intervals, written as the
    customer's forecast; returns the metadata to report."""
    if horizon_hours is None:
        raise InferenceInputError(
            f"customer '{customer}': the seasonal-naive fallback needs --horizon-hours"
        )
    forecast, hours = naive_forecast(customer, history, horizon_hours, ONE_WEEK)
    steps = int(forecast.groupby("device_id").size().max())
    method, quantiles = history_quantiles(customer, history, steps, NAIVE_WEEK)
    forecast = with_intervals(customer, forecast, history, quantiles)
    report = write_forecast(
        forecast, output_dir, hours, FALLBACK_MODEL_VERSION, FALLBACK, issued_at, NAIVE_WEEK
    )
    return {**report, "interval_method": method}


def predict_fallback(
    customer: str,
    history_dir: Path,
    output_dir: Path,
    horizon_hours: float | None,
    issued_at: pd.Timestamp,
) -> dict[str, Any]:
    """Forecast one customer without a model (see the module docstring) into
    ``output_dir``/forecast.parquet; returns the metadata to report."""
    history = read_history(customer, history_dir)
    return forecast_without_model(customer, history, output_dir, horizon_hours, issued_at)


def naive_forecast(
    customer: str, history: pd.DataFrame, horizon_hours: float, season: pd.Timedelta
) -> tuple[pd.DataFrame, float]:
    """Each device's seasonal-naive forecast (``season`` a week or a day, see
    :func:`seasonal_naive_forecast`) for ``horizon_hours`` after its last reading; returns the
    forecast (timestamp, device_id, energy_kwh) and its length in hours."""
    known = np.isfinite(history["energy_kwh"].to_numpy(dtype=float))
    if "is_gap" in history.columns:
        known &= ~history["is_gap"].fillna(False).to_numpy(dtype=bool)
    readings = history.loc[known]
    silent = sorted(set(history["device_id"]) - set(readings["device_id"]))
    if readings.empty:
        raise InferenceInputError(f"customer '{customer}': no readings to forecast from")
    if silent:
        raise InferenceInputError(
            f"customer '{customer}': device(s) {silent} have no readings to forecast from"
        )
    resolution = data_resolution(customer, history)
    steps = round(pd.Timedelta(hours=horizon_hours) / resolution)
    if steps < 1 or horizon_hours > FALLBACK_MAX_HORIZON_HOURS:
        raise InferenceInputError(
            f"customer '{customer}': horizon of {horizon_hours} h is outside "
            f"1 step..{FALLBACK_MAX_HORIZON_HOURS:g} h, the seasonal-naive fallback's (one week)"
        )
    last = readings["timestamp"].max()
    future = pd.date_range(last + resolution, periods=steps, freq=resolution)
    parts = []
    for device, values in readings.groupby("device_id", sort=True):
        series = pd.Series(
            values["energy_kwh"].to_numpy(dtype=float), index=pd.DatetimeIndex(values["timestamp"])
        )
        series = series[~series.index.duplicated(keep="last")].sort_index()
        parts.append(
            pd.DataFrame(
                {
                    "timestamp": future,
                    "device_id": device,
                    "energy_kwh": seasonal_naive_forecast(series, future, season),
                }
            )
        )
    forecast = pd.concat(parts, ignore_index=True)
    forecast["energy_kwh"] = np.clip(forecast["energy_kwh"].to_numpy(), 0.0, None)
    return forecast, float(steps * resolution / pd.Timedelta(hours=1))


def data_resolution(customer: str, history: pd.DataFrame) -> pd.Timedelta:
    """The history's interval: the most common step between a device's consecutive timestamps."""
    steps = (
        history[["device_id", "timestamp"]]
        .drop_duplicates()
        .sort_values(["device_id", "timestamp"])
        .groupby("device_id")["timestamp"]
        .diff()
        .dropna()
    )
    steps = steps[steps > pd.Timedelta(0)]
    if steps.empty:
        raise InferenceInputError(
            f"customer '{customer}': cannot tell the data's resolution from single timestamps"
        )
    resolution = pd.Timedelta(steps.mode().min())
    if ONE_DAY % resolution != pd.Timedelta(0):
        raise InferenceInputError(
            f"customer '{customer}': resolution {resolution} does not divide a day"
        )
    return resolution


def seasonal_naive_forecast(
    known: pd.Series, future: pd.DatetimeIndex, season: pd.Timedelta = ONE_WEEK
) -> np.ndarray:
    """Values at ``future`` from ``known`` readings (NaN-free, by time).

    ``season`` a week (the fallback, and the gate's baseline): a week earlier, else a day earlier
    (a forecast value beyond the first day), else the mean at that time of day. ``season`` a day
    (the ``seasonal_naive_day`` model): a day earlier (beyond the first day, the forecast's own
    first day, i.e. the last day before the forecast repeated), else a week earlier, else the
    mean at that time of day.
    """
    if season not in (ONE_WEEK, ONE_DAY):
        raise ValueError(f"season must be a week or a day, not {season}")
    timeline = pd.Series(np.nan, index=known.index.union(future))
    timeline.loc[known.index] = known.to_numpy()
    week_earlier = seasonal_naive(timeline, ONE_WEEK).reindex(future)
    forecast = week_earlier.copy() if season == ONE_WEEK else pd.Series(np.nan, index=future)
    # A day earlier may itself be a forecast: each round fills one more day of the horizon.
    for _ in range(int(np.ceil((future[-1] - future[0]) / ONE_DAY)) + 1):
        if not forecast.isna().any():
            break
        timeline.loc[future] = forecast.to_numpy()
        forecast = forecast.fillna(seasonal_naive(timeline, ONE_DAY).reindex(future))
    forecast = forecast.fillna(week_earlier)
    if forecast.isna().any():
        recent = known[known.index > known.index[-1] - RECENT]
        by_slot = slot_means(recent).combine_first(slot_means(known))
        slots = pd.Series(time_of_day(future), index=future)
        forecast = forecast.fillna(slots.map(by_slot)).fillna(float(known.mean()))
    return forecast.to_numpy(dtype=float)


def time_of_day(index: pd.DatetimeIndex) -> np.ndarray:
    return (index - index.normalize()).to_numpy()


def slot_means(series: pd.Series) -> pd.Series:
    return series.groupby(time_of_day(pd.DatetimeIndex(series.index))).mean()


def write_forecast(
    forecast: pd.DataFrame,
    output_dir: Path,
    hours: float,
    model_version: str,
    source: str,
    issued_at: pd.Timestamp,
    model_kind: str,
) -> dict[str, Any]:
    """Write ``forecast`` (timestamp, device_id, energy_kwh, p10_kwh, p90_kwh) with the model
    that made it and where it comes from; return the metadata to report."""
    if "weather_input" not in forecast:
        forecast = forecast.assign(weather_input=WEATHER_NOT_USED)
    # The model's columns after the interval, weather_input last (the table's column order).
    weather_input = forecast.pop("weather_input")
    forecast = forecast.assign(
        model_kind=model_kind,
        model_version=model_version,
        source=source,
        issued_at=issued_at,
        weather_input=weather_input.to_numpy(),
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
        "total_p10_kwh": round(float(forecast["p10_kwh"].sum()), 3),
        "total_p90_kwh": round(float(forecast["p90_kwh"].sum()), 3),
        "model_kind": model_kind,
        "model_version": model_version,
        "source": source,
        "weather_input": WEATHER_NOT_USED,
    }


def main(report: runtime.Report, argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # One issue time for the whole job, so every customer of a batch has the same.
    issued_at = issue_time(args.issued_at)

    def run(customer: str, model_version: str | None, source: str, folder: str) -> dict[str, Any]:
        # A batch customer's files sit in a folder named after it; a lone customer's in "".
        history_dir, output_dir = args.history_dir / folder, args.output_dir / folder
        if source == FALLBACK:
            return predict_fallback(
                customer, history_dir, output_dir, args.horizon_hours, issued_at
            )
        assert model_version is not None  # parse_args and batch_entries see to it
        return predict(
            customer,
            model_version,
            args.model_dir / folder,
            history_dir,
            output_dir,
            args.horizon_hours,
            issued_at,
            source,
            report.log,
            args.weather_dir / folder,
        )

    if args.batch is None:
        report.materialization(run(args.customer_id, args.model_version, args.source, ""))
        return
    entries = batch_entries(args.batch)
    run_each(
        report,
        entries,
        lambda e: run(e["customer_id"], e["model_version"], e["source"], e["customer_id"]),
    )


if __name__ == "__main__":
    runtime.run_job("processing", main)

"""Real load as landed customers, and the published forecast scored against what happened.

Two sources of real (or measurement-derived) load, both read offline from PyPI wheels and never
committed (SimBench data is ODbL):

* **SimBench** profiles (``simbench`` wheel, ``1-complete_data-mixed-all-0-sw/LoadProfile.csv``):
  15-minute normalised active power (``<name>_pload``; ``_qload`` is reactive and ignored) for
  2016 in naive Europe/Berlin local time. The file writes the clock as it was: 27 March has 92
  rows (02:00-02:45 never happen) and 30 October 100 rows (02:00-02:45 twice, summer time
  first). :func:`read_simbench_profiles` places them in UTC by that order.
* **England & Wales** half-hourly demand (Taylor 2003, ``pmdarima``), read by
  ``benchmarks.run.taylor_values`` and timed as ``benchmarks.run.taylor_table`` does.

Each series is scaled to a plausible size for its kind (:data:`CUSTOMERS`) and written in one
of the product's vendor formats with the demo generator's own writers, as monthly files
(UTC months). :func:`landed_files` gives what a customer would have delivered before a forecast
origin: every reading that starts before it.

The benchmark (:func:`bench_real_load`, ``python -m benchmarks.run --only real_load``) runs
the real graph, ``forecast_job`` through ``execute_in_process`` on the local environment, once
per customer and origin: origins in time order on one data home and one Dagster instance per
customer, so that the model registry carries over as it would for a user (a rejected newest
model falls back to the previous Approved one). At each origin it scores the forecast the
graph published (``forecasts/<customer>/current.json``) over its 48 hours against the actual
load, next to seasonal naive (same hour a week before) on exactly the same hours.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forecast_assets.demo_data import (
    VENDOR_DECIMALS,
    concat_text,
    decimal_text,
    monthly_file_names,
    vendor_timestamps,
)
from forecast_core.vendors import VENDORS_BY_NAME

SIMBENCH_CSV = "simbench/networks/1-complete_data-mixed-all-0-sw/LoadProfile.csv"
SIMBENCH_TIMEZONE = "Europe/Berlin"
SIMBENCH_INTERVAL_MINUTES = 15
TAYLOR_INTERVAL_MINUTES = 30
# England & Wales demand (about 20-45 GW) scaled to a regional aggregate of this mean power:
# national demand would exceed the product's bound of 100 MW per meter (RawLoadConfig).
TAYLOR_MEAN_KW = 10_000.0

# The daily issue time.
ISSUE_HOUR_UTC = 6
HORIZON_HOURS = 48
WEEK_HOURS = 168

# Origins at 06:00 UTC, spread over seasons and weekdays. SimBench: mid-March to December.
# Taylor: its last three weeks. Chosen when training needed 63 days of history (28 holdout + 21
# training + 14 of lags); it now needs 36, but the origins stay so that runs compare.
SIMBENCH_ORIGINS = (
    "2016-03-16",  # Wednesday
    "2016-05-13",  # Friday
    "2016-07-04",  # Monday
    "2016-08-27",  # Saturday
    "2016-10-18",  # Tuesday
    "2016-12-08",  # Thursday
)
# Six more between those, taken after them (``--real-origins`` above 6): a customer's ratio
# over 6 origins moves by tenths with a single unusual day (benchmarks/README.md). None of them,
# nor the week before it, crosses a clock change.
SIMBENCH_MORE_ORIGINS = (
    "2016-04-14",  # Thursday
    "2016-06-12",  # Sunday
    "2016-08-02",  # Tuesday
    "2016-09-21",  # Wednesday
    "2016-11-11",  # Friday
    "2016-12-20",  # Tuesday
)
TAYLOR_ORIGINS = (
    "2000-08-09",  # Wednesday
    "2000-08-14",  # Monday
    "2000-08-18",  # Friday
    "2000-08-22",  # Tuesday
    "2000-08-25",  # Friday
)

# Goals from the issue (mean over customers of the per-customer WAPE ratio).
GOAL_POOLED = 0.80
AMBITION_POOLED = 0.70
GOAL_HOUSEHOLDS = 0.90
GOAL_MAX_CUSTOMER = 1.0
GOAL_COVERAGE = (0.70, 0.90)  # P10-P90 intervals holding the actual load this often
# A seasonal-naive fallback forecast scores exactly naive's WAPE but for float rounding in the
# files and tables (ratios of 1.000000002 were seen): that is "as good as naive", not worse.
RATIO_TOLERANCE = 1e-6


@dataclass(frozen=True)
class RealCustomer:
    """One landed customer made from one real series."""

    customer_id: str
    source: str  # "simbench" or "taylor"
    profile: str  # SimBench profile name (without _pload), or "taylor"
    kind: str  # household, commercial, agricultural, grid-aggregate, national-demand
    vendor: str  # the vendor format its files are written in
    annual_kwh: float  # SimBench: energy over the 2016 year; Taylor: unused (see TAYLOR_MEAN_KW)
    note: str = ""

    @property
    def device_id(self) -> str:
        return f"{self.source}-{self.profile}".lower().replace("_", "-")

    @property
    def timezone(self) -> str:
        return "Europe/London" if self.source == "taylor" else SIMBENCH_TIMEZONE


# Households at 3,500 kWh/year (a German 3-person household); commercial sites 100-500 MWh/year;
# farms 50-80 MWh/year; a low-voltage feeder 1 GWh, a medium-voltage ring 20 GWh and a
# high-voltage substation 100 GWh/year (mean 11.4 MW, peak about 26 MW, median below the
# product's 20 MW median bound). Vendors: SimBench's naive local clock is enerlog's own
# convention, so sites keep it; the grid aggregates go through UTC into kilowatch (offsets) and
# the national series into gridsense (UTC), so that every vendor's path is measured.
CUSTOMERS: tuple[RealCustomer, ...] = (
    RealCustomer("sb-h0-a", "simbench", "H0-A", "household", "enerlog", 3_500),
    RealCustomer("sb-h0-b", "simbench", "H0-B", "household", "enerlog", 3_500),
    RealCustomer("sb-h0-l", "simbench", "H0-L", "household", "enerlog", 3_500),
    RealCustomer("sb-g0-a", "simbench", "G0-A", "commercial", "enerlog", 150_000, "general"),
    RealCustomer("sb-g1-a", "simbench", "G1-A", "commercial", "enerlog", 200_000, "weekdays 8-18"),
    RealCustomer("sb-g4-a", "simbench", "G4-A", "commercial", "enerlog", 300_000, "shop"),
    RealCustomer("sb-g6-a", "simbench", "G6-A", "commercial", "enerlog", 100_000, "weekend"),
    RealCustomer("sb-l0-a", "simbench", "L0-A", "agricultural", "enerlog", 50_000),
    RealCustomer("sb-l2-a", "simbench", "L2-A", "agricultural", "enerlog", 80_000),
    RealCustomer("sb-lv-rural1", "simbench", "lv_rural1", "grid-aggregate", "kilowatch", 1e6),
    RealCustomer("sb-mv-urban", "simbench", "mv_urban", "grid-aggregate", "kilowatch", 20e6),
    RealCustomer("sb-hv-urban", "simbench", "hv_urban", "grid-aggregate", "kilowatch", 100e6),
    RealCustomer("taylor-ew", "taylor", "taylor", "national-demand", "gridsense", 0.0),
)


# Reading the sources ----------------------------------------------------------------------------


def simbench_csv(wheels: Path) -> tuple[bytes, str]:
    """LoadProfile.csv out of the simbench wheel in ``wheels`` (``pip download`` if absent)."""
    from benchmarks.run import pypi_wheel

    path = pypi_wheel("simbench", wheels)
    with zipfile.ZipFile(path) as wheel:
        return wheel.read(SIMBENCH_CSV), f"{path.name}: {SIMBENCH_CSV}"


def read_simbench_profiles(data: bytes, profiles: Sequence[str]) -> pd.DataFrame:
    """Normalised active power of ``profiles``, indexed by the UTC start of each interval.

    The naive local times are placed in Europe/Berlin by their order: in the repeated autumn
    hour the first pass is summer time. Raises ValueError unless the result is one unbroken
    15-minute grid (a skipped, repeated or misplaced row would break it).
    """
    columns = [f"{p}_pload" for p in profiles]
    frame = pd.read_csv(io.BytesIO(data), sep=";", usecols=["time", *columns])
    naive = pd.DatetimeIndex(pd.to_datetime(frame["time"], format="%d.%m.%Y %H:%M"))
    utc = naive.tz_localize(SIMBENCH_TIMEZONE, ambiguous="infer").tz_convert("UTC")
    steps = np.unique(np.diff(utc.as_unit("ns").asi8))
    if len(steps) != 1 or steps[0] != SIMBENCH_INTERVAL_MINUTES * 60 * 10**9:
        raise ValueError("SimBench times do not form one 15-minute grid once placed in UTC")
    out = frame[columns].set_axis(profiles, axis=1).set_axis(utc.as_unit("ns"))
    if (out < 0).any().any():
        negative = [p for p in profiles if (out[p] < 0).any()]
        raise ValueError(f"SimBench profile(s) {negative} have negative load (net of generation)")
    return out


def scaled_energy(power: pd.Series, annual_kwh: float, interval_minutes: int) -> pd.Series:
    """Energy per interval (kWh) of a normalised power series whose whole span sums to
    ``annual_kwh``."""
    energy = power.astype("float64") * interval_minutes / 60.0
    return energy * (annual_kwh / float(energy.sum()))


def taylor_energy(values: Sequence[float]) -> pd.Series:
    """Taylor's half-hourly demand as kWh per half hour of a TAYLOR_MEAN_KW aggregate (UTC)."""
    from benchmarks.run import taylor_table

    table = taylor_table(values)
    power_kw = table["energy_kwh"] * (TAYLOR_MEAN_KW / float(table["energy_kwh"].mean()))
    energy = power_kw * TAYLOR_INTERVAL_MINUTES / 60.0
    return pd.Series(energy.to_numpy(), index=pd.DatetimeIndex(table["timestamp"]))


def load_series(customers: Sequence[RealCustomer], wheels: Path, work: Path) -> dict[str, Any]:
    """Energy per interval (kWh, UTC index) of every customer, and where the data came from."""
    out: dict[str, pd.Series] = {}
    sources: dict[str, Any] = {}
    simbench = [c for c in customers if c.source == "simbench"]
    if simbench:
        data, origin = simbench_csv(wheels)
        power = read_simbench_profiles(data, [c.profile for c in simbench])
        sources["simbench"] = origin
        for c in simbench:
            out[c.customer_id] = scaled_energy(
                power[c.profile], c.annual_kwh, SIMBENCH_INTERVAL_MINUTES
            )
    if any(c.source == "taylor" for c in customers):
        from benchmarks.run import taylor_values

        values, origin = taylor_values(work)
        sources["taylor"] = origin
        for c in customers:
            if c.source == "taylor":
                out[c.customer_id] = taylor_energy(values)
    return {"series": out, "sources": sources}


# Writing the vendor files -----------------------------------------------------------------------


def vendor_files(
    customer: RealCustomer, energy: pd.Series, interval_minutes: int
) -> dict[str, bytes]:
    """Monthly files (UTC months, "YYYY-MM.csv") of ``energy`` (kWh per interval, UTC index) in
    the customer's vendor format, written by the demo generator's own writers."""
    vendor = VENDORS_BY_NAME[customer.vendor]
    utc = pd.DatetimeIndex(energy.index)
    values = energy.to_numpy(dtype="float64")
    if vendor.unit == "W":
        values = values * 1000.0 * 60.0 / interval_minutes
    elif vendor.unit == "Wh":
        values = values * 1000.0
    newline = "\r\n" if customer.vendor == "enerlog" else "\n"
    sep = vendor.separator
    lines = concat_text(
        vendor_timestamps(utc, customer.vendor),
        sep,
        customer.device_id,
        sep,
        decimal_text(values, VENDOR_DECIMALS[vendor.unit], vendor.decimal),
        newline,
    )
    header = sep.join(vendor.columns) + newline
    names = monthly_file_names(utc)
    files: dict[str, bytes] = {}
    for name in pd.unique(names):
        files[str(name)] = (header + "".join(lines[names == name].tolist())).encode("utf-8")
    return files


def landed_files(
    customer: RealCustomer, energy: pd.Series, interval_minutes: int, origin: pd.Timestamp
) -> dict[str, bytes]:
    """What the customer has delivered by ``origin``: every reading that starts before it."""
    return vendor_files(customer, energy[energy.index < origin], interval_minutes)


def interval_minutes_of(customer: RealCustomer) -> int:
    return TAYLOR_INTERVAL_MINUTES if customer.source == "taylor" else SIMBENCH_INTERVAL_MINUTES


def _spread(days: Sequence[str], count: int) -> list[str]:
    """``count`` of ``days``, evenly spread (first and last kept); all of them past their number."""
    if count <= 0:
        return []
    if count >= len(days):
        return list(days)
    if count == 1:
        return [days[len(days) // 2]]
    return [days[round(i * (len(days) - 1) / (count - 1))] for i in range(count)]


def origins_for(customer: RealCustomer, count: int) -> list[pd.Timestamp]:
    """``count`` of the customer's origins in time order: spread evenly over its list, and past
    the list's length (SimBench) as many of ``SIMBENCH_MORE_ORIGINS``, spread the same way."""
    if customer.source == "taylor":
        days, more = TAYLOR_ORIGINS, ()
    else:
        days, more = SIMBENCH_ORIGINS, SIMBENCH_MORE_ORIGINS
    picked = sorted(_spread(days, count) + _spread(more, count - len(days)))
    return [pd.Timestamp(d, tz="UTC") + pd.Timedelta(hours=ISSUE_HOUR_UTC) for d in picked]


# Scoring ------------------------------------------------------------------------------------------


def hourly(energy: pd.Series) -> pd.Series:
    """kWh per UTC hour; an hour counts only with all of its readings."""
    counts = energy.resample("1h").count()
    sums = energy.resample("1h").sum()
    return sums[counts == counts.max()]


def error_figures(forecast: pd.Series, actual: pd.Series) -> dict[str, float]:
    """WAPE (%), MAE (kWh per hour) and bias (% of actual energy; positive = too high)."""
    error = forecast - actual
    total = float(actual.abs().sum())
    return {
        "wape_pct": float(error.abs().sum()) / total * 100.0 if total else float("nan"),
        "mae_kwh": float(error.abs().mean()),
        "bias_pct": float(error.sum()) / total * 100.0 if total else float("nan"),
    }


def score_forecast(
    forecast: pd.DataFrame, actual_hourly: pd.Series, origin: pd.Timestamp
) -> dict[str, Any]:
    """The published forecast's customer total against the actual load and seasonal naive
    (same hour one week before) on exactly the same hours: those of the forecast's first
    HORIZON_HOURS from ``origin`` that have both an actual and a naive value."""
    columns = [c for c in ("energy_kwh", "p10_kwh", "p90_kwh") if c in forecast.columns]
    # Summing the devices' P10 (P90) is exact for one device (every customer here has one);
    # for several it would be a wider interval than the total's own.
    totals = forecast.groupby("timestamp")[columns].sum(min_count=1)
    totals.index = pd.DatetimeIndex(totals.index).tz_convert("UTC")
    total = totals["energy_kwh"]
    hours = pd.date_range(origin, periods=HORIZON_HOURS, freq="1h")
    naive = actual_hourly.shift(freq=pd.Timedelta(hours=WEEK_HOURS))
    frame = pd.DataFrame(
        {
            "forecast": total.reindex(hours),
            "actual": actual_hourly.reindex(hours),
            "naive": naive.reindex(hours),
        }
    )
    missing_forecast = int(frame["forecast"].isna().sum())
    frame = frame.dropna()
    for bound in ("p10", "p90"):
        column = f"{bound}_kwh"
        frame[bound] = totals[column].reindex(frame.index) if column in totals else np.nan
    return {
        "hours_scored": len(frame),
        "hours_without_forecast": missing_forecast,
        "forecast_start": total.index.min().isoformat() if len(total) else None,
        "forecast_end": total.index.max().isoformat() if len(total) else None,
        "actual_kwh": float(frame["actual"].sum()),
        "model": error_figures(frame["forecast"], frame["actual"]),
        "naive": error_figures(frame["naive"], frame["actual"]),
        "coverage_p10_p90": interval_coverage(frame),
        "_frame": frame,
    }


def interval_coverage(frame: pd.DataFrame) -> float | None:
    """Share of the scored hours whose actual load lay within the published P10-P90 interval;
    None when the forecast had no interval."""
    if frame.empty or frame["p10"].isna().all():
        return None
    inside = (frame["actual"] >= frame["p10"]) & (frame["actual"] <= frame["p90"])
    return float(inside[frame["p10"].notna()].mean())


def pooled_figures(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-customer WAPE over all its scored hours, ratios, and the pooled figures."""
    per_customer: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("error") or row.get("frame") is None:
            continue
        entry = per_customer.setdefault(
            row["customer_id"],
            {"kind": row["kind"], "frames": [], "model_kinds": {}, "training_seconds": []},
        )
        entry["frames"].append(row["frame"])
        made_by = row.get("model_kind") or "unknown"
        entry["model_kinds"][made_by] = entry["model_kinds"].get(made_by, 0) + 1
        if row.get("training_seconds") is not None:
            entry["training_seconds"].append(row["training_seconds"])
    customers = {}
    for customer, entry in per_customer.items():
        frame = pd.concat(entry["frames"])
        model = error_figures(frame["forecast"], frame["actual"])
        naive = error_figures(frame["naive"], frame["actual"])
        customers[customer] = {
            "kind": entry["kind"],
            "origins_scored": len(entry["frames"]),
            "hours": len(frame),
            "model": model,
            "naive": naive,
            "wape_ratio": model["wape_pct"] / naive["wape_pct"],
            "coverage_p10_p90": interval_coverage(frame),
            "model_kinds": entry["model_kinds"],
            "mean_training_seconds": statistics.mean(entry["training_seconds"])
            if entry["training_seconds"]
            else None,
        }
    ratios = [c["wape_ratio"] for c in customers.values()]
    frames = [f for e in per_customer.values() for f in e["frames"]]
    kinds_chosen: dict[str, int] = {}
    for c in customers.values():
        for made_by, count in c["model_kinds"].items():
            kinds_chosen[made_by] = kinds_chosen.get(made_by, 0) + count
    coverages = [c["coverage_p10_p90"] for c in customers.values() if c["coverage_p10_p90"]]
    kinds: dict[str, list[float]] = {}
    for c in customers.values():
        kinds.setdefault(c["kind"], []).append(c["wape_ratio"])
    pooled = statistics.mean(ratios) if ratios else None
    households = kinds.get("household")
    return {
        "customers": customers,
        "pooled_wape_ratio": pooled,
        "median_wape_ratio": statistics.median(ratios) if ratios else None,
        # Over every scored hour of every customer, and the mean of the customers' coverages.
        "coverage_p10_p90_hours": interval_coverage(pd.concat(frames)) if frames else None,
        "coverage_p10_p90_mean_of_customers": statistics.mean(coverages) if coverages else None,
        "forecasts_by_model_kind": dict(sorted(kinds_chosen.items())),
        "per_kind": {
            k: {"customers": len(v), "mean_wape_ratio": statistics.mean(v), "max": max(v)}
            for k, v in sorted(kinds.items())
        },
        "customers_worse_than_naive": sorted(
            c for c, v in customers.items() if v["wape_ratio"] > 1 + RATIO_TOLERANCE
        ),
        "goals": {
            "pooled_at_most": GOAL_POOLED,
            "pooled_ambition": AMBITION_POOLED,
            "households_at_most": GOAL_HOUSEHOLDS,
            "no_customer_above": GOAL_MAX_CUSTOMER,
            "coverage_within": GOAL_COVERAGE,
            "coverage_met": bool(frames)
            and (cov := interval_coverage(pd.concat(frames))) is not None
            and GOAL_COVERAGE[0] <= cov <= GOAL_COVERAGE[1],
            "pooled_met": pooled is not None and pooled <= GOAL_POOLED,
            "households_met": bool(households) and statistics.mean(households) <= GOAL_HOUSEHOLDS,
            "no_customer_worse_met": bool(ratios)
            and max(ratios) <= GOAL_MAX_CUSTOMER + RATIO_TOLERANCE,
        },
    }


# Running the graph ------------------------------------------------------------------------------


def _run_config(customer: RealCustomer) -> dict[str, Any]:
    """The graph's defaults, except what a customer outside Germany must set: its clock and
    its public holidays (calendar features)."""
    config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    if customer.source == "taylor":
        config["ops"] = {
            "models__load_forecast_model": {
                "config": {"timezone": "Europe/London", "holiday_country": "GB"}
            }
        }
    return config


def _metadata(result: Any, key: str) -> dict[str, Any]:
    for event in result.get_asset_materialization_events():
        mat = event.step_materialization_data.materialization
        if mat.asset_key.to_user_string() == key:
            return {k: v.value for k, v in mat.metadata.items()}
    return {}


def run_customer(
    base: Path, customer: RealCustomer, energy: pd.Series, origins: Sequence[pd.Timestamp]
) -> list[dict[str, Any]]:
    """forecast_job for one customer at each origin, in time order, on one data home and one
    instance; each row is one origin's published forecast scored (or the run's error)."""
    import dagster as dg

    from benchmarks.run import _set_env, _step_seconds, fresh_dir, log
    from forecast_assets import paths, publication
    from forecast_assets.definitions import build_definitions
    from resources.storage import join_uri

    data_home = base / "data"
    dagster_home = fresh_dir(base / "dagster_home")
    interval = interval_minutes_of(customer)
    actual = hourly(energy)
    rows: list[dict[str, Any]] = []
    previous = _set_env(
        {"FORECAST_DATA_HOME": str(data_home), "FORECAST_DATABASE_URL": None, "FORECAST_ENV": None}
    )
    try:
        defs = build_definitions("local")
        store = (defs.resources or {})["store"]
        prefix = paths.landing_prefix(store, customer.customer_id)
        job = defs.resolve_job_def("forecast_job")
        with dg.instance_for_test(temp_dir=str(dagster_home)) as instance:
            instance.add_dynamic_partitions("customers", [customer.customer_id])
            for origin in sorted(origins):
                row: dict[str, Any] = {
                    "customer_id": customer.customer_id,
                    "kind": customer.kind,
                    "origin": origin.isoformat(),
                    "weekday": origin.day_name(),
                }
                files = landed_files(customer, energy, interval, origin)
                for name, data in sorted(files.items()):
                    store.write_bytes(join_uri(prefix, name), data)
                start = time.perf_counter()
                result = job.execute_in_process(
                    instance=instance,
                    partition_key=customer.customer_id,
                    raise_on_error=False,
                    run_config=_run_config(customer),
                )
                row["run_seconds"] = time.perf_counter() - start
                steps = _step_seconds(instance, result.run_id)
                row["training_seconds"] = steps.get("models__load_forecast_model")
                row["step_seconds"] = steps
                model = _metadata(result, "models/load_forecast_model")
                row["holdout_wape_ratio"] = model.get("wape_ratio_model_to_baseline")
                row["holdout_model_wape_pct"] = model.get("model_wape")
                row["trained_model_kind"] = model.get("model_kind")
                row["backtest_coverage_p10_p90"] = model.get("coverage_p10_p90")
                row["candidate_wapes"] = {
                    k.removesuffix("_wape"): v
                    for k, v in model.items()
                    if k.endswith("_wape")
                    and not k.startswith("candidate_")
                    and k not in ("model_wape", "baseline_wape")
                }
                # The training script's own timings (the step's also include the job around it).
                row["training_script_seconds"] = model.get("training_seconds")
                row["fit_seconds"] = {
                    k.removesuffix("_fit_seconds"): v
                    for k, v in model.items()
                    if k.endswith("_fit_seconds")
                }
                row["holdout_naive_wape_pct"] = model.get("baseline_wape")
                row["model_version"] = model.get("model_version")
                row["approval_status"] = model.get("approval_status")
                row["gate"] = model.get("gate")
                if not result.success:
                    from forecast_assets.demo import summary_line

                    row["error"] = summary_line(customer.customer_id, result)
                    log(f"  {customer.customer_id} {origin:%Y-%m-%d}: {row['error']}")
                    rows.append(row)
                    continue
                published = publication.current(store, publication.FORECASTS, customer.customer_id)
                assert published is not None
                forecast = pd.read_parquet(
                    io.BytesIO(store.read_bytes(published.uri(paths.FORECAST_FILE)))
                )
                scored = score_forecast(forecast, actual, origin)
                row["frame"] = scored.pop("_frame")
                row.update(scored)
                row["source"] = published.info.get("source")
                row["model_kind"] = published.info.get("model_kind")
                row["forecast_model_version"] = published.info.get("model_version")
                row["wape_ratio"] = (
                    row["model"]["wape_pct"] / row["naive"]["wape_pct"]
                    if row["naive"]["wape_pct"]
                    else None
                )
                log(
                    f"  {customer.customer_id} {origin:%Y-%m-%d %a}: published ({row['source']}) "
                    f"WAPE {row['model']['wape_pct']:.2f}% vs naive "
                    f"{row['naive']['wape_pct']:.2f}% -> {row['wape_ratio']:.3f}; "
                    f"{row['model_kind']}, P10-P90 coverage {row['coverage_p10_p90']}; backtest "
                    f"{row['holdout_wape_ratio']}, {row['approval_status']}, "
                    f"{row['run_seconds']:.0f} s"
                )
                rows.append(row)
    finally:
        _set_env(previous)
    return rows


def bench_real_load(work: Path, args: argparse.Namespace, cache: dict) -> dict[str, Any]:
    """The runner ``benchmarks.run`` calls for ``--only real_load``."""
    import dagster as dg

    from benchmarks.run import fresh_dir, log

    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    customers = pick_customers(args.real_customers)
    loaded = load_series(customers, work.parent / "wheels", work)
    rows: list[dict[str, Any]] = []
    wall: dict[str, float] = {}
    for customer in customers:
        origins = origins_for(customer, args.real_origins)
        log(f"real_load: {customer.customer_id} ({customer.kind}), {len(origins)} origin(s)")
        start = time.perf_counter()
        rows += run_customer(
            fresh_dir(work / customer.customer_id),
            customer,
            loaded["series"][customer.customer_id],
            origins,
        )
        wall[customer.customer_id] = time.perf_counter() - start
    figures = pooled_figures(rows)
    sources: dict[str, int] = {}
    for r in rows:
        key = r.get("source") or "no forecast (run failed)"
        sources[key] = sources.get(key, 0) + 1
    return {
        "data_sources": loaded["sources"],
        "customers_spec": [
            {**asdict(c), "device_id": c.device_id, "timezone": c.timezone} for c in customers
        ],
        "taylor_mean_kw": TAYLOR_MEAN_KW,
        "origins_per_customer": args.real_origins,
        "issue_hour_utc": ISSUE_HOUR_UTC,
        "horizon_hours": HORIZON_HOURS,
        "forecast_sources": sources,
        "runs_failed": sum(1 for r in rows if r.get("error")),
        "per_origin": [{k: v for k, v in r.items() if k != "frame"} for r in rows],
        "customer_wall_seconds": wall,
        **figures,
    }


def pick_customers(count: int | None) -> list[RealCustomer]:
    """The first ``count`` of an order that covers every kind early (all for None)."""
    order = sorted(
        CUSTOMERS,
        key=lambda c: (
            [x.customer_id for x in CUSTOMERS if x.kind == c.kind].index(c.customer_id),
            [
                "household",
                "commercial",
                "grid-aggregate",
                "agricultural",
                "national-demand",
            ].index(c.kind),
        ),
    )
    return order if count is None else order[:count]


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """The benchmark's lines in ``benchmarks.run``'s printed summary."""
    out = []
    for customer, c in result["customers"].items():
        out.append(
            f"real_load {customer:<14} {c['kind']:<16} WAPE {c['model']['wape_pct']:6.2f}% vs "
            f"naive {c['naive']['wape_pct']:6.2f}% ratio {c['wape_ratio']:.3f} "
            f"bias {c['model']['bias_pct']:+.1f}% ({c['origins_scored']} origins) coverage "
            f"{c['coverage_p10_p90'] if c['coverage_p10_p90'] is None else round(c['coverage_p10_p90'], 3)} "
            f"{json.dumps(c['model_kinds'])} training {c['mean_training_seconds'] or 0:.1f} s"
        )
    for kind, k in result["per_kind"].items():
        out.append(
            f"real_load kind {kind:<16} mean ratio {k['mean_wape_ratio']:.3f} (n={k['customers']})"
        )
    pooled = result["pooled_wape_ratio"]
    out.append(
        f"real_load pooled ratio {pooled:.3f} (goal <= {GOAL_POOLED}); worse than naive: "
        f"{len(result['customers_worse_than_naive'])} {result['customers_worse_than_naive']}; "
        f"sources {json.dumps(result['forecast_sources'])}; failed runs {result['runs_failed']}; "
        f"P10-P90 coverage {result['coverage_p10_p90_hours']} (goal {GOAL_COVERAGE}); "
        f"forecasts by kind {json.dumps(result['forecasts_by_model_kind'])}"
        if pooled is not None
        else f"real_load: nothing scored; failed runs {result['runs_failed']}"
    )
    return out

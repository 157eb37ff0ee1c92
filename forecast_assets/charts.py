"""Pictures for the Dagster UI: small PNG charts inside markdown metadata, one customer each.

Dagster has no image metadata type, but its markdown renderer shows ``data:`` images, so a chart
is a PNG (matplotlib, Agg backend: no display needed) base64-embedded in ``MetadataValue.md``.
Every chart is of one customer's total load only; nothing here mixes customers. Each PNG is kept
under :data:`MAX_PNG_BYTES`: the metadata is stored in the event log with every materialization.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

import dagster as dg
import pandas as pd
from PIL import Image

from forecast_core.backtest import total_load

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_PNG_BYTES = 60_000
# Days of actual load drawn before a forecast, and hours listed in its table.
HISTORY_DAYS = 7
NEXT_HOURS = 12

ACTUAL, FORECAST, BASELINE, BAND = "#222222", "#1f77b4", "#ff7f0e", "#1f77b4"


def _pyplot() -> Any:
    """pyplot, imported when a chart is first drawn: the daemon, code servers and webserver
    load the code location but never draw, and pyplot is about a sixth of the CPU of loading
    it (benchmarks/README.md, backfill, "After")."""
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: no display in a run worker or CI
    import matplotlib.pyplot as plt

    return plt


def png_markdown(fig: Figure, alt: str) -> str:
    """The figure as a markdown image with an embedded PNG, at most MAX_PNG_BYTES."""
    try:
        for dpi in (100, 80, 64, 50):
            png = _palette_png(fig, dpi)
            if len(png) <= MAX_PNG_BYTES:
                break
        else:
            raise ValueError(f"chart '{alt}' is {len(png)} bytes even at {dpi} dpi")
    finally:
        _pyplot().close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def _palette_png(fig: Figure, dpi: int) -> bytes:
    """A PNG of 64 colours: a few lines on white need no more, and it is about a third of the
    size of matplotlib's full-colour PNG, so the chart can stay sharp under the limit."""
    raw = io.BytesIO()
    fig.savefig(raw, format="png", dpi=dpi, bbox_inches="tight")
    image = Image.open(raw).convert("RGB").quantize(colors=64)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _figure() -> tuple[Figure, Any]:
    fig, ax = _pyplot().subplots(figsize=(9, 3.2))
    ax.grid(True, alpha=0.3)
    ax.set_ylabel("kWh per interval")
    return fig, ax


def _time_axis(ax: Any, timezone: str) -> None:
    import matplotlib.dates as mdates  # with pyplot, already imported by _figure

    locator = mdates.AutoDateLocator(tz=timezone, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=timezone))
    ax.set_xlabel(f"time ({timezone})")


def _legend_below(ax: Any) -> None:
    # Below the time axis: inside the plot it would hide the peaks.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.24), ncol=3, fontsize=8, frameon=False)


def day_ahead(backtest: pd.DataFrame) -> pd.DataFrame:
    """The backtest as one series per column: for each hour, the forecast from the latest
    origin before it (the day-ahead view), since daily origins' horizons overlap."""
    frame = backtest.sort_values(["timestamp", "origin"])
    return frame.groupby("timestamp")[["actual", "forecast", "baseline"]].last()


def backtest_chart(backtest: pd.DataFrame, customer: str, timezone: str = "UTC") -> str:
    """Markdown: the model's backtest forecast against actual load (and seasonal naive), over
    every hour the backtest scored, for one customer."""
    if backtest.empty:
        return f"No backtest hours for customer '{customer}'."
    series = day_ahead(backtest)
    fig, ax = _figure()
    ax.plot(series.index, series["actual"], color=ACTUAL, lw=1.0, label="actual")
    ax.plot(series.index, series["forecast"], color=FORECAST, lw=1.0, label="model forecast")
    ax.plot(
        series.index,
        series["baseline"],
        color=BASELINE,
        lw=0.8,
        ls="--",
        alpha=0.8,
        label="seasonal naive (same time last week)",
    )
    origins = backtest["origin"].nunique()
    ax.set_title(f"{customer}: backtest, {origins} daily origins, total load", fontsize=10)
    _time_axis(ax, timezone)
    _legend_below(ax)
    return (
        png_markdown(fig, f"{customer} backtest: forecast against actual")
        + "\n\nEach hour's forecast is from the latest daily origin before it; the figures that "
        "gate the model are over every origin's whole horizon."
    )


def history_total(history: pd.DataFrame) -> pd.Series:
    """The customer's actual total load per interval; NaN where any meter has a gap."""
    usable = history.assign(energy_kwh=history["energy_kwh"].where(~history["is_gap"]))
    return total_load(usable)


def forecast_totals(forecast: pd.DataFrame) -> pd.DataFrame:
    """The forecast's total per interval, with the P10-P90 band where the forecast has one.

    The band is the sum of the meters' P10 and P90: exact for one meter, wider than the total's
    own interval for several (their errors are not perfectly correlated).
    """
    columns = ["energy_kwh"] + [
        c for c in ("p10_kwh", "p90_kwh") if c in forecast and forecast[c].notna().all()
    ]
    totals = forecast.groupby("timestamp")[columns].sum().sort_index()
    if len(columns) < 3:
        totals = totals[["energy_kwh"]]
    return totals


def forecast_chart(
    forecast: pd.DataFrame, history: pd.DataFrame, customer: str, source: str = ""
) -> str:
    """Markdown: the last HISTORY_DAYS days of actual load and the coming horizon, with the
    P10-P90 band when the forecast has one, for one customer."""
    totals = forecast_totals(forecast)
    actual = history_total(history)
    if not actual.empty:
        actual = actual[actual.index > actual.index.max() - pd.Timedelta(days=HISTORY_DAYS)]
    fig, ax = _figure()
    ax.plot(actual.index, actual.to_numpy(), color=ACTUAL, lw=1.0, label="actual")
    ax.plot(totals.index, totals["energy_kwh"], color=FORECAST, lw=1.4, label="forecast (P50)")
    if "p10_kwh" in totals:
        ax.fill_between(
            totals.index,
            totals["p10_kwh"],
            totals["p90_kwh"],
            color=BAND,
            alpha=0.2,
            lw=0,
            label="P10-P90",
        )
    if len(totals):
        ax.axvline(totals.index.min(), color="#888888", lw=0.8, ls=":")
    made_by = f" ({source})" if source else ""
    ax.set_title(f"{customer}: forecast{made_by} after the last {HISTORY_DAYS} days", fontsize=10)
    _time_axis(ax, "UTC")
    _legend_below(ax)
    return png_markdown(fig, f"{customer} forecast")


def next_hours_markdown(forecast: pd.DataFrame, hours: int = NEXT_HOURS) -> str:
    """Markdown table: the forecast's first ``hours`` hours, total over the customer's meters."""
    totals = forecast_totals(forecast)
    if totals.empty:
        return "No forecast rows."
    start = totals.index.min()
    totals = totals[totals.index < start + pd.Timedelta(hours=hours)]
    band = "p10_kwh" in totals
    head = "| time (UTC) | forecast kWh |" + (" P10 kWh | P90 kWh |" if band else "")
    rule = "| --- | ---: |" + (" ---: | ---: |" if band else "")
    rows = [
        f"| {ts:%Y-%m-%d %H:%M} | {row.energy_kwh:.2f} |"
        + (f" {row.p10_kwh:.2f} | {row.p90_kwh:.2f} |" if band else "")
        for ts, row in totals.iterrows()
    ]
    return "\n".join([head, rule, *rows])


def forecast_metadata(
    forecast: pd.DataFrame, history: pd.DataFrame, customer: str, source: str = ""
) -> dict[str, dg.MetadataValue]:
    """The forecast's picture and its next hours, for the forecast's materialization."""
    return {
        "forecast_chart": dg.MetadataValue.md(forecast_chart(forecast, history, customer, source)),
        "next_hours": dg.MetadataValue.md(next_hours_markdown(forecast)),
    }

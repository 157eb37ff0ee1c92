"""The pictures in the UI's metadata: real PNGs, small, of one customer, with the P10-P90 band
only when the forecast has one."""

import base64
import io
import re

import numpy as np
import pandas as pd
from PIL import Image

from forecast_assets import charts

PNG = re.compile(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")
START = pd.Timestamp("2025-10-01", tz="UTC")


def embedded_png(markdown: str) -> tuple[str, bytes]:
    match = PNG.search(markdown)
    assert match, markdown[:200]
    return match.group(1), base64.b64decode(match.group(2))


def backtest(origins: int = 28, horizon: int = 48) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    parts = []
    for day in range(origins):
        origin = START + pd.Timedelta(days=day)
        times = pd.date_range(origin, periods=horizon, freq="1h")
        actual = 10 + 5 * np.sin(np.arange(horizon) / 24 * 2 * np.pi)
        parts.append(
            pd.DataFrame(
                {
                    "origin": origin,
                    "timestamp": times,
                    "actual": actual,
                    "forecast": actual + rng.normal(0, 0.5, horizon) + day,  # tells origins apart
                    "baseline": actual + 1,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def history(devices: int = 2, days: int = 30) -> pd.DataFrame:
    times = pd.date_range(START, periods=days * 24, freq="1h")
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "timestamp": times,
                    "device_id": f"m{d}",
                    "energy_kwh": 5.0 + d,
                    "is_filled": False,
                    "is_gap": False,
                }
            )
            for d in range(devices)
        ],
        ignore_index=True,
    )


def forecast(devices: int = 2, hours: int = 48, band: bool = True) -> pd.DataFrame:
    times = pd.date_range(START + pd.Timedelta(days=30), periods=hours, freq="1h")
    frame = pd.concat(
        [
            pd.DataFrame({"timestamp": times, "device_id": f"m{d}", "energy_kwh": 5.0 + d})
            for d in range(devices)
        ],
        ignore_index=True,
    )
    if band:
        frame["p10_kwh"] = frame["energy_kwh"] - 1
        frame["p90_kwh"] = frame["energy_kwh"] + 2
    return frame


def test_backtest_chart_is_a_small_png_of_forecast_against_actual():
    markdown = charts.backtest_chart(backtest(), "hansa-offices", "Europe/Berlin")
    alt, png = embedded_png(markdown)
    assert alt == "hansa-offices backtest: forecast against actual"
    assert png.startswith(b"\x89PNG") and len(png) <= charts.MAX_PNG_BYTES
    width, height = Image.open(io.BytesIO(png)).size
    assert 400 <= width <= 1000 and 150 <= height <= 400


def test_backtest_chart_shows_each_hour_from_the_latest_origin_before_it():
    frame = backtest(origins=3)
    series = charts.day_ahead(frame)
    assert series.index.is_unique and len(series) == 4 * 24  # 3 origins, 48 h each, daily
    second_day = START + pd.Timedelta(days=1, hours=5)
    from_latest = frame[
        (frame.timestamp == second_day) & (frame.origin == START + pd.Timedelta(1, "D"))
    ]
    assert series.loc[second_day, "forecast"] == from_latest["forecast"].item()


def test_forecast_chart_band_only_when_the_forecast_has_one():
    with_band = charts.forecast_totals(forecast(band=True))
    assert list(with_band.columns) == ["energy_kwh", "p10_kwh", "p90_kwh"]
    assert with_band["energy_kwh"].iloc[0] == 11.0  # 5 + 6: both meters, one customer
    assert with_band["p10_kwh"].iloc[0] == 9.0 and with_band["p90_kwh"].iloc[0] == 15.0
    without = forecast(band=False)
    assert list(charts.forecast_totals(without).columns) == ["energy_kwh"]
    unknown = forecast(band=True).assign(p10_kwh=np.nan, p90_kwh=np.nan)
    assert list(charts.forecast_totals(unknown).columns) == ["energy_kwh"]

    for frame in (forecast(band=True), without):
        alt, png = embedded_png(charts.forecast_chart(frame, history(), "lindenschule", "newest"))
        assert alt == "lindenschule forecast"
        assert png.startswith(b"\x89PNG") and len(png) <= charts.MAX_PNG_BYTES


def test_forecast_chart_draws_the_band_in_the_picture():
    # The band's colour fills pixels between P10 and P90 only when there is a band.
    def band_pixels(frame: pd.DataFrame) -> int:
        _, png = embedded_png(charts.forecast_chart(frame, history(), "lindenschule"))
        image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        # 20 % of the forecast blue over white: about (210, 228, 243)
        light_blue = (abs(image - np.array([210, 228, 243])).sum(axis=2) < 25).sum()
        return int(light_blue)

    assert band_pixels(forecast(band=True)) > 500
    assert band_pixels(forecast(band=False)) < 50


def test_next_hours_table_lists_the_first_hours_of_the_customers_total():
    table = charts.next_hours_markdown(forecast(band=True), hours=6)
    lines = table.splitlines()
    assert lines[0] == "| time (UTC) | forecast kWh | P10 kWh | P90 kWh |"
    assert len(lines) == 2 + 6
    assert lines[2] == "| 2025-10-31 00:00 | 11.00 | 9.00 | 15.00 |"
    plain = charts.next_hours_markdown(forecast(band=False), hours=3).splitlines()
    assert plain[0] == "| time (UTC) | forecast kWh |" and len(plain) == 5


def test_history_total_leaves_gaps_as_gaps():
    frame = history(devices=2, days=2)
    frame.loc[(frame.device_id == "m1") & (frame.timestamp == START), "is_gap"] = True
    total = charts.history_total(frame)
    assert np.isnan(total.loc[START])
    assert total.loc[START + pd.Timedelta(hours=1)] == 11.0

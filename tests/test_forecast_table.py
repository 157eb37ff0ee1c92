"""The forecasts table's interval and model-kind columns, on SQLite and PostgreSQL, and their
addition to a database from an earlier release."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from resources.database import Database

T0 = datetime(2025, 11, 3, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, data_home) -> Iterator[Database]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    database = Database(url=url)
    yield database
    database.engine.dispose()


@pytest.fixture
def customer(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[-64:]


def forecast(**columns) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": [T0 + timedelta(hours=h) for h in range(3)],
            "device_id": "d1",
            "energy_kwh": [1.0, 2.0, 3.0],
            "model_version": "v1",
            "source": "newest",
            "issued_at": T0,
            **columns,
        }
    )


def test_the_interval_and_kind_are_stored_and_read_back(db: Database, customer: str):
    stored = forecast(p10_kwh=[0.5, 1.5, 2.0], p90_kwh=[1.5, 2.5, 4.5], model_kind="lightgbm")
    assert db.replace_forecast(customer, "run-1", stored) == 3
    latest = db.latest_forecast(customer)
    assert latest["p10_kwh"].tolist() == [0.5, 1.5, 2.0]
    assert latest["p90_kwh"].tolist() == [1.5, 2.5, 4.5]
    assert set(latest["model_kind"]) == {"lightgbm"}


def test_a_forecast_without_an_interval_stores_null_not_a_made_up_bound(
    db: Database, customer: str
):
    db.replace_forecast(customer, "run-1", forecast(p10_kwh=[0.5, float("nan"), 2.0]))
    latest = db.latest_forecast(customer)
    assert latest["p10_kwh"].iloc[0] == 0.5 and math.isnan(latest["p10_kwh"].iloc[1])
    assert latest["p90_kwh"].isna().all()  # no column at all
    assert set(latest["model_kind"]) == {""}


def test_an_earlier_release_database_gets_the_columns_with_null_intervals(data_home):
    url = f"sqlite:///{data_home / 'old.db'}"
    data_home.mkdir(parents=True, exist_ok=True)
    old = sa.create_engine(url)
    with old.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE forecasts (customer_id VARCHAR(64), dagster_run_id VARCHAR(64), "
                "device_id VARCHAR(128), timestamp DATETIME, energy_kwh FLOAT, "
                "model_version VARCHAR(128), issued_at DATETIME, "
                "source VARCHAR(32) NOT NULL DEFAULT 'newest', "
                "PRIMARY KEY (customer_id, dagster_run_id, device_id, timestamp))"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO forecasts VALUES ('acme', 'r0', 'd1', '2025-10-01 00:00:00.000000', "
                "1.5, 'v0', '2025-10-01 00:00:00.000000', 'newest')"
            )
        )
    old.dispose()
    db = Database(url=url)
    latest = db.latest_forecast("acme")
    assert latest["energy_kwh"].tolist() == [1.5]
    assert latest["p10_kwh"].isna().all() and latest["p90_kwh"].isna().all()
    assert latest["model_kind"].tolist() == [""]
    assert latest["weather_input"].tolist() == [""]  # stored before weather was recorded
    db.replace_forecast("acme", "r1", forecast(p10_kwh=0.1, p90_kwh=9.0, model_kind="forest"))
    assert db.latest_forecast("acme")["p90_kwh"].tolist() == [9.0, 9.0, 9.0]
    db.engine.dispose()


def test_what_weather_each_step_used_is_stored(db: Database, customer: str):
    steps = ["forecast", "forecast", "none_for_horizon"]
    db.replace_forecast(customer, "run-1", forecast(model_kind="forest", weather_input=steps))
    assert db.latest_forecast(customer)["weather_input"].tolist() == steps

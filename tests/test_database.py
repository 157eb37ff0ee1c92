"""Device registry, model registry and forecasts, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from resources.database import Database, DatabaseWriteError, forecasts_table


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, data_home) -> str:
    """'' means the default: a SQLite file in the test's own data home."""
    if request.param == "sqlite":
        return ""
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(url=db_url)
    yield database
    database.engine.dispose()


@pytest.fixture
def customer(request: pytest.FixtureRequest) -> str:
    """Unique per test and backend: the PostgreSQL server is shared by the whole session."""
    return re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[-64:]


def _ts(value) -> pd.Timestamp:
    """SQLite gives naive UTC datetimes back, PostgreSQL aware ones: compare in UTC."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


T0 = datetime(2025, 10, 1, tzinfo=UTC)


# Schema ----------------------------------------------------------------------------------------


def test_backend_is_the_one_asked_for(db: Database, db_url: str, data_home):
    if db_url:
        assert db.engine.dialect.name == "postgresql"
    else:
        assert db.engine.dialect.name == "sqlite"
        assert (data_home / "forecast.db").is_file()
    assert set(sa.inspect(db.engine).get_table_names()) >= {
        "devices",
        "model_versions",
        "forecasts",
    }


def test_schema_creation_is_idempotent(db_url: str, customer: str):
    first = Database(url=db_url)
    first.upsert_devices(customer, [_device("d1", T0, T0 + timedelta(days=1), 96)])
    second = Database(url=db_url)  # creates the schema again on the same database
    try:
        assert second.engine.url == first.engine.url
        assert list(second.devices(customer)["device_id"]) == ["d1"]
        assert second.upsert_devices(customer, [_device("d1", T0, T0, 1)]) == {
            "new": 0,
            "updated": 1,
        }
        assert "ix_forecasts_customer_issued" in {
            ix["name"] for ix in sa.inspect(second.engine).get_indexes("forecasts")
        }
    finally:
        first.engine.dispose()
        second.engine.dispose()


# Devices ---------------------------------------------------------------------------------------


def _device(device_id: str, first, last, readings: int, vendor: str = "acme-meters") -> dict:
    return {
        "device_id": device_id,
        "vendor": vendor,
        "first_reading": first,
        "last_reading": last,
        "readings": readings,
    }


def test_upsert_devices_counts_new_and_updated(db: Database, customer: str):
    assert db.upsert_devices(customer, []) == {"new": 0, "updated": 0}
    assert db.upsert_devices(
        customer,
        [_device("m-2", T0, T0 + timedelta(days=2), 192), _device("m-1", T0, T0, 1)],
    ) == {"new": 2, "updated": 0}
    assert db.upsert_devices(
        customer,
        [_device("m-1", T0, T0 + timedelta(days=1), 96), _device("m-3", T0, T0, 1)],
    ) == {"new": 1, "updated": 1}
    devices = db.devices(customer)
    assert list(devices["device_id"]) == ["m-1", "m-2", "m-3"]
    assert list(devices["readings"]) == [96, 192, 1]
    # Devices of another customer are neither counted nor listed.
    other = f"{customer}-other"[-64:]
    assert db.upsert_devices(other, [_device("m-1", T0, T0, 5)]) == {"new": 1, "updated": 0}
    assert list(db.devices(customer)["device_id"]) == ["m-1", "m-2", "m-3"]
    assert list(db.devices(other)["readings"]) == [5]


def test_upsert_devices_widens_and_never_narrows(db: Database, customer: str):
    start, end = T0, T0 + timedelta(days=10)
    db.upsert_devices(customer, [_device("m", start, end, 960, vendor="old-vendor")])
    registered = _ts(db.devices(customer).iloc[0]["registered_at"])

    # Narrower span: first/last keep the wider values; vendor and readings follow the new data.
    db.upsert_devices(
        customer, [_device("m", start + timedelta(days=3), end - timedelta(days=3), 10, "new")]
    )
    row = db.devices(customer).iloc[0]
    assert (_ts(row["first_reading"]), _ts(row["last_reading"])) == (_ts(start), _ts(end))
    assert (row["vendor"], row["readings"]) == ("new", 10)
    assert _ts(row["registered_at"]) == registered
    assert _ts(row["updated_at"]) >= registered

    # Wider on both sides: both move.
    db.upsert_devices(
        customer, [_device("m", start - timedelta(hours=1), end + timedelta(days=1), 1100, "new")]
    )
    row = db.devices(customer).iloc[0]
    assert (_ts(row["first_reading"]), _ts(row["last_reading"])) == (
        _ts(start - timedelta(hours=1)),
        _ts(end + timedelta(days=1)),
    )

    # Wider on one side only.
    db.upsert_devices(
        customer, [_device("m", start + timedelta(days=5), end + timedelta(days=2), 1, "new")]
    )
    row = db.devices(customer).iloc[0]
    assert (_ts(row["first_reading"]), _ts(row["last_reading"])) == (
        _ts(start - timedelta(hours=1)),
        _ts(end + timedelta(days=2)),
    )


def test_upsert_devices_normalises_times_to_utc(db: Database, customer: str):
    db.upsert_devices(
        customer,
        [
            _device(
                "m",
                pd.Timestamp("2025-10-01 02:00", tz="Europe/Berlin"),  # 00:00 UTC
                "2025-10-02 00:00",  # naive means UTC
                96,
            )
        ],
    )
    row = db.devices(customer).iloc[0]
    assert _ts(row["first_reading"]) == pd.Timestamp("2025-10-01 00:00", tz="UTC")
    assert _ts(row["last_reading"]) == pd.Timestamp("2025-10-02 00:00", tz="UTC")
    # A later reading in another zone that is earlier in UTC does not narrow the span.
    db.upsert_devices(
        customer,
        [_device("m", "2025-10-01 00:30", pd.Timestamp("2025-10-02 01:00", tz="Europe/Berlin"), 1)],
    )
    row = db.devices(customer).iloc[0]
    assert _ts(row["first_reading"]) == pd.Timestamp("2025-10-01 00:00", tz="UTC")
    assert _ts(row["last_reading"]) == pd.Timestamp("2025-10-02 00:00", tz="UTC")


# Model registry --------------------------------------------------------------------------------


def _register(db: Database, customer: str, version: str, passed: bool, auto: bool = True):
    return db.register_model(
        customer_id=customer,
        version=version,
        model_uri=f"s3://bkt/models/{customer}/{version}/model.tar.gz",
        metrics={"mape": 0.12, "rows": 960},
        gate_passed=passed,
        gate_reasons=[] if passed else ["mape 0.40 > 0.25"],
        run_id=f"run-{version}",
        auto_approve=auto,
    )


def _statuses(db: Database, customer: str) -> dict[str, str]:
    return {m.version: m.status for m in db.model_versions(customer)}


def test_register_sets_status_from_gate_and_auto_approve(db: Database, customer: str):
    passed = _register(db, customer, "v1", passed=True)
    assert passed.status == "Approved"
    assert (passed.customer_id, passed.version, passed.gate_passed) == (customer, "v1", True)
    assert passed.metrics == {"mape": 0.12, "rows": 960}
    assert _register(db, customer, "v2", passed=False).status == "Rejected"
    assert _register(db, customer, "v3", passed=True, auto=False).status == "PendingManualApproval"
    assert _register(db, customer, "v4", passed=False, auto=False).status == "Rejected"
    assert _statuses(db, customer) == {
        "v1": "Approved",
        "v2": "Rejected",
        "v3": "PendingManualApproval",
        "v4": "Rejected",
    }
    stored = {m.version: m for m in db.model_versions(customer)}
    assert stored["v2"].gate_reasons == ["mape 0.40 > 0.25"]
    assert stored["v2"].gate_passed is False
    assert stored["v1"].metrics == {"mape": 0.12, "rows": 960}
    assert stored["v1"].model_uri == f"s3://bkt/models/{customer}/v1/model.tar.gz"
    # Newest first.
    assert [m.version for m in db.model_versions(customer)] == ["v4", "v3", "v2", "v1"]


def test_latest_approved_model(db: Database, customer: str):
    assert db.latest_approved_model(customer) is None
    # Versions whose names sort against their age: "newest" must mean created last.
    _register(db, customer, "b-older", passed=True)
    _register(db, customer, "a-newer", passed=True)
    _register(db, customer, "z-newest-rejected", passed=False)
    _register(db, customer, "y-newest-pending", passed=True, auto=False)
    latest = db.latest_approved_model(customer)
    assert latest is not None
    assert latest.version == "a-newer"
    assert latest.status == "Approved"
    assert db.latest_approved_model(f"{customer}-none"[-64:]) is None


def test_newest_models_is_each_customers_first_version(db: Database, customer: str):
    """One query for every customer gives what model_versions gives first, per customer."""
    other = f"{customer}-b"[-64:]
    assert customer not in db.newest_models()  # the server may hold other tests' customers
    # Names that sort against their age, and a re-registered version: created last wins.
    _register(db, customer, "b-older", passed=True)
    _register(db, customer, "a-newer", passed=False)
    _register(db, other, "z-first", passed=True)
    _register(db, other, "y-second", passed=True, auto=False)
    _register(db, other, "z-first", passed=False)
    newest = db.newest_models()
    assert {customer, other} <= set(newest)
    for c in (customer, other):
        assert newest[c] == db.model_versions(c)[0]
    assert (newest[customer].version, newest[customer].status) == ("a-newer", "Rejected")
    assert (newest[other].version, newest[other].status) == ("z-first", "Rejected")


def test_set_model_status_approves_a_pending_version(db: Database, customer: str):
    _register(db, customer, "v1", passed=True)
    _register(db, customer, "v2", passed=True, auto=False)
    assert db.latest_approved_model(customer).version == "v1"  # type: ignore[union-attr]
    db.set_model_status(customer, "v2", "Approved")
    assert _statuses(db, customer) == {"v1": "Approved", "v2": "Approved"}
    assert db.latest_approved_model(customer).version == "v2"  # type: ignore[union-attr]
    db.set_model_status(customer, "v2", "Rejected")
    assert _statuses(db, customer) == {"v1": "Approved", "v2": "Rejected"}
    assert db.latest_approved_model(customer).version == "v1"  # type: ignore[union-attr]


def test_a_gate_failed_version_cannot_be_approved(db: Database, customer: str):
    _register(db, customer, "bad", passed=False)
    with pytest.raises(ValueError, match=r"model 'bad' failed its quality gate"):
        db.set_model_status(customer, "bad", "Approved")
    assert _statuses(db, customer) == {"bad": "Rejected"}
    assert db.latest_approved_model(customer) is None
    db.set_model_status(customer, "bad", "PendingManualApproval")  # anything but Approved is fine
    assert _statuses(db, customer) == {"bad": "PendingManualApproval"}


def test_set_model_status_of_an_unknown_version(db: Database, customer: str):
    _register(db, customer, "v1", passed=True)
    with pytest.raises(KeyError, match=r"has no model version 'v9'"):
        db.set_model_status(customer, "v9", "Approved")
    with pytest.raises(KeyError):
        db.set_model_status(f"{customer}-x"[-64:], "v1", "Rejected")
    assert _statuses(db, customer) == {"v1": "Approved"}


def test_registering_a_version_again_replaces_it(db: Database, customer: str):
    _register(db, customer, "v1", passed=True)
    _register(db, customer, "v1", passed=False)
    (model,) = db.model_versions(customer)
    assert (model.status, model.gate_passed) == ("Rejected", False)


# Forecasts -------------------------------------------------------------------------------------


def _forecast(issued: datetime, value: float, devices=("d1", "d2"), steps: int = 3) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "device_id": device,
                "timestamp": issued + timedelta(minutes=15 * (i + 1)),
                "energy_kwh": value + i,
                "model_version": "v1",
                "issued_at": issued,
            }
            for device in devices
            for i in range(steps)
        ]
    )


def _all_forecasts(db: Database, customer: str) -> pd.DataFrame:
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(forecasts_table)
            .where(forecasts_table.c.customer_id == customer)
            .order_by(
                forecasts_table.c.dagster_run_id,
                forecasts_table.c.device_id,
                forecasts_table.c.timestamp,
            )
        ).mappings()
        return pd.DataFrame(rows.all())


def test_replace_forecast_replaces_the_same_run_and_keeps_others(db: Database, customer: str):
    day1, day2 = T0, T0 + timedelta(days=1)
    assert db.replace_forecast(customer, "run-1", _forecast(day1, 1.0)) == 6
    assert db.replace_forecast(customer, "run-2", _forecast(day2, 2.0)) == 6
    # A retry of run-1 with other rows (one device fewer) replaces run-1's rows entirely.
    assert db.replace_forecast(customer, "run-1", _forecast(day1, 10.0, devices=("d1",))) == 3
    rows = _all_forecasts(db, customer)
    assert list(rows.groupby("dagster_run_id").size().items()) == [("run-1", 3), ("run-2", 6)]
    run1 = rows[rows["dagster_run_id"] == "run-1"]
    assert list(run1["energy_kwh"]) == [10.0, 11.0, 12.0]
    run2 = rows[rows["dagster_run_id"] == "run-2"]
    assert list(run2["energy_kwh"]) == [2.0, 3.0, 4.0, 2.0, 3.0, 4.0]
    # An empty retry clears its run only.
    assert db.replace_forecast(customer, "run-1", _forecast(day1, 0.0).iloc[0:0]) == 0
    assert set(_all_forecasts(db, customer)["dagster_run_id"]) == {"run-2"}


def test_replace_forecast_of_one_customer_leaves_another(db: Database, customer: str):
    other = f"{customer}-b"[-64:]
    db.replace_forecast(customer, "run-1", _forecast(T0, 1.0))
    db.replace_forecast(other, "run-1", _forecast(T0, 5.0))
    db.replace_forecast(customer, "run-1", _forecast(T0, 7.0, devices=("d9",)))
    assert list(_all_forecasts(db, other)["energy_kwh"]) == [5.0, 6.0, 7.0, 5.0, 6.0, 7.0]
    assert list(_all_forecasts(db, customer)["device_id"]) == ["d9", "d9", "d9"]


def test_latest_forecast_returns_only_the_newest_issue(db: Database, customer: str):
    empty = db.latest_forecast(customer)
    assert empty.empty
    assert list(empty.columns) == [c.name for c in forecasts_table.columns]

    newest = T0 + timedelta(days=2)
    db.replace_forecast(customer, "run-b", _forecast(newest, 3.0))
    db.replace_forecast(customer, "run-a", _forecast(T0, 1.0))  # stored later, issued earlier
    db.replace_forecast(customer, "run-c", _forecast(T0 + timedelta(days=1), 2.0, devices=("d3",)))
    latest = db.latest_forecast(customer)
    assert len(latest) == 6
    assert set(latest["dagster_run_id"]) == {"run-b"}
    assert {_ts(v) for v in latest["issued_at"]} == {_ts(newest)}
    assert list(latest["device_id"]) == ["d1", "d1", "d1", "d2", "d2", "d2"]
    assert [_ts(v) for v in latest["timestamp"]] == [
        _ts(newest + timedelta(minutes=15 * i)) for i in (1, 2, 3)
    ] * 2
    assert list(latest["energy_kwh"]) == [3.0, 4.0, 5.0, 3.0, 4.0, 5.0]
    assert set(latest["customer_id"]) == {customer}


# What the registry refuses, and databases from an earlier release -------------------------------


def _registry_device(device_id: str) -> dict:
    return {
        "device_id": device_id,
        "vendor": "gridsense",
        "first_reading": T0,
        "last_reading": T0 + timedelta(days=1),
        "readings": 96,
    }


@pytest.mark.parametrize(
    ("device_id", "problem"),
    [("m" * 10_000, "characters"), ("meter\x00one", "control character")],
)
def test_device_ids_the_registry_cannot_hold_are_refused_alike(
    db: Database, customer: str, device_id: str, problem: str
):
    with pytest.raises(DatabaseWriteError) as refused:
        db.upsert_devices(customer, [_registry_device("ok-1"), _registry_device(device_id)])
    message = refused.value.description or ""
    assert message.startswith(f"customer '{customer}': 1 device id(s) cannot be registered")
    assert problem in message
    # Nothing of the write was stored, on SQLite as on PostgreSQL.
    assert db.devices(customer).empty


def test_a_refused_write_names_the_customer_not_a_driver_traceback(db: Database, customer: str):
    frame = _forecast(T0, 1.0)
    frame.loc[0, "timestamp"] = frame.loc[1, "timestamp"]  # two rows, one primary key
    with pytest.raises(DatabaseWriteError) as refused:
        db.replace_forecast(customer, "run-1", frame)
    message = refused.value.description or ""
    assert message.startswith(f"customer '{customer}': the database refused to store its forecast")
    assert "IntegrityError" in message or "UniqueViolation" in message
    assert _all_forecasts(db, customer).empty


def test_forecast_rows_say_which_model_made_them(db: Database, customer: str):
    db.replace_forecast(customer, "run-1", _forecast(T0, 1.0).assign(source="previous_approved"))
    assert set(db.latest_forecast(customer)["source"]) == {"previous_approved"}


def test_model_by_inputs_finds_the_version_trained_from_them(db: Database, customer: str):
    for version, digest in (("v1", "aaa"), ("v2", "bbb")):
        db.register_model(
            customer_id=customer,
            version=version,
            model_uri=f"s3://b/{version}",
            metrics={},
            gate_passed=True,
            gate_reasons=[],
            run_id="r",
            inputs_digest=digest,
        )
    assert db.model_by_inputs(customer, "aaa").version == "v1"  # type: ignore[union-attr]
    assert db.model_by_inputs(customer, "ccc") is None
    assert db.model_by_inputs(customer, "") is None


def test_a_database_from_an_earlier_release_gets_the_new_columns(data_home):
    url = f"sqlite:///{data_home / 'old.db'}"
    data_home.mkdir(parents=True, exist_ok=True)
    old = sa.create_engine(url)
    with old.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE forecasts (customer_id VARCHAR(64), dagster_run_id VARCHAR(64), "
                "device_id VARCHAR(128), timestamp DATETIME, energy_kwh FLOAT, "
                "model_version VARCHAR(128), issued_at DATETIME, "
                "PRIMARY KEY (customer_id, dagster_run_id, device_id, timestamp))"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO forecasts VALUES ('acme', 'r0', 'd1', '2025-10-01 00:00:00.000000', 1.5, "
                "'v0', '2025-10-01 00:00:00.000000')"
            )
        )
    old.dispose()
    db = Database(url=url)
    assert set(db.latest_forecast("acme")["source"]) == {"newest"}
    columns = {c["name"] for c in sa.inspect(db.engine).get_columns("model_versions")}
    assert "inputs_digest" in columns

"""The relational side: device registry, model registry and forecasts.

SQLAlchemy Core on any URL: a SQLite file under the data home by default, PostgreSQL (psycopg2)
when ``url`` is set. The schema is created on first use and creating it again is harmless. Every
write is one transaction, so a failed step leaves the tables as they were.
"""

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from forecast_core.vendors import device_id_problem
from resources.data_home import data_home

DATABASE_URL_VAR = "FORECAST_DATABASE_URL"

metadata = sa.MetaData()

devices_table = sa.Table(
    "devices",
    metadata,
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("device_id", sa.String(128), primary_key=True),
    sa.Column("vendor", sa.String(64), nullable=False),
    sa.Column("first_reading", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_reading", sa.DateTime(timezone=True), nullable=False),
    sa.Column("readings", sa.BigInteger, nullable=False),
    sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

ApprovalStatus = Literal["Approved", "Rejected", "PendingManualApproval"]
APPROVAL_STATUSES: tuple[ApprovalStatus, ...] = ("Approved", "Rejected", "PendingManualApproval")
# decided_by of the quality gate's own decisions (register_model).
GATE_DECIDER = "quality gate"

model_versions_table = sa.Table(
    "model_versions",
    metadata,
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(128), primary_key=True),
    sa.Column("model_uri", sa.Text, nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("gate_passed", sa.Boolean, nullable=False),
    sa.Column("gate_reasons", sa.Text, nullable=False),
    # Same vocabulary as SageMaker's model registry.
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("dagster_run_id", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=False),
    # What the model was trained from (data version, code, hyperparameters), so an unchanged
    # re-run reuses this version instead of training and registering another.
    sa.Column("inputs_digest", sa.String(64), nullable=False, server_default=""),
    # Who made the current status and why: "quality gate" for the gate's own decision, a person
    # (the approval job's or forecast-models' decided_by), or "sagemaker:<identity>" for a
    # decision pulled from the SageMaker Model Registry.
    sa.Column("decided_by", sa.String(256), nullable=False, server_default=""),
    sa.Column("decision_reason", sa.Text, nullable=False, server_default=""),
    # The version's model package in the SageMaker Model Registry ("" in the local environment,
    # or before it is registered there).
    sa.Column("registry_arn", sa.String(256), nullable=False, server_default=""),
)

forecasts_table = sa.Table(
    "forecasts",
    metadata,
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("dagster_run_id", sa.String(64), primary_key=True),
    sa.Column("device_id", sa.String(128), primary_key=True),
    sa.Column("timestamp", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("energy_kwh", sa.Float, nullable=False),
    sa.Column("model_version", sa.String(128), nullable=False),
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
    # Which model made it: "newest", "previous_approved" or "seasonal_naive_fallback".
    sa.Column("source", sa.String(32), nullable=False, server_default="newest"),
    # Its kind (forest, lightgbm, seasonal_naive_week, seasonal_naive_day); "" for rows stored
    # before the kind was recorded.
    sa.Column("model_kind", sa.String(32), nullable=False, server_default=""),
    # The P10-P90 interval around energy_kwh (its P50); NULL for rows stored before forecasts
    # had intervals.
    sa.Column("p10_kwh", sa.Float, nullable=True),
    sa.Column("p90_kwh", sa.Float, nullable=True),
    # What weather the step used: "not_used" (no weather features), "forecast", "observed" or
    # "none_for_horizon" (a weather model without a weather forecast for that hour); "" for
    # rows stored before weather was recorded.
    sa.Column("weather_input", sa.String(32), nullable=False, server_default=""),
)
sa.Index("ix_forecasts_customer_issued", forecasts_table.c.customer_id, forecasts_table.c.issued_at)

# Columns added after the first release, added to an existing database when it is opened.
ADDED_COLUMNS = (
    (model_versions_table, "inputs_digest"),
    (model_versions_table, "decided_by"),
    (model_versions_table, "decision_reason"),
    (model_versions_table, "registry_arn"),
    (forecasts_table, "source"),
    (forecasts_table, "model_kind"),
    (forecasts_table, "p10_kwh"),
    (forecasts_table, "p90_kwh"),
    (forecasts_table, "weather_input"),
)


class DatabaseWriteError(dg.Failure):
    """The database refused a write; the description names the customer and the reason."""


def _refused(customer_id: str, what: str, exc: sa.exc.DBAPIError) -> DatabaseWriteError:
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    return DatabaseWriteError(
        description=f"customer '{customer_id}': the database refused to {what}: "
        f"{type(exc.orig).__name__}: {reason}. Nothing of this write was stored."
    )


@dataclass(frozen=True)
class ModelVersion:
    customer_id: str
    version: str
    model_uri: str
    metrics: dict[str, Any]
    gate_passed: bool
    gate_reasons: list[str]
    status: str
    created_at: datetime
    inputs_digest: str = ""
    status_changed_at: datetime | None = None
    decided_by: str = ""
    decision_reason: str = ""
    registry_arn: str = ""


def _utc(value: Any) -> datetime:
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


def _now() -> datetime:
    return datetime.now(UTC)


def _optional_float(value: Any) -> float | None:
    """A float for the database, None (NULL) for a missing or NaN one."""
    if value is None:
        return None
    number = float(value)
    return number if number == number else None


def _add_missing_columns(engine: sa.Engine) -> None:
    """Bring a database made by an earlier release up to this schema (new columns only)."""
    inspector = sa.inspect(engine)
    with engine.begin() as conn:
        for table, name in ADDED_COLUMNS:
            if name in {c["name"] for c in inspector.get_columns(table.name)}:
                continue
            column = table.c[name]
            kind = column.type.compile(dialect=engine.dialect)
            if column.nullable and column.server_default is None:
                # Old rows have no value for it (a forecast's interval): NULL, not a made-up one.
                conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}"))
                continue
            default = column.server_default.arg if column.server_default is not None else ""  # type: ignore[attr-defined]
            conn.execute(
                sa.text(
                    f"ALTER TABLE {table.name} ADD COLUMN {name} {kind} NOT NULL DEFAULT '{default}'"
                )
            )


def check_decision(
    customer_id: str, version: str, gate_passed: bool | None, status: ApprovalStatus
) -> None:
    """The rules every decision on a version follows, wherever it is recorded: the version
    exists (``gate_passed`` None: it does not; KeyError) and a version that failed its gate is
    not approved (ValueError)."""
    if gate_passed is None:
        raise KeyError(f"customer '{customer_id}' has no model version '{version}'")
    if status == "Approved" and not gate_passed:
        raise ValueError(
            f"customer '{customer_id}', model '{version}' failed its quality gate and "
            "cannot be approved"
        )


class Database(dg.ConfigurableResource):
    """Device registry, model registry and forecasts tables.

    ``url`` is a SQLAlchemy URL (``postgresql+psycopg2://user:pass@host/db``). Empty means
    ``FORECAST_DATABASE_URL`` if that is set when the database is first used, else a SQLite file
    ``forecast.db`` in the data home.
    """

    url: str = ""

    @cached_property
    def engine(self) -> sa.Engine:
        url = (
            self.url
            or os.environ.get(DATABASE_URL_VAR)
            or f"sqlite:///{data_home() / 'forecast.db'}"
        )
        if url.startswith("sqlite:///"):
            data_home().mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, pool_pre_ping=True, future=True)
        metadata.create_all(engine, checkfirst=True)
        _add_missing_columns(engine)
        return engine

    def _insert(self, table: sa.Table):
        return (postgresql if self.engine.dialect.name == "postgresql" else sqlite).insert(table)

    # Devices ---------------------------------------------------------------------------------

    def upsert_devices(
        self, customer_id: str, devices: Iterable[Mapping[str, Any]]
    ) -> dict[str, int]:
        """Register devices; widen first/last reading of known ones. Returns new/updated counts."""
        now = _now()
        rows = [
            {
                "customer_id": customer_id,
                "device_id": str(d["device_id"]),
                "vendor": str(d["vendor"]),
                "first_reading": _utc(d["first_reading"]),
                "last_reading": _utc(d["last_reading"]),
                "readings": int(d["readings"]),
                "registered_at": now,
                "updated_at": now,
            }
            for d in devices
        ]
        if not rows:
            return {"new": 0, "updated": 0}
        ids = [str(r["device_id"]) for r in rows]
        bad = [
            f"'{d[:40]}{'…' if len(d) > 40 else ''}': {problem}"
            for d in ids
            if (problem := device_id_problem(d))
        ]
        if bad:
            raise DatabaseWriteError(
                description=f"customer '{customer_id}': {len(bad)} device id(s) cannot be "
                f"registered: {'; '.join(bad[:5])}"
            )
        try:
            return self._upsert_devices(customer_id, rows)
        except sa.exc.DBAPIError as exc:
            raise _refused(customer_id, "register its devices", exc) from exc

    def _upsert_devices(self, customer_id: str, rows: list[dict[str, Any]]) -> dict[str, int]:
        with self.engine.begin() as conn:
            known = set(
                conn.scalars(
                    sa.select(devices_table.c.device_id).where(
                        devices_table.c.customer_id == customer_id
                    )
                )
            )
            stmt = self._insert(devices_table)
            excluded = stmt.excluded
            stmt = stmt.on_conflict_do_update(
                index_elements=[devices_table.c.customer_id, devices_table.c.device_id],
                set_={
                    "vendor": excluded.vendor,
                    "first_reading": sa.func.min(
                        devices_table.c.first_reading, excluded.first_reading
                    )
                    if self.engine.dialect.name == "sqlite"
                    else sa.func.least(devices_table.c.first_reading, excluded.first_reading),
                    "last_reading": sa.func.max(devices_table.c.last_reading, excluded.last_reading)
                    if self.engine.dialect.name == "sqlite"
                    else sa.func.greatest(devices_table.c.last_reading, excluded.last_reading),
                    "readings": excluded.readings,
                    "updated_at": excluded.updated_at,
                },
            )
            conn.execute(stmt, rows)
        new = sum(1 for r in rows if r["device_id"] not in known)
        return {"new": new, "updated": len(rows) - new}

    def devices(self, customer_id: str) -> pd.DataFrame:
        with self.engine.connect() as conn:
            query = (
                sa.select(devices_table)
                .where(devices_table.c.customer_id == customer_id)
                .order_by(devices_table.c.device_id)
            )
            return pd.DataFrame(conn.execute(query).mappings().all())

    # Model registry --------------------------------------------------------------------------

    def register_model(
        self,
        *,
        customer_id: str,
        version: str,
        model_uri: str,
        metrics: Mapping[str, Any],
        gate_passed: bool,
        gate_reasons: Sequence[str],
        run_id: str,
        auto_approve: bool = True,
        inputs_digest: str = "",
    ) -> ModelVersion:
        """Record a trained model. It is Approved when it passed its gate and auto-approval is on,
        Rejected when it failed, and otherwise waits for :meth:`set_model_status`."""
        status: ApprovalStatus = (
            ("Approved" if auto_approve else "PendingManualApproval") if gate_passed else "Rejected"
        )
        # The gate's own decision is recorded like a person's: by whom and why.
        decided_by, reason = {
            "Approved": (GATE_DECIDER, "passed its quality gate; auto_approve is on"),
            "Rejected": (GATE_DECIDER, "; ".join(gate_reasons) or "failed its quality gate"),
            "PendingManualApproval": ("", ""),
        }[status]
        now = _now()
        row = {
            "customer_id": customer_id,
            "version": version,
            "model_uri": model_uri,
            "metrics": json.dumps(metrics, default=str, sort_keys=True),
            "gate_passed": gate_passed,
            "gate_reasons": json.dumps(list(gate_reasons)),
            "status": status,
            "dagster_run_id": run_id,
            "created_at": now,
            "status_changed_at": now,
            "inputs_digest": inputs_digest,
            "decided_by": decided_by,
            "decision_reason": reason,
        }
        stmt = self._insert(model_versions_table)
        stmt = stmt.on_conflict_do_update(
            index_elements=[model_versions_table.c.customer_id, model_versions_table.c.version],
            set_={k: stmt.excluded[k] for k in row if k not in ("customer_id", "version")},
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(stmt, row)
        except sa.exc.DBAPIError as exc:
            raise _refused(customer_id, f"register model {version}", exc) from exc
        return self._model_from_row(row)

    def set_model_status(
        self,
        customer_id: str,
        version: str,
        status: ApprovalStatus,
        *,
        decided_by: str = "",
        reason: str = "",
    ) -> ModelVersion:
        """Record a decision on a version: its new status, who made it and why.

        A version that failed its gate cannot be approved (ValueError); an unknown customer or
        version is a KeyError. The rules a person's decision follows on top of these (a reason,
        one decision at a time) are ``forecast_assets.approval``'s.
        """
        where = (model_versions_table.c.customer_id == customer_id) & (
            model_versions_table.c.version == version
        )
        with self.engine.begin() as conn:
            current = conn.execute(
                sa.select(model_versions_table.c.gate_passed).where(where)
            ).scalar_one_or_none()
            check_decision(customer_id, version, current, status)
            conn.execute(
                sa.update(model_versions_table)
                .where(where)
                .values(
                    status=status,
                    status_changed_at=_now(),
                    decided_by=decided_by,
                    decision_reason=reason,
                )
            )
            row = conn.execute(sa.select(model_versions_table).where(where)).mappings().one()
        return self._model_from_row(dict(row))

    def set_registry_arn(self, customer_id: str, version: str, arn: str) -> None:
        """Remember the version's model package in the SageMaker Model Registry."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(model_versions_table)
                .where(
                    (model_versions_table.c.customer_id == customer_id)
                    & (model_versions_table.c.version == version)
                )
                .values(registry_arn=arn)
            )

    def model_version(self, customer_id: str, version: str) -> ModelVersion | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(model_versions_table).where(
                        (model_versions_table.c.customer_id == customer_id)
                        & (model_versions_table.c.version == version)
                    )
                )
                .mappings()
                .one_or_none()
            )
        return self._model_from_row(dict(row)) if row is not None else None

    def customers_with_models(self) -> list[str]:
        """Every customer with at least one registered model version, sorted."""
        with self.engine.connect() as conn:
            return list(
                conn.scalars(
                    sa.select(model_versions_table.c.customer_id)
                    .distinct()
                    .order_by(model_versions_table.c.customer_id)
                )
            )

    def model_versions(self, customer_id: str) -> list[ModelVersion]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(model_versions_table)
                .where(model_versions_table.c.customer_id == customer_id)
                .order_by(
                    model_versions_table.c.created_at.desc(), model_versions_table.c.version.desc()
                )
            ).mappings()
            return [self._model_from_row(dict(r)) for r in rows]

    def newest_models(self) -> dict[str, ModelVersion]:
        """Every customer's newest model version (``model_versions(c)[0]``), in one query: the
        overview's read of 10,000 customers is one round trip, not one per customer."""
        table = model_versions_table
        rank = (
            sa.func.row_number()
            .over(
                partition_by=table.c.customer_id,
                order_by=(table.c.created_at.desc(), table.c.version.desc()),
            )
            .label("newest_rank")
        )
        ranked = sa.select(table, rank).subquery()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ranked).where(ranked.c.newest_rank == 1)).mappings()
            return {r["customer_id"]: self._model_from_row(dict(r)) for r in rows}

    def latest_approved_model(self, customer_id: str) -> ModelVersion | None:
        return next((m for m in self.model_versions(customer_id) if m.status == "Approved"), None)

    def model_by_inputs(self, customer_id: str, inputs_digest: str) -> ModelVersion | None:
        """The newest version trained from exactly these inputs, if any (see register_model)."""
        if not inputs_digest:
            return None
        return next(
            (m for m in self.model_versions(customer_id) if m.inputs_digest == inputs_digest), None
        )

    @staticmethod
    def _model_from_row(row: Mapping[str, Any]) -> ModelVersion:
        return ModelVersion(
            customer_id=row["customer_id"],
            version=row["version"],
            model_uri=row["model_uri"],
            metrics=json.loads(row["metrics"]),
            gate_passed=bool(row["gate_passed"]),
            gate_reasons=json.loads(row["gate_reasons"]),
            status=row["status"],
            created_at=row["created_at"],
            inputs_digest=row.get("inputs_digest") or "",
            status_changed_at=row.get("status_changed_at"),
            decided_by=row.get("decided_by") or "",
            decision_reason=row.get("decision_reason") or "",
            registry_arn=row.get("registry_arn") or "",
        )

    # Forecasts -------------------------------------------------------------------------------

    def replace_forecast(self, customer_id: str, run_id: str, forecast: pd.DataFrame) -> int:
        """Store one run's forecast in one transaction; a retried step of the same run replaces
        its rows. ``source`` says which model made it (default "newest"), ``model_kind`` its
        kind, ``p10_kwh``/``p90_kwh`` the interval around ``energy_kwh`` (NULL without one),
        ``weather_input`` what weather it used ("" when the frame does not say)."""
        rows = [
            {
                "customer_id": customer_id,
                "dagster_run_id": run_id,
                "device_id": str(r.device_id),
                "timestamp": _utc(r.timestamp),
                "energy_kwh": float(r.energy_kwh),
                "model_version": str(r.model_version),
                "issued_at": _utc(r.issued_at),
                "source": str(getattr(r, "source", "newest")),
                "model_kind": str(getattr(r, "model_kind", "") or ""),
                "p10_kwh": _optional_float(getattr(r, "p10_kwh", None)),
                "p90_kwh": _optional_float(getattr(r, "p90_kwh", None)),
                "weather_input": str(getattr(r, "weather_input", "") or ""),
            }
            for r in forecast.itertuples(index=False)
        ]
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.delete(forecasts_table).where(
                        (forecasts_table.c.customer_id == customer_id)
                        & (forecasts_table.c.dagster_run_id == run_id)
                    )
                )
                if rows:
                    conn.execute(sa.insert(forecasts_table), rows)
        except sa.exc.DBAPIError as exc:
            raise _refused(customer_id, "store its forecast", exc) from exc
        return len(rows)

    def latest_forecast(self, customer_id: str) -> pd.DataFrame:
        with self.engine.connect() as conn:
            latest = conn.execute(
                sa.select(sa.func.max(forecasts_table.c.issued_at)).where(
                    forecasts_table.c.customer_id == customer_id
                )
            ).scalar()
            if latest is None:
                return pd.DataFrame(columns=[c.name for c in forecasts_table.columns])
            query = (
                sa.select(forecasts_table)
                .where(
                    (forecasts_table.c.customer_id == customer_id)
                    & (forecasts_table.c.issued_at == latest)
                )
                .order_by(forecasts_table.c.device_id, forecasts_table.c.timestamp)
            )
            frame = pd.DataFrame(conn.execute(query).mappings().all())
        # Rows from before intervals have NULL there: NaN, in a float column.
        for column in ("p10_kwh", "p90_kwh"):
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
        return frame

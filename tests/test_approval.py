"""Approving and rejecting model versions: the rules (one function), the Launchpad job, the
``forecast-models`` command on the same database, the schema migration, and forecasting
following the decision."""

from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from forecast_assets.approval import (
    DECISION_TAG,
    ApprovalError,
    decide,
    history_records,
    main,
    model_approval_job,
)
from forecast_assets.assets.forecast import choose_model
from forecast_assets.definitions import build_definitions
from resources.database import GATE_DECIDER, Database
from resources.registry import LocalModelRegistry

CUSTOMER = "hansa-offices"


def _register(registry: Any, version: str, *, passed: bool = True, auto: bool = False) -> None:
    registry.register(
        customer_id=CUSTOMER,
        version=version,
        model_uri=f"file:///models/{version}.tar.gz",
        metrics={
            "model_kind": "forest",
            "wape_ratio": 0.8123 if passed else 1.31,
            "hyperparameters": {
                "timezone": "Europe/Berlin",
                "holiday_country": "DE",
                "horizon_hours": 48,
            },
            "gate": {"summary": f"gate summary of {version}"},
        },
        gate_passed=passed,
        gate_reasons=[] if passed else ["WAPE 13.1% is not below seasonal naive's 10.0% × 1.00"],
        run_id="run-1",
        auto_approve=auto,
    )


@pytest.fixture
def registry(data_home) -> LocalModelRegistry:
    """v1 Approved by the gate, v2 Rejected by the gate, v3 waiting for approval (newest)."""
    registry = LocalModelRegistry(database=Database())
    _register(registry, "v1", auto=True)
    _register(registry, "v2", passed=False)
    _register(registry, "v3")
    return registry


def _status(registry: LocalModelRegistry, version: str) -> tuple[str, str, str]:
    model = registry.database.model_version(CUSTOMER, version)
    assert model is not None
    return model.status, model.decided_by, model.decision_reason


# The rules ---------------------------------------------------------------------------------------


def test_the_gate_records_its_own_decisions(registry):
    assert _status(registry, "v1") == (
        "Approved",
        GATE_DECIDER,
        "passed its quality gate; auto_approve is on",
    )
    assert _status(registry, "v2") == (
        "Rejected",
        GATE_DECIDER,
        "WAPE 13.1% is not below seasonal naive's 10.0% × 1.00",
    )
    assert _status(registry, "v3") == ("PendingManualApproval", "", "")


def test_approving_the_pending_model_makes_it_forecast(registry):
    assert choose_model(registry.database, CUSTOMER).version == "v1"
    decision = decide(
        registry, CUSTOMER, "Approved", reason="backtest looks right", decided_by="ana"
    )
    assert decision.model.version == "v3"  # the newest pending one, by default
    assert _status(registry, "v3") == ("Approved", "ana", "backtest looks right")
    model = registry.database.model_version(CUSTOMER, "v3")
    assert model is not None and model.status_changed_at is not None
    assert decision.line() == (
        "customer 'hansa-offices': model v3 Approved by ana (was PendingManualApproval): "
        "backtest looks right. From the next inference run the forecast uses model v3 (newest)."
    )
    choice = choose_model(registry.database, CUSTOMER)
    assert (choice.source, choice.version) == ("newest", "v3")


def test_rejecting_takes_a_model_out_of_forecasting(registry):
    decision = decide(registry, CUSTOMER, "Rejected", reason="odd peaks", decided_by="ana")
    assert decision.model.version == "v3" and decision.model.status == "Rejected"
    assert "forecast uses model v1 (previous_approved)" in decision.line()
    # An approved model can be rejected later (rolled back): nothing approved is left.
    decision = decide(registry, CUSTOMER, "Rejected", version="v1", reason="drift", decided_by="bo")
    assert "seasonal naive (seasonal_naive_fallback" in decision.line()
    assert choose_model(registry.database, CUSTOMER).source == "seasonal_naive_fallback"
    # And a rejected model that passed its gate can be approved again.
    decide(registry, CUSTOMER, "Approved", version="v1", reason="drift explained", decided_by="bo")
    assert choose_model(registry.database, CUSTOMER).version == "v1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"customer_id": "nobody"},
            r"customer 'nobody' has no model versions",
        ),
        (
            {"version": "v9"},
            r"customer 'hansa-offices' has no model version 'v9'; its versions, newest first: "
            r"v3 \(PendingManualApproval\), v2 \(Rejected\), v1 \(Approved\)",
        ),
        (
            {"version": "v2"},
            r"customer 'hansa-offices', model v2 failed its quality gate \(WAPE 13.1% is not "
            r"below .*\) and cannot be approved",
        ),
        (
            {"version": "v1"},
            r"customer 'hansa-offices', model v1 is already Approved \(by quality gate, .*UTC: "
            r"passed its quality gate; auto_approve is on\)",
        ),
        ({"reason": "  "}, r"customer 'hansa-offices': a decision needs a reason"),
        ({"decided_by": ""}, r"customer 'hansa-offices': a decision needs who made it"),
        ({"decision": "Maybe"}, r"decision must be Approved or Rejected, not 'Maybe'"),
    ],
)
def test_refused_decisions_name_customer_version_and_problem(registry, kwargs, message):
    args = {
        "customer_id": CUSTOMER,
        "decision": "Approved",
        "reason": "ok",
        "decided_by": "ana",
        **kwargs,
    }
    before = [(m.version, m.status) for m in registry.database.model_versions(CUSTOMER)]
    with pytest.raises(ApprovalError, match=message):
        decide(registry, **args)
    assert [(m.version, m.status) for m in registry.database.model_versions(CUSTOMER)] == before


def test_without_a_pending_model_the_version_must_be_named(registry):
    decide(registry, CUSTOMER, "Approved", reason="ok", decided_by="ana")
    with pytest.raises(
        ApprovalError, match=r"customer 'hansa-offices' has no model waiting for approval"
    ):
        decide(registry, CUSTOMER, "Approved", reason="ok", decided_by="ana")


def test_history_has_metrics_decisions_and_settings(registry):
    decide(registry, CUSTOMER, "Rejected", reason="odd peaks", decided_by="ana")
    rows = history_records(registry.database.model_versions(CUSTOMER))
    assert [r["version"] for r in rows] == ["v3", "v2", "v1"]
    newest, rejected = rows[0], rows[1]
    assert newest["status"] == "Rejected" and newest["decided_by"] == "ana"
    assert newest["reason"] == "odd peaks" and newest["decided_at"].endswith("UTC")
    assert newest["wape_ratio"] == 0.8123 and newest["kind"] == "forest"
    assert newest["timezone"] == "Europe/Berlin"
    assert "holiday_country=DE" in newest["settings"] and "horizon_hours=48" in newest["settings"]
    assert rejected["gate"] == "failed: gate summary of v2"


def test_an_older_database_gets_the_decision_columns(data_home, tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = sa.create_engine(url)
    with old.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE model_versions (customer_id VARCHAR(64), version VARCHAR(128), "
                "model_uri TEXT NOT NULL, metrics TEXT NOT NULL, gate_passed BOOLEAN NOT NULL, "
                "gate_reasons TEXT NOT NULL, status VARCHAR(32) NOT NULL, dagster_run_id "
                "VARCHAR(64) NOT NULL, created_at DATETIME NOT NULL, status_changed_at DATETIME "
                "NOT NULL, PRIMARY KEY (customer_id, version))"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO model_versions VALUES ('acme', 'v1', 'u', '{}', 1, '[]', "
                "'PendingManualApproval', 'r', '2025-01-01 00:00:00', '2025-01-01 00:00:00')"
            )
        )
    database = Database(url=url)
    (model,) = database.model_versions("acme")
    assert (model.decided_by, model.decision_reason, model.registry_arn) == ("", "", "")
    registry = LocalModelRegistry(database=database)
    decide(registry, "acme", "Approved", reason="migrated fine", decided_by="ana")
    assert database.model_version("acme", "v1").decided_by == "ana"  # type: ignore[union-attr]


# The Launchpad job -------------------------------------------------------------------------------


def _run(instance: dg.DagsterInstance, **config: Any) -> dg.ExecuteInProcessResult:
    job = build_definitions("local").resolve_job_def("model_approval_job")
    return job.execute_in_process(
        instance=instance,
        run_config={"ops": {"decide_on_model": {"config": config}}},
        raise_on_error=False,
    )


def test_the_job_records_the_decision_and_says_it_in_one_line(registry, instance):
    instance.add_dynamic_partitions("customers", [CUSTOMER])
    result = _run(
        instance,
        customer_id=CUSTOMER,
        decision="Approved",
        reason="reviewed the chart",
        decided_by="ana@example.com",
    )
    assert result.success
    assert _status(registry, "v3") == ("Approved", "ana@example.com", "reviewed the chart")
    lines = [
        e.message for e in instance.all_logs(result.run_id) if "model v3 Approved" in e.message
    ]
    assert len(lines) == 1 and "forecast uses model v3 (newest)" in lines[0]
    tags = instance.get_run_by_id(result.run_id).tags  # type: ignore[union-attr]
    assert tags[DECISION_TAG] == "hansa-offices v3 Approved"
    # The decision shows on the model's page, in the customer's partition.
    (observation,) = [
        e.asset_observation_data.asset_observation
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    assert observation.asset_key == dg.AssetKey(["models", "load_forecast_model"])
    assert observation.partition == CUSTOMER
    assert observation.metadata["decided_by"].value == "ana@example.com"


def test_a_refused_decision_fails_the_run_with_its_reason_only(registry, instance):
    result = _run(
        instance,
        customer_id=CUSTOMER,
        version="v2",
        decision="Approved",
        reason="please",
        decided_by="ana",
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    error = failure.step_failure_data.error
    assert error is not None
    assert error.message.startswith(
        "dagster._core.definitions.events.Failure: customer 'hansa-offices', model v2 failed "
        "its quality gate"
    )
    assert error.cause is None  # no chained traceback of our own code's internals
    assert _status(registry, "v2")[0] == "Rejected"


def test_the_job_config_requires_reason_and_who():
    fields = model_approval_job.run_config_schema.config_type.fields["ops"]  # type: ignore[attr-defined]
    config = fields.config_type.fields["decide_on_model"].config_type.fields["config"].config_type
    assert {name for name, f in config.fields.items() if f.is_required} == {
        "customer_id",
        "decision",
        "reason",
        "decided_by",
    }
    assert not config.fields["version"].is_required


# The command line ------------------------------------------------------------------------------


def test_the_command_line_decides_on_the_same_database(registry, monkeypatch, capsys):
    monkeypatch.setenv("USER", "carla")
    monkeypatch.chdir(registry.database.engine.url.database.rsplit("/", 1)[0])  # no .env here
    assert main(["approve", CUSTOMER, "--reason", "looks fine"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("customer 'hansa-offices': model v3 Approved by carla")
    assert _status(registry, "v3") == ("Approved", "carla", "looks fine")

    assert main(["reject", CUSTOMER, "v1", "--reason", "superseded", "--by", "dan"]) == 0
    assert _status(registry, "v1") == ("Rejected", "dan", "superseded")

    assert main(["approve", CUSTOMER, "v2", "--reason", "x"]) == 2
    err = capsys.readouterr().err
    assert "forecast-models: customer 'hansa-offices', model v2 failed its quality gate" in err

    assert main(["list", CUSTOMER]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("customer 'hansa-offices': 3 model version(s), newest first")
    blocks = listing.split("\n\n")[1:]
    assert [b.splitlines()[0].split() for b in blocks] == [
        ["v3", "Approved"],
        ["v2", "Rejected"],
        ["v1", "Rejected"],
    ]
    assert "backtest WAPE 0.8123 x seasonal naive's" in blocks[0]
    assert "decided   by carla, " in blocks[0] and "UTC: looks fine" in blocks[0]
    assert "gate      failed: gate summary of v2" in blocks[1]
    assert "decided   by dan, " in blocks[2] and ": superseded" in blocks[2]
    assert "settings  timezone=Europe/Berlin, holiday_country=DE" in blocks[2]

    assert main(["list"]) == 0
    assert capsys.readouterr().out.split() == [CUSTOMER]
    assert main(["list", "nobody"]) == 2
    assert "customer 'nobody' has no model versions" in capsys.readouterr().err


def test_the_command_needs_a_reason(registry, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["approve", CUSTOMER])
    assert exc.value.code == 2
    assert "--reason" in capsys.readouterr().err


# The model's materialization -----------------------------------------------------------------


def test_a_rejection_is_an_outcome_with_its_reason_and_the_history(
    instance, local_resources, store
):
    from tests.conftest import land
    from tests.test_assets import FAST_TRAINING, FORECAST, MODEL, PRE, RAW, materialize, step_errors

    customer = "nordmarkt-retail"
    land(store, [customer], days=45)
    strict = {
        "ops": {
            "models__load_forecast_model": {"config": {**FAST_TRAINING, "max_wape_ratio": 0.01}}
        }
    }
    result = materialize(instance, local_resources, customer, [RAW, PRE, MODEL, FORECAST], strict)
    # The run succeeds: a rejected model is an outcome, and the customer is still forecast.
    assert result.success, step_errors(result)
    assert not [e for e in result.all_events if e.is_step_failure]
    logs = [e for e in instance.all_logs(result.run_id) if e.level >= 30]
    rejected = [e.message for e in logs if "REJECTED by its quality gate" in e.message]
    assert len(rejected) == 1 and "\n" not in rejected[0]
    assert "is not below seasonal naive's" in rejected[0]
    assert not [e for e in logs if "Traceback" in e.message or "Stack Trace" in e.message]

    (gate,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "quality_gate"]
    assert not gate.passed
    assert (gate.description or "").startswith(f"customer '{customer}', model ")
    assert "rejected: WAPE" in (gate.description or "")

    meta = result.asset_materializations_for_node("models__load_forecast_model")[0].metadata
    assert meta["approval_status"].value == "Rejected"
    assert meta["decided_by"].value == "quality gate"
    assert "is not below seasonal naive's" in meta["rejection_reason"].value
    (row,) = meta["model_history"].value.records
    assert row.data["status"] == "Rejected" and row.data["timezone"] == "Europe/Berlin"
    assert row.data["gate"].startswith("failed: WAPE")
    forecast = result.asset_materializations_for_node("forecasts__load_forecast")[0].metadata
    assert forecast["source"].value == "seasonal_naive_fallback"


def test_the_command_names_a_missing_setting_of_the_environment(data_home, monkeypatch, capsys):
    monkeypatch.chdir(data_home.parent)  # no .env here
    monkeypatch.setenv("FORECAST_ENV", "sagemaker")
    monkeypatch.delenv("FORECAST_AWS_REGION", raising=False)
    monkeypatch.setenv("FORECAST_DATABASE_URL", f"sqlite:///{data_home / 'x.db'}")
    assert main(["list"]) == 2
    assert capsys.readouterr().err == (
        "forecast-models: FORECAST_AWS_REGION not set (FORECAST_ENV=sagemaker: see .env.example)\n"
    )


def test_a_decision_on_a_customer_no_longer_partitioned_is_still_recorded(registry, instance):
    result = _run(instance, customer_id=CUSTOMER, decision="Rejected", reason="r", decided_by="ana")
    assert result.success
    assert _status(registry, "v3") == ("Rejected", "ana", "r")
    assert not [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]

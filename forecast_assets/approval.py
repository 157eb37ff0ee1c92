"""Approving and rejecting model versions: one rule set for the UI, the command line and SageMaker.

A person decides through :func:`decide`, from the Launchpad (``model_approval_job``) or the
command line (``forecast-models approve|reject``); both record who decided, when and why in the
model registry (resource ``registry``: the database, plus the SageMaker Model Registry in the
``sagemaker`` environment). Forecasting follows the decision from the next inference run on:
``choose_model`` reads the statuses (newest version if Approved, else the latest Approved one,
else seasonal naive). ``model_registry_sensor`` pulls decisions made in SageMaker.
"""

import argparse
import getpass
import os
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from forecast_assets.environment import current_environment
from forecast_assets.partitions import customers_partitions_def
from resources.database import ApprovalStatus, ModelVersion
from resources.registry import ModelRegistry

PENDING: ApprovalStatus = "PendingManualApproval"
HISTORY_LENGTH = 10
DECISION_TAG = "forecast-assets/decision"


class ApprovalError(ValueError):
    """A decision that cannot be recorded as asked; the message names customer, version and why."""


class ModelDecision(Enum):
    Approved = "Approved"
    Rejected = "Rejected"


@dataclass(frozen=True)
class Decision:
    """A recorded decision, and which model forecasts the customer now."""

    model: ModelVersion
    previous_status: str
    forecast_by: str

    def line(self) -> str:
        m = self.model
        return (
            f"customer '{m.customer_id}': model {m.version} {m.status} by {m.decided_by} "
            f"(was {self.previous_status}): {m.decision_reason}. From the next inference run "
            f"the forecast uses {self.forecast_by}."
        )


def _when(value: Any) -> str:
    if value is None:
        return ""
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.strftime("%Y-%m-%d %H:%M UTC")


def _listing(versions: Sequence[ModelVersion], most: int = 5) -> str:
    shown = ", ".join(f"{m.version} ({m.status})" for m in versions[:most])
    more = f" and {len(versions) - most} older" if len(versions) > most else ""
    return f"its versions, newest first: {shown}{more}"


def choose_version(
    versions: Sequence[ModelVersion], customer_id: str, version: str | None
) -> ModelVersion:
    """The version a decision is about: ``version``, or the newest PendingManualApproval one."""
    if not versions:
        raise ApprovalError(
            f"customer '{customer_id}' has no model versions (is the id right? "
            "`forecast-models list` without arguments names the customers that have some)"
        )
    if version:
        found = next((m for m in versions if m.version == version), None)
        if found is None:
            raise ApprovalError(
                f"customer '{customer_id}' has no model version '{version}'; {_listing(versions)}"
            )
        return found
    pending = next((m for m in versions if m.status == PENDING), None)
    if pending is None:
        raise ApprovalError(
            f"customer '{customer_id}' has no model waiting for approval "
            f"({PENDING}); name the version to decide on; {_listing(versions)}"
        )
    return pending


def decide(
    registry: ModelRegistry,
    customer_id: str,
    decision: str,
    *,
    reason: str,
    decided_by: str,
    version: str | None = None,
) -> Decision:
    """Approve or reject one model version, recording who, when and why.

    ``version`` defaults to the customer's newest PendingManualApproval version. A version that
    failed its quality gate cannot be approved; deciding what a version already is (approving an
    Approved one) is refused, so a decision never silently overwrites an earlier one's who and
    why. Changing a decision is allowed: rejecting an Approved model takes it out of
    forecasting, approving a Rejected one that passed its gate puts it back.
    """
    from forecast_assets.assets.forecast import choose_model  # the rule forecasting applies

    customer_id, reason, decided_by = customer_id.strip(), reason.strip(), decided_by.strip()
    if decision not in (d.value for d in ModelDecision):
        raise ApprovalError(f"decision must be Approved or Rejected, not {decision!r}")
    status: ApprovalStatus = "Approved" if decision == "Approved" else "Rejected"
    if not reason:
        raise ApprovalError(f"customer '{customer_id}': a decision needs a reason")
    if not decided_by:
        raise ApprovalError(f"customer '{customer_id}': a decision needs who made it")
    model = choose_version(registry.database.model_versions(customer_id), customer_id, version)
    where = f"customer '{customer_id}', model {model.version}"
    if status == "Approved" and not model.gate_passed:
        reasons = "; ".join(model.gate_reasons) or "no reason recorded"
        raise ApprovalError(
            f"{where} failed its quality gate ({reasons}) and cannot be approved; "
            "retrain it (training_job) to get a version that passes"
        )
    if model.status == status:
        raise ApprovalError(
            f"{where} is already {status} (by {model.decided_by or 'unknown'}, "
            f"{_when(model.status_changed_at)}: {model.decision_reason or 'no reason recorded'})"
        )
    try:
        updated = registry.decide(
            customer_id, model.version, status, decided_by=decided_by, reason=reason
        )
    except (KeyError, ValueError) as exc:  # changed underneath us since it was read
        raise ApprovalError(str(exc).strip("'\"")) from exc
    choice = choose_model(registry.database, customer_id)
    forecast_by = (
        f"model {choice.version} ({choice.source})"
        if choice.model is not None
        else f"seasonal naive ({choice.source}: no Approved model)"
    )
    return Decision(updated, model.status, forecast_by)


# History -------------------------------------------------------------------------------------


def history_records(versions: Sequence[ModelVersion]) -> list[dict[str, Any]]:
    """One row per version, newest first: when, kind, backtest WAPE ratio, gate, status, who
    decided, when and why, and the settings it was trained with (time zone included)."""
    rows = []
    for m in versions:
        hp = m.metrics.get("hyperparameters") or {}
        ratio = m.metrics.get("wape_ratio")
        gate = (m.metrics.get("gate") or {}).get("summary") or "; ".join(m.gate_reasons)
        rows.append(
            {
                "created": _when(m.created_at),
                "version": m.version,
                "kind": str(m.metrics.get("model_kind", "forest")),
                "wape_ratio": round(float(ratio), 4) if isinstance(ratio, int | float) else None,
                "gate": ("passed" if m.gate_passed else "failed") + (f": {gate}" if gate else ""),
                "status": m.status,
                "decided_by": m.decided_by,
                "decided_at": _when(m.status_changed_at) if m.decided_by else "",
                "reason": m.decision_reason,
                "timezone": str(hp.get("timezone", "")),
                "settings": ", ".join(
                    f"{k}={hp[k]}"
                    for k in ("holiday_country", "horizon_hours", "backtest_days", "n_estimators")
                    if k in hp
                ),
            }
        )
    return rows


def history_table(versions: Sequence[ModelVersion]) -> dg.TableMetadataValue:
    """The customer's recent versions as a table in the model's materialization."""
    records = history_records(versions[:HISTORY_LENGTH])
    kinds = {"wape_ratio": "float"}
    columns = list(records[0]) if records else ["version"]
    return dg.MetadataValue.table(
        records=[dg.TableRecord({k: v for k, v in r.items() if v is not None}) for r in records],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, kinds.get(c, "string")) for c in columns]),
    )


# The Launchpad job ---------------------------------------------------------------------------


class ModelDecisionConfig(dg.Config):
    """A decision on one customer's model version."""

    customer_id: str = Field(description="The customer whose model is decided on.")
    version: str = Field(
        default="",
        description="The model version (see the model's history table). Empty: the customer's "
        "newest version waiting for approval (PendingManualApproval).",
    )
    decision: ModelDecision = Field(description="Approved or Rejected.")
    reason: str = Field(description="Why; kept with the decision and shown in the history.")
    decided_by: str = Field(description="Who decides (name or e-mail); kept with the decision.")


@dg.op(name="decide_on_model")
def decide_on_model(
    context: dg.OpExecutionContext, config: ModelDecisionConfig, registry: ModelRegistry
) -> None:
    """Record the decision in the model registry and say in one line what was decided and which
    model forecasts the customer from the next inference run."""
    try:
        decision = decide(
            registry,
            config.customer_id,
            config.decision.value,
            reason=config.reason,
            decided_by=config.decided_by,
            version=config.version or None,
        )
    except ApprovalError as exc:
        # A refused decision is the user's to correct: its reason, not a traceback.
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    model = decision.model
    context.log.info(decision.line())
    context.instance.add_run_tags(
        context.run_id,
        {DECISION_TAG: f"{model.customer_id} {model.version} {model.status}"[:200]},
    )
    # On the model's page, in the customer's partition, beside its materializations (unless
    # the partition was deleted since the model was trained).
    partitions = customers_partitions_def.name
    if partitions and context.instance.has_dynamic_partition(partitions, model.customer_id):
        _observe(context, registry, decision)


def _observe(context: dg.OpExecutionContext, registry: ModelRegistry, decision: Decision) -> None:
    from forecast_assets.assets.model import KEY  # the model asset the decision is about

    model = decision.model
    context.log_event(
        dg.AssetObservation(
            asset_key=KEY,
            partition=model.customer_id,
            description=decision.line(),
            metadata={
                "model_version": model.version,
                "approval_status": model.status,
                "previous_status": decision.previous_status,
                "decided_by": model.decided_by,
                "decision_reason": model.decision_reason,
                "forecast_by": decision.forecast_by,
                "registry": registry.where,
            },
        )
    )


@dg.job(
    name="model_approval_job",
    tags={"forecast-assets/kind": "approval"},
)
def model_approval_job() -> None:
    """Approve or reject a customer's model version: Launchpad config customer_id, version
    (empty: the newest one waiting for approval), decision, reason and decided_by. Recorded in
    the model registry with who, when and why; the customer's next forecast follows it."""
    decide_on_model()


# Decisions made in SageMaker -----------------------------------------------------------------

MAX_CUSTOMERS_PER_TICK = 20


@dg.sensor(
    name="model_registry_sensor",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def model_registry_sensor(
    context: dg.SensorEvaluationContext, registry: ModelRegistry
) -> dg.SkipReason:
    """Keeps the model registry's statuses in step: takes over decisions made in the SageMaker
    Model Registry (console, Studio) and registers versions that have no model package yet.
    At most 20 customers per tick, in turn (the cursor names the last one checked); starts no
    runs. In the local environment the database is the registry and there is nothing to pull."""
    customers = registry.database.customers_with_models()
    if not customers:
        return dg.SkipReason("no customer has a model version yet")
    after = context.cursor or ""
    rest = [c for c in customers if c > after]
    batch = (rest + [c for c in customers if c <= after])[:MAX_CUSTOMERS_PER_TICK]
    changes = registry.pull_decisions(batch)
    context.update_cursor(batch[-1] if len(batch) < len(customers) else "")
    for change in changes:
        context.log.info(change.line)
    checked = f"{len(batch)} of {len(customers)} customers ({batch[0]} … {batch[-1]})"
    if not changes:
        return dg.SkipReason(f"checked {checked} in {registry.where}: nothing to change")
    return dg.SkipReason(
        f"checked {checked}: {len(changes)} change(s): " + " | ".join(c.line for c in changes)
    )


# The command line ----------------------------------------------------------------------------


def _registry() -> ModelRegistry:
    """The registry the code location uses in this environment, with its settings resolved."""
    from forecast_assets.backfill import load_env_file

    load_env_file()  # as dagster dev does: the sagemaker environment's settings live in .env
    from forecast_assets.definitions import resources_for

    resources = resources_for(current_environment())
    with dg.build_resources({"registry": resources["registry"]}) as built:
        return built.registry


def _print_history(registry: ModelRegistry, customer: str | None) -> int:
    if customer is None:
        customers = registry.database.customers_with_models()
        print("\n".join(customers) if customers else "no customer has a model version yet")
        return 0
    versions = registry.database.model_versions(customer)
    if not versions:
        print(f"forecast-models: customer '{customer}' has no model versions", file=sys.stderr)
        return 2
    print(f"customer '{customer}': {len(versions)} model version(s), newest first")
    for row in history_records(versions):
        ratio = (
            f", backtest WAPE {row['wape_ratio']} x seasonal naive's" if row["wape_ratio"] else ""
        )
        decided = (
            f"by {row['decided_by']}, {row['decided_at']}: {row['reason']}"
            if row["decided_by"]
            else "not yet"
        )
        print(
            f"\n{row['version']}  {row['status']}\n"
            f"  created   {row['created']}, {row['kind']}{ratio}\n"
            f"  gate      {row['gate']}\n"
            f"  decided   {decided}\n"
            f"  settings  timezone={row['timezone']}, {row['settings']}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``forecast-models list [CUSTOMER]``, ``approve|reject CUSTOMER [VERSION] --reason ...``"""
    parser = argparse.ArgumentParser(
        prog="forecast-models",
        description="Model history, and approving or rejecting a customer's model version, in "
        "the model registry the Dagster UI uses (FORECAST_ENV, FORECAST_DATA_HOME, .env).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="a customer's versions, newest first")
    listing.add_argument("customer", nargs="?", help="omit to list customers with models")
    for name in ("approve", "reject"):
        sub = commands.add_parser(name, help=f"{name} a version (default: newest pending)")
        sub.add_argument("customer")
        sub.add_argument("version", nargs="?", default=None)
        sub.add_argument("--reason", required=True, help="why (kept with the decision)")
        sub.add_argument("--by", default=None, help="who decides (default: $USER, the login name)")
    args = parser.parse_args(argv)
    # Loading the definitions warns about Dagster preview APIs: not the user's concern here.
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    try:
        registry = _registry()
    except dg.DagsterInvalidConfigError as exc:
        # An unset variable of the environment's settings: say which, not a traceback.
        unset = sorted(set(re.findall(r'environment variable "(\w+)"', str(exc))))
        problem = (
            f"{', '.join(unset)} not set (FORECAST_ENV={current_environment()}: see .env.example)"
            if unset
            else str(exc).splitlines()[0]
        )
        print(f"forecast-models: {problem}", file=sys.stderr)
        return 2
    if args.command == "list":
        return _print_history(registry, args.customer)
    by = args.by or os.environ.get("USER") or getpass.getuser()
    try:
        decision = decide(
            registry,
            args.customer,
            "Approved" if args.command == "approve" else "Rejected",
            reason=args.reason,
            decided_by=by,
            version=args.version,
        )
    except ApprovalError as exc:
        print(f"forecast-models: {exc}", file=sys.stderr)
        return 2
    except dg.Failure as exc:  # SageMaker refused a registry call; nothing was decided
        print(f"forecast-models: {exc.description}", file=sys.stderr)
        return 1
    print(decision.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``make demo``: demo meter data for several customers, then the whole graph for each.

Writes demo files into the landing area (never replacing a raw file that is already there),
adds the customers to the partition set, runs ``forecast_job`` for every customer against the
Dagster instance in ``DAGSTER_HOME`` (so ``make ui`` shows the same runs), materializes the
customer overview, and prints one line per customer. Exits non-zero if any customer's run failed.

So that the UI has something to act on, the fourth customer is trained under a strict gate (its
model must halve seasonal naive's error, which the demo data does not allow: it is rejected and
the customer is forecast by seasonal naive) and the fifth without auto-approval (its model waits
for someone to approve it). ``--no-showcase`` trains every customer with the defaults.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import dagster as dg
import pandas as pd

from forecast_assets import paths
from forecast_assets.demo_data import DEMO_CUSTOMERS, demo_end_date, generate_customer_files
from forecast_assets.partitions import customers_partitions_def
from resources.storage import ObjectStore, join_uri


@dataclass
class LandingReport:
    written: int = 0
    unchanged: int = 0
    kept_different: int = 0


def land_demo_files(
    store: ObjectStore,
    customer_ids: Sequence[str],
    *,
    days: int,
    end: pd.Timestamp,
    seed: int = 0,
) -> LandingReport:
    """Write demo files for the given customers; raw files already landed are never replaced."""
    report = LandingReport()
    by_id = {c.customer_id: c for c in DEMO_CUSTOMERS}
    for customer_id in customer_ids:
        customer = by_id[customer_id]
        prefix = paths.landing_prefix(store, customer_id)
        for name, data in generate_customer_files(customer, end=end, days=days, seed=seed).items():
            uri = join_uri(prefix, name)
            if not store.exists(uri):
                store.write_bytes(uri, data)
                report.written += 1
            elif store.read_bytes(uri) == data:
                report.unchanged += 1
            else:
                report.kept_different += 1
    return report


def _metadata(result: dg.ExecuteInProcessResult, key: Sequence[str]) -> dict:
    asset_key = dg.AssetKey(list(key))
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key == asset_key:
            return {k: v.value for k, v in materialization.metadata.items()}
    return {}


def _gate(result: dg.ExecuteInProcessResult) -> str:
    status = _metadata(result, ["models", "load_forecast_model"]).get("approval_status")
    if status == "PendingManualApproval":
        return "PENDING APPROVAL"
    for event in result.get_asset_check_evaluations():
        if event.check_name == "quality_gate":
            return "APPROVED" if event.passed else "REJECTED"
    return "not evaluated"


# What the showcase customers are trained with (see the module docstring).
SHOWCASE = {
    3: ("strict gate, to show a rejection", {"max_wape_ratio": 0.5}),
    4: ("no auto-approval, to show approving a model", {"auto_approve": False}),
}
TRAINING_OP = "models__load_forecast_model"


def summary_line(customer: str, result: dg.ExecuteInProcessResult) -> str:
    """One line per customer: data, the new model against naive, and what forecast it got."""
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure]
        error = failures[0].step_failure_data.error if failures else None
        reason = error.message.strip().splitlines()[0] if error else "run failed"
        step = failures[0].step_key if failures else "?"
        return f"{customer:<20} FAILED in {step}: {reason}"
    pre = _metadata(result, ["preprocessed", "load"])
    model = _metadata(result, ["models", "load_forecast_model"])
    forecast = _metadata(result, ["forecasts", "load_forecast"])
    reused = " (reused)" if forecast.get("reused") else ""
    return (
        f"{customer:<20} {pre.get('rows', 0):>7} rows {pre.get('devices', 0)} devices | "
        f"model {model.get('model_version', '?')}: WAPE "
        f"{model.get('model_wape', float('nan')):.1f}% vs naive "
        f"{model.get('baseline_wape', float('nan')):.1f}%, {_gate(result)} | "
        f"forecast{reused} by {forecast.get('source', '?')}: {forecast.get('rows', 0)} rows -> "
        f"{forecast.get('uri', '-')}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forecast-demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--customers", type=int, default=5, help=f"how many (max {len(DEMO_CUSTOMERS)})"
    )
    parser.add_argument("--days", type=int, default=365, help="days of 15-minute history")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-showcase",
        dest="showcase",
        action="store_false",
        help="train every customer with the defaults (no rejected or pending model)",
    )
    args = parser.parse_args(argv)
    # Dagster's own Pipes reader uses a preview API internally; that is not the user's concern.
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)

    from forecast_assets.assets import REPORT_ASSETS
    from forecast_assets.definitions import defs

    customers = [c.customer_id for c in DEMO_CUSTOMERS[: args.customers]]
    store = cast(ObjectStore, (defs.resources or {})["store"])
    landed = land_demo_files(store, customers, days=args.days, end=demo_end_date(), seed=args.seed)
    print(
        f"landing: {landed.written} file(s) written, {landed.unchanged} already there"
        + (
            f", {landed.kept_different} different file(s) left untouched"
            if landed.kept_different
            else ""
        )
    )

    instance = dg.DagsterInstance.get()
    assert customers_partitions_def.name is not None
    instance.add_dynamic_partitions(customers_partitions_def.name, customers)
    job = defs.resolve_job_def("forecast_job")
    failed = 0
    for i, customer in enumerate(customers):
        why, training = SHOWCASE.get(i, ("", {})) if args.showcase else ("", {})
        result = job.execute_in_process(
            instance=instance,
            partition_key=customer,
            raise_on_error=False,
            run_config={
                # The full event log is in the instance (make ui); the terminal gets one line each.
                "loggers": {"console": {"config": {"log_level": "WARNING"}}},
                **({"ops": {TRAINING_OP: {"config": training}}} if training else {}),
            },
        )
        # A model rejected by its gate is the gate working: the customer is still forecast.
        failed += not result.success
        print(summary_line(customer, result) + (f" [{why}]" if why else ""), flush=True)
    print(f"{len(customers) - failed} of {len(customers)} customer(s) forecast, {failed} failed")
    overview = dg.materialize(
        REPORT_ASSETS,
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    print(
        "overview: reports/customer_overview "
        + ("materialized (make ui, then open it)" if overview.success else "FAILED")
    )
    return 1 if failed or not overview.success else 0


if __name__ == "__main__":
    sys.exit(main())

"""``forecast-backfill``: the UI's "backfill all customers", from the command line.

It submits the same thing the UI's Launch backfill does, an asset backfill of one job's assets
over the chosen customers, to the Dagster instance in ``DAGSTER_HOME``. The daemon (started by
``make ui``, or ``dagster-daemon run`` in a deployment) then cuts it into runs by the assets'
backfill policy (``FORECAST_BACKFILL_BATCH_SIZE`` customers per run) and launches them through
the run queue, where the SageMaker pools cap how many jobs run at once. ``--wait`` follows the
backfill until it ends and exits non-zero if any run failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence

import dagster as dg

# Dagster has no public API for submitting an asset backfill outside GraphQL; this is the call
# its GraphQL mutation makes. The version is pinned in requirements.lock.
from dagster._core.execution.backfill import (
    BULK_ACTION_TERMINAL_STATUSES,
    BulkActionStatus,
    PartitionBackfill,
)
from dagster._core.utils import make_new_backfill_id

from forecast_assets.customers import InvalidCustomerIdError, validate_customer_id
from forecast_assets.partitions import customers_partitions_def

BACKFILL_TAG = "dagster/backfill"


class BackfillError(ValueError):
    """The backfill cannot be submitted as asked."""


def submit_backfill(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    job_name: str,
    customers: Sequence[str] | None = None,
    title: str | None = None,
) -> PartitionBackfill:
    """Submit an asset backfill of ``job_name``'s assets for ``customers`` (None: all of them)."""
    partitions_name = customers_partitions_def.name
    assert partitions_name is not None
    known = list(instance.get_dynamic_partitions(partitions_name))
    if customers is None:
        selected = known
    else:
        try:
            selected = [validate_customer_id(c) for c in customers]
        except InvalidCustomerIdError as exc:
            raise BackfillError(str(exc)) from exc
        unknown = [c for c in selected if c not in known]
        if unknown:
            raise BackfillError(
                f"not in the customers partition set: {', '.join(unknown)} "
                "(add them with forecast-customers add, or let the sensor find their files)"
            )
    if not selected:
        raise BackfillError("there are no customers to backfill (forecast-customers list)")
    try:
        job = defs.resolve_job_def(job_name)
    except dg.DagsterInvariantViolationError as exc:
        raise BackfillError(f"no job named {job_name!r}") from exc

    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=defs.resolve_asset_graph(),
        partition_names=selected,
        asset_selection=sorted(job.asset_layer.selected_asset_keys),
        backfill_timestamp=time.time(),
        tags={"forecast-assets/job": job_name, "forecast-assets/submitted-by": "forecast-backfill"},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=title or f"{job_name}: {len(selected)} customer(s)",
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill


def wait_for_backfill(
    instance: dg.DagsterInstance,
    backfill_id: str,
    *,
    poll_seconds: float = 5.0,
    timeout_seconds: float | None = None,
    echo: Callable[[str], None] = print,
) -> BulkActionStatus:
    """Follow a backfill until it ends; prints its runs by status whenever that changes."""
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    last = ""
    while True:
        backfill = instance.get_backfill(backfill_id)
        if backfill is None:
            raise BackfillError(f"no backfill {backfill_id} in this instance")
        runs = instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL_TAG: backfill_id}))
        counts = Counter(run.status.value for run in runs)
        line = f"{backfill.status.value}: " + (
            ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items()))
            or "no runs yet"
        )
        if line != last:
            echo(line)
            last = line
        if backfill.status in BULK_ACTION_TERMINAL_STATUSES:
            return backfill.status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"backfill {backfill_id} still {backfill.status.value}")
        time.sleep(poll_seconds)


def load_env_file(folder: str = ".") -> None:
    """Read ``.env`` from ``folder`` as ``dagster dev`` and the code location do, so the batch size
    set there applies here too. A variable already set in the shell wins."""
    from dagster._core.secrets.env_file import get_env_var_dict

    for key, value in get_env_var_dict(folder).items():
        os.environ.setdefault(key, value)


def main(argv: list[str] | None = None) -> int:
    load_env_file()  # before the definitions are built: their backfill policy reads the batch size
    from forecast_assets.definitions import defs
    from forecast_assets.environment import backfill_batch_size

    parser = argparse.ArgumentParser(prog="forecast-backfill", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every customer in the partition set")
    which.add_argument("--customers", help="comma-separated customer ids")
    parser.add_argument(
        "--job",
        default="forecast_job",
        help="forecast_job (default), training_job or inference_job",
    )
    parser.add_argument("--title", help="shown in the UI's backfill list")
    parser.add_argument("--wait", action="store_true", help="follow the backfill until it ends")
    args = parser.parse_args(argv)

    instance = dg.DagsterInstance.get()
    customers = None if args.all else [c.strip() for c in args.customers.split(",") if c.strip()]
    try:
        backfill = submit_backfill(instance, defs, args.job, customers, args.title)
    except BackfillError as exc:
        print(f"forecast-backfill: {exc}", file=sys.stderr)
        return 2
    size = backfill_batch_size()
    assert customers_partitions_def.name is not None
    count = len(customers or instance.get_dynamic_partitions(customers_partitions_def.name))
    print(
        f"submitted backfill {backfill.backfill_id}: {args.job} for {count} customer(s), "
        f"{size} per run (about {-(-count // size)} runs)\n"
        f"the daemon runs it (make ui, or dagster-daemon run); "
        f"in the UI: /runs/b/{backfill.backfill_id}"
    )
    if not args.wait:
        return 0
    status = wait_for_backfill(instance, backfill.backfill_id)
    return 0 if status == BulkActionStatus.COMPLETED_SUCCESS else 1


if __name__ == "__main__":
    sys.exit(main())

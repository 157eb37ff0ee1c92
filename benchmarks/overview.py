"""The customer overview's reads of the Dagster instance at 1,000 to 10,000 customers.

``python -m benchmarks.overview [--customers 1000 10000] [--sample 200] [--out PATH]``

For each size, a fresh instance gets that many customers, each with what a forecast run leaves: a materialization of every step asset
(``forecasts.STEPS``) and an evaluation of every partitioned check, as runless events; 1 % of
the customers have a failed check, 1 % a batch failure (an observation with ``failed_reason``
newer than the step's materialization). Then it times:

- ``facts``: ``InstanceFacts.load``, what ``reports/customer_overview`` now reads of the
  instance for all customers at once (a few queries per asset and per check, plus one per
  customer that has something to report), checked against what was planted;
- ``per_customer``: the reads the overview made before, per customer (every check's latest
  completed evaluation, every step's latest observation and materialization), on the first
  ``--sample`` customers, and that time per customer times the size (**extrapolated**, and
  said so in the output).

The overview's other reads per customer (latest run, model versions, two published pointers)
are the same before and after and are not populated here. CPU is this process's.

The instance is Dagster's ephemeral one: its event log is SQLite in memory, the same tables and
queries as the local instance's files, without their disk and connection costs (writing the
events to files takes about 25 ms each here, an hour for 10,000 customers). Every query is
cheaper here than on the local files or PostgreSQL (15-20 ms per connection there:
``benchmarks/partitions.py``), and the per-customer reads, with about twenty queries per
customer, gain the most from that.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.partitions import timed
from benchmarks.run import REPO_ROOT, code_state, log, machine_info

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "overview_results.json"
EVERY = 100  # one customer in EVERY has a failed check, another a batch failure


def populate(instance: Any, customers: Sequence[str]) -> dict[str, set[str]]:
    """What a forecast run leaves per customer, as runless events; returns the planted
    failures."""
    import dagster as dg

    from forecast_assets.assets.common import FAILED_REASON
    from forecast_assets.assets.overview import CHECKED_ASSETS, STEPS

    instance.add_dynamic_partitions("customers", list(customers))
    planted: dict[str, set[str]] = {"failed_check": set(), "batch_failure": set()}
    for i, customer in enumerate(customers):
        for assets_def in STEPS:
            instance.report_runless_asset_event(
                dg.AssetMaterialization(assets_def.key, partition=customer)
            )
        failing = i % EVERY == 1
        for assets_def in CHECKED_ASSETS:
            for spec in assets_def.check_specs:
                instance.report_runless_asset_event(
                    dg.AssetCheckEvaluation(
                        asset_key=spec.asset_key,
                        check_name=spec.name,
                        passed=not failing,
                        partition=customer,
                        description="planted" if failing else None,
                    )
                )
        if failing:
            planted["failed_check"].add(customer)
        if i % EVERY == 2:
            instance.report_runless_asset_event(
                dg.AssetObservation(
                    STEPS[0].key, partition=customer, metadata={FAILED_REASON: "planted"}
                )
            )
            planted["batch_failure"].add(customer)
    return planted


def per_customer_reads(instance: Any, customer: str) -> int:
    """The overview's instance reads for one customer before ``InstanceFacts``: the latest
    completed evaluation of every check, the latest observation (and, when it has a reason,
    materialization) of every step. Returns the number of reads."""
    import dagster as dg
    from dagster._core.event_api import PartitionKeyFilter

    from forecast_assets.assets.overview import CHECKED_ASSETS, COMPLETED, STEPS

    reads = 0
    for assets_def in CHECKED_ASSETS:
        for spec in assets_def.check_specs:
            instance.event_log_storage.get_asset_check_execution_history(
                spec.key,
                limit=1,
                status=COMPLETED,
                partition_filter=PartitionKeyFilter(key=customer),
            )
            reads += 1
    for assets_def in STEPS:
        partition = dg.AssetRecordsFilter(asset_key=assets_def.key, asset_partitions=[customer])
        if instance.fetch_observations(partition, limit=1).records:
            instance.fetch_materializations(partition, limit=1)
            reads += 1
        reads += 1
    return reads


def measure(size: int, sample: int) -> dict[str, Any]:
    import dagster as dg

    from forecast_assets.assets.overview import InstanceFacts

    customers = [f"cust-{i:06d}" for i in range(1, size + 1)]
    with dg.DagsterInstance.ephemeral() as instance:
        populate_time, planted = timed(lambda: populate(instance, customers))
        log(f"{size} customers populated in {populate_time['wall_s']:.0f} s")
        facts_time, facts = timed(lambda: InstanceFacts.load(instance, customers))
        assert set(facts.failed_checks) == planted["failed_check"], "failed checks differ"
        assert set(facts.batch_failures) == planted["batch_failure"], "batch failures differ"
        sampled = customers[:sample]
        per_time, reads = timed(lambda: sum(per_customer_reads(instance, c) for c in sampled))
    per_customer_cpu = per_time["cpu_s"] / len(sampled)
    per_customer_wall = per_time["wall_s"] / len(sampled)
    return {
        "customers": size,
        "populate": populate_time,
        "events_per_customer": "4 materializations + every partitioned check's evaluation",
        "planted": {k: len(v) for k, v in planted.items()},
        "facts": facts_time,
        "per_customer_sampled": {
            "customers": len(sampled),
            "reads": reads,
            **per_time,
            "cpu_ms_per_customer": round(1000 * per_customer_cpu, 2),
            "wall_ms_per_customer": round(1000 * per_customer_wall, 2),
        },
        "per_customer_extrapolated_to_all": {
            "cpu_s": round(per_customer_cpu * size, 1),
            "wall_s": round(per_customer_wall * size, 1),
            "method": f"the sample's time per customer x {size}: extrapolated, not measured",
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overview", description=__doc__)
    parser.add_argument("--customers", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    started = time.time()
    results = {
        "command": "python -m benchmarks.overview "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "code": code_state(),
        "sizes": [measure(size, args.sample) for size in args.customers],
    }
    results["total_seconds"] = round(time.time() - started, 1)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    for r in results["sizes"]:
        log(
            f"{r['customers']} customers: InstanceFacts.load {r['facts']['wall_s']:.2f} s wall "
            f"{r['facts']['cpu_s']:.2f} s CPU; per-customer reads "
            f"{r['per_customer_sampled']['wall_ms_per_customer']:.1f} ms each, x "
            f"{r['customers']} = {r['per_customer_extrapolated_to_all']['wall_s']:.0f} s "
            "(extrapolated)"
        )
    log(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The customer overview's reads at 1,000 to 10,000 customers: the Dagster instance, the
published pointers and the model registry.

``python -m benchmarks.overview [--customers 1000 10000] [--sample 200]
[--s3-customers 1000] [--out PATH]``

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
  said so in the output);
- ``runs``: ``failed_latest_runs`` (one query for the failed runs of the last week, then one per
  customer that has one) against the latest run read per customer, as before, on the sample.

Then, on a fresh object store and SQLite model registry holding, per customer, a published
preprocessed table and forecast and two model versions (the local store at every size, S3 on an
in-process moto server at ``--s3-customers``):

- ``published``: ``PublishedFacts.load``, the pointers read ``PARALLEL_READS`` at a time and
  every customer's newest model in one query, checked against the serial reads;
- ``published_per_customer``: the reads the overview made before, per customer (two pointers,
  then every model version), on the first ``--sample`` customers, extrapolated as above.

CPU is this process's (moto's server, in the S3 variant, runs in it too).

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
from datetime import UTC, datetime
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


def populate_runs(instance: Any, customers: Sequence[str]) -> set[str]:
    """A finished one-customer run per customer, as the daemon leaves them: 1 % of the customers'
    latest run failed, another 1 % had a failed run and then a good one. Returns the former."""
    import uuid

    import dagster as dg
    from dagster._core.storage.tags import PARTITION_NAME_TAG

    failed_last: set[str] = set()
    for i, customer in enumerate(customers):
        outcomes = [True]
        if i % EVERY == 3:
            outcomes = [False]
            failed_last.add(customer)
        elif i % EVERY == 4:
            outcomes = [False, True]
        for ok in outcomes:
            instance.add_run(
                dg.DagsterRun(
                    job_name="forecast_job",
                    run_id=str(uuid.uuid4()),
                    tags={PARTITION_NAME_TAG: customer},
                    status=dg.DagsterRunStatus.SUCCESS if ok else dg.DagsterRunStatus.FAILURE,
                )
            )
    return failed_last


def latest_run_failed(instance: Any, customer: str) -> bool:
    """The overview's run read per customer before ``failed_latest_runs``."""
    import dagster as dg
    from dagster._core.storage.tags import PARTITION_NAME_TAG

    runs = instance.get_runs(dg.RunsFilter(tags={PARTITION_NAME_TAG: customer}), limit=1)
    return bool(runs) and runs[0].status == dg.DagsterRunStatus.FAILURE


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

    from forecast_assets.assets.overview import InstanceFacts, failed_latest_runs

    customers = [f"cust-{i:06d}" for i in range(1, size + 1)]
    with dg.DagsterInstance.ephemeral() as instance:
        populate_time, planted = timed(lambda: populate(instance, customers))
        runs_time, failed_last = timed(lambda: populate_runs(instance, customers))
        log(f"{size} customers populated in {populate_time['wall_s'] + runs_time['wall_s']:.0f} s")
        facts_time, facts = timed(lambda: InstanceFacts.load(instance, customers))
        assert set(facts.failed_checks) == planted["failed_check"], "failed checks differ"
        assert set(facts.batch_failures) == planted["batch_failure"], "batch failures differ"
        assert set(facts.failed_latest_runs) == failed_last, "failed latest runs differ"
        sampled = customers[:sample]
        per_time, reads = timed(lambda: sum(per_customer_reads(instance, c) for c in sampled))
        wanted = set(customers)
        now = datetime.now(UTC)
        runs_bulk, _ = timed(lambda: failed_latest_runs(instance, wanted, now))
        runs_each, before = timed(lambda: {c for c in sampled if latest_run_failed(instance, c)})
        assert before == failed_last & set(sampled), "the latest-run reads differ"
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
        "runs": {
            "planted_failed_latest": len(failed_last),
            "failed_latest_runs": runs_bulk,
            "per_customer_sampled": {
                "customers": len(sampled),
                **runs_each,
                "wall_ms_per_customer": round(1000 * runs_each["wall_s"] / len(sampled), 2),
            },
            "per_customer_extrapolated_to_all_wall_s": round(
                runs_each["wall_s"] / len(sampled) * size, 1
            ),
        },
    }


def populate_published(store: Any, database: Any, customers: Sequence[str]) -> None:
    """Per customer: a published preprocessed table and forecast, and two model versions."""
    from forecast_assets import publication

    for customer in customers:
        publication.publish(
            store,
            publication.PREPROCESSED,
            customer,
            "v1",
            contents={"load.parquet": b"x"},
            info={"end": "2026-12-07T05:45:00+00:00"},
        )
        publication.publish(
            store,
            publication.FORECASTS,
            customer,
            "v1",
            contents={"forecast.parquet": b"x"},
            info={"issued_at": "2026-12-07T06:00:00+00:00", "source": "newest"},
        )
        for version, passed in (("m1", True), ("m2", False)):
            database.register_model(
                customer_id=customer,
                version=version,
                model_uri=f"s3://bucket/models/{customer}/{version}/model.tar.gz",
                metrics={"model_kind": "forest", "wape_ratio": 0.8 if passed else 1.2},
                gate_passed=passed,
                gate_reasons=[] if passed else ["planted"],
                run_id="run",
                auto_approve=True,
            )


def measure_published(size: int, sample: int, kind: str, root: Path) -> dict[str, Any]:
    """``PublishedFacts.load`` against the serial per-customer reads, on a ``kind`` store."""
    from forecast_assets import publication
    from forecast_assets.assets.overview import PublishedFacts
    from resources.database import Database
    from resources.storage import LocalObjectStore, S3ObjectStore

    customers = [f"cust-{i:06d}" for i in range(1, size + 1)]
    database = Database(url=f"sqlite:///{root / f'{kind}-{size}.db'}")
    if kind == "s3":
        import boto3

        bucket = f"overview-{size}"
        boto3.client("s3").create_bucket(
            Bucket=bucket,
            CreateBucketConfiguration={"LocationConstraint": "eu-central-1"},
        )
        store: Any = S3ObjectStore(bucket=bucket)
    else:
        store = LocalObjectStore(root=str(root / f"store-{size}"))
    populate_time, _ = timed(lambda: populate_published(store, database, customers))
    log(f"{kind}: {size} customers' pointers and models written in {populate_time['wall_s']:.0f} s")
    facts_time, facts = timed(lambda: PublishedFacts.load(store, database, customers))

    def serial(customer: str) -> tuple[Any, Any, Any]:
        return (
            publication.current(store, publication.PREPROCESSED, customer),
            publication.current(store, publication.FORECASTS, customer),
            database.model_versions(customer)[0],
        )

    sampled = customers[:sample]
    per_time, before = timed(lambda: {c: serial(c) for c in sampled})
    for c in sampled:  # the same answers
        assert (facts.tables[c], facts.forecasts[c], facts.newest_models[c]) == before[c], c
    per_wall, per_cpu = per_time["wall_s"] / len(sampled), per_time["cpu_s"] / len(sampled)
    return {
        "store": kind,
        "customers": size,
        "populate": populate_time,
        "published_facts": facts_time,
        "reads_per_customer": "2 pointer reads (GET on S3) + the model versions query",
        "published_per_customer_sampled": {
            "customers": len(sampled),
            **per_time,
            "wall_ms_per_customer": round(1000 * per_wall, 2),
        },
        "published_per_customer_extrapolated_to_all": {
            "cpu_s": round(per_cpu * size, 1),
            "wall_s": round(per_wall * size, 1),
            "method": f"the sample's time per customer x {size}: extrapolated, not measured",
        },
    }


def measure_all_published(sizes: Sequence[int], s3_sizes: Sequence[int], sample: int) -> list:
    import logging
    import os
    import tempfile

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise

    results = []
    with tempfile.TemporaryDirectory(prefix="overview-bench-") as tmp:
        for size in sizes:
            results.append(measure_published(size, sample, "local", Path(tmp)))
        if s3_sizes:
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            saved = dict(os.environ)
            os.environ.update(
                AWS_ACCESS_KEY_ID="bench",
                AWS_SECRET_ACCESS_KEY="bench",
                AWS_DEFAULT_REGION="eu-central-1",
                AWS_ENDPOINT_URL=f"http://{host}:{port}",
                AWS_CONFIG_FILE=os.devnull,
                AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            )
            try:
                for size in s3_sizes:
                    results.append(measure_published(size, sample, "s3", Path(tmp)))
            finally:
                os.environ.clear()
                os.environ.update(saved)
                server.stop()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overview", description=__doc__)
    parser.add_argument("--customers", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--s3-customers", type=int, nargs="*", default=[1000])
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
        "published": measure_all_published(args.customers, args.s3_customers, args.sample),
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
    for r in results["sizes"]:
        runs = r["runs"]
        log(
            f"{r['customers']} customers: failed_latest_runs "
            f"{runs['failed_latest_runs']['wall_s']:.2f} s; the latest run per customer "
            f"{runs['per_customer_sampled']['wall_ms_per_customer']:.1f} ms each, x "
            f"{r['customers']} = {runs['per_customer_extrapolated_to_all_wall_s']:.0f} s "
            "(extrapolated)"
        )
    for r in results["published"]:
        log(
            f"{r['store']}, {r['customers']} customers: PublishedFacts.load "
            f"{r['published_facts']['wall_s']:.2f} s wall {r['published_facts']['cpu_s']:.2f} s "
            f"CPU; per-customer reads "
            f"{r['published_per_customer_sampled']['wall_ms_per_customer']:.1f} ms each, x "
            f"{r['customers']} = {r['published_per_customer_extrapolated_to_all']['wall_s']:.0f} s "
            "(extrapolated)"
        )
    log(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

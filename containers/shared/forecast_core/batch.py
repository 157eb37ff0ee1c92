"""Batch mode of the job scripts: one SageMaker job works through a list of customers.

Starting a SageMaker job (provisioning, pulling the image, staging inputs) costs about as much
for one customer as for fifty, so every job script can also take a batch. The batch arrives as
an input (channel) named ``batch`` holding ``batch.json``::

    {"customers": [{"customer_id": "a"}, {"customer_id": "b", "model_version": "..."}]}

Customers are processed in that order, each by the same code as a one-customer job, with its
inputs and outputs in a folder named after it. One customer failing does not stop the others:
its reason is reported (Pipes: ``{"customer_id": ..., "error": ...}``), it writes no output
folder, and the job goes on. The job still completes, so SageMaker uploads the other customers'
outputs (it uploads nothing of a failed job) and the Dagster step publishes them and fails only
the failed customers' partitions. Only when every customer of a one-host job failed does the job
fail, with a summary of every reason: there is nothing to upload.

A job on several instances (``InstanceCount`` > 1) gives every host the whole batch (inputs are
``FullyReplicated``) and each host processes only its share (:func:`host_share`): customers
dealt round-robin in batch order by the host's place among the hosts, so ``algo-1`` of 3 takes
the 1st, 4th, 7th, … Each host writes only its customers' folders, so the hosts' outputs land
side by side under the job's output URIs. A host never exits 1 for its customers' failures,
even when all of its share failed: SageMaker fails the whole job when any instance fails, which
would throw away the other hosts' customers.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from forecast_core import runtime
from forecast_core.runtime import Cluster, JobFailed, Report

BATCH_FILE = "batch.json"
T = TypeVar("T")


class BatchFileError(ValueError):
    """batch.json is missing or malformed; the message names the file."""


class BatchFailed(JobFailed):
    """Some customers of a batch failed; the message lists each one's reason."""


def read_batch(path: Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The customers of a batch file, in order.

    Each entry must be an object with a ``customer_id`` string that can name a folder, and each
    field in ``required`` as a string; a customer may be listed only once.
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BatchFileError(f"batch file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BatchFileError(f"batch file {path}: cannot be read as JSON: {exc}") from exc
    customers = data.get("customers") if isinstance(data, dict) else None
    if not isinstance(customers, list) or not customers:
        raise BatchFileError(f'batch file {path}: "customers" must be a non-empty list')
    seen: set[str] = set()
    for index, entry in enumerate(customers):
        customer = _customer_id(path, index, entry)
        if customer in seen:
            raise BatchFileError(f"batch file {path}: customer '{customer}' is listed twice")
        seen.add(customer)
        for field in required:
            if not isinstance(entry.get(field), str):
                raise BatchFileError(
                    f"batch file {path}: customer '{customer}' has no \"{field}\" string"
                )
    return customers


def _customer_id(path: Path, index: int, entry: Any) -> str:
    customer = entry.get("customer_id") if isinstance(entry, dict) else None
    if not isinstance(customer, str):
        raise BatchFileError(
            f'batch file {path}: customers[{index}] must be an object with a "customer_id" string'
        )
    # The id names the customer's folders: it must not reach outside them.
    if customer in ("", ".", "..") or any(c in customer for c in "/\\\0"):
        raise BatchFileError(
            f"batch file {path}: customers[{index}] has customer_id {customer!r}, "
            "which cannot name a folder"
        )
    return customer


def host_share(entries: Sequence[T], host: Cluster) -> list[T]:
    """The entries ``host`` processes: every ``len(hosts)``-th, starting at its index.

    Deterministic (the batch's order and the sorted hosts decide it), and every entry falls to
    exactly one host. A host may get none when there are more hosts than entries.
    """
    return list(entries[host.index :: len(host.hosts)])


def run_each(
    report: Report,
    entries: Sequence[Mapping[str, Any]],
    work: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    host: Cluster | None = None,
) -> list[str]:
    """Run ``work`` for each batch entry of this host's share (:func:`host_share`; ``host``
    defaults to :func:`forecast_core.runtime.cluster`) in order; it returns the customer's
    metadata to report.

    A customer's ``Exception`` is logged and reported as that customer's failure, and the next
    customer starts. Returns the failed customers' reasons, after logging
    ``"<k> of <n> customers failed: <reason>; <reason>"`` (and which host, on several). Raises
    :class:`BatchFailed` with that summary only when every customer of a one-host job failed.
    """
    host = host or runtime.cluster()
    where = ""
    if host.is_multi_host:
        share = host_share(entries, host)
        where = f" on host {host.current_host}"
        names = ", ".join(str(e["customer_id"]) for e in share) or "none"
        report.log(
            f"host {host.current_host} ({host.index + 1} of {len(host.hosts)}) takes "
            f"{len(share)} of the batch's {len(entries)} customers: {names}"
        )
        entries = share
    failures: list[str] = []
    for number, entry in enumerate(entries, start=1):
        customer = entry["customer_id"]
        report.log(f"customer '{customer}' ({number} of {len(entries)})")
        try:
            metadata = work(entry)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            reason = failure_reason(customer, exc)
            report.customer_failure(customer, reason)
            failures.append(reason)
        else:
            report.materialization(metadata, customer=customer)
    if not failures:
        return failures
    summary = f"{len(failures)} of {len(entries)} customers failed{where}: " + "; ".join(failures)
    if len(failures) == len(entries) and not host.is_multi_host:
        raise BatchFailed(summary)
    report.log(f"{summary} (the others' outputs are written; the job completes)")
    return failures


def failure_reason(customer: str, exc: Exception) -> str:
    """The job scripts' own errors already name the customer (and file); others get both the
    customer and the error's type, as a one-customer job's failure reason has it."""
    message = str(exc)
    if f"customer '{customer}'" in message:
        return message
    return f"customer '{customer}': {type(exc).__name__}: {message}"

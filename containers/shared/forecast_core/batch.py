"""Batch mode of the job scripts: one SageMaker job works through a list of customers.

Starting a SageMaker job (provisioning, pulling the image, staging inputs) costs about as much
for one customer as for fifty, so every job script can also take a batch. The batch arrives as
an input (channel) named ``batch`` holding ``batch.json``::

    {"customers": [{"customer_id": "a"}, {"customer_id": "b", "model_version": "..."}]}

Customers are processed in that order, each by the same code as a one-customer job, with its
inputs and outputs in a folder named after it. One customer failing does not stop the others:
its reason is reported and the job goes on; at the end the job fails with a summary of every
failed customer, after the others' outputs have been written.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from forecast_core.runtime import JobFailed, Report

BATCH_FILE = "batch.json"


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


def run_each(
    report: Report,
    entries: Sequence[Mapping[str, Any]],
    work: Callable[[Mapping[str, Any]], Mapping[str, Any]],
) -> None:
    """Run ``work`` for each batch entry in order; it returns the customer's metadata to report.

    A customer's ``Exception`` is logged and reported as that customer's failure, and the next
    customer starts. Afterwards, if any failed, raises :class:`BatchFailed`:
    ``"<k> of <n> customers failed: <reason>; <reason>"``.
    """
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
    if failures:
        raise BatchFailed(
            f"{len(failures)} of {len(entries)} customers failed: " + "; ".join(failures)
        )


def failure_reason(customer: str, exc: Exception) -> str:
    """The job scripts' own errors already name the customer (and file); others get both the
    customer and the error's type, as a one-customer job's failure reason has it."""
    message = str(exc)
    if f"customer '{customer}'" in message:
        return message
    return f"customer '{customer}': {type(exc).__name__}: {message}"

"""The job side of SageMaker's container contract, and reporting back to Dagster through Pipes.

SageMaker gives a container its inputs and takes its outputs at fixed paths under ``/opt/ml``;
the training toolkit also exports them as ``SM_*`` variables. Scripts here read the variables and
fall back to the fixed paths, so they run unchanged in a prebuilt SageMaker image, in a custom
image built from ``containers/``, and in the local launcher (which points the variables at a job
directory on this machine).

A script that fails writes its reason where SageMaker looks for it: ``/opt/ml/output/failure`` for
training jobs (DescribeTrainingJob's FailureReason) and ``/opt/ml/output/message`` for
processing jobs (DescribeProcessingJob's ExitMessage).

A job with ``InstanceCount`` N runs the same container on N hosts, ``algo-1`` … ``algo-N``, with
identical environments; each learns which host it is from ``SM_CURRENT_HOST`` / ``SM_HOSTS``
(training toolkit) or ``resourceconfig.json`` (``/opt/ml/config/`` for processing,
``/opt/ml/input/config/`` for training), see :func:`cluster`. A batch job's hosts split its
customers (``forecast_core.batch``), and each host writes its Pipes messages to a place of its own
(:func:`host_message_params`), so that no host overwrites another's.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

JobKind = Literal["processing", "training"]

OPT_ML = Path("/opt/ml")
# SageMaker keeps only the first 1 KB of either file.
_REASON_LIMIT = 1024


def output_dir() -> Path:
    return Path(os.environ.get("SM_OUTPUT_DIR", OPT_ML / "output"))


def model_dir() -> Path:
    return Path(os.environ.get("SM_MODEL_DIR", OPT_ML / "model"))


def output_data_dir() -> Path:
    return Path(os.environ.get("SM_OUTPUT_DATA_DIR", OPT_ML / "output" / "data"))


def channel_dir(name: str) -> Path:
    return Path(os.environ.get(f"SM_CHANNEL_{name.upper()}", OPT_ML / "input" / "data" / name))


def input_config_dir() -> Path:
    return Path(os.environ.get("SM_INPUT_CONFIG_DIR", OPT_ML / "input" / "config"))


@dataclass(frozen=True)
class Cluster:
    """The hosts of a job (sorted by number: algo-10 follows algo-9) and which one this is."""

    current_host: str
    hosts: tuple[str, ...]

    @property
    def index(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def is_multi_host(self) -> bool:
        return len(self.hosts) > 1

    @classmethod
    def of(cls, current_host: str, hosts: Iterable[str]) -> Cluster:
        ordered = sort_hosts(hosts)
        if current_host not in ordered:
            raise JobFailed(f"current host {current_host!r} is not one of the hosts {ordered}")
        if len(set(ordered)) != len(ordered):
            raise JobFailed(f"the hosts {ordered} name a host twice")
        return cls(current_host, tuple(ordered))


SINGLE_HOST = Cluster("algo-1", ("algo-1",))


def sort_hosts(hosts: Iterable[str]) -> list[str]:
    """Hosts in SageMaker's order, by the number they end in (``algo-2`` before ``algo-10``)."""

    def key(host: str) -> tuple[str, int, str]:
        number = re.search(r"(\d+)$", host)
        stem = host[: number.start()] if number else host
        return stem, int(number.group(1)) if number else -1, host

    return sorted(hosts, key=key)


def host_names(count: int) -> list[str]:
    """The hosts SageMaker names for ``count`` instances: ``algo-1`` … ``algo-<count>``."""
    return [f"algo-{number}" for number in range(1, count + 1)]


def cluster() -> Cluster:
    """Which host of the job this container is, and all of them.

    The training toolkit exports ``SM_CURRENT_HOST`` and ``SM_HOSTS`` (the local sandbox sets
    them for processing jobs too). Otherwise SageMaker's ``resourceconfig.json``, e.g.
    ``{"current_host": "algo-2", "hosts": ["algo-1", "algo-2", "algo-3"]}``: at
    ``/opt/ml/config/`` in a processing container, at ``/opt/ml/input/config/`` in a training
    one. Without either, a single host.
    """
    current, hosts = os.environ.get("SM_CURRENT_HOST"), os.environ.get("SM_HOSTS")
    if current and hosts:
        try:
            return Cluster.of(current, json.loads(hosts))
        except (json.JSONDecodeError, TypeError) as exc:
            raise JobFailed(f"SM_HOSTS is not a JSON list of host names: {hosts!r}") from exc
    for path in (
        OPT_ML / "config" / "resourceconfig.json",
        input_config_dir() / "resourceconfig.json",
    ):
        if path.exists():
            try:
                config = json.loads(path.read_text())
                return Cluster.of(str(config["current_host"]), [str(h) for h in config["hosts"]])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise JobFailed(f"{path} has no current_host and hosts: {exc}") from exc
    return SINGLE_HOST


def host_message_params(params: Mapping[str, Any], host: str, hosts: int) -> dict[str, Any]:
    """Where ``host`` writes its Pipes messages, given where the job was told to write them.

    Every instance of a job gets the same environment, so each derives a place of its own:
    ``<key_prefix>/<host>/<n>.json`` on S3, ``<path>.<host>`` for a message file. A single-host
    job writes where it was told, as before. The Dagster side reads from the same places (this
    function is its one definition).
    """
    out = dict(params)
    if hosts <= 1:
        return out
    if isinstance(params.get("key_prefix"), str):
        out["key_prefix"] = f"{params['key_prefix'].rstrip('/')}/{host}"
    elif isinstance(params.get("path"), str):
        out["path"] = f"{params['path']}.{host}"
    return out


def hyperparameters() -> dict[str, Any]:
    """Training hyperparameters. SageMaker stores every value as a string; JSON ones are decoded."""
    path = input_config_dir() / "hyperparameters.json"
    raw: Mapping[str, str] = json.loads(path.read_text()) if path.exists() else {}
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            decoded[key] = json.loads(value)
        except (TypeError, json.JSONDecodeError):
            decoded[key] = value
    return decoded


def write_failure(kind: JobKind, reason: str) -> None:
    name = "failure" if kind == "training" else "message"
    path = output_dir() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    # Cut at the byte limit, then drop a multi-byte character the cut may have split.
    path.write_bytes(
        reason.encode("utf-8")[:_REASON_LIMIT].decode("utf-8", "ignore").encode("utf-8")
    )


class JobFailed(Exception):
    """A failure whose message is already the job's whole reason: written without a type name."""


class Report:
    """Where a job script reports what it produced. Outside Dagster it prints to stdout.

    ``customer`` names which customer of a batch job the report is about; a one-customer job
    leaves it out.
    """

    def materialization(self, metadata: Mapping[str, Any], customer: str | None = None) -> None:
        label = "report:" if customer is None else f"report[{customer}]:"
        print(label, json.dumps(dict(metadata), default=str, sort_keys=True), flush=True)

    def customer_failure(self, customer: str, reason: str) -> None:
        """One customer of a batch job failed; the job goes on with the others."""
        print(f"failed[{customer}]: {reason}", flush=True)

    def log(self, message: str) -> None:
        print(message, flush=True)


class PipesReport(Report):
    """Reports to Dagster through a Pipes session, and to stdout as well.

    A batch job's step covers many partitions, so a customer's result travels as a custom message
    (``{"customer_id", "metadata"}`` or ``{"customer_id", "error"}``) for the Dagster side to
    turn into that partition's materialization, never as this step's own materialization.
    """

    def __init__(self, pipes: Any):
        self._pipes = pipes

    def materialization(self, metadata: Mapping[str, Any], customer: str | None = None) -> None:
        super().materialization(metadata, customer)
        if customer is None:
            self._pipes.report_asset_materialization(metadata=dict(metadata))
        else:
            self._pipes.report_custom_message({"customer_id": customer, "metadata": dict(metadata)})

    def customer_failure(self, customer: str, reason: str) -> None:
        super().customer_failure(customer, reason)
        self._pipes.report_custom_message({"customer_id": customer, "error": reason})

    def log(self, message: str) -> None:
        super().log(message)


@contextmanager
def open_report() -> Iterator[Report]:
    """A Pipes session when Dagster launched this job, otherwise a plain stdout report.

    The bootstrap parameters say where context and messages travel: through files on this
    machine for the local launcher, or through S3 for SageMaker (params carry a ``bucket``).
    """
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    class HostParamsLoader(PipesEnvVarParamsLoader):
        """The job's Pipes parameters, with this host's own place for messages."""

        def __init__(self, host: Cluster):
            super().__init__()
            self._host = host

        def load_messages_params(self) -> dict[str, Any]:
            return host_message_params(
                super().load_messages_params(), self._host.current_host, len(self._host.hosts)
            )

    params = HostParamsLoader(cluster())
    if not params.is_dagster_pipes_process():
        yield Report()
        return
    context_loader = message_writer = None
    if "bucket" in params.load_context_params() or "bucket" in params.load_messages_params():
        import boto3
        from dagster_pipes import PipesS3ContextLoader, PipesS3MessageWriter

        s3 = boto3.client("s3")
        if "bucket" in params.load_context_params():
            context_loader = PipesS3ContextLoader(client=s3)
        if "bucket" in params.load_messages_params():
            message_writer = PipesS3MessageWriter(client=s3)
    with open_dagster_pipes(
        params_loader=params, context_loader=context_loader, message_writer=message_writer
    ) as pipes:
        yield PipesReport(pipes)


def run_job(kind: JobKind, main: Callable[[Report], None]) -> None:
    """Run a job's main function with reporting; on any error write the reason and exit 1."""
    try:
        with open_report() as report:
            main(report)
    except Exception as exc:
        reason = str(exc) if isinstance(exc, JobFailed) else f"{type(exc).__name__}: {exc}"
        write_failure(kind, reason)
        traceback.print_exc(file=sys.stderr)
        sys.exit(1)

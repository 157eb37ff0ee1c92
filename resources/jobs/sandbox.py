"""Execute one SageMaker job request on this machine, the way SageMaker would run it.

A job directory stands in for the container: its ``opt/ml`` folder is laid out as SageMaker
lays out ``/opt/ml`` (processing inputs and outputs, ``input/data/<channel>``,
``input/config/hyperparameters.json``, ``model``, ``output``), every ``/opt/ml`` path in the
request is mapped into it, and the ``SM_*`` variables of SageMaker's training toolkit point at
it. Inputs are staged from an object store before the script starts (S3Prefix and ManifestFile,
as SageMaker does), the script runs as a subprocess with only the request's environment (plus
what the caller adds), under the request's time limit, and outputs are uploaded when it
succeeds. The one liberty taken: the ``python3`` of the entrypoint is a local interpreter,
standing in for the image.

What SageMaker's control plane does for a container, this module does for the job's process
group: a guard process beside the job kills the group if the process that launched it dies
(a run worker or step process killed by the OOM killer must not leave its job running), and
failures say what to fix: a job killed by a signal, or a full disk while staging, logging or
uploading. Each job directory keeps ``request.json`` (the request, written when the job starts),
``job.log`` and, once the job has ended, ``describe.json``; ``resources.jobs.cleanup`` prunes
the rest by those.

A job with ``InstanceCount`` N > 1 runs as N processes at once, one per host
(``algo-1`` … ``algo-N``), each in its own ``<job dir>/<host>/opt/ml`` with every input staged
(``FullyReplicated``), its own ``resourceconfig.json`` (``current_host``) and ``SM_CURRENT_HOST``
/ ``SM_HOSTS``, its own log (``<job dir>/<host>/job.log``; ``<job dir>/job.log`` has every
host's lines, each prefixed with its host). A processing host uploads its outputs to the
request's output URIs when it succeeds; a training job packs every host's ``/opt/ml/model`` into
its one ``model.tar.gz`` once all have succeeded. The time limit and a stop apply to every host;
the job is Failed if any host fails, with that host's reason. A single instance keeps the layout
above.

This module knows nothing of Dagster: :class:`~resources.jobs.local.LocalJobLauncher` runs it
inside a Pipes session, and the tests' fake SageMaker runs it behind a boto3-shaped API.
"""

import contextlib
import errno
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from forecast_core.runtime import host_names
from resources.storage import ObjectStore, join_uri

OPT_ML = "/opt/ml"
# Variables a process needs to start at all; nothing else leaks from this machine into a job.
PASSTHROUGH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
_POLL_SECONDS = 0.2
# Seconds a stopped job gets between SIGTERM and SIGKILL, here and in the guard.
STOP_GRACE_SECONDS = 10
# Files of a job directory that say what the job was and how it ended (kept by the pruning).
REQUEST_FILE, LOG_FILE, DESCRIBE_FILE = "request.json", "job.log", "describe.json"

JobType = Literal["processing", "training"]
JobStatus = Literal["Completed", "Failed", "Stopped"]


class JobSetupError(RuntimeError):
    """The request cannot be run (an input matches nothing, an unsupported data type, …)."""


class DiskFullError(RuntimeError):
    """No space left on the device while the platform (not the script) was writing."""

    def __init__(self, doing: str):
        super().__init__(f"no space left on device while {doing}")
        self.doing = doing


@dataclass
class SandboxResult:
    job_type: JobType
    name: str
    status: JobStatus
    failure_reason: str | None
    started_at: datetime
    ended_at: datetime
    inputs: dict[str, str]
    outputs: dict[str, str]
    job_dir: Path
    instance_type: str
    instance_count: int = 1
    exit_message: str | None = None
    """Processing: what the reported host's script wrote to /opt/ml/output/message (ExitMessage)."""
    host_status: dict[str, str] = field(default_factory=dict)
    """Each host's own status, on several instances."""

    def describe(self) -> dict[str, Any]:
        """The fields DescribeProcessingJob / DescribeTrainingJob would show."""
        kind = "Processing" if self.job_type == "processing" else "Training"
        out = {
            f"{kind}JobName": self.name,
            f"{kind}JobStatus": self.status,
            "FailureReason": self.failure_reason,
            "StartTime": self.started_at.isoformat(),
            "EndTime": self.ended_at.isoformat(),
            "Inputs": self.inputs,
            "Outputs": self.outputs,
            "InstanceCount": self.instance_count,
        }
        if self.host_status:
            out["Hosts"] = self.host_status
        return out


@dataclass
class _HostOutcome:
    host: str
    status: JobStatus
    reason: str | None
    exit_message: str | None = None


LogSink = Callable[[str], None]
# Asked while the job runs: falsy to go on; True (or a reason, as text) to stop the job.
StopFlag = Callable[[], bool | str | None]
# Gives each host of a multi-instance job its log sink (the fake SageMaker: one log stream each).
HostLogs = Callable[[str], LogSink]


class _SharedStop:
    """One stop flag for every host of a job: once asked to stop (or aborted), all stop."""

    def __init__(self, flag: StopFlag | None):
        self._flag = flag
        self._lock = threading.Lock()
        self._reason: bool | str | None = None

    def __call__(self) -> bool | str | None:
        with self._lock:
            if not self._reason and self._flag is not None:
                self._reason = self._flag()
            return self._reason

    def abort(self, reason: str) -> None:
        with self._lock:
            if not self._reason:
                self._reason = reason


class JobSandbox:
    """Runs job requests against ``store`` in job directories under ``jobs_root``."""

    def __init__(self, store: ObjectStore, jobs_root: Path, python: str):
        self.store = store
        self.jobs_root = jobs_root
        self.python = python

    # Processing ------------------------------------------------------------------------------

    def run_processing(
        self,
        request: Mapping[str, Any],
        *,
        extra_env: Mapping[str, str] | None = None,
        log: LogSink = print,
        stop_requested: StopFlag | None = None,
        host_logs: HostLogs | None = None,
    ) -> SandboxResult:
        """Run a CreateProcessingJob body: one process per instance (see the module doc).

        ``host_logs`` gives each host of a multi-instance job its own log sink; by default each
        host's lines go to ``log`` prefixed with ``[<host>]``.
        """
        name = request["ProcessingJobName"]
        cluster = request["ProcessingResources"]["ClusterConfig"]
        hosts = host_names(int(cluster.get("InstanceCount", 1)))
        job_dir = self._job_dir(name, request)
        started = datetime.now(UTC)
        inputs = {
            i["InputName"]: i["S3Input"]["S3Uri"] for i in request.get("ProcessingInputs", [])
        }
        output_specs = request.get("ProcessingOutputConfig", {}).get("Outputs", [])
        outputs = {o["OutputName"]: o["S3Output"]["S3Uri"] for o in output_specs}

        def one(host: str, host_dir: Path, sink: LogSink, stop: StopFlag | None) -> _HostOutcome:
            return self._processing_host(request, host, hosts, host_dir, extra_env, sink, stop)

        outcome, host_status = self._run_hosts(
            name, hosts, job_dir, one, log, stop_requested, host_logs
        )
        reason = with_advice(outcome.reason, name, _volume_gb(request, "ProcessingResources"))
        return self._finish(
            "processing",
            name,
            job_dir,
            started,
            outcome.status,
            reason,
            inputs,
            outputs,
            cluster["InstanceType"],
            instance_count=len(hosts),
            exit_message=outcome.exit_message,
            host_status=host_status,
        )

    def _processing_host(
        self,
        request: Mapping[str, Any],
        host: str,
        hosts: Sequence[str],
        host_dir: Path,
        extra_env: Mapping[str, str] | None,
        log: LogSink,
        stop_requested: StopFlag | None,
    ) -> _HostOutcome:
        """One instance of a processing job: stage, run, upload its outputs if it succeeded."""
        name = request["ProcessingJobName"]
        root = host_dir / "opt" / "ml"
        output_specs = request.get("ProcessingOutputConfig", {}).get("Outputs", [])
        try:
            with on_full_disk(f"preparing {root}"):
                root.mkdir(parents=True, exist_ok=True)
                (root / "config").mkdir(parents=True, exist_ok=True)
                # As SageMaker Processing tells a container which host it is.
                (root / "config" / "resourceconfig.json").write_text(
                    json.dumps({"current_host": host, "hosts": list(hosts)}, indent=2)
                )
            for spec in request.get("ProcessingInputs", []):
                s3 = spec["S3Input"]
                target = map_path(s3["LocalPath"], root)
                with on_full_disk(f"staging input '{spec['InputName']}' to {target}"):
                    self._stage(s3["S3Uri"], s3["S3DataType"], target)
            with on_full_disk(f"preparing {root}"):
                for spec in output_specs:
                    map_path(spec["S3Output"]["LocalPath"], root).mkdir(parents=True, exist_ok=True)
                (root / "output").mkdir(parents=True, exist_ok=True)
            app = request["AppSpecification"]
            command = [
                self.python if token in ("python", "python3") else map_token(token, root)
                for token in app.get("ContainerEntrypoint", [])
            ] + [map_token(a, root) for a in app.get("ContainerArguments", [])]
            if not command:
                raise JobSetupError(f"processing job {name} has no ContainerEntrypoint")
            env = self._environment(
                request.get("Environment", {}),
                {
                    **(extra_env or {}),
                    "SM_OUTPUT_DIR": str(root / "output"),
                    # The script reads resourceconfig.json's /opt/ml path on SageMaker; here the
                    # same facts come as the training toolkit's variables.
                    "SM_CURRENT_HOST": host,
                    "SM_HOSTS": json.dumps(list(hosts)),
                },
            )
            with on_full_disk(f"writing the job's log {host_dir / LOG_FILE}"):
                status, reason = execute(
                    name,
                    command,
                    env,
                    host_dir,
                    request["StoppingCondition"]["MaxRuntimeInSeconds"],
                    log,
                    stop_requested,
                )
            if status == "Completed":
                for spec in output_specs:
                    s3 = spec["S3Output"]
                    local = map_path(s3["LocalPath"], root)
                    with on_full_disk(
                        f"uploading output '{spec['OutputName']}' from {local} to {s3['S3Uri']}"
                    ):
                        self.store.upload_directory(local, s3["S3Uri"])
            elif reason is None:
                reason = failure_reason(root / "output" / "message", host_dir)
        except DiskFullError as exc:
            status, reason = "Failed", str(exc)
        message = root / "output" / "message"
        exit_message = message.read_text(errors="replace")[:1024] if message.exists() else None
        return _HostOutcome(host, status, reason, exit_message)

    def _run_hosts(
        self,
        name: str,
        hosts: Sequence[str],
        job_dir: Path,
        one: Callable[[str, Path, LogSink, StopFlag | None], _HostOutcome],
        log: LogSink,
        stop_requested: StopFlag | None,
        host_logs: HostLogs | None,
    ) -> tuple[_HostOutcome, dict[str, str]]:
        """Run ``one`` for each host: a single host in this thread and ``job_dir`` as before;
        several at once, each in ``job_dir/<host>``. Returns the job's outcome (that of a host
        that was stopped, else failed, else the first) and each host's status."""
        if len(hosts) == 1:
            return one(hosts[0], job_dir, log, stop_requested), {}
        stop = _SharedStop(stop_requested)
        lock = threading.Lock()
        outcomes: dict[str, _HostOutcome] = {}
        errors: list[BaseException] = []
        combined = (job_dir / LOG_FILE).open("w")

        def sink_for(host: str) -> LogSink:
            own = host_logs(host) if host_logs is not None else None

            def sink(line: str) -> None:
                with lock:
                    with contextlib.suppress(OSError):  # a full disk: the host's own log says
                        combined.write(f"[{host}] {line}\n")
                        combined.flush()
                    if own is not None:
                        own(line)
                    else:
                        log(f"[{host}] {line}")

            return sink

        def run(host: str) -> None:
            try:
                outcomes[host] = one(host, job_dir / host, sink_for(host), stop)
            except BaseException as exc:  # the log raised (an interrupted run), a bug, ...
                errors.append(exc)
                stop.abort(f"host {host} of job {name} raised {type(exc).__name__}: {exc}")

        threads = [
            threading.Thread(target=run, args=(host,), name=f"{name}-{host}", daemon=True)
            for host in hosts
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=_POLL_SECONDS)
        except BaseException as exc:
            # Interrupted here (the main thread): stop every host before going on.
            stop.abort(f"job {name} interrupted ({type(exc).__name__})")
            for thread in threads:
                thread.join()
            raise
        finally:
            combined.close()
        if errors:
            raise errors[0]
        ordered = [outcomes[h] for h in hosts]
        host_status: dict[str, str] = {o.host: o.status for o in ordered}
        for wanted in ("Stopped", "Failed"):
            ended = [o for o in ordered if o.status == wanted]
            if ended:
                first = ended[0]
                reason = first.reason or "no reason given"
                if wanted == "Failed" and first.host not in reason:
                    reason = f"{first.host}: {reason}"
                others = [o.host for o in ordered if o.status != "Completed" and o is not first]
                if others and wanted == "Failed":
                    reason += f" (also failed: {', '.join(others)})"
                return _HostOutcome(first.host, wanted, reason, first.exit_message), host_status
        return ordered[0], host_status

    # Training --------------------------------------------------------------------------------

    def run_training(
        self,
        request: Mapping[str, Any],
        *,
        extra_env: Mapping[str, str] | None = None,
        log: LogSink = print,
        stop_requested: StopFlag | None = None,
        host_logs: HostLogs | None = None,
    ) -> SandboxResult:
        """Run a CreateTrainingJob body in script mode: one process per instance, like a
        processing job (see the module doc). When every host has succeeded, their
        ``/opt/ml/model`` folders are packed together into the one ``model.tar.gz`` and their
        ``/opt/ml/output/data`` into ``output.tar.gz``, as SageMaker aggregates them; a file two
        hosts both wrote fails the job (SageMaker asks hosts not to clash and does not say which
        copy it keeps)."""
        name = request["TrainingJobName"]
        hps: dict[str, str] = dict(request.get("HyperParameters", {}))
        try:
            program = json.loads(hps["sagemaker_program"])
            source_uri = json.loads(hps["sagemaker_submit_directory"])
        except KeyError as exc:
            raise JobSetupError(
                f"training job {name}: running locally needs script mode (hyperparameter {exc})"
            ) from exc
        hosts = host_names(int(request["ResourceConfig"].get("InstanceCount", 1)))
        job_dir = self._job_dir(name, request)
        started = datetime.now(UTC)
        channels = {
            c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
            for c in request.get("InputDataConfig", [])
        }
        output_path = request["OutputDataConfig"]["S3OutputPath"]
        outputs = {
            "model": join_uri(output_path, name, "output", "model.tar.gz"),
            "output": join_uri(output_path, name, "output", "output.tar.gz"),
        }

        def host_dir(host: str) -> Path:
            return job_dir if len(hosts) == 1 else job_dir / host

        def one(host: str, folder: Path, sink: LogSink, stop: StopFlag | None) -> _HostOutcome:
            return self._training_host(
                request,
                program,
                source_uri,
                hps,
                channels,
                host,
                hosts,
                folder,
                extra_env,
                sink,
                stop,
            )

        outcome, host_status = self._run_hosts(
            name, hosts, job_dir, one, log, stop_requested, host_logs
        )
        status, reason = outcome.status, outcome.reason
        if status == "Completed":
            try:
                for sub, key in (("model", "model"), ("output/data", "output")):
                    folders = [host_dir(h) / "opt" / "ml" / sub for h in hosts]
                    scratch = job_dir / f"{key}.tar.gz"
                    what = folders[0] if len(hosts) == 1 else f"/opt/ml/{sub} of {len(hosts)} hosts"
                    with on_full_disk(f"packing {what} into {scratch} for {outputs[key]}"):
                        upload_tar(self.store, folders, outputs[key], scratch)
            except DiskFullError as exc:
                status, reason = "Failed", str(exc)
            except HostsClashError as exc:
                status, reason = "Failed", f"ClientError: {exc}"
        reason = with_advice(reason, name, _volume_gb(request, "ResourceConfig"))
        return self._finish(
            "training",
            name,
            job_dir,
            started,
            status,
            reason,
            channels,
            outputs,
            request["ResourceConfig"]["InstanceType"],
            instance_count=len(hosts),
            host_status=host_status,
        )

    def _training_host(
        self,
        request: Mapping[str, Any],
        program: str,
        source_uri: str,
        hps: Mapping[str, str],
        channels: Mapping[str, str],
        host: str,
        hosts: Sequence[str],
        host_dir: Path,
        extra_env: Mapping[str, str] | None,
        log: LogSink,
        stop_requested: StopFlag | None,
    ) -> _HostOutcome:
        """One instance of a training job: stage every channel and the code, run the script."""
        name = request["TrainingJobName"]
        root = host_dir / "opt" / "ml"
        config_dir = root / "input" / "config"
        code_dir = root / "code"
        try:
            for channel in request.get("InputDataConfig", []):
                source = channel["DataSource"]["S3DataSource"]
                target = root / "input" / "data" / channel["ChannelName"]
                with on_full_disk(f"staging channel '{channel['ChannelName']}' to {target}"):
                    self._stage(source["S3Uri"], source["S3DataType"], target)
            with on_full_disk(f"staging the code to {code_dir}"):
                root.mkdir(parents=True, exist_ok=True)
                config_dir.mkdir(parents=True, exist_ok=True)
                (config_dir / "hyperparameters.json").write_text(json.dumps(hps, indent=2))
                (config_dir / "inputdataconfig.json").write_text(
                    json.dumps({c: {"TrainingInputMode": "File"} for c in channels}, indent=2)
                )
                (config_dir / "resourceconfig.json").write_text(
                    json.dumps({"current_host": host, "hosts": list(hosts)}, indent=2)
                )
                code_dir.mkdir(parents=True)
                archive = host_dir / "sourcedir.tar.gz"
                self.store.download_file(source_uri, archive)
                with tarfile.open(archive) as tar:
                    tar.extractall(code_dir, filter="data")
                for folder in (root / "model", root / "output" / "data"):
                    folder.mkdir(parents=True, exist_ok=True)
            status, reason = self._train(
                request,
                name,
                program,
                source_uri,
                hps,
                channels,
                host,
                hosts,
                host_dir,
                extra_env,
                log,
                stop_requested,
            )
            if status != "Completed" and reason is None:
                reason = failure_reason(root / "output" / "failure", host_dir)
        except DiskFullError as exc:
            status, reason = "Failed", str(exc)
        return _HostOutcome(host, status, reason)

    def _train(
        self,
        request: Mapping[str, Any],
        name: str,
        program: str,
        source_uri: str,
        hps: Mapping[str, str],
        channels: Mapping[str, str],
        host: str,
        hosts: Sequence[str],
        job_dir: Path,
        extra_env: Mapping[str, str] | None,
        log: LogSink,
        stop_requested: StopFlag | None,
    ) -> tuple[JobStatus, str | None]:
        """Run the training script with the training toolkit's environment, as ``host``."""
        root = job_dir / "opt" / "ml"
        config_dir = root / "input" / "config"
        code_dir = root / "code"
        toolkit_env = {
            "SM_MODEL_DIR": str(root / "model"),
            "SM_OUTPUT_DIR": str(root / "output"),
            "SM_OUTPUT_DATA_DIR": str(root / "output" / "data"),
            "SM_INPUT_DIR": str(root / "input"),
            "SM_INPUT_CONFIG_DIR": str(config_dir),
            "SM_CHANNELS": json.dumps(sorted(channels)),
            "SM_HPS": json.dumps(
                {k: _decode(v) for k, v in hps.items() if not k.startswith("sagemaker_")}
            ),
            "SM_USER_ENTRY_POINT": program,
            "SM_MODULE_DIR": source_uri,
            "SM_CURRENT_HOST": host,
            "SM_HOSTS": json.dumps(list(hosts)),
            "SM_NUM_CPUS": str(os.cpu_count() or 1),
            **{f"SM_CHANNEL_{c.upper()}": str(root / "input" / "data" / c) for c in channels},
        }
        env = self._environment(
            request.get("Environment", {}), {**toolkit_env, **(extra_env or {})}
        )
        with on_full_disk(f"writing the job's log {job_dir / LOG_FILE}"):
            return execute(
                name,
                [self.python, str(code_dir / program)],
                env,
                job_dir,
                request["StoppingCondition"]["MaxRuntimeInSeconds"],
                log,
                stop_requested,
            )

    # Shared ----------------------------------------------------------------------------------

    def _job_dir(self, name: str, request: Mapping[str, Any]) -> Path:
        job_dir = self.jobs_root / name
        if job_dir.exists():
            shutil.rmtree(job_dir)  # a rerun of the same job name starts from a clean container
        try:
            with on_full_disk(f"creating {job_dir}"):
                job_dir.mkdir(parents=True)
                # What was asked, for diagnosis; its time limit also tells the pruning when a
                # job without a describe.json (its launcher died) can no longer be running.
                (job_dir / REQUEST_FILE).write_text(json.dumps(request, indent=2, default=str))
        except DiskFullError as exc:
            volume = _volume_gb(request, "ProcessingResources") or _volume_gb(
                request, "ResourceConfig"
            )
            raise JobSetupError(with_advice(str(exc), name, volume)) from exc
        return job_dir

    def _stage(self, uri: str, data_type: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        if data_type == "ManifestFile":
            manifest = json.loads(self.store.read_bytes(uri))
            prefix = manifest[0]["prefix"]
            for relative in manifest[1:]:
                self.store.download_file(join_uri(prefix, relative), target / relative)
        elif data_type == "S3Prefix":
            if not self.store.download_prefix(uri, target):
                raise JobSetupError(f"input {uri} matches no objects")
        else:
            raise JobSetupError(f"S3DataType {data_type!r} is not supported locally")

    @staticmethod
    def _environment(request_env: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
        env.update({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"})
        env.update(request_env)
        env.update(extra)
        return env

    @staticmethod
    def _finish(
        job_type: JobType,
        name: str,
        job_dir: Path,
        started: datetime,
        status: JobStatus,
        reason: str | None,
        inputs: dict[str, str],
        outputs: dict[str, str],
        instance_type: str,
        *,
        instance_count: int = 1,
        exit_message: str | None = None,
        host_status: dict[str, str] | None = None,
    ) -> SandboxResult:
        result = SandboxResult(
            job_type=job_type,
            name=name,
            status=status,
            failure_reason=reason,
            started_at=started,
            ended_at=datetime.now(UTC),
            inputs=inputs,
            outputs=outputs,
            job_dir=job_dir,
            instance_type=instance_type,
            instance_count=instance_count,
            exit_message=exit_message,
            host_status=dict(host_status or {}),
        )
        # On a full disk the result still goes back to the caller; only this record is lost.
        with contextlib.suppress(DiskFullError), on_full_disk(f"writing {DESCRIBE_FILE}"):
            (job_dir / DESCRIBE_FILE).write_text(json.dumps(result.describe(), indent=2))
        return result


def execute(
    name: str,
    command: Sequence[str],
    env: Mapping[str, str],
    job_dir: Path,
    max_runtime: int,
    log: LogSink,
    stop_requested: StopFlag | None = None,
) -> tuple[JobStatus, str | None]:
    """Run the job process, passing each output line to ``log`` (and ``job.log``).

    Returns the status and, when the platform ended the job (time limit, stop request, a
    signal), why. If ``log`` raises (a Dagster run being interrupted, say), the job is stopped
    first. If this process dies without stopping the job (SIGKILL, the OOM killer), the job's
    guard kills the job's process group.
    """
    lines: queue.Queue[str | None] = queue.Queue()
    with (job_dir / LOG_FILE).open("w") as log_file:
        proc = subprocess.Popen(
            list(command),
            env=dict(env),
            cwd=job_dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group, so stopping it stops its children
        )
        guard: subprocess.Popen | None = None

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        deadline = time.monotonic() + max_runtime
        reason = None
        try:
            guard = start_guard(proc.pid)
            finished_output = False
            while not finished_output:
                try:
                    line = lines.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    line = ""
                if line is None:
                    finished_output = True
                elif line:
                    log_file.write(line + "\n")
                    log_file.flush()
                    log(line)
                if proc.poll() is None and reason is None:
                    if time.monotonic() > deadline:
                        reason = f"MaxRuntimeExceeded: job ran longer than {max_runtime} s"
                        stop_process(proc)
                    elif stop_requested is not None and (stop := stop_requested()):
                        reason = (
                            stop
                            if isinstance(stop, str)
                            else "Stopped on request (StopProcessingJob/StopTrainingJob)"
                        )
                        log_file.write(f"[{name}] stopping the job: {reason}\n")
                        stop_process(proc)
            proc.wait()
        finally:
            if proc.poll() is None:
                stop_process(proc)
                with contextlib.suppress(OSError):  # a full disk must not hide the real error
                    log_file.write(f"[{name}] stopping the job\n")
            if guard is not None:
                release_guard(guard)
            reader.join(timeout=5)
    if reason:
        return "Stopped", reason
    if proc.returncode < 0:
        return "Failed", killed_reason(-proc.returncode, name)
    return ("Completed" if proc.returncode == 0 else "Failed"), None


def killed_reason(signum: int, name: str) -> str:
    """Why a job's process ended on a signal nobody here sent, and what to do about it."""
    try:
        signame = signal.Signals(signum).name
    except ValueError:
        signame = f"signal {signum}"
    reason = f"killed by {signame} (signal {signum})"
    if signum == signal.SIGKILL:
        reason += (
            ", most often the out-of-memory killer (dmesg shows it): give the job "
            f"more memory (a larger instance type, {settings_var(name, 'INSTANCE_TYPE')}; "
            "locally, fewer jobs at once) or fewer customers per batch "
            "(FORECAST_BACKFILL_BATCH_SIZE)"
        )
    return reason


# Job names start fa-<step>- (resources.jobs.requests.job_name); the step names its settings.
_SETTINGS_OF_STEP = {"prep": "PREPROCESSING", "train": "TRAINING", "infer": "INFERENCE"}


def settings_var(name: str, field: str) -> str:
    """The variable that sets ``field`` for the job ``name``, e.g. FORECAST_TRAINING_VOLUME_SIZE_GB."""
    parts = name.split("-")
    job = _SETTINGS_OF_STEP.get(parts[1], "<JOB>") if len(parts) > 1 else "<JOB>"
    return f"FORECAST_{job}_{field}"


def with_advice(reason: str | None, name: str, volume_gb: int | None) -> str | None:
    """A failure reason, with what to do about a full disk: whether met while staging, logging
    or uploading, or by the script itself (``[Errno 28] No space left on device``)."""
    if reason is None:
        return None
    if "no space left on device" in reason.lower():
        size = f", now {volume_gb} GB" if volume_gb else ""
        reason += (
            f": free space on that disk (old job folders go after LocalJobLauncher's retention) "
            f"or give the job a larger volume ({settings_var(name, 'VOLUME_SIZE_GB')}{size})"
        )
    return reason


def _volume_gb(request: Mapping[str, Any], resources_key: str) -> int | None:
    config = request.get(resources_key, {})
    config = config.get("ClusterConfig", config)
    return config.get("VolumeSizeInGB")


@contextlib.contextmanager
def on_full_disk(doing: str) -> Iterator[None]:
    """Turn ENOSPC (or a full quota) while ``doing`` into :class:`DiskFullError` naming it."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(doing) from exc
        raise


# The guard: a small process beside each job. It blocks on a pipe from the process that started
# the job. A byte means the job has ended normally; end-of-file without one means that process
# died (SIGKILL, the OOM killer) and nobody will stop the job any more, so the guard stops the
# job's whole process group (the script may have children): SIGTERM, then SIGKILL.
_GUARD = f"""
import os, signal, sys, time
pgid = int(sys.argv[1])
if sys.stdin.buffer.read(1):
    sys.exit(0)
try:
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + {STOP_GRACE_SECONDS}
    while time.monotonic() < deadline:
        time.sleep(0.1)
        os.killpg(pgid, 0)
    os.killpg(pgid, signal.SIGKILL)
except ProcessLookupError:
    pass
"""


def start_guard(pgid: int) -> subprocess.Popen:
    """Start the guard of the job whose process group is ``pgid``."""
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _GUARD, str(pgid)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C or a kill of this process's group must not reach it
    )


def release_guard(guard: subprocess.Popen) -> None:
    """Tell the guard the job has ended (or been stopped) here, and let it go."""
    assert guard.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # the guard itself was killed: nothing to tell
        guard.stdin.write(b".")
        guard.stdin.close()
    try:
        guard.wait(timeout=5)
    except subprocess.TimeoutExpired:
        guard.kill()
        guard.wait()


def failure_reason(path: Path, job_dir: Path) -> str:
    """The script's own reason (first 1 KB, as SageMaker keeps), else the end of its log."""
    if path.exists():
        return path.read_text(errors="replace").strip()[:1024]
    tail = (job_dir / LOG_FILE).read_text(errors="replace").strip().splitlines()[-5:]
    return "AlgorithmError: " + (" | ".join(tail) or "the script exited with an error")


def map_path(path: str, root: Path) -> Path:
    if not path.startswith(OPT_ML + "/"):
        raise JobSetupError(f"local path {path!r} is outside {OPT_ML}")
    return root / path[len(OPT_ML) + 1 :]


def map_token(token: str, root: Path) -> str:
    return token.replace(OPT_ML, str(root))


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM the job's process group, then SIGKILL if it has not gone in the grace time."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


class HostsClashError(ValueError):
    """Two hosts of a job wrote the same file into a folder SageMaker packs into one archive."""


def upload_tar(store: ObjectStore, folders: Path | Sequence[Path], uri: str, scratch: Path) -> None:
    """Pack folders the way SageMaker packs /opt/ml/model into model.tar.gz, and upload it.

    Several folders (one per host) go into one archive, as SageMaker aggregates the hosts'
    folders; a relative path found in two of them raises :class:`HostsClashError`.
    """
    sources = [folders] if isinstance(folders, Path) else list(folders)
    members: dict[str, Path] = {}
    for folder in sources:
        for path in sorted(folder.rglob("*")) if folder.exists() else []:
            if path.is_file():
                arcname = path.relative_to(folder).as_posix()
                if arcname in members:
                    raise HostsClashError(
                        f"{arcname} was written by two hosts ({members[arcname]} and {path}): "
                        "hosts of one training job must write different files"
                    )
                members[arcname] = path
    with tarfile.open(scratch, "w:gz") as tar:
        for arcname, path in sorted(members.items()):
            tar.add(path, arcname=arcname)
    store.upload_file(scratch, uri)

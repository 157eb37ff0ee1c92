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

This module knows nothing of Dagster: :class:`~resources.jobs.local.LocalJobLauncher` runs it
inside a Pipes session, and the tests' fake SageMaker runs it behind a boto3-shaped API.
"""

import json
import os
import queue
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from resources.storage import ObjectStore, join_uri

OPT_ML = "/opt/ml"
# Variables a process needs to start at all; nothing else leaks from this machine into a job.
PASSTHROUGH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
_POLL_SECONDS = 0.2

JobType = Literal["processing", "training"]
JobStatus = Literal["Completed", "Failed", "Stopped"]


class JobSetupError(RuntimeError):
    """The request cannot be run (an input matches nothing, an unsupported data type, …)."""


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

    def describe(self) -> dict[str, Any]:
        """The fields DescribeProcessingJob / DescribeTrainingJob would show."""
        kind = "Processing" if self.job_type == "processing" else "Training"
        return {
            f"{kind}JobName": self.name,
            f"{kind}JobStatus": self.status,
            "FailureReason": self.failure_reason,
            "StartTime": self.started_at.isoformat(),
            "EndTime": self.ended_at.isoformat(),
            "Inputs": self.inputs,
            "Outputs": self.outputs,
        }


LogSink = Callable[[str], None]
StopFlag = Callable[[], bool]


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
    ) -> SandboxResult:
        name = request["ProcessingJobName"]
        job_dir, root = self._job_dir(name)
        started = datetime.now(UTC)
        inputs = {
            i["InputName"]: i["S3Input"]["S3Uri"] for i in request.get("ProcessingInputs", [])
        }
        output_specs = request.get("ProcessingOutputConfig", {}).get("Outputs", [])
        outputs = {o["OutputName"]: o["S3Output"]["S3Uri"] for o in output_specs}
        for spec in request.get("ProcessingInputs", []):
            s3 = spec["S3Input"]
            self._stage(s3["S3Uri"], s3["S3DataType"], map_path(s3["LocalPath"], root))
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
            {**(extra_env or {}), "SM_OUTPUT_DIR": str(root / "output")},
        )
        status, reason = execute(
            name,
            command,
            env,
            job_dir,
            request["StoppingCondition"]["MaxRuntimeInSeconds"],
            log,
            stop_requested,
        )
        if status == "Completed":
            for spec in output_specs:
                s3 = spec["S3Output"]
                self.store.upload_directory(map_path(s3["LocalPath"], root), s3["S3Uri"])
        elif reason is None:
            reason = failure_reason(root / "output" / "message", job_dir)
        return self._finish(
            "processing",
            name,
            job_dir,
            started,
            status,
            reason,
            inputs,
            outputs,
            request["ProcessingResources"]["ClusterConfig"]["InstanceType"],
        )

    # Training --------------------------------------------------------------------------------

    def run_training(
        self,
        request: Mapping[str, Any],
        *,
        extra_env: Mapping[str, str] | None = None,
        log: LogSink = print,
        stop_requested: StopFlag | None = None,
    ) -> SandboxResult:
        name = request["TrainingJobName"]
        hps: dict[str, str] = dict(request.get("HyperParameters", {}))
        try:
            program = json.loads(hps["sagemaker_program"])
            source_uri = json.loads(hps["sagemaker_submit_directory"])
        except KeyError as exc:
            raise JobSetupError(
                f"training job {name}: running locally needs script mode (hyperparameter {exc})"
            ) from exc
        job_dir, root = self._job_dir(name)
        started = datetime.now(UTC)
        channels = {}
        for channel in request.get("InputDataConfig", []):
            source = channel["DataSource"]["S3DataSource"]
            self._stage(
                source["S3Uri"],
                source["S3DataType"],
                root / "input" / "data" / channel["ChannelName"],
            )
            channels[channel["ChannelName"]] = source["S3Uri"]
        config_dir = root / "input" / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "hyperparameters.json").write_text(json.dumps(hps, indent=2))
        (config_dir / "inputdataconfig.json").write_text(
            json.dumps({c: {"TrainingInputMode": "File"} for c in channels}, indent=2)
        )
        (config_dir / "resourceconfig.json").write_text(
            json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}, indent=2)
        )
        code_dir = root / "code"
        code_dir.mkdir(parents=True)
        archive = job_dir / "sourcedir.tar.gz"
        self.store.download_file(source_uri, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(code_dir, filter="data")
        for folder in (root / "model", root / "output" / "data"):
            folder.mkdir(parents=True, exist_ok=True)
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
            "SM_CURRENT_HOST": "algo-1",
            "SM_HOSTS": json.dumps(["algo-1"]),
            "SM_NUM_CPUS": str(os.cpu_count() or 1),
            **{f"SM_CHANNEL_{c.upper()}": str(root / "input" / "data" / c) for c in channels},
        }
        output_path = request["OutputDataConfig"]["S3OutputPath"]
        outputs = {
            "model": join_uri(output_path, name, "output", "model.tar.gz"),
            "output": join_uri(output_path, name, "output", "output.tar.gz"),
        }
        env = self._environment(
            request.get("Environment", {}), {**toolkit_env, **(extra_env or {})}
        )
        status, reason = execute(
            name,
            [self.python, str(code_dir / program)],
            env,
            job_dir,
            request["StoppingCondition"]["MaxRuntimeInSeconds"],
            log,
            stop_requested,
        )
        if status == "Completed":
            upload_tar(self.store, root / "model", outputs["model"], job_dir / "model.tar.gz")
            upload_tar(
                self.store, root / "output" / "data", outputs["output"], job_dir / "output.tar.gz"
            )
        elif reason is None:
            reason = failure_reason(root / "output" / "failure", job_dir)
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
        )

    # Shared ----------------------------------------------------------------------------------

    def _job_dir(self, name: str) -> tuple[Path, Path]:
        job_dir = self.jobs_root / name
        if job_dir.exists():
            shutil.rmtree(job_dir)  # a rerun of the same job name starts from a clean container
        root = job_dir / "opt" / "ml"
        root.mkdir(parents=True)
        return job_dir, root

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
        )
        (job_dir / "describe.json").write_text(json.dumps(result.describe(), indent=2))
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

    Returns the status and, when the platform ended the job (time limit, stop request), why.
    If ``log`` raises (a Dagster run being interrupted, say), the job is stopped first.
    """
    lines: queue.Queue[str | None] = queue.Queue()
    with (job_dir / "job.log").open("w") as log_file:
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
                    elif stop_requested is not None and stop_requested():
                        reason = "Stopped on request (StopProcessingJob/StopTrainingJob)"
                        stop_process(proc)
            proc.wait()
        finally:
            if proc.poll() is None:
                log_file.write(f"[{name}] stopping the job\n")
                stop_process(proc)
            reader.join(timeout=5)
    if reason:
        return "Stopped", reason
    return ("Completed" if proc.returncode == 0 else "Failed"), None


def failure_reason(path: Path, job_dir: Path) -> str:
    """The script's own reason (first 1 KB, as SageMaker keeps), else the end of its log."""
    if path.exists():
        return path.read_text(errors="replace").strip()[:1024]
    tail = (job_dir / "job.log").read_text(errors="replace").strip().splitlines()[-5:]
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
    """SIGTERM the job's process group, then SIGKILL if it has not gone in 10 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def upload_tar(store: ObjectStore, folder: Path, uri: str, scratch: Path) -> None:
    """Pack a folder the way SageMaker packs /opt/ml/model into model.tar.gz, and upload it."""
    with tarfile.open(scratch, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(folder).as_posix())
    store.upload_file(scratch, uri)

"""Execute SageMaker job requests on this machine, the way SageMaker would run them.

For each job a directory ``<data home>/jobs/<job name>/`` stands in for the container: its
``opt/ml`` folder is laid out as SageMaker lays out ``/opt/ml`` (processing inputs and outputs,
``input/data/<channel>``, ``input/config/hyperparameters.json``, ``model``, ``output``), every
``/opt/ml`` path in the request is mapped into it, and the ``SM_*`` variables of SageMaker's
training toolkit point at it. Inputs are staged from the object store before the script starts
(S3Prefix and ManifestFile, as SageMaker does), the script runs as a subprocess with only the
request's environment plus the Pipes bootstrap variables, under the request's time limit, and
outputs are uploaded when it succeeds. The one liberty taken: the ``python3`` of the entrypoint
is this interpreter, standing in for the image.

Each job leaves ``describe.json`` (DescribeProcessingJob / DescribeTrainingJob fields) and
``job.log`` in its directory.
"""

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
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg

from resources.data_home import data_home
from resources.jobs.base import CompletedJob, JobFailedError, JobLauncher, JobStatus, JobType
from resources.storage import ObjectStore, join_uri

OPT_ML = "/opt/ml"
# Variables a process needs to start at all; nothing else leaks from this machine into a job.
_PASSTHROUGH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
_POLL_SECONDS = 0.2


class LocalJobLauncher(JobLauncher):
    """Runs each job's entry script as a local process in a SageMaker-shaped directory."""

    python: str = ""
    """Interpreter that stands in for the job image; empty means the one running Dagster."""

    def _python(self) -> str:
        return self.python or sys.executable

    def _job_dir(self, name: str) -> Path:
        job_dir = data_home() / "jobs" / name
        if job_dir.exists():
            shutil.rmtree(job_dir)  # a rerun of the same job name starts from a clean container
        (job_dir / "opt" / "ml").mkdir(parents=True)
        return job_dir

    # Staging -----------------------------------------------------------------------------------

    def _stage(self, uri: str, data_type: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        if data_type == "ManifestFile":
            manifest = json.loads(self.store.read_bytes(uri))
            prefix = manifest[0]["prefix"]
            for relative in manifest[1:]:
                dest = target / relative
                self.store.download_file(join_uri(prefix, relative), dest)
        elif data_type == "S3Prefix":
            if not self.store.download_prefix(uri, target):
                raise JobFailedError(description=f"input {uri} matches no objects")
        else:
            raise JobFailedError(description=f"S3DataType {data_type!r} is not supported locally")

    # Running -----------------------------------------------------------------------------------

    def _environment(
        self, request_env: Mapping[str, str], extra: Mapping[str, str]
    ) -> dict[str, str]:
        env = {k: os.environ[k] for k in _PASSTHROUGH_ENV if k in os.environ}
        env.update({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"})
        env.update(request_env)
        env.update(extra)
        return env

    def _execute(
        self,
        context: dg.AssetExecutionContext,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str],
        job_dir: Path,
        max_runtime: int,
    ) -> tuple[JobStatus, str | None]:
        """Run the job process, streaming its output into the Dagster log. Returns status and,
        if the platform itself ended the job (time limit), the reason."""
        log_path = job_dir / "job.log"
        lines: queue.Queue[str | None] = queue.Queue()
        with log_path.open("w") as log_file:
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
                        context.log.info(f"[{name}] {line}")
                    if time.monotonic() > deadline and proc.poll() is None:
                        reason = f"MaxRuntimeExceeded: job ran longer than {max_runtime} s"
                        _stop(proc)
                proc.wait()
            finally:
                # Interrupted (run cancelled, process terminating) or failed while waiting:
                # stop the job rather than leave it running unattended.
                if proc.poll() is None:
                    context.log.warning(f"[{name}] stopping the job")
                    _stop(proc)
                reader.join(timeout=5)
        if reason:
            return "Stopped", reason
        return ("Completed" if proc.returncode == 0 else "Failed"), None

    def _finish(
        self,
        *,
        job_type: JobType,
        name: str,
        job_dir: Path,
        started: datetime,
        status: JobStatus,
        reason: str | None,
        instance_type: str,
        inputs: dict[str, str],
        outputs: dict[str, str],
        invocation: dg.PipesClientCompletedInvocation | None,
    ) -> CompletedJob:
        ended = datetime.now(UTC)
        describe = {
            f"{'Processing' if job_type == 'processing' else 'Training'}JobName": name,
            f"{'Processing' if job_type == 'processing' else 'Training'}JobStatus": status,
            "FailureReason": reason,
            "StartTime": started.isoformat(),
            "EndTime": ended.isoformat(),
            "Inputs": inputs,
            "Outputs": outputs,
        }
        (job_dir / "describe.json").write_text(json.dumps(describe, indent=2))
        if status != "Completed":
            raise JobFailedError(
                description=f"{job_type} job {name} {status.lower()}: {reason or 'no reason given'}",
                metadata={
                    "job_name": name,
                    "job_status": status,
                    "failure_reason": reason or "",
                    "job_log": dg.MetadataValue.path(str(job_dir / "job.log")),
                },
            )
        return CompletedJob(
            job_type=job_type,
            name=name,
            arn=f"local:{job_type}-job/{name}",
            status=status,
            started_at=started,
            ended_at=ended,
            billable_seconds=round((ended - started).total_seconds()),
            instance_type=f"local ({instance_type} requested)",
            input_uris=inputs,
            output_uris=outputs,
            invocation=invocation,
        )

    def _failure_reason(self, root: Path, file_name: str, job_dir: Path) -> str:
        path = root / "output" / file_name
        if path.exists():
            return path.read_text(errors="replace").strip()[:1024]
        tail = (job_dir / "job.log").read_text(errors="replace").strip().splitlines()[-5:]
        return "AlgorithmError: " + (" | ".join(tail) or "the script exited with an error")

    # Processing --------------------------------------------------------------------------------

    def run_processing_job(
        self,
        *,
        context: dg.AssetExecutionContext,
        request: Mapping[str, Any],
        extras: Mapping[str, Any] | None = None,
    ) -> CompletedJob:
        name = request["ProcessingJobName"]
        job_dir = self._job_dir(name)
        root = job_dir / "opt" / "ml"
        started = datetime.now(UTC)
        context.log.info(f"starting processing job {name} locally in {job_dir}")
        inputs = {
            i["InputName"]: i["S3Input"]["S3Uri"] for i in request.get("ProcessingInputs", [])
        }
        outputs = {
            o["OutputName"]: o["S3Output"]["S3Uri"]
            for o in request.get("ProcessingOutputConfig", {}).get("Outputs", [])
        }
        for spec in request.get("ProcessingInputs", []):
            s3 = spec["S3Input"]
            self._stage(s3["S3Uri"], s3["S3DataType"], _map_path(s3["LocalPath"], root))
        for spec in request.get("ProcessingOutputConfig", {}).get("Outputs", []):
            _map_path(spec["S3Output"]["LocalPath"], root).mkdir(parents=True, exist_ok=True)
        (root / "output").mkdir(parents=True, exist_ok=True)

        app = request["AppSpecification"]
        command = [
            self._python() if token in ("python", "python3") else _map_token(token, root)
            for token in app.get("ContainerEntrypoint", [])
        ] + [_map_token(a, root) for a in app.get("ContainerArguments", [])]
        if not command:
            raise JobFailedError(description=f"processing job {name} has no ContainerEntrypoint")

        with dg.open_pipes_session(
            context=context,
            context_injector=dg.PipesTempFileContextInjector(),
            message_reader=dg.PipesTempFileMessageReader(),
            extras=dict(extras or {}),
        ) as session:
            env = self._environment(
                request.get("Environment", {}),
                {**session.get_bootstrap_env_vars(), "SM_OUTPUT_DIR": str(root / "output")},
            )
            status, reason = self._execute(
                context,
                name,
                command,
                env,
                job_dir,
                request["StoppingCondition"]["MaxRuntimeInSeconds"],
            )
        if status == "Completed":
            for spec in request.get("ProcessingOutputConfig", {}).get("Outputs", []):
                s3 = spec["S3Output"]
                self.store.upload_directory(_map_path(s3["LocalPath"], root), s3["S3Uri"])
        elif reason is None:
            reason = self._failure_reason(root, "message", job_dir)
        return self._finish(
            job_type="processing",
            name=name,
            job_dir=job_dir,
            started=started,
            status=status,
            reason=reason,
            instance_type=request["ProcessingResources"]["ClusterConfig"]["InstanceType"],
            inputs=inputs,
            outputs=outputs,
            invocation=dg.PipesClientCompletedInvocation(session),
        )

    # Training ----------------------------------------------------------------------------------

    def run_training_job(
        self,
        *,
        context: dg.AssetExecutionContext,
        request: Mapping[str, Any],
        extras: Mapping[str, Any] | None = None,
    ) -> CompletedJob:
        name = request["TrainingJobName"]
        job_dir = self._job_dir(name)
        root = job_dir / "opt" / "ml"
        started = datetime.now(UTC)
        context.log.info(f"starting training job {name} locally in {job_dir}")
        hps: dict[str, str] = dict(request.get("HyperParameters", {}))
        try:
            program = json.loads(hps["sagemaker_program"])
            source_uri = json.loads(hps["sagemaker_submit_directory"])
        except KeyError as exc:
            raise JobFailedError(
                description=f"training job {name}: the local launcher runs script mode only and "
                f"needs hyperparameter {exc}"
            ) from exc

        channels = {}
        for channel in request.get("InputDataConfig", []):
            source = channel["DataSource"]["S3DataSource"]
            target = root / "input" / "data" / channel["ChannelName"]
            self._stage(source["S3Uri"], source["S3DataType"], target)
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
        bucket_tar = job_dir / "sourcedir.tar.gz"
        self.store.download_file(source_uri, bucket_tar)
        with tarfile.open(bucket_tar) as tar:
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
        model_uri = join_uri(
            request["OutputDataConfig"]["S3OutputPath"], name, "output", "model.tar.gz"
        )
        output_uri = join_uri(
            request["OutputDataConfig"]["S3OutputPath"], name, "output", "output.tar.gz"
        )
        with dg.open_pipes_session(
            context=context,
            context_injector=dg.PipesTempFileContextInjector(),
            message_reader=dg.PipesTempFileMessageReader(),
            extras=dict(extras or {}),
        ) as session:
            env = self._environment(
                request.get("Environment", {}), {**toolkit_env, **session.get_bootstrap_env_vars()}
            )
            status, reason = self._execute(
                context,
                name,
                [self._python(), str(code_dir / program)],
                env,
                job_dir,
                request["StoppingCondition"]["MaxRuntimeInSeconds"],
            )
        if status == "Completed":
            _upload_tar(self.store, root / "model", model_uri, job_dir / "model.tar.gz")
            _upload_tar(self.store, root / "output" / "data", output_uri, job_dir / "output.tar.gz")
        elif reason is None:
            reason = self._failure_reason(root, "failure", job_dir)
        return self._finish(
            job_type="training",
            name=name,
            job_dir=job_dir,
            started=started,
            status=status,
            reason=reason,
            instance_type=request["ResourceConfig"]["InstanceType"],
            inputs=channels,
            outputs={"model": model_uri, "output": output_uri},
            invocation=dg.PipesClientCompletedInvocation(session),
        )


def _map_path(path: str, root: Path) -> Path:
    if not path.startswith(OPT_ML + "/"):
        raise JobFailedError(description=f"local path {path!r} is outside {OPT_ML}")
    return root / path[len(OPT_ML) + 1 :]


def _map_token(token: str, root: Path) -> str:
    return token.replace(OPT_ML, str(root))


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the job's process group, then SIGKILL if it has not gone in 10 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _upload_tar(store: ObjectStore, folder: Path, uri: str, scratch: Path) -> None:
    """Pack a folder the way SageMaker packs /opt/ml/model into model.tar.gz, and upload it."""
    with tarfile.open(scratch, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(folder).as_posix())
    store.upload_file(scratch, uri)

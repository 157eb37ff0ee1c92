"""A run process killed with SIGKILL (what the OOM killer does) leaves no job running and no
pool slot held, under `dagster dev` with the repo's dagster.yaml; and a job that fails on a
signal or a full disk says what to fix in one line."""

from __future__ import annotations

import errno
import io
import os
import signal
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from forecast_assets.assets.common import TRAINING_POOL
from forecast_assets.definitions import build_definitions
from forecast_assets.demo_data import DEMO_CUSTOMERS
from resources.jobs import LocalJobLauncher
from resources.jobs.requests import (
    JobInput,
    JobOutput,
    processing_job_request,
    training_job_request,
)
from resources.jobs.sandbox import JobSandbox
from resources.jobs.settings import JobSettings
from resources.storage import LocalObjectStore
from tests.conftest import _free_port, land
from tests.live_dagster import REPO_ROOT, GraphQL, dagster_dev, launch_run, tail
from tests.test_local_launcher import publish_script, run_in_asset, step_error

CUSTOMER = DEMO_CUSTOMERS[0].customer_id
TRAINING = ["models", "load_forecast_model"]
TRAINING_STEP = "models__load_forecast_model"
FAST_TRAINING = {"ops": {TRAINING_STEP: {"config": {"n_estimators": 30}}}}

# Stands in for the job image's interpreter: a job that runs until it is killed, with a child of
# its own (as a script that starts workers would), and says who it is.
HANGING_JOB = """\
#!/bin/sh
sleep 300 &
echo "hanging job $$ with child $!"
wait
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited: it only waits for its parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def _wait_for(what: str, check: Callable[[], Any], timeout: float, report=lambda: "") -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    pytest.fail(f"{what}: not within {timeout} s\n{report()}")


# Killing run processes under dagster dev ---------------------------------------------------------


@dataclass
class LiveInstance:
    instance: dg.DagsterInstance
    graphql: GraphQL
    data_home: Path
    log: Path
    hanging_python: str

    def report(self, run_id: str | None = None) -> str:
        lines = []
        if run_id:
            for entry in self.instance.all_logs(run_id):
                event = entry.dagster_event
                text = event.message if event else entry.user_message
                kind = event.event_type_value if event else "LOG"
                lines.append(f"[{kind}] {text}")
        return "\n".join(lines[-40:]) + "\n--- dagster dev ---\n" + tail(self.log, 40)

    def launch_training(self, hanging: bool) -> str:
        run_config: dict[str, Any] = dict(FAST_TRAINING)
        if hanging:
            run_config["resources"] = {"launcher": {"config": {"python": self.hanging_python}}}
        return launch_run(self.graphql, "training_job", CUSTOMER, run_config, [TRAINING])

    def status(self, run_id: str) -> dg.DagsterRunStatus:
        run = self.instance.get_run_by_id(run_id)
        assert run is not None
        return run.status

    def wait_for_end(self, run_id: str, timeout: float) -> dg.DagsterRunStatus:
        return _wait_for(
            f"run {run_id} to end",
            lambda: (
                self.status(run_id) if self.instance.get_run_by_id(run_id).is_finished else None
            ),  # type: ignore[union-attr]
            timeout,
            lambda: self.report(run_id),
        )

    def messages(self, run_id: str, event_type: str) -> list[str]:
        """The messages of the run's events of one type, errors included."""
        found = []
        for entry in self.instance.all_logs(run_id):
            event = entry.dagster_event
            if event is not None and event.event_type_value == event_type:
                error = getattr(event.event_specific_data, "error", None)
                found.append((event.message or "") + (error.message if error else ""))
        return found

    def training_slots(self) -> list[str]:
        info = self.instance.event_log_storage.get_concurrency_info(TRAINING_POOL)
        return [slot.run_id for slot in info.claimed_slots]

    def hanging_job(self, run_id: str) -> tuple[int, int]:
        """Wait for the run's training job to hang; its (process group, child) pids."""
        job_dir = self.data_home / "jobs" / f"fa-train-{CUSTOMER}-{run_id.replace('-', '')[:8]}-0"

        def started() -> tuple[int, int] | None:
            log = job_dir / "job.log"
            for line in log.read_text().splitlines() if log.exists() else []:
                if line.startswith("hanging job "):
                    words = line.split()
                    return int(words[2]), int(words[5])
            return None

        return _wait_for(
            f"the training job of run {run_id}", started, 120, lambda: self.report(run_id)
        )

    def worker_in_events(self, run_id: str) -> int:
        """The run worker's pid, as the run's events say; it runs every step itself (the
        in-process executor, forecast_assets/definitions.py)."""
        workers = {
            int(event.event_specific_data.metadata["pid"].value)  # type: ignore[union-attr]
            for entry in self.instance.all_logs(run_id)
            if (event := entry.dagster_event) is not None
            and event.event_type_value == "ENGINE_EVENT"
            and (event.message or "").startswith("Executing steps in process")
        }
        assert len(workers) == 1, self.report(run_id)
        return workers.pop()


@pytest.fixture
def live(
    data_home: Path, store: LocalObjectStore, tmp_path: Path, monkeypatch
) -> Iterator[LiveInstance]:
    """`dagster dev` on the repo's dagster.yaml with short monitoring intervals and one training
    slot, and a customer whose preprocessed load is ready to train on."""
    land(store, [CUSTOMER], days=75)
    config = yaml.safe_load((REPO_ROOT / "instance" / "dagster.yaml").read_text())
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_monitoring"]["max_resume_run_attempts"] == 0
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    config["run_monitoring"].update(poll_interval_seconds=1, free_slots_after_run_end_seconds=2)
    config["concurrency"]["pools"]["default_limit"] = 1
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    hanging = tmp_path / "hanging-python"
    hanging.write_text(HANGING_JOB)
    hanging.chmod(0o755)
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("customers", [CUSTOMER])
        job = build_definitions("local").resolve_job_def("training_job")
        ready = job.execute_in_process(
            instance=instance,
            partition_key=CUSTOMER,
            asset_selection=[
                dg.AssetKey(["landing", "raw_load"]),
                dg.AssetKey(["preprocessed", "load"]),
            ],
        )
        assert ready.success
        port = _free_port()
        log = tmp_path / "dagster-dev.log"
        with dagster_dev(env, log, port):
            yield LiveInstance(
                instance, GraphQL(f"http://127.0.0.1:{port}"), data_home, log, str(hanging)
            )


@pytest.mark.slow
def test_sigkill_of_the_run_worker_stops_the_job_and_frees_the_slot(live: LiveInstance):
    timings = {}

    # 1. The run worker is killed while its training step waits for the job. The step runs in
    # the worker itself, so the job's parent is the worker.
    run_id = live.launch_training(hanging=True)
    pgid, child = live.hanging_job(run_id)
    worker = _parent(pgid)
    assert worker == live.worker_in_events(run_id)  # the process tree is as expected
    assert live.training_slots() == [run_id]
    killed = time.monotonic()
    os.kill(worker, signal.SIGKILL)
    # The job's guard sees its launcher go and stops the job.
    _wait_for("the job's processes to go", lambda: not _alive(pgid) and not _alive(child), 30)
    timings["worker killed: job gone"] = time.monotonic() - killed
    assert live.wait_for_end(run_id, 30) == dg.DagsterRunStatus.FAILURE
    timings["worker killed: run FAILURE"] = time.monotonic() - killed
    _wait_for("the run's slot to be freed", lambda: live.training_slots() == [], 30, live.report)
    timings["worker killed: slot freed"] = time.monotonic() - killed
    # Who noticed: the code server that started the run worker, not run monitoring (the default
    # run launcher has no worker health check).
    assert any(
        m.startswith(
            f"[DagsterApiServer] Run execution process for {run_id} was terminated by "
            "signal 9 (SIGKILL)"
        )
        for m in live.messages(run_id, "ENGINE_EVENT")
    ), live.report(run_id)
    assert not live.messages(run_id, "ASSET_MATERIALIZATION")

    # 2. The same step runs to the end with the real interpreter; the slot the first run held
    # is free again, or its training could not start (one slot).
    run_id = live.launch_training(hanging=False)
    status = live.wait_for_end(run_id, 120)
    assert status == dg.DagsterRunStatus.SUCCESS, live.report(run_id)
    assert live.training_slots() == []
    print({k: round(v, 1) for k, v in timings.items()})


# Failures that say what to fix --------------------------------------------------------------------

SETTINGS = JobSettings(image_uri="test:local", max_runtime_seconds=60)


def _processing_request(store: LocalObjectStore, name: str, script: str, source: str) -> dict:
    code = publish_script(store, script, source)
    return processing_job_request(
        name=name,
        settings=SETTINGS,
        role_arn="arn:aws:iam::000000000000:role/x",
        entrypoint=["python3", f"/opt/ml/processing/input/code/{script}"],
        arguments=["/opt/ml/processing/output/result"],
        inputs=[JobInput("code", code)],
        outputs=[JobOutput("result", store.uri("out", name))],
    )


def _first_line(message: str) -> str:
    """What the UI shows first of a step failure: the Failure's description, not a traceback."""
    first = message.strip().splitlines()[0]
    assert first.startswith("resources.jobs.base.JobFailedError: "), message
    return first.removeprefix("resources.jobs.base.JobFailedError: ")


def test_job_killed_by_sigkill_names_the_oom_killer_and_what_to_change(store):
    # The job's own process is killed, as the OOM killer kills the biggest process.
    source = (
        "import os, signal\nprint('loading', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    request = _processing_request(store, "fa-prep-acme-0badc0de-0", "oom.py", source)
    result = run_in_asset(
        lambda c, launcher: launcher.run_processing_job(context=c, request=request),
        {"launcher": LocalJobLauncher(store=store)},
    )
    assert not result.success
    line = _first_line(step_error(result))
    assert line.startswith(
        "processing job fa-prep-acme-0badc0de-0 failed: killed by SIGKILL (signal 9), most often "
        "the out-of-memory killer"
    ), line
    assert "FORECAST_PREPROCESSING_INSTANCE_TYPE" in line
    assert "FORECAST_BACKFILL_BATCH_SIZE" in line
    assert "Traceback" not in line and "exit code" not in line


def test_other_signals_are_named(store):
    source = "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"
    request = _processing_request(store, "fa-infer-acme-0badc0de-0", "segv.py", source)
    result = JobSandbox(
        store, Path(os.environ["FORECAST_DATA_HOME"]) / "jobs", sys.executable
    ).run_processing(request, log=lambda line: None)
    assert (result.status, result.failure_reason) == ("Failed", "killed by SIGSEGV (signal 11)")


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_staging_names_job_path_and_remedy(store, monkeypatch):
    request = _processing_request(store, "fa-prep-acme-0badc0de-1", "ok.py", "print('never')\n")
    monkeypatch.setattr(LocalObjectStore, "download_file", _enospc)
    result = run_in_asset(
        lambda c, launcher: launcher.run_processing_job(context=c, request=request),
        {"launcher": LocalJobLauncher(store=store)},
    )
    line = _first_line(step_error(result))
    job_dir = Path(os.environ["FORECAST_DATA_HOME"]) / "jobs" / "fa-prep-acme-0badc0de-1"
    assert line == (
        "processing job fa-prep-acme-0badc0de-1 failed: no space left on device while staging "
        f"input 'code' to {job_dir}/opt/ml/processing/input/code: free space on that disk (old "
        "job folders go after LocalJobLauncher's retention) or give the job a larger volume "
        "(FORECAST_PREPROCESSING_VOLUME_SIZE_GB, now 30 GB)"
    ), line
    assert not (job_dir / "job.log").exists()  # the script never started


def test_full_disk_while_uploading_names_the_output(store, monkeypatch):
    source = "import sys, pathlib\npathlib.Path(sys.argv[1], 'r.txt').write_text('x')\n"
    request = _processing_request(store, "fa-train-acme-0badc0de-2", "up.py", source)
    monkeypatch.setattr(LocalObjectStore, "upload_file", _enospc)
    result = run_in_asset(
        lambda c, launcher: launcher.run_processing_job(context=c, request=request),
        {"launcher": LocalJobLauncher(store=store)},
    )
    line = _first_line(step_error(result))
    assert line.startswith(
        "processing job fa-train-acme-0badc0de-2 failed: no space left on device while uploading output 'result' from "
    ), line
    assert f"to {store.uri('out', 'fa-train-acme-0badc0de-2')}: free space" in line
    assert "FORECAST_TRAINING_VOLUME_SIZE_GB" in line


def test_full_disk_inside_the_script_gets_the_same_advice(store):
    script = textwrap.dedent(
        """
        import errno, os, sys
        from pathlib import Path
        out = Path(os.environ["SM_OUTPUT_DIR"]); out.mkdir(parents=True, exist_ok=True)
        (out / "message").write_text(f"customer 'acme': {OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), '/opt/ml/processing/output/result/x.parquet')}")
        sys.exit(1)
        """
    )
    request = _processing_request(store, "fa-infer-acme-0badc0de-3", "full.py", script)
    result = run_in_asset(
        lambda c, launcher: launcher.run_processing_job(context=c, request=request),
        {"launcher": LocalJobLauncher(store=store)},
    )
    line = _first_line(step_error(result))
    assert (
        "[Errno 28] No space left on device: '/opt/ml/processing/output/result/x.parquet'" in line
    )
    assert line.endswith("(FORECAST_INFERENCE_VOLUME_SIZE_GB, now 30 GB)"), line


def test_full_disk_while_packing_a_training_model_names_the_archive(store, monkeypatch):
    train = b"import os, pathlib\npathlib.Path(os.environ['SM_MODEL_DIR'], 'm').write_text('m')\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("train.py")
        info.size = len(train)
        tar.addfile(info, io.BytesIO(train))
    source = store.uri("code", "train", "sourcedir.tar.gz")
    store.write_bytes(source, buffer.getvalue())
    store.write_bytes(store.uri("data", "rows.txt"), b"abc")
    request = training_job_request(
        name="fa-train-acme-0badc0de-4",
        settings=JobSettings(image_uri="test:local", max_runtime_seconds=60, volume_size_gb=50),
        role_arn="arn:aws:iam::000000000000:role/x",
        program="train.py",
        source_uri=source,
        hyperparameters={},
        channels=[JobInput("train", store.uri("data", "rows.txt"))],
        output_uri=store.uri("models", "acme"),
    )
    monkeypatch.setattr(LocalObjectStore, "upload_file", _enospc)
    jobs = Path(os.environ["FORECAST_DATA_HOME"]) / "jobs"
    result = JobSandbox(store, jobs, sys.executable).run_training(request, log=lambda line: None)
    job_dir = jobs / "fa-train-acme-0badc0de-4"
    assert result.status == "Failed"
    assert result.failure_reason == (
        f"no space left on device while packing {job_dir}/opt/ml/model into "
        f"{job_dir}/model.tar.gz for "
        f"{store.uri('models', 'acme', 'fa-train-acme-0badc0de-4', 'output', 'model.tar.gz')}: "
        "free space on that disk (old job folders go after LocalJobLauncher's retention) or give "
        "the job a larger volume (FORECAST_TRAINING_VOLUME_SIZE_GB, now 50 GB)"
    )
    assert (job_dir / "describe.json").exists() and (job_dir / "job.log").exists()

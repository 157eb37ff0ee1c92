"""The local launcher executes real SageMaker request bodies: staging, environment, Pipes,
failure reasons, time limits, script-mode training, stopping on interruption, and no job left
behind when the process that launched it dies or its run ends."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from resources.jobs import LocalJobLauncher
from resources.jobs.base import JobFailedError
from resources.jobs.requests import (
    JobInput,
    JobOutput,
    model_artifact_uri,
    output_data_uri,
    processing_job_request,
    training_job_request,
)
from resources.jobs.sandbox import execute
from resources.jobs.settings import JobSettings
from resources.storage import LocalObjectStore

SETTINGS = JobSettings(image_uri="test:local", max_runtime_seconds=60)

PROCESSING_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from dagster_pipes import open_dagster_pipes

    inp = Path(sys.argv[1]); manifest_dir = Path(sys.argv[2]); out = Path(sys.argv[3])
    with open_dagster_pipes() as pipes:
        files = sorted(p.relative_to(inp).as_posix() for p in inp.rglob("*") if p.is_file())
        listed = sorted(p.relative_to(manifest_dir).as_posix() for p in manifest_dir.rglob("*") if p.is_file())
        print("staged", files, flush=True)
        (out / "result.json").write_text(json.dumps({
            "files": files, "listed": listed,
            "leak": os.environ.get("LEAKY_SECRET"), "mode": os.environ.get("MODE"),
        }))
        pipes.report_asset_materialization(metadata={"files_seen": len(files)})
    """
)


def run_in_asset(fn, resources: dict[str, Any]) -> dg.ExecuteInProcessResult:
    """Run ``fn(context, launcher)`` inside a real asset step, as assets use the launcher."""

    @dg.asset
    def probe(
        context: dg.AssetExecutionContext, launcher: LocalJobLauncher
    ) -> dg.MaterializeResult:
        return fn(context, launcher)

    return dg.materialize([probe], resources=resources, raise_on_error=False)


def step_error(result: dg.ExecuteInProcessResult) -> str:
    failure = next(e for e in result.all_events if e.is_step_failure)
    return failure.event_specific_data.error.message  # type: ignore[union-attr]


@pytest.fixture
def launcher(store: LocalObjectStore) -> LocalJobLauncher:
    return LocalJobLauncher(store=store)


def publish_script(store: LocalObjectStore, name: str, source: str) -> str:
    uri = store.uri("code", "test", name)
    store.write_bytes(uri, source.encode())
    return store.uri("code", "test") + "/"


def test_processing_job_stages_inputs_isolates_env_and_reports(store, launcher, monkeypatch):
    monkeypatch.setenv("LEAKY_SECRET", "must-not-reach-the-job")
    for key in ("a.csv", "sub/b.csv", "sub/c.csv"):
        store.write_bytes(store.uri("in", key), key.encode())
    manifest = [{"prefix": store.uri("in") + "/"}, "a.csv", "sub/c.csv"]
    store.write_bytes(store.uri("m", "files.manifest"), json.dumps(manifest).encode())
    code = publish_script(store, "job.py", PROCESSING_SCRIPT)
    request = processing_job_request(
        name="fa-test-proc-1",
        settings=SETTINGS,
        role_arn="arn:aws:iam::000000000000:role/x",
        entrypoint=["python3", "/opt/ml/processing/input/code/job.py"],
        arguments=[
            "/opt/ml/processing/input/data",
            "/opt/ml/processing/input/listed",
            "/opt/ml/processing/output/result",
        ],
        inputs=[
            JobInput("code", code),
            JobInput("data", store.uri("in") + "/"),
            JobInput("listed", store.uri("m", "files.manifest"), "ManifestFile"),
        ],
        outputs=[JobOutput("result", store.uri("out", "run1"))],
        environment={"MODE": "test"},
    )
    captured = {}

    def body(context, launcher):
        job = launcher.run_processing_job(context=context, request=request)
        captured["job"] = job
        return dg.MaterializeResult(metadata={**job.reported_metadata(), **job.metadata()})

    result = run_in_asset(body, {"launcher": launcher})
    assert result.success, step_error(result)
    out = json.loads(store.read_bytes(store.uri("out", "run1", "result.json")))
    assert out == {
        "files": ["a.csv", "sub/b.csv", "sub/c.csv"],
        "listed": ["a.csv", "sub/c.csv"],
        "leak": None,
        "mode": "test",
    }
    job = captured["job"]
    assert job.status == "Completed"
    assert job.reported_metadata()["files_seen"].value == 3
    materialization = result.asset_materializations_for_node("probe")[0]
    assert materialization.metadata["job_name"].value == "fa-test-proc-1"
    assert materialization.metadata["files_seen"].value == 3
    job_dir = Path(os.environ["FORECAST_DATA_HOME"]) / "jobs" / "fa-test-proc-1"
    describe = json.loads((job_dir / "describe.json").read_text())
    assert describe["ProcessingJobStatus"] == "Completed"
    assert "staged ['a.csv', 'sub/b.csv', 'sub/c.csv']" in (job_dir / "job.log").read_text()


def test_failed_processing_job_raises_with_exit_message_and_uploads_nothing(store, launcher):
    script = textwrap.dedent(
        """
        import os, sys
        from pathlib import Path
        Path(sys.argv[1], "partial.txt").write_text("half done")
        out = Path(os.environ["SM_OUTPUT_DIR"]); out.mkdir(parents=True, exist_ok=True)
        (out / "message").write_text("customer 'acme', file 'x.csv': broken on purpose")
        sys.exit(3)
        """
    )
    code = publish_script(store, "fail.py", script)
    request = processing_job_request(
        name="fa-test-fail-1",
        settings=SETTINGS,
        role_arn="arn:aws:iam::000000000000:role/x",
        entrypoint=["python3", "/opt/ml/processing/input/code/fail.py"],
        arguments=["/opt/ml/processing/output/result"],
        inputs=[JobInput("code", code)],
        outputs=[JobOutput("result", store.uri("out", "failed"))],
    )
    result = run_in_asset(
        lambda c, launcher: launcher.run_processing_job(context=c, request=request),
        {"launcher": launcher},
    )
    assert not result.success
    message = step_error(result)
    assert "processing job fa-test-fail-1 failed" in message
    assert "customer 'acme', file 'x.csv': broken on purpose" in message
    assert store.list_objects(store.uri("out", "failed") + "/") == []


def test_job_over_its_max_runtime_is_stopped(store, launcher):
    code = publish_script(
        store, "slow.py", "import time\nprint('working', flush=True)\ntime.sleep(120)\n"
    )
    request = processing_job_request(
        name="fa-test-slow-1",
        settings=JobSettings(image_uri="test:local", max_runtime_seconds=2),
        role_arn="arn:aws:iam::000000000000:role/x",
        entrypoint=["python3", "/opt/ml/processing/input/code/slow.py"],
        inputs=[JobInput("code", code)],
    )
    started = time.monotonic()
    result = run_in_asset(
        lambda c, launcher: launcher.run_processing_job(context=c, request=request),
        {"launcher": launcher},
    )
    assert not result.success
    assert "stopped: MaxRuntimeExceeded" in step_error(result)
    assert time.monotonic() - started < 60


def test_training_job_runs_script_mode_and_packs_model(store, launcher):
    train = textwrap.dedent(
        """
        import json, os
        from pathlib import Path
        hps = json.loads(Path(os.environ["SM_INPUT_CONFIG_DIR"], "hyperparameters.json").read_text())
        data = Path(os.environ["SM_CHANNEL_TRAIN"], "rows.txt").read_text()
        Path(os.environ["SM_MODEL_DIR"], "model.txt").write_text(data.upper())
        Path(os.environ["SM_OUTPUT_DATA_DIR"], "metrics.json").write_text(json.dumps({"depth": json.loads(hps["depth"])}))
        """
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("train.py")
        info.size = len(train.encode())
        tar.addfile(info, io.BytesIO(train.encode()))
    source = store.uri("code", "train", "sourcedir.tar.gz")
    store.write_bytes(source, buffer.getvalue())
    store.write_bytes(store.uri("data", "rows.txt"), b"abc")
    request = training_job_request(
        name="fa-test-train-1",
        settings=SETTINGS,
        role_arn="arn:aws:iam::000000000000:role/x",
        program="train.py",
        source_uri=source,
        hyperparameters={"depth": 7},
        channels=[JobInput("train", store.uri("data", "rows.txt"))],
        output_uri=store.uri("models", "acme"),
    )
    result = run_in_asset(
        lambda c, launcher: dg.MaterializeResult(
            metadata=launcher.run_training_job(context=c, request=request).metadata()
        ),
        {"launcher": launcher},
    )
    assert result.success, step_error(result)
    with tarfile.open(fileobj=io.BytesIO(store.read_bytes(model_artifact_uri(request)))) as tar:
        assert tar.extractfile("model.txt").read() == b"ABC"  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(store.read_bytes(output_data_uri(request)))) as tar:
        assert json.load(tar.extractfile("metrics.json")) == {"depth": 7}  # type: ignore[arg-type]


def _interrupt_on_first_line(line: str) -> None:
    """A log sink that raises Dagster's interruption on the job's first line, as a cancel would."""
    if "pid=" in line:
        raise dg.DagsterExecutionInterruptedError()


def test_interruption_stops_the_job_and_its_children(data_home, tmp_path):
    script = tmp_path / "spawn.py"
    pid_file = tmp_path / "child.pid"
    script.write_text(
        textwrap.dedent(
            f"""
            import subprocess, sys, time
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
            open({str(pid_file)!r}, "w").write(str(child.pid))
            print(f"pid={{child.pid}}", flush=True)
            time.sleep(300)
            """
        )
    )
    job_dir = data_home / "jobs" / "interrupt"
    job_dir.mkdir(parents=True)
    with pytest.raises(dg.DagsterExecutionInterruptedError):
        execute(
            "interrupt",
            [sys.executable, str(script)],
            dict(os.environ),
            job_dir,
            300,
            _interrupt_on_first_line,
        )
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 15
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the job's child process survived the interruption"
    assert "stopping the job" in (job_dir / "job.log").read_text()


def test_stop_request_stops_the_job(data_home, tmp_path):
    script = tmp_path / "forever.py"
    script.write_text("import time\nprint('up', flush=True)\ntime.sleep(300)\n")
    job_dir = data_home / "jobs" / "stop"
    job_dir.mkdir(parents=True)
    lines: list[str] = []
    started = time.monotonic()
    status, reason = execute(
        "stop",
        [sys.executable, str(script)],
        dict(os.environ),
        job_dir,
        300,
        lines.append,
        stop_requested=lambda: bool(lines),
    )
    assert (status, lines) == ("Stopped", ["up"])
    assert reason is not None and "Stopped on request" in reason
    assert time.monotonic() - started < 30


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_failed_job_on_missing_input(store, launcher):
    request = processing_job_request(
        name="fa-test-missing-1",
        settings=SETTINGS,
        role_arn="arn:aws:iam::000000000000:role/x",
        entrypoint=["python3", "/opt/ml/processing/input/code/none.py"],
        inputs=[JobInput("code", store.uri("code", "nothing-here") + "/")],
    )
    result = run_in_asset(
        lambda c, launcher: launcher.run_processing_job(context=c, request=request),
        {"launcher": launcher},
    )
    assert not result.success
    assert "matches no objects" in step_error(result)


def test_job_failed_error_is_a_dagster_failure():
    assert issubclass(JobFailedError, dg.Failure)


def test_a_killed_launcher_leaves_no_job_behind(data_home, tmp_path):
    """SIGKILL of the process running execute() (a step process, say): the guard kills the job's
    whole process group, children included."""
    pids = tmp_path / "pids"
    script = tmp_path / "spawn.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, subprocess, sys, time
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
            open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
            time.sleep(300)
            """
        )
    )
    job_dir = data_home / "jobs" / "orphan"
    job_dir.mkdir(parents=True)
    launcher = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from resources.jobs.sandbox import execute
        execute("orphan", [sys.executable, {str(script)!r}], dict(os.environ),
                Path({str(job_dir)!r}), 300, print)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", launcher], cwd=Path(__file__).parents[1])
    try:
        deadline = time.monotonic() + 30
        while not (pids.exists() and len(pids.read_text().split()) == 2):
            assert time.monotonic() < deadline, "the job did not start"
            assert process.poll() is None, "the launcher exited early"
            time.sleep(0.1)
        job, child = map(int, pids.read_text().split())
        assert _alive(job) and _alive(child)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        deadline = time.monotonic() + 15
        while (_alive(job) or _alive(child)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(job), "the job survived its launcher"
        assert not _alive(child), "the job's child survived its launcher"
    finally:
        if process.poll() is None:
            process.kill()


def test_a_job_ends_with_no_guard_left(data_home, tmp_path):
    script = tmp_path / "quick.py"
    script.write_text("print('done', flush=True)\n")
    job_dir = data_home / "jobs" / "quick"
    job_dir.mkdir(parents=True)
    before = _guards()
    assert (
        execute("quick", [sys.executable, str(script)], dict(os.environ), job_dir, 60, print)[0]
        == "Completed"
    )
    assert _guards() == before


def _guards() -> set[int]:
    """Guard processes (children of this process) still running."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"os.killpg(pgid" in cmdline:
            found.add(int(stat.parent.name))
    return found


def test_a_job_stops_when_its_run_has_ended(store, launcher, monkeypatch):
    """The run worker died (or the run was cancelled) while the step process lives on: the
    launcher sees the run's status and stops the job instead of waiting for it."""
    monkeypatch.setattr("resources.jobs.local.RUN_CHECK_SECONDS", 0.5)
    code = publish_script(
        store, "hang.py", "import time\nprint('working', flush=True)\ntime.sleep(120)\n"
    )
    request = processing_job_request(
        name="fa-test-orphaned-1",
        settings=SETTINGS,
        role_arn="arn:aws:iam::000000000000:role/x",
        entrypoint=["python3", "/opt/ml/processing/input/code/hang.py"],
        inputs=[JobInput("code", code)],
    )

    def body(context, launcher):
        # What the code server does when the run worker dies: the run is marked failed.
        context.instance.report_run_failed(context.dagster_run)
        return launcher.run_processing_job(context=context, request=request)

    started = time.monotonic()
    result = run_in_asset(body, {"launcher": launcher})
    assert time.monotonic() - started < 30
    assert not result.success
    message = step_error(result)
    assert "processing job fa-test-orphaned-1 stopped: its Dagster run" in message
    assert "is FAILURE" in message

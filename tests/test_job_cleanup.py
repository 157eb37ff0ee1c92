"""Old job folders are pruned: completed jobs down to their logs, failed jobs whole after their
retention, running jobs never, and nothing outside the jobs folders, locally and in the local
object store."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
from pydantic import ValidationError

from resources.jobs import LocalJobLauncher
from resources.jobs.cleanup import Retention, job_state, prune
from resources.jobs.requests import JobInput, processing_job_request
from resources.jobs.settings import MAX_RUNTIME_SECONDS, JobSettings
from resources.storage import LocalObjectStore
from tests.test_local_launcher import publish_script, run_in_asset, step_error

HOUR, DAY = 3600, 86_400
NOW = time.time()
RETENTION = Retention(completed_hours=24, failed_days=14)
BULKY = (
    "opt/ml/processing/input/raw/a.csv",
    "opt/ml/processing/output/r/x.parquet",
    "model.tar.gz",
)


def _job(
    root: Path,
    name: str,
    *,
    status: str | None,
    ended_ago: float = 0,
    started_ago: float = 0,
    max_runtime: int = 3600,
) -> Path:
    """A job folder as the sandbox leaves it: request, log, staged files, maybe describe.json."""
    job_dir = root / name
    for relative in BULKY:
        (job_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (job_dir / relative).write_bytes(b"x" * 1000)
    request = job_dir / "request.json"
    request.write_text(json.dumps({"StoppingCondition": {"MaxRuntimeInSeconds": max_runtime}}))
    os.utime(request, (NOW - started_ago, NOW - started_ago))
    (job_dir / "job.log").write_text("line\n")
    if status is not None:
        ended = datetime.fromtimestamp(NOW - ended_ago, UTC).isoformat()
        (job_dir / "describe.json").write_text(
            json.dumps({"ProcessingJobStatus": status, "StartTime": ended, "EndTime": ended})
        )
    return job_dir


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _age(path: Path, seconds: float) -> None:
    """Make every file under ``path`` (and the folders) ``seconds`` old."""
    for p in [path, *path.rglob("*")]:
        os.utime(p, (NOW - seconds, NOW - seconds), follow_symlinks=False)


def test_completed_jobs_keep_their_logs_and_failed_jobs_stay_whole_within_retention(tmp_path):
    root = tmp_path / "jobs"
    _job(root, "completed-fresh", status="Completed", ended_ago=HOUR)
    _job(root, "completed-old", status="Completed", ended_ago=2 * DAY)
    _job(root, "completed-ancient", status="Completed", ended_ago=20 * DAY)
    _job(root, "failed-recent", status="Failed", ended_ago=3 * DAY)
    _job(root, "stopped-recent", status="Stopped", ended_ago=13 * DAY)
    _job(root, "failed-old", status="Failed", ended_ago=15 * DAY)
    _job(root, "running", status=None, started_ago=HOUR / 2)
    _job(root, "long-running", status=None, started_ago=20 * DAY, max_runtime=28 * DAY)
    _job(root, "launcher-died-recently", status=None, started_ago=3 * HOUR)
    _job(root, "launcher-died-long-ago", status=None, started_ago=20 * DAY)
    legacy = root / "legacy-no-files"
    legacy.mkdir()
    _age(legacy, 20 * DAY)
    everything = {p.name: _files(p) for p in root.iterdir()}

    report = prune(root, None, RETENTION, now=NOW)

    left = {p.name: _files(p) for p in root.iterdir()}
    assert set(left) == {
        "completed-fresh",
        "completed-old",
        "failed-recent",
        "stopped-recent",
        "running",
        "long-running",
        "launcher-died-recently",
    }
    assert left["completed-old"] == {"job.log", "request.json", "describe.json"}
    for whole in (
        "completed-fresh",
        "failed-recent",
        "stopped-recent",
        "running",
        "long-running",
        "launcher-died-recently",
    ):
        assert left[whole] == everything[whole], whole
    assert report.trimmed == ["completed-old"]
    assert sorted(report.removed) == [
        "completed-ancient",
        "failed-old",
        "launcher-died-long-ago",
        "legacy-no-files",
    ]
    assert report.freed_bytes >= 3000 * 4 and not report.errors
    # A second pass finds nothing more to do.
    assert not prune(root, None, RETENTION, now=NOW)


def test_job_state_reads_what_the_folder_says(tmp_path):
    running = _job(tmp_path, "r", status=None, started_ago=10)
    assert job_state(running, NOW)[0] == "running"
    done = _job(tmp_path, "d", status="Completed", ended_ago=5)
    assert job_state(done, NOW) == ("completed", pytest.approx(NOW - 5, abs=1))
    torn = _job(tmp_path, "t", status=None, started_ago=2 * HOUR)
    (torn / "describe.json").write_text('{"ProcessingJobSta')  # cut short by a crash
    assert job_state(torn, NOW)[0] == "ended"


def test_pruning_never_touches_anything_outside_the_jobs_folders(tmp_path):
    home = tmp_path / "data"
    root = home / "jobs"
    outside_file = home / "forecast.db"
    outside_dir = home / "s3" / "bucket" / "models" / "acme"
    outside_dir.mkdir(parents=True)
    (outside_dir / "model.tar.gz").write_bytes(b"model")
    outside_file.write_bytes(b"db")
    old = _job(root, "failed-old", status="Failed", ended_ago=30 * DAY)
    (old / "link-to-db").symlink_to(outside_file)
    (old / "link-to-models").symlink_to(outside_dir, target_is_directory=True)
    (root / "linked-folder").symlink_to(outside_dir, target_is_directory=True)
    completed = _job(root, "completed-old", status="Completed", ended_ago=3 * DAY)
    (completed / "link-to-models").symlink_to(outside_dir, target_is_directory=True)
    store_jobs = home / "s3" / "bucket" / "jobs"
    (store_jobs / "fa-x" / "output").mkdir(parents=True)
    (store_jobs / "fa-x" / "output" / "o.parquet").write_bytes(b"o")
    (store_jobs / "loose-object").write_bytes(b"an object named jobs/loose-object")
    _age(home, 60 * DAY)

    report = prune(root, store_jobs, RETENTION, now=NOW)

    assert report.removed == ["failed-old"] and report.removed_objects == ["fa-x"]
    assert report.trimmed == ["completed-old"]
    assert outside_file.read_bytes() == b"db"
    assert (outside_dir / "model.tar.gz").read_bytes() == b"model"
    assert (root / "linked-folder").is_symlink()  # not a job folder: left alone
    assert (store_jobs / "loose-object").exists()  # only job folders are pruned
    assert not (completed / "link-to-models").exists()  # the link went, not its target
    with pytest.raises(ValueError, match="not a jobs folder"):
        prune(home, None, RETENTION, now=NOW)
    with pytest.raises(ValueError, match="not a jobs folder"):
        prune(root, home / "s3" / "bucket", RETENTION, now=NOW)


def test_object_store_job_folders_go_after_the_retention_unless_the_job_runs(tmp_path):
    root = tmp_path / "jobs"
    store_jobs = tmp_path / "s3" / "bucket" / "prefix" / "jobs"
    for name in ("fa-old", "fa-recent", "fa-still-running"):
        folder = store_jobs / name / "input" / "batch"
        folder.mkdir(parents=True)
        (folder / "batch.json").write_text("{}")
    _age(store_jobs / "fa-old", 15 * DAY)
    _age(store_jobs / "fa-still-running", 15 * DAY)
    (store_jobs / "fa-recent" / "output").mkdir()
    (store_jobs / "fa-recent" / "output" / "new.parquet").write_bytes(b"n")  # newest counts
    _age(store_jobs / "fa-recent" / "input", 15 * DAY)
    _job(root, "fa-still-running", status=None, started_ago=15 * DAY, max_runtime=28 * DAY)

    report = prune(root, store_jobs, RETENTION, now=NOW)

    assert report.removed_objects == ["fa-old"]
    assert sorted(p.name for p in store_jobs.iterdir()) == ["fa-recent", "fa-still-running"]


def test_pruning_runs_at_most_every_interval(tmp_path):
    root = tmp_path / "jobs"
    stamp = tmp_path / ".jobs-pruned"
    root.mkdir()
    assert not prune(root, None, RETENTION, stamp=stamp, now=NOW)
    _job(root, "failed-old", status="Failed", ended_ago=30 * DAY)
    skipped = prune(root, None, RETENTION, stamp=stamp, now=NOW + 60)
    assert not skipped and (root / "failed-old").exists()
    done = prune(root, None, RETENTION, stamp=stamp, now=NOW + 3600)
    assert done.removed == ["failed-old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".jobs-pruned", "jobs"]


def test_the_launcher_prunes_when_a_job_starts(store: LocalObjectStore, data_home: Path):
    root = data_home / "jobs"
    _job(root, "fa-prep-acme-11111111-0", status="Failed", ended_ago=15 * DAY)
    kept = _job(root, "fa-prep-acme-22222222-0", status="Failed", ended_ago=1 * DAY)
    trimmed = _job(root, "fa-prep-acme-33333333-0", status="Completed", ended_ago=2 * HOUR)
    store.write_bytes(store.uri("jobs", "fa-prep-acme-11111111-0", "output", "x.parquet"), b"x")
    store.write_bytes(store.uri("preprocessed", "acme", "load.parquet"), b"published")
    _age(data_home / "s3", 15 * DAY)
    code = publish_script(store, "ok.py", "print('ok', flush=True)\n")
    request = processing_job_request(
        name="fa-prep-acme-44444444-0",
        settings=JobSettings(image_uri="test:local", max_runtime_seconds=60),
        role_arn="arn:aws:iam::000000000000:role/x",
        entrypoint=["python3", "/opt/ml/processing/input/code/ok.py"],
        inputs=[JobInput("code", code)],
    )
    # Completed jobs are trimmed at once here; failed ones keep the default two weeks.
    launcher = LocalJobLauncher(store=store, completed_retention_hours=1)
    logged: list[str] = []

    def body(context, launcher):
        job = launcher.run_processing_job(context=context, request=request)
        logged.extend(
            e.user_message
            for e in context.instance.all_logs(context.run_id)
            if "pruned job folders" in e.user_message
        )
        return dg.MaterializeResult(metadata=job.metadata())

    result = run_in_asset(body, {"launcher": launcher})
    assert result.success, step_error(result)
    assert sorted(p.name for p in root.iterdir()) == [
        "fa-prep-acme-22222222-0",
        "fa-prep-acme-33333333-0",
        "fa-prep-acme-44444444-0",
    ]
    assert _files(kept) >= {"job.log", "model.tar.gz"}
    assert _files(trimmed) == {"job.log", "request.json", "describe.json"}
    assert not store.list_objects(store.uri("jobs") + "/")
    assert store.read_bytes(store.uri("preprocessed", "acme", "load.parquet")) == b"published"
    assert logged and "1 trimmed to their logs, 1 removed, 1 removed from the object" in logged[0]
    # The new job's own folder has what the pruning reads.
    assert _files(root / "fa-prep-acme-44444444-0") >= {"request.json", "describe.json", "job.log"}


def test_retention_settings_refuse_negative_times(store):
    with pytest.raises(ValidationError):
        LocalJobLauncher(store=store, failed_retention_days=-1)
    with pytest.raises(ValueError):
        Retention(completed_hours=-1, failed_days=1)


def test_s3_lifecycle_rules_are_accepted_and_cover_the_job_prefix(s3_store):
    """The rules in iam/ load into a bucket (moto validates them) and expire exactly the prefixes
    that jobs write, filled in as iam/README.md says."""
    import boto3

    from forecast_assets import paths
    from tests.live_dagster import REPO_ROOT

    prefix = "forecast-assets"
    text = (REPO_ROOT / "iam" / "s3-lifecycle-jobs.json").read_text()
    rules = json.loads(text.replace("${PREFIX}", prefix))
    client = boto3.client("s3")
    client.put_bucket_lifecycle_configuration(Bucket=s3_store.bucket, LifecycleConfiguration=rules)
    stored = client.get_bucket_lifecycle_configuration(Bucket=s3_store.bucket)["Rules"]
    expiring = {r["Filter"]["Prefix"]: r["Expiration"]["Days"] for r in stored if "Expiration" in r}
    assert expiring == {f"{prefix}/jobs/": 30, f"{prefix}/pipes/": 30}
    # Longer than SageMaker lets any job run, so no running job loses its inputs.
    assert expiring[f"{prefix}/jobs/"] * DAY > max(MAX_RUNTIME_SECONDS.values())
    store = s3_store.model_copy(update={"prefix": prefix})
    for uri in (paths.job_output(store, "fa-x", "out"), paths.job_input(store, "fa-x", "batch")):
        key = uri.split("/", 3)[3]
        assert key.startswith(f"{prefix}/jobs/"), key

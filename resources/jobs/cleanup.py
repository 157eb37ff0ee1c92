"""Pruning of local job folders: what a failed job needs for diagnosis stays, the rest goes.

Every local job leaves ``<data home>/jobs/<job name>/`` behind (about 16 MB per customer run:
the staged inputs, the outputs, the packed archives), and its inputs and outputs in the object
store under ``jobs/<job name>/``. :func:`prune` removes them by age, from what each folder says
about its job:

- a **Completed** job keeps ``job.log``, ``request.json`` and ``describe.json``; everything
  else (staged inputs, outputs, archives) goes ``completed_hours`` after it ended. Its outputs
  were uploaded and promoted, and its inputs are copies of objects in the store.
- a **Failed or Stopped** job keeps its whole folder, the staged inputs included (rerun the
  script on them), for ``failed_days``; then the folder goes. So does a completed job's log.
- a job with no ``describe.json`` is running, or the process that launched it died. It counts
  as running until its own time limit (``MaxRuntimeInSeconds`` in ``request.json``) has passed,
  and is left alone until then; afterwards it is treated as a failed job that ended then.
- a folder with neither file (older versions) counts as failed, ending at its last change.
- in a local object store, a job's folder under ``jobs/`` goes ``failed_days`` after its newest
  object was written, unless that job is still running. On S3 a lifecycle rule does the same
  (``iam/s3-lifecycle-jobs.json``).

Only direct subfolders of the two ``jobs`` folders are touched; symbolic links are unlinked,
never followed. A folder that cannot be removed is reported, never raised: pruning must not
fail the job about to start.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from resources.jobs.sandbox import DESCRIBE_FILE, LOG_FILE, REQUEST_FILE, STOP_GRACE_SECONDS

KEPT_FILES = frozenset({LOG_FILE, REQUEST_FILE, DESCRIBE_FILE})
# A scan at most this often: a burst of job starts (a backfill) scans once.
PRUNE_INTERVAL_SECONDS = 600

JobState = Literal["running", "completed", "ended"]


@dataclass(frozen=True)
class Retention:
    completed_hours: float
    failed_days: float

    def __post_init__(self) -> None:
        if self.completed_hours < 0 or self.failed_days < 0:
            raise ValueError("retention times cannot be negative")


@dataclass
class PruneReport:
    trimmed: list[str] = field(default_factory=list)
    """Completed jobs whose staged inputs and outputs were removed."""
    removed: list[str] = field(default_factory=list)
    """Job folders removed whole."""
    removed_objects: list[str] = field(default_factory=list)
    """Jobs whose folder in the local object store was removed."""
    freed_bytes: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"pruned job folders: {len(self.trimmed)} trimmed to their logs, "
            f"{len(self.removed)} removed, {len(self.removed_objects)} removed from the object "
            f"store; {self.freed_bytes / 1e6:.1f} MB freed"
        )

    def __bool__(self) -> bool:
        return bool(self.trimmed or self.removed or self.removed_objects or self.errors)


def prune(
    jobs_root: Path,
    store_jobs: Path | None,
    retention: Retention,
    *,
    stamp: Path | None = None,
    now: float | None = None,
    min_interval_seconds: float = PRUNE_INTERVAL_SECONDS,
) -> PruneReport:
    """Prune ``jobs_root`` (and ``store_jobs``, a local object store's ``jobs`` folder).

    With a ``stamp`` file (kept outside the jobs folder, whose entries are all jobs), skipped if
    the last pruning was less than ``min_interval_seconds`` ago.
    """
    now = time.time() if now is None else now
    report = PruneReport()
    for root in (jobs_root, store_jobs):
        if root is not None and root.name != "jobs":
            raise ValueError(f"refusing to prune {root}: not a jobs folder")
    if not jobs_root.is_dir():
        return report
    if stamp is not None:
        if now - _mtime(stamp) < min_interval_seconds:
            return report
        stamp.touch()
    running = prune_job_dirs(jobs_root, retention, now, report)
    if store_jobs is not None and store_jobs.is_dir():
        prune_store_jobs(store_jobs, running, retention, now, report)
    return report


def prune_job_dirs(
    jobs_root: Path, retention: Retention, now: float, report: PruneReport
) -> set[str]:
    """Trim completed jobs and remove old ones; returns the names of jobs that may be running."""
    running = set()
    for job_dir in _subfolders(jobs_root):
        state, ended = job_state(job_dir, now)
        age = now - ended
        if state == "running":
            running.add(job_dir.name)
        elif age > retention.failed_days * 86_400:
            _remove(job_dir, report, report.removed)
        elif state == "completed" and age > retention.completed_hours * 3600:
            bulky = [p for p in job_dir.iterdir() if p.name not in KEPT_FILES]
            if bulky:
                for path in bulky:
                    _remove(path, report)
                report.trimmed.append(job_dir.name)
    return running


def prune_store_jobs(
    store_jobs: Path, running: set[str], retention: Retention, now: float, report: PruneReport
) -> None:
    """Remove a local object store's job folders whose newest object is past the retention."""
    for folder in _subfolders(store_jobs):
        if folder.name in running:
            continue
        newest = max((_mtime(p) for p in _files(folder)), default=_mtime(folder))
        if now - newest > retention.failed_days * 86_400:
            _remove(folder, report, report.removed_objects)


def job_state(job_dir: Path, now: float) -> tuple[JobState, float]:
    """What a job folder says of its job, and when the job ended (as a timestamp)."""
    describe = _read_json(job_dir / DESCRIBE_FILE)
    if describe is not None:
        status = describe.get("ProcessingJobStatus") or describe.get("TrainingJobStatus")
        ended = describe.get("EndTime")
        if status and ended:
            ended_at = datetime.fromisoformat(ended).timestamp()
            return ("completed" if status == "Completed" else "ended"), ended_at
    request = _read_json(job_dir / REQUEST_FILE)
    if request is not None:
        limit = request.get("StoppingCondition", {}).get("MaxRuntimeInSeconds")
        if isinstance(limit, int | float):
            # The job is stopped at its limit; a dead launcher's guard stops it sooner.
            deadline = _mtime(job_dir / REQUEST_FILE) + limit + STOP_GRACE_SECONDS + 60
            return ("running" if now < deadline else "ended"), min(deadline, now)
    changed = [_mtime(job_dir)]
    changed += [_mtime(p) for p in job_dir.iterdir() if not p.is_symlink()]
    return "ended", max(changed)


def _subfolders(root: Path) -> Iterator[Path]:
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            yield entry


def _files(folder: Path) -> Iterator[Path]:
    for dirpath, _, filenames in os.walk(folder):  # does not follow symbolic links
        for name in filenames:
            yield Path(dirpath, name)


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except FileNotFoundError:
        return 0.0


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, or cut short by a crash
        return None
    return data if isinstance(data, dict) else None


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except FileNotFoundError:
        return 0


def _remove(path: Path, report: PruneReport, into: list[str] | None = None) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            size = sum(_size(p) for p in _files(path))
            shutil.rmtree(path)
        else:
            size = _size(path)
            path.unlink()
    except FileNotFoundError:
        pass  # another process pruned it first
    except OSError as exc:
        report.errors.append(f"{path}: {exc}")
        return
    report.freed_bytes += size
    if into is not None:
        into.append(path.name)

"""Run one job: claim the row, train with the core, persist what it reports, record the end.

A heartbeat thread renews the job's lease and watches the cancel flag; the training loop polls
a threading.Event between steps, so the database is never queried on the training hot path.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from tsla_core import CheckpointRecord, CheckpointStore, Hooks, MetricRow, train
from tsla_core.checkpoint import CheckpointError
from tsla_core.datasets import DatasetError
from tsla_shared import events, jobs
from tsla_shared.db import session_scope
from tsla_shared.models import Job
from tsla_shared.settings import Settings, get_settings
from tsla_shared.spec import RunSpec
from tsla_shared.storage import Storage

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long a database write is retried before the attempt gives up (a restart takes seconds).
RETRY_FOR_SECONDS = 600.0

# Errors in the job's own input (data set missing on this worker, bad teacher): not retried.
USER_ERRORS = (DatasetError, CheckpointError)


def is_transient(error: BaseException) -> bool:
    """A lost or refused connection, or SQLite's "database is locked": worth retrying."""
    if isinstance(error, OperationalError | InterfaceError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def with_retries(action: Callable[[], T], what: str, retry_for: float = RETRY_FOR_SECONDS) -> T:
    """Run a database action, retrying transient failures with exponential backoff (0.2 s .. 10 s),
    so a write during a PostgreSQL restart is delayed, not dropped."""
    deadline = time.monotonic() + retry_for
    delay = 0.2
    while True:
        try:
            return action()
        except Exception as error:
            if not is_transient(error) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, type(error).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Heartbeat(threading.Thread):
    """Renews the lease every lease/3 seconds; sets `stop` on cancel or when the lease is lost."""

    def __init__(self, settings: Settings, job_id: str, worker_id: str) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.settings = settings
        self.job_id = job_id
        self.worker_id = worker_id
        self.stop = threading.Event()
        self.cancel_requested = False
        self.lease_lost = False
        self._done = threading.Event()

    def run(self) -> None:
        interval = self.settings.lease_seconds / 3
        while not self._done.wait(interval):
            try:
                with session_scope(self.settings.resolved_database_url) as session:
                    status = jobs.renew_lease(
                        session, self.job_id, self.worker_id, self.settings.lease_seconds
                    )
            except Exception:  # a database restart: keep training, try again next beat
                log.exception("heartbeat for %s failed; retrying", self.job_id)
                continue
            if status.cancel_requested:
                self.cancel_requested = True
                self.stop.set()
            if not status.held:
                self.lease_lost = True
                self.stop.set()

    def finish(self) -> None:
        self._done.set()
        self.join(timeout=10)


class JobRun:
    """The hooks that persist one attempt's metrics, checkpoints and logs."""

    def __init__(self, settings: Settings, job_id: str, attempt: int, storage: Storage) -> None:
        self.settings = settings
        self.job_id = job_id
        self.attempt = attempt
        self.storage = storage
        self.url = settings.resolved_database_url

    def log(self, message: str, level: str = "info") -> None:
        log.info("job %s: %s", self.job_id, message)

        def write() -> None:
            with session_scope(self.url) as session:
                jobs.append_log(session, self.job_id, self.attempt, level, message)

        with_retries(write, "writing a log line")

    def on_metrics(self, rows: list[MetricRow]) -> None:
        def write() -> None:
            with session_scope(self.url) as session:
                jobs.record_metrics(session, self.job_id, self.attempt, [row.as_dict() for row in rows])

        with_retries(write, f"writing epoch {rows[0].epoch} metrics")
        events.notify(self.settings.events_url, self.job_id, "metrics")

    def on_checkpoint(self, record: CheckpointRecord) -> None:
        key = self.storage.key(self.job_id, f"checkpoints/{record.path.name}")
        kept = {r.name for r in CheckpointStore(record.path.parent).records()}
        if not self.storage.is_local:
            self.storage.put_file(record.path, key)
            self.storage.put_file(record.path.with_suffix(".json"), key.removesuffix(".pt") + ".json")
            for stored in self.storage.list(f"{self.job_id}/checkpoints"):
                if Path(stored).stem not in kept:  # the core's retention removed the local copy
                    self.storage.delete(stored)

        def write() -> None:
            with session_scope(self.url) as session:
                jobs.record_checkpoint(session, self.job_id, record.public(), key, kept)

        with_retries(write, f"recording checkpoint {record.name}")
        events.notify(self.settings.events_url, self.job_id, "checkpoint")

    def hooks(self, heartbeat: Heartbeat) -> Hooks:
        return Hooks(
            on_metrics=self.on_metrics,
            on_checkpoint=self.on_checkpoint,
            should_stop=heartbeat.stop.is_set,
            on_log=self.log,
        )


def resolve_teacher(settings: Settings, storage: Storage, spec: RunSpec, job_id: str) -> Path | None:
    """The local file of the teacher job's best or latest checkpoint ("-pre" methods)."""
    teacher = spec.smoothing.teacher
    if teacher is None or teacher.job is None:
        return None
    with session_scope(settings.resolved_database_url) as session:
        pick = jobs.best_checkpoint if teacher.checkpoint == "best" else jobs.latest_checkpoint
        checkpoint = pick(session, teacher.job)
        if checkpoint is None:
            raise CheckpointError(f"teacher job {teacher.job} has no {teacher.checkpoint} checkpoint")
        key = checkpoint.storage_key
    if storage.is_local:
        return Path(storage.root) / key
    local = settings.resolved_work_dir / job_id / "teacher.pt"
    storage.get_file(key, local)
    return local


def prepare_run_dir(settings: Settings, storage: Storage, job_id: str) -> Path:
    """Where the core writes: the storage folder itself, or scratch holding the stored checkpoints."""
    if storage.is_local:
        return storage.job_folder(job_id)
    run_dir = settings.resolved_work_dir / job_id
    for key in storage.list(f"{job_id}/checkpoints"):
        storage.get_file(key, run_dir / "checkpoints" / Path(key).name)
    return run_dir


def run_job(job_id: str, settings: Settings | None = None) -> str:
    """Train job `job_id` if this worker wins it; returns what happened, for the task log."""
    settings = settings or get_settings()
    url = settings.resolved_database_url
    worker_id = new_worker_id()

    def claim() -> tuple[RunSpec, int] | None:
        with session_scope(url) as session:
            if not jobs.claim_job(session, job_id, worker_id, settings.lease_seconds):
                return None
            job = session.get(Job, job_id)
            assert job is not None
            return RunSpec.model_validate(job.spec), job.attempt

    claimed = with_retries(claim, f"claiming job {job_id}")
    if claimed is None:
        return "not claimed"  # a duplicate delivery, a canceled job or another worker's
    spec, attempt = claimed
    events.notify(settings.events_url, job_id, "state")

    storage = Storage(settings.resolved_storage_url)
    run = JobRun(settings, job_id, attempt, storage)
    heartbeat = Heartbeat(settings, job_id, worker_id)
    heartbeat.start()
    try:
        run.log(f"attempt {attempt} started on {worker_id}")
        run_dir = prepare_run_dir(settings, storage, job_id)
        teacher_path = resolve_teacher(settings, storage, spec, job_id)
        result = train(spec, run_dir, settings.data_root, run.hooks(heartbeat), teacher_path)
    except USER_ERRORS as error:
        return end(run, worker_id, "failed", f"{type(error).__name__}: {error}")
    except Exception as error:
        run.log(traceback.format_exc(), level="error")
        return end(run, worker_id, "failed", f"{type(error).__name__}: {error}")
    finally:
        heartbeat.finish()
    if result.status == "completed":
        return end(run, worker_id, "succeeded")
    if heartbeat.cancel_requested:
        return end(run, worker_id, "canceled", "canceled by request")
    run.log("lease lost; another attempt owns the job now", level="warning")
    return "lease lost"


def end(run: JobRun, worker_id: str, state: str, error: str | None = None) -> str:
    def write() -> bool:
        with session_scope(run.url) as session:
            return jobs.finish_job(session, run.job_id, worker_id, state, error)

    recorded = with_retries(write, f"recording the end of job {run.job_id}")
    events.notify(run.settings.events_url, run.job_id, "state")
    run.log(f"attempt {run.attempt} ended: {state}" + (f" ({error})" if error else ""))
    return state if recorded else f"{state} (not recorded: lease lost)"

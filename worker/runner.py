"""Run one job: claim the row, train with the core, persist what it reports, record the end.

A heartbeat thread renews the job's lease every lease/3 seconds and reads the cancel flag every
CANCEL_POLL_SECONDS; the training loop polls a threading.Event between steps, so the database is
never queried on the training hot path.

How an attempt ends: a divergence, a missing data set or a bad teacher is the job's own error
(`failed` with the reason, not retried); a rank of a multi-process job that died
(RankLostError: the group was ended) and checkpoint storage that fails after the core's retries,
or stays unreachable longer than `storage_retry_seconds`, is the infrastructure's
(`jobs.release_job`: re-queued while attempts remain, then `failed` with the reason); anything
else fails the job with a one-line reason that never quotes SQL. Once the end is recorded, a job
of an experiment lets its experiment move on (`experiments.schedule`: a freed slot, a teacher
that succeeded or failed).

On object storage a checkpoint's row is recorded only once its upload succeeded; until then the
training loop waits (an outage delays the job, it loses no checkpoint). A checkpoint that could
not be uploaded stays in this worker's scratch space, and the next attempt here uploads and
records it before it resumes from it (`upload_pending`); an attempt on another worker resumes from
the newest stored one.

When training starts the job's `provenance` is recorded: the core's RunInfo (versions, device,
data set identity) and the git commit of the worker's code.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, TypeVar

from celery import Celery
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from tsla_core import CheckpointRecord, CheckpointStore, Hooks, MetricRow, train
from tsla_core.checkpoint import (
    CheckpointError,
    CheckpointStorageError,
    SkippedCheckpoint,
    retry_storage,
)
from tsla_core.distributed import RankLostError
from tsla_core.loop import DivergedError
from tsla_core.readers import DatasetError
from tsla_service import events, experiments, jobs, results
from tsla_service.dataset_cache import DatasetCache, DatasetFetchError
from tsla_service.db import session_factory
from tsla_service.models import Job
from tsla_service.settings import Settings
from tsla_service.storage import Storage, StorageUnavailable, retry_unreachable, storage_for
from tsla_spec.records import RunInfo
from tsla_spec.spec import RunSpec, upgrade_stored_spec

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long a database write is retried before the attempt gives up (a restart takes seconds).
RETRY_FOR_SECONDS = 600.0

# How often the heartbeat thread reads the cancel flag (one SELECT by primary key): a cancel
# reaches the loop within this plus one step, whatever the lease.
CANCEL_POLL_SECONDS = 0.5

# Errors of the job's own (a divergence, a data set missing on this worker, a bad teacher):
# not retried.
USER_ERRORS = (DivergedError, DatasetError, CheckpointError)


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


def describe(error: BaseException) -> str:
    """The job's `error` for an exception: the core's messages speak for themselves; a database
    error gives its driver's first line, never the statement or its parameters."""
    if isinstance(error, DivergedError | CheckpointStorageError):
        return str(error)
    if isinstance(error, StatementError) and error.orig is not None:
        error = error.orig
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


@lru_cache(maxsize=1)
def checkout_commit() -> str | None:
    """`git rev-parse HEAD` of the folder holding the worker package, if that is a git checkout
    (an installed package is not: then TSLA_GIT_COMMIT says it). Read once per process."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        found = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None


def provenance(info: RunInfo, settings: Settings) -> dict[str, Any]:
    """What the job's `provenance` column holds: the core's RunInfo and the source commit."""
    return {**dataclasses.asdict(info), "git_commit": checkout_commit() or settings.git_commit}


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Heartbeat(threading.Thread):
    """Renews the lease every lease/3 seconds and reads the cancel flag every CANCEL_POLL_SECONDS
    in between (reads only: no more lease writes); sets `stop` on cancel or when the lease is lost."""

    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], job_id: str, worker_id: str
    ) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.settings = settings
        self.sessions = sessions
        self.job_id = job_id
        self.worker_id = worker_id
        self.stop = threading.Event()
        self.cancel_requested = False
        self.lease_lost = False
        self._done = threading.Event()

    def run(self) -> None:
        lease = self.settings.lease_seconds
        renew_every = lease / 3
        next_renewal = time.monotonic() + renew_every
        while not self._done.wait(min(CANCEL_POLL_SECONDS, renew_every)):
            renew = time.monotonic() >= next_renewal
            try:
                with self.sessions() as session:
                    if renew:
                        status = jobs.renew_lease(session, self.job_id, self.worker_id, lease)
                    else:
                        status = jobs.lease_status(session, self.job_id, self.worker_id)
            except Exception:  # a database restart: keep training, try again at the next poll
                if renew:  # once per lease period, not every poll
                    log.exception("heartbeat for %s failed; retrying", self.job_id)
                    next_renewal = time.monotonic() + renew_every / 4
                continue
            if renew:
                next_renewal = time.monotonic() + renew_every
            self.observe(status)

    def observe(self, status: jobs.LeaseStatus) -> None:
        if status.cancel_requested:
            self.cancel_requested = True
            self.stop.set()
        if not status.held:
            self.lease_lost = True
            self.stop.set()

    def finish(self) -> None:
        self._done.set()
        self.join(timeout=10)


# Log levels of the job's own log, as the worker's logging levels.
LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@dataclass
class JobRun:
    """One claimed attempt of a job: the hooks that persist its metrics, checkpoints and logs."""

    settings: Settings
    sessions: sessionmaker[Session]
    job_id: str
    worker_id: str
    attempt: int
    spec: RunSpec
    storage: Storage
    experiment_id: str | None = None
    queue: Celery | None = None  # sends what the experiment's scheduler releases

    def write(self, action: Callable[[Session], T], what: str) -> T:
        """Run `action` in a fresh session, retrying through database restarts."""

        def attempt() -> T:
            with self.sessions() as session:
                return action(session)

        return with_retries(attempt, what)

    def log(self, message: str, level: str = "info") -> None:
        log.log(LEVELS[level], "job %s: %s", self.job_id, message)
        self.write(
            lambda session: results.append_log(session, self.job_id, self.attempt, level, message),
            "writing a log line",
        )

    def on_metrics(self, rows: list[MetricRow]) -> None:
        self.write(
            lambda session: results.record_metrics(session, self.job_id, self.attempt, rows),
            f"writing epoch {rows[0].epoch} metrics",
        )
        events.notify(self.settings.events_url, self.job_id, "metrics")

    def on_checkpoint(self, record: CheckpointRecord) -> None:
        """Upload (remote storage), then record the row: a listed checkpoint is always stored."""
        key = self.storage.key(self.job_id, f"checkpoints/{record.path.name}")
        kept = {r.name for r in CheckpointStore(record.path.parent).records()}
        if not self.storage.is_local:
            self.upload(record.path, key)
            self.upload(record.path.with_suffix(".json"), key.removesuffix(".pt") + ".json")
        self.write(
            lambda session: results.record_checkpoint(session, self.job_id, record, key, kept),
            f"recording checkpoint {record.name}",
        )
        if not self.storage.is_local:
            self.prune_stored(kept)
        events.notify(self.settings.events_url, self.job_id, "checkpoint")

    def upload(self, local: Path, key: str) -> None:
        self.stored(lambda: self.storage.put_file(local, key), f"uploading {local.name}")

    def stored(self, action: Callable[[], T], what: str) -> T:
        """A remote storage action: waited out while storage is unreachable (StorageUnavailable
        after `storage_retry_seconds`); other storage errors retried like the core's local writes
        (CheckpointStorageError after). Every retry is a warning in the job's log."""

        def warn(message: str) -> None:
            self.log(message, level="warning")

        retry_for = self.settings.storage_retry_seconds
        return retry_storage(lambda: retry_unreachable(action, what, retry_for, warn), what, log=warn)

    def prune_stored(self, kept: set[str]) -> None:
        """Delete the stored checkpoints the core's retention removed locally (their rows are marked
        deleted already, so none is offered meanwhile)."""
        folder = f"{self.job_id}/checkpoints"
        for key in self.stored(lambda: self.storage.list(folder), "listing stored checkpoints"):
            if Path(key).stem not in kept:
                self.stored(partial(self.storage.delete, key), f"deleting {Path(key).name}")

    def upload_pending(self, folder: Path, stored: list[str]) -> None:
        """Upload and record the checkpoints in scratch newer than every stored one: an earlier
        attempt on this worker wrote them but could not upload them (storage was unreachable)."""
        stored_names = {Path(key).stem for key in stored}
        records = CheckpointStore(folder).records()  # oldest first
        newest_stored = max((i for i, r in enumerate(records) if r.name in stored_names), default=-1)
        for record in records[newest_stored + 1 :]:
            self.log(f"uploading checkpoint {record.name}, which an earlier attempt could not")
            self.on_checkpoint(record)

    def on_skipped_checkpoint(self, skipped: SkippedCheckpoint) -> None:
        """Resume passed over a checkpoint that does not verify: stop offering it (list, latest,
        best, download) so its recorded sha256 is never served as its ETag again."""
        name = skipped.record.name
        marked = self.write(
            lambda session: results.mark_checkpoint_corrupt(session, self.job_id, name),
            f"marking checkpoint {name} corrupt",
        )
        if marked:
            self.log(f"checkpoint {name} marked corrupt, no longer offered: {skipped.reason}", "warning")
            events.notify(self.settings.events_url, self.job_id, "checkpoint")

    def on_start(self, info: RunInfo) -> None:
        record = provenance(info, self.settings)
        self.write(
            lambda session: jobs.record_provenance(session, self.job_id, record), "recording the provenance"
        )

    def hooks(self, heartbeat: Heartbeat) -> Hooks:
        return Hooks(
            on_metrics=self.on_metrics,
            on_checkpoint=self.on_checkpoint,
            should_stop=heartbeat.stop.is_set,
            on_log=self.log,
            on_skipped_checkpoint=self.on_skipped_checkpoint,
            on_start=self.on_start,
        )

    def schedule_experiment(self) -> None:
        """After the end is recorded: the experiment may send its next job (a freed slot) or fail
        the dependents of a teacher that did not succeed. A failure here is the reaper's to retry."""
        experiment_id, queue = self.experiment_id, self.queue
        if experiment_id is None or queue is None:
            return
        try:
            self.write(
                lambda session: experiments.schedule(session, queue, self.settings, experiment_id),
                f"scheduling experiment {experiment_id}",
            )
        except Exception:
            log.exception("scheduling experiment %s failed; the reaper will", experiment_id)

    def finish(self, state: str, error: str | None = None) -> str:
        """Record the attempt's end (if this worker still holds the job); what happened, for the task log."""
        recorded = self.write(
            lambda session: jobs.finish_job(session, self.job_id, self.worker_id, state, error),
            f"recording the end of job {self.job_id}",
        )
        events.notify(self.settings.events_url, self.job_id, "state")
        self.log(f"attempt {self.attempt} ended: {state}" + (f" ({error})" if error else ""))
        if recorded:
            self.schedule_experiment()
        return state if recorded else f"{state} (not recorded: lease lost)"

    def release(self, reason: str) -> str:
        """An infrastructure failure ended the attempt: another attempt while any remain."""
        state = self.write(
            lambda session: jobs.release_job(session, self.job_id, self.worker_id, reason),
            f"releasing job {self.job_id}",
        )
        events.notify(self.settings.events_url, self.job_id, "state")
        self.log(f"attempt {self.attempt} ended: {state or 'lease lost'} ({reason})", level="warning")
        if state is not None:
            self.schedule_experiment()
        return state or "lease lost"


def resolve_teacher(run: JobRun) -> Path | None:
    """The local file of the teacher job's best or latest checkpoint ("-pre" methods)."""
    teacher = run.spec.smoothing.teacher
    if teacher is None or teacher.job is None:
        return None
    with run.sessions() as session:
        checkpoint = results.find_checkpoint(session, teacher.job, teacher.checkpoint)
        if checkpoint is None:
            raise CheckpointError(f"teacher job {teacher.job} has no {teacher.checkpoint} checkpoint")
        key = checkpoint.storage_key
    if run.storage.is_local:
        return Path(run.storage.root) / key
    local = run.settings.resolved_work_dir / run.job_id / "teacher.pt"
    run.stored(lambda: run.storage.get_file(key, local), "downloading the teacher's checkpoint")
    return local


def fetch_uploaded(run: JobRun) -> Path | None:
    """The local, verified copy of the job's uploaded data set (fetched by content hash into the
    worker's cache, shared by the jobs on this machine); None for a built-in data set. A fetch
    that fails (storage unreachable, a stored copy that does not verify) releases the attempt."""
    uploaded = run.spec.data.uploaded
    if uploaded is None:
        return None
    cache = DatasetCache(run.storage, run.settings.resolved_work_dir / "datasets")
    return cache.local(uploaded.sha256)


def prepare_run_dir(run: JobRun) -> Path:
    """Where the core writes: the storage folder itself, or scratch holding the stored checkpoints
    (and those an earlier attempt here could not upload, uploaded now)."""
    if run.storage.is_local:
        return run.storage.job_folder(run.job_id)
    folder = run.settings.resolved_work_dir / run.job_id / "checkpoints"
    stored = run.stored(lambda: run.storage.list(f"{run.job_id}/checkpoints"), "listing checkpoints")
    for key in stored:
        run.stored(partial(run.storage.get_file, key, folder / Path(key).name), f"downloading {key}")
    run.upload_pending(folder, stored)
    return folder.parent


def claim(
    settings: Settings,
    sessions: sessionmaker[Session],
    job_id: str,
    worker_id: str,
    queue: Celery | None = None,
) -> JobRun | None:
    """Win the job for this worker; None for a duplicate delivery, a canceled job or another's."""

    def take() -> tuple[RunSpec, int, str | None] | None:
        with sessions() as session:
            if not jobs.claim_job(session, job_id, worker_id, settings.lease_seconds):
                return None
            job = session.get(Job, job_id)
            assert job is not None
            return RunSpec.model_validate(upgrade_stored_spec(job.spec)), job.attempt, job.experiment_id

    claimed = with_retries(take, f"claiming job {job_id}")
    if claimed is None:
        return None
    spec, attempt, experiment_id = claimed
    events.notify(settings.events_url, job_id, "state")
    storage = storage_for(settings)
    return JobRun(settings, sessions, job_id, worker_id, attempt, spec, storage, experiment_id, queue)


def run_job(job_id: str, settings: Settings, queue: Celery | None = None) -> str:
    """Train job `job_id` if this worker wins it; returns what happened, for the task log. With
    `queue` (the worker's Celery app), a job of an experiment lets it send its next jobs."""
    sessions = session_factory(settings.resolved_database_url)
    worker_id = new_worker_id()
    run = claim(settings, sessions, job_id, worker_id, queue)
    if run is None:
        return "not claimed"
    heartbeat = Heartbeat(settings, sessions, job_id, worker_id)
    heartbeat.start()
    try:
        return train_attempt(run, heartbeat)
    finally:
        heartbeat.finish()


def train_attempt(run: JobRun, heartbeat: Heartbeat) -> str:
    """One attempt of a claimed job, ended in the database; what happened, for the task log."""
    try:
        run.log(f"attempt {run.attempt} started on {run.worker_id}")
        run_dir = prepare_run_dir(run)
        teacher_path = resolve_teacher(run)
        uploaded = fetch_uploaded(run)
        hooks = run.hooks(heartbeat)
        result = train(run.spec, run_dir, run.settings.data_root, hooks, teacher_path, uploaded=uploaded)
    except USER_ERRORS as error:
        return run.finish("failed", describe(error))
    except (CheckpointStorageError, StorageUnavailable, DatasetFetchError, RankLostError) as error:
        return run.release(str(error))
    except Exception as error:
        run.log(traceback.format_exc(), level="error")
        return run.finish("failed", describe(error))
    if result.status == "completed":
        return run.finish("succeeded")
    if heartbeat.cancel_requested:
        return run.finish("canceled", "canceled by request")
    run.log("lease lost; another attempt owns the job now", level="warning")
    return "lease lost"

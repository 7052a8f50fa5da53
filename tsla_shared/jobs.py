"""Job state changes, shared by the API and the worker.

Every transition is one conditional UPDATE, so two processes racing on a job (a duplicate
delivery, a cancel during a claim) cannot both win: the loser sees rowcount 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, select, tuple_, update
from sqlalchemy.orm import Session

from tsla_shared.models import Checkpoint, Job, LogLine, Metric, utcnow


def claim_job(session: Session, job_id: str, worker_id: str, lease_seconds: float) -> bool:
    """queued -> running for this worker; False when another worker or a cancel got there first."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "queued", Job.cancel_requested.is_(False))
        .values(
            state="running",
            lease_owner=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempt=Job.attempt + 1,
            started_at=now,
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class LeaseStatus:
    held: bool  # False: the lease expired and the job went to someone else (or was reaped)
    cancel_requested: bool


def renew_lease(session: Session, job_id: str, worker_id: str, lease_seconds: float) -> LeaseStatus:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "running", Job.lease_owner == worker_id)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return LeaseStatus(held=bool(result.rowcount), cancel_requested=bool(cancel))  # type: ignore[attr-defined]


def finish_job(session: Session, job_id: str, worker_id: str, state: str, error: str | None = None) -> bool:
    """running -> succeeded/failed/canceled, only while this worker still holds the job."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "running", Job.lease_owner == worker_id)
        .values(state=state, error=error, finished_at=utcnow(), lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def request_cancel(session: Session, job_id: str) -> str:
    """Cancel a job: a queued job ends at once, a running one is asked to stop between steps.

    Returns the job's state afterwards; raises ValueError for a finished job.
    """
    now = utcnow()
    queued = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "queued")
        .values(state="canceled", cancel_requested=True, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    if not queued.rowcount:  # type: ignore[attr-defined]
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == "running")
            .values(cancel_requested=True)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    state = session.scalar(select(Job.state).where(Job.id == job_id))
    if state is None:
        raise LookupError(job_id)
    return state


@dataclass
class Reaped:
    requeued: list[str]
    failed: list[str]
    canceled: list[str]


def reap_expired_leases(session: Session) -> Reaped:
    """Jobs whose worker stopped renewing its lease: back to `queued` while attempts remain,
    else `failed` with the reason (or `canceled`, when a cancel was pending)."""
    now = utcnow()
    expired = session.execute(
        select(Job.id, Job.attempt, Job.max_attempts, Job.cancel_requested).where(
            Job.state == "running", Job.lease_expires_at < now
        )
    ).all()
    reaped = Reaped([], [], [])
    for job_id, attempt, max_attempts, cancel_requested in expired:
        still_expired = and_(Job.id == job_id, Job.state == "running", Job.lease_expires_at < now)
        if cancel_requested:
            values: dict[str, Any] = {"state": "canceled", "error": "canceled by request (worker lost)"}
            bucket = reaped.canceled
        elif attempt < max_attempts:
            values = {"state": "queued", "enqueued_at": None}
            bucket = reaped.requeued
        else:
            values = {
                "state": "failed",
                "error": f"worker lost: lease expired on attempt {attempt} of {max_attempts}",
            }
            bucket = reaped.failed
        if values["state"] != "queued":
            values["finished_at"] = now
        result = session.execute(
            update(Job)
            .where(still_expired)
            .values(lease_owner=None, lease_expires_at=None, **values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            bucket.append(job_id)
    session.commit()
    return reaped


def unsent_job_ids(session: Session, limit: int = 100) -> list[str]:
    """Queued jobs whose id is not on the queue (new ones whose enqueue failed, or reaped)."""
    query = select(Job.id).where(Job.state == "queued", Job.enqueued_at.is_(None)).order_by(Job.created_at)
    return list(session.scalars(query.limit(limit)))


def mark_enqueued(session: Session, job_id: str) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(enqueued_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()


def record_metrics(session: Session, job_id: str, attempt: int, rows: Iterable[dict[str, Any]]) -> None:
    """Store one epoch's rows in one transaction; a re-run epoch replaces its earlier rows.

    Replacing (delete + insert) gives the new values new, higher seqs, so a client paging with a
    cursor sees the re-run values instead of silently keeping the old ones.
    """
    rows = list(rows)
    if not rows:
        return
    keys = [(r["epoch"], r["split"], r["name"]) for r in rows]
    session.execute(
        delete(Metric).where(
            Metric.job_id == job_id, tuple_(Metric.epoch, Metric.split, Metric.name).in_(keys)
        )
    )
    session.add_all(
        Metric(
            job_id=job_id,
            epoch=r["epoch"],
            step=r["step"],
            split=r["split"],
            name=r["name"],
            value=r["value"],
            stage=r["stage"],
            attempt=attempt,
        )
        for r in rows
    )
    epoch = max(r["epoch"] for r in rows)
    top1 = [r["value"] for r in rows if r["split"] == "test" and r["name"] == "top1"]
    job = session.get(Job, job_id)
    if job is not None:
        job.epochs_done = max(job.epochs_done, epoch + 1)
        if top1:
            job.best_top1 = max(top1[0], job.best_top1 or float("-inf"))
    session.commit()


def record_checkpoint(
    session: Session, job_id: str, info: dict[str, Any], storage_key: str, kept_names: set[str]
) -> None:
    """Add a checkpoint row and mark rows whose files the retention policy removed."""
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.name == info["name"]))
    session.add(
        Checkpoint(
            job_id=job_id,
            name=info["name"],
            epoch=info["epoch"],
            partial=info["partial"],
            size=info["size"],
            sha256=info["sha256"],
            storage_key=storage_key,
            metrics=info["metrics"],
        )
    )
    session.execute(
        update(Checkpoint)
        .where(and_(Checkpoint.job_id == job_id, Checkpoint.name.not_in(kept_names | {info["name"]})))
        .values(deleted=True)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def append_log(session: Session, job_id: str, attempt: int, level: str, message: str) -> None:
    session.add(LogLine(job_id=job_id, attempt=attempt, level=level, message=message[:20_000]))
    session.commit()


def best_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    """The complete checkpoint with the highest test top-1 (the newest on ties)."""
    candidates = session.scalars(
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id, Checkpoint.deleted.is_(False), Checkpoint.partial.is_(False))
        .order_by(Checkpoint.epoch.desc())
    ).all()
    if not candidates:
        return None
    return max(candidates, key=lambda c: c.metrics.get("test/top1", float("-inf")))


def latest_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    return session.scalars(
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id, Checkpoint.deleted.is_(False))
        .order_by(Checkpoint.epoch.desc(), Checkpoint.partial.asc(), Checkpoint.id.desc())
        .limit(1)
    ).first()

"""Job state changes, shared by the API and the worker.

Every transition is one conditional UPDATE, so two processes racing on a job (a duplicate
delivery, a cancel during a claim) cannot both win: the loser sees rowcount 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session

from tsla_service.models import Job, utcnow


def claim_job(session: Session, job_id: str, worker_id: str, lease_seconds: float) -> bool:
    """queued -> running for this worker; False when another worker or a cancel got there first."""
    now = utcnow()
    result = session.execute(
        update(Job)
        # A held job is not to run yet, even if a stray message for it arrives.
        .where(Job.id == job_id, Job.state == "queued", Job.cancel_requested.is_(False), Job.held.is_(False))
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


def lease_status(session: Session, job_id: str, worker_id: str) -> LeaseStatus:
    """The same answer as `renew_lease` from one read by primary key, without renewing: cheap
    enough for a worker to poll the cancel flag every fraction of a second."""
    row = session.execute(
        select(Job.state, Job.lease_owner, Job.cancel_requested).where(Job.id == job_id)
    ).first()
    if row is None:
        return LeaseStatus(held=False, cancel_requested=False)
    held = row.state == "running" and row.lease_owner == worker_id
    return LeaseStatus(held=held, cancel_requested=bool(row.cancel_requested))


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


def release_job(session: Session, job_id: str, worker_id: str, reason: str) -> str | None:
    """After an infrastructure failure (checkpoint storage full): running -> queued for another
    attempt while attempts remain, else -> failed with `reason` (-> canceled when a cancel is
    pending). Only while this worker holds the job; returns the new state, or None.

    A re-queued job is not on the broker (`enqueued_at` NULL): a reaper sends it within lease/2
    seconds, which doubles as the pause before the next try.
    """
    held = and_(Job.id == job_id, Job.state == "running", Job.lease_owner == worker_id)
    row = session.execute(select(Job.attempt, Job.max_attempts, Job.cancel_requested).where(held)).first()
    if row is None:
        return None
    now = utcnow()
    values: dict[str, Any]
    if row.cancel_requested:
        values = {"state": "canceled", "error": f"canceled by request ({reason})", "finished_at": now}
    elif row.attempt < row.max_attempts:
        values = {"state": "queued", "enqueued_at": None}
    else:
        values = {"state": "failed", "error": reason, "finished_at": now}
    result = session.execute(
        update(Job)
        .where(held)
        .values(lease_owner=None, lease_expires_at=None, **values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return str(values["state"]) if result.rowcount else None  # type: ignore[attr-defined]


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
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def reap_expired_leases(session: Session) -> Reaped:
    """Jobs whose worker stopped renewing its lease: back to `queued` while attempts remain,
    else `failed` with the reason (or `canceled`, when a cancel was pending)."""
    now = utcnow()
    expired = session.execute(
        select(Job.id, Job.attempt, Job.max_attempts, Job.cancel_requested).where(
            Job.state == "running", Job.lease_expires_at < now
        )
    ).all()
    reaped = Reaped()
    for job_id, attempt, max_attempts, cancel_requested in expired:
        still_expired = and_(Job.id == job_id, Job.state == "running", Job.lease_expires_at < now)
        bucket: list[str] | None = None
        if cancel_requested:
            values: dict[str, Any] = {"state": "canceled", "error": "canceled by request (worker lost)"}
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
        if result.rowcount and bucket is not None:  # type: ignore[attr-defined]
            bucket.append(job_id)
    session.commit()
    return reaped


def record_provenance(session: Session, job_id: str, provenance: dict[str, Any]) -> None:
    """What trained the job (the worker's RunInfo and source commit); the latest attempt's wins."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(provenance=provenance)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def unsent_job_ids(session: Session, limit: int = 100) -> list[str]:
    """Queued jobs whose id is not on the queue (new ones whose enqueue failed, or reaped); held
    jobs wait for their experiment's scheduler (tsla_service/experiments.py), not for this."""
    query = (
        select(Job.id)
        .where(Job.state == "queued", Job.enqueued_at.is_(None), Job.held.is_(False))
        .order_by(Job.created_at)
    )
    return list(session.scalars(query.limit(limit)))


def mark_enqueued(session: Session, job_id: str) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(enqueued_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()

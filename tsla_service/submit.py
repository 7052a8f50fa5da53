"""Submission: the one place that turns a request into a stored, enqueued job.

validate the spec -> lock the caller's token row -> replay a retried Idempotency-Key -> check the
job can run here (data set, teacher) -> check the caller's active-job cap -> insert the row with
its response -> commit -> send the id. The API's `POST /jobs` calls it; anything else that
creates jobs must call it too.

The lock makes the cap and the idempotent insert atomic: it is an UPDATE of the caller's token
row, the first statement of the transaction, so one token's submissions run one at a time on
PostgreSQL (a row lock until commit) and on SQLite (the database's write lock, which a
transaction that starts with a write takes at once), while other tokens' submissions and all
reads go on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tsla_service.models import ApiToken, Job, utcnow
from tsla_service.queue import send_job
from tsla_service.settings import Settings
from tsla_spec.datasets import DATASETS
from tsla_spec.resources import estimate_resources, short_number
from tsla_spec.spec import RunSpec, SpecError, build_spec
from tsla_spec.vocabulary import ACTIVE_STATES

DEFAULT_MAX_ATTEMPTS = 3


class ActiveJobLimit(Exception):
    """The caller has as many queued + running jobs as it may (HTTP 429)."""


class IdempotencyConflict(Exception):
    """The Idempotency-Key came with another request, or its first request is still in flight (409)."""


@dataclass(frozen=True)
class JobRequest:
    """What a caller asks for: a raw spec (validated here), a name and a retry policy."""

    raw_spec: Mapping[str, Any]
    name: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    idempotency_key: str | None = None

    @property
    def fingerprint(self) -> str:
        """sha256 of the request, to tell a retry (same request) from a reused key."""
        fields = {"spec": self.raw_spec, "name": self.name, "max_attempts": self.max_attempts}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


# Renders the stored job as the response body the caller gets (and a retry gets again).
Render = Callable[[Job], dict[str, Any]]


def submit_job(
    session: Session, settings: Settings, queue: Celery, owner: str, request: JobRequest, render: Render
) -> dict[str, Any]:
    """Store and enqueue the job; returns its response body (the first one, for a retried key)."""
    spec = build_spec(request.raw_spec)
    try:
        lock_submissions(session, owner)
        replayed = replay(session, owner, request)
        if replayed is not None:
            session.rollback()
            return replayed
        teacher_job_id = check_runnable(session, settings, spec, owner)
        check_active_cap(session, settings, owner)
        job = new_job_row(spec, owner, request, teacher_job_id)
        session.add(job)
        session.flush()  # fills in the id and timestamps the response shows
        job.create_response = render(job)
        session.commit()
    except IntegrityError:  # a duplicate key that the lock did not order (not expected)
        session.rollback()
        raise IdempotencyConflict("a request with this Idempotency-Key is in progress") from None
    except BaseException:
        session.rollback()
        raise
    send_job(queue, session, job.id)
    return job.create_response


def lock_submissions(session: Session, owner: str) -> None:
    """Start a transaction that holds `owner`'s submission lock until it ends (see the module doc)."""
    session.commit()  # end any transaction the request's reads began: the lock must come first
    session.execute(
        update(ApiToken)
        .where(ApiToken.id == owner)
        .values(last_submit_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def replay(session: Session, owner: str, request: JobRequest) -> dict[str, Any] | None:
    """The first response to this Idempotency-Key, None when the key is new (or not given)."""
    if request.idempotency_key is None:
        return None
    existing = session.scalar(
        select(Job).where(Job.owner == owner, Job.idempotency_key == request.idempotency_key)
    )
    if existing is None:
        return None
    if existing.request_hash != request.fingerprint:
        raise IdempotencyConflict("Idempotency-Key was used before with a different request body")
    return existing.create_response


def check_runnable(session: Session, settings: Settings, spec: RunSpec, owner: str) -> str | None:
    """Refuse what would only fail later on a worker; returns the teacher job id, if any."""
    check_resources(settings, spec)
    problem = DATASETS[spec.data.name].problem(settings.data_root)
    if problem is not None:
        raise SpecError(f"data.name: dataset {spec.data.name!r} is {problem}")
    teacher = spec.smoothing.teacher
    if teacher is None:
        return None
    if teacher.path is not None:
        raise SpecError(
            "smoothing.teacher.path: the service takes no file paths; name a finished job with teacher.job"
        )
    assert teacher.job is not None
    teacher_job = session.get(Job, teacher.job)
    if teacher_job is None or teacher_job.owner != owner:
        raise SpecError(f"smoothing.teacher.job: job {teacher.job} does not exist")
    if teacher_job.state != "succeeded":
        raise SpecError(
            f"smoothing.teacher.job: job {teacher.job} is {teacher_job.state}; only a succeeded job can teach"
        )
    if teacher_job.dataset != spec.data.name:
        raise SpecError(
            f"smoothing.teacher.job: job {teacher.job} was trained on {teacher_job.dataset}, "
            f"not {spec.data.name}"
        )
    return teacher_job.id


def check_resources(settings: Settings, spec: RunSpec) -> None:
    """Refuse a job larger than this server admits; the 422 names the estimate and the setting."""
    need = estimate_resources(spec)
    checks = (
        ("data", f"{need.data} hold", need.data_bytes, "bytes on the device", settings.max_data_bytes,
         "TSLA_MAX_DATA_BYTES"),
        ("model", f"{need.model} has", need.parameters, "parameters", settings.max_parameters,
         "TSLA_MAX_PARAMETERS"),
        ("batch_size", f"{spec.batch_size} images through {need.model} keep about", need.activation_bytes,
         "bytes of activations", settings.max_activation_bytes, "TSLA_MAX_ACTIVATION_BYTES"),
    )  # fmt: skip
    for field, what, value, unit, limit, setting in checks:
        if value > limit:
            allowed = f"this server allows {short_number(limit)} ({setting})"
            raise SpecError(f"{field}: {what} {short_number(value)} {unit}; {allowed}")


def check_active_cap(session: Session, settings: Settings, owner: str) -> None:
    active = session.scalar(
        select(func.count()).select_from(Job).where(Job.owner == owner, Job.state.in_(ACTIVE_STATES))
    )
    limit = settings.max_active_jobs_per_token
    if active is not None and active >= limit:
        raise ActiveJobLimit(f"{active} jobs are queued or running for this token; the limit is {limit}")


def new_job_row(spec: RunSpec, owner: str, request: JobRequest, teacher_job_id: str | None) -> Job:
    return Job(
        name=request.name or f"{spec.smoothing.method}-{spec.data.name}",
        owner=owner,
        state="queued",
        spec=spec.model_dump(mode="json"),
        method=spec.smoothing.method,
        dataset=spec.data.name,
        epochs=spec.epochs,
        teacher_job_id=teacher_job_id,
        max_attempts=request.max_attempts,
        idempotency_key=request.idempotency_key,
        request_hash=request.fingerprint,
    )

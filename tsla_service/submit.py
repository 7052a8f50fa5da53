"""Submission: the one place that turns a request into a stored, enqueued job.

validate the spec -> lock the caller's token row -> replay a retried Idempotency-Key -> check the
job can run here (its queue, data set, teacher) -> check the caller's active-job cap -> insert the
row with its response -> commit -> send the id to the row's queue (tsla_service/queues.py). The
API's `POST /jobs` calls `submit_job`; experiments (tsla_service/experiments.py) run the same
pieces through `in_submission` and `insert_jobs`, for many rows at once. Anything else that
creates jobs must use them too.

The lock makes the cap and the idempotent insert atomic: it is an UPDATE of the caller's token
row, the first statement of the transaction, so one token's submissions run one at a time on
PostgreSQL (a row lock until commit) and on SQLite (the database's write lock, which a
transaction that starts with a write takes at once), while other tokens' submissions and all
reads go on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tsla_service.datasets import resolve_data
from tsla_service.models import ApiToken, Experiment, Job, utcnow
from tsla_service.queue import send_job
from tsla_service.queues import job_queue
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


def fingerprint(fields: Mapping[str, Any]) -> str:
    """sha256 of a request's fields, to tell a retry (same request) from a reused key."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class JobRequest:
    """What a caller asks for: a raw spec (validated here), a name and a retry policy."""

    raw_spec: Mapping[str, Any]
    name: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    idempotency_key: str | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint({"spec": self.raw_spec, "name": self.name, "max_attempts": self.max_attempts})


@dataclass(frozen=True)
class Idempotency:
    """Where a retried request finds its first response: the table that stores it (jobs or
    experiments), the caller's key (None: not given) and the request's fingerprint."""

    table: type[Job] | type[Experiment]
    key: str | None
    fingerprint: str


@dataclass(frozen=True)
class Runnable:
    """A job as it will run here: its spec (an uploaded data set's name resolved to its content),
    the queue it is sent to, and the job it learns from, if any."""

    spec: RunSpec
    queue: str
    teacher_job_id: str | None


# Renders the stored job as the response body the caller gets (and a retry gets again).
Render = Callable[[Job], dict[str, Any]]
# Inserts rows inside the submission lock; returns the response and the job ids to send after commit.
Store = Callable[[], tuple[dict[str, Any], list[str]]]


def submit_job(
    session: Session, settings: Settings, queue: Celery, owner: str, request: JobRequest, render: Render
) -> dict[str, Any]:
    """Store and enqueue the job; returns its response body (the first one, for a retried key)."""
    spec = build_spec(request.raw_spec)

    def store() -> tuple[dict[str, Any], list[str]]:
        runnable = check_runnable(session, settings, spec, owner)
        check_active_cap(session, settings, owner)
        job = new_job_row(runnable, owner, request)
        insert_jobs(session, [job])  # fills in the id and timestamps the response shows
        job.create_response = render(job)
        return job.create_response, [job.id]

    idempotency = Idempotency(Job, request.idempotency_key, request.fingerprint)
    response, to_send = in_submission(session, owner, idempotency, store)
    for job_id in to_send:
        send_job(queue, session, job_id)
    return response


def in_submission(
    session: Session, owner: str, idempotency: Idempotency, store: Store
) -> tuple[dict[str, Any], list[str]]:
    """Run `store` in `owner`'s submission lock and commit: (response, job ids to send). A retried
    Idempotency-Key gets its first response instead, and nothing to send."""
    try:
        lock_submissions(session, owner)
        replayed = replay(session, owner, idempotency)
        if replayed is not None:
            session.rollback()
            return replayed, []
        response, to_send = store()
        session.commit()
    except IntegrityError:  # a duplicate key that the lock did not order (not expected)
        session.rollback()
        raise IdempotencyConflict("a request with this Idempotency-Key is in progress") from None
    except BaseException:
        session.rollback()
        raise
    return response, to_send


def lock_submissions(session: Session, owner: str) -> None:
    """Start a transaction that holds `owner`'s submission lock until it ends (see the module doc)."""
    session.commit()  # end any transaction the request's reads began: the lock must come first
    session.execute(
        update(ApiToken)
        .where(ApiToken.id == owner)
        .values(last_submit_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def replay(session: Session, owner: str, idempotency: Idempotency) -> dict[str, Any] | None:
    """The first response to this Idempotency-Key, None when the key is new (or not given)."""
    if idempotency.key is None:
        return None
    table = idempotency.table
    existing = session.execute(
        select(table.request_hash, table.create_response).where(
            table.owner == owner, table.idempotency_key == idempotency.key
        )
    ).first()
    if existing is None:
        return None
    if existing.request_hash != idempotency.fingerprint:
        raise IdempotencyConflict("Idempotency-Key was used before with a different request body")
    return existing.create_response


def insert_jobs(session: Session, rows: Sequence[Job]) -> None:
    """Add job rows to the submission's transaction; the flush fills in ids and timestamps."""
    session.add_all(rows)
    session.flush()


def check_runnable(
    session: Session, settings: Settings, spec: RunSpec, owner: str, experiment_id: str | None = None
) -> Runnable:
    """Refuse what would only fail later on a worker or wait for none (an unknown queue); returns
    the job as it will run. Inside experiment `experiment_id`, the teacher may be one of its own
    jobs that has not finished yet."""
    queue = job_queue(settings, spec)
    spec = resolve_data(session, spec, owner)
    if not spec.data.is_uploaded:
        problem = DATASETS[spec.data.name].problem(settings.data_root)
        if problem is not None:
            raise SpecError(f"data.name: dataset {spec.data.name!r} is {problem}")
    check_resources(settings, spec)
    teacher = spec.smoothing.teacher
    if teacher is None:
        return Runnable(spec, queue, None)
    if teacher.path is not None:
        raise SpecError(
            "smoothing.teacher.path: the service takes no file paths; name a finished job with teacher.job"
        )
    assert teacher.job is not None
    return Runnable(spec, queue, check_teacher(session, teacher.job, owner, spec, experiment_id).id)


def check_teacher(
    session: Session, teacher_job_id: str, owner: str, spec: RunSpec, experiment_id: str | None = None
) -> Job:
    """The teacher job, if `owner` may learn from it for `spec`: a succeeded job of the owner's on
    the same data (name and, for an uploaded set, content), or, inside experiment `experiment_id`,
    one of its own jobs still to run."""
    teacher_job = session.get(Job, teacher_job_id)
    if teacher_job is None or teacher_job.owner != owner:
        raise SpecError(f"smoothing.teacher.job: job {teacher_job_id} does not exist")
    # The experiment holds its dependents until its own teacher succeeds (experiments.schedule).
    in_experiment = experiment_id is not None and teacher_job.experiment_id == experiment_id
    if teacher_job.state != "succeeded" and not (in_experiment and teacher_job.state in ACTIVE_STATES):
        state = teacher_job.state
        raise SpecError(
            f"smoothing.teacher.job: job {teacher_job_id} is {state}; only a succeeded job can teach"
        )
    dataset = spec.data.name
    if teacher_job.dataset != dataset:
        raise SpecError(
            f"smoothing.teacher.job: job {teacher_job_id} was trained on {teacher_job.dataset}, not {dataset}"
        )
    if spec.data.uploaded is not None:
        taught_on = teacher_job.spec.get("data", {}).get("uploaded") or {}
        if taught_on.get("sha256") != spec.data.uploaded.sha256:
            raise SpecError(
                f"smoothing.teacher.job: job {teacher_job_id} was trained on other content of {dataset} "
                "(the data set was replaced since)"
            )
    return teacher_job


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
    """Every queued job counts, an experiment's held ones included: they are the token's work too."""
    active = session.scalar(
        select(func.count()).select_from(Job).where(Job.owner == owner, Job.state.in_(ACTIVE_STATES))
    )
    limit = settings.max_active_jobs_per_token
    if active is not None and active >= limit:
        raise ActiveJobLimit(f"{active} jobs are queued or running for this token; the limit is {limit}")


def new_job_row(runnable: Runnable, owner: str, request: JobRequest) -> Job:
    spec = runnable.spec
    return Job(
        name=request.name or f"{spec.smoothing.method}-{spec.data.name}",
        owner=owner,
        state="queued",
        spec=spec.model_dump(mode="json"),
        method=spec.smoothing.method,
        dataset=spec.data.name,
        epochs=spec.epochs,
        queue=runnable.queue,
        teacher_job_id=runnable.teacher_job_id,
        max_attempts=request.max_attempts,
        idempotency_key=request.idempotency_key,
        request_hash=request.fingerprint,
    )

"""Jobs: submit, list, get, cancel."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy import func, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import CurrentToken, OwnedJob, SessionDep, SettingsDep
from api.schemas import ERROR_RESPONSES, JobCreate, JobPublic, JobsPublic, Message
from tsla_shared import events, jobs
from tsla_shared.datasets import DATASETS
from tsla_shared.models import FINISHED_STATES, Job, JobState
from tsla_shared.settings import Settings
from tsla_shared.spec import RunSpec, SpecError, build_spec

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=ERROR_RESPONSES)
log = logging.getLogger(__name__)


def check_runnable(session: Session, settings: Settings, spec: RunSpec, owner: str) -> str | None:
    """Refuse what would only fail later on a worker; returns the teacher job id, if any."""
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


def request_hash(body: JobCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json", exclude_unset=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def replay(existing: Job, body_hash: str) -> JSONResponse:
    """The first response for this Idempotency-Key, or 409 when the key came with another body."""
    if existing.request_hash != body_hash:
        raise HTTPException(
            status.HTTP_409_CONFLICT, "Idempotency-Key was used before with a different request body"
        )
    return JSONResponse(existing.create_response, status_code=status.HTTP_201_CREATED)


def check_active_cap(session: Session, settings: Settings, owner: str) -> None:
    active = session.scalar(
        select(func.count()).select_from(Job).where(Job.owner == owner, Job.state.in_(("queued", "running")))
    )
    if active is not None and active >= settings.max_active_jobs_per_token:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"{active} jobs are queued or running for this token; the limit is "
            f"{settings.max_active_jobs_per_token}",
        )


IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", max_length=200, description="retry-safe submission key")
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses={
        400: {"model": Message, "description": "the body is not JSON"},
        409: {"model": Message},
        413: {"model": Message},
        429: {"model": Message},
    },
)
def create_job(
    body: JobCreate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    token: CurrentToken,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Validate the spec, store the job (state `queued`), then enqueue its id.

    With an `Idempotency-Key`, a retry with the same body returns the first response (same status
    and body); the same key with another body is 409. Keys are scoped to the token.
    """
    body_hash = request_hash(body)
    if idempotency_key is not None:
        existing = session.scalar(
            select(Job).where(Job.owner == token.id, Job.idempotency_key == idempotency_key)
        )
        if existing is not None:
            return replay(existing, body_hash)
    spec = build_spec(body.spec_fields())
    teacher_job_id = check_runnable(session, settings, spec, token.id)
    check_active_cap(session, settings, token.id)
    job = Job(
        name=body.name or f"{spec.smoothing.method}-{spec.data.name}",
        owner=token.id,
        state="queued",
        spec=spec.model_dump(mode="json"),
        method=spec.smoothing.method,
        dataset=spec.data.name,
        epochs=spec.epochs,
        teacher_job_id=teacher_job_id,
        max_attempts=body.max_attempts or 3,
        idempotency_key=idempotency_key,
        request_hash=body_hash,
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same key won the insert
        session.rollback()
        existing = session.scalar(
            select(Job).where(Job.owner == token.id, Job.idempotency_key == idempotency_key)
        )
        if existing is None or existing.create_response is None:
            raise HTTPException(
                status.HTTP_409_CONFLICT, "a request with this Idempotency-Key is in progress"
            ) from None
        return replay(existing, body_hash)
    session.refresh(job)
    job.create_response = JobPublic.model_validate(job).model_dump(mode="json")
    session.commit()
    try:
        request.app.state.queue.enqueue(job.id)
    except Exception:  # the broker is down: the job is stored, and the reaper sends it later
        log.exception("job %s stored but not enqueued; the reaper will send it", job.id)
    else:
        jobs.mark_enqueued(session, job.id)
    return JSONResponse(job.create_response, status_code=status.HTTP_201_CREATED)


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    token: CurrentToken,
    state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
    cursor: Annotated[
        str | None, Query(max_length=64, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobsPublic:
    """Newest first, in pages that follow `next_cursor`."""
    query = (
        select(Job)
        .where(Job.owner == token.id)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit + 1)
    )
    if state is not None:
        query = query.where(Job.state == state)
    if cursor is not None:
        anchor = session.get(Job, cursor)
        if anchor is None or anchor.owner != token.id:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "cursor: no such job")
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(anchor.created_at, anchor.id))
    found = list(session.scalars(query))
    page = found[:limit]
    next_cursor = page[-1].id if len(found) > limit else None
    return JobsPublic(items=[JobPublic.model_validate(j) for j in page], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobPublic, responses={404: {"model": Message}})
def get_job(job: OwnedJob) -> Job:
    return job


@router.post(
    "/{job_id}/cancel", response_model=JobPublic, responses={404: {"model": Message}, 409: {"model": Message}}
)
def cancel_job(job: OwnedJob, session: SessionDep, settings: SettingsDep) -> Job:
    """A queued job is canceled at once; a running one stops at its next step (after a
    checkpoint) and then reads `canceled`. A finished job cannot be canceled (409)."""
    if job.state in FINISHED_STATES:
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job.id} is already {job.state}")
    jobs.request_cancel(session, job.id)
    events.notify(settings.events_url, job.id, "state")
    session.refresh(job)
    return job

"""Jobs: submit, list, get, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, status
from fastapi.responses import JSONResponse

from api.deps import CurrentToken, OwnedJob, QueueDep, SessionDep, SettingsDep
from api.paging import Cursor, owner_page
from api.params import IdempotencyKeyText, JobsPageSize
from api.schemas import ERROR_RESPONSES, JobCreate, JobPublic, JobsPublic, Message
from tsla_service import events, jobs
from tsla_service.models import Job
from tsla_service.submit import DEFAULT_MAX_ATTEMPTS, JobRequest, submit_job
from tsla_spec.vocabulary import FINISHED_STATES, JobState

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


IdempotencyKey = Annotated[
    IdempotencyKeyText | None,
    Header(
        alias="Idempotency-Key", description="retry-safe submission key: 1-200 printable ASCII characters"
    ),
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses={
        400: {
            "model": Message,
            "description": "the body is not UTF-8 JSON, or the URL or a header is malformed",
        },
        409: {"model": Message},
        413: {"model": Message, "description": "the body is larger than TSLA_MAX_BODY_BYTES"},
        429: {"model": Message},
    },
)
def create_job(
    body: JobCreate,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    token: CurrentToken,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Validate the spec, store the job (state `queued`), then enqueue its id.

    With an `Idempotency-Key`, a retry with the same body returns the first response (same status
    and body); the same key with another body is 409. Keys are scoped to the token.
    """
    attempts = body.max_attempts or DEFAULT_MAX_ATTEMPTS
    request = JobRequest(body.spec_fields(), body.name, attempts, idempotency_key)
    created = submit_job(session, settings, queue, token.id, request, render=job_public)
    return JSONResponse(created, status_code=status.HTTP_201_CREATED)


def job_public(job: Job) -> dict[str, Any]:
    return JobPublic.model_validate(job).model_dump(mode="json")


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    token: CurrentToken,
    state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
    cursor: Cursor = None,
    limit: Annotated[JobsPageSize, Query()] = 50,
) -> JobsPublic:
    """Newest first, in pages that follow `next_cursor`."""
    where = (Job.state == state,) if state is not None else ()
    page, next_cursor = owner_page(session, Job, token.id, cursor, limit, "job", where)
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

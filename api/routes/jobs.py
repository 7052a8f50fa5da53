"""Jobs: submit, list, get, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from api.deps import SessionDep, SettingsDep
from api.schemas import JobCreate, JobPublic, JobsPublic
from tsla_shared import jobs
from tsla_shared.datasets import DATASETS
from tsla_shared.models import Job, JobState
from tsla_shared.settings import Settings
from tsla_shared.spec import RunSpec, SpecError, build_spec

router = APIRouter(prefix="/jobs", tags=["jobs"])


def get_job_or_404(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return job


def check_runnable(session: Session, settings: Settings, spec: RunSpec) -> str | None:
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
    if teacher_job is None:
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


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic)
def create_job(body: JobCreate, request: Request, session: SessionDep, settings: SettingsDep) -> Job:
    """Validate the spec, store the job (state `queued`), then enqueue its id."""
    spec = build_spec(body.spec_fields())
    teacher_job_id = check_runnable(session, settings, spec)
    job = Job(
        name=body.name or f"{spec.smoothing.method}-{spec.data.name}",
        state="queued",
        spec=spec.model_dump(mode="json"),
        method=spec.smoothing.method,
        dataset=spec.data.name,
        epochs=spec.epochs,
        teacher_job_id=teacher_job_id,
        max_attempts=body.max_attempts or 3,
    )
    session.add(job)
    session.commit()
    request.app.state.queue.enqueue(job.id)
    return job


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    state: Annotated[JobState | None, Query(description="only jobs in this state")] = None,
    cursor: Annotated[
        str | None, Query(max_length=64, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobsPublic:
    """Newest first, in pages that follow `next_cursor`."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    if state is not None:
        query = query.where(Job.state == state)
    if cursor is not None:
        anchor = session.get(Job, cursor)
        if anchor is None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "cursor: no such job")
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(anchor.created_at, anchor.id))
    found = list(session.scalars(query))
    page = found[:limit]
    next_cursor = page[-1].id if len(found) > limit else None
    return JobsPublic(items=[JobPublic.model_validate(j) for j in page], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, session: SessionDep) -> Job:
    return get_job_or_404(session, job_id)


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, session: SessionDep) -> Job:
    """A queued job is canceled at once; a running one stops at its next step (after a
    checkpoint) and then reads `canceled`. A finished job cannot be canceled (409)."""
    job = get_job_or_404(session, job_id)
    if job.state in ("succeeded", "failed", "canceled"):
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} is already {job.state}")
    jobs.request_cancel(session, job_id)
    session.refresh(job)
    return job

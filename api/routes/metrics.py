"""Metrics and logs of a job, paged by a cursor on their monotonic `seq`.

A page is one index range scan on (job_id, seq) or (job_id, name, seq): its cost does not grow
with the job's history.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy import select

from api.deps import OwnedJob, SessionDep, SettingsDep
from api.params import Int64, LogsPageSize, MetricsPageSize
from api.schemas import JOB_RESPONSES, LogPublic, LogsPage, MetricPublic, MetricsPage
from tsla_service.models import LogLine, Metric

router = APIRouter(prefix="/jobs", tags=["metrics"], responses=JOB_RESPONSES)

After = Annotated[Int64 | None, Query(description="return rows with seq greater than this")]


# The columns of a metric row as the API shows them, read as plain rows (no ORM objects).
METRIC_COLUMNS = [getattr(Metric, field) for field in MetricPublic.model_fields]


@router.get("/{job_id}/metrics", response_model=MetricsPage)
def list_metrics(
    job: OwnedJob,
    session: SessionDep,
    settings: SettingsDep,
    after: After = None,
    limit: Annotated[MetricsPageSize, Query(description="at most TSLA_METRICS_PAGE_MAX")] = 1000,
    name: Annotated[str | None, Query(max_length=64, description="only this metric, e.g. top1")] = None,
) -> Response:
    """The hot path of every dashboard and client: plain rows, validated and serialised once by
    pydantic-core into the response body (the Response skips FastAPI's second pass)."""
    limit = min(limit, settings.metrics_page_max)
    query = select(*METRIC_COLUMNS).where(Metric.job_id == job.id).order_by(Metric.seq).limit(limit + 1)
    if after is not None:
        query = query.where(Metric.seq > after)
    if name is not None:
        query = query.where(Metric.name == name)
    rows = [row._asdict() for row in session.execute(query)]
    page = rows[:limit]
    next_after = page[-1]["seq"] if page else after
    body = {"items": page, "next_after": next_after, "has_more": len(rows) > limit}
    return Response(MetricsPage.model_validate(body).model_dump_json(), media_type="application/json")


@router.get("/{job_id}/logs", response_model=LogsPage)
def list_logs(
    job: OwnedJob,
    session: SessionDep,
    after: After = None,
    limit: Annotated[LogsPageSize, Query()] = 500,
) -> LogsPage:
    query = select(LogLine).where(LogLine.job_id == job.id).order_by(LogLine.seq).limit(limit + 1)
    if after is not None:
        query = query.where(LogLine.seq > after)
    rows = list(session.scalars(query))
    page = rows[:limit]
    next_after = page[-1].seq if page else after
    return LogsPage(
        items=[LogPublic.model_validate(r) for r in page], next_after=next_after, has_more=len(rows) > limit
    )

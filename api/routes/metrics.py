"""Metrics and logs of a job, paged by a cursor on their monotonic `seq`.

A page is one index range scan on (job_id, seq) or (job_id, name, seq): its cost does not grow
with the job's history. These are the hot paths of every dashboard and client, so the page
statement itself carries the token and ownership check (OwnedJobRead: one query per page), runs
off the thread pool on PostgreSQL (api.reads), and pydantic-core serialises its plain rows once
into the body (a plain Response skips FastAPI's second pass).
"""

from __future__ import annotations

from typing import Annotated, Any

import pydantic_core
from fastapi import APIRouter, Query, Response
from sqlalchemy import Select, bindparam, select

from api.deps import OwnedJobRead, OwnedJobReader
from api.params import Int64, LogsPageSize, MetricsPageSize
from api.schemas import JOB_RESPONSES, LogPublic, LogsPage, MetricPublic, MetricsPage
from tsla_service.models import LogLine, Metric
from tsla_service.tokens import OWNED_BY_TOKEN

router = APIRouter(prefix="/jobs", tags=["metrics"], responses=JOB_RESPONSES)

After = Annotated[Int64 | None, Query(description="return rows with seq greater than this")]


# The columns of a metric or log row as the API shows them, read as plain rows (no ORM objects).
METRIC_COLUMNS = [getattr(Metric, field) for field in MetricPublic.model_fields]
LOG_COLUMNS = [getattr(LogLine, field) for field in LogPublic.model_fields]

# The page statements, built once: building one per request costs more than running it. Their
# parameters: job_id, after (seqs start at 1, so "no cursor" is after=0), limit, name, and
# token_sha256: each carries the check that the caller owns the job (OwnedJobRead).
METRICS_PAGE = (
    select(*METRIC_COLUMNS)
    .where(Metric.job_id == bindparam("job_id"), Metric.seq > bindparam("after"), OWNED_BY_TOKEN)
    .order_by(Metric.seq)
    .limit(bindparam("limit"))
)
METRICS_PAGE_OF_NAME = METRICS_PAGE.where(Metric.name == bindparam("name"))
LOGS_PAGE = (
    select(*LOG_COLUMNS)
    .where(LogLine.job_id == bindparam("job_id"), LogLine.seq > bindparam("after"), OWNED_BY_TOKEN)
    .order_by(LogLine.seq)
    .limit(bindparam("limit"))
)


async def page_body(read: OwnedJobReader, statement: Select[Any], params: dict[str, Any]) -> bytes:
    """The JSON page (items, next_after, has_more) of a page statement: up to `params["limit"]`
    rows after `params["after"]` (None: from the start), asking for one more to tell has_more."""
    limit, after = params["limit"], params["after"]
    rows = await read.rows(statement, {**params, "after": after or 0, "limit": limit + 1})
    page = rows[:limit]
    body = {"items": page, "next_after": page[-1]["seq"] if page else after, "has_more": len(rows) > limit}
    # The rows come typed from the columns, so pydantic-core serialises them without a validation
    # pass (MetricsPage and LogsPage, the docs' response models, give the same bytes: a test says so).
    return pydantic_core.to_json(body)


@router.get("/{job_id}/metrics", response_model=MetricsPage)
async def list_metrics(
    read: OwnedJobRead,
    after: After = None,
    limit: Annotated[MetricsPageSize, Query(description="at most TSLA_METRICS_PAGE_MAX")] = 1000,
    name: Annotated[str | None, Query(max_length=64, description="only this metric, e.g. top1")] = None,
) -> Response:
    params = {"after": after, "limit": min(limit, read.settings.metrics_page_max)}
    if name is None:
        body = await page_body(read, METRICS_PAGE, params)
    else:
        body = await page_body(read, METRICS_PAGE_OF_NAME, {**params, "name": name})
    return Response(body, media_type="application/json")


@router.get("/{job_id}/logs", response_model=LogsPage)
async def list_logs(
    read: OwnedJobRead, after: After = None, limit: Annotated[LogsPageSize, Query()] = 500
) -> Response:
    body = await page_body(read, LOGS_PAGE, {"after": after, "limit": limit})
    return Response(body, media_type="application/json")

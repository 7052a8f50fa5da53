"""Live events of a job as server-sent events (sse-starlette).

    event: state       data: the job (at connect, and on every change)
    event: metric      id: <seq>   data: one metric row
    event: checkpoint  data: one checkpoint
    event: end         data: the finished job; then the stream closes

Reconnect with `Last-Event-ID: <seq>` (browsers do it by themselves) or `?after=<seq>` to
receive every metric row after that one exactly once. A `: ping` comment keeps idle connections
open. The database is read for every batch; Redis pub/sub (production) only says when.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

import redis.asyncio as aioredis
from anyio import to_thread
from fastapi import APIRouter, Header, Query, Request
from sqlalchemy import select
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.deps import OwnedJob, SettingsDep
from api.schemas import JOB_RESPONSES, CheckpointPublic, JobPublic, MetricPublic
from tsla_service import results
from tsla_service.db import session_factory
from tsla_service.events import channel
from tsla_service.models import Job, Metric
from tsla_service.settings import Settings
from tsla_spec.vocabulary import FINISHED_STATES

router = APIRouter(prefix="/jobs", tags=["events"], responses=JOB_RESPONSES)
BATCH = 500


class Snapshot:
    """What changed since the last look: the job, new metric rows and new checkpoints."""

    def __init__(self, settings: Settings, job_id: str, after_seq: int) -> None:
        self.sessions = session_factory(settings.resolved_database_url)
        self.job_id = job_id
        self.after_seq = after_seq
        self.after_checkpoint = 0
        self.last_state: dict[str, Any] | None = None

    def read(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
        """(job if changed, metric rows after the cursor, checkpoints after the cursor)."""
        with self.sessions() as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            state = JobPublic.model_validate(job).model_dump(mode="json")
            rows = session.scalars(
                select(Metric)
                .where(Metric.job_id == self.job_id, Metric.seq > self.after_seq)
                .order_by(Metric.seq)
                .limit(BATCH)
            ).all()
            # Pruned ones are gone: GET /checkpoints omits them too.
            checkpoints = results.list_checkpoints(session, self.job_id, self.after_checkpoint)
            metric_rows = [MetricPublic.model_validate(r).model_dump(mode="json") for r in rows]
            checkpoint_rows = [
                CheckpointPublic.model_validate(c).model_dump(mode="json") for c in checkpoints
            ]
        if metric_rows:
            self.after_seq = metric_rows[-1]["seq"]
        if checkpoint_rows:
            self.after_checkpoint = checkpoint_rows[-1]["id"]
        changed = state if state != self.last_state else None
        self.last_state = state
        return changed, metric_rows, checkpoint_rows


async def wake_ups(settings: Settings, job_id: str) -> AsyncGenerator[None, None]:
    """Yield when the job may have changed: on a Redis notification, or every poll interval."""
    poll = settings.events_poll_seconds
    if settings.events_url is None:
        while True:
            await asyncio.sleep(poll)
            yield
    client = aioredis.Redis.from_url(settings.events_url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(channel(job_id))
        while True:
            try:
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll)
            except aioredis.RedisError:
                await asyncio.sleep(poll)  # Redis restarting: poll the database meanwhile
            yield
    finally:
        await pubsub.aclose()
        await client.aclose()


async def job_events(
    request: Request, settings: Settings, job_id: str, after: int
) -> AsyncIterator[ServerSentEvent]:
    snapshot = Snapshot(settings, job_id, after)
    wake = wake_ups(settings, job_id)
    try:
        while True:
            while True:  # drain: a long history arrives in batches without waiting
                state, rows, checkpoints = await to_thread.run_sync(snapshot.read)
                if state is not None:
                    yield ServerSentEvent(json.dumps(state), event="state")
                for row in rows:
                    yield ServerSentEvent(json.dumps(row), event="metric", id=str(row["seq"]))
                for checkpoint in checkpoints:
                    yield ServerSentEvent(json.dumps(checkpoint), event="checkpoint")
                if len(rows) < BATCH:
                    break
            last = snapshot.last_state
            if last is not None and last["state"] in FINISHED_STATES:
                yield ServerSentEvent(json.dumps(last), event="end")
                return
            if await request.is_disconnected():
                return
            await anext(wake)
    finally:
        await wake.aclose()


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "a stream of server-sent events"}},
)
async def stream_events(
    job: OwnedJob,
    request: Request,
    settings: SettingsDep,
    after: Annotated[int | None, Query(ge=0, description="resume after this metric seq")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20)] = None,
) -> EventSourceResponse:
    """State changes, every metric row and checkpoints of a job, live; ends when it finishes."""
    resume = after or 0
    if last_event_id is not None and last_event_id.isdigit():
        resume = max(resume, int(last_event_id))
    return EventSourceResponse(
        job_events(request, settings, job.id, resume), ping=int(settings.events_ping_seconds)
    )

"""Live events of a job as server-sent events (sse-starlette).

    event: state       data: the job (at connect, and on every change)
    event: metric      id: <seq>   data: one metric row
    event: checkpoint  data: one checkpoint
    event: end         data: the finished job; then the stream closes

Reconnect with `Last-Event-ID: <seq>` (browsers do it by themselves) or `?after=<seq>` to
receive every metric row after that one exactly once. A `: ping` comment keeps idle connections
open. A stream holds no database connection: the caller is checked on a session that closes
before the stream starts, and one poller per job (api/feeds.py) reads for all its streams. A
stream whose token is revoked closes without `end` within one poll interval (the reconnect is
then a 401).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse

from api.deps import OwnedJobStream
from api.feeds import FeedRegistry
from api.params import Int64
from api.schemas import JOB_RESPONSES

router = APIRouter(prefix="/jobs", tags=["events"], responses=JOB_RESPONSES)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "a stream of server-sent events"}},
)
async def stream_events(
    access: OwnedJobStream,
    request: Request,
    after: Annotated[Int64 | None, Query(description="resume after this metric seq")] = None,
    last_event_id: Annotated[
        Int64 | None, Header(alias="Last-Event-ID", description="resume after this metric seq")
    ] = None,
) -> EventSourceResponse:
    """State changes, every metric row and checkpoints of a job, live; ends when it finishes.
    With both cursors, the later one wins."""
    feeds: FeedRegistry = request.app.state.feeds
    resume = max(after or 0, last_event_id or 0)
    ping = int(feeds.settings.events_ping_seconds)
    return EventSourceResponse(feeds.stream(access.job_id, access.token_id, resume), ping=ping)

"""One poller per watched job and API process, fanned out to every open event stream of the job.

An event stream holds no database connection while it waits. A `JobFeed` wakes on the worker's
Redis notification (tsla_service/events.py) or every `events_poll_seconds`, reads what changed
with one short session in a worker thread, and hands the same encoded events to all its
subscribers. Reads run under a small limiter of their own, so streams never take the threadpool
that the sync endpoints use, and never hold more than `READERS` pooled connections.

A subscriber catches up from the database in batches before it follows the broadcast: it
subscribes first, so nothing written meanwhile is missed, and drops broadcast rows at or below its
own cursor, so nothing arrives twice. One that falls `MAX_PENDING` broadcasts behind (a client
that stopped reading) catches up again instead of growing a queue.

Each feed read also checks its subscribers' tokens in one query. A stream whose token was revoked,
whose job is gone, or whose feed failed closes without `end`; the client's reconnect then gets
the 401 or 404 that says why.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import redis.asyncio as aioredis
from anyio import CapacityLimiter, to_thread
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette import ServerSentEvent

from api.schemas import CheckpointPublic, JobPublic, MetricPublic
from tsla_service import results
from tsla_service.db import session_factory
from tsla_service.events import channel
from tsla_service.models import ApiToken, Checkpoint, Job, Metric
from tsla_service.settings import Settings
from tsla_spec.vocabulary import FINISHED_STATES

log = logging.getLogger(__name__)
T = TypeVar("T")

BATCH = 500  # metric rows per read
READERS = 4  # database reads all feeds and catch-ups of one process run at once
MAX_PENDING = 256  # broadcasts a subscriber may lag behind before it re-reads the database


# --- what a read returns, encoded once for every subscriber ------------------------------------


def encode(data: dict[str, Any], event: str, event_id: int | None = None) -> bytes:
    """One server-sent event, exactly as the stream sends it."""
    return ServerSentEvent(
        json.dumps(data), event=event, id=None if event_id is None else str(event_id)
    ).encode()


@dataclass(frozen=True)
class Encoded:
    """An encoded metric or checkpoint event and its cursor key (seq or checkpoint id)."""

    key: int
    chunk: bytes


@dataclass(frozen=True)
class JobView:
    """The job as a `state` event and as the `end` event it would close a stream with."""

    state: bytes
    end: bytes
    finished: bool


@dataclass(frozen=True)
class Changes:
    """What one read found after a cursor; `view` is None for a subscriber's catch-up batch."""

    view: JobView | None
    metrics: list[Encoded]
    checkpoints: list[Encoded]


@dataclass
class Cursor:
    """The last metric seq and checkpoint id a reader has."""

    seq: int = 0
    checkpoint: int = 0


def view_of(job: Job) -> JobView:
    data = JobPublic.model_validate(job).model_dump(mode="json")
    return JobView(encode(data, "state"), encode(data, "end"), job.state in FINISHED_STATES)


def changes_after(session: Session, job_id: str, cursor: Cursor, view: JobView | None) -> Changes:
    rows = session.scalars(
        select(Metric)
        .where(Metric.job_id == job_id, Metric.seq > cursor.seq)
        .order_by(Metric.seq)
        .limit(BATCH)
    ).all()
    # Pruned ones are gone: GET /checkpoints omits them too.
    found = results.list_checkpoints(session, job_id, cursor.checkpoint)
    metrics = [
        Encoded(r.seq, encode(MetricPublic.model_validate(r).model_dump(mode="json"), "metric", r.seq))
        for r in rows
    ]
    checkpoints = [
        Encoded(c.id, encode(CheckpointPublic.model_validate(c).model_dump(mode="json"), "checkpoint"))
        for c in found
    ]
    return Changes(view, metrics, checkpoints)


def head_of(session: Session, job_id: str) -> Cursor:
    """The newest metric seq and checkpoint id: a new feed broadcasts only what comes after."""
    seq = session.scalar(select(func.max(Metric.seq)).where(Metric.job_id == job_id))
    checkpoint = session.scalar(select(func.max(Checkpoint.id)).where(Checkpoint.job_id == job_id))
    return Cursor(seq or 0, checkpoint or 0)


@dataclass(frozen=True)
class FeedRead:
    """One read of a feed; `changes` is None when the job is gone. `head` is set on the first."""

    changes: Changes | None
    active_tokens: frozenset[str]
    head: Cursor | None = None


def read_feed(
    sessions: sessionmaker[Session], job_id: str, cursor: Cursor | None, token_ids: frozenset[str]
) -> FeedRead:
    """The job, then what was written after `cursor` (from the head when None), then which of
    `token_ids` are still active; all in one short session."""
    with sessions() as session:
        active = frozenset(
            session.scalars(
                select(ApiToken.id).where(ApiToken.id.in_(token_ids), ApiToken.revoked_at.is_(None))
            )
        )
        job = session.get(Job, job_id)
        if job is None:
            return FeedRead(None, active)
        # The job before its rows: a finished job wrote every row before it finished.
        view = view_of(job)
        if cursor is None:
            return FeedRead(Changes(view, [], []), active, head_of(session, job_id))
        return FeedRead(changes_after(session, job_id, cursor, view), active)


def read_history(sessions: sessionmaker[Session], job_id: str, cursor: Cursor) -> Changes:
    with sessions() as session:
        return changes_after(session, job_id, cursor, None)


# --- subscribers ---------------------------------------------------------------------------------


@dataclass(eq=False)
class Subscriber:
    """One open stream: its token, its cursor, and the broadcasts it has not sent yet."""

    token_id: str
    cursor: Cursor
    pending: deque[Changes] = field(default_factory=deque)
    sent_state: bytes | None = None
    lagging: bool = True  # catch up from the database before following the broadcast
    cut: bool = False  # close without `end`: token revoked, job gone or feed failed
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, changes: Changes) -> None:
        if len(self.pending) >= MAX_PENDING:
            self.pending.clear()
            self.lagging = True
        if not self.lagging:
            self.pending.append(changes)
        self.wake.set()

    def close(self) -> None:
        self.cut = True
        self.wake.set()

    def accept(self, changes: Changes) -> bytes:
        """The events of `changes` this stream has not sent yet, in order, as one chunk."""
        chunks = []
        if changes.view is not None and changes.view.state != self.sent_state:
            self.sent_state = changes.view.state
            chunks.append(changes.view.state)
        for metric in changes.metrics:
            if metric.key > self.cursor.seq:
                self.cursor.seq = metric.key
                chunks.append(metric.chunk)
        for checkpoint in changes.checkpoints:
            if checkpoint.key > self.cursor.checkpoint:
                self.cursor.checkpoint = checkpoint.key
                chunks.append(checkpoint.chunk)
        return b"".join(chunks)

    def accept_pending(self) -> bytes:
        chunks = []
        while self.pending:
            chunks.append(self.accept(self.pending.popleft()))
        return b"".join(chunks)


# --- one job's feed ------------------------------------------------------------------------------


@asynccontextmanager
async def notifications(settings: Settings, job_id: str) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """A function that returns when the job may have changed: on a Redis notification, or after
    the poll interval."""
    poll = settings.events_poll_seconds
    if settings.events_url is None:
        yield lambda: asyncio.sleep(poll)
        return
    client = aioredis.Redis.from_url(settings.events_url)
    pubsub = client.pubsub()

    async def wait() -> None:
        try:
            if not pubsub.subscribed:
                await pubsub.subscribe(channel(job_id))
            await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll)
            # One read answers every notification that arrived meanwhile.
            while await pubsub.get_message(ignore_subscribe_messages=True, timeout=0) is not None:
                pass
        except aioredis.RedisError:
            await asyncio.sleep(poll)  # Redis restarting: poll the database meanwhile

    try:
        # Subscribed before the first read, so that a change right after it is not missed.
        try:
            await pubsub.subscribe(channel(job_id))
        except aioredis.RedisError as error:
            log.debug("event notifications for %s unavailable: %s", job_id, error)
        yield wait
    finally:
        await pubsub.aclose()
        await client.aclose()


class JobFeed:
    """Reads one job's changes once per wake-up and broadcasts them to its subscribers; runs while
    it has any, and ends after broadcasting the job's finish."""

    def __init__(self, registry: FeedRegistry, job_id: str) -> None:
        self.registry = registry
        self.job_id = job_id
        self.subscribers: set[Subscriber] = set()
        self.cursor: Cursor | None = None  # until the first read found the head
        self.view: JobView | None = None
        self.started = asyncio.Event()  # set after the first read (or when the feed closes)
        self.finished = False
        self.task: asyncio.Task[None] | None = None

    def add(self, subscriber: Subscriber) -> None:
        self.subscribers.add(subscriber)
        if self.task is None:
            self.task = asyncio.create_task(self.run(), name=f"event feed {self.job_id}")

    def remove(self, subscriber: Subscriber) -> None:
        if subscriber not in self.subscribers:
            return
        self.subscribers.discard(subscriber)
        if not self.subscribers and not self.finished and self.task is not None:
            self.registry.forget(self)  # the next subscriber starts a fresh feed
            self.task.cancel()

    async def run(self) -> None:
        try:
            async with notifications(self.registry.settings, self.job_id) as wait:
                while True:
                    read = await self.read()
                    self.cut_revoked(read.active_tokens)
                    if read.changes is None or not self.subscribers:
                        break  # the job is gone, or every subscriber's token was revoked
                    more = self.publish(read.changes, read.head)
                    if self.finished:
                        break
                    if not more:
                        await wait()
                # At once, with no await before it: a subscriber from now on gets a fresh feed.
                self.registry.forget(self)
        except Exception:
            log.exception("the event feed of job %s failed", self.job_id)
        finally:
            self.close()

    async def read(self) -> FeedRead:
        """The next read; a failing database (a restart) is retried every poll interval."""
        while True:
            tokens = frozenset(s.token_id for s in self.subscribers)
            try:
                return await self.registry.run(read_feed, self.job_id, self.cursor, tokens)
            except SQLAlchemyError as error:
                log.warning("event feed of job %s: database read failed, retrying: %s", self.job_id, error)
                await asyncio.sleep(self.registry.settings.events_poll_seconds)

    def cut_revoked(self, active_tokens: frozenset[str]) -> None:
        for subscriber in [s for s in self.subscribers if s.token_id not in active_tokens]:
            self.subscribers.discard(subscriber)
            subscriber.close()

    def publish(self, changes: Changes, head: Cursor | None) -> bool:
        """Broadcast one read; True when more rows are waiting (a full batch)."""
        assert changes.view is not None
        cursor = self.cursor = head or self.cursor or Cursor()
        if changes.metrics:
            cursor.seq = changes.metrics[-1].key
        if changes.checkpoints:
            cursor.checkpoint = changes.checkpoints[-1].key
        more = len(changes.metrics) == BATCH
        self.finished = changes.view.finished and not more
        if changes.view != self.view or changes.metrics or changes.checkpoints or self.finished:
            for subscriber in self.subscribers:
                subscriber.offer(changes)
        self.view = changes.view
        self.started.set()
        return more

    def close(self) -> None:
        """The feed stopped: unless the job finished, its remaining streams close without `end`."""
        self.registry.forget(self)
        if not self.finished:
            for subscriber in self.subscribers:
                subscriber.close()
        self.started.set()

    async def serve(self, subscriber: Subscriber) -> AsyncIterator[bytes]:
        """The subscriber's stream: catch up, follow the broadcast, `end` once the job finished.
        Whatever is waiting goes out as one chunk: a broadcast costs a stream one write."""
        await self.started.wait()
        while not subscriber.cut:
            if subscriber.lagging:
                subscriber.lagging = False
                subscriber.pending.clear()  # the catch-up reads all of it, and newer
                async for chunk in self.catch_up(subscriber):
                    yield chunk
                continue
            chunk = subscriber.accept_pending()
            # No await since the drain: when the feed has finished, its last broadcast was in it.
            end = self.view.end if self.finished and self.view is not None else b""
            if chunk or end:
                yield chunk + end
            if end:
                return
            if not chunk:
                subscriber.wake.clear()
                await subscriber.wake.wait()

    async def catch_up(self, subscriber: Subscriber) -> AsyncIterator[bytes]:
        """The job as the feed last read it, then the subscriber's rows from the database."""
        if self.view is None:  # the feed closed before its first read; the subscriber is cut
            return
        state = subscriber.accept(Changes(self.view, [], []))
        while not subscriber.cut:
            batch = await self.registry.run(read_history, self.job_id, replace(subscriber.cursor))
            chunk, state = state + subscriber.accept(batch), b""
            if chunk:
                yield chunk
            if len(batch.metrics) < BATCH:
                return


# --- the process's feeds -------------------------------------------------------------------------


class FeedRegistry:
    """The feeds of one app, by job id; kept on `app.state.feeds`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions = session_factory(settings.resolved_database_url)
        self.feeds: dict[str, JobFeed] = {}
        self.limiter = CapacityLimiter(READERS)
        self.loop: asyncio.AbstractEventLoop | None = None

    def on_this_loop(self) -> None:
        """Feeds and the limiter belong to one event loop (a TestClient may run one per request)."""
        loop = asyncio.get_running_loop()
        if loop is not self.loop:
            self.loop, self.feeds, self.limiter = loop, {}, CapacityLimiter(READERS)

    async def run(self, read: Callable[..., T], *args: Any) -> T:
        """`read(sessions, *args)` in a worker thread under the feeds' own limiter."""
        self.on_this_loop()
        return await to_thread.run_sync(read, self.sessions, *args, limiter=self.limiter)

    def feed(self, job_id: str) -> JobFeed:
        self.on_this_loop()
        found = self.feeds.get(job_id)
        if found is None:
            found = self.feeds[job_id] = JobFeed(self, job_id)
        return found

    def forget(self, feed: JobFeed) -> None:
        if self.feeds.get(feed.job_id) is feed:
            del self.feeds[feed.job_id]

    async def stream(self, job_id: str, token_id: str, after: int) -> AsyncIterator[bytes]:
        """The encoded events of one stream: every metric row after `after` exactly once."""
        feed = self.feed(job_id)
        subscriber = Subscriber(token_id, Cursor(seq=after))
        feed.add(subscriber)
        try:
            async for chunk in feed.serve(subscriber):
                yield chunk
        finally:
            feed.remove(subscriber)

    async def close(self) -> None:
        tasks = [feed.task for feed in self.feeds.values() if feed.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

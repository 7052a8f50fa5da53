"""Event streams under load, against real uvicorn + a real celery worker on PostgreSQL + Redis.

200 streams open on ONE running job (from a child process, so their parsing never shares a GIL
with the latency probe): every stream gets every metric row exactly once and `end`, while
/healthz and a metrics page answer within 100 ms p99 with no 5xx, and the API's PostgreSQL
connections (counted in pg_stat_activity by the API's own application_name; the worker has
another) stay within its pool. Then: a revoked token's open stream ends within one poll
interval, and malformed cursors are a 422. Last, in process: a stream that stops reading catches
up from the database instead of queueing.

Everything is loopback only and bounded: the stack is this module's own (database, Redis
database, queue, processes) and is torn down at the end, also after a failure.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import select

from tests.cli._stack import FAST
from tests.integration._support import (
    PG_ADMIN_URL,
    REDIS_HOST,
    REDIS_PORT,
    Service,
    job_metrics,
    pg_execute,
    pick_redis_db,
    start_process,
    start_redis,
)
from tsla_cli import stack
from tsla_cli.stack import free_port, service_env, stop_process, wait_for, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

STREAMS = 200
POLL_SECONDS = 1.0  # TSLA_EVENTS_POLL_SECONDS of the stack
LATENCY_GOAL_MS = 100.0
PROBE_INTERVAL_S = 0.02
STREAMS_DEADLINE_S = 120.0
BASELINE_PROBES = 60  # probes while the job runs, before any stream opens
REVOKE_SLACK_S = 0.5
CONNECT_BURST_LIMIT_MS = 1000.0
# Long enough that all streams are open well before it finishes.
LOAD_SPEC: dict[str, Any] = {
    "preset": "digits",
    "name": "event-load",
    "epochs": 40,
    "smoothing": {"method": "lsr"},
    "device": "cpu",
    **FAST,
    "model": {"width": 16},  # the preset's width: some 0.3 s an epoch on 2 cores, so 12 s or so
}
REVOKE_SPEC: dict[str, Any] = dict(LOAD_SPEC, name="event-revoke", epochs=50)


@dataclass
class LoadStack:
    service: Service
    database_url: str
    db_name: str
    api_name: str  # the API process's application_name in pg_stat_activity


@pytest.fixture(scope="module")
def load_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadStack]:
    """A private PostgreSQL database, Redis database and queue; a worker and an API process
    whose database connections carry different application names."""
    from tsla_service.db import get_engine, session_scope
    from tsla_service.migrate import upgrade_to_head
    from tsla_service.tokens import create_token

    start_redis()
    root = tmp_path_factory.mktemp("event-load")
    suffix = secrets.token_hex(4)
    db_name, queue = f"tsla_load_{suffix}", f"tsla-load-{suffix}"
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}"
    with ExitStack() as cleanup:
        pg_execute(PG_ADMIN_URL, f'CREATE DATABASE "{db_name}"')
        cleanup.callback(pg_execute, PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        upgrade_to_head(url)
        token = f"tsla_load_{secrets.token_urlsafe(16)}"
        with session_scope(url) as session:
            create_token(session, f"load-{suffix}", token)
        get_engine(url).dispose()
        broker, broker_db = pick_redis_db()
        cleanup.callback(broker.close)
        cleanup.callback(broker.flushdb)

        def env(role: str) -> dict[str, str]:
            return service_env(
                TSLA_DATABASE_URL=f"{url}?application_name=tsla-{role}-{suffix}",
                TSLA_BROKER_URL=f"redis://{REDIS_HOST}:{REDIS_PORT}/{broker_db}",
                TSLA_STORAGE_URL=str(root / "storage"),
                TSLA_HOME=str(root / "home"),
                TSLA_QUEUES=queue,
                TSLA_LEASE_SECONDS="15",
                TSLA_EVENTS_POLL_SECONDS=str(POLL_SECONDS),
                OMP_NUM_THREADS="1",  # one torch thread: the API needs the other core
                MKL_NUM_THREADS="1",
            )

        worker_log = root / "logs" / "worker.log"
        worker = start_process(
            stack.worker_command([queue], hostname=f"{queue}@%h"), env("worker"), worker_log
        )
        cleanup.callback(stop_process, worker)
        port = free_port()
        api = start_process(stack.api_command("127.0.0.1", port), env("api"), root / "logs" / "api.log")
        cleanup.callback(stop_process, api)
        base_url = f"http://127.0.0.1:{port}"
        wait_healthy(base_url, [api, worker], timeout=90)
        wait_for(lambda: stack.worker_ready(worker, worker_log), 120, "the celery worker", interval=0.3)
        service = Service(base_url, token, root / "home", queue, broker, worker_log)
        cleanup.callback(service.close)
        yield LoadStack(service, url, db_name, f"tsla-api-{suffix}")


# --- the streams, in a child process ----------------------------------------------------------


async def read_stream(client: httpx.AsyncClient, job_id: str, opened: Callable[[], None]) -> dict[str, Any]:
    """One stream to its close: its status and its events as (event, id, data)."""
    from httpx_sse import aconnect_sse

    events: list[tuple[str, str, Any]] = []
    async with aconnect_sse(client, "GET", f"/jobs/{job_id}/events") as source:
        if source.response.status_code != 200:
            return {"status": source.response.status_code, "events": []}
        async for sse in source.aiter_sse():
            if not sse.data:
                continue  # a `: ping` after an `id:`: httpx_sse yields it, a browser does not (WHATWG)
            events.append((sse.event, sse.id, json.loads(sse.data)))
            if len(events) == 1:
                opened()
    return {"status": 200, "events": events}


async def read_streams(base_url: str, token: str, job_id: str, count: int, ready: Any) -> list[Any]:
    opened = 0

    def one_opened() -> None:
        nonlocal opened
        opened += 1
        if opened == count:
            ready.set()

    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=0)
    timeout = httpx.Timeout(10.0, read=40.0)  # pings come every 15 s
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=timeout
    ) as client:
        reads = [read_stream(client, job_id, one_opened) for _ in range(count)]
        found = await asyncio.wait_for(asyncio.gather(*reads, return_exceptions=True), STREAMS_DEADLINE_S)
    return [r if isinstance(r, dict) else {"status": None, "error": repr(r), "events": []} for r in found]


def run_streams(base_url: str, token: str, job_id: str, count: int, ready: Any, out: str) -> None:
    """The child process: open `count` streams at once, read each to its end, write the results."""
    results = asyncio.run(read_streams(base_url, token, job_id, count, ready))
    Path(out).write_text(json.dumps(results))


# --- the probe, in the test process -----------------------------------------------------------


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


@dataclass
class Probe:
    """GET /healthz and a metrics page, timed, and the API's PostgreSQL connections, counted;
    each sample is labelled with the phase it was taken in (`mark` starts the next one)."""

    http: httpx.Client
    job_id: str
    admin: psycopg.Connection[Any]
    db_name: str
    api_name: str
    phase_now: str = "baseline"
    latency_ms: dict[str, list[tuple[str, float]]] = field(
        default_factory=lambda: {"healthz": [], "metrics": []}
    )
    statuses: list[int] = field(default_factory=list)
    connections: list[int] = field(default_factory=list)

    def once(self) -> None:
        for name, path, params in (
            ("healthz", "/healthz", {}),
            ("metrics", f"/jobs/{self.job_id}/metrics", {"limit": 100}),
        ):
            started = time.perf_counter()
            response = self.http.get(path, params=params)
            self.latency_ms[name].append((self.phase_now, (time.perf_counter() - started) * 1000))
            self.statuses.append(response.status_code)
        row = self.admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (self.db_name, self.api_name),
        ).fetchone()
        self.connections.append(int(row[0]) if row else 0)

    def until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            self.once()
            time.sleep(PROBE_INTERVAL_S)

    def mark(self, phase: str) -> None:
        self.phase_now = phase

    def count(self) -> int:
        return len(self.connections)

    def phase(self, name: str, phase: str) -> list[float]:
        return [ms for label, ms in self.latency_ms[name] if label == phase]

    def report(self) -> str:
        parts = []
        for name in self.latency_ms:
            for phase in ("baseline", "connect", "open"):
                values = self.phase(name, phase)
                if values:
                    parts.append(f"{name} {phase} p99 {p99(values):.1f} ms (n={len(values)})")
        return "; ".join(parts) + f"; API connections max {max(self.connections, default=0)}"


def check_stream(result: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Status 200, `state` first (the job not yet finished), every row once in seq order, `end`."""
    assert result["status"] == 200, result
    events = result["events"]
    kinds = [event for event, _, _ in events]
    assert kinds and kinds[0] == "state" and kinds[-1] == "end", (kinds[:3], kinds[-3:])
    assert kinds.count("end") == 1 and set(kinds) <= {"state", "metric", "checkpoint", "end"}, set(kinds)
    assert events[0][2]["state"] in ("queued", "running"), "a stream opened only after the job finished"
    assert events[-1][2]["state"] == "succeeded", events[-1][2]
    metrics = [(event_id, data) for event, event_id, data in events if event == "metric"]
    assert all(event_id == str(data["seq"]) for event_id, data in metrics)
    assert [data for _, data in metrics] == rows, "every metric row exactly once, in seq order"


@pytest.fixture(scope="module")
def load_job(load_stack: LoadStack) -> dict[str, Any]:
    return load_stack.service.submit(LOAD_SPEC)


def open_streams(load_stack: LoadStack, job_id: str, probe: Probe, out: Path) -> None:
    """STREAMS streams from a child process, probing meanwhile, until every one has closed."""
    service = load_stack.service
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    args = (service.base_url, service.token, job_id, STREAMS, ready, str(out))
    child = context.Process(target=run_streams, args=args, daemon=True)
    child.start()
    try:
        probe.until(ready.is_set, 60, f"{STREAMS} streams to open")
        probe.mark("open")
        probe.until(lambda: not child.is_alive(), STREAMS_DEADLINE_S, "every stream to end")
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0, f"the stream reader failed ({child.exitcode})"


def test_200_streams_on_one_running_job_leave_the_api_responsive(
    load_stack: LoadStack, load_job: dict[str, Any], tmp_path: Path
) -> None:
    from tsla_service.db import get_engine

    service, job_id = load_stack.service, load_job["id"]
    pool = get_engine(load_stack.database_url).pool
    pool_limit = pool.size() + pool._max_overflow  # type: ignore[attr-defined]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        probe = Probe(service.http, job_id, admin, load_stack.db_name, load_stack.api_name)
        service.wait_job(job_id, timeout=60, until=lambda job: job["state"] != "queued")
        probe.until(lambda: probe.count() >= BASELINE_PROBES, 30, "the baseline probes")
        probe.mark("connect")
        open_streams(load_stack, job_id, probe, tmp_path / "streams.json")

    rows = job_metrics(service, job_id)
    finished = service.job(job_id)
    assert finished["state"] == "succeeded"
    results = json.loads((tmp_path / "streams.json").read_text())
    assert len(results) == STREAMS
    for result in results:
        check_stream(result, rows)

    report = probe.report()
    print(
        f"\n{STREAMS} streams on one job of {len(rows)} metric rows ({finished['started_at']} to "
        f"{finished['finished_at']}): {report}"
    )
    assert all(status == 200 for status in probe.statuses), (sorted(set(probe.statuses)), report)
    for name in ("healthz", "metrics"):
        # The goal holds while the streams are open; the baseline is for the report.
        assert len(probe.phase(name, "open")) >= 50, f"too few {name} samples with the streams open: {report}"
        assert p99(probe.phase(name, "open")) <= LATENCY_GOAL_MS, report
        # 200 connects at once cost CPU, but never the 30 s pool waits of streams holding connections.
        assert p99(probe.phase(name, "connect")) <= CONNECT_BURST_LIMIT_MS, report
    assert max(probe.connections) <= pool_limit, (probe.connections, pool_limit)


def test_a_revoked_tokens_open_stream_ends_within_one_poll(load_stack: LoadStack) -> None:
    from tsla_service.db import session_scope
    from tsla_service.jobs import request_cancel
    from tsla_service.tokens import create_token, revoke_token

    name = f"revoked-{secrets.token_hex(4)}"
    with session_scope(load_stack.database_url) as session:
        _, token = create_token(session, name)
    headers = {"Authorization": f"Bearer {token}"}
    http = load_stack.service.http
    submitted = http.post("/jobs", json=REVOKE_SPEC, headers=headers)
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]
    kinds: list[str] = []
    revoked: float | None = None
    try:
        timeout = httpx.Timeout(10.0, read=30.0)
        with http.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("event:"):
                    kinds.append(line.partition(":")[2].strip())
                    if len(kinds) == 1:  # the stream is open: revoke its token now
                        with session_scope(load_stack.database_url) as session:
                            revoke_token(session, name)
                        revoked = time.monotonic()
        assert revoked is not None, "the stream sent no event"
        closed_after = time.monotonic() - revoked
    finally:
        with session_scope(load_stack.database_url) as session:
            request_cancel(session, job_id)
    assert kinds[0] == "state" and "end" not in kinds, kinds
    # One poll interval, plus the read and the close on a busy machine.
    assert closed_after <= POLL_SECONDS + REVOKE_SLACK_S, f"closed {closed_after:.2f}s after the revoke"
    again = http.get(f"/jobs/{job_id}/events", headers=headers)
    assert again.status_code == 401, again.text


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"after": 10**20}, {}),
        ({"after": 2**63}, {}),
        ({"after": -1}, {}),
        ({"after": "²"}, {}),
        ({"after": "1e3"}, {}),
        ({}, {"Last-Event-ID": "²".encode()}),
        ({}, {"Last-Event-ID": "99999999999999999999"}),
        ({}, {"Last-Event-ID": "-1"}),
    ],
)
def test_a_malformed_cursor_is_a_422(
    load_stack: LoadStack, load_job: dict[str, Any], params: dict[str, Any], headers: dict[str, Any]
) -> None:
    response = load_stack.service.http.get(f"/jobs/{load_job['id']}/events", params=params, headers=headers)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail, detail


def test_the_largest_cursor_is_accepted(load_stack: LoadStack, load_job: dict[str, Any]) -> None:
    service = load_stack.service
    service.wait_job(load_job["id"], timeout=120)
    timeout = httpx.Timeout(10.0, read=30.0)
    with service.http.stream(
        "GET", f"/jobs/{load_job['id']}/events", params={"after": 2**63 - 1}, timeout=timeout
    ) as response:
        assert response.status_code == 200
        kinds = [
            line.partition(":")[2].strip() for line in response.iter_lines() if line.startswith("event:")
        ]
    # Every visible checkpoint comes at connect, whatever the cursor; no metric row is after it.
    assert [kind for kind in kinds if kind != "checkpoint"] == ["state", "end"], kinds


# --- the fan-out in process: a subscriber that stops reading ------------------------------------


def parse_chunks(chunks: list[bytes]) -> list[tuple[str, str | None, Any]]:
    """(event, id, data) of the server-sent events in a stream's chunks."""
    found = []
    for block in b"".join(chunks).decode().split("\r\n\r\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\r\n") if line)
        if fields:
            found.append((fields["event"], fields.get("id"), json.loads(fields["data"])))
    return found


def test_a_subscriber_that_stops_reading_catches_up_from_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream that falls MAX_PENDING broadcasts behind re-reads the database (in batches of
    BATCH rows) instead of queueing: it still gets every row once, in order, and `end`."""
    import api.feeds as feeds
    from tsla_service import results
    from tsla_service.db import session_scope
    from tsla_service.migrate import upgrade_to_head
    from tsla_service.models import Job, Metric
    from tsla_service.settings import Settings
    from tsla_service.submit import JobRequest, Runnable, new_job_row
    from tsla_service.tokens import create_token
    from tsla_spec.records import MetricRow
    from tsla_spec.spec import build_spec

    monkeypatch.setattr(feeds, "MAX_PENDING", 2)
    monkeypatch.setattr(feeds, "BATCH", 7)
    history_reads: list[int] = []
    read_history = feeds.read_history

    def counted(*args: Any) -> Any:
        history_reads.append(1)
        return read_history(*args)

    monkeypatch.setattr(feeds, "read_history", counted)
    settings = Settings(home=tmp_path, events_poll_seconds=0.01)  # type: ignore[arg-type]
    url = settings.resolved_database_url
    upgrade_to_head(url)
    spec = {"preset": "digits", "epochs": 40, "smoothing": {"method": "lsr"}}
    with session_scope(url) as session:
        token = create_token(session, "lagging")[0]
        job = new_job_row(Runnable(build_spec(spec), "training", None), token.id, JobRequest(raw_spec=spec))
        job.state = "running"
        session.add(job)
    job_id, token_id = job.id, token.id

    def write_epochs() -> None:
        for epoch in range(40):
            rows = [
                MetricRow(epoch=epoch, split="train", name=n, value=1.0, stage="smooth", step=epoch)
                for n in "abc"
            ]
            with session_scope(url) as session:
                results.record_metrics(session, job_id, 1, rows)
            time.sleep(0.01)
        with session_scope(url) as session:
            session.get(Job, job_id).state = "succeeded"  # type: ignore[union-attr]

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        registry = feeds.FeedRegistry(settings)
        steady, lagging = registry.stream(job_id, token_id, 0), registry.stream(job_id, token_id, 0)
        steady_chunks, lagging_chunks = [await anext(steady)], [await anext(lagging)]
        writer = asyncio.create_task(asyncio.to_thread(write_epochs))
        async for chunk in steady:  # the lagging stream is not read meanwhile
            steady_chunks.append(chunk)
        await writer
        lagging_chunks += [chunk async for chunk in lagging]
        return steady_chunks, lagging_chunks

    streams = asyncio.run(asyncio.wait_for(scenario(), 60))
    with session_scope(url) as session:
        expected = list(
            session.scalars(select(Metric.seq).where(Metric.job_id == job_id).order_by(Metric.seq))
        )
    assert len(expected) == 120
    # Both streams' first catch-up read, then the lagging one's batches of 7 rows.
    assert len(history_reads) >= 2 + 120 // 7, len(history_reads)
    for chunks in streams:
        events = parse_chunks(chunks)
        assert events[0][0] == "state" and events[-1][0] == "end", (events[:1], events[-1:])
        assert events[-1][2]["state"] == "succeeded"
        assert [data["seq"] for kind, _, data in events if kind == "metric"] == expected

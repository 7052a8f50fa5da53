"""Service-level benchmarks against real processes, measured side by side in one run.

    .venv/bin/python bench/service.py [--only a,b,c,d,e,f,g] [--quick] [--runs N] [--requests N] [--pairs N]
                                      [--streams N] [--redis-db N]

Everything runs against processes this script starts and stops itself, with the command lines of
`tsla_cli.stack` (the one launcher; `tsla serve` and the integration tests use it too):

  postgres stack  a fresh PostgreSQL database `tsla_bench_<random>` (created on 127.0.0.1:5432 from db
                  `test`, migrated with `tsla_service.migrate.upgrade_to_head`, dropped WITH (FORCE) at
                  the end), Redis db 15 (--redis-db; tests use 1..14) as the broker (flushed before and
                  after), a real celery worker (`python -m worker --pool solo`, stack.worker_command) on
                  a unique queue and a real `uvicorn api.main:create_app --factory` (stack.api_command)
                  on a free port; TSLA_HOME and the checkpoints in a temporary folder.
  embedded stack  `python -m tsla_cli serve --home <tmp> --port <free>` (stack.serve_command: SQLite +
                  the filesystem broker + its own worker process), only for (a).
  bare app        for (e): a one-route FastAPI module written to `<tmp>/bare/bare.py`, under uvicorn
                  with api_command's options (api_command takes no app, so the line is built as
                  `[sys.executable, "-m", "uvicorn", "bare:app", "--host", .., "--port", ..,
                  "--log-level", "warning"]`, cwd `<tmp>/bare`; it fails if api_command's options
                  drift from it), started and stopped the same way.

Every process runs in its own session (stack.start_process) and its process group is killed at the
end (stack.stop_process), also on errors, Ctrl-C and SIGTERM. The API wants a bearer token: the
script registers a random one in the database (`tsla_service.tokens.ensure_token`) or hands it to
`tsla serve` as $TSLA_TOKEN, and talks to the API through `tsla_cli.client.TslaClient`. Submissions
carry an Idempotency-Key, and API calls outside the timed ones are retried on 5xx and connection
errors for up to a minute (a shared machine's tests restart PostgreSQL and Redis); each such error
is printed and counted, and a restart of PostgreSQL or Redis during the run is reported next to
the summary.

(a) submit -> running latency with an idle worker (goal: <= 1 s).
    One warm-up job (not counted), then N jobs (default 10, --quick 3) of
    `{"preset": "digits", "epochs": 1, "smoothing": {"method": "lsr"}}` (the preset's TSLA switch at
    epoch 6 does not fit in one epoch: 422), one at a time: POST, poll GET /jobs/{id} every 20 ms
    until the job leaves `queued`, wait until it finishes and 0.5 s more, so the worker is idle again
    before the next POST. Two numbers per job:
      server  `started_at - created_at` as stored: created_at is the database's now() (PostgreSQL:
              the start of the request's transaction, which begins with the token lookup),
              started_at the worker's clock at its claim UPDATE; so it covers handling the POST,
              commit, enqueue, broker delivery and the claim. SQLite's now() has 1 s resolution (a
              note says so when every created_at is a whole second): there the server figure
              overstates by up to 1 s and the client one is the measurement.
      client  from the POST response arriving to the first GET that shows `running` (includes up to
              one 20 ms poll interval plus a GET; near 0 when the worker claimed the job before the
              POST's response was sent).
    Reported: median / p90 (nearest rank) / max per stack, and the warm-up job's two figures.

(b) metrics page latency, 1k vs 1M metric rows (goal: large/small <= 1.5).
    Two `succeeded` job rows owned by the bench's token are inserted directly, with 1,000,000 and then
    1,000 metric rows, each set by one INSERT ... SELECT FROM generate_series (9 metrics per epoch, the
    names the core writes, so `top1` is 2 of every 9 rows; the small job's seqs all follow the large
    job's), then VACUUM (ANALYZE), so neither stale statistics nor an autovacuum skew the timings.
    Timed through HTTP on one keep-alive connection: GET /jobs/{id}/metrics?after=<seq>&limit=100 with
    the cursor at the start (after=0), the middle and the end (exactly 100 rows left, so every page
    holds 100 rows), without and with &name=top1. Per case: 5 warm-up requests, then N (default 50,
    --quick 30) alternating small and large job; medians in ms, p90s, and the ratio large/small of
    the medians. The headline is the worst ratio.

(c) training throughput through the worker vs the core alone (goal: service/core >= 0.98).
    One spec on synthetic data: 8192 train images 32x32, ResNet-18 width 16, 3 epochs, batch 128,
    TSLA switching at epoch 2, CPU (--quick: 1024 images, 4 epochs). Core alone:
    `tsla_core.train(build_spec(spec), tmp, Path("data"), Hooks(on_metrics=...))` in a fresh
    subprocess; service: POST the same spec, wait for `succeeded`, read its `train/images_per_s` rows
    over HTTP. A run's figure is the median images/s over epochs >= 1 (epoch 0 is warm-up); runs are
    interleaved core, service, core, service, ... (--pairs, default 2) to spread the machine's noise.
    Headline: median(service runs) / median(core runs). Next to it, CPU seconds per job (user +
    system, all threads, the whole job: data, model, epochs, evaluation, checkpoints): the core
    child's process_time() around train(), and the worker's /proc/PID/stat delta from POST to
    `succeeded`, which adds the service's own work (claim, metric and checkpoint rows, heartbeat,
    reaper). Both swing with whatever else runs on the machine (PyTorch's threads spin while they
    wait for a core, so CPU seconds grow with contention too). Printed under the table: how far
    apart runs of the same kind are (max/min - 1 of their medians) and the 1-min load average
    before and after each run; the summary calls the ratio inconclusive when that spread exceeds
    the 2% the goal allows or the load exceeded the CPU count, as it often does on a shared 2-core
    machine. On a quiet machine, --pairs 3 or more.

(d) event streams: the API's latency with N streams open on one running job (default 200).
    One job of `{"preset": "digits", "epochs": 100, "smoothing": {"method": "lsr"}, "device": "cpu"}`
    trains throughout (about a second an epoch). Once it has written 100 metric rows (so every
    page is full), timed on one keep-alive connection, alternating: GET /healthz and
    GET /jobs/{id}/metrics?limit=100 (500 pairs, --quick 200), first with no stream open, then
    with N streams open on that job, read to their ends by a child process (asyncio + httpx, so
    their parsing never holds this process's GIL) once all N have received their first event;
    the connect burst in between is timed too. Meanwhile the API's PostgreSQL connections are
    counted in pg_stat_activity (its URL carries `application_name=tsla-bench-api`, the worker's
    does not) and the maximum is reported next to the pool's limit (pool_size + max_overflow).
    Then the job is canceled and every stream must end with `end`. Reported: p50 / p99 (nearest
    rank) per endpoint and phase.

(e) metrics page throughput vs a bare FastAPI route (goal: metrics/bare >= 0.5).
    A `succeeded` job row with 10,000 metric rows, inserted as in (b), VACUUM (ANALYZE). Two servers:
    the API's GET /jobs/{id}/metrics?after=<middle>&limit=100 (authenticated, the cursor at the
    middle row), and the bare app: one sync `@app.get` route (like the API's routes, it runs in
    the thread pool) that returns that same page as data, parsed once at start, and lets FastAPI
    serialise it, as a JSON route in FastAPI's own tutorial does: no auth, no database, no
    middleware, no validation. (Returning the captured bytes instead would measure a static file
    server: about 4.5 times faster again here.) Both
    on the bench's one httpx client, requests one after another on its keep-alive connection to
    each host (the bare app also gets the Authorization header and ignores it): 100 warm-up
    requests each (--quick 50), then 4 rounds of 500 each (--quick 200), each round timing both,
    the order alternating (metrics first, then bare first) to spread the machine's noise. A
    round with a failed request is noted and repeated. Reported: requests/s per round with the
    1-min load average after it, both bodies' bytes, and the ratio metrics/bare as the median of
    the rounds' ratios. The client shares the CPUs with both servers: this is what one
    connection gets, not the servers' capacity.

(f) GET /jobs with 10,000 jobs (our goals: a page of 50 <= 100 ms median, <= 100 KB).
    10,000 `succeeded` job rows of the bench's token inserted by one INSERT ... SELECT FROM
    generate_series (a minute apart, each with the digits preset's full spec, as a job submitted
    with `{"preset": "digits"}` stores it), then VACUUM (ANALYZE). Pages of GET /jobs?limit=50:
    the first, the middle one (cursor: the id of the job in the middle, newest first), the last
    (exactly 50 jobs left, so next_cursor is null) and the first of ?state=succeeded. Each page
    is checked once (50 jobs, next_cursor), then after 5 warm-up rounds N rounds (--requests,
    default 50, --quick 30) request the four in turn. Reported per page: median and p90 (nearest
    rank) in ms, bytes, bytes per job. Other sections' jobs count too (the table says how many).

(g) experiment reads, 1k vs 1M metric rows per job (goal: large/small <= 1.5).
    Two experiments of the bench's token, 6 succeeded cells each (baseline, lsr, tsla x 2 seeds;
    objective val/top1, max), inserted directly: the experiment row, the job rows (cell, role,
    position, provenance) and per job one INSERT ... SELECT FROM generate_series of 1,000,000 (the
    large one) or 1,000 (the small one) metric rows, 10 per epoch (the 9 of (b) and val/top1;
    top-1 rises and levels off with noise, as a real curve does, the rest is random()). Each job's
    metric summaries and records are then built from its rows by `Summary.of` (what
    record_metrics rebuilds a summary with; tsla_service/summaries.py), then VACUUM (ANALYZE).
    Each read is checked once (3 groups of 2 succeeded jobs; 100 points per curve), then timed
    on one keep-alive connection, 5 warm-up requests then N (--requests) alternating small and
    large: GET /experiments/{id}?target=0.9&early_epochs=3 (the experiment, its jobs and the
    table), GET .../curves?name=test/top1&points=100 (the small jobs' 100 epochs, so both return
    the same points), and GET .../table.csv?target=0.9. Reported: medians and p90s in ms, the
    ratio large/small of the medians (the headline is the worst), and the most top-1 records
    (new running maxima) of a job, which "epochs to target" probes by value. Inserting the 6M
    rows and summarizing them takes about two minutes.

How to read the output: progress lines go to stderr; each section prints its table to stdout when it
finishes, and the summary at the end puts the headline numbers next to their goals. Everything,
including each sample, also goes to bench/results/service.json (written on failure too, with what
was measured). Runtime on 2 quiet cores: --quick about 2 minutes, the default about 5 (each of (e)
and (f) adds under a minute); on a busy machine two or three times that.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg

from tsla_cli.client import ApiError, TslaClient, raise_for_status
from tsla_cli.stack import (
    api_command,
    free_port,
    serve_command,
    service_env,
    start_process,
    stop_process,
    wait_for,
    wait_healthy,
    worker_command,
    worker_ready,
)
from tsla_service.migrate import upgrade_to_head
from tsla_spec.vocabulary import FINISHED_STATES

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_PATH = REPO_ROOT / "bench" / "results" / "service.json"
PG_SERVER = "postgres@127.0.0.1:5432"
PG_ADMIN = f"postgresql://{PG_SERVER}/test"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
SECTIONS = ("a", "b", "c", "d", "e", "f", "g")
API_RETRY_S = 60.0  # how long an untimed API call waits out 5xx and connection errors
STOP_GRACE_S = 10.0  # SIGTERM to SIGKILL (a solo worker in the middle of a task would finish it first)

LATENCY_JOB: dict[str, Any] = {"preset": "digits", "epochs": 1, "smoothing": {"method": "lsr"}}
LATENCY_POLL_S = 0.02
LATENCY_SETTLE_S = 0.5  # after a job finishes, so the worker has acked and is idle again
LATENCY_GOAL_S = 1.0

# (split, name) of the rows one epoch of the core writes.
EPOCH_METRICS = (
    ("train", "loss"),
    ("train", "top1"),
    ("train", "lr"),
    ("train", "images_per_s"),
    ("train", "grad_var"),
    ("train", "epoch_time"),
    ("test", "loss"),
    ("test", "top1"),
    ("test", "top5"),
)
SMALL_ROWS, LARGE_ROWS = 1_000, 1_000_000
PAGE = 100
PAGE_WARMUP = 5
PAGE_RATIO_GOAL = 1.5
MAX_SPEC_EPOCHS = 10_000  # RunSpec.epochs' upper bound (the 1M-row job has 111,112 epochs of rows)

THROUGHPUT_GOAL = 0.98

API_APPLICATION_NAME = "tsla-bench-api"  # the API's connections in pg_stat_activity
STREAM_JOB: dict[str, Any] = {
    "preset": "digits",
    "epochs": 100,
    "smoothing": {"method": "lsr"},
    "device": "cpu",
}
STREAMS_OPEN_TIMEOUT_S = 120.0
STREAM_LATENCY_GOAL_MS = 100.0

BARE_ROWS = 10_000  # metric rows of (e)'s job
BARE_ROUNDS = 4  # (e) rounds, each timing both servers, in alternating order
BARE_REQUESTS, BARE_REQUESTS_QUICK = 2_000, 800  # (e) timed requests per server, all rounds together
BARE_WARMUP, BARE_WARMUP_QUICK = 100, 50  # (e) untimed requests per server first
BARE_RATIO_GOAL = 0.5
# A bare FastAPI JSON route as FastAPI's tutorial writes one: it returns the page as data and
# FastAPI serialises it; no auth, no database, no validation. (Returning pre-encoded bytes would be
# a static file server, not a JSON route: about 4x faster again on this machine.)
BARE_APP = '''"""(e)'s baseline, written by bench/service.py: a fixed JSON page, no auth, no database."""

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI

PAGE = json.loads((Path(__file__).parent / "bare-body.json").read_bytes())
app = FastAPI()


@app.get("/page")
def page() -> dict[str, Any]:
    return PAGE
'''

LIST_JOBS = 10_000  # job rows of (f)
LIST_PAGE = 50
LIST_GOAL_MS = 100.0  # median per page of 50
LIST_GOAL_BYTES = 100_000  # per page of 50 (100 KB, KB = 1000 bytes)

EXPERIMENT_METHODS = ("baseline", "lsr", "tsla")  # (g) groups, 2 seeds each
EXPERIMENT_JOBS = 2 * len(EXPERIMENT_METHODS)
EXPERIMENT_METRICS = (*EPOCH_METRICS, ("val", "top1"))  # (g) rows of one epoch
EXPERIMENT_POINTS = SMALL_ROWS // len(EXPERIMENT_METRICS)  # the small jobs' epochs: 100
EXPERIMENT_READS: dict[str, tuple[str, dict[str, Any]]] = {  # (g) case: (path after the id, query)
    "experiment ?target=0.9&early_epochs=3": ("", {"target": 0.9, "early_epochs": 3}),
    f"curves ?name=test/top1&points={EXPERIMENT_POINTS}": (
        "/curves",
        {"name": "test/top1", "points": EXPERIMENT_POINTS},
    ),
    "table.csv ?target=0.9": ("/table.csv", {"target": 0.9}),
}
EXPERIMENT_RATIO_GOAL = 1.5


# --- small helpers ----------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_time(text: str) -> datetime:
    """An API timestamp; a naive one is UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """median, p90 (nearest rank) and max."""
    ordered = sorted(values)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
    return {"median": statistics.median(ordered), "p90": p90, "max": ordered[-1]}


def tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def new_token() -> str:
    return f"tsla_bench_{secrets.token_urlsafe(24)}"


# --- processes --------------------------------------------------------------------------------


class Proc:
    """A process started by `tsla_cli.stack` in its own session (Ctrl-C stays with us), stopped with
    `stack` (SIGTERM, SIGKILL after `STOP_GRACE_S`); its name and log are for error messages."""

    def __init__(
        self,
        stack: ExitStack,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path = REPO_ROOT,
    ) -> None:
        self.name, self.log_path = name, log_path
        self.popen = start_process(command, env, log_path, cwd=cwd)
        stack.callback(stop_process, self.popen, grace=STOP_GRACE_S)

    def check(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail(self.log_path)}")


def wait_ready(proc: Proc, worker_log: Path, timeout_s: float = 180.0) -> float:
    """Seconds until the worker logs `ready.` (Celery's line once it consumes); warns on timeout."""
    started = time.monotonic()
    try:
        wait_for(lambda: worker_ready(proc.popen, worker_log), timeout_s, "the worker", interval=0.2)
    except TimeoutError:
        log(f"warning: no 'ready.' in {worker_log} after {timeout_s}s; the warm-up job will wait for it")
    return time.monotonic() - started


# --- the API ----------------------------------------------------------------------------------


@dataclass
class Api:
    """A `TslaClient` with the bench's token; untimed calls wait out 5xx and connection errors, and
    each such error is kept in `errors` (the summary counts them)."""

    client: TslaClient
    base_url: str
    errors: list[str] = field(default_factory=list)

    @property
    def http(self) -> httpx.Client:
        """The client's authenticated keep-alive connection, for the timed raw GETs."""
        return self.client.http

    def call(self, what: str, action: Callable[[], T]) -> T:
        deadline = time.monotonic() + API_RETRY_S
        while True:
            try:
                return action()
            except ApiError as error:
                if error.status < 500:
                    raise ApiError(error.status, f"{what} -> {error}") from None
                problem = str(error)[:200]
            except httpx.TransportError as error:
                problem = f"{type(error).__name__}: {error}"
            self.note_error(f"{what}: {problem}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} kept failing for {API_RETRY_S:g}s: {problem}")
            time.sleep(0.5)

    def note_error(self, message: str) -> None:
        self.errors.append(f"{time.strftime('%H:%M:%S')} {message}")
        log(f"API error (retrying): {message}")

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        key = secrets.token_hex(16)  # a retried POST cannot make a second job
        return self.call("POST /jobs", lambda: self.client.submit(body, idempotency_key=key))

    def job(self, job_id: str) -> dict[str, Any]:
        return self.call(f"GET /jobs/{job_id}", lambda: self.client.get(job_id))

    def metrics_page(self, job_id: str, limit: int, name: str) -> dict[str, Any]:
        return self.call(
            f"GET /jobs/{job_id}/metrics", lambda: self.client.metrics_page(job_id, limit=limit, name=name)
        )

    def wait_healthy(self, proc: Proc, timeout_s: float = 120.0) -> None:
        wait_healthy(self.base_url, [proc.popen], timeout_s)


def make_api(stack: ExitStack, port: int, token: str, errors: list[str]) -> Api:
    """A client of the API on `port`, closed with `stack`; its retried errors go to `errors`."""
    base_url = f"http://127.0.0.1:{port}"
    return Api(stack.enter_context(TslaClient(base_url, token, timeout=60)), base_url, errors)


# --- the stacks -------------------------------------------------------------------------------


@dataclass
class Service:
    label: str
    api: Api
    procs: list[Proc]
    conninfo: str | None = None  # psycopg conninfo of the database (postgres stack only)
    token_id: str | None = None  # the bench token's id, owner of its jobs (postgres stack only)
    worker_pid: int | None = None  # the solo worker, which runs the task itself (postgres stack only)

    def check_alive(self) -> None:
        for proc in self.procs:
            proc.check()


def create_database(stack: ExitStack) -> str:
    """A fresh database, dropped WITH (FORCE) when `stack` closes; returns its name."""
    name = f"tsla_bench_{secrets.token_hex(4)}"
    pg_admin(f"CREATE DATABASE {name}")
    stack.callback(drop_database, name)
    return name


def drop_database(name: str) -> None:
    from tsla_service.db import get_engine

    get_engine(f"postgresql+psycopg://{PG_SERVER}/{name}").dispose()  # this process's pooled connections
    with_pg_retries(lambda: pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"), "dropping the database")
    log(f"dropped database {name}")


def pg_admin(statement: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(statement)


def with_pg_retries(action: Callable[[], T], what: str, timeout_s: float = 120.0) -> T:
    """`action()`, again after a connection error while PostgreSQL restarts (a shared machine's
    fault-injection tests restart it); the error itself after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return action()
        except psycopg.OperationalError as error:
            if time.monotonic() > deadline:
                raise
            log(f"PostgreSQL error while {what} (retrying): {str(error).strip()[:200]}")
            time.sleep(2)


def register_token(database_url: str, token: str) -> str:
    """Register `token` in the service's database (as `tsla token create` would); returns its id."""
    from tsla_service.db import session_scope
    from tsla_service.tokens import ensure_token

    with session_scope(database_url) as session:
        return ensure_token(session, "bench", token).id


def flush_redis(db: int, when: str) -> None:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=5)
    try:
        found = client.dbsize()
        if found and when == "before":
            log(f"warning: Redis db {db} held {found} keys; flushing them (--redis-db picks another db)")
        client.flushdb()
    except redis.RedisError as error:
        log(f"warning: could not flush Redis db {db} {when} the run: {error}")


def start_postgres_stack(stack: ExitStack, tmp: Path, redis_db: int, errors: list[str]) -> Service:
    """Fresh database + Redis + a celery worker + uvicorn, all real processes."""
    database = create_database(stack)
    url = f"postgresql+psycopg://{PG_SERVER}/{database}"
    upgrade_to_head(url)
    token = new_token()
    token_id = register_token(url, token)
    flush_redis(redis_db, "before")
    stack.callback(flush_redis, redis_db, "after")  # the queue's bindings, once the worker has stopped
    queue = f"bench-{secrets.token_hex(4)}"
    home = tmp / "pg-home"
    home.mkdir()
    env = service_env(
        TSLA_DATABASE_URL=url,
        TSLA_BROKER_URL=f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}",
        TSLA_QUEUES=queue,
        TSLA_STORAGE_URL=str(home / "checkpoints"),
        TSLA_HOME=str(home),
    )
    worker = Proc(stack, "celery worker", worker_command([queue]), env, tmp / "worker.log")
    port = free_port()
    api_env = dict(env, TSLA_DATABASE_URL=f"{url}?application_name={API_APPLICATION_NAME}")  # for (d)
    server = Proc(stack, "uvicorn", api_command("127.0.0.1", port), api_env, tmp / "api.log")
    api = make_api(stack, port, token, errors)
    api.wait_healthy(server)
    ready_s = wait_ready(worker, worker.log_path)
    log(f"postgres stack up: db {database}, queue {queue}, api :{port}, worker ready after {ready_s:.1f} s")
    conninfo = f"postgresql://{PG_SERVER}/{database}"
    return Service("postgres+redis", api, [worker, server], conninfo, token_id, worker.popen.pid)


def start_embedded_stack(stack: ExitStack, tmp: Path, errors: list[str]) -> Service:
    """`tsla serve`: SQLite, the filesystem broker and its own worker, under a temporary home."""
    home = tmp / "embedded-home"
    port = free_port()
    token = new_token()  # `tsla serve` registers $TSLA_TOKEN
    env = service_env(TSLA_TOKEN=token)
    proc = Proc(stack, "tsla serve", serve_command(home, port), env, tmp / "embedded.log")
    api = make_api(stack, port, token, errors)
    api.wait_healthy(proc)
    ready_s = wait_ready(proc, home / "logs" / "worker.log")
    log(f"embedded stack up: home {home}, api :{port}, worker ready after {ready_s:.1f} s")
    return Service("embedded sqlite+fs", api, [proc])


def wait_succeeded(service: Service, job_id: str, timeout_s: float, poll_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = service.api.job(job_id)
        if job["state"] in FINISHED_STATES:
            if job["state"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['state']}: {job['error']}")
            return job
        service.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['state']} after {timeout_s}s")
        time.sleep(poll_s)


def server_identities() -> dict[str, str]:
    """When PostgreSQL started and Redis's run id: a change means someone restarted it meanwhile."""
    import redis

    found = {}
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_postmaster_start_time()::text").fetchone()
            found["postgresql"] = str(row[0]) if row else "?"
    except psycopg.Error as error:
        found["postgresql"] = f"unreachable: {error}"
    try:
        found["redis"] = str(redis.Redis(host=REDIS_HOST, port=REDIS_PORT).info("server")["run_id"])
    except redis.RedisError as error:
        found["redis"] = f"unreachable: {error}"
    return found


# --- (a) submit -> running ---------------------------------------------------------------------


@dataclass
class LatencySample:
    job_id: str
    server_s: float
    client_s: float
    first_seen: str  # the first state seen after `queued` (normally `running`)
    created_at: str  # as the API returned them
    started_at: str


def first_state_after_queued(service: Service, job_id: str, timeout_s: float = 120.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        state: str = service.api.job(job_id)["state"]
        if state != "queued":
            return state
        if time.monotonic() > deadline:
            service.check_alive()
            raise TimeoutError(f"job {job_id} still queued after {timeout_s}s")
        time.sleep(LATENCY_POLL_S)


def one_latency(service: Service) -> LatencySample:
    job = service.api.submit(LATENCY_JOB)
    posted = time.perf_counter()
    state = first_state_after_queued(service, job["id"])
    client_s = time.perf_counter() - posted
    final = wait_succeeded(service, job["id"], timeout_s=600, poll_s=0.2)
    created, started = final["created_at"], final["started_at"]
    server_s = (parse_time(started) - parse_time(created)).total_seconds()
    time.sleep(LATENCY_SETTLE_S)
    return LatencySample(job["id"], server_s, client_s, state, created, started)


def whole_seconds(samples: Sequence[LatencySample]) -> bool:
    """Whether every created_at is a whole second (SQLite's CURRENT_TIMESTAMP has 1 s resolution)."""
    return all(parse_time(s.created_at).microsecond == 0 for s in samples)


def measure_latency(service: Service, runs: int) -> dict[str, Any]:
    log(f"(a) {service.label}: warm-up job")
    warmup = one_latency(service)
    samples = []
    for index in range(runs):
        samples.append(one_latency(service))
        last = samples[-1]
        log(
            f"(a) {service.label}: job {index + 1}/{runs}: "
            f"server {last.server_s:.3f} s, client {last.client_s:.3f} s"
        )
    return {
        "warmup": asdict(warmup),
        "created_at_whole_seconds": whole_seconds([warmup, *samples]),
        "samples": [asdict(s) for s in samples],
        "server_s": summarize([s.server_s for s in samples]),
        "client_s": summarize([s.client_s for s in samples]),
    }


def print_latency(results: dict[str, dict[str, Any]], runs: int) -> None:
    print(
        f"\n(a) submit -> running, idle worker: {runs} jobs per stack after 1 warm-up "
        f"(goal <= {LATENCY_GOAL_S:g} s)"
    )
    print(f"{'':20} {'server: started_at - created_at':>32}   {'client: POST -> seen running':>32}")
    header = f"{'median':>10} {'p90':>10} {'max':>10}"
    print(f"{'stack':20} {header}   {header}   warm-up server / client")
    for label, result in results.items():
        server, client, warm = result["server_s"], result["client_s"], result["warmup"]
        print(
            f"{label:20} {server['median']:10.3f} {server['p90']:10.3f} {server['max']:10.3f}   "
            f"{client['median']:10.3f} {client['p90']:10.3f} {client['max']:10.3f}   "
            f"{warm['server_s']:.3f} / {warm['client_s']:.3f} s"
        )
        odd = [s["first_seen"] for s in result["samples"] if s["first_seen"] != "running"]
        if odd:
            print(f"{'':20} note: {len(odd)} job(s) were first seen {sorted(set(odd))}, not running")
        if result["created_at_whole_seconds"]:
            print(
                f"{'':20} note: every created_at is a whole second (1 s resolution): the server "
                "figure overstates by up to 1 s, the client one is the measurement"
            )


# --- (b) metrics pages ------------------------------------------------------------------------


def vacuum_analyze(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) jobs")
        conn.execute("VACUUM (ANALYZE) metrics")


def insert_job_with_metrics(conninfo: str, owner: str, rows: int) -> str:
    """A succeeded job row of `owner` with `rows` metric rows, 9 per epoch, in one transaction;
    returns its id."""
    from tsla_spec.spec import build_spec

    job_id = secrets.token_hex(16)
    epochs = math.ceil(rows / len(EPOCH_METRICS))
    spec = build_spec({"preset": "digits", "epochs": min(epochs, MAX_SPEC_EPOCHS)}).model_dump_json()
    with psycopg.connect(conninfo) as conn:  # commits on leaving the block
        insert_rows(conn, job_id, owner, rows, epochs, spec)
    return job_id


def insert_rows(
    conn: psycopg.Connection[Any], job_id: str, owner: str, rows: int, epochs: int, spec: str
) -> None:
    conn.execute(
        "INSERT INTO jobs (id, name, owner, state, spec, method, dataset, epochs, epochs_done) "
        "VALUES (%s, %s, %s, 'succeeded', %s::json, 'tsla', 'digits', %s, %s)",
        (job_id, f"bench-{rows}-rows", owner, spec, epochs, epochs),
    )
    conn.execute(
        """
        INSERT INTO metrics (job_id, epoch, step, split, name, value, stage, attempt)
        SELECT %(job)s, g / %(k)s, (g / %(k)s + 1) * 12, (%(splits)s::text[])[g %% %(k)s + 1],
               (%(names)s::text[])[g %% %(k)s + 1], random(),
               CASE WHEN g / %(k)s < %(switch)s THEN 'smooth' ELSE 'onehot' END, 1
        FROM generate_series(0, %(rows)s - 1) AS g
        """,
        {
            "job": job_id,
            "k": len(EPOCH_METRICS),
            "splits": [split for split, _ in EPOCH_METRICS],
            "names": [name for _, name in EPOCH_METRICS],
            "switch": epochs // 2,
            "rows": rows,
        },
    )


def seed_metrics(conninfo: str, owner: str) -> tuple[str, str]:
    """The large job, then the small one (whose rows follow, as for a job started after a long
    one), inserted, vacuumed and analyzed; returns (small, large) ids."""
    started = time.perf_counter()
    large = with_pg_retries(lambda: insert_job_with_metrics(conninfo, owner, LARGE_ROWS), "inserting")
    small = with_pg_retries(lambda: insert_job_with_metrics(conninfo, owner, SMALL_ROWS), "inserting")
    inserted = time.perf_counter() - started
    with_pg_retries(lambda: vacuum_analyze(conninfo), "vacuuming")
    vacuumed = time.perf_counter() - started - inserted
    log(
        f"(b) inserted {LARGE_ROWS:,} + {SMALL_ROWS:,} rows in {inserted:.1f} s, "
        f"VACUUM (ANALYZE) {vacuumed:.1f} s"
    )
    return small, large


@dataclass(frozen=True)
class PageCase:
    position: str  # start, middle, end
    name: str | None  # the `name` filter

    @property
    def label(self) -> str:
        return self.position + (f" name={self.name}" if self.name else "")


PAGE_CASES = tuple(PageCase(p, n) for n in (None, "top1") for p in ("start", "middle", "end"))


def cursor_for(conn: psycopg.Connection[Any], job_id: str, case: PageCase) -> int:
    """`after` that puts the page at the case's position, with at least PAGE rows after it."""
    where, params = "job_id = %s", [job_id]
    if case.name is not None:
        where, params = where + " AND name = %s", [*params, case.name]
    row = conn.execute(f"SELECT count(*) FROM metrics WHERE {where}", params).fetchone()
    assert row is not None
    count = int(row[0])
    index = {"start": 0, "middle": min(count // 2, count - PAGE), "end": count - PAGE}[case.position]
    if index <= 0:
        return 0
    row = conn.execute(
        f"SELECT seq FROM metrics WHERE {where} ORDER BY seq OFFSET %s LIMIT 1", [*params, index - 1]
    ).fetchone()
    assert row is not None
    return int(row[0])


def timed_page(api: Api, job_id: str, after: int, case: PageCase) -> float:
    """Seconds for one page of PAGE rows; a failed request is noted and repeated, never timed."""
    params: dict[str, Any] = {"after": after, "limit": PAGE}
    if case.name is not None:
        params["name"] = case.name

    def timed_get() -> tuple[float, httpx.Response]:
        started = time.perf_counter()
        response = api.http.get(f"/jobs/{job_id}/metrics", params=params)
        elapsed = time.perf_counter() - started
        raise_for_status(response)
        return elapsed, response

    elapsed, response = api.call(f"GET metrics {params} of {job_id}", timed_get)
    if len(response.json()["items"]) != PAGE:
        raise RuntimeError(f"metrics page {params} of {job_id}: not {PAGE} rows: {response.text[:300]}")
    return elapsed


def measure_case(api: Api, jobs: dict[str, tuple[str, int]], case: PageCase, requests: int) -> dict[str, Any]:
    """Alternate small and large requests; medians and p90s in ms, and the ratio large/small."""
    times: dict[str, list[float]] = {size: [] for size in jobs}
    for index in range(PAGE_WARMUP + requests):
        for size, (job_id, after) in jobs.items():
            elapsed = timed_page(api, job_id, after, case)
            if index >= PAGE_WARMUP:
                times[size].append(elapsed * 1000)
    medians = {size: statistics.median(values) for size, values in times.items()}
    return {
        "position": case.position,
        "name": case.name,
        "after": {size: after for size, (_, after) in jobs.items()},
        "median_ms": medians,
        "p90_ms": {size: summarize(values)["p90"] for size, values in times.items()},
        "ratio": medians["large"] / medians["small"],
    }


def measure_metrics_pages(service: Service, requests: int) -> dict[str, Any]:
    assert service.conninfo is not None and service.token_id is not None
    small, large = seed_metrics(service.conninfo, service.token_id)
    with psycopg.connect(service.conninfo, autocommit=True) as conn:
        cursors = {
            case: (cursor_for(conn, small, case), cursor_for(conn, large, case)) for case in PAGE_CASES
        }
    cases = []
    for case in PAGE_CASES:
        after_small, after_large = cursors[case]
        jobs = {"small": (small, after_small), "large": (large, after_large)}
        cases.append(measure_case(service.api, jobs, case, requests))
        log(f"(b) {case.label}: ratio {cases[-1]['ratio']:.2f}")
    return {
        "rows": {"small": SMALL_ROWS, "large": LARGE_ROWS},
        "requests": requests,
        "cases": cases,
        "worst_ratio": max(c["ratio"] for c in cases),
    }


def print_metrics_pages(result: dict[str, Any]) -> None:
    print(
        f"\n(b) GET /jobs/{{id}}/metrics?after=..&limit={PAGE}: {SMALL_ROWS:,} vs {LARGE_ROWS:,} rows, "
        f"median of {result['requests']} requests each (goal: ratio <= {PAGE_RATIO_GOAL})"
    )
    print(
        f"{'cursor':10} {'filter':10} {'small ms':>10} {'large ms':>10} {'ratio':>8}   "
        f"{'p90 small':>10} {'p90 large':>10}"
    )
    for case in result["cases"]:
        median, p90 = case["median_ms"], case["p90_ms"]
        name = f"name={case['name']}" if case["name"] else "-"
        print(
            f"{case['position']:10} {name:10} {median['small']:10.2f} {median['large']:10.2f} "
            f"{case['ratio']:8.2f}   {p90['small']:10.2f} {p90['large']:10.2f}"
        )
    print(f"worst ratio (headline): {result['worst_ratio']:.2f}")


# --- (c) throughput ---------------------------------------------------------------------------


def throughput_spec(quick: bool) -> dict[str, Any]:
    """The (c) spec: 5-10 s per epoch on 2 quiet cores (--quick: about 1 s; far more when busy)."""
    synthetic = {"num_train": 1024 if quick else 8192, "num_test": 256 if quick else 1024, "image_size": 32}
    return {
        "data": {"name": "synthetic", "synthetic": synthetic},
        "model": {"width": 16},
        "epochs": 4 if quick else 3,  # --quick: shorter epochs, so one more for the median
        "batch_size": 128,
        "smoothing": {"method": "tsla", "switch_epoch": 2},
        "device": "cpu",
    }


def steady_median(per_epoch: Sequence[float]) -> float:
    """Median images/s over epochs >= 1 (epoch 0 is warm-up), or epoch 0 alone if that is all."""
    return statistics.median(per_epoch[1:] or per_epoch)


@dataclass
class ThroughputRun:
    kind: str  # core or service
    images_per_s: list[float]  # per epoch, as the core measured it
    cpu_s: float  # CPU seconds (all threads) of the process running the whole job
    wall_s: float  # wall seconds of the whole job (data, model, epochs, evaluation, checkpoints)
    median: float = field(init=False)

    def __post_init__(self) -> None:
        self.median = steady_median(self.images_per_s)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process, all its threads (Linux: /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_child(spec_path: Path, result_path: Path) -> None:
    """In the fresh subprocess: train the spec with the core alone, write what it measured."""
    from tsla_core import Hooks, MetricRow, train
    from tsla_spec.spec import build_spec

    per_epoch: dict[int, float] = {}

    def on_metrics(rows: list[MetricRow]) -> None:
        per_epoch.update({r.epoch: r.value for r in rows if r.split == "train" and r.name == "images_per_s"})

    spec = build_spec(json.loads(spec_path.read_text()))
    cpu, wall = time.process_time(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tsla-bench-core-") as out:
        train(spec, Path(out), Path("data"), Hooks(on_metrics=on_metrics))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    result = ThroughputRun("core", [per_epoch[e] for e in sorted(per_epoch)], cpu, wall)
    result_path.write_text(json.dumps(asdict(result)))


def run_core(stack: ExitStack, tmp: Path, spec: dict[str, Any], index: int) -> ThroughputRun:
    spec_path, result_path = tmp / "core-spec.json", tmp / f"core-{index}.json"
    spec_path.write_text(json.dumps(spec))
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--core-child",
        str(spec_path),
        str(result_path),
    ]
    proc = Proc(stack, "core run", command, service_env(), tmp / f"core-{index}.log")
    if proc.popen.wait() != 0:
        raise RuntimeError(f"core run failed ({proc.popen.returncode}):\n{tail(proc.log_path)}")
    found = json.loads(result_path.read_text())
    return ThroughputRun("core", found["images_per_s"], found["cpu_s"], found["wall_s"])


def run_service(service: Service, spec: dict[str, Any]) -> ThroughputRun:
    assert service.worker_pid is not None
    cpu_before = process_cpu_s(service.worker_pid)
    job = service.api.submit({"name": "bench-throughput", **spec})
    final = wait_succeeded(service, job["id"], timeout_s=3600, poll_s=1.0)
    cpu = process_cpu_s(service.worker_pid) - cpu_before
    wall = (parse_time(final["finished_at"]) - parse_time(final["started_at"])).total_seconds()
    page = service.api.metrics_page(job["id"], limit=1000, name="images_per_s")
    rows = sorted((r for r in page["items"] if r["split"] == "train"), key=lambda r: r["epoch"])
    return ThroughputRun("service", [r["value"] for r in rows], cpu, wall)


def measure_throughput(
    stack: ExitStack, tmp: Path, service: Service, quick: bool, pairs: int
) -> dict[str, Any]:
    spec = throughput_spec(quick)
    runners: dict[str, Callable[[int], ThroughputRun]] = {
        "core": lambda i: run_core(stack, tmp, spec, i),
        "service": lambda _i: run_service(service, spec),
    }
    runs: list[ThroughputRun] = []
    loads = [os.getloadavg()[0]]
    for index in range(pairs):
        for kind, runner in runners.items():
            log(f"(c) run {len(runs) + 1}/{2 * pairs}: {kind}")
            runs.append(runner(index))
            loads.append(os.getloadavg()[0])
            log(f"(c) {kind}: {', '.join(f'{v:.0f}' for v in runs[-1].images_per_s)} images/s")
    medians = {k: [r.median for r in runs if r.kind == k] for k in runners}
    median = {k: statistics.median(values) for k, values in medians.items()}
    cpu = {k: statistics.median(r.cpu_s for r in runs if r.kind == k) for k in runners}
    return {
        "spec": spec,
        "runs": [asdict(r) for r in runs],
        "median": median,
        "ratio": median["service"] / median["core"],
        # How far apart runs of the same kind are (max/min - 1): a ratio's distance from 1 below
        # this is noise. None with one run per kind (--pairs 1).
        "spread": max(max(v) / min(v) - 1 for v in medians.values()) if pairs > 1 else None,
        "cpu_s": cpu,
        "cpu_ratio": cpu["core"] / cpu["service"],
        "loadavg_1min": loads,
    }


def print_throughput(result: dict[str, Any]) -> None:
    spec = result["spec"]
    synthetic = spec["data"]["synthetic"]
    print(
        f"\n(c) training images/s, worker vs core alone: synthetic {synthetic['num_train']} images "
        f"{synthetic['image_size']}px, {spec['epochs']} epochs, batch {spec['batch_size']}; median over "
        f"epochs >= 1 (goal: service/core >= {THROUGHPUT_GOAL})"
    )
    print(f"{'run':4} {'kind':8} {'images/s per epoch':>36} {'median':>9} {'CPU s':>8} {'wall s':>8}")
    for index, run in enumerate(result["runs"], 1):
        per_epoch = " ".join(f"{v:8.1f}" for v in run["images_per_s"])
        print(
            f"{index:<4} {run['kind']:8} {per_epoch:>36} {run['median']:9.1f} "
            f"{run['cpu_s']:8.1f} {run['wall_s']:8.1f}"
        )
    median, cpu = result["median"], result["cpu_s"]
    print(
        f"median of runs: core {median['core']:.1f}, service {median['service']:.1f} images/s; "
        f"ratio service/core {result['ratio']:.3f}"
    )
    print(
        f"CPU s per job (median): core {cpu['core']:.1f}, service {cpu['service']:.1f}; "
        f"core/service {result['cpu_ratio']:.3f}"
    )
    spread = result["spread"]
    if spread is not None:
        print(f"runs of the same kind differ by up to {100 * spread:.0f}% (max/min of their medians)")
    loads = ", ".join(f"{v:.1f}" for v in result["loadavg_1min"])
    print(f"1-min load average before and after each run ({os.cpu_count()} CPUs): {loads}")


# --- (d) event streams -----------------------------------------------------------------------


async def read_one_stream(
    client: httpx.AsyncClient, job_id: str, opened: Callable[[], None]
) -> dict[str, Any]:
    """One event stream to its close: status, metric events seen, and the last event's name."""
    from httpx_sse import aconnect_sse

    metrics, last = 0, None
    async with aconnect_sse(client, "GET", f"/jobs/{job_id}/events") as source:
        if source.response.status_code != 200:
            return {"status": source.response.status_code, "metrics": 0, "last": None}
        async for sse in source.aiter_sse():
            if not sse.data:
                continue  # a `: ping` after an `id:`: httpx_sse yields it, a browser does not (WHATWG)
            if last is None:
                opened()
            last = sse.event
            metrics += sse.event == "metric"
    return {"status": 200, "metrics": metrics, "last": last}


async def read_streams(
    base_url: str, authorization: str, job_id: str, count: int, ready: Any
) -> list[dict[str, Any]]:
    opened = 0

    def one_opened() -> None:
        nonlocal opened
        opened += 1
        if opened == count:
            ready.set()

    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=0)
    timeout = httpx.Timeout(10.0, read=60.0)  # pings come every 15 s
    headers = {"Authorization": authorization}
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=timeout
    ) as client:
        reads = [read_one_stream(client, job_id, one_opened) for _ in range(count)]
        found = await asyncio.gather(*reads, return_exceptions=True)
    return [r if isinstance(r, dict) else {"status": None, "error": repr(r), "last": None} for r in found]


def streams_child(base_url: str, authorization: str, job_id: str, count: int, ready: Any, out: str) -> None:
    """(d)'s child process: open `count` streams at once, read each to its end, write the results."""
    results = asyncio.run(read_streams(base_url, authorization, job_id, count, ready))
    Path(out).write_text(json.dumps(results))


@dataclass
class StreamProbe:
    """Timed GET /healthz and metrics pages, per phase, and the API's PostgreSQL connections."""

    api: Api
    job_id: str
    pg: psycopg.Connection[Any]
    latency_ms: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # 5xx and transport errors per phase
    connections: list[int] = field(default_factory=list)

    def once(self, phase: str) -> None:
        for name, path, params in (
            ("healthz", "/healthz", {}),
            ("metrics", f"/jobs/{self.job_id}/metrics", {"limit": PAGE}),
        ):
            started = time.perf_counter()
            try:
                failed = self.api.http.get(path, params=params).status_code >= 500
            except httpx.TransportError:
                failed = True
            elapsed = (time.perf_counter() - started) * 1000
            self.latency_ms.setdefault(phase, {}).setdefault(name, []).append(elapsed)
            self.errors[phase] = self.errors.get(phase, 0) + failed
        row = self.pg.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            (API_APPLICATION_NAME,),
        ).fetchone()
        self.connections.append(int(row[0]) if row else 0)

    def repeat(self, phase: str, requests: int) -> None:
        for _ in range(requests):
            self.once(phase)

    def until(self, phase: str, done: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"(d) {phase}: not done after {timeout_s:.0f} s")
            self.once(phase)

    def summary(self) -> dict[str, Any]:
        return {
            phase: {name: percentiles(values) for name, values in names.items()}
            for phase, names in self.latency_ms.items()
        }


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50 and p99 (nearest rank) and the number of samples."""
    ordered = sorted(values)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    return {"p50": statistics.median(ordered), "p99": p99, "n": len(ordered)}


def with_streams(
    service: Service, job_id: str, streams: int, probe: StreamProbe, requests: int, tmp: Path
) -> list[Any]:
    """Probe while `streams` streams connect and then while they are open; cancel the job so
    that every stream ends; the child's results."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    ready, out = context.Event(), tmp / "streams.json"
    authorization = service.api.http.headers["Authorization"]  # the bench's token
    args = (service.api.base_url, authorization, job_id, streams, ready, str(out))
    child = context.Process(target=streams_child, args=args, daemon=True)
    child.start()
    try:
        probe.until("connect", ready.is_set, STREAMS_OPEN_TIMEOUT_S)
        log(f"(d) {streams} streams open")
        probe.repeat("open", requests)
        service.api.call(f"POST /jobs/{job_id}/cancel", lambda: service.api.client.cancel(job_id))
        probe.until("closing", lambda: not child.is_alive(), STREAMS_OPEN_TIMEOUT_S)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    if child.exitcode != 0:
        raise RuntimeError(f"(d) the stream reader exited with {child.exitcode}")
    results: list[Any] = json.loads(out.read_text())
    return results


def full_page(service: Service, job_id: str) -> bool:
    service.check_alive()
    return len(service.api.metrics_page(job_id, limit=PAGE, name="")["items"]) == PAGE


def measure_event_streams(service: Service, streams: int, quick: bool, tmp: Path) -> dict[str, Any]:
    from sqlalchemy.pool import QueuePool

    from tsla_service.db import get_engine

    assert service.conninfo is not None
    requests = 200 if quick else 500
    pool = get_engine(service.conninfo.replace("postgresql://", "postgresql+psycopg://", 1)).pool
    assert isinstance(pool, QueuePool)  # get_engine's PostgreSQL engines
    job = service.api.submit({"name": "bench-streams", **STREAM_JOB})
    log(f"(d) waiting for the job's first {PAGE} metric rows, so that every metrics page is full")
    wait_for(lambda: full_page(service, job["id"]), 600, "the job's first metric rows", interval=1.0)
    with psycopg.connect(service.conninfo, autocommit=True) as pg:
        probe = StreamProbe(service.api, job["id"], pg)
        log(f"(d) {requests} request pairs without streams")
        probe.repeat("without", requests)
        log(f"(d) opening {streams} streams")
        results = with_streams(service, job["id"], streams, probe, requests, tmp)
    ended = sum(1 for r in results if r.get("status") == 200 and r.get("last") == "end")
    return {
        "streams": streams,
        "requests": requests,
        "latency_ms": probe.summary(),
        "errors": probe.errors,
        "max_api_connections": max(probe.connections),
        "pool_limit": pool.size() + getattr(pool, "_max_overflow", 0),
        "ended": ended,
        "metrics_per_stream": sorted({r.get("metrics", 0) for r in results}),
    }


def print_event_streams(result: dict[str, Any]) -> None:
    streams, latency = result["streams"], result["latency_ms"]
    print(
        f"\n(d) {streams} event streams on one running job: GET /healthz and GET /jobs/{{id}}/metrics?"
        f"limit={PAGE}, {result['requests']} of each per phase (goal: p99 <= {STREAM_LATENCY_GOAL_MS:g} ms)"
    )
    print(f"{'phase':28} {'healthz p50':>12} {'p99':>8} {'metrics p50':>12} {'p99':>8} {'n':>5} {'5xx':>5}")
    labels = {
        "without": "no stream open",
        "connect": f"{streams} streams connecting",
        "open": f"{streams} streams open",
    }
    for phase, label in labels.items():
        health, page = latency[phase]["healthz"], latency[phase]["metrics"]
        print(
            f"{label:28} {health['p50']:12.1f} {health['p99']:8.1f} {page['p50']:12.1f} {page['p99']:8.1f} "
            f"{health['n']:5} {result['errors'].get(phase, 0):5}"
        )
    print(
        f"API PostgreSQL connections: max {result['max_api_connections']} (pool limit "
        f"{result['pool_limit']}); streams ended with `end`: {result['ended']}/{streams}; metric rows "
        f"per stream {result['metrics_per_stream'][0]}..{result['metrics_per_stream'][-1]}"
    )


# --- (e) metrics page vs a bare FastAPI route ----------------------------------------------------


def bare_command(port: int) -> list[str]:
    """`stack.api_command`'s uvicorn line with `bare:app` in place of `api.main:create_app --factory`
    (api_command takes no app); RuntimeError if their options ever drift apart."""
    host = "127.0.0.1"
    command = [
        sys.executable, "-m", "uvicorn", "bare:app",
        "--host", host, "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    real = [arg for arg in api_command(host, port) if arg not in ("api.main:create_app", "--factory")]
    if real != [arg for arg in command if arg != "bare:app"]:
        raise RuntimeError(
            f"(e) the bare app's command {command} no longer matches {api_command(host, port)}"
        )
    return command


def bare_answers(proc: Proc, url: str) -> bool:
    proc.check()
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def start_bare_app(stack: ExitStack, tmp: Path, body: bytes) -> str:
    """The bare app under uvicorn, cwd `<tmp>/bare` (bare.py and its body); returns its page's URL."""
    folder = tmp / "bare"
    folder.mkdir()
    (folder / "bare.py").write_text(BARE_APP)
    (folder / "bare-body.json").write_bytes(body)
    port = free_port()
    proc = Proc(stack, "bare uvicorn", bare_command(port), service_env(), tmp / "bare.log", cwd=folder)
    url = f"http://127.0.0.1:{port}/page"
    wait_for(lambda: bare_answers(proc, url), 60, "the bare app", interval=0.2)
    log(f"(e) bare app up on :{port}")
    return url


def seed_bare_job(service: Service) -> tuple[str, int]:
    """(e)'s succeeded job with BARE_ROWS metric rows, vacuumed; returns its id and a middle cursor."""
    assert service.conninfo is not None and service.token_id is not None
    conninfo, owner = service.conninfo, service.token_id
    job_id = with_pg_retries(lambda: insert_job_with_metrics(conninfo, owner, BARE_ROWS), "inserting")
    with_pg_retries(lambda: vacuum_analyze(conninfo), "vacuuming")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        after = cursor_for(conn, job_id, PageCase("middle", None))
    return job_id, after


def requests_per_s(http: httpx.Client, url: str, count: int) -> tuple[float, int]:
    """`count` GETs of `url`, one after another on the client's keep-alive connection to its host:
    requests/s and how many failed (not 200, or a transport error)."""
    failed = 0
    started = time.perf_counter()
    for _ in range(count):
        try:
            failed += http.get(url).status_code != 200
        except httpx.TransportError:
            failed += 1
    return count / (time.perf_counter() - started), failed


def bare_round(api: Api, urls: Mapping[str, str], order: Sequence[str], count: int) -> dict[str, float]:
    """requests/s of each server in `order`; a round with a failed request is noted and repeated."""
    for _attempt in range(3):
        found = {name: requests_per_s(api.http, urls[name], count) for name in order}
        failed = {name: errors for name, (_rate, errors) in found.items() if errors}
        if not failed:
            return {name: rate for name, (rate, _errors) in found.items()}
        api.note_error(f"(e) failed requests {failed}; repeating the round")
    raise RuntimeError("(e) three rounds in a row had failed requests")


def untimed_get(api: Api, url: str) -> httpx.Response:
    """GET `url` (relative: the API) on the bench's client, retried like every untimed call."""

    def get() -> httpx.Response:
        response = api.http.get(url)
        raise_for_status(response)
        return response

    return api.call(f"GET {url}", get)


def body_sizes(api: Api, urls: Mapping[str, str]) -> dict[str, int]:
    """One untimed GET each: the bodies' sizes in bytes; both must hold PAGE metric rows."""
    sizes = {}
    for name, url in urls.items():
        response = untimed_get(api, url)
        if len(response.json()["items"]) != PAGE:
            raise RuntimeError(f"(e) {url}: not {PAGE} rows: {response.text[:300]}")
        sizes[name] = len(response.content)
    return sizes


def measure_vs_bare(stack: ExitStack, tmp: Path, service: Service, quick: bool) -> dict[str, Any]:
    job_id, after = seed_bare_job(service)
    path = f"/jobs/{job_id}/metrics?after={after}&limit={PAGE}"
    body = untimed_get(service.api, path).content
    urls = {"metrics": path, "bare": start_bare_app(stack, tmp, body)}
    sizes = body_sizes(service.api, urls)
    total = BARE_REQUESTS_QUICK if quick else BARE_REQUESTS
    warmup = BARE_WARMUP_QUICK if quick else BARE_WARMUP
    bare_round(service.api, urls, tuple(urls), warmup)
    rounds: list[dict[str, Any]] = []
    for index in range(BARE_ROUNDS):
        order = tuple(urls) if index % 2 == 0 else tuple(reversed(urls))
        rates = bare_round(service.api, urls, order, total // BARE_ROUNDS)
        ratio = rates["metrics"] / rates["bare"]
        rounds.append({"order": order, **rates, "ratio": ratio, "loadavg_1min": os.getloadavg()[0]})
        log(f"(e) round {index + 1}/{BARE_ROUNDS}: {rates['metrics']:.0f} vs {rates['bare']:.0f} requests/s")
    return {
        "rows": BARE_ROWS,
        "after": after,
        "requests": total,
        "warmup": warmup,
        "bytes": sizes,
        "rounds": rounds,
        "median_rps": {name: statistics.median(r[name] for r in rounds) for name in urls},
        "ratio": statistics.median(r["ratio"] for r in rounds),
    }


def print_vs_bare(result: dict[str, Any]) -> None:
    per_round = result["requests"] // len(result["rounds"])
    print(
        f"\n(e) requests/s, GET /jobs/{{id}}/metrics?after=<middle>&limit={PAGE} ({result['rows']:,} rows) "
        f"vs a bare FastAPI route with the same body: {len(result['rounds'])} rounds of {per_round} "
        f"each, one keep-alive connection, after {result['warmup']} warm-up (goal: metrics/bare "
        f">= {BARE_RATIO_GOAL})"
    )
    print(f"{'round':6} {'order':16} {'metrics/s':>10} {'bare/s':>10} {'ratio':>8} {'load':>6}")
    for index, row in enumerate(result["rounds"], 1):
        print(
            f"{index:<6} {', '.join(row['order']):16} {row['metrics']:10.0f} {row['bare']:10.0f} "
            f"{row['ratio']:8.3f} {row['loadavg_1min']:6.1f}"
        )
    median, sizes = result["median_rps"], result["bytes"]
    print(
        f"median of rounds: metrics {median['metrics']:.0f}, bare {median['bare']:.0f} requests/s; "
        f"ratio metrics/bare {result['ratio']:.3f}; body bytes metrics {sizes['metrics']:,}, "
        f"bare {sizes['bare']:,}"
    )


# --- (f) GET /jobs at 10k jobs -----------------------------------------------------------------


def insert_jobs(conninfo: str, owner: str, count: int) -> None:
    """`count` succeeded jobs of `owner`, a minute apart (newest a minute ago), each with a digits
    preset's full spec, by one INSERT ... SELECT."""
    from tsla_spec.spec import build_spec

    spec = build_spec({"preset": "digits"})
    with psycopg.connect(conninfo) as conn:  # commits on leaving the block
        conn.execute(
            """
            INSERT INTO jobs (id, name, owner, state, spec, method, dataset, epochs, epochs_done,
                              best_top1, attempt, max_attempts, enqueued_at, created_at, updated_at,
                              started_at, finished_at)
            SELECT md5(%(prefix)s || g), 'bench-list-' || g, %(owner)s, 'succeeded', %(spec)s::json,
                   'tsla', 'digits', %(epochs)s, %(epochs)s, 0.9 + 0.09 * random(), 1, 3, t, t,
                   t + interval '50 seconds', t + interval '1 second', t + interval '50 seconds'
            FROM generate_series(1, %(count)s) AS g
            CROSS JOIN LATERAL (SELECT now() - g * interval '1 minute') AS created(t)
            """,
            {
                "prefix": secrets.token_hex(8),
                "owner": owner,
                "spec": spec.model_dump_json(),
                "epochs": spec.epochs,
                "count": count,
            },
        )


def list_cases(conninfo: str, owner: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """The owner's job count and the query of each page: first, middle (the cursor is the id of
    the job in the middle), last (exactly LIST_PAGE jobs left), first with ?state=succeeded."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id FROM jobs WHERE owner = %s ORDER BY created_at DESC, id DESC", (owner,)
        ).fetchall()
    ids = [str(row[0]) for row in rows]
    return len(ids), {
        "first": {"limit": LIST_PAGE},
        "middle": {"limit": LIST_PAGE, "cursor": ids[len(ids) // 2]},
        "last": {"limit": LIST_PAGE, "cursor": ids[len(ids) - LIST_PAGE - 1]},
        "state=succeeded": {"limit": LIST_PAGE, "state": "succeeded"},
    }


def timed_list(api: Api, params: Mapping[str, Any]) -> tuple[float, httpx.Response]:
    """Seconds for one GET /jobs page; a failed request is noted and repeated, never timed."""

    def timed_get() -> tuple[float, httpx.Response]:
        started = time.perf_counter()
        response = api.http.get("/jobs", params=dict(params))
        elapsed = time.perf_counter() - started
        raise_for_status(response)
        return elapsed, response

    return api.call(f"GET /jobs {dict(params)}", timed_get)


def check_list_page(case: str, response: httpx.Response) -> None:
    page = response.json()
    at_end = case == "last"
    if len(page["items"]) != LIST_PAGE or (page["next_cursor"] is None) != at_end:
        raise RuntimeError(f"(f) {case}: {len(page['items'])} jobs, next_cursor {page['next_cursor']!r}")


def measure_jobs_list(service: Service, requests: int) -> dict[str, Any]:
    assert service.conninfo is not None and service.token_id is not None
    conninfo, owner = service.conninfo, service.token_id
    started = time.perf_counter()
    with_pg_retries(lambda: insert_jobs(conninfo, owner, LIST_JOBS), "inserting jobs")
    with_pg_retries(lambda: vacuum_analyze(conninfo), "vacuuming")
    log(f"(f) inserted {LIST_JOBS:,} jobs and vacuumed in {time.perf_counter() - started:.1f} s")
    total, cases = list_cases(conninfo, owner)
    times: dict[str, list[float]] = {case: [] for case in cases}
    sizes: dict[str, int] = {}
    for index in range(PAGE_WARMUP + requests):  # round robin over the cases
        for case, params in cases.items():
            elapsed, response = timed_list(service.api, params)
            if index >= PAGE_WARMUP:
                times[case].append(elapsed * 1000)
            elif index == 0:
                check_list_page(case, response)
                sizes[case] = len(response.content)
    return {
        "jobs": total,
        "requests": requests,
        "cases": [
            {"case": case, "params": cases[case], "bytes": sizes[case], **summarize(values)}
            for case, values in times.items()
        ],
    }


def print_jobs_list(result: dict[str, Any]) -> None:
    print(
        f"\n(f) GET /jobs?limit={LIST_PAGE} with {result['jobs']:,} jobs of the token, median of "
        f"{result['requests']} requests per page (our goals: median <= {LIST_GOAL_MS:g} ms, "
        f"<= {LIST_GOAL_BYTES // 1000} KB per page)"
    )
    print(f"{'page':16} {'median ms':>10} {'p90 ms':>10} {'bytes':>10} {'bytes/job':>10}")
    for case in result["cases"]:
        print(
            f"{case['case']:16} {case['median']:10.2f} {case['p90']:10.2f} {case['bytes']:10,} "
            f"{case['bytes'] / LIST_PAGE:10.0f}"
        )


# --- (g) experiment reads, 1k vs 1M metric rows per job ------------------------------------------


def insert_experiment(conninfo: str, owner: str, rows: int) -> str:
    """An experiment of `owner` with EXPERIMENT_JOBS succeeded cells (3 methods x 2 seeds), each
    with `rows` metric rows (10 per epoch) by one INSERT ... SELECT per job; returns its id."""
    experiment_id = secrets.token_hex(16)
    epochs = math.ceil(rows / len(EXPERIMENT_METRICS))
    with psycopg.connect(conninfo) as conn:  # commits on leaving the block
        conn.execute(
            "INSERT INTO experiments (id, owner, name, base, grid, objective_metric, objective_mode, "
            "max_concurrent, collapsed) VALUES (%s, %s, %s, %s::json, %s::json, 'val/top1', 'max', 2, '[]')",
            (experiment_id, owner, f"bench-{rows}-rows", json.dumps({"preset": "digits"}),
             json.dumps({"smoothing.method": list(EXPERIMENT_METHODS), "seed": [0, 1]})),
        )  # fmt: skip
        for position in range(EXPERIMENT_JOBS):
            method, seed = EXPERIMENT_METHODS[position // 2], position % 2
            insert_cell(
                conn, experiment_id, owner, position, {"smoothing.method": method, "seed": seed}, epochs
            )
    return experiment_id


def insert_cell(
    conn: psycopg.Connection[Any],
    experiment_id: str,
    owner: str,
    position: int,
    cell: dict[str, Any],
    epochs: int,
) -> None:
    """A cell's job and its rows: top-1 curves that rise and level off with noise (so the running
    maximum improves now and then, as a real run's does), random values for the rest."""
    job_id = secrets.token_hex(16)
    provenance = {"tsla_version": "bench", "device": "cpu", "dataset": {"name": "digits", "sha256": "0"}}
    conn.execute(
        "INSERT INTO jobs (id, name, owner, state, spec, method, dataset, epochs, epochs_done, "
        "experiment_id, cell, cell_key, role, position, provenance) VALUES (%s, %s, %s, 'succeeded', "
        "'{}'::json, %s, 'digits', %s, %s, %s, %s::json, %s, 'cell', %s, %s::json)",
        (job_id, f"bench-cell-{position}", owner, cell["smoothing.method"], min(epochs, MAX_SPEC_EPOCHS),
         epochs, experiment_id, json.dumps(cell), secrets.token_hex(32), position, json.dumps(provenance)),
    )  # fmt: skip
    conn.execute(
        """
        INSERT INTO metrics (job_id, epoch, step, split, name, value, stage, attempt)
        SELECT %(job)s, e, (e + 1) * 12, split, name,
               CASE WHEN name = 'top1' THEN 90 * (1 - exp(-5.0 * e / %(epochs)s)) + 5 * random()
                    ELSE random() END,
               'onehot', 1
        FROM generate_series(0, %(rows)s - 1) AS g
        CROSS JOIN LATERAL (SELECT g / %(k)s AS e, (%(splits)s::text[])[g %% %(k)s + 1] AS split,
                                   (%(names)s::text[])[g %% %(k)s + 1] AS name) AS row
        """,
        {
            "job": job_id,
            "epochs": epochs,
            "rows": epochs * len(EXPERIMENT_METRICS),
            "k": len(EXPERIMENT_METRICS),
            "splits": [split for split, _ in EXPERIMENT_METRICS],
            "names": [name for _, name in EXPERIMENT_METRICS],
        },
    )


def build_summaries(conninfo: str, experiment_id: str) -> int:
    """Each cell's metric summaries and records from its rows by `Summary.of`, the function
    record_metrics rebuilds a summary with (and migration 0005 backfills with); returns the most
    top-1 records (new running maxima) of one metric of a job."""
    from tsla_service.summaries import COLUMNS, Summary

    most = 0
    with psycopg.connect(conninfo) as conn:
        jobs = conn.execute("SELECT id FROM jobs WHERE experiment_id = %s", (experiment_id,)).fetchall()
        for (job_id,) in jobs:
            points: dict[tuple[str, str], list[tuple[int, float | None]]] = {}
            with conn.cursor(name="rows") as cursor:  # server-side: a job's rows are streamed
                cursor.execute("SELECT split, name, epoch, value FROM metrics WHERE job_id = %s", (job_id,))
                for split, name, epoch, value in cursor:
                    points.setdefault((split, name), []).append((epoch, value))
            for (split, name), found in points.items():
                summary = Summary.of(found)
                conn.execute(
                    f"INSERT INTO metric_summaries (job_id, split, name, {', '.join(COLUMNS)}) "
                    f"VALUES (%s, %s, %s, {', '.join(['%s'] * len(COLUMNS))})",
                    [job_id, split, name, *(getattr(summary, column) for column in COLUMNS)],
                )
                with conn.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO metric_records (job_id, split, name, epoch, value) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        [(job_id, split, name, epoch, value) for epoch, value in summary.records],
                    )
                most = max(most, len(summary.records) if name == "top1" else 0)
    return most


def seed_experiments(conninfo: str, owner: str) -> dict[str, tuple[str, int]]:
    """The large experiment, then the small one, inserted, summarized, vacuumed and analyzed:
    {size: (experiment id, most top-1 records of a job)}."""
    started = time.perf_counter()
    found = {}
    for size, rows in (("large", LARGE_ROWS), ("small", SMALL_ROWS)):
        found[size] = with_pg_retries(functools.partial(seed_experiment, conninfo, owner, rows), "inserting")
        log(
            f"(g) {size}: {EXPERIMENT_JOBS} jobs x {rows:,} rows inserted and summarized "
            f"({time.perf_counter() - started:.0f} s so far)"
        )
    with_pg_retries(lambda: vacuum_experiment_tables(conninfo), "vacuuming")
    return found


def seed_experiment(conninfo: str, owner: str, rows: int) -> tuple[str, int]:
    experiment_id = insert_experiment(conninfo, owner, rows)
    return experiment_id, build_summaries(conninfo, experiment_id)


def vacuum_experiment_tables(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for table in ("experiments", "jobs", "metrics", "metric_summaries", "metric_records"):
            conn.execute(f"VACUUM (ANALYZE) {table}")


def timed_read(api: Api, path: str, params: Mapping[str, Any]) -> float:
    """Seconds for one GET; a failed request is noted and repeated, never timed."""

    def timed_get() -> tuple[float, httpx.Response]:
        started = time.perf_counter()
        response = api.http.get(path, params=dict(params))
        elapsed = time.perf_counter() - started
        raise_for_status(response)
        return elapsed, response

    return api.call(f"GET {path} {dict(params)}", timed_get)[0]


def check_reads(api: Api, experiment_id: str) -> dict[str, Any]:
    """The table and curves once, untimed: the rows and points a timed request must return."""
    table = api.call("GET experiment", lambda: api.client.experiment(experiment_id, target=0.9))["table"]
    curves = api.call(
        "GET curves", lambda: api.client.experiment_curves(experiment_id, "test/top1", EXPERIMENT_POINTS)
    )
    if len(table) != len(EXPERIMENT_METHODS) or any(row["n_succeeded"] != 2 for row in table):
        raise RuntimeError(f"(g) table of {experiment_id}: {json.dumps(table)[:500]}")
    points = {len(group["points"]) for group in curves["groups"]}
    if points != {EXPERIMENT_POINTS}:
        raise RuntimeError(f"(g) curves of {experiment_id}: {points} points, not {EXPERIMENT_POINTS}")
    return {
        "reached": [row["reached"] for row in table],
        "selected_test": [row["selected_test"] for row in table],
    }


def measure_experiment_reads(service: Service, requests: int) -> dict[str, Any]:
    assert service.conninfo is not None and service.token_id is not None
    seeded = seed_experiments(service.conninfo, service.token_id)
    checks = {size: check_reads(service.api, experiment_id) for size, (experiment_id, _) in seeded.items()}
    cases: list[dict[str, Any]] = []
    for case, (suffix, params) in EXPERIMENT_READS.items():
        times: dict[str, list[float]] = {"small": [], "large": []}
        for index in range(PAGE_WARMUP + requests):
            for size in times:
                elapsed = timed_read(service.api, f"/experiments/{seeded[size][0]}{suffix}", params)
                if index >= PAGE_WARMUP:
                    times[size].append(elapsed * 1000)
        medians = {size: statistics.median(values) for size, values in times.items()}
        cases.append({"case": case, "params": params, "median_ms": medians,
                      "p90_ms": {size: summarize(values)["p90"] for size, values in times.items()},
                      "ratio": medians["large"] / medians["small"]})  # fmt: skip
        log(f"(g) {case}: ratio {cases[-1]['ratio']:.2f}")
    return {
        "jobs": EXPERIMENT_JOBS,
        "rows_per_job": {"small": SMALL_ROWS, "large": LARGE_ROWS},
        "most_top1_records": {size: most for size, (_, most) in seeded.items()},
        "checks": checks,
        "requests": requests,
        "cases": cases,
        "worst_ratio": max(case["ratio"] for case in cases),
    }


def print_experiment_reads(result: dict[str, Any]) -> None:
    rows = result["rows_per_job"]
    print(
        f"\n(g) experiment reads: {result['jobs']} jobs with {rows['small']:,} vs {rows['large']:,} "
        f"metric rows each, median of {result['requests']} requests each "
        f"(goal: ratio <= {EXPERIMENT_RATIO_GOAL})"
    )
    print(
        f"{'request':34} {'small ms':>10} {'large ms':>10} {'ratio':>8}   {'p90 small':>10} {'p90 large':>10}"
    )
    for case in result["cases"]:
        median, p90 = case["median_ms"], case["p90_ms"]
        print(
            f"{case['case']:34} {median['small']:10.2f} {median['large']:10.2f} {case['ratio']:8.2f}   "
            f"{p90['small']:10.2f} {p90['large']:10.2f}"
        )
    most = result["most_top1_records"]
    print(
        f"worst ratio (headline): {result['worst_ratio']:.2f}; most top-1 records (new running "
        f"maxima) of a job: {most['small']} (small), {most['large']} (large)"
    )


# --- the run ----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "meets goal" if ok else "MISSES goal"


def print_summary(results: dict[str, Any]) -> None:
    print("\nsummary")
    for label, result in results.get("latency", {}).items():
        server, client = result["server_s"]["median"], result["client_s"]["median"]
        worst = max(result["server_s"]["max"], result["client_s"]["max"])
        ok = client <= LATENCY_GOAL_S and (server <= LATENCY_GOAL_S or result["created_at_whole_seconds"])
        print(
            f"  (a) {label:20} submit -> running median: server {server:.3f} s, client {client:.3f} s "
            f"(max {worst:.3f} s); goal <= {LATENCY_GOAL_S:g} s: {verdict(ok)}"
        )
    if "metrics_page" in results:
        ratio = results["metrics_page"]["worst_ratio"]
        print(
            f"  (b) metrics page, 1M vs 1k rows: worst ratio {ratio:.2f}; goal <= {PAGE_RATIO_GOAL}: "
            f"{verdict(ratio <= PAGE_RATIO_GOAL)}"
        )
    if "throughput" in results:
        throughput = results["throughput"]
        ratio, spread = throughput["ratio"], throughput["spread"]
        print(
            f"  (c) training images/s service/core {ratio:.3f} (CPU s core/service "
            f"{throughput['cpu_ratio']:.3f}); goal >= {THROUGHPUT_GOAL}: {verdict(ratio >= THROUGHPUT_GOAL)}"
        )
        busiest = max(throughput["loadavg_1min"])
        if spread is None or spread > 1 - THROUGHPUT_GOAL or busiest > (os.cpu_count() or 1):
            apart = "one run per kind"
            if spread is not None:
                apart = f"same-kind runs differ by up to {100 * spread:.0f}%"
            print(
                f"      inconclusive: {apart}, load average up to {busiest:.1f} on {os.cpu_count()} CPUs; "
                "rerun on a quiet machine (--pairs 3+)"
            )
    if "event_streams" in results:
        streams = results["event_streams"]
        without, opened = streams["latency_ms"]["without"], streams["latency_ms"]["open"]
        worst = max(opened["healthz"]["p99"], opened["metrics"]["p99"])
        ok = (
            worst <= STREAM_LATENCY_GOAL_MS
            and not streams["errors"].get("open")
            and streams["ended"] == streams["streams"]
        )
        print(
            f"  (d) {streams['streams']} streams open: healthz p99 {without['healthz']['p99']:.1f} -> "
            f"{opened['healthz']['p99']:.1f} ms, metrics page p99 {without['metrics']['p99']:.1f} -> "
            f"{opened['metrics']['p99']:.1f} ms, max API PG connections {streams['max_api_connections']} "
            f"(pool {streams['pool_limit']}); goal p99 <= {STREAM_LATENCY_GOAL_MS:g} ms: {verdict(ok)}"
        )
    for rest in (print_summary_e_f, print_summary_g, print_disturbances):
        rest(results)


def print_summary_e_f(results: dict[str, Any]) -> None:
    if "vs_bare" in results:
        bare = results["vs_bare"]
        ratio, median = bare["ratio"], bare["median_rps"]
        print(
            f"  (e) metrics page vs a bare FastAPI route: {median['metrics']:.0f} vs {median['bare']:.0f} "
            f"requests/s, ratio {ratio:.3f} (median of {len(bare['rounds'])} rounds); "
            f"goal >= {BARE_RATIO_GOAL}: {verdict(ratio >= BARE_RATIO_GOAL)}"
        )
    if "jobs_list" in results:
        listing = results["jobs_list"]
        slowest = max(listing["cases"], key=lambda case: case["median"])
        largest = max(case["bytes"] for case in listing["cases"])
        ok = slowest["median"] <= LIST_GOAL_MS and largest <= LIST_GOAL_BYTES
        print(
            f"  (f) GET /jobs?limit={LIST_PAGE} at {listing['jobs']:,} jobs: slowest page "
            f"({slowest['case']}) median {slowest['median']:.1f} ms, p90 {slowest['p90']:.1f} ms; "
            f"largest page {largest:,} bytes ({largest / LIST_PAGE:.0f} per job); "
            f"our goals <= {LIST_GOAL_MS:g} ms median, <= {LIST_GOAL_BYTES // 1000} KB: {verdict(ok)}"
        )


def print_summary_g(results: dict[str, Any]) -> None:
    if "experiment_reads" in results:
        reads = results["experiment_reads"]
        ratio = reads["worst_ratio"]
        print(
            f"  (g) experiment reads, 1M vs 1k rows per job: worst ratio {ratio:.2f}; "
            f"goal <= {EXPERIMENT_RATIO_GOAL}: {verdict(ratio <= EXPERIMENT_RATIO_GOAL)}"
        )


def print_disturbances(results: dict[str, Any]) -> None:
    before, after = results.get("servers_start", {}), results.get("servers_end", {})
    restarted = [name for name in before if before[name] != after.get(name)]
    if restarted:
        print(f"  WARNING: {' and '.join(restarted)} restarted during the run (not by this script); rerun")
    errors = results.get("api_errors", [])
    if errors:
        print(f"  WARNING: {len(errors)} API call(s) failed and were retried (see api_errors in the JSON)")
    load = results.get("host_end", {}).get("loadavg")
    if load:
        print(
            f"  load average at the end (1, 5, 15 min): {', '.join(f'{v:.1f}' for v in load)} "
            f"on {os.cpu_count()} CPUs"
        )


def host_info() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "loadavg": os.getloadavg(), "python": sys.version.split()[0]}


@dataclass
class Options:
    sections: tuple[str, ...]
    quick: bool
    runs: int
    requests: int
    pairs: int
    streams: int
    redis_db: int


def run_sections(options: Options, stack: ExitStack, tmp: Path, results: dict[str, Any]) -> None:
    errors: list[str] = results["api_errors"]
    service = start_postgres_stack(stack, tmp, options.redis_db, errors)
    if "a" in options.sections:
        latency = {service.label: measure_latency(service, options.runs)}
        with ExitStack() as embedded_stack:
            embedded = start_embedded_stack(embedded_stack, tmp, errors)
            latency[embedded.label] = measure_latency(embedded, options.runs)
        results["latency"] = latency
        print_latency(latency, options.runs)
    if "b" in options.sections:
        results["metrics_page"] = measure_metrics_pages(service, options.requests)
        print_metrics_pages(results["metrics_page"])
    if "c" in options.sections:
        results["throughput"] = measure_throughput(stack, tmp, service, options.quick, options.pairs)
        print_throughput(results["throughput"])
    if "d" in options.sections:
        results["event_streams"] = measure_event_streams(service, options.streams, options.quick, tmp)
        print_event_streams(results["event_streams"])
    if "e" in options.sections:
        results["vs_bare"] = measure_vs_bare(stack, tmp, service, options.quick)
        print_vs_bare(results["vs_bare"])
    if "f" in options.sections:
        results["jobs_list"] = measure_jobs_list(service, options.requests)
        print_jobs_list(results["jobs_list"])
    if "g" in options.sections:
        results["experiment_reads"] = measure_experiment_reads(service, options.requests)
        print_experiment_reads(results["experiment_reads"])


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every started process is still stopped."""

    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def dump_logs(tmp: Path) -> None:
    for path in sorted(tmp.glob("*.log")) + sorted(tmp.glob("*/logs/worker.*")):
        print(f"--- {path.relative_to(tmp)} (last lines)\n{tail(path)}", file=sys.stderr)


def write_results(results: dict[str, Any]) -> None:
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {RESULTS_PATH.relative_to(REPO_ROOT)}")


def run(options: Options) -> int:
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(),
        "options": asdict(options),
        "host_start": host_info(),
        "servers_start": server_identities(),
        "completed": False,
        "api_errors": [],  # filled in as the run goes
    }
    try:
        with sigterm_as_interrupt(), ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tsla-bench-service-")))
            try:
                run_sections(options, stack, tmp, results)
            except Exception:
                dump_logs(tmp)
                raise
        results["completed"] = True
    finally:
        results.update(host_end=host_info(), servers_end=server_identities())
        if results["completed"]:
            print_summary(results)
        write_results(results)
    return 0


def parse_args(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default="a,b,c", help="comma-separated sections to run: a, b, c, d, e, f, g"
    )
    parser.add_argument("--quick", action="store_true", help="fewer jobs and requests, a smaller (c) spec")
    parser.add_argument("--runs", type=int, help="(a) jobs per stack (default 10; --quick 3)")
    parser.add_argument(
        "--requests", type=int, help="(b), (f), (g) timed requests per case (and job) (50; --quick 30)"
    )
    parser.add_argument("--pairs", type=int, default=2, help="(c) core + service run pairs (default 2)")
    parser.add_argument("--streams", type=int, default=200, help="(d) event streams to open (default 200)")
    parser.add_argument("--redis-db", type=int, default=15, help="Redis db of the broker, flushed first (15)")
    args = parser.parse_args(argv)
    sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
    if not sections or set(sections) - set(SECTIONS):
        parser.error(f"--only takes a comma-separated subset of {','.join(SECTIONS)}")
    return Options(
        sections=sections,
        quick=args.quick,
        runs=args.runs or (3 if args.quick else 10),
        requests=args.requests or (30 if args.quick else 50),
        pairs=args.pairs,
        streams=args.streams,
        redis_db=args.redis_db,
    )


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--core-child"]:
        core_child(Path(argv[1]), Path(argv[2]))
        return 0
    options = parse_args(argv)
    try:
        return run(options)
    except KeyboardInterrupt:
        log("interrupted; every process this script started has been stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

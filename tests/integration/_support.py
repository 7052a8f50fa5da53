"""Helpers for the service integration tests: real processes, bounded waits, HTTP checks."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tsla_cli import stack
from tsla_cli.client import TslaClient
from tsla_cli.stack import free_port, service_env, stop_process, wait_for, wait_healthy
from tsla_spec.vocabulary import FINISHED_STATES

__all__ = ["free_port", "stop_process", "wait_for", "wait_healthy"]

REPO_ROOT = Path(__file__).resolve().parents[2]
FINISHED = FINISHED_STATES
# The main job of Part 2: TSLA on real digits, smoothing in epochs 0-1 and one-hot in 2-3.
MAIN_SPEC: dict[str, Any] = {
    "preset": "digits",
    "epochs": 4,
    "smoothing": {"method": "tsla", "switch_epoch": 2},
}
MAIN_SWITCH = 2
MAIN_EPOCHS = 4

# Every log file of a process the tests started; conftest attaches their tails to failures.
LOG_FILES: list[Path] = []


def start_process(command: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A service process in its own session, output to `log` (attached to a failing test's report)."""
    LOG_FILES.append(log)
    return stack.start_process(command, env, log, cwd=REPO_ROOT)


def log_tail(path: Path, chars: int = 6000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"<cannot read {path}: {error}>"
    return text[-chars:]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the API --------------------------------------------------------------------------------------


@dataclass
class Service:
    """A running service (API + worker) and an authenticated client for it."""

    base_url: str
    token: str
    home: Path
    queue: str | None = None
    broker: Any = None  # a redis.Redis client of the broker's database (PostgreSQL stack)
    worker_log: Path | None = None
    client: TslaClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = TslaClient(self.base_url, self.token)

    @property
    def http(self) -> httpx.Client:
        """The client's HTTP session, for requests whose raw answer a test checks."""
        return self.client.http

    def close(self) -> None:
        self.client.close()

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        job = self.client.submit(spec)
        assert job["state"] == "queued"
        return job

    def job(self, job_id: str) -> dict[str, Any]:
        return self.client.get(job_id)

    def cancel(self, job_id: str) -> httpx.Response:
        return self.http.post(f"/jobs/{job_id}/cancel")

    def wait_job(
        self, job_id: str, timeout: float, until: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any]:
        """The job once `until(job)` holds (default: finished); the last state is in the error."""
        until = until or (lambda job: job["state"] in FINISHED)
        seen: dict[str, Any] = {}

        def probe() -> dict[str, Any] | None:
            seen.update(self.job(job_id))
            return dict(seen) if until(seen) else None

        try:
            return wait_for(probe, timeout, f"job {job_id}", interval=0.3)
        except TimeoutError as error:
            raise TimeoutError(
                f"{error}; last state {seen.get('state')}, epochs_done {seen.get('epochs_done')}"
            ) from None

    def all_jobs(self, **params: Any) -> list[dict[str, Any]]:
        response = self.http.get("/jobs", params={"limit": 500, **params})
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["next_cursor"] is None, "more than 500 jobs in a fresh database"
        items: list[dict[str, Any]] = page["items"]
        return items

    def page_metrics(self, job_id: str, limit: int, timeout: float) -> tuple[list[dict[str, Any]], int, int]:
        """Follow the metrics cursor with pages of `limit` rows until the job is finished.

        Returns (rows, pages, rows_seen_while_unfinished). Each page is checked as it comes.
        """
        rows: list[dict[str, Any]] = []
        after: int | None = None
        pages = early = 0
        deadline = time.monotonic() + timeout
        while True:
            # The state is read before the page: a finished job wrote all its rows before finishing,
            # so a page read after seeing `finished` (and the pages it links to) has them all.
            state = self.job(job_id)["state"]
            params: dict[str, Any] = {"limit": limit} if after is None else {"limit": limit, "after": after}
            response = self.http.get(f"/jobs/{job_id}/metrics", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            pages += 1
            items = page["items"]
            assert len(items) <= limit
            if page["has_more"]:
                assert len(items) == limit
            if items:
                assert page["next_after"] == items[-1]["seq"]
                if after is not None:
                    assert items[0]["seq"] > after
            else:
                assert page["next_after"] == after
            rows.extend(items)
            if state not in FINISHED:
                early += len(items)
            after = page["next_after"]
            if page["has_more"]:
                continue
            if state in FINISHED:
                return rows, pages, early
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {state} after {timeout}s of metric paging")
            time.sleep(0.3)


def check_metric_rows(
    rows: list[dict[str, Any]], epochs: int, switch_epoch: int
) -> dict[int, dict[str, Any]]:
    """The checks every job's metric rows must pass; returns {epoch: {"split/name": row}}."""
    seqs = [row["seq"] for row in rows]
    assert all(a < b for a, b in itertools.pairwise(seqs)), "seq must strictly increase"
    assert len(set(seqs)) == len(seqs)
    by_epoch: dict[int, dict[str, Any]] = {}
    for row in rows:
        for key in ("seq", "epoch", "split", "name", "value", "stage", "time", "step", "attempt"):
            assert key in row, f"metric row without {key}: {row}"
        assert isinstance(row["value"], float | int)
        expected_stage = "smooth" if row["epoch"] < switch_epoch else "onehot"
        assert row["stage"] == expected_stage, row
        key = f"{row['split']}/{row['name']}"
        assert key not in by_epoch.setdefault(row["epoch"], {}), f"duplicate row {row['epoch']} {key}"
        by_epoch[row["epoch"]][key] = row
    assert sorted(by_epoch) == list(range(epochs))
    names = {frozenset(found) for found in by_epoch.values()}
    assert len(names) == 1, f"epochs log different metrics: {names}"
    for key in ("train/loss", "train/top1", "train/lr", "test/loss", "test/top1", "test/top5"):
        assert key in by_epoch[0], f"{key} missing from {sorted(by_epoch[0])}"
    for epoch, found in by_epoch.items():
        assert 0.0 <= found["test/top1"]["value"] <= 100.0
        assert found["test/top1"]["value"] <= found["test/top5"]["value"]
        assert found["train/lr"]["value"] > 0, epoch
    return by_epoch


def selected_test_top1(by_epoch: dict[int, dict[str, Any]]) -> float:
    """test/top1 at the epoch with the highest val/top1, the newest on ties: what a job reports as
    its `best_top1` (selection never looks at the test split)."""
    best = max(by_epoch, key=lambda epoch: (by_epoch[epoch]["val/top1"]["value"], epoch))
    return float(by_epoch[best]["test/top1"]["value"])


def check_download(service: Service, job_id: str, ref: str, size: int, sha256: str) -> bytes:
    """Download without and with Range and check status, headers, ETag and sha256; the file."""
    http = service.http
    url = f"/jobs/{job_id}/checkpoints/{ref}"
    full = http.get(url)
    assert full.status_code == 200, full.text
    body = full.content
    assert len(body) == size
    assert full.headers["content-length"] == str(size)
    assert full.headers["etag"] == f'"{sha256}"'
    assert full.headers["accept-ranges"] == "bytes"
    assert sha256_bytes(body) == sha256
    assert "content-range" not in full.headers

    head = http.get(url, headers={"Range": "bytes=0-99"})
    assert head.status_code == 206, head.text
    assert head.headers["content-range"] == f"bytes 0-99/{size}"
    assert head.headers["content-length"] == "100"
    assert head.headers["etag"] == f'"{sha256}"'
    assert head.content == body[:100]

    rest = http.get(url, headers={"Range": "bytes=100-"})
    assert rest.status_code == 206, rest.text
    assert rest.headers["content-range"] == f"bytes 100-{size - 1}/{size}"
    assert rest.headers["content-length"] == str(size - 100)
    assert head.content + rest.content == body
    assert sha256_bytes(head.content + rest.content) == sha256

    suffix = http.get(url, headers={"Range": "bytes=-50"})
    assert suffix.status_code == 206, suffix.text
    assert suffix.headers["content-range"] == f"bytes {size - 50}-{size - 1}/{size}"
    assert suffix.headers["content-length"] == "50"
    assert suffix.content == body[-50:]

    past = http.get(url, headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416, past.text
    assert past.headers["content-range"] == f"bytes */{size}"
    assert past.json()["detail"]

    cached = http.get(url, headers={"If-None-Match": f'"{sha256}"'})
    assert cached.status_code == 304
    assert cached.content == b""
    return body


def queue_drained(broker: Any, queue: str) -> bool:
    """Every message on `queue` (a Redis broker database) was delivered and acknowledged."""
    waiting = sum(broker.llen(key) for key in broker.keys(f"{queue}*") if broker.type(key) == b"list")
    return waiting == 0 and broker.hlen("unacked") == 0


def job_logs(service: Service, job_id: str) -> list[str]:
    """The messages of all the job's log lines, oldest first."""
    response = service.http.get(f"/jobs/{job_id}/logs", params={"limit": 5000})
    assert response.status_code == 200, response.text
    assert not response.json()["has_more"]
    return [line["message"] for line in response.json()["items"]]


def job_metrics(service: Service, job_id: str) -> list[dict[str, Any]]:
    """All the job's metric rows, in seq order (one page: a test job has far fewer than 5000)."""
    response = service.http.get(f"/jobs/{job_id}/metrics", params={"limit": 5000})
    assert response.status_code == 200, response.text
    assert not response.json()["has_more"]
    items: list[dict[str, Any]] = response.json()["items"]
    return items


# --- fault injection: private stacks, broker and database restarts ----------------------------------

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", REDIS_HOST, "--port", str(REDIS_PORT),
    "--save", "", "--appendonly", "no",
]  # fmt: skip


def pg_execute(
    url: str, sql: str, params: Sequence[Any] = (), timeout: float = 60.0
) -> list[tuple[Any, ...]]:
    """Run one statement on a fresh autocommit connection, waiting out a PostgreSQL restart."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
                cursor = connection.execute(sql, params)
                return cursor.fetchall() if cursor.description else []
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def pg_version() -> str:
    """The PostgreSQL cluster version under /etc/postgresql (the tests use cluster `main`)."""
    versions = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".")])
    assert versions, "no PostgreSQL cluster under /etc/postgresql"
    return versions[-1]


def restart_postgres(down_for: float = 0.0, timeout: float = 120.0) -> float:
    """Restart the whole cluster (every connection drops), staying down `down_for` seconds in
    between; started again also when stopping fails. Returns the seconds until it accepts again."""
    started = time.monotonic()

    def cluster(action: str) -> None:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", pg_version(), "main", action],
            check=True,
            timeout=timeout,
            capture_output=True,
        )

    if down_for <= 0:
        cluster("restart")
    else:
        try:
            cluster("stop")
            time.sleep(down_for)
        finally:
            cluster("start")
    wait_for(lambda: bool(pg_execute(PG_ADMIN_URL, "SELECT 1", timeout=5)), 60, "PostgreSQL to accept again")
    return time.monotonic() - started


def redis_up() -> bool:
    """Redis answers PING (a raw socket: redis-py's own retries would make a refusal take seconds)."""
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis() -> None:
    """Start the tests' Redis (no persistence) unless it is up; wait until it answers."""
    if not redis_up():
        subprocess.run(REDIS_START, check=False, timeout=30, capture_output=True)
    wait_for(redis_up, 30, "Redis to start", interval=0.2)


@contextlib.contextmanager
def redis_stopped() -> Iterator[None]:
    """Redis is shut down (`nosave`: every queue and unacked message is lost) inside the block and
    started again when it ends, also when the block fails."""
    try:
        subprocess.run(
            ["redis-cli", "-h", REDIS_HOST, "-p", str(REDIS_PORT), "shutdown", "nosave"],
            check=False,
            timeout=30,
            capture_output=True,
        )
        wait_for(lambda: not redis_up(), 30, "Redis to stop", interval=0.2)
        yield
    finally:
        start_redis()


def pick_redis_db() -> tuple[Any, int]:
    """An empty Redis database (1..14), flushed; the caller owns it until it flushes it again.
    (Database 15 is bench/service.py's.)"""
    import random

    import redis

    numbers = list(range(1, 15))
    random.shuffle(numbers)
    for number in numbers:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number, socket_timeout=5)
        if client.dbsize() == 0:
            client.flushdb()
            return client, number
        client.close()
    raise RuntimeError("no empty Redis database among 1..14")


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return log_tail(self.log, 10_000_000)


class FaultStack:
    """A private stack for one fault-injection test: its own PostgreSQL database (migrated with
    Alembic), empty Redis database, queues (TSLA_QUEUES: `queues`, default one of its own), storage
    folder and uvicorn API process, plus the celery worker processes the test starts (and may
    kill). Closing it stops every process (whole process groups), flushes the Redis database and
    drops the PostgreSQL database, also after a failure and after PostgreSQL or Redis were
    restarted, so nothing outside it is touched.

    Workers run torch with one thread (OMP_NUM_THREADS=1): on a small, shared machine two threads
    per process make epochs several times slower and far more uneven.
    """

    def __init__(
        self,
        root: Path,
        lease_seconds: float = 15.0,
        visibility_timeout: int | None = None,
        queues: Sequence[str] = (),
    ):
        self.root = root
        self.queues = list(queues)
        self.lease_seconds = lease_seconds
        self.visibility_timeout = visibility_timeout
        self.workers: list[Worker] = []
        self._cleanup = contextlib.ExitStack()
        self._api_checked = False

    def __enter__(self) -> FaultStack:
        try:
            self._start()
        except BaseException:
            self._cleanup.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._cleanup.close()

    def _start(self) -> None:
        import secrets

        from tsla_service.db import get_engine, session_scope
        from tsla_service.migrate import upgrade_to_head
        from tsla_service.tokens import create_token

        start_redis()  # a test that failed to restart it must not break the next one
        suffix = secrets.token_hex(4)
        self.db_name = f"tsla_fault_{suffix}"
        self.queues = self.queues or [f"tsla-fault-{suffix}"]
        self.queue = self.queues[0]
        self.database_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.db_name}"
        self.psycopg_url = f"postgresql://postgres@127.0.0.1:5432/{self.db_name}"

        pg_execute(PG_ADMIN_URL, f'CREATE DATABASE "{self.db_name}"')
        self._cleanup.callback(
            pg_execute, PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'
        )
        upgrade_to_head(self.database_url)
        token = f"tsla_fault_{secrets.token_urlsafe(16)}"
        with session_scope(self.database_url) as session:
            create_token(session, f"fault-{suffix}", token)
        get_engine(self.database_url).dispose()

        broker, self.broker_db = pick_redis_db()
        self._cleanup.callback(broker.close)
        self._cleanup.callback(self._flush_broker, broker)
        self.broker_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.broker_db}"

        port = free_port()
        api = start_process(stack.api_command("127.0.0.1", port), self.env(), self.root / "logs" / "api.log")
        self._cleanup.callback(stop_process, api)
        self.api = api
        self._service = Service(f"http://127.0.0.1:{port}", token, self.root / "home", self.queue, broker)
        self._cleanup.callback(self._service.close)

    @staticmethod
    def _flush_broker(broker: Any) -> None:
        start_redis()
        broker.flushdb()

    def env(self, lease_seconds: float | None = None) -> dict[str, str]:
        extra = {
            "TSLA_DATABASE_URL": self.database_url,
            "TSLA_BROKER_URL": self.broker_url,
            "TSLA_STORAGE_URL": str(self.root / "storage"),
            "TSLA_HOME": str(self.root / "home"),
            "TSLA_QUEUES": ",".join(self.queues),
            "TSLA_LEASE_SECONDS": str(lease_seconds or self.lease_seconds),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        if self.visibility_timeout is not None:
            extra["TSLA_VISIBILITY_TIMEOUT_SECONDS"] = str(self.visibility_timeout)
        return service_env(**extra)

    @property
    def service(self) -> Service:
        """The API client, once /healthz answers."""
        if not self._api_checked:
            wait_healthy(self._service.base_url, [self.api], timeout=90)
            self._api_checked = True
        return self._service

    def start_worker(
        self,
        name: str,
        lease_seconds: float | None = None,
        wait: bool = True,
        queues: Sequence[str] | None = None,
    ) -> Worker:
        """A new celery worker process on `queues` (default: all the stack's); by default waits
        until it is ready."""
        log = self.root / "logs" / f"worker-{name}.log"
        command = stack.worker_command(queues or self.queues, hostname=f"{name}.{self.queue}@%h")
        process = start_process(command, self.env(lease_seconds), log)
        self._cleanup.callback(stop_process, process)
        worker = Worker(name, process, log)
        self.workers.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: Worker, timeout: float = 120.0) -> None:
        self.service  # noqa: B018 - the API starts meanwhile; wait for it too
        wait_for(
            lambda: stack.worker_ready(worker.process, worker.log),
            timeout,
            f"worker {worker.name} to be ready",
            interval=0.3,
        )

    @staticmethod
    def kill(worker: Worker) -> None:
        """SIGKILL the worker's whole process group: no cleanup, no ack, no last database write."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait(timeout=30)

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """A query on the stack's own database, straight through psycopg."""
        return pg_execute(self.psycopg_url, query, params)


# The `make_stack` fixture (conftest.py): builds private FaultStacks, torn down after the test.
StackFactory = Callable[..., FaultStack]


@contextmanager
def embedded_stack(root: Path, **env: str) -> Iterator[Service]:
    """`python -m tsla_cli serve` under `root` (its own session: API + a real worker on SQLite and
    the filesystem broker), token from TSLA_TOKEN; `env` adds TSLA_* settings (e.g. a lease)."""
    home = root / "home"
    port = free_port()
    token = f"tsla_it_{secrets.token_urlsafe(16)}"
    server = start_process(
        stack.serve_command(home, port), service_env(TSLA_TOKEN=token, **env), root / "serve.log"
    )
    LOG_FILES.extend([home / "logs" / "worker.out", home / "logs" / "worker.log"])  # the worker's own
    service = Service(f"http://127.0.0.1:{port}", token, home)
    try:
        wait_healthy(service.base_url, [server], timeout=120)
        yield service
    finally:
        service.close()
        stop_process(server, grace=30)


# --- faults on real processes: the process table, strict JSON, a small filesystem ------------------

# A spec that diverges within its first epoch on the CPU (lr 10, the largest a spec allows, with SGD
# momentum): the train loss or a test metric is NaN or infinite, and the job must fail saying so.
DIVERGING_SPEC: dict[str, Any] = {
    "name": "diverging",
    "data": {
        "name": "synthetic",
        "synthetic": {"num_train": 1024, "num_test": 64, "image_size": 8, "num_classes": 5},
    },
    "model": {"width": 4},
    "optim": {"lr": 10},
    "schedule": {"kind": "constant"},
    "batch_size": 16,
    "epochs": 8,
    "seed": 1,
    "precision": "fp32",
    "device": "cpu",
}
DIVERGED = r"diverged: (train/loss|test/\w+) is (NaN|inf|-inf) at epoch (\d+)"


def strict_json(text: str) -> Any:
    """json.loads that refuses the NaN / Infinity tokens Python's own json writes and reads."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"invalid JSON: bare {constant}")

    return json.loads(text, parse_constant=refuse)


def read_event_stream(service: Service, job_id: str, timeout: float = 120.0) -> list[tuple[str, Any]]:
    """(event, data) of every event of GET /jobs/{id}/events until the server ends the stream (a
    finished job's whole history); each data line is parsed as strict JSON."""
    events: list[tuple[str, Any]] = []
    event = ""
    deadline = time.monotonic() + timeout
    with service.http.stream("GET", f"/jobs/{job_id}/events", timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            assert time.monotonic() < deadline, "the event stream did not end"
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                events.append((event, strict_json(line.partition(":")[2].strip())))
    return events


def check_diverged_job(service: Service, job_id: str, timeout: float = 300.0) -> dict[str, Any]:
    """The job failed with the divergence reason; its metrics page, checkpoint list and event stream
    are strict JSON and carry the diverged value as `value: null` with `nonfinite`; no checkpoint of
    the diverged epoch exists. Returns the diverged metric row."""
    job = service.wait_job(job_id, timeout)
    assert job["state"] == "failed" and job["attempt"] == 1, job
    found = re.fullmatch(DIVERGED, job["error"] or "")
    assert found, job["error"]
    key, label, epoch = found.group(1), found.group(2), int(found.group(3))

    page = service.http.get(f"/jobs/{job_id}/metrics", params={"limit": 5000})
    assert page.status_code == 200, page.text
    rows = strict_json(page.text)["items"]
    diverged = next(r for r in rows if (r["epoch"], f"{r['split']}/{r['name']}") == (epoch, key))
    assert diverged["value"] is None and diverged["nonfinite"] == label.lower(), diverged
    assert max(r["epoch"] for r in rows) == epoch, "nothing may be trained after the divergence"

    listing = service.http.get(f"/jobs/{job_id}/checkpoints")
    assert listing.status_code == 200, listing.text
    assert all(item["epoch"] < epoch for item in strict_json(listing.text)["items"])

    events = read_event_stream(service, job_id)
    assert events[-1][0] == "end" and events[-1][1]["state"] == "failed", events[-1]
    streamed = [data for kind, data in events if kind == "metric" and data["seq"] == diverged["seq"]]
    assert streamed == [diverged]
    return diverged


def process_table() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process, from /proc."""
    table = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = (
                Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:  # it exited meanwhile
            continue
        # The command name in parentheses may hold spaces: the fields after it are fixed.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        table.append((int(entry), parent, cmdline.strip()))
    return table


def serve_worker_pid(home: Path) -> int | None:
    """The pid of the worker that `tsla serve --home HOME` runs now (its child `python -m worker`)."""
    table = process_table()
    serve = [pid for pid, _, cmd in table if " serve " in f"{cmd} " and f"--home {home}" in cmd]
    workers = [pid for pid, parent, cmd in table if parent in serve and " -m worker " in f" {cmd} "]
    return workers[0] if len(workers) == 1 else None


@contextmanager
def small_filesystem(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "3m") mounted on `folder`: writes past it fail with ENOSPC. Needs
    root (CAP_SYS_ADMIN); unmounted (lazily, if a process still has a file open there) at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)

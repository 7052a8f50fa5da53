"""The production-shaped stack for the service tests: a fresh PostgreSQL database migrated with
Alembic, a Redis broker database of its own, and REAL `celery worker` and `uvicorn` processes.

Everything is torn down at the end of the session, also after failures: the processes (their
whole process groups), the Redis database's keys and the PostgreSQL database (`WITH (FORCE)`).
When a test fails, the tails of the processes' log files are attached to its report.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tsla_cli import stack
from tsla_cli.stack import free_port, service_env, stop_process, wait_for, wait_healthy

from ._support import MAIN_SPEC, FaultStack, Service, StackFactory, pick_redis_db, start_process

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
# A short lease makes a cancel reach the training loop within lease/3 = 5 seconds; it stays long
# enough that a heartbeat delayed by a busy machine does not let the reaper take a job back.
LEASE_SECONDS = "15"


@pytest.fixture(scope="session")
def pg_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """PostgreSQL + Redis + a celery worker process + a uvicorn API process, all fresh."""
    import psycopg
    import redis

    from tsla_service.db import get_engine, session_scope
    from tsla_service.migrate import upgrade_to_head
    from tsla_service.tokens import create_token

    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=5).ping()
    except (psycopg.OperationalError, redis.exceptions.ConnectionError) as error:
        pytest.fail(f"PostgreSQL or Redis is not reachable (scripts/services.sh starts them): {error}")

    root = tmp_path_factory.mktemp("pg-stack")
    suffix = secrets.token_hex(4)
    db_name = f"tsla_it_{suffix}"
    queue = f"tsla-it-{suffix}"
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db_name}"

    with ExitStack() as cleanup:
        cleanup.callback(admin.close)
        admin.execute(f'CREATE DATABASE "{db_name}"')
        cleanup.callback(admin.execute, f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')

        upgrade_to_head(url)
        token = f"tsla_it_{secrets.token_urlsafe(16)}"
        with session_scope(url) as session:
            create_token(session, f"it-{suffix}", token)
        get_engine(url).dispose()

        broker, broker_db = pick_redis_db()
        cleanup.callback(broker.close)
        cleanup.callback(broker.flushdb)

        env = service_env(
            TSLA_DATABASE_URL=url,
            TSLA_BROKER_URL=f"redis://{REDIS_HOST}:{REDIS_PORT}/{broker_db}",
            TSLA_STORAGE_URL=str(root / "storage"),
            TSLA_HOME=str(root / "home"),
            TSLA_QUEUES=queue,
            TSLA_LEASE_SECONDS=LEASE_SECONDS,
        )
        worker_log = root / "logs" / "worker.log"
        worker = start_process(stack.worker_command([queue], hostname=f"{queue}@%h"), env, worker_log)
        cleanup.callback(stop_process, worker)
        port = free_port()
        api = start_process(stack.api_command("127.0.0.1", port), env, root / "logs" / "api.log")
        cleanup.callback(stop_process, api)

        base_url = f"http://127.0.0.1:{port}"
        wait_healthy(base_url, [api, worker], timeout=90)

        wait_for(
            lambda: stack.worker_ready(worker, worker_log), 120, "the celery worker to be ready", interval=0.3
        )

        service = Service(base_url, token, root / "home", queue, broker, worker_log)
        cleanup.callback(service.close)
        yield service


@pytest.fixture(scope="session")
def main_job(pg_stack: Service) -> dict[str, Any]:
    """The main TSLA digits job, submitted (not awaited) the first time a test asks for it."""
    return pg_stack.submit(dict(MAIN_SPEC, name="main-tsla-digits"))


@pytest.fixture(scope="session")
def succeeded_job(pg_stack: Service, main_job: dict[str, Any]) -> dict[str, Any]:
    job = pg_stack.wait_job(main_job["id"], timeout=300)
    assert job["state"] == "succeeded", job
    return job


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[StackFactory]:
    """Builds private FaultStacks under tmp_path; all of them are torn down after the test."""
    with ExitStack() as stacks:
        count = iter(range(100))

        def make(**kwargs: Any) -> FaultStack:
            return stacks.enter_context(FaultStack(tmp_path / f"stack-{next(count)}", **kwargs))

        yield make

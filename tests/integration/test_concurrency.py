"""Concurrent submissions against a real uvicorn API on SQLite and on PostgreSQL: the per-token cap
and the idempotent insert hold under bursts (tsla_service/submit.py's token-row lock).

No worker consumes the queue (a filesystem broker nobody reads), so every accepted job stays
queued and counts against the cap; each case uses tokens of its own.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tsla_cli import stack
from tsla_service.db import get_engine, session_scope
from tsla_service.migrate import upgrade_to_head
from tsla_service.models import Job
from tsla_service.tokens import create_token

from ._support import PG_ADMIN_URL, pg_execute, start_process

pytestmark = pytest.mark.integration

CAP = 20
SPEC: dict[str, Any] = {"preset": "digits", "epochs": 2, "smoothing": {"method": "lsr"}}


@dataclass
class Api:
    base_url: str
    database_url: str

    def new_token(self) -> tuple[str, str]:
        """(plaintext, token id) of a new token."""
        with session_scope(self.database_url) as session:
            row, plaintext = create_token(session, f"burst-{secrets.token_hex(4)}")
            return plaintext, row.id

    def count(self, owner: str, *, key: str | None = None, active: bool = False) -> int:
        query = select(func.count()).select_from(Job).where(Job.owner == owner)
        if key is not None:
            query = query.where(Job.idempotency_key == key)
        if active:
            query = query.where(Job.state.in_(("queued", "running")))
        with session_scope(self.database_url) as session:
            return int(session.scalar(query) or 0)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp(f"burst-{request.param}")
    settings = {"TSLA_HOME": str(root / "home"), "TSLA_MAX_ACTIVE_JOBS_PER_TOKEN": str(CAP)}
    database = None
    if request.param == "postgresql":
        database = f"tsla_burst_{secrets.token_hex(4)}"
        pg_execute(PG_ADMIN_URL, f'CREATE DATABASE "{database}"')
        settings["TSLA_DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
    url = settings.get("TSLA_DATABASE_URL") or f"sqlite:///{root / 'home' / 'tsla.db'}"
    upgrade_to_head(url)
    port = stack.free_port()
    process = start_process(
        stack.api_command("127.0.0.1", port), stack.service_env(**settings), root / "api.log"
    )
    try:
        stack.wait_healthy(f"http://127.0.0.1:{port}", [process], timeout=90)
        yield Api(f"http://127.0.0.1:{port}", url)
    finally:
        stack.stop_process(process)
        get_engine(url).dispose()
        if database is not None:
            pg_execute(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


async def burst(api: Api, token: str, count: int, key: str | None = None) -> list[httpx.Response]:
    """`count` POST /jobs sent at once (one connection each, so the server handles them in parallel)."""
    headers = {"Authorization": f"Bearer {token}"} | ({"Idempotency-Key": key} if key else {})
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=api.base_url, headers=headers, timeout=60, limits=limits) as client:
        return list(await asyncio.gather(*(client.post("/jobs", json=SPEC) for _ in range(count))))


def test_a_burst_of_50_submissions_never_exceeds_the_cap(api: Api) -> None:
    token, owner = api.new_token()
    for response in asyncio.run(burst(api, token, 2)):
        assert response.status_code == 201
    responses = asyncio.run(burst(api, token, 50))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] * (CAP - 2) + [429] * (50 - CAP + 2), statuses
    assert all(r.json()["detail"].endswith(f"the limit is {CAP}") for r in responses if r.status_code == 429)
    assert api.count(owner, active=True) == CAP


def test_32_concurrent_posts_with_one_key_create_one_job_and_all_carry_it(api: Api) -> None:
    token, owner = api.new_token()
    key = f"burst-{secrets.token_hex(8)}"
    responses = asyncio.run(burst(api, token, 32, key=key))
    assert {r.status_code for r in responses} == {201}, [r.text for r in responses if r.status_code != 201]
    bodies = [r.json() for r in responses]
    assert all(isinstance(body, dict) and body.get("id") for body in bodies), bodies
    assert len({body["id"] for body in bodies}) == 1
    assert all(body == bodies[0] for body in bodies), "every retry replays the first response"
    assert api.count(owner, key=key) == 1 == api.count(owner)


def test_one_key_with_two_bodies_at_once_creates_one_job_and_409s_the_other(api: Api) -> None:
    token, owner = api.new_token()
    key = f"burst-{secrets.token_hex(8)}"
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=api.base_url, headers=headers, timeout=60) as client:
            bodies = [dict(SPEC, seed=seed % 2) for seed in range(16)]
            return list(await asyncio.gather(*(client.post("/jobs", json=body) for body in bodies)))

    responses = asyncio.run(race())
    created = [r for r in responses if r.status_code == 201]
    assert {r.status_code for r in responses} <= {201, 409}
    assert len(created) == 8 and len({r.json()["id"] for r in created}) == 1
    assert api.count(owner) == 1

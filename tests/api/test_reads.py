"""api.reads when PostgreSQL cannot be reached: a clear 503, no hang and no 500."""

from __future__ import annotations

import asyncio
import time

import pytest
from fastapi import HTTPException
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import create_engine

from api import reads
from api.routes.metrics import METRICS_PAGE

NOWHERE = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"  # port 1: nothing listens


def test_a_read_with_no_database_to_reach_is_a_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reads, "CONNECT_TIMEOUT_S", 0.5)

    async def read() -> HTTPException:
        pool = AsyncConnectionPool(
            reads.libpq_url(NOWHERE), min_size=1, open=False, kwargs={"connect_timeout": 1}
        )
        await pool.open()
        try:
            postgres = reads.PostgresReads(create_engine(NOWHERE), pool)
            params = {"job_id": "j", "token_sha256": "0" * 64, "after": 0, "limit": 2}
            with pytest.raises(HTTPException) as refused:
                await postgres.rows(METRICS_PAGE, params)
            return refused.value
        finally:
            await pool.close()

    started = time.monotonic()
    error = asyncio.run(read())
    assert error.status_code == 503 and "unavailable" in str(error.detail)
    assert time.monotonic() - started < 5, "a pool timeout must not be waited out twice"


def test_the_libpq_url_keeps_the_connection_options() -> None:
    url = "postgresql+psycopg://user:s%40cret@db.example:5433/tsla?application_name=api&sslmode=require"
    assert (
        reads.libpq_url(url)
        == "postgresql://user:s%40cret@db.example:5433/tsla?application_name=api&sslmode=require"
    )

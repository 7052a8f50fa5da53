"""Row reads for the hot paging routes (metrics and logs pages), off the thread pool where the
database allows it.

A page is one SQLAlchemy statement, built once in its route module. Where it runs:

- PostgreSQL: on psycopg's asyncio connection pool, in the event loop. A thread-pool hop and
  SQLAlchemy's execution layer cost more than the indexed query itself (bench/service.py (e)).
  The pool does not ping a connection before each use: a connection a server restart broke
  fails its query, the pool drops it, and the read runs once more on a checked connection.
- Any other database (the embedded SQLite): the SQLAlchemy engine in autocommit, in the thread
  pool.

The API's lifespan opens the PostgreSQL pool (`open_reads`); without one (an app used with no
lifespan) every database takes the thread-pool path. Both paths give the same rows: the
SQLAlchemy statement is compiled for psycopg once and the column types need no result
processing there (a test compares the two on one database).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import repeat
from typing import Any, Protocol

import psycopg
from fastapi import HTTPException, status
from fastapi.concurrency import run_in_threadpool
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy import Engine, Select, make_url

from tsla_service.db import get_engine

log = logging.getLogger(__name__)

Row = dict[str, Any]
POOL_MIN, POOL_MAX = 2, 10
CONNECT_TIMEOUT_S = 5.0  # how long a read waits for a pooled connection before a 503


class Reads(Protocol):
    async def rows(self, statement: Select[Any], params: Mapping[str, Any]) -> list[Row]: ...


@lru_cache(maxsize=8)
def autocommit_engine(url: str) -> Engine:
    """The database's pooled engine in autocommit: single statements need no BEGIN/ROLLBACK."""
    return get_engine(url).execution_options(isolation_level="AUTOCOMMIT")


@dataclass(frozen=True)
class ThreadedReads:
    """Any database, through SQLAlchemy in the thread pool."""

    engine: Engine

    async def rows(self, statement: Select[Any], params: Mapping[str, Any]) -> list[Row]:
        return await run_in_threadpool(self.rows_now, statement, params)

    def rows_now(self, statement: Select[Any], params: Mapping[str, Any]) -> list[Row]:
        with self.engine.connect() as connection:
            result = connection.execute(statement, dict(params))
            keys = list(result.keys())
            # all() fetches in one call; iterating would call the driver's fetchone per row.
            return [dict(zip(keys, row, strict=True)) for row in result.all()]


def unavailable(error: Exception) -> HTTPException:
    log.warning("database read failed: %s", " ".join(str(error).split()) or type(error).__name__)
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the database is unavailable; retry shortly")


@dataclass
class PostgresReads:
    """PostgreSQL, through psycopg's asyncio pool in the event loop."""

    engine: Engine  # for its dialect: statements compile once to psycopg's SQL
    pool: AsyncConnectionPool
    compiled: dict[Select[Any], str] = field(default_factory=dict)

    def sql(self, statement: Select[Any]) -> str:
        if statement not in self.compiled:
            self.compiled[statement] = str(statement.compile(dialect=self.engine.dialect))
        return self.compiled[statement]

    async def rows(self, statement: Select[Any], params: Mapping[str, Any]) -> list[Row]:
        sql = self.sql(statement)
        try:
            try:
                return await self.fetch(sql, params)
            except PoolTimeout:
                raise  # no connection to be had: trying again would only wait as long again
            except psycopg.OperationalError:
                # Most likely a connection a server restart broke: the pool has dropped it; drop
                # any other broken idle ones too, then read once more.
                await self.pool.check()
                return await self.fetch(sql, params)
        except psycopg.OperationalError as error:  # PoolTimeout is one too
            raise unavailable(error) from error

    async def fetch(self, sql: str, params: Mapping[str, Any]) -> list[Row]:
        async with self.pool.connection(timeout=CONNECT_TIMEOUT_S) as connection:
            # Binary results: psycopg's C loaders read int8/float8/timestamptz without parsing text.
            cursor = await connection.execute(sql, params, binary=True)
            names = [column.name for column in cursor.description or ()]
            # Plain tuples come from psycopg's C rows; building the dicts with map and zip costs
            # less than dict_row or a comprehension.
            return list(map(dict, map(zip, repeat(names), await cursor.fetchall())))

    async def close(self) -> None:
        await self.pool.close()


def libpq_url(url: str) -> str:
    """SQLAlchemy's `postgresql+psycopg://...` URL as the plain one libpq takes."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def open_reads(url: str) -> PostgresReads | None:
    """The PostgreSQL read pool for `url`, opened; None for any other database."""
    engine = autocommit_engine(url)
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
        return None
    pool = AsyncConnectionPool(
        libpq_url(url),
        min_size=POOL_MIN,
        max_size=POOL_MAX,
        # Times come back in UTC whatever the server's TimeZone, as through SQLAlchemy (UTCDateTime).
        kwargs={"autocommit": True, "options": "-c TimeZone=UTC"},
        open=False,
        name="tsla-api-reads",
    )
    await pool.open()
    return PostgresReads(engine, pool)


def reads_for(app_reads: Reads | None, url: str) -> Reads:
    """The app's opened PostgreSQL reads, else the thread-pool reads for `url`."""
    return app_reads if app_reads is not None else ThreadedReads(autocommit_engine(url))

"""Schema 0007 (jobs.queue) on a database that already holds jobs, SQLite and PostgreSQL: existing
jobs get `training`, the one queue before, and no row of `jobs` or of the tables that reference it
is lost on the way up or down."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from alembic import command
from sqlalchemy import text

from tsla_service.db import get_engine
from tsla_service.migrate import alembic_config

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"  # scripts/services.sh starts it
TABLES = ("jobs", "metrics", "logs")


@contextmanager
def empty_database(kind: str, home: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{home / 'm.db'}"
        return
    name = "tsla_queue_migration"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        try:
            yield url
        finally:
            get_engine(url).dispose()
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def counts(url: str) -> dict[str, int]:
    with get_engine(url).connect() as connection:
        return {table: int(connection.scalar(text(f"SELECT count(*) FROM {table}")) or 0) for table in TABLES}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_0007_gives_existing_jobs_the_training_queue_and_keeps_every_row(kind: str, tmp_path: Path) -> None:
    with empty_database(kind, tmp_path) as url:
        config = alembic_config(url)
        command.upgrade(config, "0006")
        with get_engine(url).begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO jobs (id, name, state, spec, method, dataset, epochs) "
                    "VALUES ('j1', 'j', 'queued', '{}', 'tsla', 'digits', 2)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO metrics (job_id, epoch, step, split, name, value, stage, attempt) "
                    "VALUES ('j1', 0, 1, 'test', 'top1', 0.5, 'smooth', 1)"
                )
            )
            connection.execute(
                text("INSERT INTO logs (job_id, attempt, level, message) VALUES ('j1', 1, 'info', 'm')")
            )
        before = counts(url)
        assert before == {"jobs": 1, "metrics": 1, "logs": 1}

        command.upgrade(config, "0007")
        assert counts(url) == before
        with get_engine(url).connect() as connection:
            assert connection.scalar(text("SELECT queue FROM jobs WHERE id = 'j1'")) == "training"

        command.downgrade(config, "0006")
        assert counts(url) == before
        get_engine(url).dispose()

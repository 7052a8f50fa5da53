"""Schema 0004 (experiments) on a SQLite database that already holds jobs: no row of `jobs` or of
the tables that reference it is lost on the way up or down. (Rebuilding `jobs`, as batch mode
would, drops the old table with foreign keys on, which cascades to every metric row.)"""

from pathlib import Path

from alembic import command
from sqlalchemy import text

from tsla_service.db import get_engine
from tsla_service.migrate import alembic_config

CHILDREN = ("metrics", "checkpoints", "logs")


def counts(url: str) -> dict[str, int]:
    with get_engine(url).connect() as connection:
        return {
            t: int(connection.scalar(text(f"SELECT count(*) FROM {t}")) or 0) for t in ("jobs", *CHILDREN)
        }


def test_0004_keeps_jobs_and_their_rows_both_ways(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    config = alembic_config(url)
    command.upgrade(config, "0003")
    with get_engine(url).begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (id, name, state, spec, method, dataset, epochs) "
                "VALUES ('j1', 'j', 'succeeded', '{}', 'tsla', 'digits', 2)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO metrics (job_id, epoch, step, split, name, value, stage, attempt) "
                "VALUES ('j1', 0, 1, 'test', 'top1', 0.5, 'smooth', 1)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO checkpoints (job_id, name, epoch, partial, size, sha256, storage_key, metrics) "
                "VALUES ('j1', 'epoch-0000', 0, 0, 1, 'x', 'k', '{}')"
            )
        )
        connection.execute(
            text("INSERT INTO logs (job_id, attempt, level, message) VALUES ('j1', 1, 'info', 'm')")
        )
    before = counts(url)
    assert before == {"jobs": 1, "metrics": 1, "checkpoints": 1, "logs": 1}

    command.upgrade(config, "0004")
    assert counts(url) == before
    with get_engine(url).connect() as connection:
        held = connection.scalar(text("SELECT held FROM jobs WHERE id = 'j1'"))
        foreign_keys = connection.execute(text("PRAGMA foreign_key_list(jobs)")).all()
    assert held == 0
    assert ("experiment_id", "experiments") in {(row._mapping["from"], row.table) for row in foreign_keys}

    command.downgrade(config, "0003")
    assert counts(url) == before
    get_engine(url).dispose()

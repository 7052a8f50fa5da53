"""Migrations are the only way the schema is made: they apply and match the models exactly."""

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config

from tsla_cli.serve import REPO_ROOT, migrate

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def alembic_config(url: str) -> Config:
    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    return config


def test_sqlite_upgrade_check_downgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate(url)
    command.check(alembic_config(url))  # raises when models and migrations drift apart
    command.downgrade(alembic_config(url), "base")


def test_postgresql_upgrade_check_downgrade() -> None:
    admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)  # scripts/services.sh starts it
    name = "tsla_migration_check"
    with admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        try:
            migrate(url)
            command.check(alembic_config(url))
            command.downgrade(alembic_config(url), "base")
        finally:
            from tsla_shared.db import get_engine

            get_engine(url).dispose()
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

"""Migrations are the only way the schema is made: they apply and match the models exactly."""

from pathlib import Path

import psycopg
from alembic import command

from tsla_service.db import get_engine
from tsla_service.migrate import alembic_config, upgrade_to_head

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def test_sqlite_upgrade_check_downgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade_to_head(url)
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
            upgrade_to_head(url)
            command.check(alembic_config(url))
            command.downgrade(alembic_config(url), "base")
        finally:
            get_engine(url).dispose()
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

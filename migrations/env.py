"""Alembic environment: migrate the database named by the TSLA_* settings."""

from alembic import context

import tsla_service.models  # noqa: F401  (registers the tables on Base.metadata)
from tsla_service.db import Base, get_engine
from tsla_service.settings import get_settings

config = context.config
url = config.attributes.get("database_url") or get_settings().resolved_database_url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    with get_engine(url).connect() as connection:
        # render_as_batch: SQLite can only ALTER tables by copying them, which batch mode does.
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

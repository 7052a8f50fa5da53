"""Alembic migrations, the only way the schema changes; `tsla_service.migrate` runs them and
finds this folder through the package, so an installed copy works outside a checkout."""

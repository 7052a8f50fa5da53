"""The migration runner: `alembic upgrade head` on the service's database.

The scripts live in the `migrations` package, found through its import path, so an installed
package (a wheel, `pip install .`) migrates from any folder. `alembic.ini` at the repository root
is only for developers' `alembic revision` / `alembic check`.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config


def alembic_config(database_url: str) -> Config:
    """An Alembic configuration for `database_url`, independent of the working directory."""
    import migrations

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).resolve().parent))
    config.attributes["database_url"] = database_url
    return config


def upgrade_to_head(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")

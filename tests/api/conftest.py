"""An in-process API on a migrated SQLite home with a filesystem broker nothing consumes."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tsla_service.db import session_scope
from tsla_service.migrate import upgrade_to_head
from tsla_service.settings import Settings
from tsla_service.tokens import create_token


@dataclass
class Api:
    client: TestClient
    home: Path
    database_url: str

    def as_token(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def new_token(self, name: str) -> str:
        with session_scope(self.database_url) as session:
            return create_token(session, name)[1]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(home=tmp_path, max_active_jobs_per_token=3, max_body_bytes=20000)  # type: ignore[arg-type]
    url = settings.resolved_database_url
    upgrade_to_head(url)
    with TestClient(create_app(settings)) as client:
        yield Api(client, tmp_path, url)

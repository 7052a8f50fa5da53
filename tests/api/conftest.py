"""An in-process API on a migrated SQLite home with a filesystem broker nothing consumes."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tsla_cli.serve import migrate
from tsla_shared.db import session_scope
from tsla_shared.settings import get_settings
from tsla_shared.tokens import create_token


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
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.setenv("TSLA_HOME", str(tmp_path))
    monkeypatch.setenv("TSLA_MAX_ACTIVE_JOBS_PER_TOKEN", "3")
    monkeypatch.setenv("TSLA_MAX_BODY_BYTES", "20000")
    get_settings.cache_clear()
    url = get_settings().resolved_database_url
    migrate(url)
    with TestClient(create_app()) as client:
        yield Api(client, tmp_path, url)
    get_settings.cache_clear()

"""An in-process API on a migrated SQLite home with a filesystem broker nothing consumes; and,
for modules that run on both databases, one on SQLite and one on a fresh PostgreSQL database."""

import hashlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tsla_service import results
from tsla_service.db import get_engine, session_scope
from tsla_service.migrate import upgrade_to_head
from tsla_service.settings import Settings
from tsla_service.storage import Storage
from tsla_service.tokens import Role, create_token
from tsla_spec.records import CheckpointRecord

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"  # scripts/services.sh starts it


@dataclass
class Api:
    client: TestClient
    home: Path
    database_url: str

    def as_token(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def new_token(self, name: str, role: Role = "user") -> str:
        with session_scope(self.database_url) as session:
            return create_token(session, name, role=role)[1]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(home=tmp_path, max_active_jobs_per_token=3, max_body_bytes=20000)  # type: ignore[arg-type]
    url = settings.resolved_database_url
    upgrade_to_head(url)
    with TestClient(create_app(settings)) as client:
        yield Api(client, tmp_path, url)


@contextmanager
def migrated_database(kind: str, home: Path) -> Iterator[str]:
    """The URL of an empty, migrated database: a SQLite file under `home`, or a PostgreSQL
    database made for the caller and dropped (WITH (FORCE)) when it is done."""
    if kind == "sqlite":
        url = f"sqlite:///{(home / 'tsla.db').resolve()}"
        upgrade_to_head(url)
        yield url
        get_engine(url).dispose()
        return
    name = f"tsla_api_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade_to_head(url)
        yield url
    finally:
        get_engine(url).dispose()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend_api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app per database kind for the whole module (the cases share its state)."""
    home = tmp_path_factory.mktemp(f"home-{request.param}")
    with migrated_database(request.param, home) as url:
        settings = Settings(  # an empty data root: cifar100 and imagenet are not installed
            home=home,
            database_url=url,
            data_root=home / "data",
            max_active_jobs_per_token=1000,
            max_body_bytes=20000,
        )
        with TestClient(create_app(settings)) as client:
            yield Api(client, home, url)


def add_checkpoint(api: Api, job_id: str, data: bytes, name: str = "epoch-0001") -> int:
    """Store `data` as a checkpoint file of the job, with its row; returns the checkpoint id."""
    storage = Storage(str((api.home / "checkpoints").resolve()))
    key = storage.key(job_id, f"{name}.pt")
    path = storage.job_folder(job_id) / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    record = CheckpointRecord(
        name, path, 1, False, hashlib.sha256(data).hexdigest(), len(data), {"test/top1": 0.5}
    )
    with session_scope(api.database_url) as session:
        results.record_checkpoint(session, job_id, record, key, {name})
        found = results.find_checkpoint(session, job_id, "latest")
        assert found is not None
        return found.id

"""Queues per kind of worker through the API, on SQLite and PostgreSQL: the queue a job is sent to
(shown by GET /jobs/{id}), the 422 for a queue this server does not have (POST /jobs and POST
/experiments store nothing then), `tsla_queue_depth{queue}` and readiness per queue."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.main import create_app
from tests.api.conftest import Api, migrated_database
from tsla_service.db import session_scope
from tsla_service.models import Experiment, Job
from tsla_service.settings import Settings
from tsla_service.tokens import create_token
from tsla_service.workers import beat, forget

SPEC: dict[str, Any] = {"preset": "digits", "epochs": 2, "smoothing": {"method": "lsr"}}
UNKNOWN = "resources.queue: 'tpu' is not a queue of this server; known: cpu, gpu"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A server with the queues cpu (the first) and gpu, CUDA jobs to gpu."""
    home = tmp_path_factory.mktemp(f"queues-{request.param}")
    with migrated_database(request.param, home) as url:
        settings = Settings(home=home, database_url=url, queues=["cpu", "gpu"], device_queues={"cuda": "gpu"})
        with TestClient(create_app(settings)) as client:
            yield Api(client, home, url)


@pytest.fixture
def user(api: Api) -> tuple[str, dict[str, str]]:
    """(token id, headers) of a new token."""
    with session_scope(api.database_url) as session:
        row, token = create_token(session, f"user-{secrets.token_hex(4)}")
    return row.id, api.as_token(token)


def post_job(api: Api, headers: dict[str, str], **fields: Any) -> Any:
    return api.client.post("/jobs", json={**SPEC, **fields}, headers=headers)


def stored(api: Api, owner: str, table: type[Job] | type[Experiment] = Job) -> int:
    with session_scope(api.database_url) as session:
        return int(session.scalar(select(func.count()).select_from(table).where(table.owner == owner)) or 0)


@pytest.mark.parametrize(
    ("fields", "queue"),
    [
        ({"device": "cuda"}, "gpu"),
        ({"device": "cuda:1"}, "gpu"),
        ({"device": "cpu"}, "cpu"),
        ({"device": "auto"}, "cpu"),
        ({"device": "cpu", "resources": {"queue": "gpu"}}, "gpu"),
        ({"device": "cuda", "resources": {"queue": "cpu"}}, "cpu"),
    ],
)
def test_a_job_shows_the_queue_it_is_sent_to(
    api: Api, user: tuple[str, dict[str, str]], fields: dict[str, Any], queue: str
) -> None:
    _, headers = user
    created = post_job(api, headers, **fields)
    assert created.status_code == 201, created.text
    assert created.json()["queue"] == queue
    shown = api.client.get(f"/jobs/{created.json()['id']}", headers=headers).json()
    assert shown["queue"] == queue
    assert shown["spec"]["resources"]["queue"] == fields.get("resources", {}).get("queue")


def test_an_unknown_queue_is_a_422_and_stores_nothing(api: Api, user: tuple[str, dict[str, str]]) -> None:
    owner, headers = user
    refused = api.client.post(
        "/jobs", json={**SPEC, "resources": {"queue": "tpu"}}, headers={**headers, "Idempotency-Key": "k1"}
    )
    assert refused.status_code == 422 and refused.json() == {"detail": UNKNOWN}
    assert stored(api, owner) == 0
    # Nothing kept the key: the corrected request is a new job.
    fixed = api.client.post(
        "/jobs", json={**SPEC, "resources": {"queue": "gpu"}}, headers={**headers, "Idempotency-Key": "k1"}
    )
    assert fixed.status_code == 201 and fixed.json()["queue"] == "gpu"
    bad_name = post_job(api, headers, resources={"queue": "Not A Name"})
    assert bad_name.status_code == 422 and bad_name.json()["detail"].startswith("resources.queue: ")
    assert stored(api, owner) == 1


@pytest.mark.parametrize(
    ("base", "grid"),
    [
        ({**SPEC, "resources": {"queue": "tpu"}}, {"seed": [0, 1]}),
        (SPEC, {"resources.queue": ["cpu", "tpu"]}),
    ],
)
def test_an_experiment_with_an_unknown_queue_is_a_422_and_stores_nothing(
    api: Api, user: tuple[str, dict[str, str]], base: dict[str, Any], grid: dict[str, Any]
) -> None:
    owner, headers = user
    body = {"name": "queues", "base": base, "grid": grid}
    refused = api.client.post("/experiments", json=body, headers=headers)
    assert refused.status_code == 422 and refused.json() == {"detail": UNKNOWN}
    assert stored(api, owner, Experiment) == 0 and stored(api, owner) == 0


def test_experiment_cells_go_to_their_queues(api: Api, user: tuple[str, dict[str, str]]) -> None:
    _, headers = user
    body = {"name": "by device", "base": SPEC, "grid": {"device": ["cpu", "cuda"]}, "order": "grid"}
    created = api.client.post("/experiments", json=body, headers=headers)
    assert created.status_code == 201, created.text
    queues = [
        api.client.get(f"/jobs/{job['id']}", headers=headers).json()["queue"]
        for job in created.json()["jobs"]
    ]
    assert queues == ["cpu", "gpu"]


def depths(api: Api, headers: dict[str, str]) -> dict[str, float]:
    text = api.client.get("/metrics", headers=headers).text
    return {
        queue: float(value)
        for queue, value in re.findall(r'^tsla_queue_depth\{queue="([^"]*)"\} (\S+)$', text, re.M)
    }


def test_queue_depth_counts_queued_jobs_per_configured_queue(
    api: Api, user: tuple[str, dict[str, str]]
) -> None:
    owner, headers = user
    with session_scope(api.database_url) as session:
        operator = api.as_token(create_token(session, f"ops-{secrets.token_hex(4)}", role="operator")[1])
    before = depths(api, operator)
    assert set(before) == {"cpu", "gpu"}
    gpu_jobs = [post_job(api, headers, device="cuda").json()["id"] for _ in range(2)]
    post_job(api, headers, device="cpu")
    with session_scope(api.database_url) as session:  # a job of a queue this server no longer lists
        session.add(Job(name="old", owner=owner, state="queued", spec={}, method="lsr", dataset="digits",
                        epochs=2, queue="retired"))  # fmt: skip
    assert depths(api, operator) == {"cpu": before["cpu"] + 1, "gpu": before["gpu"] + 2}
    api.client.post(f"/jobs/{gpu_jobs[0]}/cancel", headers=headers)
    assert depths(api, operator) == {"cpu": before["cpu"] + 1, "gpu": before["gpu"] + 1}


def test_readiness_says_which_queues_a_live_worker_consumes(api: Api) -> None:
    with session_scope(api.database_url) as session:
        beat(session, "host:1:cpu", ["cpu"])
    try:
        ready = api.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ready",
            "workers": 1,
            "queues": ["cpu"],
            "consumed": {"cpu": True, "gpu": False},
        }
    finally:
        with session_scope(api.database_url) as session:
            forget(session, "host:1:cpu")

"""Queues per kind of worker: the settings, the rule that picks a job's queue, and every send
(submission, reaper) going to the queue stored on the job row. The sends go through a real Celery
app on the filesystem broker, whose message files carry the queue in their names."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from tests.conftest import tiny_raw_spec
from tsla_service.db import session_scope
from tsla_service.migrate import upgrade_to_head
from tsla_service.models import Job
from tsla_service.queue import make_celery, send_job
from tsla_service.queues import UnknownQueue, device_kind, job_queue
from tsla_service.reaper import reap_once
from tsla_service.settings import Settings
from tsla_service.submit import JobRequest, submit_job
from tsla_service.tokens import create_token
from tsla_spec.spec import build_spec


def queue_of(settings: Settings, **overrides: Any) -> str:
    return job_queue(settings, build_spec(tiny_raw_spec(**overrides)))


def test_by_default_every_job_goes_to_the_one_queue_training() -> None:
    settings = Settings()
    assert settings.queues == ["training"] and settings.device_queues == {}
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert queue_of(settings, device=device) == "training"


def test_a_named_queue_wins_over_the_device() -> None:
    settings = Settings(queues=["gpu", "cpu"], device_queues={"cuda": "gpu", "cpu": "cpu"})
    assert queue_of(settings, device="cpu", resources={"queue": "gpu"}) == "gpu"
    assert queue_of(settings, device="cuda", resources={"queue": "cpu"}) == "cpu"


def test_an_unknown_queue_is_refused_naming_the_known_ones() -> None:
    settings = Settings(queues=["gpu", "cpu"])
    with pytest.raises(
        UnknownQueue, match=r"^resources.queue: 'tpu' is not a queue of this server; known: gpu, cpu$"
    ):
        queue_of(settings, resources={"queue": "tpu"})


def test_the_device_kind_picks_the_queue_else_the_first_queue() -> None:
    settings = Settings(queues=["gpu", "cpu", "big"], device_queues={"cuda": "gpu", "cpu": "cpu"})
    assert [device_kind(device) for device in ("cuda:1", "cuda", "cpu", "auto")] == [
        "cuda",
        "cuda",
        "cpu",
        "auto",
    ]
    assert queue_of(settings, device="cuda:1") == "gpu"
    assert queue_of(settings, device="cuda") == "gpu"
    assert queue_of(settings, device="cpu") == "cpu"
    assert queue_of(settings, device="auto") == "gpu", "auto has no entry: the first queue"
    first_is_cpu = Settings(queues=["cpu", "gpu"], device_queues={"cuda": "gpu"})
    assert queue_of(first_is_cpu, device="auto") == "cpu"
    auto_entry = Settings(queues=["cpu", "gpu"], device_queues={"auto": "gpu"})
    assert queue_of(auto_entry, device="auto") == "gpu" and queue_of(auto_entry, device="cuda") == "cpu"


@pytest.mark.parametrize("value", ["gpu,cpu", " gpu , cpu ", '["gpu", "cpu"]'])
def test_tsla_queues_is_a_comma_separated_or_json_list(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("TSLA_QUEUES", value)
    monkeypatch.setenv("TSLA_DEVICE_QUEUES", '{"cuda": "gpu"}')
    settings = Settings()
    assert settings.queues == ["gpu", "cpu"] and settings.device_queues == {"cuda": "gpu"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"queues": []}, "name at least one queue"),
        ({"queues": ["GPU"]}, "'GPU' is not a queue name"),
        ({"queues": "gpu,"}, "'' is not a queue name"),
        ({"queues": ["gpu", "gpu"]}, "listed twice"),
        (
            {"queues": ["gpu"], "device_queues": {"tpu": "gpu"}},
            "'tpu' is not a device kind; known: auto, cpu, cuda",
        ),
        ({"queues": ["gpu"], "device_queues": {"cpu": "cpu"}}, "cpu -> 'cpu' is not one of TSLA_QUEUES"),
    ],
)
def test_broken_queue_settings_stop_the_service_from_starting(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**values)


# --- sending: a real Celery app on the filesystem broker ------------------------------------------


def messages(settings: Settings) -> list[str]:
    """The queue of every message on the filesystem broker (files `<time>_<uuid>.<queue>.msg`)."""
    folder = settings.broker_folder / "in"
    return sorted(path.name.partition(".")[2].removesuffix(".msg") for path in folder.iterdir())


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(home=tmp_path, queues=["cpu", "other"], device_queues={"cpu": "cpu"})
    upgrade_to_head(settings.resolved_database_url)
    return settings


def submit(settings: Settings, **overrides: Any) -> dict[str, Any]:
    app = make_celery(settings)
    with session_scope(settings.resolved_database_url) as session:
        owner = create_token(session, f"user-{secrets.token_hex(4)}")[0].id
        request = JobRequest(tiny_raw_spec(**overrides))
        return submit_job(
            session, settings, app, owner, request, lambda job: {"id": job.id, "queue": job.queue}
        )


def test_make_celery_declares_every_queue_and_creates_none(settings: Settings) -> None:
    conf = make_celery(settings).conf
    assert [queue.name for queue in conf.task_queues] == ["cpu", "other"]
    assert conf.task_default_queue == "cpu" and conf.task_create_missing_queues is False


def test_submission_stores_the_queue_and_sends_the_id_there(settings: Settings) -> None:
    named = submit(settings, resources={"queue": "other"})
    derived = submit(settings, seed=1)
    assert (named["queue"], derived["queue"]) == ("other", "cpu")
    assert messages(settings) == ["cpu", "other"]
    with session_scope(settings.resolved_database_url) as session:
        row = session.get(Job, named["id"])
        assert row is not None and row.queue == "other" and row.enqueued_at is not None
        assert row.spec["resources"]["queue"] == "other"
        derived_row = session.get(Job, derived["id"])
        assert derived_row is not None and derived_row.spec["resources"]["queue"] is None, "the spec as asked"


def test_an_unknown_queue_stores_nothing_and_sends_nothing(settings: Settings) -> None:
    with pytest.raises(UnknownQueue):
        submit(settings, resources={"queue": "gpu"})
    with session_scope(settings.resolved_database_url) as session:
        assert session.scalars(select(Job.id)).all() == []
    assert messages(settings) == []


def test_send_job_and_the_reaper_send_to_the_rows_queue(settings: Settings) -> None:
    job_id = submit(settings, resources={"queue": "other"})["id"]
    with session_scope(settings.resolved_database_url) as session:
        row = session.get(Job, job_id)
        assert row is not None
        row.enqueued_at = None  # as if the broker had been unreachable
    for message in (settings.broker_folder / "in").iterdir():
        message.unlink()  # ... and the message lost
    reap_once(settings, make_celery(settings))
    assert messages(settings) == ["other"]
    with session_scope(settings.resolved_database_url) as session:
        assert send_job(make_celery(settings), session, job_id)
    assert messages(settings) == ["other", "other"]

"""An experiment's jobs run by the training task as a plain function: the worker's finish path
schedules the experiment (a freed slot, a teacher that succeeded), and training records the job's
provenance. The queue is a stand-in that records what was sent."""

import re
from pathlib import Path
from typing import Any

from tests.conftest import tiny_raw_spec
from tsla_service import experiments
from tsla_service.db import session_scope
from tsla_service.migrate import upgrade_to_head
from tsla_service.models import Job
from tsla_service.settings import Settings
from tsla_service.tokens import create_token
from worker.runner import run_job


class RecordingQueue:
    """What `send_job` needs of a Celery app: `send_task`, here only remembered."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send_task(self, name: str, args: list[str], queue: str, retry: bool) -> None:
        self.sent.append(args[0])


def test_a_teacher_that_succeeds_releases_its_dependent_and_jobs_record_provenance(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", lease_seconds=30, git_commit="f" * 40)  # type: ignore[call-arg]
    url = settings.resolved_database_url
    upgrade_to_head(url)
    queue: Any = RecordingQueue()
    with session_scope(url) as session:
        owner = create_token(session, "alice")[0].id
    request = experiments.ExperimentRequest(
        name="pre",
        base=tiny_raw_spec(epochs=2, smoothing={"method": "lsr", "theta": 0.2}),
        grid={"smoothing.method": ["lsr", "lsr-pre"]},
        teacher={"cell": {"smoothing.method": "lsr"}},
        max_concurrent=2,
    )
    with session_scope(url) as session:
        created = experiments.create_experiment(
            session, settings, queue, owner, request, lambda e: {"id": e.id}
        )
    teacher_id, dependent_id = (job.id for job in jobs_of(url, created["id"]))
    assert queue.sent == [teacher_id]  # the dependent waits for its teacher

    assert run_job(teacher_id, settings, queue) == "succeeded"
    assert queue.sent == [teacher_id, dependent_id]  # released by the teacher's finish
    assert run_job(dependent_id, settings, queue) == "succeeded"
    teacher, dependent = jobs_of(url, created["id"])
    assert dependent.teacher_job_id == teacher.id and dependent.started_at > teacher.finished_at  # type: ignore[operator]
    with session_scope(url) as session:
        experiment = session.get(experiments.Experiment, created["id"])
        assert experiment is not None and experiment.finished_at is not None
    provenance = dependent.provenance
    assert provenance is not None
    assert provenance["dataset"]["name"] == "synthetic" and len(provenance["dataset"]["sha256"]) == 64
    assert provenance["torch_version"] and provenance["device"] == "cpu"
    # This checkout's commit; TSLA_GIT_COMMIT (settings.git_commit) only where there is none.
    assert re.fullmatch(r"[0-9a-f]{40}", provenance["git_commit"]) and provenance["git_commit"] != "f" * 40


def jobs_of(url: str, experiment_id: str) -> list[Job]:
    with session_scope(url) as session:
        return experiments.experiment_jobs(session, experiment_id)

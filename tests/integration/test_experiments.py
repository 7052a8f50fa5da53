"""Experiments on the production-shaped stack: PostgreSQL, Redis, a uvicorn API and TWO real celery
worker processes (a private FaultStack), with small, fast digits specs.

What only real processes show: a "-pre" job starts after its teacher finished, a failed teacher
fails its dependents with the reason, `max_concurrent` holds while a second worker sits idle,
cells added to a running experiment run once, a cancel stops everything, and another token sees
nothing. Every wait is bounded.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from tsla_service.db import get_engine, session_scope
from tsla_service.tokens import create_token

from ._support import DIVERGED, DIVERGING_SPEC, FaultStack, Service, wait_for

pytestmark = pytest.mark.integration

# About a second of training per job on a warm worker.
BASE: dict[str, Any] = {
    "preset": "digits",
    "model": {"width": 4},
    "batch_size": 256,
    "epochs": 2,
    "device": "cpu",
    "smoothing": {"switch_epoch": 1},
}
TIMEOUT = 300.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    with FaultStack(tmp_path_factory.mktemp("experiments")) as fault_stack:
        for name in ("a", "b"):
            fault_stack.start_worker(name, wait=False)  # both start at once
        for worker in fault_stack.workers:
            fault_stack.wait_ready(worker)
        yield fault_stack


def create(service: Service, body: dict[str, Any]) -> dict[str, Any]:
    response = service.http.post("/experiments", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def wait_experiment(
    service: Service, experiment_id: str, until: Callable[[dict[str, Any]], bool] | None = None
) -> dict[str, Any]:
    """The experiment once `until` holds (default: finished_at is set, i.e. every job ended)."""
    until = until or (lambda found: found["finished_at"] is not None)

    def probe() -> dict[str, Any] | None:
        response = service.http.get(f"/experiments/{experiment_id}")
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found if until(found) else None

    return wait_for(probe, TIMEOUT, f"experiment {experiment_id}", interval=0.5)


def jobs_of(service: Service, experiment: dict[str, Any]) -> list[dict[str, Any]]:
    return [service.job(job["id"]) for job in experiment["jobs"]]


def at(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


def test_pre_cells_start_only_after_their_teacher_succeeded(stack: FaultStack) -> None:
    service = stack.service
    body = {
        "name": "pre",
        "base": BASE,
        "grid": {"smoothing.method": ["lsr-pre", "tsla-pre"]},
        "teacher": {"spec": {**BASE, "smoothing": {"method": "lsr"}}},
        "max_concurrent": 3,  # slots for all three: only the dependency holds the cells back
    }
    created = create(service, body)
    assert [job["role"] for job in created["jobs"]] == ["teacher", "cell", "cell"]
    assert [job["held"] for job in created["jobs"]] == [False, True, True]
    done = wait_experiment(service, created["id"])
    assert done["state"] == "succeeded", done["jobs"]
    teacher, *cells = jobs_of(service, done)
    assert teacher["state"] == "succeeded"
    for cell in cells:
        assert cell["state"] == "succeeded" and cell["teacher_job_id"] == teacher["id"]
        assert at(cell["started_at"]) >= at(teacher["finished_at"]), (cell, teacher)
        learned_from = cell["spec"]["smoothing"]["teacher"]
        assert (learned_from["job"], learned_from["checkpoint"]) == (teacher["id"], "best")
        provenance = cell["provenance"]
        assert provenance["dataset"]["name"] == "digits" and provenance["git_commit"], provenance


def test_a_teacher_that_fails_fails_its_dependents_with_the_reason(stack: FaultStack) -> None:
    service = stack.service
    diverging = {key: value for key, value in DIVERGING_SPEC.items() if key != "name"}
    body = {
        "name": "bad teacher",
        "base": {**diverging, "optim": {"lr": 0.05}, "epochs": 2, "smoothing": {"switch_epoch": 1}},
        "grid": {"smoothing.method": ["lsr-pre", "tsla-pre"]},
        "teacher": {"spec": diverging},  # lr 10: NaN within its first epoch
    }
    created = create(service, body)
    done = wait_experiment(service, created["id"])
    teacher, *cells = jobs_of(service, done)
    assert teacher["state"] == "failed" and re.fullmatch(DIVERGED, teacher["error"]), teacher
    assert done["state"] == "failed"
    for cell in cells:
        assert cell["state"] == "failed" and cell["started_at"] is None, cell
        assert cell["error"] == f"teacher job {teacher['id']} failed: {teacher['error']}"


def test_max_concurrent_holds_while_a_second_worker_is_idle(stack: FaultStack) -> None:
    service = stack.service
    created = create(
        service, {"name": "one at a time", "base": BASE, "grid": {"seed": [0, 1, 2, 3]}, "max_concurrent": 1}
    )
    done = wait_experiment(service, created["id"])
    assert done["state"] == "succeeded", done["jobs"]
    runs = sorted(jobs_of(service, done), key=lambda job: job["started_at"])
    for before, after in itertools.pairwise(runs):
        assert at(after["started_at"]) >= at(before["finished_at"]), (before, after)
    assert [job["id"] for job in runs] == [job["id"] for job in created["jobs"]]  # in send order


def test_seeds_added_to_a_running_experiment_run_only_the_new_cells(stack: FaultStack) -> None:
    service = stack.service
    # Long enough (seconds per job) that the experiment is still running when the cells arrive.
    body = {"name": "growing", "base": {**BASE, "epochs": 15}, "grid": {"seed": [0, 1]}, "max_concurrent": 2}
    created = create(service, body)
    wait_experiment(service, created["id"], until=lambda found: found["counts"]["running"] > 0)
    grown = service.http.post(f"/experiments/{created['id']}/cells", json={"grid": {"seed": [1, 2, 3]}})
    assert grown.status_code == 200, grown.text
    assert sorted(job["cell"]["seed"] for job in grown.json()["added"]) == [2, 3]
    assert {job["id"] for job in grown.json()["existing"]} == {job["id"] for job in created["jobs"]}
    assert any(job["state"] in ("queued", "running") for job in grown.json()["existing"])
    done = wait_experiment(service, created["id"])
    assert done["state"] == "succeeded" and done["cells"] == 4 and done["grid"] == {"seed": [0, 1, 2, 3]}
    runs = jobs_of(service, done)
    assert sorted(job["spec"]["seed"] for job in runs) == [0, 1, 2, 3]
    assert all(job["attempt"] == 1 for job in runs)  # each cell trained once


def test_cancel_stops_running_jobs_and_queued_ones_never_start(stack: FaultStack) -> None:
    service = stack.service
    body = {
        "name": "long",
        "base": {**BASE, "epochs": 200},
        "grid": {"seed": [0, 1, 2, 3]},
        "max_concurrent": 2,
    }
    created = create(service, body)
    wait_experiment(service, created["id"], until=lambda found: found["counts"]["running"] == 2)
    canceled = service.http.post(f"/experiments/{created['id']}/cancel")
    assert canceled.status_code == 200 and canceled.json()["state"] == "canceled", canceled.text
    done = wait_experiment(service, created["id"])
    assert done["counts"]["canceled"] == 4 and done["state"] == "canceled"
    runs = jobs_of(service, done)
    assert sorted(job["started_at"] is None for job in runs) == [False, False, True, True]
    assert all(job["epochs_done"] < 200 for job in runs)
    assert service.http.post(f"/experiments/{created['id']}/cancel").status_code == 409


def test_another_token_sees_none_of_it(stack: FaultStack) -> None:
    service = stack.service
    created = create(service, {"name": "mine", "base": BASE, "grid": {"seed": [0]}, "max_concurrent": 1})
    with session_scope(stack.database_url) as session:
        other = create_token(session, f"other-{secrets.token_hex(4)}")[1]
    get_engine(stack.database_url).dispose()
    headers = {"Authorization": f"Bearer {other}"}
    base = f"/experiments/{created['id']}"
    assert service.http.get(base, headers=headers).status_code == 404
    assert service.http.get(f"{base}/table.csv", headers=headers).status_code == 404
    assert (
        service.http.post(f"{base}/cells", json={"grid": {"seed": [1]}}, headers=headers).status_code == 404
    )
    assert service.http.post(f"{base}/cancel", headers=headers).status_code == 404
    assert service.http.get("/experiments", headers=headers).json()["items"] == []
    assert service.http.get(f"/jobs/{created['jobs'][0]['id']}", headers=headers).status_code == 404
    done = wait_experiment(service, created["id"])
    assert done["state"] == "succeeded"

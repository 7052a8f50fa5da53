"""Experiments through the in-process API (SQLite, a filesystem broker nothing consumes): creation
and its validation, collapsing, teachers, idempotency, isolation, growth, cancel, and the
scheduler's rules driven by hand (a job "finishes" by a database update)."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from api.main import create_app
from tests.api.conftest import Api
from tsla_service import experiments, jobs
from tsla_service.db import session_scope
from tsla_service.migrate import upgrade_to_head
from tsla_service.models import Experiment, Job, utcnow
from tsla_service.reaper import reap_once
from tsla_service.settings import Settings

CAP = 5
BASE = {"preset": "digits", "epochs": 3, "smoothing": {"switch_epoch": 1}}
LSR = {**BASE, "smoothing": {"method": "lsr"}}
SWEEP: dict[str, Any] = {
    "name": "sweep",
    "base": BASE,
    "grid": {
        "smoothing.method": ["baseline", "lsr", "tsla"],
        "smoothing.switch_epoch": [1, 2],
        "seed": [0, 1],
    },
    "max_concurrent": 2,
}


@dataclass
class World:
    api: Api
    settings: Settings
    alice: str

    def post(self, path: str, body: Any = None, token: str | None = None, **headers: str) -> Any:
        auth = self.api.as_token(token or self.alice)
        return self.api.client.post(path, json=body, headers={**auth, **headers})

    def get(self, path: str, token: str | None = None, **params: Any) -> Any:
        return self.api.client.get(path, params=params, headers=self.api.as_token(token or self.alice))

    def create(self, body: Any = SWEEP, **headers: str) -> dict[str, Any]:
        response = self.post("/experiments", body, **headers)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def rows(self, experiment_id: str) -> list[Job]:
        with session_scope(self.api.database_url) as session:
            return experiments.experiment_jobs(session, experiment_id)

    def count(self, table: type[Job] | type[Experiment]) -> int:
        with session_scope(self.api.database_url) as session:
            return int(session.scalar(select(func.count()).select_from(table)) or 0)

    def set_state(self, job_id: str, state: str, error: str | None = None) -> None:
        """A job ends (or starts) as a worker would record it, without the scheduler."""
        values: dict[str, Any] = {"state": state, "error": error}
        values["started_at" if state == "running" else "finished_at"] = utcnow()
        with session_scope(self.api.database_url) as session:
            session.execute(update(Job).where(Job.id == job_id).values(**values))

    def schedule(self, experiment_id: str) -> list[str]:
        with session_scope(self.api.database_url) as session:
            return experiments.schedule(
                session, self.api.client.app.state.queue, self.settings, experiment_id
            )  # type: ignore[attr-defined]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    # A long lease: the app's own reaper runs once at start and then not during a test.
    settings = Settings(  # type: ignore[call-arg]
        home=tmp_path, max_active_jobs_per_token=CAP, max_experiment_cells=20, lease_seconds=7200
    )
    upgrade_to_head(settings.resolved_database_url)
    with TestClient(create_app(settings)) as client:
        api = Api(client, tmp_path, settings.resolved_database_url)
        yield World(api, settings, api.new_token("alice"))


def sent(rows: list[Job]) -> list[Job]:
    return [row for row in rows if row.state == "running" or (row.state == "queued" and not row.held)]


def test_an_experiment_is_its_cells_collapsed_and_sends_max_concurrent(world: World) -> None:
    created = world.create()
    assert created["state"] == "queued" and created["cells"] == 8  # baseline 2 + lsr 2 + tsla 4
    assert created["counts"] == {"queued": 8, "running": 0, "succeeded": 0, "failed": 0, "canceled": 0}
    assert created["objective"] == {"metric": "test/top1", "mode": "max"}
    assert len(created["collapsed"]) == 8  # each baseline/lsr combination dropped switch_epoch
    assert {"cell": {"smoothing.method": "lsr", "smoothing.switch_epoch": 2, "seed": 1},
            "same_as": {"smoothing.method": "lsr", "seed": 1}} in created["collapsed"]  # fmt: skip
    cells = [job["cell"] for job in created["jobs"]]
    assert {"smoothing.method": "baseline", "seed": 0} in cells
    assert {"smoothing.method": "tsla", "smoothing.switch_epoch": 2, "seed": 1} in cells
    assert [job["position"] for job in created["jobs"]] == list(range(8))
    assert [job["held"] for job in created["jobs"]] == [False, False] + [True] * 6  # sent in position order
    rows = world.rows(created["id"])
    assert len({row.cell_key for row in rows}) == 8 and {row.role for row in rows} == {"cell"}
    assert all((row.enqueued_at is not None) == (not row.held) for row in rows)
    assert rows[0].name.startswith("sweep {smoothing.method: ")
    by_cell = {str(row.cell): row for row in rows}
    spec = by_cell[str({"smoothing.method": "tsla", "smoothing.switch_epoch": 2, "seed": 1})].spec
    assert (spec["smoothing"]["method"], spec["smoothing"]["switch_epoch"], spec["seed"], spec["epochs"]) == (
        "tsla", 2, 1, 3,
    )  # fmt: skip
    job = world.get(f"/jobs/{rows[0].id}").json()
    assert job["experiment_id"] == created["id"] and job["provenance"] is None


def test_shuffled_is_the_default_and_grid_order_keeps_the_product(world: World) -> None:
    body = {**SWEEP, "grid": {"seed": list(range(10))}}
    shuffled = world.create(body)
    in_grid = world.create({**body, "order": "grid"})
    assert [job["cell"]["seed"] for job in in_grid["jobs"]] == list(range(10))
    seeds = [job["cell"]["seed"] for job in shuffled["jobs"]]
    assert sorted(seeds) == list(range(10)) and seeds != list(range(10))
    again = experiments.send_order("shuffled", shuffled["id"], list(range(10)))  # type: ignore[arg-type]
    assert again == experiments.send_order("shuffled", shuffled["id"], list(range(10)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"grid": {"optim.lrr": [0.1]}}, "grid: optim.lrr is not a spec key"),
        ({"grid": {"seed": []}}, "grid.seed: must be a non-empty list of values"),
        ({"grid": {"seed": 1}}, "grid.seed: Input should be a valid list"),
        ({"grid": {"preset": ["digits"]}}, "`preset` is not a grid key"),
        ({"grid": {"seed": list(range(21))}}, "grid: 21 cells (21) are more than the 20 this server allows"),
        ({"grid": {"seed": list(range(5)), "optim.lr": [0.1] * 5}}, "grid: 25 cells (5 × 5)"),
        ({"grid": {"smoothing.method": ["tsla"], "smoothing.switch_epoch": [40], "seed": [0]}},
         "cell {smoothing.method: tsla, smoothing.switch_epoch: 40, seed: 0}: spec: Value error, "
         "smoothing.switch_epoch (40) must be smaller than epochs (3)"),
        ({"grid": {"seed": [0, "one"]}}, 'cell {seed: one}: seed: Input should be a valid integer'),
        ({"grid": {"optim.lr": ["0.1"]}}, 'cell {optim.lr: "0.1"}: optim.lr: Input should be a valid number'),
        ({"grid": {"smoothing.method": ["lsr-pre"]}}, "method 'lsr-pre' needs a teacher"),
        ({"base": {"preset": "nope"}}, "preset: unknown preset 'nope'"),
        ({"base": {**BASE, "smoothing": {"teacher": {"job": "x"}}}}, "base.smoothing.teacher"),
        ({"max_concurrent": CAP + 1}, f"max_concurrent: {CAP + 1} must be from 1 to {CAP}"),
        ({"max_concurrent": 0}, "max_concurrent: Input should be greater than or equal to 1"),
        ({"objective": {"metric": "test/nope"}}, "objective.metric: 'test/nope' is not a metric"),
        ({"order": "random"}, "order: Input should be 'shuffled' or 'grid'"),
        ({"teacher": {}}, "teacher: Value error, give exactly one of job, cell or spec"),
        ({"teacher": {"job": "a", "spec": {}}}, "give exactly one of job, cell or spec"),
        ({"teacher": {"job": "nosuchjob"}, "grid": {"smoothing.method": ["lsr-pre"]}},
         "smoothing.teacher.job: job nosuchjob does not exist"),
        ({"teacher": {"job": "nosuchjob"}}, "job nosuchjob does not exist"),  # checked though no cell uses it
        ({"teacher": {"cell": {"smoothing.method": "tsla", "smoothing.switch_epoch": 9}}},
         "teacher.cell: {smoothing.method: tsla, smoothing.switch_epoch: 9} is not a cell of the grid"),
        ({"teacher": {"cell": {"smoothing.method": "tsla", "smoothing.switch_epoch": 2, "seed": 5}}},
         "is not a cell of the grid"),
        ({"teacher": {"cell": {"smoothing.method": "lsr-pre"}}, "grid": {"smoothing.method": ["lsr-pre"]}},
         "teacher.cell: {smoothing.method: lsr-pre} learns from a teacher itself"),
        ({"teacher": {"spec": {**BASE, "smoothing": {"method": "lsr-pre", "teacher": {"job": "x"}}}}},
         "teacher.spec: a teacher cannot learn from a teacher itself"),
        ({"teacher": {"spec": {**BASE, "epochs": 0}}}, "teacher.spec: epochs: Input should be greater"),
        ({"teacher": {"spec": {**LSR, "seed": 0}}, "grid": {"seed": [0, 1]}, "base": LSR},
         "teacher.spec: is the same run as cell {seed: 0}"),
        ({"base": {**BASE, "data": {"name": "cifar100"}}}, "data.name: dataset 'cifar100' is not installed"),
        ({"name": " padded"}, "name: Value error, must not start or end with whitespace"),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_bad_input_is_a_422_naming_the_problem_and_stores_nothing(
    world: World, change: dict[str, Any], detail: str
) -> None:
    response = world.post("/experiments", {**SWEEP, **change})
    assert response.status_code == 422, response.text
    assert detail in response.json()["detail"]
    assert "\n" not in response.json()["detail"]
    assert world.count(Experiment) == 0 and world.count(Job) == 0


def test_a_huge_product_is_refused_before_it_is_expanded(world: World) -> None:
    keys = ["seed", "epochs", "batch_size", "optim.lr", "optim.momentum", "smoothing.theta", "model.width"]
    response = world.post("/experiments", {**SWEEP, "grid": {key: list(range(1, 41)) for key in keys}})
    assert response.status_code == 422 and f"grid: {40**7} cells" in response.json()["detail"]


def test_idempotency_key_replays_the_first_response_and_refuses_another_body(world: World) -> None:
    first = world.post("/experiments", SWEEP, **{"Idempotency-Key": "e-1"})
    assert first.status_code == 201
    again = world.post("/experiments", SWEEP, **{"Idempotency-Key": "e-1"})
    assert (again.status_code, again.json()) == (201, first.json())
    other = world.post("/experiments", {**SWEEP, "max_concurrent": 1}, **{"Idempotency-Key": "e-1"})
    assert other.status_code == 409 and "different request body" in other.json()["detail"]
    reordered = {**SWEEP, "grid": dict(reversed(list(SWEEP["grid"].items())))}  # another product order
    assert world.post("/experiments", reordered, **{"Idempotency-Key": "e-1"}).status_code == 409
    assert world.count(Experiment) == 1 and world.count(Job) == 8
    bob = world.api.new_token("bob")
    assert world.post("/experiments", SWEEP, token=bob, **{"Idempotency-Key": "e-1"}).status_code == 201
    assert world.create()["id"] != first.json()["id"]  # no key: a new experiment
    assert world.count(Experiment) == 3


def test_another_tokens_experiment_is_a_404_everywhere(world: World) -> None:
    created = world.create()
    bob = world.api.new_token("bob")
    for path in (f"/experiments/{created['id']}", f"/experiments/{created['id']}/table.csv"):
        assert world.get(path, token=bob).status_code == 404, path
        assert world.get(path).status_code == 200, path
    for path, body in ((f"/experiments/{created['id']}/cells", {"grid": {"seed": [5]}}),
                       (f"/experiments/{created['id']}/cancel", None)):  # fmt: skip
        missing = world.post(path, body, token=bob)
        assert (
            missing.status_code == 404 and missing.json()["detail"] == f"experiment {created['id']} not found"
        )
    assert world.get("/experiments", token=bob).json() == {"items": [], "next_cursor": None}
    assert world.get("/experiments", token=bob, cursor=created["id"]).status_code == 422
    assert world.get(f"/jobs/{created['jobs'][0]['id']}", token=bob).status_code == 404
    assert world.count(Job) == 8 and world.get(f"/experiments/{created['id']}").json()["canceled"] is False


def test_experiments_are_listed_newest_first_in_pages(world: World) -> None:
    ids = [world.create({**SWEEP, "name": f"e{i}", "grid": {"seed": [i]}})["id"] for i in range(5)]
    first = world.get("/experiments", limit=2).json()
    assert [item["id"] for item in first["items"]] == ids[::-1][:2]
    assert first["items"][0]["counts"]["queued"] == 1 and first["items"][0]["state"] == "queued"
    rest = world.get("/experiments", limit=10, cursor=first["next_cursor"]).json()
    assert [item["id"] for item in rest["items"]] == ids[::-1][2:] and rest["next_cursor"] is None


def test_get_shows_jobs_and_the_results_table(world: World) -> None:
    created = world.create()
    found = world.get(f"/experiments/{created['id']}", target=0.5, early_epochs=2)
    assert found.status_code == 200, found.text
    body = found.json()
    assert [job["id"] for job in body["jobs"]] == [job["id"] for job in created["jobs"]]
    assert isinstance(body["table"], list) and body["table"]
    assert {row["group"]["smoothing.method"] for row in body["table"]} == {"baseline", "lsr", "tsla"}
    assert world.get(f"/experiments/{created['id']}", bogus=1).status_code == 422


def test_adding_seeds_adds_only_the_missing_cells(world: World) -> None:
    created = world.create()
    grown = world.post(f"/experiments/{created['id']}/cells", {"grid": {"seed": [1, 2]}})
    assert grown.status_code == 200, grown.text
    added, existing = grown.json()["added"], grown.json()["existing"]
    assert sorted(str(job["cell"]) for job in added) == sorted(
        str(cell) for cell in (
            {"smoothing.method": "baseline", "seed": 2}, {"smoothing.method": "lsr", "seed": 2},
            {"smoothing.method": "tsla", "smoothing.switch_epoch": 1, "seed": 2},
            {"smoothing.method": "tsla", "smoothing.switch_epoch": 2, "seed": 2},
        )
    )  # fmt: skip
    assert {job["id"] for job in existing} == {job["id"] for job in created["jobs"]}
    assert sorted(job["position"] for job in added) == [8, 9, 10, 11] and all(job["held"] for job in added)
    again = world.post(f"/experiments/{created['id']}/cells", {"grid": {"seed": [0, 2]}}).json()
    assert again["added"] == [] and len(again["existing"]) == 12
    rows = world.rows(created["id"])
    assert len(rows) == 12 and len({row.cell_key for row in rows}) == 12
    detail = world.get(f"/experiments/{created['id']}").json()
    assert detail["grid"]["seed"] == [0, 1, 2] and detail["cells"] == 12


def test_a_value_that_collapses_is_never_run_twice(world: World) -> None:
    body = {**SWEEP, "grid": {"smoothing.method": ["baseline", "tsla"], "smoothing.switch_epoch": [1]}}
    created = world.create(body)
    grown = world.post(
        f"/experiments/{created['id']}/cells", {"grid": {"smoothing.switch_epoch": [2]}}
    ).json()
    assert [job["cell"] for job in grown["added"]] == [
        {"smoothing.method": "tsla", "smoothing.switch_epoch": 2}
    ]
    assert [job["cell"] for job in grown["existing"]] == [
        {"smoothing.method": "baseline"}, {"smoothing.method": "tsla", "smoothing.switch_epoch": 1},
    ]  # fmt: skip
    assert {"cell": {"smoothing.method": "baseline", "smoothing.switch_epoch": 2},
            "same_as": {"smoothing.method": "baseline"}} in grown["collapsed"]  # fmt: skip
    assert len(world.rows(created["id"])) == 3


def test_growth_takes_existing_keys_only_and_refuses_bad_input(world: World) -> None:
    created = world.create()
    path = f"/experiments/{created['id']}/cells"
    for body, detail in (
        ({"grid": {"smoothing.theta": [0.3]}}, "smoothing.theta is not a key of this experiment's grid"),
        ({"grid": {"seed": []}}, "grid.seed: must be a non-empty list"),
        ({"grid": {"seed": list(range(2, 5))}}, "grid: 30 cells (3 × 2 × 5) are more than the 20"),
        (
            {"grid": {"smoothing.switch_epoch": [3]}},
            "smoothing.switch_epoch (3) must be smaller than epochs (3)",
        ),
        ({"seed": [3]}, "grid: Field required"),
    ):
        response = world.post(path, body)
        assert response.status_code == 422 and detail in response.json()["detail"], response.text
    assert len(world.rows(created["id"])) == 8


def test_cancel_ends_every_unfinished_job_and_then_refuses_growth(world: World) -> None:
    created = world.create()
    running = created["jobs"][0]["id"]
    world.set_state(running, "running")
    canceled = world.post(f"/experiments/{created['id']}/cancel")
    assert canceled.status_code == 200, canceled.text
    body = canceled.json()
    assert body["state"] == "canceled" and body["canceled"] is True
    assert body["counts"] == {"queued": 0, "running": 1, "succeeded": 0, "failed": 0, "canceled": 7}
    rows = {row.id: row for row in world.rows(created["id"])}
    assert rows[running].cancel_requested and rows[running].state == "running"  # stops at its next step
    assert body["finished_at"] is None
    grown = world.post(f"/experiments/{created['id']}/cells", {"grid": {"seed": [7]}})
    assert grown.status_code == 409 and "is canceled" in grown.json()["detail"]
    again = world.post(f"/experiments/{created['id']}/cancel")
    assert again.status_code == 409 and "already canceled" in again.json()["detail"]
    world.set_state(running, "canceled")
    world.schedule(created["id"])
    assert world.get(f"/experiments/{created['id']}").json()["finished_at"] is not None


def test_held_jobs_are_released_as_others_finish_teachers_first(world: World) -> None:
    body = {**SWEEP, "teacher": {"spec": {**LSR, "seed": 9}}, "max_concurrent": 1,
            "grid": {"smoothing.method": ["lsr", "tsla-pre"], "seed": [0, 1]}}  # fmt: skip
    created = world.create(body)
    teacher = created["jobs"][0]
    assert (teacher["role"], teacher["cell"], teacher["held"]) == ("teacher", None, False)
    assert created["teacher_job_id"] == teacher["id"] and created["cells"] == 4
    assert all(job["held"] for job in created["jobs"][1:])
    rows = world.rows(created["id"])
    pre = [row for row in rows if row.method == "tsla-pre"]
    assert {row.teacher_job_id for row in pre} == {teacher["id"]}
    assert {row.spec["smoothing"]["teacher"]["job"] for row in pre} == {teacher["id"]}

    world.set_state(teacher["id"], "running")
    assert world.schedule(created["id"]) == []  # one at a time
    world.set_state(teacher["id"], "succeeded")
    order = []
    for _ in range(4):
        released = world.schedule(created["id"])
        assert len(released) == 1
        order.append(released[0])
        world.set_state(released[0], "succeeded")
    assert order == [job["id"] for job in created["jobs"][1:]]  # position order, dependents included
    world.schedule(created["id"])
    done = world.get(f"/experiments/{created['id']}").json()
    assert done["state"] == "succeeded" and done["finished_at"] is not None


@pytest.mark.parametrize(
    ("teacher_state", "error", "reason"),
    [("failed", "diverged: train/loss is NaN at epoch 0", "failed: diverged: train/loss is NaN at epoch 0"),
     ("canceled", "canceled by request", "was canceled")],
)  # fmt: skip
def test_dependents_of_a_teacher_that_did_not_succeed_fail_with_the_reason(
    world: World, teacher_state: str, error: str, reason: str
) -> None:
    body = {**SWEEP, "grid": {"smoothing.method": ["lsr", "lsr-pre", "tsla-pre"]}, "max_concurrent": 3,
            "teacher": {"cell": {"smoothing.method": "lsr"}}}  # fmt: skip
    created = world.create(body)
    teacher = created["jobs"][0]
    assert teacher["cell"] == {"smoothing.method": "lsr"} and teacher["role"] == "cell"
    assert [job["held"] for job in created["jobs"]] == [False, True, True]  # slots free, but no teacher yet
    world.set_state(teacher["id"], teacher_state, error)
    assert world.schedule(created["id"]) == []
    after = world.get(f"/experiments/{created['id']}").json()
    assert after["state"] == "failed" and after["finished_at"] is not None
    for job in after["jobs"][1:]:
        assert (job["state"], job["error"]) == ("failed", f"teacher job {teacher['id']} {reason}")


def test_a_teacher_job_must_be_a_succeeded_job_of_the_caller(world: World) -> None:
    outside = world.post("/jobs", BASE).json()["id"]
    body = {**SWEEP, "grid": {"smoothing.method": ["lsr-pre", "tsla-pre"]}, "teacher": {"job": outside}}
    unfinished = world.post("/experiments", body)
    assert (
        unfinished.status_code == 422
        and "is queued; only a succeeded job can teach" in unfinished.json()["detail"]
    )
    world.set_state(outside, "succeeded")
    bob = world.api.new_token("bob")
    assert "does not exist" in world.post("/experiments", body, token=bob).json()["detail"]
    created = world.create(body)
    assert created["teacher_job_id"] == outside
    assert [job["held"] for job in created["jobs"]] == [False, False]  # a finished teacher holds nothing back


def test_held_jobs_count_for_post_jobs_but_releases_respect_the_cap(world: World) -> None:
    for _ in range(3):
        assert world.post("/jobs", BASE).status_code == 201
    created = world.create({**SWEEP, "max_concurrent": 4})
    assert sum(not job["held"] for job in created["jobs"]) == CAP - 3  # 3 plain jobs + 2 sent = the cap
    refused = world.post("/jobs", BASE)
    assert refused.status_code == 429 and "the limit is 5" in refused.json()["detail"]
    with session_scope(world.api.database_url) as session:
        assert set(jobs.unsent_job_ids(session)).isdisjoint(
            row.id for row in world.rows(created["id"]) if row.held
        )


def test_the_reaper_schedules_experiments_with_held_jobs(world: World) -> None:
    created = world.create({**SWEEP, "max_concurrent": 1})
    first = created["jobs"][0]["id"]
    world.set_state(first, "succeeded")  # as if its worker was lost right after recording the end
    reap_once(world.settings, world.api.client.app.state.queue)  # type: ignore[attr-defined]
    rows = world.rows(created["id"])
    assert [row.id for row in sent(rows)] == [rows[1].id] and rows[1].enqueued_at is not None
    for row in rows[1:]:
        world.set_state(row.id, "failed", "boom")
    reap_once(world.settings, world.api.client.app.state.queue)  # type: ignore[attr-defined]
    done = world.get(f"/experiments/{created['id']}").json()
    assert done["state"] == "failed" and done["finished_at"] is not None


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/experiments", {**SWEEP, "grid": {"smoothing.méthod": ["lsr"]}}, 422),
        ("POST", "/experiments", {**SWEEP, "grid": {"seed\u202e": [0]}}, 422),
        ("POST", "/experiments", {**SWEEP, "grid": {"seed": {"0": 1}}}, 422),
        ("POST", "/experiments", {**SWEEP, "grid": {"seed": [[[[0]]]]}}, 422),
        ("POST", "/experiments", {**SWEEP, "grid": {"seed": [2**63]}}, 422),
        ("POST", "/experiments", {**SWEEP, "grid": {f"k{i}": [0] for i in range(65)}}, 422),
        ("POST", "/experiments", {**SWEEP, "name": "a\u200bb"}, 422),  # a zero-width space is not printable
        ("POST", "/experiments", {**SWEEP, "name": "x" * 201}, 422),
        ("POST", "/experiments", {**SWEEP, "teacher": {"job": "j" * 65}}, 422),
        ("POST", "/experiments", {**SWEEP, "teacher": {"cell": [1]}}, 422),
        ("POST", "/experiments", {**SWEEP, "max_concurrent": "2"}, 422),
        ("POST", "/experiments", {**SWEEP, "max_concurrent": True}, 422),
        ("POST", "/experiments", [SWEEP], 422),
        ("GET", "/experiments/" + "e" * 65, None, 422),
        ("GET", "/experiments?cursor=" + "c" * 65, None, 422),
        ("GET", "/experiments?limit=0", None, 422),
        ("GET", "/experiments?limit=%D9%A3", None, 422),
    ],
)  # fmt: skip
def test_hostile_input_is_a_clear_4xx_that_stores_nothing(
    world: World, method: str, path: str, body: Any, status: int
) -> None:
    auth = world.api.as_token(world.alice)
    response = world.api.client.request(method, path, json=body, headers=auth)
    assert response.status_code == status, response.text
    assert response.json()["detail"] and "\n" not in response.json()["detail"]
    assert world.count(Experiment) == 0 and world.count(Job) == 0

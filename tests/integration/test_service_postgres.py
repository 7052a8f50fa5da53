"""The job service end to end on its production shape: PostgreSQL, Redis, a real celery worker
process and a real uvicorn API process (see conftest.py). The tests run in file order and share
the one worker, so each waits (bounded) for what it started.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tsla_cli.client import TslaClient

from ._support import (
    DIVERGING_SPEC,
    MAIN_EPOCHS,
    MAIN_SWITCH,
    Service,
    check_diverged_job,
    check_download,
    check_metric_rows,
    selected_test_top1,
    sha256_bytes,
    wait_for,
)

pytestmark = pytest.mark.integration

UNKNOWN_JOB = "0" * 32


def test_main_job_metrics_checkpoints_and_download(
    pg_stack: Service, main_job: dict[str, Any], tmp_path: Path
) -> None:
    job_id = main_job["id"]
    assert main_job["method"] == "tsla" and main_job["dataset"] == "digits"
    assert main_job["epochs"] == MAIN_EPOCHS and main_job["attempt"] == 0
    assert main_job["spec"]["smoothing"]["switch_epoch"] == MAIN_SWITCH

    # Page through the metrics with a small limit while the job runs, and after it finished.
    rows, pages, early = pg_stack.page_metrics(job_id, limit=7, timeout=300)
    job = pg_stack.job(job_id)
    assert job["state"] == "succeeded", job
    assert early > 0, "no metric rows were readable while the job was running"
    by_epoch = check_metric_rows(rows, MAIN_EPOCHS, MAIN_SWITCH)
    assert pages >= len(rows) // 7 + 1
    assert {row["attempt"] for row in rows} == {1}
    assert job["epochs_done"] == MAIN_EPOCHS and job["attempt"] == 1 and job["error"] is None
    assert job["started_at"] and job["finished_at"] and not job["cancel_requested"]
    # Selection looks at the validation split; the job reports test top-1 at the selected epoch.
    assert job["best_top1"] == pytest.approx(selected_test_top1(by_epoch))

    # A finished job's rows, re-read from the start, are the same rows; so does the client's cursor.
    again = pg_stack.http.get(f"/jobs/{job_id}/metrics", params={"limit": 1000}).json()
    assert again["items"] == rows and not again["has_more"]
    with TslaClient(pg_stack.base_url, pg_stack.token) as client:
        assert list(client.iter_metrics(job_id)) == rows
    only_top1 = pg_stack.http.get(f"/jobs/{job_id}/metrics", params={"name": "top1", "limit": 3}).json()
    assert len(only_top1["items"]) == 3 and only_top1["has_more"]
    assert all(row["name"] == "top1" for row in only_top1["items"])

    # Checkpoints: the list, best and latest.
    listing = pg_stack.http.get(f"/jobs/{job_id}/checkpoints")
    assert listing.status_code == 200, listing.text
    found = listing.json()
    items = found["items"]
    assert items and all(not item["partial"] for item in items)
    by_id = {item["id"]: item for item in items}
    best, latest = by_id[found["best_id"]], by_id[found["latest_id"]]
    assert latest["epoch"] == MAIN_EPOCHS - 1
    assert best["metrics"]["val/top1"] == max(item["metrics"]["val/top1"] for item in items)
    assert best["metrics"]["test/top1"] == pytest.approx(by_epoch[best["epoch"]]["test/top1"]["value"])

    # Download `best` whole and in ranges; then by id, and with the client (resumable, verified).
    body = check_download(pg_stack, job_id, "best", best["size"], best["sha256"])
    by_ref = pg_stack.http.get(f"/jobs/{job_id}/checkpoints/{best['id']}")
    assert by_ref.status_code == 200 and by_ref.content == body
    path = tmp_path / "best.pt"
    with TslaClient(pg_stack.base_url, pg_stack.token) as client:
        assert client.download(job_id, "best", path) == best["sha256"]
    assert path.read_bytes() == body and sha256_bytes(path.read_bytes()) == best["sha256"]

    # The downloaded weights reproduce the test accuracy the service reported for them.
    from tsla_core import evaluate_checkpoint

    reproduced = evaluate_checkpoint(path, Path("data"), sha256=best["sha256"])
    assert reproduced["test/top1"] == pytest.approx(best["metrics"]["test/top1"], abs=0.6)
    assert reproduced["test/loss"] == pytest.approx(best["metrics"]["test/loss"], rel=0.05, abs=0.01)


def assert_rejected(service: Service, body: Any, *fragments: str) -> str:
    """POST /jobs answers 4xx with a one-line `detail` naming the problem, and stores no job."""
    before = len(service.all_jobs())
    response = service.http.post("/jobs", json=body)
    assert 400 <= response.status_code < 500, response.text
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail.strip(), response.text
    for fragment in fragments:
        assert fragment in detail, f"{fragment!r} not in {detail!r}"
    assert len(service.all_jobs()) == before, "a rejected spec created a job"
    return detail


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        pytest.param({"preset": "digits", "epochs": "ten"}, ("epochs", "integer"), id="wrong-type"),
        pytest.param({"preset": "digits", "colour": "red"}, ("colour", "not permitted"), id="unknown-field"),
        pytest.param(
            {"preset": "digits", "optim": {"lrate": 1}}, ("optim.lrate", "not permitted"), id="unknown-nested"
        ),
        pytest.param({"preset": "digits", "data": {"name": "mnist"}}, ("data.name",), id="unknown-dataset"),
        pytest.param(
            {"preset": "digits", "data": {"name": "cifar100"}},
            ("data.name", "cifar100", "not installed"),
            id="dataset-not-installed",
        ),
        pytest.param(
            {"preset": "cifar100-resnet18"}, ("cifar100", "not installed"), id="preset-not-installed"
        ),
        pytest.param({"preset": "digits", "epochs": -3}, ("epochs",), id="negative-epochs"),
        pytest.param({"preset": "nope"}, ("preset", "nope"), id="unknown-preset"),
        pytest.param(
            {"preset": "digits", "epochs": 4, "smoothing": {"method": "tsla", "switch_epoch": 4}},
            ("switch_epoch",),
            id="switch-after-end",
        ),
        pytest.param(
            {
                "preset": "digits",
                "epochs": 3,
                "smoothing": {"method": "tsla-pre", "switch_epoch": 2, "teacher": {"path": "/etc/passwd"}},
            },
            ("smoothing.teacher.path",),
            id="teacher-path",
        ),
        pytest.param(
            {
                "preset": "digits",
                "epochs": 3,
                "smoothing": {"method": "tsla-pre", "switch_epoch": 2, "teacher": {"job": UNKNOWN_JOB}},
            },
            ("smoothing.teacher.job", "does not exist"),
            id="teacher-unknown",
        ),
        pytest.param([1, 2], (), id="not-an-object"),
    ],
)
def test_bad_specs_are_refused_without_a_job(
    pg_stack: Service, body: Any, fragments: tuple[str, ...]
) -> None:
    assert_rejected(pg_stack, body, *fragments)


def test_unfinished_teacher_is_refused(pg_stack: Service) -> None:
    # The worker is busy or about to be: this job is queued or running, never finished yet.
    # On the CPU and long: whatever the worker does meanwhile, it cannot have finished.
    pending = pg_stack.submit({"preset": "digits", "epochs": 50, "name": "pending-teacher", "device": "cpu"})
    try:
        spec = {
            "preset": "digits",
            "epochs": 3,
            "smoothing": {"method": "tsla-pre", "switch_epoch": 2, "teacher": {"job": pending["id"]}},
        }
        detail = assert_rejected(pg_stack, spec, "smoothing.teacher.job", "only a succeeded job can teach")
        assert pending["id"] in detail
    finally:
        response = pg_stack.cancel(pending["id"])
        assert response.status_code == 200, response.text


def test_unknown_job_is_404(pg_stack: Service) -> None:
    http = pg_stack.http
    for response in (
        http.get(f"/jobs/{UNKNOWN_JOB}"),
        http.get(f"/jobs/{UNKNOWN_JOB}/metrics"),
        http.get(f"/jobs/{UNKNOWN_JOB}/logs"),
        http.get(f"/jobs/{UNKNOWN_JOB}/checkpoints"),
        http.get(f"/jobs/{UNKNOWN_JOB}/checkpoints/best"),
        http.post(f"/jobs/{UNKNOWN_JOB}/cancel"),
    ):
        assert response.status_code == 404, (response.request.url, response.text)
        assert UNKNOWN_JOB in response.json()["detail"]


def test_succeeded_job_teaches(pg_stack: Service, succeeded_job: dict[str, Any]) -> None:
    spec = {
        "preset": "digits",
        "epochs": 3,
        "name": "tsla-pre-digits",
        "smoothing": {"method": "tsla-pre", "switch_epoch": 2, "teacher": {"job": succeeded_job["id"]}},
    }
    job = pg_stack.submit(spec)
    assert job["teacher_job_id"] == succeeded_job["id"] and job["method"] == "tsla-pre"
    final = pg_stack.wait_job(job["id"], timeout=300)
    assert final["state"] == "succeeded", final
    rows = pg_stack.http.get(f"/jobs/{job['id']}/metrics", params={"limit": 1000}).json()["items"]
    check_metric_rows(rows, epochs=3, switch_epoch=2)


def _queue_drained(service: Service) -> bool:
    """Every message on the test's queue was delivered and acknowledged."""
    broker = service.broker
    assert broker is not None and service.queue is not None
    waiting = sum(broker.llen(key) for key in broker.keys(f"{service.queue}*") if broker.type(key) == b"list")
    return waiting == 0 and broker.hlen("unacked") == 0


def first_metric_row(service: Service, job_id: str) -> dict[str, Any] | None:
    rows = service.http.get(f"/jobs/{job_id}/metrics", params={"limit": 1}).json()["items"]
    return rows[0] if rows else None


def test_cancel_queued_running_and_finished(pg_stack: Service, succeeded_job: dict[str, Any]) -> None:
    # A long job on the CPU occupies the single worker; the job behind it is queued and canceled
    # at once.
    long = pg_stack.submit({"preset": "digits", "epochs": 30, "name": "long", "device": "cpu"})
    queued = pg_stack.submit({"preset": "digits", "epochs": 8, "name": "never-runs"})
    response = pg_stack.cancel(queued["id"])
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "canceled" and response.json()["cancel_requested"]

    # Once its first metric rows are in (so a complete checkpoint exists), it is canceled mid-run.
    wait_for(lambda: first_metric_row(pg_stack, long["id"]), 240, "the long job's first metric row")
    response = pg_stack.cancel(long["id"])
    assert response.status_code == 200, response.text
    assert response.json()["cancel_requested"] and response.json()["state"] in ("running", "canceled")
    canceled = pg_stack.wait_job(long["id"], timeout=90)
    assert canceled["state"] == "canceled", canceled
    assert canceled["attempt"] == 1 and 1 <= canceled["epochs_done"] < 30 and canceled["finished_at"]
    listing = pg_stack.http.get(f"/jobs/{long['id']}/checkpoints").json()
    partial = [item for item in listing["items"] if item["partial"]]
    assert len(partial) == 1, listing
    assert partial[0]["epoch"] == canceled["epochs_done"] and partial[0]["name"].endswith("-partial")
    assert listing["latest_id"] == partial[0]["id"]
    assert listing["best_id"] is not None and listing["best_id"] != partial[0]["id"]
    check_download(pg_stack, long["id"], str(partial[0]["id"]), partial[0]["size"], partial[0]["sha256"])

    # The canceled queued job's message reached the worker, which refused to start it.
    wait_for(lambda: _queue_drained(pg_stack), 60, "the worker to drain the queue", interval=0.3)
    never = pg_stack.job(queued["id"])
    assert never["state"] == "canceled" and never["attempt"] == 0, never
    assert never["started_at"] is None and never["epochs_done"] == 0
    assert pg_stack.http.get(f"/jobs/{queued['id']}/logs").json()["items"] == []
    assert pg_stack.http.get(f"/jobs/{queued['id']}/metrics").json()["items"] == []
    assert pg_stack.http.get(f"/jobs/{queued['id']}/checkpoints").json()["items"] == []

    # A finished job (succeeded or canceled) cannot be canceled.
    for job_id, state in (
        (succeeded_job["id"], "succeeded"),
        (long["id"], "canceled"),
        (queued["id"], "canceled"),
    ):
        response = pg_stack.cancel(job_id)
        assert response.status_code == 409, response.text
        assert state in response.json()["detail"]
        assert pg_stack.job(job_id)["state"] == state


def canceled_jobs(service: Service, count: int) -> list[str]:
    """`count` jobs of this test's own, canceled (queued ones at once, a running one at its next step)."""
    spec = {"preset": "digits", "epochs": 20, "device": "cpu"}  # cannot finish before its cancel
    ids = [service.submit({**spec, "name": f"canceled-{n}"})["id"] for n in range(count)]
    for job_id in ids:
        assert service.cancel(job_id).status_code == 200
    for job_id in ids:
        assert service.wait_job(job_id, timeout=90)["state"] == "canceled"
    return ids


def test_listing_logs_and_meta(pg_stack: Service, succeeded_job: dict[str, Any]) -> None:
    http = pg_stack.http
    mine = canceled_jobs(pg_stack, 2)
    everything = pg_stack.all_jobs()
    assert len(everything) >= 3
    created = [datetime.fromisoformat(job["created_at"]) for job in everything]
    assert created == sorted(created, reverse=True), "GET /jobs is newest first"

    # limit=1 pages follow next_cursor through every job exactly once, in the same order.
    paged: list[str] = []
    cursor: str | None = None
    for _ in range(len(everything) + 2):
        params: dict[str, Any] = {"limit": 1} | ({"cursor": cursor} if cursor else {})
        page = http.get("/jobs", params=params).json()
        assert len(page["items"]) <= 1
        paged += [job["id"] for job in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == [job["id"] for job in everything]

    # The state filter, also paged.
    succeeded = pg_stack.all_jobs(state="succeeded")
    assert succeeded_job["id"] in {job["id"] for job in succeeded}
    assert all(job["state"] == "succeeded" for job in succeeded)
    canceled_ids = [job["id"] for job in everything if job["state"] == "canceled"]
    assert set(mine) <= set(canceled_ids)
    paged, cursor = [], None
    for _ in range(len(canceled_ids) + 2):
        params = {"limit": 1, "state": "canceled"} | ({"cursor": cursor} if cursor else {})
        page = http.get("/jobs", params=params).json()
        paged += [job["id"] for job in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == canceled_ids
    bad_state = http.get("/jobs", params={"state": "sleeping"})
    assert bad_state.status_code == 422 and "state" in bad_state.json()["detail"]

    # Logs of the main job.
    logs = http.get(f"/jobs/{succeeded_job['id']}/logs")
    assert logs.status_code == 200, logs.text
    messages = [line["message"] for line in logs.json()["items"]]
    assert messages and any("attempt 1 started" in m for m in messages), messages
    assert any("ended: succeeded" in m for m in messages), messages


def test_presets_datasets_and_docs(pg_stack: Service) -> None:
    """What the server offers, and its documentation."""
    http = pg_stack.http
    presets = http.get("/presets").json()
    assert "digits" in presets and presets["digits"]["data"]["name"] == "digits"
    datasets = {d["name"]: d for d in http.get("/datasets").json()}
    assert datasets["digits"]["available"] and datasets["digits"]["problem"] is None
    assert not datasets["cifar100"]["available"] and "cifar-100-python" in datasets["cifar100"]["problem"]
    docs = http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = http.get("/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in ("/jobs", "/jobs/{job_id}", "/jobs/{job_id}/metrics", "/jobs/{job_id}/checkpoints/{ref}"):
        assert path in paths, sorted(paths)
    assert http.get("/healthz").json() == {"status": "ok"}


def test_a_diverging_job_fails_with_the_reason_and_valid_json(pg_stack: Service) -> None:
    """NaN on PostgreSQL: stored as NULL + `nonfinite`, never a bare NaN in a page or an event."""
    job = pg_stack.submit(DIVERGING_SPEC)
    check_diverged_job(pg_stack, job["id"])

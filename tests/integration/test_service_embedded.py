"""The main flow on the embedded stack: `python -m tsla_cli serve` as one process (its own
session), which migrates a SQLite database, starts a real worker process on the filesystem
broker and serves the API. No PostgreSQL or Redis involved."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tsla_cli.client import TslaClient

from ._support import (
    DIVERGING_SPEC,
    MAIN_EPOCHS,
    MAIN_SPEC,
    MAIN_SWITCH,
    Service,
    check_diverged_job,
    check_download,
    check_metric_rows,
    embedded_stack,
    selected_test_top1,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with embedded_stack(tmp_path_factory.mktemp("embedded")) as service:
        yield service


def test_embedded_main_flow(embedded: Service, tmp_path: Path) -> None:
    home = embedded.home
    # The embedded defaults: SQLite database, filesystem broker, worker output, all under --home.
    assert (home / "tsla.db").is_file()
    assert (home / "broker").is_dir()
    assert (home / "logs" / "worker.out").is_file()

    unauthenticated = embedded.http.get("/jobs", headers={"Authorization": ""})
    assert unauthenticated.status_code == 401

    job = embedded.submit(dict(MAIN_SPEC, name="embedded-main"))
    rows, _pages, early = embedded.page_metrics(job["id"], limit=7, timeout=300)
    final = embedded.job(job["id"])
    assert final["state"] == "succeeded", final
    assert early > 0, "no metric rows were readable while the job was running"
    by_epoch = check_metric_rows(rows, MAIN_EPOCHS, MAIN_SWITCH)
    assert final["epochs_done"] == MAIN_EPOCHS and final["attempt"] == 1
    assert final["best_top1"] == pytest.approx(selected_test_top1(by_epoch))
    assert [j["id"] for j in embedded.all_jobs(state="succeeded")] == [job["id"]]

    listing = embedded.http.get(f"/jobs/{job['id']}/checkpoints").json()
    best = next(item for item in listing["items"] if item["id"] == listing["best_id"])
    assert not best["partial"]
    body = check_download(embedded, job["id"], "best", best["size"], best["sha256"])
    stored = home / "checkpoints" / job["id"] / "checkpoints" / f"{best['name']}.pt"
    assert stored.read_bytes() == body

    path = tmp_path / "best.pt"
    with TslaClient(embedded.base_url, embedded.token) as client:
        assert client.download(job["id"], "best", path) == best["sha256"]
    assert path.read_bytes() == body

    logs: list[dict[str, Any]] = embedded.http.get(f"/jobs/{job['id']}/logs").json()["items"]
    assert any("ended: succeeded" in line["message"] for line in logs)


def test_a_diverging_job_fails_with_the_reason_and_valid_json(embedded: Service) -> None:
    """NaN on SQLite: the job fails with the divergence reason (no SQL in it), and its metrics page
    and event stream carry `value: null, nonfinite` instead of a bare NaN."""
    job = embedded.submit(DIVERGING_SPEC)
    diverged = check_diverged_job(embedded, job["id"])
    assert "SQL" not in (embedded.job(job["id"])["error"] or ""), diverged

"""Cursor paging of metrics and logs, and conditional range downloads, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import psycopg
import pydantic_core
import pytest
from sqlalchemy import delete, make_url

from api.reads import ThreadedReads, autocommit_engine
from api.routes.metrics import LOGS_PAGE, METRICS_PAGE, METRICS_PAGE_OF_NAME
from api.schemas import LogsPage, MetricsPage
from tests.api.conftest import PG_ADMIN_URL, Api, add_checkpoint
from tsla_service.db import session_scope
from tsla_service.models import Job, Metric
from tsla_service.results import append_log, record_metrics
from tsla_service.tokens import digest
from tsla_spec.records import MetricRow

SPEC = {"preset": "digits", "epochs": 2, "smoothing": {"switch_epoch": 1}}
FILE = bytes(range(256)) * 4  # a 1024-byte checkpoint


@pytest.fixture(scope="module")
def world(backend_api: Api) -> dict[str, Any]:
    """A job with 3 epochs x 2 metrics (loss, top1) = 6 rows, 6 log lines and one checkpoint."""
    api = backend_api
    token = api.new_token("pager")
    headers = api.as_token(token)
    job = api.client.post("/jobs", json=SPEC, headers=headers).json()["id"]
    with session_scope(api.database_url) as session:
        for epoch in range(3):
            rows = [
                MetricRow(epoch, "train", name, 0.5 + epoch, "smooth", epoch + 1) for name in ("loss", "top1")
            ]
            record_metrics(session, job, 1, rows)
        for line in range(6):
            append_log(session, job, 1, "info", f"line {line}")
        record = session.get(Job, job)
        assert record is not None
        record.state = "succeeded"
    checkpoint = add_checkpoint(api, job, FILE)
    return {"api": api, "headers": headers, "job": job, "checkpoint": checkpoint}


def pages(world: dict[str, Any], resource: str, **params: Any) -> list[dict[str, Any]]:
    """Every page of `resource`, following `next_after` until `has_more` is false."""
    api, found, after = world["api"], [], None
    while True:
        query = {**params, **({"after": after} if after is not None else {})}
        response = api.client.get(f"/jobs/{world['job']}/{resource}", params=query, headers=world["headers"])
        assert response.status_code == 200, response.text
        page = response.json()
        found.append(page)
        if not page["has_more"]:
            return found
        assert len(found) < 20, "paging does not end"
        after = page["next_after"]


@pytest.mark.parametrize("resource", ["metrics", "logs"])
def test_a_page_that_is_exactly_full_at_the_end_has_no_more(world: dict[str, Any], resource: str) -> None:
    found = pages(world, resource, limit=3)  # 6 rows: two full pages, then nothing
    assert [len(page["items"]) for page in found] == [3, 3]
    assert [page["has_more"] for page in found] == [True, False]
    seqs = [item["seq"] for page in found for item in page["items"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == 6
    assert found[-1]["next_after"] == seqs[-1]
    after_end = world["api"].client.get(
        f"/jobs/{world['job']}/{resource}", params={"after": seqs[-1]}, headers=world["headers"]
    )
    assert after_end.json() == {"items": [], "next_after": seqs[-1], "has_more": False}


@pytest.mark.parametrize("resource", ["metrics", "logs"])
def test_pages_of_one_and_of_more_than_all(world: dict[str, Any], resource: str) -> None:
    ones = pages(world, resource, limit=1)
    assert [len(page["items"]) for page in ones] == [1] * 6 and not ones[-1]["has_more"]
    whole = pages(world, resource, limit=50)
    assert len(whole) == 1 and len(whole[0]["items"]) == 6 and not whole[0]["has_more"]


def test_name_and_after_together_page_one_metric(world: dict[str, Any]) -> None:
    found = pages(world, "metrics", name="top1", limit=2)  # 3 top1 rows: a full page, then 1
    assert [len(page["items"]) for page in found] == [2, 1]
    items = [item for page in found for item in page["items"]]
    assert {item["name"] for item in items} == {"top1"} and [item["epoch"] for item in items] == [0, 1, 2]
    every = pages(world, "metrics", limit=50)[0]["items"]
    first_loss = next(item["seq"] for item in every if item["name"] == "loss")
    later = (
        world["api"]
        .client.get(
            f"/jobs/{world['job']}/metrics",
            params={"name": "top1", "after": first_loss},
            headers=world["headers"],
        )
        .json()
    )
    assert [item["seq"] for item in later["items"]] == [
        item["seq"] for item in every if item["name"] == "top1" and item["seq"] > first_loss
    ]


def test_log_lines_come_in_order(world: dict[str, Any]) -> None:
    items = [item for page in pages(world, "logs", limit=4) for item in page["items"]]
    assert [item["message"] for item in items] == [f"line {n}" for n in range(6)]


def download(world: dict[str, Any], **headers: str) -> Any:
    return world["api"].client.get(
        f"/jobs/{world['job']}/checkpoints/{world['checkpoint']}", headers={**world["headers"], **headers}
    )


def test_if_range_matching_gives_the_range_and_otherwise_the_whole_file(world: dict[str, Any]) -> None:
    etag = f'"{hashlib.sha256(FILE).hexdigest()}"'
    whole = download(world)
    assert (whole.status_code, whole.headers["etag"], whole.content) == (200, etag, FILE)
    matching = download(world, Range="bytes=10-19", **{"If-Range": etag})
    assert matching.status_code == 206 and matching.content == FILE[10:20]
    assert matching.headers["content-range"] == f"bytes 10-19/{len(FILE)}"
    for stale in ('"0000"', f"W/{etag}", "Wed, 21 Oct 2015 07:28:00 GMT"):
        other = download(world, Range="bytes=10-19", **{"If-Range": stale})
        assert (other.status_code, other.content) == (200, FILE), stale
        assert "content-range" not in other.headers
    assert download(world, **{"If-None-Match": etag}).status_code == 304
    assert download(world, **{"If-None-Match": f'"x", W/{etag}'}).status_code == 304
    assert download(world, **{"If-None-Match": "*"}).status_code == 304


@pytest.mark.parametrize(
    ("header", "span"),
    [
        ("bytes=0-0", (0, 0)),
        ("bytes=1000-", (1000, 1023)),
        ("bytes=-24", (1000, 1023)),
        ("bytes=-5000", (0, 1023)),
        ("bytes=1020-9223372036854775807", (1020, 1023)),
        ("BYTES = 5 - 6", (5, 6)),
    ],
)
def test_ranges(world: dict[str, Any], header: str, span: tuple[int, int]) -> None:
    response = download(world, Range=header)
    first, last = span
    assert response.status_code == 206 and response.content == FILE[first : last + 1]
    assert response.headers["content-length"] == str(last - first + 1)


def test_page_bodies_are_the_response_models_bytes(world: dict[str, Any]) -> None:
    """The paging routes serialise rows without a validation pass: their bytes must be what the
    documented response models (MetricsPage, LogsPage) make of the same page, a non-finite value
    and the UTC times included."""
    api, job = world["api"], world["job"]
    with session_scope(api.database_url) as session:
        record_metrics(session, job, 1, [MetricRow(9, "train", "grad_var", float("nan"), "onehot", 99)])
    try:
        for resource, model in (("metrics", MetricsPage), ("logs", LogsPage)):
            response = api.client.get(
                f"/jobs/{job}/{resource}", params={"limit": 50}, headers=world["headers"]
            )
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/json"
            assert response.content == model.model_validate_json(response.content).model_dump_json().encode()
        items = pages(world, "metrics", name="grad_var")[0]["items"]
        assert [(item["value"], item["nonfinite"]) for item in items] == [(None, "nan")]
        assert all(item["time"].endswith("Z") for item in items)
    finally:
        with session_scope(api.database_url) as session:
            session.execute(delete(Metric).where(Metric.job_id == job, Metric.name == "grad_var"))


def test_both_read_paths_give_the_same_rows(world: dict[str, Any]) -> None:
    """The app reads pages through api.reads: on PostgreSQL psycopg's asyncio pool (the app's
    lifespan opened it), elsewhere SQLAlchemy in the thread pool. Same statement, same rows,
    value types and UTC times included."""
    api, job = world["api"], world["job"]
    app_reads = api.client.app.state.reads  # type: ignore[attr-defined]
    assert (app_reads is not None) == api.database_url.startswith("postgresql"), app_reads
    threaded = ThreadedReads(autocommit_engine(api.database_url))
    owner = {"job_id": job, "token_sha256": digest(world["headers"]["Authorization"].removeprefix("Bearer "))}
    for statement, extra in ((METRICS_PAGE, {}), (METRICS_PAGE_OF_NAME, {"name": "top1"}), (LOGS_PAGE, {})):
        params = {**owner, **extra, "after": 0, "limit": 50}
        expected = threaded.rows_now(statement, params)
        assert expected, statement
        assert all(row["time"].utcoffset() == timedelta(0) for row in expected)
        if app_reads is not None:
            found = api.client.portal.call(app_reads.rows, statement, params)  # type: ignore[attr-defined]
            assert found == expected
            assert [{k: type(v) for k, v in row.items()} for row in found] == [
                {k: type(v) for k, v in row.items()} for row in expected
            ]
            assert pydantic_core.to_json(found) == pydantic_core.to_json(expected)
        # A stranger's token finds no rows: the ownership clause is in the statement itself.
        assert threaded.rows_now(statement, {**params, "token_sha256": "0" * 64}) == []


def test_a_broken_pooled_connection_is_replaced_without_an_error(world: dict[str, Any]) -> None:
    """A PostgreSQL restart (or a killed backend) breaks the read pool's idle connections; the
    next page still answers 200: the broken connection fails its query, the pool drops it, and the
    read runs once more (tests/integration/test_faults.py restarts the server itself)."""
    api = world["api"]
    if not api.database_url.startswith("postgresql"):
        pytest.skip("the asyncio read pool is PostgreSQL's")
    for _ in range(3):
        assert api.client.get(f"/jobs/{world['job']}/metrics", headers=world["headers"]).status_code == 200
    database = make_url(api.database_url).database
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = '' AND pid <> pg_backend_pid()",
            (database,),
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    for resource in ("metrics", "logs", "metrics"):
        response = api.client.get(f"/jobs/{world['job']}/{resource}", headers=world["headers"])
        assert response.status_code == 200, response.text
        assert response.json()["items"]

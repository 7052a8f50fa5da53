"""Auth, isolation, idempotency and limits: bad input is a clear 4xx and changes nothing."""

import hashlib
from typing import Any

from sqlalchemy import func, select

from tests.api.conftest import Api
from tsla_service.db import session_scope
from tsla_service.models import Checkpoint, Job
from tsla_service.results import record_checkpoint, record_metrics
from tsla_service.tokens import revoke_token
from tsla_spec.records import CheckpointRecord, MetricRow

SPEC = {"preset": "digits", "epochs": 2, "smoothing": {"switch_epoch": 1}}


def job_count(api: Api) -> int:
    with session_scope(api.database_url) as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def submit(api: Api, token: str, body: Any = SPEC, **headers: str) -> Any:
    return api.client.post("/jobs", json=body, headers={**api.as_token(token), **headers})


def test_every_endpoint_but_health_needs_a_valid_token(api: Api) -> None:
    token = api.new_token("alice")
    assert api.client.get("/healthz").status_code == 200
    for method, path in (("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/presets"), ("GET", "/datasets"),
                         ("GET", "/jobs/x"), ("GET", "/jobs/x/metrics"), ("GET", "/jobs/x/checkpoints/best"),
                         ("POST", "/jobs/x/cancel"), ("GET", "/jobs/x/logs")):  # fmt: skip
        missing = api.client.request(method, path)
        assert missing.status_code == 401, path
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        wrong = api.client.request(method, path, headers=api.as_token(token + "x"))
        assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid or revoked token"
    with session_scope(api.database_url) as session:
        revoke_token(session, "alice")
    assert api.client.get("/jobs", headers=api.as_token(token)).status_code == 401
    assert job_count(api) == 0


def give_a_checkpoint(api: Api, job_id: str) -> int:
    """A stored checkpoint file and its row, as a worker writes them; returns the row's id."""
    data = b"a checkpoint's bytes" * 100
    key = f"{job_id}/checkpoints/epoch-0000.pt"
    path = api.home / "checkpoints" / key
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    metrics = {"test/top1": 50.0, "val/top1": 50.0}
    record = CheckpointRecord(
        "epoch-0000", path, 0, False, hashlib.sha256(data).hexdigest(), len(data), metrics
    )
    with session_scope(api.database_url) as session:
        record_checkpoint(session, job_id, record, key, {"epoch-0000"})
        return int(session.scalars(select(Checkpoint.id).where(Checkpoint.job_id == job_id)).one())


def test_a_token_sees_only_its_own_jobs(api: Api) -> None:
    alice, bob = api.new_token("alice"), api.new_token("bob")
    job = submit(api, alice).json()
    checkpoint_id = give_a_checkpoint(api, job["id"])  # something real to download: a 404 means isolation
    prefix = f"/jobs/{job['id']}"
    for path in (prefix, f"{prefix}/metrics", f"{prefix}/logs", f"{prefix}/checkpoints",
                 f"{prefix}/checkpoints/latest", f"{prefix}/checkpoints/best",
                 f"{prefix}/checkpoints/{checkpoint_id}"):  # fmt: skip
        assert api.client.get(path, headers=api.as_token(alice)).status_code == 200, path
        assert api.client.get(path, headers=api.as_token(bob)).status_code == 404, path
    # The event stream checks the owner before it starts streaming (alice's would stream on).
    assert api.client.get(f"{prefix}/events", headers=api.as_token(bob)).status_code == 404
    assert api.client.get(f"/jobs/{job['id']}", headers=api.as_token(alice)).status_code == 200
    assert api.client.post(f"/jobs/{job['id']}/cancel", headers=api.as_token(bob)).status_code == 404
    assert api.client.get("/jobs", headers=api.as_token(bob)).json()["items"] == []
    assert api.client.get(f"/jobs?cursor={job['id']}", headers=api.as_token(bob)).status_code == 422
    assert [j["id"] for j in api.client.get("/jobs", headers=api.as_token(alice)).json()["items"]] == [
        job["id"]
    ]
    with session_scope(api.database_url) as session:  # make alice's job a finished teacher
        session.get(Job, job["id"]).state = "succeeded"  # type: ignore[union-attr]
    teacher_spec = {"preset": "digits", "smoothing": {"method": "lsr-pre", "teacher": {"job": job["id"]}}}
    stolen = submit(api, bob, teacher_spec)
    assert stolen.status_code == 422 and "does not exist" in stolen.json()["detail"]
    assert submit(api, alice, teacher_spec).status_code == 201


def test_idempotency_key_replays_the_first_response_and_refuses_another_body(api: Api) -> None:
    alice, bob = api.new_token("alice"), api.new_token("bob")
    first = submit(api, alice, SPEC, **{"Idempotency-Key": "k-1"})
    assert first.status_code == 201
    replay = submit(api, alice, SPEC, **{"Idempotency-Key": "k-1"})
    assert (replay.status_code, replay.json()) == (201, first.json())
    conflict = submit(api, alice, {**SPEC, "seed": 3}, **{"Idempotency-Key": "k-1"})
    assert conflict.status_code == 409 and "different request body" in conflict.json()["detail"]
    other_owner = submit(api, bob, SPEC, **{"Idempotency-Key": "k-1"})  # keys are per token
    assert other_owner.status_code == 201 and other_owner.json()["id"] != first.json()["id"]
    assert submit(api, alice, SPEC).json()["id"] != first.json()["id"]  # no key: a new job
    assert job_count(api) == 3


def test_limits_413_422_429(api: Api) -> None:
    alice = api.new_token("alice")
    huge = {"preset": "digits", "name": "x" * 30_000}
    assert submit(api, alice, huge).status_code == 413
    bad_specs = [
        ({"data": {"name": "../../etc"}}, "data.name"),
        ({"epochs": 100_000}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"optim": {"lr": 50}}, "optim.lr"),
        ({"data": {"num_workers": 999}}, "data.num_workers"),
        ({"epochs": "ten"}, "epochs"),
        ({"smoothing": {"method": "lsr-pre", "teacher": {"path": "/etc/passwd"}}}, "teacher.path"),
        ({"smoothing": {"method": "lsr-pre", "teacher": {"job": "nope"}}}, "teacher.job"),
    ]
    for bad, field in bad_specs:
        response = submit(api, alice, {"preset": "digits", **bad})
        assert response.status_code == 422, (bad, response.text)
        assert field in response.json()["detail"]
    assert job_count(api) == 0
    for _ in range(3):
        assert submit(api, alice).status_code == 201
    capped = submit(api, alice)
    assert capped.status_code == 429 and "limit is 3" in capped.json()["detail"]
    assert submit(api, api.new_token("bob")).status_code == 201  # the cap is per token
    assert job_count(api) == 4


def test_cancel_in_each_state(api: Api) -> None:
    alice = api.new_token("alice")
    headers = api.as_token(alice)
    queued = submit(api, alice).json()
    canceled = api.client.post(f"/jobs/{queued['id']}/cancel", headers=headers).json()
    assert canceled["state"] == "canceled" and canceled["cancel_requested"]
    assert api.client.post(f"/jobs/{queued['id']}/cancel", headers=headers).status_code == 409
    running = submit(api, alice).json()
    with session_scope(api.database_url) as session:
        session.get(Job, running["id"]).state = "running"  # type: ignore[union-attr]
    flagged = api.client.post(f"/jobs/{running['id']}/cancel", headers=headers).json()
    assert (flagged["state"], flagged["cancel_requested"]) == ("running", True)
    for final in ("succeeded", "failed"):
        job = submit(api, alice).json()
        with session_scope(api.database_url) as session:
            session.get(Job, job["id"]).state = final  # type: ignore[union-attr]
        response = api.client.post(f"/jobs/{job['id']}/cancel", headers=headers)
        assert response.status_code == 409 and final in response.json()["detail"]


def test_prometheus_metrics_report_jobs_queue_epochs_and_latency(api: Api) -> None:
    alice = api.new_token("alice")
    job = submit(api, alice).json()
    with session_scope(api.database_url) as session:
        record = session.get(Job, job["id"])
        assert record is not None
        record.state = "running"
    rows = [
        MetricRow(0, "train", "epoch_time", 1.5, "smooth", 1),
        MetricRow(1, "train", "epoch_time", 7.0, "smooth", 1),
        MetricRow(1, "train", "images_per_s", 1234.0, "smooth", 2),
    ]
    with session_scope(api.database_url) as session:
        record_metrics(session, job["id"], 1, rows)
    submit(api, alice)
    for made_up in ("FOO", "BAR", "X" * 40):  # a client's method never becomes a new label value
        api.client.request(made_up, "/jobs", headers=api.as_token(alice))
    assert api.client.get("/metrics").status_code == 401
    refused = api.client.get("/metrics", headers=api.as_token(alice))
    assert refused.status_code == 403 and "operator" in refused.json()["detail"]
    operator = api.new_token("ops", role="operator")
    text = api.client.get("/metrics", headers=api.as_token(operator)).text
    assert "FOO" not in text and 'method="other",route="/jobs"' in text
    assert "tsla_workers 0.0" in text
    assert 'tsla_jobs{state="running"} 1.0' in text
    assert 'tsla_jobs{state="queued"} 1.0' in text
    assert 'tsla_queue_depth{queue="training"} 1.0' in text
    assert 'tsla_epoch_duration_seconds_bucket{le="2.0"} 1.0' in text
    assert 'tsla_epoch_duration_seconds_bucket{le="10.0"} 2.0' in text
    assert "tsla_epoch_duration_seconds_sum 8.5" in text
    assert f'tsla_job_images_per_second{{job="{job["id"]}"}} 1234.0' in text
    assert 'tsla_api_request_seconds_count{method="POST",route="/jobs",status="201"} 2.0' in text

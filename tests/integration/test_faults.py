"""Fault injection against the production-shaped stack: a worker killed with SIGKILL mid-epoch,
duplicate deliveries, Redis and PostgreSQL restarts under a running job, and a job whose attempts
are spent. Every test builds a private stack (`FaultStack`: its own database, Redis database,
queue, storage and processes), so killing and restarting things never disturbs another test's
stack; every wait is bounded.

The training spec is small synthetic data whose epochs take 1-2 s on one CPU thread here, so
"mid-epoch" is reachable and a whole job takes seconds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ._support import (
    FINISHED,
    FaultStack,
    Service,
    Worker,
    check_metric_rows,
    job_logs,
    job_metrics,
    queue_drained,
    redis_stopped,
    restart_postgres,
    wait_for,
)

pytestmark = pytest.mark.integration

EPOCHS, SWITCH = 6, 3
SPEC: dict[str, Any] = {
    "data": {
        "name": "synthetic",
        "synthetic": {"num_train": 3072, "num_test": 512, "image_size": 16, "num_classes": 10},
    },
    "model": {"width": 8},
    "epochs": EPOCHS,
    "batch_size": 64,
    "seed": 1,
    "smoothing": {"method": "tsla", "switch_epoch": SWITCH},
    "device": "cpu",
}
# Metrics that depend on wall-clock time; every other metric is a function of the spec alone.
TIMING_METRICS = {"train/images_per_s", "train/epoch_time"}
# The killed worker's lease: long enough that a heartbeat delayed on a busy machine does not let
# its own reaper take the job back, short enough that the lost job is re-queued within seconds.
FIRST_LEASE = 6.0
# The replacement worker's lease (its reaper looks every lease/2 seconds).
NEW_LEASE = 4.0
JOB_TIMEOUT = 150.0

StackFactory = Callable[..., FaultStack]


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[StackFactory]:
    """Builds private stacks under tmp_path; all of them are torn down after the test."""
    with ExitStack() as stacks:
        count = iter(range(100))

        def make(**kwargs: Any) -> FaultStack:
            return stacks.enter_context(FaultStack(tmp_path / f"stack-{next(count)}", **kwargs))

        yield make


def spec(**overrides: Any) -> dict[str, Any]:
    return {**SPEC, **overrides}


def wait_epochs(service: Service, job_id: str, done: int, timeout: float = JOB_TIMEOUT) -> dict[str, Any]:
    """The job once `done` epochs have their metric rows; it must still be running then."""
    job = service.wait_job(
        job_id, timeout, until=lambda j: j["epochs_done"] >= done or j["state"] in FINISHED
    )
    assert job["state"] == "running", f"the job finished before the fault could be injected: {job}"
    return job


def wait_finished(service: Service, job_id: str, timeout: float = JOB_TIMEOUT) -> dict[str, Any]:
    return service.wait_job(job_id, timeout)


def key(row: dict[str, Any]) -> tuple[int, str, str]:
    return row["epoch"], row["split"], row["name"]


def values(rows: list[dict[str, Any]]) -> dict[tuple[int, str, str], float]:
    """Every deterministic metric value, by (epoch, split, name)."""
    return {key(r): r["value"] for r in rows if f"{r['split']}/{r['name']}" not in TIMING_METRICS}


def epoch_seconds(rows: list[dict[str, Any]]) -> float:
    times = [r["value"] for r in rows if r["split"] == "train" and r["name"] == "epoch_time"]
    return max(times) if times else 1.5


def kill_mid_epoch(stack: FaultStack, worker: Worker, job_id: str) -> list[dict[str, Any]]:
    """SIGKILL `worker` in the middle of an epoch after epoch 1's rows (so a checkpoint exists);
    returns the metric rows as they were when it died."""
    service = stack.service
    wait_epochs(service, job_id, done=2)
    # About half way through the next epoch (the rows came a poll interval ago at most).
    time.sleep(0.4 * epoch_seconds(job_metrics(service, job_id)))
    stack.kill(worker)
    rows = job_metrics(service, job_id)
    assert rows and {r["attempt"] for r in rows} == {1}
    return rows


# --- 1 and 2: kill -9 mid-epoch, resume from the newest checkpoint, bit-identical result ---------


@dataclass
class Resumed:
    job: dict[str, Any]
    rows: list[dict[str, Any]]
    rows_at_kill: list[dict[str, Any]]
    logs: list[str]
    checkpoints: dict[str, Any]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> Resumed:
    """A job whose worker was SIGKILLed mid-epoch and that a new worker process finished."""
    with FaultStack(tmp_path_factory.mktemp("killed")) as stack:
        first = stack.start_worker("first", lease_seconds=FIRST_LEASE)
        service = stack.service
        job = service.submit(spec(name="killed-and-resumed"))
        rows_at_kill = kill_mid_epoch(stack, first, job["id"])
        assert service.job(job["id"])["state"] == "running"  # nobody noticed yet

        stack.start_worker("second", lease_seconds=NEW_LEASE)
        final = wait_finished(service, job["id"])
        listing = service.http.get(f"/jobs/{job['id']}/checkpoints")
        assert listing.status_code == 200, listing.text
        return Resumed(
            final,
            job_metrics(service, job["id"]),
            rows_at_kill,
            job_logs(service, job["id"]),
            listing.json(),
        )


def test_kill_worker_mid_epoch_resumes_from_checkpoint(resumed: Resumed) -> None:
    job, rows = resumed.job, resumed.rows
    assert job["state"] == "succeeded", job
    assert job["attempt"] == 2 and job["error"] is None and job["epochs_done"] == EPOCHS, job

    # One row per (epoch, split, name), whatever ran twice.
    check_metric_rows(rows, EPOCHS, SWITCH)
    first = sorted({r["epoch"] for r in rows if r["attempt"] == 1})
    second = sorted({r["epoch"] for r in rows if r["attempt"] == 2})
    assert first and second, "both attempts must have written epochs"
    assert first == list(range(first[-1] + 1)) and second == list(range(first[-1] + 1, EPOCHS))
    for epoch in range(EPOCHS):  # an epoch's rows all come from one attempt
        assert len({r["attempt"] for r in rows if r["epoch"] == epoch}) == 1, epoch

    # At most one epoch is redone: the one whose rows were written but whose checkpoint was not.
    done_at_kill = sorted({r["epoch"] for r in resumed.rows_at_kill})
    assert done_at_kill == list(range(len(done_at_kill))) and len(done_at_kill) >= 2
    assert second[0] in (done_at_kill[-1], done_at_kill[-1] + 1), (done_at_kill, second)
    # The surviving rows of attempt 1 are the very rows written before the kill.
    before = {key(r): r for r in resumed.rows_at_kill}
    for row in rows:
        if row["attempt"] == 1:
            assert row == before[key(row)]
    # A redone epoch came out exactly as the first time (exact resume).
    final_values = values(rows)
    for k, value in values(resumed.rows_at_kill).items():
        assert final_values[k] == value, k

    # The new attempt says where it resumed from: the checkpoint of the last epoch attempt 1 kept.
    logs = resumed.logs
    resumed_from = f"epoch-{second[0] - 1:04d}"
    assert any(f"resumed from {resumed_from}: continuing at epoch {second[0]}" in m for m in logs), logs
    for attempt in (1, 2):
        assert sum(f"attempt {attempt} started" in m for m in logs) == 1, logs
    assert any("attempt 2 ended: succeeded" in m for m in logs), logs
    assert not any("attempt 1 ended" in m for m in logs), logs

    # Checkpoints: complete ones only (SIGKILL leaves no partial), the last epoch the latest.
    items = resumed.checkpoints["items"]
    assert items and not any(item["partial"] for item in items)
    latest = next(item for item in items if item["id"] == resumed.checkpoints["latest_id"])
    assert latest["epoch"] == EPOCHS - 1


def test_resumed_job_equals_uninterrupted_run(resumed: Resumed, make_stack: StackFactory) -> None:
    """Exact resume through the service on the CPU: the killed-and-resumed job's metrics equal
    those of the same spec trained without interruption, on a fresh worker process."""
    stack = make_stack()
    stack.start_worker("clean", lease_seconds=FIRST_LEASE)
    service = stack.service
    job = service.submit(spec(name="uninterrupted"))
    final = wait_finished(service, job["id"])
    assert final["state"] == "succeeded" and final["attempt"] == 1, final
    rows = job_metrics(service, job["id"])
    check_metric_rows(rows, EPOCHS, SWITCH)

    expected, got = values(rows), values(resumed.rows)
    assert got.keys() == expected.keys()
    for name in ("test/loss", "test/top1", "test/top5"):
        split, metric = name.split("/")
        for epoch in range(EPOCHS):
            k = (epoch, split, metric)
            assert got[k] == expected[k], (
                f"{name} of epoch {epoch}: resumed {got[k]!r}, uninterrupted {expected[k]!r}"
            )
    last_loss = (EPOCHS - 1, "train", "loss")
    assert got[last_loss] == expected[last_loss]
    # And every other metric that does not measure time (train loss/top-1/lr, gradient variance).
    assert got == expected
    steps = {key(r): r["step"] for r in rows}
    assert {key(r): r["step"] for r in resumed.rows} == steps


# --- 3: duplicate deliveries train once ---------------------------------------------------------


def test_duplicate_delivery_trains_once(make_stack: StackFactory) -> None:
    """Redis redelivers an unacknowledged message after the visibility timeout (2 s here) while the
    first worker still trains it, and a duplicate is also sent by hand: only one training runs."""
    import celery

    stack = make_stack(visibility_timeout=2)
    first = stack.start_worker("first")
    service = stack.service
    job = service.submit(spec(name="delivered-twice", epochs=14))
    service.wait_job(job["id"], 60, until=lambda j: j["state"] != "queued")
    # The message is older than the visibility timeout now; a worker starting up sweeps it back
    # onto the queue and receives it while the first one is still training.
    time.sleep(2.5)
    second = stack.start_worker("second")
    sender = celery.Celery(broker=stack.broker_url)
    sender.conf.broker_transport_options = {"visibility_timeout": 2}
    try:
        duplicate = sender.send_task("tsla.train_job", args=[job["id"]], queue=stack.queue)
    finally:
        sender.close()
    assert service.job(job["id"])["state"] == "running", "the job must still be training"

    final = wait_finished(service, job["id"])
    assert final["state"] == "succeeded" and final["attempt"] == 1, final
    broker = service.broker
    wait_for(lambda: queue_drained(broker, stack.queue), 60, "the queue to drain", interval=0.3)

    rows = job_metrics(service, job["id"])
    check_metric_rows(rows, 14, SWITCH)
    assert {r["attempt"] for r in rows} == {1}
    logs = job_logs(service, job["id"])
    assert sum("started on" in m for m in logs) == 1, logs

    texts = first.text() + second.text()
    not_claimed = re.findall(r"tsla\.train_job\[([0-9a-f-]+)\] succeeded in [0-9.]+s: 'not claimed'", texts)
    assert duplicate.id in not_claimed, texts[-4000:]
    # The original message, redelivered after the visibility timeout, was refused as well.
    trained = re.findall(r"tsla\.train_job\[([0-9a-f-]+)\] succeeded in [0-9.]+s: 'succeeded'", texts)
    assert len(trained) == 1, texts[-4000:]
    assert trained[0] in not_claimed, "the visibility-timeout redelivery did not reach the idle worker"


# --- 4: Redis restart ---------------------------------------------------------------------------


def test_redis_restart_during_a_running_job(make_stack: StackFactory) -> None:
    """Redis restarts (losing every message) under a running job; a job submitted meanwhile is
    stored and sent later by the reaper; both finish with complete metrics."""
    stack = make_stack()
    stack.start_worker("worker")
    service = stack.service
    running = service.submit(spec(name="running-through-redis-restart", epochs=12))
    wait_epochs(service, running["id"], done=2)

    with redis_stopped():
        time.sleep(2)
        submitted = time.monotonic()
        response = service.http.post("/jobs", json=spec(name="submitted-while-redis-down", epochs=4))
        took = time.monotonic() - submitted
        assert response.status_code == 201, response.text
        waiting = response.json()
        assert waiting["state"] == "queued"
        [(enqueued_at,)] = stack.sql("SELECT enqueued_at FROM jobs WHERE id = %s", waiting["id"])
        assert enqueued_at is None, "a job stored while the broker is down is marked unsent"
        assert service.job(running["id"])["state"] == "running"
    assert took < 20, f"POST /jobs took {took:.1f}s with the broker down"
    # Submitted once Redis is back, while the worker is still busy with the first job.
    after = service.submit(spec(name="submitted-after-redis-restart", epochs=4))
    assert service.job(running["id"])["state"] == "running", "the first job must outlast the restart"

    for job_id, epochs in ((running["id"], 12), (waiting["id"], 4), (after["id"], 4)):
        final = wait_finished(service, job_id)
        assert final["state"] == "succeeded" and final["attempt"] == 1, final
        rows = job_metrics(service, job_id)
        check_metric_rows(rows, epochs, SWITCH)
        assert {r["attempt"] for r in rows} == {1}
    [(enqueued_at,)] = stack.sql("SELECT enqueued_at FROM jobs WHERE id = %s", waiting["id"])
    assert enqueued_at is not None, "the reaper sent the job once Redis was back"
    # No message is left behind, redelivered or not.
    broker = service.broker
    wait_for(lambda: queue_drained(broker, stack.queue), 60, "the queue to drain", interval=0.3)


# --- 5: PostgreSQL restart ----------------------------------------------------------------------


def test_postgres_restart_during_a_running_job(make_stack: StackFactory) -> None:
    stack = make_stack()
    worker = stack.start_worker("worker")
    service = stack.service
    job = service.submit(spec(name="running-through-postgres-restart", epochs=8))
    wait_epochs(service, job["id"], done=2)

    # Down for a few seconds, longer than an epoch: the worker's next writes fail and are retried.
    took = restart_postgres(down_for=3.0)
    # The API's pooled connections died with the server; pre-ping replaces them on checkout.
    response = service.http.get(f"/jobs/{job['id']}")
    assert response.status_code == 200, response.text
    assert service.http.get("/jobs").status_code == 200

    final = wait_finished(service, job["id"])
    assert final["state"] == "succeeded" and final["attempt"] == 1, (final, f"restart took {took:.1f}s")
    rows = job_metrics(service, job["id"])
    check_metric_rows(rows, 8, SWITCH)
    assert {r["attempt"] for r in rows} == {1}
    assert sum("started on" in m for m in job_logs(service, job["id"])) == 1
    assert "retrying" in worker.text(), "the worker never noticed the database was down"


# --- 6: the reaper fails a job whose attempts are spent ------------------------------------------


def test_reaper_fails_job_without_attempts_left(make_stack: StackFactory) -> None:
    stack = make_stack()
    first = stack.start_worker("first", lease_seconds=FIRST_LEASE)
    service = stack.service
    job = service.submit(spec(name="one-attempt-only", max_attempts=1))
    assert job["max_attempts"] == 1
    rows_at_kill = kill_mid_epoch(stack, first, job["id"])

    stack.start_worker("second", lease_seconds=NEW_LEASE)
    final = wait_finished(service, job["id"])
    assert final["state"] == "failed" and final["attempt"] == 1, final
    assert final["error"] and "worker lost" in final["error"] and "lease" in final["error"], final
    assert "attempt 1 of 1" in final["error"], final
    assert final["finished_at"] and final["epochs_done"] < EPOCHS
    # Nothing ran after the kill.
    assert job_metrics(service, job["id"]) == rows_at_kill
    logs = job_logs(service, job["id"])
    assert not any("attempt 2" in m for m in logs), logs

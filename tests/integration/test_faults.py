"""Fault injection against the production-shaped stack: a worker killed with SIGKILL mid-epoch,
duplicate deliveries, Redis and PostgreSQL restarts under a running job, a job whose attempts are
spent, checkpoint storage that fills up, a corrupt newest checkpoint, the cancel latency at the
default lease, and the worker of `tsla serve` killed and restarted (a diverging run: in
test_service_postgres.py and test_service_embedded.py). Every test builds a private stack
(`FaultStack`: its own database, Redis database, queue, storage and processes; or its own
`tsla serve`), so killing and restarting things never disturbs another test's stack; every
wait is bounded.

The training spec is small synthetic data whose epochs take 1-2 s on one CPU thread here, so
"mid-epoch" is reachable and a whole job takes seconds.
"""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tsla_spec.hashing import sha256_file

from ._support import (
    FINISHED,
    FaultStack,
    Service,
    StackFactory,
    Worker,
    check_metric_rows,
    embedded_stack,
    job_logs,
    job_metrics,
    queue_drained,
    redis_stopped,
    restart_postgres,
    serve_worker_pid,
    sha256_bytes,
    small_filesystem,
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
        # The job trains on through the outage: another epoch's rows arrive while Redis is down.
        done = service.job(running["id"])["epochs_done"]
        wait_epochs(service, running["id"], done=done + 1)
        # Answered (201) while the broker is down, within the client's request timeout.
        response = service.http.post(
            "/jobs", json=spec(name="submitted-while-redis-down", epochs=4), timeout=60
        )
        assert response.status_code == 201, response.text
        waiting = response.json()
        assert waiting["state"] == "queued"
        [(enqueued_at,)] = stack.sql("SELECT enqueued_at FROM jobs WHERE id = %s", waiting["id"])
        assert enqueued_at is None, "a job stored while the broker is down is marked unsent"
        assert service.job(running["id"])["state"] == "running"
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
    # The API's pooled connections died with the server; pre-ping replaces them on checkout, and
    # the paging routes' asyncio pool (api.reads) drops a broken one and reads again.
    response = service.http.get(f"/jobs/{job['id']}")
    assert response.status_code == 200, response.text
    for resource in ("metrics", "logs"):
        page = service.http.get(f"/jobs/{job['id']}/{resource}")
        assert page.status_code == 200 and page.json()["items"], page.text
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


# --- 7: the worker of `tsla serve` killed: restarted, and the job resumes -------------------------


def test_killed_serve_worker_is_restarted_and_its_job_resumes(tmp_path: Path) -> None:
    """SIGKILL of the worker process `tsla serve` supervises (not of the stack): serve starts a new
    one within seconds; its reaper re-queues the job once the lease expires, and attempt 2 resumes
    from the newest checkpoint and succeeds with one metric row per (epoch, split, name)."""
    with embedded_stack(tmp_path, TSLA_LEASE_SECONDS=str(FIRST_LEASE), OMP_NUM_THREADS="1") as service:
        home = service.home
        job = service.submit(spec(name="serve-worker-killed"))
        wait_epochs(service, job["id"], done=2)
        first = wait_for(lambda: serve_worker_pid(home), 30, "the serve worker's pid")
        os.kill(first, signal.SIGKILL)
        killed_at = time.monotonic()

        second = wait_for(
            lambda: (pid := serve_worker_pid(home)) is not None and pid != first and pid, 30, "a new worker"
        )
        restarted_in = time.monotonic() - killed_at
        final = wait_finished(service, job["id"])
        assert final["state"] == "succeeded" and final["attempt"] == 2, final
        assert serve_worker_pid(home) == second, "the restarted worker must not die again"
        rows = job_metrics(service, job["id"])
        check_metric_rows(rows, EPOCHS, SWITCH)
        assert {r["attempt"] for r in rows} == {1, 2}
        logs = job_logs(service, job["id"])
        assert any("attempt 2 started" in m for m in logs) and any("resumed from epoch-" in m for m in logs)
        serve_log = (tmp_path / "serve.log").read_text()
        assert "the worker exited with -9" in serve_log, (serve_log[-2000:], restarted_in)


# --- 8: checkpoint storage fills up --------------------------------------------------------------

# SPEC's checkpoints are 1.48 MB: two fit in 3.7 MB, a third does not. The small job's single
# 0.42 MB checkpoint fits in what is left only if the failed write removed its temp file.
STORAGE_SIZE = "3700k"
SMALL_SPEC: dict[str, Any] = {
    **SPEC,
    "name": "fits-what-is-left",
    "data": {
        "name": "synthetic",
        "synthetic": {"num_train": 256, "num_test": 64, "image_size": 8, "num_classes": 5},
    },
    "model": {"width": 4},
    "epochs": 1,
    "smoothing": {"method": "baseline"},
}


def test_full_checkpoint_storage_retries_reports_and_leaves_no_temp_file(make_stack: StackFactory) -> None:
    stack = make_stack()
    with small_filesystem(stack.root / "storage", STORAGE_SIZE) as storage:
        stack.start_worker("worker", lease_seconds=FIRST_LEASE)
        service = stack.service
        job = service.submit(spec(name="storage-fills-up", max_attempts=2))
        final = wait_finished(service, job["id"])
        reason = "checkpoint storage full: [Errno 28] No space left on device writing epoch-0002.pt"
        # Attempt 1 is re-queued (an infrastructure failure), attempt 2 meets the same full disk.
        assert final["state"] == "failed" and final["attempt"] == 2 and final["error"] == reason, final
        logs = job_logs(service, job["id"])
        assert f"attempt 1 ended: queued ({reason})" in logs, logs
        assert any(m.startswith(reason) and "retry 1 of 3" in m for m in logs), logs
        assert any("resumed from epoch-0001" in m for m in logs), logs
        left = sorted(str(p.relative_to(storage)) for p in storage.rglob("*") if p.is_file())
        assert not [name for name in left if name.endswith(".tmp")], left
        assert len(left) == 4, left  # epoch-0000 and epoch-0001, .pt and .json

        small = service.submit(SMALL_SPEC)
        done = wait_finished(service, small["id"])
        assert done["state"] == "succeeded", done
        listing = service.http.get(f"/jobs/{small['id']}/checkpoints").json()
        assert [item["name"] for item in listing["items"]] == ["epoch-0000"]


# --- 9: a corrupt newest checkpoint is marked and skipped on resume -----------------------------


def test_corrupt_newest_checkpoint_is_marked_and_resume_falls_back(make_stack: StackFactory) -> None:
    stack = make_stack()
    first = stack.start_worker("first", lease_seconds=FIRST_LEASE)
    service = stack.service
    # Every checkpoint kept, so that the re-run of the corrupt one's epoch stays listed.
    job = service.submit(spec(name="corrupt-newest", checkpoint={"keep_last": EPOCHS}))
    kill_mid_epoch(stack, first, job["id"])
    folder = stack.root / "storage" / job["id"] / "checkpoints"
    newest = sorted(folder.glob("epoch-????.json"))[-1].with_suffix(".pt")
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    before = service.http.get(f"/jobs/{job['id']}/checkpoints").json()
    corrupt = next(item for item in before["items"] if item["name"] == newest.stem)
    assert before["latest_id"] == corrupt["id"]

    stack.start_worker("second", lease_seconds=NEW_LEASE)
    final = wait_finished(service, job["id"])
    assert final["state"] == "succeeded" and final["attempt"] == 2, final
    check_metric_rows(job_metrics(service, job["id"]), EPOCHS, SWITCH)
    logs = job_logs(service, job["id"])
    epoch = int(newest.stem.removeprefix("epoch-"))
    assert any(m.startswith(f"checkpoint {newest.stem} marked corrupt, no longer offered") for m in logs), (
        logs
    )
    assert any(f"resumed from epoch-{epoch - 1:04d}: continuing at epoch {epoch}" in m for m in logs), logs

    # The corrupt row is never offered again: not listed, not latest, not downloadable by id. Its
    # epoch was trained again and stored as a new row whose file verifies.
    after = service.http.get(f"/jobs/{job['id']}/checkpoints").json()
    assert corrupt["id"] not in {item["id"] for item in after["items"]}
    assert after["latest_id"] != corrupt["id"] and after["best_id"] != corrupt["id"]
    gone = service.http.get(f"/jobs/{job['id']}/checkpoints/{corrupt['id']}")
    assert gone.status_code == 404, gone.text
    redone = next(item for item in after["items"] if item["name"] == newest.stem)
    assert sha256_file(newest) == redone["sha256"]
    latest = service.http.get(f"/jobs/{job['id']}/checkpoints/latest")
    assert latest.headers["etag"] == f'"{sha256_bytes(latest.content)}"'


# --- 10: cancel latency at the default lease -----------------------------------------------------


def test_cancel_stops_a_running_job_within_two_seconds_plus_a_step(make_stack: StackFactory) -> None:
    """At the default 60 s lease (renewed every 20 s) a cancel still reaches the loop at its next
    step: the worker reads the flag every 0.5 s."""
    stack = make_stack(lease_seconds=60.0)
    stack.start_worker("worker")
    service = stack.service
    job = service.submit(spec(name="canceled-at-default-lease", epochs=500))
    rows = wait_for(lambda: job_metrics(service, job["id"]) or None, JOB_TIMEOUT, "the first metric row")
    images_per_s = next(r["value"] for r in rows if r["name"] == "images_per_s")
    step_seconds = SPEC["batch_size"] / images_per_s

    requested = time.monotonic()
    response = service.cancel(job["id"])
    assert response.status_code == 200 and response.json()["state"] == "running", response.text
    final = wait_for(
        lambda: (j := service.job(job["id"]))["state"] in FINISHED and j, 30, "the cancel", interval=0.05
    )
    took = time.monotonic() - requested
    assert final["state"] == "canceled" and final["attempt"] == 1, final
    assert took < 2.0 + step_seconds, f"the cancel took {took:.2f} s (a step takes {step_seconds:.3f} s)"
    listing = service.http.get(f"/jobs/{job['id']}/checkpoints").json()
    assert [item["partial"] for item in listing["items"] if item["id"] == listing["latest_id"]] == [True]


# --- many workers on one queue: a burst of short jobs ---------------------------------------------

BURST_JOBS = 12
STARTED_ON = re.compile(r"attempt (\d+) started on (\S+)")


def test_three_workers_share_a_burst_and_train_every_job_exactly_once(make_stack: StackFactory) -> None:
    """Three worker processes on one queue, then 12 short jobs submitted at once from 12 threads:
    every job is claimed once and trains once (one "started" log line, one attempt, no duplicate
    metric rows), all succeed, and every worker trained some of them."""
    stack = make_stack()
    for name in ("w1", "w2", "w3"):
        stack.start_worker(name, wait=False)  # all three start at once
    for worker in stack.workers:
        stack.wait_ready(worker)
    service = stack.service
    short = spec(epochs=2, smoothing={"method": "tsla", "switch_epoch": 1})
    with ThreadPoolExecutor(max_workers=BURST_JOBS) as pool:
        jobs = list(
            pool.map(lambda n: service.submit({**short, "name": f"burst-{n}", "seed": n}), range(BURST_JOBS))
        )
    assert len({job["id"] for job in jobs}) == BURST_JOBS

    trained_by: dict[str, str] = {}
    for job in jobs:
        final = wait_finished(service, job["id"], timeout=JOB_TIMEOUT * 2)
        assert final["state"] == "succeeded" and final["attempt"] == 1, final
        starts = [STARTED_ON.search(line) for line in job_logs(service, job["id"])]
        starts = [found for found in starts if found]
        assert [found.group(1) for found in starts] == ["1"], (job["id"], starts)
        trained_by[job["id"]] = starts[0].group(2)
        rows = job_metrics(service, job["id"])
        check_metric_rows(rows, 2, 1)  # no duplicate (epoch, split, name), epochs 0 and 1
        assert {row["attempt"] for row in rows} == {1}

    # The database agrees: one metric row per (job, epoch, split, name), nothing from a second run.
    [(duplicates,)] = stack.sql(
        "SELECT count(*) FROM (SELECT 1 FROM metrics GROUP BY job_id, epoch, split, name "
        "HAVING count(*) > 1) AS twice"
    )
    assert duplicates == 0
    # Worker ids are host:pid:nonce; each worker process trained at least one job.
    pids = {worker.process.pid for worker in stack.workers}
    ran = {int(worker_id.split(":")[1]) for worker_id in trained_by.values()}
    assert ran == pids, (sorted(ran), sorted(pids), trained_by)
    # Each worker's task log shows it trained exactly the jobs the job logs say it did.
    trained = sum(worker.text().count("ended: succeeded") for worker in stack.workers)
    assert trained == BURST_JOBS, [worker.text()[-2000:] for worker in stack.workers]

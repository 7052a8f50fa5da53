"""Multi-process jobs (`resources.processes: 2`, gloo on the CPU) through the service, on
PostgreSQL + Redis + real celery workers (FaultStack): two such jobs at once on one machine,
their metrics against the one-process job's, exact resume after the worker is killed, cancel, and
a killed rank; after each, no rank process is left (read from the process table).

Why the tolerance: N processes make the one-process run's updates except for batch norm, which
normalises each rank's half batch on its own (tests/core/test_distributed.py holds the updates
to that exactly), so the runs differ by about as much as two seeds do.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from ._support import (
    FINISHED,
    Service,
    StackFactory,
    check_metric_rows,
    job_logs,
    job_metrics,
    process_table,
    wait_for,
)

pytestmark = pytest.mark.integration

EPOCHS, SWITCH = 5, 2
SPEC: dict[str, Any] = {
    "data": {"name": "digits"},  # real images: both runs learn them, so their accuracy compares
    "model": {"width": 8},
    "schedule": {"kind": "step", "milestones": [3], "gamma": 0.1},
    "epochs": EPOCHS,
    "batch_size": 64,
    "seed": 1,
    "smoothing": {"method": "tsla", "switch_epoch": SWITCH},
    "precision": "fp32",
    "device": "cpu",
}
TWO = {**SPEC, "resources": {"processes": 2}}
TIMING = {"images_per_s", "epoch_time"}
TOP1_TOLERANCE = 5.0  # points of final test top-1 (of 360 test images) between 2 and 1 processes
JOB_TIMEOUT = 240.0
FIRST_LEASE, NEW_LEASE = 6.0, 4.0


def ranks() -> list[tuple[int, int]]:
    """(pid, parent pid) of every rank process of a multi-process run on this machine."""
    return [(pid, parent) for pid, parent, cmd in process_table() if "-m tsla_core.distributed" in cmd]


def no_ranks_left(timeout: float = 10.0) -> None:
    wait_for(lambda: not ranks(), timeout, "every rank process to be gone", interval=0.1)


def values(rows: list[dict[str, Any]]) -> dict[tuple[int, str, str], float]:
    return {(r["epoch"], r["split"], r["name"]): r["value"] for r in rows if r["name"] not in TIMING}


def finished(service: Service, job_id: str) -> dict[str, Any]:
    return service.wait_job(job_id, JOB_TIMEOUT)


def test_two_two_process_jobs_at_once_and_the_one_process_job(make_stack: StackFactory) -> None:
    """Two 2-process jobs of one spec on one machine at once (each rendezvous on its own
    kernel-picked port): both succeed with the same metrics, and those are the 1-process job's
    within TOP1_TOLERANCE."""
    stack = make_stack()
    for name in ("a", "b"):
        stack.start_worker(name, wait=False)
    for worker in stack.workers:
        stack.wait_ready(worker)
    service = stack.service
    first, second = (service.submit({**TWO, "name": f"two-{n}"}) for n in (1, 2))
    wait_for(lambda: len(ranks()) == 4, JOB_TIMEOUT, "both jobs' ranks to run at once", interval=0.2)
    single = service.submit({**SPEC, "name": "one"})
    results = {}
    for job in (first, second, single):
        final = finished(service, job["id"])
        assert final["state"] == "succeeded" and final["attempt"] == 1, final
        rows = job_metrics(service, job["id"])
        check_metric_rows(rows, EPOCHS, SWITCH)  # rank 0 alone reported: no duplicate rows
        results[job["id"]] = values(rows)
    assert results[first["id"]] == results[second["id"]]
    last = (EPOCHS - 1, "test", "top1")
    two, one = results[first["id"]][last], results[single["id"]][last]
    assert abs(two - one) <= TOP1_TOLERANCE, (two, one)
    no_ranks_left()


def test_kill_9_of_the_worker_ends_its_ranks_and_the_job_resumes_exactly(make_stack: StackFactory) -> None:
    stack = make_stack()
    worker = stack.start_worker("first", lease_seconds=FIRST_LEASE)
    service = stack.service
    job = service.submit({**TWO, "name": "killed"})
    service.wait_job(job["id"], JOB_TIMEOUT, until=lambda j: j["epochs_done"] >= 2 or j["state"] in FINISHED)
    assert len(ranks()) == 2
    stack.kill(worker)  # SIGKILL: the ranks learn it from the kernel (parent-death signal)
    no_ranks_left()
    stack.start_worker("second", lease_seconds=NEW_LEASE)
    final = finished(service, job["id"])
    assert final["state"] == "succeeded" and final["attempt"] == 2, final
    rows = job_metrics(service, job["id"])
    check_metric_rows(rows, EPOCHS, SWITCH)
    assert any("resumed from epoch-" in line for line in job_logs(service, job["id"]))

    clean = service.submit({**TWO, "name": "uninterrupted"})
    assert finished(service, clean["id"])["state"] == "succeeded"
    assert values(rows) == values(job_metrics(service, clean["id"]))
    no_ranks_left()


def test_cancel_of_a_two_process_job_leaves_no_process(make_stack: StackFactory) -> None:
    stack = make_stack(lease_seconds=60.0)
    stack.start_worker("worker")
    service = stack.service
    job = service.submit({**TWO, "name": "canceled", "epochs": 200})
    wait_for(lambda: job_metrics(service, job["id"]) or None, JOB_TIMEOUT, "the first metric row")
    requested = time.monotonic()
    assert service.cancel(job["id"]).status_code == 200
    final = wait_for(lambda: (j := service.job(job["id"]))["state"] in FINISHED and j, 30, "the cancel")
    assert final["state"] == "canceled", final
    took = time.monotonic() - requested
    no_ranks_left(timeout=5)
    listing = service.http.get(f"/jobs/{job['id']}/checkpoints").json()
    assert [i["partial"] for i in listing["items"] if i["id"] == listing["latest_id"]] == [True]
    assert took < 5.0, took


def test_a_killed_rank_ends_the_attempt_with_the_reason_and_the_job_retries(make_stack: StackFactory) -> None:
    stack = make_stack()
    stack.start_worker("worker")
    service = stack.service
    job = service.submit({**TWO, "name": "rank-killed"})
    service.wait_job(job["id"], JOB_TIMEOUT, until=lambda j: j["epochs_done"] >= 1 or j["state"] in FINISHED)
    found = sorted(ranks())
    assert len(found) == 2
    os.kill(found[-1][0], signal.SIGKILL)  # the rank started last: rank 1
    final = finished(service, job["id"])
    assert final["state"] == "succeeded" and final["attempt"] == 2, final
    logs = job_logs(service, job["id"])
    assert any("rank 1 of 2 was killed by SIGKILL; the group was ended" in line for line in logs), logs
    no_ranks_left()

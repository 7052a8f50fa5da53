"""Queue routing on real processes: PostgreSQL, Redis, the API and celery workers started through
tsla_cli/stack.py, on a private stack whose TSLA_QUEUES are `cpu,other`.

An unknown queue is a 422 that stores nothing. A job for `other` stays queued while only a `cpu`
worker runs (a `cpu` job submitted after it trains and succeeds meanwhile), then runs once a
worker for `other` starts; each job's log names the worker process that trained it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ._support import FINISHED, FaultStack, job_logs

pytestmark = pytest.mark.integration

# Digits, two short epochs of a narrow net: a few seconds each on a busy 2-core machine.
SPEC: dict[str, Any] = {
    "preset": "digits",
    "epochs": 2,
    "smoothing": {"method": "lsr"},
    "model": {"width": 4},
    "batch_size": 256,
    "device": "cpu",
}
# The waiting job is checked at least this long, and for as long as the cpu job takes.
MIN_WAIT_SECONDS = 5.0
JOB_TIMEOUT = 180.0
STARTED_ON = re.compile(r"attempt 1 started on [^:\s]+:(\d+):")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[FaultStack]:
    with FaultStack(tmp_path, queues=("cpu", "other")) as started:
        yield started


def test_a_job_waits_for_a_worker_of_its_queue(stack: FaultStack) -> None:
    cpu = stack.start_worker("cpu", queues=["cpu"])
    service = stack.service
    refused = service.http.post("/jobs", json={**SPEC, "resources": {"queue": "gpu"}})
    assert refused.status_code == 422, refused.text
    assert (
        refused.json()["detail"] == "resources.queue: 'gpu' is not a queue of this server; known: cpu, other"
    )
    assert service.all_jobs() == [], "nothing stored"
    waiting = service.submit({**SPEC, "name": "for-other", "resources": {"queue": "other"}})
    served = service.submit({**SPEC, "name": "for-cpu"})  # no queue named: the first queue, cpu
    assert (waiting["queue"], served["queue"]) == ("other", "cpu")
    ready = service.http.get("/readyz").json()
    assert ready["consumed"] == {"cpu": True, "other": False}, ready

    started = time.monotonic()
    while service.job(served["id"])["state"] not in FINISHED or time.monotonic() - started < MIN_WAIT_SECONDS:
        assert service.job(waiting["id"])["state"] == "queued", "no worker consumes `other`"
        assert time.monotonic() - started < JOB_TIMEOUT, service.job(served["id"])
        time.sleep(0.5)
    assert service.job(served["id"])["state"] == "succeeded", service.job(served["id"])
    assert service.job(waiting["id"])["state"] == "queued"

    other = stack.start_worker("other", queues=["other"])
    final = service.wait_job(waiting["id"], JOB_TIMEOUT)
    assert final["state"] == "succeeded" and final["attempt"] == 1, final
    trained_by = {
        job_id: STARTED_ON.findall(" ".join(job_logs(service, job_id)))
        for job_id in (served["id"], waiting["id"])
    }
    assert trained_by == {served["id"]: [str(cpu.process.pid)], waiting["id"]: [str(other.process.pid)]}

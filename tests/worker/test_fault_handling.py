"""How the training task ends an attempt that goes wrong: a divergence, checkpoint storage that
fails, a corrupt checkpoint on resume, a database error (plain functions on SQLite, no broker)."""

import errno
import math
import os
from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tests.worker.test_runner import add_job, make_settings
from tsla_core import Trainer
from tsla_core import checkpoint as checkpoint_module
from tsla_service import jobs, results
from tsla_service.db import session_scope
from tsla_service.models import Checkpoint, Job, LogLine, Metric
from tsla_service.settings import Settings
from tsla_service.storage import Storage, storage_for
from tsla_spec.hashing import sha256_file
from tsla_spec.records import CheckpointRecord
from worker.runner import describe, run_job


@pytest.fixture(autouse=True)
def quick_storage_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint_module, "STORAGE_RETRY_DELAYS", (0.0, 0.0))


def logs_of(settings_url: str, job_id: str) -> list[str]:
    with session_scope(settings_url) as session:
        return list(session.scalars(select(LogLine.message).where(LogLine.job_id == job_id)))


def test_a_diverged_job_fails_with_the_reason_and_stores_the_nan_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Trainer._loss

    def nan_from_epoch_1(self: Trainer, *args: object) -> torch.Tensor:
        losses = original(self, *args)  # type: ignore[arg-type]
        return losses * math.nan if self.epoch >= 1 else losses

    monkeypatch.setattr(Trainer, "_loss", nan_from_epoch_1)
    settings = make_settings(tmp_path)
    job_id = add_job(settings)
    assert run_job(job_id, settings) == "failed"
    url = settings.resolved_database_url
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.attempt == 1
        assert job.error == "diverged: train/loss is NaN at epoch 1"
        loss = session.execute(
            select(Metric.epoch, Metric.value, Metric.nonfinite).where(
                Metric.name == "loss", Metric.split == "train"
            )
        ).all()
        assert sorted(loss)[1] == (1, None, "nan") and sorted(loss)[0][2] is None
        assert session.scalars(select(Checkpoint.name)).all() == ["epoch-0000"]
    assert logs_of(url, job_id)[-1] == "attempt 1 ended: failed (diverged: train/loss is NaN at epoch 1)"


def full_from_epoch_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoint storage that takes epoch 0 and is full from then on."""
    real_write = checkpoint_module.write_atomic

    def write(path: Path, data: bytes) -> None:
        if not path.name.startswith("epoch-0000"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    monkeypatch.setattr(checkpoint_module, "write_atomic", write)


def test_full_checkpoint_storage_requeues_the_job_then_fails_it_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full_from_epoch_1(monkeypatch)
    settings = make_settings(tmp_path)
    job_id = add_job(settings, max_attempts=2)
    url = settings.resolved_database_url
    reason = "checkpoint storage full: [Errno 28] No space left on device writing epoch-0001.pt"

    assert run_job(job_id, settings) == "queued"
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.state, job.attempt, job.lease_owner, job.error) == (
            "queued",
            1,
            None,
            None,
        )
        assert job.enqueued_at is None  # a reaper sends it again
    logs = logs_of(url, job_id)
    assert any("retry 1 of 2" in m for m in logs), logs
    assert logs[-1] == f"attempt 1 ended: queued ({reason})"

    assert run_job(job_id, settings) == "failed"  # the second and last attempt: same storage
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.state, job.attempt, job.error) == ("failed", 2, reason)
    assert any("resumed from epoch-0000" in m for m in logs_of(url, job_id))
    folder = settings.home / "checkpoints" / job_id / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-0000.json", "epoch-0000.pt"]


def remote_settings(tmp_path: Path, retry_seconds: float) -> Settings:
    settings = make_settings(tmp_path, storage_url=f"memory://tsla-test-{tmp_path.name}")
    settings.storage_retry_seconds = retry_seconds
    return settings


def stored_names(settings: Settings, job_id: str) -> list[str]:
    return [Path(key).name for key in storage_for(settings).list(f"{job_id}/checkpoints")]


def test_unreachable_storage_is_waited_out_then_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(self: Storage, local: Path, key: str) -> None:
        raise ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))

    monkeypatch.setattr(Storage, "put_file", unreachable)
    settings = remote_settings(tmp_path, retry_seconds=1.5)
    job_id = add_job(settings, max_attempts=1)
    assert run_job(job_id, settings) == "failed"
    reason = "storage unreachable (ConnectionResetError: [Errno 104] Connection reset by peer) uploading"
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.error == f"{reason} epoch-0000.pt; gave up after 1.5 s"
        assert session.scalars(select(Checkpoint)).all() == []  # nothing claimed that is not stored
    logs = logs_of(settings.resolved_database_url, job_id)
    assert [m for m in logs if m.startswith(reason)] == [
        f"{reason} epoch-0000.pt; retrying in 1.0 s",
        f"{reason} epoch-0000.pt; retrying in 0.5 s",
    ]


def test_an_outage_shorter_than_the_bound_delays_uploads_and_loses_no_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_file = Storage.put_file
    refusals = iter(range(2))  # the first two uploads are refused, then storage is back

    def flaky(self: Storage, local: Path, key: str) -> None:
        if next(refusals, None) is not None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))
        put_file(self, local, key)

    monkeypatch.setattr(Storage, "put_file", flaky)
    settings = remote_settings(tmp_path, retry_seconds=30)
    job_id = add_job(settings, max_attempts=1)
    assert run_job(job_id, settings) == "succeeded"
    with session_scope(settings.resolved_database_url) as session:
        rows = session.scalars(select(Checkpoint).where(Checkpoint.deleted.is_(False))).all()
        assert [r.name for r in rows] == ["epoch-0000", "epoch-0001", "epoch-0002"]
    expected = [f"epoch-000{epoch}.{ext}" for epoch in range(3) for ext in ("json", "pt")]
    assert stored_names(settings, job_id) == expected
    retries = [m for m in logs_of(settings.resolved_database_url, job_id) if "retrying in" in m]
    assert len(retries) == 2 and "ConnectionRefusedError" in retries[0], retries


def test_a_checkpoint_left_in_scratch_is_uploaded_by_the_next_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage down past the bound at epoch 1's upload: the attempt is released with epoch-0001 in
    scratch only; the next attempt on this worker uploads and records it, then resumes from it."""
    put_file = Storage.put_file

    def down_at_epoch_1(self: Storage, local: Path, key: str) -> None:
        if local.name == "epoch-0001.pt":
            raise ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))
        put_file(self, local, key)

    monkeypatch.setattr(Storage, "put_file", down_at_epoch_1)
    settings = remote_settings(tmp_path, retry_seconds=0)
    job_id = add_job(settings, max_attempts=2)
    url = settings.resolved_database_url
    assert run_job(job_id, settings) == "queued"
    assert stored_names(settings, job_id) == ["epoch-0000.json", "epoch-0000.pt"]

    monkeypatch.setattr(Storage, "put_file", put_file)
    assert run_job(job_id, settings) == "succeeded"
    logs = logs_of(url, job_id)
    assert "uploading checkpoint epoch-0001, which an earlier attempt could not" in logs, logs
    assert any("resumed from epoch-0001" in m for m in logs), logs
    with session_scope(url) as session:
        rows = session.scalars(select(Checkpoint).where(Checkpoint.deleted.is_(False))).all()
        assert [r.name for r in rows] == ["epoch-0000", "epoch-0001", "epoch-0002"]
        folder = settings.resolved_work_dir / job_id / "checkpoints"
        assert all(sha256_file(folder / f"{r.name}.pt") == r.sha256 for r in rows)
    assert len(stored_names(settings, job_id)) == 6


def test_a_corrupt_checkpoint_is_marked_and_the_job_resumes_before_it(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    job_id = add_job(settings)
    url = settings.resolved_database_url
    assert run_job(job_id, settings) == "succeeded"
    # As if the worker had died after epoch 2's checkpoint, which then rotted on disk.
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.state, job.finished_at = "queued", None
        corrupt = session.scalars(select(Checkpoint).where(Checkpoint.name == "epoch-0002")).one()
        corrupt_id = corrupt.id
    path = settings.home / "checkpoints" / job_id / "checkpoints" / "epoch-0002.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    assert run_job(job_id, settings) == "succeeded"
    logs = logs_of(url, job_id)
    marked = [m for m in logs if m.startswith("checkpoint epoch-0002 marked corrupt, no longer offered")]
    assert len(marked) == 1 and "sha256" in marked[0], logs
    assert any("resumed from epoch-0001: continuing at epoch 2" in m for m in logs), logs
    with session_scope(url) as session:
        # Epoch 2 was trained again and recorded as a new, sound row; the corrupt row is gone.
        assert session.get(Checkpoint, corrupt_id) is None
        latest = results.latest_checkpoint(session, job_id)
        assert latest is not None and latest.name == "epoch-0002" and not latest.corrupt
    assert sha256_file(path) == latest.sha256


def record(name: str, epoch: int, top1: float) -> CheckpointRecord:
    return CheckpointRecord(name, Path(f"{name}.pt"), epoch, False, "0" * 64, 1, {"test/top1": top1})


def test_a_checkpoint_marked_corrupt_is_never_listed_ranked_or_found(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    job_id = add_job(settings)
    with session_scope(settings.resolved_database_url) as session:
        names = {"epoch-0000", "epoch-0001"}
        results.record_checkpoint(session, job_id, record("epoch-0000", 0, 50.0), "k0", names)
        results.record_checkpoint(session, job_id, record("epoch-0001", 1, 90.0), "k1", names)
        newest = results.latest_checkpoint(session, job_id)
        assert newest is not None and newest.name == "epoch-0001"
        assert results.mark_checkpoint_corrupt(session, job_id, "epoch-0001")
        assert not results.mark_checkpoint_corrupt(session, job_id, "epoch-0009")
        assert [c.name for c in results.list_checkpoints(session, job_id)] == ["epoch-0000"]
        for ref in ("latest", "best"):
            found = results.find_checkpoint(session, job_id, ref)
            assert found is not None and found.name == "epoch-0000", ref
        assert results.find_checkpoint(session, job_id, newest.id) is None


def test_release_job_requeues_fails_or_cancels_only_for_the_holder(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    url = settings.resolved_database_url
    first, last, canceled = (add_job(settings, max_attempts=2) for _ in range(3))
    with session_scope(url) as session:
        for job_id in (first, last, canceled):
            assert jobs.claim_job(session, job_id, "w", 60)
        assert jobs.release_job(session, first, "someone else", "full") is None
        assert jobs.release_job(session, first, "w", "full") == "queued"
        session.get(Job, last).attempt = 2  # type: ignore[union-attr]
        session.commit()
        assert jobs.release_job(session, last, "w", "full") == "failed"
        jobs.request_cancel(session, canceled)
        assert jobs.release_job(session, canceled, "w", "full") == "canceled"
        states = {j.id: (j.state, j.error) for j in session.scalars(select(Job))}
    assert states == {
        first: ("queued", None),
        last: ("failed", "full"),
        canceled: ("canceled", "canceled by request (full)"),
    }


def test_lease_status_reads_the_cancel_flag_without_renewing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    job_id = add_job(settings)
    with session_scope(settings.resolved_database_url) as session:
        assert jobs.claim_job(session, job_id, "w", 60)
        expires = session.get(Job, job_id).lease_expires_at  # type: ignore[union-attr]
        assert jobs.lease_status(session, job_id, "w") == jobs.LeaseStatus(held=True, cancel_requested=False)
        assert not jobs.lease_status(session, job_id, "other").held
        jobs.request_cancel(session, job_id)
        assert jobs.lease_status(session, job_id, "w") == jobs.LeaseStatus(held=True, cancel_requested=True)
        session.expire_all()
        assert session.get(Job, job_id).lease_expires_at == expires  # type: ignore[union-attr]


def test_a_database_error_is_described_without_its_sql() -> None:
    error = IntegrityError(
        "INSERT INTO checkpoints (metrics) VALUES (?)",
        ({"test/loss": "NaN"},),
        Exception("NOT NULL failed\nDETAIL"),
    )
    assert describe(error) == "Exception: NOT NULL failed"
    assert describe(ValueError("bad")) == "ValueError: bad"

"""Job state changes on a real (SQLite) database made by `alembic upgrade head`."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tsla_service import jobs, results
from tsla_service.db import session_factory
from tsla_service.migrate import upgrade_to_head
from tsla_service.models import Checkpoint, Job, Metric
from tsla_spec.records import CheckpointRecord, MetricRow


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade_to_head(url)
    with session_factory(url)() as db:
        yield db


def add_job(session: Session, state: str = "queued") -> str:
    job = Job(name="j", state=state, spec={}, method="tsla", dataset="digits", epochs=3)
    session.add(job)
    session.commit()
    return job.id


def metric(epoch: int, name: str, value: float) -> MetricRow:
    return MetricRow(epoch=epoch, split="test", name=name, value=value, stage="smooth", step=1)


def test_only_one_claim_wins(session: Session) -> None:
    job_id = add_job(session)
    assert jobs.claim_job(session, job_id, "a", 60)
    assert not jobs.claim_job(session, job_id, "b", 60)
    job = session.get(Job, job_id)
    session.refresh(job)
    assert (job.state, job.lease_owner, job.attempt) == ("running", "a", 1)


def test_a_canceled_queued_job_is_never_claimed(session: Session) -> None:
    job_id = add_job(session)
    assert jobs.request_cancel(session, job_id) == "canceled"
    assert not jobs.claim_job(session, job_id, "a", 60)


def test_cancel_of_a_running_job_is_a_flag_the_lease_renewal_reports(session: Session) -> None:
    job_id = add_job(session)
    jobs.claim_job(session, job_id, "a", 60)
    assert jobs.request_cancel(session, job_id) == "running"
    status = jobs.renew_lease(session, job_id, "a", 60)
    assert status.held and status.cancel_requested
    assert not jobs.renew_lease(session, job_id, "someone-else", 60).held


def test_only_the_lease_owner_finishes_a_job(session: Session) -> None:
    job_id = add_job(session)
    jobs.claim_job(session, job_id, "a", 60)
    assert not jobs.finish_job(session, job_id, "b", "succeeded")
    assert jobs.finish_job(session, job_id, "a", "succeeded")
    assert session.scalar(select(Job.state).where(Job.id == job_id)) == "succeeded"


def test_a_rerun_epoch_replaces_its_metric_rows_with_higher_seqs(session: Session) -> None:
    job_id = add_job(session)
    results.record_metrics(session, job_id, 1, [metric(0, "top1", 10.0), metric(0, "loss", 2.0)])
    results.record_metrics(session, job_id, 1, [metric(1, "top1", 20.0)])
    first = {m.name + str(m.epoch): m.seq for m in session.scalars(select(Metric))}
    results.record_metrics(session, job_id, 2, [metric(1, "top1", 25.0)])
    rows = session.scalars(select(Metric).where(Metric.job_id == job_id).order_by(Metric.seq)).all()
    assert [(r.epoch, r.name, r.value, r.attempt) for r in rows] == [
        (0, "top1", 10.0, 1), (0, "loss", 2.0, 1), (1, "top1", 25.0, 2),
    ]  # fmt: skip
    assert rows[-1].seq > first["top11"]
    job = session.get(Job, job_id)
    session.refresh(job)
    assert (job.epochs_done, job.best_top1) == (2, 25.0)


def test_checkpoint_rows_follow_retention_and_best_prefers_top1(session: Session) -> None:
    job_id = add_job(session)
    for epoch, top1 in ((0, 50.0), (1, 70.0), (2, 60.0)):
        name = f"epoch-000{epoch}"
        info = CheckpointRecord(name, Path(f"{name}.pt"), epoch, False, "x", 1, {"test/top1": top1})
        kept = {f"epoch-000{e}" for e in range(epoch + 1)} - {"epoch-0000"} if epoch == 2 else set()
        results.record_checkpoint(session, job_id, info, f"{job_id}/{epoch}", kept | {f"epoch-000{epoch}"})
    live = session.scalars(select(Checkpoint.name).where(Checkpoint.deleted.is_(False))).all()
    assert sorted(live) == ["epoch-0001", "epoch-0002"]
    assert results.best_checkpoint(session, job_id).name == "epoch-0001"
    assert results.latest_checkpoint(session, job_id).name == "epoch-0002"

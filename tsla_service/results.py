"""What a job produces, as rows: metrics, checkpoints and log lines, written from the core's typed
records and read by the API. Each write is one transaction."""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlalchemy import Select, and_, delete, select, tuple_, update
from sqlalchemy.orm import Session

from tsla_service.models import Checkpoint, Job, LogLine, Metric
from tsla_spec.records import CheckpointRecord, MetricRow
from tsla_spec.vocabulary import TEST_TOP1

# The longest log line kept; a traceback longer than this is cut at its end.
MAX_LOG_CHARS = 20_000


def record_metrics(session: Session, job_id: str, attempt: int, rows: Sequence[MetricRow]) -> None:
    """Store one epoch's rows in one transaction; a re-run epoch replaces its earlier rows.

    Replacing (delete + insert) gives the new values new, higher seqs, so a client paging with a
    cursor sees the re-run values instead of silently keeping the old ones.
    """
    if not rows:
        return
    keys = [(row.epoch, row.split, row.name) for row in rows]
    session.execute(
        delete(Metric).where(
            Metric.job_id == job_id, tuple_(Metric.epoch, Metric.split, Metric.name).in_(keys)
        )
    )
    session.add_all(
        Metric(
            job_id=job_id,
            epoch=row.epoch,
            step=row.step,
            split=row.split,
            name=row.name,
            value=row.value if math.isfinite(row.value) else None,
            nonfinite=nonfinite_name(row.value),
            stage=row.stage,
            attempt=attempt,
        )
        for row in rows
    )
    job = session.get(Job, job_id)
    if job is not None:
        job.epochs_done = max(job.epochs_done, max(row.epoch for row in rows) + 1)
        top1 = [row.value for row in rows if row.key == TEST_TOP1 and math.isfinite(row.value)]
        if top1:
            job.best_top1 = max(top1[0], job.best_top1 or float("-inf"))
    session.commit()


def nonfinite_name(value: float) -> str | None:
    """ "nan", "inf" or "-inf" for a value JSON and SQLite cannot hold as a number; None if finite."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return None


def finite_metrics(metrics: dict[str, float]) -> dict[str, float | None]:
    """A checkpoint's metrics as JSON can store them: non-finite values become null."""
    return {key: value if math.isfinite(value) else None for key, value in metrics.items()}


def record_checkpoint(
    session: Session, job_id: str, record: CheckpointRecord, storage_key: str, kept_names: set[str]
) -> None:
    """Add a checkpoint row and mark rows whose files the retention policy removed."""
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.name == record.name))
    session.add(
        Checkpoint(
            job_id=job_id,
            name=record.name,
            epoch=record.epoch,
            partial=record.partial,
            size=record.size,
            sha256=record.sha256,
            storage_key=storage_key,
            metrics=finite_metrics(record.metrics),
        )
    )
    session.execute(
        update(Checkpoint)
        .where(and_(Checkpoint.job_id == job_id, Checkpoint.name.not_in(kept_names | {record.name})))
        .values(deleted=True)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def mark_checkpoint_corrupt(session: Session, job_id: str, name: str) -> bool:
    """A worker found this checkpoint damaged on resume: never list, rank or serve it again (a
    re-run of its epoch writes a new row under the same name). False if there was no such row."""
    result = session.execute(
        update(Checkpoint)
        .where(Checkpoint.job_id == job_id, Checkpoint.name == name)
        .values(corrupt=True)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def append_log(session: Session, job_id: str, attempt: int, level: str, message: str) -> None:
    session.add(LogLine(job_id=job_id, attempt=attempt, level=level, message=message[:MAX_LOG_CHARS]))
    session.commit()


# --- checkpoints a client may see ------------------------------------------------------------------


def visible_checkpoints(job_id: str) -> Select[Checkpoint]:
    """The job's checkpoints whose files are kept and sound: retention marks pruned ones deleted, a
    worker that found one damaged on resume marks it corrupt."""
    return select(Checkpoint).where(
        Checkpoint.job_id == job_id, Checkpoint.deleted.is_(False), Checkpoint.corrupt.is_(False)
    )


def list_checkpoints(session: Session, job_id: str, after_id: int = 0) -> list[Checkpoint]:
    """Visible checkpoints in the order they were written, those with an id above `after_id`."""
    query = visible_checkpoints(job_id).where(Checkpoint.id > after_id).order_by(Checkpoint.id)
    return list(session.scalars(query))


def best_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    """The complete checkpoint with the highest test top-1 (the newest on ties)."""
    candidates = session.scalars(
        visible_checkpoints(job_id).where(Checkpoint.partial.is_(False)).order_by(Checkpoint.epoch.desc())
    ).all()
    if not candidates:
        return None
    return max(candidates, key=lambda c: top1_of(c.metrics))


def top1_of(metrics: dict[str, float | None]) -> float:
    """A checkpoint's test top-1 for ranking: missing or non-finite ranks last."""
    value = metrics.get(TEST_TOP1)
    return float("-inf") if value is None else value


def latest_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    """The newest checkpoint; a complete one wins over a partial one of the same epoch."""
    query = visible_checkpoints(job_id).order_by(
        Checkpoint.epoch.desc(), Checkpoint.partial.asc(), Checkpoint.id.desc()
    )
    return session.scalars(query.limit(1)).first()


def find_checkpoint(session: Session, job_id: str, ref: str | int) -> Checkpoint | None:
    """A checkpoint by reference: `best`, `latest` or its id."""
    if ref == "best":
        return best_checkpoint(session, job_id)
    if ref == "latest":
        return latest_checkpoint(session, job_id)
    return session.scalars(visible_checkpoints(job_id).where(Checkpoint.id == int(ref))).first()

"""What a job produces, as rows: metrics, checkpoints and log lines, written from the core's typed
records and read by the API. Each write is one transaction."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict

from sqlalchemy import Select, and_, delete, select, tuple_, update
from sqlalchemy.orm import Session

from tsla_service.models import Checkpoint, Job, LogLine, Metric, MetricSummary
from tsla_service.summaries import MetricKey, metric_key, update_summaries
from tsla_spec.records import CheckpointRecord, MetricRow
from tsla_spec.vocabulary import TEST_TOP1, VAL_TOP1

# The longest log line kept; a traceback longer than this is cut at its end.
MAX_LOG_CHARS = 20_000


def record_metrics(session: Session, job_id: str, attempt: int, rows: Sequence[MetricRow]) -> None:
    """Store one epoch's rows and fold them into the job's metric summaries, in one transaction;
    a re-run epoch replaces its earlier rows (and rebuilds the summaries of their metrics). Also
    sets `epochs_done` and `best_top1` (see `selected_top1`).

    Replacing (delete + insert) gives the new values new, higher seqs, so a client paging with a
    cursor sees the re-run values instead of silently keeping the old ones. The job row is
    locked before the summaries are read (on PostgreSQL; on SQLite the DELETE already holds the
    database's write lock), so two writers of one job cannot interleave their summary updates.
    """
    if not rows:
        return
    keys = [(row.epoch, row.split, row.name) for row in rows]
    session.execute(
        delete(Metric).where(
            Metric.job_id == job_id, tuple_(Metric.epoch, Metric.split, Metric.name).in_(keys)
        )
    )
    session.add_all(metric_row(job_id, attempt, row) for row in rows)
    locked = select(Job).where(Job.id == job_id).with_for_update()
    job = session.scalars(locked.execution_options(populate_existing=True)).first()
    summaries = update_summaries(session, job_id, rows, also=SELECTION_KEYS)
    if job is not None:
        job.epochs_done = max(job.epochs_done, max(row.epoch for row in rows) + 1)
        job.best_top1 = selected_top1(session, job_id, summaries, rows)
    session.commit()


SELECTION_KEYS = (metric_key(VAL_TOP1), metric_key(TEST_TOP1))


def selected_top1(
    session: Session, job_id: str, summaries: dict[MetricKey, MetricSummary], rows: Sequence[MetricRow]
) -> float | None:
    """`Job.best_top1`, for users still "the test top-1 of the selected epoch": with validation
    metrics that is test/top1 at the epoch of the best val/top1 (the newest on ties; None if that
    epoch's test/top1 is missing or not finite), else the highest test/top1, as before val/*."""
    val, test = (summaries.get(key) for key in SELECTION_KEYS)
    if val is None or val.max_epoch is None:
        return test.max_value if test is not None else None
    for row in rows:
        if row.key == TEST_TOP1 and row.epoch == val.max_epoch:
            return row.value if math.isfinite(row.value) else None
    return metric_at(session, job_id, val.max_epoch, TEST_TOP1)


def metric_at(session: Session, job_id: str, epoch: int, name: str) -> float | None:
    """One value by the unique (job_id, epoch, split, name) index; None if absent or not finite."""
    split, short = metric_key(name)
    query = select(Metric.value).where(
        Metric.job_id == job_id, Metric.epoch == epoch, Metric.split == split, Metric.name == short
    )
    return session.scalars(query).first()


def nonfinite_name(value: float) -> str | None:
    """ "nan", "inf" or "-inf" for a value JSON and SQLite cannot hold as a number; None if finite."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return None


def metric_row(job_id: str, attempt: int, row: MetricRow) -> Metric:
    """The stored form of a core record (its fields are the table's): a non-finite value is NULL
    plus its name in `nonfinite`."""
    fields = asdict(row) | {"value": row.value if math.isfinite(row.value) else None}
    return Metric(job_id=job_id, attempt=attempt, nonfinite=nonfinite_name(row.value), **fields)


def finite_metrics(metrics: dict[str, float]) -> dict[str, float | None]:
    """A checkpoint's metrics as JSON can store them: non-finite values become null."""
    return {key: value if math.isfinite(value) else None for key, value in metrics.items()}


def record_checkpoint(
    session: Session, job_id: str, record: CheckpointRecord, storage_key: str, kept_names: set[str]
) -> None:
    """Add a checkpoint row and mark rows whose files the retention policy removed."""
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.name == record.name))
    fields = {key: value for key, value in asdict(record).items() if key != "path"}
    fields["metrics"] = finite_metrics(record.metrics)
    session.add(Checkpoint(job_id=job_id, storage_key=storage_key, **fields))
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
    """The complete checkpoint selection picks: the highest val/top1 when checkpoints carry it (the
    validation split is held out from training; the test split is for the final report only),
    else the highest test/top1; the newest on ties."""
    candidates = session.scalars(
        visible_checkpoints(job_id).where(Checkpoint.partial.is_(False)).order_by(Checkpoint.epoch.desc())
    ).all()
    if not candidates:
        return None
    ranked_by = VAL_TOP1 if any(VAL_TOP1 in c.metrics for c in candidates) else TEST_TOP1
    return max(candidates, key=lambda c: rank_value(c.metrics, ranked_by))


def rank_value(metrics: dict[str, float | None], name: str) -> float:
    """A checkpoint's `name` for ranking: missing or non-finite ranks last."""
    value = metrics.get(name)
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

"""Per job and metric, the few numbers the experiment tables read instead of the metric rows:
a summary row (last, max, min) and a record row for each new running maximum.

Both are kept up to date by `results.record_metrics`, in the transaction that stores the
epoch's rows: an epoch after the summary's last one is folded in (constant work: an UPDATE, and
an INSERT when it sets a record); an epoch at or before it (a re-run epoch replacing its rows,
which is rare) rebuilds that metric's summary and records from its rows. So reading the last or
best value of a job is one row, and the first epoch reaching a target one index probe, however
long the job's history is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields

from sqlalchemy import delete, select, tuple_
from sqlalchemy.orm import Session

from tsla_service.models import Metric, MetricRecord, MetricSummary
from tsla_spec.records import MetricRow

# (split, name), e.g. ("val", "top1")
MetricKey = tuple[str, str]


def metric_key(name: str) -> MetricKey:
    """ "val/top1" -> ("val", "top1")."""
    split, _, short = name.partition("/")
    return split, short


@dataclass
class Summary:
    """A `MetricSummary`'s columns, and the records (new running maxima) taken in since it was
    read; non-finite values (None) count, but are never a max, min or record."""

    last_epoch: int = -1
    last_value: float | None = None
    max_value: float | None = None
    max_epoch: int | None = None  # the newest epoch with max_value, like the best checkpoint
    min_value: float | None = None
    min_epoch: int | None = None
    count: int = 0
    records: list[tuple[int, float]] = field(default_factory=list)  # (epoch, value), rising

    def add(self, epoch: int, value: float | None) -> None:
        """Take in the value of an epoch after `last_epoch`."""
        self.last_epoch, self.last_value, self.count = epoch, value, self.count + 1
        if value is None:
            return
        if self.max_value is None or value > self.max_value:
            self.records.append((epoch, value))
        if self.max_value is None or value >= self.max_value:
            self.max_value, self.max_epoch = value, epoch
        if self.min_value is None or value <= self.min_value:
            self.min_value, self.min_epoch = value, epoch

    @classmethod
    def of(cls, points: Iterable[tuple[int, float | None]]) -> Summary:
        """The summary of (epoch, value) pairs in any order."""
        summary = cls()
        for epoch, value in sorted(points, key=lambda point: point[0]):
            summary.add(epoch, value)
        return summary


COLUMNS = tuple(column.name for column in fields(Summary) if column.name != "records")


def read(row: MetricSummary) -> Summary:
    return Summary(**{column: getattr(row, column) for column in COLUMNS})


def write(row: MetricSummary, summary: Summary) -> None:
    for column in COLUMNS:
        setattr(row, column, getattr(summary, column))


def record_rows(job_id: str, key: MetricKey, summary: Summary) -> list[MetricRecord]:
    split, name = key
    return [MetricRecord(job_id=job_id, split=split, name=name, epoch=e, value=v) for e, v in summary.records]


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def update_summaries(
    session: Session, job_id: str, rows: Sequence[MetricRow], also: Iterable[MetricKey] = ()
) -> dict[MetricKey, MetricSummary]:
    """Fold one write's rows (already added to the session) into the job's summaries; returns
    the summaries of their metrics and of the `also` ones that exist."""
    keys = {(row.split, row.name) for row in rows} | set(also)
    query = select(MetricSummary).where(
        MetricSummary.job_id == job_id, tuple_(MetricSummary.split, MetricSummary.name).in_(list(keys))
    )
    found = {(row.split, row.name): row for row in session.scalars(query)}
    working: dict[MetricKey, Summary] = {}
    stale: set[MetricKey] = set()
    for row in sorted(rows, key=lambda row: row.epoch):
        key: MetricKey = (row.split, row.name)
        if key not in working:
            working[key] = read(found[key]) if key in found else Summary()
        if key in stale or row.epoch <= working[key].last_epoch:
            stale.add(key)  # a replaced or late epoch: rebuilt from the rows below
            continue
        working[key].add(row.epoch, finite_or_none(row.value))
    for key, summary in working.items():
        if key not in found:
            found[key] = MetricSummary(job_id=job_id, split=key[0], name=key[1])
            session.add(found[key])
        write(found[key], summary)  # a stale one's is replaced by the rebuild
        if key not in stale:
            session.add_all(record_rows(job_id, key, summary))
    if stale:
        rebuild(session, job_id, {key: found[key] for key in stale})
    return found


def rebuild(session: Session, job_id: str, summaries: dict[MetricKey, MetricSummary]) -> None:
    """Recompute these summaries and their records from the job's stored rows (the session's
    pending ones included)."""
    keys = list(summaries)
    session.execute(
        delete(MetricRecord).where(
            MetricRecord.job_id == job_id, tuple_(MetricRecord.split, MetricRecord.name).in_(keys)
        )
    )
    query = select(Metric.split, Metric.name, Metric.epoch, Metric.value).where(
        Metric.job_id == job_id, tuple_(Metric.split, Metric.name).in_(keys)
    )
    points: dict[MetricKey, list[tuple[int, float | None]]] = {key: [] for key in summaries}
    for split, name, epoch, value in session.execute(query):
        points[(split, name)].append((epoch, value))
    for key, row in summaries.items():
        summary = Summary.of(points[key])
        write(row, summary)
        session.add_all(record_rows(job_id, key, summary))

"""Database tables. The job row is the source of truth; Celery messages carry only its id."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from tsla_service.db import Base

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identities.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None and value.tzinfo else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return uuid.uuid4().hex


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    method: Mapped[str] = mapped_column(String(16))
    dataset: Mapped[str] = mapped_column(String(32))
    epochs: Mapped[int] = mapped_column(Integer)
    teacher_job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    epochs_done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    best_top1: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # The 201 body first returned for an Idempotency-Key, replayed verbatim to retries.
    create_response: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The broker queue it is sent to (tsla_service/queues.py); rows older than revision 0007 had
    # the one queue `training`.
    queue: Mapped[str] = mapped_column(String(64), server_default="training")
    # Set once the id is on the queue; NULL means the broker was unreachable and the reaper sends it.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Python-side defaults: SQLite's CURRENT_TIMESTAMP has whole-second resolution.
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), server_default=func.now(), default=utcnow, onupdate=utcnow
    )
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # A job of an experiment: the grid values that made it (after collapsing), the sha256 of its
    # resolved spec (one job per spec and experiment), "cell" or "teacher", and its send order.
    experiment_id: Mapped[str | None] = mapped_column(ForeignKey("experiments.id"), index=True)
    cell: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    cell_key: Mapped[str | None] = mapped_column(String(64))
    role: Mapped[str | None] = mapped_column(String(16))
    position: Mapped[int | None] = mapped_column(Integer)
    # Queued but not to be sent yet: waiting for its teacher or for a slot of its experiment's
    # max_concurrent (tsla_service/experiments.py releases it).
    held: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # What trained it, recorded by the worker when training starts (versions, device, data, commit).
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_created", "owner", "created_at", "id"),
        # A unique index rather than a constraint: SQLite adds it without rebuilding `jobs`.
        Index("uq_jobs_experiment_cell_key", "experiment_id", "cell_key", unique=True),
    )


class Experiment(Base):
    """A base spec and a grid over it; its cells are jobs (`Job.experiment_id`), made by the same
    submission code as any job. The row groups them and holds the objective and the schedule."""

    __tablename__ = "experiments"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    base: Mapped[dict[str, Any]] = mapped_column(JSON)  # as given: a preset and overrides
    grid: Mapped[dict[str, list[Any]]] = mapped_column(JSON)  # {dotted key: [values]}, in given order
    # As given: null, {"job": id}, {"cell": {...grid values...}} or {"spec": raw spec}.
    teacher: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    teacher_job_id: Mapped[str | None] = mapped_column(String(32))  # the job "-pre" cells learn from
    objective_metric: Mapped[str] = mapped_column(String(64), default="test/top1", server_default="test/top1")
    objective_mode: Mapped[str] = mapped_column(String(8), default="max", server_default="max")
    max_concurrent: Mapped[int] = mapped_column(Integer)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    order: Mapped[str] = mapped_column(String(16), default="shuffled", server_default="shuffled")
    canceled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # Combinations of the grid that run as another cell: [{"cell": {...}, "same_as": {...}}].
    collapsed: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    create_response: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), server_default=func.now(), default=utcnow, onupdate=utcnow
    )
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # when every job has finished

    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_experiments_owner_idempotency_key"),
        Index("ix_experiments_owner_created", "owner", "created_at", "id"),
    )


class ApiToken(Base):
    """A bearer token, stored as its sha256; the jobs it creates are visible to it alone.

    `role` is "user", or "operator" for tokens that may also read the service-wide `/metrics`."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="user", server_default="user")
    # Python-side defaults: SQLite's CURRENT_TIMESTAMP has whole-second resolution.
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Set by every submission; the UPDATE that sets it also serialises one token's submissions.
    last_submit_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WorkerBeat(Base):
    """A worker process that consumes the queue, as last seen; readiness reads it."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid:random
    queues: Mapped[list[str]] = mapped_column(JSON)
    job_id: Mapped[str | None] = mapped_column(String(32))  # the job it trains, if any
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class Metric(Base):
    """One value per (job, epoch, split, name); `seq` orders rows for cursor paging."""

    __tablename__ = "metrics"

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(8))
    name: Mapped[str] = mapped_column(String(64))
    # NULL with `nonfinite` set for a NaN or infinite value: every backend and JSON carry that.
    value: Mapped[float | None] = mapped_column(Float)
    nonfinite: Mapped[str | None] = mapped_column(String(4))  # "nan", "inf" or "-inf"
    stage: Mapped[str] = mapped_column(String(8))
    attempt: Mapped[int] = mapped_column(Integer)
    time: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("job_id", "epoch", "split", "name", name="uq_metrics_job_epoch_split_name"),
        Index("ix_metrics_job_seq", "job_id", "seq"),
        Index("ix_metrics_job_name_seq", "job_id", "name", "seq"),
        {"sqlite_autoincrement": True},
    )


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int] = mapped_column(Integer)
    partial: Mapped[bool] = mapped_column(Boolean)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(500))
    metrics: Mapped[dict[str, float | None]] = mapped_column(JSON)  # null: not finite
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # Found damaged (sha256 mismatch) when a worker tried to resume from it: never offered again.
    corrupt: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # Python-side defaults: SQLite's CURRENT_TIMESTAMP has whole-second resolution.
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("job_id", "name", name="uq_checkpoints_job_name"),
        {"sqlite_autoincrement": True},
    )


class LogLine(Base):
    __tablename__ = "logs"

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    time: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now(), default=utcnow)

    __table_args__ = (Index("ix_logs_job_seq", "job_id", "seq"), {"sqlite_autoincrement": True})


class MetricSummary(Base):
    """Per job and metric (`split/name`): the last, highest and lowest values, kept by
    `results.record_metrics` (tsla_service/summaries.py) so that experiment tables read one row
    per job and metric instead of the job's history."""

    __tablename__ = "metric_summaries"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    split: Mapped[str] = mapped_column(String(8), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_epoch: Mapped[int] = mapped_column(Integer)
    last_value: Mapped[float | None] = mapped_column(Float)  # null: the last value is not finite
    max_value: Mapped[float | None] = mapped_column(Float)  # of the finite values; null: none
    max_epoch: Mapped[int | None] = mapped_column(Integer)  # the newest epoch with max_value
    min_value: Mapped[float | None] = mapped_column(Float)
    min_epoch: Mapped[int | None] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer)  # rows, non-finite ones included


class MetricRecord(Base):
    """A new running maximum of a job's metric: an epoch whose finite value beat every earlier
    one (kept with the summary). Epochs and values both rise along a metric's records, so the
    first epoch reaching a target is the record with the lowest value at or above it: one probe
    of the (job, metric, value) index, however many records there are."""

    __tablename__ = "metric_records"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    split: Mapped[str] = mapped_column(String(8), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_metric_records_job_id_split_name_value", "job_id", "split", "name", "value"),)


class Dataset(Base):
    """A data set a token uploaded, stored in the checkpoint storage under its content hash
    (`datasets/<sha256>/`, the canonical layout of tsla_spec/uploads.py). Names are per token;
    two tokens that upload the same content share the stored files."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))  # of the canonical content
    source_sha256: Mapped[str] = mapped_column(String(64))  # of the archive as uploaded
    source_bytes: Mapped[int] = mapped_column(BigInteger)
    stored_bytes: Mapped[int] = mapped_column(BigInteger)  # the canonical files together
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)  # a tsla_spec.uploads.DatasetManifest
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("owner", "name", name="uq_datasets_owner_name"),
        Index("ix_datasets_sha256", "sha256"),
    )


class DatasetUpload(Base):
    """An upload in progress: the bytes received so far are the API host's file
    `<TSLA_HOME>/uploads/<id>.part`, whose size is the offset a client resumes from."""

    __tablename__ = "dataset_uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)  # declared by the client
    sha256: Mapped[str] = mapped_column(String(64))  # declared by the client, checked at the end
    source_format: Mapped[str | None] = mapped_column(String(8))  # None: sniffed from the bytes
    image_size: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), server_default=func.now(), default=utcnow, onupdate=utcnow
    )

    __table_args__ = (Index("ix_dataset_uploads_owner_name", "owner", "name"),)

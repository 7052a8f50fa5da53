"""Service settings, read from `TSLA_*` environment variables.

With nothing set, everything lives under `TSLA_HOME` (default `./.tsla`): a SQLite database, a
filesystem Celery broker and the checkpoints, so the embedded default needs no server.
Production sets `TSLA_DATABASE_URL` (PostgreSQL), `TSLA_BROKER_URL` (Redis) and
`TSLA_STORAGE_URL` (a shared volume or an fsspec URL such as `s3://bucket/tsla`), and names its
queues in `TSLA_QUEUES` and `TSLA_DEVICE_QUEUES` (the rule: tsla_service/queues.py).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tsla_service.queues import check_queue_settings


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TSLA_", extra="ignore")

    home: Path = Field(Path(".tsla"), description="state folder of the embedded default")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///HOME/tsla.db")
    broker_url: str | None = Field(
        None, description="Celery broker; default a filesystem broker in HOME/broker"
    )
    storage_url: str | None = Field(
        None, description="checkpoint storage (path or fsspec URL); default HOME/checkpoints"
    )
    work_dir: Path | None = Field(
        None, description="worker scratch space for remote storage; default HOME/work"
    )
    # Object storage (s3://bucket/prefix, tsla_service/storage.py). Credentials and region come
    # from the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION).
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, moto); default AWS's own"
    )
    # A file of at least twice this size goes up as a multipart upload (S3's smallest part: 5 MiB).
    storage_part_bytes: int = Field(64 * 1024**2, ge=5 * 1024**2, description="one part of an upload")
    storage_retry_seconds: float = Field(
        300.0, ge=0, description="how long a worker waits out unreachable storage before it gives up"
    )
    data_root: Path = Field(Path("data"), description="folder holding the named data sets")
    # NoDecode: the value is read by `_split_queues`, so a plain `gpu,cpu` works besides JSON.
    queues: Annotated[list[str], NoDecode] = Field(
        ["training"], description="broker queues, comma-separated or a JSON list; the first is the default"
    )
    device_queues: dict[str, str] = Field(
        {}, description='JSON: the queue of jobs by device kind (auto, cpu, cuda), e.g. {"cuda": "gpu"}'
    )
    # The lease a worker holds on a running job; it renews it every lease_seconds / 3.
    lease_seconds: float = Field(60.0, gt=0)
    # Seconds between a worker's polls of the broker's filesystem folder (embedded default).
    broker_poll_seconds: float = Field(0.1, gt=0)
    # Redis broker: a message unacknowledged this long is delivered again (see tsla_service/queue.py).
    visibility_timeout_seconds: int = Field(6 * 3600, gt=0)
    max_body_bytes: int = Field(1_000_000, gt=0)
    metrics_page_max: int = Field(5000, gt=0)
    # How often an event stream re-reads the database when no notification arrives.
    events_poll_seconds: float = Field(1.0, gt=0)
    events_ping_seconds: float = Field(15.0, gt=0)
    max_active_jobs_per_token: int = Field(20, gt=0, description="queued + running jobs per token (429)")
    # The source commit for jobs' provenance where the worker's code is not a git checkout.
    git_commit: str | None = Field(None, description="source commit of an installed package (provenance)")
    # Checked on the grid's product size before it is expanded (422 beyond).
    max_experiment_cells: int = Field(500, gt=0, description="cells one experiment's grid may have")
    # What one job may need, by tsla_spec/resources.py's estimate (422 beyond). The defaults admit
    # the paper's presets: cifar100-resnet18 holds 1.8e8 bytes of data, imagenet-resnet50 has
    # 2.6e7 parameters and keeps about 2.3e10 bytes of activations per batch of 256.
    max_data_bytes: int = Field(8_000_000_000, gt=0, description="data held on the training device")
    max_parameters: int = Field(200_000_000, gt=0, description="model parameters")
    max_activation_bytes: int = Field(
        40_000_000_000, gt=0, description="activations kept for the backward pass of one batch"
    )
    # Uploaded data sets (tsla_service/datasets.py): caps on what an upload may be (413 beyond),
    # and how long an unfinished upload is kept for a client to resume it.
    max_upload_bytes: int = Field(2 * 1024**3, gt=0, description="an uploaded archive or .npz")
    max_upload_files: int = Field(200_000, gt=0, description="members of an uploaded archive")
    max_upload_expanded_bytes: int = Field(8 * 1024**3, gt=0, description="an archive's size unpacked")
    max_upload_ratio: float = Field(200.0, gt=1, description="unpacked over packed size (a zip bomb)")
    max_upload_chunk_bytes: int = Field(64 * 1024**2, gt=0, description="one PATCH of an upload")
    max_datasets_per_token: int = Field(100, gt=0, description="uploaded data sets a token may keep")
    upload_expiry_seconds: float = Field(24 * 3600, gt=0, description="an unfinished upload's lifetime")

    @field_validator("queues", mode="before")
    @classmethod
    def _split_queues(cls, value: Any) -> Any:
        """TSLA_QUEUES=gpu,cpu or TSLA_QUEUES='["gpu", "cpu"]'."""
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [name.strip() for name in text.split(",")]
        return value

    @model_validator(mode="after")
    def _check_queues(self) -> Settings:
        check_queue_settings(self.queues, self.device_queues)
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'tsla.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        return (self.home / "broker").resolve()

    @property
    def events_url(self) -> str | None:
        """Redis for change notifications: the broker when it is Redis, else none (poll)."""
        url = self.resolved_broker_url
        return url if url.startswith(("redis://", "rediss://")) else None

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str((self.home / "checkpoints").resolve())

    @property
    def uploads_dir(self) -> Path:
        """Where the API keeps the bytes of unfinished uploads (one file each)."""
        return self.home / "uploads"

    @property
    def resolved_work_dir(self) -> Path:
        return (self.work_dir or self.home / "work").resolve()

    def broker_transport_options(self) -> dict[str, Any]:
        """Celery transport options for the broker URL (the API and the worker must agree)."""
        if self.resolved_broker_url.startswith("filesystem://"):
            folder = self.broker_folder
            for sub in ("in", "processed", "control"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            return {
                "data_folder_in": str(folder / "in"),
                "data_folder_out": str(folder / "in"),
                "processed_folder": str(folder / "processed"),
                "control_folder": str(folder / "control"),
                "store_processed": False,
                "polling_interval": self.broker_poll_seconds,
            }
        return {"visibility_timeout": self.visibility_timeout_seconds}


@lru_cache
def get_settings() -> Settings:
    """The process's settings; tests clear the cache after changing the environment."""
    return Settings()

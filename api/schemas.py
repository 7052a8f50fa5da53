"""The API contract: one schema family per resource, never the database tables themselves."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tsla_spec.spec import DisplayName
from tsla_spec.vocabulary import JobState


class JobCreate(BaseModel):
    """A run spec (see `RunSpec`) plus a name. `preset` names a starting point; every other
    field overrides it and nested sections merge key by key, so `{"preset": "digits"}` alone is
    a complete job."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # a JSON 0 is not a boolean, "10" is not an integer
        json_schema_extra={
            "examples": [{"preset": "digits", "smoothing": {"method": "tsla", "switch_epoch": 6}}]
        },
    )

    name: DisplayName | None = Field(None, description="1-200 printable characters, not padded")
    max_attempts: int | None = Field(None, ge=1, le=20, description="attempts before the job fails")
    preset: str | None = Field(None, max_length=64)
    data: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    optim: dict[str, Any] | None = None
    schedule: dict[str, Any] | None = None
    smoothing: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None
    grad_variance: dict[str, Any] | None = None
    epochs: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    device: str | None = None
    precision: str | None = None
    channels_last: bool | None = None
    on_nonfinite: str | None = None

    def spec_fields(self) -> dict[str, Any]:
        """The spec part of the body; a null field means "not given" (the preset's or default)."""
        return self.model_dump(exclude_unset=True, exclude_none=True, exclude={"name", "max_attempts"})


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    state: JobState
    method: str
    dataset: str
    epochs: int
    epochs_done: int
    best_top1: float | None
    attempt: int
    max_attempts: int
    cancel_requested: bool
    error: str | None
    teacher_job_id: str | None
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobsPublic(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None = Field(description="pass as `cursor` for the next (older) page; null at the end")


class MetricPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int
    epoch: int
    step: int
    split: str
    name: str
    value: float | None = Field(description="null when the value is not finite (see `nonfinite`)")
    nonfinite: Literal["nan", "inf", "-inf"] | None = Field(
        None, description="a NaN or infinite value, which JSON cannot carry as a number"
    )
    stage: str
    attempt: int
    time: datetime


class MetricsPage(BaseModel):
    items: list[MetricPublic]
    next_after: int | None = Field(
        description="pass as `after` to continue; the last seq seen (null: none yet)"
    )
    has_more: bool = Field(description="true when more rows exist right now beyond this page")


class LogPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int
    attempt: int
    level: str
    message: str
    time: datetime


class LogsPage(BaseModel):
    items: list[LogPublic]
    next_after: int | None
    has_more: bool


class CheckpointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    epoch: int
    partial: bool
    size: int
    sha256: str
    metrics: dict[str, float | None]
    created_at: datetime


class CheckpointsPublic(BaseModel):
    items: list[CheckpointPublic]
    best_id: int | None
    latest_id: int | None


class DatasetPublic(BaseModel):
    name: str
    description: str
    num_classes: int | None
    available: bool
    problem: str | None


class Readiness(BaseModel):
    status: Literal["ready"]
    workers: int = Field(description="worker processes seen consuming lately")
    queues: list[str] = Field(description="the queues they consume")


class Message(BaseModel):
    """Every error: a one-line `detail`; validation errors also list each problem."""

    detail: str
    errors: list[dict[str, Any]] | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        "model": Message,
        "description": "a malformed request: a non-printable character in the URL or a header, "
        "or a body that is not UTF-8 JSON",
    },
    401: {"model": Message, "description": "missing, invalid or revoked bearer token"},
    422: {"model": Message, "description": "invalid input; `detail` says which field and why"},
}
JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {"model": Message, "description": "no such job for this token"},
}

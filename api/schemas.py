"""The API contract: one schema family per resource, never the database tables themselves."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tsla_spec.spec import DisplayName, JobRef
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
    resources: dict[str, Any] | None = None
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
    queue: str = Field(description="the broker queue it is sent to: resources.queue, else by its device")
    teacher_job_id: str | None
    experiment_id: str | None = Field(description="the experiment the job is a cell or the teacher of")
    spec: dict[str, Any]
    provenance: dict[str, Any] | None = Field(
        description="what trained it, recorded when training started: torch, device, package version, "
        "data set identity and sha256, split sizes (tsla_spec.records.RunInfo) and `git_commit`"
    )
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobsPublic(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None = Field(description="pass as `cursor` for the next (older) page; null at the end")


# --- experiments: a base spec and a grid, whose cells are jobs (tsla_service/experiments.py) ---------


class ExperimentTeacher(BaseModel):
    """Where the "-pre" cells' teacher comes from: exactly one of `job`, `cell` or `spec`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    job: JobRef | None = Field(None, description="a succeeded job of this token, on the same data set")
    cell: dict[str, Any] | None = Field(
        None, description="one of the experiment's own cells (not a -pre one), by its grid values"
    )
    spec: dict[str, Any] | None = Field(
        None, description="a run spec the experiment trains first; a teacher, not a cell of the table"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ExperimentTeacher:
        if sum(source is not None for source in (self.job, self.cell, self.spec)) != 1:
            raise ValueError("give exactly one of job, cell or spec")
        return self


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    metric: str = Field("test/top1", max_length=64, description="the metric cells are ranked by")
    mode: Literal["max", "min"] | None = Field(None, description="default: min for losses, else max")


# A grid: dotted spec keys (as `--set` takes them) to the values to try, in order.
Grid = Annotated[dict[str, list[Any]], Field(max_length=64)]


class ExperimentCreate(BaseModel):
    """A base spec and a grid over it. Every cell is `deep_merge(base, cell)` validated like a
    POST /jobs spec before anything is stored; cells whose method ignores a key collapse."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "switch epoch sweep",
                    "base": {"preset": "digits", "epochs": 10},
                    "grid": {
                        "smoothing.method": ["lsr", "tsla"],
                        "smoothing.switch_epoch": [4, 6],
                        "seed": [0, 1],
                    },
                }
            ]
        },
    )

    name: DisplayName = Field(description="1-200 printable characters, not padded")
    base: dict[str, Any] = Field(description="a run spec as for POST /jobs: a preset and overrides")
    grid: Grid = Field(description="dotted spec key -> non-empty list of values; cells are their product")
    teacher: ExperimentTeacher | None = None
    objective: Objective = Field(default_factory=Objective)
    max_concurrent: int = Field(4, ge=1, le=1000, description="most jobs of it sent at once")
    order: Literal["shuffled", "grid"] = Field("shuffled", description="the order cells are sent in")
    max_attempts: int | None = Field(None, ge=1, le=20, description="attempts before a job fails")


class CellsCreate(BaseModel):
    """More values for the grid's existing keys; only the cells no job has yet are added."""

    model_config = ConfigDict(extra="forbid", strict=True)

    grid: Grid


ExperimentState = Literal["queued", "running", "succeeded", "failed", "canceled"]


class ExperimentJob(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    cell: dict[str, Any] | None = Field(description="the grid values that made it; null for the teacher")
    role: Literal["cell", "teacher"]
    state: JobState
    position: int = Field(description="its place in the send order")
    held: bool = Field(description="queued but not sent yet: waiting for its teacher or for a slot")
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None


class ObjectivePublic(BaseModel):
    metric: str
    mode: Literal["max", "min"]


class ExperimentSummary(BaseModel):
    id: str
    name: str
    state: ExperimentState = Field(
        description="queued (no job started), running, canceled, or once every job finished: "
        "succeeded (every cell succeeded) or failed"
    )
    counts: dict[str, int] = Field(description="its jobs per job state (a teacher included)")
    cells: int = Field(description="cells of the table (jobs with role cell)")
    objective: ObjectivePublic
    max_concurrent: int
    order: Literal["shuffled", "grid"]
    canceled: bool
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = Field(description="when its last job finished; null while any runs")


class ExperimentPublic(ExperimentSummary):
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    teacher: dict[str, Any] | None = Field(description="as given: {job}, {cell} or {spec}")
    teacher_job_id: str | None = Field(description="the job -pre cells learn from")
    max_attempts: int
    collapsed: list[dict[str, Any]] = Field(
        description="grid combinations that run as another cell: {cell: values given, same_as: the cell}"
    )
    jobs: list[ExperimentJob] = Field(description="in send order")


class ExperimentsPublic(BaseModel):
    items: list[ExperimentSummary]
    next_cursor: str | None = Field(description="pass as `cursor` for the next (older) page; null at the end")


class CellsAdded(BaseModel):
    added: list[ExperimentJob] = Field(description="jobs made for cells that had none")
    existing: list[ExperimentJob] = Field(description="cells of the grid that already had a job (not re-run)")
    collapsed: list[dict[str, Any]]


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
    """A data set a job can name: a built-in one (installed on this server or not) or one of the
    token's uploads, with what its checks found."""

    name: str
    kind: Literal["builtin", "uploaded"]
    description: str
    num_classes: int | None
    available: bool
    problem: str | None
    classes: list[str] | None = None
    shape: list[int] | None = Field(None, description="(channels, height, width)")
    num_train: int | None = None
    num_test: int | None = None
    train_counts: list[int] | None = None
    test_counts: list[int] | None = None
    sha256: str | None = Field(None, description="content hash; jobs record it (data.uploaded)")
    bytes: int | None = Field(None, description="stored size of the canonical files")
    source: str | None = Field(None, description="what was uploaded: tar, tar.gz, zip or npz")
    source_bytes: int | None = None
    created_at: datetime | None = None
    findings: dict[str, Any] | None = Field(
        None, description="reported, not refused: class imbalance, train/test duplicates, notes"
    )


DatasetName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class UploadCreate(BaseModel):
    """Start (or resume) an upload: the name, and the size and sha256 of the bytes to come."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: DatasetName
    size: int = Field(ge=1, le=2**62, description="bytes the client will send")
    sha256: Sha256Hex
    format: Literal["tar", "tar.gz", "zip", "npz"] | None = Field(None, description="default: from the bytes")
    image_size: int | None = Field(None, ge=4, le=1024, description="resize every image to this square size")


class UploadPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    size: int
    offset: int = Field(description="bytes received; send the next chunk with Upload-Offset: this")
    sha256: str
    created_at: datetime


class Readiness(BaseModel):
    status: Literal["ready"]
    workers: int = Field(description="worker processes seen consuming lately")
    queues: list[str] = Field(description="the queues they consume")
    consumed: dict[str, bool] = Field(
        description="each queue of this server (TSLA_QUEUES): whether a live worker consumes it"
    )


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


# --- experiment results: the table, its CSV and curves (tsla_service/experiment_results.py) ---


class EstimatePublic(BaseModel):
    """Mean ± sample standard deviation (ddof=1) over the `n` jobs that have a finite value."""

    model_config = ConfigDict(from_attributes=True)

    mean: float
    std: float | None = Field(description="null for a single job")
    n: int


class TableRowPublic(BaseModel):
    """One group of an experiment's cells (every grid value but `seed`); each estimate is over
    the group's succeeded jobs, null when none of them has the value."""

    model_config = ConfigDict(from_attributes=True)

    group: dict[str, Any] = Field(description="the grid values of the group's cells, all but seed")
    n: int = Field(description="jobs in the group, any state")
    n_succeeded: int
    final: EstimatePublic | None = Field(description="the objective metric at the last epoch")
    best: EstimatePublic | None = Field(description="the objective's best epoch (max or min by its mode)")
    top5: EstimatePublic | None = Field(description="test/top5 at the last epoch")
    selected_test: EstimatePublic | None = Field(
        description="test/top1 at the epoch with the best val/top1 (jobs that logged val metrics)"
    )
    epochs_to_target: EstimatePublic | None = Field(
        description="epochs trained until test/top1 first reached `target` (jobs that reached it)"
    )
    reached: int | None = Field(description="succeeded jobs that reached `target`; null without one")
    early_grad_var: EstimatePublic | None = Field(
        description="mean train/grad_var over the first `early_epochs` epochs"
    )
    p_value: float | None = Field(
        description="Welch's t-test of `final` against the baseline group (same non-smoothing values)"
    )
    is_best: bool = Field(description="the best `final` mean by the objective's mode")
    job_ids: list[str]


class CurvePointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    mean: float
    std: float | None
    n: int = Field(description="jobs of the group with a finite value at this epoch")


class CurveGroupPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    group: dict[str, Any]
    job_ids: list[str]
    points: list[CurvePointPublic]


class CurvesPublic(BaseModel):
    experiment_id: str
    name: str = Field(description="the metric, split/name")
    groups: list[CurveGroupPublic]


EXPERIMENT_RESULTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {"model": Message, "description": "no such experiment for this token"},
}


class ExperimentDetail(ExperimentPublic):
    """An experiment with its results table (tsla_service/experiment_results.py)."""

    table: list[TableRowPublic] = Field(description="one row per group of cells (every grid value but seed)")

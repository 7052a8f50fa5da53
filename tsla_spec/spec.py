"""The run spec: one typed, validated description of a training run.

The API validates job specs with it, the worker hands it to the core, and the core trains from
it. Unknown keys are rejected everywhere (`extra="forbid"`), so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from tsla_spec.datasets import DATASETS
from tsla_spec.presets import PRESETS
from tsla_spec.uploads import NAME_PATTERN, SHA256_PATTERN
from tsla_spec.vocabulary import TEACHER_METHODS, TWO_STAGE_METHODS, Method


def dataset_name(name: str) -> str:
    """A built-in data set's name, or one a token gave its uploaded data set (tsla_spec/uploads.py)."""
    if name in DATASETS or NAME_PATTERN.fullmatch(name):
        return name
    raise ValueError(
        f"not a data set name: the built-in ones are {', '.join(DATASETS)}; an uploaded one is "
        "1-64 lower-case letters, digits, '.', '_' or '-'"
    )


DatasetName = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(dataset_name)]


def printable(text: str) -> str:
    """`text`, if every character is printable: no control, format (bidi), separator or
    unassigned characters, which could hide text or break a terminal or a log line."""
    if not text.isprintable():
        bad = next(char for char in text if not char.isprintable())
        raise ValueError(f"must be printable text; U+{ord(bad):04X} is not printable")
    return text


def trimmed(text: str) -> str:
    if text != text.strip():
        raise ValueError("must not start or end with whitespace")
    return text


# Free text in a spec: printable characters only, and bounded (a job id, a file path).
JobRef = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(printable)]
FilePath = Annotated[str, StringConstraints(min_length=1, max_length=4096), AfterValidator(printable)]
# A name a person gives (a job's, an experiment's): 1-200 printable characters, not padded.
DisplayName = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(printable), AfterValidator(trimmed)
]
# An uploaded data set's default `data.val_fraction`, as for the built-in tensor sets.
UPLOADED_VAL_FRACTION = 0.1
# Epoch numbers a spec may name (milestones, the switch): `epochs` is at most this.
MAX_EPOCHS = 10_000
Epoch = Annotated[int, Field(ge=1, le=MAX_EPOCHS)]


class StrictModel(BaseModel):
    # Input is validated in strict JSON mode by `build_spec`; these hold for stored specs too.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SyntheticSpec(StrictModel):
    """Shape of the generated data set used by benchmarks."""

    num_train: int = Field(4096, ge=1, le=1_000_000)
    num_test: int = Field(1024, ge=1, le=1_000_000)
    num_classes: int = Field(10, ge=2, le=10_000)
    channels: int = Field(3, ge=1, le=4)
    image_size: int = Field(32, ge=4, le=512)


class UploadedData(StrictModel):
    """What an uploaded data set's name stood for when the job was submitted, filled in by the
    service from the data set's record (a spec that gives it must give exactly that): the job
    trains on this content, whatever happens to the name later."""

    sha256: str = Field(pattern=SHA256_PATTERN.pattern)
    shape: tuple[Annotated[int, Field(ge=1, le=3)], Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]
    num_train: int = Field(ge=1)
    num_test: int = Field(ge=1)
    num_classes: int = Field(ge=2)


class DataSpec(StrictModel):
    name: DatasetName = "digits"
    uploaded: UploadedData | None = None  # for an uploaded data set's name; set by the service
    augment: bool = True
    # Loader processes for folder data sets (ImageNet); tensor data sets live on the device.
    num_workers: int = Field(0, ge=0, le=32)
    synthetic: SyntheticSpec = SyntheticSpec()
    # Share of the training examples held out as the validation split, which selection (the best
    # checkpoint, a teacher) reads instead of the test split. None: the data set's default.
    val_fraction: float | None = Field(None, ge=0, le=0.5)
    # Seeds the subset, the validation split and the exact probe's batch. Not the run's `seed`:
    # every run of an experiment (each seed of a grid) trains and selects on the same examples.
    split_seed: int = Field(0, ge=0, le=2**31 - 1)
    # Train on this many training examples (stratified by class, drawn before the validation split).
    train_subset: int | None = Field(None, ge=2, le=10_000_000)

    def resolved_val_fraction(self) -> float:
        """`val_fraction`, or the registry's default for this data set."""
        if self.val_fraction is not None:
            return self.val_fraction
        info = DATASETS.get(self.name)
        return info.val_fraction if info is not None else UPLOADED_VAL_FRACTION

    @property
    def is_uploaded(self) -> bool:
        return self.name not in DATASETS

    @model_validator(mode="after")
    def _uploaded_only_for_uploads(self) -> DataSpec:
        if self.uploaded is not None and not self.is_uploaded:
            raise ValueError(f"data.uploaded: {self.name} is a built-in data set, not an uploaded one")
        return self

    @model_validator(mode="after")
    def _subset_fits(self) -> DataSpec:
        if self.train_subset is None:
            return self
        classes: int | None
        available: int | None
        if self.name == "synthetic":
            classes, available = self.synthetic.num_classes, self.synthetic.num_train
        elif self.is_uploaded:  # checked once the service has filled in `uploaded`
            if self.uploaded is None:
                return self
            classes, available = self.uploaded.num_classes, self.uploaded.num_train
        else:  # the registry's counts; an ImageFolder tree's are known only once it is read
            info = DATASETS[self.name]
            classes, available = info.num_classes, None if info.streamed else info.num_train
        if classes is not None and self.train_subset < classes:
            raise ValueError(
                f"data.train_subset ({self.train_subset}) must be at least the number of classes "
                f"({classes}): every class keeps a training example"
            )
        if available is not None and self.train_subset > available:
            raise ValueError(
                f"data.train_subset ({self.train_subset}) is more than the {available:,} training "
                f"examples of {self.name}"
            )
        return self


class ModelSpec(StrictModel):
    arch: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    # "cifar": 3x3 stride-1 stem without max-pool (small images); "imagenet": 7x7/2 + max-pool.
    stem: Literal["cifar", "imagenet"] = "cifar"
    # Channels of the first stage (64 in the paper); smaller widths make CPU-sized models.
    width: int = Field(64, ge=4, le=512)


class OptimSpec(StrictModel):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0, le=1)


class ScheduleSpec(StrictModel):
    """Per-epoch learning-rate schedule; `milestones` are epochs where lr is multiplied by gamma."""

    kind: Literal["step", "cosine", "constant"] = "step"
    milestones: tuple[Epoch, ...] = Field((100, 150), max_length=64)
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0, le=100)

    @model_validator(mode="after")
    def _milestones_increase(self) -> ScheduleSpec:
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ValueError("schedule.milestones must be strictly increasing")
        return self


class TeacherSpec(StrictModel):
    """Where the "-pre" prior comes from: a finished job of the service, or (core CLI) a file."""

    job: JobRef | None = None
    checkpoint: Literal["best", "latest"] = "best"
    path: FilePath | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> TeacherSpec:
        if (self.job is None) == (self.path is None):
            raise ValueError("smoothing.teacher needs exactly one of `job` or `path`")
        return self


class SmoothingSpec(StrictModel):
    method: Method = "baseline"
    # Weight of the prior in (1 - theta) * onehot + theta * prior; ignored by `baseline`.
    theta: float = Field(0.1, ge=0, le=1)
    # TSLA: smoothing for epochs 0 .. switch_epoch-1, one-hot from switch_epoch on. Only the
    # two-stage methods read it, so a preset's switch epoch survives `method: lsr` overrides.
    switch_epoch: Epoch | None = None
    # Softmax temperature of the teacher prior ("-pre" methods).
    temperature: float = Field(1.0, gt=0, le=100)
    teacher: TeacherSpec | None = None

    @model_validator(mode="after")
    def _method_needs(self) -> SmoothingSpec:
        if self.method in TWO_STAGE_METHODS and self.switch_epoch is None:
            raise ValueError(f"method {self.method!r} needs smoothing.switch_epoch")
        if self.method != "baseline" and self.theta == 0:
            raise ValueError(f"method {self.method!r} needs theta > 0 (theta 0 is the baseline)")
        uses_teacher = self.method in TEACHER_METHODS
        if uses_teacher and self.teacher is None:
            raise ValueError(f"method {self.method!r} needs smoothing.teacher")
        if not uses_teacher and self.teacher is not None:
            raise ValueError(f"smoothing.teacher only applies to lsr-pre/tsla-pre, not {self.method!r}")
        return self


class CheckpointSpec(StrictModel):
    every: int = Field(1, ge=1, le=1000)  # epochs between checkpoints (the last epoch always)
    keep_last: int = Field(3, ge=1, le=1000)  # the best checkpoint is kept besides these


class GradVarianceSpec(StrictModel):
    """The gradient-variance probe (tsla_core/probes.py). "split" costs one extra backward pass per
    probe and is biased under batch norm; "exact" takes per-example gradients of a fixed batch."""

    enabled: bool = True
    mode: Literal["split", "exact"] = "split"
    # Probes per epoch, evenly spaced over its steps (at most one per step).
    probes_per_epoch: int = Field(4, ge=1, le=100_000)
    # "exact": examples in the fixed probe batch, drawn once from the training split (data.split_seed).
    exact_examples: int = Field(256, ge=2, le=4096)


class ResourcesSpec(StrictModel):
    """Where a job runs and on how many processes. Not part of what it computes: a checkpoint
    resumes under other resources (tsla_core.loop.Trainer.restore compares the rest)."""

    # Training processes on one machine (torch.distributed; see tsla_core/distributed.py).
    processes: int = Field(1, ge=1, le=64)
    # The broker queue of the workers that may run the job; None: the service's rule
    # (tsla_service/queues.py). Must be one of the deployment's TSLA_QUEUES.
    queue: str | None = Field(None, pattern=f"^{NAME_PATTERN.pattern}$")


class RunSpec(StrictModel):
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    optim: OptimSpec = OptimSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    smoothing: SmoothingSpec = SmoothingSpec()
    epochs: int = Field(200, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(128, ge=1, le=65_536)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    checkpoint: CheckpointSpec = CheckpointSpec()
    grad_variance: GradVarianceSpec = GradVarianceSpec()
    resources: ResourcesSpec = ResourcesSpec()
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]{1,2})?)$")  # [0-9]: ASCII digits only
    # "auto": bf16 autocast where the hardware supports it, else fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = True
    # A NaN or infinite training loss or test metric at the end of an epoch: "fail" ends the run
    # ("diverged: train/loss is NaN at epoch 3"); "continue" trains on and records the values.
    on_nonfinite: Literal["fail", "continue"] = "fail"

    @model_validator(mode="after")
    def _batch_splits_over_processes(self) -> RunSpec:
        processes = self.resources.processes
        if self.batch_size % processes:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of resources.processes ({processes}): "
                "each process trains on an equal part of every batch"
            )
        return self

    @model_validator(mode="after")
    def _epochs_cover_switch(self) -> RunSpec:
        switch = self.smoothing.switch_epoch
        if self.smoothing.method in TWO_STAGE_METHODS and switch is not None and switch >= self.epochs:
            raise ValueError(
                f"smoothing.switch_epoch ({switch}) must be smaller than epochs ({self.epochs}); "
                "with no one-hot epochs left use method 'lsr'"
            )
        return self


class SpecError(ValueError):
    """A spec that cannot be used; the message says which field and why."""


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, merging nested mappings key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem: `field.path: message`."""
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "spec"
        lines.append(f"{where}: {item['msg']}")
    return "; ".join(lines)


def build_spec(raw: Mapping[str, Any]) -> RunSpec:
    """Validate a raw spec; `preset` names a starting point that the other keys override."""
    raw = dict(raw)
    preset = raw.pop("preset", None)
    if preset is not None:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise SpecError(f"preset: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        raw = deep_merge(PRESETS[preset], raw)
    return validate_strict(raw)


def validate_strict(raw: Mapping[str, Any]) -> RunSpec:
    """Validate input at every depth in strict mode: "0.05" is not a number, "yes" not a boolean.

    Strict mode in Python would refuse a JSON array for a tuple field, so the mapping is validated
    as the JSON it came as. Stored specs are trusted and read with `RunSpec.model_validate`."""
    try:
        text = json.dumps(raw, allow_nan=False)
    except (TypeError, ValueError) as error:  # YAML can hold dates, sets, NaN...
        raise SpecError(
            f"spec: values must be JSON strings, numbers, booleans, lists or mappings ({error})"
        ) from None
    try:
        return RunSpec.model_validate_json(text, strict=True)
    except ValidationError as error:
        raise SpecError(describe_validation_error(error)) from None


def parse_override(assignment: str) -> dict[str, Any]:
    """`optim.lr=0.05` -> {"optim": {"lr": 0.05}}; the value is parsed as YAML."""
    key, sep, text = assignment.partition("=")
    if not sep or not re.fullmatch(r"[a-z_]+(\.[a-z_]+)*", key):
        raise SpecError(f"--set expects key.path=value, got {assignment!r}")
    return nested(key, yaml.safe_load(text) if text else None)


def raw_spec_from_cli(
    spec_file: Path | None, preset: str | None, flags: Mapping[str, Any], assignments: list[str]
) -> dict[str, Any]:
    """A raw spec from command-line input: a file or a preset, then the named flags (dotted keys,
    None = not given), then each `--set key=value` in order. Validated later by `build_spec`."""
    if (spec_file is None) == (preset is None):
        raise SpecError("give exactly one of a SPEC file or --preset NAME")
    raw: dict[str, Any] = load_spec_file(spec_file) if spec_file is not None else {"preset": preset}
    for key, value in flags.items():
        if value is not None:
            raw = deep_merge(raw, nested(key, value))
    for assignment in assignments:
        raw = deep_merge(raw, parse_override(assignment))
    return raw


def nested(dotted_key: str, value: Any) -> dict[str, Any]:
    """`nested("a.b", 1)` -> {"a": {"b": 1}}."""
    for part in reversed(dotted_key.split(".")):
        value = {part: value}
    return value


def load_spec_file(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON spec file into a raw mapping (validated later by `build_spec`)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError(f"cannot read spec file {path}: {error.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise SpecError(f"{path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {error}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path} must hold a mapping of spec fields at the top level")
    return data


def upgrade_stored_spec(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved spec stored by an earlier version (a job row, a checkpoint), in today's fields
    with its old meaning: `grad_variance.every_steps` (replaced by probes_per_epoch) is dropped,
    and a spec from before validation splits trains on all its training data (val_fraction 0)."""
    spec = json.loads(json.dumps(stored))  # a deep copy of plain JSON data
    grad_variance = spec.get("grad_variance")
    if isinstance(grad_variance, dict) and "every_steps" in grad_variance:
        grad_variance.pop("every_steps")
        data = spec.setdefault("data", {})
        if isinstance(data, dict):
            data.setdefault("val_fraction", 0.0)
    return spec

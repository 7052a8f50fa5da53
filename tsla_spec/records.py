"""The typed records the core reports through its hooks and the service stores as rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tsla_spec.vocabulary import Stage


@dataclass(frozen=True)
class MetricRow:
    """One value of one epoch: `split/name` (e.g. test/top1), with the stage it was trained in."""

    epoch: int  # 0-based
    split: Literal["train", "val", "test"]
    name: str
    value: float
    stage: Stage
    step: int  # optimizer steps taken when the row was recorded

    @property
    def key(self) -> str:
        return f"{self.split}/{self.name}"


@dataclass(frozen=True)
class CheckpointRecord:
    """What is known about a checkpoint file without reading its data."""

    name: str  # file stem, e.g. "epoch-0007"
    path: Path
    epoch: int  # 0-based index of the last epoch whose training the state includes
    partial: bool  # True when written mid-epoch (a stop); such a state is not resumed
    sha256: str
    size: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetIdentity:
    """Which data a run trained on: enough to tell two runs' data apart, or show it is the same."""

    name: str
    description: str  # the registry's (tsla_spec.datasets)
    version: str  # the registry entry's revision
    # Of the data as read, before the subset and validation split (which the spec defines):
    # tensor sets hash their train and test arrays; an ImageFolder tree its sorted file list and sizes.
    sha256: str
    num_train: int  # examples trained on (after the subset and the validation split)
    num_val: int
    num_test: int


@dataclass(frozen=True)
class RunInfo:
    """Where a run trained (software, device, data), reported once when training starts."""

    torch_version: str
    torchvision_version: str
    tsla_version: str
    device: str  # "cuda:0", "cpu"
    device_name: str  # "NVIDIA H200", the CPU model
    dataset: DatasetIdentity

"""The TSLA training core: pure PyTorch, usable with no service (`python -m tsla_core`).

Exports load on first use (PEP 562), so `import tsla_core.cli` stays fast and torch is only
imported by code that trains.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tsla_core.checkpoint import (
        CheckpointError,
        CheckpointStorageError,
        CheckpointStore,
        SkippedCheckpoint,
    )
    from tsla_core.loop import DivergedError, Hooks, Trainer, TrainResult, evaluate_checkpoint, train
    from tsla_core.loss import smoothed_cross_entropy, stage_at
    from tsla_core.readers import DatasetError
    from tsla_spec.records import CheckpointRecord, DatasetIdentity, MetricRow, RunInfo

_EXPORTS = {
    "smoothed_cross_entropy": "tsla_core.loss",
    "stage_at": "tsla_core.loss",
    "train": "tsla_core.loop",
    "Trainer": "tsla_core.loop",
    "Hooks": "tsla_core.loop",
    "MetricRow": "tsla_spec.records",
    "RunInfo": "tsla_spec.records",
    "DatasetIdentity": "tsla_spec.records",
    "TrainResult": "tsla_core.loop",
    "evaluate_checkpoint": "tsla_core.loop",
    "CheckpointStore": "tsla_core.checkpoint",
    "CheckpointRecord": "tsla_spec.records",
    "CheckpointError": "tsla_core.checkpoint",
    "CheckpointStorageError": "tsla_core.checkpoint",
    "SkippedCheckpoint": "tsla_core.checkpoint",
    "DivergedError": "tsla_core.loop",
    "DatasetError": "tsla_core.readers",
}

__all__ = [
    "CheckpointError",
    "CheckpointRecord",
    "CheckpointStorageError",
    "CheckpointStore",
    "DatasetError",
    "DatasetIdentity",
    "DivergedError",
    "Hooks",
    "MetricRow",
    "RunInfo",
    "SkippedCheckpoint",
    "TrainResult",
    "Trainer",
    "evaluate_checkpoint",
    "smoothed_cross_entropy",
    "stage_at",
    "train",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tsla_core' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)

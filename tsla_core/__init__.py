"""The TSLA training core: pure PyTorch, usable with no service (`python -m tsla_core`).

Exports load on first use (PEP 562), so `import tsla_core.cli` stays fast and torch is only
imported by code that trains.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tsla_core.checkpoint import CheckpointError, CheckpointRecord, CheckpointStore
    from tsla_core.datasets import DatasetError
    from tsla_core.loop import Hooks, MetricRow, Trainer, TrainResult, evaluate_checkpoint, train
    from tsla_core.loss import smoothed_cross_entropy

_EXPORTS = {
    "smoothed_cross_entropy": "tsla_core.loss",
    "train": "tsla_core.loop",
    "Trainer": "tsla_core.loop",
    "Hooks": "tsla_core.loop",
    "MetricRow": "tsla_core.loop",
    "TrainResult": "tsla_core.loop",
    "evaluate_checkpoint": "tsla_core.loop",
    "CheckpointStore": "tsla_core.checkpoint",
    "CheckpointRecord": "tsla_core.checkpoint",
    "CheckpointError": "tsla_core.checkpoint",
    "DatasetError": "tsla_core.datasets",
}

__all__ = [
    "CheckpointError",
    "CheckpointRecord",
    "CheckpointStore",
    "DatasetError",
    "Hooks",
    "MetricRow",
    "TrainResult",
    "Trainer",
    "evaluate_checkpoint",
    "smoothed_cross_entropy",
    "train",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tsla_core' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)

"""What a run records about where it trained: library versions, the device, and the data's hash.

Two runs that disagree can then be told apart by their software, hardware or data, instead of
by guessing. The data hash covers the data set as read (before the subset and the validation
split, which the spec defines), in a fixed order.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision

from tsla_core.readers import ArraySplit
from tsla_spec.records import DatasetIdentity, RunInfo


def arrays_sha256(splits: Iterable[ArraySplit]) -> str:
    """sha256 over each split's images then labels, each as dtype, shape and C-order bytes."""
    digest = hashlib.sha256()
    for split in splits:
        for array in (split.images, split.labels):
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def folder_sha256(folders: Iterable[tuple[Path, Sequence[str]]]) -> str:
    """sha256 of each (root, file paths) pair's sorted list of relative paths with sizes: cheap
    next to hashing a million images, and it changes when a file is added, removed, renamed or
    rewritten to another size."""
    digest = hashlib.sha256()
    for root, paths in folders:
        for path in sorted(os.path.relpath(p, root) for p in paths):
            digest.update(f"{path}\t{os.path.getsize(root / path)}\n".encode())
        digest.update(b"\0")  # the end of one root's list
    return digest.hexdigest()


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model as /proc/cpuinfo (Linux) or the platform reports it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def run_info(device: torch.device, dataset: DatasetIdentity) -> RunInfo:
    return RunInfo(
        torch_version=torch.__version__,
        torchvision_version=torchvision.__version__,
        tsla_version=package_version("tsla"),
        device=str(device),
        device_name=device_name(device),
        dataset=dataset,
    )

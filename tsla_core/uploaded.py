"""Uploaded data sets in the canonical layout (tsla_spec/uploads.py) -> batches on the device.

The worker hands the core a local folder that its cache has already verified by hash
(tsla_service/dataset_cache.py), so nothing is hashed here: the arrays are memory-mapped, not
read, and only what is cheap is checked (dtypes, shapes and counts against the manifest, the
label range). A set of many gigabytes then costs no more host memory than its copy on the device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import ValidationError

from tsla_core.batches import AUGMENTS, Augment, DataBundle, TensorSplit, take
from tsla_core.readers import ArraySplit, DatasetError
from tsla_core.splits import training_indices
from tsla_spec.records import DatasetIdentity
from tsla_spec.spec import DataSpec
from tsla_spec.uploads import ARRAY_FILES, FORMAT, MANIFEST, DatasetManifest

MmapMode = Literal["r", "c"]

# The built-in augmentation an uploaded set borrows, by its channel count, and the image side that
# augmentation was chosen for: colour sets crop and flip like CIFAR, grey ones like Fashion-MNIST.
REFERENCE_AUGMENTS = {3: ("cifar10", 32), 1: ("fashion-mnist", 28)}

STATS_CHUNK = 4096  # images per pass of `streamed_channel_stats`


def read_uploaded(folder: Path, mmap_mode: MmapMode = "r") -> tuple[ArraySplit, ArraySplit, DatasetManifest]:
    """(train, test, manifest) of a canonical folder, the arrays memory-mapped; DatasetError names
    the file that is missing or does not match the manifest."""
    manifest = read_manifest(folder / MANIFEST)
    classes = len(manifest.classes)
    x_train, y_train, x_test, y_test = ARRAY_FILES
    train = ArraySplit(
        images=open_array(folder / x_train, np.uint8, (manifest.num_train, *manifest.shape), mmap_mode),
        labels=open_labels(folder / y_train, manifest.num_train, classes, mmap_mode),
    )
    test = ArraySplit(
        images=open_array(folder / x_test, np.uint8, (manifest.num_test, *manifest.shape), mmap_mode),
        labels=open_labels(folder / y_test, manifest.num_test, classes, mmap_mode),
    )
    return train, test, manifest


def read_manifest(path: Path) -> DatasetManifest:
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing (an uploaded data set's folder holds its manifest)") from None
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise DatasetError(f"{path} is not readable JSON ({exc})") from None
    found = raw.get("format") if isinstance(raw, dict) else None
    if found != FORMAT:
        raise DatasetError(f"{path} is a manifest of format {found!r} (expected {FORMAT!r})")
    try:
        manifest = DatasetManifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise DatasetError(f"{path} is not a valid {FORMAT} manifest: {where}: {first['msg']}") from None
    channels, height, width = manifest.shape
    if channels not in (1, 3) or height < 1 or width < 1:
        raise DatasetError(
            f"{path} gives the image shape {manifest.shape} (expected (C, H, W) with 1 or 3 channels)"
        )
    return manifest


def open_array(
    path: Path, dtype: type[np.generic], shape: tuple[int, ...], mmap_mode: MmapMode
) -> np.ndarray:
    """The .npy file at `path` memory-mapped, if it holds a C-order `dtype` array of this shape."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing (an uploaded data set holds {', '.join(ARRAY_FILES)})")
    try:
        array = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # truncated, not .npy, or pickled objects
        raise DatasetError(f"{path} is not a readable .npy file ({exc})") from None
    if not isinstance(array, np.ndarray):  # np.load opens a zip archive (.npz) whatever its name
        raise DatasetError(f"{path} is not an .npy file")
    if array.dtype != dtype:
        raise DatasetError(f"{path} holds {array.dtype} values (expected {np.dtype(dtype)})")
    if array.shape != shape:
        raise DatasetError(f"{path} has shape {array.shape} (expected {shape}, from {MANIFEST})")
    if not array.flags.c_contiguous:
        raise DatasetError(f"{path} is stored in Fortran order (expected C order)")
    return array


def open_labels(path: Path, count: int, num_classes: int, mmap_mode: MmapMode) -> np.ndarray:
    labels = open_array(path, np.int64, (count,), mmap_mode)
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise DatasetError(
            f"{path} has labels from {low} to {high} (expected 0..{num_classes - 1} for the "
            f"{num_classes} classes of {MANIFEST})"
        )
    return labels


def uploaded_augment(shape: tuple[int, int, int]) -> Augment:
    """The reference set's flip, and its crop padding scaled to this image size (at least 1 pixel):
    a 32x32 colour set pads like CIFAR (4), a 28x28 grey one like Fashion-MNIST (2)."""
    channels, height, width = shape
    name, side = REFERENCE_AUGMENTS[channels]
    reference = AUGMENTS[name]
    return Augment(pad=max(1, round(reference.pad * min(height, width) / side)), flip=reference.flip)


def streamed_channel_stats(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """batches.channel_stats without its float64 copy of every image: per-channel histograms of the
    uint8 values, a chunk of images at a time, so a memory-mapped set is never held whole."""
    channels = images.shape[1]
    counts = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(images), STATS_CHUNK):
        chunk = np.asarray(images[start : start + STATS_CHUNK])
        for channel in range(channels):
            counts[channel] += np.bincount(chunk[:, channel].ravel(), minlength=256)
    values = np.arange(256) / 255.0
    total = counts.sum(axis=1)
    mean = counts @ values / total
    variance = (counts * (values - mean[:, None]) ** 2).sum(axis=1) / np.maximum(total - 1, 1)
    return torch.from_numpy(mean).float(), torch.from_numpy(np.sqrt(variance)).float().clamp_min(1e-3)


def load_uploaded_data(spec: DataSpec, folder: Path, device: torch.device) -> DataBundle:
    """An uploaded set on the device, split and normalised exactly as batches.load_tensor_data
    does for the built-in tensor sets."""
    # Copy-on-write maps: writable, as torch wants its arrays, yet nothing reaches the cached files.
    read_train, test_arrays, manifest = read_uploaded(folder, mmap_mode="c")
    pinned = spec.uploaded
    if pinned is not None and pinned.sha256 != manifest.sha256:
        raise DatasetError(
            f"{folder}: holds data set content {manifest.sha256[:12]}…, not the {pinned.sha256[:12]}… "
            f"that data.uploaded names"
        )
    train_index, val_index = training_indices(read_train.labels, spec)
    train_arrays = take(read_train, train_index)
    stats = streamed_channel_stats(train_arrays.images)
    augment = uploaded_augment(manifest.shape) if spec.augment else None
    val = TensorSplit(take(read_train, val_index), device, stats, None) if len(val_index) else None
    identity = DatasetIdentity(
        name=spec.name,
        description=f"uploaded data set ({manifest.source})",
        version=FORMAT,
        sha256=manifest.sha256,
        num_train=len(train_index),
        num_val=len(val_index),
        num_test=manifest.num_test,
    )
    return DataBundle(
        TensorSplit(train_arrays, device, stats, augment),
        val,
        TensorSplit(test_arrays, device, stats, None),
        num_classes=len(manifest.classes),
        in_channels=manifest.shape[0],
        identity=identity,
    )

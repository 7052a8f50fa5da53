"""Readers of real on-disk dataset formats (CIFAR, IDX, digits, ImageFolder) into numpy arrays.

Nothing here ever downloads data: a missing or damaged dataset raises DatasetError
with a message that names the path and says what was expected there.
"""

from __future__ import annotations

import gzip
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tsla_spec.datasets import FASHION_MNIST_DEBIAN_DIR

__all__ = ["FASHION_MNIST_DEBIAN_DIR"]  # re-exported: tests and callers import it from here

_NO_DOWNLOAD = "this service never downloads data"

# Mirrors torchvision.datasets.folder.IMG_EXTENSIONS, so our class list is the one ImageFolder
# builds (a test checks they stay equal); importing torchvision here would slow every import.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_CIFAR_SIDE = 32
_CIFAR_ROW = 3 * _CIFAR_SIDE * _CIFAR_SIDE

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
_FASHION_MNIST_CLASSES = 10

_DIGITS_MAX = 16
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_SPLIT_SEED = 0

# Templates stay inside 48..207 so that noise of this size is rarely clipped away.
_SYNTHETIC_TEMPLATE_RANGE = (48, 208)
_SYNTHETIC_NOISE_STD = 40.0
# Noise is drawn in chunks so large benchmark sets never hold a float copy of everything.
_SYNTHETIC_CHUNK = 1024


class DatasetError(Exception):
    """A dataset is missing or malformed; the message tells the user what to fix."""


@dataclass(frozen=True)
class ArraySplit:
    """One split of a dataset: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray


# ---------------------------------------------------------------------------------------------
# CIFAR


def read_cifar(folder: Path, num_classes: Literal[10, 100], train: bool) -> ArraySplit:
    """Read CIFAR-10 (cifar-10-batches-py) or CIFAR-100 (cifar-100-python) as extracted.

    A parent folder holding the extracted folder is accepted too.
    """
    if num_classes not in (10, 100):
        raise DatasetError(f"CIFAR has 10 or 100 classes, not {num_classes!r}")
    name = f"CIFAR-{num_classes}"
    dir_name = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    root = _resolve_cifar_dir(Path(folder), name, dir_name)
    label_key = b"labels" if num_classes == 10 else b"fine_labels"
    parts = [
        _read_cifar_batch(root / file_name, name, dir_name, label_key, num_classes)
        for file_name in _cifar_files(num_classes, train)
    ]
    images = np.concatenate([part.images for part in parts])
    labels = np.concatenate([part.labels for part in parts])
    return ArraySplit(images=np.ascontiguousarray(images), labels=labels)


def _cifar_files(num_classes: int, train: bool) -> list[str]:
    """Names of the pickled batch files that make up one CIFAR split."""
    if num_classes == 10:
        return [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    return ["train"] if train else ["test"]


def _resolve_cifar_dir(folder: Path, name: str, dir_name: str) -> Path:
    """Return the extracted CIFAR folder, given it or its parent."""
    if not folder.is_dir():
        raise DatasetError(
            f"{name} not found: {folder} does not exist or is not a folder "
            f"(expected the extracted {dir_name} folder; {_NO_DOWNLOAD})"
        )
    nested = folder / dir_name
    return nested if nested.is_dir() else folder


def _read_cifar_batch(path: Path, name: str, dir_name: str, label_key: bytes, num_classes: int) -> ArraySplit:
    """Read and validate one pickled CIFAR batch file."""
    if not path.is_file():
        raise DatasetError(
            f"{name} not found: {path} is missing (expected the extracted {dir_name} folder; {_NO_DOWNLOAD})"
        )
    batch = _unpickle(path, name)
    expected = f"a pickled dict with b'data' and {label_key!r}, as in the official {dir_name}"
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise DatasetError(f"{name} file {path} is not a {name} batch (expected {expected})")
    images = _cifar_images(batch[b"data"], path, name)
    labels = _checked_labels(batch[label_key], len(images), num_classes, path, name)
    return ArraySplit(images=images, labels=labels)


def _unpickle(path: Path, name: str) -> Any:
    """Unpickle a CIFAR file; any failure becomes a DatasetError."""
    try:
        with path.open("rb") as handle:
            return pickle.load(handle, encoding="bytes")
    # Damaged pickles fail with many exception types (EOFError, UnpicklingError, ValueError...).
    except Exception as exc:
        raise DatasetError(
            f"{name} file {path} cannot be read ({type(exc).__name__}: {exc}); "
            "it is probably truncated or not from the official archive, extract it again"
        ) from exc


def _cifar_images(data: Any, path: Path, name: str) -> np.ndarray:
    """Check CIFAR b'data' is (N, 3072) uint8 and reshape it to (N, 3, 32, 32)."""
    array = np.asarray(data)
    if array.dtype != np.uint8 or array.ndim != 2 or array.shape[1] != _CIFAR_ROW:
        raise DatasetError(
            f"{name} file {path} has b'data' of dtype {array.dtype} and shape {array.shape} "
            f"(expected uint8 of shape (N, {_CIFAR_ROW}))"
        )
    return array.reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE)


def _checked_labels(raw: Any, count: int, num_classes: int, path: Path, name: str) -> np.ndarray:
    """Return labels as int64 after checking their count, type and range."""
    try:
        labels = np.asarray(raw)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{name} file {path} has unreadable labels ({exc})") from exc
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"{name} file {path} has labels of dtype {labels.dtype} and shape {labels.shape} "
            "(expected a flat list of integers)"
        )
    if len(labels) != count:
        raise DatasetError(f"{name} file {path} has {len(labels)} labels for {count} images (expected equal)")
    _check_label_range(labels, num_classes, str(path), name)
    return labels.astype(np.int64)


def _check_label_range(labels: np.ndarray, num_classes: int, where: str, name: str) -> None:
    """Raise DatasetError unless every label lies in 0..num_classes-1."""
    if len(labels) == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise DatasetError(
            f"{name} labels in {where} range over {low}..{high} "
            f"(expected 0..{num_classes - 1} for {num_classes} classes)"
        )


# ---------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)


def read_idx_pair(images_path: Path, labels_path: Path) -> ArraySplit:
    """Read an IDX images file (N, 1, H, W) and its IDX labels file; gzip is detected by magic."""
    images_path, labels_path = Path(images_path), Path(labels_path)
    dims, pixels = _read_idx(images_path, _IDX_IMAGES_MAGIC, "images")
    (label_count,), raw_labels = _read_idx(labels_path, _IDX_LABELS_MAGIC, "labels")
    count, height, width = dims
    if count != label_count:
        raise DatasetError(
            f"IDX images {images_path} hold {count} images but labels {labels_path} hold "
            f"{label_count} labels (expected the same count; are they from the same split?)"
        )
    if count == 0 or height == 0 or width == 0:
        raise DatasetError(f"IDX images {images_path} are empty (dimensions {dims})")
    images = np.frombuffer(pixels, dtype=np.uint8).reshape(count, 1, height, width)
    labels = np.frombuffer(raw_labels, dtype=np.uint8).astype(np.int64)
    # frombuffer arrays are read-only views of bytes; copy so callers get ordinary arrays.
    return ArraySplit(images=images.copy(), labels=labels)


def _read_idx(path: Path, magic: int, kind: str) -> tuple[tuple[int, ...], bytes]:
    """Return the dimensions and payload of an IDX file after validating it."""
    data = _read_maybe_gzip(path, kind)
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(data) < 4:
        raise DatasetError(f"IDX {kind} file {path} is truncated ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DatasetError(
            f"IDX {kind} file {path} has magic number 0x{found:08X} "
            f"(expected 0x{magic:08X}: unsigned bytes in {ndim} dimension(s)){_magic_hint(found)}"
        )
    if len(data) < header_size:
        raise DatasetError(f"IDX {kind} file {path} is truncated inside its header")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    payload = data[header_size:]
    if len(payload) != expected:
        state = "truncated" if len(payload) < expected else "longer than its header says"
        raise DatasetError(
            f"IDX {kind} file {path} is {state}: {len(payload)} data bytes "
            f"(expected {expected} for dimensions {dims})"
        )
    return dims, payload


def _magic_hint(found: int) -> str:
    """Explain a magic number that belongs to the other kind of IDX file."""
    if found == _IDX_IMAGES_MAGIC:
        return "; this is an images file, were the two paths swapped?"
    if found == _IDX_LABELS_MAGIC:
        return "; this is a labels file, were the two paths swapped?"
    return ""


def _read_maybe_gzip(path: Path, kind: str) -> bytes:
    """Read a file, transparently decompressing it when it starts with the gzip magic."""
    if not path.is_file():
        raise DatasetError(f"IDX {kind} file not found: {path} is missing ({_NO_DOWNLOAD})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"IDX {kind} file {path} cannot be read ({exc})") from exc
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"IDX {kind} file {path} is a damaged gzip file ({exc}); fetch or copy it again"
        ) from exc


def read_fashion_mnist(folder: Path, train: bool) -> ArraySplit:
    """Read the Fashion-MNIST train or t10k split from a folder of IDX files (.gz or plain)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(
            f"Fashion-MNIST not found: {folder} does not exist or is not a folder (expected "
            "train-/t10k-images-idx3-ubyte[.gz] and train-/t10k-labels-idx1-ubyte[.gz]; Debian's "
            f"dataset-fashion-mnist package installs them in {FASHION_MNIST_DEBIAN_DIR}; "
            f"{_NO_DOWNLOAD})"
        )
    prefix = "train" if train else "t10k"
    images_path = _find_plain_or_gz(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_plain_or_gz(folder, f"{prefix}-labels-idx1-ubyte")
    split = read_idx_pair(images_path, labels_path)
    _check_label_range(split.labels, _FASHION_MNIST_CLASSES, str(labels_path), "Fashion-MNIST")
    return split


def _find_plain_or_gz(folder: Path, stem: str) -> Path:
    """Return folder/stem.gz or folder/stem, whichever exists."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"Fashion-MNIST not found: neither {folder / stem}.gz nor {folder / stem} exists "
        f"(expected the Fashion-MNIST IDX files; {_NO_DOWNLOAD})"
    )


# ---------------------------------------------------------------------------------------------
# scikit-learn digits


def read_digits(train: bool) -> ArraySplit:
    """Return sklearn's 8x8 digits as uint8 (N, 1, 8, 8) in a fixed, seed-free 80/20 split."""
    # Imported here so that importing this module stays cheap for callers who never use digits.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    try:
        bunch = load_digits()
    # A broken scikit-learn install should still surface as a dataset problem.
    except Exception as exc:
        raise DatasetError(f"scikit-learn's bundled digits dataset cannot be loaded ({exc})") from exc
    labels = np.asarray(bunch.target, dtype=np.int64)
    # rint rounds halves to even, exactly like Python's round().
    scaled = np.rint(np.asarray(bunch.images, dtype=np.float64) * 255.0 / _DIGITS_MAX)
    images = scaled.astype(np.uint8).reshape(-1, 1, 8, 8)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=_DIGITS_TEST_FRACTION,
        random_state=_DIGITS_SPLIT_SEED,
        stratify=labels,
    )
    chosen = np.asarray(train_idx if train else test_idx)
    return ArraySplit(images=np.ascontiguousarray(images[chosen]), labels=labels[chosen])


# ---------------------------------------------------------------------------------------------
# Synthetic


def make_synthetic(
    num_samples: int, num_classes: int, channels: int, image_size: int, seed: int
) -> ArraySplit:
    """Make learnable images: a fixed random template per class plus Gaussian noise."""
    _check_synthetic_args(num_samples, num_classes, channels, image_size, seed)
    rng = np.random.default_rng(seed)
    shape = (channels, image_size, image_size)
    low, high = _SYNTHETIC_TEMPLATE_RANGE
    templates = rng.integers(low, high, size=(num_classes, *shape)).astype(np.float32)
    # Cycling through the classes then shuffling keeps the counts within one of each other.
    labels = rng.permutation(np.arange(num_samples, dtype=np.int64) % num_classes)
    images = np.empty((num_samples, *shape), dtype=np.uint8)
    for start in range(0, num_samples, _SYNTHETIC_CHUNK):
        stop = min(start + _SYNTHETIC_CHUNK, num_samples)
        noise = rng.standard_normal((stop - start, *shape), dtype=np.float32)
        chunk = templates[labels[start:stop]] + noise * np.float32(_SYNTHETIC_NOISE_STD)
        images[start:stop] = np.clip(np.rint(chunk), 0, 255).astype(np.uint8)
    return ArraySplit(images=images, labels=labels)


def _check_synthetic_args(
    num_samples: int, num_classes: int, channels: int, image_size: int, seed: int
) -> None:
    """Raise DatasetError for sizes below one or a negative seed."""
    sizes = {
        "num_samples": num_samples,
        "num_classes": num_classes,
        "channels": channels,
        "image_size": image_size,
    }
    for name, value in sizes.items():
        if value < 1:
            raise DatasetError(f"synthetic dataset needs {name} >= 1, got {value}")
    if seed < 0:
        raise DatasetError(f"synthetic dataset needs a seed >= 0, got {seed}")


# ---------------------------------------------------------------------------------------------
# ImageFolder


def read_image_folder_classes(root: Path) -> list[str]:
    """Return the sorted class folder names of an ImageFolder tree, as ImageFolder indexes them."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"image folder not found: {root} does not exist or is not a folder "
            f"(expected root/<class name>/<image files>; {_NO_DOWNLOAD})"
        )
    # Same rule as torchvision's find_classes: every subfolder is a class, hidden ones included.
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise DatasetError(
            f"image folder {root} has no class subfolders (expected root/<class name>/<images>)"
        )
    empty = [name for name in classes if not _has_image(root / name)]
    if empty:
        raise DatasetError(
            f"image folder {root} has class folders without images: {', '.join(empty)} "
            f"(add images with extensions {', '.join(IMAGE_EXTENSIONS)} or remove the folders)"
        )
    return classes


def _has_image(folder: Path) -> bool:
    """Whether the folder or any subfolder holds a file with an image extension."""
    for _, _, file_names in os.walk(folder, followlinks=True):
        if any(name.lower().endswith(IMAGE_EXTENSIONS) for name in file_names):
            return True
    return False

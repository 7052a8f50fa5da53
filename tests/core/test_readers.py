"""Tests for tsla_core.readers: tiny real-format files written here, read back exactly."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import folder as torchvision_folder

from tsla_core.readers import (
    FASHION_MNIST_DEBIAN_DIR,
    IMAGE_EXTENSIONS,
    ArraySplit,
    DatasetError,
    make_synthetic,
    read_cifar,
    read_digits,
    read_fashion_mnist,
    read_idx_pair,
    read_image_folder_classes,
)

# ---------------------------------------------------------------------------------------------
# helpers that write real formats


def _pixels(count: int, row: int, offset: int) -> np.ndarray:
    """Distinct, reproducible uint8 rows so a round trip can be checked exactly."""
    return ((np.arange(count * row, dtype=np.int64) * 7 + offset) % 256).astype(np.uint8).reshape(count, row)


def _write_pickle(path: Path, obj: object) -> None:
    """Pickle obj to path the way the CIFAR archives do."""
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _make_cifar10(folder: Path) -> tuple[ArraySplit, ArraySplit]:
    """Write a cifar-10-batches-py folder with 2 images per batch; return the expected splits."""
    folder.mkdir(parents=True)
    train_parts = []
    for i in range(1, 6):
        data = _pixels(2, 3072, offset=i)
        labels = [i % 10, (i + 3) % 10]
        _write_pickle(folder / f"data_batch_{i}", {b"data": data, b"labels": labels})
        train_parts.append((data, labels))
    test_data, test_labels = _pixels(2, 3072, offset=99), [9, 0]
    _write_pickle(folder / "test_batch", {b"data": test_data, b"labels": test_labels})
    train = ArraySplit(
        images=np.concatenate([d for d, _ in train_parts]).reshape(-1, 3, 32, 32),
        labels=np.array([lab for _, labels in train_parts for lab in labels], dtype=np.int64),
    )
    test = ArraySplit(test_data.reshape(-1, 3, 32, 32), np.array(test_labels, dtype=np.int64))
    return train, test


def _make_cifar100(folder: Path) -> tuple[ArraySplit, ArraySplit]:
    """Write a cifar-100-python folder (3 train, 2 test images); return the expected splits."""
    folder.mkdir(parents=True)
    splits = []
    for name, count, labels in (("train", 3, [0, 57, 99]), ("test", 2, [42, 1])):
        data = _pixels(count, 3072, offset=count)
        batch = {b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * count}
        _write_pickle(folder / name, batch)
        splits.append(ArraySplit(data.reshape(-1, 3, 32, 32), np.array(labels, dtype=np.int64)))
    return splits[0], splits[1]


def _idx_images(images: np.ndarray) -> bytes:
    """Encode (N, H, W) uint8 images as an IDX3 ubyte file."""
    return struct.pack(">IIII", 0x00000803, *images.shape) + images.tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    """Encode (N,) uint8 labels as an IDX1 ubyte file."""
    return struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()


def _write_idx_pair(
    folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool
) -> tuple[Path, Path]:
    """Write Fashion-MNIST-named IDX files, gzip-compressed or plain."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    pack = gzip.compress if gz else bytes
    images_path = folder / f"{prefix}-images-idx3-ubyte{suffix}"
    labels_path = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
    images_path.write_bytes(pack(_idx_images(images)))
    labels_path.write_bytes(pack(_idx_labels(labels)))
    return images_path, labels_path


def _assert_split_equal(actual: ArraySplit, expected: ArraySplit) -> None:
    """Exact equality of images and labels, with the dtypes the interface promises."""
    assert actual.images.dtype == np.uint8
    assert actual.labels.dtype == np.int64
    assert actual.images.flags.c_contiguous
    np.testing.assert_array_equal(actual.images, expected.images)
    np.testing.assert_array_equal(actual.labels, expected.labels)


# ---------------------------------------------------------------------------------------------
# CIFAR


def test_cifar10_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    train, test = _make_cifar10(folder)
    got_train = read_cifar(folder, 10, train=True)
    assert got_train.images.shape == (10, 3, 32, 32)
    _assert_split_equal(got_train, train)
    _assert_split_equal(read_cifar(folder, 10, train=False), test)


def test_cifar_accepts_parent_folder(tmp_path: Path) -> None:
    _, test = _make_cifar10(tmp_path / "cifar-10-batches-py")
    _assert_split_equal(read_cifar(tmp_path, 10, train=False), test)


def test_cifar100_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    train, test = _make_cifar100(folder)
    _assert_split_equal(read_cifar(folder, 100, train=True), train)
    _assert_split_equal(read_cifar(folder, 100, train=False), test)


def test_cifar_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="CIFAR-10 not found: .*nowhere.*never downloads"):
        read_cifar(tmp_path / "nowhere", 10, train=True)


def test_cifar100_missing_file_message(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    with pytest.raises(DatasetError) as info:
        read_cifar(folder, 100, train=True)
    message = str(info.value)
    assert f"CIFAR-100 not found: {folder / 'train'} is missing" in message
    assert "cifar-100-python" in message
    assert "never downloads data" in message


def test_cifar10_missing_one_batch(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _make_cifar10(folder)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DatasetError, match="data_batch_4 is missing"):
        read_cifar(folder, 10, train=True)


def test_cifar_truncated_pickle(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _make_cifar10(folder)
    batch = folder / "test_batch"
    batch.write_bytes(batch.read_bytes()[:50])
    with pytest.raises(DatasetError, match="test_batch cannot be read.*truncated"):
        read_cifar(folder, 10, train=False)


def test_cifar_garbage_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _make_cifar10(folder)
    (folder / "test_batch").write_bytes(b"this is not a pickle at all")
    with pytest.raises(DatasetError, match="test_batch cannot be read"):
        read_cifar(folder, 10, train=False)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ([1, 2, 3], "is not a CIFAR-10 batch"),
        ({b"data": _pixels(2, 3072, 0)}, "is not a CIFAR-10 batch.*b'labels'"),
        ({"data": _pixels(2, 3072, 0), "labels": [0, 1]}, "is not a CIFAR-10 batch"),
        ({b"data": _pixels(2, 100, 0), b"labels": [0, 1]}, r"expected uint8 of shape \(N, 3072\)"),
        ({b"data": _pixels(2, 3072, 0).astype(np.float32), b"labels": [0, 1]}, "dtype float32"),
        ({b"data": _pixels(2, 3072, 0), b"labels": [0, 1, 2]}, "3 labels for 2 images"),
        ({b"data": _pixels(2, 3072, 0), b"labels": [0, 10]}, r"0\.\.10 \(expected 0\.\.9"),
        ({b"data": _pixels(2, 3072, 0), b"labels": [-1, 3]}, r"expected 0\.\.9"),
        ({b"data": _pixels(2, 3072, 0), b"labels": ["a", "b"]}, "flat list of integers"),
    ],
)
def test_cifar_bad_content(tmp_path: Path, content: object, pattern: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _make_cifar10(folder)
    _write_pickle(folder / "test_batch", content)
    with pytest.raises(DatasetError, match=pattern) as info:
        read_cifar(folder, 10, train=False)
    assert str(folder / "test_batch") in str(info.value)


def test_cifar100_uses_fine_labels_range(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    _make_cifar100(folder)
    batch = {b"data": _pixels(1, 3072, 0), b"fine_labels": [100]}
    _write_pickle(folder / "test", batch)
    with pytest.raises(DatasetError, match=r"expected 0\.\.99 for 100 classes"):
        read_cifar(folder, 100, train=False)


def test_cifar_bad_num_classes(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="10 or 100"):
        read_cifar(tmp_path, 20, train=True)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    images = _pixels(5, 6 * 4, offset=3).reshape(5, 6, 4)
    labels = np.array([0, 9, 3, 3, 255], dtype=np.uint8)
    images_path, labels_path = _write_idx_pair(tmp_path, "train", images, labels, gz)
    split = read_idx_pair(images_path, labels_path)
    assert split.images.shape == (5, 1, 6, 4)
    assert split.images.flags.writeable
    _assert_split_equal(split, ArraySplit(images.reshape(5, 1, 6, 4), labels.astype(np.int64)))


def test_idx_gzip_detected_by_magic_not_name(tmp_path: Path) -> None:
    images = _pixels(2, 9, offset=0).reshape(2, 3, 3)
    labels = np.array([1, 2], dtype=np.uint8)
    images_path, labels_path = tmp_path / "imgs.bin.gz", tmp_path / "labels.plain"
    images_path.write_bytes(_idx_images(images))  # plain despite the .gz name
    labels_path.write_bytes(gzip.compress(_idx_labels(labels)))  # compressed despite the name
    split = read_idx_pair(images_path, labels_path)
    np.testing.assert_array_equal(split.images[:, 0], images)
    np.testing.assert_array_equal(split.labels, [1, 2])


def _idx_files(tmp_path: Path) -> tuple[Path, Path]:
    """A valid plain IDX pair of 3 images of 2x2."""
    images = _pixels(3, 4, offset=0).reshape(3, 2, 2)
    return _write_idx_pair(tmp_path, "t10k", images, np.array([0, 1, 2]), gz=False)


def test_idx_missing_file(tmp_path: Path) -> None:
    images_path, _ = _idx_files(tmp_path)
    with pytest.raises(DatasetError, match="IDX labels file not found: .*nope"):
        read_idx_pair(images_path, tmp_path / "nope")


def test_idx_wrong_magic(tmp_path: Path) -> None:
    images_path, labels_path = _idx_files(tmp_path)
    images_path.write_bytes(struct.pack(">I", 0x00000C03) + images_path.read_bytes()[4:])
    with pytest.raises(DatasetError, match="magic number 0x00000C03 .*expected 0x00000803"):
        read_idx_pair(images_path, labels_path)


def test_idx_swapped_paths(tmp_path: Path) -> None:
    images_path, labels_path = _idx_files(tmp_path)
    with pytest.raises(DatasetError, match="labels file, were the two paths swapped"):
        read_idx_pair(labels_path, images_path)


@pytest.mark.parametrize("keep", [2, 10, 20])
def test_idx_truncated(tmp_path: Path, keep: int) -> None:
    images_path, labels_path = _idx_files(tmp_path)
    images_path.write_bytes(images_path.read_bytes()[:keep])
    with pytest.raises(DatasetError, match="truncated") as info:
        read_idx_pair(images_path, labels_path)
    assert str(images_path) in str(info.value)


def test_idx_trailing_bytes(tmp_path: Path) -> None:
    images_path, labels_path = _idx_files(tmp_path)
    labels_path.write_bytes(labels_path.read_bytes() + b"\x00")
    with pytest.raises(DatasetError, match="longer than its header says"):
        read_idx_pair(images_path, labels_path)


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    images_path, labels_path = _idx_files(tmp_path)
    compressed = gzip.compress(images_path.read_bytes())
    images_path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DatasetError, match="damaged gzip"):
        read_idx_pair(images_path, labels_path)


def test_idx_count_mismatch(tmp_path: Path) -> None:
    images_path, labels_path = _idx_files(tmp_path)
    labels_path.write_bytes(_idx_labels(np.array([0, 1])))
    with pytest.raises(DatasetError, match="hold 3 images but labels .* hold 2 labels"):
        read_idx_pair(images_path, labels_path)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_layout(tmp_path: Path, gz: bool) -> None:
    train_images = _pixels(4, 28 * 28, offset=1).reshape(4, 28, 28)
    test_images = _pixels(2, 28 * 28, offset=2).reshape(2, 28, 28)
    _write_idx_pair(tmp_path, "train", train_images, np.array([0, 1, 2, 9]), gz)
    _write_idx_pair(tmp_path, "t10k", test_images, np.array([5, 6]), gz)
    train = read_fashion_mnist(tmp_path, train=True)
    test = read_fashion_mnist(tmp_path, train=False)
    np.testing.assert_array_equal(train.images[:, 0], train_images)
    np.testing.assert_array_equal(train.labels, [0, 1, 2, 9])
    np.testing.assert_array_equal(test.images[:, 0], test_images)
    np.testing.assert_array_equal(test.labels, [5, 6])


def test_fashion_mnist_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="Fashion-MNIST not found.*dataset-fashion-mnist"):
        read_fashion_mnist(tmp_path / "absent", train=True)
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz nor .*never downloads"):
        read_fashion_mnist(tmp_path, train=False)


def test_fashion_mnist_label_range(tmp_path: Path) -> None:
    images = _pixels(2, 4, offset=0).reshape(2, 2, 2)
    _write_idx_pair(tmp_path, "t10k", images, np.array([3, 10]), gz=True)
    with pytest.raises(DatasetError, match=r"Fashion-MNIST labels .* 3\.\.10 \(expected 0\.\.9"):
        read_fashion_mnist(tmp_path, train=False)


def test_fashion_mnist_debian_install() -> None:
    if not FASHION_MNIST_DEBIAN_DIR.is_dir():
        pytest.fail(
            f"{FASHION_MNIST_DEBIAN_DIR} is missing: apt-get install dataset-fashion-mnist "
            "(scripts/test.sh installs it)",
            pytrace=False,
        )
    split = read_fashion_mnist(FASHION_MNIST_DEBIAN_DIR, train=False)
    assert split.images.shape == (10000, 1, 28, 28)
    assert split.images.dtype == np.uint8
    assert split.labels.dtype == np.int64
    # The official test set holds exactly 1000 images of each of the 10 classes.
    np.testing.assert_array_equal(np.bincount(split.labels), [1000] * 10)


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_split() -> None:
    train, test = read_digits(train=True), read_digits(train=False)
    assert train.images.shape == (1437, 1, 8, 8)
    assert test.images.shape == (360, 1, 8, 8)
    for split in (train, test):
        assert split.images.dtype == np.uint8
        assert split.labels.dtype == np.int64
        assert split.images.flags.c_contiguous
        assert set(split.labels.tolist()) == set(range(10))
        assert split.images.min() == 0
        assert split.images.max() == 255
    # Every value is round(v * 255 / 16) for an integer v in 0..16.
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(np.unique(train.images).tolist()) <= allowed


def test_digits_is_fixed() -> None:
    first, second = read_digits(train=False), read_digits(train=False)
    _assert_split_equal(first, second)


def test_digits_splits_are_disjoint_and_complete() -> None:
    from sklearn.datasets import load_digits

    raw = load_digits().images
    train, test = read_digits(train=True), read_digits(train=False)
    combined = np.concatenate([train.images, test.images])[:, 0]
    expected = np.rint(raw * 255 / 16).astype(np.uint8)
    # Same multiset of images: sort both by their bytes and compare.
    assert sorted(map(np.ndarray.tobytes, combined)) == sorted(map(np.ndarray.tobytes, expected))


# ---------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_is_deterministic() -> None:
    first = make_synthetic(50, 5, 3, 8, seed=7)
    second = make_synthetic(50, 5, 3, 8, seed=7)
    other = make_synthetic(50, 5, 3, 8, seed=8)
    _assert_split_equal(first, second)
    assert first.images.shape == (50, 3, 8, 8)
    assert not np.array_equal(first.images, other.images)


def test_synthetic_is_balanced_and_learnable() -> None:
    split = make_synthetic(2500, 4, 1, 6, seed=0)  # spans several noise chunks
    assert np.bincount(split.labels, minlength=4).tolist() == [625] * 4
    assert split.labels.min() == 0
    assert split.labels.max() == 3
    # Nearest class mean classifies nearly everything: each class shares a template.
    flat = split.images.reshape(len(split.labels), -1).astype(np.float64)
    means = np.stack([flat[split.labels == c].mean(axis=0) for c in range(4)])
    distances = ((flat[:, None, :] - means[None]) ** 2).sum(axis=2)
    assert (distances.argmin(axis=1) == split.labels).mean() > 0.95


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((0, 2, 1, 4, 0), "num_samples"),
        ((5, 0, 1, 4, 0), "num_classes"),
        ((5, 2, 1, 0, 0), "image_size"),
    ],
)
def test_synthetic_rejects_bad_sizes(args: tuple[int, int, int, int, int], name: str) -> None:
    with pytest.raises(DatasetError, match=name):
        make_synthetic(*args)


def test_synthetic_rejects_negative_seed() -> None:
    with pytest.raises(DatasetError, match="seed"):
        make_synthetic(5, 2, 1, 4, seed=-1)


# ---------------------------------------------------------------------------------------------
# ImageFolder


def _write_png(path: Path, value: int) -> None:
    """Write a tiny RGB PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), value, dtype=np.uint8)).save(path)


def test_image_folder_classes(tmp_path: Path) -> None:
    _write_png(tmp_path / "zebra" / "a.png", 10)
    _write_png(tmp_path / "ant" / "b.PNG", 20)
    _write_png(tmp_path / "cat" / "nested" / "c.png", 30)
    (tmp_path / "notes.txt").write_text("not a class")
    assert read_image_folder_classes(tmp_path) == ["ant", "cat", "zebra"]


def test_image_folder_matches_torchvision(tmp_path: Path) -> None:
    assert set(IMAGE_EXTENSIONS) == set(torchvision_folder.IMG_EXTENSIONS)
    for name in ("b", "a", "C"):
        _write_png(tmp_path / name / "x.png", 0)
    assert read_image_folder_classes(tmp_path) == torchvision_folder.ImageFolder(str(tmp_path)).classes


def test_image_folder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="image folder not found: .*missing"):
        read_image_folder_classes(tmp_path / "missing")


def test_image_folder_without_class_folders(tmp_path: Path) -> None:
    _write_png(tmp_path / "loose.png", 0)
    with pytest.raises(DatasetError, match="has no class subfolders"):
        read_image_folder_classes(tmp_path)


def test_image_folder_class_without_images(tmp_path: Path) -> None:
    _write_png(tmp_path / "dog" / "a.png", 0)
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="without images: empty, texts"):
        read_image_folder_classes(tmp_path)

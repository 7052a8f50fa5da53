"""Uploaded data sets in the canonical layout: read memory-mapped, refused when malformed, and
batched exactly like the built-in tensor sets."""

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from tsla_core.batches import AUGMENTS, Augment, TensorSplit, channel_stats, epoch_generator, load_data, take
from tsla_core.provenance import arrays_sha256
from tsla_core.readers import ArraySplit, DatasetError, make_synthetic, read_digits
from tsla_core.splits import training_indices
from tsla_core.uploaded import load_uploaded_data, read_uploaded, streamed_channel_stats, uploaded_augment
from tsla_spec.spec import DataSpec, SyntheticSpec
from tsla_spec.uploads import ARRAY_FILES, FORMAT, MANIFEST, DatasetManifest, Findings, StoredFile

CPU = torch.device("cpu")


def write_canonical(folder: Path, train: ArraySplit, test: ArraySplit, num_classes: int) -> DatasetManifest:
    """What the server's ingestion stores: the four .npy files and their manifest."""
    folder.mkdir(parents=True)
    arrays = (train.images, train.labels, test.images, test.labels)
    for name, array in zip(ARRAY_FILES, arrays, strict=True):
        np.save(folder / name, array)
    files = {
        name: StoredFile(bytes=(folder / name).stat().st_size, sha256=hashlib.sha256(data).hexdigest())
        for name in ARRAY_FILES
        for data in [(folder / name).read_bytes()]
    }
    train_counts = np.bincount(train.labels, minlength=num_classes)
    scaled = train.images / 255.0
    manifest = DatasetManifest(
        sha256=arrays_sha256([train, test]),
        source="npz",
        classes=[f"class-{c}" for c in range(num_classes)],
        shape=train.images.shape[1:],
        num_train=len(train.labels),
        num_test=len(test.labels),
        train_counts=train_counts.tolist(),
        test_counts=np.bincount(test.labels, minlength=num_classes).tolist(),
        mean=scaled.mean(axis=(0, 2, 3)).tolist(),
        std=scaled.std(axis=(0, 2, 3)).tolist(),
        files=files,
        findings=Findings(imbalance_ratio=float(train_counts.max() / train_counts.min())),
    )
    (folder / MANIFEST).write_text(manifest.model_dump_json())
    return manifest


def digits_folder(root: Path) -> Path:
    write_canonical(root / "digits", read_digits(train=True), read_digits(train=False), 10)
    return root / "digits"


def synthetic_spec(channels: int, image_size: int, **fields: object) -> DataSpec:
    shape = SyntheticSpec(num_train=240, num_test=60, num_classes=4, channels=channels, image_size=image_size)
    return DataSpec(name="synthetic", synthetic=shape, **fields)


def synthetic_folder(root: Path, spec: DataSpec) -> Path:
    """The built-in synthetic set that `spec` names, written in the canonical layout."""
    s = spec.synthetic
    train = make_synthetic(s.num_train, s.num_classes, s.channels, s.image_size, seed=1)
    test = make_synthetic(s.num_test, s.num_classes, s.channels, s.image_size, seed=2)
    write_canonical(root / "synthetic", train, test, s.num_classes)
    return root / "synthetic"


def test_read_uploaded_memory_maps_the_arrays_it_was_given(tmp_path: Path) -> None:
    folder = digits_folder(tmp_path)
    train, test, manifest = read_uploaded(folder)
    expected = (read_digits(train=True), read_digits(train=False))
    for split, original in zip((train, test), expected, strict=True):
        assert isinstance(split.images, np.memmap) and isinstance(split.labels, np.memmap)
        assert np.array_equal(split.images, original.images)
        assert np.array_equal(split.labels, original.labels)
    assert manifest.sha256 == arrays_sha256(expected)
    assert load_uploaded_data(DataSpec(), folder, CPU).identity.sha256 == arrays_sha256([train, test])


def save(array: np.ndarray) -> Callable[[Path, str], None]:
    return lambda folder, name: np.save(folder / name, array)


def rewrite_manifest(**fields: object) -> Callable[[Path, str], None]:
    def rewrite(folder: Path, name: str) -> None:
        raw = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps(raw | fields))

    return rewrite


def delete(folder: Path, name: str) -> None:
    (folder / name).unlink()


def not_json(folder: Path, name: str) -> None:
    (folder / name).write_text("{not json")


def truncate(folder: Path, name: str) -> None:
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[:-100])


MALFORMED: dict[str, tuple[str, Callable[[Path, str], None]]] = {
    "missing-array": ("y_test.npy", delete),
    "missing-manifest": (MANIFEST, delete),
    "manifest-not-json": (MANIFEST, not_json),
    "other-format": (MANIFEST, rewrite_manifest(format="tsla-dataset/2")),
    "invalid-manifest": (MANIFEST, rewrite_manifest(classes=["only-one"])),
    "four-channels": (MANIFEST, rewrite_manifest(shape=[4, 8, 8])),
    "float-images": ("x_train.npy", save(np.zeros((1437, 1, 8, 8), dtype=np.float32))),
    "int32-labels": ("y_train.npy", save(np.zeros(1437, dtype=np.int32))),
    "shape-not-the-manifests": ("x_test.npy", save(np.zeros((360, 1, 4, 4), dtype=np.uint8))),
    "count-not-the-manifests": ("y_test.npy", save(np.zeros(359, dtype=np.int64))),
    "label-out-of-range": ("y_train.npy", save(np.full(1437, 10, dtype=np.int64))),
    "negative-label": ("y_test.npy", save(np.full(360, -1, dtype=np.int64))),
    "truncated": ("x_train.npy", truncate),
    "pickled-objects": ("y_train.npy", save(np.array([None] * 1437, dtype=object))),
    "fortran-order": ("x_test.npy", save(np.asfortranarray(np.zeros((360, 1, 8, 8), dtype=np.uint8)))),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_folder_is_refused_naming_the_file(tmp_path: Path, case: str) -> None:
    folder = digits_folder(tmp_path)
    name, damage = MALFORMED[case]
    damage(folder, name)
    with pytest.raises(DatasetError, match=name.replace(".", r"\.")):
        read_uploaded(folder)


def test_streamed_stats_equal_the_built_in_ones() -> None:
    images = np.random.default_rng(0).integers(0, 256, (5000, 3, 6, 5), dtype=np.uint8)
    streamed, built_in = streamed_channel_stats(images), channel_stats(torch.from_numpy(images))
    for got, expected in zip(streamed, built_in, strict=True):
        assert torch.allclose(got, expected, rtol=1e-6, atol=0)


def test_uploaded_augment_is_the_reference_sets_scaled_to_the_image() -> None:
    assert uploaded_augment((3, 32, 32)) == AUGMENTS["cifar10"]
    assert uploaded_augment((1, 28, 28)) == AUGMENTS["fashion-mnist"]
    assert uploaded_augment((3, 64, 48)) == Augment(pad=6, flip=True)
    assert uploaded_augment((1, 8, 8)) == Augment(pad=1, flip=True)  # never less than one pixel


@pytest.mark.parametrize(
    ("channels", "size", "augment"), [(1, 12, Augment(pad=1, flip=True)), (3, 16, Augment(pad=2, flip=True))]
)
def test_uploaded_grey_and_colour_sets_load_like_tensor_sets(
    tmp_path: Path, channels: int, size: int, augment: Augment
) -> None:
    spec = synthetic_spec(channels, size, val_fraction=0.25, train_subset=200)
    folder = synthetic_folder(tmp_path, spec)
    data = load_uploaded_data(spec, folder, CPU)

    assert isinstance(data.train, TensorSplit) and isinstance(data.val, TensorSplit)
    assert isinstance(data.test, TensorSplit)
    assert (len(data.train), len(data.val), len(data.test)) == (150, 50, 60)
    assert (data.num_classes, data.in_channels) == (4, channels)
    assert data.train.augment == augment and data.val.augment is None and data.test.augment is None
    images, labels = next(iter(data.train.batches(32, epoch_generator(0, 0), False)))
    assert images.shape == (32, channels, size, size) and images.dtype == torch.float32
    assert labels.dtype == torch.int64

    read_train, _, manifest = read_uploaded(folder)
    train_index, _ = training_indices(read_train.labels, spec)
    mean, std = channel_stats(torch.from_numpy(take(read_train, train_index).images))
    assert torch.allclose(data.train.mean.flatten(), mean) and torch.allclose(data.train.std.flatten(), std)
    identity = data.identity
    assert (identity.name, identity.version, identity.sha256) == ("synthetic", FORMAT, manifest.sha256)
    assert identity.description == "uploaded data set (npz)"
    assert (identity.num_train, identity.num_val, identity.num_test) == (150, 50, 60)


def first_batches(spec: DataSpec, uploaded: Path | None, count: int = 3) -> list[tuple[torch.Tensor, ...]]:
    data = load_data(spec, Path("unused"), CPU, uploaded=uploaded)
    batches = data.train.batches(64, epoch_generator(7, 2), channels_last=False)
    return [next(batches) for _ in range(count)]


def assert_same_batches(spec: DataSpec, folder: Path) -> None:
    for (built_in, built_in_labels), (uploaded, uploaded_labels) in zip(
        first_batches(spec, None), first_batches(spec, folder), strict=True
    ):
        assert torch.equal(built_in, uploaded) and torch.equal(built_in_labels, uploaded_labels)


def test_uploaded_digits_train_on_the_built_in_digits_batches(tmp_path: Path) -> None:
    # Digits are not mirrored, an uploaded grey set is: compare them without augmentation.
    spec = DataSpec(name="digits", augment=False, train_subset=1000)
    folder = digits_folder(tmp_path)
    assert_same_batches(spec, folder)
    built_in, uploaded = (load_data(spec, Path("unused"), CPU, uploaded=u).identity for u in (None, folder))
    assert uploaded.sha256 == built_in.sha256
    assert (uploaded.num_train, uploaded.num_val, uploaded.num_test) == (
        built_in.num_train,
        built_in.num_val,
        built_in.num_test,
    )


def test_uploaded_colour_set_augments_like_the_built_in_synthetic_set(tmp_path: Path) -> None:
    # 32x32 colour: the same crop (4 pixels) and flip as the built-in synthetic set.
    spec = synthetic_spec(3, 32, val_fraction=0.1)
    assert_same_batches(spec, synthetic_folder(tmp_path, spec))

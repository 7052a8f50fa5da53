"""Batches from named data sets: augmentation, order, the validation split, and training on real
file formats."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_raw_spec
from tsla_core import DatasetError, train
from tsla_core.batches import Augment, augment_batch, draw_augmentation, epoch_generator, load_data
from tsla_core.readers import read_digits
from tsla_core.splits import training_indices
from tsla_spec.spec import DataSpec, build_spec

CPU = torch.device("cpu")


def test_augment_without_padding_or_flip_is_identity() -> None:
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    augment = Augment(pad=0, flip=False)
    out = augment_batch(images, augment, *draw_augmentation(4, augment, torch.Generator().manual_seed(0)))
    assert torch.equal(out, images)


def test_augment_crops_are_shifted_windows_of_the_padded_image() -> None:
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
    augment = Augment(pad=1, flip=False)
    out = augment_batch(images, augment, *draw_augmentation(2, augment, torch.Generator().manual_seed(3)))
    padded = torch.nn.functional.pad(images, [1, 1, 1, 1])
    for i in range(2):
        windows = [padded[i, :, r : r + 4, c : c + 4] for r in range(3) for c in range(3)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_augment_flip_mirrors_whole_images() -> None:
    images = torch.randint(0, 256, (64, 1, 3, 3), dtype=torch.uint8)
    augment = Augment(pad=0, flip=True)
    out = augment_batch(images, augment, *draw_augmentation(64, augment, torch.Generator().manual_seed(1)))
    flipped = [torch.equal(out[i], images[i].flip(2)) for i in range(64)]
    kept = [torch.equal(out[i], images[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54


def test_epoch_order_and_augmentation_are_a_function_of_seed_and_epoch() -> None:
    data = load_data(DataSpec(name="digits"), Path("unused"), CPU)

    def first_batch(seed: int, epoch: int) -> torch.Tensor:
        return next(iter(data.train.batches(32, epoch_generator(seed, epoch), True)))[0]

    assert torch.equal(first_batch(0, 3), first_batch(0, 3))
    assert not torch.equal(first_batch(0, 3), first_batch(0, 4))
    assert not torch.equal(first_batch(1, 3), first_batch(0, 3))


def test_training_batches_are_full_and_test_batches_cover_the_split() -> None:
    data = load_data(DataSpec(name="digits"), Path("unused"), CPU)
    # 1,437 training images less the default 10% validation split: 1,293, in full batches.
    train_sizes = [len(y) for _, y in data.train.batches(100, epoch_generator(0, 0), False)]
    assert set(train_sizes) == {100} and sum(train_sizes) == 1200 and data.train.steps(100) == 12
    test_labels = torch.cat([y for _, y in data.test.batches(100, None, False)])
    assert len(test_labels) == 360
    assert data.val is not None
    assert len(torch.cat([y for _, y in data.val.batches(100, None, False)])) == 144
    images, _ = next(iter(data.test.batches(360, None, False)))
    assert abs(images.mean().item()) < 0.2  # normalised with the training split's statistics


def test_the_digits_validation_split_is_held_out_of_training_stratified_and_unaugmented() -> None:
    spec = DataSpec(name="digits")
    data = load_data(spec, Path("unused"), CPU)
    assert data.val is not None
    read = read_digits(train=True)
    train_index, val_index = training_indices(read.labels, spec)
    assert len(np.intersect1d(train_index, val_index)) == 0 and len(train_index) + len(val_index) == 1437
    # Stratified: every class holds out 10% of its examples, to within one.
    held = np.bincount(read.labels[val_index], minlength=10)
    assert np.all(np.abs(held - 0.1 * np.bincount(read.labels)) <= 1)
    # The val batches are exactly those images, normalised like the test split, never augmented.
    val_images, val_labels = data.val.examples(np.arange(len(val_index)), False)
    assert torch.equal(val_labels, torch.from_numpy(read.labels[val_index]))
    first_batch, _ = next(iter(data.val.batches(len(val_index), None, False)))
    assert torch.equal(first_batch, val_images)
    assert (data.identity.num_train, data.identity.num_val, data.identity.num_test) == (1293, 144, 360)


def test_the_split_depends_on_split_seed_alone() -> None:
    """`load_data` never sees the run's seed: every run of an experiment gets the same split."""

    def val_images(**fields: object) -> torch.Tensor:
        data = load_data(DataSpec(name="digits", **fields), Path("unused"), CPU)  # type: ignore[arg-type]
        assert data.val is not None
        return data.val.examples(np.arange(len(data.val)), False)[0]

    assert torch.equal(val_images(), val_images(augment=False))
    assert not torch.equal(val_images(), val_images(split_seed=1))
    no_val = load_data(DataSpec(name="digits", val_fraction=0.0), Path("unused"), CPU)
    assert no_val.val is None and len(no_val.train) == 1437


def _write_cifar100(folder: Path, train_count: int, test_count: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, count in (("train", train_count), ("test", test_count)):
        labels = [i % 100 for i in range(count)]
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        batch = {b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * count}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_train_on_a_cifar100_pickle_folder(tmp_path: Path) -> None:
    _write_cifar100(tmp_path / "data" / "cifar-100-python", train_count=200, test_count=16)
    raw = tiny_raw_spec(epochs=1, data={"name": "cifar100"})
    raw["smoothing"] = {"method": "lsr", "theta": 0.1}
    result = train(build_spec(raw), tmp_path / "run", tmp_path / "data")
    assert result.status == "completed"
    assert 0 <= result.final_metrics["test/top1"] <= 100
    assert 0 <= result.final_metrics["val/top1"] <= 100  # 20 of the 200 held out, one per class at most


def test_train_on_an_image_folder_tree(tmp_path: Path) -> None:
    for split, count in (("train", 6), ("val", 2)):
        for label, color in (("cat", 40), ("dog", 200)):
            folder = tmp_path / "data" / "imagenet" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.full((40, 48, 3), color + i, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    data = load_data(DataSpec(name="imagenet"), tmp_path / "data", CPU)
    assert data.num_classes == 2
    images, labels = next(iter(data.train.batches(4, epoch_generator(0, 0), True)))
    assert images.shape == (4, 3, 224, 224) and labels.shape == (4,)
    raw = tiny_raw_spec(
        epochs=1, data={"name": "imagenet"}, batch_size=4, model={"stem": "imagenet", "width": 4}
    )
    raw["smoothing"] = {"method": "baseline"}
    assert train(build_spec(raw), tmp_path / "run", tmp_path / "data").status == "completed"
    # imagenet/val is the test split; a validation split, when asked for, comes out of train/.
    held_out = load_data(DataSpec(name="imagenet", val_fraction=0.25), tmp_path / "data", CPU)
    assert held_out.val is not None and (len(held_out.train), len(held_out.val)) == (9, 3)
    images, labels = held_out.val.examples(np.arange(3), True)
    assert images.shape == (3, 3, 224, 224) and set(labels.tolist()) <= {0, 1}
    identity = held_out.identity
    assert (identity.num_train, identity.num_val, identity.num_test) == (9, 3, 4)
    # The tree's identity is its file list with sizes: a rewritten file changes it.
    (tmp_path / "data" / "imagenet" / "val" / "cat" / "0.png").write_bytes(b"not the same size")
    assert load_data(DataSpec(name="imagenet"), tmp_path / "data", CPU).identity.sha256 != identity.sha256


def test_missing_datasets_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cifar-100-python"):
        load_data(DataSpec(name="cifar100"), tmp_path, CPU)
    with pytest.raises(DatasetError, match="imagenet"):
        load_data(DataSpec(name="imagenet"), tmp_path, CPU)
    (tmp_path / "imagenet" / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "imagenet" / "train" / "a" / "x.png")
    with pytest.raises(DatasetError):
        load_data(DataSpec(name="imagenet"), tmp_path, CPU)

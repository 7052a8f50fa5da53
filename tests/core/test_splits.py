"""The seeded, stratified selections: the subset, the validation split, the exact probe's batch."""

import numpy as np
import pytest

from tsla_core.readers import DatasetError
from tsla_core.splits import probe_indices, split_rng, split_train_val, stratified_subset, training_indices
from tsla_spec.spec import DataSpec, SyntheticSpec

# Unbalanced on purpose: a large, a middling, a tiny and a single-example class, shuffled.
LABELS = np.random.default_rng(5).permutation(np.repeat(np.arange(5), [500, 300, 5, 1, 194]))


def test_a_subset_keeps_every_class_and_the_class_proportions() -> None:
    chosen = stratified_subset(LABELS, 100, split_rng(0, 0))
    assert len(chosen) == len(set(chosen)) == 100 and list(chosen) == sorted(chosen)
    counts = np.bincount(LABELS[chosen], minlength=5)
    assert counts.min() >= 1  # the single-example class included
    assert np.all(np.abs(counts - 100 * np.bincount(LABELS) / len(LABELS)) <= 1.5), counts


def test_selections_are_a_function_of_the_seed_and_stream() -> None:
    first = stratified_subset(LABELS, 300, split_rng(0, 0))
    assert np.array_equal(first, stratified_subset(LABELS, 300, split_rng(0, 0)))
    assert not np.array_equal(first, stratified_subset(LABELS, 300, split_rng(1, 0)))
    assert not np.array_equal(first, stratified_subset(LABELS, 300, split_rng(0, 1)))


def test_the_validation_split_is_disjoint_stratified_and_leaves_every_class_a_training_example() -> None:
    train, val = split_train_val(LABELS, 0.5, split_rng(0, 1))
    assert len(val) == 500 and len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 1000
    assert np.bincount(LABELS[train], minlength=5).min() >= 1
    held = np.bincount(LABELS[val], minlength=5)
    assert np.all(np.abs(held - 0.5 * np.bincount(LABELS)) <= 1.5), held
    # A tiny fraction still holds out one example.
    assert len(split_train_val(LABELS, 1e-6, split_rng(0, 1))[1]) == 1
    with pytest.raises(DatasetError, match="fewer than one training example per class"):
        split_train_val(np.arange(4), 0.25, split_rng(0, 1))


def test_the_subset_comes_first_and_the_validation_fraction_does_not_move_it() -> None:
    def indices(**fields: object) -> tuple[np.ndarray, np.ndarray]:
        spec = DataSpec(name="synthetic", synthetic=SyntheticSpec(num_train=1000), **fields)  # type: ignore[arg-type]
        return training_indices(LABELS, spec)

    train, val = indices(train_subset=200, val_fraction=0.1)
    assert (len(train), len(val)) == (180, 20)
    subset = np.union1d(train, val)
    other_train, other_val = indices(train_subset=200, val_fraction=0.3)
    assert np.array_equal(np.union1d(other_train, other_val), subset)
    assert np.array_equal(indices(train_subset=200, val_fraction=0.0)[0], subset)
    all_train, no_val = indices()  # synthetic: no validation split unless asked for
    assert len(all_train) == 1000 and len(no_val) == 0
    with pytest.raises(DatasetError, match="more than the 1,000"):
        training_indices(LABELS, DataSpec(name="imagenet", train_subset=1001))
    with pytest.raises(DatasetError, match="one of each of 5 classes"):
        training_indices(LABELS, DataSpec(name="imagenet", train_subset=4))


def test_the_probe_batch_is_a_plain_sample_of_the_training_split() -> None:
    batch = probe_indices(1000, 256, split_seed=0)
    assert (
        len(set(batch)) == 256 and batch.max() < 1000 and np.array_equal(batch, probe_indices(1000, 256, 0))
    )
    assert len(probe_indices(10, 256, 0)) == 10

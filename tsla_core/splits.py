"""Seeded, stratified selections from a data set's training split: the subset (`data.train_subset`),
the validation split (`data.val_fraction`) and the exact probe's fixed batch.

Each is a pure function of the labels and `data.split_seed`, never of the run's `seed`: every run
of an experiment trains, validates and probes on the same examples, and a resumed run rebuilds
them from its spec alone. Each selection draws from its own stream, so changing the validation
fraction leaves the subset as it was.
"""

from __future__ import annotations

import numpy as np

from tsla_core.readers import DatasetError
from tsla_spec.spec import DataSpec

SUBSET_STREAM, VAL_STREAM, PROBE_STREAM = 0, 1, 2


def split_rng(split_seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([split_seed, stream])


def stratified_subset(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `count` examples: one of each class first, the rest in proportion to the
    class sizes, randomly within each class.

    Every example gets a key: its rank r within a random order of its class, as (r + 0.5) / n_c,
    and -1 for each class's first. The `count` smallest keys take about count * n_c / N of
    class c, whatever the class sizes."""
    classes = np.unique(labels)
    if not len(classes) <= count <= len(labels):
        raise DatasetError(
            f"cannot keep {count} of {len(labels)} training examples with one of each of "
            f"{len(classes)} classes"
        )
    shuffled = rng.permutation(len(labels))
    grouped = shuffled[np.argsort(labels[shuffled], kind="stable")]  # by class, random within
    sizes = np.bincount(np.searchsorted(classes, labels[grouped]))
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    ranks = np.arange(len(labels)) - starts
    keys = np.where(ranks == 0, -1.0, (ranks + 0.5) / np.repeat(sizes, sizes))
    chosen = grouped[np.lexsort((rng.random(len(labels)), keys))[:count]]
    return np.sort(chosen)


def split_train_val(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices, sorted: round(fraction * N) examples (at least one) held out, stratified
    by class; every class keeps at least one training example."""
    held = max(1, round(fraction * len(labels)))
    classes = len(np.unique(labels))
    if len(labels) - held < classes:
        raise DatasetError(
            f"a validation split of {held} leaves fewer than one training example per class "
            f"({len(labels)} examples, {classes} classes); lower data.val_fraction"
        )
    train = stratified_subset(labels, len(labels) - held, rng)
    return train, np.setdiff1d(np.arange(len(labels)), train, assume_unique=True)


def training_indices(labels: np.ndarray, spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into the data set's training split: the subset when the spec asks for
    one, then the validation split held out of it (empty when the fraction is 0)."""
    kept = np.arange(len(labels))
    if spec.train_subset is not None:
        if spec.train_subset > len(labels):
            raise DatasetError(
                f"data.train_subset ({spec.train_subset}) is more than the {len(labels):,} training "
                f"examples of {spec.name}"
            )
        kept = stratified_subset(labels, spec.train_subset, split_rng(spec.split_seed, SUBSET_STREAM))
    fraction = spec.resolved_val_fraction()
    if fraction == 0:
        return kept, kept[:0]
    train, val = split_train_val(labels[kept], fraction, split_rng(spec.split_seed, VAL_STREAM))
    return kept[train], kept[val]


def probe_indices(count: int, size: int, split_seed: int) -> np.ndarray:
    """Sorted indices of the exact probe's batch: `size` (at most `count`) drawn uniformly without
    replacement, so the batch is a plain sample of the training split."""
    rng = split_rng(split_seed, PROBE_STREAM)
    return np.sort(rng.choice(count, size=min(size, count), replace=False))

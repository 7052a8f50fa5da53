"""Named data sets -> batches on the training device.

Small data sets (digits, Fashion-MNIST, CIFAR, synthetic) live on the device as uint8 tensors and
are augmented a whole batch at a time there, which keeps a 2-core CPU or a GPU busy with the
model instead of per-image Python transforms. Folder data sets (ImageNet) stream through a
DataLoader. Both draw the epoch's order and augmentation from a generator seeded by
(seed, epoch), so a resumed run sees exactly the batches the uninterrupted run would have.

The validation split (and the subset, when the spec asks for one) is held out of the training
split by `data.split_seed` (tsla_core/splits.py); it is evaluated like the test split, without
augmentation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets as tv_datasets
from torchvision.transforms import v2

from tsla_core.provenance import arrays_sha256, folder_sha256
from tsla_core.readers import (
    ArraySplit,
    DatasetError,
    make_synthetic,
    read_cifar,
    read_digits,
    read_fashion_mnist,
    read_image_folder_classes,
)
from tsla_core.splits import training_indices
from tsla_spec.datasets import DATASETS
from tsla_spec.records import DatasetIdentity
from tsla_spec.spec import DataSpec

Batch = tuple[torch.Tensor, torch.Tensor]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Augment:
    """Random crop after zero-padding by `pad` pixels, and an optional horizontal flip."""

    pad: int
    flip: bool


# Standard augmentation per data set: digits are not mirror-symmetric, clothes and CIFAR are.
AUGMENTS = {
    "digits": Augment(pad=1, flip=False),
    "fashion-mnist": Augment(pad=2, flip=True),
    "cifar10": Augment(pad=4, flip=True),
    "cifar100": Augment(pad=4, flip=True),
    "synthetic": Augment(pad=4, flip=True),
}


@dataclass(frozen=True)
class Shard:
    """Rank `rank` of `world` takes the rank-th of `world` equal parts of each training batch
    (along the last dimension: examples)."""

    rank: int
    world: int

    def of(self, batch: torch.Tensor) -> torch.Tensor:
        size = batch.shape[-1] // self.world
        return batch[..., self.rank * size : (self.rank + 1) * size]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator for one epoch's order and augmentation; a pure function of (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class Split(Protocol):
    def __len__(self) -> int: ...

    def steps(self, batch_size: int) -> int:
        """The number of training batches `batches` yields per epoch."""
        ...

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None,
        channels_last: bool,
        shard: Shard | None = None,
    ) -> Iterator[Batch]:
        """Training batches (shuffled, augmented, full) when `generator` is given, else evaluation.
        With `shard`, a rank's part of each training batch (the same global batches for any N)."""
        ...

    def examples(self, indices: np.ndarray, channels_last: bool) -> Batch:
        """These examples (positions in this split) as one batch, as evaluation sees them."""
        ...


class TensorSplit:
    """A split held on the device as uint8 NCHW; normalised and augmented per batch."""

    def __init__(
        self,
        arrays: ArraySplit,
        device: torch.device,
        stats: tuple[torch.Tensor, torch.Tensor],
        augment: Augment | None,
    ) -> None:
        self.images = torch.from_numpy(arrays.images).to(device)
        self.labels = torch.from_numpy(arrays.labels).to(device)
        self.mean, self.std = (s.to(device).view(1, -1, 1, 1) for s in stats)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def steps(self, batch_size: int) -> int:
        return len(self) // batch_size  # the ragged last batch is dropped

    def examples(self, indices: np.ndarray, channels_last: bool) -> Batch:
        index = torch.from_numpy(indices).to(self.images.device)
        return self._normalise(self.images[index], channels_last), self.labels[index]

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None,
        channels_last: bool,
        shard: Shard | None = None,
    ) -> Iterator[Batch]:
        count = len(self)
        if generator is None:
            order, stop = torch.arange(count), count
        else:
            # Drop the ragged last batch: a batch of one would break BatchNorm's statistics.
            order, stop = torch.randperm(count, generator=generator), count - count % batch_size
        device = self.images.device
        order = order.to(device)
        draws = None
        if generator is not None and self.augment is not None:
            # The whole epoch's crops and flips in one copy to the device: no per-step host sync.
            draws = [t.to(device) for t in draw_augmentation(count, self.augment, generator)]
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            if shard is not None:
                index = shard.of(index)
            images = self.images[index]
            if draws is not None and self.augment is not None:
                shifts, flips = draws[0][:, start : start + batch_size], draws[1][start : start + batch_size]
                if shard is not None:
                    shifts, flips = shard.of(shifts), shard.of(flips)
                images = augment_batch(images, self.augment, shifts, flips)
            yield self._normalise(images, channels_last), self.labels[index]

    def _normalise(self, images: torch.Tensor, channels_last: bool) -> torch.Tensor:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return (images.float() / 255.0 - self.mean) / self.std


def draw_augmentation(
    count: int, augment: Augment, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop offsets (2, count) and flip flags (count,) for `count` images, from the CPU generator
    (cheap, and the same numbers on any device)."""
    shifts = torch.randint(0, 2 * augment.pad + 1, (2, count), generator=generator)
    flips = torch.rand(count, generator=generator) < 0.5
    return shifts, flips


def augment_batch(
    images: torch.Tensor, augment: Augment, shifts: torch.Tensor, flips: torch.Tensor
) -> torch.Tensor:
    """Per-image random crop (zero padding) and flip for a whole uint8 NCHW batch at once."""
    n, _, h, w = images.shape
    device = images.device
    if augment.pad:
        padded = torch.nn.functional.pad(images, [augment.pad] * 4)
        rows = (shifts[0].view(n, 1) + torch.arange(h, device=device)).view(n, 1, h, 1)
        cols = (shifts[1].view(n, 1) + torch.arange(w, device=device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=device).view(n, 1, 1, 1)
        channel = torch.arange(images.shape[1], device=device).view(1, -1, 1, 1)
        images = padded[batch, channel, rows, cols]
    if augment.flip:
        images = torch.where(flips.view(n, 1, 1, 1), images.flip(3), images)
    return images


def folder_transform(train: bool) -> v2.Transform:
    """ImageNet-style crops: random resized crop and flip for training, else resize + centre crop."""
    if train:
        return v2.Compose(
            [v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor()]
        )
    return v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.PILToTensor()])


def with_transform(folder: tv_datasets.ImageFolder, train: bool) -> tv_datasets.ImageFolder:
    """The same tree (its file list is shared, not scanned again) with another transform."""
    view = copy.copy(folder)
    view.transform = folder_transform(train)
    return view


class FolderSplit:
    """Examples of an ImageFolder tree (all, or those at `indices`) streamed through a DataLoader."""

    def __init__(
        self,
        folder: tv_datasets.ImageFolder,
        indices: np.ndarray | None,
        train: bool,
        num_workers: int,
        device: torch.device,
    ) -> None:
        self.folder = folder
        self.indices: list[int] = list(range(len(folder))) if indices is None else indices.tolist()
        self.dataset = Subset(with_transform(folder, train), self.indices)
        self.num_workers = num_workers
        self.device = device
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.dataset)

    def steps(self, batch_size: int) -> int:
        if len(self) > batch_size:
            return len(self) // batch_size  # drop_last, as `batches` loads them
        return 1 if len(self) else 0

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None,
        channels_last: bool,
        shard: Shard | None = None,
    ) -> Iterator[Batch]:
        train = generator is not None
        if generator is not None and shard is not None:
            loader = self._sharded_loader(batch_size, generator, shard)
        else:
            loader = DataLoader(
                self.dataset,
                batch_size=batch_size,
                shuffle=train,
                drop_last=train and len(self.dataset) > batch_size,
                generator=generator,
                num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
            )
        for images, labels in loader:
            yield self._normalise(images, channels_last), labels.to(self.device, non_blocking=True)

    def _sharded_loader(self, batch_size: int, generator: torch.Generator, shard: Shard) -> DataLoader[Any]:
        """A rank's part of each batch of the order a one-process run draws (RandomSampler's
        randperm from the same generator, full batches only)."""
        order = torch.randperm(len(self.dataset), generator=generator)
        stop = len(order) - len(order) % batch_size if len(order) > batch_size else len(order)
        parts = [shard.of(order[start : start + batch_size]).tolist() for start in range(0, stop, batch_size)]
        return DataLoader(
            self.dataset,
            batch_sampler=parts,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def examples(self, indices: np.ndarray, channels_last: bool) -> Batch:
        evaluated = with_transform(self.folder, train=False)
        items = [evaluated[self.indices[i]] for i in indices.tolist()]
        images = torch.stack([image for image, _ in items])
        return self._normalise(images, channels_last), torch.tensor([label for _, label in items]).to(
            self.device
        )

    def _normalise(self, images: torch.Tensor, channels_last: bool) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return (images.float() / 255.0 - self.mean) / self.std


@dataclass
class DataBundle:
    train: Split
    val: Split | None  # None: no validation split (`data.val_fraction` 0)
    test: Split
    num_classes: int
    in_channels: int
    identity: DatasetIdentity


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 NCHW images, on the 0..1 scale."""
    scaled = images.double() / 255.0
    return scaled.mean(dim=(0, 2, 3)).float(), scaled.std(dim=(0, 2, 3)).clamp_min(1e-3).float()


def read_arrays(spec: DataSpec, data_root: Path) -> tuple[ArraySplit, ArraySplit, int]:
    """(train, test, num_classes) for the tensor data sets, from the registry's locations."""
    name = spec.name
    if name == "digits":
        return read_digits(train=True), read_digits(train=False), 10
    if name == "synthetic":
        s = spec.synthetic
        train = make_synthetic(s.num_train, s.num_classes, s.channels, s.image_size, seed=1)
        test = make_synthetic(s.num_test, s.num_classes, s.channels, s.image_size, seed=2)
        return train, test, s.num_classes
    folder = DATASETS[name].location(data_root)
    assert folder is not None
    if name == "fashion-mnist":
        return read_fashion_mnist(folder, train=True), read_fashion_mnist(folder, train=False), 10
    if name in ("cifar10", "cifar100"):
        classes: Literal[10, 100] = 10 if name == "cifar10" else 100
        return read_cifar(folder, classes, train=True), read_cifar(folder, classes, train=False), classes
    raise DatasetError(f"{name} is not a tensor data set")


def load_data(
    spec: DataSpec, data_root: Path, device: torch.device, *, uploaded: Path | None = None
) -> DataBundle:
    """Load the named data set under `data_root`, or the uploaded set in the canonical folder
    `uploaded` (tsla_spec/uploads.py); DatasetError says what is missing."""
    if uploaded is not None or spec.is_uploaded:
        if uploaded is None:
            raise DatasetError(f"{spec.name} is an uploaded data set: its local copy was not given")
        from tsla_core.uploaded import load_uploaded_data  # it builds on this module

        return load_uploaded_data(spec, uploaded, device)
    if spec.name == "imagenet":
        return load_folder_data(spec, data_root / "imagenet", device)
    return load_tensor_data(spec, data_root, device)


def dataset_identity(spec: DataSpec, sha256: str, train: int, val: int, test: int) -> DatasetIdentity:
    info = DATASETS[spec.name]
    return DatasetIdentity(spec.name, info.description, info.version, sha256, train, val, test)


def take(arrays: ArraySplit, indices: np.ndarray) -> ArraySplit:
    if len(indices) == len(arrays.labels):  # all of them, in order: no copy
        return arrays
    return ArraySplit(images=np.ascontiguousarray(arrays.images[indices]), labels=arrays.labels[indices])


def load_tensor_data(spec: DataSpec, data_root: Path, device: torch.device) -> DataBundle:
    """A tensor data set on the device: the training examples (subset, less the validation split),
    normalised with their own statistics, the validation split and the test split."""
    read_train, test_arrays, num_classes = read_arrays(spec, data_root)
    sha256 = arrays_sha256([read_train, test_arrays])
    train_index, val_index = training_indices(read_train.labels, spec)
    train_arrays = take(read_train, train_index)
    stats = channel_stats(torch.from_numpy(train_arrays.images))
    augment = AUGMENTS[spec.name] if spec.augment else None
    val = TensorSplit(take(read_train, val_index), device, stats, None) if len(val_index) else None
    return DataBundle(
        TensorSplit(train_arrays, device, stats, augment),
        val,
        TensorSplit(test_arrays, device, stats, None),
        num_classes=num_classes,
        in_channels=train_arrays.images.shape[1],
        identity=dataset_identity(spec, sha256, len(train_index), len(val_index), len(test_arrays.labels)),
    )


def load_folder_data(spec: DataSpec, root: Path, device: torch.device) -> DataBundle:
    """An ImageFolder tree: root/train (less the validation split) to train on, root/val to test."""
    classes = read_image_folder_classes(root / "train")
    if read_image_folder_classes(root / "val") != classes:
        raise DatasetError(f"{root}/val has other class folders than {root}/train")
    train_folder = tv_datasets.ImageFolder(str(root / "train"))
    test_folder = tv_datasets.ImageFolder(str(root / "val"))
    sha256 = folder_sha256(
        (Path(folder.root), [path for path, _ in folder.samples]) for folder in (train_folder, test_folder)
    )
    train_index, val_index = training_indices(np.asarray(train_folder.targets), spec)
    workers = spec.num_workers
    val = FolderSplit(train_folder, val_index, False, workers, device) if len(val_index) else None
    return DataBundle(
        FolderSplit(train_folder, train_index, True, workers, device),
        val,
        FolderSplit(test_folder, None, False, workers, device),
        num_classes=len(classes),
        in_channels=3,
        identity=dataset_identity(spec, sha256, len(train_index), len(val_index), len(test_folder)),
    )

"""Named data sets -> batches on the training device.

Small data sets (digits, Fashion-MNIST, CIFAR, synthetic) live on the device as uint8 tensors and
are augmented a whole batch at a time there, which keeps a 2-core CPU or a GPU busy with the
model instead of per-image Python transforms. Folder data sets (ImageNet) stream through a
DataLoader. Both draw the epoch's order and augmentation from a generator seeded by
(seed, epoch), so a resumed run sees exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
from torch.utils.data import DataLoader
from torchvision import datasets as tv_datasets
from torchvision.transforms import v2

from tsla_core.readers import (
    ArraySplit,
    DatasetError,
    make_synthetic,
    read_cifar,
    read_digits,
    read_fashion_mnist,
    read_image_folder_classes,
)
from tsla_spec.datasets import DATASETS
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


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator for one epoch's order and augmentation; a pure function of (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class Split(Protocol):
    def __len__(self) -> int: ...

    def batches(
        self, batch_size: int, generator: torch.Generator | None, channels_last: bool
    ) -> Iterator[Batch]:
        """Training batches (shuffled, augmented, full) when `generator` is given, else test."""
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

    def batches(
        self, batch_size: int, generator: torch.Generator | None, channels_last: bool
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
            images = self.images[index]
            if draws is not None and self.augment is not None:
                shifts, flips = draws[0][:, start : start + batch_size], draws[1][start : start + batch_size]
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


class FolderSplit:
    """An ImageFolder tree streamed through a DataLoader (ImageNet-style crops)."""

    def __init__(self, root: Path, train: bool, num_workers: int, device: torch.device) -> None:
        if train:
            transform = v2.Compose(
                [v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor()]
            )
        else:
            transform = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.PILToTensor()])
        self.dataset = tv_datasets.ImageFolder(str(root), transform=transform)
        self.num_workers = num_workers
        self.device = device
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(
        self, batch_size: int, generator: torch.Generator | None, channels_last: bool
    ) -> Iterator[Batch]:
        train = generator is not None
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
            images = images.to(self.device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield (images.float() / 255.0 - self.mean) / self.std, labels.to(self.device, non_blocking=True)


@dataclass
class DataBundle:
    train: Split
    test: Split
    num_classes: int
    in_channels: int


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


def load_data(spec: DataSpec, data_root: Path, device: torch.device) -> DataBundle:
    """Load the named data set under `data_root`; DatasetError says what is missing."""
    if spec.name == "imagenet":
        root = data_root / "imagenet"
        classes = read_image_folder_classes(root / "train")
        test_classes = read_image_folder_classes(root / "val")
        if test_classes != classes:
            raise DatasetError(f"{root}/val has other class folders than {root}/train")
        train = FolderSplit(root / "train", True, spec.num_workers, device)
        test = FolderSplit(root / "val", False, spec.num_workers, device)
        return DataBundle(train, test, num_classes=len(classes), in_channels=3)
    train_arrays, test_arrays, num_classes = read_arrays(spec, data_root)
    stats = channel_stats(torch.from_numpy(train_arrays.images))
    augment = AUGMENTS[spec.name] if spec.augment else None
    return DataBundle(
        TensorSplit(train_arrays, device, stats, augment),
        TensorSplit(test_arrays, device, stats, None),
        num_classes=num_classes,
        in_channels=train_arrays.images.shape[1],
    )

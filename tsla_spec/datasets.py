"""The server-side registry of named data sets: a job names one, never a filesystem path.

The API lists these and refuses a job whose data set is not installed on this server, before
any worker tries; the core reads the same locations (tsla_core/batches.py).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    num_classes: int | None  # None: read from the data (ImageFolder, synthetic)
    folder: str | None  # under the data root; None when the data ships with a package
    # What the model sees, for resource estimates (tsla_spec/resources.py); None: from the spec.
    image_shape: tuple[int, int, int] | None = None  # (channels, height, width)
    num_train: int | None = None
    num_test: int | None = None
    # Read from disk batch by batch (a DataLoader) instead of held on the device as uint8.
    streamed: bool = False
    # The default `data.val_fraction`: 0 where the test split is the only held-out data we need
    # (synthetic benchmarks) or where the set's own validation folder serves as the test split.
    val_fraction: float = 0.1
    # Revision of this entry, recorded with every run (tsla_spec.records.DatasetIdentity): bumped
    # when what the core reads under this name changes (another file layout, another fixed split).
    version: str = "1"

    def location(self, data_root: Path) -> Path | None:
        """Where the data is read from on this server, or None for package data."""
        if self.name == "fashion-mnist":
            local = data_root / "fashion-mnist"
            return local if local.is_dir() else FASHION_MNIST_DEBIAN_DIR
        return data_root / self.folder if self.folder is not None else None

    def problem(self, data_root: Path) -> str | None:
        """Why this data set cannot be used here, or None when it can."""
        if self.name == "digits":
            installed = importlib.util.find_spec("sklearn") is not None
            return None if installed else "scikit-learn is not installed"
        location = self.location(data_root)
        if location is not None and not location.is_dir():
            return f"not installed on this server: {location} is missing (data is never downloaded)"
        return None


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "digits",
            "scikit-learn's 1,797 8x8 handwritten digits (ships offline)",
            10,
            None,
            image_shape=(1, 8, 8),
            num_train=1437,  # the core's stratified 80/20 split
            num_test=360,
        ),
        DatasetInfo(
            "fashion-mnist",
            "Fashion-MNIST 28x28 grayscale, 60k/10k (IDX files)",
            10,
            "fashion-mnist",
            image_shape=(1, 28, 28),
            num_train=60_000,
            num_test=10_000,
        ),
        DatasetInfo(
            "cifar10",
            "CIFAR-10 32x32 colour, 50k/10k (cifar-10-batches-py)",
            10,
            "cifar-10-batches-py",
            image_shape=(3, 32, 32),
            num_train=50_000,
            num_test=10_000,
        ),
        DatasetInfo(
            "cifar100",
            "CIFAR-100 32x32 colour, 50k/10k (cifar-100-python)",
            100,
            "cifar-100-python",
            image_shape=(3, 32, 32),
            num_train=50_000,
            num_test=10_000,
        ),
        DatasetInfo(
            "imagenet",
            "an ImageFolder tree: imagenet/{train,val}/<class>/<image>",
            None,
            "imagenet",
            image_shape=(3, 224, 224),  # the training crop; the class count is read from the tree
            num_train=1_281_167,  # ImageNet-1k
            num_test=50_000,
            streamed=True,
            val_fraction=0.0,  # imagenet/val is the test split; a validation split is opt-in
        ),
        DatasetInfo(
            "synthetic", "generated class templates plus noise, for benchmarks", None, None, val_fraction=0.0
        ),
    )
}

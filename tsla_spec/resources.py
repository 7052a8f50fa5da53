"""What a job will need, estimated from its spec alone (pure: no torch), so a server can refuse
a job it cannot hold before any worker tries.

- Data bytes on the device: tensor data sets live on the training device as uint8 images plus
  int64 labels, train (with the validation split held out of it) and test split
  (tsla_core/batches.py); `data.train_subset`, when given, is the training split's size. A
  streamed set (ImageNet) holds only the batch in flight, counted as 0.
- Parameters: counted exactly for tsla_core.models.ResNet (tests/core/test_resources.py checks
  the count against the built model).
- Activation bytes of one training batch, a rough upper estimate: every convolution's output
  and its batch norm's output are kept for the backward pass, in fp32 (bf16 autocast keeps some
  at half that), so batch x (convolution outputs per image) x 2 x 4 bytes. Pooling, the ReLU
  masks and the optimizer's state are left out; the fp32 guess more than covers them.
"""

from __future__ import annotations

from dataclasses import dataclass

from tsla_spec.datasets import DATASETS
from tsla_spec.spec import DataSpec, ModelSpec, RunSpec

# The class count an ImageFolder tree is assumed to have (ImageNet-1k) until a worker reads it.
FOLDER_CLASSES = 1000
LABEL_BYTES = 8  # int64
ACTIVATION_BYTES = 4  # fp32
TENSORS_PER_CONV = 2  # the convolution's output and its batch norm's
# Residual blocks per stage, and whether they are bottlenecks (x4 expansion), as tsla_core builds them.
RESNET_LAYOUTS: dict[str, tuple[bool, tuple[int, int, int, int]]] = {
    "resnet18": (False, (2, 2, 2, 2)),
    "resnet34": (False, (3, 4, 6, 3)),
    "resnet50": (True, (3, 4, 6, 3)),
}


@dataclass(frozen=True)
class DataShape:
    """The images a job trains and tests on, as the model sees them."""

    name: str
    channels: int
    height: int
    width: int
    num_train: int
    num_test: int
    num_classes: int
    streamed: bool

    @property
    def device_bytes(self) -> int:
        if self.streamed:
            return 0
        per_image = self.channels * self.height * self.width + LABEL_BYTES
        return (self.num_train + self.num_test) * per_image

    def describe(self) -> str:
        images = self.num_train + self.num_test
        return f"{self.name} ({images:,} images of {self.channels}x{self.height}x{self.width})"


@dataclass(frozen=True)
class ResourceEstimate:
    data_bytes: int  # held on the training device for the whole run
    parameters: int
    activation_bytes: int  # kept for the backward pass of one training batch
    data: str  # what the data is, for messages: "cifar100 (60,000 images of 3x32x32)"
    model: str  # "resnet50 width 512"


def data_shape(spec: DataSpec) -> DataShape:
    """The registry's shape and counts of a named data set, the synthetic spec's, or an uploaded
    set's (as the service resolved it); the training count is the subset's when the spec asks."""
    if spec.name == "synthetic":
        s = spec.synthetic
        train = spec.train_subset or s.num_train
        return DataShape(
            "synthetic", s.channels, s.image_size, s.image_size, train, s.num_test, s.num_classes, False
        )
    if spec.is_uploaded:
        if spec.uploaded is None:
            raise ValueError(f"data.uploaded: the service has not resolved data set {spec.name!r}")
        up = spec.uploaded
        channels, height, width = up.shape
        train = spec.train_subset or up.num_train
        return DataShape(spec.name, channels, height, width, train, up.num_test, up.num_classes, False)
    info = DATASETS[spec.name]
    assert info.image_shape is not None and info.num_train is not None and info.num_test is not None
    channels, height, width = info.image_shape
    classes = info.num_classes or FOLDER_CLASSES
    train = spec.train_subset or info.num_train
    return DataShape(info.name, channels, height, width, train, info.num_test, classes, info.streamed)


@dataclass
class ConvTally:
    """Running sums over a network's convolutions, each followed by a batch norm."""

    parameters: int = 0
    outputs: int = 0  # output elements per image

    def conv(self, c_in: int, c_out: int, kernel: int, size: tuple[int, int]) -> None:
        self.parameters += c_in * c_out * kernel * kernel + 2 * c_out  # + the batch norm's weight and bias
        self.outputs += c_out * size[0] * size[1]


def halved(size: tuple[int, int]) -> tuple[int, int]:
    """A stride-2 convolution's (or max-pool's) output size, with the padding the model uses."""
    return (size[0] - 1) // 2 + 1, (size[1] - 1) // 2 + 1


def resnet_tally(model: ModelSpec, in_channels: int, num_classes: int, size: tuple[int, int]) -> ConvTally:
    """Parameters and convolution outputs per image of tsla_core.models.ResNet."""
    bottleneck, counts = RESNET_LAYOUTS[model.arch]
    tally = ConvTally()
    if model.stem == "cifar":
        tally.conv(in_channels, model.width, 3, size)
    else:
        size = halved(size)
        tally.conv(in_channels, model.width, 7, size)
        size = halved(size)  # the max-pool
    in_planes = model.width
    for index, count in enumerate(counts):
        planes = model.width * 2**index
        for block in range(count):
            stride = 2 if index > 0 and block == 0 else 1
            in_size, size = size, halved(size) if stride == 2 else size
            out_planes = planes * 4 if bottleneck else planes
            if bottleneck:
                tally.conv(in_planes, planes, 1, in_size)
                tally.conv(planes, planes, 3, size)
                tally.conv(planes, out_planes, 1, size)
            else:
                tally.conv(in_planes, planes, 3, size)
                tally.conv(planes, planes, 3, size)
            if stride != 1 or in_planes != out_planes:
                tally.conv(in_planes, out_planes, 1, size)  # the projection shortcut
            in_planes = out_planes
    tally.parameters += in_planes * num_classes + num_classes  # the linear head
    return tally


def estimate_resources(spec: RunSpec) -> ResourceEstimate:
    data = data_shape(spec.data)
    tally = resnet_tally(spec.model, data.channels, data.num_classes, (data.height, data.width))
    activations = spec.batch_size * tally.outputs * TENSORS_PER_CONV * ACTIVATION_BYTES
    return ResourceEstimate(
        data_bytes=data.device_bytes,
        parameters=tally.parameters,
        activation_bytes=activations,
        data=data.describe(),
        model=f"{spec.model.arch} width {spec.model.width}",
    )


def short_number(value: float) -> str:
    """1.6e9, 2.0e8: a figure for a message, to two significant digits."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"

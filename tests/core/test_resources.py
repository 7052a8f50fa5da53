"""The pure resource estimate (tsla_spec/resources.py) against the models tsla_core really builds."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from tsla_core.models import build_model
from tsla_core.readers import read_digits
from tsla_service.settings import Settings
from tsla_spec.datasets import DATASETS
from tsla_spec.presets import PRESETS
from tsla_spec.resources import estimate_resources, resnet_tally, short_number
from tsla_spec.spec import ModelSpec, build_spec

CONFIGS = [
    ("resnet18", "cifar", 4, 10, 3),
    ("resnet18", "imagenet", 8, 100, 1),
    ("resnet18", "cifar", 64, 100, 3),
    ("resnet34", "cifar", 4, 7, 4),
    ("resnet34", "imagenet", 6, 1000, 3),
    ("resnet50", "cifar", 4, 10, 1),
    ("resnet50", "imagenet", 8, 1000, 3),
    ("resnet50", "cifar", 16, 2, 3),
]


@pytest.mark.parametrize(("arch", "stem", "width", "classes", "channels"), CONFIGS)
def test_parameter_count_matches_the_built_model(
    arch: Any, stem: Any, width: int, classes: int, channels: int
) -> None:
    spec = ModelSpec(arch=arch, stem=stem, width=width)
    model = build_model(spec, classes, channels)
    expected = sum(p.numel() for p in model.parameters())
    assert resnet_tally(spec, channels, classes, (32, 32)).parameters == expected


def conv_outputs(model: nn.Module, channels: int, size: tuple[int, int]) -> int:
    """Output elements of every convolution for one image, counted by forward hooks."""
    total = 0

    def count(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += output[0].numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, channels, *size))
    for hook in hooks:
        hook.remove()
    return total


@pytest.mark.parametrize(
    ("arch", "stem", "size"),
    [("resnet18", "cifar", (32, 32)), ("resnet18", "cifar", (37, 21)), ("resnet34", "imagenet", (64, 64)),
     ("resnet50", "imagenet", (45, 45)), ("resnet50", "cifar", (8, 8))],
)  # fmt: skip
def test_activation_count_matches_the_convolution_outputs(
    arch: Any, stem: Any, size: tuple[int, int]
) -> None:
    spec = ModelSpec(arch=arch, stem=stem, width=4)
    assert resnet_tally(spec, 3, 10, size).outputs == conv_outputs(build_model(spec, 10, 3), 3, size)


def test_the_registry_shapes_match_the_data_the_core_reads() -> None:
    info = DATASETS["digits"]
    train, test = read_digits(train=True), read_digits(train=False)
    assert (len(train.labels), len(test.labels)) == (info.num_train, info.num_test)
    assert train.images.shape[1:] == info.image_shape


def default(name: str) -> int:
    value = Settings.model_fields[name].default
    assert isinstance(value, int)
    return value


@pytest.mark.parametrize("preset", ["cifar100-resnet18", "imagenet-resnet50"])
def test_the_default_limits_admit_the_papers_presets(preset: str) -> None:
    need = estimate_resources(build_spec({"preset": preset}))
    assert need.data_bytes <= default("max_data_bytes")
    assert need.parameters <= default("max_parameters")
    assert need.activation_bytes <= default("max_activation_bytes")


def test_the_default_limits_refuse_huge_data_and_models() -> None:
    synthetic = {"num_train": 10**6, "num_test": 10**6, "channels": 4, "image_size": 512}
    huge_data = estimate_resources(
        build_spec({"preset": "digits", "data": {"name": "synthetic", "synthetic": synthetic}})
    )
    assert huge_data.data_bytes > 2 * 10**12 > default("max_data_bytes")
    wide = estimate_resources(build_spec({"preset": "imagenet-resnet50", "model": {"width": 512}}))
    assert wide.parameters > 1.5e9 > default("max_parameters")
    assert estimate_resources(build_spec({"preset": "imagenet-resnet50"})).data_bytes == 0  # streamed


def test_a_training_subset_is_what_the_device_holds() -> None:
    full = estimate_resources(build_spec({"preset": "fashion-mnist"}))
    subset = estimate_resources(build_spec({"preset": "fashion-mnist", "data": {"train_subset": 6000}}))
    per_image = 28 * 28 + 8  # uint8 pixels and an int64 label
    assert full.data_bytes == (60_000 + 10_000) * per_image
    assert subset.data_bytes == (6000 + 10_000) * per_image  # the validation split is carved from it
    assert subset.data == "fashion-mnist (16,000 images of 1x28x28)"
    synthetic = {"name": "synthetic", "synthetic": {"num_train": 4096}, "train_subset": 1000}
    assert estimate_resources(build_spec({"preset": "digits", "data": synthetic})).data_bytes == (
        (1000 + 1024) * (3 * 32 * 32 + 8)
    )


def test_short_numbers() -> None:
    assert [short_number(v) for v in (1.6e9, 2e8, 0, 123_456)] == ["1.6e9", "2.0e8", "0.0e0", "1.2e5"]
    assert set(PRESETS) >= {"cifar100-resnet18", "imagenet-resnet50"}

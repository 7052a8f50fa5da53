import pytest
import torch

from tsla_core.models import build_model
from tsla_spec.spec import ModelSpec


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize(("stem", "size"), [("cifar", 16), ("imagenet", 64)])
def test_output_shape(arch: str, stem: str, size: int) -> None:
    model = build_model(ModelSpec(arch=arch, stem=stem, width=4), num_classes=7, in_channels=3)  # type: ignore[arg-type]
    assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_cifar_stem_keeps_resolution_and_imagenet_stem_divides_by_four() -> None:
    cifar = build_model(ModelSpec(stem="cifar", width=4), 10, 3)
    imagenet = build_model(ModelSpec(stem="imagenet", width=4), 10, 3)
    x = torch.randn(1, 3, 32, 32)
    assert cifar.stem(x).shape[-1] == 32
    assert imagenet.stem(x).shape[-1] == 8


def test_resnet18_width64_has_the_standard_parameter_count() -> None:
    model = build_model(ModelSpec(arch="resnet18", stem="cifar", width=64), 100, 3)
    # The CIFAR ResNet-18 of the paper: 11.2M parameters with a 100-way head.
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(11.22e6, rel=0.01)


def test_width_scales_the_model() -> None:
    small = sum(p.numel() for p in build_model(ModelSpec(width=8), 10, 1).parameters())
    large = sum(p.numel() for p in build_model(ModelSpec(width=16), 10, 1).parameters())
    assert 3.5 < large / small < 4.1

"""ResNet-18/34/50 with a CIFAR stem (3x3, stride 1, no max-pool) or the ImageNet stem.

`width` is the channel count of the first stage (64 in He et al.); stages double it. Small
widths give the CPU-sized models of the `digits` and `fashion-mnist` presets. Each batch norm is
a `BatchNormAct` (tsla_core/fused.py): an nn.BatchNorm2d that also adds the residual and applies
the ReLU after it, with a fused CPU kernel for training; each convolution a `SmallMapConv2d`
(tsla_core/small_map_conv.py), an nn.Conv2d with a faster weight gradient on small CPU maps.
Both keep nn.BatchNorm2d's and nn.Conv2d's state_dict.
"""

import torch
from torch import nn

from tsla_core.kernels.batch_norm_act import BatchNormAct
from tsla_core.kernels.small_map_conv import SmallMapConv2d
from tsla_spec.spec import ModelSpec


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = SmallMapConv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = BatchNormAct(planes, relu=True)
        self.conv2 = SmallMapConv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = BatchNormAct(planes, relu=True)  # after the residual is added
        self.shortcut = shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(x))
        return self.bn2(self.conv2(out), residual=self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = SmallMapConv2d(in_planes, planes, 1, bias=False)
        self.bn1 = BatchNormAct(planes, relu=True)
        self.conv2 = SmallMapConv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = BatchNormAct(planes, relu=True)
        self.conv3 = SmallMapConv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = BatchNormAct(planes * self.expansion, relu=True)  # after the residual is added
        self.shortcut = shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        return self.bn3(self.conv3(out), residual=self.shortcut(x))


def shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity when shapes match, else a strided 1x1 projection."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        SmallMapConv2d(in_planes, out_planes, 1, stride, bias=False), BatchNormAct(out_planes, relu=False)
    )


LAYOUTS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    def __init__(self, spec: ModelSpec, num_classes: int, in_channels: int) -> None:
        super().__init__()
        block, counts = LAYOUTS[spec.arch]
        width = spec.width
        # Indices 0 (conv) and 1 (batch norm) keep the state_dict keys of the former stem.
        if spec.stem == "cifar":
            self.stem = nn.Sequential(
                SmallMapConv2d(in_channels, width, 3, 1, 1, bias=False), BatchNormAct(width, relu=True)
            )
        else:
            self.stem = nn.Sequential(
                SmallMapConv2d(in_channels, width, 7, 2, 3, bias=False),
                BatchNormAct(width, relu=True),
                nn.MaxPool2d(3, 2, 1),
            )
        stages: list[nn.Module] = []
        in_planes = width
        for index, count in enumerate(counts):
            planes = width * 2**index
            for block_index in range(count):
                stride = 2 if index > 0 and block_index == 0 else 1
                stages.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_planes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))


def build_model(spec: ModelSpec, num_classes: int, in_channels: int) -> ResNet:
    return ResNet(spec, num_classes, in_channels)


def use_custom_kernels(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch the model's custom CPU kernels on or off (off: PyTorch's only); returns the model."""
    for module in model.modules():
        if isinstance(module, BatchNormAct | SmallMapConv2d):
            module.custom_kernels = enabled
    return model

"""nn.Conv2d whose weight gradient on small CPU feature maps is computed as a forward convolution.

oneDNN's weight-gradient kernel is slow on the smallest maps of a ResNet: with the
`fashion-mnist` preset (batch 128, bf16) the 3x3 convolutions of the last stage, 128 channels
on 4x4 maps, spent 2.2 ms per weight gradient, five times their forward pass. The same gradient
is a forward convolution with batch and channels swapped,

    grad_w[o, i, p, q] = sum over n, y, x of grad_out[n, o, y, x] * x_padded[n, i, s*y + p, s*x + q]
                       = conv2d(input = x as (C_in, N, H, W), weight = grad_out as (C_out, N, H', W'),
                                padding, dilation = stride)[i, o, p, q],

which oneDNN runs in 1.0 ms there; a training step got ~5% faster. Larger maps keep PyTorch's
kernel (already faster there), as do GPUs, grouped or dilated convolutions, evaluation and
TSLA_CUSTOM_KERNELS=0.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tsla_core.kernels.batch_norm_act import custom_kernels_switched_on

# The largest input map (height x width) that takes this path: 4x4 measured faster, 14x14 slower.
MAX_PIXELS = 16


class _WeightGradAsConv(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(
        ctx: Any, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        dtype = grad_out.dtype  # bf16 under autocast, as the forward computed in
        x, kernel = x.to(dtype), weight.to(dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out,
                x,
                kernel,
                None,
                ctx.stride,
                ctx.padding,
                [1, 1],
                False,
                [0, 0],
                1,
                [True, False, False],
            )[0]
        swapped_x = x.transpose(0, 1).contiguous(memory_format=torch.channels_last)
        swapped_grad = grad_out.transpose(0, 1).contiguous(memory_format=torch.channels_last)
        grad_w = F.conv2d(swapped_x, swapped_grad, None, 1, ctx.padding, ctx.stride)
        # Offsets beyond the kernel appear when (H + 2 * padding - k) is not a multiple of stride.
        grad_w = grad_w[:, :, : weight.shape[2], : weight.shape[3]].transpose(0, 1)
        grad_bias = grad_out.sum((0, 2, 3)) if ctx.has_bias else None
        return grad_x, grad_w.to(weight.dtype), grad_bias, None, None


class SmallMapConv2d(nn.Conv2d):
    """An nn.Conv2d (same parameters and state_dict) with the faster weight gradient above."""

    custom_kernels = True  # False: always PyTorch's (models.use_custom_kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._takes_fast_path(x):
            return _WeightGradAsConv.apply(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)

    def _takes_fast_path(self, x: torch.Tensor) -> bool:
        return (
            self.custom_kernels
            and x.device.type == "cpu"
            and x.dim() == 4
            and x.shape[2] * x.shape[3] <= MAX_PIXELS
            and torch.is_grad_enabled()
            and self.weight.requires_grad
            and self.groups == 1
            and self.dilation == (1, 1)
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)
            and custom_kernels_switched_on()
        )

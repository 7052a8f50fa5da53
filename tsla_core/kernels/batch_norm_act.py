"""BatchNorm2d with the residual add and ReLU that follow it, fused into one CPU kernel.

On a CPU, batch norm and ReLU are the largest cost of a ResNet step after the convolutions:
with the `fashion-mnist` preset, dropping the batch norms alone made a step ~35% faster. The
kernel in `csrc/batch_norm_act.cpp` makes two passes over the activation in each direction
where PyTorch's kernels make four or five (forward: mean, variance, normalise, add, ReLU) and
three or four (backward), and needs no stored output for the ReLU after a plain batch norm. A
training step of that preset got ~15% faster. The kernel is compiled on first use with the
machine's compiler (~10 s, cached under `~/.cache/tsla/extensions`).

`BatchNormAct` is an `nn.BatchNorm2d` (same parameters, buffers and state_dict) that takes the
fused path only where it applies: training mode, a channels_last float32/bfloat16 CPU tensor and
the kernel available. Everywhere else (GPUs, evaluation, NCHW tensors, no compiler, or
TSLA_CUSTOM_KERNELS=0) it is exactly `relu(batch_norm(x) [+ residual])` of PyTorch.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "batch_norm_act.cpp"
# "0" keeps PyTorch's kernels for batch norm and small-map convolutions (the benchmark's ablation).
ENV_SWITCH = "TSLA_CUSTOM_KERNELS"
CFLAGS = ["-O3", "-march=native", "-fopenmp"]  # OpenMP: at::parallel_for and simd loops


def custom_kernels_switched_on() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0"


def fused_enabled() -> bool:
    """True when the fused kernel is switched on and could be built here."""
    return custom_kernels_switched_on() and _load_kernel()


@functools.cache
def _load_kernel() -> bool:
    """Build (first time) and load the kernel; False, with a warning, where that fails."""
    # Importing the builder warns on every CPU-only machine that no CUDA runtime is found; the
    # kernel is CPU code, so that warning says nothing to our users.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    build_dir = _build_directory()
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        _put_ninja_on_path()
        cpp_extension.load(
            name="tsla_batch_norm_act",
            sources=[str(SOURCE)],
            extra_cflags=CFLAGS,
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, read-only home: train unfused
        log.warning("fused batch norm kernel unavailable, using PyTorch's kernels: %s", error)
        return False
    return True


def _build_directory() -> Path:
    """One build per source, torch version, compiler flags and CPU (-march=native)."""
    cpu_flags = ""
    if Path("/proc/cpuinfo").exists():
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu_flags = next((line for line in lines if line.startswith("flags")), "")
    key = "\n".join([SOURCE.read_text(), torch.__version__, " ".join(CFLAGS), platform.machine(), cpu_flags])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "tsla" / "extensions" / f"batch_norm_act-{digest}"


def _put_ninja_on_path() -> None:
    """torch's builder runs `ninja`; the pip package installs it next to this interpreter."""
    scripts = str(Path(sys.executable).parent)
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")


class _BatchNormActFunction(torch.autograd.Function):
    """Autograd wrapper of the kernel on (rows, channels) views of channels_last tensors."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        residual: torch.Tensor | None,
        eps: float,
        relu: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = _as_rows(x)
        residual_rows = None if residual is None else _as_rows(residual)
        y, mean, var, invstd = torch.ops.tsla.batch_norm_act_forward(
            rows, weight, bias, residual_rows, eps, relu
        )
        # With a residual the backward reads the ReLU mask from y (the next block's input, kept
        # anyway); without, it recomputes it from x.
        ctx.save_for_backward(rows, weight, bias, mean, invstd, y if residual is not None else None)
        ctx.relu = relu
        ctx.mark_non_differentiable(mean, var)
        return _from_rows(y, x.shape), mean, var

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor, _mean: torch.Tensor, _var: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, None, None]:
        rows, weight, bias, mean, invstd, y = ctx.saved_tensors
        grad_x, grad_weight, grad_bias, grad_residual = torch.ops.tsla.batch_norm_act_backward(
            _as_rows(grad), rows, weight, bias, mean, invstd, y, ctx.relu
        )
        grad_residual = None if y is None else _from_rows(grad_residual, grad.shape)
        return _from_rows(grad_x, grad.shape), grad_weight, grad_bias, grad_residual, None, None


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) channels_last -> (N*H*W, C); a view, or a copy if t is laid out otherwise."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _from_rows(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    n, c, h, w = shape
    return rows.view(n, h, w, c).permute(0, 3, 1, 2)


class BatchNormAct(nn.BatchNorm2d):
    """Batch norm, then `+ residual` when given, then ReLU when `relu`; fused on CPU when training."""

    def __init__(self, num_features: int, relu: bool) -> None:
        super().__init__(num_features)
        self.relu = relu
        self.custom_kernels = True  # False: always PyTorch's (models.use_custom_kernels)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self._takes_fused_path(x, residual):
            return self._fused_forward(x, residual)
        out = super().forward(x)
        if residual is not None:
            out = out + residual
        return torch.relu(out) if self.relu else out

    def _takes_fused_path(self, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        return (
            self.custom_kernels
            and self.training
            and x.device.type == "cpu"
            and x.dim() == 4
            and x.dtype in (torch.float32, torch.bfloat16)
            and x.is_contiguous(memory_format=torch.channels_last)
            and x.shape[0] * x.shape[2] * x.shape[3] > 1
            and (residual is None or self._fits(residual, x))
            and fused_enabled()
        )

    def _fits(self, residual: torch.Tensor, x: torch.Tensor) -> bool:
        return (
            self.relu
            and residual.shape == x.shape
            and residual.dtype == x.dtype
            and residual.is_contiguous(memory_format=torch.channels_last)
        )

    def _fused_forward(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        y, mean, var = _BatchNormActFunction.apply(x, self.weight, self.bias, residual, self.eps, self.relu)
        with torch.no_grad():  # the running statistics, as nn.BatchNorm2d updates them
            count = x.numel() // x.shape[1]
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1 / int(self.num_batches_tracked)
            self.running_mean.lerp_(mean, momentum)
            self.running_var.lerp_(var * (count / (count - 1)), momentum)
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, relu={self.relu}"

"""Gradient-variance probes: the per-example variance tr(Cov) = E||grad_i - grad||^2 of the
stochastic gradient, the quantity in the paper's claim.

- `split_gradient_variance`: the cheap probe. One training batch, one forward pass, its backward
  split in halves A and B. Unbiased when the halves are independent samples; under batch norm they
  are not (both are normalised with the whole batch's statistics), and it reads high: see README,
  "Gradient variance".
- `exact_gradient_variance`: per-example gradients (torch.func: functional_call + vmap + grad) of
  a fixed batch with batch norm in eval mode, so each example's gradient depends on it alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from tsla_core.kernels.batch_norm_act import BatchNormAct
from tsla_core.kernels.small_map_conv import SmallMapConv2d

# Per-example gradients are formed this many at a time: memory is chunk x the parameters.
EXACT_CHUNK = 16

# The per-sample loss of one example: (logits (1, K), label (1,), prior row (1, K) or None) -> (1,)
ExampleLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def probe_steps(steps: int, probes: int) -> frozenset[int]:
    """The steps of an epoch (0-based) that probe: `probes`, at most one per step, evenly spaced
    with the same gap before the first and after the last."""
    count = min(probes, steps)
    return frozenset(((2 * k + 1) * steps) // (2 * count) for k in range(count))


def split_gradient_variance(
    params: list[nn.Parameter], first_half: list[torch.Tensor], n_first: int, n_total: int
) -> torch.Tensor:
    """Per-sample gradient variance from one batch split in two halves A and B.

    The estimator: g_A and g_B are means of independent samples, so
    E||g_A - g_B||^2 = tr(Cov) * (1/n_A + 1/n_B), where tr(Cov) = E||grad_i - grad||^2 is the
    variance of the stochastic gradient of one example (the quantity in the paper). The batch
    gradient's own variance is that divided by the batch size. `first_half` holds the grads
    after backward of sum(loss_A)/n; the params' .grad now hold the full-batch mean gradient.
    """
    n_second = n_total - n_first
    squared = []
    for param, partial in zip(params, first_half, strict=True):
        assert param.grad is not None
        g_first = partial * (n_total / n_first)
        g_second = (param.grad - partial) * (n_total / n_second)
        squared.append((g_first.float() - g_second.float()).pow(2).sum())
    return torch.stack(squared).sum() / (1 / n_first + 1 / n_second)


def squared_grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    """||grad||^2 of the gradients the params hold, in fp32, on the device (no host sync)."""
    return torch.stack([p.grad.float().pow(2).sum() for p in params if p.grad is not None]).sum()


@contextmanager
def plain_eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and PyTorch's kernels only (the custom autograd Functions do not support torch.func
    transforms); the model's mode and kernel switches are restored afterwards."""
    was_training = model.training
    custom = [m for m in model.modules() if isinstance(m, BatchNormAct | SmallMapConv2d)]
    switches = [m.custom_kernels for m in custom]
    model.eval()
    for module in custom:
        module.custom_kernels = False
    try:
        yield
    finally:
        for module, switch in zip(custom, switches, strict=True):
            module.custom_kernels = switch
        model.train(was_training)


def exact_gradient_variance(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    prior: torch.Tensor | None,
    loss: ExampleLoss,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_i ||g_i - g||^2 / (n - 1), ||g||^2) from the n per-example gradients g_i of the batch
    and their mean g, with batch norm in eval mode; fp32, the model's state untouched."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def example_loss(
        weights: dict[str, torch.Tensor], image: torch.Tensor, label: torch.Tensor, row: torch.Tensor | None
    ) -> torch.Tensor:
        logits = functional_call(model, (weights, buffers), (image.unsqueeze(0),))
        row = None if row is None else row.unsqueeze(0)
        return loss(logits, label.unsqueeze(0), row).squeeze(0)

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 0, None if prior is None else 0))
    n = labels.shape[0]
    total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in params.items()}
    squares = torch.zeros((), dtype=torch.float64, device=images.device)
    with plain_eval_mode(model):
        for start in range(0, n, EXACT_CHUNK):
            chunk = slice(start, start + EXACT_CHUNK)
            rows = None if prior is None else prior[chunk]
            for name, g in per_example(params, images[chunk], labels[chunk], rows).items():
                total[name] += g.sum(0, dtype=torch.float64)
                squares += g.float().pow(2).sum(dtype=torch.float64)
    mean_norm_sq = sum((t / n).pow(2).sum() for t in total.values())
    assert isinstance(mean_norm_sq, torch.Tensor)
    # sum ||g_i - g||^2 = sum ||g_i||^2 - n ||g||^2, accumulated in fp64 against cancellation.
    return ((squares - n * mean_norm_sq) / (n - 1)).float(), mean_norm_sq.float()

"""Label-smoothed cross-entropy, (1 - theta) * onehot + theta * prior, and the two-stage rule
that says in which epochs it applies."""

from typing import Literal

import torch
import torch.nn.functional as F

from tsla_spec.spec import SmoothingSpec
from tsla_spec.vocabulary import TWO_STAGE_METHODS, Stage


def stage_at(smoothing: SmoothingSpec, epoch: int) -> Stage:
    """The targets of `epoch` (0-based): TSLA(s) smooths epochs 0 .. s-1 and trains one-hot from s;
    `lsr` always smooths, `baseline` never does."""
    if smoothing.method == "baseline":
        return "onehot"
    switch = smoothing.switch_epoch
    if smoothing.method in TWO_STAGE_METHODS and switch is not None and epoch >= switch:
        return "onehot"
    return "smooth"


def smoothed_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    theta: float,
    prior: torch.Tensor | None = None,
    reduction: Literal["mean", "none"] = "mean",
) -> torch.Tensor:
    """Cross-entropy against (1 - theta) * onehot(labels) + theta * prior.

    `prior` is None for the uniform 1/K prior (then this equals
    `F.cross_entropy(logits, labels, label_smoothing=theta)`) or an (N, K) probability tensor,
    e.g. a teacher's softmax. Computed in fp32 whatever the logits' dtype.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)
    onehot_term = -log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)
    if prior is None:
        prior_term = -log_probs.mean(dim=-1)
    else:
        prior_term = -(prior.float() * log_probs).sum(dim=-1)
    per_sample = (1.0 - theta) * onehot_term + theta * prior_term
    return per_sample.mean() if reduction == "mean" else per_sample


@torch.no_grad()
def teacher_prior(teacher: torch.nn.Module, images: torch.Tensor, temperature: float) -> torch.Tensor:
    """The "-pre" prior: the teacher's softmax at `temperature`, in eval mode, without grads."""
    return F.softmax(teacher(images).float() / temperature, dim=-1)

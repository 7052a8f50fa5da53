import math

import pytest
import torch
import torch.nn.functional as F

from tsla_core import smoothed_cross_entropy, stage_at
from tsla_core.loss import teacher_prior
from tsla_spec.spec import build_spec


def test_switch_epoch_is_ignored_by_single_stage_methods() -> None:
    spec = build_spec({"preset": "digits", "smoothing": {"method": "lsr"}})
    assert [stage_at(spec.smoothing, e) for e in range(spec.epochs)] == ["smooth"] * spec.epochs
    baseline = build_spec({"preset": "digits", "smoothing": {"method": "baseline"}})
    assert {stage_at(baseline.smoothing, e) for e in range(baseline.epochs)} == {"onehot"}


def test_stage_switches_exactly_at_switch_epoch() -> None:
    spec = build_spec({"preset": "digits", "epochs": 10, "smoothing": {"method": "tsla", "switch_epoch": 6}})
    assert [stage_at(spec.smoothing, e) for e in range(10)] == ["smooth"] * 6 + ["onehot"] * 4


@pytest.mark.parametrize("theta", [0.0, 0.1, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("classes", [2, 10, 100])
def test_uniform_prior_equals_torch_label_smoothing(theta: float, classes: int) -> None:
    generator = torch.Generator().manual_seed(classes)
    logits = torch.randn(16, classes, generator=generator) * 3
    labels = torch.randint(0, classes, (16,), generator=generator)
    ours = smoothed_cross_entropy(logits, labels, theta)
    reference = F.cross_entropy(logits, labels, label_smoothing=theta)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


def test_teacher_prior_matches_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    labels = torch.tensor([0, 2])
    prior = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    theta = 0.3
    expected = 0.0
    for row in range(2):
        z = logits[row].tolist()
        log_z = math.log(sum(math.exp(v) for v in z))
        log_p = [v - log_z for v in z]
        target = [(1 - theta) * (k == labels[row].item()) + theta * prior[row, k].item() for k in range(3)]
        expected += -sum(t * lp for t, lp in zip(target, log_p, strict=True))
    expected /= 2
    assert smoothed_cross_entropy(logits, labels, theta, prior).item() == pytest.approx(expected, rel=1e-6)


def test_uniform_prior_tensor_equals_prior_none() -> None:
    logits = torch.randn(8, 7)
    labels = torch.randint(0, 7, (8,))
    uniform = torch.full((8, 7), 1 / 7)
    torch.testing.assert_close(
        smoothed_cross_entropy(logits, labels, 0.4, uniform), smoothed_cross_entropy(logits, labels, 0.4)
    )


def test_reduction_none_gives_per_sample_losses_whose_mean_is_the_loss() -> None:
    logits = torch.randn(5, 4)
    labels = torch.randint(0, 4, (5,))
    per_sample = smoothed_cross_entropy(logits, labels, 0.2, reduction="none")
    assert per_sample.shape == (5,)
    torch.testing.assert_close(per_sample.mean(), smoothed_cross_entropy(logits, labels, 0.2))


def test_bf16_logits_are_computed_in_fp32() -> None:
    logits = torch.randn(4, 10)
    labels = torch.randint(0, 10, (4,))
    loss = smoothed_cross_entropy(logits.bfloat16(), labels, 0.1)
    assert loss.dtype == torch.float32


def test_teacher_prior_is_a_temperature_softmax_without_grad() -> None:
    teacher = torch.nn.Linear(3, 4)
    images = torch.randn(2, 3)
    prior = teacher_prior(teacher.eval(), images, temperature=2.0)
    torch.testing.assert_close(prior, F.softmax(teacher(images) / 2.0, dim=-1).detach())
    assert not prior.requires_grad
    torch.testing.assert_close(prior.sum(dim=-1), torch.ones(2))

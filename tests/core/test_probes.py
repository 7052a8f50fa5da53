"""The gradient-variance probes, through the trainer's own probe path: the split probe against the
variance of the batch gradient it claims to measure, the exact probe against brute force, and
the update of a probe step against a plain step's."""

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_raw_spec
from tsla_core import Trainer
from tsla_core.probes import exact_gradient_variance, probe_steps, split_gradient_variance
from tsla_spec.spec import RunSpec, build_spec


def probe_spec(steps: int, batch_size: int = 32, **grad_variance: Any) -> RunSpec:
    """The tiny ResNet (batch norm in every block) on `steps` full batches an epoch, every step a
    probe, with weights that do not move: lr 1e-9 without momentum or weight decay, so every step
    of an epoch sees the same model."""
    raw = tiny_raw_spec(
        optim={"lr": 1e-9, "momentum": 0.0, "weight_decay": 0.0},
        batch_size=batch_size,
        precision="fp32",
        grad_variance={"probes_per_epoch": steps, **grad_variance},
    )
    raw["data"]["synthetic"]["num_train"] = batch_size * steps
    return build_spec(raw)


def record_step_gradients(trainer: Trainer) -> list[torch.Tensor]:
    """The flat gradient of every optimizer step the trainer takes (its full-batch mean gradient)."""
    recorded: list[torch.Tensor] = []
    step = trainer.optimizer.step

    def recording_step(*args: Any, **kwargs: Any) -> Any:
        recorded.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters()]).double())
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step  # type: ignore[method-assign]
    return recorded


def test_the_split_probe_reads_the_batch_gradient_variance_under_batch_norm(tmp_path: Path) -> None:
    """What the split probe claims to estimate: B x Var(g_B), the variance of the batch-B gradient
    g_B over batches, times B. Both sides come from the trainer's own epoch: train/grad_var (the
    mean of its 160 probes) and the 160 batch gradients its optimizer stepped with.

    Tolerance 0.95 .. 1.35. Without batch norm the estimator is unbiased (the brute-force test
    below); here both halves are normalised with the whole batch's statistics, so they are not
    independent and the probe reads high: +6% .. +23% over 8 initialisations of this net (1.19 for
    this seed, whatever the epoch's batches), with +-3% from the 160-batch sample. A factor-of-n
    mistake (0.03 for n = 32) or of 2 falls far outside."""
    steps, batch = 160, 32
    trainer = Trainer(probe_spec(steps, batch), tmp_path, Path("unused"))
    gradients = record_step_gradients(trainer)
    metrics = trainer.train_one_epoch(0, "smooth")
    assert metrics is not None and len(gradients) == steps
    stacked = torch.stack(gradients)
    reference = batch * (stacked - stacked.mean(0)).pow(2).sum().item() / (steps - 1)
    assert 0.95 <= metrics["train/grad_var"] / reference <= 1.35, (metrics["train/grad_var"], reference)
    # train/grad_norm_sq: the mean over the probes of ||g_B||^2, the gradient each step made.
    mean_norm_sq = stacked.pow(2).sum(1).mean().item()
    assert metrics["train/grad_norm_sq"] == pytest.approx(mean_norm_sq, rel=1e-5)


def test_a_split_probe_is_the_squared_difference_of_the_two_half_batch_gradients(tmp_path: Path) -> None:
    """One probe step of the trainer, to float rounding: ||g_A - g_B||^2 / (1/n_A + 1/n_B), g_A and
    g_B the gradients of the two halves' mean losses in the step's one forward pass."""
    trainer = Trainer(probe_spec(1), tmp_path, Path("unused"))
    images, labels = next(iter(trainer.data.train.batches(32, torch.Generator().manual_seed(0), False)))
    params = list(trainer.model.parameters())
    losses = trainer._loss(trainer.model(images), images, labels, "smooth")
    halves = [
        torch.cat([g.flatten() for g in torch.autograd.grad(part.mean(), params, retain_graph=True)])
        for part in (losses[:16], losses[16:])
    ]
    reading = trainer._backward(losses, probe=True)
    assert reading is not None
    expected = (halves[0] - halves[1]).pow(2).sum() / (1 / 16 + 1 / 16)
    torch.testing.assert_close(reading[0], expected, rtol=1e-4, atol=0)
    full = torch.cat([p.grad.flatten() for p in params])
    torch.testing.assert_close(full, (halves[0] + halves[1]) / 2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reading[1], full.pow(2).sum(), rtol=1e-5, atol=0)


def brute_force_variance(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, theta: float):
    """(sum_i ||g_i - g||^2 / (n - 1), ||g||^2) from one backward pass per example, in eval mode."""
    model.eval()
    grads = []
    for i in range(labels.shape[0]):
        model.zero_grad()
        logits = model(images[i : i + 1])
        F.cross_entropy(logits, labels[i : i + 1], label_smoothing=theta).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]).double())
    model.train()
    stacked = torch.stack(grads)
    mean = stacked.mean(0)
    return (stacked - mean).pow(2).sum().item() / (len(grads) - 1), mean.pow(2).sum().item()


def test_the_exact_probe_is_the_per_example_variance_with_batch_norm_in_eval_mode(tmp_path: Path) -> None:
    """The trainer's exact mode, through its epoch: one step, which probes first, so train/grad_var
    is the per-example gradient variance of the fixed probe batch at the initial weights. Against
    one backward pass per example: float rounding only (rtol 1e-4; a factor-of-n mistake is 24x)."""
    spec = probe_spec(1, mode="exact", exact_examples=24)
    trainer = Trainer(spec, tmp_path, Path("unused"))
    assert trainer.exact_batch is not None and trainer.exact_batch[1].shape == (24,)
    images, labels = trainer.exact_batch
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    metrics = trainer.train_one_epoch(0, "smooth")
    assert metrics is not None
    trainer.model.load_state_dict(initial)
    variance, norm_sq = brute_force_variance(trainer.model, images, labels, spec.smoothing.theta)
    assert metrics["train/grad_var"] == pytest.approx(variance, rel=1e-4)
    assert metrics["train/grad_norm_sq"] == pytest.approx(norm_sq, rel=1e-4)


def test_the_exact_probe_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten())
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = torch.randn(6, 3, 4, 4), torch.randint(0, 16, (6,))

    def loss(logits: torch.Tensor, labels: torch.Tensor, row: torch.Tensor | None) -> torch.Tensor:
        return F.cross_entropy(logits, labels, reduction="none")

    exact_gradient_variance(model, images, labels, None, loss)
    assert model.training and all(p.grad is None for p in model.parameters())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


@pytest.mark.parametrize("mode", ["split", "exact"])
def test_a_probe_step_makes_the_same_update_as_a_plain_step(tmp_path: Path, mode: str) -> None:
    """Bit for bit on the CPU, at the default precision (bf16 autocast where the CPU has it): the
    split probe takes its half-batch gradient with a separate autograd.grad and then the plain
    step's backward; the exact probe reads the weights without writing anything."""
    models = []
    for probing in (True, False):
        probe = {"enabled": probing, "mode": mode, "probes_per_epoch": 6, "exact_examples": 32}
        raw = tiny_raw_spec(grad_variance=probe)
        trainer = Trainer(build_spec(raw), tmp_path / str(probing), Path("unused"))
        assert trainer.probe_steps() == (frozenset(range(6)) if probing else frozenset())
        metrics = trainer.train_one_epoch(0, "smooth")
        assert metrics is not None and ("train/grad_var" in metrics) == probing
        models.append(trainer.model.state_dict())
    for name, tensor in models[0].items():
        assert torch.equal(tensor, models[1][name]), name


def test_probe_steps_are_evenly_spaced_and_at_most_one_per_step() -> None:
    assert probe_steps(100, 4) == {12, 37, 62, 87}
    assert probe_steps(10, 1) == {5}
    assert probe_steps(3, 4) == {0, 1, 2}
    assert probe_steps(0, 4) == frozenset()
    for steps in range(1, 60):
        for probes in range(1, 70):
            chosen = sorted(probe_steps(steps, probes))
            assert len(chosen) == min(steps, probes) and chosen[0] >= 0 and chosen[-1] < steps


def test_split_gradient_variance_estimates_the_per_sample_variance() -> None:
    """Without batch norm, averaged over random splits, the estimator recovers E||g_i - g||^2
    computed by brute force."""
    torch.manual_seed(0)
    n = 16
    model = torch.nn.Linear(6, 3)
    inputs, labels = torch.randn(n, 6), torch.randint(0, 3, (n,))
    params = list(model.parameters())

    per_sample = []
    for i in range(n):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs[i : i + 1]), labels[i : i + 1]).backward()
        per_sample.append(torch.cat([p.grad.flatten() for p in params]))
    grads = torch.stack(per_sample)
    truth = (grads - grads.mean(0)).pow(2).sum(1).sum() / (n - 1)

    estimates = []
    for trial in range(400):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(trial))
        model.zero_grad()
        losses = torch.nn.functional.cross_entropy(model(inputs[order]), labels[order], reduction="none")
        (losses[: n // 2].sum() / n).backward(retain_graph=True)
        first_half = [p.grad.clone() for p in params]
        (losses[n // 2 :].sum() / n).backward()
        estimates.append(split_gradient_variance(params, first_half, n // 2, n).item())
        torch.testing.assert_close(torch.cat([p.grad.flatten() for p in params]), grads.mean(0))
    assert sum(estimates) / len(estimates) == pytest.approx(truth.item(), rel=0.1)

"""Multi-process runs (resources.processes = 2, gloo on CPU) through the core's own launcher:
the updates are the one-process run's with batch norm per rank, the probe reads the ranks'
gradients, rank 0 alone reports, stop and a lost rank end every rank, resume takes another N."""

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_raw_spec
from tsla_core import CheckpointStore, Hooks, MetricRow, Trainer, train
from tsla_core.batches import epoch_generator
from tsla_core.checkpoint import load_verified
from tsla_core.distributed import RankLostError
from tsla_core.loss import stage_at
from tsla_spec.spec import RunSpec, build_spec

pytestmark = pytest.mark.timeout(180)


def spec_for(processes: int, **overrides: object) -> RunSpec:
    # fp32: bf16 autocast would round the two runs' different reduction orders apart.
    raw = tiny_raw_spec(precision="fp32", resources={"processes": processes}, **overrides)
    return build_spec(raw)


def children() -> list[int]:
    """Pids whose parent is this process (from /proc), still running or not yet reaped."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.append(int(entry.name))
    return found


def reference_epoch(spec: RunSpec, world: int) -> tuple[dict[str, torch.Tensor], list[float]]:
    """One epoch as `world` ranks make it, in this process: each global batch cut in `world`
    parts, each part through the model alone (its own batch norm), the parts' mean losses
    averaged; the per-step probe reading b / (N - 1) * sum ||g_r - g||^2 on the probe steps."""
    one_process = spec.model_copy(update={"resources": spec.resources.model_copy(update={"processes": 1})})
    trainer = Trainer(one_process, Path("unused"), Path("unused"))
    stage = stage_at(spec.smoothing, 0)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    probing, readings = trainer.probe_steps(), []
    trainer.model.train()
    batches = trainer.data.train.batches(spec.batch_size, epoch_generator(spec.seed, 0), spec.channels_last)
    for step, (images, labels) in enumerate(batches):
        grads = []
        for part_images, part_labels in zip(images.chunk(world), labels.chunk(world), strict=True):
            losses = trainer._loss(trainer.model(part_images), part_images, part_labels, stage)
            grads.append(torch.autograd.grad(losses.mean(), params))
        mean = [torch.stack(parts).mean(0) for parts in zip(*grads, strict=True)]
        if step in probing:
            spread = sum(sum((g - m).pow(2).sum() for g, m in zip(rank, mean, strict=True)) for rank in grads)
            readings.append(float(spread) * (spec.batch_size // world) / (world - 1))
        for param, grad in zip(params, mean, strict=True):
            param.grad = grad
        trainer.optimizer.step()
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}, readings


def test_two_processes_make_the_one_process_updates_with_batch_norm_per_rank(tmp_path: Path) -> None:
    spec = spec_for(2, epochs=1, smoothing={"method": "lsr", "theta": 0.2})
    rows: list[MetricRow] = []
    result = train(spec, tmp_path, Path("unused"), Hooks(on_metrics=rows.extend))
    assert result.status == "completed" and result.latest is not None
    state = load_verified(result.latest.path, result.latest.sha256)
    expected, readings = reference_epoch(spec, world=2)
    for name, value in expected.items():
        torch.testing.assert_close(state["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    grad_var = next(r.value for r in rows if r.name == "grad_var")
    assert grad_var == pytest.approx(sum(readings) / len(readings), rel=1e-3)
    # Rank 0 alone reports: one row per metric, and the train metrics count both ranks' images.
    names = [(r.split, r.name) for r in rows]
    assert len(names) == len(set(names))
    assert {r.step for r in rows} == {192 // spec.batch_size}  # global batches: 192 images, no val split
    assert not children()


def test_stop_ends_every_rank_after_the_same_step_with_a_partial_checkpoint(tmp_path: Path) -> None:
    asked = []
    hooks = Hooks(should_stop=lambda: bool(asked), on_metrics=lambda rows: asked.append(True))
    result = train(spec_for(2, epochs=4), tmp_path, Path("unused"), hooks)
    assert result.status == "stopped"
    records = CheckpointStore(tmp_path / "checkpoints").records()
    assert [r.partial for r in records][-1] is True
    assert not children()


def test_a_killed_rank_ends_the_group_with_the_reason(tmp_path: Path) -> None:
    killed = []

    def kill_a_rank(rows: list[MetricRow]) -> None:
        if not killed:
            ranks = sorted(children())
            os.kill(ranks[-1], signal.SIGKILL)  # the rank started last: rank 1
            killed.append(ranks[-1])

    with pytest.raises(RankLostError, match=r"rank 1 of 2 was killed by SIGKILL"):
        train(spec_for(2, epochs=4), tmp_path, Path("unused"), Hooks(on_metrics=kill_a_rank))
    assert killed
    deadline = time.monotonic() + 5
    while children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not children()


def test_a_two_process_checkpoint_resumes_on_one_process(tmp_path: Path) -> None:
    asked = []
    hooks = Hooks(should_stop=lambda: len(asked) >= 2, on_metrics=lambda rows: asked.append(True))
    assert train(spec_for(2, epochs=4), tmp_path, Path("unused"), hooks).status == "stopped"
    logs: list[str] = []
    result = train(spec_for(1, epochs=4), tmp_path, Path("unused"), Hooks(on_log=logs.append))
    assert result.status == "completed" and result.epochs_done == 4
    assert any("resumed from" in line for line in logs)


def test_an_error_in_rank_0_is_raised_in_the_parent_as_itself(tmp_path: Path) -> None:
    def refuse(rows: list[MetricRow]) -> None:
        raise ValueError("the metrics store is full")

    with pytest.raises(ValueError, match="the metrics store is full"):
        train(spec_for(2, epochs=3), tmp_path, Path("unused"), Hooks(on_metrics=refuse))
    assert not children()

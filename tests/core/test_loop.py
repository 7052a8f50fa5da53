"""The training loop on tiny synthetic data: stages, exact resume, checkpoints, stop, variance,
divergence."""

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_raw_spec
from tsla_core import (
    CheckpointError,
    CheckpointStore,
    DivergedError,
    Hooks,
    MetricRow,
    SkippedCheckpoint,
    Trainer,
    train,
)
from tsla_core.loop import SpecMismatchError, first_nonfinite, lr_factor, split_gradient_variance
from tsla_spec.spec import RunSpec, ScheduleSpec, build_spec

TIMING = {"images_per_s", "epoch_time"}


def collect(rows: list[MetricRow]) -> Hooks:
    return Hooks(on_metrics=rows.extend)


def comparable(rows: list[MetricRow]) -> list[tuple]:
    """Rows without wall-clock measurements, which differ run to run."""
    return [(r.epoch, r.split, r.name, r.value, r.stage, r.step) for r in rows if r.name not in TIMING]


def test_stage_switches_exactly_at_switch_epoch(tmp_path: Path, tiny_spec: RunSpec) -> None:
    rows: list[MetricRow] = []
    result = train(tiny_spec, tmp_path, Path("unused"), collect(rows))
    assert result.status == "completed"
    stages = {r.epoch: r.stage for r in rows}
    assert stages == {0: "smooth", 1: "smooth", 2: "onehot", 3: "onehot"}
    names = {(r.split, r.name) for r in rows if r.epoch == 0}
    assert {
        ("train", "loss"),
        ("train", "grad_var"),
        ("train", "lr"),
        ("test", "top1"),
        ("test", "top5"),
    } <= names


def train_losses(spec: RunSpec, out: Path) -> dict[int, float]:
    rows: list[MetricRow] = []
    train(spec, out, Path("unused"), collect(rows))
    return {r.epoch: r.value for r in rows if (r.split, r.name) == ("train", "loss")}


def test_smoothing_changes_the_training_loss_only_before_the_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TSLA(2) and LSR share epochs 0-1 exactly; they part from epoch 2 on, where TSLA trains on
    and logs exactly what a trainer whose one-hot stage is F.cross_entropy does."""
    runs = {}
    for method in ("tsla", "lsr"):
        raw = tiny_raw_spec()
        raw["smoothing"] = {"method": method, "theta": 0.2, "switch_epoch": 2}
        runs[method] = train_losses(build_spec(raw), tmp_path / method)
    assert runs["tsla"][0] == runs["lsr"][0]
    assert runs["tsla"][1] == runs["lsr"][1]
    assert runs["tsla"][2] != runs["lsr"][2]

    original = Trainer._loss

    def plain_after_switch(
        self: Trainer, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, stage: str
    ) -> torch.Tensor:
        if stage == "onehot":
            return F.cross_entropy(logits.float(), labels, reduction="none")
        return original(self, logits, images, labels, stage)  # type: ignore[arg-type]

    monkeypatch.setattr(Trainer, "_loss", plain_after_switch)
    raw = tiny_raw_spec()
    raw["smoothing"] = {"method": "tsla", "theta": 0.2, "switch_epoch": 2}
    plain = train_losses(build_spec(raw), tmp_path / "plain")
    assert plain[0] == runs["tsla"][0] and plain[1] == runs["tsla"][1]
    for epoch in (2, 3):  # the same up to float rounding (another kernel computes the same sum)
        assert plain[epoch] == pytest.approx(runs["tsla"][epoch], rel=1e-5, abs=0), epoch


def test_the_trainers_loss_is_plain_cross_entropy_after_the_switch(tiny_spec: RunSpec) -> None:
    """The per-sample loss the trainer backpropagates and logs (its own `_loss`): after the switch
    exactly F.cross_entropy, before it exactly F.cross_entropy with label_smoothing=theta."""
    trainer = Trainer(tiny_spec, Path("unused"), Path("unused"))
    images, labels = next(iter(trainer.data.train.batches(32, torch.Generator().manual_seed(0), False)))
    logits = torch.randn(
        labels.shape[0], trainer.data.num_classes, generator=torch.Generator().manual_seed(1)
    )
    theta = tiny_spec.smoothing.theta
    onehot = trainer._loss(logits, images, labels, "onehot")
    smooth = trainer._loss(logits, images, labels, "smooth")
    torch.testing.assert_close(onehot, F.cross_entropy(logits, labels, reduction="none"), rtol=0, atol=1e-6)
    expected = F.cross_entropy(logits, labels, reduction="none", label_smoothing=theta)
    torch.testing.assert_close(smooth, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(onehot, smooth)


def test_exact_resume_gives_bit_identical_weights_and_metrics(tmp_path: Path, tiny_spec: RunSpec) -> None:
    straight_rows: list[MetricRow] = []
    straight = Trainer(tiny_spec, tmp_path / "straight", Path("unused"), collect(straight_rows))
    straight.fit()

    # Stop the second run as soon as epoch 1 is done (during epoch 2's first step).
    resumed_rows: list[MetricRow] = []
    done = {"epochs": 0}

    def on_metrics(rows: list[MetricRow]) -> None:
        resumed_rows.extend(rows)
        done["epochs"] += 1

    first = Trainer(
        tiny_spec,
        tmp_path / "resumed",
        Path("unused"),
        Hooks(on_metrics, should_stop=lambda: done["epochs"] == 2),
    )
    assert first.fit().status == "stopped"
    torch.manual_seed(12345)  # a new process would start from another RNG state
    second = Trainer(tiny_spec, tmp_path / "resumed", Path("unused"), collect(resumed_rows))
    reported_before = len(resumed_rows)
    second.fit()
    assert {row.epoch for row in resumed_rows[reported_before:]} == {2, 3}  # the second run began at 2

    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name
    assert comparable(resumed_rows) == comparable(straight_rows)


def test_stop_writes_a_partial_checkpoint_that_is_not_resumed(tmp_path: Path, tiny_spec: RunSpec) -> None:
    epochs_seen: list[int] = []
    hooks = Hooks(
        on_metrics=lambda rows: epochs_seen.append(rows[0].epoch), should_stop=lambda: len(epochs_seen) == 1
    )
    result = Trainer(tiny_spec, tmp_path, Path("unused"), hooks).fit()
    assert result.status == "stopped"
    assert result.latest is not None and result.latest.partial and result.latest.epoch == 1
    store = CheckpointStore(tmp_path / "checkpoints")
    resumable = store.newest_resumable()
    assert resumable is not None and resumable[0].name == "epoch-0000"


def test_corrupt_checkpoint_is_rejected_and_resume_falls_back(tmp_path: Path, tiny_spec: RunSpec) -> None:
    train(tiny_spec, tmp_path, Path("unused"))
    store = CheckpointStore(tmp_path / "checkpoints")
    newest = store.records()[-1]
    data = bytearray(newest.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.path.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match="corrupt"):
        store.load(newest)
    found = store.newest_resumable()
    assert found is not None
    record, state, skipped = found
    assert record.epoch == newest.epoch - 1
    assert state["epoch"] == newest.epoch - 1
    assert [s.record.name for s in skipped] == [newest.name] and "sha256" in skipped[0].reason

    # A trainer resuming here reports the skipped one through its hook, and resumes before it.
    reported: list[SkippedCheckpoint] = []
    logs: list[str] = []
    hooks = Hooks(on_skipped_checkpoint=reported.append, on_log=logs.append)
    trainer = Trainer(tiny_spec, tmp_path, Path("unused"), hooks)
    trainer.resume_if_possible()
    assert [s.record.name for s in reported] == [newest.name] and "corrupt" in reported[0].reason
    assert trainer.epoch == newest.epoch
    assert any(f"resumed from {record.name}" in m for m in logs), logs


def test_truncated_checkpoint_without_hash_is_reported_not_half_loaded(
    tmp_path: Path, tiny_spec: RunSpec
) -> None:
    from tsla_core.checkpoint import load_verified

    train(tiny_spec, tmp_path, Path("unused"))
    path = CheckpointStore(tmp_path / "checkpoints").records()[-1].path
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_verified(path)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_verified(foreign)


def test_checkpoints_are_pruned_to_keep_last_and_best(tmp_path: Path) -> None:
    spec = build_spec(tiny_raw_spec(epochs=6, checkpoint={"keep_last": 2}))
    result = train(spec, tmp_path, Path("unused"))
    names = [r.name for r in CheckpointStore(tmp_path / "checkpoints").records()]
    assert names[-2:] == ["epoch-0004", "epoch-0005"]
    assert result.best is not None and result.best.name in names
    assert len(names) <= 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted(
        [f"{n}.pt" for n in names] + [f"{n}.json" for n in names]
    )


def test_resume_refuses_a_folder_of_another_spec(tmp_path: Path, tiny_spec: RunSpec) -> None:
    train(tiny_spec, tmp_path, Path("unused"))
    other = build_spec(tiny_raw_spec(seed=7))
    with pytest.raises(SpecMismatchError):
        Trainer(other, tmp_path, Path("unused")).fit()


def test_lr_schedule_is_a_pure_function_of_the_epoch() -> None:
    step = ScheduleSpec(kind="step", milestones=(2, 4), gamma=0.1)
    assert [round(lr_factor(step, 6, e), 6) for e in range(6)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    cosine = ScheduleSpec(kind="cosine", warmup_epochs=1)
    assert lr_factor(cosine, 11, 0) == 0.5
    assert lr_factor(cosine, 11, 1) == 1.0
    assert lr_factor(cosine, 11, 11) == pytest.approx(0.0)


def test_split_gradient_variance_estimates_the_per_sample_variance() -> None:
    """Averaged over random splits, the estimator recovers E||g_i - g||^2 computed by brute force."""
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


# --- divergence ---------------------------------------------------------------------------------


def nan_loss_from_epoch(monkeypatch: pytest.MonkeyPatch, first: int) -> None:
    """Make the training loss NaN from epoch `first` on, as a diverging run's would be."""
    original = Trainer._loss

    def loss(self: Trainer, *args: object) -> torch.Tensor:
        losses = original(self, *args)  # type: ignore[arg-type]
        return losses * math.nan if self.epoch >= first else losses

    monkeypatch.setattr(Trainer, "_loss", loss)


def test_a_nan_loss_fails_the_run_after_reporting_its_rows(
    tmp_path: Path, tiny_spec: RunSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    nan_loss_from_epoch(monkeypatch, first=1)
    rows: list[MetricRow] = []
    with pytest.raises(DivergedError) as raised:
        train(tiny_spec, tmp_path, Path("unused"), collect(rows))
    # The epoch is numbered as in the metric rows (0-based).
    assert str(raised.value) == "diverged: train/loss is NaN at epoch 1"
    loss = {r.epoch: r.value for r in rows if (r.split, r.name) == ("train", "loss")}
    assert sorted(loss) == [0, 1] and math.isfinite(loss[0]) and math.isnan(loss[1])
    # No checkpoint holds the diverged state: only epoch 0's was written.
    assert [r.name for r in CheckpointStore(tmp_path / "checkpoints").records()] == ["epoch-0000"]


def test_on_nonfinite_continue_trains_on_and_records_the_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nan_loss_from_epoch(monkeypatch, first=1)
    spec = build_spec(tiny_raw_spec(on_nonfinite="continue"))
    rows: list[MetricRow] = []
    logs: list[str] = []
    result = train(spec, tmp_path, Path("unused"), Hooks(on_metrics=rows.extend, on_log=logs.append))
    assert result.status == "completed" and result.epochs_done == 4
    loss = {r.epoch: r.value for r in rows if (r.split, r.name) == ("train", "loss")}
    assert [math.isnan(loss[e]) for e in range(4)] == [False, True, True, True]
    assert any("diverged: train/loss is NaN at epoch 1; training on" in m for m in logs), logs
    # The best checkpoint is ranked by finite top-1 only.
    assert result.best is not None and math.isfinite(result.best.metrics["test/top1"])


def test_a_diverging_learning_rate_fails_with_the_reason(tmp_path: Path) -> None:
    """lr 10 (the largest a spec allows) with SGD momentum: NaN within the first epochs on the CPU."""
    raw = tiny_raw_spec(
        optim={"lr": 10}, batch_size=16, schedule={"kind": "constant"}, precision="fp32", seed=1, epochs=8
    )
    raw["data"]["synthetic"]["num_train"] = 1024
    with pytest.raises(DivergedError) as raised:
        train(build_spec(raw), tmp_path, Path("unused"))
    assert re.fullmatch(r"diverged: (train/loss|test/\w+) is (NaN|inf|-inf) at epoch \d", str(raised.value))


def test_first_nonfinite_watches_the_train_loss_then_the_test_metrics() -> None:
    assert first_nonfinite({"train/loss": 1.0, "test/loss": 2.0}) is None
    assert first_nonfinite({"train/grad_var": math.inf, "train/loss": 1.0}) is None
    assert first_nonfinite({"train/loss": math.inf, "test/loss": math.nan}) == ("train/loss", math.inf)
    found = first_nonfinite({"train/loss": 1.0, "test/top1": 3.0, "test/loss": -math.inf})
    assert found == ("test/loss", -math.inf)

"""The training loop on tiny synthetic data: stages, exact resume, checkpoints, stop, variance."""

from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_raw_spec
from tsla_core import CheckpointError, CheckpointStore, Hooks, MetricRow, Trainer, train
from tsla_core.loop import SpecMismatchError, lr_factor, split_gradient_variance
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


def test_smoothing_changes_the_training_loss_only_before_the_switch(tmp_path: Path) -> None:
    """TSLA(2) and LSR share epochs 0-1 exactly; they part from epoch 2 on."""
    runs = {}
    for method in ("tsla", "lsr"):
        rows: list[MetricRow] = []
        raw = tiny_raw_spec()
        raw["smoothing"] = {"method": method, "theta": 0.2, "switch_epoch": 2}
        train(build_spec(raw), tmp_path / method, Path("unused"), collect(rows))
        runs[method] = {(r.epoch, r.name): r.value for r in rows if r.split == "train" and r.name == "loss"}
    assert runs["tsla"][(0, "loss")] == runs["lsr"][(0, "loss")]
    assert runs["tsla"][(1, "loss")] == runs["lsr"][(1, "loss")]
    assert runs["tsla"][(2, "loss")] != runs["lsr"][(2, "loss")]


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
    record, state, problems = found
    assert record.epoch == newest.epoch - 1
    assert state["epoch"] == newest.epoch - 1
    assert len(problems) == 1 and "sha256" in problems[0]


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

"""The training loop on tiny synthetic data: stages, the validation split and selection by it,
exact resume, checkpoints, stop, provenance, divergence. The probes: test_probes.py."""

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
from tsla_core.loop import SpecMismatchError, first_nonfinite, lr_factor, plain_ce_sum
from tsla_spec.datasets import DATASETS
from tsla_spec.records import RunInfo
from tsla_spec.spec import RunSpec, ScheduleSpec, build_spec

TIMING = {"images_per_s", "epoch_time"}
# The tiny spec with a validation split: 48 of its 192 training images held out.
WITH_VAL = {"name": "synthetic", "val_fraction": 0.25}


def tiny_val_raw_spec(**overrides: object) -> dict:
    raw = tiny_raw_spec(**overrides)
    raw["data"] = {**raw["data"], **WITH_VAL}
    raw["data"]["synthetic"] = {**raw["data"]["synthetic"], "num_train": 256}
    return raw


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
    assert names == {
        ("train", "loss"),
        ("train", "ce"),
        ("train", "top1"),
        ("train", "grad_var"),
        ("train", "grad_norm_sq"),
        ("train", "lr"),
        ("train", "images_per_s"),
        ("train", "epoch_time"),
        ("test", "loss"),
        ("test", "top1"),
        ("test", "top5"),
    }  # synthetic data has no validation split by default


def test_a_validation_split_is_evaluated_every_epoch_and_selects_the_best(tmp_path: Path) -> None:
    """val/loss, val/top1 and val/top5 every epoch, in the checkpoints' .json too; the best
    checkpoint is the highest val/top1 (the latest on ties), whatever the test split says."""
    rows: list[MetricRow] = []
    spec = build_spec(tiny_val_raw_spec(epochs=5, checkpoint={"keep_last": 5}))
    result = train(spec, tmp_path, Path("unused"), collect(rows))
    for epoch in range(5):
        names = {r.key for r in rows if r.epoch == epoch}
        assert {"val/loss", "val/top1", "val/top5", "test/top1"} <= names, epoch
    val_top1 = {r.epoch: r.value for r in rows if r.key == "val/top1"}
    best_epoch = max(reversed(range(5)), key=lambda e: val_top1[e])
    assert result.best is not None and result.best.epoch == best_epoch
    records = CheckpointStore(tmp_path / "checkpoints").records()
    assert [r.metrics["val/top1"] for r in records] == [val_top1[e] for e in range(5)]
    held_out = Trainer(spec, tmp_path / "again", Path("unused")).data.val
    assert held_out is not None and len(held_out) == 64


def test_best_is_chosen_by_validation_top1_never_by_test(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    by_epoch = [
        {"val/top1": 50.0, "test/top1": 90.0},
        {"val/top1": 70.0, "test/top1": 10.0},
        {"val/top1": float("nan"), "test/top1": 99.0},
        {"val/top1": 70.0, "test/top1": 20.0},
    ]
    for epoch, metrics in enumerate(by_epoch):
        store.save({"model": {}}, epoch, False, metrics)
    best = store.best()
    assert best is not None and best.name == "epoch-0003"  # the latest of the two 70s
    without_val = CheckpointStore(tmp_path / "no-val")
    for epoch, top1 in enumerate([90.0, 10.0]):
        without_val.save({"model": {}}, epoch, False, {"test/top1": top1})
    best = without_val.best()
    assert best is not None and best.name == "epoch-0001"  # nothing to select on: the latest


def test_train_ce_is_the_plain_cross_entropy_of_the_training_batches(
    tmp_path: Path, tiny_spec: RunSpec
) -> None:
    """train/ce equals train/loss after the switch (both one-hot); before it the loss is smoothed
    and train/ce is F.cross_entropy of the same logits."""
    rows: list[MetricRow] = []
    train(tiny_spec, tmp_path, Path("unused"), collect(rows))
    loss = {r.epoch: r.value for r in rows if r.key == "train/loss"}
    ce = {r.epoch: r.value for r in rows if r.key == "train/ce"}
    assert [ce[e] == loss[e] for e in range(4)] == [False, False, True, True]
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(8) % 5
    smoothed = F.cross_entropy(logits, labels, reduction="none", label_smoothing=0.2)
    expected = F.cross_entropy(logits, labels, reduction="sum")
    torch.testing.assert_close(plain_ce_sum(logits, labels, smoothed, "smooth"), expected)


def test_an_epoch_reads_the_device_once(
    tmp_path: Path, tiny_spec: RunSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The epoch's sums (train/ce and the probes included) stay on the device until one read at the
    end: a step that waited on the host would show here as a .item() or .tolist() call."""
    trainer = Trainer(tiny_spec, tmp_path, Path("unused"))
    reads: list[str] = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: object, _name: str = name, _original=original) -> object:
            reads.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    metrics = trainer.train_one_epoch(0, "smooth")
    assert metrics is not None and "train/grad_var" in metrics and "train/ce" in metrics
    assert reads == ["tolist"]


def test_on_start_reports_versions_device_and_the_data_sets_identity(tmp_path: Path) -> None:
    infos: list[RunInfo] = []
    spec = build_spec(tiny_val_raw_spec(epochs=1, smoothing={"method": "lsr", "theta": 0.1}))
    train(spec, tmp_path, Path("unused"), Hooks(on_start=infos.append))
    assert len(infos) == 1
    info = infos[0]
    assert info.torch_version == torch.__version__ and info.device == "cpu" and info.device_name
    assert info.tsla_version and info.torchvision_version
    data = info.dataset
    assert (data.name, data.version, data.num_train, data.num_val, data.num_test) == (
        "synthetic",
        "1",
        192,
        64,
        64,
    )
    assert data.description == DATASETS["synthetic"].description and len(data.sha256) == 64
    other = build_spec(tiny_val_raw_spec(epochs=1, seed=3, smoothing={"method": "baseline"}))  # same data
    again: list[RunInfo] = []
    train(other, tmp_path / "other", Path("unused"), Hooks(on_start=again.append))
    assert again[0].dataset == data


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


RESUMED_SPECS = {
    "plain": tiny_raw_spec(),
    # The subset, the validation split and the exact probe's batch come from the spec alone.
    "val-subset-exact": tiny_val_raw_spec(grad_variance={"mode": "exact", "exact_examples": 16}),
}


@pytest.mark.parametrize("raw", RESUMED_SPECS.values(), ids=RESUMED_SPECS.keys())
def test_exact_resume_gives_bit_identical_weights_and_metrics(tmp_path: Path, raw: dict) -> None:
    if raw["data"].get("val_fraction"):
        raw = {**raw, "data": {**raw["data"], "train_subset": 240}}
    tiny_spec = build_spec(raw)
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
    spec = build_spec(tiny_val_raw_spec(on_nonfinite="continue"))
    rows: list[MetricRow] = []
    logs: list[str] = []
    result = train(spec, tmp_path, Path("unused"), Hooks(on_metrics=rows.extend, on_log=logs.append))
    assert result.status == "completed" and result.epochs_done == 4
    loss = {r.epoch: r.value for r in rows if (r.split, r.name) == ("train", "loss")}
    assert [math.isnan(loss[e]) for e in range(4)] == [False, True, True, True]
    assert any("diverged: train/loss is NaN at epoch 1; training on" in m for m in logs), logs
    # The best checkpoint is ranked by finite validation top-1 only.
    assert result.best is not None and math.isfinite(result.best.metrics["val/top1"])


def test_a_diverging_learning_rate_fails_with_the_reason(tmp_path: Path) -> None:
    """lr 10 (the largest a spec allows) with SGD momentum: NaN within the first epochs on the CPU."""
    raw = tiny_raw_spec(
        optim={"lr": 10}, batch_size=16, schedule={"kind": "constant"}, precision="fp32", seed=1, epochs=8
    )
    raw["data"]["synthetic"]["num_train"] = 1024
    with pytest.raises(DivergedError) as raised:
        train(build_spec(raw), tmp_path, Path("unused"))
    assert re.fullmatch(r"diverged: (train/loss|test/\w+) is (NaN|inf|-inf) at epoch \d", str(raised.value))


def test_first_nonfinite_watches_the_train_loss_then_the_val_then_the_test_metrics() -> None:
    assert first_nonfinite({"train/loss": 1.0, "test/loss": 2.0}) is None
    found = first_nonfinite({"train/loss": 1.0, "test/loss": math.nan, "val/top1": math.inf})
    assert found == ("val/top1", math.inf)
    assert first_nonfinite({"train/grad_var": math.inf, "train/loss": 1.0}) is None
    assert first_nonfinite({"train/loss": math.inf, "test/loss": math.nan}) == ("train/loss", math.inf)
    found = first_nonfinite({"train/loss": 1.0, "test/top1": 3.0, "test/loss": -math.inf})
    assert found == ("test/loss", -math.inf)

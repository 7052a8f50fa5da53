"""The training loop: spec -> data -> model -> (train_one_epoch, evaluate, checkpoint) per epoch.

Metrics accumulate on the device and are read once per epoch, so a GPU never waits on the host
between steps. Callers observe and steer a run through `Hooks`: the worker persists metric rows
and checkpoints through them and cancels through `should_stop`.

At the end of each epoch the train loss and the test metrics are checked: with
`on_nonfinite: fail` (the default) a NaN or infinite value ends the run with `DivergedError`
("diverged: train/loss is NaN at epoch 3", the epoch numbered as in the metric rows, from 0),
after the epoch's rows were reported and before any checkpoint of the diverged state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tsla_core.batches import DataBundle, Split, epoch_generator, load_data
from tsla_core.checkpoint import (
    CheckpointError,
    CheckpointRecord,
    CheckpointStore,
    SkippedCheckpoint,
    load_verified,
)
from tsla_core.kernels.batch_norm_act import fused_enabled
from tsla_core.loss import smoothed_cross_entropy, stage_at, teacher_prior
from tsla_core.models import build_model
from tsla_spec.records import MetricRow
from tsla_spec.spec import RunSpec, ScheduleSpec
from tsla_spec.vocabulary import TEACHER_METHODS, TRAIN_LOSS, Stage


@dataclass
class Hooks:
    """Optional callbacks; each is called from the training thread."""

    on_metrics: Callable[[list[MetricRow]], None] | None = None
    on_checkpoint: Callable[[CheckpointRecord], None] | None = None
    # Polled between steps; keep it cheap (e.g. read a flag another thread sets).
    should_stop: Callable[[], bool] | None = None
    on_log: Callable[[str], None] | None = None
    # A checkpoint that resume skipped because it does not verify (the service stops offering it).
    on_skipped_checkpoint: Callable[[SkippedCheckpoint], None] | None = None


@dataclass
class TrainResult:
    status: Literal["completed", "stopped"]
    epochs_done: int
    final_metrics: dict[str, float] = field(default_factory=dict)
    best: CheckpointRecord | None = None
    latest: CheckpointRecord | None = None


class SpecMismatchError(Exception):
    """The output folder holds checkpoints of a different spec."""


class DivergedError(Exception):
    """The run produced a NaN or infinite train loss or test metric (`on_nonfinite: fail`)."""


def first_nonfinite(metrics: dict[str, float]) -> tuple[str, float] | None:
    """The train loss or the first test metric that is NaN or infinite, with its value."""
    watched = [TRAIN_LOSS, *sorted(key for key in metrics if key.startswith("test/"))]
    for key in watched:
        value = metrics.get(key)
        if value is not None and not math.isfinite(value):
            return key, value
    return None


def nonfinite_label(value: float) -> str:
    return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available here")
    return device


def resolve_autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast when asked for or when `auto` and the hardware runs bf16 natively."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if precision == "bf16" and not supported:
        raise RuntimeError(f"precision 'bf16' requested but {device} does not support it")
    return torch.bfloat16 if supported else None


def lr_factor(schedule: ScheduleSpec, epochs: int, epoch: int) -> float:
    """Multiplier of the base learning rate in `epoch` (0-based): warmup, then the schedule."""
    if epoch < schedule.warmup_epochs:
        return (epoch + 1) / (schedule.warmup_epochs + 1)
    if schedule.kind == "step":
        return schedule.gamma ** sum(epoch >= m for m in schedule.milestones)
    if schedule.kind == "cosine":
        span = max(1, epochs - schedule.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * (epoch - schedule.warmup_epochs) / span))
    return 1.0


def build_optimizer(spec: RunSpec, model: nn.Module) -> torch.optim.Optimizer:
    o = spec.optim
    if o.name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


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


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """Mixed precision for the forward pass, or nothing when running in fp32."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate_model(
    model: nn.Module, split: Split, spec: RunSpec, device: torch.device, dtype: torch.dtype | None
) -> dict[str, float]:
    """Plain (one-hot) test loss, top-1 and top-5 in percent."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    top1 = torch.zeros((), device=device, dtype=torch.long)
    top5 = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for images, labels in split.batches(spec.batch_size, None, spec.channels_last):
        with autocast(device, dtype):
            logits = model(images)
        loss_sum += smoothed_cross_entropy(logits, labels, 0.0, reduction="none").sum()
        top1 += top_k_correct(logits, labels, 1)
        top5 += top_k_correct(logits, labels, 5)
        seen += labels.shape[0]
    return {
        "test/loss": loss_sum.item() / max(seen, 1),
        "test/top1": 100.0 * top1.item() / max(seen, 1),
        "test/top5": 100.0 * top5.item() / max(seen, 1),
    }


def top_k_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels.unsqueeze(1)).any(dim=1).sum()


class Trainer:
    """One run of a spec into `out_dir`; resumes from the newest checkpoint there."""

    def __init__(
        self,
        spec: RunSpec,
        out_dir: Path,
        data_root: Path,
        hooks: Hooks | None = None,
        teacher_path: Path | None = None,
    ) -> None:
        self.spec = spec
        self.hooks = hooks or Hooks()
        self.device = resolve_device(spec.device)
        self.autocast_dtype = resolve_autocast_dtype(spec.precision, self.device)
        self.memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv kernels once
        elif spec.channels_last:  # build the fused kernel (a machine's first run) before any epoch
            self._log(f"batch norm + ReLU: {'fused CPU kernel' if fused_enabled() else 'PyTorch kernels'}")

        torch.manual_seed(spec.seed)
        self.data: DataBundle = load_data(spec.data, data_root, self.device)
        self.model = build_model(spec.model, self.data.num_classes, self.data.in_channels)
        self.model.to(self.device).to(memory_format=self.memory_format)
        self.optimizer = build_optimizer(spec, self.model)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda epoch: lr_factor(spec.schedule, spec.epochs, epoch)
        )
        self.teacher = self._load_teacher(teacher_path) if spec.smoothing.method in TEACHER_METHODS else None
        self.store = CheckpointStore(out_dir / "checkpoints", spec.checkpoint.keep_last, self._log)
        for name in self.store.remove_temp_files():
            self._log(f"removed {name}, a temp file an earlier run left when its write failed")
        self.epoch = 0  # next epoch to train
        self.step = 0  # optimizer steps so far

    # --- setup -----------------------------------------------------------------------------

    def _log(self, message: str) -> None:
        if self.hooks.on_log is not None:
            self.hooks.on_log(message)

    def _load_teacher(self, teacher_path: Path | None) -> nn.Module:
        teacher_spec = self.spec.smoothing.teacher
        if teacher_path is None and teacher_spec is not None and teacher_spec.path is not None:
            teacher_path = Path(teacher_spec.path)
        if teacher_path is None:
            raise CheckpointError("the teacher job must be resolved to a checkpoint file by the service")
        state = load_verified(teacher_path, sha256=None)
        if state["num_classes"] != self.data.num_classes:
            raise CheckpointError(
                f"teacher {teacher_path} predicts {state['num_classes']} classes, "
                f"the data set has {self.data.num_classes}"
            )
        teacher_run = RunSpec.model_validate_json(state["spec"])
        teacher = build_model(teacher_run.model, state["num_classes"], state["in_channels"])
        teacher.load_state_dict(state["model"])
        teacher.to(self.device).to(memory_format=self.memory_format).eval()
        teacher.requires_grad_(False)
        self._log(
            f"teacher prior from {teacher_path} (epoch {state['epoch']}), T={self.spec.smoothing.temperature}"
        )
        return teacher

    def state_dict(self, epoch: int) -> dict[str, Any]:
        """Everything needed to continue after `epoch` (0-based) exactly as if never stopped."""
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {
            "spec": self.spec.model_dump_json(),
            "epoch": epoch,
            "step": self.step,
            "stage": stage_at(self.spec.smoothing, epoch),
            "num_classes": self.data.num_classes,
            "in_channels": self.data.in_channels,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            # The data order is a function of (seed, epoch); the global RNG covers the rest.
            "rng": {"torch": torch.get_rng_state(), "cuda": cuda_rng},
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue after the epoch that `state` completed."""
        if state["spec"] != self.spec.model_dump_json():
            raise SpecMismatchError(
                "the checkpoints here were written by a different spec; use a new output folder"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.epoch = state["epoch"] + 1
        self.step = state["step"]

    def resume_if_possible(self) -> None:
        found = self.store.newest_resumable()
        if found is None:
            return
        record, state, skipped = found
        for bad in skipped:
            self._log(f"skipped checkpoint {bad.record.name}: {bad.reason}")
            if self.hooks.on_skipped_checkpoint is not None:
                self.hooks.on_skipped_checkpoint(bad)
        self.restore(state)
        self._log(f"resumed from {record.name}: continuing at epoch {self.epoch}")

    # --- one epoch -------------------------------------------------------------------------

    def _autocast(self) -> AbstractContextManager[Any]:
        return autocast(self.device, self.autocast_dtype)

    def _loss(
        self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, stage: Stage
    ) -> torch.Tensor:
        """Per-sample training loss for this stage."""
        if stage == "onehot":
            return smoothed_cross_entropy(logits, labels, 0.0, reduction="none")
        prior = None
        if self.teacher is not None:
            with self._autocast():
                prior = teacher_prior(self.teacher, images, self.spec.smoothing.temperature)
        return smoothed_cross_entropy(logits, labels, self.spec.smoothing.theta, prior, reduction="none")

    def _backward(self, losses: torch.Tensor, probe: bool) -> torch.Tensor | None:
        """Backward of the mean loss; on probe steps split in two halves to measure variance."""
        n = losses.shape[0]
        if not probe or n < 2:
            losses.mean().backward()
            return None
        half = n // 2
        params = [p for p in self.model.parameters() if p.requires_grad]
        (losses[:half].sum() / n).backward(retain_graph=True)
        first_half = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        (losses[half:].sum() / n).backward()
        return split_gradient_variance(params, first_half, half, n)

    def train_one_epoch(self, epoch: int, stage: Stage) -> dict[str, float] | None:
        """Train one epoch; the metrics, or None when `should_stop` interrupted it."""
        self.model.train()
        every = self.spec.grad_variance.every_steps
        probe_on = self.spec.grad_variance.enabled
        device = self.device
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        variance_sum = torch.zeros((), device=device)
        seen, probes = 0, 0
        start = time.perf_counter()
        batches = self.data.train.batches(
            self.spec.batch_size, epoch_generator(self.spec.seed, epoch), self.spec.channels_last
        )
        for images, labels in batches:
            if self.hooks.should_stop is not None and self.hooks.should_stop():
                return None
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                logits = self.model(images)
            losses = self._loss(logits, images, labels, stage)
            probe = probe_on and self.step % every == every // 2
            variance = self._backward(losses, probe)
            self.optimizer.step()
            self.step += 1
            loss_sum += losses.detach().sum()
            correct += (logits.detach().argmax(dim=1) == labels).sum()
            seen += labels.shape[0]
            if variance is not None:
                variance_sum += variance.detach()
                probes += 1
        # .item() is the epoch's one host sync point: read first, so the clock stops after the
        # device has really finished the epoch's queued work.
        loss_total, correct_total = loss_sum.item(), correct.item()
        elapsed = time.perf_counter() - start
        metrics = {
            "train/loss": loss_total / max(seen, 1),
            "train/top1": 100.0 * correct_total / max(seen, 1),
            "train/lr": self.optimizer.param_groups[0]["lr"],
            "train/images_per_s": seen / max(elapsed, 1e-9),
        }
        if probes:
            metrics["train/grad_var"] = variance_sum.item() / probes
        return metrics

    def evaluate(self) -> dict[str, float]:
        return evaluate_model(self.model, self.data.test, self.spec, self.device, self.autocast_dtype)

    # --- the run ---------------------------------------------------------------------------

    def _rows(self, epoch: int, stage: Stage, metrics: dict[str, float]) -> list[MetricRow]:
        rows = []
        for key, value in metrics.items():
            split, name = key.split("/", 1)
            rows.append(MetricRow(epoch, split, name, value, stage, self.step))  # type: ignore[arg-type]
        return rows

    def _checkpoint(self, epoch: int, partial: bool, metrics: dict[str, float]) -> CheckpointRecord:
        state = self.state_dict(epoch)
        record = self.store.save(state, epoch, partial, metrics)
        if self.hooks.on_checkpoint is not None:
            self.hooks.on_checkpoint(record)
        return record

    def _check_finite(self, epoch: int, metrics: dict[str, float]) -> None:
        """DivergedError on a non-finite loss or test metric, unless `on_nonfinite: continue`."""
        found = first_nonfinite(metrics)
        if found is None:
            return
        key, value = found
        reason = f"diverged: {key} is {nonfinite_label(value)} at epoch {epoch}"
        if self.spec.on_nonfinite == "fail":
            raise DivergedError(reason)
        self._log(f"{reason}; training on (on_nonfinite: continue)")

    def fit(self, resume: bool = True) -> TrainResult:
        if resume:
            self.resume_if_possible()
        result = TrainResult(status="completed", epochs_done=self.epoch)
        for epoch in range(self.epoch, self.spec.epochs):
            stage = stage_at(self.spec.smoothing, epoch)
            started = time.perf_counter()
            train_metrics = self.train_one_epoch(epoch, stage)
            if train_metrics is None:
                # Stopped between steps: keep the weights as they are, marked partial.
                result.latest = self._checkpoint(epoch, partial=True, metrics={})
                result.status = "stopped"
                break
            metrics = {**train_metrics, **self.evaluate()}
            metrics["train/epoch_time"] = time.perf_counter() - started
            self.scheduler.step()
            self.epoch = epoch + 1
            result.epochs_done = self.epoch
            result.final_metrics = metrics
            if self.hooks.on_metrics is not None:
                self.hooks.on_metrics(self._rows(epoch, stage, metrics))
            self._check_finite(epoch, metrics)
            last = epoch == self.spec.epochs - 1
            if last or (epoch + 1) % self.spec.checkpoint.every == 0:
                result.latest = self._checkpoint(epoch, partial=False, metrics=metrics)
        result.best = self.store.best()
        return result


def train(
    spec: RunSpec,
    out_dir: Path,
    data_root: Path,
    hooks: Hooks | None = None,
    teacher_path: Path | None = None,
    resume: bool = True,
) -> TrainResult:
    """Train `spec` into `out_dir` (checkpoints under out_dir/checkpoints), resuming if possible."""
    return Trainer(spec, out_dir, data_root, hooks, teacher_path).fit(resume=resume)


def evaluate_checkpoint(path: Path, data_root: Path, sha256: str | None = None) -> dict[str, float]:
    """Rebuild the model in a checkpoint and measure it on its data set's test split."""
    state = load_verified(path, sha256)
    spec = RunSpec.model_validate_json(state["spec"])
    device = resolve_device(spec.device)
    data = load_data(spec.data, data_root, device)
    model = build_model(spec.model, state["num_classes"], state["in_channels"])
    model.load_state_dict(state["model"])
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    model.to(device).to(memory_format=memory_format)
    return evaluate_model(model, data.test, spec, device, resolve_autocast_dtype(spec.precision, device))

"""The training loop: spec -> data -> model -> (train_one_epoch, evaluate, checkpoint) per epoch.

Metrics accumulate on the device and are read once per epoch, so a GPU never waits on the host
between steps. Callers observe and steer a run through `Hooks`: the worker persists metric rows
and checkpoints through them and cancels through `should_stop`.

Each epoch is evaluated on the validation split (val/*, held out of the training data: what the
best checkpoint is chosen by) and on the test split (test/*, reported, never selected on).

At the end of each epoch the train loss and the val and test metrics are checked: with
`on_nonfinite: fail` (the default) a NaN or infinite value ends the run with `DivergedError`
("diverged: train/loss is NaN at epoch 3", the epoch numbered as in the metric rows, from 0),
after the epoch's rows were reported and before any checkpoint of the diverged state.
"""

from __future__ import annotations

import json
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
from tsla_core.distributed import RankGroup, RankJob, launch
from tsla_core.kernels.batch_norm_act import fused_enabled
from tsla_core.loss import smoothed_cross_entropy, stage_at, teacher_prior
from tsla_core.models import build_model
from tsla_core.probes import exact_gradient_variance, probe_steps, split_gradient_variance, squared_grad_norm
from tsla_core.provenance import run_info
from tsla_core.splits import probe_indices
from tsla_spec.records import MetricRow, RunInfo
from tsla_spec.spec import RunSpec, ScheduleSpec, upgrade_stored_spec
from tsla_spec.vocabulary import (
    TEACHER_METHODS,
    TRAIN_CE,
    TRAIN_GRAD_NORM_SQ,
    TRAIN_GRAD_VAR,
    TRAIN_IMAGES_PER_S,
    TRAIN_LOSS,
    TRAIN_LR,
    TRAIN_TOP1,
    Stage,
)

# A probe's reading: (per-example gradient variance, squared norm of the mean gradient), on device.
ProbeReading = tuple[torch.Tensor, torch.Tensor]


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
    # Once when `fit` starts (after resuming): versions, device and the data set's identity.
    on_start: Callable[[RunInfo], None] | None = None


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
    """The run produced a NaN or infinite train loss or val/test metric (`on_nonfinite: fail`)."""


def first_nonfinite(metrics: dict[str, float]) -> tuple[str, float] | None:
    """The train loss or the first val, then test, metric that is NaN or infinite, with its value."""
    held_out = [key for prefix in ("val/", "test/") for key in sorted(metrics) if key.startswith(prefix)]
    watched = [TRAIN_LOSS, *held_out]
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


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """Mixed precision for the forward pass, or nothing when running in fp32."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    split: Split,
    spec: RunSpec,
    device: torch.device,
    dtype: torch.dtype | None,
    prefix: Literal["val", "test"] = "test",
) -> dict[str, float]:
    """Plain (one-hot) loss, top-1 and top-5 in percent on `split`, as `prefix/loss` etc."""
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
        f"{prefix}/loss": loss_sum.item() / max(seen, 1),
        f"{prefix}/top1": 100.0 * top1.item() / max(seen, 1),
        f"{prefix}/top5": 100.0 * top5.item() / max(seen, 1),
    }


def evaluate_splits(
    model: nn.Module, data: DataBundle, spec: RunSpec, device: torch.device, dtype: torch.dtype | None
) -> dict[str, float]:
    """val/* (when there is a validation split), then test/*."""
    metrics = {}
    if data.val is not None:
        metrics = evaluate_model(model, data.val, spec, device, dtype, "val")
    return metrics | evaluate_model(model, data.test, spec, device, dtype, "test")


def top_k_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels.unsqueeze(1)).any(dim=1).sum()


def plain_ce_sum(
    logits: torch.Tensor, labels: torch.Tensor, losses: torch.Tensor, stage: Stage
) -> torch.Tensor:
    """The batch's summed one-hot cross-entropy: after the switch the training loss itself."""
    if stage == "onehot":
        return losses.detach().sum()
    with torch.no_grad():
        return smoothed_cross_entropy(logits.detach(), labels, 0.0, reduction="none").sum()


@dataclass
class EpochTotals:
    """An epoch's running sums, kept on the device so that no step waits on the host."""

    loss: torch.Tensor
    ce: torch.Tensor
    correct: torch.Tensor
    variance: torch.Tensor
    grad_norm_sq: torch.Tensor
    seen: int = 0
    probes: int = 0

    @classmethod
    def zeros(cls, device: torch.device) -> EpochTotals:
        def zero(dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros((), device=device, dtype=dtype)

        return cls(loss=zero(), ce=zero(), correct=zero(torch.long), variance=zero(), grad_norm_sq=zero())

    def add_batch(
        self, losses: torch.Tensor, ce_sum: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor
    ) -> None:
        self.loss += losses.detach().sum()
        self.ce += ce_sum
        self.correct += (logits.detach().argmax(dim=1) == labels).sum()
        self.seen += labels.shape[0]

    def add_probe(self, reading: ProbeReading) -> None:
        self.variance += reading[0].detach()
        self.grad_norm_sq += reading[1].detach()
        self.probes += 1

    def read(self, group: RankGroup | None = None) -> dict[str, float]:
        """The epoch's train metrics, over all ranks' batches in a multi-process run (the probes'
        readings are the same on every rank); `.tolist()` is the epoch's one host sync point."""
        counted = torch.stack([t.double() for t in (self.loss, self.ce, self.correct)])
        counted = torch.cat([counted, counted.new_tensor([self.seen])])
        if group is not None:
            group.sum(counted)
        probed = torch.stack([t.double() for t in (self.variance, self.grad_norm_sq)])
        loss, ce, correct, seen_all, variance, grad_norm_sq = torch.cat([counted, probed]).tolist()
        self.seen = int(seen_all)
        seen = max(self.seen, 1)
        metrics = {TRAIN_LOSS: loss / seen, TRAIN_CE: ce / seen, TRAIN_TOP1: 100.0 * correct / seen}
        if self.probes:
            metrics[TRAIN_GRAD_VAR] = variance / self.probes
            metrics[TRAIN_GRAD_NORM_SQ] = grad_norm_sq / self.probes
        return metrics


class Trainer:
    """One run of a spec into `out_dir`; resumes from the newest checkpoint there."""

    def __init__(
        self,
        spec: RunSpec,
        out_dir: Path,
        data_root: Path,
        hooks: Hooks | None = None,
        teacher_path: Path | None = None,
        uploaded: Path | None = None,
        group: RankGroup | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.spec = spec
        self.hooks = hooks or Hooks()
        self.group = group  # a rank of a multi-process run (tsla_core.distributed), else None
        self.device = device or resolve_device(spec.device)
        self.autocast_dtype = resolve_autocast_dtype(spec.precision, self.device)
        self.memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv kernels once
        elif spec.channels_last:  # build the fused kernel (a machine's first run) before any epoch
            self._log(f"batch norm + ReLU: {'fused CPU kernel' if fused_enabled() else 'PyTorch kernels'}")

        torch.manual_seed(spec.seed)
        self.data: DataBundle = load_data(spec.data, data_root, self.device, uploaded=uploaded)
        self.model = build_model(spec.model, self.data.num_classes, self.data.in_channels)
        self.model.to(self.device).to(memory_format=self.memory_format)
        # What the training steps run: the model, or its DistributedDataParallel wrapper.
        self.train_model: nn.Module = self.model if group is None else group.wrap(self.model, self.device)
        self.optimizer = build_optimizer(spec, self.model)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda epoch: lr_factor(spec.schedule, spec.epochs, epoch)
        )
        self.teacher = self._load_teacher(teacher_path) if spec.smoothing.method in TEACHER_METHODS else None
        self.store = CheckpointStore(out_dir / "checkpoints", spec.checkpoint.keep_last, self._log)
        for name in self.store.remove_temp_files() if self.is_reporter else ():
            self._log(f"removed {name}, a temp file an earlier run left when its write failed")
        probing = spec.grad_variance.enabled
        self.exact_batch = self._exact_batch() if probing and spec.grad_variance.mode == "exact" else None
        self.epoch = 0  # next epoch to train
        self.step = 0  # optimizer steps so far

    # --- setup -----------------------------------------------------------------------------

    @property
    def is_reporter(self) -> bool:
        """Whether this process evaluates, reports and writes checkpoints (rank 0, or the only one)."""
        return self.group is None or self.group.is_reporter

    def _log(self, message: str) -> None:
        if self.hooks.on_log is not None:
            self.hooks.on_log(message)

    def _exact_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact probe's fixed batch: drawn once from the training split with data.split_seed."""
        train, size = self.data.train, self.spec.grad_variance.exact_examples
        indices = probe_indices(len(train), size, self.spec.data.split_seed)
        return train.examples(indices, self.spec.channels_last)

    def run_info(self) -> RunInfo:
        return run_info(self.device, self.data.identity)

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
        teacher_run = RunSpec.model_validate(upgrade_stored_spec(json.loads(state["spec"])))
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
        written_by = RunSpec.model_validate(upgrade_stored_spec(json.loads(state["spec"])))
        # Resources are not part of what a run computes: a checkpoint resumes on other processes.
        if written_by.model_copy(update={"resources": self.spec.resources}) != self.spec:
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

    def _targets(self, images: torch.Tensor, stage: Stage) -> tuple[float, torch.Tensor | None]:
        """(theta, prior) of this stage's targets: one-hot is theta 0; prior None is uniform."""
        if stage == "onehot":
            return 0.0, None
        prior = None
        if self.teacher is not None:
            with self._autocast():
                prior = teacher_prior(self.teacher, images, self.spec.smoothing.temperature)
        return self.spec.smoothing.theta, prior

    def _loss(
        self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, stage: Stage
    ) -> torch.Tensor:
        """Per-sample training loss for this stage."""
        theta, prior = self._targets(images, stage)
        return smoothed_cross_entropy(logits, labels, theta, prior, reduction="none")

    def _backward(self, losses: torch.Tensor, probe: bool) -> ProbeReading | None:
        """Backward of the mean loss; on split-probe steps first the gradient of the batch's first
        half alone, to measure the variance (one extra backward pass, no extra forward). On a rank
        of a multi-process run the ranks' local gradients are the probe's samples instead."""
        n = losses.shape[0]
        if self.group is not None and probe:
            losses.mean().backward()  # inside no_sync: the local gradient
            params = [p for p in self.model.parameters() if p.requires_grad]
            return self.group.average_gradients(params, n)
        if not probe or n < 2:
            losses.mean().backward()
            return None
        half = n // 2
        params = [p for p in self.model.parameters() if p.requires_grad]
        first_half = torch.autograd.grad(
            losses[:half].sum() / n, params, retain_graph=True, materialize_grads=True
        )
        # The same backward call as a plain step: the update is bit for bit the one without the
        # probe (two accumulated half-batch backwards would round differently, by far more in bf16).
        losses.mean().backward()
        return split_gradient_variance(params, list(first_half), half, n), squared_grad_norm(params)

    def _exact_probe(self, stage: Stage) -> ProbeReading | None:
        """Per-example gradient variance of the fixed probe batch at the current weights (fp32)."""
        assert self.exact_batch is not None
        images, labels = self.exact_batch
        if labels.shape[0] < 2:
            return None
        theta, prior = self._targets(images, stage)

        def loss(logits: torch.Tensor, labels: torch.Tensor, row: torch.Tensor | None) -> torch.Tensor:
            return smoothed_cross_entropy(logits, labels, theta, row, reduction="none")

        return exact_gradient_variance(self.model, images, labels, prior, loss)

    def _no_sync(self, probing: bool) -> AbstractContextManager[Any]:
        return nullcontext() if self.group is None else self.group.no_sync(self.train_model, probing)

    def _train_step(
        self, images: torch.Tensor, labels: torch.Tensor, stage: Stage, probe: bool
    ) -> tuple[torch.Tensor, torch.Tensor, ProbeReading | None]:
        """One optimizer step: (per-sample losses, logits, the probe's reading on probe steps).
        The exact probe reads the weights before the step, and changes neither them nor the RNG."""
        exact = self.exact_batch is not None
        reading = self._exact_probe(stage) if probe and exact else None
        self.optimizer.zero_grad(set_to_none=True)
        split_probe = probe and not exact
        with self._no_sync(split_probe):
            with self._autocast():
                logits = self.train_model(images)
            losses = self._loss(logits, images, labels, stage)
            split = self._backward(losses, split_probe)
        self.optimizer.step()
        self.step += 1
        return losses, logits, reading if exact else split

    def probe_steps(self) -> frozenset[int]:
        """The steps of each epoch that probe the gradient variance."""
        probes = self.spec.grad_variance
        if not probes.enabled:
            return frozenset()
        return probe_steps(self.data.train.steps(self.spec.batch_size), probes.probes_per_epoch)

    def train_one_epoch(self, epoch: int, stage: Stage) -> dict[str, float] | None:
        """Train one epoch; the metrics, or None when `should_stop` interrupted it."""
        self.model.train()
        totals = EpochTotals.zeros(self.device)
        probing = self.probe_steps()
        start = time.perf_counter()
        shard = None if self.group is None else self.group.shard
        batches = self.data.train.batches(
            self.spec.batch_size, epoch_generator(self.spec.seed, epoch), self.spec.channels_last, shard
        )
        for index, (images, labels) in enumerate(batches):
            if self._should_stop():
                return None
            losses, logits, reading = self._train_step(images, labels, stage, index in probing)
            totals.add_batch(losses, plain_ce_sum(logits, labels, losses, stage), logits, labels)
            if reading is not None:
                totals.add_probe(reading)
        # Read first (the host sync), so the clock stops after the device has finished the epoch.
        metrics = totals.read(self.group)
        elapsed = time.perf_counter() - start
        metrics[TRAIN_LR] = self.optimizer.param_groups[0]["lr"]
        metrics[TRAIN_IMAGES_PER_S] = totals.seen / max(elapsed, 1e-9)
        return metrics

    def _should_stop(self) -> bool:
        """The hook's answer; on the ranks of a multi-process run, rank 0's, agreed by all."""
        if self.group is not None:
            return self.group.agree_to_stop(self.device)
        return self.hooks.should_stop is not None and self.hooks.should_stop()

    def evaluate(self) -> dict[str, float]:
        """val/* and test/*: {} on the ranks other than rank 0 (it alone reports)."""
        if not self.is_reporter:
            return {}
        return evaluate_splits(self.model, self.data, self.spec, self.device, self.autocast_dtype)

    # --- the run ---------------------------------------------------------------------------

    def _rows(self, epoch: int, stage: Stage, metrics: dict[str, float]) -> list[MetricRow]:
        rows = []
        for key, value in metrics.items():
            split, name = key.split("/", 1)
            rows.append(MetricRow(epoch, split, name, value, stage, self.step))  # type: ignore[arg-type]
        return rows

    def _checkpoint(self, epoch: int, partial: bool, metrics: dict[str, float]) -> CheckpointRecord | None:
        if not self.is_reporter:
            return None
        state = self.state_dict(epoch)
        record = self.store.save(state, epoch, partial, metrics)
        if self.hooks.on_checkpoint is not None:
            self.hooks.on_checkpoint(record)
        return record

    def _check_finite(self, epoch: int, metrics: dict[str, float]) -> None:
        """DivergedError on a non-finite loss or val/test metric, unless `on_nonfinite: continue`."""
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
        if self.hooks.on_start is not None:
            self.hooks.on_start(self.run_info())
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
            if self.is_reporter:
                self._check_finite(epoch, metrics)
            last = epoch == self.spec.epochs - 1
            if last or (epoch + 1) % self.spec.checkpoint.every == 0:
                result.latest = self._checkpoint(epoch, partial=False, metrics=metrics)
        result.best = self.store.best() if self.is_reporter else None
        return result


def train(
    spec: RunSpec,
    out_dir: Path,
    data_root: Path,
    hooks: Hooks | None = None,
    teacher_path: Path | None = None,
    resume: bool = True,
    uploaded: Path | None = None,
) -> TrainResult:
    """Train `spec` into `out_dir` (checkpoints under out_dir/checkpoints), resuming if possible.
    An uploaded data set is read from `uploaded`, its local canonical folder (the worker fetches it).
    With `resources.processes` > 1 the ranks run in child processes (tsla_core.distributed) and
    `hooks` are called here as rank 0 reports."""
    if spec.resources.processes == 1:
        return Trainer(spec, out_dir, data_root, hooks, teacher_path, uploaded).fit(resume=resume)
    job = RankJob(
        spec_json=spec.model_dump_json(),
        out_dir=str(out_dir),
        data_root=str(data_root),
        teacher_path=None if teacher_path is None else str(teacher_path),
        uploaded=None if uploaded is None else str(uploaded),
        resume=resume,
        port=0,  # the parent's store picks it
        world=spec.resources.processes,
    )
    result: TrainResult = launch(job, hooks or Hooks())
    return result


def evaluate_checkpoint(
    path: Path, data_root: Path, sha256: str | None = None, uploaded: Path | None = None
) -> dict[str, float]:
    """Rebuild the model in a checkpoint and measure it on its data set's val and test splits."""
    state = load_verified(path, sha256)
    spec = RunSpec.model_validate(upgrade_stored_spec(json.loads(state["spec"])))
    device = resolve_device(spec.device)
    data = load_data(spec.data, data_root, device, uploaded=uploaded)
    model = build_model(spec.model, state["num_classes"], state["in_channels"])
    model.load_state_dict(state["model"])
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    model.to(device).to(memory_format=memory_format)
    return evaluate_splits(model, data, spec, device, resolve_autocast_dtype(spec.precision, device))

"""Training throughput of the core next to a naive torchvision-style loop, in one run.

What is compared (each variant in its own subprocess, one after the other, so each peak RSS and
CUDA peak is its own):

  core            `tsla_core.loop.Trainer(spec, ...).fit()` as the service runs it: uint8 data held
                  on the device, crop/flip of a whole batch at once on the device, channels_last,
                  precision "auto" (bf16 autocast where the hardware supports it, else fp32), and on
                  a CPU the custom kernels: batch norm + residual + ReLU fused into one kernel
                  (`tsla_core/fused.py`) and the weight gradient of convolutions on 4x4 maps as a
                  forward convolution (`tsla_core/small_map_conv.py`).
  core-stock      the same with PyTorch's kernels only      (ablation: removes the custom kernels;
                  run with TSLA_CUSTOM_KERNELS=0; CPU only, as the kernels are)
  core-fp32       ... and precision "fp32"                  (ablation: removes bf16 too)
  core-fp32-nchw  ... and channels_last off                 (ablation: removes channels_last too)
  naive           the PyTorch-tutorial way: a `Dataset` that returns PIL images through
                  torchvision.transforms (RandomCrop(size, padding), RandomHorizontalFlip, ToTensor,
                  Normalize), `DataLoader(shuffle=True, drop_last=True, num_workers=--num-workers)`,
                  fp32, NCHW, `loss.item()` every step, PyTorch's kernels only (the same module
                  tree with `models.use_custom_kernels(model, False)`).

All variants share the spec built by `build_spec({"preset": <dataset>, "epochs": N, ...})`: the model
class and width (`build_model(spec.model, 10, 1)`, initialised after `torch.manual_seed(spec.seed)`,
so the initial weights are identical), batch size, SGD lr/momentum/nesterov/weight decay, the
per-epoch lr schedule (`lr_factor`), the loss (`smoothed_cross_entropy` with the spec's theta, one-hot
from the TSLA switch epoch on, via `tsla_core.stage_at`), the crop padding and flip of the data set
(`tsla_core.batches.AUGMENTS`) and the normalisation (per-channel mean/std of the training images, as
the core computes them). What differs is only how the batches are made and the loop's habits.

The preset's schedule is written for its own epoch count (20 for Fashion-MNIST). For a short run
the lr milestones and the TSLA switch epoch are scaled by epochs / preset epochs (floored, kept
inside 1..epochs-1); with --epochs 1 there is no room for a second stage and the method is `lsr`.
The gradient-variance probe of the core (an extra backward pass on 4 steps an epoch) is switched off
unless --grad-variance is given, because the naive loop does no such work.

--limit-train N: the script writes the first N
Fashion-MNIST training images (and links the full test set) as IDX files into a temporary data
root, `<root>/fashion-mnist/`, which the core reads in preference to the Debian copy. The naive
loop reads the same folder, so every variant trains on exactly those N images and normalises with
their statistics. Only Fashion-MNIST supports it (the digits set comes from scikit-learn).

How to read the output:
  images/s      training images per second of wall time over the training part of an epoch (data
                preparation included; test evaluation and checkpointing excluded), the median over
                epochs, skipping the first epoch as warm-up when there is more than one.
  test top-1    after the last epoch, in percent. Variants differ in data order, augmentation
                draws and precision, so after a few epochs a difference of about a point is noise.
  peak RSS      ru_maxrss of the variant's process; DataLoader workers (--num-workers > 0) are
                not counted (RUSAGE_CHILDREN cannot tell them apart from the `ldconfig -p` that
                `import torch` forks off the interpreter). `(-imports)` subtracts the peak before
                training began, i.e. what importing torch/torchvision cost (~0.9 GiB with a CUDA
                build of torch, even on a CPU-only machine), leaving what data, model and loop used.
  cores         CPU time / wall time of the variant's process per epoch (training, evaluation,
                checkpoint), the lowest over the measured epochs: about torch's thread count
                (1.9-2.0 with 2 threads) on an idle machine, as idle OpenMP threads spin; lower means
                other processes took the CPUs, and that row's images/s is not trustworthy (a
                WARNING line then names the rows). On a GPU it says little.
  ratio lines   core / naive speed, and the step-by-step factors: naive -> core-fp32-nchw is the
                tensor data pipeline (plus fewer host syncs), -> core-fp32 adds channels_last,
                -> core-stock adds bf16, -> core adds the custom kernels. On a GPU there is no
                core-stock step, and the core also turns on cudnn.benchmark.

Results go to bench/results/core_throughput.json (also printed).

    .venv/bin/python bench/core_throughput.py [--epochs N] [--limit-train N] [--dataset fashion-mnist]
        [--device auto|cpu|cuda] [--num-workers N] [--no-ablation] [--grad-variance]

The default (3 epochs on the first 20000 images, 5 variants) takes about 7 minutes on 2 idle
cores; `--epochs 2 --limit-train 0` (all 60000 images) about 13 (estimated from the rates).
Anything else running on the machine (tests, other training) lowers every number, and unevenly
(two 2-thread PyTorch processes on 2 cores can each drop to a tenth of their speed): run it on
an idle machine and check the `cores` column.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from tsla_core.batches import AUGMENTS, channel_stats
from tsla_core.kernels.batch_norm_act import ENV_SWITCH as CUSTOM_KERNELS_SWITCH
from tsla_core.loop import Hooks, Trainer, lr_factor, resolve_autocast_dtype, resolve_device
from tsla_core.loss import smoothed_cross_entropy, stage_at
from tsla_core.models import build_model, use_custom_kernels
from tsla_core.readers import FASHION_MNIST_DEBIAN_DIR, ArraySplit, read_digits, read_fashion_mnist
from tsla_spec.presets import PRESETS
from tsla_spec.records import MetricRow
from tsla_spec.spec import RunSpec, build_spec

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "core_throughput.json"
DATASETS = ("fashion-mnist", "digits")
NUM_CLASSES = 10
IN_CHANNELS = 1
STARVED = 0.85  # an epoch whose process got fewer than this share of torch's threads was disturbed
DEFAULT_LIMIT = 20_000  # with 3 epochs: about 4 minutes for the 4 variants on 2 idle cores


@dataclass(frozen=True)
class Variant:
    name: str
    kind: Literal["core", "naive"]
    precision: Literal["auto", "fp32"]
    channels_last: bool
    custom_kernels: bool  # the core's custom CPU kernels (the naive loop never uses them)
    data: str  # how batches are made, for the table


CORE = Variant("core", "core", "auto", True, True, "tensor")
CORE_STOCK = Variant("core-stock", "core", "auto", True, False, "tensor")
CORE_FP32 = Variant("core-fp32", "core", "fp32", True, False, "tensor")
CORE_FP32_NCHW = Variant("core-fp32-nchw", "core", "fp32", False, False, "tensor")
NAIVE = Variant("naive", "naive", "fp32", False, False, "PIL+DataLoader")
VARIANTS = {v.name: v for v in (CORE, CORE_STOCK, CORE_FP32, CORE_FP32_NCHW, NAIVE)}
# Each variant adds one thing to the one before it; the summary prints each step's factor.
CHAIN = ("naive", "core-fp32-nchw", "core-fp32", "core-stock", "core")


@dataclass(frozen=True)
class Config:
    dataset: str
    epochs: int
    limit_train: int | None
    device: str
    num_workers: int
    seed: int
    grad_variance: bool
    ablation: bool
    data_root: str = ""  # set by the parent: an empty folder, or one holding the subset


@dataclass
class VariantResult:
    variant: str
    device: str
    precision: str  # resolved: "bf16" or "fp32"
    channels_last: bool
    custom_kernels: bool  # switched on (they run on a CPU only)
    data: str
    train_images: int
    epoch_images_per_s: list[float]
    epoch_test_top1: list[float]
    epoch_cores: list[float]  # CPU time / wall time per epoch (training, evaluation, checkpoint)
    images_per_s: float
    test_top1: float
    peak_rss_mib: float
    import_rss_mib: float  # peak RSS before training: the interpreter, torch and torchvision
    cuda_peak_mib: float | None
    wall_s: float
    cpu_s: float  # user + system CPU time of the process over the same span as wall_s
    extra: dict[str, Any] = field(default_factory=dict)


# --- spec ------------------------------------------------------------------------------------


def schedule_overrides(preset: str, epochs: int) -> dict[str, Any]:
    """Milestones and TSLA switch of the preset scaled to `epochs` (see the module docstring)."""
    base = PRESETS[preset]
    scale = epochs / base["epochs"]
    milestones = sorted({int(m * scale) for m in base["schedule"]["milestones"]} & set(range(1, epochs)))
    if epochs == 1:
        return {"schedule": {"milestones": milestones}, "smoothing": {"method": "lsr"}}
    switch = min(max(int(base["smoothing"]["switch_epoch"] * scale), 1), epochs - 1)
    return {"schedule": {"milestones": milestones}, "smoothing": {"switch_epoch": switch}}


def make_spec(config: Config, variant: Variant) -> RunSpec:
    raw: dict[str, Any] = {
        "preset": config.dataset,
        "epochs": config.epochs,
        "seed": config.seed,
        "device": config.device,
        "precision": variant.precision,
        "channels_last": variant.channels_last,
        "grad_variance": {"enabled": config.grad_variance},
        # All the training images, as the naive loop uses: no validation split held out here.
        "data": {"val_fraction": 0},
        **schedule_overrides(config.dataset, config.epochs),
    }
    return build_spec(raw)


def resolved_precision(spec: RunSpec) -> str:
    dtype = resolve_autocast_dtype(spec.precision, resolve_device(spec.device))
    return "fp32" if dtype is None else "bf16"


# --- data ------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """An uncompressed IDX file (big-endian dimensions, then the uint8 payload)."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_subset_root(root: Path, limit: int) -> None:
    """`root/fashion-mnist/` with the first `limit` training images and the full test split."""
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True)
    train = read_fashion_mnist(FASHION_MNIST_DEBIAN_DIR, train=True)
    if not 0 < limit <= len(train.labels):
        raise SystemExit(f"--limit-train must be in 1..{len(train.labels)}, got {limit}")
    write_idx(folder / "train-images-idx3-ubyte", train.images[:limit, 0], 0x00000803)
    write_idx(folder / "train-labels-idx1-ubyte", train.labels[:limit].astype(np.uint8), 0x00000801)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).symlink_to(FASHION_MNIST_DEBIAN_DIR / name)


def read_splits(dataset: str, data_root: Path) -> tuple[ArraySplit, ArraySplit]:
    """(train, test) arrays from where the core reads them (see `tsla_core.batches.read_arrays`)."""
    if dataset == "digits":
        return read_digits(train=True), read_digits(train=False)
    folder = data_root / "fashion-mnist"
    if not folder.is_dir():
        folder = FASHION_MNIST_DEBIAN_DIR
    return read_fashion_mnist(folder, train=True), read_fashion_mnist(folder, train=False)


class PilImages(Dataset[tuple[torch.Tensor, int]]):
    """Grayscale images served one at a time as PIL images, like torchvision.datasets.FashionMNIST."""

    def __init__(self, split: ArraySplit, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.images = split.images[:, 0]
        self.labels = split.labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index])
        return self.transform(image), int(self.labels[index])


def tutorial_transforms(dataset: str, train_split: ArraySplit) -> tuple[Any, Any]:
    """(train, test) transforms with the core's crop padding, flip and normalisation."""
    augment = AUGMENTS[dataset]
    mean, std = channel_stats(torch.from_numpy(train_split.images))
    normalize = transforms.Normalize(mean.tolist(), std.tolist())
    size = train_split.images.shape[-1]
    train_steps: list[Any] = [transforms.RandomCrop(size, padding=augment.pad)]
    if augment.flip:
        train_steps.append(transforms.RandomHorizontalFlip())
    train_steps += [transforms.ToTensor(), normalize]
    return transforms.Compose(train_steps), transforms.Compose([transforms.ToTensor(), normalize])


# --- per-epoch bookkeeping ----------------------------------------------------------------------


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class EpochLog:
    """Per epoch: images/s, test top-1 and the cores the process got (CPU time / wall time)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.rates: list[float] = []
        self.top1s: list[float] = []
        self.cores: list[float] = []
        self._log = log
        self.restart()

    def restart(self) -> None:
        self._cpu, self._wall = cpu_seconds(), time.perf_counter()

    def add(self, epoch: int, rate: float, top1: float) -> None:
        cpu, wall = cpu_seconds(), time.perf_counter()
        self.cores.append((cpu - self._cpu) / max(wall - self._wall, 1e-9))
        self._cpu, self._wall = cpu, wall
        self.rates.append(rate)
        self.top1s.append(top1)
        self._log(f"epoch {epoch}: {rate:.0f} img/s, test top-1 {top1:.2f}, {self.cores[-1]:.2f} cores")


# --- the naive loop --------------------------------------------------------------------------


def naive_train_epoch(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, int]],
    optimizer: torch.optim.Optimizer,
    theta: float,
    device: torch.device,
) -> float:
    """One tutorial-style epoch; training images per second."""
    model.train()
    seen = 0
    running_loss = 0.0
    start = time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = smoothed_cross_entropy(model(images), labels, theta)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()  # what the tutorials print every N steps: a host sync per step
        seen += labels.shape[0]
    return seen / (time.perf_counter() - start)


@torch.no_grad()
def naive_evaluate(
    model: nn.Module, loader: DataLoader[tuple[torch.Tensor, int]], device: torch.device
) -> float:
    model.eval()
    correct = total = 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        correct += (model(images).argmax(dim=1) == labels).sum().item()
        total += labels.shape[0]
    return 100.0 * correct / total


def run_naive(spec: RunSpec, config: Config, log: Callable[[str], None]) -> EpochLog:
    if spec.optim.name != "sgd":
        raise SystemExit(f"the naive loop is written for SGD, the preset uses {spec.optim.name}")
    device = resolve_device(spec.device)
    train_split, test_split = read_splits(config.dataset, Path(config.data_root))
    train_tf, test_tf = tutorial_transforms(config.dataset, train_split)
    batch = spec.batch_size
    workers = config.num_workers
    train_loader = DataLoader(
        PilImages(train_split, train_tf), batch, shuffle=True, drop_last=True, num_workers=workers
    )
    test_loader = DataLoader(PilImages(test_split, test_tf), batch, shuffle=False, num_workers=workers)
    torch.manual_seed(spec.seed)
    model = use_custom_kernels(build_model(spec.model, NUM_CLASSES, IN_CHANNELS), False).to(device)
    o = spec.optim
    optimizer = torch.optim.SGD(
        model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: lr_factor(spec.schedule, spec.epochs, epoch)
    )
    epochs = EpochLog(log)
    for epoch in range(spec.epochs):
        theta = spec.smoothing.theta if stage_at(spec.smoothing, epoch) == "smooth" else 0.0
        rate = naive_train_epoch(model, train_loader, optimizer, theta, device)
        top1 = naive_evaluate(model, test_loader, device)
        scheduler.step()
        epochs.add(epoch, rate, top1)
    return epochs


# --- the core --------------------------------------------------------------------------------


def run_core(spec: RunSpec, config: Config, log: Callable[[str], None]) -> EpochLog:
    epochs = EpochLog(log)

    def on_metrics(rows: list[MetricRow]) -> None:
        values = {f"{row.split}/{row.name}": row.value for row in rows}
        epochs.add(rows[0].epoch, values["train/images_per_s"], values["test/top1"])

    with tempfile.TemporaryDirectory(prefix="tsla-bench-") as out_dir:
        trainer = Trainer(spec, Path(out_dir), Path(config.data_root), Hooks(on_metrics=on_metrics))
        epochs.restart()  # leave data loading and model building out of the first epoch's cores
        result = trainer.fit(resume=False)
    if result.status != "completed":
        raise SystemExit(f"core run ended {result.status}")
    return epochs


# --- one variant (child process) ---------------------------------------------------------------


def steady(values: Sequence[float]) -> Sequence[float]:
    """The per-epoch values that count: all but the first (warm-up) epoch when there are more."""
    return values[1:] if len(values) > 1 else values


def steady_median(values: Sequence[float]) -> float:
    return statistics.median(steady(values))


def train_images(config: Config) -> int:
    return len(read_splits(config.dataset, Path(config.data_root))[0].labels)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_variant(variant: Variant, config: Config) -> VariantResult:
    spec = make_spec(config, variant)
    device = resolve_device(spec.device)

    def log(message: str) -> None:
        print(f"  [{variant.name}] {message}", file=sys.stderr, flush=True)

    import_rss = peak_rss_mib()
    cpu_start, start = cpu_seconds(), time.perf_counter()
    runner = run_core if variant.kind == "core" else run_naive
    epochs = runner(spec, config, log)
    wall = time.perf_counter() - start
    cpu = cpu_seconds() - cpu_start
    cuda_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return VariantResult(
        variant=variant.name,
        device=str(device),
        precision=resolved_precision(spec),
        channels_last=variant.channels_last,
        custom_kernels=variant.custom_kernels and device.type == "cpu",
        data=variant.data,
        train_images=train_images(config),
        epoch_images_per_s=epochs.rates,
        epoch_test_top1=epochs.top1s,
        epoch_cores=epochs.cores,
        images_per_s=steady_median(epochs.rates),
        test_top1=epochs.top1s[-1],
        peak_rss_mib=peak_rss_mib(),
        import_rss_mib=import_rss,
        cuda_peak_mib=cuda_peak,
        wall_s=wall,
        cpu_s=cpu,
        extra={"torch_threads": torch.get_num_threads(), "num_workers": config.num_workers},
    )


# --- the comparison (parent process) -----------------------------------------------------------


def chosen_variants(config: Config) -> list[Variant]:
    """core, the ablations that apply here, then naive.

    core-stock only on a CPU (the custom kernels run only there), core-fp32 only where "auto"
    means bf16.
    """
    if not config.ablation:
        return [CORE, NAIVE]
    spec = make_spec(config, CORE)
    middle = []
    if resolve_device(spec.device).type == "cpu":
        middle.append(CORE_STOCK)
    if resolved_precision(spec) == "bf16":
        middle.append(CORE_FP32)
    return [CORE, *middle, CORE_FP32_NCHW, NAIVE]


def spawn_variant(variant: Variant, config: Config, scratch: Path) -> VariantResult:
    result_file = scratch / f"{variant.name}.json"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        variant.name,
        "--child-config",
        json.dumps(asdict(config)),
        "--child-result",
        str(result_file),
    ]
    env = {**os.environ, CUSTOM_KERNELS_SWITCH: "1" if variant.custom_kernels else "0"}
    print(f"running {variant.name} ...", file=sys.stderr, flush=True)
    subprocess.run(command, check=True, env=env)
    return VariantResult(**json.loads(result_file.read_text()))


def format_table(results: list[VariantResult]) -> str:
    show_cuda = any(r.cuda_peak_mib is not None for r in results)
    header = [
        "variant",
        "data",
        "layout",
        "precision",
        "kernels",
        "images/s",
        "test top-1",
        "peak RSS MiB",
        "(-imports)",
        "cores",
    ]
    if show_cuda:
        header.append("CUDA peak MiB")
    rows = [header]
    for r in results:
        row = [
            r.variant,
            r.data,
            "channels_last" if r.channels_last else "NCHW",
            r.precision,
            "custom" if r.custom_kernels else "pytorch",
            f"{r.images_per_s:.0f}",
            f"{r.test_top1:.2f}",
            f"{r.peak_rss_mib:.0f}",
            f"{r.peak_rss_mib - r.import_rss_mib:.0f}",
            f"{min(steady(r.epoch_cores)):.2f}",
        ]
        if show_cuda:
            row.append("-" if r.cuda_peak_mib is None else f"{r.cuda_peak_mib:.0f}")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(w) if i >= 5 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary(results: list[VariantResult]) -> dict[str, Any]:
    """core/naive ratio, top-1 difference and the per-step factors of the ablation chain."""
    by_name = {r.variant: r for r in results}
    core, naive = by_name["core"], by_name["naive"]
    out: dict[str, Any] = {
        "speed_ratio_core_over_naive": core.images_per_s / naive.images_per_s,
        "top1_core_minus_naive": core.test_top1 - naive.test_top1,
    }
    chain = [by_name[name] for name in CHAIN if name in by_name]
    out["step_factors"] = {
        added_features(before, after): after.images_per_s / before.images_per_s
        for before, after in itertools.pairwise(chain)
    }
    return out


def added_features(before: VariantResult, after: VariantResult) -> str:
    """What `after` has that `before` lacks, in words."""
    added = []
    if before.data != after.data:
        added.append("tensor data pipeline")
    if before.channels_last != after.channels_last:
        added.append("channels_last")
    if before.precision != after.precision:
        added.append(f"{after.precision} autocast")
    if before.custom_kernels != after.custom_kernels:
        added.append("custom CPU kernels")
    return " + ".join(added) or "nothing (same settings)"


def format_summary(info: dict[str, Any]) -> str:
    lines = [
        f"speed core/naive: {info['speed_ratio_core_over_naive']:.2f}x",
        f"test top-1 core - naive: {info['top1_core_minus_naive']:+.2f} points",
    ]
    lines += [f"  {label}: x{factor:.2f}" for label, factor in info["step_factors"].items()]
    return "\n".join(lines)


def format_load(
    before: tuple[float, float, float], after: tuple[float, float, float], results: list[VariantResult]
) -> str:
    """The machine's load around the run, and a warning when something else shared the CPUs."""
    line = f"load average (1 min) before {before[0]:.2f}, after {after[0]:.2f}"
    threads = max(int(r.extra["torch_threads"]) for r in results)
    starved = [r.variant for r in results if min(steady(r.epoch_cores)) < STARVED * threads]
    if starved:
        line += (
            f"\nWARNING: {', '.join(starved)} got under {STARVED:.0%} of {threads} cores in a measured"
            " epoch (see `cores`): other processes shared the CPUs, so those images/s are low and the"
            " ratios unreliable. Rerun on an idle machine."
        )
    return line


def run_all(config: Config) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tsla-bench-") as scratch_name:
        scratch = Path(scratch_name)
        data_root = scratch / "data"
        data_root.mkdir()
        if config.limit_train is not None:
            write_subset_root(data_root, config.limit_train)
        config = Config(**{**asdict(config), "data_root": str(data_root)})
        load_before = os.getloadavg()
        started = time.perf_counter()
        results = [spawn_variant(v, config, scratch) for v in chosen_variants(config)]
        total = time.perf_counter() - started
        load_after = os.getloadavg()
    info = summary(results)
    print()
    print(format_table(results))
    print()
    print(format_summary(info))
    print(format_load(load_before, load_after, results))
    spec = make_spec(config, CORE)
    return {
        "config": {**asdict(config), "data_root": None},
        "spec": json.loads(spec.model_dump_json()),
        "host": {
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "load_avg_before": load_before,
            "load_avg_after": load_after,
        },
        "results": [asdict(r) for r in results],
        "summary": info,
        "total_wall_s": total,
    }


# --- command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per variant (default 3)")
    parser.add_argument(
        "--limit-train",
        type=int,
        help=f"train on the first N Fashion-MNIST training images (default {DEFAULT_LIMIT}); 0 = all",
    )
    parser.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of the naive loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grad-variance", action="store_true", help="keep the core's variance probe on")
    parser.add_argument("--no-ablation", dest="ablation", action="store_false", help="only core and naive")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="where to write the JSON")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="N > 1: the core on 1 vs N processes instead (bench/_processes.py)",
    )
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--child-config", help=argparse.SUPPRESS)
    parser.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.limit_train is None:
        args.limit_train = DEFAULT_LIMIT if args.dataset == "fashion-mnist" else 0
    if args.limit_train and args.dataset != "fashion-mnist":
        parser.error("--limit-train works with fashion-mnist only (pass --limit-train 0)")
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if args.processes < 1:
        parser.error("--processes must be >= 1")
    return args


def run_processes(config: Config, processes: int) -> dict[str, Any]:
    """--processes N: the core's images/s on 1 vs N processes and the collectives' share of a step."""
    from _processes import compare  # bench/_processes.py, beside this script

    with tempfile.TemporaryDirectory(prefix="tsla-bench-") as scratch_name:
        data_root = Path(scratch_name) / "data"
        data_root.mkdir()
        if config.limit_train is not None:
            write_subset_root(data_root, config.limit_train)
        spec = make_spec(config, CORE)
        return {"config": {**asdict(config), "data_root": None}, **compare(spec, processes, data_root)}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        config = Config(**json.loads(args.child_config))
        result = run_variant(VARIANTS[args.child], config)
        args.child_result.write_text(json.dumps(asdict(result)))
        return
    config = Config(
        dataset=args.dataset,
        epochs=args.epochs,
        limit_train=args.limit_train or None,
        device=args.device,
        num_workers=args.num_workers,
        seed=args.seed,
        grad_variance=args.grad_variance,
        ablation=args.ablation,
    )
    report = run_all(config) if args.processes == 1 else run_processes(config, args.processes)
    if args.processes > 1 and args.output == RESULTS_PATH:
        args.output = RESULTS_PATH.with_name("core_processes.json")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2)
    args.output.write_text(text + "\n")
    print()
    print(f"written to {args.output}:")
    print(text)


if __name__ == "__main__":
    main()

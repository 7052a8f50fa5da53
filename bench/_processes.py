"""`bench/core_throughput.py --processes N`: one process vs N (tsla_core.distributed) in one run.

(a) images/s: the core's own `train()` on the same spec with `resources.processes` 1 and N (each
    in its own subprocess, one after the other), read from the train/images_per_s rows that
    rank 0 reports for all ranks' images: the median over epochs after the first.
(b) communication per step: N ranks built here on a TCPStore + gloo/NCCL, each training the same
    Trainer's steps: `PROFILE_STEPS` under torch.profiler (rank 0's CPU time in the collective
    ops, events named *allreduce*, *all_reduce*, *broadcast*: DDP's gradient buckets and buffer
    broadcast), then `PROFILE_STEPS` timed plainly and `PROFILE_STEPS` inside DDP's no_sync (no
    gradient all-reduce). The difference of the last two per step is what communication costs a
    step, waiting included; the profiler's number is the ops' own CPU time (gloo moves the data
    on its own threads; NCCL on its own CUDA stream, overlapped with the backward pass).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.profiler import ProfilerActivity, profile

from tsla_core.batches import epoch_generator
from tsla_core.distributed import RankGroup, rank_device
from tsla_core.loop import Hooks, Trainer, train
from tsla_spec.records import MetricRow
from tsla_spec.spec import RunSpec

PROFILE_STEPS = 30
COLLECTIVES = ("allreduce", "all_reduce", "broadcast")


def with_processes(spec: RunSpec, processes: int) -> RunSpec:
    return spec.model_copy(update={"resources": spec.resources.model_copy(update={"processes": processes})})


def images_per_s(spec: RunSpec, data_root: Path) -> dict[str, Any]:
    """train() of `spec` in this process (the ranks are its children): images/s per epoch."""
    rows: list[MetricRow] = []
    with tempfile.TemporaryDirectory(prefix="tsla-bench-processes-") as out:
        started = time.perf_counter()
        train(spec, Path(out), data_root, Hooks(on_metrics=rows.extend), resume=False)
        wall = time.perf_counter() - started
    rates = [r.value for r in rows if r.split == "train" and r.name == "images_per_s"]
    top1 = [r.value for r in rows if r.split == "test" and r.name == "top1"]
    steady = rates[1:] if len(rates) > 1 else rates
    return {
        "epoch_images_per_s": rates,
        "images_per_s": statistics.median(steady),
        "test_top1": top1[-1],
        "wall_s": wall,
    }


def profile_rank(rank: int, world: int, port: int, spec_json: str, data_root: str, result: str) -> None:
    """One rank of (b); rank 0 writes the result."""
    spec = RunSpec.model_validate_json(spec_json)
    device = rank_device(spec.device, rank)
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    store = dist.TCPStore("127.0.0.1", port, world + 1, is_master=False)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    group = RankGroup(rank, world, store)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(spec, Path(out), Path(data_root), Hooks(), None, None, group, device)
        order = epoch_generator(spec.seed, 0)
        batches = trainer.data.train.batches(spec.batch_size, order, spec.channels_last, group.shard)
        steps = [next(batches) for _ in range(PROFILE_STEPS + 3)]
        timed_steps(trainer, steps[:3], device, sync=True)  # warm-up: DDP's buckets, the kernels
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            timed_steps(trainer, steps[3:], device, sync=True)
        synced = timed_steps(trainer, steps[3:], device, sync=True)
        unsynced = timed_steps(trainer, steps[3:], device, sync=False)
    if rank == 0:
        events = [e for e in prof.key_averages() if any(name in e.key.lower() for name in COLLECTIVES)]
        report = {
            "steps": PROFILE_STEPS,
            "step_ms": 1000 * synced / PROFILE_STEPS,
            "no_sync_step_ms": 1000 * unsynced / PROFILE_STEPS,
            "collective_cpu_ms_per_step": sum(e.self_cpu_time_total for e in events) / 1000 / PROFILE_STEPS,
            "collectives": sorted({e.key for e in events}),
        }
        Path(result).write_text(json.dumps(report))
    dist.destroy_process_group()


def timed_steps(trainer: Trainer, steps: list[Any], device: torch.device, sync: bool) -> float:
    """Seconds for these training steps, with DDP's gradient all-reduce or inside its no_sync."""
    started = time.perf_counter()
    for images, labels in steps:
        context = nullcontext() if sync else trainer.train_model.no_sync()  # type: ignore[operator]
        with context:
            trainer._train_step(images, labels, "smooth", probe=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def communication(spec: RunSpec, data_root: Path) -> dict[str, Any]:
    world = spec.resources.processes
    store = dist.TCPStore("127.0.0.1", 0, world + 1, is_master=True, wait_for_workers=False)
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "profile.json"
        args = (world, store.port, spec.model_dump_json(), str(data_root), str(result))
        mp.spawn(profile_rank, args=args, nprocs=world, join=True)
        return dict(json.loads(result.read_text()))


def compare(spec: RunSpec, processes: int, data_root: Path) -> dict[str, Any]:
    """(a) and (b), printed as they come; the report."""
    one = images_per_s(with_processes(spec, 1), data_root)
    print(f"1 process: {one['images_per_s']:.0f} images/s, test top-1 {one['test_top1']:.2f}")
    many = images_per_s(with_processes(spec, processes), data_root)
    print(f"{processes} processes: {many['images_per_s']:.0f} images/s, test top-1 {many['test_top1']:.2f}")
    comm = communication(with_processes(spec, processes), data_root)
    overhead = comm["step_ms"] - comm["no_sync_step_ms"]
    print(
        f"ratio {processes} / 1 processes: {many['images_per_s'] / one['images_per_s']:.2f}; per step "
        f"(batch {spec.batch_size}, {processes} ranks): {comm['step_ms']:.1f} ms with DDP's all-reduce, "
        f"{comm['no_sync_step_ms']:.1f} ms without: communication {overhead:.1f} ms "
        f"({overhead / comm['step_ms']:.0%}); the collective ops' own CPU time "
        f"{comm['collective_cpu_ms_per_step']:.2f} ms ({', '.join(comm['collectives'])})"
    )
    return {
        "processes": processes,
        "one": one,
        "many": many,
        "communication": comm,
        "cpu_count": os.cpu_count(),
    }

"""Multi-process jobs (`resources.processes: N`): N rank processes on one machine, one job.

The caller's process (the worker, or `python -m tsla_core`) launches the ranks and stays their
parent (`launch`); the ranks train with DistributedDataParallel (gloo on CPU, NCCL on CUDA, one
GPU per rank):

- Rendezvous: the parent opens the TCPStore on a port the kernel picks (port 0) and holds it for
  the job's life, so two jobs on one machine never meet on a fixed port (torchrun's 29500).
- Data: each epoch's seeded order is the one-process run's; each global batch of `batch_size` is
  cut into N consecutive shards of batch_size / N, one per rank, so the sequence of global batches
  and updates is the one-process run's. Batch norm normalises per rank (over batch_size / N):
  PyTorch's SyncBatchNorm runs on CUDA only, and on CPU ranks must not differ by device, so
  per-rank statistics everywhere; this is why N processes do not match 1 bit for bit.
- Reports: rank 0 alone evaluates, reports metrics and logs and writes checkpoints. Each of its
  Hooks calls travels to the parent over a socket and waits for the answer, so the parent's hooks
  (the worker persisting rows, uploading checkpoints) run as in a one-process run, and an error
  they raise ends the run in rank 0 as it would there.
- Stop: the parent's `should_stop` sets a key in the store; rank 0 reads it and every step all
  ranks agree by one all-reduce of one number, so all stop after the same step and rank 0 writes
  the partial checkpoint. Reading that number is a host sync per step, on CUDA too.
- Failure: a rank that exits with an error or is killed ends the whole group (each rank is the
  leader of its own process group, killed with it) and the run raises `RankLostError`; each rank
  asks the kernel for SIGKILL when its parent dies (PR_SET_PDEATHSIG), so a killed worker leaves
  no rank behind.
- Gradient variance (split probe): on a probe step each rank keeps its local gradient (DDP's
  all-reduce is skipped for that step, `no_sync`), and the ranks' independent means g_r of
  b = batch_size / N examples give tr(Cov) = b / (N - 1) * sum_r ||g_r - g||^2 with g their mean;
  then the averaged g is the step's gradient, as DDP's would be. With N = 2 this is the split
  probe's formula with the halves on different ranks, each normalised by its own batch norm.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tsla_core.batches import Shard

HOST = "127.0.0.1"
STOP_KEY = "stop"
POLL_S = 0.2  # how often the parent looks at its ranks and its stop flag
COLLECTIVE_TIMEOUT = timedelta(minutes=30)  # a rank waiting this long on the others gives up
PR_SET_PDEATHSIG = 1
LOST_RANK_WAIT_S = 2.0  # after rank 0's error, how long to look for a rank that died first
REPORTED_ERROR = 3  # rank 0's exit status after it sent its error to the parent


class RankLostError(RuntimeError):
    """A rank of a multi-process run exited with an error or was killed; the group was ended."""


@dataclass(frozen=True)
class RankGroup:
    """This process's place in an initialised process group, and the collectives training needs."""

    rank: int
    world: int
    store: dist.Store

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world)

    @property
    def is_reporter(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, device: torch.device) -> DistributedDataParallel:
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def agree_to_stop(self, device: torch.device) -> bool:
        """True on every rank when rank 0 saw the parent's stop flag (one all-reduce per call)."""
        flag = torch.zeros((), device=device, dtype=torch.int32)
        if self.is_reporter and self.store.check([STOP_KEY]):
            flag.fill_(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def average_gradients(
        self, params: list[nn.Parameter], per_rank: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace each rank's local .grad by the ranks' mean; (tr(Cov) estimate, ||mean||^2)."""
        local = [p.grad for p in params if p.grad is not None]
        mean = [g.clone() for g in local]
        for g in mean:
            self.sum(g).div_(self.world)
        pairs = list(zip(local, mean, strict=True))
        deviation = torch.stack([(g.float() - m.float()).pow(2).sum() for g, m in pairs])
        spread = self.sum(deviation.sum())
        for g, m in pairs:
            g.copy_(m)
        norm_sq = torch.stack([m.float().pow(2).sum() for m in mean]).sum()
        return spread * per_rank / (self.world - 1), norm_sq

    def no_sync(self, model: nn.Module, probing: bool) -> AbstractContextManager[Any]:
        """DDP's no_sync on probe steps (forward and backward inside): the local gradients stay."""
        if probing and isinstance(model, DistributedDataParallel):
            return model.no_sync()
        return nullcontext()


# --- the parent ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankJob:
    """What each rank needs to build its Trainer: the run's arguments, as plain values."""

    spec_json: str
    out_dir: str
    data_root: str
    teacher_path: str | None
    uploaded: str | None
    resume: bool
    port: int
    world: int


def check_devices(spec_device: str, world: int) -> None:
    """RuntimeError when the ranks would need more GPUs than this machine has (one each)."""
    if rank_device(spec_device, 0).type == "cuda" and torch.cuda.device_count() < world:
        raise RuntimeError(
            f"resources.processes {world} needs {world} GPUs (one per process); "
            f"this machine has {torch.cuda.device_count()}"
        )


def launch(job: RankJob, hooks: Any) -> Any:
    """Run the ranks of `job` to their end; rank 0's TrainResult. `hooks` (tsla_core.loop.Hooks)
    are called here, in the caller's thread, as rank 0 reports."""
    check_devices(json.loads(job.spec_json)["device"], job.world)
    store = dist.TCPStore(HOST, 0, job.world + 1, is_master=True, wait_for_workers=False)
    job = dataclasses.replace(job, port=store.port)
    parent_end, child_end = socket.socketpair()
    ranks: list[subprocess.Popen[bytes]] = []
    try:
        for rank in range(job.world):
            ranks.append(start_rank(job, rank, child_end.fileno() if rank == 0 else None))
        child_end.close()
        return supervise(ranks, Connection(parent_end.detach()), store, hooks)
    finally:
        end_group(ranks)


def start_rank(job: RankJob, rank: int, report_fd: int | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TSLA_RANK_JOB": pickle.dumps(job).hex(), "TSLA_RANK": str(rank)}
    env["TSLA_PARENT_PID"] = str(os.getpid())
    if report_fd is not None:
        env["TSLA_REPORT_FD"] = str(report_fd)
    return subprocess.Popen(
        [sys.executable, "-m", "tsla_core.distributed"],
        env=env,
        pass_fds=() if report_fd is None else (report_fd,),
        start_new_session=True,  # the rank leads its own process group: ended with it
    )


def supervise(
    ranks: list[subprocess.Popen[bytes]], reports: Connection, store: dist.Store, hooks: Any
) -> Any:
    """Answer rank 0's hook calls, pass a stop request on, and watch every rank until rank 0's
    result arrived and all exited; RankLostError when one fails first."""
    result: Any = None
    while True:
        if result is None and reports.poll(POLL_S):
            try:
                kind, payload = reports.recv()
            except EOFError:  # rank 0 is gone without a word
                raise lost_rank(ranks, wait_s=LOST_RANK_WAIT_S) or no_result(ranks) from None
            if kind == "call":
                reports.send(answer(hooks, *payload))
            elif kind in ("result", "error"):
                result = (kind, payload)
        if hooks.should_stop is not None and hooks.should_stop():
            store.set(STOP_KEY, "1")
        if result is not None and result[0] == "error":
            error = result[1]
            # A collective that failed in rank 0 is the echo of another rank's death: name that one.
            # Rank 0's own error comes first, though the other ranks then fail on its absence.
            if is_collective_failure(error):
                raise lost_rank(ranks, wait_s=LOST_RANK_WAIT_S) or error
            raise error
        codes = [rank.poll() for rank in ranks]
        if (lost := lost_rank(ranks, wait_s=0)) is not None:
            raise lost
        if result is not None and all(code == 0 for code in codes):
            return result[1]
        if result is None and codes[0] is not None:
            raise no_result(ranks)
        if result is not None:
            time.sleep(POLL_S / 4)


def lost_rank(ranks: list[subprocess.Popen[bytes]], wait_s: float) -> RankLostError | None:
    """The first rank other than a clean exit, looking for up to `wait_s`; None if none failed."""
    deadline = time.monotonic() + wait_s
    while True:
        for index, rank in enumerate(ranks):
            code = rank.poll()
            if code not in (None, 0) and not (index == 0 and code == REPORTED_ERROR):
                reason = f"rank {index} of {len(ranks)} {describe_exit(code)}; the group was ended"
                return RankLostError(reason)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def is_collective_failure(error: BaseException) -> bool:
    """A torch.distributed error, or gloo's and NCCL's RuntimeErrors, which name their library."""
    text = str(error).lower()
    return isinstance(error, dist.DistError) or "gloo" in text or "nccl" in text


def no_result(ranks: list[subprocess.Popen[bytes]]) -> RankLostError:
    return RankLostError(f"rank 0 of {len(ranks)} ended without a result; the group was ended")


def answer(hooks: Any, name: str, args: tuple[Any, ...]) -> tuple[str, Any]:
    """Call hooks.<name>(*args) for rank 0: ("ok", value) or ("error", the exception)."""
    hook = getattr(hooks, name)
    if hook is None:  # the caller does not observe this
        return "ok", None
    try:
        return "ok", hook(*args)
    except Exception as error:
        return "error", error


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def end_group(ranks: list[subprocess.Popen[bytes]]) -> None:
    """Kill every rank's process group that is still there and reap the ranks."""
    for rank in ranks:
        if rank.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(rank.pid, signal.SIGKILL)
    for rank in ranks:
        rank.wait()


# --- a rank --------------------------------------------------------------------------------------


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies (Linux); exit now if it already has."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def rank_device(spec_device: str, rank: int) -> torch.device:
    """CUDA: one GPU per rank (cuda:rank); else the CPU."""
    cuda = spec_device.startswith("cuda") or (spec_device == "auto" and torch.cuda.is_available())
    return torch.device("cuda", rank) if cuda else torch.device("cpu")


def join_group(job: RankJob, rank: int, device: torch.device) -> RankGroup:
    store = dist.TCPStore(HOST, job.port, job.world + 1, is_master=False, timeout=COLLECTIVE_TIMEOUT)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=store, rank=rank, world_size=job.world, timeout=COLLECTIVE_TIMEOUT)
    return RankGroup(rank, job.world, store)


class ReportingHooks:
    """Rank 0's Hooks: every call goes to the parent and waits for its answer."""

    def __init__(self, reports: Connection) -> None:
        self.reports = reports

    def call(self, name: str) -> Callable[..., Any]:
        def forward(*args: Any) -> Any:
            self.reports.send(("call", (name, args)))
            kind, value = self.reports.recv()
            if kind == "error":
                raise value
            return value

        return forward


def run_rank() -> None:
    """A rank's main: join the group, train, send rank 0's result (or its error) to the parent."""
    from tsla_core.loop import Hooks, Trainer  # the loop imports this module

    job: RankJob = pickle.loads(bytes.fromhex(os.environ["TSLA_RANK_JOB"]))
    rank = int(os.environ["TSLA_RANK"])
    die_with_parent(int(os.environ["TSLA_PARENT_PID"]))
    from tsla_spec.spec import RunSpec

    spec = RunSpec.model_validate_json(job.spec_json)
    device = rank_device(spec.device, rank)
    if device.type == "cpu":  # the machine's cores shared out: N ranks of all cores each thrash
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // job.world))
    group = join_group(job, rank, device)
    reports = Connection(int(os.environ["TSLA_REPORT_FD"])) if rank == 0 else None
    hooks = Hooks()
    if reports is not None:
        proxy = ReportingHooks(reports)
        names = ("on_metrics", "on_checkpoint", "on_log", "on_skipped_checkpoint", "on_start")
        hooks = Hooks(**{name: proxy.call(name) for name in names})
    teacher = None if job.teacher_path is None else Path(job.teacher_path)
    uploaded = None if job.uploaded is None else Path(job.uploaded)
    try:
        out_dir, data_root = Path(job.out_dir), Path(job.data_root)
        trainer = Trainer(spec, out_dir, data_root, hooks, teacher, uploaded, group, device)
        result = trainer.fit(resume=job.resume)
    except Exception as error:
        if reports is None:
            raise
        reports.send(("error", error))
        os._exit(REPORTED_ERROR)  # the parent raises the error and ends the other ranks
    if reports is not None:
        reports.send(("result", result))
    dist.destroy_process_group()


if __name__ == "__main__":
    run_rank()

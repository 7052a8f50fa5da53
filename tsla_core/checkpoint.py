"""Full-state checkpoints, written atomically and verified by sha256 before they are loaded.

Each checkpoint is two files in one folder: `epoch-0007.pt` (torch.save of plain tensors and
containers, so it loads with `weights_only=True`) and `epoch-0007.json` (its sha256, size,
epoch and metrics). The .json is written after the .pt, so a checkpoint is listed only once
its data is complete on disk.

Storage errors (a full disk, a file size limit, a flaky network mount) are retried a few times
with backoff, and then raised as `CheckpointStorageError` with a one-line reason; a failed write
never leaves its temp file behind, because on a full disk that file keeps the disk full.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from tsla_spec.hashing import sha256_file
from tsla_spec.records import CheckpointRecord
from tsla_spec.vocabulary import VAL_TOP1

__all__ = [
    "CheckpointError",
    "CheckpointRecord",
    "CheckpointStorageError",
    "CheckpointStore",
    "SkippedCheckpoint",
    "load_verified",
    "retry_storage",
]

FORMAT_VERSION = 1
T = TypeVar("T")

# Pauses before each retry of a failed storage write: a few seconds in all, so a briefly full or
# flaky volume does not fail the run, and a really full one fails it soon with the reason.
STORAGE_RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0)


class CheckpointError(Exception):
    """A checkpoint that is missing, corrupt or not one of ours; never half-loaded."""


class CheckpointStorageError(Exception):
    """Checkpoint storage failed after retries (full, a size limit, I/O); the message says why."""


@dataclass(frozen=True)
class SkippedCheckpoint:
    """A checkpoint that resume passed over because it does not verify."""

    record: CheckpointRecord
    reason: str


def storage_reason(error: OSError, what: str) -> str:
    """One line for a storage OSError: "checkpoint storage full: [Errno 28] No space left on
    device writing epoch-0003.pt" (the temp file's path, which `str(error)` adds, says nothing)."""
    kinds = {errno.ENOSPC: "full", errno.EDQUOT: "over quota", errno.EFBIG: "file size limit reached"}
    kind = kinds.get(error.errno or 0, "failed")
    detail = f"[Errno {error.errno}] {error.strerror}" if error.errno is not None else str(error)
    return f"checkpoint storage {kind}: {detail} {what}"


def retry_storage(
    action: Callable[[], T],
    what: str,
    delays: Sequence[float] | None = None,
    log: Callable[[str], None] | None = None,
) -> T:
    """Run a storage action, retrying an OSError after each of `delays` (STORAGE_RETRY_DELAYS);
    then CheckpointStorageError with the reason. `what` ends it: "writing epoch-0003.pt"."""
    delays = STORAGE_RETRY_DELAYS if delays is None else delays
    for number, delay in enumerate(delays, start=1):
        try:
            return action()
        except OSError as error:
            if log is not None:
                log(f"{storage_reason(error, what)}; retry {number} of {len(delays)} in {delay:g} s")
        time.sleep(delay)
    try:
        return action()
    except OSError as error:
        raise CheckpointStorageError(storage_reason(error, what)) from error


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file, fsync, rename over `path`, fsync the folder: all or nothing. The temp
    file is removed when anything fails (ENOSPC included): left behind it would keep a disk full."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def load_verified(path: Path, sha256: str | None = None) -> dict[str, Any]:
    """Load a checkpoint file after checking its sha256 (when known); CheckpointError if bad."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise CheckpointError(f"checkpoint {path} is corrupt: sha256 {actual} != recorded {sha256}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged or foreign file
        raise CheckpointError(f"checkpoint {path} cannot be read: {error}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or "model" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of this project (format {FORMAT_VERSION})")
    return state


class CheckpointStore:
    """The checkpoints of one run, in one folder."""

    def __init__(self, folder: Path, keep_last: int = 3, log: Callable[[str], None] | None = None) -> None:
        self.folder = folder
        self.keep_last = keep_last
        self.log = log
        self.retry_delays: Sequence[float] | None = None  # None: STORAGE_RETRY_DELAYS

    def remove_temp_files(self) -> list[str]:
        """Remove the `.*.tmp` files a crashed writer left (a run opening the folder calls this:
        no other writer is active then); the names removed."""
        if not self.folder.is_dir():
            return []
        removed = []
        for tmp in sorted(self.folder.glob(".*.tmp")):
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
        return removed

    def save(
        self, state: dict[str, Any], epoch: int, partial: bool, metrics: dict[str, float]
    ) -> CheckpointRecord:
        """Write the checkpoint (retrying storage errors); CheckpointStorageError when it cannot."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch:04d}" + ("-partial" if partial else "")
        buffer = io.BytesIO()
        torch.save({"format": FORMAT_VERSION, **state}, buffer)
        data = buffer.getvalue()
        record = CheckpointRecord(
            name=name,
            path=self.folder / f"{name}.pt",
            epoch=epoch,
            partial=partial,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            metrics=metrics,
        )
        meta = {k: v for k, v in asdict(record).items() if k != "path"}
        meta_path = self.folder / f"{name}.json"
        self._write(record.path, data)  # when this fails, nothing on disk has changed
        try:
            self._write(meta_path, json.dumps(meta, indent=1).encode())
        except CheckpointStorageError:
            # The new .pt has no .json of its own (an older one would name other bytes): it would
            # never be listed, only take space.
            record.path.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            raise
        self._prune()
        return record

    def _write(self, path: Path, data: bytes) -> None:
        retry_storage(lambda: write_atomic(path, data), f"writing {path.name}", self.retry_delays, self.log)

    def records(self) -> list[CheckpointRecord]:
        """Listed checkpoints, oldest first; a missing or unreadable .json hides its .pt."""
        found = []
        for meta_path in sorted(self.folder.glob("epoch-*.json")):
            try:
                meta = json.loads(meta_path.read_text())
                found.append(CheckpointRecord(path=meta_path.with_suffix(".pt"), **meta))
            except (OSError, ValueError, TypeError):
                continue
        return sorted(found, key=lambda r: (r.epoch, not r.partial))

    def best(self) -> CheckpointRecord | None:
        """The complete checkpoint with the highest validation top-1 (the latest on ties). Never
        chosen by test metrics: without a validation split there is nothing to select on, and the
        latest complete checkpoint is the best one."""
        complete = [r for r in self.records() if not r.partial]
        if not complete:
            return None
        if not any(VAL_TOP1 in r.metrics for r in complete):
            return complete[-1]
        return max(reversed(complete), key=lambda r: finite_or_lowest(r.metrics.get(VAL_TOP1)))

    def load(self, record: CheckpointRecord) -> dict[str, Any]:
        return load_verified(record.path, record.sha256)

    def newest_resumable(
        self,
    ) -> tuple[CheckpointRecord, dict[str, Any], list[SkippedCheckpoint]] | None:
        """The newest complete checkpoint that verifies, falling back to older ones.

        Returns (record, state, skipped): skipped are the newer ones that did not verify.
        """
        skipped: list[SkippedCheckpoint] = []
        for record in reversed([r for r in self.records() if not r.partial]):
            try:
                return record, self.load(record), skipped
            except CheckpointError as error:
                skipped.append(SkippedCheckpoint(record, str(error)))
        return None

    def _prune(self) -> None:
        """Keep the newest `keep_last` complete checkpoints, the best one and the newest partial."""
        records = self.records()
        complete = [r for r in records if not r.partial]
        keep = {r.name for r in complete[-self.keep_last :]}
        best = self.best()
        if best is not None:
            keep.add(best.name)
        if records and records[-1].partial:
            keep.add(records[-1].name)
        for record in records:
            if record.name not in keep:
                (self.folder / f"{record.name}.json").unlink(missing_ok=True)
                record.path.unlink(missing_ok=True)


def finite_or_lowest(value: float | None) -> float:
    """A metric for ranking: missing or non-finite (a diverged epoch) ranks last."""
    return value if value is not None and math.isfinite(value) else float("-inf")

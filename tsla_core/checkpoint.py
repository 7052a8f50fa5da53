"""Full-state checkpoints, written atomically and verified by sha256 before they are loaded.

Each checkpoint is two files in one folder: `epoch-0007.pt` (torch.save of plain tensors and
containers, so it loads with `weights_only=True`) and `epoch-0007.json` (its sha256, size,
epoch and metrics). The .json is written after the .pt, so a checkpoint is listed only once
its data is complete on disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tsla_spec.hashing import sha256_file
from tsla_spec.records import CheckpointRecord

__all__ = ["CheckpointError", "CheckpointRecord", "CheckpointStore", "load_verified"]

FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that is missing, corrupt or not one of ours; never half-loaded."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file, fsync, rename over `path`, fsync the folder: all or nothing."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
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

    def __init__(self, folder: Path, keep_last: int = 3) -> None:
        self.folder = folder
        self.keep_last = keep_last

    def save(
        self, state: dict[str, Any], epoch: int, partial: bool, metrics: dict[str, float]
    ) -> CheckpointRecord:
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
        write_atomic(record.path, data)
        meta = {k: v for k, v in asdict(record).items() if k != "path"}
        write_atomic(self.folder / f"{name}.json", json.dumps(meta, indent=1).encode())
        self._prune()
        return record

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
        """The complete checkpoint with the highest test top-1 (the latest on ties)."""
        complete = [r for r in self.records() if not r.partial]
        if not complete:
            return None
        return max(reversed(complete), key=lambda r: r.metrics.get("test/top1", float("-inf")))

    def load(self, record: CheckpointRecord) -> dict[str, Any]:
        return load_verified(record.path, record.sha256)

    def newest_resumable(self) -> tuple[CheckpointRecord, dict[str, Any], list[str]] | None:
        """The newest complete checkpoint that verifies, falling back to older ones.

        Returns (record, state, problems) where problems describe the checkpoints skipped.
        """
        problems: list[str] = []
        for record in reversed([r for r in self.records() if not r.partial]):
            try:
                return record, self.load(record), problems
            except CheckpointError as error:
                problems.append(str(error))
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

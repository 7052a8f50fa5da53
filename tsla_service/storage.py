"""Checkpoint storage that every worker and the API can reach, through fsspec.

A local path or `file://` URL (the embedded default, or a volume shared by containers) is used
in place: the worker trains straight into it. Any other fsspec URL (`s3://bucket/prefix`) is
object storage: the worker trains into local scratch space and uploads each checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


class Storage:
    def __init__(self, url: str) -> None:
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def key(self, job_id: str, filename: str) -> str:
        return f"{job_id}/{filename}"

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def job_folder(self, job_id: str) -> Path:
        """The folder a local store keeps a job's checkpoints in (the core writes there)."""
        if not self.is_local:
            raise ValueError("remote storage has no local job folder")
        return Path(self.root) / job_id

    def put_file(self, local: Path, key: str) -> None:
        if self.is_local and Path(self._path(key)) == local:
            return
        if self.is_local:  # object stores have no folders to make
            self.fs.makedirs(self.fs._parent(self._path(key)), exist_ok=True)
        self.fs.put_file(str(local), self._path(key))

    def get_file(self, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get_file(self._path(key), str(local))

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def open(self, key: str) -> IO[Any]:
        return self.fs.open(self._path(key), "rb")

    def delete(self, key: str) -> None:
        if self.fs.exists(self._path(key)):
            self.fs.rm_file(self._path(key))

    def delete_folder(self, prefix: str) -> None:
        """Delete every stored file under `prefix` (a folder key such as `datasets/<sha256>`)."""
        if self.fs.exists(self._path(prefix)):
            self.fs.rm(self._path(prefix), recursive=True)

    def list(self, job_id: str) -> list[str]:
        """Keys of one job's stored files."""
        folder = self._path(job_id)
        if not self.fs.exists(folder):
            return []
        return sorted(f"{job_id}/{Path(p).name}" for p in self.fs.ls(folder, detail=False))

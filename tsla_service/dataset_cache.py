"""The worker's local copies of uploaded data sets, fetched from storage by content hash.

A job names its uploaded data by sha256 (tsla_spec/uploads.py). Before training, the worker asks
`DatasetCache.local(sha256)` for a folder in the canonical layout on its own disk, which the core
then memory-maps. A copy is only handed out verified: every file's size and sha256 against the
manifest, and the content hash (tsla_core.provenance.arrays_sha256, recomputed here without
numpy or torch) against the folder's name. Jobs on one machine share one copy; a lock file per
hash serialises them across processes, so a set is downloaded once however many jobs start.

Re-hashing gigabytes at every job start would be slow, so a verified folder keeps a `.verified`
marker holding each file's size and mtime, and while those are unchanged the hashes are trusted.
A truncated, replaced or rewritten file changes them and is fetched again. The trade-off: bytes
overwritten in place with the mtime then set back (deliberate, not a failed disk or download)
go unnoticed. Deleting the marker forces a full check.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from tsla_service.storage import STORAGE_ERRORS, Storage
from tsla_spec.uploads import ARRAY_FILES, MANIFEST, SHA256_PATTERN, DatasetManifest

log = logging.getLogger(__name__)

MARKER = ".verified"
CHUNK_BYTES = 1 << 20
NPY_MAGIC = b"\x93NUMPY"


class DatasetFetchError(Exception):
    """An uploaded data set cannot be had, verified, on this machine; the message says why."""


def dataset_key(sha256: str, filename: str) -> str:
    """Where the server's ingestion stores a data set's files in checkpoint storage."""
    return f"datasets/{sha256}/{filename}"


class DatasetCache:
    def __init__(self, storage: Storage, root: Path) -> None:
        self.storage = storage
        self.root = root  # <TSLA_WORK_DIR>/datasets

    def local(self, sha256: str) -> Path:
        """The local folder holding data set `sha256`, verified; fetched from storage first when
        this machine has no intact copy. DatasetFetchError says why it cannot be had."""
        if not SHA256_PATTERN.fullmatch(sha256):
            raise DatasetFetchError(f"{sha256!r} is not a sha256 content hash")
        self.root.mkdir(parents=True, exist_ok=True)
        folder = self.root / sha256
        with self._locked(sha256):
            if folder.exists():
                try:
                    check_copy(folder, sha256)
                    return folder
                except DatasetFetchError as problem:
                    log.warning("cached data set %s is damaged (%s); fetching it again", sha256, problem)
            self._fetch(sha256, folder)
        return folder

    @contextmanager
    def _locked(self, sha256: str) -> Iterator[None]:
        """Hold root/<sha256>.lock: one process at a time checks or fetches this data set."""
        descriptor = os.open(self.root / f"{sha256}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # which releases the lock

    def _fetch(self, sha256: str, folder: Path) -> None:
        """Download into a temporary folder beside `folder`, verify it, then rename it into place."""
        for stale in self.root.glob(f".tmp-{sha256}-*"):  # left by a process that died mid-fetch
            shutil.rmtree(stale, ignore_errors=True)
        temp = Path(tempfile.mkdtemp(prefix=f".tmp-{sha256}-", dir=self.root))
        try:
            self._download(sha256, temp)
            try:
                check_copy(temp, sha256)
            except DatasetFetchError as problem:
                raise DatasetFetchError(f"data set {sha256} in storage does not verify: {problem}") from None
            if folder.exists():
                shutil.rmtree(folder)  # the damaged copy: no job is handed it while we hold the lock
            temp.rename(folder)
        finally:
            shutil.rmtree(temp, ignore_errors=True)  # gone already when the rename succeeded

    def _download(self, sha256: str, temp: Path) -> None:
        manifest_key = dataset_key(sha256, MANIFEST)
        try:
            if not self.storage.exists(manifest_key):
                raise DatasetFetchError(f"data set {sha256} is not in storage (no {manifest_key})")
            for name in (MANIFEST, *ARRAY_FILES):
                self.storage.get_file(dataset_key(sha256, name), temp / name)
        except STORAGE_ERRORS as exc:
            raise DatasetFetchError(f"downloading data set {sha256} failed: {exc}") from exc


def check_copy(folder: Path, sha256: str) -> None:
    """Raise DatasetFetchError unless `folder` holds data set `sha256`, complete and intact."""
    manifest = read_manifest(folder / MANIFEST)
    if manifest.sha256 != sha256:
        raise DatasetFetchError(f"{MANIFEST} describes data set {manifest.sha256}, not {sha256}")
    if sorted(manifest.files) != sorted(ARRAY_FILES):
        raise DatasetFetchError(f"{MANIFEST} lists {sorted(manifest.files)} (expected {list(ARRAY_FILES)})")
    for name in ARRAY_FILES:
        path, expected = folder / name, manifest.files[name].bytes
        if not path.is_file():
            raise DatasetFetchError(f"{name} is missing")
        if path.stat().st_size != expected:
            raise DatasetFetchError(f"{name} has {path.stat().st_size:,} bytes (expected {expected:,})")
    if read_marker(folder) == file_stamps(folder):
        return
    file_hashes, content = hash_arrays(folder)
    for name, digest in file_hashes.items():
        if digest != manifest.files[name].sha256:
            raise DatasetFetchError(f"{name} has sha256 {digest} (expected {manifest.files[name].sha256})")
    if content != sha256:
        raise DatasetFetchError(f"the arrays' content hash is {content} (expected {sha256})")
    (folder / MARKER).write_text(json.dumps(file_stamps(folder)))


def read_manifest(path: Path) -> DatasetManifest:
    try:
        return DatasetManifest.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise DatasetFetchError(f"{MANIFEST} cannot be read ({exc.strerror})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise DatasetFetchError(f"{MANIFEST} is not a valid manifest ({where}: {first['msg']})") from None


def file_stamps(folder: Path) -> dict[str, list[int]]:
    """[size, mtime in ns] of the manifest and each array: what the marker compares."""
    stats = {name: (folder / name).stat() for name in (MANIFEST, *ARRAY_FILES)}
    return {name: [stat.st_size, stat.st_mtime_ns] for name, stat in stats.items()}


def read_marker(folder: Path) -> object:
    """The stamps recorded when `folder` was last verified; None when there are none to trust."""
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):  # absent, or half-written by a process that died
        return None


def hash_arrays(folder: Path) -> tuple[dict[str, str], str]:
    """({array file: its sha256}, the content hash), reading each file once. The content hash is
    arrays_sha256's: per array its dtype string, shape tuple and C-order bytes, in ARRAY_FILES
    order; the data of a C-order .npy file is exactly those bytes."""
    content = hashlib.sha256()
    file_hashes = {}
    for name in ARRAY_FILES:
        whole = hashlib.sha256()
        with (folder / name).open("rb") as handle:
            header, described = read_npy_header(handle, name)
            whole.update(header)
            content.update(described.encode())
            while chunk := handle.read(CHUNK_BYTES):
                whole.update(chunk)
                content.update(chunk)
        file_hashes[name] = whole.hexdigest()
    return file_hashes, content.hexdigest()


def read_npy_header(handle: BinaryIO, name: str) -> tuple[bytes, str]:
    """(the header's bytes, the array's dtype and shape as arrays_sha256 writes them, e.g.
    "|u1(10, 1, 8, 8)") of an .npy file, leaving `handle` at the first byte of data."""
    prelude = handle.read(8)  # magic, then the format's major and minor version
    if len(prelude) < 8 or not prelude.startswith(NPY_MAGIC) or prelude[6] not in (1, 2, 3):
        raise DatasetFetchError(f"{name} is not an .npy file")
    length = handle.read(2 if prelude[6] == 1 else 4)
    text = handle.read(int.from_bytes(length, "little"))
    try:
        header = ast.literal_eval(text.decode("utf-8" if prelude[6] == 3 else "latin-1"))
        descr, fortran_order, shape = header["descr"], header["fortran_order"], header["shape"]
    except (ValueError, SyntaxError, TypeError, KeyError) as exc:
        raise DatasetFetchError(f"{name} has an unreadable .npy header ({exc!r})") from None
    if not (isinstance(descr, str) and isinstance(shape, tuple) and all(isinstance(n, int) for n in shape)):
        raise DatasetFetchError(f"{name} holds no plain array (dtype {descr!r}, shape {shape!r})")
    if fortran_order:
        raise DatasetFetchError(f"{name} is stored in Fortran order (expected C order)")
    return prelude + length + text, f"{descr}{shape}"

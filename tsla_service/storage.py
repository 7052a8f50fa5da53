"""Checkpoint storage that every worker and the API can reach, through fsspec.

A local path or `file://` URL (the embedded default, or a volume shared by containers) is used
in place: the worker trains straight into it. Any other fsspec URL (`s3://bucket/prefix`) is
object storage: the worker trains into local scratch space and uploads each checkpoint (in parts
of `storage_part_bytes`, so a large one is a multipart upload); reads fetch only the bytes asked
for, so a Range download transfers its range and a whole one is streamed chunk by chunk.

`storage_for(settings)` is the one place a Storage is built from the settings. While storage is
unreachable (a refused or dropped connection, a timeout), `retry_unreachable` waits it out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tsla_service.settings import Settings

T = TypeVar("T")

# What one read of a download asks for: on object storage each is one ranged GET, so chunks are
# larger there (fewer round trips); either way at most this much is held in memory per download.
LOCAL_READ_BYTES = 1 << 20
REMOTE_READ_BYTES = 8 << 20
# The longest pause between two tries while storage is unreachable.
MAX_RETRY_DELAY = 30.0


def _boto_unreachable() -> tuple[type[Exception], ...]:
    """botocore's connection and HTTP-client errors (they are not OSErrors), with the s3 extra."""
    try:
        from botocore import exceptions
    except ImportError:  # no S3 client installed: nothing of it can fail
        return ()
    return (exceptions.ConnectionError, exceptions.HTTPClientError)


# Storage that cannot be reached right now: worth waiting for, unlike a missing bucket or a denial.
UNREACHABLE: tuple[type[Exception], ...] = (ConnectionError, TimeoutError, *_boto_unreachable())
# Every error that storage, not the caller, is to blame for.
STORAGE_ERRORS: tuple[type[Exception], ...] = (OSError, *UNREACHABLE)


class StorageUnavailable(Exception):
    """Storage stayed unreachable longer than the retries wait; the message says what failed."""


class Storage:
    def __init__(
        self, url: str, options: dict[str, Any] | None = None, part_bytes: int | None = None
    ) -> None:
        self.fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        # s3fs's put_file sends a file of 2 * chunksize or more as a multipart upload.
        self.put_options = {} if part_bytes is None else {"chunksize": part_bytes}
        self.read_bytes = LOCAL_READ_BYTES if self.is_local else REMOTE_READ_BYTES

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
        self.fs.put_file(str(local), self._path(key), **self.put_options)

    def get_file(self, key: str, local: Path) -> None:
        """Download through a `.NAME.tmp` file renamed into place: an interrupted download leaves
        no partial file that a later attempt would take for a corrupt checkpoint."""
        local.parent.mkdir(parents=True, exist_ok=True)
        temp = local.with_name(f".{local.name}.tmp")
        try:
            self.fs.get_file(self._path(key), str(temp))
            temp.replace(local)
        finally:
            temp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def open(self, key: str) -> IO[Any]:
        """A stored file to seek in and read. No read-ahead cache: on object storage each read is
        one ranged GET of exactly the bytes asked for."""
        return self.fs.open(self._path(key), "rb", cache_type="none")

    def read_range(self, key: str, first: int, length: int) -> Iterator[bytes]:
        """`length` bytes from `first` on, in chunks of at most `read_bytes`, each read only when the
        caller takes it. The file is opened here, so a missing one raises before anything is sent."""
        return _chunks(self.open(key), first, length, self.read_bytes)

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


def _chunks(handle: IO[Any], first: int, length: int, chunk_bytes: int) -> Iterator[bytes]:
    with handle:
        handle.seek(first)
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(chunk_bytes, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk


def storage_for(settings: Settings) -> Storage:
    """The storage the settings name; S3 gets its endpoint, part size and timeouts from them."""
    url = settings.resolved_storage_url
    if fsspec.utils.get_protocol(url) not in ("s3", "s3a"):
        return Storage(url)
    options: dict[str, Any] = {
        # The API and every worker write the same bucket: never answer from a listing cached here.
        "use_listings_cache": False,
        # botocore waits 60 s for a connection by default and tries 5 times: an unreachable
        # endpoint would hold each call for minutes. Failing sooner hands it to retry_unreachable,
        # which waits out an outage for as long as the settings say, and logs why.
        "config_kwargs": {"connect_timeout": 10, "retries": {"mode": "standard", "max_attempts": 3}},
    }
    if settings.s3_endpoint_url is not None:
        options["client_kwargs"] = {"endpoint_url": settings.s3_endpoint_url}
    return Storage(url, options, settings.storage_part_bytes)


def retry_unreachable(action: Callable[[], T], what: str, retry_for: float, log: Callable[[str], None]) -> T:
    """Run a storage action, waiting out unreachable storage: tried again with backoff (1 s, doubling
    to MAX_RETRY_DELAY) for up to `retry_for` seconds, each retry logged with its reason; then
    StorageUnavailable. Other errors are raised at once. `what` ends the reason: "uploading x.pt"."""
    deadline = time.monotonic() + retry_for
    delay = 1.0
    while True:
        try:
            return action()
        except UNREACHABLE as error:
            reason = f"storage unreachable ({first_line(error)}) {what}"
            left = deadline - time.monotonic()
            if left <= 0:
                raise StorageUnavailable(f"{reason}; gave up after {retry_for:g} s") from error
            pause = min(delay, left)
            log(f"{reason}; retrying in {pause:.1f} s")
            time.sleep(pause)
            delay = min(2 * delay, MAX_RETRY_DELAY)


def first_line(error: BaseException) -> str:
    """`ConnectionResetError: [Errno 104] Connection reset by peer`: the type and the first line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__

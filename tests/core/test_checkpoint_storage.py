"""Checkpoint storage failures: temp files never left behind, retries with backoff, then one clear
reason; a real file size limit (RLIMIT_FSIZE) in a child process, no root needed."""

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_raw_spec
from tsla_core import CheckpointStorageError, CheckpointStore, Hooks, Trainer
from tsla_core import checkpoint as checkpoint_module
from tsla_core.checkpoint import retry_storage, storage_reason, write_atomic
from tsla_spec.spec import build_spec

REPO_ROOT = Path(__file__).resolve().parents[2]
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/storage/.epoch-0003.pt.tmp")


def test_write_atomic_removes_its_temp_file_when_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "epoch-0000.pt"
    target.write_bytes(b"old")

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, b"new" * 1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0000.pt"]
    assert target.read_bytes() == b"old"  # all or nothing


def test_storage_reason_names_the_error_and_the_file() -> None:
    assert storage_reason(ENOSPC, "writing epoch-0003.pt") == (
        "checkpoint storage full: [Errno 28] No space left on device writing epoch-0003.pt"
    )
    too_big = OSError(errno.EFBIG, os.strerror(errno.EFBIG))
    assert storage_reason(too_big, "uploading epoch-0001.pt").startswith(
        "checkpoint storage file size limit reached: [Errno 27] File too large uploading"
    )


def test_retry_storage_retries_then_gives_the_reason() -> None:
    calls: list[int] = []
    logs: list[str] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ENOSPC
        return "written"

    assert retry_storage(flaky, "writing epoch-0003.pt", delays=(0, 0, 0), log=logs.append) == "written"
    assert len(calls) == 3 and len(logs) == 2 and "retry 1 of 3" in logs[0]

    def full() -> None:
        raise ENOSPC

    with pytest.raises(CheckpointStorageError) as raised:
        retry_storage(full, "writing epoch-0003.pt", delays=(0, 0))
    assert str(raised.value) == (
        "checkpoint storage full: [Errno 28] No space left on device writing epoch-0003.pt"
    )


def test_a_failed_json_write_leaves_no_unlisted_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path)
    store.retry_delays = (0,)

    def json_fails(path: Path, data: bytes) -> None:
        if path.suffix == ".json":
            raise ENOSPC
        real_write(path, data)

    real_write = checkpoint_module.write_atomic
    monkeypatch.setattr(checkpoint_module, "write_atomic", json_fails)
    with pytest.raises(CheckpointStorageError, match="writing epoch-0000.json"):
        store.save({"model": {"w": torch.zeros(4)}}, 0, False, {})
    assert list(tmp_path.iterdir()) == []


def test_opening_a_run_removes_temp_files_an_earlier_crash_left(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / ".epoch-0002.pt.tmp").write_bytes(b"x" * 100)
    (folder / "notes.txt").write_text("kept")
    logs: list[str] = []
    Trainer(build_spec(tiny_raw_spec()), tmp_path, Path("unused"), Hooks(on_log=logs.append))
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert any(".epoch-0002.pt.tmp" in m for m in logs), logs


FILE_SIZE_LIMITED = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    import torch
    from tsla_core import CheckpointStorageError, CheckpointStore

    # Past RLIMIT_FSIZE a write fails with EFBIG (SIGXFSZ would kill the process instead).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
    store = CheckpointStore(Path(sys.argv[1]))
    store.retry_delays = (0.01, 0.01)
    try:
        store.save({"model": {"w": torch.zeros(100_000)}}, 3, False, {})
    except CheckpointStorageError as error:
        print(error)
    """
)


def test_a_real_file_size_limit_fails_the_write_with_the_reason(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMITED, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "checkpoint storage file size limit reached: [Errno 27] File too large writing epoch-0003.pt"
    )
    assert list(tmp_path.iterdir()) == []  # neither the temp file nor a half-written checkpoint

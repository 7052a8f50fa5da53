"""The one launcher of the service's real processes: their command lines, and starting and stopping
them as process groups.

`tsla serve`, `tsla demo`, the integration tests and `bench/service.py` start their processes
here; `docker-compose.yml` runs the same command lines (tests/test_compose.py compares them).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_command(
    queues: Sequence[str],
    hostname: str | None = None,
    logfile: Path | None = None,
    python: str = sys.executable,
) -> list[str]:
    """A Celery worker (`python -m worker`): solo pool, one training job at a time, in the worker
    process itself; no gossip, mingle or heartbeat traffic between workers (nothing uses it)."""
    command = [
        python, "-m", "worker", "--queues", ",".join(queues), "--pool", "solo", "--concurrency", "1",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO",
    ]  # fmt: skip
    if hostname is not None:
        command += ["--hostname", hostname]
    if logfile is not None:
        command += ["--logfile", str(logfile)]
    return command


def api_command(host: str, port: int, python: str = sys.executable) -> list[str]:
    """The API under uvicorn, built by the app factory from the TSLA_* settings."""
    return [
        python, "-m", "uvicorn", "api.main:create_app", "--factory",
        "--host", host, "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip


def migrate_command(python: str = sys.executable) -> list[str]:
    """`alembic upgrade head` on the database the settings name (tsla_service.migrate)."""
    return [python, "-m", "tsla_cli", "migrate"]


def serve_command(home: Path, port: int, python: str = sys.executable) -> list[str]:
    """The embedded stack (`tsla serve`): API + a worker on SQLite and the filesystem broker."""
    return [python, "-m", "tsla_cli", "serve", "--home", str(home), "--port", str(port)]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(base: Mapping[str, str] | None = None, **settings: str) -> dict[str, str]:
    """`base` (default: this process's environment) without its TSLA_* settings, plus `settings`."""
    env = {k: v for k, v in (base or os.environ).items() if not k.startswith("TSLA_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


def start_process(
    command: Sequence[str],
    env: Mapping[str, str],
    log: Path | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """A child in its own session, so that its whole process group can be stopped; output to `log`
    (None: this process's terminal). With `die_with_parent` the kernel sends it SIGTERM when this
    process dies, even by SIGKILL (Linux), so a supervisor never leaves orphans behind."""
    options: dict[str, Any] = {"env": dict(env), "cwd": cwd, "start_new_session": True}
    if die_with_parent and sys.platform == "linux":
        options["preexec_fn"] = _terminate_with_parent
    if log is None:
        return subprocess.Popen(list(command), **options)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        return subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, **options
        )


def _terminate_with_parent() -> None:
    """In the child, before exec: ask for SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it after `grace` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    # Children (a worker under `tsla serve`) may outlive the leader: kill the whole group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25) -> T:
    """Call `probe` until it returns something other than None/False; TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_healthy(base_url: str, processes: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    """Poll /healthz; fail at once if one of `processes` exited."""

    def probe() -> bool:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode} before /healthz")
        try:
            return httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(probe, timeout, f"{base_url}/healthz", interval=0.3)


def worker_ready(process: subprocess.Popen[bytes], log: Path) -> bool:
    """The worker logged that it consumes (Celery's " ready." line); RuntimeError if it exited."""
    if process.poll() is not None:
        raise RuntimeError(f"the worker exited with {process.returncode} (log: {log})")
    try:
        return " ready." in log.read_text(errors="replace")
    except FileNotFoundError:
        return False

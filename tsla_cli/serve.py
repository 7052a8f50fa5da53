"""`tsla serve`: the embedded stack in one command, with all its state under --home.

It migrates the database (SQLite by default), then runs the API (uvicorn) and a real `celery
worker` on every queue of TSLA_QUEUES as child processes and supervises them: a worker that dies
is started again (with a growing pause, logged), and the service stops when the API does. The
same processes run in production, pointed at PostgreSQL, Redis and shared storage by the TSLA_*
settings.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from tsla_cli import stack

# A worker that ran this long before it died is restarted at once; a quicker death doubles the pause.
HEALTHY_RUN_SECONDS = 60.0
MAX_RESTART_PAUSE = 30.0


def first_token(home: Path, database_url: str) -> str:
    """$TSLA_TOKEN when set; else the token this home created on its first start (HOME/token)."""
    from tsla_service.db import session_scope
    from tsla_service.tokens import create_token, ensure_token

    token_file = home / "token"
    with session_scope(database_url) as session:
        if os.environ.get("TSLA_TOKEN"):
            token = os.environ["TSLA_TOKEN"]
            ensure_token(session, f"env-{hashlib.sha256(token.encode()).hexdigest()[:8]}", token)
            return token
        if token_file.exists():
            token = token_file.read_text().strip()
            ensure_token(session, "serve", token)
            return token
        _row, token = create_token(session, f"serve-{secrets.token_hex(4)}")
    token_file.touch(mode=0o600)
    token_file.write_text(token + "\n")
    return token


@dataclass
class Supervised:
    """A child process that is started again when it dies, after a pause that grows while it keeps dying."""

    name: str
    command: list[str]
    env: dict[str, str]
    log: Path | None
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    pause: float = 0.0
    restarts: int = 0

    def start(self) -> None:
        self.process = stack.start_process(self.command, self.env, self.log, die_with_parent=True)
        self.started_at = time.monotonic()

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def restart(self) -> None:
        ran_for = time.monotonic() - self.started_at
        quick_death = ran_for < HEALTHY_RUN_SECONDS
        self.pause = min(MAX_RESTART_PAUSE, max(0.5, 2 * self.pause)) if quick_death else 0.0
        self.restarts += 1
        typer.echo(
            f"tsla serve: the {self.name} exited with {self.exited()} after {ran_for:.0f} s; "
            f"restart {self.restarts} in {self.pause:.1f} s",
            err=True,
        )
        time.sleep(self.pause)
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            stack.stop_process(self.process, grace=30)


def supervise(api: Supervised, workers: list[Supervised]) -> int:
    """Keep the workers running until the API exits; returns the API's exit code."""
    for child in (api, *workers):
        child.start()
    try:
        while (code := api.exited()) is None:
            for worker in workers:
                if worker.exited() is not None:
                    worker.restart()
            time.sleep(0.5)
        return code
    finally:
        for child in (*workers, api):
            child.stop()


def raise_exit(signum: int, _frame: Any) -> None:
    """SIGTERM ends `tsla serve` like Ctrl-C: its children are stopped first."""
    raise SystemExit(128 + signum)


def serve_command(
    port: Annotated[int, typer.Option(help="API port")] = 8000,
    host: Annotated[str, typer.Option(help="API address")] = "127.0.0.1",
    home: Annotated[Path, typer.Option(help="state folder: database, broker, checkpoints, logs")] = Path(
        ".tsla"
    ),
    worker: Annotated[bool, typer.Option(help="also run a worker process")] = True,
) -> None:
    """Run the service: API + a real worker, no servers needed (SQLite + a filesystem broker)."""
    from tsla_service.migrate import upgrade_to_head
    from tsla_service.permissions import owner_only_files
    from tsla_service.settings import Settings

    owner_only_files()  # the database, logs and checkpoints below, and every child's files
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    settings = Settings(home=home)
    upgrade_to_head(settings.resolved_database_url)
    token = first_token(home, settings.resolved_database_url)
    env = {**os.environ, "TSLA_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    logs = home / "logs"
    api = Supervised("API", stack.api_command(host, port), env, None)
    worker_command = stack.worker_command(settings.queues, logfile=logs / "worker.log")
    workers = [Supervised("worker", worker_command, env, logs / "worker.out")] if worker else []
    typer.echo(f"TSLA service on http://{host}:{port} (home {home}; API docs at /docs)", err=True)
    if os.environ.get("TSLA_TOKEN"):
        typer.echo("API token: the one in $TSLA_TOKEN", err=True)  # never echo a secret the user set
    else:
        typer.echo(f"API token: {token}   (export TSLA_TOKEN={token}; kept in {home / 'token'})", err=True)
    signal.signal(signal.SIGTERM, raise_exit)
    try:
        code = supervise(api, workers)
    except KeyboardInterrupt:
        code = 0
    sys.exit(code)


def migrate_command() -> None:
    """Bring the service's database (TSLA_* settings) to the newest schema: `alembic upgrade head`."""
    from tsla_service.migrate import upgrade_to_head
    from tsla_service.settings import get_settings

    upgrade_to_head(get_settings().resolved_database_url)
    typer.echo("database schema is up to date")

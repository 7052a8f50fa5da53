"""`tsla serve`: the embedded stack in one command, with all its state under --home.

It migrates the database (SQLite by default), starts a real `celery worker` process and serves
the API with uvicorn in this process. The same processes run in production, pointed at
PostgreSQL, Redis and shared storage by the TSLA_* environment variables.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

REPO_ROOT = Path(__file__).resolve().parents[1]


def migrate(database_url: str) -> None:
    """`alembic upgrade head` on the service's database."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    command.upgrade(config, "head")


def start_worker(home: Path, queue: str) -> subprocess.Popen[bytes]:
    """A real worker process; solo pool: one training job at a time, in the worker itself.

    Its output (banner, warnings, tracebacks) goes to HOME/logs/worker.out, its log to worker.log.
    """
    (home / "logs").mkdir(parents=True, exist_ok=True)
    output = (home / "logs" / "worker.out").open("ab")
    command = [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--queues", queue, "--pool", "solo", "--concurrency", "1",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--loglevel", "INFO", "--logfile", str(home / "logs" / "worker.log"),
    ]  # fmt: skip
    env = os.environ.copy()
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=output)


def first_token(home: Path, database_url: str) -> str:
    """$TSLA_TOKEN when set; else the token this home created on its first start (HOME/token)."""
    from tsla_shared.db import session_scope
    from tsla_shared.tokens import create_token, ensure_token

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


def serve_command(
    port: Annotated[int, typer.Option(help="API port")] = 8000,
    host: Annotated[str, typer.Option(help="API address")] = "127.0.0.1",
    home: Annotated[Path, typer.Option(help="state folder: database, broker, checkpoints, logs")] = Path(
        ".tsla"
    ),
    worker: Annotated[bool, typer.Option(help="also start a worker process")] = True,
) -> None:
    """Run the service: API + a real worker, no servers needed (SQLite + a filesystem broker)."""
    import uvicorn

    from tsla_shared.settings import get_settings

    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["TSLA_HOME"] = str(home)
    get_settings.cache_clear()
    settings = get_settings()
    migrate(settings.resolved_database_url)
    token = first_token(home, settings.resolved_database_url)
    worker_process = start_worker(home, settings.queue) if worker else None
    typer.echo(f"TSLA service on http://{host}:{port} (home {home}; API docs at /docs)", err=True)
    typer.echo(f"API token: {token}   (export TSLA_TOKEN={token})", err=True)
    try:
        uvicorn.run("api.main:create_app", factory=True, host=host, port=port, log_level="warning")
    finally:
        if worker_process is not None:
            worker_process.terminate()
            try:
                worker_process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker_process.kill()

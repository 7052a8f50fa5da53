"""The embedded stack the CLI and events tests share per module, and small helpers around it.

`python -m tsla_cli serve --home DIR --port PORT` in its own session (API + a real worker on
SQLite and the filesystem broker), token from TSLA_TOKEN; stopped with its whole process group.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.service._support import (
    LOG_FILES,
    Service,
    clean_env,
    free_port,
    start_process,
    stop_process,
    wait_healthy,
)

# The digits jobs here train a narrower net in bigger batches than the preset (width 16, batch 64):
# a few seconds an epoch even on a busy 2-core machine, so the folder stays within its time budget.
# Six steps an epoch: the gradient-variance probe runs every third so that each epoch logs it.
FAST: dict[str, Any] = {"model": {"width": 4}, "batch_size": 256, "grad_variance": {"every_steps": 3}}
FAST_SET = ["--set", "model.width=4", "--set", "batch_size=256", "--set", "grad_variance.every_steps=3"]


@contextmanager
def embedded_stack(root: Path, **env: str) -> Iterator[Service]:
    """A running embedded stack under `root`; `env` adds TSLA_* settings (e.g. a shorter lease)."""
    home = root / "home"
    port = free_port()
    token = f"tsla_it_{secrets.token_urlsafe(16)}"
    stack = start_process(
        [sys.executable, "-m", "tsla_cli", "serve", "--home", str(home), "--port", str(port)],
        clean_env(TSLA_TOKEN=token, **env),
        root / "serve.log",
    )
    LOG_FILES.extend([home / "logs" / "worker.out", home / "logs" / "worker.log"])  # the worker's own
    service = Service(f"http://127.0.0.1:{port}", token, home)
    try:
        wait_healthy(service.base_url, [stack], timeout=120)
        yield service
    finally:
        service.close()
        stop_process(stack, grace=30)


def all_metric_rows(service: Service, job_id: str, limit: int = 10) -> list[dict[str, Any]]:
    """Every metric row of the job via GET /jobs/{id}/metrics, paged with the cursor."""
    rows: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        response = service.http.get(f"/jobs/{job_id}/metrics", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        rows.extend(page["items"])
        if not page["has_more"]:
            return rows
        params["after"] = page["next_after"]

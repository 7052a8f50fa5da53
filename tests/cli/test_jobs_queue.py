"""The queue in `tsla submit` and `tsla jobs`, without a server (httpx.MockTransport): `--queue`
sends `resources.queue`, the summary names the queue the job went to, and the table shows it on
wide terminals."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from tsla_cli import client as client_module
from tsla_cli import jobs_cmd
from tsla_cli.main import app

JOB: dict[str, Any] = {
    "id": "a" * 32, "name": "lsr-digits", "state": "queued", "method": "lsr", "dataset": "digits",
    "queue": "gpu", "epochs": 2, "epochs_done": 0, "best_top1": None, "created_at": "2026-12-02T10:00:00Z",
}  # fmt: skip


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Request]:
    """The requests the CLI makes; POST /jobs answers with JOB."""
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(201, json=JOB)

    real = client_module.TslaClient

    def make(url: str, token: str | None = None) -> client_module.TslaClient:
        made = real(url, token)
        made.http = httpx.Client(
            base_url=url, headers=made.http.headers, transport=httpx.MockTransport(answer)
        )
        return made

    monkeypatch.setattr(jobs_cmd, "TslaClient", make)
    monkeypatch.setenv("TSLA_TOKEN", "tsla_test")
    monkeypatch.setenv("TSLA_URL", "http://fake")
    return requests


def test_submit_queue_sends_resources_queue_and_names_it(sent: list[httpx.Request]) -> None:
    result = CliRunner().invoke(app, ["submit", "--preset", "digits", "--queue", "gpu", "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads(sent[-1].content) == {"preset": "digits", "epochs": 2, "resources": {"queue": "gpu"}}
    assert "submitted lsr-digits: lsr on digits, 2 epochs, queue gpu" in result.output


def rendered(width: int) -> list[str]:
    console = Console(width=width, record=True)
    console.print(jobs_cmd.jobs_table([JOB], width))
    return console.export_text().splitlines()


def test_the_jobs_table_shows_the_queue_from_120_columns() -> None:
    header, row = rendered(120)
    assert header.split() == [
        "id",
        "name",
        "state",
        "method",
        "dataset",
        "queue",
        "epochs",
        "top-1",
        "created",
    ]
    assert row.split()[5] == "gpu"
    assert "queue" not in rendered(80)[0].split()

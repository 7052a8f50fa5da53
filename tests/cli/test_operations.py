"""Operating the embedded stack as an operator would: `tsla serve` keeps secrets and files to
itself, reports readiness, and the operator commands work where no token can (a revoked token's
running job), against a live `tsla serve`. The CLI tells "retry later" from bad input and fits an
80-column terminal.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.integration._support import REPO_ROOT, Service, log_tail
from tsla_cli.stack import service_env, wait_for
from tsla_service.db import session_scope
from tsla_service.models import Job

from ._stack import FAST, embedded_stack

pytestmark = pytest.mark.integration

CAP = 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("operations")
    with embedded_stack(root, TSLA_MAX_ACTIVE_JOBS_PER_TOKEN=str(CAP)) as service:
        yield service


def tsla(
    *args: str, service: Service | None = None, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = service_env(COLUMNS="80")
    if service is not None:
        env |= {"TSLA_URL": service.base_url, "TSLA_TOKEN": token or service.token}
    command = [sys.executable, "-m", "tsla_cli", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_serve_never_prints_a_token_from_the_environment(stack: Service) -> None:
    log = log_tail(stack.home.parent / "serve.log", 100_000)
    assert "API token: the one in $TSLA_TOKEN" in log
    assert stack.token not in log


def test_the_service_creates_owner_only_files(stack: Service) -> None:
    job = stack.submit({"preset": "digits", **FAST, "epochs": 1, "smoothing": {"method": "lsr"}})
    assert stack.wait_job(job["id"], timeout=180)["state"] == "succeeded"
    checkpoints = stack.home / "checkpoints" / job["id"] / "checkpoints"
    files = [stack.home / "tsla.db", stack.home / "logs" / "worker.log", stack.home / "logs" / "worker.out"]
    files += sorted(checkpoints.iterdir())
    for path in [*files, stack.home / "logs", checkpoints, stack.home / "broker"]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}: readable by others"


def test_readiness_turns_ready_once_the_worker_consumes(stack: Service) -> None:
    ready = wait_for(
        lambda: (r := httpx.get(f"{stack.base_url}/readyz", timeout=5)).status_code == 200 and r.json(),
        60,
        "/readyz",
    )
    assert ready["workers"] == 1 and ready["queues"] == ["training"]


def test_a_revoked_tokens_job_is_canceled_by_the_operator_command(stack: Service) -> None:
    created = tsla("token", "create", "leaver", "--home", str(stack.home))
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {token}"}) as client:
        job = client.post("/jobs", json={"preset": "digits", **FAST}).json()
    assert tsla("token", "revoke", "leaver", "--home", str(stack.home)).returncode == 0
    nobody = stack.http.post(f"/jobs/{job['id']}/cancel")
    assert nobody.status_code == 404, "another token never sees the job"
    canceled = tsla("admin", "cancel", job["id"], "--home", str(stack.home))
    assert canceled.returncode == 0, canceled.stderr
    assert job["id"] in canceled.stdout
    wait_for(lambda: job_state(stack, job["id"]) == "canceled", 60, "the canceled job to stop")
    again = tsla("admin", "cancel", job["id"], "--home", str(stack.home))
    assert again.returncode == 2 and "already canceled" in again.stderr
    missing = tsla("admin", "cancel", "0" * 32, "--home", str(stack.home))
    assert missing.returncode == 5


def job_state(stack: Service, job_id: str) -> str | None:
    """A job's state read from the home's database (no token can see a revoked token's job)."""
    with session_scope(f"sqlite:///{stack.home / 'tsla.db'}") as session:
        job = session.get(Job, job_id)
        return job.state if job is not None else None


def test_an_operator_token_reads_metrics_and_a_user_token_does_not(stack: Service) -> None:
    created = tsla("token", "create", "ops", "--operator", "--home", str(stack.home))
    assert created.returncode == 0, created.stderr
    operator = created.stdout.strip().splitlines()[-1]
    listing = tsla("token", "list", "--home", str(stack.home)).stdout
    assert any(line.startswith("ops\t") and "\toperator\t" in line for line in listing.splitlines())
    assert (
        httpx.get(f"{stack.base_url}/metrics", headers={"Authorization": f"Bearer {stack.token}"}).status_code
        == 403
    )
    scraped = httpx.get(f"{stack.base_url}/metrics", headers={"Authorization": f"Bearer {operator}"})
    assert scraped.status_code == 200 and "tsla_workers 1.0" in scraped.text


def test_at_the_cap_submit_says_retry_later_and_jobs_fits_80_columns(stack: Service) -> None:
    created = tsla("token", "create", "busy", "--home", str(stack.home))
    token = created.stdout.strip().splitlines()[-1]
    ids = []
    for index in range(CAP):
        name = "[bold]markup[/bold]" if index == 0 else f"a-rather-long-job-name-number-{index}-for-the-table"
        submitted = tsla("submit", "--preset", "digits", "--name", name, service=stack, token=token)
        assert submitted.returncode == 0, submitted.stderr
        ids.append(submitted.stdout.strip())
    refused = tsla("submit", "--preset", "digits", service=stack, token=token)
    assert refused.returncode == 7, refused.stderr
    assert "429" in refused.stderr and "retry later" in refused.stderr
    listed = tsla("jobs", service=stack, token=token)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    assert all(any(job_id in line for line in lines) for job_id in ids), "every id whole"
    assert "[bold]markup" in listed.stdout, "a name is shown as text, never as markup"
    for job_id in ids:
        stack.cancel(job_id)

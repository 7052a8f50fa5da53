"""The `tsla` command line against a live embedded stack, run exactly as a user runs it:
`python -m tsla_cli ...` subprocesses with TSLA_URL / TSLA_TOKEN in their environment.

One stack serves the whole module. The main job (digits, 4 epochs, switch at 2) is submitted
first and a `tsla watch` of it starts at once in the background; the jobs the other tests submit
meanwhile wait behind it in the queue and are canceled there, so the worker only trains the main
job. The tests that need it finished (download, show, logs, cancel) wait for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration._support import REPO_ROOT, Service
from tsla_cli.client import TslaClient
from tsla_cli.stack import service_env
from tsla_spec.hashing import sha256_file

from ._stack import FAST, FAST_SET, embedded_stack

pytestmark = pytest.mark.integration

JOB_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # The default lease: a cancel reaches a running job within the worker's cancel poll (0.5 s).
    with embedded_stack(tmp_path_factory.mktemp("cli")) as service:
        yield service


def cli_env(service: Service | None, token: str | None = "", url: str | None = None) -> dict[str, str]:
    env = service_env()
    for name in ("COLUMNS", "LINES"):
        env.pop(name, None)  # rich then renders at its fixed 80 columns for a pipe
    if service is not None:
        env["TSLA_URL"] = url or service.base_url
        if token is not None:
            env["TSLA_TOKEN"] = token or service.token
    return env


def tsla(
    service: Service | None,
    *args: str,
    token: str | None = "",
    url: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m tsla_cli ARGS`; TSLA_URL/TSLA_TOKEN point at `service` unless overridden
    (`token=None` leaves TSLA_TOKEN unset)."""
    env = cli_env(service, token=token, url=url)
    return subprocess.run(
        [sys.executable, "-m", "tsla_cli", *args],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, describe(result)
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The command failed with `code` and exactly one line on stderr containing every needle."""
    assert result.returncode == code, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, describe(result)
    assert lines[0].startswith("error: "), describe(result)
    for needle in needles:
        assert needle in lines[0], describe(result)
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def cancel_quietly(service: Service, job_id: str) -> None:
    """Cancel a job a test submitted (a queued one ends at once) so it never holds the worker."""
    with contextlib.suppress(httpx.HTTPError):
        service.cancel(job_id)


@pytest.fixture(scope="module")
def main_job(stack: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`tsla submit` of the main job (its result and the job's id), and a `tsla watch` of it
    started at once, so that it follows the job live whatever the other tests do meanwhile."""
    result = tsla(stack, "submit", "--preset", "digits", "--epochs", "4", "--switch-epoch", "2", *FAST_SET)
    job_id = result.stdout.strip()
    folder = tmp_path_factory.mktemp("watch")
    with (folder / "stdout").open("w") as stdout, (folder / "stderr").open("w") as stderr:
        watch = subprocess.Popen(
            [sys.executable, "-m", "tsla_cli", "watch", job_id],
            cwd=REPO_ROOT,
            env=cli_env(stack),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
    try:
        yield {"result": result, "id": job_id, "watch": watch, "watch_output": folder}
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(timeout=30)


@pytest.fixture(scope="module")
def finished_main(stack: Service, main_job: dict[str, Any]) -> dict[str, Any]:
    job = stack.wait_job(main_job["id"], timeout=300)
    assert job["state"] == "succeeded", job
    return job


def test_submit_prints_only_the_job_id(stack: Service, main_job: dict[str, Any]) -> None:
    result = main_job["result"]
    assert result.returncode == 0, describe(result)
    assert JOB_ID.fullmatch(result.stdout.rstrip("\n")), describe(result)
    assert result.stdout.count("\n") == 1
    human = result.stderr.strip().splitlines()
    assert len(human) == 1, describe(result)
    assert human[0] == "submitted tsla-digits: tsla on digits, 4 epochs, queue training"

    job = stack.job(main_job["id"])
    assert job["epochs"] == 4 and job["method"] == "tsla" and job["dataset"] == "digits"
    assert job["spec"]["smoothing"]["switch_epoch"] == 2
    assert job["spec"]["model"]["width"] == FAST["model"]["width"]


def test_watch_of_a_canceled_job_exits_1(stack: Service, main_job: dict[str, Any]) -> None:
    # Queued behind the main job, or running on the CPU with far more epochs than the test takes:
    # unfinished when the cancel comes, which ends it at once or at its next step.
    spec = {"preset": "digits", "epochs": 200, "smoothing": {"switch_epoch": 1}, "name": "cli-canceled"}
    job = stack.submit({**spec, **FAST, "device": "cpu"})
    watch = subprocess.Popen(
        [sys.executable, "-m", "tsla_cli", "watch", job["id"]],
        cwd=REPO_ROOT,
        env=cli_env(stack),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        response = stack.cancel(job["id"])
        assert response.status_code == 200, response.text
        stdout, stderr = watch.communicate(timeout=90)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
        cancel_quietly(stack, job["id"])
    assert watch.returncode == 1, f"exit {watch.returncode}\n{stdout}\n{stderr}"
    assert f"job {job['id']}: canceled" in stdout, stdout
    assert "Traceback" not in stderr
    assert stack.job(job["id"])["state"] == "canceled"


def test_submit_from_a_spec_file_with_set(stack: Service, main_job: dict[str, Any], tmp_path: Path) -> None:
    spec_file = tmp_path / "job.yaml"
    spec = {
        "preset": "digits",
        "name": "cli-yaml",
        "epochs": 3,
        "smoothing": {"method": "lsr", "theta": 0.15},
        "optim": {"lr": 0.05},
        **FAST,
    }
    spec_file.write_text(yaml.safe_dump(spec))
    result = tsla(stack, "submit", str(spec_file), "--set", "optim.lr=0.02")
    job_id = result.stdout.strip()
    try:
        ok(result)
        assert JOB_ID.fullmatch(job_id), describe(result)
        job = stack.job(job_id)
        assert job["name"] == "cli-yaml" and job["method"] == "lsr" and job["epochs"] == 3
        assert job["spec"]["optim"]["lr"] == pytest.approx(0.02)  # --set beats the file
        assert job["spec"]["optim"]["momentum"] == pytest.approx(0.9)  # the preset's, merged
        assert job["spec"]["smoothing"]["theta"] == pytest.approx(0.15)
    finally:
        if JOB_ID.fullmatch(job_id):
            cancel_quietly(stack, job_id)


def test_idempotency_key_gives_one_job(stack: Service, main_job: dict[str, Any]) -> None:
    key = f"cli-{secrets.token_hex(8)}"
    args = (
        "submit",
        "--preset",
        "digits",
        "--epochs",
        "2",
        "--switch-epoch",
        "1",
        "--name",
        "cli-idem",
        *FAST_SET,
    )
    first = tsla(stack, *args, "--idempotency-key", key)
    job_id = first.stdout.strip()
    try:
        ok(first)
        second = tsla(stack, *args, "--idempotency-key", key)
        assert ok(second).strip() == job_id
        assert [j["id"] for j in stack.all_jobs() if j["name"] == "cli-idem"] == [job_id]
        other = tsla(
            stack,
            "submit",
            "--preset",
            "digits",
            "--epochs",
            "3",
            "--switch-epoch",
            "1",
            "--idempotency-key",
            key,
        )
        one_line_error(other, 2, "409", "Idempotency-Key")
    finally:
        if JOB_ID.fullmatch(job_id):
            cancel_quietly(stack, job_id)


@pytest.mark.parametrize(
    ("args", "options", "code", "needles"),
    [
        (("jobs",), {"url": "http://127.0.0.1:1"}, 3, ("cannot reach http://127.0.0.1:1",)),
        (("jobs",), {"token": "tsla_not_a_token"}, 4, ("401", "invalid or revoked token")),
        (("jobs",), {"token": None}, 4, ("no API token",)),
        (("show", "0" * 32), {}, 5, ("404", "0" * 32)),
        (("watch", "0" * 32), {}, 5, ("404",)),
        (("download", "0" * 32, "-o", "{tmp}/x.pt"), {}, 5, ("404",)),
        (("submit", "--preset", "digits", "--set", "epochs=-1"), {}, 2, ("422", "epochs")),
        (("submit", "--preset", "no-such-preset"), {}, 2, ("no-such-preset",)),
    ],
    ids=["unreachable", "bad-token", "missing-token", "unknown-job", "watch-unknown", "download-unknown",
         "bad-spec", "bad-preset"],
)  # fmt: skip
def test_errors_exit_with_a_code_and_one_line(
    stack: Service,
    args: tuple[str, ...],
    options: dict[str, Any],
    code: int,
    needles: tuple[str, ...],
    tmp_path: Path,
) -> None:
    before = len(stack.all_jobs())
    result = tsla(stack, *(arg.format(tmp=tmp_path) for arg in args), **options)
    one_line_error(result, code, *needles)
    assert result.stdout == ""
    assert len(stack.all_jobs()) == before  # nothing was stored
    assert list(tmp_path.iterdir()) == []


def test_token_create_and_revoke(stack: Service, main_job: dict[str, Any]) -> None:
    name = f"cli-user-{secrets.token_hex(4)}"
    home = str(stack.home)
    created = tsla(None, "token", "create", name, "--home", home)
    token = ok(created).strip()
    assert re.fullmatch(r"tsla_[A-Za-z0-9_-]{20,}", token), describe(created)
    assert tsla(None, "token", "create", name, "--home", home).returncode == 2  # names are unique

    listing = ok(tsla(stack, "jobs", token=token))
    assert not JOB_ID.search(listing), listing  # it sees none of the other token's jobs
    one_line_error(tsla(stack, "show", main_job["id"], token=token), 5, "404")
    assert main_job["id"] in ok(tsla(stack, "jobs"))  # the stack's own token still sees it

    revoked = tsla(None, "token", "revoke", name, "--home", home)
    assert f"revoked {name}" in ok(revoked)
    one_line_error(tsla(stack, "jobs", token=token), 4, "401", "invalid or revoked token")


def test_watch_follows_the_main_job_to_success(stack: Service, main_job: dict[str, Any]) -> None:
    watch: subprocess.Popen[str] = main_job["watch"]
    code = watch.wait(timeout=300)
    out = (main_job["watch_output"] / "stdout").read_text()
    err = (main_job["watch_output"] / "stderr").read_text()
    assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert f"job {main_job['id']}: succeeded" in out, out
    assert "test/top1" in out and "train/loss" in out and "best test top-1" in out, out
    assert "reconnecting" not in err and "Traceback" not in err, err
    job = stack.job(main_job["id"])
    assert job["state"] == "succeeded" and job["epochs_done"] == 4

    # Watching a finished job replays it and exits at once with the same verdict.
    again = tsla(stack, "watch", main_job["id"])
    assert f"job {main_job['id']}: succeeded" in ok(again) and "test/top1" in again.stdout


@pytest.mark.parametrize("ref", ["best", "latest"])
def test_download_matches_the_listed_sha256(
    stack: Service, finished_main: dict[str, Any], ref: str, tmp_path: Path
) -> None:
    job_id = finished_main["id"]
    listing = stack.http.get(f"/jobs/{job_id}/checkpoints").json()
    listed = next(item for item in listing["items"] if item["id"] == listing[f"{ref}_id"])
    target = tmp_path / f"{ref}.pt"
    extra = () if ref == "best" else ("--checkpoint", ref)  # best is the default
    out = ok(tsla(stack, "download", job_id, "-o", str(target), *extra))
    assert sha256_file(target) == listed["sha256"]
    assert target.stat().st_size == listed["size"]
    assert f"sha256 {listed['sha256']} (verified)" in out
    assert not target.with_name(target.name + ".part").exists()


def test_download_resumes_a_partial_file(
    stack: Service, finished_main: dict[str, Any], tmp_path: Path
) -> None:
    job_id = finished_main["id"]
    body = stack.http.get(f"/jobs/{job_id}/checkpoints/best").content
    expected = hashlib.sha256(body).hexdigest()
    half = len(body) // 2
    target = tmp_path / "best.pt"
    partial = tmp_path / "best.pt.part"

    # A wrong prefix proves the CLI resumed: had it downloaded the whole file again, it would match.
    partial.write_bytes(bytes(b ^ 0xFF for b in body[:half]))
    one_line_error(tsla(stack, "download", job_id, "-o", str(target)), 6, "sha256")
    assert not partial.exists() and not target.exists()

    partial.write_bytes(body[:half])
    ok(tsla(stack, "download", job_id, "-o", str(target)))
    assert target.read_bytes() == body and not partial.exists()

    # In process: the client asks for the missing bytes only and the server answers 206.
    seen: list[tuple[str | None, int, str | None]] = []

    def record(response: httpx.Response) -> None:
        asked = response.request.headers.get("range")
        seen.append((asked, response.status_code, response.headers.get("content-range")))

    resumed = tmp_path / "again.pt"
    resumed.with_name("again.pt.part").write_bytes(body[:half])
    with TslaClient(stack.base_url, stack.token) as client:
        client.http.event_hooks["response"].append(record)
        assert client.download(job_id, "best", resumed) == expected
        assert seen == [(f"bytes={half}-", 206, f"bytes {half}-{len(body) - 1}/{len(body)}")]
        assert resumed.read_bytes() == body

        # A stale partial file longer than the checkpoint: 416, then a fresh download.
        seen.clear()
        resumed.with_name("again.pt.part").write_bytes(body + b"stale")
        assert client.download(job_id, "best", resumed) == expected
        assert [(r, s) for r, s, _ in seen] == [(f"bytes={len(body) + 5}-", 416), (None, 200)]
        assert resumed.read_bytes() == body


def test_jobs_show_and_logs(stack: Service, finished_main: dict[str, Any]) -> None:
    job_id = finished_main["id"]
    listing = ok(tsla(stack, "jobs"))
    assert job_id in listing
    assert job_id in ok(tsla(stack, "jobs", "--state", "succeeded"))
    assert job_id not in ok(tsla(stack, "jobs", "--state", "queued"))

    shown = ok(tsla(stack, "show", job_id))
    assert f"job {job_id}" in shown
    assert re.search(r"state\s+│\s+succeeded", shown), shown
    assert re.search(r"epochs_done\s+│\s+4", shown), shown
    names = [c["name"] for c in stack.http.get(f"/jobs/{job_id}/checkpoints").json()["items"]]
    assert names and all(name in shown for name in names), shown

    logs = ok(tsla(stack, "logs", job_id))
    assert "attempt 1 started" in logs and "attempt 1 ended: succeeded" in logs, logs


def test_cancel_of_a_finished_job_exits_2(stack: Service, finished_main: dict[str, Any]) -> None:
    job_id = finished_main["id"]
    one_line_error(tsla(stack, "cancel", job_id), 2, "409", f"job {job_id} is already succeeded")
    assert stack.job(job_id)["state"] == "succeeded"

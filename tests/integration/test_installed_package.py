"""A plain (non-editable) install works outside the checkout: `pip install .` into a new virtual
environment, then from an empty folder `tsla serve --home DIR` migrates and serves, a job trains on
its worker, and `tsla token create` adds a working token.

The new environment gets the project's own files only (`pip install --no-deps .`); its third-party
packages (torch and the rest, gigabytes) are borrowed from the test's environment through a .pth
line. A .pth line adds a folder to sys.path without running the .pth files in it, so the
editable install of the checkout stays invisible: every project module must come from the new
environment's site-packages.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tsla_cli import stack
from tsla_cli.client import TslaClient
from tsla_spec.vocabulary import FINISHED_STATES

from ._support import REPO_ROOT, log_tail, start_process

pytestmark = pytest.mark.integration

PROJECT_PACKAGES = ("tsla_spec", "tsla_core", "tsla_service", "api", "worker", "tsla_cli", "migrations")


def copy_of_the_sources(root: Path) -> Path:
    """What a source distribution holds (pyproject.toml, README.md, the packages), without build
    output: setuptools builds inside the source folder, which must not be the checkout."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    for package in packages:
        shutil.copytree(REPO_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    return source


def make_installed_env(root: Path) -> Path:
    """A virtual environment with the project installed from a built wheel; returns its python."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    (site / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [str(python), "-m", "pip", "install", "--no-deps", "--no-cache-dir", "--quiet"]
    subprocess.run([*install, str(copy_of_the_sources(root))], check=True, timeout=600, cwd=root)
    return python


def test_a_plain_install_serves_trains_and_creates_tokens_from_an_empty_folder(tmp_path: Path) -> None:
    python = make_installed_env(tmp_path)
    tsla = python.parent / "tsla"
    empty = tmp_path / "empty"
    empty.mkdir()
    probe = f"import importlib; print(*(importlib.import_module(p).__file__ for p in {PROJECT_PACKAGES!r}))"
    where = subprocess.run(
        [str(python), "-c", probe], check=True, capture_output=True, text=True, cwd=empty
    ).stdout.split()
    assert all(str(tmp_path / "venv") in path for path in where), f"loaded from the checkout: {where}"

    home, port = tmp_path / "home", stack.free_port()
    env = stack.service_env(TSLA_TOKEN=f"tsla_installed_{port}_abcdefgh")
    log = tmp_path / "serve.log"
    server = start_process([str(tsla), "serve", "--home", str(home), "--port", str(port)], env, log)
    try:
        stack.wait_healthy(f"http://127.0.0.1:{port}", [server], timeout=120)
        assert (home / "tsla.db").is_file(), "tsla serve migrated the home's database"
        created = subprocess.run(
            [str(tsla), "token", "create", "alice", "--home", str(home)],
            capture_output=True, text=True, cwd=empty, env=env, timeout=120,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip().splitlines()[-1]
        with TslaClient(f"http://127.0.0.1:{port}", token) as client:
            job = client.submit({"preset": "digits", "epochs": 2, "model": {"width": 4}, "batch_size": 256,
                                 "smoothing": {"method": "tsla", "switch_epoch": 1}})  # fmt: skip
            final = stack.wait_for(
                lambda: (found := client.get(job["id"]))["state"] in FINISHED_STATES and found,
                timeout=300,
                what="the job on the installed worker",
                interval=0.5,
            )
            assert final["state"] == "succeeded", (final, log_tail(home / "logs" / "worker.out"))
            assert client.checkpoints(job["id"])["best_id"] is not None
    finally:
        stack.stop_process(server, grace=30)

"""`tsla experiment ...` and `tsla reproduce` against a live embedded stack, run as a user runs
them: `python -m tsla_cli ...` subprocesses with TSLA_URL / TSLA_TOKEN in their environment.

One stack serves the module. The experiment trains tiny digits runs (width 4, batch 256, 2
epochs): baseline and TSLA(1), two seeds, grown by a third seed with `tsla experiment add`.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration._support import Service

from ._stack import embedded_stack
from .test_cli import describe, tsla

pytestmark = pytest.mark.integration

ID = re.compile(r"[0-9a-f]{32}")
TINY: dict[str, Any] = {"preset": "digits", "epochs": 2, "model": {"width": 4}, "batch_size": 256}
TINY_SET = ["--set", "model.width=4", "--set", "batch_size=256", "--set", "epochs=2"]
EXPERIMENT: dict[str, Any] = {
    "name": "cli-sweep",
    "base": {"preset": "digits"},
    "grid": {"smoothing.method": ["baseline", "tsla"], "smoothing.switch_epoch": [1], "seed": [0, 1]},
    "objective": {"metric": "test/top1", "mode": "max"},
    "max_concurrent": 2,
    "order": "grid",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with embedded_stack(tmp_path_factory.mktemp("experiment-cli")) as service:
        yield service


@pytest.fixture(scope="module")
def experiment_id(stack: Service, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("exp") / "exp.yaml"
    path.write_text(yaml.safe_dump(EXPERIMENT))
    result = tsla(stack, "experiment", "submit", str(path), *TINY_SET, "--idempotency-key", "cli-sweep-1")
    assert result.returncode == 0, describe(result)
    assert ID.fullmatch(result.stdout.strip()), describe(result)
    return result.stdout.strip()


def test_submit_is_idempotent_and_builds_the_grid(stack: Service, experiment_id: str, tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(EXPERIMENT))
    again = tsla(stack, "experiment", "submit", str(path), *TINY_SET, "--idempotency-key", "cli-sweep-1")
    assert again.returncode == 0 and again.stdout.strip() == experiment_id, describe(again)
    experiment = stack.http.get(f"/experiments/{experiment_id}").json()
    cells = [job["cell"] for job in experiment["jobs"] if job.get("role", "cell") == "cell"]
    # The baseline ignores the switch epoch: two baseline and two TSLA(1) cells.
    assert len(cells) == 4, experiment["jobs"]
    job = stack.job(experiment["jobs"][0]["id"])
    assert (job["epochs"], job["spec"]["model"]["width"], job["spec"]["batch_size"]) == (2, 4, 256)


def test_add_watch_table_and_csv(stack: Service, experiment_id: str) -> None:
    added = tsla(stack, "experiment", "add", experiment_id, "--set", "seed=[2]")
    assert added.returncode == 0, describe(added)
    assert "2 added, 4 already there" in added.stdout, describe(added)  # seeds 0 and 1 ran already
    again = tsla(stack, "experiment", "add", experiment_id, "--set", "seed=[1, 2]")
    assert again.returncode == 0 and "0 added" in again.stdout, describe(again)

    watched = tsla(stack, "experiment", "watch", experiment_id, "--poll", "0.5", timeout=600)
    assert watched.returncode == 0, describe(watched)
    assert "6 succeeded" in watched.stdout, describe(watched)

    api = stack.http.get(f"/experiments/{experiment_id}").json()
    table = tsla(stack, "experiment", "table", experiment_id)
    assert table.returncode == 0, describe(table)
    for row in api["table"]:
        assert row["n"] == 3 and row["n_succeeded"] == 3, row
        mean, std = row["final"]["mean"], row["final"]["std"]
        assert f"{mean:.2f} ± {std:.2f}" in table.stdout, describe(table)
    best = next(row for row in api["table"] if row.get("is_best") or row.get("best") is True)
    star = next(line for line in table.stdout.splitlines() if "★" in line)
    assert best["group"]["smoothing.method"] in star, describe(table)

    raw = tsla(stack, "experiment", "table", experiment_id, "--csv")
    assert raw.returncode == 0, describe(raw)
    assert raw.stdout == stack.http.get(f"/experiments/{experiment_id}/table.csv").text
    assert len(list(csv.DictReader(io.StringIO(raw.stdout)))) == len(api["table"])


def test_list_cancel_and_exit_codes(stack: Service, experiment_id: str, tmp_path: Path) -> None:
    listed = tsla(stack, "experiment", "list")
    assert listed.returncode == 0 and experiment_id in listed.stdout, describe(listed)
    missing = tsla(stack, "experiment", "table", "0" * 32)
    assert missing.returncode == 5, describe(missing)
    no_token = tsla(stack, "experiment", "list", token=None)
    assert no_token.returncode == 4, describe(no_token)
    bad = tsla(stack, "experiment", "add", experiment_id, "--set", "no_such_key=[1]")
    assert bad.returncode == 2, describe(bad)

    long = {**EXPERIMENT, "name": "to-cancel", "grid": {"seed": [10, 11]}}
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(long))
    submitted = tsla(stack, "experiment", "submit", str(path), *TINY_SET, "--set", "epochs=200")
    assert submitted.returncode == 0, describe(submitted)
    canceled = tsla(stack, "experiment", "cancel", submitted.stdout.strip())
    assert canceled.returncode == 0, describe(canceled)
    watched = tsla(stack, "experiment", "watch", submitted.stdout.strip(), "--poll", "0.5", timeout=300)
    assert watched.returncode == 1, describe(watched)


def test_reproduce_on_the_service(stack: Service, tmp_path: Path) -> None:
    out = tmp_path / "report"
    args = ["reproduce", "--protocol", "digits", "--seeds", "1", "--out", str(out), *TINY_SET]
    result = tsla(stack, *args, "--set", "epochs=4", "--set", "schedule.milestones=[2, 3]", timeout=900)
    # Switch epochs 3 and 7 of the digits protocol need more than 4 epochs: the service says so.
    assert result.returncode == 2 and "switch_epoch" in result.stderr, describe(result)
    result = tsla(stack, *args, "--set", "epochs=8", timeout=900)
    assert result.returncode == 0, describe(result)
    markdown = (out / "table.md").read_text()
    for label in ("Baseline", "LSR", "TSLA(3)", "TSLA(7)", "LSR-pre", "TSLA-pre(3)", "TSLA-pre(7)"):
        assert f"| {label} |" in markdown or f"**{label}**" in markdown, markdown
    assert (out / "table.csv").read_text().count("\n") == 8
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"

"""`tsla experiment` and `tsla reproduce` without a server: the protocols' grids, the input
parsing, the table/markdown/CSV/plot rendering on a fixed response, and the commands against a
fake experiments API (httpx.MockTransport) for their output and exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tsla_cli import client as client_module
from tsla_cli import experiment_cmd, jobs_cmd, reproduce
from tsla_cli.main import app
from tsla_spec import grid
from tsla_spec.protocols import PROTOCOLS, TEACHER_CELL, experiment_body
from tsla_spec.spec import SpecError, build_spec

EXP_ID = "e" * 32
JOB_IDS = [f"{i:032x}" for i in range(1, 5)]


def row(
    method: str, switch: int | None, final: float, std: float, p: float | None, best: bool
) -> dict[str, Any]:
    group: dict[str, Any] = {"smoothing.method": method}
    if switch is not None:
        group["smoothing.switch_epoch"] = switch
    summary = {"mean": final, "std": std, "n": 3}
    return {
        "group": group, "n": 3, "n_succeeded": 3, "final": summary, "best": {**summary, "mean": final + 0.5},
        "top5": None, "selected_test": {**summary, "mean": final - 0.1}, "epochs_to_target": None,
        "reached": 3, "early_grad_var": None, "p_value": p, "best_group": best, "job_ids": JOB_IDS[:3],
    }  # fmt: skip


def fixed_experiment(state: str = "succeeded") -> dict[str, Any]:
    rows = [
        row("tsla", 7, 97.1, 0.3, 0.04, True),
        row("baseline", None, 96.0, 0.25, None, False),
        row("lsr", None, 96.5, 0.5, 0.2, False),
    ]
    for item in rows:  # the contract's boolean `best` replaces the best-top-1 summary's key name
        item["best"], item["best_top1"] = item.pop("best_group"), item["best"]
    return {
        "id": EXP_ID, "name": "sweep", "state": state, "counts": {"succeeded": 9},
        "jobs": [{"id": j, "cell": {"seed": 0}, "role": "cell", "state": "succeeded"} for j in JOB_IDS],
        "collapsed": [], "created_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:05:00Z",
        "table": rows,
    }  # fmt: skip


# --- protocols ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_every_cell_of_a_protocol_is_a_valid_spec(name: str) -> None:
    protocol = PROTOCOLS[name]
    body = experiment_body(protocol, seeds=3)
    expansion = grid.expand(body["base"], body["grid"])
    # Baseline, LSR, LSR-pre once per seed; TSLA and TSLA-pre once per switch epoch and seed.
    assert len(expansion.cells) == (3 + 2 * len(protocol.switch_epochs)) * 3
    for cell in expansion.cells:
        spec = grid.resolve(body["base"], cell, teacher_job_id="0" * 32)
        assert (spec.smoothing.method, spec.seed) == (cell["smoothing.method"], cell["seed"])
        switch = cell.get("smoothing.switch_epoch")
        if switch is not None:
            assert 0 < switch < spec.epochs
            if name != "cifar100":  # the small protocols switch between the drops, never on one
                assert switch not in spec.schedule.milestones
    assert grid.find_cell(body["base"], expansion.cells, TEACHER_CELL) is not None
    assert body["teacher"] == {"cell": TEACHER_CELL}
    assert body["objective"] == {"metric": "test/top1", "mode": "max"}


def test_the_small_protocols_are_the_brief() -> None:
    digits = build_spec(PROTOCOLS["digits"].base)
    assert (digits.epochs, digits.schedule.milestones, digits.data.name) == (10, (6, 8), "digits")
    assert PROTOCOLS["digits"].switch_epochs == (3, 7)
    fashion = build_spec({**PROTOCOLS["fashion-mnist-small"].base, "smoothing": {"method": "lsr"}})
    assert (fashion.epochs, fashion.schedule.milestones, fashion.data.train_subset) == (10, (5, 8), 4_000)


# --- input --------------------------------------------------------------------------------------------


def test_experiment_file_and_set_overrides_on_base(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("name: s\nbase: {preset: digits}\ngrid:\n  seed: [0, 1]\n")
    body = experiment_cmd.experiment_body(path, ["model.width=4", "epochs=2"])
    assert body == {
        "name": "s",
        "base": {"preset": "digits", "model": {"width": 4}, "epochs": 2},
        "grid": {"seed": [0, 1]},
    }
    with pytest.raises(SpecError, match="--set expects"):
        experiment_cmd.experiment_body(path, ["Bad Key=1"])


def test_grid_values_parse_as_yaml() -> None:
    assert experiment_cmd.grid_values(["seed=[3, 4]", "smoothing.method=lsr"]) == {
        "seed": [3, 4],
        "smoothing.method": ["lsr"],
    }
    with pytest.raises(SpecError):
        experiment_cmd.grid_values([])


# --- rendering ----------------------------------------------------------------------------------------


def test_markdown_table_in_paper_order_with_the_best_marked() -> None:
    report = fixed_experiment()
    text = reproduce.report_markdown(report, PROTOCOLS["digits"])
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert lines[0] == "| method | n | final | best | selected | p |"
    assert lines[2] == "| Baseline | 3/3 | 96.00 ± 0.25 | 96.50 ± 0.25 | 95.90 ± 0.25 | — |"
    assert lines[3] == "| LSR | 3/3 | 96.50 ± 0.50 | 97.00 ± 0.50 | 96.40 ± 0.50 | 0.2 |"
    assert lines[4] == "| **TSLA(7)** ★ | 3/3 | 97.10 ± 0.30 | 97.60 ± 0.30 | 97.00 ± 0.30 | 0.04 |"
    report["table"][0]["epochs_to_target"] = {"mean": 4.0, "std": 1.0, "n": 3}
    with_target = reproduce.report_markdown(report, PROTOCOLS["digits"])
    assert "| selected | to target | p |" in with_target and "| 4.0 ± 1.0 | 0.04 |" in with_target


def test_rich_table_has_group_columns_and_the_star() -> None:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(experiment_cmd.results_table(fixed_experiment()))
    text = console.export_text()
    assert "method" in text and "switch" in text and "p" in text
    star_line = next(line for line in text.splitlines() if "★" in line)
    assert "tsla" in star_line and "97.10 ± 0.30" in star_line
    assert experiment_cmd.counts_line(fixed_experiment()) == "succeeded: 9 succeeded"


def test_summary_without_a_second_seed_shows_the_mean_only() -> None:
    assert experiment_cmd.fmt_summary({"mean": 90.0, "std": None, "n": 1}) == "90.00"
    assert experiment_cmd.fmt_summary(None) == "—"


def test_curves_png_from_both_curve_shapes(tmp_path: Path) -> None:
    tsla = {"smoothing.method": "tsla", "smoothing.switch_epoch": 3}
    arrays = {
        "groups": [{"group": tsla, "epochs": [0, 1, 2, 3], "mean": [50, 60, 70, 80], "std": [1, 1, None, 1]}]
    }
    rows = [{"epoch": e, "mean": 1e-3 / (e + 1), "std": 1e-4} for e in range(4)]
    points = {"groups": [{"group": {"smoothing.method": "baseline"}, "points": rows}]}
    assert reproduce.curve_groups(arrays)[0]["std"] == [1, 1, 0.0, 1]
    assert reproduce.curve_groups(points)[0]["epochs"] == [0, 1, 2, 3]
    path = tmp_path / "curves.png"
    reproduce.plot_curves({"test/top1": arrays, "train/grad_var": points}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_frames_flatten_the_table() -> None:
    flat = client_module.flat_table_row(fixed_experiment()["table"][0])
    assert flat["smoothing.method"] == "tsla" and flat["final_mean"] == 97.1 and flat["top5_mean"] is None
    frame = client_module.as_frame([flat])
    assert list(frame["final_std"]) == [0.3]


# --- the commands against a fake API ------------------------------------------------------------------


class FakeApi:
    """The experiments routes of the contract, answering fixed data; records every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.polls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        if path.endswith("/missing"):
            return httpx.Response(404, json={"detail": "no such experiment"})
        if method == "POST" and path == "/experiments":
            return httpx.Response(201, json=fixed_experiment("running"))
        if path == f"/experiments/{EXP_ID}/table.csv":
            return httpx.Response(200, text="method,n\ntsla,3\n")
        if path == f"/experiments/{EXP_ID}/cells":
            return httpx.Response(
                200, json={"added": [{"id": JOB_IDS[3], "cell": {"seed": 3}}], "existing": []}
            )
        if path == f"/experiments/{EXP_ID}/cancel":
            return httpx.Response(200, json={**fixed_experiment("canceled"), "counts": {"canceled": 2}})
        if path == f"/experiments/{EXP_ID}":
            self.polls += 1
            return httpx.Response(200, json=self.experiment())
        if path.startswith("/jobs/"):
            return httpx.Response(200, json={"id": path[6:], "state": "running", "epochs": 2,
                                             "epochs_done": 1, "best_top1": 50.0})  # fmt: skip
        return httpx.Response(500, json={"detail": f"unexpected {method} {path}"})

    def experiment(self) -> dict[str, Any]:
        if self.polls < 3:
            running = fixed_experiment("running")
            running["counts"] = {"running": 1, "queued": 3}
            running["finished_at"] = None
            running["jobs"][0]["state"] = "running"
            return running
        return fixed_experiment("succeeded")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    api = FakeApi()
    real = client_module.TslaClient

    def make(url: str, token: str | None = None) -> client_module.TslaClient:
        made = real(url, token)
        made.http = httpx.Client(base_url=url, headers=made.http.headers, transport=httpx.MockTransport(api))
        return made

    monkeypatch.setattr(jobs_cmd, "TslaClient", make)
    monkeypatch.setenv("TSLA_TOKEN", "tsla_test")
    monkeypatch.setenv("TSLA_URL", "http://fake")
    return api


Invoke = Callable[..., Any]


@pytest.fixture
def run() -> Invoke:
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_submit_prints_the_id_and_sends_the_body(fake: FakeApi, run: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"name": "s", "base": {"preset": "digits"}, "grid": {"seed": [0]}}))
    result = run("experiment", "submit", str(path), "--set", "epochs=2", "--idempotency-key", "k1")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == EXP_ID
    sent = fake.requests[-1]
    assert sent.headers["Idempotency-Key"] == "k1" and sent.headers["Authorization"] == "Bearer tsla_test"
    assert json.loads(sent.content)["base"] == {"preset": "digits", "epochs": 2}


def test_watch_ends_with_the_experiment(fake: FakeApi, run: Invoke) -> None:
    result = run("experiment", "watch", EXP_ID, "--poll", "0.1")
    assert result.exit_code == 0, result.output
    assert "succeeded: 9 succeeded" in result.output and "★" in result.output
    assert any(r.url.path == f"/jobs/{JOB_IDS[0]}" for r in fake.requests)


def test_table_csv_add_cancel_and_exit_codes(fake: FakeApi, run: Invoke) -> None:
    table = run("experiment", "table", EXP_ID, "--target", "0.9", "--early-epochs", "3")
    assert table.exit_code == 0 and "97.10 ± 0.30" in table.output
    asked = next(r for r in fake.requests if r.url.path == f"/experiments/{EXP_ID}")
    assert dict(asked.url.params) == {"target": "0.9", "early_epochs": "3"}
    csv = run("experiment", "table", EXP_ID, "--csv")
    assert csv.exit_code == 0 and csv.stdout == "method,n\ntsla,3\n"
    added = run("experiment", "add", EXP_ID, "--set", "seed=[3]")
    assert added.exit_code == 0 and "1 added, 0 already there" in added.output
    assert json.loads(fake.requests[-1].content) == {"grid": {"seed": [3]}}
    canceled = run("experiment", "cancel", EXP_ID)
    assert canceled.exit_code == 0 and "2 canceled" in canceled.output
    assert run("experiment", "table", "missing").exit_code == jobs_cmd.EXIT_NOT_FOUND
    assert run("experiment", "add", EXP_ID).exit_code == jobs_cmd.EXIT_INPUT


def test_reproduce_names_the_plots_extra(monkeypatch: pytest.MonkeyPatch, run: Invoke) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = run("reproduce", "--protocol", "digits", "--url", "http://fake", "--token", "t")
    assert result.exit_code == jobs_cmd.EXIT_INPUT
    assert "pip install 'tsla[plots]'" in result.output

"""`tsla experiment ...`: many runs as one experiment: submit, add, watch, table, list, cancel.

Same server options and exit codes as the job commands (`tsla_cli.jobs_cmd`): 0 done (a watched
experiment's jobs all succeeded), 1 some did not, 2 bad input, 3 unreachable, 4 token, 5 no such
experiment, 7 retry later.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from tsla_cli.client import TslaClient
from tsla_cli.jobs_cmd import (
    DEFAULT_URL,
    EXIT_FAILED,
    EXIT_INPUT,
    TokenOption,
    UrlOption,
    connect,
    console,
    errors,
    fail,
)
from tsla_spec.spec import SpecError, deep_merge, load_spec_file, parse_override
from tsla_spec.vocabulary import FINISHED_STATES, JOB_STATES, TWO_STAGE_METHODS

app = typer.Typer(no_args_is_help=True, add_completion=False, help="experiments: a base spec and a grid")

POLL_SECONDS = 1.0
# The table's summary columns: the response keys (the first present wins) and the header, test top-1 %.
SUMMARY_COLUMNS = (
    (("final",), "final"),
    (("best_top1", "best"), "best"),  # `best` may also be the row's is-best flag
    (("selected_test",), "selected"),
)
BEST_MARK = "★"


# --- input ----------------------------------------------------------------------------------------


def experiment_body(path: Path, assignments: list[str], name: str | None = None) -> dict[str, Any]:
    """The POST /experiments body from a YAML/JSON file; each `--set key=value` overrides `base`."""
    body = load_spec_file(path)
    base = body.get("base", {})
    if not isinstance(base, dict):
        raise SpecError(f"{path}: `base` must be a mapping (a run spec)")
    for assignment in assignments:
        base = deep_merge(base, parse_override(assignment))
    body["base"] = base
    if name is not None:
        body["name"] = name
    return body


def grid_values(assignments: list[str]) -> dict[str, list[Any]]:
    """`--set seed='[3,4]'` -> {"seed": [3, 4]}: values parsed as YAML, a single value as a list."""
    grid: dict[str, list[Any]] = {}
    for assignment in assignments:
        key, _, text = assignment.partition("=")
        parse_override(assignment)  # checks the key's shape, with the same message as `tsla submit`
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise SpecError(f"--set {key}: not a YAML value ({error})") from None
        grid[key] = value if isinstance(value, list) else [value]
    if not grid:
        raise SpecError("give at least one --set key=[values]")
    return grid


# --- rendering --------------------------------------------------------------------------------------


def group_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The grid keys the table groups by, in first-seen order."""
    keys: list[str] = []
    for row in rows:
        keys.extend(key for key in (row.get("group") or {}) if key not in keys)
    return keys


def short_key(key: str) -> str:
    """A grid key as a column header: `smoothing.switch_epoch` -> `switch`."""
    return SHORT_KEYS.get(key, key.removeprefix("smoothing."))


SHORT_KEYS = {"smoothing.switch_epoch": "switch", "smoothing.temperature": "temp"}


def fmt_value(value: Any) -> str:
    return "—" if value is None else str(value)


def fmt_summary(summary: dict[str, Any] | None, digits: int = 2) -> str:
    """`97.78 ± 0.31`; `—` when no job of the group has the value; std alone needs two seeds."""
    if not summary or summary.get("mean") is None:
        return "—"
    mean = f"{summary['mean']:.{digits}f}"
    std = summary.get("std")
    return mean if std is None or summary.get("n", 0) < 2 else f"{mean} ± {std:.{digits}f}"


def summary_of(row: dict[str, Any], *keys: str) -> dict[str, Any] | None:
    """The first of `keys` that holds a {mean, std, n} summary in the row."""
    for key in keys:
        value = row.get(key)
        if isinstance(value, dict):
            return value
    return None


def is_best(row: dict[str, Any]) -> bool:
    return row.get("best") is True or row.get("is_best") is True


def fmt_p(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def has_target(rows: list[dict[str, Any]]) -> bool:
    """Whether the table has epochs-to-target values (only when a target was asked for)."""
    return any(summary_of(row, "epochs_to_target") for row in rows)


def table_cells(row: dict[str, Any], keys: list[str], target: bool = True) -> list[str]:
    """One results row as text: group values, n, the summaries, epochs to target, p-value."""
    group = row.get("group") or {}
    cells = [fmt_value(group.get(key)) for key in keys]
    cells.append(f"{row.get('n_succeeded', row.get('n'))}/{row.get('n')}")
    cells.extend(fmt_summary(summary_of(row, *keys)) for keys, _ in SUMMARY_COLUMNS)
    if target:
        cells.append(fmt_summary(summary_of(row, "epochs_to_target"), digits=1))
    cells.append(fmt_p(row.get("p_value")))
    return cells


def table_headers(keys: list[str], target: bool = True) -> list[str]:
    summaries = [header for _, header in SUMMARY_COLUMNS]
    return [*(short_key(key) for key in keys), "n", *summaries, *(["to target"] if target else []), "p"]


def results_table(experiment: dict[str, Any]) -> Table:
    """The results as a rich table that fits 80 columns; the best group is starred."""
    rows = experiment.get("table") or []
    keys, target = group_keys(rows), has_target(rows)
    title = Text(f"experiment {experiment.get('name', '')} ({experiment.get('id', '')})")
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    lines = [table_cells(row, keys, target) for row in rows]
    for line, row in zip(lines, rows, strict=True):
        line[0] = f"{BEST_MARK} {line[0]}" if is_best(row) else f"  {line[0]}"
    for index, header in enumerate(table_headers(keys, target)):
        numeric = index >= len(keys)
        widest = max([len(header)] + [len(line[index]) for line in lines])
        table.add_column(
            header, justify="right" if numeric else "left", no_wrap=True, min_width=min(widest, 16)
        )
    for line in lines:
        table.add_row(*(Text(cell) for cell in line))  # Text: values are never markup
    return table


def markdown_table(rows: list[dict[str, Any]], label_header: str | None = None) -> str:
    """The same columns as a GitHub markdown table; with `label_header`, a `label` per row first."""
    keys, target = group_keys(rows), has_target(rows)
    headers = table_headers(keys, target)
    if label_header is not None:
        headers = [label_header, *headers[len(keys) :]]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        cells = table_cells(row, keys, target)
        if label_header is not None:
            cells = [row_label(row), *cells[len(keys) :]]
        if is_best(row):
            cells[0] = f"**{cells[0]}** {BEST_MARK}"
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def row_label(row: dict[str, Any]) -> str:
    """The paper's name of a group: Baseline, LSR, TSLA(120), LSR-pre, TSLA-pre(160)."""
    group = row.get("group") or {}
    method = str(group.get("smoothing.method", "?"))
    name = "Baseline" if method == "baseline" else method.upper().replace("-PRE", "-pre")
    switch = group.get("smoothing.switch_epoch")
    if method in TWO_STAGE_METHODS and switch is not None:
        name += f"({switch})"
    others = [
        f"{short_key(k)}={v}"
        for k, v in group.items()
        if k not in ("smoothing.method", "smoothing.switch_epoch")
    ]
    return name + (f" [{', '.join(others)}]" if others else "")


def counts_line(experiment: dict[str, Any]) -> str:
    counts = experiment.get("counts") or {}
    parts = [f"{counts[state]} {state}" for state in JOB_STATES if counts.get(state)]
    return f"{experiment.get('state', '?')}: " + (", ".join(parts) or "no jobs")


def is_finished(experiment: dict[str, Any]) -> bool:
    return experiment.get("state") in FINISHED_STATES or experiment.get("finished_at") is not None


def all_succeeded(experiment: dict[str, Any]) -> bool:
    counts = experiment.get("counts") or {}
    return sum(counts.values()) > 0 and all(n == 0 for state, n in counts.items() if state != "succeeded")


def cell_text(cell: dict[str, Any] | None, role: str | None = None) -> str:
    text = " ".join(f"{short_key(k)}={v}" for k, v in (cell or {}).items())
    return f"{role}: {text}" if role and role != "cell" else text


# --- commands ---------------------------------------------------------------------------------------


@app.command("submit")
def submit(
    spec_file: Annotated[Path, typer.Argument(help="YAML/JSON: name, base, grid, teacher, objective...")],
    assignments: Annotated[
        list[str], typer.Option("--set", help="override a base field: key.path=value")
    ] = [],  # noqa: B006
    name: Annotated[Optional[str], typer.Option(help="the experiment's name")] = None,
    idempotency_key: Annotated[
        Optional[str], typer.Option(help="a retried submit creates one experiment")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Submit an experiment; prints its id (alone on stdout, for scripts)."""
    try:
        body = experiment_body(spec_file, assignments, name)
    except SpecError as error:
        raise fail(str(error), EXIT_INPUT) from None
    with connect(url, token) as client:
        experiment = client.submit_experiment(body, idempotency_key=idempotency_key)
    jobs = experiment.get("jobs") or []
    errors.print(Text(f"submitted experiment {experiment.get('name')}: {len(jobs)} jobs"))
    console.print(experiment["id"])


@app.command("add")
def add(
    experiment_id: str,
    assignments: Annotated[list[str], typer.Option("--set", help="grid values: key.path='[v1, v2]'")] = [],  # noqa: B006
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Grow an experiment: new grid values; cells that already exist are reused, never re-run."""
    try:
        grid = grid_values(assignments)
    except SpecError as error:
        raise fail(str(error), EXIT_INPUT) from None
    with connect(url, token) as client:
        result = client.add_cells(experiment_id, grid)
    added, existing = result.get("added") or [], result.get("existing") or []
    console.print(f"{experiment_id}: {len(added)} added, {len(existing)} already there")
    for job in added:
        console.print(Text(f"  {job.get('id')}  {cell_text(job.get('cell'))}"))


@app.command("list")
def list_experiments(
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Your experiments, newest first."""
    with connect(url, token) as client:
        page = client.experiments(limit=limit)
    table = Table(box=None, padding=(0, 1), pad_edge=False)
    table.add_column("id", no_wrap=True, min_width=32)  # whole: the other commands take it
    table.add_column("name", no_wrap=True, overflow="ellipsis", max_width=16)
    table.add_column("state", no_wrap=True, min_width=9)
    table.add_column("jobs", overflow="fold")
    table.add_column("created", no_wrap=True, min_width=16)
    for item in page.get("items") or []:
        created = str(item.get("created_at") or "")[:16].replace("T", " ")
        cells = [item["id"], str(item.get("name")), str(item.get("state")), counts_line(item), created]
        table.add_row(*(Text(cell) for cell in cells))
    console.print(table)


@app.command("watch")
def watch(
    experiment_id: str,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    poll: Annotated[float, typer.Option(help="seconds between polls", min=0.1)] = POLL_SECONDS,
) -> None:
    """Follow an experiment until it ends; exit 0 if all its jobs succeeded, 1 if not."""
    with connect(url, token) as client:
        final = follow_experiment(client, experiment_id, poll)
        console.print(results_table(client.experiment(experiment_id)))
    if not all_succeeded(final):
        raise typer.Exit(EXIT_FAILED)


def follow_experiment(client: TslaClient, experiment_id: str, poll: float) -> dict[str, Any]:
    """Poll GET /experiments/{id} and the running jobs; returns the experiment once finished."""
    columns = (
        TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
        TextColumn("{task.fields[summary]}"), TimeElapsedColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console) as progress:
        counts = progress.add_task("", total=None, summary="")
        tasks: dict[str, TaskID] = {}
        while True:
            experiment = client.experiment(experiment_id)
            progress.update(counts, description=Text(counts_line(experiment)).plain)
            update_job_lines(client, progress, tasks, experiment)
            if is_finished(experiment):
                progress.update(counts, total=1, completed=1)
                return experiment
            time.sleep(poll)


def update_job_lines(
    client: TslaClient, progress: Progress, tasks: dict[str, TaskID], experiment: dict[str, Any]
) -> None:
    """One progress line per job while it runs; a finished job's line shows its end and stays."""
    for member in experiment.get("jobs") or []:
        job_id, state = member["id"], member["state"]
        if state != "running" and job_id not in tasks:
            continue
        job = client.get(job_id)
        if job_id not in tasks:
            label = Text(f"{job_id[:8]} {cell_text(member.get('cell'), member.get('role'))}").plain
            tasks[job_id] = progress.add_task(label, total=job["epochs"], summary="")
        top1 = job.get("best_top1")
        summary = job["state"] + (f"  best top-1 {top1:.2f}%" if top1 is not None else "")
        progress.update(tasks[job_id], completed=job["epochs_done"], summary=summary)
        if job["state"] in FINISHED_STATES:
            progress.stop_task(tasks[job_id])


@app.command("table")
def table(
    experiment_id: str,
    csv: Annotated[bool, typer.Option("--csv", help="print the server's CSV instead")] = False,
    target: Annotated[
        Optional[float], typer.Option(help="test top-1 as a fraction (0.9 = 90%) for epochs-to-target")
    ] = None,
    early_epochs: Annotated[Optional[int], typer.Option(help="first epochs of early grad variance")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """The results: per group n, mean ± std of test top-1 (final, best, selected), p vs baseline."""
    with connect(url, token) as client:
        if csv:
            console.out(client.experiment_csv(experiment_id), end="", highlight=False)
            return
        experiment = client.experiment(experiment_id, target=target, early_epochs=early_epochs)
    console.print(results_table(experiment))
    console.print(Text(counts_line(experiment)))


@app.command("cancel")
def cancel(experiment_id: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Cancel every queued or running job of an experiment."""
    with connect(url, token) as client:
        experiment = client.cancel_experiment(experiment_id)
    console.print(Text(f"{experiment_id}: {counts_line(experiment)}"))

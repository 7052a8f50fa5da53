"""The service from a terminal: submit, jobs, show, watch, cancel, download, logs.

The server and token come from --url/--token or TSLA_URL/TSLA_TOKEN. Exit codes a script can
use: 0 done (a watched job succeeded), 1 the watched job failed or was canceled, 2 bad input
(a 4xx the user can fix), 3 server unreachable, 4 bad or missing token, 5 no such job or
checkpoint, 6 a download did not match its sha256, 7 retry later (429 at a limit, 503 busy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from tsla_cli.client import ApiError, ChecksumError, TslaClient
from tsla_spec.spec import SpecError, raw_spec_from_cli
from tsla_spec.vocabulary import FINISHED_STATES, METHODS

console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_FAILED, EXIT_INPUT, EXIT_UNREACHABLE, EXIT_AUTH, EXIT_NOT_FOUND, EXIT_CHECKSUM = 1, 2, 3, 4, 5, 6
# The server is busy or at a limit that will pass (429, 503): the same command may work later.
EXIT_RETRY_LATER = 7
WIDE_TERMINAL = 120

UrlOption = Annotated[str, typer.Option("--url", envvar="TSLA_URL", help="server URL")]
TokenOption = Annotated[Optional[str], typer.Option("--token", envvar="TSLA_TOKEN", help="API token")]
DEFAULT_URL = "http://127.0.0.1:8000"


def fail(message: str, code: int) -> typer.Exit:
    errors.print("[red]error:[/red]", Text(message))  # Text: the server's words are never markup
    return typer.Exit(code)


@contextmanager
def connect(url: str, token: str | None) -> Iterator[TslaClient]:
    """A client; turns transport and HTTP failures into one-line messages and exit codes."""
    if not token:
        raise fail("no API token: pass --token or set TSLA_TOKEN (`tsla token create NAME`)", EXIT_AUTH)
    client = TslaClient(url, token)
    try:
        yield client
    except httpx.TransportError as error:
        raise fail(f"cannot reach {url}: {error}", EXIT_UNREACHABLE) from None
    except ConnectionError as error:
        raise fail(str(error), EXIT_UNREACHABLE) from None
    except ApiError as error:
        codes = {401: EXIT_AUTH, 404: EXIT_NOT_FOUND, 429: EXIT_RETRY_LATER, 503: EXIT_RETRY_LATER}
        code = codes.get(error.status, EXIT_INPUT if error.status < 500 else 1)
        message = f"{error} (retry later)" if code == EXIT_RETRY_LATER else str(error)
        raise fail(message, code) from None
    except ChecksumError as error:
        raise fail(str(error), EXIT_CHECKSUM) from None
    finally:
        client.close()


def submit(
    spec_file: Annotated[
        Optional[Path], typer.Argument(help="YAML/JSON job spec", show_default=False)
    ] = None,
    preset: Annotated[Optional[str], typer.Option(help="start from a named preset")] = None,
    method: Annotated[Optional[str], typer.Option(help=f"one of {', '.join(METHODS)}")] = None,
    theta: Annotated[Optional[float], typer.Option()] = None,
    switch_epoch: Annotated[Optional[int], typer.Option()] = None,
    epochs: Annotated[Optional[int], typer.Option()] = None,
    teacher_job: Annotated[Optional[str], typer.Option(help="id of a succeeded job (-pre methods)")] = None,
    queue: Annotated[
        Optional[str], typer.Option(help="the server's queue to run on (default: by the device)")
    ] = None,
    name: Annotated[Optional[str], typer.Option()] = None,
    assignments: Annotated[list[str], typer.Option("--set", help="override a field: key.path=value")] = [],  # noqa: B006
    idempotency_key: Annotated[
        Optional[str], typer.Option(help="makes a retried submit create one job")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Submit a job; prints its id (alone on stdout, for scripts)."""
    flags = {
        "smoothing.method": method,
        "smoothing.theta": theta,
        "smoothing.switch_epoch": switch_epoch,
        "smoothing.teacher": {"job": teacher_job} if teacher_job is not None else None,
        "epochs": epochs,
        "resources.queue": queue,
        "name": name,
    }
    try:
        body = raw_spec_from_cli(spec_file, preset, flags, assignments)
    except SpecError as error:
        raise fail(str(error), EXIT_INPUT) from None
    with connect(url, token) as client:
        job = client.submit(body, idempotency_key=idempotency_key)
    summary = f"submitted {job['name']}: {job['method']} on {job['dataset']}, {job['epochs']} epochs"
    summary += f", queue {job['queue']}"
    errors.print(Text(summary))
    console.print(job["id"])


def jobs(
    state: Annotated[Optional[str], typer.Option(help="only jobs in this state")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List your jobs, newest first."""
    with connect(url, token) as client:
        page = client.list(state=state, limit=limit)
    console.print(jobs_table(page["items"], console.width))


def jobs_table(items: list[dict[str, Any]], width: int) -> Table:
    """Whole ids (scripts take them) and the main columns in `width` characters (80 fits); the
    name is cut to what is left; the data set, queue and creation time show on wider terminals."""
    wide = width >= WIDE_TERMINAL
    headers = ["id", "name", "state", "method", *(["dataset", "queue"] if wide else []), "epochs", "top-1"]
    headers += ["created"] if wide else []
    rows = []
    for job in items:
        best = f"{job['best_top1']:.2f}" if job["best_top1"] is not None else "-"
        cells = {"id": job["id"], "name": job["name"], "state": job["state"], "method": job["method"]}
        cells |= {"dataset": job["dataset"], "epochs": f"{job['epochs_done']}/{job['epochs']}", "top-1": best}
        cells["queue"] = job["queue"]
        cells["created"] = job["created_at"][:16].replace("T", " ")
        rows.append([str(cells[header]) for header in headers])
    widths = [max([len(header)] + [len(row[i]) for row in rows]) for i, header in enumerate(headers)]
    name_width = max(4, width - (sum(widths) - widths[1]) - (len(headers) - 1))
    # No borders: one space between columns.
    table = Table(box=None, padding=(0, 1), collapse_padding=True, pad_edge=False)
    for header, column_width in zip(headers, widths, strict=True):
        if header == "name":
            table.add_column(header, no_wrap=True, overflow="ellipsis", max_width=name_width)
        else:
            table.add_column(header, no_wrap=True, min_width=column_width)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # Text: a name is never read as markup
    return table


def show(job_id: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """A job's state, progress, error and checkpoints."""
    with connect(url, token) as client:
        job = client.get(job_id)
        checkpoints = client.checkpoints(job_id)
    table = Table(title=f"job {job['id']}", show_header=False)
    shown = ("name", "state", "method", "dataset", "queue", "epochs_done", "epochs", "best_top1", "attempt")
    for key in (*shown, "error", "created_at", "started_at", "finished_at"):
        table.add_row(key, Text(str(job[key])))
    table.add_row("checkpoints", ", ".join(c["name"] for c in checkpoints["items"]) or "-")
    console.print(table)


def epoch_summary(rows: dict[str, float]) -> str:
    parts = []
    if "train/loss" in rows:
        parts.append(f"loss {rows['train/loss']:.4f}")
    if "test/top1" in rows:
        parts.append(f"top-1 {rows['test/top1']:.2f}%")
    return "  ".join(parts)


def watch(job_id: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Follow a job live until it ends (exit 0 if it succeeds, 1 if not); survives drops."""
    with connect(url, token) as client:
        job = client.get(job_id)
        by_epoch: dict[int, dict[str, float]] = {}
        final = job
        columns = (
            TextColumn("[bold]{task.fields[stage]:<6}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("epochs  {task.fields[summary]}"), TimeElapsedColumn(),
        )  # fmt: skip
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("train", total=job["epochs"], stage=job["state"], summary="")
            for event in client.iter_events(job_id):
                if event.kind == "metric":
                    row = event.data
                    rows = by_epoch.setdefault(row["epoch"], {})
                    rows[f"{row['split']}/{row['name']}"] = row["value"]
                    progress.update(task, stage=row["stage"], summary=epoch_summary(rows))
                    if row["name"] == "epoch_time":
                        progress.update(task, completed=row["epoch"] + 1)
                elif event.kind in ("state", "end"):
                    final = event.data
                    if final["state"] != "running":
                        progress.update(task, stage=final["state"])
                elif event.kind == "reconnecting":
                    errors.print(f"[yellow]connection lost ({event.data['error']}); reconnecting[/yellow]")
        print_final(final, by_epoch)
    if final["state"] != "succeeded":
        raise typer.Exit(EXIT_FAILED)


def print_final(job: dict[str, Any], by_epoch: dict[int, dict[str, float]]) -> None:
    title = f"job {job['id']}: {job['state']}" + (f" ({job['error']})" if job["error"] else "")
    table = Table(title=Text(title))
    table.add_column("metric")
    table.add_column("last epoch", justify="right")
    if by_epoch:
        last = by_epoch[max(by_epoch)]
        for key in sorted(last):
            table.add_row(key, f"{last[key]:.4g}")
    if job["best_top1"] is not None:
        table.add_row("best test top-1", f"{job['best_top1']:.2f}%")
    console.print(table)


def cancel(job_id: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Cancel a job (a running one stops at its next step, after a checkpoint)."""
    with connect(url, token) as client:
        job = client.cancel(job_id)
    console.print(f"{job_id}: {job['state']}" + (" (cancel requested)" if job["state"] == "running" else ""))


def download(
    job_id: str,
    checkpoint: Annotated[str, typer.Option(help="best, latest or a checkpoint id")] = "best",
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="file to write")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Download a checkpoint; resumes a partial download and verifies its sha256."""
    target = output or Path(f"{job_id}-{checkpoint}.pt")
    with connect(url, token) as client:
        sha = client.download(job_id, checkpoint, target)
    console.print(f"{target}  sha256 {sha} (verified)")


def logs(
    job_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """A job's log lines (attempts, resumes, errors)."""
    import time

    with connect(url, token) as client:
        after: int | None = None
        while True:
            page = client.logs(job_id, after=after)
            for line in page["items"]:
                stamp = line["time"][:19].replace("T", " ")
                console.print(
                    f"{stamp}  [{line['attempt']}] {line['level']:<7} {line['message']}", markup=False
                )
            after = page["next_after"]
            if page["has_more"]:
                continue
            if not follow or client.get(job_id)["state"] in FINISHED_STATES:
                return
            time.sleep(1)


COMMANDS: dict[str, Callable[..., None]] = {
    "submit": submit, "jobs": jobs, "show": show, "watch": watch,
    "cancel": cancel, "download": download, "logs": logs,
}  # fmt: skip

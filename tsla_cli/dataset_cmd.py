"""`tsla dataset ...`: upload a data set (archive, .npz or folder), list, show and delete them.

Same server options and exit codes as the job commands (`tsla_cli.jobs_cmd`): 0 done, 2 bad input
(a refused upload says why in one line), 3 unreachable, 4 token, 5 no such data set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from tsla_cli.jobs_cmd import DEFAULT_URL, EXIT_INPUT, TokenOption, UrlOption, connect, console, fail

app = typer.Typer(no_args_is_help=True, add_completion=False, help="data sets: upload your own, list, delete")


@app.command("upload")
def upload_command(
    path: Annotated[Path, typer.Argument(help="an ImageFolder .tar/.tar.gz/.zip, an .npz, or a folder")],
    name: Annotated[str, typer.Option("--name", help="the data set's name (jobs use it as data.name)")],
    image_size: Annotated[
        Optional[int], typer.Option("--image-size", min=4, max=1024, help="resize images to this square size")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Upload, with a progress bar; a dropped connection resumes where the server's copy ends."""
    if not path.exists():
        raise fail(f"{path}: no such file or folder", EXIT_INPUT)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with connect(url, token) as client, Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"uploading {path.name}", total=None)

        def show(sent: int, total: int) -> None:
            bar.update(task, completed=sent, total=total)

        dataset = client.upload_dataset(path, name, image_size=image_size, progress=show)
    console.print(f"data set {dataset['name']}: {dataset['description']} (sha256 {dataset['sha256'][:16]}…)")
    print_findings(dataset)


@app.command("list")
def list_command(url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """The built-in data sets (and whether this server has each) and your uploads."""
    with connect(url, token) as client:
        found = client.datasets()
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("name", "kind", "classes", "shape", "train", "test", "available"):
        table.add_column(column, justify="right" if column in ("classes", "train", "test") else "left")
    for row in found:
        table.add_row(
            Text(row["name"]),  # Text: a name is never read as rich markup
            row["kind"],
            str(row["num_classes"] or "?"),
            "x".join(map(str, row["shape"])) if row.get("shape") else "?",
            f"{row['num_train']:,}" if row.get("num_train") else "?",
            f"{row['num_test']:,}" if row.get("num_test") else "?",
            "yes" if row["available"] else Text(f"no: {row['problem']}"),
        )
    console.print(table)


@app.command("show")
def show_command(name: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """One data set: classes with their counts, hash, sizes and what the checks found."""
    with connect(url, token) as client:
        dataset = client.dataset(name)
    console.print(Text(f"{dataset['name']} ({dataset['kind']}): {dataset['description']}"))
    if dataset.get("sha256"):
        sizes = f"stored {dataset['bytes']:,} bytes, uploaded {dataset['source_bytes']:,}"
        console.print(f"sha256 {dataset['sha256']}; {sizes}")
    if dataset.get("classes"):
        table = Table(box=box.SIMPLE_HEAD)
        for column in ("class", "train", "test"):
            table.add_column(column, justify="left" if column == "class" else "right")
        for label, train, test in zip(
            dataset["classes"], dataset["train_counts"], dataset["test_counts"], strict=True
        ):
            table.add_row(Text(label), f"{train:,}", f"{test:,}")
        console.print(table)
    print_findings(dataset)


@app.command("delete")
def delete_command(name: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Delete one of your data sets (refused while a queued or running job uses it)."""
    with connect(url, token) as client:
        client.delete_dataset(name)
    console.print(Text(f"deleted data set {name}"))


def print_findings(dataset: dict[str, Any]) -> None:
    findings = dataset.get("findings")
    if not findings:
        return
    if findings["imbalance_ratio"] > 1.5:
        small = ", ".join(findings["small_classes"]) or "none under half the mean"
        console.print(
            Text(
                f"class imbalance: largest / smallest train class {findings['imbalance_ratio']:.1f} ({small})"
            )
        )
    duplicates = findings["duplicates"]
    if duplicates["count"]:
        pairs = ", ".join(f"train {a} = test {b}" for a, b in duplicates["examples"][:3])
        console.print(
            Text(f"train/test leakage: {duplicates['count']} test images also in train (e.g. {pairs})")
        )
    for note in findings["notes"]:
        console.print(Text(f"note: {note}"))

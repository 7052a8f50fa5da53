"""`tsla demo`: the main job end to end over HTTP on the embedded stack.

Starts `tsla serve` (SQLite, filesystem broker, a real worker process), submits a TSLA job on
the real `digits` data, follows its metrics with the cursor until it finishes, downloads the
best checkpoint (sha256 verified), re-evaluates it with the core and prints the final table.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tsla_cli import stack
from tsla_cli.client import TslaClient

console = Console(highlight=False, soft_wrap=True)


def epoch_line(epoch: int, rows: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {epoch + 1:>2}/{epochs}  {rows['stage']:<6}  train loss {rows['train/loss']:.4f}  "
        f"test top1 {rows['test/top1']:6.2f}%  lr {rows['train/lr']:.4g}  "
        f"grad var {rows.get('train/grad_var', float('nan')):.3g}"
    )


def demo_command(
    home: Annotated[Path, typer.Option(help="state folder of the embedded stack")] = Path(".tsla/demo"),
    out: Annotated[Path, typer.Option(help="where the downloaded checkpoint goes")] = Path(
        "runs/demo-best.pt"
    ),
    epochs: Annotated[int, typer.Option()] = 10,
    switch_epoch: Annotated[int, typer.Option()] = 6,
) -> None:
    """Run the main job through the service, end to end, in about a minute."""
    port = stack.free_port()
    url = f"http://127.0.0.1:{port}"
    console.print(f"starting the embedded stack on {url} (home {home})")
    token = os.environ.get("TSLA_TOKEN") or f"tsla_demo_{secrets.token_urlsafe(16)}"
    env = {**os.environ, "TSLA_TOKEN": token}
    server = stack.start_process(
        stack.serve_command(home, port), env, die_with_parent=True
    )  # as in reproduce
    try:
        with TslaClient(url, token) as client:
            client.wait_until_healthy(timeout=120)
            spec = {"preset": "digits", "epochs": epochs, "seed": 0,
                    "smoothing": {"method": "tsla", "switch_epoch": switch_epoch}}  # fmt: skip
            job = client.submit(spec)
            console.print(f"submitted job {job['id']} ({job['name']}): POST /jobs -> {job['state']}")
            follow_metrics(client, job["id"], epochs)
            final = client.get(job["id"])
            if final["state"] != "succeeded":
                console.print(f"[red]job {final['state']}: {final['error']}[/red]")
                raise typer.Exit(1)
            out.parent.mkdir(parents=True, exist_ok=True)
            sha = client.download(job["id"], "best", out)
            console.print(f"downloaded best checkpoint to {out} (sha256 {sha[:16]}... verified)")
            show_final(client, job["id"], out)
    finally:
        stack.stop_process(server, grace=30)


def follow_metrics(client: TslaClient, job_id: str, epochs: int) -> None:
    """Print one line per finished epoch, reading rows with the metrics cursor."""
    epoch_rows: dict[int, dict[str, Any]] = {}
    for row in client.iter_metrics(job_id, follow=True, poll=0.3):
        rows = epoch_rows.setdefault(row["epoch"], {"stage": row["stage"]})
        rows[f"{row['split']}/{row['name']}"] = row["value"]
        if "train/epoch_time" in rows and "test/top1" in rows and not rows.get("printed"):
            rows["printed"] = True
            console.print(epoch_line(row["epoch"], rows, epochs))


def show_final(client: TslaClient, job_id: str, checkpoint: Path) -> None:
    from tsla_core import evaluate_checkpoint

    listing = client.checkpoints(job_id)
    best = next(c for c in listing["items"] if c["id"] == listing["best_id"])
    reproduced = evaluate_checkpoint(checkpoint, Path(os.environ.get("TSLA_DATA_ROOT", "data")))
    table = Table(title=f"job {job_id}: TSLA on digits")
    table.add_column("metric")
    table.add_column("reported by the service", justify="right")
    table.add_column("re-evaluated from the download", justify="right")
    for key in ("test/top1", "test/top5", "test/loss"):
        table.add_row(key, f"{best['metrics'][key]:.4f}", f"{reproduced[key]:.4f}")
    table.add_row("checkpoint", best["name"], f"{checkpoint.stat().st_size:,} bytes")
    console.print(table)

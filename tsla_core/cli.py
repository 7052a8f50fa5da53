"""`tsla train`: run the core on a preset or a spec file, with a per-epoch progress line.

Writes OUT/spec.json (the resolved spec), OUT/run.json (versions, device and the data set's
identity, tsla_spec.records.RunInfo), OUT/metrics.jsonl (one row per metric and epoch) and
OUT/checkpoints/. Running again into the same OUT resumes from its newest good checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from tsla_spec.spec import RunSpec, SpecError, build_spec, raw_spec_from_cli
from tsla_spec.vocabulary import METHODS

if TYPE_CHECKING:
    from tsla_core.loop import TrainResult
    from tsla_spec.records import MetricRow, RunInfo

console = Console(highlight=False, soft_wrap=True)
DEFAULT_DATA_ROOT = Path(os.environ.get("TSLA_DATA_ROOT", "data"))


def progress_line(rows: list[MetricRow], epochs: int) -> str:
    m = {f"{r.split}/{r.name}": r.value for r in rows}
    r0 = rows[0]
    parts = [
        f"epoch {r0.epoch + 1:>3}/{epochs}",
        f"{r0.stage:<6}",
        f"train loss {m['train/loss']:.4f}",
    ]
    if "val/top1" in m:
        parts.append(f"val loss {m['val/loss']:.4f} top1 {m['val/top1']:6.2f}%")
    parts += [
        f"test loss {m['test/loss']:.4f}",
        f"top1 {m['test/top1']:6.2f}%",
        f"top5 {m['test/top5']:6.2f}%",
        f"lr {m['train/lr']:.4g}",
    ]
    if "train/grad_var" in m:
        parts.append(f"grad var {m['train/grad_var']:.3g}")
    parts.append(f"{m['train/images_per_s']:,.0f} img/s  {m['train/epoch_time']:.1f}s")
    return "  ".join(parts)


def row_json(row: MetricRow) -> str:
    """A metric row as strict JSON: a NaN or infinite value is null, with `nonfinite` saying which."""
    data = asdict(row)
    if not math.isfinite(row.value):
        data["value"] = None
        data["nonfinite"] = "nan" if math.isnan(row.value) else ("inf" if row.value > 0 else "-inf")
    return json.dumps(data, allow_nan=False)


def keep_rows_before(metrics_path: Path, epoch: int) -> None:
    """Drop rows of epochs >= `epoch` so a resumed run does not write them twice."""
    if not metrics_path.exists():
        return
    kept = [
        line for line in metrics_path.read_text().splitlines() if line and json.loads(line)["epoch"] < epoch
    ]
    metrics_path.write_text("".join(f"{line}\n" for line in kept))


def train_command(
    spec_file: Annotated[
        Optional[Path], typer.Argument(help="YAML/JSON run spec", show_default=False)
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="output folder (resumed if it has checkpoints)")] = Path(
        "runs/latest"
    ),
    preset: Annotated[Optional[str], typer.Option(help="start from a named preset")] = None,
    method: Annotated[Optional[str], typer.Option(help=f"one of {', '.join(METHODS)}")] = None,
    theta: Annotated[Optional[float], typer.Option(help="smoothing weight of the prior")] = None,
    switch_epoch: Annotated[Optional[int], typer.Option(help="TSLA: first one-hot epoch")] = None,
    epochs: Annotated[Optional[int], typer.Option()] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    teacher: Annotated[Optional[Path], typer.Option(help="checkpoint file for the -pre prior")] = None,
    assignments: Annotated[
        list[str], typer.Option("--set", help="override a spec field: key.path=value")
    ] = [],  # noqa: B006
    data_root: Annotated[
        Path, typer.Option(help="folder holding the data sets (env TSLA_DATA_ROOT)")
    ] = DEFAULT_DATA_ROOT,
) -> None:
    """Train a TSLA run on this machine, without the service."""
    flags = {
        "smoothing.method": method,
        "smoothing.theta": theta,
        "smoothing.switch_epoch": switch_epoch,
        "smoothing.teacher": {"path": str(teacher)} if teacher is not None else None,
        "epochs": epochs,
        "seed": seed,
    }
    try:
        spec = build_spec(raw_spec_from_cli(spec_file, preset, flags, assignments))
    except SpecError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    run(spec, out, data_root)


def run(spec: RunSpec, out: Path, data_root: Path) -> None:
    from tsla_core.checkpoint import CheckpointError, CheckpointStorageError
    from tsla_core.loop import DivergedError, Hooks, SpecMismatchError, Trainer
    from tsla_core.readers import DatasetError

    metrics_path = out / "metrics.jsonl"

    def on_metrics(rows: list[MetricRow]) -> None:
        with metrics_path.open("a") as handle:
            handle.writelines(row_json(row) + "\n" for row in rows)
        console.print(progress_line(rows, spec.epochs))

    def on_start(info: RunInfo) -> None:
        (out / "run.json").write_text(json.dumps(asdict(info), indent=2) + "\n")

    hooks = Hooks(
        on_metrics=on_metrics,
        on_log=lambda message: console.print(f"[dim]{message}[/dim]"),
        on_start=on_start,
    )
    try:
        trainer = Trainer(spec, out, data_root, hooks)
        trainer.resume_if_possible()
        out.mkdir(parents=True, exist_ok=True)
    except (DatasetError, CheckpointError, SpecMismatchError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    if trainer.epoch >= spec.epochs:
        console.print(f"{out} is already complete ({spec.epochs} epochs); nothing to train")
        return
    (out / "spec.json").write_text(spec.model_dump_json(indent=2) + "\n")
    keep_rows_before(metrics_path, trainer.epoch)
    console.print(
        f"training {spec.model.arch} (width {spec.model.width}) on {spec.data.name} with "
        f"{spec.smoothing.method} on {trainer.device}"
        f"{' bf16' if trainer.autocast_dtype is not None else ' fp32'} into {out}"
    )
    try:
        result = trainer.fit(resume=False)
    except (DivergedError, CheckpointStorageError) as error:
        # The run itself failed (its rows up to here are in metrics.jsonl): exit 1, not 2 (bad input).
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None
    console.print(result_table(spec, result))


def result_table(spec: RunSpec, result: TrainResult) -> Table:
    """The final metrics and the best checkpoint, with what chose it."""
    table = Table(title=f"{spec.smoothing.method} on {spec.data.name}: {result.status}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.final_metrics.items():
        table.add_row(key, f"{value:.4g}")
    if result.best is not None:
        metrics = result.best.metrics
        chosen_by = f"{metrics['val/top1']:.2f}% val top-1" if "val/top1" in metrics else "the latest"
        table.add_row("best checkpoint", f"{result.best.name} ({chosen_by})")
    return table

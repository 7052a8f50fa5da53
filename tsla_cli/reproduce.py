"""`tsla reproduce`: the paper's comparison (baseline, LSR, TSLA(s), LSR-pre, TSLA-pre(s)) as one
experiment through a running service (--url/--token) or the embedded stack, and its report.

Writes `table.md`, `table.csv` (the server's) and `curves.png` (test top-1 and gradient variance
per method, mean ± std over the seeds, switch epochs marked) to --out.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.text import Text

from tsla_cli import stack
from tsla_cli.client import TslaClient
from tsla_cli.experiment_cmd import all_succeeded, follow_experiment, markdown_table, results_table, row_label
from tsla_cli.jobs_cmd import EXIT_FAILED, EXIT_INPUT, TokenOption, connect, console, errors, fail
from tsla_spec.protocols import PROTOCOLS, Protocol, experiment_body
from tsla_spec.spec import SpecError, deep_merge, parse_override
from tsla_spec.vocabulary import METHODS, TEST_TOP1, TRAIN_GRAD_VAR

CURVES = ((TEST_TOP1, "test top-1 (%)", "linear"), (TRAIN_GRAD_VAR, "gradient variance (train)", "log"))
PLOTS_MISSING = "curves.png needs matplotlib: pip install 'tsla[plots]'"


def reproduce_command(
    protocol: Annotated[str, typer.Option(help=f"one of {', '.join(PROTOCOLS)}")] = "digits",
    seeds: Annotated[int, typer.Option(min=1, max=20, help="seeds 0 .. N-1 per method")] = 3,
    url: Annotated[Optional[str], typer.Option("--url", envvar="TSLA_URL", help="a running service")] = None,
    token: TokenOption = None,
    out: Annotated[Optional[Path], typer.Option(help="default runs/reproduce-<protocol>")] = None,
    home: Annotated[Path, typer.Option(help="state of the embedded stack")] = Path(".tsla/reproduce"),
    assignments: Annotated[list[str], typer.Option("--set", help="override a base field: key=value")] = [],  # noqa: B006
    max_concurrent: Annotated[int, typer.Option(min=1, help="jobs on the broker at once")] = 2,
    poll: Annotated[float, typer.Option(min=0.1, help="seconds between progress polls")] = 1.0,
) -> None:
    """Run the paper's comparison as one experiment and print the paper-style table."""
    chosen = PROTOCOLS.get(protocol)
    if chosen is None:
        raise fail(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}", EXIT_INPUT)
    require_matplotlib()
    try:
        body = protocol_body(chosen, seeds, assignments, max_concurrent)
    except SpecError as error:
        raise fail(str(error), EXIT_INPUT) from None
    target = out or Path("runs") / f"reproduce-{chosen.name}"
    if chosen.needs:
        errors.print(Text(f"{chosen.name} needs {chosen.needs}"))
    started = time.monotonic()
    with service(url, token, home) as client:
        experiment = client.submit_experiment(body)
        errors.print(Text(f"experiment {experiment['id']}: {chosen.summary}"))
        final = follow_experiment(client, experiment["id"], poll)
        report = client.experiment(experiment["id"])
        console.print(results_table(report))
        write_report(client, report, chosen, target)
    console.print(f"wrote {target}/table.md, table.csv, curves.png in {time.monotonic() - started:.0f} s")
    if not all_succeeded(final):
        raise typer.Exit(EXIT_FAILED)


def protocol_body(
    protocol: Protocol, seeds: int, assignments: list[str], max_concurrent: int
) -> dict[str, Any]:
    body = experiment_body(protocol, seeds, max_concurrent)
    for assignment in assignments:
        body["base"] = deep_merge(body["base"], parse_override(assignment))
    return body


def require_matplotlib() -> None:
    """Fail before any training when the report could not be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise fail(PLOTS_MISSING, EXIT_INPUT) from None


@contextmanager
def service(url: str | None, token: str | None, home: Path) -> Iterator[TslaClient]:
    """A client of the service at `url`, or of an embedded stack started for this command."""
    if url is not None:
        with connect(url, token) as client:
            yield client
        return
    port = stack.free_port()
    local = f"http://127.0.0.1:{port}"
    token = token or f"tsla_reproduce_{secrets.token_urlsafe(16)}"
    errors.print(f"starting the embedded stack on {local} (home {home})")
    env = {**stack.service_env(), "TSLA_TOKEN": token}
    if "TSLA_DATA_ROOT" in os.environ:
        env["TSLA_DATA_ROOT"] = os.environ["TSLA_DATA_ROOT"]
    # die_with_parent: a killed command (SIGTERM, SIGKILL) never leaves its stack running.
    server = stack.start_process(
        stack.serve_command(home, port), env, log=home / "serve.log", die_with_parent=True
    )
    try:
        stack.wait_healthy(local, [server], timeout=120)
        with connect(local, token) as client:
            yield client
    finally:
        stack.stop_process(server, grace=30)


# --- the report -----------------------------------------------------------------------------------


def paper_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Baseline, LSR, TSLA(s...), LSR-pre, TSLA-pre(s...): the paper's row order."""

    def key(row: dict[str, Any]) -> tuple[int, float, str]:
        group = row.get("group") or {}
        method = group.get("smoothing.method")
        rank = METHODS.index(method) if method in METHODS else len(METHODS)
        switch = group.get("smoothing.switch_epoch")
        return rank, float(switch) if isinstance(switch, int | float) else -1.0, str(sorted(group.items()))

    return sorted(rows, key=key)


def report_markdown(report: dict[str, Any], protocol: Protocol) -> str:
    rows = paper_order(report.get("table") or [])
    head = f"# {protocol.name}: {protocol.summary}\n\nTest top-1 (%), mean ± std over seeds; "
    head += "p: against the baseline; ★ best by the objective on validation.\n\n"
    return head + markdown_table(rows, label_header="method")


def write_report(client: TslaClient, report: dict[str, Any], protocol: Protocol, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(report_markdown(report, protocol))
    (out / "table.csv").write_text(client.experiment_csv(report["id"]))
    curves = {name: client.experiment_curves(report["id"], name=name) for name, _, _ in CURVES}
    plot_curves(curves, out / "curves.png")


def curve_groups(curves: dict[str, Any]) -> list[dict[str, Any]]:
    """Each group's curve as {group, epochs, mean, std}, from GET /experiments/{id}/curves."""
    found = curves.get("groups") or curves.get("items") or []
    groups = []
    for entry in found:
        if "points" in entry:
            points = [p for p in entry["points"] if p.get("mean") is not None]
            epochs = [p["epoch"] for p in points]
            mean = [p["mean"] for p in points]
            std = [p.get("std") or 0.0 for p in points]
        else:
            epochs, mean = list(entry.get("epochs", [])), list(entry.get("mean", []))
            std = [s or 0.0 for s in entry.get("std", [0.0] * len(mean))]
        groups.append({"group": entry.get("group") or {}, "epochs": epochs, "mean": mean, "std": std})
    return groups


def plot_curves(curves: dict[str, dict[str, Any]], path: Path) -> None:
    """Overlaid curves per method with a ± std band; a TSLA group's switch epoch as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(CURVES), figsize=(6.5 * len(CURVES), 4.5), constrained_layout=True)
    for axis, (name, title, scale) in zip(axes, CURVES, strict=True):
        groups = paper_order([{**g, "group": g["group"]} for g in curve_groups(curves.get(name) or {})])
        for index, group in enumerate(groups):
            color = f"C{index % 10}"
            label = row_label({"group": group["group"]})
            mean, std = group["mean"], group["std"]
            axis.plot(group["epochs"], mean, color=color, label=label, linewidth=1.6)
            low = [max(m - s, 1e-12) if scale == "log" else m - s for m, s in zip(mean, std, strict=True)]
            high = [m + s for m, s in zip(mean, std, strict=True)]
            axis.fill_between(group["epochs"], low, high, color=color, alpha=0.15, linewidth=0)
            switch = group["group"].get("smoothing.switch_epoch")
            if group["group"].get("smoothing.method") in ("tsla", "tsla-pre") and switch is not None:
                axis.axvline(switch, color=color, linestyle="--", linewidth=1, alpha=0.8)
        axis.set_yscale(scale)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    figure.savefig(path, dpi=120)
    plt.close(figure)

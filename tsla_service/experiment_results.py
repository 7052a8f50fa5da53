"""An experiment's results: the table (one row per group of seeds), its CSV, and mean curves.

A group is every cell with the same grid values but `seed`. Reads are flat in the jobs' history:
the experiment's cells, their metric summaries (one row per job and metric, kept by
`results.record_metrics`), and point or first-k-epochs lookups on the metrics' unique
(job_id, epoch, split, name) index; never every row of a job. Each function issues a fixed
number of statements, however long the jobs ran.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from tsla_service.models import Experiment, Job, Metric, MetricRecord, MetricSummary
from tsla_service.sample_stats import Estimate, estimate, strided, welch_p_value
from tsla_service.summaries import MetricKey, metric_key
from tsla_spec.vocabulary import TEST_TOP1, TEST_TOP5, TRAIN_GRAD_VAR, VAL_TOP1

SEED = "seed"  # the grid key that repeats a cell; every other key makes a group
SMOOTHING = "smoothing."  # grid keys of the method; a baseline group must match the others
BASELINE = "baseline"
SUCCEEDED = "succeeded"
CELL = "cell"  # a job's role for a grid cell (the other role, "teacher", is not in the table)
# top-1 is stored in percent; `target` is a fraction (0.9 = 90%)
PERCENT = 100.0


@dataclass(frozen=True)
class CellJob:
    """The columns of a cell's job that the results read."""

    id: str
    state: str
    cell: dict[str, Any]
    method: str  # from the job's spec: a grid without smoothing.method still has one
    provenance: dict[str, Any] | None


@dataclass
class Group:
    key: dict[str, Any]  # the grid values of its cells, but seed
    jobs: list[CellJob] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.jobs[0].method

    @property
    def succeeded(self) -> list[CellJob]:
        return [job for job in self.jobs if job.state == SUCCEEDED]


@dataclass(frozen=True)
class JobNumbers:
    """One succeeded job's numbers that the table averages over a group; None: not logged."""

    final: float | None = None  # the objective at the job's last epoch
    best: float | None = None  # the objective's best over epochs (max or min by its mode)
    top5: float | None = None  # test/top5 at the last epoch
    selected_test: float | None = None  # test/top1 at the epoch of the best val/top1
    epochs_to_target: int | None = None  # epochs trained until test/top1 reached the target
    early_grad_var: float | None = None  # mean train/grad_var over the first k epochs


@dataclass(frozen=True)
class TableRow:
    """A group's row: estimates over its succeeded jobs (None when none has the value)."""

    group: dict[str, Any]
    n: int  # jobs in the group, any state
    n_succeeded: int
    final: Estimate | None
    best: Estimate | None
    top5: Estimate | None
    selected_test: Estimate | None
    epochs_to_target: Estimate | None
    reached: int | None  # succeeded jobs that reached the target; None without a target
    early_grad_var: Estimate | None
    p_value: float | None  # Welch's t-test of `final` against the baseline group
    is_best: bool  # the best `final` mean by the objective's mode
    job_ids: list[str]


@dataclass(frozen=True)
class CurvePoint:
    epoch: int
    mean: float
    std: float | None
    n: int


@dataclass(frozen=True)
class CurveGroup:
    group: dict[str, Any]
    job_ids: list[str]
    points: list[CurvePoint]


# --- the experiment's cells and groups ------------------------------------------------------------


def experiment_cells(session: Session, experiment: Experiment) -> list[CellJob]:
    """The experiment's grid-cell jobs (not its teachers), in the order they were made."""
    query = (
        select(Job.id, Job.state, Job.cell, Job.method, Job.provenance)
        .where(Job.experiment_id == experiment.id, Job.role == CELL)
        .order_by(Job.position, Job.id)
    )
    return [
        CellJob(row.id, row.state, row.cell or {}, row.method, row.provenance)
        for row in session.execute(query)
    ]


def group_key(cell: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in cell.items() if key != SEED}


def groups_of(cells: Iterable[CellJob]) -> list[Group]:
    """Cells grouped by their grid values but seed, groups in the order of their first cell."""
    groups: dict[str, Group] = {}
    for job in cells:
        key = group_key(job.cell)
        groups.setdefault(json.dumps(key, sort_keys=True), Group(key)).jobs.append(job)
    return list(groups.values())


def baseline_of(group: Group, groups: Sequence[Group]) -> Group | None:
    """The group `group` is tested against: a `baseline` method's group with the same values of
    every non-smoothing key; of several, the one sharing most smoothing values (then the first)."""
    if group.method == BASELINE:
        return None

    def others(candidate: Group) -> dict[str, Any]:
        return {k: v for k, v in candidate.key.items() if not k.startswith(SMOOTHING)}

    candidates = [g for g in groups if g.method == BASELINE and others(g) == others(group)]
    if not candidates:
        return None
    return max(candidates, key=lambda g: sum(g.key.get(k) == v for k, v in group.key.items()))


# --- the numbers of each succeeded job --------------------------------------------------------------


@dataclass(frozen=True)
class SummaryValues:
    """What the table reads of a summary row."""

    last_value: float | None
    max_value: float | None
    max_epoch: int | None
    min_value: float | None


def load_summaries(
    session: Session, job_ids: Sequence[str], keys: Iterable[MetricKey]
) -> dict[tuple[str, MetricKey], SummaryValues]:
    """The jobs' summaries of these metrics, by (job id, metric)."""
    if not job_ids:
        return {}
    summary = MetricSummary
    query = select(
        summary.job_id, summary.split, summary.name, summary.last_value, summary.max_value,
        summary.max_epoch, summary.min_value,
    ).where(summary.job_id.in_(job_ids), tuple_(summary.split, summary.name).in_(list(keys)))  # fmt: skip
    return {
        (row.job_id, (row.split, row.name)): SummaryValues(
            row.last_value, row.max_value, row.max_epoch, row.min_value
        )
        for row in session.execute(query)
    }


def values_at(
    session: Session, name: str, job_epochs: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], float | None]:
    """`name` at these (job, epoch) pairs: point lookups on the unique index."""
    if not job_epochs:
        return {}
    split, short = metric_key(name)
    query = select(Metric.job_id, Metric.epoch, Metric.value).where(
        tuple_(Metric.job_id, Metric.epoch).in_(list(job_epochs)), Metric.split == split, Metric.name == short
    )
    return {(job_id, epoch): value for job_id, epoch, value in session.execute(query)}


def values_on(
    session: Session, name: str, job_ids: Sequence[str], epochs: Sequence[int]
) -> dict[tuple[str, int], float | None]:
    """`name` of every job at every one of `epochs`: point lookups on the unique index."""
    if not job_ids or not epochs:
        return {}
    split, short = metric_key(name)
    query = select(Metric.job_id, Metric.epoch, Metric.value).where(
        Metric.job_id.in_(job_ids), Metric.epoch.in_(epochs), Metric.split == split, Metric.name == short
    )
    return {(job_id, epoch): value for job_id, epoch, value in session.execute(query)}


def early_means(session: Session, job_ids: Sequence[str], epochs: int) -> dict[str, float | None]:
    """Mean train/grad_var of each job over epochs 0 .. epochs-1 (a range of the unique index;
    non-finite values, stored as NULL, are skipped by AVG)."""
    if not job_ids:
        return {}
    split, short = metric_key(TRAIN_GRAD_VAR)
    query = (
        select(Metric.job_id, func.avg(Metric.value))
        .where(Metric.job_id.in_(job_ids), Metric.epoch < epochs, Metric.split == split, Metric.name == short)
        .group_by(Metric.job_id)
    )
    return {job_id: None if mean is None else float(mean) for job_id, mean in session.execute(query)}


def epochs_to_reach(session: Session, job_ids: Sequence[str], target: float) -> dict[str, int | None]:
    """Epochs trained until test/top1 first reached `target` (a fraction): per job the record
    (new running maximum) with the lowest value at or above it, one index probe each; None for
    a job that never reached it."""
    reached: dict[str, int | None] = dict.fromkeys(job_ids)
    if not job_ids:
        return reached
    threshold = round(PERCENT * target, 9)  # 0.9 * 100 is 90.00000000000001
    split, short = metric_key(TEST_TOP1)
    record, summary = MetricRecord, MetricSummary
    first = (
        select(record.epoch)
        .where(record.job_id == summary.job_id, record.split == split, record.name == short)
        .where(record.value >= threshold)
        .order_by(record.value)
        .limit(1)
        .correlate(summary)
        .scalar_subquery()
    )
    query = select(summary.job_id, first).where(
        summary.job_id.in_(job_ids), summary.split == split, summary.name == short
    )
    for job_id, epoch in session.execute(query):
        reached[job_id] = None if epoch is None else epoch + 1
    return reached


def job_numbers(
    session: Session, experiment: Experiment, job_ids: Sequence[str], target: float | None, early_epochs: int
) -> dict[str, JobNumbers]:
    """Every number the table averages, for these (succeeded) jobs, in five statements at most."""
    objective = metric_key(experiment.objective_metric)
    keys = {objective, metric_key(TEST_TOP5), metric_key(VAL_TOP1)}
    summaries = load_summaries(session, job_ids, keys)
    val_best = [
        (job_id, summary.max_epoch)
        for (job_id, key), summary in summaries.items()
        if key == metric_key(VAL_TOP1) and summary.max_epoch is not None
    ]
    selected = {job_id: value for (job_id, _), value in values_at(session, TEST_TOP1, val_best).items()}
    early = early_means(session, job_ids, early_epochs)
    reach = epochs_to_reach(session, job_ids, target) if target is not None else {}
    best_column = "max_value" if experiment.objective_mode == "max" else "min_value"
    numbers = {}
    for job_id in job_ids:
        final = summaries.get((job_id, objective))
        top5 = summaries.get((job_id, metric_key(TEST_TOP5)))
        numbers[job_id] = JobNumbers(
            final=final.last_value if final else None,
            best=getattr(final, best_column) if final else None,
            top5=top5.last_value if top5 else None,
            selected_test=selected.get(job_id),
            epochs_to_target=reach.get(job_id),
            early_grad_var=early.get(job_id),
        )
    return numbers


# --- the table ----------------------------------------------------------------------------------------


def group_row(
    group: Group, numbers: dict[str, JobNumbers], baseline: Group | None, target: float | None
) -> TableRow:
    done = [numbers[job.id] for job in group.succeeded]
    p_value = None
    if baseline is not None:
        against = [numbers[job.id].final for job in baseline.succeeded]
        p_value = welch_p_value([job.final for job in done], against)
    return TableRow(
        group=group.key,
        n=len(group.jobs),
        n_succeeded=len(done),
        final=estimate(job.final for job in done),
        best=estimate(job.best for job in done),
        top5=estimate(job.top5 for job in done),
        selected_test=estimate(job.selected_test for job in done),
        epochs_to_target=estimate(job.epochs_to_target for job in done),
        reached=None if target is None else sum(job.epochs_to_target is not None for job in done),
        early_grad_var=estimate(job.early_grad_var for job in done),
        p_value=p_value,
        is_best=False,
        job_ids=[job.id for job in group.jobs],
    )


def mark_best(rows: list[TableRow], mode: str) -> list[TableRow]:
    """The rows with the best `final` mean (the first on ties) marked `is_best`."""
    scored = [(row.final.mean, index) for index, row in enumerate(rows) if row.final is not None]
    if not scored:
        return rows
    best = (max if mode == "max" else min)(scored, key=lambda item: item[0])[1]
    return [row if index != best else replace(row, is_best=True) for index, row in enumerate(rows)]


def table_of(
    session: Session, experiment: Experiment, groups: Sequence[Group], target: float | None, early_epochs: int
) -> list[TableRow]:
    job_ids = [job.id for group in groups for job in group.succeeded]
    numbers = job_numbers(session, experiment, job_ids, target, early_epochs)
    rows = [group_row(group, numbers, baseline_of(group, groups), target) for group in groups]
    return mark_best(rows, experiment.objective_mode)


def experiment_table(
    session: Session, experiment: Experiment, target: float | None = None, early_epochs: int = 3
) -> list[TableRow]:
    """One row per group. `target`: a test top-1 fraction (0.9 = 90%) for `epochs_to_target`;
    `early_epochs`: how many first epochs `early_grad_var` averages (the paper's RQ2)."""
    return table_of(
        session, experiment, groups_of(experiment_cells(session, experiment)), target, early_epochs
    )


# --- the CSV ----------------------------------------------------------------------------------------

ESTIMATES = ("final", "best", "top5", "selected_test", "epochs_to_target", "early_grad_var")
# CSV column: its dotted path in jobs.provenance (a tsla_spec.records.RunInfo)
PROVENANCE = {
    "project_version": "tsla_version",
    "git_commit": "git_commit",
    "torch_version": "torch_version",
    "device": "device",
    "device_name": "device_name",
    "dataset_name": "dataset.name",
    "dataset_hash": "dataset.sha256",
}
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: Any) -> str:
    """A cell: strings as they are (one that a spreadsheet would run as a formula quoted with
    `'`), None empty, anything else as JSON (true, 0.5, [60, 120])."""
    if value is None:
        return ""
    if isinstance(value, str):
        return "'" + value if value.startswith(FORMULA_STARTS) else value
    return json.dumps(value)


def dotted(record: dict[str, Any] | None, path: str) -> Any:
    """record["a"]["b"] for "a.b"; None where a step is missing."""
    value: Any = record
    for step in path.split("."):
        value = value.get(step) if isinstance(value, dict) else None
    return value


def provenance_of(group: Group) -> dict[str, str]:
    """Each provenance column's distinct values among the group's succeeded jobs, `; `-joined."""
    found: dict[str, str] = {}
    for column, path in PROVENANCE.items():
        values = {csv_text(dotted(job.provenance, path)) for job in group.succeeded}
        found[column] = "; ".join(sorted(values - {""}))
    return found


def csv_columns(groups: Sequence[Group]) -> list[str]:
    keys = list(dict.fromkeys(key for group in groups for key in group.key))
    stats = [f"{name}_{part}" for name in ESTIMATES for part in ("mean", "std", "n")]
    return [*keys, "n", "n_succeeded", *stats, "reached", "p_value", "is_best", "job_ids", *PROVENANCE]


def csv_record(row: TableRow, group: Group) -> dict[str, str]:
    record = {key: csv_text(value) for key, value in group.key.items()}
    record |= {"n": str(row.n), "n_succeeded": str(row.n_succeeded)}
    for name in ESTIMATES:
        found: Estimate | None = getattr(row, name)
        for part in ("mean", "std", "n"):
            record[f"{name}_{part}"] = csv_text(getattr(found, part) if found else None)
    record |= {"reached": csv_text(row.reached), "p_value": csv_text(row.p_value)}
    record |= {"is_best": csv_text(row.is_best), "job_ids": " ".join(row.job_ids)}
    return record | provenance_of(group)


def table_csv(
    session: Session, experiment: Experiment, target: float | None = None, early_epochs: int = 3
) -> str:
    """The table as CSV: group keys, `{statistic}_{mean,std,n}`, then the provenance columns."""
    groups = groups_of(experiment_cells(session, experiment))
    rows = table_of(session, experiment, groups, target, early_epochs)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=csv_columns(groups), lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_record(row, group) for row, group in zip(rows, groups, strict=True))
    return out.getvalue()


# --- curves ---------------------------------------------------------------------------------------


def curve_epochs(session: Session, job_ids: Sequence[str], name: str, points: int) -> list[int]:
    """At most `points` epochs, evenly strided over the longest job's history of `name`."""
    if not job_ids:
        return []
    split, short = metric_key(name)
    query = select(func.max(MetricSummary.last_epoch)).where(
        MetricSummary.job_id.in_(job_ids), MetricSummary.split == split, MetricSummary.name == short
    )
    last = session.scalar(query)
    return [] if last is None else strided(last + 1, points)


def experiment_curves(
    session: Session, experiment: Experiment, name: str, points: int = 200
) -> list[CurveGroup]:
    """Per group, `name` (e.g. test/top1) by epoch: mean and std over the group's jobs (running
    ones included) that logged a finite value at that epoch, at `points` epochs at most."""
    groups = groups_of(experiment_cells(session, experiment))
    job_ids = [job.id for group in groups for job in group.jobs]
    epochs = curve_epochs(session, job_ids, name, points)
    values = values_on(session, name, job_ids, epochs)
    curves = []
    for group in groups:
        found = [(epoch, estimate(values.get((job.id, epoch)) for job in group.jobs)) for epoch in epochs]
        curve = [CurvePoint(epoch, e.mean, e.std, e.n) for epoch, e in found if e is not None]
        curves.append(CurveGroup(group.key, [job.id for job in group.jobs], curve))
    return curves

"""The experiment results table against numbers worked out by hand, on SQLite and PostgreSQL;
the metric summaries under re-run epochs; and a read path whose statement count does not grow
with the jobs' history."""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from scipy.stats import ttest_ind
from sqlalchemy import Engine, event, select, text
from sqlalchemy.orm import Session

from tests.api.conftest import migrated_database
from tsla_service import experiment_results, results
from tsla_service.db import get_engine, session_factory
from tsla_service.experiment_results import CellJob, Group, baseline_of
from tsla_service.migrate import alembic_config
from tsla_service.models import Experiment, Job, Metric, MetricRecord, MetricSummary
from tsla_service.sample_stats import Estimate, strided, welch_p_value
from tsla_service.summaries import Summary, read
from tsla_spec.records import CheckpointRecord, MetricRow

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database(request.param, tmp_path_factory.mktemp(request.param)) as url:
        yield url


@pytest.fixture
def session(database: str) -> Iterator[Session]:
    with session_factory(database)() as db:
        yield db


def add_experiment(session: Session, objective: str = "test/top1", mode: str = "max") -> Experiment:
    experiment = Experiment(
        owner="owner", name="e", base={}, grid={}, max_concurrent=4, collapsed=[],
        objective_metric=objective, objective_mode=mode,
    )  # fmt: skip
    session.add(experiment)
    session.commit()
    return experiment


def add_job(
    session: Session, experiment: Experiment, cell: dict[str, Any], method: str, state: str = "succeeded"
) -> str:
    position = len(session.scalars(select(Job.id).where(Job.experiment_id == experiment.id)).all())
    job = Job(
        name="j", owner="owner", state=state, spec={}, method=method, dataset="digits", epochs=4,
        experiment_id=experiment.id, cell=cell, cell_key=secrets.token_hex(8), role="cell", position=position,
    )  # fmt: skip
    session.add(job)
    session.commit()
    return job.id


def metric(epoch: int, name: str, value: float) -> MetricRow:
    split, short = name.split("/")
    return MetricRow(epoch, split, short, value, "smooth", epoch)  # type: ignore[arg-type]


def record_curves(session: Session, job_id: str, curves: dict[str, list[float]]) -> None:
    """One record_metrics call per epoch, as the worker writes them."""
    for epoch in range(max(len(values) for values in curves.values())):
        rows = [metric(epoch, name, values[epoch]) for name, values in curves.items() if epoch < len(values)]
        results.record_metrics(session, job_id, 1, rows)


def job(test: list[float], val: list[float], top5: float, grad_var: list[float]) -> dict[str, list[float]]:
    return {
        "test/top1": test,
        "val/top1": val,
        "test/top5": [top5 - 3, top5 - 2, top5 - 1, top5],
        "train/grad_var": grad_var,
    }


BASELINE = [
    job([50, 70, 80, 85], [48, 69, 82, 81], 96, [4.0, 3.0, 2.0, 1.0]),
    job([55, 72, 88, 86], [50, 70, 75, 79], 97, [5.0, 4.0, 3.0, 2.0]),
    job([52, 60, 75, 84], [51, 66, 77, 76], 95, [6.0, 5.0, 4.0, 3.0]),  # never reaches 85
]
TSLA = [
    job([60, 80, 91, 92], [58, 81, 90, 89], 99, [2.0, INF, 1.0, 0.5]),  # inf: skipped
    job([62, 83, 90, 93], [60, 84, 88, 92], 98, [2.5, 1.5, 0.5, 0.25]),
    job([58, NAN, 89, 91], [55, 79, 91, 90], 97, [3.0, 2.0, 1.0, 0.5]),  # NaN: skipped
]


def hand(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1), written out."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def assert_estimate(found: Estimate | None, values: list[float]) -> None:
    assert found is not None
    mean, std = hand(values)
    assert (found.mean, found.std, found.n) == (pytest.approx(mean), pytest.approx(std), len(values))


@pytest.fixture
def sweep(session: Session) -> Experiment:
    """baseline x 3 seeds, tsla x 3 seeds and a failed tsla seed."""
    experiment = add_experiment(session)
    for seed, curves in enumerate(BASELINE):
        cell = {"smoothing.method": "baseline", "seed": seed}
        record_curves(session, add_job(session, experiment, cell, "baseline"), curves)
    for seed, curves in enumerate(TSLA):
        cell = {"smoothing.method": "tsla", "seed": seed}
        record_curves(session, add_job(session, experiment, cell, "tsla"), curves)
    failed = add_job(session, experiment, {"smoothing.method": "tsla", "seed": 3}, "tsla", state="failed")
    record_curves(session, failed, {"test/top1": [10.0, 20.0]})
    return experiment


def test_the_table_matches_a_hand_computation(session: Session, sweep: Experiment) -> None:
    baseline, tsla = experiment_results.experiment_table(session, sweep, target=0.85, early_epochs=3)
    assert (baseline.group, baseline.n, baseline.n_succeeded) == ({"smoothing.method": "baseline"}, 3, 3)
    assert (tsla.group, tsla.n, tsla.n_succeeded) == ({"smoothing.method": "tsla"}, 4, 3)
    assert_estimate(baseline.final, [85, 86, 84])
    assert_estimate(tsla.final, [92, 93, 91])
    assert_estimate(baseline.best, [85, 88, 84])
    assert_estimate(tsla.best, [92, 93, 91])
    assert_estimate(baseline.top5, [96, 97, 95])
    assert_estimate(tsla.top5, [99, 98, 97])
    # test/top1 at the best val/top1 epoch: 2, 3, 2 and 2, 3, 2
    assert_estimate(baseline.selected_test, [80, 86, 75])
    assert_estimate(tsla.selected_test, [91, 93, 89])
    # 85%: epochs 3 and 2 (0-based) for two baseline seeds, the third never; 2 for every tsla seed
    assert_estimate(baseline.epochs_to_target, [4, 3])
    assert (baseline.reached, tsla.reached) == (2, 3)
    assert tsla.epochs_to_target == Estimate(3.0, 0.0, 3)
    # first 3 epochs of train/grad_var; the inf is skipped
    assert_estimate(baseline.early_grad_var, [3.0, 4.0, 5.0])
    assert_estimate(tsla.early_grad_var, [1.5, 1.5, 2.0])
    expected_p = ttest_ind([92, 93, 91], [85, 86, 84], equal_var=False).pvalue
    assert baseline.p_value is None and tsla.p_value == pytest.approx(expected_p, rel=1e-9)
    assert (baseline.is_best, tsla.is_best) == (False, True)
    assert len(baseline.job_ids) == 3 and len(tsla.job_ids) == 4


def test_without_a_target_nothing_is_counted_as_reached(session: Session, sweep: Experiment) -> None:
    rows = experiment_results.experiment_table(session, sweep, early_epochs=1)
    assert [(row.epochs_to_target, row.reached) for row in rows] == [(None, None), (None, None)]
    assert_estimate(rows[0].early_grad_var, [4.0, 5.0, 6.0])


def test_a_min_objective_skips_a_nonfinite_final_value(session: Session) -> None:
    experiment = add_experiment(session, objective="val/loss", mode="min")
    losses = {"lsr": [[2.0, 1.0, 0.8], [2.0, 1.2, NAN]], "baseline": [[2.0, 1.5, 1.1], [2.1, 1.4, 1.3]]}
    for method, seeds in losses.items():
        for seed, curve in enumerate(seeds):
            cell = {"smoothing.method": method, "seed": seed}
            record_curves(session, add_job(session, experiment, cell, method), {"val/loss": curve})
    lsr, baseline = experiment_results.experiment_table(session, experiment)
    assert lsr.final == Estimate(0.8, None, 1)  # the NaN final is not a number to average
    assert lsr.p_value is None  # one value: no test
    assert_estimate(lsr.best, [0.8, 1.2])
    assert_estimate(baseline.best, [1.1, 1.3])
    assert (lsr.is_best, baseline.is_best) == (True, False)


def cell_job(cell: dict[str, Any], method: str) -> CellJob:
    return CellJob(secrets.token_hex(4), "succeeded", cell, method, None)


def test_the_baseline_matches_the_other_keys_and_its_method_comes_from_the_spec() -> None:
    groups = [
        Group({"optim.lr": lr, "smoothing.theta": theta}, [cell_job({}, method)])
        for lr in (0.1, 0.2)
        for theta, method in ((0.0, "baseline"), (0.1, "lsr"))
    ]
    assert baseline_of(groups[1], groups) is groups[0]
    assert baseline_of(groups[3], groups) is groups[2]
    assert baseline_of(groups[0], groups) is None
    assert baseline_of(Group({"optim.lr": 0.3}, [cell_job({}, "lsr")]), groups) is None


def test_curves_are_strided_means_over_seeds(session: Session, sweep: Experiment) -> None:
    baseline, tsla = experiment_results.experiment_curves(session, sweep, "test/top1", points=3)
    assert [p.epoch for p in baseline.points] == [0, 2, 3]  # strided(4, 3)
    first, (mean, std) = baseline.points[0], hand([50, 55, 52])
    assert (first.mean, first.std, first.n) == (pytest.approx(mean), pytest.approx(std), 3)
    assert tsla.points[0].n == 4  # the failed job's epochs count too
    assert tsla.points[1].n == 3  # it stopped after epoch 1


def test_the_csv_has_a_row_per_group_and_quotes_formulas(session: Session) -> None:
    experiment = add_experiment(session)
    for seed in (0, 1):
        job_id = add_job(session, experiment, {"data.name": "=cmd()", "seed": seed}, "baseline")
        record_curves(session, job_id, {"test/top1": [50.0 + seed]})
        found = session.get(Job, job_id)
        assert found is not None
        found.provenance = {"tsla_version": "0.1.0", "device": f"cuda:{seed}", "dataset": {"sha256": "ab"}}
    session.commit()
    lines = experiment_results.table_csv(session, experiment).splitlines()
    header, row = lines[0].split(","), lines[1].split(",")
    assert len(lines) == 2 and header[0] == "data.name" and row[0] == "'=cmd()"
    record = dict(zip(header, row, strict=True))
    assert (record["final_mean"], record["final_n"], record["p_value"], record["is_best"]) == (
        "50.5",
        "2",
        "",
        "true",
    )
    assert (record["project_version"], record["device"], record["dataset_hash"]) == (
        "0.1.0",
        "cuda:0; cuda:1",
        "ab",
    )


# --- summaries --------------------------------------------------------------------------------


def naive_summary(points: list[tuple[int, float | None]]) -> dict[str, Any]:
    ordered = sorted(points)
    finite = [(e, v) for e, v in ordered if v is not None]
    best = max(v for _, v in finite)
    worst = min(v for _, v in finite)
    records, top = [], -INF
    for epoch, value in finite:
        if value > top:
            records.append((epoch, value))
            top = value
    return {
        "last": ordered[-1], "max": (best, max(e for e, v in finite if v == best)),
        "min": (worst, max(e for e, v in finite if v == worst)), "count": len(points), "records": records,
    }  # fmt: skip


def test_summary_of_any_order_matches_a_naive_one() -> None:
    rng = random.Random(3)
    for _ in range(200):
        points = [(e, rng.choice([None, *range(5)])) for e in rng.sample(range(30), rng.randint(1, 20))]
        if all(v is None for _, v in points):
            continue
        s, naive = Summary.of(points), naive_summary(points)  # type: ignore[arg-type]
        assert ((s.last_epoch, s.last_value), (s.max_value, s.max_epoch)) == (naive["last"], naive["max"])
        assert ((s.min_value, s.min_epoch), s.count, s.records) == (
            naive["min"],
            naive["count"],
            naive["records"],
        )


def stored_summary(session: Session, job_id: str, name: str) -> Summary:
    """The summary row of the metric, with its record rows."""
    split, short = name.split("/")
    row = session.get(MetricSummary, (job_id, split, short))
    assert row is not None
    session.refresh(row)
    records = select(MetricRecord.epoch, MetricRecord.value).where(
        MetricRecord.job_id == job_id, MetricRecord.split == split, MetricRecord.name == short
    )
    return replace(
        read(row), records=[(e, v) for e, v in session.execute(records.order_by(MetricRecord.epoch))]
    )


def rows_summary(session: Session, job_id: str) -> Summary:
    query = select(Metric.epoch, Metric.value).where(
        Metric.job_id == job_id, Metric.split == "test", Metric.name == "top1"
    )
    return Summary.of([(e, v) for e, v in session.execute(query)])


def test_summaries_stay_right_when_epochs_are_rerun(session: Session) -> None:
    experiment = add_experiment(session)
    job_id = add_job(session, experiment, {"seed": 0}, "tsla", state="running")
    record_curves(session, job_id, {"test/top1": [10, 40, 30, 50, 45], "val/top1": [9, 41, 29, 48, 47]})
    assert stored_summary(session, job_id, "test/top1").records == [(0, 10), (1, 40), (3, 50)]
    session.refresh(found := session.get(Job, job_id))
    assert found is not None and found.best_top1 == 50  # test/top1 at the best val epoch, 3
    # a resume from epoch 2's checkpoint re-runs epochs 3 and 4 with other values
    for epoch, (test, val) in ((3, (35.0, 35.0)), (4, (NAN, 30.0))):
        results.record_metrics(
            session, job_id, 2, [metric(epoch, "test/top1", test), metric(epoch, "val/top1", val)]
        )
    summary = stored_summary(session, job_id, "test/top1")
    assert summary == rows_summary(session, job_id)
    assert (summary.last_epoch, summary.last_value, summary.max_value, summary.max_epoch) == (4, None, 40, 1)
    assert summary.records == [(0, 10), (1, 40)] and summary.count == 5
    session.refresh(found)
    assert found.best_top1 == 40  # the best val/top1 is now epoch 1's 41


def test_best_checkpoint_prefers_val_top1_when_checkpoints_have_it(session: Session) -> None:
    experiment = add_experiment(session)
    job_id = add_job(session, experiment, {"seed": 0}, "tsla")
    for epoch, metrics in enumerate(
        ({"test/top1": 70.0, "val/top1": 60.0}, {"test/top1": 65.0, "val/top1": 62.0})
    ):
        name = f"epoch-{epoch:04d}"
        record = CheckpointRecord(name, Path(f"{name}.pt"), epoch, False, "x", 1, metrics)
        results.record_checkpoint(session, job_id, record, f"{job_id}/{name}", {"epoch-0000", "epoch-0001"})
    best = results.best_checkpoint(session, job_id)
    assert best is not None and best.name == "epoch-0001"


def test_the_migration_summarizes_metrics_stored_before_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0004")
    with get_engine(url).begin() as connection:
        connection.execute(text(
            "INSERT INTO jobs (id, name, state, spec, method, dataset, epochs, attempt, max_attempts, "
            "cancel_requested, epochs_done, held, created_at, updated_at) "
            "VALUES ('j', 'j', 'running', '{}', 'tsla', 'digits', 3, 1, 3, 0, 3, 0, '2026-01-01', "
            "'2026-01-01')"
        ))  # fmt: skip
        for epoch, value in enumerate((30.0, None, 20.0)):
            connection.execute(text(
                "INSERT INTO metrics (job_id, epoch, step, split, name, value, stage, attempt, time) "
                "VALUES ('j', :epoch, 1, 'test', 'top1', :value, 'smooth', 1, '2026-01-01')"
            ), {"epoch": epoch, "value": value})  # fmt: skip
    command.upgrade(alembic_config(url), "head")
    with session_factory(url)() as db:
        assert stored_summary(db, "j", "test/top1") == Summary(2, 20.0, 30.0, 0, 20.0, 2, 3, [(0, 30.0)])
    get_engine(url).dispose()


# --- the read path is flat in the history ---------------------------------------------------------


class StatementCounter:
    def __init__(self, engine: Engine) -> None:
        self.count = 0
        self.engine = engine

    def __enter__(self) -> StatementCounter:
        event.listen(self.engine, "before_cursor_execute", self.seen)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self.seen)

    def seen(self, *_: object) -> None:
        self.count += 1


def experiment_with_history(session: Session, epochs: int) -> Experiment:
    """Two groups of two seeds, every metric the table reads logged for `epochs` epochs, each job
    written in one record_metrics call (quicker than one per epoch, the same summaries)."""
    experiment = add_experiment(session, objective="val/top1")
    names = ("test/top1", "test/top5", "val/top1", "train/grad_var")
    for method in ("baseline", "lsr"):
        for seed in (0, 1):
            job_id = add_job(session, experiment, {"smoothing.method": method, "seed": seed}, method)
            rows = [metric(e, name, 100 * e / epochs + seed) for e in range(epochs) for name in names]
            results.record_metrics(session, job_id, 1, rows)
    return experiment


def statements(session: Session, experiment: Experiment) -> list[int]:
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    counts = []
    for reading in (
        lambda: experiment_results.experiment_table(session, experiment, target=0.5, early_epochs=3),
        lambda: experiment_results.table_csv(session, experiment, target=0.5),
        lambda: experiment_results.experiment_curves(session, experiment, "test/top1", points=50),
    ):
        with StatementCounter(engine) as counter:
            reading()
        counts.append(counter.count)
    return counts


def test_the_reads_issue_as_many_statements_for_1000_epochs_as_for_10(session: Session) -> None:
    short, long = experiment_with_history(session, 10), experiment_with_history(session, 1000)
    short_counts, long_counts = statements(session, short), statements(session, long)
    assert short_counts == long_counts
    assert max(long_counts) <= 5, long_counts
    # 50%: epoch 500 (0-based) of seed 0, 490 of seed 1, whose values are 1 higher
    assert_estimate(
        experiment_results.experiment_table(session, long, target=0.5)[0].epochs_to_target, [501, 491]
    )


def test_pure_helpers() -> None:
    assert strided(4, 3) == [0, 2, 3] and strided(3, 200) == [0, 1, 2] and strided(10, 1) == [9]
    assert len(strided(100_000, 200)) == 200
    assert welch_p_value([1, 2], [3]) is None and welch_p_value([1, 1], [2, 2]) is None

"""Experiments: a base spec and a grid, expanded into jobs by the one submission path and sent at
most `max_concurrent` at a time, teachers first.

Creating one, or adding cells: expand and validate every cell (tsla_spec/grid.py) before anything
is stored -> in the owner's submission lock (tsla_service/submit.py) replay a retried key, check
every job as POST /jobs checks a job, insert them all `held`, release those that may be sent now
(so the response shows them) -> commit -> send those.

`schedule` runs in the worker when one of the experiment's jobs ends, after a cancel, and in
every reaper round (so a lost worker cannot stall an experiment). In the same lock it
- fails the held dependents of a teacher that failed or was canceled, saying why;
- releases held jobs, lowest position first, while fewer than `max_concurrent` of the
  experiment's jobs are sent (running, or queued and not held) and the owner has fewer sent
  active jobs than TSLA_MAX_ACTIVE_JOBS_PER_TOKEN; a "-pre" cell only once its teacher succeeded;
- sets `finished_at` once every job has finished (and clears it when cells are added).
Held jobs count in the owner's active jobs for POST /jobs (submit.check_active_cap).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from celery import Celery
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, aliased

from tsla_service import events, jobs
from tsla_service.datasets import resolve_data
from tsla_service.models import Experiment, Job, new_job_id, utcnow
from tsla_service.queue import send_job
from tsla_service.settings import Settings
from tsla_service.submit import (
    DEFAULT_MAX_ATTEMPTS,
    Idempotency,
    JobRequest,
    check_runnable,
    check_teacher,
    fingerprint,
    in_submission,
    insert_jobs,
    lock_submissions,
    new_job_row,
)
from tsla_spec import grid as grids
from tsla_spec.grid import CellValues, Collapsed
from tsla_spec.spec import RunSpec, SpecError, build_spec, deep_merge
from tsla_spec.vocabulary import (
    ACTIVE_STATES,
    JOB_STATES,
    TEACHER_METHODS,
    TEST_LOSS,
    TEST_TOP1,
    TEST_TOP5,
    TRAIN_CE,
    TRAIN_LOSS,
    TRAIN_TOP1,
    VAL_LOSS,
    VAL_TOP1,
    VAL_TOP5,
)

# What an objective may rank cells by: the per-epoch quality metrics the core logs.
OBJECTIVE_METRICS = (
    VAL_TOP1,
    VAL_TOP5,
    VAL_LOSS,
    TEST_TOP1,
    TEST_TOP5,
    TEST_LOSS,
    TRAIN_TOP1,
    TRAIN_LOSS,
    TRAIN_CE,
)
ORDERS = ("shuffled", "grid")
ExperimentState = Literal["queued", "running", "succeeded", "failed", "canceled"]


class ExperimentConflict(Exception):
    """The experiment cannot change that way now: it is canceled, or already finished (HTTP 409)."""


def default_mode(metric: str) -> Literal["max", "min"]:
    """Losses are minimised, accuracies maximised."""
    return "min" if metric.rpartition("/")[2] in ("loss", "ce") else "max"


@dataclass(frozen=True)
class ExperimentRequest:
    """What a caller asks for; `grid` maps dotted spec keys to lists of values, in order."""

    name: str
    base: Mapping[str, Any]
    grid: Mapping[str, Any]
    teacher: Mapping[str, Any] | None = None  # {"job": id} | {"cell": {...}} | {"spec": raw spec}
    objective_metric: str = TEST_TOP1
    objective_mode: str | None = None  # None: by the metric (default_mode)
    max_concurrent: int = 4
    order: str = "shuffled"
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    idempotency_key: str | None = None

    @property
    def mode(self) -> str:
        return self.objective_mode or default_mode(self.objective_metric)

    @property
    def fingerprint(self) -> str:
        fields = dataclasses.asdict(self)
        del fields["idempotency_key"]
        fields["grid"] = list(self.grid.items())  # the key order is the product's order
        return fingerprint(fields)


@dataclass(frozen=True)
class PlannedJob:
    """A validated job of an experiment, before it is stored."""

    id: str
    spec: RunSpec
    key: str  # grid.cell_key(spec)
    cell: CellValues | None  # None: the teacher the experiment trains first, not a table cell

    @property
    def role(self) -> str:
        return "teacher" if self.cell is None else "cell"


@dataclass(frozen=True)
class Plan:
    teacher_job_id: str | None
    jobs: list[PlannedJob]  # send order: a teacher first
    collapsed: list[dict[str, CellValues]]


def check_options(settings: Settings, request: ExperimentRequest) -> None:
    if request.objective_metric not in OBJECTIVE_METRICS:
        known = ", ".join(OBJECTIVE_METRICS)
        raise SpecError(f"objective.metric: {request.objective_metric!r} is not a metric; known: {known}")
    if request.mode not in ("max", "min"):
        raise SpecError(f"objective.mode: must be max or min, not {request.mode!r}")
    if request.order not in ORDERS:
        raise SpecError(f"order: must be shuffled or grid, not {request.order!r}")
    cap = settings.max_active_jobs_per_token
    if not 1 <= request.max_concurrent <= cap:
        raise SpecError(
            f"max_concurrent: {request.max_concurrent} must be from 1 to {cap}, the active jobs this "
            "token may have (TSLA_MAX_ACTIVE_JOBS_PER_TOKEN)"
        )


def check_size(grid: Mapping[str, Any], settings: Settings) -> None:
    """Refuse a grid with more cells than this server admits, before expanding it."""
    grids.check_grid(grid)
    count, limit = grids.cell_count(grid), settings.max_experiment_cells
    if count > limit:
        sizes = " × ".join(str(len(values)) for values in grid.values())
        raise SpecError(
            f"grid: {count} cells ({sizes}) are more than the {limit} this server allows per experiment "
            "(TSLA_MAX_EXPERIMENT_CELLS)"
        )


def resolve_cells(
    base: Mapping[str, Any], cells: Sequence[CellValues], teacher_job_id: str | None
) -> tuple[list[PlannedJob], list[Collapsed]]:
    """Every cell's run spec; a cell whose resolved spec an earlier cell has is not kept."""
    planned: dict[str, PlannedJob] = {}
    collapsed: list[Collapsed] = []
    for values in cells:
        spec = grids.resolve(base, values, teacher_job_id)
        key = grids.cell_key(spec)
        if key in planned:
            collapsed.append(Collapsed(values, planned[key].cell or {}))
        else:
            planned[key] = PlannedJob(new_job_id(), spec, key, values)
    return list(planned.values()), collapsed


def plan_teacher_spec(raw: Any) -> PlannedJob:
    """The extra job a `teacher: {spec}` experiment trains first."""
    if not isinstance(raw, Mapping):
        raise SpecError("teacher.spec: must be a run spec (a mapping)")
    try:
        spec = build_spec(raw)
    except SpecError as error:
        raise SpecError(f"teacher.spec: {error}") from None
    if spec.smoothing.method in TEACHER_METHODS:
        raise SpecError(
            f"teacher.spec: a teacher cannot learn from a teacher itself ({spec.smoothing.method})"
        )
    return PlannedJob(new_job_id(), spec, grids.cell_key(spec), None)


def teacher_cell_index(base: Mapping[str, Any], cells: Sequence[PlannedJob], wanted: Any) -> int:
    """Where among `cells` the `teacher: {cell}` is (its values are collapsed like the grid's)."""
    if not isinstance(wanted, Mapping):
        raise SpecError("teacher.cell: must map grid keys to the values of one cell")
    values = grids.collapse(base, wanted)
    method = grids.method_of(deep_merge(base, grids.cell_override(values)))
    if method in TEACHER_METHODS:
        raise SpecError(
            f"teacher.cell: {grids.describe_cell(wanted)} learns from a teacher itself ({method})"
        )
    try:
        key = grids.cell_key(grids.resolve(base, values, None))
    except SpecError:  # every cell of the grid is valid: an invalid one is not among them
        key = None
    index = next((i for i, cell in enumerate(cells) if cell.key == key), None)
    if index is None:
        raise SpecError(f"teacher.cell: {grids.describe_cell(wanted)} is not a cell of the grid")
    return index


def teacher_source(teacher: Mapping[str, Any] | None) -> tuple[str | None, PlannedJob | None]:
    """(the job id "-pre" cells learn from, the extra teacher job to train first, if any)."""
    if teacher is None:
        return None, None
    if len(teacher) != 1 or next(iter(teacher)) not in ("job", "cell", "spec"):
        raise SpecError("teacher: give exactly one of job, cell or spec")
    if "job" in teacher:
        if not isinstance(teacher["job"], str):
            raise SpecError("teacher.job: must be a job id")
        return teacher["job"], None
    if "cell" in teacher:
        return new_job_id(), None  # given to the teacher cell once it is found
    job = plan_teacher_spec(teacher["spec"])
    return job.id, job


def send_order(order: str, seed: str, cells: Sequence[PlannedJob]) -> list[PlannedJob]:
    """Grid order, or shuffled (seeded: the same experiment always gets the same order), so that
    the first results already spread over the whole grid."""
    ordered = list(cells)
    if order == "shuffled":
        random.Random(seed).shuffle(ordered)
    return ordered


def plan_experiment(settings: Settings, request: ExperimentRequest, experiment_id: str) -> Plan:
    """Every job of a new experiment, validated; nothing is stored yet."""
    check_options(settings, request)
    check_size(request.grid, settings)
    expansion = grids.expand(request.base, request.grid)
    teacher_job_id, teacher_job = teacher_source(request.teacher)
    cells, duplicates = resolve_cells(request.base, expansion.cells, teacher_job_id)
    first = [teacher_job] if teacher_job is not None else []
    if request.teacher is not None and "cell" in request.teacher:
        assert teacher_job_id is not None
        index = teacher_cell_index(request.base, cells, request.teacher["cell"])
        first = [dataclasses.replace(cells.pop(index), id=teacher_job_id)]
    if teacher_job is not None:
        same = next((cell for cell in cells if cell.key == teacher_job.key), None)
        if same is not None and same.cell is not None:
            raise SpecError(
                f"teacher.spec: is the same run as cell {grids.describe_cell(same.cell)}; use teacher.cell"
            )
    collapsed = [entry.public() for entry in (*expansion.collapsed, *duplicates)]
    return Plan(teacher_job_id, first + send_order(request.order, experiment_id, cells), collapsed)


def job_name(experiment_name: str, cell: CellValues | None) -> str:
    name = f"{experiment_name} teacher" if cell is None else f"{experiment_name} {grids.describe_cell(cell)}"
    return name if len(name) <= 200 else name[:199] + "…"


def store_jobs(
    session: Session,
    settings: Settings,
    experiment: Experiment,
    planned: Sequence[PlannedJob],
    first_position: int,
) -> list[Job]:
    """Check each job as POST /jobs would and insert it held. The first row (a teacher, if any) is
    flushed alone, so that the checks of the cells that learn from it find it."""
    rows: list[Job] = []
    for offset, job in enumerate(planned):
        runnable = check_runnable(session, settings, job.spec, experiment.owner, experiment.id)
        request = JobRequest(
            runnable.spec.model_dump(mode="json"),
            job_name(experiment.name, job.cell),
            experiment.max_attempts,
        )
        row = new_job_row(runnable, experiment.owner, request)
        row.id, row.experiment_id, row.cell, row.cell_key = job.id, experiment.id, job.cell, job.key
        row.role, row.position, row.held = job.role, first_position + offset, True
        rows.append(row)
        if offset == 0:
            insert_jobs(session, rows)
    insert_jobs(session, rows[1:])
    return rows


def new_experiment_row(experiment_id: str, owner: str, request: ExperimentRequest, plan: Plan) -> Experiment:
    return Experiment(
        id=experiment_id,
        owner=owner,
        name=request.name,
        base=dict(request.base),
        grid=dict(request.grid),
        teacher=dict(request.teacher) if request.teacher is not None else None,
        teacher_job_id=plan.teacher_job_id,
        objective_metric=request.objective_metric,
        objective_mode=request.mode,
        max_concurrent=request.max_concurrent,
        max_attempts=request.max_attempts,
        order=request.order,
        collapsed=plan.collapsed,
        idempotency_key=request.idempotency_key,
        request_hash=request.fingerprint,
    )


def create_experiment(
    session: Session,
    settings: Settings,
    queue: Celery,
    owner: str,
    request: ExperimentRequest,
    render: Callable[[Experiment], dict[str, Any]],
) -> dict[str, Any]:
    """Validate every cell, store the experiment and its jobs (held), then schedule it; returns its
    response body (the first one, for a retried Idempotency-Key)."""
    experiment_id = new_job_id()
    plan = plan_experiment(settings, request, experiment_id)

    def store() -> tuple[dict[str, Any], list[str]]:
        experiment = new_experiment_row(experiment_id, owner, request, plan)
        session.add(experiment)
        session.flush()
        if request.teacher is not None and "job" in request.teacher:  # also when no cell uses it yet
            check_teacher(
                session, request.teacher["job"], owner, resolve_data(session, plan.jobs[0].spec, owner)
            )
        store_jobs(session, settings, experiment, plan.jobs, first_position=0)
        released = release_held(session, settings, experiment)  # the response shows what is sent
        experiment.create_response = render(experiment)
        return experiment.create_response, released

    idempotency = Idempotency(Experiment, request.idempotency_key, request.fingerprint)
    response, released = in_submission(session, owner, idempotency, store)
    send_released(session, queue, settings, released)
    return response


@dataclass(frozen=True)
class Growth:
    """The result of adding cells: the new jobs, the cells that already had one, and collapses."""

    added: list[Job]
    existing: list[Job]
    collapsed: list[dict[str, CellValues]]


def add_cells(
    session: Session, settings: Settings, queue: Celery, experiment: Experiment, more: Mapping[str, Any]
) -> Growth:
    """Extend the grid's keys with more values and add the cells no job of the experiment has yet
    (by resolved spec), after the existing ones in send order; then release what may be sent."""
    grid = grids.extend_grid(experiment.grid, more)
    check_size(grid, settings)
    expansion = grids.expand(experiment.base, grid)
    cells, duplicates = resolve_cells(experiment.base, expansion.cells, experiment.teacher_job_id)
    collapsed = [entry.public() for entry in (*expansion.collapsed, *duplicates)]
    growth: list[Growth] = []

    def store() -> tuple[dict[str, Any], list[str]]:
        current = session.get(Experiment, experiment.id, populate_existing=True)
        assert current is not None
        if current.canceled:
            raise ExperimentConflict(f"experiment {current.id} is canceled; no cells can be added")
        existing = {job.cell_key: job for job in experiment_jobs(session, current.id)}
        new = [cell for cell in cells if cell.key not in existing]
        first = max((job.position or 0 for job in existing.values()), default=-1) + 1
        added = store_jobs(
            session, settings, current, send_order(current.order, f"{current.id}:{first}", new), first
        )
        current.grid = grid
        current.collapsed = current.collapsed + [
            entry for entry in collapsed if entry not in current.collapsed
        ]
        released = release_held(session, settings, current)
        mark_finished(session, current)
        experiment_jobs(session, current.id)  # refreshes the rows below: the release changed them
        growth.append(
            Growth(added, [existing[cell.key] for cell in cells if cell.key in existing], collapsed)
        )
        return {}, released

    _, released = in_submission(session, experiment.owner, Idempotency(Experiment, None, ""), store)
    send_released(session, queue, settings, released)
    return growth[0]


def experiment_jobs(session: Session, experiment_id: str) -> list[Job]:
    """The experiment's jobs in send order, as the database has them now (rows the session
    already holds are refreshed: the scheduler changes them with plain UPDATEs)."""
    query = select(Job).where(Job.experiment_id == experiment_id).order_by(Job.position, Job.id)
    return list(session.scalars(query.execution_options(populate_existing=True)))


@dataclass
class Tally:
    """How many of an experiment's jobs are in each state; what its own state is derived from."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(JOB_STATES, 0))
    started: int = 0  # jobs that ever started training
    cells: int = 0  # jobs of the table (role "cell"), and how many of them succeeded
    cells_succeeded: int = 0


def tallies(session: Session, experiment_ids: Sequence[str]) -> dict[str, Tally]:
    found = {experiment_id: Tally() for experiment_id in experiment_ids}
    rows = session.execute(
        select(Job.experiment_id, Job.role, Job.state, func.count(), func.count(Job.started_at))
        .where(Job.experiment_id.in_(experiment_ids))
        .group_by(Job.experiment_id, Job.role, Job.state)
    )
    for experiment_id, role, state, count, started in rows:
        tally = found[str(experiment_id)]
        tally.counts[state] += count
        tally.started += started
        if role == "cell":
            tally.cells += count
            tally.cells_succeeded += count if state == "succeeded" else 0
    return found


def experiment_state(experiment: Experiment, tally: Tally) -> ExperimentState:
    """canceled; else queued (nothing started), running, or, once every job has finished,
    succeeded (every cell succeeded) or failed."""
    if experiment.canceled:
        return "canceled"
    active = sum(tally.counts[state] for state in ACTIVE_STATES)
    if active == 0:
        return "succeeded" if tally.cells_succeeded == tally.cells else "failed"
    finished = sum(tally.counts.values()) - active
    return "queued" if tally.started == 0 and finished == 0 else "running"


def cancel_experiment(session: Session, settings: Settings, queue: Celery, experiment: Experiment) -> None:
    """No job of it starts any more: queued ones end canceled at once, running ones checkpoint and
    stop at their next step (jobs.request_cancel)."""
    state = experiment_state(experiment, tallies(session, [experiment.id])[experiment.id])
    if state in ("succeeded", "failed", "canceled"):
        raise ExperimentConflict(f"experiment {experiment.id} is already {state}")
    session.execute(
        update(Experiment)
        .where(Experiment.id == experiment.id)
        .values(canceled=True)
        .execution_options(synchronize_session=False)
    )
    session.commit()  # before the jobs: from now on the scheduler releases none of them
    unfinished = select(Job.id).where(Job.experiment_id == experiment.id, Job.state.in_(ACTIVE_STATES))
    for job_id in list(session.scalars(unfinished.order_by(Job.position))):
        jobs.request_cancel(session, job_id)
        events.notify(settings.events_url, job_id, "state")
    schedule(session, queue, settings, experiment.id)


# --- scheduling -----------------------------------------------------------------------------------


def schedule(session: Session, queue: Celery, settings: Settings, experiment_id: str) -> list[str]:
    """Fail orphaned dependents, release held jobs into free slots and keep `finished_at`, in the
    owner's submission lock; then send what was released. Returns the released job ids."""
    owner = session.scalar(select(Experiment.owner).where(Experiment.id == experiment_id))
    if owner is None:
        return []
    try:
        lock_submissions(session, owner)  # the counts below and the releases are one step
        experiment = session.get(Experiment, experiment_id, populate_existing=True)
        assert experiment is not None
        failed = fail_orphaned_dependents(session, experiment_id)
        released = [] if experiment.canceled else release_held(session, settings, experiment)
        mark_finished(session, experiment)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    for job_id in failed:
        events.notify(settings.events_url, job_id, "state")
    send_released(session, queue, settings, released)
    return released


def send_released(session: Session, queue: Celery, settings: Settings, released: Sequence[str]) -> None:
    """After the commit that released them: a failed send leaves a job to the reaper (enqueued_at NULL)."""
    for job_id in released:
        send_job(queue, session, job_id)
        events.notify(settings.events_url, job_id, "state")


def fail_orphaned_dependents(session: Session, experiment_id: str) -> list[str]:
    """Queued jobs whose teacher failed or was canceled end `failed`, saying why."""
    teacher = aliased(Job)
    orphans = session.execute(
        select(Job.id, teacher.id, teacher.state, teacher.error)
        .join(teacher, Job.teacher_job_id == teacher.id)
        .where(
            Job.experiment_id == experiment_id,
            Job.state == "queued",
            teacher.state.in_(("failed", "canceled")),
        )
    ).all()
    failed = []
    for job_id, teacher_id, teacher_state, teacher_error in orphans:
        if teacher_state == "canceled":
            reason = f"teacher job {teacher_id} was canceled"
        else:
            reason = f"teacher job {teacher_id} failed" + (f": {teacher_error}" if teacher_error else "")
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == "queued")
            .values(state="failed", error=reason, held=False, finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            failed.append(job_id)
    return failed


def count_sent(session: Session, *where: Any) -> int:
    """Jobs on the broker or training: running, or queued and not held."""
    sent = (Job.state.in_(ACTIVE_STATES), Job.held.is_(False), *where)
    return int(session.scalar(select(func.count()).select_from(Job).where(*sent)) or 0)


def release_held(session: Session, settings: Settings, experiment: Experiment) -> list[str]:
    """Mark the held jobs that may be sent now as not held, lowest position first; their ids."""
    free = min(
        experiment.max_concurrent - count_sent(session, Job.experiment_id == experiment.id),
        settings.max_active_jobs_per_token - count_sent(session, Job.owner == experiment.owner),
    )
    if free <= 0:
        return []
    teacher = aliased(Job)
    ready = (
        select(Job.id)
        .outerjoin(teacher, Job.teacher_job_id == teacher.id)
        .where(Job.experiment_id == experiment.id, Job.state == "queued", Job.held.is_(True))
        .where(or_(Job.teacher_job_id.is_(None), teacher.state == "succeeded"))
        .order_by(Job.position)
        .limit(free)
    )
    released = list(session.scalars(ready))
    if released:
        session.execute(
            update(Job)
            .where(Job.id.in_(released), Job.state == "queued")
            .values(held=False)
            .execution_options(synchronize_session=False)
        )
    return released


def mark_finished(session: Session, experiment: Experiment) -> None:
    """`finished_at`: when its last job finished, once none is queued or running; else NULL."""
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.experiment_id == experiment.id, Job.state.in_(ACTIVE_STATES))
    )
    if active:
        if experiment.finished_at is not None:
            experiment.finished_at = None
    elif experiment.finished_at is None:
        last = session.scalar(select(func.max(Job.finished_at)).where(Job.experiment_id == experiment.id))
        experiment.finished_at = last or utcnow()


def experiments_to_schedule(session: Session) -> list[str]:
    """For the reaper: experiments with held jobs, and unfinished ones with no job left to run (the
    last one ended where no scheduler ran: a lost worker, a cancel through POST /jobs)."""
    held = select(Job.experiment_id).where(
        Job.experiment_id.is_not(None), Job.state == "queued", Job.held.is_(True)
    )
    active = select(Job.id).where(Job.experiment_id == Experiment.id, Job.state.in_(ACTIVE_STATES)).exists()
    idle = select(Experiment.id).where(Experiment.finished_at.is_(None), ~active)
    found = {*session.scalars(held.distinct()), *session.scalars(idle)}
    return sorted(experiment_id for experiment_id in found if experiment_id is not None)

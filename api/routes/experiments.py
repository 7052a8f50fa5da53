"""Experiments: create, list, get (with the results table), add cells, cancel.

The rules live in tsla_service/experiments.py; the table's columns in tsla_service/experiment_results.py.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from api.deps import CurrentToken, OwnedExperiment, QueueDep, SessionDep, SettingsDep
from api.paging import Cursor, owner_page
from api.params import JobsPageSize
from api.routes.experiment_results import EarlyEpochs, Target
from api.routes.jobs import IdempotencyKey
from api.schemas import (
    ERROR_RESPONSES,
    CellsAdded,
    CellsCreate,
    ExperimentCreate,
    ExperimentDetail,
    ExperimentJob,
    ExperimentPublic,
    ExperimentsPublic,
    ExperimentSummary,
    Message,
    ObjectivePublic,
    TableRowPublic,
)
from tsla_service import experiment_results, experiments
from tsla_service.models import Experiment
from tsla_service.submit import DEFAULT_MAX_ATTEMPTS

router = APIRouter(prefix="/experiments", tags=["experiments"], responses=ERROR_RESPONSES)
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Message, "description": "no such experiment for this token"}
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ExperimentPublic,
    responses={
        409: {"model": Message, "description": "the Idempotency-Key came with another body"},
        413: {"model": Message, "description": "the body is larger than TSLA_MAX_BODY_BYTES"},
    },
)
def create_experiment(
    body: ExperimentCreate,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    token: CurrentToken,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Expand the grid, validate every cell, store the experiment and its jobs, then send the
    first `max_concurrent` of them (a teacher first). One invalid cell is a 422 naming the cell and
    the field, and nothing is stored. `Idempotency-Key` works as for POST /jobs."""
    request = experiments.ExperimentRequest(
        name=body.name,
        base=body.base,
        grid=body.grid,
        teacher=body.teacher.model_dump(exclude_none=True) if body.teacher is not None else None,
        objective_metric=body.objective.metric,
        objective_mode=body.objective.mode,
        max_concurrent=body.max_concurrent,
        order=body.order,
        max_attempts=body.max_attempts or DEFAULT_MAX_ATTEMPTS,
        idempotency_key=idempotency_key,
    )

    def render(experiment: Experiment) -> dict[str, Any]:
        return experiment_public(session, experiment).model_dump(mode="json")

    created = experiments.create_experiment(session, settings, queue, token.id, request, render)
    return JSONResponse(created, status_code=status.HTTP_201_CREATED)


def summary_fields(experiment: Experiment, tally: experiments.Tally) -> dict[str, Any]:
    return {
        "id": experiment.id,
        "name": experiment.name,
        "state": experiments.experiment_state(experiment, tally),
        "counts": tally.counts,
        "cells": tally.cells,
        "objective": ObjectivePublic.model_validate(
            {"metric": experiment.objective_metric, "mode": experiment.objective_mode}
        ),
        "max_concurrent": experiment.max_concurrent,
        "order": experiment.order,
        "canceled": experiment.canceled,
        "created_at": experiment.created_at,
        "updated_at": experiment.updated_at,
        "finished_at": experiment.finished_at,
    }


def experiment_public(session: Session, experiment: Experiment) -> ExperimentPublic:
    tally = experiments.tallies(session, [experiment.id])[experiment.id]
    return ExperimentPublic(
        **summary_fields(experiment, tally),
        base=experiment.base,
        grid=experiment.grid,
        teacher=experiment.teacher,
        teacher_job_id=experiment.teacher_job_id,
        max_attempts=experiment.max_attempts,
        collapsed=experiment.collapsed,
        jobs=[
            ExperimentJob.model_validate(job) for job in experiments.experiment_jobs(session, experiment.id)
        ],
    )


@router.get("", response_model=ExperimentsPublic)
def list_experiments(
    session: SessionDep,
    token: CurrentToken,
    cursor: Cursor = None,
    limit: Annotated[JobsPageSize, Query()] = 50,
) -> ExperimentsPublic:
    """Newest first, in pages that follow `next_cursor`."""
    page, next_cursor = owner_page(session, Experiment, token.id, cursor, limit, "experiment")
    counts = experiments.tallies(session, [experiment.id for experiment in page])
    items = [ExperimentSummary(**summary_fields(experiment, counts[experiment.id])) for experiment in page]
    return ExperimentsPublic(items=items, next_cursor=next_cursor)


@router.get("/{experiment_id}", response_model=ExperimentDetail, responses=NOT_FOUND)
def get_experiment(
    experiment: OwnedExperiment, session: SessionDep, target: Target = None, early_epochs: EarlyEpochs = 3
) -> ExperimentDetail:
    """The experiment, its jobs, and its results table (`target`, `early_epochs`: see the table)."""
    public = experiment_public(session, experiment)
    table = experiment_results.experiment_table(session, experiment, target=target, early_epochs=early_epochs)
    return ExperimentDetail(**dict(public), table=[TableRowPublic.model_validate(row) for row in table])


@router.post(
    "/{experiment_id}/cells",
    response_model=CellsAdded,
    responses={**NOT_FOUND, 409: {"model": Message, "description": "the experiment is canceled"}},
)
def add_cells(
    experiment: OwnedExperiment,
    body: CellsCreate,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
) -> CellsAdded:
    """More values for the grid's existing keys (`{"grid": {"seed": [3, 4]}}`): the cells of the
    extended grid that no job of the experiment has (by resolved spec) are added and scheduled;
    the others are listed as `existing` and never run twice."""
    growth = experiments.add_cells(session, settings, queue, experiment, body.grid)
    return CellsAdded(
        added=[ExperimentJob.model_validate(job) for job in growth.added],
        existing=[ExperimentJob.model_validate(job) for job in growth.existing],
        collapsed=growth.collapsed,
    )


@router.post(
    "/{experiment_id}/cancel",
    response_model=ExperimentPublic,
    responses={**NOT_FOUND, 409: {"model": Message, "description": "the experiment has already finished"}},
)
def cancel_experiment(
    experiment: OwnedExperiment, session: SessionDep, settings: SettingsDep, queue: QueueDep
) -> ExperimentPublic:
    """Every unfinished job is canceled: queued ones never start, running ones checkpoint and stop
    at their next step. A finished experiment cannot be canceled (409)."""
    experiments.cancel_experiment(session, settings, queue, experiment)
    session.refresh(experiment)
    return experiment_public(session, experiment)

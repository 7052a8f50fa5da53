"""An experiment's results beyond GET /experiments/{id} (whose `table` is the JSON form): the
table as CSV with the jobs' provenance, and a metric's curves per group for overlay plots.

Both read metric summaries and point lookups (tsla_service/experiment_results.py): their cost
does not grow with the jobs' history.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import Field

from api.deps import OwnedExperiment, SessionDep
from api.params import ASCII_INT
from api.schemas import EXPERIMENT_RESULTS_RESPONSES, CurveGroupPublic, CurvesPublic
from tsla_service import experiment_results

router = APIRouter(prefix="/experiments", tags=["experiments"], responses=EXPERIMENT_RESULTS_RESPONSES)

# The table's parameters (GET /experiments/{id} takes them too).
Target = Annotated[
    float | None,
    Query(gt=0, le=1, allow_inf_nan=False, description="test top-1 fraction (0.9: 90%) for epochs_to_target"),
]
EarlyEpochCount = Annotated[int, Field(ge=1, le=10_000), ASCII_INT]
EarlyEpochs = Annotated[EarlyEpochCount, Query(description="first epochs that early_grad_var averages")]
CurvePointCount = Annotated[int, Field(ge=1, le=1000), ASCII_INT]
CurvePoints = Annotated[CurvePointCount, Query(description="most epochs per curve")]
MetricName = Annotated[
    str, Query(pattern=r"^(train|val|test)/[A-Za-z0-9_]{1,56}$", description="split/name, e.g. test/top1")
]


@router.get(
    "/{experiment_id}/table.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "the results table, one row per group"}},
)
def table_csv(
    experiment: OwnedExperiment, session: SessionDep, target: Target = None, early_epochs: EarlyEpochs = 3
) -> Response:
    """The results table: group keys, `{statistic}_{mean,std,n}`, then provenance columns."""
    body = experiment_results.table_csv(session, experiment, target, early_epochs)
    disposition = f'attachment; filename="experiment-{experiment.id}.csv"'
    return Response(body, media_type="text/csv; charset=utf-8", headers={"Content-Disposition": disposition})


@router.get("/{experiment_id}/curves", response_model=CurvesPublic)
def curves(
    experiment: OwnedExperiment,
    session: SessionDep,
    name: MetricName = "test/top1",
    points: CurvePoints = 200,
) -> CurvesPublic:
    """Per group and epoch, the mean and std of `name` over the group's jobs, at most `points`
    epochs evenly strided over the longest run."""
    groups = experiment_results.experiment_curves(session, experiment, name, points)
    return CurvesPublic(
        experiment_id=experiment.id,
        name=name,
        groups=[CurveGroupPublic.model_validate(group) for group in groups],
    )

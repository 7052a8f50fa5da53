"""What the server offers: presets, data sets, health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from api.deps import SessionDep, SettingsDep, current_token
from api.schemas import ERROR_RESPONSES, DatasetPublic
from tsla_spec.datasets import DATASETS
from tsla_spec.presets import PRESETS

router = APIRouter(tags=["meta"])


@router.get("/presets", dependencies=[Depends(current_token)], responses=ERROR_RESPONSES)
def list_presets() -> dict[str, dict[str, Any]]:
    """Named starting points for a job spec, with their fields."""
    return PRESETS


@router.get(
    "/datasets",
    response_model=list[DatasetPublic],
    dependencies=[Depends(current_token)],
    responses=ERROR_RESPONSES,
)
def list_datasets(settings: SettingsDep) -> list[DatasetPublic]:
    """The data sets a job can name, and whether each is installed on this server."""
    found = []
    for info in DATASETS.values():
        problem = info.problem(settings.data_root)
        found.append(
            DatasetPublic(
                name=info.name,
                description=info.description,
                num_classes=info.num_classes,
                available=problem is None,
                problem=problem,
            )
        )
    return found


@router.get("/healthz")
def health(session: SessionDep) -> dict[str, str]:
    """Liveness and database reachability."""
    session.execute(text("SELECT 1"))
    return {"status": "ok"}


@router.get(
    "/metrics",
    dependencies=[Depends(current_token)],
    responses={
        **ERROR_RESPONSES,
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text format",
        },
    },
)
def prometheus_metrics(request: Request) -> Response:
    """Prometheus metrics: jobs by state, queue depth, epoch durations, images/s, API latency."""
    return PlainTextResponse(request.app.state.observability.exposition(), media_type=CONTENT_TYPE_LATEST)

"""What the server offers: presets, data sets, liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.deps import CurrentToken, SessionDep, SettingsDep, current_token
from api.schemas import ERROR_RESPONSES, Message, Readiness
from tsla_service.models import ApiToken
from tsla_service.workers import BEAT_SECONDS, STALE_AFTER, live_workers
from tsla_spec.presets import PRESETS

router = APIRouter(tags=["meta"])


@router.get("/presets", dependencies=[Depends(current_token)], responses=ERROR_RESPONSES)
def list_presets() -> dict[str, dict[str, Any]]:
    """Named starting points for a job spec, with their fields."""
    return PRESETS


@router.get("/healthz")
async def health() -> dict[str, str]:
    """Liveness: this process answers (async: no thread, no database, so it answers under load)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Message, "description": "the database is unreachable or no worker consumes"}},
)
def readiness(session: SessionDep, settings: SettingsDep) -> Readiness | JSONResponse:
    """Readiness: the database answers and at least one worker was seen consuming lately; `consumed`
    tells which of this server's queues have one (a job sent to another waits for its worker)."""
    try:
        session.execute(text("SELECT 1"))
        workers = live_workers(session)
    except SQLAlchemyError as error:
        detail = f"database unreachable: {type(error).__name__}"
        return JSONResponse({"detail": detail}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
    if not workers:
        detail = f"no worker seen consuming in the last {BEAT_SECONDS * STALE_AFTER:.0f} s"
        return JSONResponse({"detail": detail}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
    queues = sorted({queue for worker in workers for queue in worker.queues})
    consumed = {queue: queue in queues for queue in settings.queues}
    return Readiness(status="ready", workers=len(workers), queues=queues, consumed=consumed)


def operator_token(token: CurrentToken) -> ApiToken:
    """Service-wide figures (every token's running jobs, all counts) are for operators only."""
    if token.role != "operator":
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "this needs an operator token (tsla token create NAME --operator)"
        )
    return token


@router.get(
    "/metrics",
    dependencies=[Depends(operator_token)],
    responses={
        **ERROR_RESPONSES,
        403: {"model": Message, "description": "the token is not an operator's"},
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text format",
        },
    },
)
def prometheus_metrics(request: Request) -> Response:
    """Prometheus metrics: jobs by state, queue depth, workers, epoch durations, images/s, API latency."""
    return PlainTextResponse(request.app.state.observability.exposition(), media_type=CONTENT_TYPE_LATEST)

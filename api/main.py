"""The app factory: `uvicorn api.main:create_app --factory`."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from api import dashboard, errors
from api.deps import reject_unknown_query
from api.limits import BodySizeLimit
from api.observability import Observability
from api.routes import checkpoints, events, jobs, meta, metrics
from tsla_service.queue import make_celery
from tsla_service.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for `settings` (default: the TSLA_* environment)."""
    app = FastAPI(
        title="TSLA training service",
        summary="Two-stage label smoothing training jobs over HTTP",
        version="0.1.0",
        dependencies=[Depends(reject_unknown_query)],
    )
    settings = settings or get_settings()
    app.state.settings = settings
    app.state.queue = make_celery(settings, "tsla-api")
    app.state.observability = Observability(settings)
    app.middleware("http")(app.state.observability.measure)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    errors.install(app)
    for module in (jobs, metrics, checkpoints, events, meta):
        app.include_router(module.router)
    dashboard.install(app)
    return app

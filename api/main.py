"""The app factory: `uvicorn api.main:create_app --factory`."""

from __future__ import annotations

from fastapi import FastAPI

from api import errors
from api.queue import JobQueue
from api.routes import checkpoints, jobs, meta, metrics
from tsla_shared.settings import get_settings


def create_app() -> FastAPI:
    app = FastAPI(
        title="TSLA training service",
        summary="Two-stage label smoothing training jobs over HTTP",
        version="0.1.0",
    )
    app.state.queue = JobQueue(get_settings())
    errors.install(app)
    for module in (jobs, metrics, checkpoints, meta):
        app.include_router(module.router)
    return app

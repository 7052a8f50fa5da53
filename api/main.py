"""The app factory: `uvicorn api.main:create_app --factory`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from api import dashboard, errors
from api.deps import reject_unknown_query
from api.feeds import FeedRegistry
from api.limits import RequestGuard
from api.observability import MeasureLatency, Observability
from api.reads import open_reads
from api.routes import (
    checkpoints,
    datasets,
    events,
    experiment_results,
    experiments,
    jobs,
    meta,
    metrics,
    uploads,
)
from api.security import SecurityHeaders
from tsla_service.permissions import owner_only_files
from tsla_service.queue import make_celery
from tsla_service.reaper import Reaper
from tsla_service.settings import Settings, get_settings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """While the API serves, it also reaps (lost workers' jobs are re-queued even when no worker
    runs), and on PostgreSQL the paging routes read through an asyncio pool (api.reads)."""
    reaper = Reaper(app.state.settings, app.state.queue)
    reaper.start()
    app.state.reads = await open_reads(app.state.settings.resolved_database_url)
    try:
        yield
    finally:
        reaper.stop()
        await app.state.feeds.close()
        if app.state.reads is not None:
            await app.state.reads.close()
        app.state.reads = None


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for `settings` (default: the TSLA_* environment). Files this process creates from
    now on are its owner's alone (a process-wide umask)."""
    owner_only_files()
    app = FastAPI(
        title="TSLA training service",
        summary="Two-stage label smoothing training jobs over HTTP",
        version="0.1.0",
        dependencies=[Depends(reject_unknown_query)],
        docs_url=None,  # served from the package by api.dashboard, not from a CDN
        redoc_url=None,
        lifespan=lifespan,
    )
    settings = settings or get_settings()
    app.state.settings = settings
    app.state.queue = make_celery(settings, "tsla-api")
    app.state.observability = Observability(settings)
    app.state.feeds = FeedRegistry(settings)  # event streams: one poller per watched job
    app.state.reads = None  # the lifespan opens PostgreSQL's read pool
    app.add_middleware(MeasureLatency, observability=app.state.observability)
    # Upload chunks stream to disk (api/routes/datasets.py caps them); every other body is read here.
    app.add_middleware(
        RequestGuard, max_body_bytes=settings.max_body_bytes, streaming_prefixes=(uploads.STREAMED,)
    )
    errors.install(app)
    routers = (jobs, metrics, checkpoints, events, meta, experiments, experiment_results, datasets, uploads)
    for module in routers:
        app.include_router(module.router)
    dashboard.install(app)
    app.add_middleware(SecurityHeaders)
    return app

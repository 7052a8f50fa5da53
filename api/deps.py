"""Named dependency types, so a route's signature says what it needs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from celery import Celery
from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine, Select
from sqlalchemy.orm import Session

from api.reads import Reads, Row, autocommit_engine, reads_for
from tsla_service.db import session_factory
from tsla_service.models import ApiToken, Experiment, Job
from tsla_service.settings import Settings
from tsla_service.tokens import authenticate, digest, owns_job


# Dependencies that do no I/O are async: FastAPI runs each sync one in the thread pool, a hop
# that costs more than they do, on every request.
async def settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(settings_dep)]


async def queue_dep(request: Request) -> Celery:
    queue: Celery = request.app.state.queue
    return queue


QueueDep = Annotated[Celery, Depends(queue_dep)]


def get_db(settings: SettingsDep) -> Iterator[Session]:
    session = session_factory(settings.resolved_database_url)()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_db)]


bearer = HTTPBearer(auto_error=False, description="an API token from `tsla token create NAME`")


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def unauthorized(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, reason, headers={"WWW-Authenticate": "Bearer"})


def job_not_found(job_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")


def current_token(session: SessionDep, credentials: Credentials) -> ApiToken:
    if credentials is None:
        raise unauthorized("missing bearer token")
    token = authenticate(session, credentials.credentials)
    if token is None:
        raise unauthorized("invalid or revoked token")
    return token


CurrentToken = Annotated[ApiToken, Depends(current_token)]


def owned_job(job_id: Annotated[str, Path(max_length=64)], session: SessionDep, token: CurrentToken) -> Job:
    """The job, if it exists and belongs to the caller's token; another owner's job is a 404."""
    job = session.get(Job, job_id)
    if job is None or job.owner != token.id:
        raise job_not_found(job_id)
    return job


OwnedJob = Annotated[Job, Depends(owned_job)]


@dataclass(frozen=True)
class OwnedJobReader:
    """Read-only access to a job the caller owns, for the hot paging routes: `await
    reader.rows(statement, params)` runs a page statement that ANDs in
    tsla_service.tokens.OWNED_BY_TOKEN (its parameters job_id and token_sha256 are added here),
    so a page with rows takes one query and checks that the caller's token is active and owns
    the job. Only an empty page needs a second query, to tell a bad token (401) and another's job
    (404) from a page with nothing in it yet. Where the statement runs: api.reads."""

    reads: Reads
    engine: Engine
    job_id: str
    credentials: HTTPAuthorizationCredentials | None
    settings: Settings  # the app's, so that a paging route needs no second dependency

    async def rows(self, statement: Select[Any], params: Mapping[str, Any]) -> list[Row]:
        if self.credentials is None:
            raise unauthorized("missing bearer token")
        token = self.credentials.credentials
        owner = {"job_id": self.job_id, "token_sha256": digest(token)}
        found = await self.reads.rows(statement, {**params, **owner})
        if not found:
            await run_in_threadpool(self.check_owner, token)
        return found

    def check_owner(self, token: str) -> None:
        with self.engine.connect() as connection:
            owns = owns_job(connection, token, self.job_id)
        if owns is None:
            raise unauthorized("invalid or revoked token")
        if not owns:
            raise job_not_found(self.job_id)


async def owned_job_reader(
    request: Request,
    job_id: Annotated[str, Path(max_length=64)],
    credentials: Credentials,
) -> OwnedJobReader:
    settings: Settings = request.app.state.settings
    url = settings.resolved_database_url
    reads = reads_for(request.app.state.reads, url)
    return OwnedJobReader(reads, autocommit_engine(url), job_id, credentials, settings)


OwnedJobRead = Annotated[OwnedJobReader, Depends(owned_job_reader)]


def owned_experiment(
    experiment_id: Annotated[str, Path(max_length=64)], session: SessionDep, token: CurrentToken
) -> Experiment:
    """The experiment, if it exists and belongs to the caller's token; another owner's is a 404."""
    experiment = session.get(Experiment, experiment_id)
    if experiment is None or experiment.owner != token.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"experiment {experiment_id} not found")
    return experiment


OwnedExperiment = Annotated[Experiment, Depends(owned_experiment)]


@dataclass(frozen=True)
class StreamAccess:
    """A job the caller owns and the token that showed it, for a response that outlives the request."""

    job_id: str
    token_id: str


async def stream_access(
    request: Request, job_id: Annotated[str, Path(max_length=64)], credentials: Credentials
) -> StreamAccess:
    """OwnedJob's checks for a streaming response, on a session closed before the stream starts
    (a SessionDep would hold its connection for the stream's whole life), in the event feeds'
    own threads (api/feeds.py), so that a burst of streams never queues the other endpoints."""

    def check(sessions: Callable[[], Session]) -> StreamAccess:
        with sessions() as session:
            token = current_token(session, credentials)
            return StreamAccess(owned_job(job_id, session, token).id, token.id)

    access: StreamAccess = await request.app.state.feeds.run(check)
    return access


OwnedJobStream = Annotated[StreamAccess, Depends(stream_access)]


def query_names(dependant: Dependant) -> set[str]:
    """Query parameter names a route declares, its dependencies' included."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= query_names(sub)
    return names


async def reject_unknown_query(request: Request) -> None:
    """Unknown or repeated query parameters are a 422, like unknown body fields: a typo is never
    ignored, and no parameter is a list, so `?after=1&after=9` would silently drop a value."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    given = [key for key, _ in request.query_params.multi_items()]
    if not given:
        return
    unknown = sorted(set(given) - query_names(route.dependant))
    if unknown:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"unknown query parameter(s): {', '.join(unknown)}"
        )
    repeated = sorted(key for key, count in Counter(given).items() if count > 1)
    if repeated:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"query parameter(s) given more than once: {', '.join(repeated)}",
        )

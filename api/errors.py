"""Errors are JSON with a one-line `detail`; bad input is a 4xx, never a 500."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import Scope

from tsla_service.experiments import ExperimentConflict
from tsla_service.queues import UnknownQueue
from tsla_service.submit import ActiveJobLimit, IdempotencyConflict
from tsla_spec.spec import SpecError


def describe(errors: list[dict]) -> str:
    parts = []
    for error in errors:
        location = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
        parts.append(f"{'.'.join(location) or 'request'}: {error.get('msg', 'invalid')}")
    return one_line("; ".join(parts))


async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": describe(errors), "errors": errors})


def domain_error(status_code: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    """A handler answering a domain error with `status_code` and its message as `detail`."""

    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=status_code, content={"detail": one_line(str(exc))})

    return handle


# The service's domain errors and the HTTP status each one means.
DOMAIN_ERRORS: dict[type[Exception], int] = {
    SpecError: 422,
    IdempotencyConflict: 409,
    ActiveJobLimit: 429,
    ExperimentConflict: 409,
    UnknownQueue: 422,
}


async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    """405 with an `Allow` header naming every method of the path (Starlette names only the
    methods of the first route that matched, e.g. POST but not GET for /jobs)."""
    allowed = allowed_methods(request.app.router.routes, request.scope)
    if not allowed and isinstance(exc, StarletteHTTPException) and exc.headers:
        allowed = [m.strip() for m in exc.headers.get("Allow", "").split(",") if m.strip()]
    return JSONResponse(
        status_code=405,
        content={"detail": f"{one_line(request.method)} is not allowed here; allowed: {', '.join(allowed)}"},
        headers={"Allow": ", ".join(allowed)},
    )


# The methods an Allow header can name; each is tried against the routes.
PROBED_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> list[str]:
    """The methods the router would serve at this path. Each is tried as the router does it
    (the first full match wins), so included routers, plain routes (/openapi.json) and mounts
    count as well as API routes."""
    return [method for method in PROBED_METHODS if serves(routes, {**scope, "method": method})]


def serves(routes: Sequence[BaseRoute], scope: Scope) -> bool:
    for route in routes:
        match, child = route.matches(scope)
        if match != Match.FULL:
            continue
        if isinstance(route, Mount) and isinstance(route.app, StaticFiles):
            return scope["method"] in ("GET", "HEAD")  # a mount matches any method; files only these
        if isinstance(route, Mount) and route.routes:
            return serves(route.routes, {**scope, **child})
        return True
    return False


def one_line(text: str, limit: int = 1000) -> str:
    """`text` as one printable line: newlines, control and format characters become escapes
    (a client's input echoed in an error can neither break the line nor hide itself)."""
    shown = "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


async def http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's answer to an HTTPException, with its detail made one printable line."""
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.detail, str):
        exc.detail = one_line(exc.detail)
    return await http_exception_handler(request, exc)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    for error, status_code in DOMAIN_ERRORS.items():
        app.add_exception_handler(error, domain_error(status_code))
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(405, method_not_allowed)

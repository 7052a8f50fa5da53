"""Errors are JSON with a one-line `detail`; bad input is a 4xx, never a 500."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.routing import Match

from tsla_service.submit import ActiveJobLimit, IdempotencyConflict
from tsla_spec.spec import SpecError


def describe(errors: list[dict]) -> str:
    parts = []
    for error in errors:
        location = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
        parts.append(f"{'.'.join(location) or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": describe(errors), "errors": errors})


def domain_error(status_code: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    """A handler answering a domain error with `status_code` and its message as `detail`."""

    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=status_code, content={"detail": str(exc)})

    return handle


# The service's domain errors and the HTTP status each one means.
DOMAIN_ERRORS: dict[type[Exception], int] = {SpecError: 422, IdempotencyConflict: 409, ActiveJobLimit: 429}


async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    """405 with an `Allow` header naming every method of the path (Starlette names only the
    methods of the first route that matched, e.g. POST but not GET for /jobs)."""
    allowed: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match == Match.PARTIAL and isinstance(route, APIRoute) and route.methods:
            allowed |= route.methods
    return JSONResponse(
        status_code=405,
        content={"detail": "Method Not Allowed"},
        headers={"Allow": ", ".join(sorted(allowed))},
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    for error, status_code in DOMAIN_ERRORS.items():
        app.add_exception_handler(error, domain_error(status_code))
    app.add_exception_handler(405, method_not_allowed)

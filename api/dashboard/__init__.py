"""The web dashboard: static assets (no build step) served by the API itself.

`GET /` is the single page and `/static/*` its scripts, styles and the vendored Chart.js; `GET
/docs` is Swagger UI, vendored as well. None needs a token: the page asks for one and sends it as
a bearer token with every data request.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    """The dashboard page; it loads everything else from /static."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/docs")
def api_docs() -> FileResponse:
    """Swagger UI for /openapi.json, from the vendored bundle (no CDN: the service works offline)."""
    return FileResponse(STATIC_DIR / "docs.html", headers={"Cache-Control": "no-cache"})


def install(app: FastAPI) -> None:
    """Serve the page at `/` and its assets at `/static`."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

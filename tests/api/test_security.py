"""Security hygiene of the API in process: headers, self-hosted docs, operator scope, token rules,
readiness."""

from __future__ import annotations

import re

import pytest

from api.security import HEADERS
from tests.api.conftest import Api
from tsla_service.db import session_scope
from tsla_service.tokens import create_token
from tsla_service.workers import beat, forget


@pytest.mark.parametrize("path", ["/", "/docs", "/healthz", "/jobs", "/static/app.js", "/no-such-page"])
def test_every_response_carries_the_security_headers(api: Api, path: str) -> None:
    response = api.client.get(path)
    for name, value in HEADERS.items():
        assert response.headers[name] == value, (path, name)
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_the_api_docs_load_only_this_servers_files(api: Api) -> None:
    page = api.client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(source.startswith("/static/") for source in sources), sources
    assert "<script>" not in page.text, "no inline script: the CSP allows none"
    for source in sources:
        assert api.client.get(source).status_code == 200, source
    assert api.client.get("/redoc").status_code == 404
    assert api.client.get("/openapi.json").json()["info"]["title"] == "TSLA training service"


def test_prometheus_metrics_need_an_operator_token(api: Api) -> None:
    user = api.new_token("user-a")
    operator = api.new_token("operator-a", role="operator")
    assert api.client.get("/metrics").status_code == 401
    refused = api.client.get("/metrics", headers=api.as_token(user))
    assert refused.status_code == 403 and "operator" in refused.json()["detail"]
    allowed = api.client.get("/metrics", headers=api.as_token(operator))
    assert allowed.status_code == 200 and "tsla_jobs" in allowed.text


@pytest.mark.parametrize(
    "token",
    ["x", "short-token-123", "a" * 19, "has a space in it 1234", "tab\tinside-the-token-1234", "é" * 25],
)
def test_a_chosen_token_must_be_long_printable_ascii(api: Api, token: str) -> None:
    with session_scope(api.database_url) as session, pytest.raises(ValueError, match="20-512 printable"):
        create_token(session, "chosen", token)


@pytest.mark.parametrize("name", ["", "-dash-first", "has space", "new\nline", "x" * 101, "\x1b[31mred"])
def test_token_names_are_plain(api: Api, name: str) -> None:
    with session_scope(api.database_url) as session, pytest.raises(ValueError, match="token name"):
        create_token(session, name)


def test_readiness_needs_the_database_and_a_live_worker(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    waiting = api.client.get("/readyz")
    assert waiting.status_code == 503 and "no worker" in waiting.json()["detail"]
    with session_scope(api.database_url) as session:
        beat(session, "host:1:abc", ["training"])
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "workers": 1,
        "queues": ["training"],
        "consumed": {"training": True},
    }
    with session_scope(api.database_url) as session:
        forget(session, "host:1:abc")
    assert api.client.get("/readyz").status_code == 503

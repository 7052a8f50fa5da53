"""What every dashboard test shares: Debian's Chromium and how it is started, the page size, where
screenshots go, and the listeners that catch what should never happen on a page."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration._support import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
VIEWPORT = {"width": 1360, "height": 900}
UI_TIMEOUT_MS = 30_000

EVENTS_URL = re.compile(r"/jobs/[0-9a-f]+/events$")


@dataclass
class PageProblems:
    """Everything that should not happen in normal use, as seen by the page's listeners."""

    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    event_streams: int = 0

    def watch(self, page: Any) -> None:
        page.on("console", self.on_console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("request", self.on_request)
        page.on("requestfailed", lambda req: self.failed.append((req.url, f"{req.method}: {req.failure}")))
        page.on(
            "response",
            lambda res: (
                self.failed.append((res.url, f"{res.request.method}: HTTP {res.status}"))
                if res.status >= 400
                else None
            ),
        )

    def on_console(self, message: Any) -> None:
        if message.type in ("error", "warning", "assert"):
            self.console.append(f"{message.type}: {message.text} ({message.location})")

    def on_request(self, request: Any) -> None:
        if EVENTS_URL.search(request.url):
            self.event_streams += 1

    def assert_none(self, page: Any) -> None:
        assert self.console == [], self.console
        assert self.errors == [], self.errors
        # Every event stream the page opened was read to the server's `end`, none dropped. A
        # stream's last frames may still be in flight when the page shows what it already has,
        # so wait until each opened stream either ended or dropped, then compare.
        page.wait_for_function(
            "n => { const s = window.tslaDashboard.summary().streams; return s.ended + s.dropped >= n; }",
            arg=self.event_streams,
        )
        streams = page.evaluate("() => window.tslaDashboard.summary().streams")
        assert streams == {"opened": self.event_streams, "ended": self.event_streams, "dropped": 0}, streams
        # Chromium (156) now and then reports a fetch() that JavaScript read to its end as
        # net::ERR_ABORTED when the response says `Cache-Control: no-store`, as sse-starlette's
        # event streams do, although the whole body arrived (a plain streamed response never
        # shows it). Given the check above, that report on /events is no failure.
        failed = [
            f"{url} {what}"
            for url, what in self.failed
            if not (EVENTS_URL.search(url) and what == "GET: net::ERR_ABORTED")
        ]
        assert failed == [], failed

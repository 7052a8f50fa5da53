"""Attach the tails of the embedded stack's logs to a failed dashboard test."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from tests.service._support import LOG_FILES, log_tail


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and str(item.path).startswith(str(Path(__file__).parent)):
        for log in LOG_FILES:
            report.sections.append((f"process log {log.name} ({log})", log_tail(log)))

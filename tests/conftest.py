"""Shared fixtures: tiny specs that train in a second on the CPU."""

from collections.abc import Generator
from typing import Any

import pytest

from tests.integration._support import LOG_FILES, log_tail
from tsla_spec.spec import RunSpec, build_spec


def tiny_raw_spec(**overrides: Any) -> dict[str, Any]:
    """A spec on small synthetic images with a narrow ResNet-18: seconds per run on 2 cores."""
    raw: dict[str, Any] = {
        "data": {
            "name": "synthetic",
            "synthetic": {"num_train": 192, "num_test": 64, "image_size": 8, "channels": 3, "num_classes": 5},
        },
        "model": {"arch": "resnet18", "width": 4},
        "optim": {"lr": 0.05},
        "schedule": {"kind": "step", "milestones": [2], "gamma": 0.5},
        "smoothing": {"method": "tsla", "theta": 0.2, "switch_epoch": 2},
        "epochs": 4,
        "batch_size": 32,
        "grad_variance": {"probes_per_epoch": 2},
        "device": "cpu",
    }
    for key, value in overrides.items():
        raw[key] = value
    return raw


@pytest.fixture
def tiny_spec() -> RunSpec:
    return build_spec(tiny_raw_spec())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A failed test that ran service processes gets the tails of their logs in its report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for log in LOG_FILES:
            report.sections.append((f"process log {log.name} ({log})", log_tail(log)))

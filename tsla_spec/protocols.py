"""The paper's comparison as data: which base run, which switch epochs, for `tsla reproduce`.

Every protocol compares baseline, LSR, TSLA(s) for each switch epoch s, LSR-pre and TSLA-pre(s)
with a teacher the experiment trains first (the baseline run of seed 0). Switch epochs lie
between the learning-rate drops, not on them, as in the paper (CIFAR-100: drops at 60, 120,
160; switches at 120, 160, 180 of 200).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tsla_spec.vocabulary import METHODS, TEST_TOP1


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str
    base: dict[str, Any]  # a raw run spec (a preset and overrides)
    switch_epochs: tuple[int, ...]
    # What the protocol needs besides the package (a data folder), for the error message.
    needs: str | None = None
    methods: tuple[str, ...] = field(default=METHODS)


PROTOCOLS: dict[str, Protocol] = {
    "digits": Protocol(
        name="digits",
        summary="digits preset, 10 epochs, lr drops at 6 and 8; TSLA switches at 3 and 7",
        base={"preset": "digits", "epochs": 10, "schedule": {"milestones": [6, 8]}},
        switch_epochs=(3, 7),
    ),
    "fashion-mnist-small": Protocol(
        name="fashion-mnist-small",
        summary="fashion-mnist preset on 4,000 training images, 10 epochs, drops at 5 and 8; "
        "switches at 3 and 7",
        base={
            "preset": "fashion-mnist",
            "data": {"train_subset": 4_000},
            "epochs": 10,
            "schedule": {"milestones": [5, 8]},
        },
        switch_epochs=(3, 7),
    ),
    "cifar100": Protocol(
        name="cifar100",
        summary="the paper's CIFAR-100 protocol: ResNet-18, 200 epochs, drops at 60, 120, 160; "
        "switches at 120, 160, 180",
        base={"preset": "cifar100-resnet18"},
        switch_epochs=(120, 160, 180),
        needs="the CIFAR-100 python pickle folder (cifar-100-python) under the workers' data root",
    ),
}

# The teacher of the -pre methods: a cell the experiment trains first.
TEACHER_CELL: dict[str, Any] = {"smoothing.method": "baseline", "seed": 0}


def experiment_body(protocol: Protocol, seeds: int, max_concurrent: int = 1) -> dict[str, Any]:
    """The POST /experiments body of a protocol with seeds 0 .. seeds-1. The grid is the full
    product; the service drops the switch epoch from the methods that never read it, so
    baseline, LSR and LSR-pre run once per seed (tsla_spec.grid)."""
    return {
        "name": f"reproduce-{protocol.name}",
        "base": protocol.base,
        "grid": {
            "smoothing.method": list(protocol.methods),
            "smoothing.switch_epoch": list(protocol.switch_epochs),
            "seed": list(range(seeds)),
        },
        "teacher": {"cell": dict(TEACHER_CELL)},
        "objective": {"metric": TEST_TOP1, "mode": "max"},
        "max_concurrent": max_concurrent,
        "order": "grid",
    }

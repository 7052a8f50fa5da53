"""Which broker queue a job is sent to: the deployment's rule, in one place.

A deployment lists its queues in TSLA_QUEUES (default `training`). A job's queue is
1. its spec's `resources.queue` when given; a queue the deployment does not list is refused
   (`UnknownQueue`, HTTP 422) and nothing is stored;
2. else TSLA_DEVICE_QUEUES[kind of the spec's `device`], when that kind has an entry. The kind
   is `cuda` for `cuda` and `cuda:N`, `cpu`, or `auto`: an `auto` job goes where its own `auto`
   entry says (a deployment whose workers all have GPUs may send it to `gpu`);
3. else the first of TSLA_QUEUES.

Submission (tsla_service/submit.py) resolves it once and stores it on the job row (`jobs.queue`);
every send goes to the row's queue. The stored spec keeps `resources.queue` as the caller gave it
(null for "by the rule"): the same spec resubmitted elsewhere follows that deployment's rule, and
an experiment's cell keys do not depend on where it runs. A job stored for a queue the settings
later stop listing is not sent until the queue is listed again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from tsla_spec.uploads import NAME_PATTERN

if TYPE_CHECKING:
    from tsla_service.settings import Settings
    from tsla_spec.spec import RunSpec

# The keys TSLA_DEVICE_QUEUES may have: what `device_kind` makes of a spec's device.
DEVICE_KINDS = ("auto", "cpu", "cuda")


class UnknownQueue(Exception):
    """The job names a queue this deployment does not list in TSLA_QUEUES (HTTP 422)."""


def device_kind(device: str) -> str:
    """`cuda:1` -> `cuda`; `cpu` and `auto` stay as they are."""
    return device.partition(":")[0]


def job_queue(settings: Settings, spec: RunSpec) -> str:
    """The queue `spec` is sent to (the rule of the module docstring)."""
    named = spec.resources.queue
    if named is None:
        return settings.device_queues.get(device_kind(spec.device), settings.queues[0])
    if named not in settings.queues:
        known = ", ".join(settings.queues)
        raise UnknownQueue(f"resources.queue: {named!r} is not a queue of this server; known: {known}")
    return named


def check_queue_settings(queues: Sequence[str], device_queues: Mapping[str, str]) -> None:
    """ValueError unless TSLA_QUEUES are distinct queue names and TSLA_DEVICE_QUEUES maps device
    kinds to some of them (a service with a broken rule must not start)."""
    if not queues:
        raise ValueError("TSLA_QUEUES: name at least one queue")
    for name in queues:
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(
                f"TSLA_QUEUES: {name!r} is not a queue name (1-64 of a-z 0-9 . _ -, a letter or digit first)"
            )
    if len(set(queues)) != len(queues):
        raise ValueError(f"TSLA_QUEUES: a queue is listed twice in {', '.join(queues)}")
    for kind, queue in device_queues.items():
        if kind not in DEVICE_KINDS:
            raise ValueError(
                f"TSLA_DEVICE_QUEUES: {kind!r} is not a device kind; known: {', '.join(DEVICE_KINDS)}"
            )
        if queue not in queues:
            raise ValueError(
                f"TSLA_DEVICE_QUEUES: {kind} -> {queue!r} is not one of TSLA_QUEUES ({', '.join(queues)})"
            )

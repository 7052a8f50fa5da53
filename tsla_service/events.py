"""Change notifications from workers to API processes.

With a Redis broker the worker publishes a message on `tsla:job:<id>` after each write (metric
rows, a checkpoint, a state change) and the API's event streams wake up at once. The database
stays the source of truth: a notification only says "look again", so a lost one delays an event
by at most the poll interval and never loses it. Without Redis (the embedded default) streams
poll the database.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import redis

log = logging.getLogger(__name__)


def channel(job_id: str) -> str:
    return f"tsla:job:{job_id}"


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def notify(url: str | None, job_id: str, kind: str) -> None:
    """Best effort: a failed publish only delays a watcher until its next poll."""
    if url is None:
        return
    try:
        _client(url).publish(channel(job_id), kind)
    except redis.RedisError as error:
        log.debug("event publish for %s failed: %s", job_id, error)

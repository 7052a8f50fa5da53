"""The worker's Celery app: the shared queue configuration, the one training task, and the threads
each worker process runs besides training: the reaper and its beat (readiness reads the beats).

Started with `python -m worker [celery worker options]` (see tsla_cli/stack.py); the app is built
from settings there, never at import time.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutting_down

from tsla_service.db import session_factory
from tsla_service.queue import TRAIN_TASK, make_celery
from tsla_service.reaper import Reaper
from tsla_service.settings import Settings
from tsla_service.workers import BEAT_SECONDS, Beater
from worker.runner import run_job


def create_app(settings: Settings) -> Celery:
    app = make_celery(settings)
    # A worker waits for its broker as long as it takes (a sender gives up after a few tries).
    app.conf.update(broker_connection_retry_on_startup=True, broker_connection_max_retries=None)

    @app.task(name=TRAIN_TASK)
    def train_job(job_id: str) -> str:
        return run_job(job_id, settings, app)

    reaper = Reaper(settings, app)
    threads: list[Beater | Reaper] = [reaper]

    def on_ready(sender: Any, **_kwargs: Any) -> None:
        queues = sorted(sender.app.amqp.queues.consume_from)
        worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        beater = Beater(session_factory(settings.resolved_database_url), worker_id, queues, BEAT_SECONDS)
        threads.append(beater)
        for thread in threads:
            thread.start()

    def on_shutdown(**_kwargs: Any) -> None:
        for thread in threads:
            thread.stop()

    worker_ready.connect(on_ready, weak=False)
    worker_shutting_down.connect(on_shutdown, weak=False)
    return app

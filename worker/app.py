"""The worker's Celery app: the shared queue configuration, the one training task and the reaper.

Started with `python -m worker [celery worker options]` (see tsla_cli/stack.py); the app is built
from settings there, never at import time.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutting_down

from tsla_service.queue import TRAIN_TASK, make_celery
from tsla_service.settings import Settings
from worker.reaper import Reaper
from worker.runner import run_job


def create_app(settings: Settings) -> Celery:
    app = make_celery(settings)
    # A worker waits for its broker as long as it takes (a sender gives up after a few tries).
    app.conf.update(broker_connection_retry_on_startup=True, broker_connection_max_retries=None)

    @app.task(name=TRAIN_TASK)
    def train_job(job_id: str) -> str:
        return run_job(job_id, settings)

    reaper = Reaper(settings, app)

    def start_reaper(**_kwargs: Any) -> None:
        reaper.start()

    def stop_reaper(**_kwargs: Any) -> None:
        reaper.stop()

    worker_ready.connect(start_reaper, weak=False)
    worker_shutting_down.connect(stop_reaper, weak=False)
    return app

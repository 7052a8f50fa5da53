"""Enqueue job ids by task name: the API never imports the worker (or torch)."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from tsla_shared.settings import TRAIN_TASK, Settings


class JobQueue:
    def __init__(self, settings: Settings) -> None:
        self.queue = settings.queue
        self.celery = Celery("tsla-api", broker=settings.resolved_broker_url)
        self.celery.conf.update(
            broker_transport_options=settings.broker_transport_options(),
            task_serializer="json",
            accept_content=["json"],
            task_queues=[Queue(settings.queue)],
            task_create_missing_queues=False,
            broker_connection_retry=True,
            broker_connection_max_retries=3,
        )

    def enqueue(self, job_id: str) -> None:
        """Send the job id; the row was committed first, so the worker always finds it."""
        self.celery.send_task(TRAIN_TASK, args=[job_id], queue=self.queue, retry=True)

"""The Celery app of the worker (and, by task name only, of the API).

Settings for long training tasks:
- `task_acks_late` + `task_reject_on_worker_lost`: a message is acknowledged only after the
  task returns, so a worker killed mid-job leaves it to be delivered again.
- `worker_prefetch_multiplier=1`: a worker reserves one job at a time; others stay queued
  for idle workers.
- JSON only; messages carry a job id, never a spec (the job row is the source of truth).
- Redis redelivers a message not acknowledged within `visibility_timeout` (TSLA_
  VISIBILITY_TIMEOUT_SECONDS, default 6 h) even while its worker is still training
  (celery/celery#5935). That duplicate is harmless by design: it can only start training by
  winning the conditional UPDATE in `claim_job`, which requires state `queued`, so while the
  first worker holds the job's lease (renewed every lease/3 seconds) the duplicate exits at
  once. The timeout only bounds how late a lost message is retried; the lease, not the
  timeout, decides who trains.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutting_down
from kombu import Queue

from tsla_shared.settings import TRAIN_TASK, Settings, get_settings


def make_celery(settings: Settings) -> Celery:
    app = Celery("tsla", broker=settings.resolved_broker_url)
    app.conf.update(
        broker_transport_options=settings.broker_transport_options(),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        task_queues=[Queue(settings.queue)],
        task_create_missing_queues=False,
        task_routes={TRAIN_TASK: {"queue": settings.queue}},
        worker_hijack_root_logger=False,
    )
    return app


app = make_celery(get_settings())
app.autodiscover_tasks(["worker"], related_name="tasks", force=True)
reapers: list[Any] = []


@worker_ready.connect
def start_reaper(**_kwargs: Any) -> None:
    from worker.reaper import Reaper

    reaper = Reaper(get_settings(), app)
    reaper.start()
    reapers.append(reaper)


@worker_shutting_down.connect
def stop_reaper(**_kwargs: Any) -> None:
    for reaper in reapers:
        reaper.stop()


__all__ = ["TRAIN_TASK", "app", "make_celery"]

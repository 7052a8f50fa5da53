"""The job queue: one Celery configuration for the API (which sends) and the worker (which consumes).

Messages carry a job id, never a spec: the job row is the source of truth, committed before its
id is sent, to the queue the row names (tsla_service/queues.py). Every process declares all of
TSLA_QUEUES; a worker consumes those it was started with (`--queues`). The API sends by task
name, so it imports neither the worker nor torch.

Settings for long training tasks (read by the worker):
- `task_acks_late` + `task_reject_on_worker_lost`: a message is acknowledged only after the
  task returns, so a worker killed mid-job leaves it to be delivered again.
- `worker_prefetch_multiplier=1`: a worker reserves one job at a time; others stay queued
  for idle workers.
- Redis redelivers a message not acknowledged within `visibility_timeout` (TSLA_
  VISIBILITY_TIMEOUT_SECONDS, default 6 h) even while its worker is still training
  (celery/celery#5935). That duplicate is harmless by design: it can only start training by
  winning the conditional UPDATE in `claim_job`, which requires state `queued`, so while the
  first worker holds the job's lease (renewed every lease/3 seconds) the duplicate exits at
  once. The timeout only bounds how late a lost message is retried; the lease, not the
  timeout, decides who trains.
"""

from __future__ import annotations

import logging

from celery import Celery
from kombu import Queue
from sqlalchemy import select
from sqlalchemy.orm import Session

from tsla_service import jobs
from tsla_service.models import Job
from tsla_service.settings import Settings

log = logging.getLogger(__name__)

# The task the API sends and the worker registers, by name.
TRAIN_TASK = "tsla.train_job"


def make_celery(settings: Settings, name: str = "tsla") -> Celery:
    app = Celery(name, broker=settings.resolved_broker_url)
    app.conf.update(
        broker_transport_options=settings.broker_transport_options(),
        broker_connection_retry=True,
        broker_connection_max_retries=3,  # a sender gives up; the reaper sends what was not sent
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queues[0],
        task_queues=[Queue(name) for name in settings.queues],
        task_create_missing_queues=False,
        worker_hijack_root_logger=False,
    )
    return app


def send_job(app: Celery, session: Session, job_id: str) -> bool:
    """Put the id of a committed job on the row's queue, then mark the row enqueued.

    False when the broker is unreachable (or the queue no longer configured): the job stays stored
    with `enqueued_at` NULL, and the reaper sends it later."""
    queue = session.scalar(select(Job.queue).where(Job.id == job_id))
    try:
        app.send_task(TRAIN_TASK, args=[job_id], queue=queue, retry=True)
    except Exception:  # any broker failure: the row is safe, the reaper retries
        log.exception("job %s stored but not sent; the reaper will send it", job_id)
        return False
    jobs.mark_enqueued(session, job_id)
    return True

"""The reaper: a thread in every worker process that re-queues jobs whose worker was lost.

Every `lease_seconds / 2` it moves running jobs with an expired lease back to `queued` (or to
`failed` when their attempts are spent) and sends the ids of queued jobs that are not on the
queue. Several workers may reap at once: each change is a conditional UPDATE, and a job id
sent twice is harmless because only one delivery can claim it.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from tsla_shared import jobs
from tsla_shared.db import session_scope
from tsla_shared.settings import TRAIN_TASK, Settings

log = logging.getLogger(__name__)


def reap_once(settings: Settings, app: Celery) -> jobs.Reaped:
    url = settings.resolved_database_url
    with session_scope(url) as session:
        reaped = jobs.reap_expired_leases(session)
        unsent = jobs.unsent_job_ids(session)
    for job_id in reaped.requeued:
        log.warning("job %s: worker lost, re-queued", job_id)
    for job_id in reaped.failed:
        log.warning("job %s: worker lost and no attempts left, failed", job_id)
    for job_id in unsent:
        app.send_task(TRAIN_TASK, args=[job_id], queue=settings.queue)
        with session_scope(url) as session:
            jobs.mark_enqueued(session, job_id)
    return reaped


class Reaper(threading.Thread):
    def __init__(self, settings: Settings, app: Celery) -> None:
        super().__init__(name="reaper", daemon=True)
        self.settings = settings
        self.app = app
        self.interval = max(0.5, settings.lease_seconds / 2)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            try:
                reap_once(self.settings, self.app)
            except Exception:  # database or broker restarting: try again next round
                log.exception("reaper round failed")
            if self._stop_event.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop_event.set()

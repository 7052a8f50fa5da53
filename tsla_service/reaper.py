"""The reaper: a thread that re-queues jobs whose worker was lost. It runs in every worker and in
every API process, so jobs are recovered even while no worker runs.

Every `lease_seconds / 2` it moves running jobs with an expired lease back to `queued` (or to
`failed` when their attempts are spent), sends the ids of queued jobs that are not on the broker
to each job's own queue (tsla_service/queue.send_job),
and schedules every experiment with held jobs (or with nothing left to run), so that an
experiment moves on even when the worker that should have scheduled it was lost. Several
reapers may run at once: each change is a conditional UPDATE or runs in the owner's submission
lock, and a job id sent twice is harmless because only one delivery can claim it.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from tsla_service import experiments, jobs
from tsla_service.db import session_factory
from tsla_service.queue import send_job
from tsla_service.settings import Settings

log = logging.getLogger(__name__)


def reap_once(settings: Settings, app: Celery) -> jobs.Reaped:
    with session_factory(settings.resolved_database_url)() as session:
        reaped = jobs.reap_expired_leases(session)
        for job_id in reaped.requeued:
            log.warning("job %s: worker lost, re-queued", job_id)
        for job_id in reaped.failed:
            log.warning("job %s: worker lost and no attempts left, failed", job_id)
        for job_id in jobs.unsent_job_ids(session):
            send_job(app, session, job_id)
        for experiment_id in experiments.experiments_to_schedule(session):
            experiments.schedule(session, app, settings, experiment_id)
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

"""Worker beats: every worker process records that it is alive and consuming, so readiness can
tell "the API is up" from "jobs will actually run"."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from tsla_service.models import WorkerBeat, utcnow

log = logging.getLogger(__name__)

# A worker beats every BEAT_SECONDS; one silent for STALE_AFTER beats counts as gone.
BEAT_SECONDS = 5.0
STALE_AFTER = 3


def beat(session: Session, worker_id: str, queues: Sequence[str]) -> None:
    """Insert or refresh this worker's row."""
    row = session.get(WorkerBeat, worker_id)
    if row is None:
        session.add(WorkerBeat(id=worker_id, queues=list(queues)))
    else:
        row.seen_at = utcnow()
        row.queues = list(queues)
    session.commit()


def forget(session: Session, worker_id: str) -> None:
    session.execute(delete(WorkerBeat).where(WorkerBeat.id == worker_id))
    session.commit()


@dataclass(frozen=True)
class LiveWorker:
    id: str
    queues: list[str]
    seconds_since_seen: float


def live_workers(session: Session, beat_seconds: float = BEAT_SECONDS) -> list[LiveWorker]:
    """Workers that beat within the last STALE_AFTER beats."""
    now = utcnow()
    cutoff = now - timedelta(seconds=beat_seconds * STALE_AFTER)
    rows = session.scalars(select(WorkerBeat).where(WorkerBeat.seen_at >= cutoff).order_by(WorkerBeat.id))
    return [LiveWorker(r.id, list(r.queues), (now - r.seen_at).total_seconds()) for r in rows]


class Beater(threading.Thread):
    """Beats every `interval` seconds until stopped; a failed beat (database restarting) is retried."""

    def __init__(
        self, sessions: sessionmaker[Session], worker_id: str, queues: Sequence[str], interval: float
    ) -> None:
        super().__init__(name="worker-beat", daemon=True)
        self.sessions = sessions
        self.worker_id = worker_id
        self.queues = list(queues)
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            try:
                with self.sessions() as session:
                    beat(session, self.worker_id, self.queues)
            except Exception:
                log.exception("worker beat failed; retrying")
            if self._stop_event.wait(self.interval):
                break
        try:
            with self.sessions() as session:
                forget(session, self.worker_id)
        except Exception:  # a row left behind goes stale by itself
            log.exception("could not remove this worker's beat")

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

"""Prometheus metrics at `/metrics` (prometheus-client).

Request latency is measured in this process. Job figures are read from the database at scrape
time, so every API replica reports the same truth and nothing is lost when one restarts:
jobs by state, queued jobs by queue (one label value per queue of TSLA_QUEUES), live workers, the
histogram of epoch durations, and images/s of running jobs. Only operator tokens may read it: it
names every token's running jobs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tsla_service.db import session_factory
from tsla_service.models import Job
from tsla_service.models import Metric as MetricRow
from tsla_service.settings import Settings
from tsla_service.workers import live_workers
from tsla_spec.vocabulary import JOB_STATES

EPOCH_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def running_speeds(session: Session) -> list[tuple[str, float | None]]:
    """(job id, newest images/s) of every running job that logged one."""
    latest = (
        select(MetricRow.job_id, func.max(MetricRow.seq).label("seq"))
        .join(Job, Job.id == MetricRow.job_id)
        .where(Job.state == "running", MetricRow.name == "images_per_s")
        .group_by(MetricRow.job_id)
        .subquery()
    )
    newest = and_(MetricRow.job_id == latest.c.job_id, MetricRow.seq == latest.c.seq)
    return list(session.execute(select(MetricRow.job_id, MetricRow.value).join(latest, newest)).all())


class JobsCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.sessions = session_factory(settings.resolved_database_url)
        self.queues = list(settings.queues)

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            counts = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            queued = select(Job.queue, func.count()).where(Job.state == "queued").group_by(Job.queue)
            depths = dict(session.execute(queued).all())
            sums = [func.sum(case((MetricRow.value <= bound, 1), else_=0)) for bound in EPOCH_BUCKETS]
            epoch_row = session.execute(
                select(func.count(), func.coalesce(func.sum(MetricRow.value), 0.0), *sums).where(
                    MetricRow.name == "epoch_time"
                )
            ).one()
            speeds = running_speeds(session)
            workers = len(live_workers(session))

        jobs = GaugeMetricFamily("tsla_jobs", "Jobs by state", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        depth = GaugeMetricFamily("tsla_queue_depth", "Queued jobs by the queue they go to", labels=["queue"])
        for queue in self.queues:  # a stored queue no longer configured gets no label value
            depth.add_metric([queue], depths.get(queue, 0))
        yield depth
        yield GaugeMetricFamily("tsla_workers", "Worker processes seen consuming lately", value=workers)
        count, total, *cumulative = epoch_row
        buckets = [(str(float(b)), int(c or 0)) for b, c in zip(EPOCH_BUCKETS, cumulative, strict=True)]
        buckets.append(("+Inf", int(count)))
        yield HistogramMetricFamily(
            "tsla_epoch_duration_seconds",
            "Wall time of training epochs",
            buckets=buckets,
            sum_value=float(total),
        )
        images = GaugeMetricFamily(
            "tsla_job_images_per_second", "Training images/s of running jobs", labels=["job"]
        )
        for job_id, value in speeds:
            if value is not None:  # a non-finite value is stored as NULL
                images.add_metric([job_id], value)
        yield images


class Observability:
    """The app's registry: the request-latency histogram and the job collector."""

    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "tsla_api_request_seconds",
            "API request latency",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.registry.register(JobsCollector(settings))

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        """One request's time to its response headers. Every label has a bounded set of values: a
        known method or "other", the route template (/jobs/{job_id}, never the raw path) or
        "unmatched", and the status code."""
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
        template = getattr(scope.get("route"), "path", "unmatched")
        self.latency.labels(method, template, str(status)).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MeasureLatency:
    """ASGI middleware timing each request to its response headers (an event stream's first
    byte, not its whole life), so a long stream never skews the histogram."""

    def __init__(self, app: ASGIApp, observability: Observability) -> None:
        self.app = app
        self.observability = observability

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.observability.observe(scope, message["status"], time.perf_counter() - start)
            await send(message)

        await self.app(scope, receive, timed_send)

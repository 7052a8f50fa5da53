"""The training task as a plain function: claim, train, persist, finish (no broker needed)."""

import threading
import time
from pathlib import Path

import fsspec
from sqlalchemy import select

from tests.conftest import tiny_raw_spec
from tsla_cli.stack import wait_for
from tsla_service import jobs
from tsla_service.db import session_scope
from tsla_service.migrate import upgrade_to_head
from tsla_service.models import Checkpoint, Job, LogLine, Metric
from tsla_service.settings import Settings
from tsla_spec.spec import build_spec
from worker.runner import CANCEL_POLL_SECONDS, run_job


def make_settings(tmp_path: Path, storage_url: str | None = None) -> Settings:
    settings = Settings(home=tmp_path / "home", storage_url=storage_url, lease_seconds=30)  # type: ignore[arg-type]
    upgrade_to_head(settings.resolved_database_url)
    return settings


def add_job(settings: Settings, epochs: int = 3, max_attempts: int = 3, **spec_overrides: object) -> str:
    spec = build_spec(tiny_raw_spec(epochs=epochs, **spec_overrides))
    with session_scope(settings.resolved_database_url) as session:
        job = Job(name="t", state="queued", spec=spec.model_dump(mode="json"), method="tsla",
                  dataset="synthetic", epochs=epochs, max_attempts=max_attempts)  # fmt: skip
        session.add(job)
        session.flush()
        return job.id


def test_run_job_trains_persists_and_finishes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    job_id = add_job(settings)
    assert run_job(job_id, settings) == "succeeded"
    assert run_job(job_id, settings) == "not claimed"  # a duplicate delivery trains nothing
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.state, job.attempt, job.epochs_done) == ("succeeded", 1, 3)
        keys = session.execute(select(Metric.epoch, Metric.split, Metric.name)).all()
        assert len(keys) == len(set(keys)) and {k[0] for k in keys} == {0, 1, 2}
        checkpoints = session.scalars(select(Checkpoint).where(Checkpoint.deleted.is_(False))).all()
        assert [c.name for c in checkpoints] == ["epoch-0000", "epoch-0001", "epoch-0002"]
        for checkpoint in checkpoints:
            assert (settings.home / "checkpoints" / checkpoint.storage_key).stat().st_size == checkpoint.size
        messages = session.scalars(select(LogLine.message)).all()
        assert messages[0].startswith("attempt 1 started") and messages[-1] == "attempt 1 ended: succeeded"


def test_remote_storage_uploads_checkpoints_and_prunes_them(tmp_path: Path) -> None:
    """An fsspec URL that is not a local path (here in-memory) is uploaded to, not trained in."""
    url = f"memory://tsla-test-{tmp_path.name}"
    settings = make_settings(tmp_path, storage_url=url)
    job_id = add_job(settings, checkpoint={"keep_last": 1})
    assert run_job(job_id, settings) == "succeeded"
    fs = fsspec.filesystem("memory")
    stored = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{url}/{job_id}/checkpoints", detail=False))
    with session_scope(settings.resolved_database_url) as session:
        live = session.scalars(select(Checkpoint).where(Checkpoint.deleted.is_(False))).all()
        names = {c.name for c in live}
        assert stored == sorted([f"{n}.pt" for n in names] + [f"{n}.json" for n in names])
        for checkpoint in live:
            assert fs.size(f"{url}/{checkpoint.storage_key}") == checkpoint.size
    assert (settings.home / "work" / job_id / "checkpoints").is_dir()  # trained in scratch space


def test_a_job_with_a_missing_dataset_fails_with_the_reason(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    job_id = add_job(settings, data={"name": "cifar10"})
    assert run_job(job_id, settings) == "failed"
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.error is not None
        assert job.error.startswith("DatasetError") and "cifar-10-batches-py" in job.error


def test_a_cancel_stops_training_within_a_poll_at_the_default_lease(tmp_path: Path) -> None:
    """The cancel flag is read every CANCEL_POLL_SECONDS, not only at lease renewals (every 20 s at
    the default lease): the job stops within that plus one step, with a partial checkpoint."""
    settings = make_settings(tmp_path)
    settings.lease_seconds = 60.0
    job_id = add_job(settings, epochs=200)
    stopped: dict[str, float] = {}

    def cancel_once_training() -> None:
        def first_row() -> bool:
            with session_scope(settings.resolved_database_url) as session:
                return session.scalar(select(Metric.seq).where(Metric.job_id == job_id).limit(1)) is not None

        wait_for(first_row, 120, "the first metric row")
        with session_scope(settings.resolved_database_url) as session:
            jobs.request_cancel(session, job_id)
        stopped["requested"] = time.monotonic()

    canceller = threading.Thread(target=cancel_once_training)
    canceller.start()
    assert run_job(job_id, settings) == "canceled"
    took = time.monotonic() - stopped["requested"]
    canceller.join()
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == "canceled" and job.epochs_done < 200
        partial = session.scalars(select(Checkpoint).where(Checkpoint.partial.is_(True))).all()
        assert len(partial) == 1
    # A tiny spec's step takes milliseconds: what remains is the poll interval and the checkpoint.
    assert took < CANCEL_POLL_SECONDS + 1.5, f"the cancel took {took:.2f} s to stop the job"

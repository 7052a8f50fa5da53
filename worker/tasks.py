"""The one training task: re-read the job row by id and run it."""

from worker.celery_app import TRAIN_TASK, app
from worker.runner import run_job


@app.task(name=TRAIN_TASK)
def train_job(job_id: str) -> str:
    return run_job(job_id)

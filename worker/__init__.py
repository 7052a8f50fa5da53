"""Celery worker: thin glue between a job row and the training core."""

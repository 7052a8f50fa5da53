"""The service on object storage: a real API and a real celery worker (PostgreSQL, Redis) with
TSLA_STORAGE_URL=s3://bucket/prefix on a local moto_server, reached through a TCP proxy whose stop
is the outage. Checkpoints go up (in parts when large) and are listed once stored; downloads stream
with Content-Length, ETag and Range; retention prunes the bucket; an outage delays uploads and
loses no checkpoint."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ._s3 import AWS_ENV, PART_BYTES, MotoServer, TcpProxy, moto_server, proxy_to
from ._support import FaultStack, Service, Worker, check_download, job_logs, sha256_bytes, wait_for

pytestmark = pytest.mark.integration
# S3's ETag of a multipart upload: the md5 of the parts' md5s, a dash, the number of parts.
MULTIPART_ETAG = r'"[0-9a-f]{32}-\d+"'
# Longer than a checkpoint interval (about 2 s) plus botocore's own retries of one call (up to 6 s),
# so the worker's retries, not botocore's, are what carry it over.
OUTAGE_SECONDS = 14


class S3Stack(FaultStack):
    """A FaultStack whose API and workers store checkpoints on S3, as `s3_env` says."""

    def __init__(self, root: Path, s3_env: dict[str, str]) -> None:
        super().__init__(root)
        self.s3_env = s3_env

    def env(self, lease_seconds: float | None = None) -> dict[str, str]:
        return {**super().env(lease_seconds), **self.s3_env}


@dataclass
class S3Service:
    service: Service
    worker: Worker
    server: MotoServer
    proxy: TcpProxy
    prefix: str

    def key(self, job_id: str, name: str) -> str:
        return f"{self.prefix}/{job_id}/checkpoints/{name}"

    def stored(self, job_id: str) -> set[str]:
        return set(self.server.objects(f"{self.prefix}/{job_id}/"))

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        listing = self.service.http.get(f"/jobs/{job_id}/checkpoints")
        assert listing.status_code == 200, listing.text
        items: list[dict[str, Any]] = listing.json()["items"]
        return items


@pytest.fixture(scope="module")
def s3_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    root = tmp_path_factory.mktemp("s3-stack")
    prefix = f"tsla-{secrets.token_hex(4)}"
    with moto_server(root / "logs" / "moto.log") as server, proxy_to(server) as proxy:
        env = {
            **AWS_ENV,
            "TSLA_STORAGE_URL": f"s3://{server.bucket}/{prefix}",
            "TSLA_S3_ENDPOINT_URL": proxy.url,
            "TSLA_STORAGE_PART_BYTES": str(PART_BYTES),
            "TSLA_STORAGE_RETRY_SECONDS": "120",
        }
        with S3Stack(root, env) as stack:
            worker = stack.start_worker("s3")
            yield S3Service(stack.service, worker, server, proxy, prefix)


def test_a_job_on_s3_trains_lists_downloads_and_prunes(s3_service: S3Service) -> None:
    """Width 24 makes a 12.8 MB checkpoint: more than two 5 MiB parts, so a multipart upload."""
    spec = {"preset": "digits", "epochs": 3, "smoothing": {"method": "tsla", "switch_epoch": 1},
            "model": {"width": 24}, "checkpoint": {"keep_last": 1}, "name": "s3-main"}  # fmt: skip
    service = s3_service.service
    job = service.wait_job(service.submit(spec)["id"], timeout=240)
    assert job["state"] == "succeeded", job
    items = s3_service.checkpoints(job["id"])
    assert 1 <= len(items) < 3  # retention kept the latest (and the best), not all three

    kept = {s3_service.key(job["id"], f"{i['name']}.{ext}") for i in items for ext in ("pt", "json")}
    assert s3_service.stored(job["id"]) == kept  # the pruned ones are gone from the bucket too
    for item in items:
        key = s3_service.key(job["id"], f"{item['name']}.pt")
        assert item["size"] > 2 * PART_BYTES and re.fullmatch(MULTIPART_ETAG, s3_service.server.etag(key))
        body = check_download(service, job["id"], str(item["id"]), item["size"], item["sha256"])
        assert body == s3_service.server.read(key)

    url, etag = f"/jobs/{job['id']}/checkpoints/{items[-1]['id']}", f'"{items[-1]["sha256"]}"'
    resumed = service.http.get(url, headers={"Range": "bytes=10-19", "If-Range": etag})
    assert resumed.status_code == 206 and resumed.content == body[10:20]
    changed = service.http.get(url, headers={"Range": "bytes=10-19", "If-Range": '"other"'})
    assert changed.status_code == 200 and changed.headers["content-length"] == str(len(body))


def test_an_s3_outage_mid_job_delays_uploads_and_loses_no_checkpoint(s3_service: S3Service) -> None:
    """The proxy stops after the first checkpoint for OUTAGE_SECONDS: training waits at its next
    storage call, retrying; then the job goes on in the same attempt, every epoch stored."""
    spec = {"preset": "digits", "epochs": 6, "smoothing": {"method": "tsla", "switch_epoch": 3},
            "checkpoint": {"keep_last": 10}, "name": "s3-outage"}  # fmt: skip
    service, proxy = s3_service.service, s3_service.proxy
    job_id = service.submit(spec)["id"]
    wait_for(lambda: s3_service.checkpoints(job_id) or None, 180, "the first checkpoint", interval=0.2)
    proxy.stop()
    down_at = time.monotonic()
    try:
        time.sleep(1.0)  # an upload in flight has failed by now, or was recorded
        listed = len(s3_service.checkpoints(job_id))
        outage = service.http.get(f"/jobs/{job_id}/checkpoints/latest", timeout=60)
        assert outage.status_code == 503 and outage.headers["retry-after"], outage.text
        time.sleep(max(0.0, down_at + OUTAGE_SECONDS - time.monotonic()))
        assert len(s3_service.checkpoints(job_id)) == listed  # nothing listed that is not stored
    finally:
        proxy.start()

    job = service.wait_job(job_id, timeout=240)
    assert (job["state"], job["attempt"]) == ("succeeded", 1), job
    items = s3_service.checkpoints(job_id)
    assert [i["name"] for i in items] == [f"epoch-000{epoch}" for epoch in range(6)]
    for item in items:
        data = s3_service.server.read(s3_service.key(job_id, f"{item['name']}.pt"))
        assert (len(data), sha256_bytes(data)) == (item["size"], item["sha256"])
    retries = [m for m in job_logs(service, job_id) if m.startswith("storage unreachable (")]
    assert retries and all("; retrying in " in m for m in retries), retries
    assert "storage unreachable (" in s3_service.worker.text()

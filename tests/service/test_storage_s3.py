"""Storage on a real local S3 endpoint (moto_server, through a TCP proxy that can be stopped):
put/get/size/list/delete, multipart uploads, range reads that fetch only their range, and
unreachable storage waited out by retry_unreachable."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration._s3 import AWS_ENV, PART_BYTES, MotoServer, TcpProxy, moto_server, proxy_to
from tsla_service.settings import Settings
from tsla_service.storage import (
    REMOTE_READ_BYTES,
    UNREACHABLE,
    Storage,
    StorageUnavailable,
    retry_unreachable,
    storage_for,
)


@dataclass
class S3:
    server: MotoServer
    proxy: TcpProxy


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with pytest.MonkeyPatch.context() as env, moto_server(log) as server, proxy_to(server) as proxy:
        for name, value in AWS_ENV.items():
            env.setenv(name, value)
        yield S3(server, proxy)


@pytest.fixture
def storage(s3: S3, tmp_path: Path) -> Storage:
    """Storage under a prefix of its own, built from settings the way the service builds it."""
    if not s3.proxy.running:  # a test that failed within an outage
        s3.proxy.start()
    url = f"s3://{s3.server.bucket}/t-{secrets.token_hex(4)}"
    settings = Settings(home=tmp_path, storage_url=url, s3_endpoint_url=s3.proxy.url,  # type: ignore[call-arg]
                        storage_part_bytes=PART_BYTES)  # fmt: skip
    return storage_for(settings)


def object_key(storage: Storage, key: str) -> str:
    """The object's key in the bucket: the storage's prefix, then `key`."""
    return f"{storage.root.split('/', 1)[1]}/{key}"


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def test_files_are_put_read_listed_and_deleted(storage: Storage, s3: S3, tmp_path: Path) -> None:
    data = random_file(tmp_path / "a.pt", 1000)
    storage.put_file(tmp_path / "a.pt", "job1/checkpoints/a.pt")
    storage.put_file(tmp_path / "a.pt", "job1/checkpoints/b.pt")
    assert not storage.is_local and storage.exists("job1/checkpoints/a.pt")
    assert storage.size("job1/checkpoints/a.pt") == 1000
    assert storage.list("job1/checkpoints") == ["job1/checkpoints/a.pt", "job1/checkpoints/b.pt"]
    assert s3.server.read(object_key(storage, "job1/checkpoints/a.pt")) == data

    storage.get_file("job1/checkpoints/a.pt", tmp_path / "copy" / "a.pt")
    assert (tmp_path / "copy" / "a.pt").read_bytes() == data
    assert os.listdir(tmp_path / "copy") == ["a.pt"]  # the download's temp file is gone
    with storage.open("job1/checkpoints/a.pt") as handle:
        handle.seek(990)
        assert handle.read() == data[990:]

    storage.delete("job1/checkpoints/a.pt")
    assert not storage.exists("job1/checkpoints/a.pt")
    assert storage.list("job1/checkpoints") == ["job1/checkpoints/b.pt"]
    storage.delete_folder("job1")
    assert storage.list("job1/checkpoints") == [] and storage.list("job1") == []


def test_a_file_of_two_parts_or_more_is_a_multipart_upload(storage: Storage, s3: S3, tmp_path: Path) -> None:
    """S3 writes an ETag of "<md5 of the parts' md5s>-<number of parts>" only for multipart uploads."""
    big = random_file(tmp_path / "big.pt", 2 * PART_BYTES + 123)
    storage.put_file(tmp_path / "big.pt", "job/big.pt")
    small = random_file(tmp_path / "small.pt", PART_BYTES + 1)  # under two parts: one PUT
    storage.put_file(tmp_path / "small.pt", "job/small.pt")

    big_key, small_key = object_key(storage, "job/big.pt"), object_key(storage, "job/small.pt")
    assert s3.server.etag(big_key).endswith('-3"') and s3.server.read(big_key) == big
    assert "-" not in s3.server.etag(small_key) and s3.server.read(small_key) == small


def test_a_range_read_transfers_only_its_range(storage: Storage, s3: S3, tmp_path: Path) -> None:
    data = random_file(tmp_path / "big.pt", 2 * REMOTE_READ_BYTES + 5)
    storage.put_file(tmp_path / "big.pt", "job/big.pt")

    before = s3.proxy.received
    assert b"".join(storage.read_range("job/big.pt", 3_000_000, 100)) == data[3_000_000:3_000_100]
    assert s3.proxy.received - before < 20_000  # the range and a few headers, not a read-ahead block

    chunks = list(storage.read_range("job/big.pt", 10, len(data) - 10))
    assert [len(c) for c in chunks] == [REMOTE_READ_BYTES, REMOTE_READ_BYTES - 5]
    assert b"".join(chunks) == data[10:]


def test_unreachable_storage_is_waited_out_then_given_up(storage: Storage, s3: S3, tmp_path: Path) -> None:
    random_file(tmp_path / "a.pt", 10)
    storage.put_file(tmp_path / "a.pt", "job/a.pt")
    s3.proxy.stop()
    with pytest.raises(UNREACHABLE):
        storage.get_file("job/a.pt", tmp_path / "copy" / "a.pt")
    assert os.listdir(tmp_path / "copy") == []  # no partial file, no temp file

    logged: list[str] = []
    # Longer than botocore's own 3 tries of one call (a few seconds): retry_unreachable's turn.
    threading.Timer(8.0, s3.proxy.start).start()
    started = time.monotonic()
    assert retry_unreachable(lambda: storage.size("job/a.pt"), "reading a.pt", 60, logged.append) == 10
    assert time.monotonic() - started >= 7.5 and logged, logged
    assert all(m.startswith("storage unreachable (EndpointConnectionError: ") for m in logged), logged
    assert logged[0].endswith("reading a.pt; retrying in 1.0 s"), logged

    s3.proxy.stop()
    with pytest.raises(StorageUnavailable, match=r"reading a.pt; gave up after 0 s$"):
        retry_unreachable(lambda: storage.size("job/a.pt"), "reading a.pt", 0, logged.append)

"""A real local S3 endpoint for the tests: a `moto_server` process on 127.0.0.1 with one bucket,
and a TCP proxy in front of it whose stop is a storage outage. moto keeps its objects in memory, so
the server itself is never stopped while a test needs what it holds."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tsla_cli.stack import free_port, service_env, stop_process, wait_for

from ._support import start_process

# Dummy credentials: moto accepts any; botocore refuses to sign a request without some.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
PART_BYTES = 5 * 1024**2  # S3's smallest part


@dataclass
class MotoServer:
    url: str
    bucket: str

    def client(self) -> Any:
        """A boto3 S3 client straight to moto (never through a proxy), to look at what is stored."""
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip

    def objects(self, prefix: str) -> dict[str, dict[str, Any]]:
        """{key: the object's listing entry} under `prefix`."""
        listing = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return {item["Key"]: item for item in listing.get("Contents", [])}

    def etag(self, key: str) -> str:
        """S3's ETag of the object: `"<md5>"` for one PUT, `"<md5 of the parts' md5s>-<parts>"` for
        a multipart upload."""
        etag: str = self.client().head_object(Bucket=self.bucket, Key=key)["ETag"]
        return etag

    def read(self, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body


def answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True


@contextmanager
def moto_server(log: Path, bucket: str = "tsla-test") -> Iterator[MotoServer]:
    """`moto_server -H 127.0.0.1 -p PORT` (moto[server]'s console script) with `bucket` created."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)]
    process = start_process(command, service_env(**AWS_ENV), log)
    try:
        server = MotoServer(f"http://127.0.0.1:{port}", bucket)
        wait_for(lambda: answers(server.url), 60, "moto_server to answer", interval=0.2)
        server.client().create_bucket(Bucket=bucket)
        yield server
    finally:
        stop_process(process, grace=5)


class TcpProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target`. `stop()` is an outage: the listener and every
    open connection close, so requests in flight fail and new connections are refused; `start()`
    listens again on the same port. `received` counts the bytes sent back to clients."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.received = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    @property
    def running(self) -> bool:
        return self._listener is not None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the same port again
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            close(sock)

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except OSError:  # the 0.2 s timeout (a TimeoutError is an OSError), or stop() closed it
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                close(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
                if count:
                    with self._lock:
                        self.received += len(data)
        except OSError:
            pass
        finally:
            close(source)
            close(sink)


def close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@contextmanager
def proxy_to(server: MotoServer) -> Iterator[TcpProxy]:
    proxy = TcpProxy(int(server.url.rsplit(":", 1)[1]))
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()

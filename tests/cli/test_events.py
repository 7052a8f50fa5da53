"""Live events (GET /jobs/{id}/events, server-sent events) against a live embedded stack.

The stream is read with plain httpx streaming and a small SSE parser of our own, so that the
tests see the wire format as any client would (ids, event names, comments, the end of the stream).
`TslaClient.iter_events` is then checked across a connection cut by a TCP proxy in between.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.integration._support import Service, check_metric_rows
from tsla_cli.client import Event, TslaClient

from ._stack import FAST, all_metric_rows, embedded_stack

pytestmark = pytest.mark.integration

LIVE_EPOCHS, LIVE_SWITCH = 6, 3
LIVE_SPEC: dict[str, Any] = {
    "preset": "digits",
    "name": "events-live",
    "epochs": LIVE_EPOCHS,
    "smoothing": {"method": "tsla", "switch_epoch": LIVE_SWITCH},
    **FAST,
}
PROXY_EPOCHS, PROXY_SWITCH = 3, 1
PROXY_SPEC: dict[str, Any] = {
    "preset": "digits",
    "name": "events-proxy",
    "epochs": PROXY_EPOCHS,
    "smoothing": {"method": "tsla", "switch_epoch": PROXY_SWITCH},
    **FAST,
}
# Pings come every 15 s: a read that waits longer than this means the stream is stuck.
READ_TIMEOUT = 40.0
STREAM_DEADLINE = 240.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with embedded_stack(tmp_path_factory.mktemp("events")) as service:
        yield service


@pytest.fixture(scope="module")
def live_job(stack: Service) -> dict[str, Any]:
    return stack.submit(LIVE_SPEC)


@pytest.fixture(scope="module")
def finished_live_job(stack: Service, live_job: dict[str, Any]) -> dict[str, Any]:
    job = stack.wait_job(live_job["id"], timeout=300)
    assert job["state"] == "succeeded", job
    return job


# --- reading a stream -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sse:
    event: str
    id: str | None
    data: Any


@dataclass
class Connection:
    """What one connection delivered, and whether the server closed the stream by itself."""

    events: list[Sse]
    closed: bool

    def kinds(self) -> list[str]:
        return [event.event for event in self.events]

    def metrics(self) -> list[Sse]:
        return [event for event in self.events if event.event == "metric"]


def parse_sse(lines: Iterator[str], deadline: float) -> Iterator[Sse]:
    """Server-sent events from lines (the WHATWG rules this server uses); comments skipped."""
    event, event_id, data = "", None, []
    for line in lines:
        if time.monotonic() > deadline:
            raise TimeoutError("the event stream did not finish in time")
        if line == "":
            if data or event:
                text = "\n".join(data)
                yield Sse(event or "message", event_id, json.loads(text) if text else None)
            event, event_id, data = "", None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


def read_events(
    service: Service,
    job_id: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    stop: Callable[[list[Sse]], bool] | None = None,
) -> Connection:
    """Open the job's event stream; read until `stop(events)` holds (then disconnect) or the
    server closes the stream. Events after `end` are kept, so a test can see there are none."""
    events: list[Sse] = []
    timeout = httpx.Timeout(10.0, read=READ_TIMEOUT)
    with service.http.stream(
        "GET", f"/jobs/{job_id}/events", headers=headers or {}, params=params or {}, timeout=timeout
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for sse in parse_sse(response.iter_lines(), time.monotonic() + STREAM_DEADLINE):
            events.append(sse)
            if stop is not None and sse.event != "end" and stop(events):
                return Connection(events, closed=False)
    return Connection(events, closed=True)


def first_row_of_epoch(epoch: int) -> Callable[[list[Sse]], bool]:
    """Stop as soon as a metric row of `epoch` arrives (mid-way through that epoch's rows)."""
    return lambda events: events[-1].event == "metric" and events[-1].data["epoch"] >= epoch


def check_connection(connection: Connection, job_id: str, ended: bool) -> None:
    kinds = connection.kinds()
    assert kinds and kinds[0] == "state", kinds[:5]
    assert connection.events[0].data["id"] == job_id
    assert set(kinds) <= {"state", "metric", "checkpoint", "end"}, set(kinds)
    for event in connection.metrics():
        assert event.id == str(event.data["seq"]), event  # the id a browser would resume from
    if ended:
        assert kinds.count("end") == 1 and kinds[-1] == "end", kinds[-5:]
        assert connection.closed, "the stream stayed open after `end`"
        assert connection.events[-1].data["state"] == "succeeded", connection.events[-1].data
    else:
        assert "end" not in kinds


def seqs(events: list[Sse]) -> list[int]:
    return [event.data["seq"] for event in events]


# --- the tests ------------------------------------------------------------------------------------


def test_resume_with_last_event_id_and_after_delivers_every_row_once(
    stack: Service, live_job: dict[str, Any]
) -> None:
    job_id = live_job["id"]
    # 1: from the start, live, until the first row of epoch 1: mid-way through that epoch's rows.
    first = read_events(stack, job_id, stop=first_row_of_epoch(1))
    check_connection(first, job_id, ended=False)
    last = first.metrics()[-1].data["seq"]
    # 2: resume with the header browsers send, until the first row of epoch 3.
    second = read_events(stack, job_id, headers={"Last-Event-ID": str(last)}, stop=first_row_of_epoch(3))
    check_connection(second, job_id, ended=False)
    assert second.metrics()[0].data["seq"] > last
    last = second.metrics()[-1].data["seq"]
    # 3: resume with the query cursor, to the end.
    third = read_events(stack, job_id, params={"after": last})
    check_connection(third, job_id, ended=True)

    received = first.metrics() + second.metrics() + third.metrics()
    assert all(a < b for a, b in itertools.pairwise(seqs(received))), "seqs must strictly increase"
    rows = all_metric_rows(stack, job_id)  # the job has ended: this is all of them
    check_metric_rows(rows, LIVE_EPOCHS, LIVE_SWITCH)
    assert seqs(received) == [row["seq"] for row in rows], "each row exactly once, none missing"
    assert [event.data for event in received] == rows
    assert stack.job(job_id)["state"] == "succeeded"


def test_after_the_job_finished_the_stream_replays_everything(
    stack: Service, finished_live_job: dict[str, Any]
) -> None:
    job_id = finished_live_job["id"]
    rows = all_metric_rows(stack, job_id)
    everything = read_events(stack, job_id)
    check_connection(everything, job_id, ended=True)
    assert everything.events[0].data["state"] == "succeeded"
    assert [event.data for event in everything.metrics()] == rows
    listed = stack.http.get(f"/jobs/{job_id}/checkpoints").json()["items"]
    checkpoints = [event.data for event in everything.events if event.event == "checkpoint"]
    assert sorted(c["id"] for c in checkpoints) == sorted(c["id"] for c in listed)

    middle = rows[len(rows) // 2]["seq"]
    later = [row for row in rows if row["seq"] > middle]
    for options in ({"params": {"after": middle}}, {"headers": {"Last-Event-ID": str(middle)}}):
        resumed = read_events(stack, job_id, **options)  # type: ignore[arg-type]
        check_connection(resumed, job_id, ended=True)
        assert [event.data for event in resumed.metrics()] == later, options
    # Both given: the later cursor wins. After the last row: no rows, just state and end.
    both = read_events(stack, job_id, params={"after": 0}, headers={"Last-Event-ID": str(middle)})
    assert [event.data for event in both.metrics()] == later
    tail = read_events(stack, job_id, params={"after": rows[-1]["seq"]})
    check_connection(tail, job_id, ended=True)
    assert tail.metrics() == []


def test_unknown_job_is_404_and_no_token_is_401(stack: Service, live_job: dict[str, Any]) -> None:
    unknown = stack.http.get(f"/jobs/{'0' * 32}/events")
    assert unknown.status_code == 404, unknown.text
    assert "not found" in unknown.json()["detail"]
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer tsla_not_a_token"}):
        refused = stack.http.get(f"/jobs/{live_job['id']}/events", headers=headers)
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"] == "Bearer"
    bad_cursor = stack.http.get(f"/jobs/{live_job['id']}/events", params={"after": -1})
    assert bad_cursor.status_code == 422, bad_cursor.text


# --- a connection cut in the middle of the stream -----------------------------------------------


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of the API. The first connection's answer is cut off
    in the middle of its second `metric` event (both sockets closed); later connections pass."""

    MARKER = b"event: metric"

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []  # the first bytes each client sent: its request head
        self.cut_done = threading.Event()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closing = False
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            upstream.settimeout(None)
            with self.lock:
                self.sockets += [client, upstream]
                index = len(self.requests)
                self.requests.append(b"")
            cut = index == 0
            threading.Thread(target=self._up, args=(client, upstream, index), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, cut), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, index: int) -> None:
        try:
            while chunk := client.recv(65536):
                if len(self.requests[index]) < 4096:
                    self.requests[index] += chunk
                upstream.sendall(chunk)
        except OSError:
            pass
        finally:
            self._close(client, upstream)

    def _down(self, upstream: socket.socket, client: socket.socket, cut: bool) -> None:
        seen = b""
        try:
            while chunk := upstream.recv(65536):
                if cut:
                    before = len(seen)
                    seen += chunk
                    first = seen.find(self.MARKER)
                    second = seen.find(self.MARKER, first + 1) if first >= 0 else -1
                    if second >= 0:
                        client.sendall(chunk[: max(0, second + 5 - before)])
                        self.cut_done.set()
                        return
                client.sendall(chunk)
        except OSError:
            pass
        finally:
            self._close(client, upstream)

    def _close(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.closing = True
        self.listener.close()
        with self.lock:
            self._close(*self.sockets)


def test_iter_events_reconnects_after_a_cut_and_delivers_every_row_once(
    stack: Service, finished_live_job: dict[str, Any]
) -> None:
    port = int(stack.base_url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port)
    received: list[Event] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    job = stack.submit(PROXY_SPEC)

    def consume() -> None:
        try:
            with TslaClient(proxy.url, stack.token) as client:
                for event in client.iter_events(job["id"], retry_for=60):
                    received.append(event)
                    if stop.is_set():
                        return
        except BaseException as error:  # reported by the test thread
            errors.append(error)

    consumer = threading.Thread(target=consume, daemon=True, name="iter-events")
    try:
        consumer.start()
        consumer.join(timeout=STREAM_DEADLINE)
        assert not consumer.is_alive(), f"iter_events did not end; got {[e.kind for e in received]}"
    finally:
        stop.set()
        proxy.close()
        consumer.join(timeout=10)
    assert not errors, errors
    assert proxy.cut_done.is_set(), "the proxy never cut the stream"

    kinds = [event.kind for event in received]
    assert kinds.count("reconnecting") == 1, kinds
    assert kinds[0] == "state" and kinds[-1] == "end", kinds
    assert received[-1].data["state"] == "succeeded"
    # Everything before the cut, then the reconnect, then the new connection's `state` first.
    at = kinds.index("reconnecting")
    assert "metric" in kinds[:at] and kinds[at + 1] == "state", kinds
    resumed_after = received[at].data["after"]
    assert resumed_after == [e.data for e in received[:at] if e.kind == "metric"][-1]["seq"]
    assert len(proxy.requests) == 2, proxy.requests
    assert b"last-event-id" not in proxy.requests[0].lower()
    assert f"last-event-id: {resumed_after}\r\n".encode() in proxy.requests[1].lower()

    rows = all_metric_rows(stack, job["id"])
    check_metric_rows(rows, PROXY_EPOCHS, PROXY_SWITCH)
    delivered = [event.data for event in received if event.kind == "metric"]
    assert [row["seq"] for row in delivered] == [row["seq"] for row in rows], "each row exactly once"
    assert delivered == rows

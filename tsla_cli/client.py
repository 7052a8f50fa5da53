"""A typed Python client of the TSLA service (httpx). The CLI is built on it.

client = TslaClient("http://127.0.0.1:8000")
job = client.submit({"preset": "digits"})
for row in client.iter_metrics(job["id"], follow=True):
    print(row["epoch"], row["name"], row["value"])
client.download(job["id"], "best", Path("model.pt"))  # resumes with Range, checks sha256
exp = client.submit_experiment({"name": "sweep", "base": {"preset": "digits"},
                                "grid": {"smoothing.method": ["baseline", "lsr"], "seed": [0, 1]}})
print(client.experiment_frame(exp["id"]))  # a pandas DataFrame with the `frames` extra
"""

from __future__ import annotations

import builtins
import json
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx_sse
from httpx_sse import connect_sse

from tsla_spec.hashing import sha256_file
from tsla_spec.vocabulary import FINISHED_STATES

UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024  # one PATCH of an upload: small enough to resume cheaply


class ApiError(Exception):
    """The server answered with an error; `status` is the HTTP status, the message its detail."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Event:
    """One server-sent event: `state`, `metric`, `checkpoint`, `end`; or `reconnecting` (local)."""

    kind: str
    data: Any


class ChecksumError(Exception):
    """A downloaded file does not match the sha256 the server reported."""


class TslaClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> TslaClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        raise_for_status(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # --- jobs ---------------------------------------------------------------------------------

    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        job: dict[str, Any] = self._json("POST", "/jobs", json=spec, headers=headers)
        return job

    def get(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self._json("GET", f"/jobs/{job_id}")
        return job

    def list(self, state: str | None = None, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        if cursor:
            params["cursor"] = cursor
        page: dict[str, Any] = self._json("GET", "/jobs", params=params)
        return page

    def cancel(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self._json("POST", f"/jobs/{job_id}/cancel")
        return job

    def wait(self, job_id: str, poll: float = 0.5, timeout: float | None = None) -> dict[str, Any]:
        """Poll until the job is finished; returns the final job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job["state"] in FINISHED_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout}s")
            time.sleep(poll)

    # --- metrics and logs ---------------------------------------------------------------------

    def metrics_page(
        self, job_id: str, after: int | None = None, limit: int = 1000, name: str | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        if name:
            params["name"] = name
        page: dict[str, Any] = self._json("GET", f"/jobs/{job_id}/metrics", params=params)
        return page

    def iter_metrics(
        self, job_id: str, follow: bool = False, poll: float = 0.5, name: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every metric row once, following the cursor; with `follow`, until the job finishes."""
        after: int | None = None
        while True:
            page = self.metrics_page(job_id, after=after, name=name)
            yield from page["items"]
            after = page["next_after"]
            if page["has_more"]:
                continue
            if not follow:
                return
            if self.get(job_id)["state"] in FINISHED_STATES:
                # Rows written just before the end: one more page after the state says finished.
                final = self.metrics_page(job_id, after=after, name=name)
                yield from final["items"]
                if not final["has_more"]:
                    return
                after = final["next_after"]
                continue
            time.sleep(poll)

    def iter_events(self, job_id: str, after: int | None = None, retry_for: float = 300.0) -> Iterator[Event]:
        """The job's server-sent events until `end`; a dropped connection is reopened with
        `Last-Event-ID`, so every metric row arrives exactly once. Gives up after `retry_for`
        seconds without a successful connection."""
        last_seq = after
        delay = 0.5
        failing_since: float | None = None
        while True:
            headers = {"Last-Event-ID": str(last_seq)} if last_seq is not None else {}
            try:
                with connect_sse(
                    self.http, "GET", f"/jobs/{job_id}/events", headers=headers, timeout=None
                ) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        raise_for_status(source.response)
                    failing_since, delay = None, 0.5
                    for sse in source.iter_sse():
                        if sse.event == "message" and not sse.data:
                            continue  # a keep-alive ping, not an event
                        event = Event(sse.event, json.loads(sse.data) if sse.data else None)
                        if sse.event == "metric":
                            last_seq = int(sse.id)
                        yield event
                        if sse.event == "end":
                            return
            except (httpx.TransportError, httpx_sse.SSEError) as error:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > retry_for:
                    raise ConnectionError(f"lost the event stream of job {job_id}: {error}") from error
                yield Event("reconnecting", {"error": str(error), "after": last_seq})
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def logs(self, job_id: str, after: int | None = None) -> dict[str, Any]:
        params = {"after": after} if after is not None else {}
        page: dict[str, Any] = self._json("GET", f"/jobs/{job_id}/logs", params=params)
        return page

    # --- checkpoints --------------------------------------------------------------------------

    def checkpoints(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self._json("GET", f"/jobs/{job_id}/checkpoints")
        return found

    def download(self, job_id: str, ref: str, path: Path) -> str:
        """Download checkpoint `ref` (id, latest, best) to `path`, resuming a partial file with
        Range; verifies the sha256 the server reports and returns it."""
        partial = path.with_name(path.name + ".part")
        have = partial.stat().st_size if partial.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self.http.stream("GET", f"/jobs/{job_id}/checkpoints/{ref}", headers=headers) as response:
            if response.status_code == 416:  # a stale partial file longer than the checkpoint
                partial.unlink()
                return self.download(job_id, ref, path)
            if response.status_code >= 400:
                response.read()
                raise_for_status(response)
            expected = response.headers["X-Checkpoint-Sha256"]
            resumed = response.status_code == 206
            with partial.open("ab" if resumed else "wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
        actual = sha256_file(partial)
        if actual != expected:
            partial.unlink()
            raise ChecksumError(f"downloaded {ref} of job {job_id}: sha256 {actual} != {expected}")
        partial.replace(path)
        return actual

    # --- experiments ---------------------------------------------------------------------------

    def submit_experiment(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """POST /experiments: a base spec and a grid of dotted keys; returns the experiment."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        found: dict[str, Any] = self._json("POST", "/experiments", json=body, headers=headers)
        return found

    def experiment(
        self, experiment_id: str, target: float | None = None, early_epochs: int | None = None
    ) -> dict[str, Any]:
        """The experiment with its results `table` (`target`: the top-1 for epochs_to_target;
        `early_epochs`: how many first epochs early_grad_var averages)."""
        params: dict[str, Any] = {}
        if target is not None:
            params["target"] = target
        if early_epochs is not None:
            params["early_epochs"] = early_epochs
        found: dict[str, Any] = self._json("GET", f"/experiments/{experiment_id}", params=params)
        return found

    def experiments(self, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        page: dict[str, Any] = self._json("GET", "/experiments", params=params)
        return page

    def add_cells(self, experiment_id: str, grid: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """Grow a running experiment; returns `added` and `existing` (reused, never re-run) jobs."""
        found: dict[str, Any] = self._json("POST", f"/experiments/{experiment_id}/cells", json={"grid": grid})
        return found

    def cancel_experiment(self, experiment_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self._json("POST", f"/experiments/{experiment_id}/cancel")
        return found

    def experiment_csv(self, experiment_id: str) -> str:
        return self._request("GET", f"/experiments/{experiment_id}/table.csv").text

    def experiment_curves(
        self, experiment_id: str, name: str = "test/top1", points: int = 200
    ) -> dict[str, Any]:
        """Per group, the metric `name` by epoch: mean and std over the group's seeds."""
        params = {"name": name, "points": points}
        found: dict[str, Any] = self._json("GET", f"/experiments/{experiment_id}/curves", params=params)
        return found

    def metrics_frame(self, job_id: str) -> Any:
        """Every metric row of a job: a pandas DataFrame with the `frames` extra, else a list of dicts."""
        return as_frame(list(self.iter_metrics(job_id)))

    def experiment_frame(self, experiment_id: str) -> Any:
        """The results table, one row per group (group keys, then `final_mean`, `final_std`, ...):
        a pandas DataFrame with the `frames` extra, else a list of dicts."""
        table = self.experiment(experiment_id).get("table") or []
        return as_frame([flat_table_row(row) for row in table])

    # --- data sets ----------------------------------------------------------------------------

    def datasets(self) -> builtins.list[dict[str, Any]]:
        """The built-in data sets and this token's uploads."""
        found: builtins.list[dict[str, Any]] = self._json("GET", "/datasets")
        return found

    def dataset(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self._json("GET", f"/datasets/{name}")
        return found

    def delete_dataset(self, name: str) -> None:
        self._request("DELETE", f"/datasets/{name}")

    def upload_dataset(
        self,
        path: Path,
        name: str,
        image_size: int | None = None,
        source_format: str | None = None,
        chunk_bytes: int = UPLOAD_CHUNK_BYTES,
        progress: Callable[[int, int], None] | None = None,
        retry_for: float = 300.0,
    ) -> dict[str, Any]:
        """Upload an archive or `.npz` (or a folder, packed into a tar first) as data set `name`;
        returns the data set. A dropped connection is resumed from the server's offset, retried
        for up to `retry_for` seconds; the same bytes under the same name again are a no-op.
        `progress(sent, total)` is called after every chunk."""
        with packed(path) as archive:
            size, sha256 = archive.stat().st_size, sha256_file(archive)
            body: dict[str, Any] = {"name": name, "size": size, "sha256": sha256}
            if image_size is not None:
                body["image_size"] = image_size
            if source_format is not None:
                body["format"] = source_format
            started = self._json("POST", "/uploads", json=body)
            if started["dataset"] is not None:
                if progress is not None:
                    progress(size, size)
                return dict(started["dataset"])
            return self._send_upload(archive, started["upload"], chunk_bytes, progress, retry_for)

    def _send_upload(
        self,
        archive: Path,
        upload: dict[str, Any],
        chunk_bytes: int,
        progress: Callable[[int, int], None] | None,
        retry_for: float,
    ) -> dict[str, Any]:
        """Send the chunks from the upload's offset on; after a transport error or a 409, ask the
        server for the offset and go on from there."""
        offset, size, path = int(upload["offset"]), int(upload["size"]), f"/uploads/{upload['id']}"
        failing_since: float | None = None
        with archive.open("rb") as handle:
            while True:
                if progress is not None:
                    progress(offset, size)
                handle.seek(offset)
                chunk = handle.read(chunk_bytes)
                headers = {"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
                try:
                    answer = self._json("PATCH", path, content=chunk, headers=headers, timeout=None)
                except (httpx.TransportError, ApiError) as error:
                    # A 409 says the server's offset is not ours (a dropped request of ours still
                    # finishing, or bytes we did not know arrived): ask it, as after a drop.
                    if isinstance(error, ApiError) and error.status != 409:
                        raise
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if now - failing_since > retry_for:
                        raise
                    time.sleep(min(5.0, 0.5 + (now - failing_since) / 4))
                    offset = self._upload_offset(path, offset)
                    continue
                failing_since = None
                if answer["dataset"] is not None:
                    if progress is not None:
                        progress(size, size)
                    return dict(answer["dataset"])
                offset = int(answer["upload"]["offset"])

    def _upload_offset(self, path: str, fallback: int) -> int:
        try:
            return int(self._json("GET", path)["upload"]["offset"])
        except httpx.TransportError:
            return fallback
        except ApiError as error:
            if error.status == 404:  # the upload ended (another request of ours finished it)
                raise ApiError(
                    409, "409: the upload ended meanwhile; upload again to get its data set"
                ) from None
            raise

    def health(self) -> bool:
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_until_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.health():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.http.base_url} not healthy after {timeout}s")
            time.sleep(0.2)


def flat_table_row(row: dict[str, Any]) -> dict[str, Any]:
    """A results-table row as one level: group keys as they are, `{key}_{stat}` for summaries."""
    flat: dict[str, Any] = dict(row.get("group") or {})
    for key, value in row.items():
        if key == "group":
            continue
        if isinstance(value, dict):
            flat.update({f"{key}_{stat}": item for stat, item in value.items()})
        elif value is None and key in SUMMARY_KEYS:
            flat.update({f"{key}_{stat}": None for stat in ("mean", "std", "n")})
        else:
            flat[key] = value
    return flat


# Table columns that are {mean, std, n} summaries (or null when no job of the group finished).
SUMMARY_KEYS = ("final", "best", "top5", "selected_test", "epochs_to_target", "early_grad_var")


def as_frame(rows: list[dict[str, Any]]) -> Any:
    """A pandas DataFrame of `rows` when pandas is installed (`pip install 'tsla[frames]'`), else the list."""
    try:
        import pandas
    except ImportError:
        return rows
    return pandas.DataFrame(rows)


@contextmanager
def packed(path: Path) -> Iterator[Path]:
    """`path` itself, or a folder packed into a temporary uncompressed tar (its `train/` and
    `test/` at the top; names sorted, so the same folder packs to the same bytes)."""
    if not path.is_dir():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="tsla-upload-") as scratch:
        archive = Path(scratch) / f"{path.name}.tar"
        with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
            for member in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
                info = tar.gettarinfo(str(member), arcname=member.relative_to(path).as_posix())
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with member.open("rb") as source:
                    tar.addfile(info, source)
        yield archive


def raise_for_status(response: httpx.Response) -> None:
    """ApiError with the server's one-line `detail` for any 4xx/5xx answer."""
    if response.status_code < 400:
        return
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    raise ApiError(response.status_code, f"{response.status_code}: {detail}")

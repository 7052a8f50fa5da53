"""Hostile input on every endpoint and header, on SQLite and on PostgreSQL.

Every case must be a 4xx (never a 5xx) with a JSON body whose `detail` is one non-empty printable
line, and must change nothing: no job, token, metric, log line, checkpoint or file under the home.
Cases come from tables of input classes (bad integers, bad characters, bad bodies, ...) crossed
with the endpoints that read them. `$JOB` (a finished job of alice's), `$QUEUED` (an unfinished
one), `$FOREIGN` (bob's finished job) and `$CHECKPOINT` (the id of $JOB's checkpoint) are filled
in per database.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from _pytest.mark.structures import ParameterSet
from sqlalchemy import func, select

from api.limits import MAX_JSON_DEPTH, check_json, nested_deeper
from tests.api.conftest import Api, add_checkpoint
from tsla_service.db import session_scope
from tsla_service.models import ApiToken, Checkpoint, Job, LogLine, Metric
from tsla_service.results import append_log, record_metrics
from tsla_service.tokens import revoke_token
from tsla_spec.records import MetricRow

SPEC: dict[str, Any] = {"preset": "digits", "epochs": 2, "smoothing": {"switch_epoch": 1}}
MAX_BODY = 20000  # the backend_api fixture's max_body_bytes
FILE = bytes(range(256)) * 4


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    status: int | tuple[int, ...]
    body: bytes | None = None
    headers: dict[str, str | bytes] = field(default_factory=dict)
    auth: str = "alice"  # alice, bob, revoked, or none
    contains: str = ""  # a part of the detail, where the reason matters
    allow: str = ""  # a 405's Allow header


@dataclass
class World:
    api: Api
    tokens: dict[str, str]
    ids: dict[str, str]

    def fill(self, text: str) -> str:
        for name, value in self.ids.items():
            text = text.replace(f"${name}", value)
        return text


@pytest.fixture(scope="module")
def world(backend_api: Api) -> World:
    api = backend_api
    tokens = {name: api.new_token(name) for name in ("alice", "bob", "carol")}
    with session_scope(api.database_url) as session:
        revoke_token(session, "carol")

    def submit(token: str, **headers: str) -> str:
        response = api.client.post("/jobs", json=SPEC, headers={**api.as_token(tokens[token]), **headers})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    ids = {"JOB": submit("alice", **{"Idempotency-Key": "k-1"}), "QUEUED": submit("alice")}
    ids["FOREIGN"] = submit("bob")
    with session_scope(api.database_url) as session:
        for job_id in (ids["JOB"], ids["FOREIGN"]):
            job = session.get(Job, job_id)
            assert job is not None
            job.state = "succeeded"
        record_metrics(session, ids["JOB"], 1, [MetricRow(0, "test", "top1", 0.5, "smooth", 1)])
        append_log(session, ids["JOB"], 1, "info", "trained")
    ids["CHECKPOINT"] = str(add_checkpoint(api, ids["JOB"], FILE))
    return World(api, tokens, ids)


def snapshot(api: Api) -> tuple[Any, ...]:
    """Everything a request could change: rows of every table it writes, and the files."""
    with session_scope(api.database_url) as session:
        jobs = sorted(
            session.execute(select(Job.id, Job.state, Job.name, Job.cancel_requested, Job.updated_at))
        )
        tokens = sorted(session.execute(select(ApiToken.id, ApiToken.revoked_at, ApiToken.last_submit_at)))
        counts = [session.scalar(select(func.count()).select_from(t)) for t in (Metric, LogLine, Checkpoint)]
    files = sorted(
        (str(p.relative_to(api.home)), p.stat().st_size)
        for p in api.home.rglob("*")
        if p.is_file() and not p.name.startswith("tsla.db")
    )
    return len(jobs), jobs, len(tokens), tokens, counts, files


def send(world: World, case: Case) -> Any:
    headers: dict[str, str | bytes] = {}
    if case.auth != "none":
        token = world.tokens["carol" if case.auth == "revoked" else case.auth]
        headers["Authorization"] = f"Bearer {token}"
    if case.body is not None:
        headers["Content-Type"] = "application/json"
    headers.update(case.headers)
    body = world.fill(case.body.decode("latin-1")).encode("latin-1") if case.body is not None else None
    return world.api.client.request(case.method, world.fill(case.path), content=body, headers=headers)


def assert_refused(response: Any, case: Case) -> None:
    expected = case.status if isinstance(case.status, tuple) else (case.status,)
    assert response.status_code in expected, (response.status_code, response.text[:300])
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith("application/json"), response.headers
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail.strip() and detail.isprintable(), repr(detail)
    assert case.contains in detail, detail
    if response.status_code == 405:
        assert response.headers["allow"] == case.allow


# --- the input classes ------------------------------------------------------------------------

# Text that is not a whole number 0 .. 2**63-1 in ASCII digits, as it appears in a URL.
BAD_INTEGERS = [
    ("negative", "-1", 422), ("fraction", "1.5", 422), ("word", "abc", 422), ("empty", "", 422),
    ("exponent", "1e3", 422), ("hex", "0x10", 422), ("plus", "%2B1", 422), ("space", "%201", 422),
    ("underscore", "1_0", 422), ("superscript", "%C2%B2", 422), ("arabic-indic", "%D9%A3", 422),
    ("fullwidth", "%EF%BC%91", 422), ("int64-plus-one", "9223372036854775808", 422),
    ("twenty-digits", "1" + "0" * 20, 422), ("five-thousand-digits", "9" * 5000, 422),
    ("nul", "%00", 400), ("digit-nul", "1%00", 400), ("newline", "1%0A", 400),
]  # fmt: skip

# Characters no URL of this API may hold; `%00`-style so they reach the server as they are.
BAD_PATH_CHARS = [
    ("nul", "%00"), ("newline", "a%0Ab"), ("escape", "%1B%5B31m"), ("del", "%7F"), ("c1", "%C2%85"),
    ("bidi-override", "%E2%80%AE"), ("zero-width-space", "%E2%80%8B"), ("line-separator", "%E2%80%A8"),
]  # fmt: skip

JOB_ENDPOINTS = [
    ("GET", "/jobs/{id}"), ("GET", "/jobs/{id}/metrics"), ("GET", "/jobs/{id}/logs"),
    ("GET", "/jobs/{id}/checkpoints"), ("GET", "/jobs/{id}/checkpoints/latest"),
    ("POST", "/jobs/{id}/cancel"), ("GET", "/jobs/{id}/events"),
]  # fmt: skip

BAD_CHECKPOINT_REFS = [
    ("superscript", "%C2%B2"), ("arabic-indic", "%D9%A3"), ("fullwidth", "%EF%BC%91"), ("negative", "-1"),
    ("fraction", "1.0"), ("plus", "%2B1"), ("hex", "0x1"), ("exponent", "1e3"), ("upper", "BEST"),
    ("padded", "best%20"), ("int64-plus-one", "9223372036854775808"), ("25-digits", "9" * 25),
    ("33-chars", "a" * 33), ("name", "epoch-0001"),
]  # fmt: skip


def spec(**fields: Any) -> bytes:
    return json.dumps({"preset": "digits", **fields}).encode()


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


SYNTHETIC_2TB = {
    "name": "synthetic",
    "synthetic": {"num_train": 10**6, "num_test": 10**6, "channels": 4, "image_size": 512},
}
BIG_ACTIVATIONS = {"name": "synthetic", "synthetic": {"image_size": 64}}

# Bodies POST /jobs must refuse: (label, body, status, part of the detail).
BAD_BODIES: list[tuple[str, bytes, int, str]] = [
    # Not JSON at all: 400.
    ("truncated", b'{"preset": "digits"', 400, "not valid JSON"),
    ("missing-value", b'{"preset": }', 400, "not valid JSON"),
    ("trailing-comma", b'{"preset": "digits",}', 400, "not valid JSON"),
    ("single-quotes", b"{'preset': 'digits'}", 400, "not valid JSON"),
    ("trailing-garbage", b'{"preset": "digits"} x', 400, "not valid JSON"),
    ("raw-control-char", b'{"preset": "digits", "name": "a\x01b"}', 400, "not valid JSON"),
    ("raw-nul", b'{"preset": "digits", "name": "a\x00b"}', 400, ""),
    # Not UTF-8: 400.
    ("utf-16-le", json.dumps(SPEC).encode("utf-16-le"), 400, "UTF-8"),
    ("utf-16-be", json.dumps(SPEC).encode("utf-16-be"), 400, "UTF-8"),
    ("utf-16-bom", json.dumps(SPEC).encode("utf-16"), 400, "byte order mark"),
    ("utf-32", json.dumps(SPEC).encode("utf-32"), 400, "UTF-8"),
    ("utf-8-bom", json.dumps(SPEC).encode("utf-8-sig"), 400, "byte order mark"),
    ("latin-1", '{"preset": "digits", "name": "café"}'.encode("latin-1"), 400, "not UTF-8"),
    ("invalid-bytes", b'{"preset": "\xff\xfe\xfd"}', 400, "not UTF-8"),
    ("overlong-slash", b'{"preset": "digits", "name": "\xc0\xaf"}', 400, "not UTF-8"),
    ("surrogate-bytes", b'{"preset": "digits", "name": "\xed\xa0\x80"}', 400, "not UTF-8"),
    # JSON, but not an object of the right shape: 422.
    ("array", b"[]", 422, ""),
    ("number", b"1", 422, ""),
    ("string", b'"digits"', 422, ""),
    ("null", b"null", 422, ""),
    ("true", b"true", 422, ""),
    # Too deep: 422 before any recursive parser sees it.
    ("deep-33-objects", spec(data=nested(MAX_JSON_DEPTH)), 422, "nested deeper than 32"),
    ("deep-900-arrays", b"[" * 900 + b"]" * 900, 422, "nested deeper than 32"),
    ("deep-900-objects", json.dumps(nested(900)).encode(), 422, "nested deeper than 32"),
    ("deep-unbalanced", b"[" * 9000, 422, "nested deeper than 32"),
    (
        "deep-in-list",
        spec(schedule={"milestones": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}),
        422,
        "deeper",
    ),
    # Duplicate keys: 422 naming the key (the last would silently win).
    ("duplicate-top", b'{"preset": "digits", "preset": "cifar100-resnet18"}', 422, '"preset"'),
    ("duplicate-name", b'{"preset": "digits", "name": "a", "name": "b"}', 422, '"name"'),
    ("duplicate-nested", b'{"preset": "digits", "optim": {"lr": 0.1, "lr": 5}}', 422, '"lr"'),
    ("duplicate-escaped", b'{"preset": "digits", "name": "a", "n\\u0061me": "b"}', 422, '"name"'),
    # Numbers JSON cannot carry portably: 422.
    ("nan", b'{"preset": "digits", "optim": {"lr": NaN}}', 422, "NaN"),
    ("infinity", b'{"preset": "digits", "smoothing": {"theta": Infinity}}', 422, "Infinity"),
    ("minus-infinity", b'{"preset": "digits", "seed": -Infinity}', 422, "-Infinity"),
    ("float-overflow", b'{"preset": "digits", "optim": {"lr": 1e999}}', 422, "too large"),
    ("int-overflow", b'{"preset": "digits", "seed": 100000000000000000000000000000}', 422, "2**63-1"),
    ("int-5000-digits", b'{"preset": "digits", "epochs": ' + b"9" * 5000 + b"}", 422, "2**63-1"),
    ("float-underflow-lr", b'{"preset": "digits", "optim": {"lr": 1e-400}}', 422, "optim.lr"),
    # Control characters in any string or key: 422 naming where.
    ("name-nul", spec(name="a\u0000b"), 422, "name"),
    ("name-newline", spec(name="line\nbreak"), 422, "name"),
    ("name-cr", spec(name="a\rb"), 422, "name"),
    ("name-tab", spec(name="a\tb"), 422, "name"),
    ("name-escape", spec(name="\u001b[31mred"), 422, "name"),
    ("name-del", spec(name="a\u007fb"), 422, "name"),
    ("name-c1-nel", spec(name="a\u0085b"), 422, "name"),
    ("name-c1-csi", spec(name="\u009b31m"), 422, "name"),
    ("preset-nul", json.dumps({"preset": "\u0000digits"}).encode(), 422, "preset"),
    (
        "teacher-job-nul",
        spec(smoothing={"method": "lsr-pre", "teacher": {"job": "\u0000"}}),
        422,
        "smoothing.teacher.job",
    ),
    ("dataset-nul", spec(data={"name": "digits\u0000"}), 422, "data.name"),
    ("key-nul", spec(data={"\u0000": 1}), 422, "data."),
    ("list-item-nul", spec(schedule={"milestones": ["\u0000"]}), 422, "schedule.milestones[0]"),
    # Names that are not plain printable text: 422.
    ("name-bidi", spec(name="abc\u202egnp.exe"), 422, "name"),
    ("name-zero-width", spec(name="a\u200bb"), 422, "name"),
    ("name-line-separator", spec(name="a\u2028b"), 422, "name"),
    ("name-bom-char", spec(name="\ufeffname"), 422, "name"),
    ("name-private-use", spec(name="\ue000"), 422, "name"),
    ("name-no-break-space", spec(name="a\u00a0b"), 422, "name"),
    ("name-empty", spec(name=""), 422, "name"),
    ("name-leading-space", spec(name=" lead"), 422, "whitespace"),
    ("name-trailing-space", spec(name="trail "), 422, "whitespace"),
    ("name-201-chars", spec(name="a" * 201), 422, "name"),
    ("name-number", spec(name=5), 422, "name"),
    ("name-bool", spec(name=True), 422, "name"),
    ("name-list", spec(name=["a"]), 422, "name"),
    ("name-object", spec(name={"a": 1}), 422, "name"),
    # Wrong types at the top level (strict: no coercion).
    ("attempts-zero", spec(max_attempts=0), 422, "max_attempts"),
    ("attempts-21", spec(max_attempts=21), 422, "max_attempts"),
    ("attempts-bool", spec(max_attempts=True), 422, "max_attempts"),
    ("attempts-string", spec(max_attempts="3"), 422, "max_attempts"),
    ("attempts-float", spec(max_attempts=2.0), 422, "max_attempts"),
    ("epochs-string", spec(epochs="10"), 422, "epochs"),
    ("epochs-bool", spec(epochs=True), 422, "epochs"),
    ("epochs-float", spec(epochs=1.5), 422, "epochs"),
    ("epochs-zero", spec(epochs=0), 422, "epochs"),
    ("epochs-10001", spec(epochs=10001), 422, "epochs"),
    ("epochs-list", spec(epochs=[]), 422, "epochs"),
    ("batch-zero", spec(batch_size=0), 422, "batch_size"),
    ("batch-65537", spec(batch_size=65537), 422, "batch_size"),
    ("seed-negative", spec(seed=-1), 422, "seed"),
    ("seed-2-31", spec(seed=2**31), 422, "seed"),
    ("preset-number", b'{"preset": 5}', 422, "preset"),
    ("preset-unknown", b'{"preset": "nope"}', 422, "preset"),
    ("preset-empty", b'{"preset": ""}', 422, "preset"),
    ("preset-zero-width", json.dumps({"preset": "digits\u200b"}).encode(), 422, "preset"),
    ("data-list", spec(data=[]), 422, "data"),
    ("data-string", spec(data="digits"), 422, "data"),
    ("device-tpu", spec(device="tpu"), 422, "device"),
    ("device-arabic-digit", spec(device="cuda:\u0663"), 422, "device"),
    ("device-999", spec(device="cuda:999"), 422, "device"),
    ("device-upper", spec(device="CPU"), 422, "device"),
    ("precision-fp16", spec(precision="fp16"), 422, "precision"),
    ("channels-last-string", spec(channels_last="true"), 422, "channels_last"),
    ("channels-last-int", spec(channels_last=1), 422, "channels_last"),
    ("on-nonfinite-other", spec(on_nonfinite="ignore"), 422, "on_nonfinite"),
    # Nested values are as strict as the top level.
    ("lr-string", spec(optim={"lr": "0.05"}), 422, "optim.lr"),
    ("momentum-string", spec(optim={"momentum": "0.9"}), 422, "optim.momentum"),
    ("nesterov-string", spec(optim={"nesterov": "false"}), 422, "optim.nesterov"),
    ("nesterov-int", spec(optim={"nesterov": 0}), 422, "optim.nesterov"),
    ("augment-yes", spec(data={"augment": "yes"}), 422, "data.augment"),
    ("augment-int", spec(data={"augment": 1}), 422, "data.augment"),
    ("workers-string", spec(data={"num_workers": "2"}), 422, "data.num_workers"),
    ("workers-float", spec(data={"num_workers": 2.0}), 422, "data.num_workers"),
    ("switch-string", spec(smoothing={"switch_epoch": "1"}), 422, "smoothing.switch_epoch"),
    ("switch-float", spec(smoothing={"switch_epoch": 1.0}), 422, "smoothing.switch_epoch"),
    ("theta-string", spec(smoothing={"theta": "0.1"}), 422, "smoothing.theta"),
    ("temperature-string", spec(smoothing={"temperature": "1"}), 422, "smoothing.temperature"),
    ("width-string", spec(model={"width": "64"}), 422, "model.width"),
    ("width-float", spec(model={"width": 64.0}), 422, "model.width"),
    ("milestones-string", spec(schedule={"milestones": "1,2"}), 422, "schedule.milestones"),
    ("milestone-string", spec(schedule={"milestones": ["1"]}), 422, "schedule.milestones"),
    ("milestone-float", spec(schedule={"milestones": [1.0]}), 422, "schedule.milestones"),
    ("gamma-string", spec(schedule={"gamma": "0.1"}), 422, "schedule.gamma"),
    ("every-string", spec(checkpoint={"every": "1"}), 422, "checkpoint.every"),
    ("probe-string", spec(grad_variance={"enabled": "true"}), 422, "grad_variance.enabled"),
    (
        "probe-steps-string",
        spec(grad_variance={"probes_per_epoch": "4"}),
        422,
        "grad_variance.probes_per_epoch",
    ),
    (
        "synthetic-string",
        spec(data={"name": "synthetic", "synthetic": {"num_train": "10"}}),
        422,
        "num_train",
    ),
    ("teacher-job-number", spec(smoothing={"method": "lsr-pre", "teacher": {"job": 5}}), 422, "teacher.job"),
    # Bounds.
    ("milestones-65", spec(schedule={"milestones": list(range(1, 66))}), 422, "schedule.milestones"),
    (
        "milestones-9001",
        b'{"preset": "digits", "schedule": {"milestones": [' + b"1," * 9000 + b"1]}}",
        422,
        "schedule.milestones",
    ),
    ("milestone-10001", spec(schedule={"milestones": [10001]}), 422, "schedule.milestones"),
    ("milestone-zero", spec(schedule={"milestones": [0]}), 422, "schedule.milestones"),
    ("milestones-decrease", spec(schedule={"milestones": [5, 3]}), 422, "increasing"),
    ("switch-zero", spec(smoothing={"switch_epoch": 0}), 422, "smoothing.switch_epoch"),
    ("switch-huge", spec(smoothing={"method": "lsr", "switch_epoch": 10**15}), 422, "smoothing.switch_epoch"),
    ("theta-negative", spec(smoothing={"theta": -0.1}), 422, "smoothing.theta"),
    ("theta-above-one", spec(smoothing={"theta": 1.1}), 422, "smoothing.theta"),
    ("temperature-zero", spec(smoothing={"temperature": 0}), 422, "smoothing.temperature"),
    ("lr-zero", spec(optim={"lr": 0}), 422, "optim.lr"),
    ("lr-50", spec(optim={"lr": 50}), 422, "optim.lr"),
    ("width-3", spec(model={"width": 3}), 422, "model.width"),
    ("width-513", spec(model={"width": 513}), 422, "model.width"),
    ("workers-999", spec(data={"num_workers": 999}), 422, "data.num_workers"),
    ("synthetic-zero", spec(data={"name": "synthetic", "synthetic": {"num_train": 0}}), 422, "num_train"),
    (
        "synthetic-image-513",
        spec(data={"name": "synthetic", "synthetic": {"image_size": 513}}),
        422,
        "image_size",
    ),
    ("warmup-101", spec(schedule={"warmup_epochs": 101}), 422, "schedule.warmup_epochs"),
    ("keep-last-zero", spec(checkpoint={"keep_last": 0}), 422, "checkpoint.keep_last"),
    # Each field is in bounds, the job is not: the resource estimate refuses it.
    ("data-2tb", spec(data=SYNTHETIC_2TB), 422, "TSLA_MAX_DATA_BYTES"),
    ("resnet50-width-512", spec(model={"arch": "resnet50", "width": 512}), 422, "TSLA_MAX_PARAMETERS"),
    ("resnet34-width-256", spec(model={"arch": "resnet34", "width": 256}), 422, "TSLA_MAX_PARAMETERS"),
    (
        "activations",
        spec(data=BIG_ACTIVATIONS, model={"width": 64}, batch_size=8192),
        422,
        "TSLA_MAX_ACTIVATION_BYTES",
    ),
    # Unknown fields and names that are not data sets.
    ("unknown-top", spec(colour="red"), 422, "colour"),
    ("unknown-nested", spec(optim={"lrate": 0.1}), 422, "optim.lrate"),
    ("dataset-path", spec(data={"name": "../../etc"}), 422, "data.name"),
    ("data-path-field", spec(data={"path": "/etc/passwd"}), 422, "data.path"),
    ("dataset-not-installed", spec(data={"name": "cifar100"}), 422, "cifar100"),
    # Teachers: only a succeeded job of the caller's, on the same data set.
    (
        "teacher-foreign",
        spec(smoothing={"method": "lsr-pre", "teacher": {"job": "$FOREIGN"}}),
        422,
        "does not exist",
    ),
    (
        "teacher-unfinished",
        spec(smoothing={"method": "lsr-pre", "teacher": {"job": "$QUEUED"}}),
        422,
        "queued",
    ),
    (
        "teacher-missing",
        spec(smoothing={"method": "lsr-pre", "teacher": {"job": "nope"}}),
        422,
        "does not exist",
    ),
    (
        "teacher-path",
        spec(smoothing={"method": "lsr-pre", "teacher": {"path": "/etc/passwd"}}),
        422,
        "teacher.path",
    ),
    (
        "teacher-both",
        spec(smoothing={"method": "lsr-pre", "teacher": {"job": "$JOB", "path": "x"}}),
        422,
        "exactly one",
    ),
    (
        "teacher-for-baseline",
        spec(smoothing={"method": "baseline", "teacher": {"job": "$JOB"}}),
        422,
        "teacher",
    ),
    (
        "teacher-other-data",
        spec(data={"name": "synthetic"}, smoothing={"method": "lsr-pre", "teacher": {"job": "$JOB"}}),
        422,
        "trained on digits",
    ),
    (
        "teacher-65-chars",
        spec(smoothing={"method": "lsr-pre", "teacher": {"job": "a" * 65}}),
        422,
        "teacher.job",
    ),
    (
        "teacher-bidi",
        spec(smoothing={"method": "lsr-pre", "teacher": {"job": "a\u202eb"}}),
        422,
        "teacher.job",
    ),
    (
        "teacher-switch-after-end",
        spec(smoothing={"method": "tsla-pre", "switch_epoch": 20, "teacher": {"job": "$JOB"}}),
        422,
        "smaller than epochs",
    ),
]

IDEMPOTENCY_KEYS: list[tuple[str, str | bytes, int]] = [
    ("empty", "", 422), ("201-chars", "k" * 201, 422), ("utf-8", "é".encode(), 422),
    ("latin-1", b"\xff", 422), ("tab", "a\tb", 422), ("control", "a\x01b", 400),
    ("del", "a\x7fb", 400), ("nul", "a\x00b", 400), ("newline", "a\nb", 400),
]  # fmt: skip

BAD_AUTH: list[tuple[str, str | bytes]] = [
    ("scheme-only", "Bearer"), ("wrong-scheme", "Basic YWxpY2U6c2VjcmV0"),
    ("wrong-token", "Bearer tsla_nope"), ("long-token", "Bearer " + "x" * 10000),
    ("latin-1-token", b"Bearer \xff\xfe"),
]  # fmt: skip

# (method, path, the Allow the 405 must carry)
WRONG_METHODS = [
    ("DELETE", "/jobs", "GET, POST"), ("PUT", "/jobs", "GET, POST"), ("PATCH", "/jobs", "GET, POST"),
    ("OPTIONS", "/jobs", "GET, POST"), ("FOO", "/jobs", "GET, POST"), ("PUT", "/jobs/$JOB", "GET"),
    ("DELETE", "/jobs/$JOB", "GET"), ("POST", "/jobs/$JOB", "GET"), ("GET", "/jobs/$JOB/cancel", "POST"),
    ("PUT", "/jobs/$JOB/cancel", "POST"), ("POST", "/jobs/$JOB/metrics", "GET"),
    ("DELETE", "/jobs/$JOB/logs", "GET"), ("POST", "/jobs/$JOB/checkpoints", "GET"),
    ("DELETE", "/jobs/$JOB/checkpoints/best", "GET"), ("POST", "/jobs/$JOB/events", "GET"),
    ("POST", "/presets", "GET"), ("DELETE", "/datasets", "GET"), ("POST", "/healthz", "GET"),
    ("POST", "/metrics", "GET"), ("POST", "/", "GET"), ("POST", "/docs", "GET"),
    ("POST", "/openapi.json", "GET, HEAD"), ("POST", "/static/app.js", "GET, HEAD"),
    ("DELETE", "/static/app.js", "GET, HEAD"), ("PUT", "/static/no-such-file.js", "GET, HEAD"),
]  # fmt: skip


def cases() -> Iterator[ParameterSet]:
    """Every (class of input) x (endpoint that reads it), each a distinct case."""
    for label, value, status in BAD_INTEGERS:
        for resource in ("metrics", "logs"):
            yield case(f"after-{resource}-{label}", "GET", f"/jobs/$JOB/{resource}?after={value}", status)
            yield case(f"limit-{resource}-{label}", "GET", f"/jobs/$JOB/{resource}?limit={value}", status)
        yield case(f"limit-jobs-{label}", "GET", f"/jobs?limit={value}", status)
    for resource, limit in (("metrics", None), ("logs", 5001), ("jobs", 501)):
        path = f"/jobs/$JOB/{resource}" if resource != "jobs" else "/jobs"
        yield case(f"limit-{resource}-zero", "GET", f"{path}?limit=0", 422)
        if limit is not None:
            yield case(f"limit-{resource}-above-max", "GET", f"{path}?limit={limit}", 422)
        yield case(f"repeated-{resource}", "GET", f"{path}?limit=1&limit=2", 422, contains="more than once")
    for label, value in BAD_PATH_CHARS:
        for method, template in JOB_ENDPOINTS:
            yield case(f"path-{label}-{method}-{template}", method, template.format(id=value), 400)
        yield case(f"metric-name-{label}", "GET", f"/jobs/$JOB/metrics?name={value}", 400)
        yield case(f"cursor-{label}", "GET", f"/jobs?cursor={value}", 400)
        yield case(f"query-key-{label}", "GET", f"/jobs?{value}=1", 400)
    for method, template in JOB_ENDPOINTS:
        yield case(f"foreign-{method}-{template}", method, template.format(id="$FOREIGN"), 404)
        yield case(f"unknown-{method}-{template}", method, template.format(id="no-such-job"), 404)
        yield case(f"long-id-{method}-{template}", method, template.format(id="a" * 65), 422)
        yield case(f"no-token-{method}-{template}", method, template.format(id="$JOB"), 401, auth="none")
        yield case(f"revoked-{method}-{template}", method, template.format(id="$JOB"), 401, auth="revoked")
        yield case(f"unknown-query-{method}-{template}", method, template.format(id="$JOB") + "?x=1", 422)
    yield from other_query_cases()
    yield from checkpoint_cases()
    yield from body_cases()
    yield from header_cases()
    for method, path, allow in WRONG_METHODS:
        yield case(f"method-{method}-{path}", method, path, 405, allow=allow)
    for path in (
        "/nope",
        "/jobs/$JOB/nope",
        "/static/nope.js",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/jobs/a%2Fb",
    ):
        yield case(f"not-found-{path}", "GET", path, 404)


def case(case_id: str, method: str, path: str, status: int | tuple[int, ...], **fields: Any) -> ParameterSet:
    return pytest.param(Case(method, path, status, **fields), id=case_id[:120])


def other_query_cases() -> Iterator[ParameterSet]:
    yield case("metric-name-65", "GET", "/jobs/$JOB/metrics?name=" + "a" * 65, 422)
    yield case("cursor-unknown", "GET", "/jobs?cursor=nope", 422, contains="cursor")
    yield case("cursor-foreign", "GET", "/jobs?cursor=$FOREIGN", 422, contains="cursor")
    yield case("cursor-65", "GET", "/jobs?cursor=" + "a" * 65, 422)
    for label, value in (("bogus", "bogus"), ("upper", "QUEUED"), ("empty", "")):
        yield case(f"state-{label}", "GET", f"/jobs?state={value}", 422)
    for path in ("/jobs", "/presets", "/datasets"):
        yield case(f"unknown-query-{path}", "GET", f"{path}?nope=1", 422, contains="nope")
        yield case(f"no-token-{path}", "GET", path, 401, auth="none")
    yield case("repeated-after", "GET", "/jobs/$JOB/metrics?after=1&after=2", 422, contains="after")


def checkpoint_cases() -> Iterator[ParameterSet]:
    for label, ref in BAD_CHECKPOINT_REFS:
        yield case(f"ref-{label}", "GET", f"/jobs/$JOB/checkpoints/{ref}", 422, contains="ref")
    for ref in ("0", "9223372036854775807", "best"):  # well-formed, but there is none
        yield case(f"ref-missing-{ref}", "GET", f"/jobs/$QUEUED/checkpoints/{ref}", 404)
    yield case("ref-foreign-job", "GET", "/jobs/$FOREIGN/checkpoints/$CHECKPOINT", 404)
    for label, header in (
        ("past-end", "bytes=1024-"),
        ("zero-suffix", "bytes=-0"),
        ("reversed", "bytes=5-2"),
    ):
        yield case(
            f"range-{label}", "GET", "/jobs/$JOB/checkpoints/$CHECKPOINT", 416, headers={"Range": header}
        )


def body_cases() -> Iterator[ParameterSet]:
    for label, body, status, contains in BAD_BODIES:
        yield case(f"body-{label}", "POST", "/jobs", status, body=body, contains=contains)
    yield case(
        "idempotency-other-body", "POST", "/jobs", 409, body=spec(seed=9), headers={"Idempotency-Key": "k-1"}
    )
    big = spec(name="x" * MAX_BODY)
    yield case("too-large", "POST", "/jobs", 413, body=big)
    yield case("too-large-no-token", "POST", "/jobs", 413, body=big, auth="none")
    yield case("too-large-on-get", "GET", "/jobs", 413, body=big)
    yield case("json-on-get-with-nul", "GET", "/jobs", 422, body=spec(name="\u0000"))
    yield case("empty-body", "POST", "/jobs", 422, body=b"")
    yield case("no-body", "POST", "/jobs", 422)
    for label, media_type, body in (
        ("text-plain", "text/plain", json.dumps(SPEC).encode()),
        ("form", "application/x-www-form-urlencoded", b"preset=digits"),
        ("utf-16-charset", "application/json; charset=utf-16", json.dumps(SPEC).encode("utf-16")),
        ("problem-json-deep", "application/problem+json", b"[" * 40 + b"]" * 40),
    ):
        yield case(
            f"content-type-{label}",
            "POST",
            "/jobs",
            (400, 422),
            body=body,
            headers={"Content-Type": media_type},
        )


def header_cases() -> Iterator[ParameterSet]:
    for label, key, status in IDEMPOTENCY_KEYS:
        headers = {"Idempotency-Key": key}
        yield case(f"idempotency-key-{label}", "POST", "/jobs", status, body=spec(), headers=headers)
    for label, value in BAD_AUTH:
        for method, path in (("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/$JOB/checkpoints/best")):
            headers = {"Authorization": value}
            yield case(f"auth-{label}-{method}-{path}", method, path, 401, headers=headers, auth="none")
    for label, value in (("nul", "a\x00b"), ("newline", "a\nb"), ("escape", "\x1b[2J")):
        yield case(f"header-{label}", "GET", "/jobs", 400, headers={"X-Anything": value})
        yield case(
            f"auth-{label}", "GET", "/jobs", 400, headers={"Authorization": f"Bearer {value}"}, auth="none"
        )
    for label, value in (
        ("word", "abc"),
        ("negative", "-1"),
        ("huge", "9" * 30),
        ("superscript", "\xb2".encode("latin-1")),
    ):
        yield case(
            f"content-length-{label}", "POST", "/jobs", 400, body=spec(), headers={"Content-Length": value}
        )


ALL_CASES = list(cases())


def test_there_are_enough_distinct_cases() -> None:
    ids = [param.id for param in ALL_CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 150, len(ids)


@pytest.mark.parametrize("hostile", ALL_CASES)
def test_hostile_input_is_a_clear_4xx_that_changes_nothing(world: World, hostile: Case) -> None:
    before = snapshot(world.api)
    response = send(world, hostile)
    assert_refused(response, hostile)
    assert snapshot(world.api) == before


# --- what only a raw ASGI request can carry: several body chunks, raw bytes in the path -------


@dataclass(frozen=True)
class RawRequest:
    method: str
    path: str
    chunks: tuple[bytes, ...] = (b"",)
    headers: tuple[tuple[bytes, bytes], ...] = ()
    query: bytes = b""


CHUNK = b" " * 8000  # JSON whitespace: only the size matters
RAW_REQUESTS = [
    ("chunked-over-limit", RawRequest("POST", "/jobs", (spec(), CHUNK, CHUNK, CHUNK)), 413),
    ("chunked-first-chunk-over-limit", RawRequest("POST", "/jobs", (b" " * (MAX_BODY + 1), b"{}")), 413),
    ("chunked-many-small", RawRequest("POST", "/jobs", tuple([b" " * 100] * 201)), 413),
    ("chunked-on-get", RawRequest("GET", "/jobs", (CHUNK, CHUNK, CHUNK)), 413),
    ("declared-over-limit", RawRequest("POST", "/jobs", (spec(),), ((b"content-length", b"1000000"),)), 413),
    ("chunked-deep", RawRequest("POST", "/jobs", (b"[" * 450, b"]" * 450)), 422),
    ("chunked-duplicate", RawRequest("POST", "/jobs", (b'{"preset": "digits", "pre', b'set": "x"}')), 422),
    ("chunked-split-utf-16", RawRequest("POST", "/jobs", (b"{\x00", b'"\x00}\x00')), 400),
    ("raw-nul-path", RawRequest("GET", "/jobs/a\x00b"), 400),
    ("raw-escape-path", RawRequest("GET", "/jobs/\x1b[2J"), 400),
    ("raw-c1-path", RawRequest("GET", "/jobs/\x85"), 400),
    ("raw-nul-query", RawRequest("GET", "/jobs", query=b"cursor=a\x00b"), 400),
    ("raw-c1-query", RawRequest("GET", "/jobs", query=b"cursor=\xc2\x85"), 400),
    ("raw-header-name", RawRequest("GET", "/jobs", headers=((b"x-\x01", b"1"),)), 400),
    ("raw-header-cr", RawRequest("GET", "/jobs", headers=((b"x-a", b"1\r\nx-b: 2"),)), 400),
]


def call_asgi(world: World, raw: RawRequest) -> tuple[int, dict[str, str], bytes]:
    """Run one request through the app on the test client's event loop; (status, headers, body)."""
    api = world.api
    token = f"Bearer {world.tokens['alice']}".encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": raw.method,
        "scheme": "http", "path": world.fill(raw.path), "raw_path": world.fill(raw.path).encode("latin-1"),
        "query_string": raw.query, "root_path": "", "client": ("testclient", 50000),
        "server": ("testserver", 80), "headers": [(b"authorization", token), *raw.headers],
    }  # fmt: skip
    messages = [
        {"type": "http.request", "body": chunk, "more_body": index < len(raw.chunks) - 1}
        for index, chunk in enumerate(raw.chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        await api.client.app(scope, receive, send)

    assert api.client.portal is not None
    api.client.portal.call(run)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode("latin-1") for k, v in start["headers"]}, body


@pytest.mark.parametrize(("raw", "status"), [pytest.param(r, s, id=i) for i, r, s in RAW_REQUESTS])
def test_raw_requests_are_a_clear_4xx_that_changes_nothing(
    world: World, raw: RawRequest, status: int
) -> None:
    before = snapshot(world.api)
    got, headers, body = call_asgi(world, raw)
    assert got == status, body[:300]
    assert headers["content-type"].startswith("application/json")
    detail = json.loads(body)["detail"]
    assert isinstance(detail, str) and detail.strip() and detail.isprintable(), repr(detail)
    assert snapshot(world.api) == before


def test_a_raw_request_within_the_limits_reaches_the_app(world: World) -> None:
    """The harness itself: a good body in several chunks is replayed whole to the route."""
    body = json.dumps({**SPEC, "name": "chunked"}).encode()
    parts = tuple(body[i : i + 7] for i in range(0, len(body), 7))
    raw = RawRequest("POST", "/jobs", parts, ((b"content-type", b"application/json"),))
    status, _, answer = call_asgi(world, raw)
    assert status == 201 and json.loads(answer)["name"] == "chunked"


# --- a Range the server does not understand is ignored (RFC 9110): the whole file, 200 ------------

IGNORED_RANGES: list[str | bytes] = [
    "bytes=\u00b2-".encode(), "bytes=\u0663-\u0664".encode(), "bytes=" + "9" * 5000 + "-",
    "bytes=0-" + "9" * 5000, "bytes=-" + "9" * 5000, "bytes=9223372036854775808-", "bytes=0-1,5-6",
    "items=0-1", "bytes=-", "bytes=x-y", "bytes 0-1", "bytes=1-2-3", " " * 200 + "bytes=0-1",
]  # fmt: skip


@pytest.mark.parametrize("header", IGNORED_RANGES, ids=lambda h: repr(h)[:40])
def test_absurd_ranges_are_ignored(world: World, header: str | bytes) -> None:
    before = snapshot(world.api)
    response = world.api.client.get(
        world.fill("/jobs/$JOB/checkpoints/$CHECKPOINT"),
        headers={"Authorization": f"Bearer {world.tokens['alice']}", "Range": header},
    )
    assert (response.status_code, response.content) == (200, FILE)
    assert "content-range" not in response.headers
    assert snapshot(world.api) == before


# --- the strict JSON parser on its own ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "deeper"),
    [
        ("[]", False), ("[" * 32 + "]" * 32, False), ("[" * 33 + "]" * 33, True),
        ('["' + "[" * 100 + '"]', False), ('{"a": "]]]}}}", "b": ' + "[" * 40 + "]" * 40 + "}", True),
        ('["\\"' + "[" * 40 + '"]', False), ("[[]]" * 1000, False), ("[" * 40, True), ("][" * 40, False),
    ],
)  # fmt: skip
def test_nesting_depth_is_judged_without_recursion(text: str, deeper: bool) -> None:
    assert nested_deeper(text, 32) is deeper


def test_strict_json_accepts_ordinary_specs_and_brackets_in_strings() -> None:
    body = {"name": "[[[[" * 20, "preset": "digits", "optim": {"lr": 1e-3}, "seed": -0, "x": [1.5, None]}
    assert check_json(json.dumps(body).encode(), 32) == body
    assert check_json(json.dumps({"name": "café ☕"}, ensure_ascii=False).encode(), 32) == {"name": "café ☕"}

"""The request guard: malformed input is answered before any route sees it, and changes nothing.

- The URL path and query string hold only printable characters, raw or %-encoded (no NUL, which
  PostgreSQL text cannot hold; no control, format or separator characters): else 400.
- Header values hold no control characters but HTAB (RFC 9110 forbids CR, LF and NUL): else 400.
- The body is read whole, up to `max_body_bytes`, whether Content-Length says its size or it
  comes chunked: beyond that 413, before the app has seen a byte of it.
- A JSON body (no Content-Type, `application/json` or `application/*+json`) is UTF-8 without a
  byte order mark (else 400), is JSON (else 400), and is strict JSON (else 422): nested at most
  `max_json_depth` deep, no duplicate keys, no NaN/Infinity, numbers within float and int64
  range, no control characters (C0, DEL, C1) in any string or key.

Then the buffered body is replayed to the app. Paths under `streaming_prefixes` (none yet; a
future upload route) get their body stream as it comes and must bound it themselves.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from typing import Any
from urllib.parse import unquote_plus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import one_line
from api.params import INT64_MAX, parse_int64

MAX_JSON_DEPTH = 32
BYTE_ORDER_MARKS = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)  # UTF-32's start alike
CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")
# For the nesting check: JSON strings (which may hold brackets), then everything but brackets.
JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
EMPTY_PAIRS = re.compile(r"\[\]|\{\}")
OPENER_RUNS = re.compile(r"[\[{]+")


class Rejected(Exception):
    """The request is refused with `status` and a one-line `detail`."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = one_line(detail)


class Disconnected(Exception):
    """The client went away while sending its body."""


class RequestGuard:
    """Plain ASGI middleware (no BaseHTTPMiddleware): checks the URL and headers, buffers and
    checks the body, then replays it to `app`."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        max_json_depth: int = MAX_JSON_DEPTH,
        streaming_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.streaming_prefixes = streaming_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_url(scope)
            check_headers(scope)
            if self.streaming_prefixes and scope["path"].startswith(self.streaming_prefixes):
                await self.app(scope, receive, send)
                return
            body = await read_body(scope, receive, self.max_body_bytes)
            if body and is_json(scope):
                check_json(body, self.max_json_depth)
        except Rejected as rejected:
            await respond(send, rejected.status, rejected.detail)
            return
        except Disconnected:
            return
        await self.app(scope, replay(body, receive), send)


def check_url(scope: Scope) -> None:
    """Refuse a path or query holding a character that is not printable (raw or %-encoded)."""
    path: str = scope["path"]
    if not path.isprintable():
        raise Rejected(400, f"the URL path holds the non-printable character {first_unprintable(path)}")
    query = unquote_plus(scope.get("query_string", b"").decode("latin-1"), errors="replace")
    if not query.isprintable():
        raise Rejected(400, f"the query string holds the non-printable character {first_unprintable(query)}")


def first_unprintable(text: str) -> str:
    return next(f"U+{ord(char):04X}" for char in text if not char.isprintable())


def check_headers(scope: Scope) -> None:
    for name, value in scope["headers"]:
        found = CONTROL_BYTES.search(name) or CONTROL_BYTES.search(value)
        if found is not None:
            shown = name.decode("latin-1")
            raise Rejected(400, f"header {shown!r} holds the control character U+{found.group()[0]:04X}")


def header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key.lower() == name), None)


async def read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed `max_bytes`."""
    length = header(scope, b"content-length")
    if length is not None:
        declared = parse_int64(length.decode("latin-1").strip())
        if declared is None:
            raise Rejected(400, "Content-Length must be a whole number of bytes")
        if declared > max_bytes:
            raise Rejected(413, f"request body larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > max_bytes:
            raise Rejected(413, f"request body larger than {max_bytes} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def is_json(scope: Scope) -> bool:
    """Whether the body may be read as JSON: no Content-Type counts too, as FastAPI reads such a
    body as JSON on a route with `strict_content_type=False`."""
    value = header(scope, b"content-type")
    if value is None:
        return True
    media_type = value.decode("latin-1").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the buffered body, then whatever the client sends next."""
    replayed = False

    async def receive_replayed() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_replayed


async def respond(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --- strict JSON ------------------------------------------------------------------------------


def check_json(body: bytes, max_depth: int) -> Any:
    """The parsed body, if it is strict UTF-8 JSON; else Rejected (400 not JSON, 422 not strict)."""
    text = utf8_text(body)
    if nested_deeper(text, max_depth):
        raise Rejected(422, f"JSON nested deeper than {max_depth}")
    try:
        value = json.loads(
            text,
            object_pairs_hook=unique_keys,
            parse_constant=refuse_constant,
            parse_int=int64_literal,
            parse_float=finite_float,
        )
    except RecursionError:  # a safety net: the depth check should have refused it
        raise Rejected(422, f"JSON nested deeper than {max_depth}") from None
    except json.JSONDecodeError as error:
        raise Rejected(
            400, f"request body is not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        ) from None
    where = control_character_at(value)
    if where is not None:
        raise Rejected(422, f"{where}: JSON strings may not hold control characters (C0, DEL, C1)")
    return value


def utf8_text(body: bytes) -> str:
    """RFC 8259: JSON between systems is UTF-8, without a byte order mark."""
    if body.startswith(BYTE_ORDER_MARKS):
        raise Rejected(400, "request body must be UTF-8 JSON without a byte order mark")
    if b"\x00" in body[:4]:  # RFC 4627's test: ASCII text in UTF-16 or UTF-32 has NUL bytes
        raise Rejected(400, "request body must be UTF-8 JSON; it looks like UTF-16 or UTF-32")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejected(400, f"request body must be UTF-8 JSON; byte {error.start} is not UTF-8") from None


def nested_deeper(text: str, limit: int) -> bool:
    """Whether arrays and objects nest deeper than `limit`, found without recursion: strip the
    strings and all but brackets, then remove innermost `[]`/`{}` pairs, one level a round."""
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = NOT_BRACKETS.sub("", JSON_STRING.sub("", text))
    for rounds in range(limit):
        if not brackets:
            return False
        reduced = EMPTY_PAIRS.sub("", brackets)
        if reduced == brackets:  # unbalanced, so not JSON; too deep if a run of openers is
            return rounds + max(map(len, OPENER_RUNS.findall(brackets)), default=0) > limit
        brackets = reduced
    return bool(brackets)


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's keys must differ: a duplicate would otherwise silently win over the first."""
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise Rejected(422, f"duplicate key {json.dumps(key)} in a JSON object")
            seen.add(key)
    return found


def refuse_constant(name: str) -> Any:
    raise Rejected(422, f"{name} is not a JSON number")


def int64_literal(text: str) -> int:
    """A JSON integer within ±(2**63-1): larger ones are not portable (and `int` of thousands
    of digits raises)."""
    digits = text.lstrip("-")
    if len(digits) > 19 or int(digits) > INT64_MAX:
        raise Rejected(422, f"JSON integer {text[:24]}{'…' if len(text) > 24 else ''} is outside ±(2**63-1)")
    return int(text)


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Rejected(422, f"JSON number {text[:24]} is too large for a float")
    return value


def control_character_at(value: Any, path: str = "") -> str | None:
    """The JSON path (`a.b[2]`) of the first string or key holding a control character, else None."""
    if isinstance(value, str):
        return (path or "body") if CONTROL_CHARS.search(value) else None
    children: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if CONTROL_CHARS.search(key):
                return where
            children.append((where, item))
    elif isinstance(value, list):
        children = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
    for where, item in children:
        found = control_character_at(item, where)
        if found is not None:
            return found
    return None

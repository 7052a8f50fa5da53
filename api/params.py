"""The API's one integer vocabulary for cursors, ids, page sizes and header values.

Every integer a client sends as text goes through `parse_int64`: ASCII digits only (`"²"` and
`"٣"` are digits to `str.isdigit`, and `int` refuses the first and reads the second), at most 19
of them, and at most 2**63-1, the largest id or seq PostgreSQL's BIGINT and SQLite hold. So a
value that passes can be bound to any query, and a long string is refused before `int` sees it.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, Field, StringConstraints

INT64_MAX = 2**63 - 1
ASCII_UINT = re.compile(r"[0-9]{1,19}")


def parse_int64(text: str) -> int | None:
    """The integer `text` spells in ASCII digits if it is in 0 .. 2**63-1, else None."""
    if ASCII_UINT.fullmatch(text) is None:
        return None
    value = int(text)
    return value if value <= INT64_MAX else None


def ascii_int(value: object) -> object:
    """Text must be plain ASCII digits (no sign, space, `_`, exponent or other scripts' digits)."""
    if isinstance(value, str):
        parsed = parse_int64(value)
        if parsed is None:
            raise ValueError(f"must be a whole number from 0 to {INT64_MAX} in ASCII digits")
        return parsed
    return value


# The one integer type of cursors, ids and header values: 0 .. 2**63-1 in ASCII digits. Page
# sizes are the same with other bounds; the bounds come before the validator so that OpenAPI
# shows them as minimum/maximum.
ASCII_INT = BeforeValidator(ascii_int)
Int64 = Annotated[int, Field(ge=0, le=INT64_MAX), ASCII_INT]

JobsPageSize = Annotated[int, Field(ge=1, le=500), ASCII_INT]
LogsPageSize = Annotated[int, Field(ge=1, le=5000), ASCII_INT]
# Metrics pages are capped at TSLA_METRICS_PAGE_MAX by the route, so any int64 is a valid ask.
MetricsPageSize = Annotated[int, Field(ge=1, le=INT64_MAX), ASCII_INT]

# Printable ASCII: what an Idempotency-Key may hold (stored, compared, and echoed in logs).
IdempotencyKeyText = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[ -~]+$")]

# A checkpoint reference: `best`, `latest` or a checkpoint id (an Int64).
CHECKPOINT_NAMES = ("best", "latest")


def parse_checkpoint_ref(ref: str) -> str | int | None:
    """`best`, `latest` or the checkpoint id `ref` names; None when it names none of them."""
    return ref if ref in CHECKPOINT_NAMES else parse_int64(ref)


RANGE = re.compile(r"[ \t]*bytes[ \t]*=[ \t]*([0-9]{0,19})[ \t]*-[ \t]*([0-9]{0,19})[ \t]*", re.IGNORECASE)


def parse_byte_range(header: str | None) -> tuple[int | None, int | None] | None:
    """(first, last) of a single `bytes=` range, either may be None (open); None to ignore it.

    RFC 9110 lets a server ignore a Range it does not understand and send the whole file, so a
    header that is not exactly one range of int64 numbers (several ranges, another unit, a
    thousand digits) is ignored rather than refused."""
    if header is None or len(header) > 100:
        return None
    match = RANGE.fullmatch(header)
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = (parse_int64(text) if text else None for text in match.groups())
    if (first is None and match.group(1)) or (last is None and match.group(2)):
        return None
    return first, last

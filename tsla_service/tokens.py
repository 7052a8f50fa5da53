"""Bearer API tokens: created once (the plaintext is shown then and never stored), kept as
sha256, compared in constant time, revoked by name. A token is a "user" (sees its own jobs) or an
"operator" (also reads the service-wide Prometheus `/metrics`)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Literal

from sqlalchemy import Connection, and_, bindparam, or_, select
from sqlalchemy.orm import Session

from tsla_service.models import ApiToken, Job, utcnow

Role = Literal["user", "operator"]
# A token someone chose (e.g. $TSLA_TOKEN) must be as hard to guess as it is long: 20 or more
# printable ASCII characters without spaces. Generated ones are `tsla_` + 43 random characters.
MIN_TOKEN_LENGTH = 20
TOKEN_PATTERN = re.compile(rf"[!-~]{{{MIN_TOKEN_LENGTH},512}}")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session, name: str, token: str | None = None, role: Role = "user"
) -> tuple[ApiToken, str]:
    """A new token named `name` (unique); `token` supplies the plaintext (e.g. $TSLA_TOKEN)."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"token name {name!r}: use 1-100 letters, digits, '.', '_', '@' or '-'")
    if token is not None and not TOKEN_PATTERN.fullmatch(token):
        raise ValueError(
            f"a chosen token needs {MIN_TOKEN_LENGTH}-512 printable ASCII characters without spaces"
        )
    if session.scalar(select(ApiToken).where(ApiToken.name == name)) is not None:
        raise ValueError(f"a token named {name!r} exists already")
    plaintext = token or f"tsla_{secrets.token_urlsafe(32)}"
    row = ApiToken(name=name, token_sha256=digest(plaintext), role=role)
    session.add(row)
    session.commit()
    return row, plaintext


def ensure_token(session: Session, name: str, token: str) -> ApiToken:
    """The active token with this plaintext, created under `name` if it is not known yet."""
    found = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == digest(token)))
    if found is not None:
        if found.revoked_at is not None:
            raise ValueError(f"token {found.name!r} has been revoked")
        return found
    return create_token(session, name, token)[0]


def revoke_token(session: Session, name_or_id: str) -> ApiToken:
    row = session.scalar(select(ApiToken).where(or_(ApiToken.name == name_or_id, ApiToken.id == name_or_id)))
    if row is None:
        raise LookupError(f"no token named {name_or_id!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return row


def authenticate(session: Session, token: str) -> ApiToken | None:
    """The active token row for a presented plaintext, else None."""
    presented = digest(token)
    row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == presented))
    # The lookup is by a hash of the secret; the comparison below is constant-time regardless.
    if row is None or not hmac.compare_digest(row.token_sha256, presented) or row.revoked_at is not None:
        return None
    return row


# "An active token with sha256 :token_sha256 owns job :job_id", as a clause a page query ANDs in:
# then one statement both checks the caller and reads the rows (api/deps.py OwnedJobReader).
OWNED_BY_TOKEN = (
    select(Job.id)
    .join(ApiToken, ApiToken.id == Job.owner)
    .where(
        Job.id == bindparam("job_id"),
        ApiToken.token_sha256 == bindparam("token_sha256"),
        ApiToken.revoked_at.is_(None),
    )
    .exists()
)

# owns_job's one query, built once (building it costs more than running it on the hot paths).
OWNS_JOB = (
    select(ApiToken.token_sha256, ApiToken.revoked_at, Job.id.label("job_id"))
    .outerjoin(Job, and_(Job.id == bindparam("job_id"), Job.owner == ApiToken.id))
    .where(ApiToken.token_sha256 == bindparam("presented"))
)


def owns_job(connection: Connection, token: str, job_id: str) -> bool | None:
    """Whether the active token with this plaintext owns job `job_id`, in one query; None when the
    token is unknown or revoked (as `authenticate`)."""
    presented = digest(token)
    row = connection.execute(OWNS_JOB, {"job_id": job_id, "presented": presented}).first()
    if row is None or not hmac.compare_digest(row.token_sha256, presented) or row.revoked_at is not None:
        return None
    return row.job_id is not None


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.created_at)))

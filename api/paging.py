"""Newest-first pages of a token's own rows (jobs, experiments), continued by a cursor that is the
id of the last row seen; ties on created_at are broken by id, so no row is skipped or repeated."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import HTTPException, Query, status
from sqlalchemy import Select, select, tuple_
from sqlalchemy.orm import Session

Row = TypeVar("Row", bound=Any)  # a model with id, owner and created_at columns

Cursor = Annotated[str | None, Query(max_length=64, description="next_cursor of the previous page")]


def owner_page(
    session: Session, model: type[Row], owner: str, cursor: str | None, limit: int, what: str,
    where: tuple[Any, ...] = (),
) -> tuple[list[Row], str | None]:  # fmt: skip
    """(rows, next_cursor) of `owner`'s rows of `model` older than the cursor's; 422 for a cursor
    that is not one of the owner's rows (`what` names it in the message)."""
    query: Select[Any] = (
        select(model)
        .where(model.owner == owner, *where)
        .order_by(model.created_at.desc(), model.id.desc())
        .limit(limit + 1)
    )
    if cursor is not None:
        anchor = session.get(model, cursor)
        if anchor is None or anchor.owner != owner:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"cursor: no such {what}")
        query = query.where(tuple_(model.created_at, model.id) < tuple_(anchor.created_at, anchor.id))
    found = list(session.scalars(query))
    page = found[:limit]
    return page, page[-1].id if len(found) > limit else None

"""A job's checkpoints: the list, and downloads with Content-Length, ETag = sha256 and Range.

A download streams from storage chunk by chunk (tsla_service/storage.py); on object storage a
Range request fetches only its range. Storage that cannot be reached is a 503, not a 500.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Response, status
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from api.deps import OwnedJob, SessionDep, SettingsDep
from api.params import parse_byte_range, parse_checkpoint_ref
from api.schemas import JOB_RESPONSES, CheckpointPublic, CheckpointsPublic, Message
from tsla_service import results
from tsla_service.models import Checkpoint
from tsla_service.storage import UNREACHABLE, Storage, storage_for

router = APIRouter(prefix="/jobs", tags=["checkpoints"], responses=JOB_RESPONSES)
# What a client is told to wait before it asks again while storage is unreachable.
RETRY_AFTER_SECONDS = 10


@router.get("/{job_id}/checkpoints", response_model=CheckpointsPublic)
def list_checkpoints(job: OwnedJob, session: SessionDep) -> CheckpointsPublic:
    rows = results.list_checkpoints(session, job.id)
    best = results.best_checkpoint(session, job.id)
    latest = results.latest_checkpoint(session, job.id)
    return CheckpointsPublic(
        items=[CheckpointPublic.model_validate(r) for r in sorted(rows, key=lambda r: (r.epoch, r.id))],
        best_id=best.id if best else None,
        latest_id=latest.id if latest else None,
    )


def find_checkpoint(session: Session, job_id: str, ref: str) -> Checkpoint:
    parsed = parse_checkpoint_ref(ref)
    if parsed is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "ref: a checkpoint id, 'latest' or 'best'")
    found = results.find_checkpoint(session, job_id, parsed)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no checkpoint {ref!r}")
    return found


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=` range, None for the whole file; 416 if unsatisfiable."""
    parsed = parse_byte_range(header)
    if parsed is None:
        return None
    first_given, last_given = parsed
    if first_given is None:
        assert last_given is not None  # a suffix range: the last N bytes
        first, last = max(0, size - last_given), size - 1
    else:
        first = first_given
        last = min(last_given, size - 1) if last_given is not None else size - 1
    if first >= size or first > last:
        raise HTTPException(
            status.HTTP_416_RANGE_NOT_SATISFIABLE,
            f"range {header!r} is outside the {size}-byte file",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return first, last


def matches_etag(if_none_match: str, etag: str) -> bool:
    """If-None-Match: `*`, or a list of tags compared weakly (a `W/` prefix does not matter)."""
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


@router.get(
    "/{job_id}/checkpoints/{ref}",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the checkpoint file"},
        206: {"content": {"application/octet-stream": {}}, "description": "the requested byte range"},
        304: {"description": "If-None-Match matched the ETag"},
        404: {"model": Message, "description": "no such job or checkpoint"},
        416: {"description": "the range is outside the file"},
        503: {"model": Message, "description": "checkpoint storage is unreachable; try again later"},
    },
)
def download_checkpoint(
    job: OwnedJob,
    ref: Annotated[str, PathParam(max_length=32)],
    session: SessionDep,
    settings: SettingsDep,
    range_header: str | None = Header(None, alias="Range"),
    if_range: str | None = Header(None, alias="If-Range"),
    if_none_match: str | None = Header(None, alias="If-None-Match"),
) -> Response:
    """Download a checkpoint: `ref` is its id, `latest` or `best`. Resumable with Range."""
    checkpoint = find_checkpoint(session, job.id, ref)
    storage = storage_for(settings)
    require_stored(storage, checkpoint)
    etag = f'"{checkpoint.sha256}"'
    size = checkpoint.size
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'attachment; filename="{job.id}-{checkpoint.name}.pt"',
        "X-Checkpoint-Sha256": checkpoint.sha256,
    }
    if if_none_match is not None and matches_etag(if_none_match, etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    span = byte_range(range_header, size) if if_range in (None, etag) else None
    first, last = span if span is not None else (0, size - 1)
    headers["Content-Length"] = str(last - first + 1)
    if span is not None:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    try:
        chunks = storage.read_range(checkpoint.storage_key, first, last - first + 1)
    except UNREACHABLE:
        raise storage_unreachable() from None
    return StreamingResponse(
        chunks,
        status_code=status.HTTP_206_PARTIAL_CONTENT if span is not None else status.HTTP_200_OK,
        media_type="application/octet-stream",
        headers=headers,
    )


def require_stored(storage: Storage, checkpoint: Checkpoint) -> None:
    """404 when the checkpoint's file is gone from storage; 503 when storage cannot be reached."""
    try:
        found = storage.exists(checkpoint.storage_key)
    except UNREACHABLE:
        raise storage_unreachable() from None
    if not found:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"checkpoint {checkpoint.name} is missing from storage"
        )


def storage_unreachable() -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "checkpoint storage is unreachable; try again later",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )

"""Uploads of data sets, resumable (tsla_service/datasets.py): `POST /uploads` declares the name,
size and sha256 (and answers with an unfinished upload of the same bytes, if there is one, to
resume, or with the data set those bytes made already); each `PATCH /uploads/{id}` appends a
chunk at `Upload-Offset`, streamed to disk, never held in memory; the chunk that completes it also
checks, converts and stores the data set. A dropped connection loses nothing that arrived:
`GET /uploads/{id}` tells the offset to resume from.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request, Response, status
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from api.deps import CurrentToken, SessionDep, SettingsDep
from api.params import Int64
from api.routes.datasets import rejected, uploaded_public
from api.schemas import ERROR_RESPONSES, DatasetPublic, Message, UploadCreate, UploadPublic
from tsla_service import datasets
from tsla_service.datasets import DatasetConflict, UploadRejected
from tsla_service.models import DatasetUpload, utcnow
from tsla_service.settings import Settings

router = APIRouter(prefix="/uploads", tags=["datasets"], responses=ERROR_RESPONSES)
STREAMED = "/uploads/"  # PATCH bodies under it stream to disk (api/limits.py leaves them be)

UPLOAD_RESPONSES: dict[int | str, dict[str, object]] = {
    404: {"model": Message, "description": "no such upload for this token"},
    409: {"model": Message, "description": "the offset is not the upload's, or the name is taken"},
    413: {"model": Message, "description": "more bytes than declared, or over a TSLA_MAX_UPLOAD_* cap"},
}


class UploadStatus(BaseModel):
    """Where an upload stands: still receiving (`upload`, with its offset), or done (`dataset`)."""

    upload: UploadPublic | None
    dataset: DatasetPublic | None


def upload_public(upload: DatasetUpload, settings: Settings) -> UploadPublic:
    return UploadPublic(
        id=upload.id,
        name=upload.name,
        size=upload.size,
        offset=datasets.received(settings, upload),
        sha256=upload.sha256,
        created_at=upload.created_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadStatus,
    responses={
        200: {"model": UploadStatus, "description": "resumed, or the data set exists already"},
        **UPLOAD_RESPONSES,
    },
)
def start_upload(
    body: UploadCreate, session: SessionDep, settings: SettingsDep, token: CurrentToken
) -> JSONResponse:
    """Start an upload (201), or get back the caller's unfinished upload of the same bytes under the
    same name (200, with its offset), or the data set those bytes made already (200: a no-op)."""
    request = datasets.UploadRequest(body.name, body.size, body.sha256, body.format, body.image_size)
    try:
        found = datasets.start_upload(session, settings, token.id, request)
    except (UploadRejected, DatasetConflict) as error:
        raise rejected(error) from None
    if found.dataset is not None:
        answer = UploadStatus(upload=None, dataset=uploaded_public(found.dataset))
    else:
        assert found.upload is not None
        answer = UploadStatus(upload=upload_public(found.upload, settings), dataset=None)
    code = status.HTTP_201_CREATED if found.created else status.HTTP_200_OK
    return JSONResponse(answer.model_dump(mode="json"), status_code=code)


UploadId = Annotated[str, PathParam(min_length=1, max_length=64)]


def owned_upload(session: Session, token_id: str, upload_id: str) -> DatasetUpload:
    upload = session.get(DatasetUpload, upload_id)
    if upload is None or upload.owner != token_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"upload {upload_id} not found")
    return upload


@router.get("/{upload_id}", response_model=UploadStatus, responses=UPLOAD_RESPONSES)
def get_upload(
    upload_id: UploadId, session: SessionDep, settings: SettingsDep, token: CurrentToken
) -> UploadStatus:
    """An unfinished upload and its offset (where to resume)."""
    return UploadStatus(
        upload=upload_public(owned_upload(session, token.id, upload_id), settings), dataset=None
    )


@router.delete("/{upload_id}", status_code=status.HTTP_204_NO_CONTENT, responses=UPLOAD_RESPONSES)
def abort_upload(
    upload_id: UploadId, session: SessionDep, settings: SettingsDep, token: CurrentToken
) -> Response:
    datasets.abort_upload(session, settings, owned_upload(session, token.id, upload_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch("/{upload_id}", response_model=UploadStatus, responses=UPLOAD_RESPONSES)
async def append_upload(
    upload_id: UploadId,
    request: Request,
    settings: SettingsDep,
    token: CurrentToken,
    session: SessionDep,
    offset: Annotated[Int64, Header(alias="Upload-Offset", description="the upload's offset now")],
) -> JSONResponse:
    """Append the body at `Upload-Offset` (which must be the upload's offset). The chunk that
    completes the upload answers with the data set; a refused one ends the upload (4xx)."""
    upload = await run_in_threadpool(owned_upload, session, token.id, upload_id)
    await run_in_threadpool(session.commit)  # hold no database connection while the bytes stream
    if not 0 <= offset <= upload.size:
        now = datasets.received(settings, upload)
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"Upload-Offset {offset} is not the upload's offset {now}"
        )
    remaining = upload.size - offset
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > remaining:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"the upload needs {remaining} more bytes, not {declared}"
        )
    try:
        with datasets.appending(settings, upload, offset) as handle:
            written = 0
            try:
                async for chunk in request.stream():
                    written += len(chunk)
                    if written > remaining:
                        raise HTTPException(
                            status.HTTP_413_CONTENT_TOO_LARGE, f"more bytes than the {upload.size} declared"
                        )
                    if written > settings.max_upload_chunk_bytes:
                        raise HTTPException(
                            status.HTTP_413_CONTENT_TOO_LARGE,
                            f"a chunk may hold {settings.max_upload_chunk_bytes} bytes "
                            "(TSLA_MAX_UPLOAD_CHUNK_BYTES)",
                        )
                    await run_in_threadpool(handle.write, chunk)
            except ClientDisconnect:
                pass  # what arrived is kept: the client resumes from the new offset
            finally:
                handle.flush()
    except DatasetConflict as error:
        raise rejected(error) from None
    return await run_in_threadpool(after_append, session, settings, upload)


def after_append(session: Session, settings: Settings, upload: DatasetUpload) -> JSONResponse:
    upload = session.merge(upload)
    upload.updated_at = utcnow()
    session.commit()
    if datasets.received(settings, upload) < upload.size:
        return JSONResponse(
            UploadStatus(upload=upload_public(upload, settings), dataset=None).model_dump(mode="json")
        )
    try:
        dataset = datasets.finish_upload(session, settings, upload)
    except (UploadRejected, DatasetConflict) as error:
        raise rejected(error) from None
    except OSError as error:  # the server's disk or storage, not the upload: the client may retry
        reason = f"the server could not store the data set ({error.strerror or error}); upload again later"
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, reason) from None
    answer = UploadStatus(upload=None, dataset=uploaded_public(dataset))
    return JSONResponse(answer.model_dump(mode="json"), status_code=status.HTTP_201_CREATED)

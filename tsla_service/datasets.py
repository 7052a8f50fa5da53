"""Uploaded data sets: owned by a token, checked on the way in, stored by content hash.

An upload is resumable (tus-like): the client declares the name, the byte size and the sha256 of
what it will send, then sends it in chunks at increasing offsets, each appended to the API host's
file `<TSLA_HOME>/uploads/<id>.part`; the file's size is the offset a dropped client resumes from.
When the last byte arrives the file's sha256 must be the declared one, and tsla_service/
dataset_ingest.py checks and converts it into the canonical layout (tsla_spec/uploads.py), which
is put in the checkpoint storage under `datasets/<sha256>/` and recorded as a `Dataset` row.

A job names an uploaded data set like a built-in one (`data.name`); at submission
`resolve_data` pins the name to the content (`data.uploaded`), so the job trains on exactly that,
and workers fetch it by hash (tsla_service/dataset_cache.py).
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, BinaryIO, get_args

import numpy as np
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tsla_service.dataset_ingest import IngestError, IngestLimits, ingest
from tsla_service.models import Dataset, DatasetUpload, Job, utcnow
from tsla_service.settings import Settings
from tsla_service.storage import Storage, storage_for
from tsla_spec.datasets import DATASETS
from tsla_spec.hashing import sha256_file
from tsla_spec.spec import RunSpec, SpecError, UploadedData
from tsla_spec.uploads import ARRAY_FILES, MANIFEST, NAME_PATTERN, DatasetManifest, SourceFormat
from tsla_spec.vocabulary import ACTIVE_STATES


class DatasetConflict(Exception):
    """The request cannot be done in the data set's present state (HTTP 409)."""


class UploadRejected(Exception):
    """What was uploaded is not a usable data set (HTTP `status`: 400, 413 or 422); nothing is kept."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def storage_key(sha256: str, filename: str) -> str:
    return f"datasets/{sha256}/{filename}"


def find_dataset(session: Session, owner: str, name: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.owner == owner, Dataset.name == name))


def manifest_of(dataset: Dataset) -> DatasetManifest:
    return DatasetManifest.model_validate(dataset.manifest)


def uploaded_data(dataset: Dataset) -> UploadedData:
    manifest = manifest_of(dataset)
    return UploadedData(
        sha256=manifest.sha256,
        shape=manifest.shape,
        num_train=manifest.num_train,
        num_test=manifest.num_test,
        num_classes=len(manifest.classes),
    )


def resolve_data(session: Session, spec: RunSpec, owner: str) -> RunSpec:
    """`spec` with an uploaded data set's name pinned to the owner's data set of that name (its
    content hash, shape and counts in `data.uploaded`); a built-in data set's spec as it is. A
    spec that already pins other content (a stale copy of an older job's spec) is refused."""
    if not spec.data.is_uploaded:
        return spec
    dataset = find_dataset(session, owner, spec.data.name)
    if dataset is None:
        raise SpecError(
            f"data.name: no data set named {spec.data.name!r}: upload it (tsla dataset upload) or name "
            f"a built-in one ({', '.join(DATASETS)})"
        )
    pinned = uploaded_data(dataset)
    given = spec.data.uploaded
    if given is not None and given != pinned:
        raise SpecError(
            f"data.uploaded: data set {spec.data.name!r} now holds content {pinned.sha256[:12]}…, not "
            f"{given.sha256[:12]}…; leave data.uploaded out to train on what the name holds now"
        )
    data = spec.data.model_copy(update={"uploaded": pinned})
    try:  # the checks that need the counts (train_subset) run again, now that they are known
        return RunSpec.model_validate({**spec.model_dump(), "data": data.model_dump()})
    except ValueError as error:
        raise SpecError(str(error)) from None


def ingest_limits(settings: Settings) -> IngestLimits:
    return IngestLimits(
        max_upload_bytes=settings.max_upload_bytes,
        max_files=settings.max_upload_files,
        max_expanded_bytes=settings.max_upload_expanded_bytes,
        max_ratio=settings.max_upload_ratio,
    )


# --- uploads ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadRequest:
    name: str
    size: int
    sha256: str  # of the bytes the client will send
    source_format: SourceFormat | None = None  # None: sniffed from the bytes
    image_size: int | None = None


def check_name(name: str) -> None:
    if name in DATASETS:
        raise UploadRejected(422, f"name: {name!r} is a built-in data set; choose another name")
    if not NAME_PATTERN.fullmatch(name):
        raise UploadRejected(422, "name: use 1-64 lower-case letters, digits, '.', '_' or '-'")


@dataclass(frozen=True)
class Started:
    """What `start_upload` found: an upload to send bytes to (new, or one to resume), or the data
    set these bytes made already."""

    upload: DatasetUpload | None = None
    dataset: Dataset | None = None
    created: bool = False


def start_upload(session: Session, settings: Settings, owner: str, request: UploadRequest) -> Started:
    """The upload to send the bytes to: a new one, or the caller's unfinished upload of the same
    bytes under the same name (to resume). A data set of that name made from the same bytes is
    returned as it is: uploading it again is a no-op (and so is the same content in other bytes,
    once converted)."""
    check_name(request.name)
    expire_uploads(session, settings)  # here, on the API host that keeps the uploads' files
    if request.size > settings.max_upload_bytes:
        raise UploadRejected(
            413, f"size: {request.size} bytes is over the {settings.max_upload_bytes} allowed"
        )
    existing = find_dataset(session, owner, request.name)
    if existing is not None and existing.source_sha256 == request.sha256:
        return Started(dataset=existing)
    # Other bytes under a taken name may still hold the same content (another archive of the same
    # images): that is told once they are converted (record_dataset), and a conflict only then.
    count = session.scalar(select(func.count()).select_from(Dataset).where(Dataset.owner == owner)) or 0
    if count >= settings.max_datasets_per_token:
        raise DatasetConflict(
            f"this token holds {count} data sets, the most it may (TSLA_MAX_DATASETS_PER_TOKEN)"
        )
    resumable = session.scalar(
        select(DatasetUpload).where(
            DatasetUpload.owner == owner,
            DatasetUpload.name == request.name,
            DatasetUpload.sha256 == request.sha256,
            DatasetUpload.size == request.size,
        )
    )
    if resumable is not None and part_path(settings, resumable).exists():
        return Started(upload=resumable)
    upload = DatasetUpload(
        owner=owner,
        name=request.name,
        size=request.size,
        sha256=request.sha256,
        source_format=request.source_format,
        image_size=request.image_size,
    )
    session.add(upload)
    session.flush()
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    part_path(settings, upload).touch()
    session.commit()
    return Started(upload=upload, created=True)


def part_path(settings: Settings, upload: DatasetUpload) -> Path:
    return settings.uploads_dir / f"{upload.id}.part"


def received(settings: Settings, upload: DatasetUpload) -> int:
    """The upload's offset: how many bytes have arrived."""
    try:
        return part_path(settings, upload).stat().st_size
    except FileNotFoundError:
        return 0


@contextmanager
def appending(settings: Settings, upload: DatasetUpload, offset: int) -> Iterator[BinaryIO]:
    """The upload's file open for appending at `offset`, locked against a concurrent append (an
    exclusive lock, not waited for: a second writer is a 409, as is an offset that is not the
    file's size, e.g. a chunk sent twice)."""
    path = part_path(settings, upload)
    try:
        handle = path.open("r+b")
    except FileNotFoundError:
        raise DatasetConflict("this upload has ended; start a new one") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatasetConflict("another request is sending bytes of this upload") from None
        size = os.fstat(handle.fileno()).st_size
        if offset != size:
            raise DatasetConflict(f"Upload-Offset {offset} is not the upload's offset {size}")
        handle.seek(size)
        yield handle


def abort_upload(session: Session, settings: Settings, upload: DatasetUpload) -> None:
    part_path(settings, upload).unlink(missing_ok=True)
    session.delete(upload)
    session.commit()


def finish_upload(session: Session, settings: Settings, upload: DatasetUpload) -> Dataset:
    """Check and convert a complete upload and store the data set; the upload ends either way.
    UploadRejected (nothing kept) when the bytes are not the declared ones or not a usable data
    set; DatasetConflict when the name was taken meanwhile by other content."""
    part = part_path(settings, upload)
    try:
        if sha256_file(part) != upload.sha256:
            raise UploadRejected(422, "sha256: the bytes received are not the ones declared; upload again")
        workdir = Path(tempfile.mkdtemp(prefix=f"ingest-{upload.id}-", dir=settings.uploads_dir))
        try:
            converted = workdir / "canonical"
            try:
                manifest = ingest(
                    part, converted, ingest_limits(settings), upload.image_size, upload_format(upload)
                )
            except IngestError as error:
                raise UploadRejected(error.status, str(error)) from None
            existing = find_dataset(session, upload.owner, upload.name)
            if existing is not None:
                return same_content(existing, manifest)
            storage = storage_for(settings)
            store_canonical(storage, converted, manifest)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        try:
            return record_dataset(session, upload, manifest)
        except DatasetConflict:
            remove_unreferenced(session, storage, manifest.sha256)
            raise
    finally:
        part.unlink(missing_ok=True)
        if session.get(DatasetUpload, upload.id) is not None:
            session.delete(upload)
            session.commit()


def upload_format(upload: DatasetUpload) -> SourceFormat | None:
    """The format the client declared (the API admits only SourceFormat's values), or None."""
    return next((f for f in get_args(SourceFormat) if f == upload.source_format), None)


def store_canonical(storage: Storage, folder: Path, manifest: DatasetManifest) -> None:
    """Put the canonical files under their content hash, the manifest last: a stored manifest
    means a complete copy. The same content stored before (by anyone) is put again, harmlessly."""
    for filename in (*ARRAY_FILES, MANIFEST):
        storage.put_file(folder / filename, storage_key(manifest.sha256, filename))


def same_content(existing: Dataset, manifest: DatasetManifest) -> Dataset:
    """The existing data set, when an upload under its name converted to its content (a no-op)."""
    if existing.sha256 == manifest.sha256:
        return existing
    raise DatasetConflict(
        f"data set {existing.name!r} exists with other content; delete it first or choose another name"
    )


def record_dataset(session: Session, upload: DatasetUpload, manifest: DatasetManifest) -> Dataset:
    """The data set row for a converted, stored upload (or the row a concurrent finish of the same
    name committed first, if it holds the same content)."""
    dataset = Dataset(
        owner=upload.owner,
        name=upload.name,
        sha256=manifest.sha256,
        source_sha256=upload.sha256,
        source_bytes=upload.size,
        stored_bytes=sum(stored.bytes for stored in manifest.files.values()),
        manifest=manifest.model_dump(mode="json"),
    )
    session.add(dataset)
    try:
        session.commit()
    except IntegrityError:  # the same name, committed by a concurrent finish
        session.rollback()
        raced = find_dataset(session, upload.owner, upload.name)
        if raced is None:
            raise
        return same_content(raced, manifest)
    return dataset


def expire_uploads(session: Session, settings: Settings) -> int:
    """End unfinished uploads untouched for longer than TSLA_UPLOAD_EXPIRY_SECONDS; returns how many."""
    cutoff = utcnow() - timedelta(seconds=settings.upload_expiry_seconds)
    stale = list(session.scalars(select(DatasetUpload).where(DatasetUpload.updated_at < cutoff)))
    for upload in stale:
        abort_upload(session, settings, upload)
    return len(stale)


# --- deletion --------------------------------------------------------------------------------


def delete_dataset(session: Session, settings: Settings, dataset: Dataset) -> None:
    """Delete the owner's data set; 409 while a queued or running job of the owner trains on it.
    Its stored files go too unless another token's data set holds the same content."""
    users = session.scalars(
        select(Job.id).where(
            Job.owner == dataset.owner, Job.dataset == dataset.name, Job.state.in_(ACTIVE_STATES)
        )
    ).all()
    if users:
        shown = ", ".join(users[:5]) + (" …" if len(users) > 5 else "")
        raise DatasetConflict(
            f"data set {dataset.name!r} is in use by {len(users)} unfinished job(s): {shown}"
        )
    sha256 = dataset.sha256
    session.delete(dataset)
    session.commit()
    remove_unreferenced(session, storage_for(settings), sha256)


def remove_unreferenced(session: Session, storage: Storage, sha256: str) -> None:
    """Delete the stored copy of content no data set (of any token) holds any more."""
    if session.scalar(select(func.count()).select_from(Dataset).where(Dataset.sha256 == sha256)):
        return
    storage.delete(storage_key(sha256, MANIFEST))  # first: a copy without one is no copy
    storage.delete_folder(f"datasets/{sha256}")


# --- sample images ---------------------------------------------------------------------------


def sample_grid(storage: Storage, manifest: DatasetManifest, per_class: int) -> bytes:
    """A PNG of up to `per_class` training images of each class, one row per class in `classes`
    order (the first ones of each class), read from the stored x_train.npy by seeking to each
    image: never the whole array, and it works on object storage as on a local folder."""
    channels, height, width = manifest.shape
    with storage.open(storage_key(manifest.sha256, "y_train.npy")) as handle:
        labels = read_npy(handle)
    picks = [np.flatnonzero(labels == index)[:per_class] for index in range(len(manifest.classes))]
    scale = max(1, 32 // max(height, width))  # tiny images (8x8 digits) are drawn larger
    cell_h, cell_w = height * scale + 2, width * scale + 2
    canvas = np.full((len(picks) * cell_h, per_class * cell_w, 3), 255, dtype=np.uint8)
    with storage.open(storage_key(manifest.sha256, "x_train.npy")) as handle:
        version = np.lib.format.read_magic(handle)
        start = handle.tell() + header_length(handle, version)
        per_image = channels * height * width
        for row, indices in enumerate(picks):
            for column, index in enumerate(indices):
                handle.seek(start + int(index) * per_image)
                image = np.frombuffer(handle.read(per_image), np.uint8).reshape(channels, height, width)
                rgb = np.repeat(image, 3, axis=0) if channels == 1 else image
                big = rgb.transpose(1, 2, 0).repeat(scale, axis=0).repeat(scale, axis=1)
                top, left = row * cell_h + 1, column * cell_w + 1
                canvas[top : top + big.shape[0], left : left + big.shape[1]] = big
    out = io.BytesIO()
    Image.fromarray(canvas, mode="RGB").save(out, format="PNG")
    return out.getvalue()


def read_npy(handle: IO[bytes]) -> np.ndarray:
    array: np.ndarray = np.lib.format.read_array(handle, allow_pickle=False)
    return array


def header_length(handle: IO[bytes], version: tuple[int, int]) -> int:
    """Bytes of the .npy header after the magic string; the handle is left where it was."""
    here = handle.tell()
    if version == (1, 0):
        np.lib.format.read_array_header_1_0(handle)
    else:
        np.lib.format.read_array_header_2_0(handle)
    length = handle.tell() - here
    handle.seek(here)
    return length

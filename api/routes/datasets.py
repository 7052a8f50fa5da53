"""Data sets: the built-in ones, and the caller's uploads (tsla_service/datasets.py), which
arrive through /uploads (api/routes/uploads.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi import Path as PathParam
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import CurrentToken, SessionDep, SettingsDep
from api.schemas import ERROR_RESPONSES, DatasetPublic, Message
from tsla_service import datasets
from tsla_service.datasets import DatasetConflict, UploadRejected
from tsla_service.models import Dataset
from tsla_service.settings import Settings
from tsla_service.storage import storage_for
from tsla_spec.datasets import DATASETS, DatasetInfo

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=ERROR_RESPONSES)

# --- views -----------------------------------------------------------------------------------


def builtin_public(info: DatasetInfo, settings: Settings) -> DatasetPublic:
    problem = info.problem(settings.data_root)
    shape = list(info.image_shape) if info.image_shape is not None else None
    return DatasetPublic(
        name=info.name,
        kind="builtin",
        description=info.description,
        num_classes=info.num_classes,
        available=problem is None,
        problem=problem,
        shape=shape,
        num_train=info.num_train,
        num_test=info.num_test,
    )


def uploaded_public(dataset: Dataset) -> DatasetPublic:
    manifest = datasets.manifest_of(dataset)
    shape = "x".join(map(str, manifest.shape))
    return DatasetPublic(
        name=dataset.name,
        kind="uploaded",
        description=f"uploaded {manifest.source}: {len(manifest.classes)} classes, "
        f"{manifest.num_train:,} train / {manifest.num_test:,} test images of {shape}",
        num_classes=len(manifest.classes),
        available=True,
        problem=None,
        classes=manifest.classes,
        shape=list(manifest.shape),
        num_train=manifest.num_train,
        num_test=manifest.num_test,
        train_counts=manifest.train_counts,
        test_counts=manifest.test_counts,
        sha256=manifest.sha256,
        bytes=dataset.stored_bytes,
        source=manifest.source,
        source_bytes=dataset.source_bytes,
        created_at=dataset.created_at,
        findings=manifest.findings.model_dump(mode="json"),
    )


def rejected(error: UploadRejected | DatasetConflict) -> HTTPException:
    code = error.status if isinstance(error, UploadRejected) else status.HTTP_409_CONFLICT
    return HTTPException(code, str(error))


# --- data sets -------------------------------------------------------------------------------


@router.get("", response_model=list[DatasetPublic])
def list_datasets(session: SessionDep, settings: SettingsDep, token: CurrentToken) -> list[DatasetPublic]:
    """The data sets a job can name: the built-in ones (and whether each is installed on this
    server), then the caller's uploads by name."""
    own = session.scalars(select(Dataset).where(Dataset.owner == token.id).order_by(Dataset.name))
    return [*(builtin_public(info, settings) for info in DATASETS.values()), *map(uploaded_public, own)]


def owned_dataset(session: Session, token_id: str, name: str) -> Dataset:
    dataset = datasets.find_dataset(session, token_id, name)
    if dataset is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"data set {name} not found")
    return dataset


NameParam = Annotated[str, PathParam(min_length=1, max_length=64)]


@router.get("/{name}", response_model=DatasetPublic, responses={404: {"model": Message}})
def get_dataset(
    name: NameParam, session: SessionDep, settings: SettingsDep, token: CurrentToken
) -> DatasetPublic:
    if name in DATASETS:
        return builtin_public(DATASETS[name], settings)
    return uploaded_public(owned_dataset(session, token.id, name))


@router.get(
    "/{name}/samples.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: {"model": Message}},
)
def dataset_samples(
    name: NameParam,
    session: SessionDep,
    settings: SettingsDep,
    token: CurrentToken,
    per_class: Annotated[int, Query(ge=1, le=32, description="images per class (one row each)")] = 8,
) -> Response:
    """A grid of the first training images of each class of an uploaded data set, as a PNG."""
    dataset = owned_dataset(session, token.id, name)
    session.commit()  # the grid is read from storage: hold no database connection meanwhile
    storage = storage_for(settings)
    image = datasets.sample_grid(storage, datasets.manifest_of(dataset), per_class)
    return Response(image, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"model": Message}, 409: {"model": Message, "description": "a job still uses it"}},
)
def delete_dataset(
    name: NameParam, session: SessionDep, settings: SettingsDep, token: CurrentToken
) -> Response:
    """Delete one of the caller's data sets (409 while a queued or running job of theirs uses it)."""
    if name in DATASETS:
        raise HTTPException(status.HTTP_409_CONFLICT, f"{name} is a built-in data set; it cannot be deleted")
    dataset = owned_dataset(session, token.id, name)
    try:
        datasets.delete_dataset(session, settings, dataset)
    except DatasetConflict as error:
        raise rejected(error) from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)

"""Uploaded data sets through the API, on SQLite and PostgreSQL: resumable uploads, the no-op and
conflict rules, refusals that leave nothing behind, isolation, and jobs that pin the content."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.api.conftest import Api

CHUNK = 4096


def digits_npz(classes: int = 10, per_class: int = 20, seed: int = 0, images: Any = None) -> bytes:
    """An .npz of real 8x8 digits (scaled to 0..255): `per_class` train and 5 test images per class."""
    digits = load_digits()
    pixels = (digits.images * (255 / 16)).round().astype(np.uint8)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in range(classes):
        found = rng.permutation(np.flatnonzero(digits.target == label))
        train += list(found[:per_class])
        test += list(found[per_class : per_class + 5])
    arrays = {
        "x_train": pixels[train] if images is None else images,
        "y_train": digits.target[train].astype(np.int64),
        "x_test": pixels[test],
        "y_test": digits.target[test].astype(np.int64),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def start(api: Api, headers: dict[str, str], name: str, data: bytes, **extra: Any) -> Any:
    body = {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), **extra}
    return api.client.post("/uploads", json=body, headers=headers)


def send(api: Api, headers: dict[str, str], upload_id: str, data: bytes, offset: int) -> Any:
    return api.client.patch(
        f"/uploads/{upload_id}",
        content=data[offset : offset + CHUNK],
        headers={**headers, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
    )


def upload(api: Api, headers: dict[str, str], name: str, data: bytes) -> Any:
    """The whole upload, chunk by chunk; the last answer."""
    response = start(api, headers, name, data)
    assert response.status_code in (200, 201), response.text
    if response.json()["dataset"] is not None:
        return response
    upload_id, offset = response.json()["upload"]["id"], 0
    while True:
        response = send(api, headers, upload_id, data, offset)
        if response.status_code != 200 or response.json()["dataset"] is not None:
            return response
        offset = response.json()["upload"]["offset"]


def stored_hashes(api: Api) -> set[str]:
    folder = api.home / "checkpoints" / "datasets"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def leftover_uploads(api: Api) -> list[Path]:
    folder = api.home / "uploads"
    return sorted(folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def tokens(backend_api: Api) -> dict[str, dict[str, str]]:
    return {who: backend_api.as_token(backend_api.new_token(f"data-{who}")) for who in ("alice", "bob")}


def test_an_npz_uploaded_in_chunks_becomes_a_data_set(backend_api: Api, tokens: dict[str, Any]) -> None:
    api, alice = backend_api, tokens["alice"]
    data = digits_npz()
    done = upload(api, alice, "digits-npz", data)
    assert done.status_code == 201, done.text
    dataset = done.json()["dataset"]
    assert dataset["kind"] == "uploaded" and dataset["classes"] == [str(i) for i in range(10)]
    assert (dataset["num_train"], dataset["num_test"], dataset["shape"]) == (200, 50, [1, 8, 8])
    assert dataset["train_counts"] == [20] * 10 and dataset["source"] == "npz"
    assert dataset["sha256"] in stored_hashes(api) and leftover_uploads(api) == []
    stored = api.home / "checkpoints" / "datasets" / dataset["sha256"]
    assert sorted(p.name for p in stored.iterdir()) == sorted(
        ["manifest.json", "x_train.npy", "y_train.npy", "x_test.npy", "y_test.npy"]
    )
    listed = api.client.get("/datasets", headers=alice).json()
    assert [d["name"] for d in listed if d["kind"] == "uploaded"] == ["digits-npz"]
    assert {d["name"] for d in listed if d["kind"] == "builtin"} >= {"digits", "fashion-mnist"}
    shown = api.client.get("/datasets/digits-npz", headers=alice).json()
    assert shown["sha256"] == dataset["sha256"] and shown["findings"]["duplicates"]["count"] == 0


def test_the_same_bytes_again_are_a_no_op_and_other_bytes_a_conflict(
    backend_api: Api, tokens: dict[str, Any]
) -> None:
    api, alice = backend_api, tokens["alice"]
    data = digits_npz(seed=1)
    first = upload(api, alice, "again", data).json()["dataset"]
    again = start(api, alice, "again", data)
    assert again.status_code == 200 and again.json() == {"upload": None, "dataset": first}
    before = stored_hashes(api)
    other = upload(api, alice, "again", digits_npz(seed=2))
    assert other.status_code == 409 and "other content" in other.json()["detail"]
    assert leftover_uploads(api) == [] and api.client.get("/datasets/again", headers=alice).json() == first
    # Other bytes of the same content (the arrays saved compressed) are the same data set: a no-op.
    compressed = io.BytesIO()
    np.savez_compressed(compressed, **dict(np.load(io.BytesIO(data))))
    same = upload(api, alice, "again", compressed.getvalue())
    assert same.status_code == 201 and same.json()["dataset"]["sha256"] == first["sha256"]
    assert stored_hashes(api) - before <= {first["sha256"]}


def test_a_dropped_upload_resumes_from_the_servers_offset(backend_api: Api, tokens: dict[str, Any]) -> None:
    api, alice = backend_api, tokens["alice"]
    data = digits_npz(seed=3)
    begun = start(api, alice, "resumed", data)
    assert begun.status_code == 201
    upload_id = begun.json()["upload"]["id"]
    assert send(api, alice, upload_id, data, 0).json()["upload"]["offset"] == CHUNK
    # The client "drops": a new client asks again for the same bytes and gets the same upload back.
    resumed = start(api, alice, "resumed", data)
    assert resumed.status_code == 200 and resumed.json()["upload"]["id"] == upload_id
    assert resumed.json()["upload"]["offset"] == CHUNK
    assert api.client.get(f"/uploads/{upload_id}", headers=alice).json()["upload"]["offset"] == CHUNK
    stale = send(api, alice, upload_id, data, 0)  # the first chunk sent twice
    assert stale.status_code == 409 and f"offset {CHUNK}" in stale.json()["detail"]
    offset = CHUNK
    while True:
        response = send(api, alice, upload_id, data, offset)
        assert response.status_code in (200, 201), response.text
        if response.json()["dataset"] is not None:
            break
        offset = response.json()["upload"]["offset"]
    assert response.status_code == 201 and leftover_uploads(api) == []
    assert api.client.get(f"/uploads/{upload_id}", headers=alice).status_code == 404


def test_bytes_that_are_not_the_declared_ones_are_refused(backend_api: Api, tokens: dict[str, Any]) -> None:
    api, alice = backend_api, tokens["alice"]
    data = digits_npz(seed=4)
    before = stored_hashes(api)
    body = {"name": "lying", "size": len(data), "sha256": "0" * 64}
    upload_id = api.client.post("/uploads", json=body, headers=alice).json()["upload"]["id"]
    offset, response = 0, None
    while offset < len(data):
        response = send(api, alice, upload_id, data, offset)
        offset += CHUNK
    assert response is not None and response.status_code == 422 and "sha256" in response.json()["detail"]
    assert stored_hashes(api) == before and leftover_uploads(api) == []
    assert api.client.get("/datasets/lying", headers=alice).status_code == 404


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("floats", digits_npz(images=np.zeros((200, 8, 8), np.float32)), "uint8"),
        ("one-class", digits_npz(classes=1), "2 or more"),
        ("not-a-set", b"hello, this is not an archive" * 10, "not a tar, tar.gz, zip or .npz"),
    ],
)
def test_a_refused_upload_leaves_nothing(
    backend_api: Api, tokens: dict[str, Any], name: str, data: bytes, reason: str
) -> None:
    api, alice = backend_api, tokens["alice"]
    before = stored_hashes(api)
    response = upload(api, alice, name, data)
    assert response.status_code == 422, response.text
    assert reason in response.json()["detail"]
    assert stored_hashes(api) == before and leftover_uploads(api) == []
    assert api.client.get(f"/datasets/{name}", headers=alice).status_code == 404


def test_sizes_over_the_caps_are_413(backend_api: Api, tokens: dict[str, Any]) -> None:
    api, alice = backend_api, tokens["alice"]
    huge = {"name": "huge", "size": 2**40, "sha256": "1" * 64}
    assert api.client.post("/uploads", json=huge, headers=alice).status_code == 413
    data = digits_npz(seed=5)
    upload_id = start(api, alice, "overflow", data).json()["upload"]["id"]
    too_much = api.client.patch(
        f"/uploads/{upload_id}",
        content=data + b"extra",
        headers={**alice, "Upload-Offset": "0"},
    )
    assert too_much.status_code == 413
    assert api.client.delete(f"/uploads/{upload_id}", headers=alice).status_code == 204
    assert leftover_uploads(api) == []


@pytest.mark.parametrize("name", ["digits", "Upper", "../x", "a" * 65, "sp ace", "nul\u0000"])
def test_names_that_are_not_a_data_sets_are_422(backend_api: Api, tokens: dict[str, Any], name: str) -> None:
    body = {"name": name, "size": 10, "sha256": "2" * 64}
    response = backend_api.client.post("/uploads", json=body, headers=tokens["alice"])
    assert response.status_code == 422, response.text


def test_another_token_cannot_see_use_or_delete_it(backend_api: Api, tokens: dict[str, Any]) -> None:
    api, alice, bob = backend_api, tokens["alice"], tokens["bob"]
    data = digits_npz(seed=6)
    assert upload(api, alice, "private", data).status_code == 201
    upload_id = start(api, alice, "private-wip", data).json()["upload"]["id"]
    assert api.client.get("/datasets/private", headers=bob).status_code == 404
    assert api.client.delete("/datasets/private", headers=bob).status_code == 404
    assert "private" not in [d["name"] for d in api.client.get("/datasets", headers=bob).json()]
    assert api.client.get(f"/uploads/{upload_id}", headers=bob).status_code == 404
    assert send(api, bob, upload_id, data, 0).status_code == 404
    assert api.client.delete(f"/uploads/{upload_id}", headers=bob).status_code == 404
    job = api.client.post("/jobs", json={"preset": "digits", "data": {"name": "private"}}, headers=bob)
    assert job.status_code == 422 and "no data set named 'private'" in job.json()["detail"]
    assert api.client.get("/datasets/private", headers=alice).status_code == 200


def test_a_job_pins_the_content_and_holds_off_deletion(backend_api: Api, tokens: dict[str, Any]) -> None:
    api, alice = backend_api, tokens["alice"]
    dataset = upload(api, alice, "pinned", digits_npz(seed=7)).json()["dataset"]
    spec = {"preset": "digits", "epochs": 2, "data": {"name": "pinned"}, "smoothing": {"switch_epoch": 1}}
    job = api.client.post("/jobs", json=spec, headers=alice)
    assert job.status_code == 201, job.text
    uploaded = job.json()["spec"]["data"]["uploaded"]
    assert uploaded == {
        "sha256": dataset["sha256"], "shape": [1, 8, 8], "num_train": 200, "num_test": 50, "num_classes": 10
    }  # fmt: skip
    stale = {**spec, "data": {"name": "pinned", "uploaded": {**uploaded, "sha256": "3" * 64}}}
    refused = api.client.post("/jobs", json=stale, headers=alice)
    assert refused.status_code == 422 and "data.uploaded" in refused.json()["detail"]
    too_many = {**spec, "data": {"name": "pinned", "train_subset": 201}}
    refused = api.client.post("/jobs", json=too_many, headers=alice)
    assert refused.status_code == 422 and "train_subset" in refused.json()["detail"]
    busy = api.client.delete("/datasets/pinned", headers=alice)
    assert busy.status_code == 409 and job.json()["id"] in busy.json()["detail"]
    assert api.client.post(f"/jobs/{job.json()['id']}/cancel", headers=alice).status_code == 200
    assert api.client.delete("/datasets/pinned", headers=alice).status_code == 204
    assert dataset["sha256"] not in stored_hashes(api)
    assert api.client.get("/datasets/pinned", headers=alice).status_code == 404


def test_the_sample_grid_shows_each_classes_first_images(backend_api: Api, tokens: dict[str, Any]) -> None:
    from PIL import Image

    api, alice = backend_api, tokens["alice"]
    data = digits_npz(seed=8)
    upload(api, alice, "grid", data)
    response = api.client.get("/datasets/grid/samples.png", params={"per_class": 3}, headers=alice)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    grid = np.asarray(Image.open(io.BytesIO(response.content)))
    scale, cell = 4, 8 * 4 + 2  # 8x8 images drawn 4x, a 1-pixel white margin around each
    assert grid.shape == (10 * cell, 3 * cell, 3)
    arrays = np.load(io.BytesIO(data))
    for label in (0, 7):
        first = arrays["x_train"][arrays["y_train"] == label][1]  # the class's second image
        drawn = grid[
            label * cell + 1 : label * cell + 1 + 8 * scale : scale,
            cell + 1 : cell + 1 + 8 * scale : scale,
            0,
        ]
        assert np.array_equal(drawn, first)
    assert api.client.get("/datasets/grid/samples.png", headers=tokens["bob"]).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"name": "t", "size": "10", "sha256": "4" * 64},  # a string is not a size
        {"name": "t", "size": 10.0, "sha256": "4" * 64},
        {"name": "t", "size": True, "sha256": "4" * 64},
        {"name": "t", "size": 0, "sha256": "4" * 64},
        {"name": "t", "size": 2**63, "sha256": "4" * 64},
        {"name": "t", "size": 10, "sha256": "A" * 64},
        {"name": "t", "size": 10, "sha256": "4" * 63},
        {"name": "t", "size": 10, "sha256": "4" * 64, "image_size": 3},
        {"name": "t", "size": 10, "sha256": "4" * 64, "format": "rar"},
        {"name": "t", "size": 10, "sha256": "4" * 64, "extra": 1},
        {"name": "é", "size": 10, "sha256": "4" * 64},
        {"name": "t\n", "size": 10, "sha256": "4" * 64},
        {"size": 10, "sha256": "4" * 64},
    ],
)
def test_bad_upload_declarations_are_422_and_store_nothing(
    backend_api: Api, tokens: dict[str, Any], body: dict[str, Any]
) -> None:
    api = backend_api
    before = leftover_uploads(api)
    response = api.client.post("/uploads", json=body, headers=tokens["alice"])
    assert response.status_code == 422, response.text
    assert leftover_uploads(api) == before


@pytest.mark.parametrize(
    ("offset", "status"),
    [
        ("-1", 422),
        ("999999", 409),
        ("1", 409),
        ("99999999999999999999", 422),
        ("١".encode().decode("latin-1"), 422),
        ("", 422),
        ("0x0", 422),
    ],
)
def test_bad_offsets_change_nothing(
    backend_api: Api, tokens: dict[str, Any], offset: str, status: int
) -> None:
    api, alice = backend_api, tokens["alice"]
    data = digits_npz(seed=9)
    upload_id = start(api, alice, f"offsets-{abs(hash(offset)) % 10**6}", data).json()["upload"]["id"]
    response = api.client.patch(
        f"/uploads/{upload_id}",
        content=data[:100],
        headers={**alice, "Upload-Offset": offset.encode("latin-1")},
    )
    assert response.status_code == status, response.text
    assert api.client.get(f"/uploads/{upload_id}", headers=alice).json()["upload"]["offset"] == 0
    missing = api.client.patch(f"/uploads/{upload_id}", content=data[:100], headers=alice)
    assert missing.status_code == 422
    assert api.client.delete(f"/uploads/{upload_id}", headers=alice).status_code == 204


def test_concurrent_chunks_at_one_offset_append_once(backend_api: Api, tokens: dict[str, Any]) -> None:
    """Two clients send the first chunk at once: one is appended, the other is a 409, never both."""
    from concurrent.futures import ThreadPoolExecutor

    api, alice = backend_api, tokens["alice"]
    data = digits_npz(seed=10)
    upload_id = start(api, alice, "raced", data).json()["upload"]["id"]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _i: send(api, alice, upload_id, data, 0).status_code, range(4)))
    assert sorted(answers).count(200) == 1 and set(answers) <= {200, 409}, answers
    assert api.client.get(f"/uploads/{upload_id}", headers=alice).json()["upload"]["offset"] == CHUNK
    assert api.client.delete(f"/uploads/{upload_id}", headers=alice).status_code == 204

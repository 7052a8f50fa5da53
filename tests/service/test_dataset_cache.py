"""The worker's dataset cache: fetched once by hash, verified, refetched when damaged, shared by
processes, and never left half-written."""

import hashlib
import json
import logging
import multiprocessing
import os
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tsla_service.dataset_cache import MARKER, DatasetCache, DatasetFetchError, dataset_key, hash_arrays
from tsla_service.storage import Storage
from tsla_spec.uploads import ARRAY_FILES, MANIFEST, DatasetManifest, Findings, StoredFile

FILES = (MANIFEST, *ARRAY_FILES)


class CountingStorage(Storage):
    """A Storage that appends every key it downloads to a log file, which processes share."""

    def __init__(self, url: str, log: Path, delay_s: float = 0.0) -> None:
        super().__init__(url)
        self.log = log
        self.delay_s = delay_s  # widens the window in which a second process could fetch too

    def get_file(self, key: str, local: Path) -> None:
        with self.log.open("a") as log:
            log.write(key + "\n")
        time.sleep(self.delay_s)
        super().get_file(key, local)

    def reads(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def canonical_arrays(seed: int = 0) -> list[np.ndarray]:
    """x_train, y_train, x_test, y_test of a small colour set."""
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, (40, 3, 6, 6), dtype=np.uint8),
        np.arange(40, dtype=np.int64) % 4,
        rng.integers(0, 256, (12, 3, 6, 6), dtype=np.uint8),
        np.arange(12, dtype=np.int64) % 4,
    ]


def write_canonical(folder: Path, arrays: list[np.ndarray]) -> str:
    """The four .npy files and their manifest, as the server's ingestion stores them; the hash."""
    from tsla_core.provenance import arrays_sha256  # the definition the cache must agree with
    from tsla_core.readers import ArraySplit

    folder.mkdir(parents=True)
    for name, array in zip(ARRAY_FILES, arrays, strict=True):
        np.save(folder / name, array)
    x_train, y_train, x_test, y_test = arrays
    sha256 = arrays_sha256([ArraySplit(x_train, y_train), ArraySplit(x_test, y_test)])
    files = {
        name: StoredFile(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        for name in ARRAY_FILES
        for data in [(folder / name).read_bytes()]
    }
    manifest = DatasetManifest(
        sha256=sha256,
        source="npz",
        classes=["a", "b", "c", "d"],
        shape=(3, 6, 6),
        num_train=len(y_train),
        num_test=len(y_test),
        train_counts=np.bincount(y_train).tolist(),
        test_counts=np.bincount(y_test).tolist(),
        mean=[0.5] * 3,
        std=[0.29] * 3,
        files=files,
        findings=Findings(imbalance_ratio=1.0),
    )
    (folder / MANIFEST).write_text(manifest.model_dump_json())
    return sha256


@pytest.fixture
def store(tmp_path: Path) -> tuple[CountingStorage, str]:
    """A local storage holding one data set, and its hash."""
    root = tmp_path / "store"
    staging = tmp_path / "staging"
    sha256 = write_canonical(staging, canonical_arrays())
    (root / "datasets").mkdir(parents=True)
    staging.rename(root / "datasets" / sha256)
    return CountingStorage(str(root), tmp_path / "reads.log"), sha256


def stored(storage: Storage, sha256: str, name: str) -> Path:
    return Path(storage.root) / dataset_key(sha256, name)


def assert_verified_copy(folder: Path, storage: Storage, sha256: str) -> None:
    for name in FILES:
        assert (folder / name).read_bytes() == stored(storage, sha256, name).read_bytes(), name
    assert hash_arrays(folder)[1] == sha256
    assert not list(folder.parent.glob(".tmp-*"))


def flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_content_hash_is_the_cores_arrays_sha256(store: tuple[CountingStorage, str]) -> None:
    storage, sha256 = store
    assert hash_arrays(stored(storage, sha256, MANIFEST).parent)[1] == sha256


def test_an_empty_cache_fetches_and_verifies_then_reads_storage_no_more(
    store: tuple[CountingStorage, str], tmp_path: Path
) -> None:
    storage, sha256 = store
    cache = DatasetCache(storage, tmp_path / "work" / "datasets")
    folder = cache.local(sha256)
    assert folder == tmp_path / "work" / "datasets" / sha256
    assert_verified_copy(folder, storage, sha256)
    assert sorted(storage.reads()) == sorted(dataset_key(sha256, name) for name in FILES)

    assert cache.local(sha256) == folder
    assert DatasetCache(storage, tmp_path / "work" / "datasets").local(sha256) == folder
    assert len(storage.reads()) == len(FILES)


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def damage_flip_with_new_mtime(path: Path) -> None:
    before = path.stat().st_mtime_ns
    flip_byte(path)
    os.utime(path, ns=(before, before + 1_000_000_000))  # whatever the file system's clock resolution


@pytest.mark.parametrize("damage", [damage_truncate, damage_flip_with_new_mtime])
@pytest.mark.parametrize("name", ["x_train.npy", "y_test.npy", MANIFEST])
def test_a_damaged_copy_is_detected_and_fetched_again(
    store: tuple[CountingStorage, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: Any,
    name: str,
) -> None:
    storage, sha256 = store
    cache = DatasetCache(storage, tmp_path / "datasets")
    folder = cache.local(sha256)
    damage(folder / name)
    with caplog.at_level(logging.WARNING, logger="tsla_service.dataset_cache"):
        assert cache.local(sha256) == folder
    assert f"cached data set {sha256} is damaged" in caplog.text
    assert_verified_copy(folder, storage, sha256)
    assert len(storage.reads()) == 2 * len(FILES)


def test_a_rewrite_that_keeps_size_and_mtime_is_trusted_until_the_marker_is_deleted(
    store: tuple[CountingStorage, str], tmp_path: Path
) -> None:
    """The documented trade-off of the `.verified` marker: no re-hashing at every job start."""
    storage, sha256 = store
    cache = DatasetCache(storage, tmp_path / "datasets")
    folder = cache.local(sha256)
    path = folder / "x_test.npy"
    stat = path.stat()
    flip_byte(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    cache.local(sha256)
    assert len(storage.reads()) == len(FILES)

    (folder / MARKER).unlink()
    cache.local(sha256)
    assert len(storage.reads()) == 2 * len(FILES)
    assert_verified_copy(folder, storage, sha256)


def test_an_intact_copy_without_a_marker_is_hashed_not_fetched(
    store: tuple[CountingStorage, str], tmp_path: Path
) -> None:
    storage, sha256 = store
    cache = DatasetCache(storage, tmp_path / "datasets")
    folder = cache.local(sha256)
    (folder / MARKER).write_text("{half-writ")
    assert cache.local(sha256) == folder
    assert len(storage.reads()) == len(FILES)
    assert json.loads((folder / MARKER).read_text())


def corrupt_array(storage: Storage, sha256: str) -> None:
    flip_byte(stored(storage, sha256, "x_train.npy"))


def corrupt_array_and_manifest(storage: Storage, sha256: str) -> None:
    """Damaged data with a manifest that agrees: only the content hash can tell."""
    flip_byte(stored(storage, sha256, "x_train.npy"))
    path = stored(storage, sha256, MANIFEST)
    manifest = json.loads(path.read_text())
    data = stored(storage, sha256, "x_train.npy").read_bytes()
    manifest["files"]["x_train.npy"]["sha256"] = hashlib.sha256(data).hexdigest()
    path.write_text(json.dumps(manifest))


def truncate_stored(storage: Storage, sha256: str) -> None:
    path = stored(storage, sha256, "y_train.npy")
    path.write_bytes(path.read_bytes()[:-8])


def manifest_of_another_set(storage: Storage, sha256: str) -> None:
    path = stored(storage, sha256, MANIFEST)
    path.write_text(json.dumps(json.loads(path.read_text()) | {"sha256": "0" * 64}))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (corrupt_array, "x_train.npy has sha256"),
        (corrupt_array_and_manifest, "content hash"),
        (truncate_stored, "y_train.npy has"),
        (manifest_of_another_set, "describes data set 0000"),
    ],
)
def test_corrupt_data_in_storage_is_refused_and_leaves_nothing(
    store: tuple[CountingStorage, str], tmp_path: Path, damage: Any, reason: str
) -> None:
    storage, sha256 = store
    damage(storage, sha256)
    root = tmp_path / "datasets"
    with pytest.raises(DatasetFetchError, match=f"{sha256} in storage does not verify: .*{reason}"):
        DatasetCache(storage, root).local(sha256)
    assert [path.name for path in root.iterdir()] == [f"{sha256}.lock"]


def test_a_data_set_missing_from_storage_is_named(store: tuple[CountingStorage, str], tmp_path: Path) -> None:
    storage, _ = store
    missing = "ab" * 32
    with pytest.raises(DatasetFetchError, match=f"data set {missing} is not in storage"):
        DatasetCache(storage, tmp_path / "datasets").local(missing)
    assert not list((tmp_path / "datasets").glob(".tmp-*"))


def test_a_missing_array_in_storage_fails_the_download(
    store: tuple[CountingStorage, str], tmp_path: Path
) -> None:
    storage, sha256 = store
    stored(storage, sha256, "y_test.npy").unlink()
    with pytest.raises(DatasetFetchError, match=f"downloading data set {sha256} failed"):
        DatasetCache(storage, tmp_path / "datasets").local(sha256)
    assert [path.name for path in (tmp_path / "datasets").iterdir()] == [f"{sha256}.lock"]


def test_a_name_that_is_not_a_hash_is_refused(store: tuple[CountingStorage, str], tmp_path: Path) -> None:
    storage, _ = store
    with pytest.raises(DatasetFetchError, match="is not a sha256"):
        DatasetCache(storage, tmp_path / "datasets").local("../../etc")


def test_a_temp_folder_left_by_a_dead_fetch_is_cleared(
    store: tuple[CountingStorage, str], tmp_path: Path
) -> None:
    storage, sha256 = store
    leftover = tmp_path / "datasets" / f".tmp-{sha256}-deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "x_train.npy").write_bytes(b"partial")
    DatasetCache(storage, tmp_path / "datasets").local(sha256)
    assert not leftover.exists()


def fetch_in_child(store: str, root: str, sha256: str, log: str, start: Barrier, results: Any) -> None:
    """One worker process's job start: ask the shared cache for the data set."""
    cache = DatasetCache(CountingStorage(store, Path(log), delay_s=0.2), Path(root))
    start.wait(timeout=30)
    try:
        results.put(str(cache.local(sha256)))
    except Exception as exc:
        results.put(f"failed: {exc!r}")


def test_two_processes_starting_together_fetch_once(
    store: tuple[CountingStorage, str], tmp_path: Path
) -> None:
    storage, sha256 = store
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    args = (storage.root, str(tmp_path / "datasets"), sha256, str(storage.log), start, results)
    children = [context.Process(target=fetch_in_child, args=args) for _ in range(2)]
    for child in children:
        child.start()
    folders = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=10)
    assert folders == [str(tmp_path / "datasets" / sha256)] * 2
    assert sorted(storage.reads()) == sorted(dataset_key(sha256, name) for name in FILES)
    assert_verified_copy(Path(folders[0]), storage, sha256)

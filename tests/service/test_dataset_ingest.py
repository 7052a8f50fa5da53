"""The upload checker (tsla_service/dataset_ingest.py) on real archives built in tmp_path.

Images are scikit-learn's digits written as PNGs (and colour JPEGs made from them); every good
upload is read back with numpy and its manifest hash compared with the core's arrays_sha256.
Every refusal asserts its status, that the reason names the problem, and that nothing is left
in tmp_path.
"""

from __future__ import annotations

import hashlib
import io
import stat
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from tsla_service import dataset_ingest
from tsla_service.dataset_ingest import IngestError, IngestLimits, ingest, sniff_format
from tsla_spec.uploads import ARRAY_FILES, MANIFEST, DatasetManifest

ROOT = Path(__file__).resolve().parents[2]
LIMITS = IngestLimits()
WORDS = {0: "zero", 1: "one", 2: "two", 3: "three"}  # sorted: one, three, two, zero

# A member: archive path -> (file bytes, the (C, H, W) pixels it must be stored as).
Members = dict[str, tuple[bytes, np.ndarray]]


@pytest.fixture(scope="module")
def digits() -> dict[int, np.ndarray]:
    """uint8 8x8 digit images by digit, scaled from 0..16 to 0..255."""
    data = load_digits()
    images = (data.images * (255 / 16)).round().astype(np.uint8)
    return {digit: images[data.target == digit] for digit in range(10)}


def encoded(image: Image.Image, image_format: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def grey_members(digits: dict[int, np.ndarray], counts: Mapping[int, tuple[int, int]]) -> Members:
    """train/<word>/NNN.png and test/<word>/NNN.png: counts = {digit: (train, test)}."""
    members: Members = {}
    for digit, (train, test) in counts.items():
        images = digits[digit]
        for i in range(train + test):
            split = "train" if i < train else "test"
            members[f"{split}/{WORDS[digit]}/{i:03d}.png"] = (
                encoded(Image.fromarray(images[i])),
                images[i][None],
            )
    return members


def expected_arrays(members: Members) -> tuple[list[str], dict[str, np.ndarray]]:
    """The ImageFolder reading of `members`: sorted train classes, rows by class then path."""
    classes = sorted({path.split("/")[1] for path in members if path.startswith("train/")})
    arrays = {}
    for split in ("train", "test"):
        rows = sorted((path.split("/")[1], path) for path in members if path.startswith(f"{split}/"))
        arrays[f"x_{split}"] = np.stack([members[path][1] for _, path in rows])
        arrays[f"y_{split}"] = np.array([classes.index(name) for name, _ in rows], dtype=np.int64)
    return classes, arrays


def write_tar(path: Path, files: Mapping[str, bytes], special: list[tarfile.TarInfo] | None = None) -> Path:
    mode = "w:gz" if path.name.endswith(".gz") else "w"
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in special or []:
            tar.addfile(info)
    return path


def tar_bytes(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_zip(path: Path, files: Mapping[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def write_archive(path: Path, files: Mapping[str, bytes]) -> Path:
    return write_zip(path, files) if path.suffix == ".zip" else write_tar(path, files)


def file_bytes(members: Members) -> dict[str, bytes]:
    return {path: data for path, (data, _) in members.items()}


def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir(exist_ok=True)
    return folder


def load_stored(out: Path) -> dict[str, np.ndarray]:
    return {name.removesuffix(".npy"): np.load(out / name, allow_pickle=False) for name in ARRAY_FILES}


def core_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """The hash the core records for these arrays. Imported here: it loads torch, which takes
    seconds and which the refusal tests do not need."""
    from tsla_core.provenance import arrays_sha256
    from tsla_core.readers import ArraySplit

    splits = [
        ArraySplit(arrays["x_train"], arrays["y_train"]),
        ArraySplit(arrays["x_test"], arrays["y_test"]),
    ]
    return arrays_sha256(splits)


def check_stored(
    out: Path, manifest: DatasetManifest, classes: list[str], expected: dict[str, np.ndarray]
) -> None:
    """The stored arrays are `expected`, and the manifest describes them exactly."""
    stored = load_stored(out)
    for name, array in expected.items():
        np.testing.assert_array_equal(stored[name], array, err_msg=name)
        assert stored[name].dtype == (np.uint8 if name.startswith("x") else np.int64)
    assert manifest.sha256 == core_sha256(stored)
    assert DatasetManifest.model_validate_json((out / MANIFEST).read_text()) == manifest
    assert manifest.classes == classes
    assert manifest.shape == stored["x_train"].shape[1:]
    assert (manifest.num_train, manifest.num_test) == (len(stored["y_train"]), len(stored["y_test"]))
    assert manifest.train_counts == np.bincount(stored["y_train"], minlength=len(classes)).tolist()
    assert manifest.test_counts == np.bincount(stored["y_test"], minlength=len(classes)).tolist()
    pixels = stored["x_train"].astype(np.float64) / 255
    assert manifest.mean == pytest.approx(pixels.mean(axis=(0, 2, 3)).tolist(), rel=1e-12)
    assert manifest.std == pytest.approx(pixels.std(axis=(0, 2, 3)).tolist(), rel=1e-12)
    for name in ARRAY_FILES:
        data = (out / name).read_bytes()
        assert manifest.files[name].bytes == len(data)
        assert manifest.files[name].sha256 == hashlib.sha256(data).hexdigest()


def refused(source: Path, tmp_path: Path, limits: IngestLimits = LIMITS, **options: Any) -> IngestError:
    """The IngestError `ingest` raises, after checking it left nothing behind."""
    before = sorted(tmp_path.rglob("*"))
    out = tmp_path / "out"
    with pytest.raises(IngestError) as caught:
        ingest(source, out, limits, **options)
    assert not out.exists()
    assert sorted(tmp_path.rglob("*")) == before, "a refused upload left files behind"
    assert "\n" not in str(caught.value)
    return caught.value


def assert_refused(
    source: Path, tmp_path: Path, status: int, *words: str, limits: IngestLimits = LIMITS, **options: Any
) -> None:
    error = refused(source, tmp_path, limits, **options)
    assert error.status == status, str(error)
    for word in words:
        assert word in str(error), f"{word!r} not in {str(error)!r}"


# ---------------------------------------------------------------------------------------------
# Good uploads


@pytest.mark.parametrize("name", ["data.tar", "data.tar.gz", "data.zip"])
def test_an_image_folder_archive_ingests_to_the_expected_arrays(
    digits: dict[int, np.ndarray], tmp_path: Path, name: str
) -> None:
    members = grey_members(digits, {0: (5, 2), 1: (5, 2), 2: (5, 2)})
    source = write_archive(inputs(tmp_path) / name, file_bytes(members))
    manifest = ingest(source, tmp_path / "out", LIMITS)
    classes, expected = expected_arrays(members)
    assert classes == ["one", "two", "zero"]  # sorted folder names, as ImageFolder labels them
    check_stored(tmp_path / "out", manifest, classes, expected)
    assert manifest.source == name.removeprefix("data.")
    assert manifest.shape == (1, 8, 8)
    assert manifest.train_counts == [5, 5, 5]
    assert manifest.findings.imbalance_ratio == 1.0
    assert manifest.findings.notes == []


def test_the_same_files_give_the_same_hash_in_any_archive_and_as_npz(
    digits: dict[int, np.ndarray], tmp_path: Path
) -> None:
    members = grey_members(digits, {0: (4, 2), 1: (4, 2), 3: (4, 2)})
    files = file_bytes(members)
    tar = write_tar(inputs(tmp_path) / "a.tar", files)
    # The zip lists its members in reverse, under one top-level folder, with folder entries and
    # the litter of macOS: none of it may change the arrays.
    wrapped = {f"mydata/{path}": data for path, data in reversed(files.items())}
    litter = {"mydata/": b"", "mydata/train/": b"", "mydata/.DS_Store": b"x", "__MACOSX/mydata/._a.png": b"x"}
    zipped = write_zip(inputs(tmp_path) / "a.zip", {**litter, **wrapped})
    classes, expected = expected_arrays(members)
    npz = inputs(tmp_path) / "a.npz"
    channels_last = {key: array[:, 0] if key.startswith("x") else array for key, array in expected.items()}
    np.savez(npz, **channels_last, classes=np.array(classes))

    manifests = [ingest(source, tmp_path / source.suffix[1:], LIMITS) for source in (tar, zipped, npz)]
    assert {manifest.sha256 for manifest in manifests} == {core_sha256(expected)}
    for manifest, folder in zip(manifests, ("tar", "zip", "npz"), strict=True):
        check_stored(tmp_path / folder, manifest, classes, expected)


def test_a_grey_npz_gets_int64_labels_and_default_class_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (12, 5, 6), dtype=np.uint8),
        "y_train": np.arange(12, dtype=np.int32) % 3,
        "x_test": rng.integers(0, 256, (4, 5, 6), dtype=np.uint8),
        "y_test": np.array([2, 1, 0, 2], dtype=np.uint8),
    }
    source = inputs(tmp_path) / "d.npz"
    np.savez_compressed(source, **arrays)
    manifest = ingest(source, tmp_path / "out", LIMITS)
    expected = {
        key: array[:, None] if key.startswith("x") else array.astype(np.int64)
        for key, array in arrays.items()
    }
    check_stored(tmp_path / "out", manifest, ["0", "1", "2"], expected)
    assert manifest.source == "npz"
    assert manifest.shape == (1, 5, 6)


def test_a_channels_last_rgb_npz_is_stored_channels_first(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arrays = {
        "x_train": rng.integers(0, 256, (6, 4, 5, 3), dtype=np.uint8),
        "y_train": np.array([0, 1, 0, 1, 0, 1]),
        "x_test": rng.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8),
        "y_test": np.array([1, 0]),
    }
    source = inputs(tmp_path) / "rgb.npz"
    np.savez(source, **arrays, classes=np.array(["cat", "dog"]), extra=np.zeros(3))
    manifest = ingest(source, tmp_path / "out", LIMITS)
    expected = {
        key: array.transpose(0, 3, 1, 2) if key.startswith("x") else array for key, array in arrays.items()
    }
    check_stored(tmp_path / "out", manifest, ["cat", "dog"], expected)
    assert manifest.shape == (3, 4, 5)
    assert manifest.findings.notes == ["ignored arrays not in the layout: extra"]


@pytest.mark.parametrize(("test_side", "image_size"), [(6, None), (8, 4)])
def test_an_npz_with_a_grey_and_an_rgb_split_is_stored_as_rgb(
    tmp_path: Path, test_side: int, image_size: int | None
) -> None:
    rng = np.random.default_rng(3)
    arrays = {
        "x_train": rng.integers(0, 256, (6, 6, 6, 3), dtype=np.uint8),
        "y_train": np.array([0, 1, 0, 1, 0, 1]),
        "x_test": rng.integers(0, 256, (3, test_side, test_side), dtype=np.uint8),
        "y_test": np.array([1, 0, 1]),
    }
    source = inputs(tmp_path) / "mixed.npz"
    np.savez(source, **arrays)
    manifest = ingest(source, tmp_path / "out", LIMITS, image_size=image_size)

    def stored(image: np.ndarray) -> np.ndarray:  # what Pillow makes of one image, as (3, H, W)
        pillow = Image.fromarray(image)
        if image_size is not None:
            pillow = pillow.resize((image_size, image_size), Image.Resampling.BILINEAR)
        pixels = np.asarray(pillow)
        return np.repeat(pixels[None], 3, axis=0) if pixels.ndim == 2 else pixels.transpose(2, 0, 1)

    expected = {
        key: np.stack([stored(image) for image in array]) if key.startswith("x") else array
        for key, array in arrays.items()
    }
    check_stored(tmp_path / "out", manifest, ["0", "1"], expected)
    resized = [f"resized 9 images to {image_size}x{image_size}"] if image_size else []
    assert manifest.findings.notes == [
        "converted grey and RGB to RGB: x_test is grey, copied to 3 channels",
        *resized,
    ]


def test_image_size_resizes_images_of_mixed_sizes(digits: dict[int, np.ndarray], tmp_path: Path) -> None:
    members = grey_members(digits, {0: (3, 1), 1: (3, 1)})
    large = Image.fromarray(digits[2][0]).resize((12, 12))
    members["train/one/big.png"] = (encoded(large), np.asarray(large)[None])
    resized = {}
    for path, (data, _) in members.items():
        small = Image.open(io.BytesIO(data)).resize((6, 6), Image.Resampling.BILINEAR)
        resized[path] = (data, np.asarray(small)[None])
    source = write_zip(inputs(tmp_path) / "mixed.zip", file_bytes(members))
    manifest = ingest(source, tmp_path / "out", LIMITS, image_size=6)
    classes, expected = expected_arrays(resized)
    check_stored(tmp_path / "out", manifest, classes, expected)
    assert manifest.shape == (1, 6, 6)
    assert manifest.findings.notes == ["resized 9 images to 6x6"]


def test_colour_images_make_an_rgb_set_with_grey_copied_to_three_channels(
    digits: dict[int, np.ndarray], tmp_path: Path
) -> None:
    members = grey_members(digits, {0: (3, 1)})
    for i in range(4):
        digit = digits[1][i].astype(np.int16)
        rgb = np.stack([digit, 255 - digit, digit // 2], axis=-1).astype(np.uint8)
        jpeg = encoded(Image.fromarray(rgb), "JPEG", quality=95)
        decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).transpose(2, 0, 1)
        members[f"{'train' if i < 3 else 'test'}/one/{i:03d}.jpg"] = (jpeg, decoded)
        alpha = np.full((8, 8, 1), 40 * i, dtype=np.uint8)  # dropped, as torchvision's loader does
        rgba = encoded(Image.fromarray(np.concatenate([rgb, alpha], axis=-1), "RGBA"))
        members[f"{'train' if i < 3 else 'test'}/two/{i:03d}.png"] = (rgba, rgb.transpose(2, 0, 1))
    grey_as_rgb = {
        path: (data, np.repeat(pixels, 3, axis=0) if pixels.shape[0] == 1 else pixels)
        for path, (data, pixels) in members.items()
    }
    source = write_tar(inputs(tmp_path) / "colour.tar", file_bytes(members))
    manifest = ingest(source, tmp_path / "out", LIMITS)
    classes, expected = expected_arrays(grey_as_rgb)
    check_stored(tmp_path / "out", manifest, classes, expected)
    assert manifest.shape == (3, 8, 8)
    assert manifest.findings.notes == [
        "converted grey and RGB to RGB: 4 of 12 images are grey, copied to 3 channels",
        "converted images of other modes (4 RGBA) to RGB",
    ]


def test_other_grey_modes_are_stored_as_grey(digits: dict[int, np.ndarray], tmp_path: Path) -> None:
    members = grey_members(digits, {0: (2, 1), 1: (2, 1)})
    digit = digits[2][0]
    sixteen = Image.fromarray(digit.astype(np.uint16) * 257)  # 16-bit grey: I;16, scaled to 8 bits
    with_alpha = Image.fromarray(np.stack([digit, np.full_like(digit, 7)], axis=-1), "LA")
    palette = Image.fromarray(digit).convert("P")  # a grey palette: still a grey image
    for name, image in [("sixteen", sixteen), ("alpha", with_alpha), ("palette", palette)]:
        members[f"train/two/{name}.png"] = (encoded(image), digit[None])
    members["test/two/000.png"] = (encoded(Image.fromarray(digit)), digit[None])
    source = write_zip(inputs(tmp_path) / "modes.zip", file_bytes(members))
    manifest = ingest(source, tmp_path / "out", LIMITS)
    classes, expected = expected_arrays(members)
    check_stored(tmp_path / "out", manifest, classes, expected)
    assert manifest.shape == (1, 8, 8)
    assert manifest.findings.notes == ["converted images of other modes (1 I;16, 1 LA, 1 P) to L"]


def test_an_existing_empty_out_dir_is_filled_and_a_full_one_refused(
    digits: dict[int, np.ndarray], tmp_path: Path
) -> None:
    source = write_tar(inputs(tmp_path) / "d.tar", file_bytes(grey_members(digits, {0: (2, 1), 1: (2, 1)})))
    out = tmp_path / "out"
    out.mkdir()
    ingest(source, out, LIMITS)
    assert sorted(path.name for path in out.iterdir()) == sorted([*ARRAY_FILES, MANIFEST])
    with pytest.raises(FileExistsError):
        ingest(source, out, LIMITS)


def test_sniff_format_goes_by_the_first_bytes(digits: dict[int, np.ndarray], tmp_path: Path) -> None:
    files = file_bytes(grey_members(digits, {0: (1, 1), 1: (1, 1)}))
    folder = inputs(tmp_path)
    np.savez(folder / "a.npz", x=np.zeros(2))
    write_tar(folder / "gz.bin", files)  # a plain tar, whatever its name
    write_tar(folder / "tgz.tar.gz", files)
    write_zip(folder / "z.tar", files)
    assert sniff_format(folder / "a.npz") == "npz"
    assert sniff_format(folder / "gz.bin") == "tar"
    assert sniff_format(folder / "tgz.tar.gz") == "tar.gz"
    assert sniff_format(folder / "z.tar") == "zip"
    (folder / "x.png").write_bytes(encoded(Image.fromarray(digits[0][0])))
    assert_refused(folder / "x.png", tmp_path, 422, "not a tar, tar.gz, zip or .npz")
    assert_refused(folder / "z.tar", tmp_path, 422, "declared tar", "zip", source_format="tar")


def test_the_module_loads_no_torch() -> None:
    """It runs in the API process (tests/test_architecture.py): it computes the core's hash itself."""
    probe = (
        "import sys, tsla_service.dataset_ingest; print(sorted({'torch', 'tsla_core'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# Findings: reported, not refused


def test_an_imbalanced_set_reports_its_ratio_and_small_classes(
    digits: dict[int, np.ndarray], tmp_path: Path
) -> None:
    source = write_zip(
        inputs(tmp_path) / "d.zip", file_bytes(grey_members(digits, {0: (8, 1), 1: (8, 1), 2: (2, 1)}))
    )
    findings = ingest(source, tmp_path / "out", LIMITS).findings
    assert findings.imbalance_ratio == 4.0  # 8 / 2
    assert findings.small_classes == ["two"]  # 2 < half the mean of 6


def test_test_images_that_occur_in_train_are_reported(digits: dict[int, np.ndarray], tmp_path: Path) -> None:
    members = grey_members(digits, {0: (3, 1), 1: (3, 1)})
    members["test/one/copy.png"] = members["train/one/002.png"]
    members["test/zero/copy.png"] = members["train/zero/001.png"]
    source = write_tar(inputs(tmp_path) / "d.tar", file_bytes(members))
    findings = ingest(source, tmp_path / "out", LIMITS).findings
    # Rows follow class "one" then "zero", then path: train one/000..002 are 0-2, zero/000..002 are
    # 3-5; test one/003, one/copy, zero/003, zero/copy are 0-3.
    assert findings.duplicates.count == 2
    assert findings.duplicates.examples == [(2, 1), (4, 3)]


# ---------------------------------------------------------------------------------------------
# Refusals: limits


def test_an_upload_over_the_size_cap_is_refused(digits: dict[int, np.ndarray], tmp_path: Path) -> None:
    source = write_tar(inputs(tmp_path) / "d.tar", file_bytes(grey_members(digits, {0: (1, 1), 1: (1, 1)})))
    limits = IngestLimits(max_upload_bytes=source.stat().st_size - 1)
    assert_refused(source, tmp_path, 413, f"over the limit of {limits.max_upload_bytes}", limits=limits)


def test_more_members_than_allowed_are_refused(digits: dict[int, np.ndarray], tmp_path: Path) -> None:
    source = write_zip(inputs(tmp_path) / "d.zip", file_bytes(grey_members(digits, {0: (2, 1), 1: (2, 1)})))
    assert_refused(source, tmp_path, 413, "more than 5 members", limits=IngestLimits(max_files=5))


ZEROS = bytes(4 * 2**20)  # 4 MiB that deflate to about 4 KiB


@pytest.mark.parametrize(
    ("name", "limits", "words"),
    [
        ("bomb.zip", LIMITS, ["times its size", "decompression bomb"]),
        ("bomb.tar.gz", LIMITS, ["times its size", "decompression bomb"]),
        (
            "bomb.zip",
            IngestLimits(max_expanded_bytes=2**20, max_ratio=1e9),
            ["more than the limit of 1048576"],
        ),
    ],
)
def test_a_decompression_bomb_is_refused_from_its_headers(
    digits: dict[int, np.ndarray], tmp_path: Path, name: str, limits: IngestLimits, words: list[str]
) -> None:
    files = {**file_bytes(grey_members(digits, {0: (1, 1), 1: (1, 1)})), "train/one/bomb.png": ZEROS}
    source = write_archive(inputs(tmp_path) / name, files)
    assert_refused(source, tmp_path, 413, "headers declare", *words, limits=limits)


def test_an_npz_bomb_is_refused_from_its_headers(tmp_path: Path) -> None:
    source = inputs(tmp_path) / "bomb.npz"
    zeros = np.zeros((1024, 64, 64), dtype=np.uint8)
    np.savez_compressed(
        source, x_train=zeros, y_train=np.zeros(1024, dtype=np.int64), x_test=zeros[:1], y_test=[0]
    )
    assert_refused(source, tmp_path, 413, "headers declare", "decompression bomb")


def write_pax_tar(path: Path, files: Mapping[str, bytes], comment_bytes: int) -> Path:
    """A .tar.gz whose members each carry a pax header with a comment of that many digits."""
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.pax_headers = {"comment": "0" * comment_bytes}
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_pax_header_too_large_for_names_and_times_is_refused(
    digits: dict[int, np.ndarray], tmp_path: Path
) -> None:
    files = file_bytes(grey_members(digits, {0: (1, 1), 1: (1, 1)}))
    source = write_pax_tar(inputs(tmp_path) / "pax.tar.gz", files, comment_bytes=2 * 2**20)
    assert_refused(source, tmp_path, 413, "tar extended header (pax or GNU) of 2097", "1048576")


def test_pax_headers_count_towards_the_expansion_limit(digits: dict[int, np.ndarray], tmp_path: Path) -> None:
    """No member header declares them: they are counted as they are decompressed."""
    files = file_bytes(grey_members(digits, {0: (2, 1), 1: (2, 1)}))
    source = write_pax_tar(inputs(tmp_path) / "pax.tar.gz", files, comment_bytes=2**19)
    assert_refused(source, tmp_path, 413, "while reading a tar extended header", "decompression bomb")


@pytest.mark.timeout(30)
def test_pax_headers_are_read_in_linear_time(digits: dict[int, np.ndarray], tmp_path: Path) -> None:
    """CPython 3.11.7's tarfile takes minutes over each of these headers (CVE-2024-6232)."""
    members = grey_members(digits, {0: (2, 1), 1: (2, 1)})
    source = write_pax_tar(inputs(tmp_path) / "pax.tar.gz", file_bytes(members), comment_bytes=2**19)
    manifest = ingest(source, tmp_path / "out", IngestLimits(max_ratio=1e6))
    check_stored(tmp_path / "out", manifest, *expected_arrays(members))


@pytest.mark.parametrize("tar_format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_and_non_ascii_names_are_read_in_every_tar_format(
    digits: dict[int, np.ndarray], tmp_path: Path, tar_format: int
) -> None:
    """ustar splits a long path into prefix and name, GNU adds a long-name member, pax a record."""
    long_class = "très-" + "long" * 30  # with train/ and the file name, over 100 bytes: a header's name field
    members = {
        path.replace("/one/", f"/{long_class}/"): member
        for path, member in grey_members(digits, {0: (2, 1), 1: (2, 1)}).items()
    }
    source = inputs(tmp_path) / "long.tar"
    with tarfile.open(source, "w", format=tar_format) as tar:
        for name, data in file_bytes(members).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    manifest = ingest(source, tmp_path / "out", LIMITS)
    classes, expected = expected_arrays(members)
    assert classes == [long_class, "zero"]
    check_stored(tmp_path / "out", manifest, classes, expected)


def test_a_tar_header_with_a_wrong_checksum_is_refused(digits: dict[int, np.ndarray], tmp_path: Path) -> None:
    data = bytearray(tar_bytes(file_bytes(grey_members(digits, {0: (1, 1), 1: (1, 1)}))))
    data[0] = ord("T")  # "train/..." -> "Train/...", the checksum unchanged
    source = inputs(tmp_path) / "sum.tar"
    source.write_bytes(bytes(data))
    assert_refused(source, tmp_path, 422, "corrupt", "checksum")


def test_a_zip_member_longer_than_its_header_says_is_refused(
    digits: dict[int, np.ndarray], tmp_path: Path
) -> None:
    files = {**file_bytes(grey_members(digits, {0: (1, 1), 1: (1, 1)})), "train/one/liar.png": bytes(100_000)}
    source = write_zip(inputs(tmp_path) / "liar.zip", files)
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        info = archive.getinfo("train/one/liar.png")
    central = data.index(b"PK\x01\x02")
    while data[central + 46 : central + 46 + len(info.filename)] != info.filename.encode():
        central = data.index(b"PK\x01\x02", central + 4)
    data[info.header_offset + 22 : info.header_offset + 26] = (100).to_bytes(4, "little")  # local header
    data[central + 24 : central + 28] = (100).to_bytes(4, "little")  # central directory
    source.write_bytes(bytes(data))
    assert_refused(source, tmp_path, 422, "truncated or corrupt", "CRC")


def test_a_member_too_large_for_any_allowed_image_is_refused(
    digits: dict[int, np.ndarray], tmp_path: Path
) -> None:
    noise = np.random.default_rng(0).bytes(2**20 + 2000)  # over 16 * 8 * 8 + 1 MiB
    files = {**file_bytes(grey_members(digits, {0: (1, 1), 1: (1, 1)})), "train/one/huge.png": noise}
    source = write_zip(inputs(tmp_path) / "huge.zip", files, zipfile.ZIP_STORED)
    assert_refused(
        source, tmp_path, 413, "'train/one/huge.png'", "8x8", limits=IngestLimits(max_image_side=8)
    )


# ---------------------------------------------------------------------------------------------
# Refusals: hostile or broken archives


@pytest.mark.parametrize("suffix", [".tar", ".zip"])
@pytest.mark.parametrize(
    ("member", "problem"),
    [
        ("../evil.png", "'..'"),
        ("train/one/../../evil.png", "'..'"),
        ("/etc/x.png", "absolute path"),
        ("train\\one\\x.png", "backslash"),
        ("C:/train/one/x.png", "drive letter"),
        ("train/one/x\n.png", "unprintable"),
    ],
)
def test_member_paths_that_escape_the_archive_are_refused(
    digits: dict[int, np.ndarray], tmp_path: Path, suffix: str, member: str, problem: str
) -> None:
    files = file_bytes(grey_members(digits, {0: (1, 1), 1: (1, 1)}))
    source = write_archive(inputs(tmp_path) / f"slip{suffix}", {**files, member: files["train/one/000.png"]})
    assert_refused(source, tmp_path, 422, repr(member), problem)


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        (tarfile.SYMTYPE, "is a symbolic link"),
        (tarfile.LNKTYPE, "is a hard link"),
        (tarfile.CHRTYPE, "is a device"),
        (tarfile.BLKTYPE, "is a device"),
        (tarfile.FIFOTYPE, "is a FIFO"),
    ],
)
def test_tar_links_devices_and_fifos_are_refused(
    digits: dict[int, np.ndarray], tmp_path: Path, kind: bytes, words: str
) -> None:
    link = tarfile.TarInfo("train/one/link.png")
    link.type = kind
    link.linkname = "train/one/000.png"
    files = file_bytes(grey_members(digits, {0: (1, 1), 1: (1, 1)}))
    source = write_tar(inputs(tmp_path) / "links.tar", files, special=[link])
    assert_refused(source, tmp_path, 422, "'train/one/link.png'", words)


def test_a_zip_symlink_is_refused(digits: dict[int, np.ndarray], tmp_path: Path) -> None:
    source = write_zip(
        inputs(tmp_path) / "link.zip", file_bytes(grey_members(digits, {0: (1, 1), 1: (1, 1)}))
    )
    link = zipfile.ZipInfo("train/one/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(source, "a") as archive:
        archive.writestr(link, "/etc/passwd")
    assert_refused(source, tmp_path, 422, "'train/one/link.png'", "symbolic link")


@pytest.mark.parametrize("name", ["cut.tar", "cut.tar.gz", "cut.zip", "cut.npz"])
def test_a_truncated_upload_is_refused(digits: dict[int, np.ndarray], tmp_path: Path, name: str) -> None:
    source = inputs(tmp_path) / name
    if name.endswith(".npz"):
        np.savez(source, x_train=digits[0][:4], y_train=[0, 1, 0, 1], x_test=digits[0][:2], y_test=[0, 1])
    else:
        write_archive(source, file_bytes(grey_members(digits, {0: (3, 1), 1: (3, 1)})))
    source.write_bytes(source.read_bytes()[: source.stat().st_size * 6 // 10])
    assert_refused(source, tmp_path, 422, "truncated")


def test_a_tar_cut_between_members_is_refused(digits: dict[int, np.ndarray], tmp_path: Path) -> None:
    """tarfile itself reads such a stream as a complete, shorter archive."""
    data = tar_bytes(file_bytes(grey_members(digits, {0: (2, 1), 1: (2, 1)})))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    end_of_last = last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    source = inputs(tmp_path) / "cut.tar"
    source.write_bytes(data[:end_of_last])
    assert_refused(source, tmp_path, 422, "truncated", "end-of-archive")


def test_a_member_named_twice_is_refused(digits: dict[int, np.ndarray], tmp_path: Path) -> None:
    files = file_bytes(grey_members(digits, {0: (1, 1), 1: (1, 1)}))
    twice = {**files, "./train/one/000.png": files["train/zero/000.png"]}  # the same path once normalised
    source = write_tar(inputs(tmp_path) / "twice.tar", twice)
    assert_refused(source, tmp_path, 422, "'train/one/000.png' appears twice")


# ---------------------------------------------------------------------------------------------
# Refusals: the ImageFolder tree


def noise_png(side: int) -> bytes:
    return encoded(Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)))


@pytest.mark.parametrize(
    ("member", "data"),
    [
        ("train/one/notes.txt", b"not an image at all"),
        (
            "train/one/cut.png",
            noise_png(8)[: len(noise_png(8)) // 2],
        ),  # its header reads, its pixels are cut off
    ],
)
def test_a_file_in_a_class_folder_that_is_not_an_image_is_refused(
    digits: dict[int, np.ndarray], tmp_path: Path, member: str, data: bytes
) -> None:
    files = file_bytes(grey_members(digits, {0: (1, 1), 1: (1, 1)}))
    source = write_zip(inputs(tmp_path) / "bad.zip", {**files, member: data})
    assert_refused(source, tmp_path, 422, repr(member), "not a decodable image")


def test_a_single_class_is_refused(digits: dict[int, np.ndarray], tmp_path: Path) -> None:
    source = write_tar(inputs(tmp_path) / "one.tar", file_bytes(grey_members(digits, {0: (3, 1)})))
    assert_refused(source, tmp_path, 422, "1 class folder ['zero']", "2 or more")


def test_a_test_class_without_a_train_folder_is_refused(
    digits: dict[int, np.ndarray], tmp_path: Path
) -> None:
    members = grey_members(digits, {0: (2, 1), 1: (2, 1), 2: (0, 1)})
    source = write_tar(inputs(tmp_path) / "d.tar", file_bytes(members))
    assert_refused(source, tmp_path, 422, "test classes ['two'] have no folder under train/")


def test_a_split_without_images_is_refused(digits: dict[int, np.ndarray], tmp_path: Path) -> None:
    source = write_tar(inputs(tmp_path) / "d.tar", file_bytes(grey_members(digits, {0: (2, 0), 1: (2, 0)})))
    assert_refused(source, tmp_path, 422, "the test split has no images")


@pytest.mark.parametrize("member", ["README.md", "train/x.png", "val/one/x.png"])
def test_files_outside_the_class_folders_are_refused(
    digits: dict[int, np.ndarray], tmp_path: Path, member: str
) -> None:
    files = file_bytes(grey_members(digits, {0: (1, 1), 1: (1, 1)}))
    source = write_zip(inputs(tmp_path) / "d.zip", {**files, member: files["train/one/000.png"]})
    assert_refused(source, tmp_path, 422, repr(member))


def test_mixed_sizes_without_image_size_are_refused(digits: dict[int, np.ndarray], tmp_path: Path) -> None:
    files = file_bytes(grey_members(digits, {0: (2, 1), 1: (2, 1)}))
    files["train/one/big.png"] = encoded(Image.fromarray(digits[1][5]).resize((12, 12)))
    source = write_zip(inputs(tmp_path) / "d.zip", files)
    assert_refused(source, tmp_path, 422, "2 sizes", "8x8 (6 images", "12x12 (1 images", "pass image_size")


def test_an_image_side_over_the_limit_is_refused(digits: dict[int, np.ndarray], tmp_path: Path) -> None:
    source = write_tar(inputs(tmp_path) / "d.tar", file_bytes(grey_members(digits, {0: (1, 1), 1: (1, 1)})))
    assert_refused(
        source, tmp_path, 422, "is 8x8", "largest side accepted is 6", limits=IngestLimits(max_image_side=6)
    )


def test_an_image_size_outside_the_limits_is_a_bad_request(
    digits: dict[int, np.ndarray], tmp_path: Path
) -> None:
    source = write_tar(inputs(tmp_path) / "d.tar", file_bytes(grey_members(digits, {0: (1, 1), 1: (1, 1)})))
    assert_refused(source, tmp_path, 400, "image_size must be 1 .. 1024", image_size=2000)


# ---------------------------------------------------------------------------------------------
# Refusals: .npz contents


def good_npz() -> dict[str, Any]:
    rng = np.random.default_rng(2)
    return {
        "x_train": rng.integers(0, 256, (6, 4, 4), dtype=np.uint8),
        "y_train": np.array([0, 1, 2, 0, 1, 2]),
        "x_test": rng.integers(0, 256, (3, 4, 4), dtype=np.uint8),
        "y_test": np.array([2, 1, 0]),
    }


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"x_test": None}, ["no array 'x_test'"]),
        ({"x_train": np.zeros((6, 4, 4), dtype=np.float32)}, ["x_train must hold uint8", "float32"]),
        ({"x_train": np.zeros((6, 16), dtype=np.uint8)}, ["x_train has shape (6, 16)"]),
        (
            {"x_train": np.zeros((6, 3, 4, 4), dtype=np.uint8)},
            ["x_train has shape (6, 3, 4, 4)", "transpose"],
        ),
        ({"x_train": np.asfortranarray(np.zeros((6, 4, 4), dtype=np.uint8))}, ["Fortran order"]),
        ({"y_train": np.array([0.0, 1, 2, 0, 1, 2])}, ["y_train must hold integer labels", "float64"]),
        ({"y_train": np.array([[0, 1, 2, 0, 1, 2]])}, ["y_train has shape (1, 6)"]),
        ({"y_test": np.array([2, 1, -1])}, ["y_test has labels -1 .. 2, out of range"]),
        ({"classes": np.array(["a", "b"])}, ["y_train has labels 0 .. 2, out of range", "0 .. 1"]),
        ({"classes": np.array(["a", "b", "c", "d"])}, ["class 'd' (label 3) has no train images"]),
        ({"classes": np.array(["a", "b", "a"])}, ["names 'a' twice"]),
        ({"classes": np.array(["a", "b", "c"], dtype=object)}, ["classes is an object array"]),
        ({"classes": np.array([0, 1, 2])}, ["classes must be a one-dimensional array of strings"]),
        ({"y_train": np.array([0, 1, 2, 0, 1])}, ["x_train has 6 images but y_train has 5 labels"]),
        ({"x_test": np.zeros((0, 4, 4), np.uint8), "y_test": np.zeros(0, int)}, ["test split has no images"]),
        ({"y_train": np.zeros(6, int), "y_test": np.zeros(3, int)}, ["1 class ['0']", "2 or more"]),
        ({"x_test": np.zeros((3, 5, 5), dtype=np.uint8)}, ["4x4 but x_test's are 5x5", "image_size"]),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else None,
)
def test_an_npz_with_bad_arrays_is_refused(tmp_path: Path, change: dict[str, Any], words: list[str]) -> None:
    arrays = {key: value for key, value in {**good_npz(), **change}.items() if value is not None}
    source = inputs(tmp_path) / "bad.npz"
    np.savez(source, **arrays)
    assert_refused(source, tmp_path, 422, *words)


def test_a_good_npz_of_the_refusal_tests_ingests(tmp_path: Path) -> None:
    """The refusals above each change one array of this one, which passes."""
    source = inputs(tmp_path) / "good.npz"
    np.savez(source, **good_npz(), classes=np.array(["a", "b", "c"]))
    assert ingest(source, tmp_path / "out", LIMITS).classes == ["a", "b", "c"]


def test_duplicates_match_whole_digests_and_name_the_first_train_row() -> None:
    """Train's digests are kept as one sorted array of 32-byte values (no object per image). A
    digest that ends in NUL bytes must still match exactly (numpy reads "S32" items back without
    them), and a test image found in train several times names train's first row."""
    rng = np.random.default_rng(0)
    candidates = rng.integers(0, 256, (4000, 1, 2, 2), dtype=np.uint8)
    nul_ended = [i for i, image in enumerate(candidates) if hashlib.sha256(image.data).digest()[-1] == 0]
    assert len(nul_ended) >= 2, "4,000 random images should hold two whose digest ends in a NUL"
    a, b = candidates[nul_ended[0]], candidates[nul_ended[1]]
    others = candidates[[i for i in range(40) if i not in nul_ended]]
    train = np.concatenate([others[:5], a[None], others[5:10], a[None], b[None], others[10:20]])
    test = np.concatenate([others[30:32], a[None], others[32:34], b[None], others[3:4]])
    found = dataset_ingest._duplicates(train, test)
    assert found.count == 3
    assert found.examples == [(5, 2), (12, 5), (3, 6)]
    assert dataset_ingest._duplicates(train, others[30:35]).count == 0

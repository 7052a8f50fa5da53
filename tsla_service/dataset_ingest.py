"""Check an uploaded classification data set and convert it into the canonical layout.

An upload is an ImageFolder archive (.tar, .tar.gz, .zip) or an .npz; what comes out is always
the layout of tsla_spec/uploads.py: four plain .npy arrays and a manifest.json whose sha256 is the
hash the core records for the same arrays (tsla_core.provenance.arrays_sha256). Uploads are
untrusted, so the limits are checked on the headers before anything is decompressed and enforced
again on the bytes really read; members are read one at a time into memory, never extracted to
disk; and a refusal is an IngestError that says what to fix, with nothing left behind.

This runs in the API process, so it never imports torch or the core (tests/test_architecture.py):
Pillow decodes, converts and resizes images, numpy writes the arrays into preallocated .npy files
(_RowFile: seek + write, never a memory map) and reads .npz members a chunk at a time through its
own header reader, so no array is ever held whole in memory.

ImageFolder rules:
- Members are `train/<class>/<image>` and `test/<class>/<image>`, optionally all under one
  top-level folder (`mydata/train/...`); an image may sit in subfolders of its class folder, as
  torchvision's ImageFolder allows. `__MACOSX/` and every path through a dot-file or dot-folder
  (`.DS_Store`, `._x.png`) are ignored, and so are folder entries (archives may or may not have
  them): a class is a folder under train/ that holds a file.
- Classes are the sorted names of train's class folders (ImageFolder's rule); a label is an index
  into them. Images are ordered by class, then path, so the same files give the same arrays and
  hash whatever the archive's format or member order.
- Modes: grey images ("1", "L", "LA", "F", 16/32-bit "I;16"/"I" scaled by 1/256, and "P"/"PA"
  whose palette is all grey) become L; all others (RGB, RGBA, CMYK, YCbCr, colour palettes)
  become RGB. Alpha is dropped, as torchvision's loader does. A set holding any colour image is
  stored as RGB, its grey images copied to all three channels.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import math
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Container, Generator, Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
from numpy.lib import format as npy_format
from PIL import Image, UnidentifiedImageError

from tsla_spec.uploads import (
    ARRAY_FILES,
    MANIFEST,
    DatasetManifest,
    DuplicateFindings,
    Findings,
    SourceFormat,
    StoredFile,
)

BAD_REQUEST, TOO_LARGE, UNPROCESSABLE = 400, 413, 422

_SPLITS = ("train", "test")
_CHUNK_BYTES = 1 << 20  # members and arrays are read this much at a time
# Pillow's decoders for torchvision's IMG_EXTENSIONS; no other decoder sees untrusted bytes.
_IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "PPM", "TIFF")
_MAX_DUPLICATE_EXAMPLES = 10


@dataclass(frozen=True)
class IngestLimits:
    """What one upload may cost the server."""

    max_upload_bytes: int = 2 * 1024**3  # the archive or .npz as uploaded
    max_files: int = 200_000  # archive members
    max_expanded_bytes: int = 8 * 1024**3  # sum of member sizes after decompression
    max_ratio: float = 200.0  # expanded / uploaded: more is a decompression bomb
    max_image_side: int = 1024


class IngestError(Exception):
    """An upload refused: `status` is the HTTP status (400, 413, 422), str() a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# The two public entry points


def sniff_format(path: Path) -> SourceFormat:
    """The upload's format by its first bytes, never its name: a zip of .npy files is an .npz."""
    with path.open("rb") as file:
        head = file.read(262)
    if head.startswith(b"PK\x03\x04"):
        return "npz" if _zip_holds_arrays(path) else "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head[257:262] == b"ustar":
        return "tar"
    raise IngestError(UNPROCESSABLE, "the upload is not a tar, tar.gz, zip or .npz file (by its first bytes)")


def ingest(
    source: Path,
    out_dir: Path,
    limits: IngestLimits,
    image_size: int | None = None,
    source_format: SourceFormat | None = None,
) -> DatasetManifest:
    """Check `source` and write the canonical data set into `out_dir` (which must not exist or be empty).

    Everything is written into a hidden sibling folder that is renamed into place at the end, so
    out_dir appears complete or not at all; on a refusal (IngestError) or any other error (a full
    disk) the sibling is removed and nothing is left behind. `image_size` resizes every image to a
    square of that side; `source_format`, when given, must match what the bytes say.
    """
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    if image_size is not None and not 1 <= image_size <= limits.max_image_side:
        raise IngestError(BAD_REQUEST, f"image_size must be 1 .. {limits.max_image_side}, not {image_size}")
    size = source.stat().st_size
    if size > limits.max_upload_bytes:
        raise IngestError(
            TOO_LARGE, f"the upload is {size} bytes, over the limit of {limits.max_upload_bytes}"
        )
    detected = sniff_format(source)
    if source_format is not None and source_format != detected:
        raise IngestError(
            UNPROCESSABLE, f"the upload was declared {source_format} but its bytes are {detected}"
        )
    upload = _Upload(source, detected, size, limits, image_size)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        staging.chmod(0o755)  # mkdtemp's folder is private; workers read the data set
        converted = (
            _convert_npz(upload, staging) if detected == "npz" else _convert_image_folder(upload, staging)
        )
        manifest = _summarize(staging, detected, converted)
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
        os.replace(staging, out_dir)  # atomic; it replaces an empty out_dir too
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


@dataclass(frozen=True)
class _Upload:
    path: Path
    source_format: SourceFormat
    size: int  # bytes as uploaded
    limits: IngestLimits
    image_size: int | None


@dataclass(frozen=True)
class _Converted:
    """What a converter knows beyond the arrays it wrote into the staging folder."""

    classes: list[str]
    notes: list[str]


# ---------------------------------------------------------------------------------------------
# Decompression limits: declared by the headers, then counted on the bytes read


def _check_declared_expansion(declared: int, upload: _Upload) -> None:
    """Refuse from the headers alone, before a single byte is decompressed."""
    limits = upload.limits
    if declared > limits.max_expanded_bytes:
        raise IngestError(
            TOO_LARGE,
            f"the upload's headers declare {declared} bytes after decompression, more than the "
            f"limit of {limits.max_expanded_bytes}",
        )
    if declared > limits.max_ratio * upload.size:
        raise IngestError(
            TOO_LARGE,
            f"the upload's headers declare {declared} bytes after decompression, "
            f"{declared / upload.size:.0f} times its size (the limit is {limits.max_ratio:g}x): refused as "
            "a decompression bomb",
        )


class _Meter:
    """Counts the bytes really decompressed in one pass, so that a header that under-declares them
    is stopped at the same limits."""

    def __init__(self, upload: _Upload) -> None:
        limits = upload.limits
        self.limit = min(limits.max_expanded_bytes, int(limits.max_ratio * upload.size))
        self.total = 0

    def count(self, nbytes: int, where: str) -> None:
        self.total += nbytes
        if self.total > self.limit:
            raise IngestError(
                TOO_LARGE,
                f"the upload expanded past {self.limit} bytes while reading {where}, more than its headers "
                "declare: refused as a decompression bomb",
            )


def _read_member(file: IO[bytes], name: str, declared: int, meter: _Meter) -> bytes:
    """One zip member's bytes, read in chunks and counted against its header and the meter
    (zipfile itself stops at the declared size, and then fails the CRC check)."""
    chunks: list[bytes] = []
    received = 0
    while chunk := file.read(_CHUNK_BYTES):
        received += len(chunk)
        if received > declared:
            raise IngestError(
                TOO_LARGE, f"member {name!r} holds more than the {declared} bytes its header declares"
            )
        meter.count(len(chunk), repr(name))
        chunks.append(chunk)
    return b"".join(chunks)


class _Corrupt(Exception):
    """A damaged archive, found by this module's own tar reader."""


_ARCHIVE_ERRORS = (_Corrupt, zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError)


@contextmanager
def _reading(upload: _Upload) -> Iterator[None]:
    """Turns a damaged archive's errors into a refusal. It wraps reading only, so a full disk while
    writing stays an OSError."""
    try:
        yield
    except _ARCHIVE_ERRORS as error:
        raise IngestError(
            UNPROCESSABLE, f"the {upload.source_format} upload is truncated or corrupt ({_one_line(error)})"
        ) from error


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# ---------------------------------------------------------------------------------------------
# Archive members: headers first (pass 1), then data (passes 2 and 3), for tar and zip alike


@dataclass(frozen=True)
class _Entry:
    """One archive member as its header describes it, before any of its data is read."""

    name: str
    kind: str  # "file", "folder", or what is refused: "a symbolic link", "a hard link", "a device", ...
    size: int


def _entries(upload: _Upload) -> Generator[_Entry, None, None]:
    if upload.source_format == "zip":
        with _reading(upload), zipfile.ZipFile(upload.path) as archive:
            for info in archive.infolist():
                yield _Entry(info.orig_filename, _zip_kind(info), info.file_size)
        return
    with _reading(upload), closing(_tar_members(upload, wanted=())) as members:
        for entry, _ in members:
            yield entry


def _files(upload: _Upload, wanted: Container[str]) -> Generator[tuple[str, bytes], None, None]:
    """(name, bytes) of each member whose name is in `wanted`, in archive order."""
    if upload.source_format == "zip":
        meter = _Meter(upload)
        with _reading(upload), zipfile.ZipFile(upload.path) as archive:
            for info in archive.infolist():
                if info.orig_filename in wanted:
                    with archive.open(info) as file:
                        data = _read_member(file, info.orig_filename, info.file_size, meter)
                    yield info.orig_filename, data
        return
    with _reading(upload), closing(_tar_members(upload, wanted)) as members:
        for entry, content in members:
            if content is not None:
                yield entry.name, content


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16  # the Unix mode, where the archiver stored one
    if info.flag_bits & 0x1:
        return "an encrypted file"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if info.is_dir() or stat.S_ISDIR(mode):
        return "folder"
    return "file" if stat.S_IFMT(mode) in (0, stat.S_IFREG) else "a special file"


# tar is read here, not by tarfile: CPython's tarfile before 3.11.10 and 3.12.6 parses pax headers
# with a regex that takes quadratic time (CVE-2024-6232; a 10 KB upload holds a core for minutes),
# and it reads a stream cut between two members as a complete, shorter archive. An upload needs
# little: ustar, GNU and v7 headers, pax headers and GNU long names, read strictly in order so that
# a .tar.gz is decompressed as one stream.
_TAR_BLOCK = 512
_TAR_END = bytes(_TAR_BLOCK)  # the end-of-archive marker
_TAR_KINDS = {b"0": "file", b"\0": "file", b"7": "file", b"5": "folder", b"1": "a hard link"}
_TAR_KINDS |= {b"2": "a symbolic link", b"3": "a device", b"4": "a device", b"6": "a FIFO"}
_TAR_WITHOUT_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")  # their size field is not data that follows
_TAR_EXTENDED = (b"x", b"g", b"L", b"K")  # pax header, pax global header, GNU long name, long link
_MAX_TAR_EXTENDED_BYTES = 2**20  # names and times; never more
_MAX_TAR_EXTENDED_IN_A_ROW = 4  # one of each kind before a member


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _tar_members(
    upload: _Upload, wanted: Container[str]
) -> Generator[tuple[_Entry, bytes | None], None, None]:
    """Each member's header in archive order, with its bytes when its name is in `wanted`. Other
    members' bytes are skipped only when the next member is asked for, so that pass 1 checks each
    header before its data is decompressed."""
    meter = _Meter(upload)
    with upload.path.open("rb") as raw:
        stream: _Readable = raw if upload.source_format == "tar" else gzip.GzipFile(fileobj=raw)
        extended: dict[str, str] = {}  # from pax and GNU headers, for the next member
        in_a_row = 0
        while (block := _read_tar_block(stream)) != _TAR_END:
            flag, name, size = _tar_header(block)
            if flag in _TAR_EXTENDED:
                in_a_row += 1
                if in_a_row > _MAX_TAR_EXTENDED_IN_A_ROW:
                    raise _Corrupt(f"{in_a_row} tar extended headers in a row")
                if size > _MAX_TAR_EXTENDED_BYTES:
                    raise IngestError(
                        TOO_LARGE,
                        f"a tar extended header (pax or GNU) of {size} bytes; names and times never need "
                        f"more than {_MAX_TAR_EXTENDED_BYTES}",
                    )
                data = _read_tar_data(stream, size, meter, "a tar extended header", keep=True)
                if flag == b"x":
                    extended |= _pax_records(data)
                elif flag == b"L":
                    extended["path"] = _tar_text(data.split(b"\0", 1)[0])
                continue
            in_a_row = 0
            name = extended.get("path", name)
            size = 0 if flag in _TAR_WITHOUT_DATA else int(extended.get("size", size))
            sparse = any(key.startswith("GNU.sparse.") for key in extended)
            kind = "a sparse file" if sparse else _TAR_KINDS.get(flag, "a special file")
            extended = {}
            entry = _Entry(name, kind, size)
            if kind == "file" and name in wanted:
                yield entry, _read_tar_data(stream, size, meter, repr(name), keep=True)
            else:
                yield entry, None
                _read_tar_data(stream, size, meter, repr(name), keep=False)


def _read_tar_block(stream: _Readable) -> bytes:
    block = stream.read(_TAR_BLOCK)
    if len(block) < _TAR_BLOCK:
        raise _Corrupt("it stops before tar's end-of-archive marker")
    return block


def _read_tar_data(stream: _Readable, size: int, meter: _Meter, what: str, keep: bool) -> bytes:
    """`size` bytes of data (kept, or only counted), then the padding to the next block."""
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = stream.read(min(left, _CHUNK_BYTES))
        if not chunk:
            raise _Corrupt(f"it stops inside the data of {what}")
        meter.count(len(chunk), what)
        left -= len(chunk)
        if keep:
            chunks.append(chunk)
    if len(stream.read(-size % _TAR_BLOCK)) < -size % _TAR_BLOCK:
        raise _Corrupt(f"it stops after the data of {what}")
    return b"".join(chunks)


def _tar_header(block: bytes) -> tuple[bytes, str, int]:
    """(type flag, name, size) of a ustar, GNU or v7 header block, its checksum checked."""
    if not _tar_checksum_matches(block):
        raise _Corrupt("a tar header's checksum does not match")
    name = block[:100].split(b"\0", 1)[0]
    if block[257:263] == b"ustar\0" and block[345]:  # POSIX ustar: a prefix for long paths
        name = block[345:500].split(b"\0", 1)[0] + b"/" + name
    return block[156:157], _tar_text(name), _tar_number(block[124:136])


def _tar_checksum_matches(block: bytes) -> bool:
    """The block's bytes summed with the checksum field taken as spaces: unsigned, or signed as
    some old tars summed them."""
    stored = _tar_number(block[148:156])
    unsigned = sum(block[:148]) + 8 * ord(" ") + sum(block[156:])
    if stored == unsigned:
        return True
    return stored == unsigned - 256 * sum(byte > 127 for byte in block[:148] + block[156:])


def _tar_number(field: bytes) -> int:
    """Octal digits, or GNU's base-256 (a first byte of 0x80) for sizes over 8 GiB."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise _Corrupt(f"a tar header holds {digits!r} where a number belongs") from None


def _tar_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Corrupt(f"a member name is not UTF-8 ({raw!r})") from None


def _pax_records(data: bytes) -> dict[str, str]:
    """A pax header's "<length> <key>=<value>\\n" records, in one linear pass."""
    records = {}
    start = 0
    while start < len(data):
        space = data.find(b" ", start, start + 20)
        length = int(data[start:space]) if space > start and data[start:space].isdigit() else 0
        record = data[start : start + length]
        key, equals, value = record[space - start + 1 : -1].partition(b"=")
        if not (equals and record.endswith(b"\n")):
            raise _Corrupt("a malformed pax header")
        records[_tar_text(key)] = _tar_text(value)
        start += length
    if not re.fullmatch(r"[0-9]+", records.get("size", "0")):
        raise _Corrupt(f"a pax header gives the size {records['size']!r}")
    return records


def _zip_holds_arrays(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError) as error:
        raise IngestError(
            UNPROCESSABLE, f"the zip upload is truncated or corrupt ({_one_line(error)})"
        ) from error
    return bool(names) and all(name.endswith(".npy") for name in names)


# ---------------------------------------------------------------------------------------------
# ImageFolder archives: plan from the headers, survey the image headers, then decode


@dataclass(frozen=True)
class _ImageMember:
    path: str  # normalised, for messages
    split: str  # "train" or "test"
    index: int  # its row in the split's arrays


@dataclass(frozen=True)
class _Layout:
    """Where each image of the archive goes. A plan holds every member (up to max_files), so it is
    kept to one dict entry and the name per image, with the rest in numpy arrays by slot: per-image
    Python objects are what the API's memory would grow with."""

    classes: list[str]
    slots: dict[str, int]  # the member's name in the archive -> its slot
    splits: np.ndarray  # int8 by slot: an index into _SPLITS
    rows: np.ndarray  # int64 by slot: its row in the split's arrays
    labels: dict[str, np.ndarray]  # int64 per split, in row order

    def member(self, name: str) -> _ImageMember:
        slot = self.slots[name]
        return _ImageMember("/".join(_safe_parts(name)), _SPLITS[self.splits[slot]], int(self.rows[slot]))


@dataclass(frozen=True)
class _Target:
    """The one mode and size every image is stored in."""

    mode: str  # "L" or "RGB"
    width: int
    height: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one stored image."""
        return (1 if self.mode == "L" else 3), self.height, self.width


class _RowFile:
    """A .npy file written a row (or a run of rows) at a time with seek + write. Not a memory map:
    the pages of a mapped output count in the API process's RSS for the whole conversion, so a
    500 MB upload would look like 500 MB of memory; written pages only sit in the page cache."""

    def __init__(self, path: Path, dtype: type[np.generic], shape: tuple[int, ...]) -> None:
        self.dtype = np.dtype(dtype)
        self.file = path.open("w+b")
        header = {"descr": npy_format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        npy_format.write_array_header_2_0(self.file, header)
        self.start = self.file.tell()
        self.row_bytes = self.dtype.itemsize * math.prod(shape[1:])
        self.file.truncate(self.start + shape[0] * self.row_bytes)

    def __setitem__(self, rows: int | slice, values: np.ndarray) -> None:
        first = rows.start if isinstance(rows, slice) else rows
        self.file.seek(self.start + first * self.row_bytes)
        self.file.write(np.ascontiguousarray(values, dtype=self.dtype).data)

    def close(self) -> None:
        self.file.close()


def _convert_image_folder(upload: _Upload, staging: Path) -> _Converted:
    layout = _plan_image_folder(upload)
    target, notes = _survey_images(upload, layout)
    images = {}
    for split, labels in layout.labels.items():
        np.save(staging / f"y_{split}.npy", labels)
        images[split] = _RowFile(staging / f"x_{split}.npy", np.uint8, (len(labels), *target.shape))
    try:
        _decode_images(upload, layout, target, images)
    finally:
        for rows in images.values():
            rows.close()
    return _Converted(layout.classes, notes)


def _plan_image_folder(upload: _Upload) -> _Layout:
    """Pass 1, headers only: every member is checked (count, expansion, path, kind, size) and each
    image gets its split, class and row."""
    limits = upload.limits
    max_image_bytes = 16 * limits.max_image_side**2 + 2**20  # 16-bit RGBA twice over, + 1 MiB metadata
    slots: dict[str, int] = {}  # by the member's name in the archive
    paths: list[str] = []  # by slot, normalised: the member's name itself when that is normal
    count = declared = 0
    with closing(_entries(upload)) as entries:
        for entry in entries:
            count += 1
            if count > limits.max_files:
                raise IngestError(
                    TOO_LARGE, f"the archive has more than {limits.max_files} members (the limit)"
                )
            declared += entry.size
            _check_declared_expansion(declared, upload)
            parts = _safe_parts(entry.name)
            if entry.kind not in ("file", "folder"):
                raise IngestError(
                    UNPROCESSABLE,
                    f"member {entry.name!r} is {entry.kind}; only regular files and folders are accepted",
                )
            if entry.kind == "folder" or _ignored(parts):
                continue
            if entry.size > max_image_bytes:
                raise IngestError(
                    TOO_LARGE,
                    f"member {entry.name!r} is {entry.size} bytes, more than an image of at most "
                    f"{limits.max_image_side}x{limits.max_image_side} pixels needs",
                )
            if entry.name in slots:
                raise IngestError(UNPROCESSABLE, f"member {'/'.join(parts)!r} appears twice in the archive")
            path = "/".join(parts)
            slots[entry.name] = len(paths)
            paths.append(entry.name if path == entry.name else path)
    return _assign_images(slots, paths)


_DRIVE = re.compile(r"[A-Za-z]:")


def _safe_parts(name: str) -> tuple[str, ...]:
    """A member's path as folder names. Names that would land outside a folder they were extracted
    into (zip-slip) are refused: nothing is extracted here, but they mark a hostile upload."""
    problem = ""
    if "\x00" in name:
        problem = "contains a NUL byte"
    elif "\\" in name:
        problem = "contains a backslash (use / between folders)"
    elif name.startswith("/"):
        problem = "is an absolute path"
    elif _DRIVE.match(name):
        problem = "starts with a drive letter"
    elif ".." in name.split("/"):
        problem = "climbs out of the archive with '..'"
    elif not name.isprintable():
        problem = "holds unprintable characters"
    if problem:
        raise IngestError(
            UNPROCESSABLE, f"member {name!r} {problem}; members are relative paths like train/<class>/<image>"
        )
    return tuple(part for part in name.split("/") if part not in ("", "."))


def _ignored(parts: tuple[str, ...]) -> bool:
    """macOS's resource forks (__MACOSX/, ._x.png) and dot-files like .DS_Store are never data."""
    return not parts or parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts)


def _assign_images(slots: dict[str, int], paths: list[str]) -> _Layout:
    """Classes from train's folders, each image's split and row, and the refusals of a bad tree."""
    by_path = np.array(sorted(range(len(paths)), key=paths.__getitem__), dtype=np.int64)
    for before, after in itertools.pairwise(by_path.tolist()):
        if paths[before] == paths[after]:
            raise IngestError(UNPROCESSABLE, f"member {paths[after]!r} appears twice in the archive")
    splits, class_numbers, seen, classes_of = _place_in_tree(paths)
    classes = _check_classes(classes_of)

    # Rows: by class (labels follow the sorted class names), then by path within a class.
    label_of_number = np.array([classes.index(name) for name in seen], dtype=np.int64)
    labels_by_slot = label_of_number[class_numbers]
    ordered = by_path[np.argsort(labels_by_slot[by_path], kind="stable")]
    rows = np.empty(len(paths), dtype=np.int64)
    labels: dict[str, np.ndarray] = {}
    for number, split in enumerate(_SPLITS):
        in_split = ordered[splits[ordered] == number]
        rows[in_split] = np.arange(len(in_split))
        labels[split] = labels_by_slot[in_split]
    return _Layout(classes, slots, splits, rows, labels)


def _place_in_tree(paths: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, int], dict[str, set[str]]]:
    """Each path's split (an index into _SPLITS) and class (a number in order of first appearance),
    those numbers by class name, and each split's class names; a path outside the tree is refused."""
    tops = {path.split("/", 1)[0] for path in paths if "/" in path}
    depth = 1 if len(tops) == 1 and not tops & set(_SPLITS) else 0  # one top-level folder: skip it
    splits = np.empty(len(paths), dtype=np.int8)
    class_numbers = np.empty(len(paths), dtype=np.int64)
    seen: dict[str, int] = {}
    classes_of: dict[str, set[str]] = {split: set() for split in _SPLITS}
    for slot, path in enumerate(paths):
        rest = path.split("/")[depth:]
        if len(rest) < 2 or rest[0] not in _SPLITS:
            raise IngestError(
                UNPROCESSABLE,
                f"member {path!r} is outside train/ and test/ (expected train/<class>/<image> and "
                "test/<class>/<image>, optionally under one top-level folder)",
            )
        if len(rest) == 2:
            raise IngestError(
                UNPROCESSABLE, f"member {path!r} is not in a class folder ({rest[0]}/<class>/<image>)"
            )
        split, class_name = rest[0], rest[1]
        splits[slot] = _SPLITS.index(split)
        class_numbers[slot] = seen.setdefault(class_name, len(seen))
        classes_of[split].add(class_name)
    return splits, class_numbers, seen, classes_of


def _check_classes(classes_of: Mapping[str, set[str]]) -> list[str]:
    """train's class names, sorted (as ImageFolder labels them), once the splits are usable."""
    for split in _SPLITS:
        if not classes_of[split]:
            raise IngestError(
                UNPROCESSABLE, f"the {split} split has no images (expected {split}/<class>/<image>)"
            )
    classes = sorted(classes_of["train"])
    unknown = sorted(classes_of["test"] - set(classes))
    if unknown:
        raise IngestError(UNPROCESSABLE, f"test classes {unknown} have no folder under train/")
    if len(classes) < 2:
        raise IngestError(
            UNPROCESSABLE, f"train/ has {len(classes)} class folder {classes}; a classifier needs 2 or more"
        )
    return classes


def _survey_images(upload: _Upload, layout: _Layout) -> tuple[_Target, list[str]]:
    """Pass 2, image headers only (no pixels decoded): sides, sizes and modes decide the stored
    shape before anything is written."""
    limits = upload.limits
    sizes: Counter[tuple[int, int]] = Counter()
    example: dict[tuple[int, int], str] = {}
    modes: Counter[str] = Counter()
    grey = 0
    with closing(_files(upload, layout.slots)) as files:
        for name, data in files:
            path = layout.member(name).path
            image = _open_image(data, path)
            if max(image.size) > limits.max_image_side:
                width, height = image.size
                raise IngestError(
                    UNPROCESSABLE,
                    f"image {path!r} is {width}x{height}; the largest side accepted is "
                    f"{limits.max_image_side}",
                )
            sizes[image.size] += 1
            example.setdefault(image.size, path)
            modes[image.mode] += 1
            grey += _is_grey(image)

    if upload.image_size is None and len(sizes) > 1:
        listed = ", ".join(
            f"{w}x{h} ({n} images, e.g. {example[(w, h)]!r})" for (w, h), n in sizes.most_common(3)
        )
        raise IngestError(
            UNPROCESSABLE,
            f"the images have {len(sizes)} sizes: {listed}; pass image_size to resize them all to one",
        )
    images = sum(sizes.values())
    mode = "L" if grey == images else "RGB"
    width, height = (upload.image_size, upload.image_size) if upload.image_size else next(iter(sizes))
    notes = _conversion_notes(modes, grey, images, mode)
    resized = images - sizes[(width, height)]
    if resized:
        notes.append(f"resized {resized} images to {width}x{height}")
    return _Target(mode, width, height), notes


def _conversion_notes(modes: Counter[str], grey: int, images: int, mode: str) -> list[str]:
    notes = []
    if mode == "RGB" and grey:
        notes.append(
            f"converted grey and RGB to RGB: {grey} of {images} images are grey, copied to 3 channels"
        )
    others = {name: n for name, n in sorted(modes.items()) if name not in ("L", "RGB")}
    if others:
        listed = ", ".join(f"{n} {name}" for name, n in others.items())
        notes.append(f"converted images of other modes ({listed}) to {mode}")
    return notes


def _decode_images(upload: _Upload, layout: _Layout, target: _Target, images: Mapping[str, _RowFile]) -> None:
    """Pass 3: each image decoded, converted and written into its row, one at a time."""
    with closing(_files(upload, layout.slots)) as files:
        for name, data in files:
            member = layout.member(name)
            image = _open_image(data, member.path)
            try:
                pixels = _canonical_pixels(image, target)
            except Exception as error:  # Pillow raises many types on damaged pixel data
                raise _not_an_image(member.path, error) from error
            images[member.split][member.index] = pixels


def _open_image(data: bytes, path: str) -> Image.Image:
    """The image's header (size, mode, palette); its pixels are decoded on first use."""
    try:
        return Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS)
    except Exception as error:  # Pillow raises many types on hostile headers
        raise _not_an_image(path, error) from error


def _not_an_image(path: str, error: BaseException) -> IngestError:
    formats = ", ".join(_IMAGE_FORMATS)
    detail = "not in any of these formats" if isinstance(error, UnidentifiedImageError) else _one_line(error)
    return IngestError(UNPROCESSABLE, f"{path!r} is not a decodable image ({formats}): {detail}")


_GREY_MODES = frozenset({"1", "L", "LA", "La", "F", "I", "I;16", "I;16L", "I;16B", "I;16N"})
_WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def _is_grey(image: Image.Image) -> bool:
    if image.mode in ("P", "PA"):
        palette = image.palette
        if palette is None:
            return False
        colours, stride = palette.palette, len(palette.mode)
        return all(colours[i] == colours[i + 1] == colours[i + 2] for i in range(0, len(colours) - 2, stride))
    return image.mode in _GREY_MODES


def _canonical_pixels(image: Image.Image, target: _Target) -> np.ndarray:
    """The image in the set's mode and size, as (C, H, W) uint8."""
    own_mode = "L" if _is_grey(image) else "RGB"  # before any conversion: the module docstring's rule
    if image.mode in _WIDE_GREY_MODES:
        image = image.convert("I").point(lambda value: value * (1 / 256))  # 16 bits to 8
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow's route for palettes with transparency
    for mode in (own_mode, target.mode):
        if image.mode != mode:
            image = image.convert(mode)
    if image.size != (target.width, target.height):
        image = image.resize((target.width, target.height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


# ---------------------------------------------------------------------------------------------
# .npz uploads: each array's header checked first, then its data copied in chunks

_NPZ_IMAGES = ("x_train", "x_test")
_NPZ_LABELS = ("y_train", "y_test")
_NPZ_CLASSES = "classes"
_MAX_CLASSES_BYTES = 16 * 2**20


def _convert_npz(upload: _Upload, staging: Path) -> _Converted:
    with _reading(upload):
        archive = zipfile.ZipFile(upload.path)
    with archive:
        npz = _Npz(upload, archive)
        classes = npz.classes()
        train_counts = npz.copy_labels(staging, "y_train", len(classes))
        npz.copy_labels(staging, "y_test", len(classes))
        for label, name in enumerate(classes):
            if not train_counts[label]:
                raise IngestError(UNPROCESSABLE, f"class {name!r} (label {label}) has no train images")
        target, notes = npz.target()
        for key in _NPZ_IMAGES:
            npz.copy_images(staging, key, target)
    ignored = sorted(npz.ignored)
    if ignored:
        notes.append(f"ignored arrays not in the layout: {', '.join(ignored)}")
    return _Converted(classes, notes)


@dataclass(frozen=True)
class _NpyHeader:
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    data_offset: int  # bytes before the data

    @property
    def row_bytes(self) -> int:
        """Bytes of one row: an image, or a label."""
        return self.dtype.itemsize * math.prod(self.shape[1:])


def _read_npy_header(file: IO[bytes], key: str) -> _NpyHeader:
    """numpy's own header reader, which parses the header with ast.literal_eval, never pickle.
    Object arrays are refused, as numpy.load(allow_pickle=False) refuses them."""
    try:
        version = npy_format.read_magic(file)
        if version == (1, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_1_0(file)
        elif version == (2, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_2_0(file)
        else:  # numpy writes 3.0 only for structured dtypes with non-latin-1 field names
            raise ValueError(f"format version {version[0]}.{version[1]} holds no plain array")
    except (ValueError, TypeError) as error:
        raise IngestError(
            UNPROCESSABLE, f"{key} in the .npz is not a readable array ({_one_line(error)})"
        ) from error
    if dtype.hasobject:
        raise IngestError(
            UNPROCESSABLE,
            f"{key} is an object array; those are refused, as numpy.load(allow_pickle=False) does",
        )
    if fortran_order and len(shape) > 1:
        raise IngestError(
            UNPROCESSABLE, f"{key} is stored in Fortran order; save numpy.ascontiguousarray({key})"
        )
    return _NpyHeader(dtype, shape, file.tell())


class _Npz:
    """An .npz upload's arrays: their headers checked on opening, their data read in chunks."""

    def __init__(self, upload: _Upload, archive: zipfile.ZipFile) -> None:
        self.upload = upload
        self.archive = archive
        infos = archive.infolist()
        if len(infos) > upload.limits.max_files:
            raise IngestError(
                TOO_LARGE, f"the .npz has more than {upload.limits.max_files} members (the limit)"
            )
        _check_declared_expansion(sum(info.file_size for info in infos), upload)
        self.infos = {info.filename.removesuffix(".npy"): info for info in infos}
        for key in (*_NPZ_IMAGES, *_NPZ_LABELS):
            if key not in self.infos:
                raise IngestError(
                    UNPROCESSABLE,
                    f"the .npz has no array {key!r} (it needs x_train, y_train, x_test, y_test)",
                )
        self.ignored = set(self.infos) - {*_NPZ_IMAGES, *_NPZ_LABELS, _NPZ_CLASSES}
        self.headers = {key: self._header(key) for key in self.infos if key not in self.ignored}
        self.images = {key: self._check_images(key) for key in _NPZ_IMAGES}  # key: (N, H, W, C)
        for images, labels in zip(_NPZ_IMAGES, _NPZ_LABELS, strict=True):
            count = self._check_labels(labels)
            if count != self.images[images][0]:
                raise IngestError(
                    UNPROCESSABLE,
                    f"{images} has {self.images[images][0]} images but {labels} has {count} labels",
                )
            if count == 0:
                raise IngestError(
                    UNPROCESSABLE, f"the {images.removeprefix('x_')} split has no images ({images} is empty)"
                )

    def _header(self, key: str) -> _NpyHeader:
        info = self.infos[key]
        if info.flag_bits & 0x1:
            raise IngestError(UNPROCESSABLE, f"{key} is encrypted in the .npz")
        with _reading(self.upload), self.archive.open(info) as file:
            header = _read_npy_header(file, key)
        data_bytes = math.prod(header.shape) * header.dtype.itemsize
        if info.file_size != header.data_offset + data_bytes:
            raise IngestError(
                UNPROCESSABLE,
                f"{key} holds {info.file_size - header.data_offset} bytes of data where its shape "
                f"{header.shape} and dtype {header.dtype} need {data_bytes}",
            )
        return header

    def _check_images(self, key: str) -> tuple[int, int, int, int]:
        header = self.headers[key]
        if header.dtype != np.uint8:
            raise IngestError(
                UNPROCESSABLE,
                f"{key} must hold uint8 pixels 0..255, not {header.dtype}; convert floats in 0..1 with "
                "(x * 255).round().astype(numpy.uint8)",
            )
        shape = header.shape
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
            raise IngestError(
                UNPROCESSABLE,
                f"{key} has shape {shape}; images are (N, H, W) or channels-last (N, H, W, C) with C 1 or 3 "
                "(from (N, C, H, W): x.transpose(0, 2, 3, 1))",
            )
        count, height, width = shape[:3]
        side = self.upload.limits.max_image_side
        if count and not (1 <= height <= side and 1 <= width <= side):
            raise IngestError(
                UNPROCESSABLE, f"{key} images are {width}x{height}; each side must be 1 .. {side}"
            )
        return count, height, width, shape[3] if len(shape) == 4 else 1

    def _check_labels(self, key: str) -> int:
        header = self.headers[key]
        if not np.issubdtype(header.dtype, np.integer):
            raise IngestError(UNPROCESSABLE, f"{key} must hold integer labels, not {header.dtype}")
        if len(header.shape) != 1:
            raise IngestError(
                UNPROCESSABLE, f"{key} has shape {header.shape}; labels are one-dimensional (N,)"
            )
        return header.shape[0]

    def _chunks(self, key: str) -> Iterator[np.ndarray]:
        """The array's rows (images, labels), a chunk at a time, counted by the expansion meter."""
        info, header = self.infos[key], self.headers[key]
        rows = max(1, _CHUNK_BYTES // max(header.row_bytes, 1))
        left = header.shape[0]
        meter = _Meter(self.upload)
        with _reading(self.upload), self.archive.open(info) as file:
            file.read(header.data_offset)
            while left:
                count = min(rows, left)
                data = file.read(count * header.row_bytes)
                if len(data) != count * header.row_bytes:
                    raise IngestError(UNPROCESSABLE, f"{key} is truncated in the .npz")
                meter.count(len(data), key)
                left -= count
                yield np.frombuffer(data, header.dtype).reshape(count, *header.shape[1:])

    def _label_range(self, key: str) -> tuple[int, int]:
        ranges = [(int(chunk.min()), int(chunk.max())) for chunk in self._chunks(key)]
        return min(low for low, _ in ranges), max(high for _, high in ranges)

    def classes(self) -> list[str]:
        """The class names: the `classes` array, else "0" .. "K-1" with K = the largest label + 1.
        The labels' range is checked here, before anything is written."""
        ranges = {key: self._label_range(key) for key in _NPZ_LABELS}
        if _NPZ_CLASSES in self.headers:
            names = self._class_names()
        else:
            names = [str(label) for label in range(max(high for _, high in ranges.values()) + 1)]
        for key, (low, high) in ranges.items():
            if low < 0 or high >= len(names):
                raise IngestError(
                    UNPROCESSABLE,
                    f"{key} has labels {low} .. {high}, out of range: labels are 0 .. {len(names) - 1}, "
                    f"one per class ({len(names)} classes)",
                )
        if len(names) < 2:
            raise IngestError(
                UNPROCESSABLE, f"the .npz has {len(names)} class {names}; a classifier needs 2 or more"
            )
        if len(names) > self.images["x_train"][0]:
            raise IngestError(
                UNPROCESSABLE, f"{len(names)} classes but only {self.images['x_train'][0]} train images"
            )
        return names

    def _class_names(self) -> list[str]:
        header = self.headers[_NPZ_CLASSES]
        if header.dtype.kind not in ("U", "S") or len(header.shape) != 1:
            raise IngestError(
                UNPROCESSABLE,
                f"classes must be a one-dimensional array of strings, not {header.dtype} with shape "
                f"{header.shape} (save numpy.array(names, dtype=str))",
            )
        if header.shape[0] * header.dtype.itemsize > _MAX_CLASSES_BYTES:
            raise IngestError(
                UNPROCESSABLE, f"classes is over {_MAX_CLASSES_BYTES} bytes, more than names need"
            )
        if header.dtype.itemsize == 0:
            raise IngestError(UNPROCESSABLE, "classes holds only empty names")
        try:  # numpy drops the NULs that pad shorter names
            names = [
                name.decode("utf-8") if isinstance(name, bytes) else str(name)
                for chunk in self._chunks(_NPZ_CLASSES)
                for name in chunk.tolist()
            ]
        except UnicodeDecodeError as error:
            raise IngestError(
                UNPROCESSABLE, f"classes holds a name that is not UTF-8 ({_one_line(error)})"
            ) from error
        for index, name in enumerate(names):
            if not name:
                raise IngestError(UNPROCESSABLE, f"classes[{index}] is empty; every class needs a name")
            if names.index(name) != index:
                raise IngestError(
                    UNPROCESSABLE, f"classes names {name!r} twice (at {names.index(name)} and {index})"
                )
        return names

    def copy_labels(self, staging: Path, key: str, num_classes: int) -> list[int]:
        """The labels as int64, copied in chunks; returns the count of each class."""
        out = _RowFile(staging / f"{key}.npy", np.int64, self.headers[key].shape)
        counts = np.zeros(num_classes, dtype=np.int64)
        row = 0
        try:
            for chunk in self._chunks(key):
                labels = chunk.astype(np.int64)  # checked to lie in 0 .. num_classes - 1
                out[row : row + len(labels)] = labels
                counts += np.bincount(labels, minlength=num_classes)
                row += len(labels)
        finally:
            out.close()
        return [int(count) for count in counts]

    def target(self) -> tuple[_Target, list[str]]:
        """The stored mode and size: RGB if either split is, and one size for both splits."""
        (_, h_train, w_train, c_train), (_, h_test, w_test, c_test) = (self.images[k] for k in _NPZ_IMAGES)
        mode = "RGB" if 3 in (c_train, c_test) else "L"
        notes = []
        if c_train != c_test:
            grey_split = "x_train" if c_train == 1 else "x_test"
            notes.append(f"converted grey and RGB to RGB: {grey_split} is grey, copied to 3 channels")
        size = self.upload.image_size
        if size is None:
            if (h_train, w_train) != (h_test, w_test):
                raise IngestError(
                    UNPROCESSABLE,
                    f"x_train images are {w_train}x{h_train} but x_test's are {w_test}x{h_test}; "
                    "pass image_size to resize them all to one",
                )
            return _Target(mode, w_train, h_train), notes
        resized = sum(n for n, h, w, _ in self.images.values() if (h, w) != (size, size))
        if resized:
            notes.append(f"resized {resized} images to {size}x{size}")
        return _Target(mode, size, size), notes

    def copy_images(self, staging: Path, key: str, target: _Target) -> None:
        """The images as (N, C, H, W) uint8, in chunks; Pillow only where they are resized."""
        count, height, width, channels = self.images[key]
        out = _RowFile(staging / f"{key}.npy", np.uint8, (count, *target.shape))
        resized = (width, height) != (target.width, target.height)
        row = 0
        try:
            for chunk in self._chunks(key):
                images = chunk.reshape(len(chunk), height, width, channels)
                if resized:
                    pillow = (Image.fromarray(image[..., 0] if channels == 1 else image) for image in images)
                    out[row : row + len(images)] = np.stack(
                        [_canonical_pixels(image, target) for image in pillow]
                    )
                else:  # channels last to first; a grey split broadcasts to all 3 channels of an RGB set
                    pixels = images.transpose(0, 3, 1, 2)
                    out[row : row + len(images)] = np.broadcast_to(pixels, (len(images), *target.shape))
                row += len(images)
        finally:
            out.close()


# ---------------------------------------------------------------------------------------------
# The manifest, from the arrays as stored


def _summarize(staging: Path, source_format: SourceFormat, converted: _Converted) -> DatasetManifest:
    """Everything is read back from the stored files (memory-mapped, a chunk at a time), so the
    manifest describes exactly the bytes a worker will read."""
    arrays = {name.removesuffix(".npy"): np.load(staging / name, mmap_mode="r") for name in ARRAY_FILES}
    classes = converted.classes
    train_counts = np.bincount(arrays["y_train"], minlength=len(classes)).tolist()
    mean_count = sum(train_counts) / len(classes)
    mean, std = _mean_std(arrays["x_train"])
    findings = Findings(
        imbalance_ratio=max(train_counts) / min(train_counts),
        small_classes=[name for name, n in zip(classes, train_counts, strict=True) if n < mean_count / 2],
        duplicates=_duplicates(arrays["x_train"], arrays["x_test"]),
        notes=converted.notes,
    )
    return DatasetManifest(
        sha256=_content_sha256(arrays.values()),
        source=source_format,
        classes=classes,
        shape=arrays["x_train"].shape[1:],
        num_train=len(arrays["y_train"]),
        num_test=len(arrays["y_test"]),
        train_counts=train_counts,
        test_counts=np.bincount(arrays["y_test"], minlength=len(classes)).tolist(),
        mean=mean,
        std=std,
        files={name: _stored_file(staging / name) for name in ARRAY_FILES},
        findings=findings,
    )


def _row_chunks(array: np.ndarray) -> Iterator[np.ndarray]:
    """Whole rows, about _CHUNK_BYTES at a time. A memory-mapped array's rows are read from its
    file (plain reads, freed after use): touching the map would keep every page resident in the
    process until the map is closed."""
    row_bytes = array.itemsize * math.prod(array.shape[1:])
    rows = max(1, _CHUNK_BYTES // max(row_bytes, 1))
    for start in range(0, len(array), rows):
        if isinstance(array, np.memmap) and array.filename is not None:
            count = min(rows, len(array) - start)
            flat = np.fromfile(array.filename, array.dtype, count * math.prod(array.shape[1:]),
                               offset=array.offset + start * row_bytes)  # fmt: skip
            yield flat.reshape(count, *array.shape[1:])
        else:
            yield array[start : start + rows]


def _content_sha256(arrays: Iterable[np.ndarray]) -> str:
    """tsla_core.provenance.arrays_sha256 over x_train, y_train, x_test, y_test, without torch."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        for chunk in _row_chunks(array):
            digest.update(chunk.data)  # whole rows of a C-order array: contiguous
    return digest.hexdigest()


def _mean_std(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per channel, on the 0..1 scale, the std over all pixels (ddof=0): from exact integer sums,
    so the result does not depend on how the images are chunked."""
    channels = images.shape[1]
    total, squares = np.zeros(channels, dtype=np.int64), np.zeros(channels, dtype=np.int64)
    for chunk in _row_chunks(images):
        wide = chunk.astype(np.int64)
        total += wide.sum(axis=(0, 2, 3))
        squares += (wide * wide).sum(axis=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    means = [int(t) / n / 255 for t in total]
    stds = [math.sqrt((n * int(q) - int(t) ** 2) / n**2) / 255 for t, q in zip(total, squares, strict=True)]
    return means, stds


def _duplicates(train: np.ndarray, test: np.ndarray) -> DuplicateFindings:
    """Test images whose stored bytes occur in train (leakage), by sha256. Train's digests are one
    sorted array of 32-byte values (32 bytes per image, no Python object per image)."""
    digests = np.fromiter(_image_digests(train), dtype="S32", count=train.shape[0])
    order = np.argsort(digests, kind="stable")  # equal digests keep row order: the first row wins
    ordered = digests[order]
    exact = ordered.view(np.uint8).reshape(-1, 32)  # an "S32" item reads back without trailing NULs
    pairs = []
    for row, digest in enumerate(_image_digests(test)):
        at = int(np.searchsorted(ordered, np.bytes_(digest)))
        if at < len(ordered) and exact[at].tobytes() == digest:
            pairs.append((int(order[at]), row))
    return DuplicateFindings(count=len(pairs), examples=pairs[:_MAX_DUPLICATE_EXAMPLES])


def _image_digests(images: np.ndarray) -> Iterator[bytes]:
    for chunk in _row_chunks(images):
        for image in chunk:
            yield hashlib.sha256(image.data).digest()


def _stored_file(path: Path) -> StoredFile:
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256")
    return StoredFile(bytes=path.stat().st_size, sha256=digest.hexdigest())

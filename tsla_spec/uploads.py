"""Uploaded data sets: the canonical layout that the server writes and every worker reads.

A user uploads an ImageFolder archive or an `.npz` (tsla_service/dataset_ingest.py checks and
converts it); what is stored, under its content hash, is always this layout:

    <sha256>/manifest.json   a DatasetManifest (below)
    <sha256>/x_train.npy     uint8 (N, C, H, W) images
    <sha256>/y_train.npy     int64 (N,) labels in 0 .. len(classes) - 1
    <sha256>/x_test.npy
    <sha256>/y_test.npy

plain `.npy` files, so a worker memory-maps them (numpy.load(mmap_mode="r")). The content hash
is the one the core records for every tensor data set (tsla_core/provenance.arrays_sha256): over
x_train, y_train, x_test, y_test in that order, each as its dtype string, its shape tuple and its
C-order bytes. So a job's recorded data hash and the data set's hash are the same string.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FORMAT: Literal["tsla-dataset/1"] = "tsla-dataset/1"
MANIFEST = "manifest.json"
ARRAY_FILES = ("x_train.npy", "y_train.npy", "x_test.npy", "y_test.npy")  # the hash's order

# A data set's name, chosen by its owner: unique per token, never one of the built-in names.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")

SourceFormat = Literal["tar", "tar.gz", "zip", "npz"]


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoredFile(Frozen):
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_PATTERN.pattern)


class DuplicateFindings(Frozen):
    """Exact duplicate images between train and test (train/test leakage), by content hash."""

    count: int = Field(ge=0)  # test images that also occur in train
    examples: list[tuple[int, int]] = []  # up to 10 (train index, test index) pairs


class Findings(Frozen):
    """Reported, not refused: what a careful user wants to know about their data."""

    # Largest over smallest class count in train (1.0: balanced); classes with under half the
    # mean count are named.
    imbalance_ratio: float = Field(ge=1.0)
    small_classes: list[str] = []
    duplicates: DuplicateFindings = DuplicateFindings(count=0)
    notes: list[str] = []  # one line each, e.g. "images resized from mixed sizes to 32x32"


class DatasetManifest(Frozen):
    format: Literal["tsla-dataset/1"] = FORMAT
    sha256: str = Field(pattern=SHA256_PATTERN.pattern)  # the content hash (module docstring)
    source: SourceFormat
    classes: list[str] = Field(min_length=2)
    shape: tuple[int, int, int]  # (channels, height, width); channels 1 or 3
    num_train: int = Field(ge=1)
    num_test: int = Field(ge=1)
    train_counts: list[int]  # per class, in `classes` order
    test_counts: list[int]
    mean: list[float]  # per channel, of the train images on the 0..1 scale
    std: list[float]
    files: dict[str, StoredFile]  # ARRAY_FILES, each with its size and sha256
    findings: Findings

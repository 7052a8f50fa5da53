"""Experiment grids: dotted spec keys, each with a list of values, expanded into cells.

`{"smoothing.method": ["lsr", "tsla"], "seed": [0, 1]}` has the four cells of the Cartesian
product, in key order. A cell's method may ignore some knobs (`baseline` has no theta, `lsr` no
switch epoch): those values are dropped from the cell, so cells that differ only there become one,
and `Expansion.collapsed` says which. A cell's run spec is `build_spec(deep_merge(base, cell))`,
with the experiment's teacher filled in for the "-pre" methods.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

from pydantic import BaseModel

from tsla_spec.presets import PRESETS
from tsla_spec.spec import RunSpec, SmoothingSpec, SpecError, build_spec, deep_merge, nested
from tsla_spec.vocabulary import TEACHER_METHODS

# The knobs each method does not read (tsla_spec/spec.py): a grid value for one of them changes
# nothing in that method's run, so it is dropped from the cell.
IGNORED_BY_METHOD: dict[str, frozenset[str]] = {
    "baseline": frozenset({"smoothing.theta", "smoothing.switch_epoch", "smoothing.temperature"}),
    "lsr": frozenset({"smoothing.switch_epoch", "smoothing.temperature"}),
    "tsla": frozenset({"smoothing.temperature"}),
    "lsr-pre": frozenset({"smoothing.switch_epoch"}),
    "tsla-pre": frozenset(),
}
# The keys `--set` takes (tsla_spec.spec.parse_override).
KEY_SYNTAX = re.compile(r"[a-z_]+(\.[a-z_]+)*")
# A string shown without quotes in a cell's description: it cannot be read as another value.
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
# Filled in from the experiment's own `teacher`, never given in a spec or a grid.
TEACHER_KEY = "smoothing.teacher"
DEFAULT_METHOD = str(SmoothingSpec.model_fields["method"].default)

CellValues = dict[str, Any]


@dataclass(frozen=True)
class Collapsed:
    """A combination of the product that is not a cell of its own: it runs as `same_as`."""

    cell: CellValues
    same_as: CellValues

    def public(self) -> dict[str, CellValues]:
        return {"cell": self.cell, "same_as": self.same_as}


@dataclass(frozen=True)
class Expansion:
    cells: list[CellValues]  # product order, after collapsing
    collapsed: list[Collapsed]


def canonical_json(value: Any) -> str:
    """One text per JSON value (keys sorted): 1 and 1.0 differ, as they do to strict validation."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def cell_key(spec: RunSpec) -> str:
    """sha256 of the canonical resolved spec: two cells with the same key are the same run."""
    return hashlib.sha256(canonical_json(spec.model_dump(mode="json")).encode()).hexdigest()


def describe_cell(values: Mapping[str, Any]) -> str:
    """`{smoothing.method: tsla, seed: 0}`: words bare, other values (a string "0.1") as JSON."""

    def show(value: Any) -> str:
        bare = isinstance(value, str) and WORD.fullmatch(value) and value not in ("true", "false", "null")
        return value if bare else canonical_json(value)

    return "{" + ", ".join(f"{key}: {show(value)}" for key, value in values.items()) + "}"


def submodel(annotation: Any) -> type[BaseModel] | None:
    """The spec section a field holds (`SmoothingSpec`, or the model in `TeacherSpec | None`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((found for arg in typing.get_args(annotation) if (found := submodel(arg))), None)
    return None


def check_key(key: str) -> None:
    """A grid key is the dotted path of a spec field, as `--set` takes it."""
    if key == "preset":
        raise SpecError("grid: `preset` is not a grid key; name the preset in `base`")
    if not KEY_SYNTAX.fullmatch(key):
        raise SpecError(f"grid: {key!r} is not a dotted spec key such as smoothing.switch_epoch")
    if key == TEACHER_KEY or key.startswith(TEACHER_KEY + "."):
        raise SpecError(f"grid: {key} is set from the experiment's `teacher`, not from the grid")
    model: type[BaseModel] | None = RunSpec
    parts = key.split(".")
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            raise SpecError(f"grid: {key} is not a spec key ({'.'.join(parts[: depth + 1])} is unknown)")
        model = submodel(field.annotation)


def check_grid(grid: Mapping[str, Any]) -> None:
    """Every key a spec key, none inside another, every value a non-empty list."""
    if not isinstance(grid, Mapping):
        raise SpecError("grid: must map dotted spec keys to lists of values")
    for key, values in grid.items():
        check_key(key)
        if not isinstance(values, list) or not values:
            raise SpecError(f"grid.{key}: must be a non-empty list of values")
        try:
            canonical_json(values)
        except (TypeError, ValueError):  # cells are compared and stored as JSON
            raise SpecError(f"grid.{key}: values must be JSON (no NaN, infinity or other types)") from None
        inner = next((other for other in grid if other.startswith(key + ".")), None)
        if inner is not None:
            raise SpecError(f"grid: {key} and {inner} overlap; give one of them")


def cell_count(grid: Mapping[str, Sequence[Any]]) -> int:
    """How many combinations the grid's product has, computed without expanding it."""
    return math.prod(len(values) for values in grid.values())


def check_base(base: Mapping[str, Any]) -> None:
    smoothing = base.get("smoothing")
    if isinstance(smoothing, Mapping) and "teacher" in smoothing:
        raise SpecError(f"base.{TEACHER_KEY}: an experiment names its teacher in `teacher`, not in the spec")


def cell_override(values: Mapping[str, Any]) -> dict[str, Any]:
    """{"smoothing.method": "lsr", "seed": 1} -> {"smoothing": {"method": "lsr"}, "seed": 1}."""
    return reduce(deep_merge, (nested(key, value) for key, value in values.items()), {})


def method_of(raw: Mapping[str, Any]) -> str | None:
    """The smoothing method a raw spec names, its preset's, or the default; None when malformed."""
    preset = raw.get("preset")
    if isinstance(preset, str) and preset in PRESETS:
        raw = deep_merge(PRESETS[preset], {key: value for key, value in raw.items() if key != "preset"})
    smoothing = raw.get("smoothing", {})
    method = smoothing.get("method", DEFAULT_METHOD) if isinstance(smoothing, Mapping) else None
    return method if isinstance(method, str) else None


def collapse(base: Mapping[str, Any], values: Mapping[str, Any]) -> CellValues:
    """`values` without the keys its cell's method ignores (the method may come from the base)."""
    method = method_of(deep_merge(base, cell_override(values)))
    ignored = IGNORED_BY_METHOD.get(method or "", frozenset())
    return {key: value for key, value in values.items() if key not in ignored}


def expand(base: Mapping[str, Any], grid: Mapping[str, list[Any]]) -> Expansion:
    """The grid's cells in product order; every combination that is not kept as it was given is
    listed in `collapsed` with the cell that runs it. Check `cell_count` against a limit first."""
    check_base(base)
    check_grid(grid)
    kept: dict[str, CellValues] = {}
    collapsed: list[Collapsed] = []
    for combination in itertools.product(*grid.values()):
        given = dict(zip(grid, combination, strict=True))
        values = collapse(base, given)
        runs_as = kept.setdefault(canonical_json(values), values)
        if runs_as is not values or len(values) < len(given):
            collapsed.append(Collapsed(given, runs_as))
    return Expansion(list(kept.values()), collapsed)


def extend_grid(grid: Mapping[str, list[Any]], more: Mapping[str, Any]) -> dict[str, list[Any]]:
    """`grid` with `more`'s values appended to its keys (those not there yet); only existing keys."""
    check_grid(more)
    unknown = [key for key in more if key not in grid]
    if unknown:
        raise SpecError(
            f"grid: {', '.join(unknown)} is not a key of this experiment's grid "
            f"({', '.join(grid) or 'none'}); cells are added along existing keys only"
        )
    extended = {key: list(values) for key, values in grid.items()}
    for key, values in more.items():
        seen = {canonical_json(value) for value in extended[key]}
        for value in values:
            if canonical_json(value) not in seen:
                seen.add(canonical_json(value))
                extended[key].append(value)
    return extended


def find_cell(base: Mapping[str, Any], cells: Sequence[CellValues], wanted: Mapping[str, Any]) -> int | None:
    """The index of the cell `wanted` names (collapsed like the grid's cells), or None."""
    target = canonical_json(collapse(base, wanted))
    return next((index for index, values in enumerate(cells) if canonical_json(values) == target), None)


def resolve(base: Mapping[str, Any], values: Mapping[str, Any], teacher_job_id: str | None) -> RunSpec:
    """The run spec of a cell; a "-pre" cell learns from the best checkpoint of `teacher_job_id`.
    A SpecError names the cell and the field."""
    raw = deep_merge(base, cell_override(values))
    method = method_of(raw)
    if method in TEACHER_METHODS:
        if teacher_job_id is None:
            raise SpecError(
                f"cell {describe_cell(values)}: method {method!r} needs a teacher; give the experiment's "
                "`teacher` (a job, a cell or a spec)"
            )
        raw = deep_merge(raw, {"smoothing": {"teacher": {"job": teacher_job_id, "checkpoint": "best"}}})
    try:
        return build_spec(raw)
    except SpecError as error:
        raise SpecError(f"cell {describe_cell(values)}: {error}") from None

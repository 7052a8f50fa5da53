"""Experiment grids (tsla_spec/grid.py): keys, product order, collapsing, resolving, growth."""

import time

import pytest

from tsla_spec import grid as grids
from tsla_spec.grid import Collapsed
from tsla_spec.spec import SpecError

BASE = {"preset": "digits", "epochs": 4, "smoothing": {"switch_epoch": 2}}


def test_cells_are_the_product_in_the_given_key_order() -> None:
    expansion = grids.expand(BASE, {"seed": [0, 1], "smoothing.switch_epoch": [2, 3]})
    assert expansion.cells == [
        {"seed": 0, "smoothing.switch_epoch": 2},
        {"seed": 0, "smoothing.switch_epoch": 3},
        {"seed": 1, "smoothing.switch_epoch": 2},
        {"seed": 1, "smoothing.switch_epoch": 3},
    ]
    assert [list(cell) for cell in expansion.cells] == [["seed", "smoothing.switch_epoch"]] * 4
    assert expansion.collapsed == []  # digits is tsla: every value matters


def test_keys_a_method_ignores_are_dropped_and_equal_cells_merge() -> None:
    grid = {"smoothing.method": ["baseline", "lsr", "tsla"], "smoothing.switch_epoch": [1, 2], "seed": [0]}
    expansion = grids.expand(BASE, grid)
    assert expansion.cells == [
        {"smoothing.method": "baseline", "seed": 0},
        {"smoothing.method": "lsr", "seed": 0},
        {"smoothing.method": "tsla", "smoothing.switch_epoch": 1, "seed": 0},
        {"smoothing.method": "tsla", "smoothing.switch_epoch": 2, "seed": 0},
    ]
    # Every combination not kept as given says which cell runs it: cells + collapsed = product.
    assert expansion.collapsed == [
        Collapsed(
            {"smoothing.method": m, "smoothing.switch_epoch": s, "seed": 0},
            {"smoothing.method": m, "seed": 0},
        )
        for m in ("baseline", "lsr")
        for s in (1, 2)
    ]
    assert len(expansion.cells) + len(expansion.collapsed) == grids.cell_count(grid) + 2


@pytest.mark.parametrize(
    ("method", "ignored"),
    [
        ("baseline", {"smoothing.theta", "smoothing.switch_epoch", "smoothing.temperature"}),
        ("lsr", {"smoothing.switch_epoch", "smoothing.temperature"}),
        ("tsla", {"smoothing.temperature"}),
        ("lsr-pre", {"smoothing.switch_epoch"}),
        ("tsla-pre", set()),
    ],
)
def test_each_method_ignores_its_knobs(method: str, ignored: set[str]) -> None:
    values = {"smoothing.method": method, "smoothing.theta": 0.2, "smoothing.switch_epoch": 2}
    values["smoothing.temperature"] = 2.0
    kept = grids.collapse(BASE, values)
    assert set(values) - set(kept) == ignored


def test_the_method_may_come_from_the_base_or_its_preset() -> None:
    from_preset = grids.expand({"preset": "digits"}, {"smoothing.temperature": [1.0, 2.0]})  # digits: tsla
    assert from_preset.cells == [{}]
    assert [entry.same_as for entry in from_preset.collapsed] == [{}, {}]
    from_base = grids.expand(
        {"preset": "digits", "smoothing": {"method": "tsla-pre"}}, {"smoothing.temperature": [1.0, 2.0]}
    )
    assert from_base.cells == [{"smoothing.temperature": 1.0}, {"smoothing.temperature": 2.0}]


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"optim.lrr": [0.1]}, "optim.lrr is not a spec key (optim.lrr is unknown)"),
        ({"nonsense": [1]}, "nonsense is not a spec key"),
        ({"seed.value": [1]}, "seed.value is not a spec key"),
        ({"preset": ["digits"]}, "`preset` is not a grid key"),
        ({"Optim.LR": [0.1]}, "is not a dotted spec key"),
        ({"optim..lr": [0.1]}, "is not a dotted spec key"),
        ({"smoothing.teacher.job": ["x"]}, "is set from the experiment's `teacher`"),
        ({"smoothing.teacher": [{"job": "x"}]}, "is set from the experiment's `teacher`"),
        ({"seed": []}, "grid.seed: must be a non-empty list of values"),
        ({"seed": 3}, "grid.seed: must be a non-empty list of values"),
        ({"seed": [float("nan")]}, "grid.seed: values must be JSON"),
        ({"optim": [{"lr": 0.1}], "optim.lr": [0.2]}, "optim and optim.lr overlap"),
    ],
)
def test_bad_grids_are_refused_with_the_key(grid: dict, message: str) -> None:
    with pytest.raises(SpecError, match="^grid") as error:
        grids.expand(BASE, grid)
    assert message in str(error.value)


def test_sections_are_keys_too() -> None:
    expansion = grids.expand(BASE, {"optim": [{"lr": 0.01}, {"lr": 0.02}]})
    assert [grids.resolve(BASE, cell, None).optim.lr for cell in expansion.cells] == [0.01, 0.02]


def test_the_size_is_known_without_expanding() -> None:
    keys = ["seed", "epochs", "batch_size", "optim.lr", "optim.momentum", "smoothing.theta", "model.width"]
    huge = {key: list(range(1, 51)) for key in keys}
    started = time.monotonic()
    assert grids.cell_count(huge) == 50**7
    assert time.monotonic() - started < 0.1


def test_a_cell_resolves_to_the_merged_spec() -> None:
    spec = grids.resolve(BASE, {"smoothing.method": "lsr", "smoothing.theta": 0.3, "seed": 7}, None)
    assert (spec.smoothing.method, spec.smoothing.theta, spec.seed, spec.epochs) == ("lsr", 0.3, 7, 4)
    assert spec.model.width == 16  # the preset's


def test_an_invalid_cell_names_the_cell_and_the_field() -> None:
    cell = {"smoothing.method": "tsla", "smoothing.switch_epoch": 40, "seed": 0}
    with pytest.raises(SpecError) as error:
        grids.resolve({"preset": "digits"}, cell, None)
    message = str(error.value)
    assert message.startswith("cell {smoothing.method: tsla, smoothing.switch_epoch: 40, seed: 0}: ")
    assert "smoothing.switch_epoch (40) must be smaller than epochs (10)" in message


def test_a_wrong_typed_value_names_the_cell_and_the_field() -> None:
    with pytest.raises(SpecError, match=r"^cell \{seed: a\}: seed: Input should be a valid integer"):
        grids.resolve(BASE, {"seed": "a"}, None)
    with pytest.raises(SpecError, match=r"^cell \{optim\.lr: \"0\.1\"\}: optim\.lr"):
        grids.resolve(BASE, {"optim.lr": "0.1"}, None)  # strict: a string is not a number


def test_pre_cells_learn_from_the_teacher_and_need_one() -> None:
    cell = {"smoothing.method": "tsla-pre"}
    spec = grids.resolve(BASE, cell, "t" * 32)
    assert spec.smoothing.teacher is not None
    assert (spec.smoothing.teacher.job, spec.smoothing.teacher.checkpoint) == ("t" * 32, "best")
    with pytest.raises(
        SpecError, match=r"^cell \{smoothing.method: tsla-pre\}: method 'tsla-pre' needs a teacher"
    ):
        grids.resolve(BASE, cell, None)
    assert grids.resolve(BASE, {"smoothing.method": "lsr"}, "t" * 32).smoothing.teacher is None


def test_the_base_names_no_teacher() -> None:
    with pytest.raises(SpecError, match="base.smoothing.teacher"):
        grids.expand({"smoothing": {"teacher": {"job": "x"}}}, {"seed": [0]})


def test_cell_keys_tell_runs_apart() -> None:
    one = grids.resolve(BASE, {"seed": 1}, None)
    assert grids.cell_key(one) == grids.cell_key(grids.resolve({**BASE, "seed": 1}, {}, None))
    assert grids.cell_key(one) != grids.cell_key(grids.resolve(BASE, {"seed": 2}, None))
    assert len(grids.cell_key(one)) == 64


def test_growth_appends_new_values_to_existing_keys_only() -> None:
    grid = {"smoothing.method": ["lsr", "tsla"], "seed": [0, 1]}
    assert grids.extend_grid(grid, {"seed": [1, 3, 2, 3]}) == {
        "smoothing.method": ["lsr", "tsla"],
        "seed": [0, 1, 3, 2],
    }
    assert grid["seed"] == [0, 1]  # not changed in place
    with pytest.raises(SpecError, match="smoothing.theta is not a key of this experiment's grid"):
        grids.extend_grid(grid, {"smoothing.theta": [0.2]})
    with pytest.raises(SpecError, match="grid.seed: must be a non-empty list"):
        grids.extend_grid(grid, {"seed": []})


def test_a_cell_is_found_by_its_values_collapsed() -> None:
    cells = grids.expand(
        BASE, {"smoothing.method": ["baseline", "tsla"], "smoothing.switch_epoch": [1, 2]}
    ).cells
    assert grids.find_cell(BASE, cells, {"smoothing.method": "baseline", "smoothing.switch_epoch": 2}) == 0
    assert grids.find_cell(BASE, cells, {"smoothing.method": "tsla", "smoothing.switch_epoch": 2}) == 2
    assert grids.find_cell(BASE, cells, {"smoothing.method": "tsla", "smoothing.switch_epoch": 3}) is None


def test_cells_are_described_on_one_line() -> None:
    assert grids.describe_cell({"smoothing.method": "tsla", "seed": 0, "x": [1, "a"]}) == (
        '{smoothing.method: tsla, seed: 0, x: [1,"a"]}'
    )

import datetime
import json
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from tsla_core.loop import lr_factor
from tsla_core.loss import stage_at
from tsla_spec.datasets import DATASETS
from tsla_spec.presets import PRESETS
from tsla_spec.spec import (
    DataSpec,
    DisplayName,
    RunSpec,
    SpecError,
    build_spec,
    load_spec_file,
    parse_override,
    upgrade_stored_spec,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_spec(name: str) -> None:
    spec = build_spec({"preset": name})
    assert spec.epochs >= 1


def test_cifar_preset_carries_the_paper_protocol() -> None:
    spec = build_spec({"preset": "cifar100-resnet18"})
    assert (spec.model.arch, spec.model.stem, spec.epochs, spec.batch_size) == ("resnet18", "cifar", 200, 128)
    assert (spec.optim.name, spec.optim.lr, spec.optim.momentum, spec.optim.weight_decay) == (
        "sgd",
        0.1,
        0.9,
        5e-4,
    )
    assert (spec.schedule.kind, spec.schedule.milestones, spec.schedule.gamma) == (
        "step",
        (60, 120, 160),
        0.2,
    )
    assert (spec.smoothing.method, spec.smoothing.theta, spec.smoothing.switch_epoch) == ("tsla", 0.2, 160)
    assert build_spec({"preset": "imagenet-resnet50"}).epochs == 90


def test_fields_override_the_preset_and_nested_fields_merge() -> None:
    spec = build_spec(
        {"preset": "digits", "optim": {"lr": 0.01}, "epochs": 3, "smoothing": {"switch_epoch": 2}}
    )
    assert spec.optim.lr == 0.01
    assert spec.optim.momentum == 0.9  # kept from the preset
    assert spec.epochs == 3
    assert spec.smoothing.switch_epoch == 2


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"preset": "nope"}, "unknown preset"),
        ({"epochs": -1}, "epochs"),
        ({"epochs": "ten"}, "epochs"),
        ({"optimizer": {}}, "optimizer: Extra inputs are not permitted"),
        ({"optim": {"lrate": 0.1}}, "optim.lrate"),
        ({"data": {"name": "../../etc"}}, "data.name"),
        ({"smoothing": {"method": "tsla"}}, "needs smoothing.switch_epoch"),
        ({"smoothing": {"method": "lsr-pre"}}, "needs smoothing.teacher"),
        ({"smoothing": {"method": "lsr", "theta": 0}}, "theta > 0"),
        ({"smoothing": {"method": "lsr", "theta": 1.5}}, "smoothing.theta"),
        ({"epochs": 5, "smoothing": {"method": "tsla", "switch_epoch": 5}}, "must be smaller than epochs"),
        ({"schedule": {"milestones": [5, 3]}}, "strictly increasing"),
        ({"device": "tpu"}, "device"),
        ({"smoothing": {"method": "lsr-pre", "teacher": {"job": "a", "path": "b"}}}, "exactly one"),
        # Strict at every depth: nothing is coerced.
        ({"optim": {"lr": "0.05"}}, "optim.lr: Input should be a valid number"),
        ({"data": {"augment": "yes"}}, "data.augment: Input should be a valid boolean"),
        ({"smoothing": {"switch_epoch": "1"}}, "smoothing.switch_epoch: Input should be a valid integer"),
        ({"smoothing": {"switch_epoch": 1.0}}, "smoothing.switch_epoch"),
        ({"model": {"width": True}}, "model.width"),
        ({"schedule": {"milestones": ["3"]}}, "schedule.milestones.0"),
        ({"schedule": {"milestones": "3,6"}}, "schedule.milestones"),
        ({"epochs": 2.0}, "epochs"),
        # Bounded lists and numbers, printable strings.
        ({"schedule": {"milestones": list(range(1, 66))}}, "at most 64 items"),
        ({"schedule": {"milestones": list(range(1, 100_001))}}, "at most 64 items"),
        ({"schedule": {"milestones": [10_001]}}, "less than or equal to 10000"),
        ({"schedule": {"milestones": [0]}}, "greater than or equal to 1"),
        ({"smoothing": {"method": "lsr", "switch_epoch": 10**12}}, "smoothing.switch_epoch"),
        ({"device": "cuda:\u0663"}, "device"),
        ({"optim": {"lr": float("nan")}}, "JSON"),
        ({"seed": datetime.date(2024, 1, 1)}, "JSON"),
        ({"smoothing": {"method": "lsr-pre", "teacher": {"job": "a\u202eb"}}}, "printable"),
        ({"smoothing": {"method": "lsr-pre", "teacher": {"path": "a\nb"}}}, "printable"),
        ({"smoothing": {"method": "lsr-pre", "teacher": {"job": "a" * 65}}}, "at most 64 characters"),
        # The validation split, the subset and the probe.
        ({"data": {"val_fraction": 0.6}}, "data.val_fraction: Input should be less than or equal to 0.5"),
        ({"data": {"val_fraction": -0.1}}, "data.val_fraction"),
        ({"data": {"split_seed": -1}}, "data.split_seed"),
        ({"data": {"train_subset": 9}}, r"train_subset \(9\) must be at least the number of classes \(10\)"),
        ({"data": {"name": "cifar100", "train_subset": 50}}, "number of classes"),
        ({"data": {"train_subset": 1438}}, "more than the 1,437 training examples of digits"),
        ({"data": {"name": "synthetic", "synthetic": {"num_train": 100}, "train_subset": 101}}, "more than"),
        ({"grad_variance": {"every_steps": 20}}, "grad_variance.every_steps: Extra inputs are not permitted"),
        ({"grad_variance": {"mode": "both"}}, "grad_variance.mode"),
        ({"grad_variance": {"probes_per_epoch": 0}}, "grad_variance.probes_per_epoch"),
        ({"grad_variance": {"exact_examples": 1}}, "grad_variance.exact_examples"),
    ],
)
def test_bad_specs_are_explained(raw: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_spec(raw)


def test_parse_override_builds_nested_mappings_with_yaml_values() -> None:
    assert parse_override("optim.lr=0.05") == {"optim": {"lr": 0.05}}
    assert parse_override("channels_last=false") == {"channels_last": False}
    assert parse_override("schedule.milestones=[3, 6]") == {"schedule": {"milestones": [3, 6]}}
    with pytest.raises(SpecError):
        parse_override("no-equals-sign")


def test_spec_files_load_from_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("preset: digits\nepochs: 8\n")
    (tmp_path / "b.json").write_text(json.dumps({"preset": "digits", "epochs": 9}))
    assert build_spec(load_spec_file(tmp_path / "a.yaml")).epochs == 8
    assert build_spec(load_spec_file(tmp_path / "b.json")).epochs == 9
    (tmp_path / "bad.yaml").write_text("epochs: [1,\n")
    with pytest.raises(SpecError, match="not valid"):
        load_spec_file(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec_file(tmp_path / "list.yaml")
    with pytest.raises(SpecError, match="cannot read"):
        load_spec_file(tmp_path / "missing.yaml")


def test_json_arrays_fill_tuple_fields_and_ints_fill_floats() -> None:
    spec = build_spec({"preset": "digits", "schedule": {"milestones": [3, 6]}, "optim": {"lr": 1}})
    assert spec.schedule.milestones == (3, 6) and spec.optim.lr == 1.0


def test_stored_specs_still_load_in_python_mode() -> None:
    """The worker reads `job.spec` (JSON-shaped: lists for tuples) with `RunSpec.model_validate`."""
    spec = build_spec({"preset": "cifar100-resnet18"})
    stored = json.loads(json.dumps(spec.model_dump(mode="json")))
    assert RunSpec.model_validate(stored) == spec
    assert RunSpec.model_validate_json(spec.model_dump_json()) == spec


class Named(BaseModel):
    name: DisplayName


@pytest.mark.parametrize("name", ["a", "TSLA run #3 (θ=0.2)", "x" * 200, "名前", "a b"])
def test_display_names_take_printable_text(name: str) -> None:
    assert Named(name=name).name == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        " a",
        "a ",
        "x" * 201,
        "a\nb",
        "a\x00b",
        "\x1b[31m",
        "a\u202eb",
        "a\u200bb",
        "\ufeffa",
        "a\u2028b",
        "\ue000",
    ],
)
def test_display_names_refuse_anything_else(name: str) -> None:
    with pytest.raises(ValidationError):
        Named(name=name)


def test_the_validation_fraction_defaults_per_data_set() -> None:
    defaults = {name: DataSpec(name=name).resolved_val_fraction() for name in DATASETS}  # type: ignore[arg-type]
    assert defaults == {
        "digits": 0.1,
        "fashion-mnist": 0.1,
        "cifar10": 0.1,
        "cifar100": 0.1,
        "imagenet": 0.0,  # its val folder is the test split
        "synthetic": 0.0,
    }
    assert DataSpec(name="imagenet", val_fraction=0.05).resolved_val_fraction() == 0.05
    assert DataSpec(name="digits", val_fraction=0).resolved_val_fraction() == 0
    spec = build_spec({"preset": "fashion-mnist", "data": {"train_subset": 6000, "split_seed": 3}})
    assert (spec.data.train_subset, spec.data.split_seed, spec.data.val_fraction) == (6000, 3, None)
    probe = build_spec({"preset": "digits"}).grad_variance
    assert (probe.enabled, probe.mode, probe.probes_per_epoch, probe.exact_examples) == (
        True,
        "split",
        4,
        256,
    )


@pytest.mark.parametrize("switch", [120, 130, 140, 150, 159, 160, 161, 170, 180, 199])
def test_a_switch_grid_may_name_epochs_that_are_not_learning_rate_drops(switch: int) -> None:
    """The paper sweeps the switch between 120 and 180 of 200 epochs; the lr drops at 60/120/160
    only, and the switch changes the targets alone, at exactly that epoch."""
    spec = build_spec({"preset": "cifar100-resnet18", "smoothing": {"switch_epoch": switch}})
    assert spec.schedule.milestones == (60, 120, 160) and spec.smoothing.switch_epoch == switch
    assert (stage_at(spec.smoothing, switch - 1), stage_at(spec.smoothing, switch)) == ("smooth", "onehot")
    factors = [lr_factor(spec.schedule, spec.epochs, e) for e in (switch - 1, switch)]
    assert factors[0] == factors[1] or switch in spec.schedule.milestones


def test_a_spec_stored_by_an_earlier_version_loads_with_its_old_meaning() -> None:
    """Job rows and checkpoints written before probes_per_epoch and validation splits."""
    old = build_spec({"preset": "digits"}).model_dump(mode="json")
    old["grad_variance"] = {"enabled": True, "every_steps": 20}
    del old["data"]["val_fraction"]
    upgraded = RunSpec.model_validate(upgrade_stored_spec(old))
    assert upgraded.data.val_fraction == 0.0, "it trained on all its training data"
    assert upgraded.grad_variance.enabled
    today = build_spec({"preset": "digits"}).model_dump(mode="json")
    assert upgrade_stored_spec(today) == today, "today's specs pass unchanged"

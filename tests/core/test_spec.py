import json
from pathlib import Path

import pytest

from tsla_spec.presets import PRESETS
from tsla_spec.spec import SpecError, build_spec, load_spec_file, parse_override


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
    assert spec.schedule.kind == "step"
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

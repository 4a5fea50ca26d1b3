"""params.yaml is validated once, with messages that name the parameter and what it accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrstudy.errors import InputError
from cxrstudy.params import load_params, parse_params
from tests.conftest import ROOT, project_params, tiny_raw


def test_the_project_params_file_is_valid() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.seeds == [12, 22, 32, 42]
    assert params.train.loss.alpha == -1  # no class weighting, in torchvision's convention


def test_an_unknown_key_is_named() -> None:
    raw = tiny_raw(train={"epoch": 3})
    with pytest.raises(InputError, match=r"train\.epoch: unknown parameter"):
        parse_params(raw)


def test_a_wrong_type_is_named_with_the_value() -> None:
    with pytest.raises(InputError, match=r"train\.epochs: .*integer.*'eight'"):
        parse_params(tiny_raw(train={"epochs": "eight"}))


@pytest.mark.parametrize("clip", [0, -1.5])
def test_a_clip_limit_at_or_below_zero_is_refused(clip: float) -> None:
    with pytest.raises(InputError, match=r"preprocess\.clip_limit: .*greater than 0"):
        parse_params(tiny_raw(preprocess={"clip_limit": clip}))


def test_an_empty_seeds_list_is_refused() -> None:
    with pytest.raises(InputError, match=r"seeds: .*at least one"):
        parse_params(tiny_raw(seeds=[]))


def test_a_duplicated_seed_is_refused() -> None:
    with pytest.raises(InputError, match=r"seeds: .*repeated: \[12\]"):
        parse_params(tiny_raw(seeds=[12, 22, 12]))


def test_missing_seeds_is_refused() -> None:
    raw = project_params()
    del raw["seeds"]
    with pytest.raises(InputError, match=r"seeds: missing"):
        parse_params(raw)


def test_focal_alpha_must_follow_torchvisions_convention() -> None:
    with pytest.raises(InputError, match=r"train\.loss\.alpha: .*-1 \(no class weighting\)"):
        parse_params(tiny_raw(train={"loss": {"alpha": 1.0}}))


def test_training_never_upsamples_the_processed_images() -> None:
    with pytest.raises(InputError, match=r"train\.image_size \(64\) must be <= preprocess\.image_size \(32\)"):
        parse_params(tiny_raw(train={"image_size": 64}))


def test_an_unknown_key_lists_the_keys_accepted_there() -> None:
    with pytest.raises(InputError) as err:
        parse_params(tiny_raw(train={"learning_rate": 0.1}))
    line = next(line for line in str(err.value).splitlines() if "train.learning_rate" in line)
    assert "'lr'" in line, line  # the likely intended key
    for key in ("epochs", "batch_size", "weight_decay", "schedule"):
        assert key in line, line


@pytest.mark.parametrize(("override", "message"), [
    ({"train": {"lr": 100.0}}, r"train\.lr: .*less than or equal to 10.*100\.0"),
    ({"train": {"optimizer": "rmsprop"}}, r"train\.optimizer: .*'adam', 'adamw' or 'sgd'.*'rmsprop'"),
    ({"seeds": "1, 2"}, r"seeds: .*valid list.*'1, 2'"),
], ids=["out-of-range", "not-a-choice", "not-a-list"])
def test_a_bad_value_is_named_with_what_is_accepted(override: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_params(tiny_raw(**override))


def test_every_bad_key_is_reported_at_once() -> None:
    with pytest.raises(InputError) as err:
        parse_params(tiny_raw(train={"epochs": 0, "lr": -1}))
    assert "2 invalid parameter(s)" in str(err.value)


def test_a_missing_params_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"params\.yaml: parameters file not found .*--params PATH"):
        load_params(tmp_path / "params.yaml")


def test_invalid_yaml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("seeds: [1, 2\n")
    with pytest.raises(InputError, match=r"broken\.yaml: not valid YAML"):
        load_params(path)


def _keys(tree: object, prefix: str = "") -> set[str]:
    if not isinstance(tree, dict):
        return {prefix}
    return set().union(*(_keys(v, f"{prefix}.{k}" if prefix else k) for k, v in tree.items()))


def test_the_study_profile_lists_only_changes_and_validates_merged() -> None:
    from cxrstudy.profile import overrides
    from cxrstudy.yamlfile import read_yaml

    study = read_yaml(ROOT / "configs/nih-study.yaml")
    assert _keys(study) < _keys(project_params())  # a subset: no second copy of params.yaml
    sets = overrides(ROOT / "configs/nih-study.yaml", ROOT / "params.yaml")
    assert "ingest.source='nih'" in sets and "train.image_size=224" in sets
    assert "ingest.external='none'" in sets  # a real model is never tested on the embedded phantom
    assert not any(s.startswith("ingest.nih.local_path") for s in sets)  # listed, but the same as params.yaml


def test_a_profile_with_an_unknown_key_or_a_bad_value_is_refused(tmp_path: Path) -> None:
    from cxrstudy.profile import overrides

    profile = tmp_path / "p.yaml"
    profile.write_text("train:\n  epoch: 3\n")
    with pytest.raises(InputError, match=r"p\.yaml: train\.epoch: not a parameter of params\.yaml"):
        overrides(profile, ROOT / "params.yaml")
    profile.write_text("train:\n  image_size: 16\n")
    with pytest.raises(InputError,
                       match=r"(?s)p\.yaml: .*train\.image_size: Input should be greater than or equal to 32"):
        overrides(profile, ROOT / "params.yaml")


def test_every_parameter_must_be_set_in_params_yaml() -> None:
    raw = tiny_raw()
    del raw["train"]["epochs"]
    with pytest.raises(InputError, match=r"train\.epochs: missing"):
        parse_params(raw)


@pytest.mark.parametrize(("override", "message"), [
    ({"train": {"epochs": True}}, r"train\.epochs: Input should be a valid integer"),
    ({"train": {"batch_size": 8.0}}, r"train\.batch_size: Input should be a valid integer"),
    ({"train": {"image_size": 28}}, r"train\.image_size: Input should be greater than or equal to 32"),
    ({"numerics": {"isa": "avx512"}}, r"numerics\.isa: Input should be 'avx2' or 'native'"),
])
def test_no_silent_coercion_and_densenet_sized_inputs(override: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_params(tiny_raw(**override))


def test_a_key_given_twice_is_refused_with_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text() + "\ntrain:\n  epochs: 1\n")
    with pytest.raises(InputError, match=r"params\.yaml: not valid YAML: .*key 'train' is given twice"):
        load_params(path)

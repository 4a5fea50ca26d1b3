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
    with pytest.raises(InputError, match=r"seeds: Field required"):
        parse_params(raw)


def test_focal_alpha_must_follow_torchvisions_convention() -> None:
    with pytest.raises(InputError, match=r"train\.loss\.alpha: .*-1 \(no class weighting\)"):
        parse_params(tiny_raw(train={"loss": {"alpha": 1.0}}))


def test_training_never_upsamples_the_processed_images() -> None:
    with pytest.raises(InputError, match=r"train\.image_size \(64\) must be <= preprocess\.image_size \(32\)"):
        parse_params(tiny_raw(train={"image_size": 64}))


def test_every_bad_key_is_reported_at_once() -> None:
    with pytest.raises(InputError) as err:
        parse_params(tiny_raw(train={"epochs": 0, "lr": -1}))
    assert "2 invalid parameter(s)" in str(err.value)


def test_a_missing_params_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="params.yaml: parameters file not found"):
        load_params(tmp_path / "params.yaml")


def test_invalid_yaml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seeds: [1, 2\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_params(path)


def _keys(tree: object, prefix: str = "") -> set[str]:
    if not isinstance(tree, dict):
        return {prefix}
    return set().union(*(_keys(v, f"{prefix}.{k}" if prefix else k) for k, v in tree.items()))


def test_the_real_study_profile_is_valid_and_sets_every_key_params_yaml_sets() -> None:
    import yaml

    study_path = ROOT / "configs/nih-study.yaml"
    study = load_params(study_path)
    assert study.ingest.source == "nih" and study.split.method == "official"
    assert study.train.image_size == 224 and study.seeds == [12, 22, 32, 42]
    assert _keys(yaml.safe_load(study_path.read_text())) == _keys(project_params())

"""Profiles: a YAML file listing only what differs from `params.yaml` (e.g. `configs/nih-study.yaml`), applied with
DVC's own mechanism, `dvc exp run --set-param`.

The committed `params.yaml` stays the sample profile; applying a profile changes exactly the keys it lists, so
`dvc params diff` shows what the study changes and `dvc exp show` records it as an experiment. The merged result is
validated with the one schema (`cxrstudy.params`) before anything runs.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cxrstudy.errors import InputError
from cxrstudy.params import Params, parse_params
from cxrstudy.yamlfile import read_yaml


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _leaves(value, f"{path}.")
        else:
            yield path, value


def _merge(base: dict[str, Any], overlay: Mapping[str, Any], where: str, source: Path) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        if key not in base:
            raise InputError(f"{source}: {where}{key}: not a parameter of params.yaml; a profile may only change "
                             "existing keys")
        if isinstance(value, Mapping):
            if not isinstance(base[key], dict):
                raise InputError(f"{source}: {where}{key}: params.yaml has a value here, not a section")
            out[key] = _merge(base[key], value, f"{where}{key}.", source)
        else:
            out[key] = value
    return out


def _override(key: str, value: Any) -> str:
    """One `--set-param` override (Hydra's syntax): strings quoted, the rest as YAML flow values."""
    if isinstance(value, str):
        return f"{key}='{value}'" if "'" not in value else f'{key}="{value}"'
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def _read(profile: Path, base: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    overlay = read_yaml(profile)
    if not isinstance(overlay, dict) or not overlay:
        raise InputError(f"{profile}: expected a mapping of the parameters to change")
    current = read_yaml(base)
    if not isinstance(current, dict):
        raise InputError(f"{base}: expected a mapping of sections at the top level")
    return current, overlay


def load(profile: Path, base: Path = Path("params.yaml")) -> Params:
    """`base` with `profile` applied, validated (`InputError` names the bad key)."""
    current, overlay = _read(profile, base)
    return parse_params(_merge(current, overlay, "", profile), profile)


def overrides(profile: Path, base: Path = Path("params.yaml")) -> list[str]:
    """The `--set-param` overrides that turn `base` into `profile`, for the keys whose value changes; the merged
    parameters are validated first (`InputError` names the bad key)."""
    load(profile, base)
    current, overlay = _read(profile, base)
    now = dict(_leaves(current))
    return [_override(key, value) for key, value in _leaves(overlay) if now.get(key) != value]


def run(profile: Path, base: Path, execute: bool, dvc_args: Sequence[str]) -> int:
    """Print the overrides, or with `execute` run `dvc exp run` with them (and `dvc_args`); its exit status."""
    sets = overrides(profile, base)
    if not execute:
        print("\n".join(sets))
        return 0
    command = ["dvc", "exp", "run", *[arg for s in sets for arg in ("--set-param", s)], *dvc_args]
    print("+ " + " ".join(command), flush=True)
    return subprocess.run(command, check=False).returncode

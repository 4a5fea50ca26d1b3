"""Shared fixtures: tiny parameters and one tiny dataset built once per test session."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cxrstudy import numerics
from cxrstudy.params import Params, parse_params

ROOT = Path(__file__).resolve().parents[1]

# Small enough for seconds per stage on two CPU cores, large enough that every part of the split is non-empty.
TINY: dict[str, Any] = {
    "seeds": [1, 2],
    "numerics": {"threads": 1},
    "ingest": {"phantom": {"n_images": 120, "image_size": 96}},
    "preprocess": {"image_size": 32, "workers": 1},
    "train": {"image_size": 32, "epochs": 2, "batch_size": 16, "val_batch_size": 64},
    "evaluate": {"batch_size": 64},
}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def project_params() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_raw(**override: Any) -> dict[str, Any]:
    """The project's params.yaml with the tiny settings and `override` merged in."""
    return deep_merge(deep_merge(project_params(), TINY), override)


def tiny_params(**override: Any) -> Params:
    return parse_params(tiny_raw(**override))


def section(*path: str, **override: Any) -> Any:
    """A section of the project's params.yaml (e.g. `section("ingest", "nih")`), validated, with `override`."""
    raw: Any = project_params()
    for key in path:
        raw = raw[key]
    model: Any = Params
    for key in path:
        model = model.model_fields[key].annotation
    return model.model_validate({**raw, **override})


# The tests run stages in this process too: pin its numerics as the command line would, before torch or NumPy load.
numerics.pin(tiny_params().numerics)

from cxrstudy.data import ingest, preprocess, split  # noqa: E402 - after the numerics are pinned

# `dvc status --json` of an up-to-date project: the manifest stage is always run (it watches the data source).
UP_TO_DATE = ({}, {"manifest": ["always changed"]})


def write_params(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding data/raw, data/processed and data/splits for the tiny parameters (built once)."""
    root = tmp_path_factory.mktemp("tiny")
    params = tiny_params()
    ingest.run(params, root / "data/raw", workers=1)
    preprocess.run(params, root / "data/raw", root / "data/processed")
    split.run(params, root / "data/raw", root / "data/splits")
    return root


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """`mount(size_bytes)` mounts a tmpfs of that size and returns its folder; unmounted afterwards."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full disk needs root on Linux (mount -t tmpfs)")
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TQDM_DISABLE", "1")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")

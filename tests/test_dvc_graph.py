"""dvc.yaml stays honest as the code moves: every stage depends on every project file its command imports (the
command line included), on the package data it reads, and on no parameter it does not use."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from cxrstudy.closure import DISCOVERING, PACKAGE, imported_modules, module_file, stage_closure, stage_module
from tests.conftest import ROOT

DATA_FOLDERS = ("resources", "templates")  # package data, read through importlib.resources / jinja2
CMD = re.compile(r"python -m cxrstudy (\w+)")


def data_folders(files: set[Path]) -> set[str]:
    """The package-data folders that these modules read."""
    used = set()
    for path in files:
        text = path.read_text()
        used |= {folder for folder in DATA_FOLDERS if re.search(rf"[\"']{folder}[\"']", text)}
    return used


def dvc_stages() -> dict[str, dict[str, Any]]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: (spec["do"] if "foreach" in spec else spec) for name, spec in stages.items()}


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def discovering_folders(files: set[Path]) -> set[str]:
    """The discovering packages among `files`, as dvc.yaml names them (a folder)."""
    return {f"src/cxrstudy/{folder}" for folder in DISCOVERING if PACKAGE / folder / "__init__.py" in files}


STAGES = sorted(dvc_stages())


def test_every_stage_runs_its_own_entry_point() -> None:
    for name, spec in dvc_stages().items():
        match = CMD.search(spec["cmd"])
        assert match and match.group(1) == name, f"stage {name}: command {spec['cmd']!r}"
        assert module_file(stage_module(name)), f"stage {name} has no module"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_depends_on_every_file_it_imports(stage: str) -> None:
    deps = [str(d) for d in dvc_stages()[stage].get("deps", [])]
    files = stage_closure(stage)
    needed = {str(p.relative_to(ROOT)) for p in files}
    needed |= {f"src/cxrstudy/{folder}" for folder in data_folders(files)}
    missing = sorted(p for p in needed if not covered(p, deps) and not any(d.startswith(p + "/") for d in deps))
    assert not missing, f"dvc.yaml stage {stage!r} imports or reads these without depending on them: {missing}"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_depends_on_no_project_file_it_does_not_import(stage: str) -> None:
    deps = [str(d) for d in dvc_stages()[stage].get("deps", []) if str(d).startswith("src/")]
    files = stage_closure(stage)
    needed = {str(p.relative_to(ROOT)) for p in files}
    folders = {f"src/cxrstudy/{folder}" for folder in data_folders(files)} | discovering_folders(files)
    extra = [d for d in deps if d not in needed and not any(covered(d, [f]) for f in folders)]
    assert not extra, f"dvc.yaml stage {stage!r} depends on code it never imports: {extra}"


def test_the_walk_follows_lazy_imports(tmp_path: Path) -> None:
    # A function-level import (cli -> stage, ingest -> the adapters) is an import: the walk must see it, and the
    # adapters that the sources package finds by name.
    assert "cxrstudy.data.sources" in imported_modules(PACKAGE / "data/ingest.py")
    assert PACKAGE / "data/nih.py" in stage_closure("ingest")
    assert PACKAGE / "data/sources/phantom.py" in stage_closure("ingest")
    assert PACKAGE / "data/__init__.py" in stage_closure("ingest")
    assert PACKAGE / "learning/train.py" not in stage_closure("split")  # the other branches of the command line


class Recorder:
    """A read-only view of the parameters that records the dotted path of every parameter a stage reads."""

    def __init__(self, model: Any, path: str, seen: set[str]) -> None:
        self._model, self._path, self._seen = model, path, seen

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        """Sent to a worker process: the plain section, counted as read whole."""
        self._seen.add(self._path)
        return copy.copy, (self._model,)

    def __getattr__(self, name: str) -> Any:
        from pydantic import BaseModel

        value = getattr(self._model, name)
        path = f"{self._path}.{name}" if self._path else name
        if isinstance(value, BaseModel):
            return Recorder(value, path, self._seen)
        if not callable(value):
            self._seen.add(path)
            return value

        def whole_section(*args: Any, **kwargs: Any) -> Any:  # model_dump(), model_copy(): the section is read
            self._seen.add(self._path)
            return value(*args, **kwargs)

        return whole_section


def used_by(param: str, seen: set[str]) -> bool:
    return any(p == param or p.startswith(param + ".") or param.startswith(p + ".") for p in seen)


@pytest.mark.slow
def stage_commands(name: str, cmd: str) -> list[list[str]]:
    """The arguments after `python -m cxrstudy` of each of a stage's runs: a `foreach` stage's once per item (the
    tiny profile's seeds for `${seeds}`, each key of a mapping with its `${item.field}`s)."""
    from tests.conftest import tiny_params

    foreach = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name].get("foreach")
    if foreach is None:
        runs = [cmd]
    elif isinstance(foreach, dict):
        runs = []
        for key, item in foreach.items():
            run = cmd.replace("${key}", key)
            for field, value in item.items():
                run = run.replace("${item." + field + "}", str(value))
            runs.append(run)
    else:
        runs = [cmd.replace("${item}", str(seed)) for seed in tiny_params().seeds]
    return [run.split()[3:] for run in runs]


def test_no_stage_depends_on_a_parameter_it_does_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrstudy import cli
    from tests.conftest import tiny_params

    monkeypatch.chdir(tmp_path)
    seen: set[str] = set()
    # The tiny run with an external site, so that the external stage has work; the manifest also with the real
    # sources configured, whose local copies it records (none given here: it records that).
    small_site_b = {"external": "chexpert_phantom", "chexpert_phantom": {"n_images": 40, "image_size": 64}}
    configs = {"": tiny_params(ingest=small_site_b),
               "real sources": tiny_params(ingest={"source": "nih", "external": "chexpert",
                                                   "chexpert": {"local_path": str(tmp_path / "chexpert")}})}
    (tmp_path / "chexpert").mkdir()
    (tmp_path / "reports").mkdir()  # the report stage's input that no stage makes: the grid's summary
    shutil.copy(ROOT / "reports/experiments.json", tmp_path / "reports/experiments.json")
    unused: dict[str, list[str]] = {}
    for name, spec in dvc_stages().items():  # dvc.yaml's order is a valid run order
        seen.clear()
        for config, params in configs.items():
            if config and name != "manifest":
                continue
            monkeypatch.setattr(cli, "load_params", lambda _path, params=params: Recorder(params, "", seen))
            for argv in stage_commands(name, spec["cmd"]):
                assert cli.main(argv) == 0, f"stage {name} failed: {argv} {config}"
        listed = [p for p in spec.get("params", []) if isinstance(p, str)]
        unused[name] = [p for p in listed if not used_by(p, seen)]
    assert not any(unused.values()), f"dvc.yaml stages depend on parameters they never read: {unused}"

"""dvc.yaml stays honest as the code moves: every stage depends on every project file its command imports (the
command line included), on the package data it reads, and on no parameter it does not use."""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

PACKAGE = ROOT / "src" / "cxrstudy"
DATA_FOLDERS = ("resources", "templates")  # package data, read through importlib.resources / jinja2
# Packages that import every module in them by name at run time (importlib): importing one imports them all, and a
# stage depends on the folder, so that a new module there (a new dataset adapter) needs no new line in dvc.yaml.
DISCOVERING = ("data/sources",)
CMD = re.compile(r"python -m cxrstudy (\w+)")


def _discovered(name: str) -> set[str]:
    """The modules a discovering package (`DISCOVERING`) imports by name when `name` is that package."""
    for folder in DISCOVERING:
        if name == "cxrstudy." + folder.replace("/", "."):
            return {f"{name}.{p.stem}" for p in sorted((PACKAGE / folder).glob("*.py")) if p.stem != "__init__"}
    return set()


def _module_file(name: str) -> Path | None:
    """src/cxrstudy/<name>.py (or a subpackage's __init__.py) for a dotted module name under cxrstudy."""
    parts = name.split(".")
    if parts[0] != "cxrstudy":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


PHASES = ("data", "learning", "reporting")  # the subpackages; a stage's module is in one of them


def stage_module(stage: str) -> str:
    """The module that `python -m cxrstudy <stage>` runs: cxrstudy.<phase>.<stage>."""
    found = [f"cxrstudy.{phase}.{stage}" for phase in PHASES if (PACKAGE / phase / f"{stage}.py").is_file()]
    assert len(found) == 1, f"stage {stage}: expected one module src/cxrstudy/<phase>/{stage}.py, found {found}"
    return found[0]


def with_packages(name: str) -> set[str]:
    """A module and the packages above it, which Python imports first (cxrstudy.data.split: cxrstudy.data too)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def imported_modules(path: Path, top_level_only: bool = False) -> set[str]:
    """The cxrstudy modules `path` imports, anywhere in it (or only at module level)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("cxrstudy")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cxrstudy"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")}
    return {p for m in found if _module_file(m) for p in with_packages(m)}


def stage_closure(stage: str) -> set[Path]:
    """Every project file `python -m cxrstudy <stage>` can import: the package, __main__, the command line's own
    imports, the stage's module and, transitively, everything those import."""
    todo = ["cxrstudy", "cxrstudy.__main__", "cxrstudy.cli", *with_packages(stage_module(stage))]
    todo += sorted(imported_modules(PACKAGE / "cli.py", top_level_only=True))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        assert path is not None, name
        if name != "cxrstudy.cli":  # the command line imports each stage's module only in that stage's branch
            todo += sorted((imported_modules(path) | _discovered(name)) - seen)
    return {_module_file(m) for m in seen}  # type: ignore[misc]


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
        assert _module_file(stage_module(name)), f"stage {name} has no module"


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

"""The project files a stage's command can import: `python -m cxrstudy <stage>` runs the package, `__main__`, the
command line's module-level imports and the stage's module (`cxrstudy.<phase>.<stage>`), and, transitively,
everything those import, at module level or inside a function. A package that imports every module in it by name
(`DISCOVERING`: the dataset adapters) counts as importing them all.

Two readers: the model file's code version (`learning.checkpoint.code_digest`), so that a retrained model's bytes
change with its stage's own code and with nothing else in the package; and the test that keeps each stage's
`dvc.yaml` deps equal to its closure (`tests/test_dvc_graph.py`). Together they make a model file depend only on
what DVC hashes for it.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
PHASES = ("data", "learning", "reporting")  # the subpackages; a stage's module is in one of them
# Packages that import every module in them by name at run time (importlib): importing one imports them all, and a
# stage depends on the folder, so that a new module there (a new dataset adapter) needs no new line in dvc.yaml.
DISCOVERING = ("data/sources",)


def module_file(name: str) -> Path | None:
    """src/cxrstudy/<name>.py (or a subpackage's __init__.py) for a dotted module name under cxrstudy."""
    parts = name.split(".")
    if parts[0] != "cxrstudy":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def discovered(name: str) -> set[str]:
    """The modules a discovering package (`DISCOVERING`) imports by name when `name` is that package."""
    for folder in DISCOVERING:
        if name == "cxrstudy." + folder.replace("/", "."):
            return {f"{name}.{p.stem}" for p in sorted((PACKAGE / folder).glob("*.py")) if p.stem != "__init__"}
    return set()


def stage_module(stage: str) -> str:
    """The module that `python -m cxrstudy <stage>` runs: cxrstudy.<phase>.<stage>; an error unless exactly one."""
    found = [f"cxrstudy.{phase}.{stage}" for phase in PHASES if (PACKAGE / phase / f"{stage}.py").is_file()]
    if len(found) != 1:
        raise LookupError(f"stage {stage}: expected one module src/cxrstudy/<phase>/{stage}.py, found {found}")
    return found[0]


def with_packages(name: str) -> set[str]:
    """A module and the packages above it, which Python imports first (cxrstudy.data.split: cxrstudy.data too)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def imported_modules(path: Path, top_level_only: bool = False) -> set[str]:
    """The cxrstudy modules `path` imports, anywhere in it (or only at module level)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("cxrstudy")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cxrstudy"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
    return {p for m in found if module_file(m) for p in with_packages(m)}


@cache
def stage_closure(stage: str) -> frozenset[Path]:
    """Every project file `python -m cxrstudy <stage>` can import."""
    todo = ["cxrstudy", "cxrstudy.__main__", "cxrstudy.cli", *with_packages(stage_module(stage))]
    todo += sorted(imported_modules(PACKAGE / "cli.py", top_level_only=True))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is None:
            raise LookupError(f"{name}: imported by stage {stage}, but no such module under {PACKAGE.name}/")
        if name != "cxrstudy.cli":  # the command line imports each stage's module only in that stage's branch
            todo += sorted((imported_modules(path) | discovered(name)) - seen)
    return frozenset(p for p in (module_file(m) for m in seen) if p is not None)

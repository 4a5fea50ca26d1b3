"""The package's shape: phases that import only downwards, no import cycle, the schema at the bottom, small modules.

Layers, bottom to top: the core (`errors`, `params` with `ingestschema` and `yamlfile`, `labels`, `atomic`, `numerics`,
`metrics`, `calibration`), then `data`, then `learning` and `reporting` side by side (neither imports the other), then
the command line (`cli`, `__main__`, `profile`). Every import counts, a function-level one too: a lazy import is still
an import.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrstudy.closure import PACKAGE, imported_modules

CORE = {"errors", "params", "ingestschema", "yamlfile", "labels", "atomic", "numerics", "metrics", "calibration",
        "closure"}
LAYER = {"core": 0, "data": 1, "learning": 2, "reporting": 2, "command line": 3}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(name: str) -> str:
    parts = name.split(".")
    if len(parts) > 2 or parts[1:] and parts[1] in ("data", "learning", "reporting"):
        return parts[1]
    return "core" if parts[-1] in CORE else "command line"


def imports(name: str) -> set[str]:
    return {m for m in imported_modules(MODULES[name]) if m != name and m in MODULES}


def test_every_module_has_a_layer_and_the_core_is_what_it_says() -> None:
    assert {name.split(".")[-1] for name in MODULES} >= CORE
    assert {layer_of(n) for n in MODULES} == set(LAYER)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_only_downwards(name: str) -> None:
    mine = layer_of(name)
    upward = sorted(m for m in imports(name) - {"cxrstudy"}
                    if LAYER[layer_of(m)] > LAYER[mine] or (LAYER[layer_of(m)] == LAYER[mine] != LAYER["core"]
                                                            and layer_of(m) != mine))
    assert not upward, f"{name} ({mine}) imports {upward}, which sit above it or beside it"


SCHEMA = {"cxrstudy.params", "cxrstudy.ingestschema", "cxrstudy.yamlfile"}


@pytest.mark.parametrize("name", sorted(SCHEMA))
def test_the_schema_imports_nothing_but_the_errors(name: str) -> None:
    assert imports(name) <= {"cxrstudy", "cxrstudy.errors"} | SCHEMA


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in `graph` (as the modules along it), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    # A package's __init__ is imported before its modules, not by them: that edge is not an import of ours.
    graph = {name: {m for m in imports(name) if not name.startswith(m + ".")} for name in MODULES}
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_400_lines(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    where = MODULES[name].relative_to(PACKAGE.parent.parent)
    assert lines <= MAX_LINES, f"{where}: {lines} lines (at most {MAX_LINES})"

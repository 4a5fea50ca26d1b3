"""The dataset adapters: one module per source, each turning it into the contract of `cxrstudy.data.dataset`.

An adapter is a module of this package that defines:

    NAME: str                                            the `ingest.source` / `ingest.external` value
    def ingest(params, out_dir, workers) -> Dataset      writes the images as archives under out_dir/archives
                                                         and returns the table, what the dataset is, and its boxes
    def manifest(params) -> dict                         what the source holds outside the project (for the
                                                         manifest stage), e.g. a local copy's file list digest

Adapters are found by name here; nothing outside `cxrstudy.data` imports one. Adding a dataset is a new module here,
its `ingest.<name>` section in `params.py` and `params.yaml`, and its page in `docs/datasets.md`.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, Protocol, cast

from cxrstudy.data.dataset import NONE, Dataset
from cxrstudy.errors import InputError
from cxrstudy.params import Params

__all__ = ["NONE", "Adapter", "adapter", "names"]


class Adapter(Protocol):
    NAME: str

    def ingest(self, params: Params, out_dir: Path, workers: int) -> Dataset: ...

    def manifest(self, params: Params) -> dict[str, Any]: ...


def names() -> list[str]:
    """Every adapter's name (its module's `NAME`), sorted."""
    return sorted(_adapters())


def _adapters() -> dict[str, Adapter]:
    found: dict[str, Adapter] = {}
    for module in pkgutil.iter_modules(__path__):
        loaded = importlib.import_module(f"{__name__}.{module.name}")
        if hasattr(loaded, "NAME"):
            found[str(loaded.NAME)] = cast(Adapter, loaded)
    return found


def adapter(name: str) -> Adapter:
    """The adapter named `name`; an `InputError` listing the known ones otherwise."""
    known = _adapters()
    if name not in known:
        raise InputError(f"no dataset adapter named {name!r}; known: {', '.join(sorted(known))}")
    return known[name]

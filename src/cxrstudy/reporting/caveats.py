"""The caveats a reviewer of a chest radiograph study expects, filled from the run: where the labels come from,
whether the models were tested at another site, the known confounders, and (on the phantom) how far its
prevalences are from the real dataset's.

The inputs are small and explicit, so that whoever holds the files passes them in:
- `DatasetFacts`: what the data says about itself (`data/raw/dataset.json`: name, site, label_source,
  official_test, counts), or, for a run whose data does not record it, the source's entry in `references.yaml`;
- `external_files`: the external evaluation's metrics files that exist (none: "no external test set");
- `Confounders` and the reference label counts: `references.yaml`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrstudy.errors import InputError


@dataclass(frozen=True)
class DatasetFacts:
    """What a dataset says about itself (the contract's `dataset.json`), or a source's stand-in entry."""

    label_source: str
    official_test: str = ""
    name: str = ""
    site: str = ""
    counts: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> DatasetFacts:
        return cls(str(raw["label_source"]), str(raw.get("official_test") or ""), str(raw.get("name") or ""),
                   str(raw.get("site") or ""), dict(raw.get("counts") or {}))


def read_dataset_facts(path: Path) -> DatasetFacts:
    """`data/raw/dataset.json` (or any file of that shape); an error naming the file when it is unusable."""
    try:
        return DatasetFacts.from_mapping(json.loads(path.read_text()))
    except FileNotFoundError:
        raise InputError(f"{path}: dataset description not found; run the ingest stage") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(f"{path}: malformed dataset description ({type(err).__name__}: {err}); it needs "
                         "label_source") from None


def external_files(folder: Path | None, seeds: Sequence[int]) -> list[Path]:
    """The external evaluation's metrics files (`<folder>/seed_N.json`) of these seeds that hold an external test:
    a file saying `"external": null` (`ingest.external: none`) is no external test set, and neither is one that
    cannot be read as such."""
    if folder is None:
        return []
    found = []
    for seed in seeds:
        path = folder / f"seed_{seed}.json"
        try:
            tested = path.is_file() and json.loads(path.read_text()).get("external") is not None
        except (ValueError, AttributeError):
            tested = False
        if tested:
            found.append(path)
    return found


@dataclass(frozen=True)
class Confounder:
    name: str
    text: str
    source: str


@dataclass(frozen=True)
class PrevalenceGap:
    """One finding's prevalence in this run's test set against the reference dataset's whole release."""

    finding: str
    ours: float
    reference: float

    @property
    def ratio(self) -> float:
        return self.ours / self.reference if self.reference > 0 else math.inf


def prevalence_gaps(findings: Sequence[str], labels: np.ndarray, reference: Mapping[str, int],
                    reference_images: int) -> list[PrevalenceGap]:
    """Per finding named in both (test prevalence over the valid cells), largest ratio first either way."""
    out = []
    for k, name in enumerate(findings):
        column = labels[:, k][np.isfinite(labels[:, k])]
        if name in reference and column.size and reference_images > 0:
            out.append(PrevalenceGap(name, float(column.mean()), reference[name] / reference_images))
    return sorted(out, key=lambda g: (-abs(math.log(g.ratio)) if 0 < g.ratio < math.inf else -math.inf,
                                      g.finding))


@dataclass(frozen=True)
class Caveats:
    """Everything the caveats block words: `external` lists the external metrics files found (empty: none), `site`
    names the external test site."""

    dataset: DatasetFacts | None
    external: list[str]
    confounders: list[Confounder]
    prevalence: list[PrevalenceGap]
    phantom: bool
    site: str = ""

    @property
    def has_external(self) -> bool:
        return bool(self.external)


def caveats(dataset: DatasetFacts | None, external: Sequence[Path], confounders: Sequence[Confounder],
            prevalence: Sequence[PrevalenceGap], phantom: bool, site: str = "") -> Caveats:
    """The caveats of one run; `prevalence` is shown on a phantom run only (its sample is not NIH's mix); `site`:
    the external test site's name, when the report read its results."""
    return Caveats(dataset, [str(p) for p in external], list(confounders), list(prevalence) if phantom else [],
                   phantom, site)

"""Published reference numbers (`resources/references.yaml`), our test split in the same words, and their tables.

Every published number carries its source and the split protocol of its test set. A phantom run's numbers describe
the pipeline, not radiographs, so in a phantom run the reference tables hold published numbers only, in their own
section; on the real data, this run's columns sit beside them, each labelled with its split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cxrstudy.errors import InputError
from cxrstudy.params import Params
from cxrstudy.reporting.caveats import Confounder, DatasetFacts
from cxrstudy.reporting.cells import MeanSd, Table, cell, f1_label, fmt
from cxrstudy.reporting.localisation import PublishedLocalisation, published_table, read_published
from cxrstudy.reporting.results import SeedMetrics, num
from cxrstudy.reporting.stats import mean_sd
from cxrstudy.reporting.study import SeedStudy


@dataclass(frozen=True)
class Protocol:
    key: str
    label: str
    short: str
    flag: bool  # official split / optimistic F1


@dataclass(frozen=True)
class PublishedMean:
    name: str
    model: str
    split: Protocol
    auroc_mean: float
    auroc_sd: float
    approximate: bool
    f1_mean: float
    f1_protocol: Protocol | None
    source: str


@dataclass(frozen=True)
class References:
    means: list[PublishedMean]
    chexnet: dict[str, float]
    chexnet_split: Protocol
    chexnet_source: str
    study: dict[int, SeedMetrics]
    study_split: Protocol
    study_f1: Protocol
    study_source: str
    label_counts: dict[str, int]
    label_images: int
    label_counts_source: str
    sources: dict[str, DatasetFacts]
    confounders: list[Confounder]
    localisation: tuple[str, str, list[PublishedLocalisation]] | None = None  # Wang et al. 2017: metric, model, sets

    @property
    def findings(self) -> tuple[str, ...]:
        """The published per-class numbers' findings (NIH's), in the file's order."""
        return tuple(self.chexnet)


def references_path() -> Path:
    return Path(str(resources.files("cxrstudy") / "resources" / "references.yaml"))


def _protocols(raw: Any, key: str) -> dict[str, Protocol]:
    flag = "official" if key == "protocols" else "optimistic"
    return {k: Protocol(k, str(v["label"]), str(v["short"]), bool(v[flag])) for k, v in raw[key].items()}


def _findings(values: Any, where: str, names: tuple[str, ...] | None = None) -> dict[str, float]:
    """Per-class numbers; with `names`, exactly those findings (every published table covers the same ones)."""
    if not isinstance(values, dict) or not values or (names is not None and set(values) != set(names)):
        raise ValueError(f"{where} must list the findings {list(names or [])}; got {sorted(values or [])}")
    return {str(n): float(values[n]) for n in (names or values)}


def load_references(path: Path | None = None) -> References:
    """Read and check `references.yaml`: every number has a source and a known split (and F1) protocol."""
    path = path or references_path()
    try:
        raw = yaml.safe_load(path.read_text())
        splits, f1s = _protocols(raw, "protocols"), _protocols(raw, "f1_protocols")
        means = [PublishedMean(str(m["name"]), str(m["model"]), splits[m["split"]], float(m["auroc_mean"]),
                               num(m.get("auroc_sd")), bool(m.get("approximate", False)), num(m.get("f1_mean")),
                               f1s[m["f1_protocol"]] if "f1_protocol" in m else None, str(m["source"]))
                 for m in raw["means"]]
        chex, study = raw["chexnet"], raw["seed_study"]
        chexnet = _findings(chex["auroc"], "chexnet.auroc")
        names = tuple(chexnet)
        seeds = {int(seed): SeedMetrics(int(seed), float(v["loss"]), float(v["auroc_mean"]), float(v["f1_mean"]),
                                        float(v["f1_mean"]), study["f1_protocol"],
                                        _findings(v["auroc"], f"seed_study.seeds.{seed}.auroc", names), {}, 0)
                 for seed, v in study["seeds"].items()}
        counts = raw["nih_label_counts"]
        return References(means, chexnet, splits[chex["split"]], str(chex["source"]), seeds, splits[study["split"]],
                          f1s[study["f1_protocol"]], str(study["source"]),
                          {str(k): int(v) for k, v in counts["counts"].items()}, int(counts["images"]),
                          str(counts["source"]),
                          {str(k): DatasetFacts.from_mapping(v) for k, v in raw["sources"].items()},
                          [Confounder(str(c["name"]), str(c["text"]), str(c["source"])) for c in raw["confounders"]],
                          read_published(raw["localisation"]) if "localisation" in raw else None)
    except FileNotFoundError:
        raise InputError(f"{path}: published references file not found") from None
    except (KeyError, ValueError, TypeError, AttributeError, yaml.YAMLError) as err:
        raise InputError(f"{path}: malformed references file ({type(err).__name__}: {err})") from None


def is_phantom(params: Params) -> bool:
    return params.ingest.source == "phantom"


def our_split(params: Params, short: bool = False) -> str:
    """Our test split, called what it is (`short`: for a column header)."""
    phantom = is_phantom(params)
    if params.split.method == "official":
        if phantom:
            return "phantom test list" if short else "the phantom's own patient-wise test list"
        return "official" if short else "official NIH test list"
    fraction = f"{params.split.test_fraction * 100:g} %"
    if short:
        return f"{'phantom, ' if phantom else ''}random {fraction}"
    return f"{'the phantom, ' if phantom else ''}random {fraction} patient test split (split seed {params.split.seed})"


def published(value: float) -> str:
    """A published number at its published precision (3 or 4 decimals)."""
    return fmt(value, 3 if round(value, 3) == value else 4)


def references_tables(params: Params, seeds: list[SeedMetrics], study: SeedStudy | None,
                      refs: References) -> dict[str, Table]:
    """Published mean AUROCs, the seed study per seed, and CheXNet and the seed study per class. On the real data
    (not in a phantom run) this run's numbers are added, each column labelled with its split."""
    ours = not is_phantom(params)
    split, short = our_split(params), f"[{our_split(params, short=True)}]"
    means: list[list[Any]] = []
    for m in refs.means:
        value = ("~" if m.approximate else "") + published(m.auroc_mean)
        value += "" if math.isnan(m.auroc_sd) else f" ± {published(m.auroc_sd)}"
        f1 = "—" if m.f1_protocol is None else f"{published(m.f1_mean)} ({m.f1_protocol.label})"
        means.append([m.name, m.model, m.split.label, value, f1])
    if ours:
        f1_ours = MeanSd(*mean_sd([s.f1_mean for s in seeds]))
        means.append([f"this run (mean of {len(seeds)} seed{'s' if len(seeds) > 1 else ''})", "DenseNet-121", split,
                      MeanSd(*mean_sd([s.auroc_mean for s in seeds])),
                      f"{cell(f1_ours)} ({f1_label(seeds[0].f1_protocol)})"])
        if study and study.ensemble:
            means.append(["this run (ensemble)", "DenseNet-121", split, study.ensemble.auroc_mean, "—"])
    theirs = f"[{refs.study_split.short}]"
    mine = {s.seed: s for s in seeds} if ours else {}
    per_seed = []
    for seed in sorted(set(mine) | set(refs.study)):
        row: list[Any] = [seed]
        if ours:
            row += [mine[seed].auroc_mean if seed in mine else None,
                    mine[seed].f1_test_tuned_mean if seed in mine else None]
        other = refs.study.get(seed)
        per_seed.append(row + [other.auroc_mean if other else None, other.f1_mean if other else None])
    seed_header = ["Seed"] + ([f"This run: Avg AUROC {short}", "This run: Avg F1 (test-tuned, optimistic)"]
                              if ours else [])
    seed_header += [f"Seed study: Avg AUROC {theirs}", f"Seed study: Avg F1 ({refs.study_f1.short})"]
    class_header = ["Class"]
    if ours:
        class_header.append(f"This run, mean of seeds {short}")
        if study and study.ensemble:
            class_header.append(f"This run, ensemble {short}")
    class_header += [f"CheXNet [{refs.chexnet_split.short}]",
                     *[f"Seed study {seed} {theirs}" for seed in sorted(refs.study)]]
    per_class = []
    for name in refs.findings:
        row = [name]
        if ours:  # this run's column where its label space names the finding
            row.append(MeanSd(*mean_sd([s.auroc[name] for s in seeds])) if name in seeds[0].auroc else None)
            if study and study.ensemble:
                row.append(study.ensemble.auroc.get(name))
        per_class.append(row + [refs.chexnet[name], *[refs.study[seed].auroc[name] for seed in sorted(refs.study)]])
    return {
        "means": Table(["Result", "Model", "Test split", "Mean AUROC", "Mean F1 (threshold protocol)"],
                       ["l", "l", "l", "r", "l"], means),
        "per_seed": Table(seed_header, ["l", *["r"] * (len(seed_header) - 1)], per_seed),
        "per_class": Table(class_header, ["l", *["c"] * (len(class_header) - 1)], per_class),
    }


def legend(params: Params, refs: References) -> list[tuple[str, str]]:
    """What the bracketed split protocols in the column headers mean: (short, long) pairs."""
    pairs = [(refs.chexnet_split.short, refs.chexnet_split.label),
             (refs.study_split.short, refs.study_split.label + " (four seeds, four different test sets)")]
    if not is_phantom(params):
        pairs.insert(0, (our_split(params, short=True), our_split(params)))
    return pairs


@dataclass(frozen=True)
class ReferenceFacts:
    """The numbers the references' sentences need (worded in the template)."""

    ours: float
    chexnet: PublishedMean | None
    study_mean: float
    best_official: PublishedMean | None
    lowest_random: PublishedMean | None
    study_f1_low: float
    study_f1_high: float


def reference_facts(seeds: list[SeedMetrics], refs: References) -> ReferenceFacts:
    official = [m for m in refs.means if m.split.flag]
    random = [m for m in refs.means if not m.split.flag]
    f1s = [s.f1_mean for s in refs.study.values()]
    return ReferenceFacts(
        mean_sd([s.auroc_mean for s in seeds])[0], next((m for m in refs.means if m.name == "CheXNet"), None),
        mean_sd([s.auroc_mean for s in refs.study.values()])[0],
        max(official, key=lambda m: m.auroc_mean) if official else None,
        min(random, key=lambda m: m.auroc_mean) if random else None, min(f1s), max(f1s))


def published_localisation(refs: References) -> dict[str, Any] | None:
    """Wang et al. 2017's localisation tables, for the published references: metric, model, and per set its name,
    split, source and table (their numbers; never beside this run's)."""
    if refs.localisation is None:
        return None
    metric, model, sets = refs.localisation
    return {"metric": metric, "model": model,
            "sets": [{"name": p.name, "split": p.split_note, "source": p.source, "table": published_table(p)}
                     for p in sets]}

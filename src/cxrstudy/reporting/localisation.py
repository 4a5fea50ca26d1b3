"""Where it looks: the "Where it looks" section, from the evaluate stage's `metrics/localize/seed_N.json`
(`cxrstudy.learning.localize`: Grad-CAM scored against the test set's boxes), and its tracked numbers.

Every rate is shown beside its chance rate (a uniformly random point; the model's own predicted boxes placed at
random) and beside the same heatmaps scored against shuffled boxes (another test image's box of the same finding: what
the finding's usual position alone earns), with the box, image and patient counts, and the patient-bootstrap
percentile intervals the stage computed (none for a finding with fewer than `report.min_positives` patients).
Nothing is recomputed here: the numbers are the stage's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrstudy.errors import InputError
from cxrstudy.reporting.cells import Table, fmt
from cxrstudy.reporting.results import num

POINTING = "pointing"


@dataclass(frozen=True)
class Rate:
    """One score on one set of boxes: the hit rate, its chance and shuffled-box rates, hit - chance and hit -
    shuffled (`specific`), with the stage's intervals (NaN where it gave none)."""

    hit: float
    low: float
    high: float
    chance: float
    excess: float
    excess_low: float
    excess_high: float
    shuffled: float
    specific: float
    specific_low: float
    specific_high: float

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Rate:
        return cls(*(num(raw.get(k)) for k in ("hit", "low", "high", "chance", "excess", "excess_low", "excess_high",
                                               "shuffled", "specific", "specific_low", "specific_high")))


@dataclass(frozen=True)
class Boxes:
    """The boxes of one finding (or all, pooled) in one seed's file: counts, and a `Rate` per score."""

    boxes: int
    images: int
    patients: int
    interval: bool
    rates: dict[str, Rate]  # "pointing", then each IoBB threshold ("0.1", ...)

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Boxes:
        rates = {POINTING: Rate.of(raw["pointing"]), **{t: Rate.of(v) for t, v in raw["iobb"].items()}}
        return cls(int(raw["boxes"]), int(raw["images"]), int(raw["patients"]), bool(raw["interval"]), rates)


@dataclass(frozen=True)
class SeedLocalisation:
    seed: int
    layer: str
    map_size: list[int]
    thresholds: list[str]
    flat_maps: int
    heatmaps: int
    pooled: Boxes
    findings: dict[str, Boxes]


@dataclass(frozen=True)
class Localisation:
    """Every seed's localisation, or the reason there is none (no box on a test image)."""

    seeds: list[SeedLocalisation]
    reason: str = ""

    @property
    def findings(self) -> list[str]:
        return list(dict.fromkeys(n for s in self.seeds for n in s.findings))


def read_localisation(folder: Path, seeds: Sequence[int]) -> Localisation:
    """Every seed's `folder/seed_N.json`; an error naming a missing or malformed file."""
    out, reason = [], ""
    for seed in seeds:
        path = folder / f"seed_{seed}.json"
        if not path.is_file():
            raise InputError(f"{path}: localisation metrics not found; run the evaluate stage for seed {seed}")
        try:
            raw = json.loads(path.read_text())
            if not raw.get("boxes", 1):
                reason = str(raw.get("reason") or "no box on a test image")
                continue
            out.append(SeedLocalisation(int(raw["seed"]), str(raw["layer"]), [int(v) for v in raw["map_size"]],
                                        [f"{float(t):g}" for t in raw["iobb_thresholds"]], int(raw["flat_maps"]),
                                        int(raw["heatmaps"]), Boxes.of(raw["pooled"]),
                                        {str(k): Boxes.of(v) for k, v in raw["findings"].items()}))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise InputError(f"{path}: malformed localisation metrics ({type(err).__name__}: {err}); re-run the "
                             f"evaluate stage for seed {seed}") from None
    if out and len(out) != len(seeds):
        raise InputError(f"{folder}: some seeds have boxes on their test images and others none; re-run evaluate")
    return Localisation(out, reason)


def share(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def signed_share(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{0.0 if round(value, 3) == 0 else value:+.3f}"


def with_interval(value: float, low: float, high: float, sign: bool = False) -> str:
    show = signed_share if sign else share
    return show(value) if math.isnan(low) else f"{show(value)} [{show(low)}, {show(high)}]"


def _score_name(key: str) -> str:
    return "pointing game" if key == POINTING else f"IoBB ≥ {key}"


def pooled_table(loc: Localisation, level: float) -> Table:
    """Per score (pointing, each IoBB threshold) and seed, all boxes pooled."""
    rows = []
    for key in [POINTING, *loc.seeds[0].thresholds]:
        for s in loc.seeds:
            r, b = s.pooled.rates[key], s.pooled
            rows.append([_score_name(key), f"seed {s.seed}", f"{b.boxes} / {b.patients}",
                         with_interval(r.hit, r.low, r.high), share(r.chance),
                         with_interval(r.excess, r.excess_low, r.excess_high, sign=True), share(r.shuffled),
                         with_interval(r.specific, r.specific_low, r.specific_high, sign=True)])
    pct = f"{level:.0%} CI"
    return Table(["Score", "Seed", "Boxes / patients", f"Hit rate [{pct}]", "Chance", f"Hit − chance [{pct}]",
                  "Shuffled boxes", f"Hit − shuffled [{pct}]"], ["l", "l", "r", "c", "r", "c", "r", "c"], rows)


def findings_table(loc: Localisation, key: str, level: float, threshold: int) -> Table:
    """One score per finding: its counts, then each seed's hit rate [CI] with its chance and shuffled-box rates."""
    rows = []
    for name in loc.findings:
        first = next(s.findings[name] for s in loc.seeds if name in s.findings)
        count = f"{first.boxes} / {first.images} / {first.patients}" + (
            f" (< {threshold})" if first.patients < threshold else "")
        cells: list[str | None] = []
        for s in loc.seeds:
            b = s.findings.get(name)
            if b is None:
                cells.append(None)
                continue
            r = b.rates[key]
            cells.append(f"{with_interval(r.hit, r.low, r.high)}; chance {share(r.chance)}; "
                         f"shuffled {share(r.shuffled)}")
        rows.append([name, count, *cells])
    return Table(["Finding", "Boxes / images / patients", *[f"seed {s.seed}: hit [{level:.0%} CI]; chance; shuffled"
                                                           for s in loc.seeds]],
                 ["l", "r", *["c"] * len(loc.seeds)], rows)


@dataclass(frozen=True)
class LocalisationFacts:
    """The numbers the section's sentences need (pooled pointing game, per seed)."""

    boxes: int
    patients: int
    images: int
    layer: str
    map_size: list[int]
    hit_low: float
    hit_high: float
    chance: float
    ratio_low: float
    ratio_high: float
    excess: list[tuple[int, float, float, float]]  # seed, hit - chance and its interval
    above: list[int]  # seeds whose hit - chance interval lies above 0
    specific_above: list[int]  # seeds whose hit - shuffled interval lies above 0
    shuffled_low: float
    shuffled_high: float
    flat: int
    interval: bool


def localisation_facts(loc: Localisation) -> LocalisationFacts | None:
    if not loc.seeds:
        return None
    pooled = [(s.seed, s.pooled.rates[POINTING]) for s in loc.seeds]
    hits = [r.hit for _, r in pooled]
    chance = pooled[0][1].chance
    ratios = [h / chance for h in hits] if chance > 0 else [math.nan]
    first = loc.seeds[0]
    return LocalisationFacts(
        first.pooled.boxes, first.pooled.patients, first.pooled.images, first.layer, first.map_size, min(hits),
        max(hits), chance, min(ratios), max(ratios), [(s, r.excess, r.excess_low, r.excess_high) for s, r in pooled],
        [s for s, r in pooled if r.excess_low > 0], [s for s, r in pooled if r.specific_low > 0],
        min(r.shuffled for _, r in pooled), max(r.shuffled for _, r in pooled),
        sum(s.flat_maps for s in loc.seeds), first.pooled.interval)


def _clean(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def localisation_summary(loc: Localisation | None) -> dict[str, Any]:
    """`metrics/report.json`'s `localisation`: per seed the pooled pointing game (hit, chance, hit - chance with its
    interval, hit / chance, shuffled, hit - shuffled with its interval) and its box and patient counts."""
    if loc is None or not loc.seeds:
        return {}
    out: dict[str, Any] = {}
    for s in loc.seeds:
        r = s.pooled.rates[POINTING]
        out[f"seed_{s.seed}"] = {
            "boxes": s.pooled.boxes, "patients": s.pooled.patients, "pointing_hit": _clean(r.hit),
            "pointing_chance": _clean(r.chance), "excess": _clean(r.excess), "excess_low": _clean(r.excess_low),
            "excess_high": _clean(r.excess_high), "times_chance": _clean(r.hit / r.chance if r.chance else math.nan),
            "shuffled": _clean(r.shuffled), "specific": _clean(r.specific), "specific_low": _clean(r.specific_low),
            "specific_high": _clean(r.specific_high)}
    return {"localisation": out}


# ------------------------------------------------------------------------------------------------ Wang et al. 2017


@dataclass(frozen=True)
class PublishedLocalisation:
    """One of Wang et al. 2017's published tables: accuracy at T(IoBB) per finding (their numbers, not ours)."""

    name: str
    split_note: str
    source: str
    accuracy: dict[str, dict[str, float]]  # threshold -> finding -> share of boxes


def read_published(raw: Mapping[str, Any]) -> tuple[str, str, list[PublishedLocalisation]]:
    """`references.yaml`'s `localisation:` block: its metric, model and sets."""
    sets = [PublishedLocalisation(str(s["name"]), " ".join(str(s["split_note"]).split()), str(s["source"]),
                                  {f"{float(t):g}": {str(k): float(v) for k, v in by.items()}
                                   for t, by in s["accuracy"].items()}) for s in raw["sets"]]
    return str(raw["metric"]), str(raw["model"]), sets


def published_table(p: PublishedLocalisation) -> Table:
    thresholds = list(p.accuracy)
    findings = list(dict.fromkeys(n for by in p.accuracy.values() for n in by))
    rows = [[n, *[fmt(p.accuracy[t][n], 4) if n in p.accuracy[t] else None for t in thresholds]] for n in findings]
    return Table(["Finding", *[f"T(IoBB) = {t}" for t in thresholds]], ["l", *["r"] * len(thresholds)], rows)

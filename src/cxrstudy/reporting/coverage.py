"""The coverage stage: how often the report's intervals hold the truth, measured on simulated test sets, and the
interval method and positive-patient threshold the report uses, chosen from that.

Every simulated test set has the phantom test split's shape (`report.coverage`: its number of patients, its
images per patient, scores correlated within a patient), with k positive patients (a patient's images are positive
with probability 0.6, and patients with more images are likelier to be positive, as with follow-ups of the sick)
and a binormal score of known population AUROC. Each interval method of `cxrstudy.reporting.inference` is run on
the same patient bootstrap as the report (`report.bootstrap` resamples, `report.level`), exact bounds at perfect
separation included, and scored on:

- `single`: one finding's AUROC; the interval covers when it holds the true AUROC;
- `difference`: the paired difference of two models of equal true AUROC (their noise correlated per image); it
  covers when it holds 0, so 1 - coverage is the rate of false "beyond noise" verdicts;
- `mean`: the mean over findings, one per simulated count from `report.min_positives` up, and its paired
  difference.

Per kind, the method chosen is the one with the highest worst-case coverage over the conditions at or above
`report.min_positives` positive patients (ties: the narrower); `supported_threshold` is the smallest simulated count
from which the chosen method's coverage stays within `tolerance` of the level at every simulated count and AUROC
above. The verdicts rest on differences, so the difference's supported count is what justifies the threshold.
The result is `metrics/coverage.json`: deterministic for its parameters, read by the report.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import norm

from cxrstudy.atomic import write_json
from cxrstudy.errors import InputError
from cxrstudy.params import CoverageParams, Params
from cxrstudy.reporting.inference import METHODS, Estimate, Stat, estimate, estimate_difference
from cxrstudy.reporting.stats import bootstrap_auroc, patient_weighted_auroc

COVERAGE_FILE = "metrics/coverage.json"
KINDS = ("single", "difference")
NO_METHOD = "none"  # report.bootstrap: 0 - no resamples, no interval
POSITIVE_SHARE = 0.6  # of a positive patient's images that are positive (one at least)


def layout(cfg: CoverageParams, rng: np.random.Generator) -> np.ndarray:
    """The patient of each image: geometric numbers of images per patient with the configured mean (most patients
    have one image, a few have many follow-ups)."""
    sizes = rng.geometric(1 / cfg.images_per_patient, cfg.patients)
    return np.repeat(np.arange(cfg.patients), sizes)


def _labels(patient: np.ndarray, k: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    """N x reps labels with k positive patients in each column."""
    n_patients = int(patient.max()) + 1
    sizes = np.bincount(patient, minlength=n_patients)
    out = np.zeros((len(patient), reps))
    first = np.r_[0, np.cumsum(sizes)[:-1]]
    for r in range(reps):
        chosen = rng.choice(n_patients, k, replace=False, p=sizes / sizes.sum())
        rows = np.isin(patient, chosen)
        out[rows, r] = rng.random(int(rows.sum())) < POSITIVE_SHARE
        out[first[chosen], r] = 1.0
    return out


def _noise(patient: np.ndarray, shape: tuple[int, int], rho: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise whose share `rho` is shared by the images of one patient."""
    shared = rng.standard_normal((int(patient.max()) + 1, shape[1]))[patient]
    return math.sqrt(rho) * shared + math.sqrt(1 - rho) * rng.standard_normal(shape)


@dataclass(frozen=True)
class Sample:
    """`reps` simulated test sets (columns) of one condition: labels and two models' scores of equal true AUROC."""

    labels: np.ndarray
    first: np.ndarray
    second: np.ndarray
    truth: np.ndarray  # per column


def simulate(cfg: CoverageParams, patient: np.ndarray, counts: Sequence[int], aurocs: Sequence[float], reps: int,
             rng: np.random.Generator) -> Sample:
    """Columns for every (k, auroc) of `counts` x `aurocs` zipped, `reps` of each, side by side."""
    labels, first, second, truth = [], [], [], []
    c = cfg.model_correlation
    for k, a in zip(counts, aurocs, strict=True):
        y = _labels(patient, k, reps, rng)
        shift = math.sqrt(2) * float(norm.ppf(a)) * y  # binormal, unit variances: AUROC = Phi(shift / sqrt 2)
        noise = _noise(patient, y.shape, cfg.patient_correlation, rng)
        other = c * noise + math.sqrt(1 - c * c) * _noise(patient, y.shape, cfg.patient_correlation, rng)
        labels.append(y)
        first.append(shift + noise)
        second.append(shift + other)
        truth.append(np.full(reps, a))
    return Sample(np.hstack(labels), np.hstack(first), np.hstack(second), np.concatenate(truth))


def _stats(sample: Sample, patient: np.ndarray, scores: np.ndarray, resamples: int, seed: int) -> list[Stat]:
    boot = bootstrap_auroc(sample.labels, scores, patient, resamples, seed)
    point = patient_weighted_auroc(sample.labels, scores, patient, np.ones((1, int(patient.max()) + 1)))[0]
    return [Stat(float(point[j]), boot.per_class[:, j], boot.jackknife[:, j]) for j in range(len(point))]


def _pairs(sample: Sample, patient: np.ndarray) -> list[int]:
    """Per column: the smaller of the numbers of positive and negative patients (exact bounds at AUROC 1)."""
    out = []
    for j in range(sample.labels.shape[1]):
        positive = sample.labels[:, j] == 1
        out.append(min(len(set(patient[positive].tolist())), len(set(patient[~positive].tolist()))))
    return out


@dataclass
class Tally:
    """Coverage counts of one method on one condition."""

    covered: int = 0
    with_interval: int = 0
    width: float = 0.0

    def add(self, e: Estimate, truth: float) -> None:
        if e.has_interval:
            self.with_interval += 1
            self.covered += e.low <= truth <= e.high
            self.width += e.high - e.low

    def record(self, reps: int) -> dict[str, float | None]:
        n = self.with_interval
        return {"coverage": round(self.covered / n, 4) if n else None,
                "width": round(self.width / n, 4) if n else None, "without_interval": round(1 - n / reps, 4)}


def measure(stats_a: list[Stat], stats_b: list[Stat], truth: np.ndarray, pairs: list[int], level: float,
            group: int = 1) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per kind and method: coverage, mean width and the share without an interval over the columns (`group`
    consecutive columns averaged first: a mean over findings)."""
    tallies = {kind: {m: Tally() for m in METHODS} for kind in KINDS}
    for start in range(0, len(stats_a), group):
        a, b = stats_a[start:start + group], stats_b[start:start + group]
        if group > 1:
            a, b = [_mean(a)], [_mean(b)]
        true_value = float(np.mean(truth[start:start + group]))
        for method in METHODS:
            tallies["single"][method].add(estimate(a[0], level, method, pairs[start] if group == 1 else 0),
                                          true_value)
            tallies["difference"][method].add(
                estimate_difference(a[0], b[0], level, method, pairs[start] if group == 1 else 0), 0.0)
    reps = len(stats_a) // group
    return {kind: {m: t.record(reps) for m, t in by.items()} for kind, by in tallies.items()}


def _mean(stats: list[Stat]) -> Stat:
    return Stat(float(np.mean([s.point for s in stats])), np.mean([s.draws for s in stats], axis=0),
                np.mean([s.jack for s in stats], axis=0))


def simulate_all(params: Params, progress: bool = True) -> dict[str, Any]:
    """Every condition of `report.coverage`, then the mean over findings; the choice of method and threshold."""
    cfg, r = params.report.coverage, params.report
    design = {**cfg.model_dump(), "resamples": r.bootstrap, "level": r.level, "min_positives": r.min_positives}
    if r.bootstrap < 2:  # the report gives no interval at all: nothing to measure or choose
        none: dict[str, Any] = {"method": NO_METHOD, "worst_coverage": {}, "supported_threshold": None}
        return {"design": {**design, "images": 0}, **{kind: {} for kind in KINDS}, "mean": {},
                "choice": {"threshold": r.min_positives, "tolerance": cfg.tolerance, "single": none,
                           "difference": none}}
    if max(cfg.positive_patients) >= cfg.patients:
        raise InputError(f"report.coverage.positive_patients: {max(cfg.positive_patients)} is not below "
                         f"report.coverage.patients ({cfg.patients}); every simulated test set needs negatives")
    rng = np.random.default_rng(cfg.seed)
    patient = layout(cfg, rng)
    grid: dict[str, Any] = {kind: {m: {} for m in METHODS} for kind in KINDS}
    conditions = [(k, a) for k in sorted(set(cfg.positive_patients)) for a in sorted(set(cfg.auroc))]
    started = time.monotonic()
    for i, (k, a) in enumerate(conditions):
        sample = simulate(cfg, patient, [k], [a], cfg.reps, rng)
        seed = cfg.seed + i + 1  # fresh resamples per condition, paired between the two models
        found = measure(_stats(sample, patient, sample.first, r.bootstrap, seed),
                        _stats(sample, patient, sample.second, r.bootstrap, seed), sample.truth,
                        _pairs(sample, patient), r.level)
        for kind in KINDS:
            for m in METHODS:
                grid[kind][m].setdefault(str(k), {})[f"{a:g}"] = found[kind][m]
        if progress:
            print(f"coverage: {i + 1}/{len(conditions)} conditions ({time.monotonic() - started:.0f} s)",
                  file=sys.stderr)
    eligible = [k for k in sorted(set(cfg.positive_patients)) if k >= r.min_positives]
    mean: dict[str, Any] = {}
    if eligible:
        aurocs = [sorted(cfg.auroc)[i % len(cfg.auroc)] for i in range(len(eligible))]
        sample = simulate(cfg, patient, eligible, aurocs, cfg.reps, rng)
        order = np.arange(len(eligible) * cfg.reps).reshape(len(eligible), cfg.reps).T.ravel()  # rep-major
        sample = Sample(sample.labels[:, order], sample.first[:, order], sample.second[:, order], sample.truth[order])
        seed = cfg.seed + len(conditions) + 1
        mean = {"findings": [{"positive_patients": k, "auroc": a} for k, a in zip(eligible, aurocs, strict=True)],
                **measure(_stats(sample, patient, sample.first, r.bootstrap, seed),
                          _stats(sample, patient, sample.second, r.bootstrap, seed), sample.truth,
                          [0] * len(order), r.level, group=len(eligible))}
    return {"design": {**design, "images": int(len(patient))}, **grid, "mean": mean,
            "choice": choose(grid, r.level, r.min_positives, cfg.tolerance)}


def _worst(by_k: dict[str, dict[str, dict[str, Any]]], at_least: int) -> float | None:
    values = [c["coverage"] for k, by_a in by_k.items() if int(k) >= at_least for c in by_a.values()]
    return None if not values or any(v is None for v in values) else float(min(values))


def _width(by_k: dict[str, dict[str, dict[str, Any]]], at_least: int) -> float:
    values = [c["width"] for k, by_a in by_k.items() if int(k) >= at_least for c in by_a.values() if c["width"]]
    return float(np.mean(values)) if values else math.inf


def choose(grid: dict[str, Any], level: float, threshold: int, tolerance: float) -> dict[str, Any]:
    """Per kind, the method with the highest worst-case coverage from `threshold` positive patients up (ties: the
    narrower), and the smallest simulated count from which that method's coverage stays within `tolerance` of
    `level` at every count and AUROC above it (None: at no count)."""
    out: dict[str, Any] = {"threshold": threshold, "tolerance": tolerance}
    for kind in KINDS:
        scores = {m: (w if (w := _worst(grid[kind][m], threshold)) is not None else -1.0,
                      -_width(grid[kind][m], threshold)) for m in METHODS}
        method = max(METHODS, key=lambda m: scores[m])
        counts = sorted({int(k) for k in grid[kind][method]})
        supported = next((k for k in counts if (w := _worst(grid[kind][method], k)) is not None
                          and w >= level - tolerance), None)
        out[kind] = {"method": method, "worst_coverage": {m: round(scores[m][0], 4) for m in METHODS},
                     "supported_threshold": supported}
    return out


def run(params: Params, out: Path) -> None:
    """Stage entry point: simulate, write `out` (a DVC metrics file) and print the table."""
    started = time.monotonic()
    result = simulate_all(params)
    from cxrstudy.numerics import environment

    write_json(out, {**result, "environment": environment(params.numerics)})
    choice = result["choice"]
    for kind in KINDS if params.report.bootstrap else ():
        c = choice[kind]
        print(f"coverage, {kind}: {c['method']} (worst coverage from {choice['threshold']} positive patients up: "
              + ", ".join(f"{m} {v:.3f}" for m, v in c["worst_coverage"].items())
              + f"); within {choice['tolerance']} of {params.report.level} from {c['supported_threshold']} up")
    print(f"coverage: {time.monotonic() - started:.1f} s -> {out}")


# ------------------------------------------------------------------------------------------------ reading it back


@dataclass(frozen=True)
class Coverage:
    """`metrics/coverage.json` as the report reads it (`path`: where it was read, for messages)."""

    raw: dict[str, Any]
    path: str = COVERAGE_FILE

    def method(self, kind: str) -> str:
        """The interval method chosen for `kind` (single: one model's value; difference: a paired contrast)."""
        return str(self.raw["choice"][kind]["method"])

    @property
    def threshold(self) -> int:
        return int(self.raw["choice"]["threshold"])

    def supported(self, kind: str) -> int | None:
        value = self.raw["choice"][kind]["supported_threshold"]
        return None if value is None else int(value)

    def mean(self, kind: str) -> float | None:
        """The measured coverage of the mean over findings (and of its paired difference) by the chosen method."""
        found = (self.raw.get("mean") or {}).get(kind, {}).get(self.method(kind), {})
        value = found.get("coverage")
        return None if value is None else float(value)

    @property
    def level(self) -> float:
        return float(self.raw["design"]["level"])

    def at(self, kind: str, positive_patients: int, auroc: float, method: str | None = None) -> float | None:
        """The measured coverage at the largest simulated count not above `positive_patients` and the simulated
        AUROC nearest `auroc` (None below the smallest count)."""
        by_k = self.raw[kind].get(method or self.method(kind), {})
        counts = [int(k) for k in by_k if int(k) <= positive_patients]
        if not counts or math.isnan(auroc):
            return None
        by_a = by_k[str(max(counts))]
        nearest = min(by_a, key=lambda a: (abs(float(a) - auroc), float(a)))
        value = by_a[nearest]["coverage"]
        return None if value is None else float(value)

    def worst(self, kind: str, at_least: int, method: str | None = None) -> float | None:
        return _worst(self.raw[kind].get(method or self.method(kind), {}), at_least)


def load_coverage(path: Path) -> Coverage:
    """Read the coverage stage's output; a missing or malformed file is an error naming it."""
    if not path.is_file():
        raise InputError(f"{path}: coverage file not found; run the coverage stage (`dvc repro coverage`)")
    try:
        raw = json.loads(path.read_text())
        allowed = METHODS if int(raw["design"]["resamples"]) >= 2 else (NO_METHOD,)
        for kind in KINDS:
            if raw["choice"][kind]["method"] not in allowed or kind not in raw:
                raise ValueError(f"{kind}: unknown method {raw['choice'][kind]['method']!r} or no results")
        float(raw["design"]["level"]), int(raw["design"]["resamples"]), int(raw["design"]["min_positives"])
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{path}: malformed coverage file ({type(err).__name__}: {err})") from None
    return Coverage(raw, str(path))

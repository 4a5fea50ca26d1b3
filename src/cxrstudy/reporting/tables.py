"""The report's tables: Markdown cells (`cell`) and the seed study's tables built from the metrics and statistics.

A `Table` holds values, not text: `cell` formats each one (4 decimals, mean ± sd, min–max, intervals, signed
differences), so the template only lays tables out. Numbers come from the metrics files and `cxrstudy.reporting.study`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cxrstudy.labels import FINDINGS
from cxrstudy.reporting.inference import Contrast, Estimate
from cxrstudy.reporting.results import SeedMetrics
from cxrstudy.reporting.stats import mean_sd, min_max
from cxrstudy.reporting.study import SeedStudy


@dataclass(frozen=True)
class MeanSd:
    mean: float
    sd: float


@dataclass(frozen=True)
class Span:
    low: float
    high: float


@dataclass(frozen=True)
class WithCI:
    """A value and its interval in one cell: `0.8512 [0.8201, 0.8790]`."""

    estimate: Estimate


@dataclass(frozen=True)
class Diff:
    """A paired difference in one cell: `+0.0123 [-0.0100, +0.0300]`, with a marker when beyond noise."""

    contrast: Contrast
    note: str = ""


def _zero(value: float, digits: int) -> float:
    """A value that rounds to zero prints as 0, never as -0."""
    return 0.0 if round(value, digits) == 0 else value


def fmt(value: float | None, digits: int = 4) -> str:
    """Fixed decimals; an undefined value (no positive in the test set) prints as n/a."""
    return "n/a" if value is None or math.isnan(value) else f"{_zero(value, digits):.{digits}f}"


def signed(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{_zero(value, 4):+.4f}"


def interval(e: Estimate, sign: bool = False) -> str:
    """`[low, high]`, `(exact)` after a bound for AUROC 1; n/a without an interval."""
    if math.isnan(e.low):
        return "n/a"
    show = signed if sign else fmt
    return f"[{show(e.low)}, {show(e.high)}]" + (" (exact)" if e.method == "exact" else "")


def cell(value: Any) -> str:
    """One Markdown table cell; no pipe or line break can break the row."""
    if value is None:
        return "—"
    if isinstance(value, MeanSd):
        return fmt(value.mean) if math.isnan(value.sd) else f"{fmt(value.mean)} ± {fmt(value.sd)}"
    if isinstance(value, Span):
        return "n/a" if math.isnan(value.low) else f"{fmt(value.low)}–{fmt(value.high)}"
    if isinstance(value, Estimate):
        return interval(value)
    if isinstance(value, WithCI):
        e = value.estimate
        return fmt(e.value) if math.isnan(e.low) else f"{fmt(e.value)} {interval(e)}"
    if isinstance(value, Diff):
        d = value.contrast.difference
        mark = " ✱" if value.contrast.beyond_noise else ""
        return f"{signed(d.value)} {interval(d, sign=True)}{mark}{value.note}"
    if isinstance(value, float):
        return fmt(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def pvalue(p: float) -> str:
    return "n/a" if math.isnan(p) else ("< 0.0001" if p < 1e-4 else f"{p:.4f}")


@dataclass(frozen=True)
class Table:
    """A Markdown table: a header, an alignment per column (`l`, `r`, `c`), rows of cells."""

    header: list[str]
    align: list[str]
    rows: list[list[Any]]

    def __post_init__(self) -> None:
        if len(self.align) != len(self.header) or any(len(r) != len(self.header) for r in self.rows):
            raise ValueError(f"table rows must have {len(self.header)} cells, like the header {self.header}")


def rule(align: str) -> str:
    return {"l": ":---", "r": "---:", "c": ":---:"}[align]


def f1_label(protocol: str) -> str:
    """A short name for a threshold protocol, for column headers."""
    return "validation thresholds" if "validation" in protocol else protocol


def defined(seeds: list[SeedMetrics]) -> int:
    """How many findings the metrics' mean AUROC covers (those with a positive in the test set)."""
    return sum(not math.isnan(seeds[0].auroc[n]) for n in FINDINGS)


def eligible_header(study: SeedStudy) -> str:
    s = study.settings
    return (f"Avg AUROC, {len(study.eligible)} findings with ≥ {s.min_positives} test positives "
            f"[{s.level:.0%} CI]")


def overall_table(seeds: list[SeedMetrics], study: SeedStudy | None) -> Table:
    """Per seed: loss, mean AUROC, the eligible mean with its interval, F1 under both protocols, P(ranks first);
    then mean ± sd and min–max over seeds, and the ensemble."""
    label = f1_label(seeds[0].f1_protocol)
    header = ["Seed", "Loss", f"Avg AUROC ({defined(seeds)} findings)",
              eligible_header(study) if study else "Avg AUROC [CI]", f"Avg F1 ({defined(seeds)} findings, {label})",
              f"Avg F1 ({defined(seeds)} findings, test-tuned, optimistic)"]
    align = ["l", "r", "r", "c", "r", "r"]
    first = study is not None and bool(study.rank_first)
    if first:
        header.append("P(ranks first)")
        align.append("r")
    per_seed = study.per_seed if study else [None] * len(seeds)
    rows: list[list[Any]] = []
    for s, m in zip(seeds, per_seed, strict=True):
        row = [s.seed, s.loss, s.auroc_mean, WithCI(m.mean) if m else None, s.f1_mean, s.f1_test_tuned_mean]
        rows.append(row + ([study.rank_first[s.seed]] if first and study else []))
    if len(seeds) > 1:
        columns = ([s.loss for s in seeds], [s.auroc_mean for s in seeds], [s.f1_mean for s in seeds],
                   [s.f1_test_tuned_mean for s in seeds])
        loss, auroc, f1, tuned = (MeanSd(*mean_sd(c)) for c in columns)
        eligible = MeanSd(*mean_sd([m.mean.value for m in study.per_seed])) if study else None
        rows.append([f"mean ± sd ({len(seeds)} seeds)", loss, auroc, eligible, f1, tuned] + [None] * first)
        loss_r, auroc_r, f1_r, tuned_r = (Span(*min_max(c)) for c in columns)
        rows.append(["min–max", loss_r, auroc_r, None, f1_r, tuned_r] + [None] * first)
    if study and study.ensemble:
        ens = study.ensemble
        rows.append([f"ensemble (mean of {len(seeds)} seeds' probabilities)", None, ens.auroc_mean, WithCI(ens.mean),
                     ens.f1_val_mean, ens.f1_tuned_mean] + [None] * first)
    return Table(header, align, rows)


def positives(count: int | None, study: SeedStudy | None) -> str | None:
    if count is None:
        return None
    low = study is not None and count < study.settings.min_positives
    return f"{count} (< {study.settings.min_positives})" if low and study else str(count)


def per_class_table(seeds: list[SeedMetrics], study: SeedStudy | None) -> Table:
    """Per finding: AUROC per seed, mean ± sd and min–max over seeds, the ensemble with its interval, the test and
    validation positives, and how many resamples drew no positive."""
    header = ["Class", *[f"Seed {s.seed}" for s in seeds]]
    align = ["l", *["c"] * len(seeds)]
    if len(seeds) > 1:
        header += ["Mean ± sd", "Min–max"]
        align += ["c", "c"]
    ensemble = study.ensemble if study else None
    if study and ensemble:
        header += ["Ensemble", f"Ensemble {study.settings.level:.0%} CI"]
        align += ["c", "c"]
    header += ["Test positives", "Val positives"]
    align += ["r", "r"]
    if study and study.settings.resamples:
        header.append(f"Resamples without a positive (of {study.settings.resamples})")
        align.append("r")
    rows = []
    for name in FINDINGS:
        values = [s.auroc[name] for s in seeds]
        row: list[Any] = [name, *values]
        if len(seeds) > 1:
            row += [MeanSd(*mean_sd(values)), Span(*min_max(values))]
        if ensemble:
            row += [ensemble.auroc[name], ensemble.per_class.get(name)]
        row += [positives(seeds[0].test_positives.get(name), study), seeds[0].val_positives.get(name)]
        if study and study.settings.resamples:
            row.append(study.lacking[name])
        rows.append(row)
    return Table(header, align, rows)


def best_table(seeds: list[SeedMetrics], study: SeedStudy | None) -> Table:
    """All 14 findings: the best seed where the counts allow a ranking, its lead over the runner-up with the paired
    interval, and whether it beats every other seed beyond test-sampling noise."""
    rows: list[list[Any]] = []
    if study is None:
        for name in FINDINGS:
            scored = [(s.auroc[name], -s.seed) for s in seeds if not math.isnan(s.auroc[name])]
            top = max(scored) if scored else (math.nan, None)
            rows.append([name, -top[1] if top[1] is not None else "n/a", top[0]])
        return Table(["Class", "Best Seed", "Highest AUROC"], ["l", "c", "c"], rows)
    for b in study.best:
        if b.seed is None:
            best: Any = (f"not ranked (< {study.settings.min_positives} test positives)"
                         if not math.isnan(b.auroc) else "n/a")
        else:
            best = b.seed
        lead = Diff(b.lead, f" over seed {b.lead.second.split()[-1]}") if b.lead else None
        verdict = ("yes" if b.claimed else "no") if b.lead else None
        rows.append([b.finding, positives(b.positives, study), best, b.auroc, lead, verdict])
    return Table(["Class", "Test positives", "Best Seed", "Highest AUROC",
                  f"Lead over runner-up [{study.settings.level:.0%} CI]", "Beats every other seed beyond noise"],
                 ["l", "r", "c", "c", "c", "c"], rows)


def contrast_table(items: list[Contrast], label: str) -> Table:
    level = items[0].level if items else 0.95
    rows = [[f"{c.first} − {c.second}", signed(c.difference.value), interval(c.difference, sign=True),
             pvalue(c.p), pvalue(c.p_holm), "yes" if c.beyond_noise else "no"] for c in items]
    return Table([label, "Difference", f"{level:.0%} CI (paired, BCa)", "p", "Holm-adjusted p",
                  "Beyond test-sampling noise"], ["l", "r", "c", "r", "r", "c"], rows)


def per_finding_table(study: SeedStudy) -> Table:
    """One row per eligible finding, one column per comparison (the ensemble's best seed named in its cell)."""
    labels: list[str] = []
    for items in study.per_finding.values():
        for c in items:
            key = "ensemble − best seed" if c.second.startswith("best") else f"{c.first} − {c.second}"
            if key not in labels:
                labels.append(key)
    rows = []
    for finding, items in study.per_finding.items():
        cells: dict[str, Any] = {}
        for c in items:
            if c.second.startswith("best"):
                cells["ensemble − best seed"] = Diff(c, f" (seed {c.second.split()[-1]})")
            else:
                cells[f"{c.first} − {c.second}"] = Diff(c)
        rows.append([finding, *[cells.get(k) for k in labels]])
    return Table(["Class", *labels], ["l", *["c"] * len(labels)], rows)


def variance_table(study: SeedStudy) -> Table | None:
    v = study.variance
    if v is None:
        return None
    level = f"{v.level:.0%}"
    rows = [["between seeds, on this test set (observed)", v.observed, None],
            ["  of which test sampling (each seed errs on different patients)", v.interaction, None],
            ["training (seed) sd", v.seed, f"[{fmt(v.seed_low)}, {fmt(v.seed_high)}]"],
            ["one seed's test-sampling sd (test patients redrawn)", v.test, None]]
    return Table(["Standard deviation of the eligible mean AUROC", "sd", f"{level} interval"], ["l", "r", "c"], rows)


def calibration_table(seeds: list[SeedMetrics], study: SeedStudy | None, bins: int) -> Table:
    rows: list[list[Any]] = [[f"seed {s.seed}", s.brier_mean, s.ece_mean, s.mean_prob, s.prevalence] for s in seeds]
    if study and study.ensemble:
        c = study.ensemble.calibration
        rows.append(["ensemble", c.brier_mean, c.ece_mean, c.mean_prob, c.prevalence])
    n = len(FINDINGS)
    return Table(["Model", f"Brier (mean over {n} findings)", f"ECE ({bins} bins, mean over {n} findings)",
                  "Mean predicted probability", "Prevalence (test)"], ["l", "r", "r", "r", "r"], rows)


def f1_table(seeds: list[SeedMetrics], study: SeedStudy | None) -> Table:
    """Per finding: test and validation positives, F1 at validation thresholds and test-tuned (optimistic)."""
    label = f1_label(seeds[0].f1_protocol)
    rows = []
    for name in FINDINGS:
        tuned = [s.f1_test_tuned.get(name, math.nan) for s in seeds]
        rows.append([name, positives(seeds[0].test_positives.get(name), study), seeds[0].val_positives.get(name),
                     MeanSd(*mean_sd([s.f1[name] for s in seeds])), MeanSd(*mean_sd(tuned))])
    return Table(["Class", "Test positives", "Val positives", f"F1 ({label})", "F1 (test-tuned, optimistic)"],
                 ["l", "r", "r", "c", "c"], rows)


def describe_environment(env: Mapping[str, Any]) -> list[str]:
    """One environment record (`cxrstudy.numerics.environment`) as table cells: versions, device, numerics, code."""
    if not env:
        return ["not recorded"] * 4
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
    device = dict(env.get("device") or {})
    if device.get("kind") == "cuda":
        where = (f"{device.get('gpu')} (compute {device.get('capability')}), driver {device.get('driver')}, "
                 f"CUDA {device.get('cuda')}, cuDNN {device.get('cudnn')}")
    else:
        where = (f"{device.get('arch', 'cpu')} CPU, {device.get('kernels')} kernels, oneDNN ≤ "
                 f"{device.get('onednn_max_isa')}, MKL {device.get('mkl_cbwr')}, {device.get('threads')} threads")
        if device.get("cpu_model"):
            where += f", {device['cpu_model']}"
    pins = env.get("numerics") or {}
    numerics = f"isa {pins.get('isa')}, threads {pins.get('threads')}"
    code = env.get("code") or {}
    commit = (code.get("commit") or "")[:12] or "no git"
    return [versions, where, numerics, commit + (" + uncommitted changes" if code.get("dirty") else "")]


def environment_table(seeds: list[SeedMetrics]) -> Table:
    """The environment that computed each seed's numbers; seeds that share one are listed on one row."""
    groups: dict[str, list[int]] = {}
    cells: dict[str, list[str]] = {}
    for s in seeds:
        row = describe_environment(s.environment)
        key = json.dumps(row)
        groups.setdefault(key, []).append(s.seed)
        cells[key] = row
    rows = [[", ".join(str(n) for n in members), *cells[key]] for key, members in groups.items()]
    return Table(["seeds", "versions", "device", "numerics", "code (last commit of src/, params, dvc.yaml)"],
                 ["l", "l", "l", "l", "l"], rows)

"""The seed study's tables, built from the metrics files and the `SeedStudy` as `Table`s of values (`cells`).

Every per-finding table shows the positive patients beside the positive images; a finding under the threshold
shows its point value only: no interval, no rank, no claim. Row and column names come from `naming`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from cxrstudy.reporting import naming
from cxrstudy.reporting.caveats import PrevalenceGap
from cxrstudy.reporting.cells import (
    Below,
    Diff,
    MeanSd,
    Span,
    Table,
    WithCI,
    f1_label,
    fmt,
    interval,
    percent,
    pvalue,
    signed,
)
from cxrstudy.reporting.coverage import Coverage
from cxrstudy.reporting.inference import Tested
from cxrstudy.reporting.results import SeedMetrics
from cxrstudy.reporting.stats import mean_sd, min_max
from cxrstudy.reporting.study import SeedStudy

METHOD_NAMES = {"bca": "BCa", "percentile": "percentile", "normal": "normal", "exact": "exact", "none": "none"}


def defined(seeds: list[SeedMetrics]) -> int:
    """How many findings the metrics' mean AUROC covers (those with a positive in the test set)."""
    return sum(not math.isnan(v) for v in seeds[0].auroc.values())


def eligible_header(study: SeedStudy) -> str:
    s = study.settings
    return (f"Avg AUROC, {len(study.eligible)} findings with ≥ {s.min_positives} positive patients "
            f"[{s.level:.0%} CI, {METHOD_NAMES[s.single]}]")


def positive_patients(study: SeedStudy | None, name: str) -> Any:
    """The positive patients of a finding, marked when under the threshold."""
    if study is None:
        return None
    count, threshold = study.counts.patients[name], study.settings.min_positives
    return Below(count, threshold) if count < threshold else count


def overall_table(seeds: list[SeedMetrics], study: SeedStudy | None) -> Table:
    """Per seed: loss, mean AUROC, the eligible mean with its interval, F1 under both protocols, P(ranks first);
    then mean ± sd and min–max over seeds, and the ensemble."""
    label, n = f1_label(seeds[0].f1_protocol), defined(seeds)
    header = ["Seed", "Loss", f"Avg AUROC ({n} findings)", eligible_header(study) if study else "Avg AUROC [CI]",
              f"Avg F1 ({n} findings, {label})", f"Avg F1 ({n} findings, test-tuned, optimistic)"]
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


def per_class_table(seeds: list[SeedMetrics], study: SeedStudy | None, coverage: Coverage | None) -> Table:
    """Per finding: AUROC per seed, mean ± sd and min–max over seeds, the ensemble with its interval and that
    interval's simulated coverage, positive patients and images (test, validation), and resamples without a
    positive."""
    header = ["Class", *[f"Seed {s.seed}" for s in seeds]]
    align = ["l", *["c"] * len(seeds)]
    if len(seeds) > 1:
        header += ["Mean ± sd", "Min–max"]
        align += ["c", "c"]
    ensemble = study.ensemble if study else None
    if study and ensemble:
        header += ["Ensemble", f"Ensemble {study.settings.level:.0%} CI ({METHOD_NAMES[study.settings.single]})"]
        align += ["c", "c"]
        if coverage is not None:
            header.append("Simulated coverage of that CI")
            align.append("r")
    if study:
        header += ["Positive patients (test)", "Positive images (test)"]
        align += ["r", "r"]
        if study.val_counts:
            header += ["Positive patients (val)"]
            align += ["r"]
    else:
        header += ["Test positives", "Val positives"]
        align += ["r", "r"]
    if study and study.settings.resamples:
        header.append(f"Resamples without a positive (of {study.settings.resamples})")
        align.append("r")
    rows = []
    for name in seeds[0].findings:
        values = [s.auroc[name] for s in seeds]
        row: list[Any] = [name, *values]
        if len(seeds) > 1:
            row += [MeanSd(*mean_sd(values)), Span(*min_max(values))]
        if study and ensemble:
            shown = ensemble.per_class.get(name)
            row += [ensemble.auroc[name], shown]
            if coverage is not None:
                measured = (coverage.at("single", study.counts.patients[name], shown.value)
                            if shown is not None and shown.has_interval else None)
                row.append(None if measured is None else percent(measured))
        if study:
            row += [positive_patients(study, name), study.counts.images[name]]
            if study.val_counts:
                row.append(study.val_counts.patients[name])
        else:
            row += [seeds[0].test_positives.get(name), seeds[0].val_positives.get(name)]
        if study and study.settings.resamples:
            row.append(study.lacking[name])
        rows.append(row)
    return Table(header, align, rows)


def best_table(seeds: list[SeedMetrics], study: SeedStudy | None) -> Table:
    """Every finding: the best seed where the counts allow a ranking, its lead over the runner-up with the paired
    interval, and whether it beats every other seed beyond test-sampling noise."""
    rows: list[list[Any]] = []
    if study is None:
        for name in seeds[0].findings:
            scored = [(s.auroc[name], -s.seed) for s in seeds if not math.isnan(s.auroc[name])]
            top = max(scored) if scored else (math.nan, None)
            rows.append([name, -top[1] if top[1] is not None else "n/a", top[0]])
        return Table(["Class", "Best Seed", "Highest AUROC"], ["l", "c", "c"], rows)
    threshold = study.settings.min_positives
    for b in study.best:
        if b.seed is None:
            best: Any = f"not ranked (< {threshold} positive patients)" if not math.isnan(b.auroc) else "n/a"
        else:
            best = b.seed
        lead = Diff(b.lead, f" over {naming.label(b.lead.contrast.second)}") if b.lead else None
        verdict = ("yes" if b.claimed else "no") if b.lead else None
        rows.append([b.finding, positive_patients(study, b.finding), study.counts.images[b.finding], best, b.auroc,
                     lead, verdict])
    return Table(["Class", "Positive patients", "Positive images", "Best Seed", "Highest AUROC",
                  f"Lead over runner-up [{study.settings.level:.0%} CI, paired]",
                  "Beats every other seed beyond noise"], ["l", "r", "r", "c", "c", "c", "c"], rows)


def difference_header(study: SeedStudy) -> str:
    s = study.settings
    return f"{s.level:.0%} CI (paired, {METHOD_NAMES[s.difference]})"


def contrast_table(items: list[Tested], study: SeedStudy) -> Table:
    rows = [[naming.contrast_label(t.contrast), signed(t.difference.value), interval(t.difference, sign=True),
             pvalue(t.p), pvalue(t.p_holm), "yes" if t.beyond_noise else "no"] for t in items]
    return Table(["Comparison", "Difference", difference_header(study), "p (same bootstrap)", "Holm-adjusted p",
                  "Beyond test-sampling noise"], ["l", "r", "c", "r", "r", "c"], rows)


def per_finding_table(study: SeedStudy) -> Table:
    """One row per eligible finding (with its positive patients), one column per contrast; the ensemble's best seed
    is named in its cell."""
    columns: list[str] = []
    for items in study.per_finding.values():
        for t in items:
            if naming.column_label(t.contrast) not in columns:
                columns.append(naming.column_label(t.contrast))
    rows = []
    for finding, items in study.per_finding.items():
        cells: dict[str, Any] = {}
        for t in items:
            note = f" ({naming.label(t.contrast.second)})" if t.contrast.kind == naming.ENSEMBLE_VS_BEST else ""
            cells[naming.column_label(t.contrast)] = Diff(t, note)
        rows.append([finding, study.counts.patients[finding], *[cells.get(k) for k in columns]])
    return Table(["Class", "Positive patients", *columns], ["l", "r", *["c"] * len(columns)], rows)


def variance_table(study: SeedStudy) -> Table | None:
    v = study.variance
    if v is None:
        return None
    level = f"{v.level:.0%}"
    rows = [["between seeds, on this test set (observed)", v.observed, None, None],
            ["  of which test sampling (each seed errs on different patients)", v.interaction, None, None],
            ["training (seed) sd", v.seed, f"[{fmt(v.seed_low)}, {fmt(v.seed_high)}]", pvalue(v.p)],
            ["one seed's test-sampling sd (test patients redrawn)", v.test, None, None]]
    return Table(["Standard deviation of the eligible mean AUROC", "sd", f"{level} interval",
                  "p (training variance = 0)"], ["l", "r", "c", "r"], rows)


def calibration_table(seeds: list[SeedMetrics], study: SeedStudy | None, bins: int) -> Table:
    """Brier, the prevalence predictor's Brier, the skill score, ECE, mean prediction and prevalence per model."""
    n = len(seeds[0].findings)
    if study is None:
        rows: list[list[Any]] = [[f"seed {s.seed}", s.brier_mean, s.ece_mean, s.mean_prob, s.prevalence]
                                 for s in seeds]
        return Table(["Model", f"Brier (mean over {n} findings)", f"ECE ({bins} bins, mean over {n} findings)",
                      "Mean predicted probability", "Prevalence (test)"], ["l", "r", "r", "r", "r"], rows)
    models = [(naming.label(m.model), m) for m in study.per_seed]
    if study.ensemble:
        models.append((naming.label(study.ensemble.model), study.ensemble))
    skills = {name: m for name, m in models}
    rows = [[name, m.calibration.brier_mean, study.reference_brier, skills[name].skill, m.calibration.ece_mean,
             m.calibration.mean_prob, m.calibration.prevalence] for name, m in models]
    return Table(["Model", f"Brier (mean over {n} findings)", "Brier of predicting the prevalence",
                  "Brier skill score", f"ECE ({bins} bins)", "Mean predicted probability", "Prevalence (test)"],
                 ["l", "r", "r", "r", "r", "r", "r"], rows)


def f1_table(seeds: list[SeedMetrics], study: SeedStudy | None) -> Table:
    """Per finding: positive patients and images (test, validation), F1 at validation thresholds and test-tuned."""
    label = f1_label(seeds[0].f1_protocol)
    rows = []
    for name in seeds[0].findings:
        tuned = [s.f1_test_tuned.get(name, math.nan) for s in seeds]
        counts: list[Any] = [seeds[0].test_positives.get(name), seeds[0].val_positives.get(name)]
        if study is not None:
            counts = [positive_patients(study, name), study.counts.images[name],
                      study.val_counts.patients[name] if study.val_counts else None,
                      study.val_counts.images[name] if study.val_counts else None]
        rows.append([name, *counts, MeanSd(*mean_sd([s.f1[name] for s in seeds])), MeanSd(*mean_sd(tuned))])
    header = (["Positive patients (test)", "Positive images (test)", "Positive patients (val)",
               "Positive images (val)"] if study is not None else ["Test positives", "Val positives"])
    return Table(["Class", *header, f"F1 ({label})", "F1 (test-tuned, optimistic)"],
                 ["l", *["r"] * len(header), "c", "c"], rows)


def coverage_table(coverage: Coverage, kind: str, counts: list[int]) -> Table:
    """The simulated coverage of the chosen method's intervals, per positive-patient count and true AUROC."""
    method = coverage.method(kind)
    by_k = coverage.raw[kind][method]
    aurocs = sorted({a for by_a in by_k.values() for a in by_a}, key=float)
    rows = [[k, *[percent(by_k[str(k)][a]["coverage"]) for a in aurocs]] for k in counts if str(k) in by_k]
    return Table(["Positive patients", *[f"AUROC {a}" for a in aurocs]], ["r", *["r"] * len(aurocs)], rows)


def prevalence_table(gaps: list[PrevalenceGap], reference_name: str) -> Table:
    rows = [[g.finding, f"{g.ours:.1%}", f"{g.reference:.1%}", f"{g.ratio:.1f}×"] for g in gaps]
    return Table(["Class", "Prevalence (this test set)", f"Prevalence ({reference_name})", "Ratio"],
                 ["l", "r", "r", "r"], rows)


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

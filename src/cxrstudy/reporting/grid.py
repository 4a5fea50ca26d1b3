"""The comparison of experiment arms (the loss x CLAHE grid), for `reports/experiments.md`.

One Holm family per question, and no comparison in two families:
- **loss**: at each CLAHE setting, each other loss against the baseline's loss (arms that differ in the loss only);
- **CLAHE**: for each loss, CLAHE on against off (arms that differ in `preprocess.clahe` only);
- **other**: an arm that differs from the baseline in anything else, against the baseline.

Each difference of seed means is given twice: on test sampling only (the paired bootstrap, the method the coverage
simulation chose) and with the arms' training variance added (Welch-Satterthwaite t); "beyond noise" is decided on
the second. The ensembles' differences are descriptive (test sampling only, not tested).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cxrstudy.reporting import naming, scoring
from cxrstudy.reporting.cells import Diff, MeanSd, Table, WithCI, pvalue
from cxrstudy.reporting.inference import Stat, Tested, estimate, estimate_difference, mean_of, paired_contrasts
from cxrstudy.reporting.naming import Contrast
from cxrstudy.reporting.results import Predictions, SeedMetrics, rounded
from cxrstudy.reporting.stats import mean_sd
from cxrstudy.reporting.study import Settings
from cxrstudy.reporting.variance import SeedMean, VarianceComponents, variance_components, with_training

LOSS_KEYS = ("train.loss.",)
CLAHE_KEYS = ("preprocess.clahe",)


@dataclass(frozen=True)
class ArmInfo:
    """What the comparison needs of an experiment: its name, commit, params (flattened), loss, CLAHE, seeds."""

    name: str
    rev: str
    params: dict[str, Any]
    loss: str
    clahe: str
    seeds: list[SeedMetrics]


@dataclass(frozen=True)
class Arm:
    info: ArmInfo
    means: list[Stat]
    ensemble: Stat | None
    variance: VarianceComponents | None

    @property
    def seed_mean(self) -> SeedMean:
        v = self.variance
        return SeedMean(mean_of(self.means), 0.0 if v is None else v.seed ** 2, len(self.means))

    @property
    def model(self) -> naming.Model:
        return naming.arm(self.info.name)


def only_differs_in(a: ArmInfo, b: ArmInfo, keys: Sequence[str]) -> bool:
    """Whether two arms' params differ, and only in keys starting with one of `keys`."""
    names = set(a.params) | set(b.params)
    differing = [k for k in names if a.params.get(k) != b.params.get(k)]
    return bool(differing) and all(k.startswith(tuple(keys)) for k in differing)


def families(arms: list[Arm], base: Arm) -> dict[str, list[tuple[Arm, Arm]]]:
    """(first, second) pairs per question; each pair of arms in one family at most."""
    out: dict[str, list[tuple[Arm, Arm]]] = {naming.LOSS: [], naming.CLAHE: [], naming.OTHER: []}
    seen: set[frozenset[str]] = set()
    for a in arms:  # loss: against the arm with the baseline's loss and a's CLAHE setting
        ref = next((r for r in arms if r.info.loss == base.info.loss and only_differs_in(a.info, r.info, LOSS_KEYS)),
                   None)
        if a.info.loss != base.info.loss and ref is not None:
            out[naming.LOSS].append((a, ref))
            seen.add(frozenset((a.info.name, ref.info.name)))
    for loss in dict.fromkeys(a.info.loss for a in arms):
        on = next((a for a in arms if a.info.loss == loss and a.info.clahe == "on"), None)
        off = next((a for a in arms if a.info.loss == loss and a.info.clahe == "off"
                    and on is not None and only_differs_in(a.info, on.info, CLAHE_KEYS)), None)
        if on is not None and off is not None:
            out[naming.CLAHE].append((on, off))
            seen.add(frozenset((on.info.name, off.info.name)))
    covered = {n for pair in seen for n in pair}
    out[naming.OTHER] = [(a, base) for a in arms if a is not base and a.info.name not in covered]
    return out


def question_tests(kind: str, pairs: list[tuple[Arm, Arm]], settings: Settings) -> tuple[list[Tested], list[Tested]]:
    """(test sampling only, test sampling + training) for each pair's seed means, each one Holm family."""
    contrasts = [Contrast(kind, a.model, b.model) for a, b in pairs]
    sampling = paired_contrasts([(c, a.seed_mean.stat, b.seed_mean.stat) for c, (a, b) in zip(contrasts, pairs,
                                                                                                   strict=True)],
                                settings.level, settings.difference)
    total = with_training([(c, a.seed_mean, b.seed_mean) for c, (a, b) in zip(contrasts, pairs, strict=True)],
                          settings.level)
    return sampling, total


def ensemble_difference(a: Arm, b: Arm, settings: Settings) -> Tested | None:
    """The ensembles' difference with its test-sampling interval: descriptive, in no family (p_holm NaN)."""
    if a.ensemble is None or b.ensemble is None:
        return None
    e = estimate_difference(a.ensemble, b.ensemble, settings.level, settings.difference)
    return Tested(Contrast(naming.OTHER, naming.ensemble(arm=a.info.name), naming.ensemble(arm=b.info.name)), e,
                  math.nan, settings.level)


def question_table(kind: str, pairs: list[tuple[Arm, Arm]], settings: Settings) -> tuple[Table, list[Tested]]:
    """One question's table (its arms' loss and CLAHE are in the Arms table) and its Holm family's verdicts."""
    sampling, total = question_tests(kind, pairs, settings)
    pct, method = f"{settings.level:.0%}", settings.difference
    rows = [[naming.contrast_label(t.contrast), Diff(s), Diff(t), pvalue(t.p_holm), "yes" if t.beyond_noise else "no",
             Diff(d) if (d := ensemble_difference(a, b, settings)) else None]
            for (a, b), s, t in zip(pairs, sampling, total, strict=True)]
    table = Table(["Comparison", f"Δ mean of seeds [{pct} CI, test sampling only: paired bootstrap, {method}]",
                   f"Δ mean of seeds [{pct} CI, test sampling + training: Welch t]",
                   "Holm-adjusted p (test sampling + training)", "Beyond noise",
                   f"Δ ensemble [{pct} CI, test sampling only; descriptive, not tested]"],
                  ["l", "c", "c", "r", "c", "c"], rows)
    return table, total


def arms_table(arms: list[Arm], base: Arm, settings: Settings, n_eligible: int) -> Table:
    pct = f"{settings.level:.0%}"
    rows = []
    for a in arms:
        e = a.info
        ens = estimate(a.ensemble, settings.level, settings.single) if a.ensemble is not None else None
        rows.append([f"{e.name}{' (baseline)' if a is base else ''}", e.rev[:7], e.loss, e.clahe,
                     ", ".join(str(s.seed) for s in e.seeds), MeanSd(*mean_sd([s.auroc_mean for s in e.seeds])),
                     WithCI(estimate(a.seed_mean.stat, settings.level, settings.single)),
                     WithCI(ens) if ens else None, MeanSd(*mean_sd([s.f1_mean for s in e.seeds])),
                     mean_sd([s.brier_mean for s in e.seeds])[0], mean_sd([s.ece_mean for s in e.seeds])[0]])
    n_all = len(base.info.seeds[0].findings)
    return Table(["Arm", "Rev", "Loss", "CLAHE", "Seeds", f"Avg AUROC (all {n_all} findings, mean ± sd over seeds)",
                  f"Mean of seeds, {n_eligible} eligible findings [{pct} CI, test sampling only]",
                  f"Ensemble, {n_eligible} eligible findings [{pct} CI, test sampling only]",
                  f"Avg F1 (all {n_all} findings, validation thresholds)", f"Brier (all {n_all} findings)",
                  f"ECE (all {n_all} findings)"], ["l", "l", "l", "l", "l", "r", "c", "c", "r", "r", "r"], rows)


def per_class_table(arms: list[Arm], pred: Predictions) -> Table:
    counts = scoring.counts(pred.findings, pred.labels, pred.patients)
    rows = [[n, counts.patients[n], counts.images[n],
             *[mean_sd([s.auroc[n] for s in a.info.seeds])[0] for a in arms]] for n in pred.findings]
    return Table(["Class", "Positive patients (test)", "Positive images (test)", *[a.info.name for a in arms]],
                 ["l", "r", "r", *["c"] * len(arms)], rows)


def ranking(arms: list[Arm], settings: Settings, questions: dict[str, list[tuple[Arm, Arm]]]) -> dict[str, Any]:
    """Arms ranked on the eligible mean of seeds and on the all-findings mean, the leader's lead over the runner-up
    with training variance added, and the question whose family tests that pair (None: no family does)."""
    eligible = sorted(arms, key=lambda a: (-a.seed_mean.stat.point, a.info.name))
    everything = sorted(arms, key=lambda a: (-mean_sd([s.auroc_mean for s in a.info.seeds])[0], a.info.name))
    lead = None
    if len(eligible) > 1:
        top, second = eligible[0], eligible[1]
        (lead,) = with_training([(Contrast(naming.OTHER, top.model, second.model), top.seed_mean, second.seed_mean)],
                                settings.level)
    pair = {a.info.name for a in eligible[:2]}
    kind = next((k for k, pairs in questions.items() for a, b in pairs if {a.info.name, b.info.name} == pair), None)
    return {"eligible": eligible, "everything": everything, "lead": lead, "lead_kind": kind,
            "same_order": [a.info.name for a in eligible] == [a.info.name for a in everything]}


def grid_summary(arms: list[Arm], base: Arm) -> dict[str, Any]:
    """`reports/experiments.json`: each arm's per-seed calibration and AUROC, for the report's calibration
    section (does the loss cause the miscalibration?)."""
    def seeds(e: ArmInfo) -> dict[str, Any]:
        return {str(s.seed): {"ece": rounded(s.ece_mean), "brier": rounded(s.brier_mean),
                              "mean_prob": rounded(s.mean_prob), "prevalence": rounded(s.prevalence),
                              "auroc_mean": rounded(s.auroc_mean)} for s in e.seeds}

    return {"arms": [{"name": a.info.name, "rev": a.info.rev, "baseline": a is base,
                      "loss_name": str(a.info.params.get("train.loss.name", a.info.loss)), "loss": a.info.loss,
                      "clahe": a.info.clahe, "seeds": seeds(a.info)} for a in arms]}


def load_arm(info: ArmInfo, preds: list[Predictions], settings: Settings, columns: list[int]) -> Arm:
    from cxrstudy.reporting.results import make_ensemble
    from cxrstudy.reporting.study import score

    scored = [score(naming.seed(s.seed, info.name), p, settings) for s, p in zip(info.seeds, preds, strict=True)]
    means = [s.mean_over(columns) for s in scored]
    ens_pred, _ = make_ensemble(preds)
    ensemble = score(naming.ensemble(arm=info.name), ens_pred, settings).mean_over(columns) if ens_pred else None
    return Arm(info, means, ensemble, variance_components(means, settings.level, settings.seed))

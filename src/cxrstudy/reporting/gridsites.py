"""Each experiment arm at the external test site, for `reports/experiments.md`: does contrast normalisation (CLAHE)
generalise better across sites?

For every arm, over the shared findings with enough positive patients at both sites (as the report's "External
validation" section, `sites.external_study`): the mean over the arm's seeds of the internal AUROC, of the external
AUROC, and of the drop (internal - external). Each site is resampled by its own patients, with the same resamples for
every arm and seed (the report's `bootstrap_seed` internally, `bootstrap_seed + 1` externally), so arms are paired
at each site and the sites are independent.

The question's family (one Holm family): for each loss, the drop with CLAHE on - the drop with CLAHE off. Negative
means CLAHE loses less at the other site. As every arm difference in `grid`, it is given on test sampling only and
with both arms' training variance added (Welch-Satterthwaite t), and the second decides "beyond noise".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cxrstudy.reporting import naming
from cxrstudy.reporting.cells import Diff, Table, WithCI, pvalue
from cxrstudy.reporting.grid import Arm
from cxrstudy.reporting.inference import Stat, Tested, estimate, mean_of, paired_contrasts
from cxrstudy.reporting.naming import Contrast
from cxrstudy.reporting.results import Predictions, rounded
from cxrstudy.reporting.sites import (
    EXTERNAL,
    EXTERNAL_STREAM,
    INTERNAL,
    enough,
    independent,
    scores_at,
    shared_counts,
)
from cxrstudy.reporting.stats import mean_sd
from cxrstudy.reporting.study import Settings
from cxrstudy.reporting.variance import SeedMean, variance_components, with_training


@dataclass(frozen=True)
class ArmAtSites:
    """One arm's seed means over the findings eligible at both sites: internal, external and the drop; and each
    seed's drop (points), whose spread is the arm's training variance of the drop."""

    arm: Arm
    internal: SeedMean
    external: SeedMean
    drop: SeedMean
    seed_drops: list[float]


@dataclass(frozen=True)
class GridSites:
    """The arms at both sites: the shared findings, those eligible at both, the test sets' sizes, each arm's row,
    and the CLAHE question's family (empty without a CLAHE on/off pair)."""

    site: str
    shared: list[str]
    eligible: list[str]
    internal_size: tuple[int, int]  # images, patients
    external_size: tuple[int, int]
    arms: list[ArmAtSites]
    clahe: list[tuple[Tested, Tested]]  # (test sampling only, test sampling + training) per loss


def _seed_mean(stats: Sequence[Stat], settings: Settings) -> SeedMean:
    v = variance_components(stats, settings.level, settings.seed)
    return SeedMean(mean_of(stats), 0.0 if v is None else v.seed ** 2, len(stats))


def shared_eligible(internal: Predictions, external: Predictions, settings: Settings) -> tuple[list[str], list[str]]:
    """The findings both label spaces share, and those with enough positive patients at both sites."""
    names, at_home, away = shared_counts(internal, external)
    return names, [n for n in names if enough(at_home, n, settings.min_positives)
                   and enough(away, n, settings.min_positives)]


def arm_at_sites(arm: Arm, internal: Sequence[Predictions], external: Sequence[Predictions], names: Sequence[str],
                 settings: Settings) -> ArmAtSites:
    """One arm's seeds at both sites, over `names` (the findings eligible at both)."""
    homes, aways, drops = [], [], []
    everything = range(len(names))
    for s, at_home, away in zip(arm.info.seeds, internal, external, strict=True):
        model = naming.seed(s.seed, arm.info.name)
        home = scores_at(model, at_home, names, settings, settings.seed).mean_over(everything)
        there = scores_at(model, away, names, settings, settings.seed + EXTERNAL_STREAM).mean_over(everything)
        homes.append(home)
        aways.append(there)
        drops.append(independent(home, there))
    return ArmAtSites(arm, _seed_mean(homes, settings), _seed_mean(aways, settings), _seed_mean(drops, settings),
                      [d.point for d in drops])


def grid_sites(site: str, arms: Sequence[Arm], internal: dict[str, list[Predictions]],
               external: dict[str, list[Predictions]], clahe_pairs: Sequence[tuple[Arm, Arm]],
               settings: Settings) -> GridSites:
    """Every arm at both sites (`internal`, `external`: each arm's predictions per seed, by arm name) and the CLAHE
    question over `clahe_pairs` (on, off): the difference of their drops."""
    first_int, first_ext = internal[arms[0].info.name][0], external[arms[0].info.name][0]
    shared, names = shared_eligible(first_int, first_ext, settings)
    rows = [arm_at_sites(a, internal[a.info.name], external[a.info.name], names, settings) for a in arms] if names \
        else []
    by_name = {r.arm.info.name: r for r in rows}
    clahe: list[tuple[Tested, Tested]] = []
    if rows and clahe_pairs:
        items = [(Contrast(naming.CLAHE_DROP, on.model, off.model), by_name[on.info.name].drop,
                  by_name[off.info.name].drop) for on, off in clahe_pairs]
        sampling = paired_contrasts([(c, a.stat, b.stat) for c, a, b in items], settings.level, settings.difference)
        total = with_training(items, settings.level)
        clahe = list(zip(sampling, total, strict=True))
    return GridSites(site, shared, names, (len(first_int.images), len(set(first_int.patients.tolist()))),
                     (len(first_ext.images), len(set(first_ext.patients.tolist()))), rows, clahe)


def _untested(row: ArmAtSites, settings: Settings) -> Tested:
    """An arm's drop with its test-sampling interval: descriptive, in no family (p_holm NaN)."""
    model = row.arm.model
    contrast = Contrast(naming.SITE_DROP, naming.scored_on(model, INTERNAL), naming.scored_on(model, EXTERNAL))
    return Tested(contrast, estimate(row.drop.stat, settings.level, settings.difference), math.nan, settings.level)


def arms_table(study: GridSites, settings: Settings) -> Table:
    pct, single = f"{settings.level:.0%}", settings.single
    n = len(study.eligible)
    rows = [[r.arm.info.name, r.arm.info.loss, r.arm.info.clahe,
             WithCI(estimate(r.internal.stat, settings.level, single)),
             WithCI(estimate(r.external.stat, settings.level, single)),
             Diff(_untested(r, settings)), mean_sd(r.seed_drops)[1]] for r in study.arms]
    return Table(["Arm", "Loss", "CLAHE", f"Internal AUROC, mean of seeds, {n} findings [{pct} CI, test sampling only]",
                  f"External AUROC, mean of seeds, same {n} findings [{pct} CI, test sampling only]",
                  f"Drop, internal − external [{pct} CI, test sampling only; independent sets]",
                  "sd of the drop over seeds"], ["l", "l", "l", "c", "c", "c", "r"], rows)


def clahe_table(study: GridSites, settings: Settings) -> Table:
    pct = f"{settings.level:.0%}"
    rows = [[naming.contrast_label(t.contrast), Diff(s), Diff(t), pvalue(t.p_holm), "yes" if t.beyond_noise else "no"]
            for s, t in study.clahe]
    return Table(["Drop of CLAHE on − drop of CLAHE off",
                  f"Δ drop [{pct} CI, test sampling only: paired bootstrap at each site, {settings.difference}]",
                  f"Δ drop [{pct} CI, test sampling + training: Welch t]",
                  "Holm-adjusted p (test sampling + training)", "Beyond noise"], ["l", "c", "c", "r", "c"], rows)


def summary(study: GridSites | None) -> dict[str, Any] | None:
    """`reports/experiments.json`'s `external`: each arm's seed means at both sites and its drop (points), and the
    CLAHE question's differences with their intervals (test sampling + training) and Holm-adjusted p."""
    if study is None:
        return None

    return {"site": study.site, "eligible_findings": study.eligible,
            "arms": {r.arm.info.name: {"internal": rounded(r.internal.stat.point),
                                       "external": rounded(r.external.stat.point), "drop": rounded(r.drop.stat.point)}
                     for r in study.arms},
            "clahe_drop": [{"on": t.contrast.first.arm, "off": t.contrast.second.arm,
                            "difference": rounded(t.difference.value), "low": rounded(t.difference.low),
                            "high": rounded(t.difference.high), "p_holm": rounded(t.p_holm)} for _, t in study.clahe]}

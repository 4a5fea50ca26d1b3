"""The "Whom it fails" section's tables and facts, from a `SubgroupStudy` (`cxrstudy.reporting.subgroups`; its
tracked numbers are the subgroups stage's `metrics/subgroups.json`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cxrstudy.reporting import naming
from cxrstudy.reporting.cells import Diff, Table, WithCI, cell, pvalue
from cxrstudy.reporting.inference import Tested
from cxrstudy.reporting.subgroups import Gap, SubgroupStudy
from cxrstudy.reporting.tables import METHOD_NAMES

AXIS_NAMES = {"sex": "sex", "age": "age (years)", "view": "view", "follow-up": "follow-up"}


def _ci(study: SubgroupStudy, method: str) -> str:
    return f"{study.settings.level:.0%} CI, {METHOD_NAMES[method]}"


def groups_table(study: SubgroupStudy) -> Table:
    """Per group: its images and patients, the findings its axis's mean is over with their fewest positive
    patients in the group, and each model's mean AUROC with its interval."""
    models = study.models
    rows = []
    for g in study.groups:
        c = study.counts[g.name]
        names = study.axis_findings[g.axis]
        fewest = min((c.positive_patients[n] for n in names), default=None)
        rows.append([AXIS_NAMES[g.axis], g.name, c.images, c.patients, len(names), fewest,
                     *[WithCI(study.result(m, g.name).auroc) for m in models]])
    return Table(["Axis", "Group", "Images", "Patients", "Findings in the mean",
                  "Fewest positive patients of those findings",
                  *[f"{naming.label(m)} [{_ci(study, study.settings.single)}]" for m in models]],
                 ["l", "l", "r", "r", "r", "r", *["c"] * len(models)], rows)


def _rate(study: SubgroupStudy, m: naming.Model, group: str) -> str:
    r = study.result(m, group)
    return f"{cell(WithCI(r.underdiagnosis))}; {r.missed} / {r.found}"


def underdiagnosis_table(study: SubgroupStudy) -> Table:
    """Per group: its images with a finding and their patients, and each model's underdiagnosis rate with its
    interval and the patients it rests on (called "no finding" / a finding called)."""
    models = study.models
    rows = []
    for g in study.groups:
        c = study.counts[g.name]
        rows.append([AXIS_NAMES[g.axis], g.name, c.with_finding_images, c.with_finding_patients,
                     *[_rate(study, m, g.name) for m in models]])
    return Table(["Axis", "Group", "Images with a finding", "Their patients",
                  *[f"{naming.label(m)} [{_ci(study, study.settings.single)}]; patients missed / found"
                    for m in models]], ["l", "l", "r", "r", *["c"] * len(models)], rows)


def _diff(t: Tested | None) -> Any:
    return Diff(t) if t is not None else None


def gaps_table(study: SubgroupStudy) -> Table:
    rows = [[f"{g.first} − {g.second}", naming.label(g.model), _diff(g.auroc),
             pvalue(g.auroc.p_holm) if g.auroc else None, _diff(g.underdiagnosis),
             pvalue(g.underdiagnosis.p_holm) if g.underdiagnosis else None] for g in study.gaps]
    diff = _ci(study, study.settings.difference)
    return Table(["Gap", "Model", f"Δ mean AUROC [{diff}, paired]", "Holm-adjusted p (AUROC gaps)",
                  f"Δ underdiagnosis rate [{diff}, paired]", "Holm-adjusted p (underdiagnosis gaps)"],
                 ["l", "l", "c", "r", "c", "r"], rows)


@dataclass(frozen=True)
class SubgroupFacts:
    """What the section's sentences need: the gaps beyond noise, and the tested gaps of each kind."""

    auroc_beyond: list[Gap]
    rate_beyond: list[Gap]
    auroc_tested: int
    rate_tested: int
    no_mean: list[str]  # axes whose groups share no eligible finding


def subgroup_facts(study: SubgroupStudy) -> SubgroupFacts:
    return SubgroupFacts([g for g in study.gaps if g.auroc and g.auroc.beyond_noise],
                         [g for g in study.gaps if g.underdiagnosis and g.underdiagnosis.beyond_noise],
                         sum(g.auroc is not None for g in study.gaps),
                         sum(g.underdiagnosis is not None for g in study.gaps),
                         [a for a, names in study.axis_findings.items() if not names])

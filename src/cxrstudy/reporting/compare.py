"""`python -m cxrstudy compare`: does a change move the numbers beyond test-sampling noise?

Head and base are two revisions' predictions on the same test patients (head: a predictions folder; base: a git
revision, whose committed `predictions/` is read with `git show`, or another folder). Both are checked against the
split's test list and against each other first (`checks`): a renamed or swapped id stops the comparison with the
file and the line. For each seed's mean AUROC, the mean over seeds and the ensemble, the block gives head − base
with its paired patient-bootstrap interval (the method the coverage simulation chose for differences), Holm-corrected
over its rows, as Markdown for a pull-request comment.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from cxrstudy.atomic import atomic_file
from cxrstudy.errors import InputError
from cxrstudy.params import Params
from cxrstudy.reporting import naming, scoring
from cxrstudy.reporting.checks import check_against_split, read_split_lists
from cxrstudy.reporting.coverage import load_coverage
from cxrstudy.reporting.inference import Stat, Tested, mean_of, paired_contrasts
from cxrstudy.reporting.naming import Contrast, Model
from cxrstudy.reporting.render import render
from cxrstudy.reporting.results import Predictions, make_ensemble, read_predictions, same_images
from cxrstudy.reporting.revisions import predictions_at, resolve
from cxrstudy.reporting.study import Settings, eligible, score, settings
from cxrstudy.reporting.variance import VarianceComponents, variance_components

TEMPLATE = "compare.md.j2"


@dataclass(frozen=True)
class Row:
    """One compared model: its base and head values and the paired difference."""

    model: Model
    base: float
    head: float
    tested: Tested


@dataclass(frozen=True)
class Comparison:
    rows: list[Row]
    eligible: list[str]
    settings: Settings
    n_patients: int
    n_images: int
    head_variance: VarianceComponents | None

    @property
    def changed(self) -> list[Row]:
        return [r for r in self.rows if r.tested.beyond_noise]


def compare(base: dict[int, Predictions], head: dict[int, Predictions], settings_: Settings) -> Comparison:
    """Head − base for every seed both have, their mean and their ensembles, paired by test patient."""
    seeds = [s for s in head if s in base]
    if not seeds:
        raise InputError(f"no seed in common: head has {sorted(head)}, base has {sorted(base)}")
    everything = [base[s] for s in seeds] + [head[s] for s in seeds]
    if not same_images(everything):
        raise InputError("head and base were tested on different images (or labels): there is nothing to pair; "
                         "a change to the data or the split needs a fresh baseline, not a paired comparison")
    first = everything[0]
    counts = scoring.counts(first.findings, first.labels, first.patients)
    columns = eligible(counts, first.findings, settings_.min_positives)

    def means(side: dict[int, Predictions]) -> tuple[list[Stat], Stat | None]:
        stats = [score(naming.seed(s), side[s], settings_).mean_over(columns) for s in seeds]
        ensemble, _ = make_ensemble([side[s] for s in seeds])
        return stats, (score(naming.ensemble(len(seeds)), ensemble, settings_).mean_over(columns)
                       if ensemble else None)

    (base_stats, base_ens), (head_stats, head_ens) = means(base), means(head)
    models: list[tuple[Model, Stat, Stat]] = [(naming.seed(s), h, b)
                                              for s, h, b in zip(seeds, head_stats, base_stats, strict=True)]
    if len(seeds) > 1:
        models.append((naming.mean(len(seeds)), mean_of(head_stats), mean_of(base_stats)))
    if head_ens is not None and base_ens is not None:
        models.append((naming.ensemble(len(seeds)), head_ens, base_ens))
    items = [(Contrast(naming.HEAD_VS_BASE, Model(m.kind, m.seed, m.count, "head"),
                       Model(m.kind, m.seed, m.count, "base")), h, b) for m, h, b in models]
    tested = paired_contrasts(items, settings_.level, settings_.difference) if columns else []
    rows = [Row(m, b.point, h.point, t) for (m, h, b), t in zip(models, tested, strict=False)]
    return Comparison(rows, [first.findings[k] for k in columns], settings_, len(set(first.patients.tolist())),
                      len(first.images), variance_components(head_stats, settings_.level, settings_.seed)
                      if columns else None)


def read_side(params: Params, folder: Path | None, rev: str | None, repo: Path) -> dict[int, Predictions]:
    """Every seed's test predictions from a folder, or as committed at a git revision."""
    if folder is not None:
        return {s: read_predictions(folder / f"seed_{s}.csv") for s in params.seeds}
    assert rev is not None
    commit = resolve(repo, rev)
    return {s: predictions_at(repo, rev, f"predictions/seed_{s}.csv", commit) for s in params.seeds}


def markdown(result: Comparison, base_label: str, head_label: str) -> str:
    return render(TEMPLATE, c=result, base=base_label, head=head_label)


def run(params: Params, head_dir: Path, out_file: Path, *, base_rev: str | None = None, base_dir: Path | None = None,
        repo: Path = Path("."), splits_dir: Path = Path("data/splits"),
        coverage_file: Path = Path("metrics/coverage.json")) -> None:
    """Write the Markdown block (to standard output when `out_file` is "-"), after checking both sides'
    predictions against the split's test list and against each other."""
    settings_ = settings(params, load_coverage(coverage_file))
    split = read_split_lists(splits_dir, ("test",))
    base = read_side(params, base_dir, base_rev, repo)
    head = read_side(params, head_dir, None, repo)
    def where(seed: int, folder: Path | None, rev: str | None) -> str:
        return f"{rev}:predictions/seed_{seed}.csv" if rev else str((folder or Path(".")) / f"seed_{seed}.csv")

    check_against_split([(base[s], where(s, base_dir, base_rev)) for s in base]
                        + [(head[s], where(s, head_dir, None)) for s in head], split, "test")
    text = markdown(compare(base, head, settings_), f"`{base_rev}`" if base_rev else f"`{base_dir}`",
                    f"`{head_dir}`")
    if str(out_file) == "-":
        sys.stdout.write(text)
        return
    with atomic_file(out_file) as handle:
        handle.write(text)
    print(f"compare: {len(text)} characters -> {out_file}", file=sys.stderr)

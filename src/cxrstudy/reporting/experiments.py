"""`python -m cxrstudy experiments`: DVC experiments (the loss × CLAHE grid) in one report, `reports/experiments.md`.

The experiments come from `dvc exp show --json` (their params and metrics); each one's predictions are read from its
own git commit (they are `cache: false` outputs), so every arm is compared with the baseline arm on the same test
patients: a paired patient bootstrap, as in the report. Because an arm's mean over seeds would change with other
seeds, its difference from the baseline is also given with training variance added (`inference.with_training`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrstudy.atomic import atomic_file
from cxrstudy.errors import InputError
from cxrstudy.labels import FINDINGS
from cxrstudy.params import Params
from cxrstudy.reporting.inference import (
    Contrast,
    Stat,
    VarianceComponents,
    contrasts,
    estimate,
    mean_of,
    variance_components,
    with_training,
)
from cxrstudy.reporting.render import render
from cxrstudy.reporting.results import (
    Predictions,
    SeedMetrics,
    make_ensemble,
    predictions_at,
    same_images,
    seed_metrics_from_dict,
)
from cxrstudy.reporting.stats import mean_sd
from cxrstudy.reporting.study import Settings, eligible, score, settings
from cxrstudy.reporting.tables import Diff, MeanSd, Table, WithCI, defined, pvalue

SEED_FILE = re.compile(r"(?:^|/)seed_(\d+)\.json$")
SUMMARY_FILE = "metrics/report.json"
TEMPLATE = "experiments.md.j2"


@dataclass(frozen=True)
class Experiment:
    """One row of `dvc exp show --json`: its name, commit, params.yaml values (flattened) and per-seed metrics."""

    name: str
    rev: str
    baseline: bool
    params: dict[str, Any]
    seeds: list[SeedMetrics]
    summary: dict[str, Any]

    @property
    def loss(self) -> str:
        name = str(self.params.get("train.loss.name", "?"))
        if name != "focal":
            return name
        alpha = self.params.get("train.loss.alpha")
        settings_ = [f"gamma {self.params['train.loss.gamma']}"] if "train.loss.gamma" in self.params else []
        settings_ += [f"alpha {'off' if alpha == -1 else alpha}"] if alpha is not None else []
        return f"focal ({', '.join(settings_)})" if settings_ else "focal"

    @property
    def clahe(self) -> str:
        if "preprocess.clahe" not in self.params:
            return "?"
        return "on" if self.params["preprocess.clahe"] else "off"


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _experiment(entry: Mapping[str, Any], baseline: bool) -> Experiment:
    data = entry.get("data") or {}
    rev = str(data.get("rev") or entry.get("rev") or "")
    params = _flatten((data.get("params") or {}).get("params.yaml", {}).get("data") or {})
    seeds, summary = [], {}
    for path, content in sorted((data.get("metrics") or {}).items()):
        payload = (content or {}).get("data") or {}
        match = SEED_FILE.search(path)
        if match:
            seeds.append(seed_metrics_from_dict({"seed": int(match.group(1)), **payload}, lenient=True))
        elif path.endswith(SUMMARY_FILE):
            summary = _flatten(payload)
    seeds.sort(key=lambda s: s.seed)
    return Experiment(str(entry.get("name") or rev[:7]), rev, baseline, params, seeds, summary)


def parse_exp_show(data: Any) -> tuple[list[Experiment], list[str]]:
    """Experiments with metrics from `dvc exp show --json` (DVC 3), and a note for each one left out.

    The top-level entries are the workspace (left out: it repeats an experiment or holds uncommitted work) and the
    baseline commits; each commit's `experiments` hold the runs queued from it, with `executor.state` while queued or
    running. An entry without seed metrics (queued, running, failed) is listed in the notes instead.
    """
    if not isinstance(data, list):
        raise TypeError(f"expected a JSON list of revisions, got {type(data).__name__}")
    found: list[Experiment] = []
    skipped: list[str] = []

    def take(entry: Mapping[str, Any], baseline: bool, state: str | None) -> None:
        exp = _experiment(entry, baseline)
        if entry.get("error") or not exp.seeds:
            skipped.append(f"{exp.name} ({state or ('failed' if entry.get('error') else 'no seed metrics')})")
        else:
            found.append(exp)

    for commit in data:
        if commit.get("rev") == "workspace":
            continue
        take(commit, True, None)
        for run in commit.get("experiments") or []:
            state = (run.get("executor") or {}).get("state")
            for entry in (run.get("revs") or [])[:1]:  # DVC 3 keeps one rev per experiment
                take({**entry, "name": entry.get("name") or run.get("name")}, False, state)
    return found, skipped


def load_exp_show(path: Path | None, repo: Path) -> tuple[list[Experiment], list[str]]:
    """`dvc exp show --json` output from `path` ("-": standard input; None: run it in `repo`)."""
    where = "dvc exp show --json" if path is None else str(path)
    if path is None:
        done = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=repo, capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            raise InputError(f"`dvc exp show --json` failed in {repo}: {(done.stderr or done.stdout).strip()[-500:]}")
        text = done.stdout
    elif str(path) == "-":
        text = sys.stdin.read()
    elif not path.is_file():
        raise InputError(f"{path}: not found; write it with `dvc exp show --json > {path}`")
    else:
        text = path.read_text()
    try:
        return parse_exp_show(json.loads(text))
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise InputError(f"{where}: not `dvc exp show --json` output ({type(err).__name__}: {err})") from None


def arms_of(experiments: list[Experiment], baseline: str | None) -> tuple[list[Experiment], Experiment]:
    """The arms to compare (a baseline commit left out when an experiment repeats its params) and the baseline arm:
    the one named, else the one with the baseline commit's params."""
    commits = [e for e in experiments if e.baseline]
    runs = [e for e in experiments if not e.baseline]
    arms = runs + [c for c in commits if not any(r.params == c.params for r in runs)]
    if baseline is not None:
        named = [a for a in arms if a.name == baseline]
        if not named:
            raise InputError(f"--baseline {baseline}: no such experiment with metrics; have {[a.name for a in arms]}")
        return arms, named[0]
    for commit in commits:
        match = next((a for a in arms if a.params == commit.params), None)
        if match is not None:
            return arms, match
    if not arms:
        raise InputError("no experiment has metrics yet: run them first (`dvc exp run --run-all`)")
    return arms, arms[0]


@dataclass(frozen=True)
class Arm:
    experiment: Experiment
    means: list[Stat]
    ensemble: Stat | None
    variance: VarianceComponents | None

    @property
    def seed_mean(self) -> Stat:
        return mean_of(self.means)

    def training_variance(self) -> float:
        """s2_seed / S: the training part of the variance of this arm's mean over seeds (0 with one seed)."""
        v = self.variance
        return 0.0 if v is None else v.seed ** 2 / len(self.means)


def load_arm(exp: Experiment, settings_: Settings, columns: list[int] | None,
             preds: list[Predictions]) -> Arm:
    scored = [score(f"{exp.name} seed {s.seed}", p, settings_) for s, p in zip(exp.seeds, preds, strict=True)]
    cols = columns if columns is not None else []
    means = [s.mean_over(cols) for s in scored]
    ens_pred, _ = make_ensemble(preds)
    ensemble = score(f"{exp.name} ensemble", ens_pred, settings_).mean_over(cols) if ens_pred else None
    return Arm(exp, means, ensemble, variance_components(means, settings_.level))


def _pair_contrasts(pairs: list[tuple[Arm, Arm]], level: float) -> tuple[list[Contrast], list[Contrast]]:
    """(test sampling only, test sampling + training) for the seed means of each (first, second) pair."""
    diffs = [(a.experiment.name, b.experiment.name, a.seed_mean - b.seed_mean) for a, b in pairs]
    total = [(x, y, d, a.training_variance() + b.training_variance(), len(a.means) + len(b.means) - 2)
             for (x, y, d), (a, b) in zip(diffs, pairs, strict=True)]
    return contrasts(diffs, level), with_training(total, level)


def comparison(arms: list[Arm], base: Arm, settings_: Settings, columns: list[int]) -> dict[str, Any]:
    """The tables and the numbers the sentences need."""
    level = settings_.level
    others = [a for a in arms if a is not base]
    sampling, total = _pair_contrasts([(a, base) for a in others], level)
    with_ens = [a for a in others if a.ensemble is not None and base.ensemble is not None]
    ensembles = contrasts([(a.experiment.name, base.experiment.name, a.ensemble - base.ensemble)  # type: ignore[operator]
                           for a in with_ens], level)
    by_ensemble = {c.first: c for c in ensembles}
    clahe_pairs = []
    for loss in dict.fromkeys(a.experiment.loss for a in arms):
        on = next((a for a in arms if a.experiment.loss == loss and a.experiment.clahe == "on"), None)
        off = next((a for a in arms if a.experiment.loss == loss and a.experiment.clahe == "off"), None)
        if on is not None and off is not None:
            clahe_pairs.append((on, off))
    clahe_sampling, clahe_total = _pair_contrasts(clahe_pairs, level)
    pct = f"{level:.0%}"
    rows = []
    for a in arms:
        e = a.experiment
        seeds = [s.auroc_mean for s in e.seeds]
        ens = estimate(a.ensemble, level) if a.ensemble is not None else None
        rows.append([f"{e.name}{' (baseline)' if a is base else ''}", e.rev[:7], e.loss, e.clahe,
                     ", ".join(str(s.seed) for s in e.seeds), MeanSd(*mean_sd(seeds)),
                     WithCI(estimate(a.seed_mean, level)), WithCI(ens) if ens else None,
                     MeanSd(*mean_sd([s.f1_mean for s in e.seeds])), mean_sd([s.brier_mean for s in e.seeds])[0],
                     mean_sd([s.ece_mean for s in e.seeds])[0]])
    n_cols, n_def = len(columns), defined(base.experiment.seeds)
    arms_table = Table(["Arm", "Rev", "Loss", "CLAHE", "Seeds", f"Avg AUROC ({n_def} findings, mean ± sd over seeds)",
                        f"Mean of seeds, {n_cols} eligible findings [{pct} CI]",
                        f"Ensemble, {n_cols} eligible findings [{pct} CI]",
                        f"Avg F1 ({n_def} findings, validation thresholds)", f"Brier ({len(FINDINGS)} findings)",
                        f"ECE ({len(FINDINGS)} findings)"], ["l", "l", "l", "l", "l", "r", "c", "c", "r", "r", "r"],
                       rows)
    delta_rows = [[c.first, Diff(c), Diff(t_), pvalue(t_.p_holm), "yes" if t_.beyond_noise else "no",
                   Diff(by_ensemble[c.first]) if c.first in by_ensemble else None]
                  for c, t_ in zip(sampling, total, strict=True)]
    deltas = Table(["Arm", f"Δ mean of seeds [{pct} CI, test sampling]", f"Δ [{pct} CI, test sampling + training]",
                    "Holm-adjusted p", "Beyond noise", f"Δ ensemble [{pct} CI, test sampling]"],
                   ["l", "c", "c", "r", "c", "c"], delta_rows)
    clahe_rows = [[a.experiment.loss, Diff(c), Diff(t_), pvalue(t_.p_holm), "yes" if t_.beyond_noise else "no"]
                  for (a, _), c, t_ in zip(clahe_pairs, clahe_sampling, clahe_total, strict=True)]
    clahe = Table(["Loss", f"CLAHE on − off [{pct} CI, test sampling]", f"[{pct} CI, test sampling + training]",
                   "Holm-adjusted p", "Beyond noise"], ["l", "c", "c", "r", "c"], clahe_rows)
    per_class = Table(["Class", *[a.experiment.name for a in arms]], ["l", *["c"] * len(arms)],
                      [[n, *[mean_sd([s.auroc[n] for s in a.experiment.seeds])[0] for a in arms]] for n in FINDINGS])
    ranked = sorted(arms, key=lambda a: (-a.seed_mean.point, a.experiment.name))
    return {"arms": arms_table, "deltas": deltas, "clahe": clahe if clahe_rows else None, "per_class": per_class,
            "total": total, "clahe_total": clahe_total, "ranked": ranked, "base": base,
            "beyond": [t_ for t_ in total if t_.beyond_noise], "ensembles": ensembles}


def _differing(arms: list[Experiment]) -> list[str]:
    """Parameters that should be equal across arms for a like-for-like comparison, and are not."""
    return sorted({k for e in arms for k, v in e.params.items() if (k == "seeds" or k.startswith(("split.", "ingest.")))
                   and any(o.params.get(k) != v for o in arms)})


def run(params: Params, exp_show: Path | None, repo: Path, out_file: Path, baseline: str | None = None) -> None:
    """Render the comparison of the experiments with metrics to `out_file`."""
    experiments, skipped = load_exp_show(exp_show, repo)
    exps, base_exp = arms_of(experiments, baseline)
    settings_ = settings(params)
    preds = {e.name: [predictions_at(repo, e.rev, f"predictions/seed_{s.seed}.csv") for s in e.seeds] for e in exps}
    flat = [p for e in exps for p in preds[e.name]]
    if not same_images(flat):
        raise InputError("the experiments were tested on different images (or labels), so they cannot be paired: "
                         f"check {', '.join(_differing(exps)) or 'their split and ingest parameters'}")
    columns = eligible(flat[0].labels, settings_.min_positives)
    # The baseline first, then by loss and CLAHE (on before off), whatever order `dvc exp show` lists them in.
    exps.sort(key=lambda e: (e is not base_exp, e.loss, e.clahe != "on", e.name))
    arms = [load_arm(e, settings_, columns, preds[e.name]) for e in exps]
    base = arms[exps.index(base_exp)]
    context = {"phantom": base_exp.params.get("ingest.source") == "phantom", "settings": settings_,
               "eligible": [FINDINGS[k] for k in columns], "n_patients": len(set(flat[0].patients.tolist())),
               "n_images": len(flat[0].images), "skipped": skipped, "differing": _differing(exps),
               **comparison(arms, base, settings_, columns)}
    text = render(TEMPLATE, **context)
    with atomic_file(out_file) as handle:
        handle.write(text)
    print(f"experiments: {len(arms)} arm(s) compared -> {out_file}")


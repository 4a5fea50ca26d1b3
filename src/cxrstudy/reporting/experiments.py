"""`python -m cxrstudy experiments`: DVC experiments (the loss × CLAHE grid) in one report, `reports/experiments.md`,
and the arms' calibration in `reports/experiments.json` (which the seed report reads to say whether the loss causes
its miscalibration).

The experiments come from `dvc exp show --json` (their params and metrics); each one's predictions are read from its
own git commit (they are `cache: false` outputs), so arms are compared on the same test patients: a paired patient
bootstrap, as in the report, one Holm family per question (`grid`). Because an arm's mean over seeds would change
with other seeds, every difference is also given with training variance added (`variance.with_training`). Each arm
is also scored at the external test site from its commit's external predictions, and the CLAHE question is asked of
the drop between sites (`gridsites`).
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

from cxrstudy.atomic import atomic_file, write_json
from cxrstudy.errors import InputError
from cxrstudy.params import Params
from cxrstudy.reporting import grid, gridsites, naming, scoring
from cxrstudy.reporting.coverage import load_coverage
from cxrstudy.reporting.render import render
from cxrstudy.reporting.results import Predictions, SeedMetrics, same_images, seed_metrics_from_dict
from cxrstudy.reporting.revisions import predictions_at, resolve, show
from cxrstudy.reporting.study import eligible, settings
from cxrstudy.reporting.tables import METHOD_NAMES

SEED_FILE = re.compile(r"(?:^|/)metrics/eval/seed_(\d+)\.json$")  # evaluate's, not external's or localize's
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


def _differing(arms: list[Experiment]) -> list[str]:
    """Parameters that should be equal across arms for a like-for-like comparison, and are not."""
    return sorted({k for e in arms for k, v in e.params.items() if (k == "seeds" or k.startswith(("split.", "ingest.")))
                   and any(o.params.get(k) != v for o in arms)})


def _shared(base: Experiment) -> dict[str, Any]:
    """The baseline's training settings every arm shares (and that were tuned for the baseline)."""
    return {k: base.params[k] for k in ("train.lr", "train.schedule", "train.epochs", "train.optimizer")
            if k in base.params}


def external_at(repo: Path, exps: list[Experiment]) -> tuple[str, dict[str, list[Predictions]]] | str:
    """Each arm's external predictions per seed, from its commit (the external stage's `metrics/external/seed_N.json`
    and `predictions/external/seed_N.csv`), and the external site's name; or why there are none to compare."""
    site, preds = "", dict[str, list[Predictions]]()
    for e in exps:
        commit = resolve(repo, e.rev)
        preds[e.name] = []
        for s in e.seeds:
            path = f"metrics/external/seed_{s.seed}.json"
            text = show(repo, commit, path)
            if text is None:
                return f"{e.name} has no external metrics ({path} is not in its commit)"
            try:
                found = json.loads(text)["external"]
            except (ValueError, KeyError, TypeError) as err:
                raise InputError(f"{e.rev}:{path}: malformed external metrics file ({type(err).__name__}: {err})") \
                    from None
            if found is None:
                return f"{e.name} has no external test set (ingest.external: none)"
            name = str(found.get("name") or "the external site")
            if site and name != site:
                return f"the arms were tested at different external sites ({site}, {name})"
            site = name
            preds[e.name].append(predictions_at(repo, e.rev, f"predictions/external/seed_{s.seed}.csv", commit))
    if not same_images([p for arm in preds.values() for p in arm]):
        return "the arms' external test sets differ (images or labels), so they cannot be paired"
    return site, preds


def run(params: Params, exp_show: Path | None, repo: Path, out_file: Path, baseline: str | None = None,
        coverage_file: Path = Path("metrics/coverage.json"), summary_file: Path | None = None) -> None:
    """Render the comparison of the experiments with metrics to `out_file`, and the arms' calibration summary to
    `summary_file` (default: beside it, `.json`)."""
    experiments, skipped = load_exp_show(exp_show, repo)
    exps, base_exp = arms_of(experiments, baseline)
    settings_ = settings(params, load_coverage(coverage_file))
    preds = {e.name: [predictions_at(repo, e.rev, f"predictions/seed_{s.seed}.csv") for s in e.seeds] for e in exps}
    flat = [p for e in exps for p in preds[e.name]]
    if not same_images(flat):
        raise InputError("the experiments were tested on different images (or labels), so they cannot be paired: "
                         f"check {', '.join(_differing(exps)) or 'their split and ingest parameters'}")
    first = flat[0]
    columns = eligible(scoring.counts(first.findings, first.labels, first.patients), first.findings,
                       settings_.min_positives)
    # The baseline first, then by loss and CLAHE (on before off), whatever order `dvc exp show` lists them in.
    exps.sort(key=lambda e: (e is not base_exp, e.loss, e.clahe != "on", e.name))
    arms = [grid.load_arm(grid.ArmInfo(e.name, e.rev, e.params, e.loss, e.clahe, e.seeds), preds[e.name], settings_,
                          columns) for e in exps]
    base = arms[exps.index(base_exp)]
    questions = grid.families(arms, base)
    tables: dict[str, Any] = dict.fromkeys(questions)
    verdicts: dict[str, Any] = {k: [] for k in questions}
    for kind, pairs in questions.items():
        if pairs:
            tables[kind], verdicts[kind] = grid.question_table(kind, pairs, settings_)
    external = external_at(repo, exps)
    sites = None
    if not isinstance(external, str):
        sites = gridsites.grid_sites(external[0], arms, {e.name: preds[e.name] for e in exps}, external[1],
                                     questions[naming.CLAHE], settings_)
    context = {"phantom": base_exp.params.get("ingest.source") == "phantom", "settings": settings_,
               "eligible": [first.findings[k] for k in columns], "n_patients": len(set(first.patients.tolist())),
               "n_images": len(first.images), "skipped": skipped, "differing": _differing(exps), "base": base,
               "arms": grid.arms_table(arms, base, settings_, len(columns)), "questions": tables,
               "verdicts": verdicts, "per_class": grid.per_class_table(arms, first),
               "ranking": grid.ranking(arms, settings_, questions), "shared": _shared(base_exp),
               "methods": METHOD_NAMES, "sites": sites, "no_sites": external if isinstance(external, str) else "",
               "sites_arms": gridsites.arms_table(sites, settings_) if sites and sites.arms else None,
               "sites_clahe": gridsites.clahe_table(sites, settings_) if sites and sites.clahe else None}
    text = render(TEMPLATE, **context)
    summary_file = summary_file or out_file.with_suffix(".json")
    with atomic_file(out_file) as handle:
        handle.write(text)
    write_json(summary_file, {**grid.grid_summary(arms, base), "external": gridsites.summary(sites)})
    print(f"experiments: {len(arms)} arm(s) compared -> {out_file}, {summary_file}")

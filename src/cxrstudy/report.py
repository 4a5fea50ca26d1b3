"""The report stage: `reports/report.md` rendered by Jinja2 from the tracked metrics files alone.

Every number and every summary sentence comes from the metrics; nothing in the template is a result.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from cxrstudy.atomic import atomic_file
from cxrstudy.errors import InputError
from cxrstudy.labels import FINDINGS
from cxrstudy.params import Params

TEMPLATE = "report.md.j2"


@dataclass(frozen=True)
class SeedMetrics:
    seed: int
    loss: float
    auroc_mean: float
    f1_mean: float
    f1_test_tuned_mean: float
    f1_protocol: str
    auroc: dict[str, float]
    f1: dict[str, float]
    n_test: int


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def load_seed_metrics(path: Path) -> SeedMetrics:
    """Read one evaluate stage's metrics file; a missing file or key is an error naming it."""
    if not path.is_file():
        raise InputError(f"{path}: metrics file not found; run the evaluate stage for this seed")
    try:
        raw = json.loads(path.read_text())
        return SeedMetrics(
            seed=int(raw["seed"]),
            loss=_num(raw["loss"]),
            auroc_mean=_num(raw["auroc_mean"]),
            f1_mean=_num(raw["f1_mean"]),
            f1_test_tuned_mean=_num(raw["f1_test_tuned_mean"]),
            f1_protocol=str(raw["f1_protocol"]),
            auroc={n: _num(raw["auroc"][n]) for n in FINDINGS},
            f1={n: _num(raw["f1"][n]) for n in FINDINGS},
            n_test=int(raw["n_test"]),
        )
    except (KeyError, ValueError, TypeError) as err:
        raise InputError(f"{path}: malformed metrics file ({type(err).__name__}: {err})") from None


def fmt(value: float, digits: int = 4) -> str:
    """Fixed decimals; an undefined value (no positive in the test set) prints as n/a."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _spread(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if len(finite) < 2:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))
    return max(finite) - min(finite), sd


def best_seed_per_class(seeds: list[SeedMetrics]) -> list[dict[str, Any]]:
    """For each finding, the seed with the highest test AUROC (the lowest seed wins a tie)."""
    rows = []
    for name in FINDINGS:
        scored = [(s.auroc[name], s.seed) for s in seeds if not math.isnan(s.auroc[name])]
        if not scored:
            rows.append({"finding": name, "seed": None, "auroc": math.nan})
            continue
        best = max(scored, key=lambda t: (t[0], -t[1]))
        rows.append({"finding": name, "seed": best[1], "auroc": best[0]})
    return rows


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def summary_sentences(seeds: list[SeedMetrics], best: list[dict[str, Any]]) -> dict[str, Any]:
    """Sentences generated from the numbers."""
    top = max(seeds, key=lambda s: (s.auroc_mean, -s.seed))
    low = min(seeds, key=lambda s: (s.auroc_mean, s.seed))
    lowest_loss = min(seeds, key=lambda s: (s.loss, s.seed))
    auroc_range, auroc_sd = _spread([s.auroc_mean for s in seeds])
    out: dict[str, Any] = {"overall": [], "best": []}
    if len(seeds) == 1:
        out["overall"].append(f"One seed ({top.seed}) was run: mean AUROC {fmt(top.auroc_mean)}, "
                              f"test loss {fmt(top.loss)}.")
    else:
        out["overall"].append(
            f"Seed {top.seed} has the highest mean AUROC ({fmt(top.auroc_mean)}) and seed {low.seed} the lowest "
            f"({fmt(low.auroc_mean)}): a range of {fmt(auroc_range)} (sd {fmt(auroc_sd)}) across "
            f"{len(seeds)} seeds on one fixed test set.")
        same = "also" if lowest_loss.seed == top.seed else "while"
        out["overall"].append(
            f"The lowest test loss is seed {lowest_loss.seed}'s ({fmt(lowest_loss.loss)}), "
            f"{same} {'the seed with the highest AUROC' if same == 'also' else f'seed {top.seed} leads on AUROC'}.")
        f1s = [s.f1_mean for s in seeds]
        out["overall"].append(
            f"Mean F1 (validation-chosen thresholds) ranges from {fmt(min(f1s))} to {fmt(max(f1s))}.")
    per_seed: dict[int, list[str]] = {}
    for row in best:
        if row["seed"] is not None:
            per_seed.setdefault(row["seed"], []).append(row["finding"].replace("_", " "))
    for seed in sorted(per_seed, key=lambda s: (-len(per_seed[s]), s)):
        names = per_seed[seed]
        out["best"].append(f"Seed {seed} has the highest AUROC for {len(names)} finding"
                           f"{'s' if len(names) != 1 else ''}: {_join(names)}.")
    no_best = [s.seed for s in seeds if s.seed not in per_seed]
    if no_best:
        out["best"].append(f"Seed{'s' if len(no_best) > 1 else ''} {_join([str(s) for s in no_best])} "
                           f"{'are' if len(no_best) > 1 else 'is'} best for no finding.")
    return out


def render(params: Params, seeds: list[SeedMetrics], split_summary: dict[str, Any] | None = None) -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("cxrstudy", "templates"), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    best = best_seed_per_class(seeds)
    return env.get_template(TEMPLATE).render(
        params=params, seeds=seeds, findings=FINDINGS, best=best, summary=summary_sentences(seeds, best),
        split=split_summary,
    )


def run(params: Params, metrics_dir: Path, splits_dir: Path, out_file: Path) -> None:
    """Stage entry point: render the report for every seed in `params.seeds`."""
    seeds = [load_seed_metrics(metrics_dir / f"seed_{seed}.json") for seed in params.seeds]
    summary_path = splits_dir / "summary.json"
    split_summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    text = render(params, seeds, split_summary)
    with atomic_file(out_file) as handle:
        handle.write(text)
    print(f"report: {len(seeds)} seed(s) -> {out_file}")

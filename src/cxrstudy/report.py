"""The report stage: `reports/report.md` rendered by Jinja2 from the tracked metrics and saved test predictions.

Every number and every summary sentence comes from the metrics files (per seed), the test predictions (bootstrap
intervals, the ensemble, ROC curves), the training histories, and the published numbers in
`resources/references.yaml`; nothing in the template is a result. The same template renders a comparison of DVC
experiments from `dvc exp show --json` (`run_comparison`).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import yaml

from cxrstudy.atomic import atomic_file, check_writable, write_json
from cxrstudy.errors import InputError
from cxrstudy.labels import FINDINGS
from cxrstudy.metrics import nanmean, per_class_auroc, per_class_f1, per_class_thresholds
from cxrstudy.params import Params
from cxrstudy.stats import bootstrap_auroc, mean_sd, min_max

TEMPLATE = "report.md.j2"
CI_LEVEL = 0.95
MAX_CHARS = 65_536  # a GitHub comment's limit: the report is posted on pull requests
# The predictions hold evaluate's exact float32 probabilities and the metrics file its AUROCs to 6 decimals, so the
# AUROCs computed here from the predictions agree to that last decimal; a larger gap means stale or mismatched files.
AUROC_TOLERANCE = 1e-6
DEFAULT_CLAHE_SAMPLES = 3
SEED_FILE = re.compile(r"(?:^|/)seed_(\d+)\.json$")
SUMMARY_FILE = "metrics/report.json"


# --------------------------------------------------------------------------------------------------- metrics files


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
    f1_test_tuned: dict[str, float] = field(default_factory=dict)
    test_positives: dict[str, int] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def seed_metrics_from_dict(raw: Any, lenient: bool = False) -> SeedMetrics:
    """One evaluate stage's metrics; `lenient` (for `dvc exp show`, which drops nulls) reads a missing number as NaN."""
    if not isinstance(raw, Mapping):
        raise TypeError(f"expected a JSON object, got {type(raw).__name__}")

    def top(key: str) -> Any:
        return raw.get(key) if lenient else raw[key]

    def by_class(key: str, required: bool) -> dict[str, float]:
        values = raw.get(key) if lenient or not required else raw[key]
        if values is None:
            return dict.fromkeys(FINDINGS, math.nan) if required else {}
        return {n: _num(values.get(n) if lenient or not required else values[n]) for n in FINDINGS}

    positives = raw.get("test_positives") or {}
    return SeedMetrics(
        seed=int(raw["seed"]),
        loss=_num(top("loss")),
        auroc_mean=_num(top("auroc_mean")),
        f1_mean=_num(top("f1_mean")),
        f1_test_tuned_mean=_num(top("f1_test_tuned_mean")),
        f1_protocol=str(top("f1_protocol") or "unknown"),
        auroc=by_class("auroc", True),
        f1=by_class("f1", True),
        n_test=int(top("n_test") or 0),
        f1_test_tuned=by_class("f1_test_tuned", False),
        test_positives={n: int(positives[n]) for n in FINDINGS if n in positives},
        environment=dict(raw.get("environment") or {}),
    )


def load_seed_metrics(path: Path) -> SeedMetrics:
    """Read one evaluate stage's metrics file; a missing file or key is an error naming it."""
    if not path.is_file():
        raise InputError(f"{path}: metrics file not found; run the evaluate stage for this seed")
    try:
        return seed_metrics_from_dict(json.loads(path.read_text()))
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise InputError(f"{path}: malformed metrics file ({type(err).__name__}: {err})") from None


# ------------------------------------------------------------------------------------------------ test predictions


@dataclass(frozen=True)
class TestPredictions:
    """One model's test-set predictions, rows sorted by image name."""

    images: list[str]
    patients: np.ndarray
    labels: np.ndarray
    probs: np.ndarray


def read_predictions(path: Path) -> TestPredictions:
    """The evaluate stage's `predictions/seed_N.csv` (image, patient, label_<finding>..., prob_<finding>...).

    Read here with pandas rather than through `evaluate.load_predictions`, which would import torch into a stage that
    needs none; the columns checked are the ones `evaluate.save_predictions` writes.
    """
    if not path.is_file():
        raise InputError(f"{path}: predictions file not found; run the evaluate stage for this seed")
    label_cols = [f"label_{n}" for n in FINDINGS]
    prob_cols = [f"prob_{n}" for n in FINDINGS]
    try:
        frame = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as err:
        raise InputError(f"{path}: not a readable CSV ({err})") from None
    missing = [c for c in ["image", "patient", *label_cols, *prob_cols] if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: malformed predictions file, missing column(s) {', '.join(missing)}")
    if frame.empty:
        raise InputError(f"{path}: no test predictions")
    frame = frame.sort_values("image", kind="stable").reset_index(drop=True)
    labels = frame[label_cols].to_numpy(dtype=np.float64)
    probs = frame[prob_cols].to_numpy(dtype=np.float64)
    if not np.isin(labels, (0.0, 1.0)).all():
        raise InputError(f"{path}: label columns must hold 0 or 1")
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise InputError(f"{path}: probabilities must be finite numbers in [0, 1]")
    return TestPredictions(frame["image"].astype(str).tolist(), frame["patient"].to_numpy(), labels, probs)


def check_agreement(n_images: int, auroc: dict[str, float], metrics: SeedMetrics, pred_path: Path,
                    metrics_path: Path) -> None:
    """The predictions (`n_images`, their per-class `auroc`) must be the ones the metrics were computed from."""
    if metrics.n_test and metrics.n_test != n_images:
        raise InputError(f"{pred_path}: {n_images} test images, but {metrics_path} says n_test "
                         f"{metrics.n_test}; re-run the evaluate stage for seed {metrics.seed}")
    for name, value in auroc.items():
        stored = metrics.auroc[name]
        if math.isnan(value) != math.isnan(stored) or abs(value - stored) > AUROC_TOLERANCE:
            raise InputError(f"{pred_path} and {metrics_path} disagree on {name} AUROC ({fmt(value)} from the "
                             f"predictions, {fmt(stored)} in the metrics); re-run the evaluate stage for seed "
                             f"{metrics.seed}")


def make_ensemble(preds: Sequence[TestPredictions]) -> tuple[TestPredictions | None, str]:
    """The mean of the seeds' probabilities; None, with the reason, when there is nothing to average."""
    if len(preds) < 2:
        return None, "one seed: no ensemble"
    first = preds[0]
    for other in preds[1:]:
        if other.images != first.images or not np.array_equal(other.labels, first.labels):
            return None, "the seeds' test sets differ, so their predictions cannot be averaged"
    probs = np.mean([p.probs for p in preds], axis=0)
    return TestPredictions(first.images, first.patients, first.labels, probs), ""


# ------------------------------------------------------------------------------------------------ seed statistics


@dataclass(frozen=True)
class ModelStats:
    """Test AUROC of one model (a seed or the ensemble) with its patient-bootstrap spread."""

    name: str
    auroc: dict[str, float]
    auroc_mean: float
    ci: tuple[float, float]
    sampling_sd: float
    class_ci: dict[str, tuple[float, float]]
    class_sd: dict[str, float]
    f1_test_tuned_mean: float


def model_stats(name: str, pred: TestPredictions, resamples: int, seed: int, tuned_f1: bool = False) -> ModelStats:
    """Point AUROC (scikit-learn) and the patient bootstrap (`resamples` draws from `seed`) for one model; with
    `tuned_f1`, also its F1 at thresholds tuned on the test set (optimistic; a seed's is in its metrics file)."""
    auroc = dict(zip(FINDINGS, per_class_auroc(pred.labels, pred.probs), strict=True))
    # Findings undefined on the whole test set stay out of every resample's mean, as they are out of the point mean.
    defined = [n for n in FINDINGS if not math.isnan(auroc[n])]
    columns = [FINDINGS.index(n) for n in defined]
    boot = bootstrap_auroc(pred.labels[:, columns], pred.probs[:, columns], pred.patients, resamples, seed, CI_LEVEL)
    none = (math.nan, math.nan)
    tuned = per_class_f1(pred.labels, pred.probs, per_class_thresholds(pred.labels, pred.probs)) if tuned_f1 else []
    return ModelStats(
        name=name, auroc=auroc, auroc_mean=nanmean(list(auroc.values())),
        ci=boot.mean_interval() if resamples else none,
        sampling_sd=boot.mean_sd() if resamples else math.nan,
        class_ci={n: boot.class_interval(j) if resamples else none for j, n in enumerate(defined)},
        class_sd={n: boot.class_sd(j) if resamples else math.nan for j, n in enumerate(defined)},
        f1_test_tuned_mean=nanmean(tuned),
    )


@dataclass(frozen=True)
class SeedStudy:
    """What the predictions add to the metrics: bootstrap intervals per seed, the ensemble, the test set's size."""

    per_seed: list[ModelStats]
    ensemble: ModelStats | None
    ensemble_note: str
    resamples: int
    bootstrap_seed: int
    n_images: int
    n_patients: int

    def sampling_sd(self) -> float:
        """Test-sampling spread of one seed's mean AUROC: its bootstrap sd, averaged over seeds."""
        return mean_sd([m.sampling_sd for m in self.per_seed])[0]

    def class_sampling_sd(self, name: str) -> float:
        return mean_sd([m.class_sd.get(name, math.nan) for m in self.per_seed])[0]


def seed_study(preds: Sequence[TestPredictions], seeds: Sequence[SeedMetrics], resamples: int,
               bootstrap_seed: int) -> SeedStudy:
    per_seed = [model_stats(f"seed {s.seed}", p, resamples, bootstrap_seed) for s, p in zip(seeds, preds, strict=True)]
    ens_pred, note = make_ensemble(preds)
    ensemble = None
    if ens_pred is not None:
        ensemble = model_stats("ensemble", ens_pred, resamples, bootstrap_seed, tuned_f1=True)
    return SeedStudy(per_seed, ensemble, note, resamples, bootstrap_seed, len(preds[0].images),
                     len(set(preds[0].patients.tolist())))


# ------------------------------------------------------------------------------------------------ references


@dataclass(frozen=True)
class Protocol:
    key: str
    label: str
    short: str
    flag: bool  # official split / optimistic F1


@dataclass(frozen=True)
class PublishedMean:
    name: str
    model: str
    split: Protocol
    auroc_mean: float
    auroc_sd: float
    approximate: bool
    f1_mean: float
    f1_protocol: Protocol | None
    source: str


@dataclass(frozen=True)
class References:
    means: list[PublishedMean]
    chexnet: dict[str, float]
    chexnet_split: Protocol
    chexnet_source: str
    study: dict[int, SeedMetrics]
    study_split: Protocol
    study_f1: Protocol
    study_source: str


def references_path() -> Path:
    return Path(str(resources.files("cxrstudy") / "resources" / "references.yaml"))


def _protocols(raw: Any, key: str) -> dict[str, Protocol]:
    flag = "official" if key == "protocols" else "optimistic"
    return {k: Protocol(k, str(v["label"]), str(v["short"]), bool(v[flag])) for k, v in raw[key].items()}


def _findings(values: Any, where: str) -> dict[str, float]:
    if set(values) != set(FINDINGS):
        raise ValueError(f"{where} must list exactly the 14 findings; got {sorted(values)}")
    return {n: float(values[n]) for n in FINDINGS}


def load_references(path: Path | None = None) -> References:
    """Read and check `references.yaml`: every number has a source and a known split (and F1) protocol."""
    path = path or references_path()
    try:
        raw = yaml.safe_load(path.read_text())
        splits, f1s = _protocols(raw, "protocols"), _protocols(raw, "f1_protocols")
        means = [PublishedMean(str(m["name"]), str(m["model"]), splits[m["split"]], float(m["auroc_mean"]),
                               _num(m.get("auroc_sd")), bool(m.get("approximate", False)), _num(m.get("f1_mean")),
                               f1s[m["f1_protocol"]] if "f1_protocol" in m else None, str(m["source"]))
                 for m in raw["means"]]
        chex, study = raw["chexnet"], raw["seed_study"]
        seeds = {int(seed): SeedMetrics(int(seed), float(v["loss"]), float(v["auroc_mean"]), float(v["f1_mean"]),
                                        float(v["f1_mean"]), study["f1_protocol"],
                                        _findings(v["auroc"], f"seed_study.seeds.{seed}.auroc"), {}, 0)
                 for seed, v in study["seeds"].items()}
        return References(means, _findings(chex["auroc"], "chexnet.auroc"), splits[chex["split"]],
                          str(chex["source"]), seeds, splits[study["split"]], f1s[study["f1_protocol"]],
                          str(study["source"]))
    except FileNotFoundError:
        raise InputError(f"{path}: published references file not found") from None
    except (KeyError, ValueError, TypeError, AttributeError, yaml.YAMLError) as err:
        raise InputError(f"{path}: malformed references file ({type(err).__name__}: {err})") from None


# ------------------------------------------------------------------------------------------------ formatting


@dataclass(frozen=True)
class MeanSd:
    mean: float
    sd: float


@dataclass(frozen=True)
class Span:
    low: float
    high: float


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def fmt(value: float | None, digits: int = 4) -> str:
    """Fixed decimals; an undefined value (no positive in the test set) prints as n/a."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def signed(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.4f}"


def cell(value: Any) -> str:
    """One Markdown table cell: numbers to 4 decimals, mean ± sd, min–max, [CI]; no pipe can break the row."""
    if value is None:
        return "—"
    if isinstance(value, MeanSd):
        return fmt(value.mean) if math.isnan(value.sd) else f"{fmt(value.mean)} ± {fmt(value.sd)}"
    if isinstance(value, Span):
        return "n/a" if math.isnan(value.low) else f"{fmt(value.low)}–{fmt(value.high)}"
    if isinstance(value, Interval):
        return "n/a" if math.isnan(value.low) else f"[{fmt(value.low)}, {fmt(value.high)}]"
    if isinstance(value, float):
        return fmt(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


@dataclass(frozen=True)
class Table:
    """A Markdown table: a header, an alignment per column (`l`, `r`, `c`), rows of cells."""

    header: list[str]
    align: list[str]
    rows: list[list[Any]]

    def __post_init__(self) -> None:
        if len(self.align) != len(self.header) or any(len(r) != len(self.header) for r in self.rows):
            raise ValueError(f"table rows must have {len(self.header)} cells, like the header {self.header}")


def _rule(align: str) -> str:
    return {"l": ":---", "r": "---:", "c": ":---:"}[align]


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _pretty(name: str) -> str:
    return name.replace("_", " ")


# ------------------------------------------------------------------------------------------------ environment


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


# ------------------------------------------------------------------------------------------------ seed tables


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


def f1_label(protocol: str) -> str:
    """A short name for a threshold protocol, for column headers."""
    return "validation thresholds" if "validation" in protocol else protocol


def overall_table(seeds: list[SeedMetrics], study: SeedStudy | None) -> Table:
    """Per seed: loss, mean AUROC with its bootstrap CI, F1 under both protocols; then spread rows and the ensemble."""
    label = f1_label(seeds[0].f1_protocol)
    header = ["Seed", "Loss", "Avg AUROC", f"{CI_LEVEL:.0%} CI (patient bootstrap)", f"Avg F1 ({label})",
              "Avg F1 (test-tuned, optimistic)"]
    per_seed = study.per_seed if study else [None] * len(seeds)
    rows: list[list[Any]] = [
        [s.seed, s.loss, s.auroc_mean, Interval(*m.ci) if m else None, s.f1_mean, s.f1_test_tuned_mean]
        for s, m in zip(seeds, per_seed, strict=True)]
    if len(seeds) > 1:
        columns = ([s.loss for s in seeds], [s.auroc_mean for s in seeds], [s.f1_mean for s in seeds],
                   [s.f1_test_tuned_mean for s in seeds])
        loss, auroc, f1, tuned = (MeanSd(*mean_sd(c)) for c in columns)
        rows.append([f"mean ± sd ({len(seeds)} seeds)", loss, auroc, None, f1, tuned])
        loss_r, auroc_r, f1_r, tuned_r = (Span(*min_max(c)) for c in columns)
        rows.append(["min–max", loss_r, auroc_r, None, f1_r, tuned_r])
    if study and study.ensemble:
        ens = study.ensemble
        rows.append([f"ensemble (mean of {len(seeds)} seeds' probabilities)", None, ens.auroc_mean,
                     Interval(*ens.ci), None, ens.f1_test_tuned_mean])
    return Table(header, ["l", "r", "r", "c", "r", "r"], rows)


def per_class_table(seeds: list[SeedMetrics], study: SeedStudy | None) -> Table:
    """Per finding: AUROC per seed, mean ± sd and min–max over seeds, test-sampling sd, the ensemble with its CI."""
    header = ["Class", *[f"Seed {s.seed}" for s in seeds]]
    align = ["l", *["c"] * len(seeds)]
    if len(seeds) > 1:
        header += ["Mean ± sd", "Min–max"]
        align += ["c", "c"]
    if study:
        header.append("Test-sampling sd")
        align.append("c")
    if study and study.ensemble:
        header += ["Ensemble", f"Ensemble {CI_LEVEL:.0%} CI"]
        align += ["c", "c"]
    rows = []
    for name in FINDINGS:
        values = [s.auroc[name] for s in seeds]
        row: list[Any] = [name, *values]
        if len(seeds) > 1:
            row += [MeanSd(*mean_sd(values)), Span(*min_max(values))]
        if study:
            row.append(study.class_sampling_sd(name))
        if study and study.ensemble:
            ens = study.ensemble
            row += [ens.auroc[name], Interval(*ens.class_ci.get(name, (math.nan, math.nan)))]
        rows.append(row)
    return Table(header, align, rows)


def best_table(best: list[dict[str, Any]]) -> Table:
    rows = [[r["finding"], r["seed"] if r["seed"] is not None else "n/a", r["auroc"]] for r in best]
    return Table(["Class", "Best Seed", "Highest AUROC"], ["l", "c", "c"], rows)


def f1_table(seeds: list[SeedMetrics]) -> Table:
    """Per finding: test positives, F1 at validation thresholds and test-tuned F1 (optimistic), mean ± sd over seeds."""
    label = f1_label(seeds[0].f1_protocol)
    rows = []
    for name in FINDINGS:
        positives = seeds[0].test_positives.get(name)
        tuned = [s.f1_test_tuned.get(name, math.nan) for s in seeds]
        rows.append([name, positives if positives is not None else None, MeanSd(*mean_sd([s.f1[name] for s in seeds])),
                     MeanSd(*mean_sd(tuned))])
    return Table(["Class", "Test positives", f"F1 ({label})", "F1 (test-tuned, optimistic)"],
                 ["l", "r", "c", "c"], rows)


# ------------------------------------------------------------------------------------------------ sentences


def summary_sentences(seeds: list[SeedMetrics], best: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The original report's sentences, generated from the numbers."""
    top = max(seeds, key=lambda s: (s.auroc_mean, -s.seed))
    low = min(seeds, key=lambda s: (s.auroc_mean, s.seed))
    lowest_loss = min(seeds, key=lambda s: (s.loss, s.seed))
    auroc_sd = mean_sd([s.auroc_mean for s in seeds])[1]
    auroc_lo, auroc_hi = min_max([s.auroc_mean for s in seeds])
    out: dict[str, list[str]] = {"overall": [], "best": []}
    label = f1_label(seeds[0].f1_protocol)
    if len(seeds) == 1:
        out["overall"].append(f"One seed ({top.seed}) was run: mean AUROC {fmt(top.auroc_mean)}, "
                              f"test loss {fmt(top.loss)}.")
    else:
        out["overall"].append(
            f"Seed {top.seed} has the highest mean AUROC ({fmt(top.auroc_mean)}) and seed {low.seed} the lowest "
            f"({fmt(low.auroc_mean)}): a range of {fmt(auroc_hi - auroc_lo)} (sd {fmt(auroc_sd)}) across "
            f"{len(seeds)} seeds on one fixed test set.")
        same = lowest_loss.seed == top.seed
        out["overall"].append(
            f"The lowest test loss is seed {lowest_loss.seed}'s ({fmt(lowest_loss.loss)}), "
            + ("also the seed with the highest AUROC." if same else f"while seed {top.seed} leads on AUROC."))
        f1s = [s.f1_mean for s in seeds]
        out["overall"].append(f"Mean F1 ({label}) ranges from {fmt(min(f1s))} to {fmt(max(f1s))}.")
    per_seed: dict[int, list[str]] = {}
    for row in best:
        if row["seed"] is not None:
            per_seed.setdefault(row["seed"], []).append(_pretty(row["finding"]))
    for seed in sorted(per_seed, key=lambda s: (-len(per_seed[s]), s)):
        names = per_seed[seed]
        out["best"].append(f"Seed {seed} has the highest AUROC for {len(names)} finding"
                           f"{'s' if len(names) != 1 else ''}: {_join(names)}.")
    no_best = [s.seed for s in seeds if s.seed not in per_seed]
    if no_best:
        out["best"].append(f"Seed{'s' if len(no_best) > 1 else ''} {_join([str(s) for s in no_best])} "
                           f"{'are' if len(no_best) > 1 else 'is'} best for no finding.")
    return out


def spread_sentences(seeds: list[SeedMetrics], study: SeedStudy | None) -> dict[str, list[str]]:
    """Is the spread between seeds larger than the spread that re-drawing the test patients produces?"""
    out: dict[str, list[str]] = {"overall": [], "per_class": []}
    if study is None:
        return out
    sampling = study.sampling_sd()
    seed_sd = mean_sd([s.auroc_mean for s in seeds])[1]
    what = (f"the test-sampling spread (sd {fmt(sampling)}: the patient-bootstrap sd of one seed's mean AUROC over "
            f"{study.resamples} resamples of the {study.n_patients} test patients, averaged over seeds)")
    if study.resamples == 0:
        out["overall"].append(f"The bootstrap is off (report.bootstrap: 0), so the between-seed sd ({fmt(seed_sd)}) "
                              "is not compared with a test-sampling spread.")
        return out
    if len(seeds) == 1:
        out["overall"].append(f"With one seed there is no between-seed spread to compare with {what}.")
        return out
    if seed_sd > sampling:
        verdict = f"larger than {what}: the seeds differ by more than re-drawing the test patients explains."
    else:
        verdict = (f"no larger than {what}: on this test set the differences between seeds are within test-sampling "
                   "noise, so ranking the seeds (as the best-seed table does) is no evidence that one is better.")
    out["overall"].append(f"The spread between seeds (sd {fmt(seed_sd)} of mean AUROC) is {verdict}")
    wider = [n for n in FINDINGS if mean_sd([s.auroc[n] for s in seeds])[1] > study.class_sampling_sd(n)]
    defined = [n for n in FINDINGS if not math.isnan(study.class_sampling_sd(n))]
    listed = f" ({_join([_pretty(n) for n in wider])})" if 0 < len(wider) <= 4 else ""
    out["per_class"].append(f"Per finding, the sd between seeds exceeds the test-sampling sd (the bootstrap sd of "
                            f"that finding's AUROC, averaged over seeds) for {len(wider)} of {len(defined)} "
                            f"findings{listed}.")
    return out


def headline(params: Params, seeds: list[SeedMetrics], study: SeedStudy | None) -> str:
    """The report's first summary line: mean AUROC over seeds, its spread, and how wide one seed's interval is."""
    mean, sd = mean_sd([s.auroc_mean for s in seeds])
    low, high = min_max([s.auroc_mean for s in seeds])
    text = f"Mean AUROC over {len(seeds)} seed{'s' if len(seeds) > 1 else ''}: {cell(MeanSd(mean, sd))}"
    text += f" (min–max {cell(Span(low, high))})" if len(seeds) > 1 else ""
    text += f" on {our_split(params)}"
    if study is not None and study.resamples:
        width = mean_sd([m.ci[1] - m.ci[0] for m in study.per_seed])[0]
        text += f"; one seed's {CI_LEVEL:.0%} bootstrap interval is {fmt(width)} wide on average"
    return text + "."


def ensemble_sentences(seeds: list[SeedMetrics], study: SeedStudy | None) -> list[str]:
    if study is None:
        return []
    if study.ensemble is None:
        return [f"No ensemble row: {study.ensemble_note}."] if len(seeds) > 1 else []
    ens = study.ensemble
    best = max(seeds, key=lambda s: (s.auroc_mean, -s.seed))
    mean = mean_sd([s.auroc_mean for s in seeds])[0]
    ci = "" if math.isnan(ens.ci[0]) else f" ({CI_LEVEL:.0%} CI {cell(Interval(*ens.ci))})"
    return [f"The ensemble (mean of the {len(seeds)} seeds' predicted probabilities) reaches mean AUROC "
            f"{fmt(ens.auroc_mean)}{ci}, {signed(ens.auroc_mean - mean)} against the mean of the seeds and "
            f"{signed(ens.auroc_mean - best.auroc_mean)} against the best seed ({best.seed})."]


# ------------------------------------------------------------------------------------------------ references


def our_split(params: Params, short: bool = False) -> str:
    """Our test split's protocol, in the words the reference columns use (`short`: for a column header)."""
    phantom = params.ingest.source == "phantom"
    if params.split.method == "official":
        if short:
            return "phantom, official-style" if phantom else "official"
        return "the phantom's official-style test list" if phantom else "official NIH test list"
    fraction = f"{params.split.test_fraction * 100:g} %"
    if short:
        return f"{'phantom, ' if phantom else ''}random {fraction}"
    return f"{'the phantom, ' if phantom else ''}random {fraction} patient test split (split seed {params.split.seed})"


def published(value: float) -> str:
    """A published number at its published precision (3 or 4 decimals)."""
    return fmt(value, 3 if round(value, 3) == value else 4)


def references_tables(params: Params, seeds: list[SeedMetrics], study: SeedStudy | None,
                      refs: References) -> dict[str, Table]:
    """Published mean AUROCs, the seed study per seed, and CheXNet and the seed study per class, beside ours.

    Headers carry each column's split protocol (short form; `references_legend` spells them out).
    """
    split, short = our_split(params), f"[{our_split(params, short=True)}]"
    mean, sd = mean_sd([s.auroc_mean for s in seeds])
    label = f1_label(seeds[0].f1_protocol)
    means: list[list[Any]] = []
    for m in refs.means:
        value = ("~" if m.approximate else "") + published(m.auroc_mean)
        value += "" if math.isnan(m.auroc_sd) else f" ± {published(m.auroc_sd)}"
        f1 = "—" if m.f1_protocol is None else f"{published(m.f1_mean)} ({m.f1_protocol.label})"
        means.append([m.name, m.model, m.split.label, value, f1])
    f1_ours = MeanSd(*mean_sd([s.f1_mean for s in seeds]))
    means.append([f"this run (mean of {len(seeds)} seed{'s' if len(seeds) > 1 else ''})", "DenseNet-121", split,
                  MeanSd(mean, sd), f"{cell(f1_ours)} ({label})"])
    if study and study.ensemble:
        means.append(["this run (ensemble)", "DenseNet-121", split, study.ensemble.auroc_mean, "—"])
    theirs_split = f"[{refs.study_split.short}]"
    per_seed = []
    ours = {s.seed: s for s in seeds}
    for seed in sorted(set(ours) | set(refs.study)):
        mine, theirs = ours.get(seed), refs.study.get(seed)
        per_seed.append([seed, mine.auroc_mean if mine else None, theirs.auroc_mean if theirs else None,
                         mine.f1_test_tuned_mean if mine else None, theirs.f1_mean if theirs else None])
    class_header = ["Class", f"This run, mean of seeds {short}"]
    if study and study.ensemble:
        class_header.append(f"This run, ensemble {short}")
    class_header += [f"CheXNet [{refs.chexnet_split.short}]",
                     *[f"Seed study {seed} {theirs_split}" for seed in sorted(refs.study)]]
    per_class = []
    for name in FINDINGS:
        row: list[Any] = [name, MeanSd(*mean_sd([s.auroc[name] for s in seeds]))]
        if study and study.ensemble:
            row.append(study.ensemble.auroc[name])
        row += [refs.chexnet[name], *[refs.study[seed].auroc[name] for seed in sorted(refs.study)]]
        per_class.append(row)
    return {
        "means": Table(["Result", "Model", "Test split", "Mean AUROC", "Mean F1 (threshold protocol)"],
                       ["l", "l", "l", "r", "l"], means),
        "per_seed": Table(["Seed", f"This run: Avg AUROC {short}", f"Seed study: Avg AUROC {theirs_split}",
                           "This run: Avg F1 (test-tuned, optimistic)", f"Seed study: Avg F1 ({refs.study_f1.short})"],
                          ["l", "r", "r", "r", "r"], per_seed),
        "per_class": Table(class_header, ["l", *["c"] * (len(class_header) - 1)], per_class),
    }


def references_legend(params: Params, refs: References) -> str:
    """What the bracketed split protocols in the column headers mean."""
    pairs = [(our_split(params, short=True), our_split(params)), (refs.chexnet_split.short, refs.chexnet_split.label),
             (refs.study_split.short, refs.study_split.label + " (four seeds, four different test sets)")]
    return "Test splits in the headers: " + "; ".join(f"[{short}] {long}" for short, long in pairs) + "."


def references_sentences(params: Params, seeds: list[SeedMetrics], refs: References) -> list[str]:
    mean = mean_sd([s.auroc_mean for s in seeds])[0]
    chexnet = next((m for m in refs.means if m.name == "CheXNet"), None)
    study = mean_sd([s.auroc_mean for s in refs.study.values()])[0]
    out = []
    # A delta against published numbers means something only on real radiographs.
    if chexnet is not None and params.ingest.source != "phantom":
        out.append(f"Our mean AUROC over seeds, {fmt(mean)} ({our_split(params)}), is "
                   f"{signed(mean - chexnet.auroc_mean)} against CheXNet's {published(chexnet.auroc_mean)} "
                   f"({chexnet.split.label}) and {signed(mean - study)} against the seed study's {fmt(study)} "
                   f"({refs.study_split.label}).")
    official = [m for m in refs.means if m.split.flag]
    random = [m for m in refs.means if not m.split.flag]
    if official and random:
        best = max(official, key=lambda m: m.auroc_mean)
        lowest = min(random, key=lambda m: m.auroc_mean)
        below = (f", below the lowest random-split result ({published(lowest.auroc_mean)}, {lowest.name})"
                 if best.auroc_mean < lowest.auroc_mean else "")
        out.append(f"Results on different splits are not like for like: the best published official-test-list "
                   f"result is {'~' if best.approximate else ''}{published(best.auroc_mean)} ({best.name}){below}. "
                   f"Compare a column with ours only where the split protocols match.")
    if params.ingest.source == "phantom":
        out.append("This run used the embedded phantom (real NIH label rows, synthetic images): the published columns "
                   "are context for the pipeline, not a target for these numbers.")
    return out


def f1_sentences(seeds: list[SeedMetrics], refs: References) -> list[str]:
    label = f1_label(seeds[0].f1_protocol)
    ours = mean_sd([s.f1_mean for s in seeds])[0]
    tuned = mean_sd([s.f1_test_tuned_mean for s in seeds])[0]
    lo, hi = min_max([s.f1_mean for s in refs.study.values()])
    return [f"Every F1 here names its threshold protocol. With {label}, mean F1 is {fmt(ours)}; with thresholds "
            f"tuned on the test set itself (the original study's protocol, optimistic) it is {fmt(tuned)} "
            f"({signed(tuned - ours)}), against the seed study's {fmt(lo)}–{fmt(hi)}."]


# ------------------------------------------------------------------------------------------------ experiments


@dataclass(frozen=True)
class Experiment:
    """One row of `dvc exp show --json`: its name, params.yaml values (flattened) and per-seed metrics."""

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
        settings = []
        if "train.loss.gamma" in self.params:
            settings.append(f"gamma {self.params['train.loss.gamma']}")
        if "train.loss.alpha" in self.params:
            alpha = self.params["train.loss.alpha"]
            settings.append(f"alpha {'off' if alpha == -1 else alpha}")
        return f"focal ({', '.join(settings)})" if settings else "focal"

    @property
    def clahe(self) -> str:
        if "preprocess.clahe" not in self.params:
            return "?"
        if not self.params["preprocess.clahe"]:
            return "off"
        clip = self.params.get("preprocess.clip_limit")
        return "on" if clip is None else f"on (clip {clip})"

    def auroc(self) -> MeanSd:
        return MeanSd(*mean_sd([s.auroc_mean for s in self.seeds]))


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
    return Experiment(str(entry.get("name") or rev[:7]), rev[:7], baseline, params, seeds, summary)


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
            why = state or ("failed" if entry.get("error") else "no seed metrics")
            skipped.append(f"{exp.name} ({why})")
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


def load_exp_show(path: Path) -> tuple[list[Experiment], list[str]]:
    """Read `dvc exp show --json` output from `path` ("-": standard input)."""
    stdin = str(path) == "-"
    if not stdin and not path.is_file():
        raise InputError(f"{path}: not found; write it with `dvc exp show --json > {path}`")
    try:
        return parse_exp_show(json.loads(sys.stdin.read() if stdin else path.read_text()))
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise InputError(f"{path}: not `dvc exp show --json` output ({type(err).__name__}: {err})") from None


def comparison_tables(experiments: list[Experiment]) -> dict[str, Table]:
    base = next((e for e in experiments if e.baseline), experiments[0])
    rows = []
    for e in experiments:
        values = [s.auroc_mean for s in e.seeds]
        ensemble = e.summary.get("ensemble_auroc.value")
        rows.append([f"{e.name}{' (baseline)' if e is base else ''}", e.rev, e.loss, e.clahe,
                     ", ".join(str(s.seed) for s in e.seeds), e.auroc(), Span(*min_max(values)),
                     _num(ensemble) if ensemble is not None else None,
                     MeanSd(*mean_sd([s.f1_mean for s in e.seeds])), signed(e.auroc().mean - base.auroc().mean)])
    header = ["Experiment", "Rev", "Loss", "CLAHE", "Seeds", "Avg AUROC (mean ± sd over seeds)", "Min–max",
              "Ensemble AUROC", "Avg F1 (validation thresholds)", "Δ AUROC vs baseline"]
    per_class = [[n, *[MeanSd(mean_sd([s.auroc[n] for s in e.seeds])[0], math.nan) for e in experiments]]
                 for n in FINDINGS]
    return {"overall": Table(header, ["l", "l", "l", "l", "l", "r", "c", "r", "r", "r"], rows),
            "per_class": Table(["Class", *[e.name for e in experiments]], ["l", *["c"] * len(experiments)],
                               per_class)}


def comparison_sentences(experiments: list[Experiment], skipped: list[str]) -> list[str]:
    """Best and worst cell against the seed spread, the CLAHE effect per loss, and what could not be compared."""
    ranked = sorted(experiments, key=lambda e: (-e.auroc().mean, e.name))
    top, low = ranked[0], ranked[-1]
    out = []
    if len(experiments) > 1:
        gap = top.auroc().mean - low.auroc().mean
        sds = [e.auroc().sd for e in experiments if not math.isnan(e.auroc().sd)]
        spread = (f"; the largest between-seed sd within one experiment is {fmt(max(sds))}, so the gap is "
                  f"{'larger' if gap > max(sds) else 'no larger'} than that") if sds else ""
        out.append(f"Highest mean AUROC over seeds: {top.name} ({top.loss}, CLAHE {top.clahe}) at {cell(top.auroc())}; "
                   f"lowest: {low.name} ({low.loss}, CLAHE {low.clahe}) at {cell(low.auroc())}. The gap is "
                   f"{fmt(gap)}{spread}.")
    sampling = [_num(e.summary["test_sampling_sd"]) for e in experiments if "test_sampling_sd" in e.summary]
    if sampling:
        out.append(f"Re-drawing the test patients moves one seed's mean AUROC by sd {fmt(float(np.nanmean(sampling)))} "
                   "(patient bootstrap, averaged over experiments): a difference between cells below about twice that "
                   "is within test-sampling noise.")
    effects = []
    for loss in sorted({e.params.get("train.loss.name") for e in experiments}, key=str):
        on = [e for e in experiments if e.params.get("train.loss.name") == loss and e.params.get("preprocess.clahe")]
        off = [e for e in experiments
               if e.params.get("train.loss.name") == loss and e.params.get("preprocess.clahe") is False]
        if on and off:
            effects.append(f"{signed(on[0].auroc().mean - off[0].auroc().mean)} with {loss} loss")
    if effects:
        out.append(f"CLAHE on minus off, mean AUROC over seeds: {'; '.join(effects)}.")
    differing = sorted({k for e in experiments for k, v in e.params.items()
                        if (k == "seeds" or k.startswith(("split.", "ingest.")))
                        and any(o.params.get(k) != v for o in experiments)})
    if differing:
        verb = "differs" if len(differing) == 1 else "differ"
        out.append(f"Not like for like: {_join(differing)} {verb} between experiments, so their test sets or seeds "
                   "differ too.")
    if skipped:
        out.append(f"Not compared (no metrics yet): {_join(skipped)}.")
    return out


# ------------------------------------------------------------------------------------------------ rendering


@dataclass(frozen=True)
class Figures:
    """Links (relative to the report) to the PNGs written under reports/figures/; None for one not drawn."""

    roc: str | None = None
    auroc: str | None = None
    clahe: str | None = None
    training: str | None = None


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("cxrstudy", "templates"), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["cell"] = cell
    env.filters["rule"] = _rule
    return env


def render(params: Params, seeds: list[SeedMetrics], split_summary: dict[str, Any] | None = None,
           study: SeedStudy | None = None, refs: References | None = None, figures: Figures | None = None,
           comparison: tuple[list[Experiment], list[str]] | None = None) -> str:
    """The report's Markdown: the seed study when `seeds` is non-empty, a comparison of experiments when given."""
    context: dict[str, Any] = {"params": params, "seeds": seeds, "split": split_summary, "study": study,
                               "figures": figures or Figures(), "comparison": None, "ci_level": f"{CI_LEVEL:.0%}"}
    if seeds:
        refs = refs or load_references()
        best = best_seed_per_class(seeds)
        context.update(
            findings=FINDINGS, best=best, summary=summary_sentences(seeds, best),
            headline=headline(params, seeds, study),
            overall=overall_table(seeds, study), per_class=per_class_table(seeds, study), best_table=best_table(best),
            f1=f1_table(seeds), f1_text=f1_sentences(seeds, refs), spread=spread_sentences(seeds, study),
            ensemble_text=ensemble_sentences(seeds, study), references=references_tables(params, seeds, study, refs),
            references_text=references_sentences(params, seeds, refs), f1_protocol=seeds[0].f1_protocol,
            references_legend=references_legend(params, refs), environment=environment_table(seeds))
    if comparison is not None:
        experiments, skipped = comparison
        context["comparison"] = {
            "tables": comparison_tables(experiments) if experiments else None,
            "text": comparison_sentences(experiments, skipped) if experiments else
            [f"No experiment has metrics yet{': ' + _join(skipped) if skipped else ''}."],
        }
    text = _environment().get_template(TEMPLATE).render(**context)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


def summary_metrics(seeds: list[SeedMetrics], study: SeedStudy | None) -> dict[str, Any]:
    """`metrics/report.json`: the report's headline numbers, so `dvc exp show` / `dvc metrics diff` list them."""
    def clean(value: float) -> float | None:
        return None if math.isnan(value) else round(float(value), 6)

    auroc = [s.auroc_mean for s in seeds]
    out: dict[str, Any] = {
        "seeds": len(seeds),
        "seed_auroc": {"mean": clean(mean_sd(auroc)[0]), "sd": clean(mean_sd(auroc)[1]),
                       "min": clean(min_max(auroc)[0]), "max": clean(min_max(auroc)[1])},
        "seed_f1": {"mean": clean(mean_sd([s.f1_mean for s in seeds])[0]),
                    "sd": clean(mean_sd([s.f1_mean for s in seeds])[1])},
    }
    if study is not None:
        out["test_sampling_sd"] = clean(study.sampling_sd())
        if study.ensemble is not None:
            ens = study.ensemble
            out["ensemble_auroc"] = {"value": clean(ens.auroc_mean), "ci_low": clean(ens.ci[0]),
                                     "ci_high": clean(ens.ci[1])}
    return out


@dataclass(frozen=True)
class FigurePaths:
    figures: Path
    plots: Path | None
    report_dir: Path
    history: Path | None
    raw: Path | None
    processed: Path | None


def read_history(path: Path) -> pd.DataFrame:
    """The train stage's per-epoch history CSV (epoch, train_loss, val_loss, val_auroc, lr)."""
    if not path.is_file():
        raise InputError(f"{path}: training history not found; run the train stage for this seed")
    frame = pd.read_csv(path)
    missing = [c for c in ("epoch", "train_loss", "val_loss", "val_auroc") if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: malformed training history, missing column(s) {', '.join(missing)}")
    return frame


def draw_figures(params: Params, seeds: list[SeedMetrics], preds: list[TestPredictions] | None,
                 study: SeedStudy | None, refs: References, paths: FigurePaths) -> Figures:
    """Write the PNGs (and, with `paths.plots`, the DVC plots data they are drawn from); return their links."""
    from cxrstudy import figures as fg

    def emit(png: str, csv: str | None, table: pd.DataFrame | None, float_format: str = "%.6g") -> str:
        if csv is not None and table is not None and paths.plots is not None:
            fg.write_csv(paths.plots / csv, table, float_format)
        return relative_link(paths.figures / png, paths.report_dir)

    paths.figures.mkdir(parents=True, exist_ok=True)
    names = {s.seed: fg.model_name(s.seed) for s in seeds}
    mean_auroc = {n: mean_sd([s.auroc[n] for s in seeds])[0] for n in FINDINGS}
    links: dict[str, str] = {}
    aurocs: dict[str, dict[str, float]] = {names[s.seed]: s.auroc for s in seeds}
    if study is not None and study.ensemble is not None:
        aurocs[fg.ENSEMBLE] = study.ensemble.auroc
    dots = fg.auroc_table(aurocs)
    chexnet = f"CheXNet [{refs.chexnet_split.short}]"
    study_mean = {n: mean_sd([s.auroc[n] for s in refs.study.values()])[0] for n in FINDINGS}
    study_label = f"seed study, mean of seeds [{refs.study_split.short}]"
    fg.plot_auroc_dots(dots, FINDINGS, [fg.Reference(chexnet, refs.chexnet, "D"),
                                        fg.Reference(study_label, study_mean, "s")], paths.figures / fg.AUROC_PNG)
    links["auroc"] = emit(fg.AUROC_PNG, fg.AUROC_CSV,
                          pd.concat([dots, fg.auroc_table({chexnet: refs.chexnet, study_label: study_mean})]))
    if preds is not None:
        curves = {names[s.seed]: (p.labels, p.probs) for s, p in zip(seeds, preds, strict=True)}
        ensemble, _ = make_ensemble(preds)
        if ensemble is not None:
            curves[fg.ENSEMBLE] = (ensemble.labels, ensemble.probs)
        roc = fg.roc_table(curves, FINDINGS)
        fg.plot_roc(roc, FINDINGS, mean_auroc, paths.figures / fg.ROC_PNG)
        links["roc"] = emit(fg.ROC_PNG, fg.ROC_CSV, roc, "%.4g")  # 4 digits draw a curve; the file stays small
    if paths.history is not None:
        history = fg.history_table({s.seed: read_history(paths.history / f"seed_{s.seed}.csv") for s in seeds})
        fg.plot_training_curves(history, paths.figures / fg.TRAIN_PNG)
        links["training"] = emit(fg.TRAIN_PNG, fg.TRAIN_CSV, history)
    if paths.raw is not None and paths.processed is not None:
        candidates = preds[0].images if preds else None
        samples, before, after = clahe_samples(params, paths.raw, paths.processed, candidates)
        fg.plot_clahe(samples, before, after, paths.figures / fg.CLAHE_PNG)
        links["clahe"] = emit(fg.CLAHE_PNG, None, None)
    return Figures(**links)


def clahe_samples(params: Params, raw_dir: Path, processed_dir: Path,
                  candidates: list[str] | None) -> tuple[list[Any], str, str]:
    """A few images (evenly spaced through the sorted test images) before and after preprocessing, same size."""
    from cxrstudy.figures import ClaheSample
    from cxrstudy.imageio import ImageError, read_gray
    from cxrstudy.preprocess import load_processed, process_image

    images, names = load_processed(processed_dir)
    row_of = {n: i for i, n in enumerate(names)}
    pool = sorted(n for n in (candidates or names) if n in row_of)
    if not pool:
        raise InputError(f"{processed_dir}: none of the test images is among the processed images")
    count = min(_clahe_samples(params), len(pool))
    picks = [pool[int(i)] for i in np.linspace(0, len(pool) - 1, count).round()]
    cfg = params.preprocess
    plain = cfg.model_copy(update={"clahe": False})
    samples = []
    for name in picks:
        try:
            before = process_image(read_gray(raw_dir / "images" / name), plain)
        except ImageError as err:
            raise InputError(f"CLAHE figure: {err}") from None
        samples.append(ClaheSample(name, before, np.asarray(images[row_of[name]])))
    size = cfg.image_size
    after = (f"CLAHE (clip {cfg.clip_limit}, {cfg.tile_grid}×{cfg.tile_grid} tiles), {size} px" if cfg.clahe
             else f"processed (CLAHE off), {size} px")
    return samples, f"raw, resized to {size} px", after


def _clahe_samples(params: Params) -> int:
    # `report.clahe_samples` once params.py has it; until then the default.
    return int(getattr(params.report, "clahe_samples", DEFAULT_CLAHE_SAMPLES))


def run(params: Params, metrics_dir: Path, splits_dir: Path, out_file: Path, *,
        predictions_dir: Path | None = Path("predictions"), history_dir: Path | None = Path("plots/train"),
        raw_dir: Path | None = Path("data/raw"), processed_dir: Path | None = Path("data/processed"),
        figures_dir: Path | None = Path("reports/figures"), plots_dir: Path | None = Path("plots/report"),
        summary_file: Path | None = Path(SUMMARY_FILE)) -> None:
    """Stage entry point: render the report for every seed in `params.seeds`.

    A None input folder leaves out what needs it: predictions (bootstrap, ensemble, ROC), histories (training
    curves), raw/processed images (the CLAHE figure); a None output folder writes nothing there.
    """
    # The figure and plot folders are written file by file: a file in each stands for them.
    check_writable(*(p for p in (out_file, summary_file, figures_dir and figures_dir / "figure.png",
                                 plots_dir and plots_dir / "plot.csv") if p is not None))
    seeds = [load_seed_metrics(metrics_dir / f"seed_{seed}.json") for seed in params.seeds]
    summary_path = splits_dir / "summary.json"
    split_summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    study, preds = None, None
    if predictions_dir is not None:
        preds = [read_predictions(predictions_dir / f"seed_{s.seed}.csv") for s in seeds]
        study = seed_study(preds, seeds, params.report.bootstrap, params.report.bootstrap_seed)
        for s, p, m in zip(seeds, preds, study.per_seed, strict=True):
            check_agreement(len(p.images), m.auroc, s, predictions_dir / f"seed_{s.seed}.csv",
                            metrics_dir / f"seed_{s.seed}.json")
    refs = load_references()
    figures = None
    if figures_dir is not None:
        figures = draw_figures(params, seeds, preds, study, refs, FigurePaths(
            figures_dir, plots_dir, out_file.parent, history_dir, raw_dir, processed_dir))
    text = render(params, seeds, split_summary, study, refs, figures)
    if len(text) >= MAX_CHARS:
        print(f"report: warning: {len(text)} characters, over GitHub's comment limit of {MAX_CHARS}", file=sys.stderr)
    with atomic_file(out_file) as handle:
        handle.write(text)
    if summary_file is not None:
        from cxrstudy.numerics import environment

        write_json(summary_file, {**summary_metrics(seeds, study), "environment": environment(params.numerics)})
    print(f"report: {len(seeds)} seed(s) -> {out_file}")


def run_comparison(params: Params, exp_json: Path, out_file: Path) -> None:
    """`report --compare`: render a comparison of the experiments in `dvc exp show --json` output (a file, or "-"
    for standard input) to `out_file`."""
    experiments, skipped = load_exp_show(exp_json)
    text = render(params, [], comparison=(experiments, skipped))
    with atomic_file(out_file) as handle:
        handle.write(text)
    print(f"report: {len(experiments)} experiment(s) compared -> {out_file}")


def relative_link(target: Path, report_dir: Path) -> str:
    """A Markdown link from the report's folder to `target`, with forward slashes."""
    return Path(os.path.relpath(target, report_dir)).as_posix()

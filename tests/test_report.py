"""The report stage: numbers from the metrics files, uncertainty from the predictions, published references beside
ours, deterministic GitHub Markdown under the comment limit, and the comparison of DVC experiments."""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cxrstudy import report
from cxrstudy.errors import InputError
from cxrstudy.evaluate import compute_metrics, save_predictions
from cxrstudy.labels import FINDINGS
from cxrstudy.params import Params
from tests.conftest import tiny_params

STUDY_SEEDS = [12, 22, 32, 42]


# ------------------------------------------------------------------------------------------------ synthetic study


@dataclass
class Study:
    """Metrics, predictions and histories of a synthetic seed study, in the pipeline's layout under `root`."""

    root: Path
    params: Params

    @property
    def metrics(self) -> Path:
        return self.root / "metrics/eval"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def history(self) -> Path:
        return self.root / "plots/train"

    def metrics_of(self, seed: int) -> dict[str, Any]:
        return json.loads((self.metrics / f"seed_{seed}.json").read_text())

    def run(self, out: Path | None = None, **paths: Any) -> str:
        out = out or self.root / "reports/report.md"
        kwargs: dict[str, Any] = {"predictions_dir": self.predictions, "history_dir": None, "raw_dir": None,
                                  "processed_dir": None, "figures_dir": None, "plots_dir": None,
                                  "summary_file": self.root / "metrics/report.json"}
        kwargs.update(paths)
        report.run(self.params, self.metrics, self.root / "data/splits", out, **kwargs)
        return out.read_text()


def _labels(rng: np.random.Generator, n: int, empty: tuple[str, ...]) -> np.ndarray:
    prevalence = rng.uniform(0.04, 0.2, len(FINDINGS))
    labels = (rng.random((n, len(FINDINGS))) < prevalence).astype(np.float32)
    for k, name in enumerate(FINDINGS):
        if name in empty:
            labels[:, k] = 0
        elif labels[:, k].sum() == 0:
            labels[0, k] = 1
    return labels


def _probs(rng: np.random.Generator, labels: np.ndarray, strength: np.ndarray, shared: np.ndarray) -> np.ndarray:
    """Image difficulty shared by all seeds plus a little seed noise, as with real seeds."""
    logits = strength * (2 * labels - 1) + shared + rng.normal(0, 0.35, labels.shape) - 1.5
    return 1 / (1 + np.exp(-logits))


def make_study(root: Path, seeds: list[int] | None = None, n_test: int = 280, n_patients: int = 190,
               empty: tuple[str, ...] = (), bootstrap: int = 200, epochs: int = 3,
               names: list[str] | None = None) -> Study:
    """A seed study with the real file formats (written by the evaluate stage's own functions)."""
    seeds = seeds or STUDY_SEEDS
    params = tiny_params(seeds=seeds, report={"bootstrap": bootstrap, "bootstrap_seed": 0},
                         ingest={"source": "phantom"}, split={"method": "official"})
    data = np.random.default_rng(7)
    test_labels = _labels(data, n_test, empty)
    val_labels = _labels(data, 150, ())
    patients = np.sort(data.integers(0, n_patients, n_test)) + 1000
    names = names[:n_test] if names else [f"{i:08d}_000.png" for i in range(n_test)]
    strength = data.uniform(0.3, 1.2, len(FINDINGS))
    test_shared, val_shared = data.normal(0, 1.0, test_labels.shape), data.normal(0, 1.0, val_labels.shape)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        test_probs = _probs(rng, test_labels, strength, test_shared)
        val = (val_labels, _probs(rng, val_labels, strength, val_shared))
        metrics = compute_metrics(seed, 0.04 + seed / 1e4, val, (test_labels, test_probs))
        (root / "metrics/eval").mkdir(parents=True, exist_ok=True)
        (root / f"metrics/eval/seed_{seed}.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        save_predictions(root / f"predictions/seed_{seed}.csv", names, patients, test_labels, test_probs)
        history = pd.DataFrame({"epoch": range(1, epochs + 1), "train_loss": np.linspace(0.3, 0.1, epochs) + seed / 1e3,
                                "val_loss": np.linspace(0.35, 0.2, epochs), "val_auroc": np.linspace(0.6, 0.7, epochs),
                                "lr": 1e-3})
        (root / "plots/train").mkdir(parents=True, exist_ok=True)
        history.to_csv(root / f"plots/train/seed_{seed}.csv", index=False)
    return Study(root, params)


@pytest.fixture(scope="module")
def four_seeds(tmp_path_factory: pytest.TempPathFactory) -> Study:
    return make_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def four_seed_report(four_seeds: Study) -> str:
    return four_seeds.run()


# ------------------------------------------------------------------------------------------------ Markdown helpers


def tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table in `text` as rows of cells (header first, the rule row left out)."""
    out: list[list[list[str]]] = []
    current: list[list[str]] = []
    previous = ""
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not current:
                assert previous.strip() == "", f"a table must follow a blank line: {line!r}"
            current.append(_cells(line))
        elif current:
            out.append(current)
            current = []
        previous = line
    return out


def _cells(line: str) -> list[str]:
    assert line.endswith("|"), f"table row does not end with a pipe: {line!r}"
    return [c.strip() for c in re.split(r"(?<!\\)\|", line[1:-1])]


def table_after(text: str, heading: str, index: int = 0) -> list[list[str]]:
    """The `index`-th table after the line `heading`, rule row dropped."""
    section = text.split(heading, 1)[1]
    found = tables(section)[index]
    return [found[0], *found[2:]]


def column(table: list[list[str]], name: str) -> dict[str, str]:
    """{first cell: the cell under header `name`} for every body row."""
    k = table[0].index(name)
    return {row[0]: row[k] for row in table[1:]}


# ------------------------------------------------------------------------------------------------ the numbers


def test_overall_table_holds_every_seeds_metrics(four_seeds: Study, four_seed_report: str) -> None:
    overall = table_after(four_seed_report, "## Overall Metrics Comparison (per seed)")
    assert overall[0][:3] == ["Seed", "Loss", "Avg AUROC"]
    for seed in STUDY_SEEDS:
        m = four_seeds.metrics_of(seed)
        row = next(r for r in overall if r[0] == str(seed))
        assert row[1:3] == [f"{m['loss']:.4f}", f"{m['auroc_mean']:.4f}"]
        assert column(overall, "Avg F1 (validation thresholds)")[str(seed)] == f"{m['f1_mean']:.4f}"
        assert column(overall, "Avg F1 (test-tuned, optimistic)")[str(seed)] == f"{m['f1_test_tuned_mean']:.4f}"


def test_per_class_table_lists_all_14_findings_per_seed(four_seeds: Study, four_seed_report: str) -> None:
    per_class = table_after(four_seed_report, "## Per-Class AUROC Comparison (per seed)")
    assert [r[0] for r in per_class[1:]] == list(FINDINGS)
    for seed in STUDY_SEEDS:
        auroc = four_seeds.metrics_of(seed)["auroc"]
        assert column(per_class, f"Seed {seed}") == {n: f"{auroc[n]:.4f}" for n in FINDINGS}


def test_mean_sd_and_range_over_seeds_match_the_metrics(four_seeds: Study, four_seed_report: str) -> None:
    values = [four_seeds.metrics_of(s)["auroc_mean"] for s in STUDY_SEEDS]
    overall = table_after(four_seed_report, "## Overall Metrics Comparison (per seed)")
    mean_row = next(r for r in overall if r[0].startswith("mean ± sd"))
    assert mean_row[2] == f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"
    range_row = next(r for r in overall if r[0] == "min–max")
    assert range_row[2] == f"{min(values):.4f}–{max(values):.4f}"
    per_class = table_after(four_seed_report, "## Per-Class AUROC Comparison (per seed)")
    cardio = [four_seeds.metrics_of(s)["auroc"]["Cardiomegaly"] for s in STUDY_SEEDS]
    assert column(per_class, "Mean ± sd")["Cardiomegaly"] == f"{np.mean(cardio):.4f} ± {np.std(cardio, ddof=1):.4f}"


def test_best_seed_table_names_the_argmax_for_all_14_findings(four_seeds: Study, four_seed_report: str) -> None:
    best = table_after(four_seed_report, "## Best Seed per Class")
    assert len(best) == 1 + 14
    for name in FINDINGS:
        scores = {s: four_seeds.metrics_of(s)["auroc"][name] for s in STUDY_SEEDS}
        top = max(scores, key=lambda s: (scores[s], -s))
        assert column(best, "Best Seed")[name] == str(top)
        assert column(best, "Highest AUROC")[name] == f"{scores[top]:.4f}"


def test_bootstrap_interval_brackets_each_seeds_mean_auroc(four_seeds: Study, four_seed_report: str) -> None:
    overall = table_after(four_seed_report, "## Overall Metrics Comparison (per seed)")
    intervals = column(overall, "95% CI (patient bootstrap)")
    for seed in STUDY_SEEDS:
        low, high = (float(x) for x in intervals[str(seed)].strip("[]").split(", "))
        assert low < four_seeds.metrics_of(seed)["auroc_mean"] < high
        assert 0.01 < high - low < 0.3


def test_ensemble_row_is_the_auroc_of_the_mean_probability(four_seeds: Study, four_seed_report: str) -> None:
    from cxrstudy.metrics import nanmean, per_class_auroc

    preds = [report.read_predictions(four_seeds.predictions / f"seed_{s}.csv") for s in STUDY_SEEDS]
    mean_probs = np.mean([p.probs for p in preds], axis=0)
    expected = nanmean(per_class_auroc(preds[0].labels, mean_probs))
    overall = table_after(four_seed_report, "## Overall Metrics Comparison (per seed)")
    row = next(r for r in overall if r[0].startswith("ensemble"))
    assert row[2] == f"{expected:.4f}"


def test_spread_sentence_compares_seed_sd_with_bootstrap_sd(four_seed_report: str) -> None:
    sentence = next(line for line in four_seed_report.splitlines() if line.startswith("- The spread between seeds"))
    seed_sd, sampling_sd = (float(x) for x in re.findall(r"sd (\d\.\d{4})", sentence)[:2])
    assert ("is larger than" in sentence) == (seed_sd > sampling_sd)
    assert ("no larger than" in sentence) == (seed_sd <= sampling_sd)


def test_summary_section_leads_with_mean_sd_over_seeds(four_seeds: Study, four_seed_report: str) -> None:
    values = [four_seeds.metrics_of(s)["auroc_mean"] for s in STUDY_SEEDS]
    summary = four_seed_report.split("## Summary", 1)[1].split("##", 1)[0]
    assert f"- Mean AUROC over 4 seeds: {np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" in summary
    assert "- The ensemble (mean of the 4 seeds' predicted probabilities)" in summary


def test_summary_metrics_file_repeats_the_headline_numbers(four_seeds: Study, four_seed_report: str) -> None:
    summary = json.loads((four_seeds.root / "metrics/report.json").read_text())
    values = [four_seeds.metrics_of(s)["auroc_mean"] for s in STUDY_SEEDS]
    assert summary["seeds"] == 4
    assert summary["seed_auroc"]["mean"] == pytest.approx(np.mean(values), abs=1e-6)
    assert summary["seed_auroc"]["sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-6)
    ensemble = summary["ensemble_auroc"]
    assert ensemble["ci_low"] < ensemble["value"] < ensemble["ci_high"]


# ------------------------------------------------------------------------------------------------ references and F1


def test_published_references_sit_beside_ours_labelled_with_their_split(four_seed_report: str) -> None:
    refs = report.load_references()
    per_class = table_after(four_seed_report, "## Published References", 2)
    assert column(per_class, "CheXNet [random 70/10/20]") == {n: f"{refs.chexnet[n]:.4f}" for n in FINDINGS}
    assert column(per_class, "Seed study 42 [random 2 %, per seed]")["Pneumothorax"] == "0.8902"
    assert "This run, mean of seeds [phantom, official-style]" in per_class[0]
    legend = next(line for line in four_seed_report.splitlines() if line.startswith("Test splits in the headers"))
    for short, long in [("random 70/10/20", "random 70/10/20 patient split"),
                        ("random 2 %, per seed", "random 2 % patient test split, redrawn with each seed"),
                        ("phantom, official-style", "the phantom's official-style test list")]:
        assert f"[{short}] {long}" in legend
    means = table_after(four_seed_report, "## Published References", 0)
    splits = column(means, "Test split")
    assert splits["Wang et al. 2017"] == "official NIH test list"
    assert splits["CheXNet"] == "random 70/10/20 patient split"


def test_every_f1_column_names_its_threshold_protocol(four_seed_report: str) -> None:
    for table in tables(four_seed_report):
        for header in table[0]:
            if "F1" in header:
                assert re.search(r"validation|test-tuned|threshold", header), header
    assert "optimistic" in four_seed_report


def test_references_file_matches_the_seed_study_report() -> None:
    refs = report.load_references()
    assert sorted(refs.study) == STUDY_SEEDS
    for seed, metrics in refs.study.items():
        # The study's per-class columns average to its per-seed means (to its rounding).
        assert np.mean(list(metrics.auroc.values())) == pytest.approx(metrics.auroc_mean, abs=6e-4), seed
    assert np.mean(list(refs.chexnet.values())) == pytest.approx(0.841, abs=1e-3)
    assert all(m.source for m in refs.means)


def test_a_reference_with_an_unknown_split_is_an_error(tmp_path: Path) -> None:
    text = report.references_path().read_text().replace("split: random-70-10-20\n  source: Rajpurkar",
                                                        "split: random-50\n  source: Rajpurkar")
    bad = tmp_path / "references.yaml"
    bad.write_text(text)
    with pytest.raises(InputError, match=r"references.yaml.*random-50"):
        report.load_references(bad)


# ------------------------------------------------------------------------------------------------ Markdown validity


def test_every_table_row_has_as_many_cells_as_its_header(four_seed_report: str) -> None:
    found = tables(four_seed_report)
    assert len(found) >= 8
    for table in found:
        assert all(len(row) == len(table[0]) for row in table), table[0]
        assert all(re.fullmatch(r":?-+:?", c) for c in table[1]), table[1]


def test_report_fits_in_a_github_comment(four_seed_report: str) -> None:
    assert len(four_seed_report) < report.MAX_CHARS


def test_report_is_deterministic(four_seeds: Study, four_seed_report: str, tmp_path: Path) -> None:
    assert four_seeds.run(tmp_path / "again.md") == four_seed_report


def test_no_unrendered_template_syntax_or_nan(four_seed_report: str) -> None:
    assert "{{" not in four_seed_report and "{%" not in four_seed_report
    assert "nan" not in four_seed_report.lower().replace("n/a", "")


# ------------------------------------------------------------------------------------------------ edge cases


def test_one_seed_renders_without_spread_or_ensemble(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=[42])
    text = study.run()
    overall = table_after(text, "## Overall Metrics Comparison (per seed)")
    assert [r[0] for r in overall[1:]] == ["42"]
    assert "One seed (42) was run" in text
    assert "no between-seed spread" in text
    for table in tables(text):
        assert all(len(row) == len(table[0]) for row in table)


def test_a_finding_without_positives_prints_na(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=[1, 2], empty=("Hernia",))
    assert study.metrics_of(1)["auroc"]["Hernia"] is None
    text = study.run()
    per_class = table_after(text, "## Per-Class AUROC Comparison (per seed)")
    assert column(per_class, "Seed 1")["Hernia"] == "n/a"
    assert column(per_class, "Ensemble")["Hernia"] == "n/a"
    best = table_after(text, "## Best Seed per Class")
    assert column(best, "Best Seed")["Hernia"] == "n/a"
    assert "of 13 findings" in text


def test_bootstrap_off_leaves_intervals_out(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=[1, 2], bootstrap=0)
    text = study.run()
    overall = table_after(text, "## Overall Metrics Comparison (per seed)")
    assert column(overall, "95% CI (patient bootstrap)")["1"] == "n/a"
    assert "The bootstrap is off" in text


def test_without_predictions_the_report_still_renders_the_metrics(four_seeds: Study, tmp_path: Path) -> None:
    text = four_seeds.run(tmp_path / "r.md", predictions_dir=None)
    overall = table_after(text, "## Overall Metrics Comparison (per seed)")
    assert column(overall, "Avg AUROC")["12"] == f"{four_seeds.metrics_of(12)['auroc_mean']:.4f}"
    assert not any(r[0].startswith("ensemble") for r in overall)


def test_a_missing_metrics_file_is_an_error_naming_it(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=[1, 2])
    (study.metrics / "seed_2.json").unlink()
    with pytest.raises(InputError, match=r"seed_2\.json: metrics file not found"):
        study.run()


@pytest.mark.parametrize("content", ["{not json", '{"seed": 1}', "[1, 2]"])
def test_a_malformed_metrics_file_is_an_error_naming_it(tmp_path: Path, content: str) -> None:
    study = make_study(tmp_path, seeds=[1, 2])
    (study.metrics / "seed_1.json").write_text(content)
    with pytest.raises(InputError, match=r"seed_1\.json: malformed metrics file"):
        study.run()


def test_a_missing_predictions_file_is_an_error_naming_it(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=[1, 2])
    (study.predictions / "seed_1.csv").unlink()
    with pytest.raises(InputError, match=r"seed_1\.csv: predictions file not found"):
        study.run()


def test_a_predictions_file_missing_columns_is_an_error_naming_them(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=[1, 2])
    path = study.predictions / "seed_1.csv"
    pd.read_csv(path).drop(columns=["prob_Mass"]).to_csv(path, index=False)
    with pytest.raises(InputError, match=r"seed_1\.csv: malformed predictions file.*prob_Mass"):
        study.run()


def test_stale_predictions_that_disagree_with_the_metrics_are_an_error(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=[1, 2])
    shutil.copy(study.predictions / "seed_2.csv", study.predictions / "seed_1.csv")
    with pytest.raises(InputError, match=r"seed_1\.csv and .*seed_1\.json disagree"):
        study.run()


def test_tiny_pipeline_params_render(tmp_path: Path) -> None:
    params = tiny_params()
    study = make_study(tmp_path, seeds=list(params.seeds), n_test=40, n_patients=25)
    text = study.run()
    assert f"training seeds {', '.join(str(s) for s in params.seeds)}" in text


def test_report_stage_takes_seconds_on_the_sample_size(tmp_path: Path) -> None:
    """~280 test images, 4 seeds, 1000 resamples: the statistics stay well inside the stage's budget."""
    study = make_study(tmp_path, bootstrap=1000)
    start = time.perf_counter()
    study.run()
    assert time.perf_counter() - start < 20


# ------------------------------------------------------------------------------------------------ experiments


def _exp_metrics(seed: int, auroc: float) -> dict[str, Any]:
    # As `dvc exp show --json` prints a metrics file: null values are dropped.
    return {"data": {"seed": seed, "loss": 0.04, "auroc_mean": auroc, "f1_mean": 0.3, "f1_test_tuned_mean": 0.35,
                     "f1_protocol": "per-class thresholds maximising F1 on the validation set", "n_test": 280,
                     "auroc": {n: auroc for n in FINDINGS if n != "Hernia"}, "f1": {n: 0.3 for n in FINDINGS}}}


def _exp_rev(rev: str, name: str | None, loss: str, clahe: bool, aurocs: list[float],
             ensemble: float | None = None) -> dict[str, Any]:
    metrics = {f"metrics/eval/seed_{s}.json": _exp_metrics(s, a) for s, a in zip([12, 22], aurocs, strict=False)}
    if ensemble is not None:
        metrics["metrics/report.json"] = {"data": {"seeds": 2, "ensemble_auroc": {"value": ensemble},
                                                   "test_sampling_sd": 0.012}}
    return {"rev": rev, "name": name, "data": {
        "rev": rev, "timestamp": "2025-01-01T00:00:00",
        "params": {"params.yaml": {"data": {"seeds": [12, 22], "preprocess": {"clahe": clahe, "clip_limit": 2.0},
                                            "train": {"loss": {"name": loss, "alpha": -1, "gamma": 2.0}}}}},
        "metrics": metrics, "deps": {}, "outs": {}, "meta": {}}, "error": None, "experiments": None}


def exp_show_sample() -> list[dict[str, Any]]:
    """`dvc exp show --json` as DVC 3.x prints it: workspace, the baseline commit, its experiments (one queued)."""
    base = _exp_rev("a" * 40, "main", "focal", True, [0.80, 0.82], ensemble=0.83)
    base["experiments"] = [
        {"revs": [_exp_rev("b" * 40, "bce-noclahe", "bce", False, [0.75, 0.77])], "executor": None,
         "name": "bce-noclahe"},
        {"revs": [_exp_rev("c" * 40, "focal-noclahe", "focal", False, [0.78, 0.78])], "executor": None,
         "name": "focal-noclahe"},
        {"revs": [{**_exp_rev("d" * 40, "wbce-clahe", "weighted_bce", True, []),
                   "data": {**_exp_rev("d" * 40, None, "weighted_bce", True, [])["data"], "metrics": {}}}],
         "executor": {"state": "queued", "name": "dvc-task", "local": None}, "name": "wbce-clahe"},
    ]
    workspace = _exp_rev("workspace", None, "focal", True, [0.80, 0.82])
    return [workspace, base]


def test_exp_show_json_is_parsed_into_experiments() -> None:
    experiments, skipped = report.parse_exp_show(exp_show_sample())
    assert [e.name for e in experiments] == ["main", "bce-noclahe", "focal-noclahe"]
    assert experiments[0].baseline and not experiments[1].baseline
    assert [s.seed for s in experiments[1].seeds] == [12, 22]
    assert math.isnan(experiments[1].seeds[0].auroc["Hernia"]), "a null dropped by DVC reads as NaN"
    assert experiments[1].loss == "bce" and experiments[1].clahe == "off"
    assert skipped == ["wbce-clahe (queued)"]


def test_comparison_renders_mean_over_seeds_and_delta_vs_baseline(tmp_path: Path) -> None:
    exp_json = tmp_path / "exp.json"
    exp_json.write_text(json.dumps(exp_show_sample()))
    out = tmp_path / "comparison.md"
    report.run_comparison(tiny_params(), exp_json, out)
    text = out.read_text()
    overall = tables(text)[0]
    overall = [overall[0], *overall[2:]]
    auroc = column(overall, "Avg AUROC (mean ± sd over seeds)")
    assert auroc["main (baseline)"] == f"0.8100 ± {np.std([0.80, 0.82], ddof=1):.4f}"
    assert column(overall, "Δ AUROC vs baseline")["bce-noclahe"] == "-0.0500"
    assert column(overall, "Ensemble AUROC") == {"main (baseline)": "0.8300", "bce-noclahe": "—",
                                                  "focal-noclahe": "—"}
    assert "CLAHE on minus off, mean AUROC over seeds: +0.0300 with focal loss." in text
    assert "moves one seed's mean AUROC by sd 0.0120" in text
    assert "Not like for like" not in text
    assert "Not compared (no metrics yet): wbce-clahe (queued)." in text
    for table in tables(text):
        assert all(len(row) == len(table[0]) for row in table)


def test_comparison_of_a_captured_dvc_exp_show_json(tmp_path: Path) -> None:
    """The parser reads a real `dvc exp show --json` (DVC 3.67) capture, trimmed to two findings."""
    captured = json.loads(CAPTURED_EXP_SHOW)
    experiments, skipped = report.parse_exp_show(captured)
    assert [(e.name, e.loss, e.clahe) for e in experiments] == [
        ("master", "focal", "on"), ("bce-noclahe", "bce", "off")]
    assert experiments[1].seeds[1].auroc_mean == 0.72
    assert skipped == ["bce-clahe (queued)"]


def test_experiments_on_different_splits_are_flagged() -> None:
    sample = exp_show_sample()
    sample[1]["experiments"][0]["revs"][0]["data"]["params"]["params.yaml"]["data"]["split"] = {"seed": 5}
    experiments, skipped = report.parse_exp_show(sample)
    text = " ".join(report.comparison_sentences(experiments, skipped))
    assert "Not like for like: split.seed differs" in text


def test_a_file_that_is_not_exp_show_output_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "exp.json"
    bad.write_text('{"rev": "workspace"}')
    with pytest.raises(InputError, match=r"exp\.json: not `dvc exp show --json` output"):
        report.run_comparison(tiny_params(), bad, tmp_path / "c.md")


# Captured from `dvc exp show --json` (DVC 3.67.1) in a throwaway repository with a two-seed toy pipeline.
CAPTURED_EXP_SHOW = """[
 {
  "rev": "workspace",
  "name": null,
  "data": {
   "rev": "workspace",
   "timestamp": null,
   "params": {
    "params.yaml": {"data": {"seeds": [1, 2], "preprocess": {"clahe": true}, "train": {"loss": {"name": "focal"}}}}
   },
   "metrics": {
    "metrics/eval/seed_1.json": {"data": {"seed": 1, "auroc_mean": 0.74, "auroc": {"Hernia": 0.74}, "loss": 0.04}},
    "metrics/eval/seed_2.json": {"data": {"seed": 2, "auroc_mean": 0.75, "auroc": {"Hernia": 0.75}, "loss": 0.04}}
   },
   "deps": {"run.py": {"hash": "a07240e5d87999ffeb4afe06b0334a21", "size": 340, "nfiles": null}},
   "outs": {},
   "meta": {}
  },
  "error": null,
  "experiments": null
 },
 {
  "rev": "fd4d8eac447779b7a7bdc550251cd593ed1ef683",
  "name": "master",
  "data": {
   "rev": "fd4d8eac447779b7a7bdc550251cd593ed1ef683",
   "timestamp": "2026-11-26T04:39:51",
   "params": {
    "params.yaml": {"data": {"seeds": [1, 2], "preprocess": {"clahe": true}, "train": {"loss": {"name": "focal"}}}}
   },
   "metrics": {
    "metrics/eval/seed_1.json": {"data": {"seed": 1, "auroc_mean": 0.74, "auroc": {"Hernia": 0.74}, "loss": 0.04}},
    "metrics/eval/seed_2.json": {"data": {"seed": 2, "auroc_mean": 0.75, "auroc": {"Hernia": 0.75}, "loss": 0.04}}
   },
   "deps": {"run.py": {"hash": "a07240e5d87999ffeb4afe06b0334a21", "size": 340, "nfiles": null}},
   "outs": {},
   "meta": {}
  },
  "error": null,
  "experiments": [
   {
    "revs": [
     {
      "rev": "db201670a5ad98bc2d30c62f7e948a39f8acb2dc",
      "name": "bce-noclahe",
      "data": {
       "rev": "db201670a5ad98bc2d30c62f7e948a39f8acb2dc",
       "timestamp": "2026-11-26T04:39:53",
       "params": {
        "params.yaml": {
         "data": {"seeds": [1, 2], "preprocess": {"clahe": false}, "train": {"loss": {"name": "bce"}}}
        }
       },
       "metrics": {
        "metrics/eval/seed_1.json": {
         "data": {"seed": 1, "auroc_mean": 0.71, "auroc": {"Hernia": 0.71}, "loss": 0.04}
        },
        "metrics/eval/seed_2.json": {
         "data": {"seed": 2, "auroc_mean": 0.72, "auroc": {"Hernia": 0.72}, "loss": 0.04}
        }
       },
       "deps": {"run.py": {"hash": "a07240e5d87999ffeb4afe06b0334a21", "size": 340, "nfiles": null}},
       "outs": {},
       "meta": {}
      },
      "error": null,
      "experiments": null
     }
    ],
    "executor": null,
    "name": "bce-noclahe"
   },
   {
    "revs": [
     {
      "rev": "edcf475354c2c92cc52264ed513df1c7b493c765",
      "name": "bce-clahe",
      "data": {
       "rev": "edcf475354c2c92cc52264ed513df1c7b493c765",
       "timestamp": "2026-11-26T04:40:46",
       "params": {
        "params.yaml": {
         "data": {"seeds": [1, 2], "preprocess": {"clahe": true}, "train": {"loss": {"name": "bce"}}}
        }
       },
       "metrics": {},
       "deps": {"run.py": {"hash": "a07240e5d87999ffeb4afe06b0334a21", "size": 340, "nfiles": null}},
       "outs": {},
       "meta": {}
      },
      "error": null,
      "experiments": null
     }
    ],
    "executor": {
     "state": "queued",
     "name": "dvc-task",
     "local": {
      "root": null,
      "log": null,
      "pid": null,
      "returncode": null,
      "task_id": "edcf475354c2c92cc52264ed513df1c7b493c765"
     }
    },
    "name": "bce-clahe"
   }
  ]
 }
]"""

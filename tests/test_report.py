"""The report stage: numbers from the metrics files, uncertainty from the predictions, phantom first, published
references apart from phantom numbers, deterministic GitHub Markdown under the comment limit."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrstudy.errors import InputError
from cxrstudy.reporting import references, report
from cxrstudy.reporting.render import MAX_CHARS
from cxrstudy.reporting.results import read_predictions
from cxrstudy.reporting.stats import patient_counts
from tests.conftest import ROOT, markdown_tables, table_after, tiny_params
from tests.synthetic import NIH_NAMES as FINDINGS
from tests.synthetic import STUDY_SEEDS, Study, make_study, write_coverage

# Two findings below the 8-positive-patient threshold (one with 2 positives: many resamples draw none), one separable.
COUNTS = {"Pneumothorax": 2, "Edema": 6}
STRENGTH = {"Emphysema": 8.0}


@pytest.fixture(scope="module")
def four_seeds(tmp_path_factory: pytest.TempPathFactory) -> Study:
    return make_study(tmp_path_factory.mktemp("study"), counts=COUNTS, strength=STRENGTH, offset={42: 0.5})


@pytest.fixture(scope="module")
def four_seed_report(four_seeds: Study) -> str:
    return four_seeds.run()


# ------------------------------------------------------------------------------------------------ Markdown helpers


def column(table: list[list[str]], name: str) -> dict[str, str]:
    """{first cell: the cell under the header that starts with `name`} for every body row."""
    k = next(i for i, h in enumerate(table[0]) if h.startswith(name))
    return {row[0]: row[k] for row in table[1:]}


def section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def interval(cell: str) -> tuple[float, float]:
    low, high = re.search(r"\[([-+]?\d\.\d{4}), ([-+]?\d\.\d{4})\]", cell).groups()  # type: ignore[union-attr]
    return float(low), float(high)


def positive_patients(study: Study) -> dict[str, int]:
    pred = read_predictions(study.predictions / f"seed_{STUDY_SEEDS[0]}.csv")
    return {n: len(set(pred.patients[pred.labels[:, k] == 1])) for k, n in enumerate(pred.findings)}


def eligible(study: Study) -> list[str]:
    return [n for n, c in positive_patients(study).items() if c >= study.params.report.min_positives]


# ------------------------------------------------------------------------------------------------ the numbers


def test_overall_table_holds_every_seeds_metrics(four_seeds: Study, four_seed_report: str) -> None:
    overall = table_after(four_seed_report, "## Overall Metrics Comparison (per seed)")
    assert overall[0][:3] == ["Seed", "Loss", "Avg AUROC (14 findings)"]
    for seed in STUDY_SEEDS:
        m = four_seeds.metrics_of(seed)
        row = next(r for r in overall if r[0] == str(seed))
        assert row[1:3] == [f"{m['loss']:.4f}", f"{m['auroc_mean']:.4f}"]
        f1, tuned = column(overall, "Avg F1 (14 findings, validation"), column(overall, "Avg F1 (14 findings, test")
        assert f1[str(seed)] == f"{m['f1_mean']:.4f}" and tuned[str(seed)] == f"{m['f1_test_tuned_mean']:.4f}"


def test_the_interval_column_names_its_findings_and_brackets_their_mean(four_seeds: Study,
                                                                       four_seed_report: str) -> None:
    names = eligible(four_seeds)
    assert len(names) == 12
    overall = table_after(four_seed_report, "## Overall Metrics Comparison (per seed)")
    header = f"Avg AUROC, {len(names)} findings with ≥ 8 positive patients [95% CI, BCa]"
    assert header in overall[0]
    for seed in STUDY_SEEDS:
        auroc = four_seeds.metrics_of(seed)["auroc"]
        point = np.mean([auroc[n] for n in names])
        cell = column(overall, header)[str(seed)]
        assert cell.startswith(f"{point:.4f} [")
        low, high = interval(cell)
        assert low < point < high and 0.005 < high - low < 0.3


def test_per_class_table_lists_every_finding_with_positive_patients_beside_positive_images(
        four_seeds: Study, four_seed_report: str) -> None:
    per_class = table_after(four_seed_report, "## Per-Class AUROC Comparison (per seed)")
    assert [r[0] for r in per_class[1:]] == list(FINDINGS)
    m = four_seeds.metrics_of(12)
    for seed in STUDY_SEEDS:
        auroc = four_seeds.metrics_of(seed)["auroc"]
        assert column(per_class, f"Seed {seed}") == {n: f"{auroc[n]:.4f}" for n in FINDINGS}
    assert column(per_class, "Positive images (test)") == {n: str(m["test_positives"][n]) for n in FINDINGS}
    patients = column(per_class, "Positive patients (test)")
    counts = positive_patients(four_seeds)
    assert patients["Pneumothorax"] == f"{counts['Pneumothorax']} (< 8)" and patients["Edema"] == "6 (< 8)"
    assert patients["Infiltration"] == str(counts["Infiltration"]) and counts["Infiltration"] < m["test_positives"][
        "Infiltration"], "several positive images of one patient count once"


def test_below_the_threshold_a_finding_gets_no_interval_and_its_coverage_is_shown_beside_the_others(
        four_seed_report: str) -> None:
    per_class = table_after(four_seed_report, "## Per-Class AUROC Comparison (per seed)")
    ci, measured = column(per_class, "Ensemble 95% CI (BCa)"), column(per_class, "Simulated coverage")
    for name in ("Pneumothorax", "Edema"):
        assert ci[name] == "—" and measured[name] == "—"
    assert ci["Infiltration"].startswith("[") and measured["Infiltration"] == "93.0%"


def test_resamples_without_a_positive_are_counted(four_seeds: Study, four_seed_report: str) -> None:
    """Pneumothorax has 2 positives: a resample lacks them exactly when it draws neither patient."""
    pred = read_predictions(four_seeds.predictions / "seed_12.csv")
    ids, index = np.unique(pred.patients, return_inverse=True)
    holders = np.unique(index[pred.labels[:, FINDINGS.index("Pneumothorax")] == 1])
    counts = patient_counts(len(ids), 200, 0)
    expected = int((counts[:, holders].sum(axis=1) == 0).sum())
    assert expected > 0
    per_class = table_after(four_seed_report, "## Per-Class AUROC Comparison (per seed)")
    lacking = column(per_class, "Resamples without a positive (of 200)")
    assert lacking["Pneumothorax"] == str(expected)
    assert lacking["Infiltration"] == "0"


def test_mean_sd_and_range_over_seeds_match_the_metrics(four_seeds: Study, four_seed_report: str) -> None:
    values = [four_seeds.metrics_of(s)["auroc_mean"] for s in STUDY_SEEDS]
    overall = table_after(four_seed_report, "## Overall Metrics Comparison (per seed)")
    mean_row = next(r for r in overall if r[0].startswith("mean ± sd"))
    assert mean_row[2] == f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"
    range_row = next(r for r in overall if r[0] == "min–max")
    assert range_row[2] == f"{min(values):.4f}–{max(values):.4f}"


def test_best_seed_table_lists_all_14_and_ranks_only_findings_with_enough_positives(four_seeds: Study,
                                                                                    four_seed_report: str) -> None:
    best = table_after(four_seed_report, "## Best Seed per Class")
    assert [r[0] for r in best[1:]] == list(FINDINGS)
    for name in FINDINGS:
        scores = {s: four_seeds.metrics_of(s)["auroc"][name] for s in STUDY_SEEDS}
        top = max(scores, key=lambda s: (scores[s], -s))
        assert column(best, "Highest AUROC")[name] == f"{scores[top]:.4f}"
        if name in COUNTS:
            assert column(best, "Best Seed")[name] == "not ranked (< 8 positive patients)"
            assert column(best, "Beats every other seed")[name] == "—"
        else:
            assert column(best, "Best Seed")[name] == str(top)
    summary = section(four_seed_report, "## Summary")
    claims = summary.split("Best seed per finding", 1)[1].split("\n", 1)[0]
    assert "Pneumothorax (2)" in claims and "Edema (6)" in claims
    assert "for Pneumothorax" not in claims and "for Edema" not in claims


def test_a_best_seed_is_claimed_only_when_it_beats_every_other_seed(four_seed_report: str) -> None:
    best = table_after(four_seed_report, "## Best Seed per Class")
    per_finding = table_after(four_seed_report, "## Paired comparisons", 1)
    for name, seed in column(best, "Best Seed").items():
        if not seed.isdigit():
            continue
        row = next(r for r in per_finding if r[0] == name)
        pairs = [cell for header, cell in zip(per_finding[0], row, strict=True) if re.search(rf"seed {seed}\b", header)
                 and "ensemble" not in header]
        assert len(pairs) == 3
        claimed = column(best, "Beats every other seed")[name] == "yes"
        assert claimed == all(cell.endswith("✱") for cell in pairs), name


def test_a_truly_better_seed_is_found_beyond_noise(four_seed_report: str) -> None:
    """Seed 42 gets extra signal on every finding: every pair with it differs, and it ranks first most often."""
    contrasts = table_after(four_seed_report, "## Paired comparisons")
    verdicts = column(contrasts, "Beyond test-sampling noise")
    for other in (12, 22, 32):
        assert verdicts[f"seed {other} − seed 42"] == "yes"
        low, high = interval(column(contrasts, "95% CI")[f"seed {other} − seed 42"])
        assert high < 0
    overall = table_after(four_seed_report, "## Overall Metrics Comparison (per seed)")
    first = {k: float(v) for k, v in column(overall, "P(ranks first)").items() if k.isdigit()}
    assert sum(first.values()) == pytest.approx(1.0, abs=1e-3)
    assert max(first, key=first.__getitem__) == "42" and first["42"] > 0.9


def test_identical_seeds_differ_by_nothing(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=[1, 2], noise=0.0, bootstrap=100)
    text = study.run()
    contrasts = table_after(text, "## Paired comparisons")
    row = next(r for r in contrasts if r[0] == "seed 1 − seed 2")
    assert row[1] == "+0.0000" and row[-1] == "no"


def _seed_sentence(text: str) -> str:
    return next(line for line in section(text, "## Summary").splitlines() if "training (seed) sd" in line)


@pytest.mark.parametrize("differ", [True, False])
def test_the_seed_verdict_says_what_the_numbers_say_in_both_directions(tmp_path: Path, differ: bool) -> None:
    """Seeds with very different signal: training variance above 0, and retraining moves the number more than
    re-drawing the test patients. Seeds with the same signal: training variance not told from 0."""
    study = make_study(tmp_path, offset={12: -0.5, 22: 0.0, 32: 0.5, 42: 1.0} if differ else {}, noise=0.05,
                       n_test=400, n_patients=300)
    text = study.run()
    variance = table_after(text, "## Training (seed) variance and test-sampling variance")
    low, high = (float(x) for x in column(variance, "95% interval")["training (seed) sd"].strip("[]").split(", "))
    test_sd = float(column(variance, "sd")["one seed's test-sampling sd (test patients redrawn)"])
    p = column(variance, "p (training variance = 0)")["training (seed) sd"]
    sentence = _seed_sentence(text)
    assert f"(95% interval {low:.4f}–{high:.4f}, 4 seeds)" in sentence and f"sd is {test_sd:.4f}" in sentence
    if differ:
        assert low > test_sd and "Training variance is above 0 (p" in sentence
        assert "moves the number more than re-drawing the test patients does" in sentence
        assert "the seeds differ by more than their own test-sampling errors explain" in sentence
    else:
        assert low == 0 and "Training variance cannot be told from 0 (p" in sentence and p != "< 0.0001"
        assert "within what their own test-sampling errors produce" in sentence
        assert "differ by more than" not in sentence


def test_the_seed_verdict_counts_the_seed_pairs_beyond_noise(four_seed_report: str) -> None:
    contrasts = table_after(four_seed_report, "## Paired comparisons")
    beyond = [r for r in contrasts[1:] if "ensemble" not in r[0] and r[-1] == "yes"]
    assert f"{len(beyond)} of 6 seed pairs differ beyond test-sampling noise" in _seed_sentence(four_seed_report)


def test_ensemble_row_is_the_auroc_of_the_mean_probability(four_seeds: Study, four_seed_report: str) -> None:
    from cxrstudy.metrics import per_class_auroc

    preds = [read_predictions(four_seeds.predictions / f"seed_{s}.csv") for s in STUDY_SEEDS]
    mean_probs = np.mean([p.probs for p in preds], axis=0)
    overall = table_after(four_seed_report, "## Overall Metrics Comparison (per seed)")
    row = next(r for r in overall if r[0].startswith("ensemble"))
    assert row[2] == f"{np.nanmean(per_class_auroc(preds[0].labels, mean_probs)):.4f}"


def test_the_ensemble_f1_uses_thresholds_from_its_validation_predictions(four_seeds: Study,
                                                                        four_seed_report: str) -> None:
    from cxrstudy.metrics import per_class_f1, per_class_thresholds

    test = [read_predictions(four_seeds.predictions / f"seed_{s}.csv") for s in STUDY_SEEDS]
    val = [read_predictions(four_seeds.predictions / "val" / f"seed_{s}.csv") for s in STUDY_SEEDS]
    test_probs, val_probs = np.mean([p.probs for p in test], axis=0), np.mean([p.probs for p in val], axis=0)
    expected = np.nanmean(per_class_f1(test[0].labels, test_probs, per_class_thresholds(val[0].labels, val_probs)))
    overall = table_after(four_seed_report, "## Overall Metrics Comparison (per seed)")
    f1 = column(overall, "Avg F1 (14 findings, validation thresholds)")
    assert f1["ensemble (mean of 4 seeds' probabilities)"] == f"{expected:.4f}"


def test_calibration_table_holds_brier_and_ece_per_seed_and_for_the_ensemble(four_seeds: Study,
                                                                            four_seed_report: str) -> None:
    calibration = table_after(four_seed_report, "## Calibration")
    for seed in STUDY_SEEDS:
        m = four_seeds.metrics_of(seed)
        assert column(calibration, "Brier")[f"seed {seed}"] == f"{m['brier_mean']:.4f}"
        assert column(calibration, "ECE")[f"seed {seed}"] == f"{m['ece_mean']:.4f}"
    preds = [read_predictions(four_seeds.predictions / f"seed_{s}.csv") for s in STUDY_SEEDS]
    labels, probs = preds[0].labels, np.mean([p.probs for p in preds], axis=0)
    assert column(calibration, "Brier")["ensemble"] == f"{np.mean((probs - labels) ** 2):.4f}"
    ece = []
    for k in range(len(FINDINGS)):  # ten equal-width bins, weighted by their share of the images
        bins = np.minimum((probs[:, k] * 10).astype(int), 9)
        ece.append(sum(abs(labels[bins == b, k].sum() - probs[bins == b, k].sum()) for b in range(10)) / len(bins))
    assert column(calibration, "ECE")["ensemble"] == f"{np.mean(ece):.4f}"


def test_an_auroc_of_one_gets_an_exact_bound_not_a_collapsed_interval(four_seed_report: str) -> None:
    per_class = table_after(four_seed_report, "## Per-Class AUROC Comparison (per seed)")
    assert column(per_class, "Ensemble")["Emphysema"] == "1.0000"
    cell = column(per_class, "Ensemble 95% CI")["Emphysema"]
    assert cell.endswith("(exact)")
    low, high = interval(cell)
    assert 0.5 < low < 0.99 and high == 1.0


def test_summary_metrics_file_repeats_the_headline_numbers(four_seeds: Study, four_seed_report: str) -> None:
    summary = json.loads((four_seeds.root / "metrics/report.json").read_text())
    values = [four_seeds.metrics_of(s)["auroc_mean"] for s in STUDY_SEEDS]
    assert summary["seeds"] == 4 and summary["eligible_findings"] == 12
    assert summary["seed_auroc"]["mean"] == pytest.approx(np.mean(values), abs=1e-6)
    ensemble = summary["ensemble_auroc"]
    assert ensemble["ci_low"] < ensemble["eligible"] < ensemble["ci_high"]
    assert summary["training_sd"]["ci_low"] <= summary["training_sd"]["value"] <= summary["training_sd"]["ci_high"]
    assert set(summary["ensemble_calibration"]) == {"brier", "ece", "brier_skill"}
    assert summary["training_sd"]["p"] is not None
    assert summary["coverage"]["difference"] == {"method": "normal", "worst": 0.93, "supported_threshold": 10}


# ------------------------------------------------------------------------------------------------ phantom first


def test_a_phantom_report_says_phantom_before_any_number(four_seed_report: str) -> None:
    before = re.split(r"\d", four_seed_report, maxsplit=1)[0]
    assert four_seed_report.startswith("# Phantom run")
    assert "phantom" in before.lower()
    banner = four_seed_report.split("\n\n", 2)[1]
    assert banner.startswith("> **Phantom run.**") and "not chest radiographs" in banner
    assert "not chest radiographs" in section(four_seed_report, "## Summary").split("\n- ", 2)[1]


def test_a_phantom_report_sets_no_published_number_beside_its_own(four_seed_report: str) -> None:
    published = ("CheXNet", "Seed study", "seed study", "Wang et al.")
    ours = four_seed_report.split("## Published References", 1)[0]
    for table in markdown_tables(ours):
        assert not any(p in cell for row in table for cell in row for p in published), table[0]
    refs = section(four_seed_report, "## Published References")
    assert "(real data; not comparable with this phantom run)" in four_seed_report
    for table in markdown_tables(refs):
        assert not any("This run" in h or "this run" in row[0] for h in table[0] for row in table), table[0]


def test_the_phantom_split_is_called_what_it_is(four_seed_report: str) -> None:
    ours = four_seed_report.split("## Published References", 1)[0]
    assert "the phantom's own patient-wise test list" in ours
    assert "official" not in ours.lower()


def test_on_the_real_data_published_references_sit_beside_ours_labelled_with_their_split(four_seeds: Study,
                                                                                        tmp_path: Path) -> None:
    params = tiny_params(seeds=STUDY_SEEDS, report={"bootstrap": 50, "bootstrap_seed": 0},
                         ingest={"source": "nih"}, split={"method": "official"})
    text = four_seeds.run(tmp_path / "nih.md", params=params, summary_file=None,
                          inputs=report.Inputs(write_coverage(tmp_path / "coverage.json", params)))
    assert text.startswith("# DenseNet-121") and "Phantom run" not in text
    refs = references.load_references()
    per_class = table_after(text, "## Published References", 2)
    assert column(per_class, "CheXNet [random 70/10/20]") == {n: f"{refs.chexnet[n]:.4f}" for n in FINDINGS}
    assert column(per_class, "Seed study 42 [random 2 %, per seed]")["Pneumothorax"] == "0.8902"
    assert "This run, mean of seeds [official]" in per_class[0]
    legend = next(line for line in text.splitlines() if line.startswith("Test splits in the headers"))
    assert "[official] official NIH test list" in legend
    means = table_after(text, "## Published References", 0)
    assert column(means, "Test split")["Wang et al. 2017"] == "official NIH test list"


def test_every_f1_column_names_its_threshold_protocol(four_seed_report: str) -> None:
    for table in markdown_tables(four_seed_report):
        for header in table[0]:
            if "F1" in header:
                assert re.search(r"validation|test-tuned|threshold", header), header
    assert "optimistic" in four_seed_report


def test_references_file_matches_the_seed_study_report() -> None:
    refs = references.load_references()
    assert sorted(refs.study) == STUDY_SEEDS
    for seed, metrics in refs.study.items():
        # The study's per-class columns average to its per-seed means (to its rounding).
        assert np.mean(list(metrics.auroc.values())) == pytest.approx(metrics.auroc_mean, abs=6e-4), seed
    assert np.mean(list(refs.chexnet.values())) == pytest.approx(0.841, abs=1e-3)
    assert all(m.source for m in refs.means)


def test_a_reference_with_an_unknown_split_is_an_error(tmp_path: Path) -> None:
    text = references.references_path().read_text().replace("split: random-70-10-20\n  source: Rajpurkar",
                                                            "split: random-50\n  source: Rajpurkar")
    bad = tmp_path / "references.yaml"
    bad.write_text(text)
    with pytest.raises(InputError, match=r"references.yaml.*random-50"):
        references.load_references(bad)


# ------------------------------------------------------------------------------------------------ Markdown validity


def test_every_table_row_has_as_many_cells_as_its_header(four_seed_report: str) -> None:
    found = markdown_tables(four_seed_report)
    assert len(found) >= 12
    for table in found:
        assert all(len(row) == len(table[0]) for row in table), table[0]
        assert all(re.fullmatch(r":?-+:?", c) for c in table[1]), table[1]


def test_report_fits_in_a_github_comment(four_seed_report: str) -> None:
    assert len(four_seed_report) < MAX_CHARS


def test_report_is_deterministic(four_seeds: Study, four_seed_report: str, tmp_path: Path) -> None:
    assert four_seeds.run(tmp_path / "again.md", summary_file=None) == four_seed_report


def test_no_unrendered_template_syntax_or_nan(four_seed_report: str) -> None:
    assert "{{" not in four_seed_report and "{%" not in four_seed_report
    assert "nan" not in four_seed_report.lower().replace("n/a", "")


def test_a_value_that_rounds_to_zero_prints_without_a_sign() -> None:
    from cxrstudy.reporting.cells import fmt, signed

    assert signed(-0.00001) == "+0.0000" and fmt(-0.00001) == "0.0000" and signed(-0.0001) == "-0.0001"


def test_the_report_side_never_imports_torch() -> None:
    code = ("import sys, importlib, pkgutil, cxrstudy.reporting as r; "
            "[importlib.import_module(f'cxrstudy.reporting.{m.name}') for m in pkgutil.iter_modules(r.__path__)]; "
            "sys.exit('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr or "torch was imported"


# ------------------------------------------------------------------------------------------------ edge cases


def test_one_seed_renders_without_spread_comparisons_or_ensemble(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=[42])
    text = study.run()
    overall = table_after(text, "## Overall Metrics Comparison (per seed)")
    assert [r[0] for r in overall[1:]] == ["42"]
    assert "One seed (42) was run" in text
    assert "## Paired comparisons" not in text and "no training variance to estimate" in text
    for table in markdown_tables(text):
        assert all(len(row) == len(table[0]) for row in table)


def test_a_finding_without_positives_prints_na(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=[1, 2], counts={"Hernia": 0})
    assert study.metrics_of(1)["auroc"]["Hernia"] is None
    text = study.run()
    per_class = table_after(text, "## Per-Class AUROC Comparison (per seed)")
    assert column(per_class, "Seed 1")["Hernia"] == "n/a"
    assert column(per_class, "Ensemble")["Hernia"] == "n/a"
    assert column(table_after(text, "## Best Seed per Class"), "Best Seed")["Hernia"] == "n/a"
    assert "Avg AUROC (13 findings)" in text


def test_without_enough_positives_nothing_is_compared_or_claimed(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=[1, 2], n_test=24, n_patients=20, bootstrap=50)
    text = study.run()
    assert "No finding has at least 8 positive test patients: no mean gets an interval" in text
    assert "## Paired comparisons" not in text and "P(ranks first)" not in text
    best = table_after(text, "## Best Seed per Class")
    assert set(column(best, "Best Seed").values()) <= {"not ranked (< 8 positive patients)", "n/a"}


def test_a_seed_tested_on_other_images_than_the_split_is_refused(tmp_path: Path) -> None:
    study = make_study(tmp_path / "a", seeds=[1, 2], bootstrap=50)
    other = make_study(tmp_path / "b", seeds=[1, 2], bootstrap=50, data_seed=8, n_test=260)
    for path in ("metrics/eval/seed_2.json", "predictions/seed_2.csv", "predictions/val/seed_2.csv"):
        shutil.copy(other.root / path, study.root / path)
    with pytest.raises(InputError, match=r"seed_2\.csv: .*data/splits/test\.txt"):
        study.run()


def test_bootstrap_off_leaves_intervals_out(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=[1, 2], bootstrap=0)
    text = study.run()
    overall = table_after(text, "## Overall Metrics Comparison (per seed)")
    assert "[" not in column(overall, "Avg AUROC, ")["1"]
    assert "The bootstrap is off" in text


def test_without_predictions_the_report_still_renders_the_metrics(four_seeds: Study, tmp_path: Path) -> None:
    text = four_seeds.run(tmp_path / "r.md", predictions_dir=None, summary_file=None)
    overall = table_after(text, "## Overall Metrics Comparison (per seed)")
    assert column(overall, "Avg AUROC (14")["12"] == f"{four_seeds.metrics_of(12)['auroc_mean']:.4f}"
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


@pytest.mark.parametrize("path", ["seed_1.csv", "val/seed_1.csv"])
def test_a_missing_predictions_file_is_an_error_naming_it(tmp_path: Path, path: str) -> None:
    study = make_study(tmp_path, seeds=[1, 2])
    (study.predictions / path).unlink()
    with pytest.raises(InputError, match=rf"{re.escape(path)}: predictions file not found"):
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
    assert not math.isnan(len(text))

"""The report on any data: finding names from the files (any label space, its own order), masked label cells left
out of every per-finding statistic, string patient ids, predictions checked against the split's lists, and the
caveats filled from the run's inputs."""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrstudy.errors import InputError
from cxrstudy.reporting import caveats, report
from cxrstudy.reporting.references import load_references
from cxrstudy.reporting.results import parse_predictions, read_predictions
from tests.conftest import ROOT, markdown_tables, run_cli, table_after, tiny_raw, write_params
from tests.synthetic import CHEXPERT_NAMES, Study, make_external, make_study, no_external, write_dataset


def column(table: list[list[str]], name: str) -> dict[str, str]:
    k = next(i for i, h in enumerate(table[0]) if h.startswith(name))
    return {row[0]: row[k] for row in table[1:]}


def test_no_reporting_module_imports_the_nih_label_constant() -> None:
    """Finding names come from the data, never from `cxrstudy.labels` (NIH's fixed list)."""
    for path in sorted((ROOT / "src/cxrstudy/reporting").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "cxrstudy.labels" or n.startswith("cxrstudy.labels.") for n in names), path


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Study, str]:
    study = make_study(tmp_path_factory.mktemp("chexpert"), findings=CHEXPERT_NAMES, masked=0.15, bootstrap=100)
    return study, study.run()


def test_another_label_space_is_reported_in_its_own_order(chexpert: tuple[Study, str]) -> None:
    study, text = chexpert
    per_class = table_after(text, "## Per-Class AUROC Comparison (per seed)")
    assert [r[0] for r in per_class[1:]] == list(CHEXPERT_NAMES)
    assert f"Avg AUROC ({len(CHEXPERT_NAMES)} findings)" in text
    best = table_after(text, "## Best Seed per Class")
    assert [r[0] for r in best[1:]] == list(CHEXPERT_NAMES)
    assert "nan" not in text.lower().replace("n/a", "")


def test_masked_cells_are_left_out_of_each_findings_auroc_and_calibration(chexpert: tuple[Study, str]) -> None:
    study, text = chexpert
    preds = [read_predictions(study.predictions / f"seed_{s}.csv") for s in (12, 22, 32, 42)]
    labels = preds[0].labels
    assert np.isnan(labels).mean() > 0.1, "the study has masked cells"
    per_class = table_after(text, "## Per-Class AUROC Comparison (per seed)")
    ensemble = np.mean([p.probs for p in preds], axis=0)
    for k, name in enumerate(CHEXPERT_NAMES):
        keep = np.isfinite(labels[:, k])
        expected = roc_auc_score(labels[keep, k], preds[0].probs[keep, k])
        assert column(per_class, "Seed 12")[name] == f"{expected:.4f}"
        assert column(per_class, "Ensemble")[name] == f"{roc_auc_score(labels[keep, k], ensemble[keep, k]):.4f}"
    calibration = table_after(text, "## Calibration")
    brier = np.mean([np.mean((ensemble[np.isfinite(labels[:, k]), k] - labels[np.isfinite(labels[:, k]), k]) ** 2)
                     for k in range(labels.shape[1])])
    assert column(calibration, "Brier (mean")["ensemble"] == f"{brier:.4f}"
    reference = np.mean([np.nanmean(labels[:, k]) * (1 - np.nanmean(labels[:, k])) for k in range(labels.shape[1])])
    assert column(calibration, "Brier skill score")["ensemble"] == f"{1 - brier / reference:.4f}"


def test_a_predictions_file_keeps_patient_ids_as_text_and_empty_labels_as_masked() -> None:
    text = "image,patient,label_A,label_B,prob_A,prob_B\nx.png,007,1,,0.9,0.2\ny.png,NA,0,1,0.1,0.8\n"
    pred = parse_predictions(text, "p.csv")
    assert pred.patients.tolist() == ["007", "NA"] and pred.findings == ("A", "B")
    assert pred.labels[0, 0] == 1 and math.isnan(pred.labels[0, 1]) and pred.order == ("x.png", "y.png")
    with pytest.raises(InputError, match=r"p\.csv: label cells must hold 1, 0 or nothing"):
        parse_predictions(text.replace(",1,,", ",2,,"), "p.csv")
    with pytest.raises(InputError, match=r"p\.csv: malformed predictions file, missing column\(s\) prob_B"):
        parse_predictions(text.replace("prob_B", "prob_C"), "p.csv")
    with pytest.raises(InputError, match=r"p\.csv: image x\.png has more than one row"):
        parse_predictions(text.replace("y.png", "x.png"), "p.csv")


# ------------------------------------------------------------------------------------------------ against the split


@pytest.fixture()
def small(tmp_path: Path) -> Study:
    return make_study(tmp_path, seeds=[1, 2], bootstrap=30, n_test=60, n_patients=40)


def _edit(path: Path, change: str) -> list[str]:
    """Tamper with a predictions file as issue 25 did: rename one id, swap two, drop a row or move a patient."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    images = frame["image"].tolist()
    if change == "renamed":
        frame.loc[3, "image"] = "99999999_000.png"
    elif change == "swapped":
        frame.loc[[3, 7], "image"] = [images[7], images[3]]
    elif change == "dropped":
        frame = frame.drop(index=5)
    elif change == "patient":
        frame.loc[3, "patient"] = "someone-else"
    frame.to_csv(path, index=False, lineterminator="\n")
    return images


@pytest.mark.parametrize(("change", "message"), [
    ("renamed", r"seed_2\.csv: line 5 holds image 99999999_000\.png, which is not in .*test\.txt \(line 4 there is "
                r"00000003_000\.png\): renamed"),
    ("swapped", r"seed_2\.csv: line 5 holds image 00000007_000\.png where .*test\.txt line 4 has 00000003_000\.png "
                r"\(00000007_000\.png is on its line 8\): rows swapped"),
    ("dropped", r"seed_2\.csv: line 7 holds image 00000006_000\.png where .*test\.txt line 6 has 00000005_000\.png"),
    ("patient", r"seed_2\.csv: image 00000003_000\.png has patient someone-else where .*seed_1\.csv has p\d+"),
])
def test_predictions_that_differ_from_the_split_are_refused_naming_the_first_difference(small: Study, change: str,
                                                                                        message: str) -> None:
    _edit(small.predictions / "seed_2.csv", change)
    with pytest.raises(InputError, match=message):
        small.run()


def test_a_patient_count_other_than_the_splits_is_refused(small: Study) -> None:
    summary = json.loads((small.splits / "summary.json").read_text())
    summary["test"]["patients"] += 1
    (small.splits / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(InputError, match=r"seed_1\.csv: \d+ patients, but .*summary\.json counts \d+ in the test"):
        small.run()


def test_the_report_command_refuses_swapped_ids_with_exit_2_and_writes_nothing(small: Study) -> None:
    _edit(small.predictions / "val" / "seed_1.csv", "swapped")
    write_params(small.root / "params.yaml", tiny_raw(seeds=[1, 2], report={"bootstrap": 30, "bootstrap_seed": 0},
                                                      ingest={"source": "phantom"}, split={"method": "official"}))
    done = run_cli(small.root, "report")
    assert done.returncode == 2 and "rows swapped or reordered" in done.stderr and "val/seed_1.csv" in done.stderr
    assert "Traceback" not in done.stderr and not (small.root / "reports/report.md").exists()


# ------------------------------------------------------------------------------------------------ caveats


def test_the_caveats_take_their_inputs_as_arguments(tmp_path: Path) -> None:
    facts = caveats.DatasetFacts("radiologists' reads", "the official validation list", "CheXpert", "site B")
    gap = caveats.PrevalenceGap("Hernia", 0.04, 0.002)
    none = caveats.caveats(facts, [], [], [gap], phantom=False)
    assert not none.has_external and none.prevalence == [] and none.dataset == facts
    found = tmp_path / "seed_12.json"
    found.write_text('{"seed": 12, "external": {"name": "site B"}}')
    (tmp_path / "seed_22.json").write_text('{"seed": 22, "external": null, "reason": "no external test set"}')
    some = caveats.caveats(None, caveats.external_files(tmp_path, [12, 22]), [], [gap], phantom=True)
    assert some.has_external and some.external == [str(found)] and some.prevalence == [gap]
    found.write_text('{"seed": 12, "external": null}')
    assert caveats.external_files(tmp_path, [12, 22]) == [], "a file saying external: null is no external test"
    assert gap.ratio == pytest.approx(20.0)


def test_the_data_description_is_read_and_a_broken_one_named(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"label_source": "NLP", "official_test": "test_list.txt", "site": "A",
                                "counts": {"images": 10}}))
    assert caveats.read_dataset_facts(path).counts == {"images": 10}
    path.write_text(json.dumps({"site": "A"}))
    with pytest.raises(InputError, match=r"dataset\.json: malformed dataset description .*label_source"):
        caveats.read_dataset_facts(path)


def test_the_phantoms_prevalences_are_compared_with_nihs_from_the_data(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=[1, 2], bootstrap=30, counts={"Hernia": 14})
    text = study.run()
    refs = load_references()
    hernia = 14 / 280, refs.label_counts["Hernia"] / refs.label_images
    block = text.split("## Caveats", 1)[1].split("\n## ", 1)[0]
    prevalence = markdown_tables(block)[0]
    row = next(r for r in prevalence if r[0] == "Hernia")
    assert row[1:] == [f"{hernia[0]:.1%}", f"{hernia[1]:.1%}", f"{hernia[0] / hernia[1]:.1f}×"]
    assert "no external test set" in block and "NIH ChestX-ray14 label rows" in block


@pytest.mark.parametrize("external", [False, True])
def test_a_real_data_report_names_its_label_source_external_test_and_confounders(tmp_path: Path,
                                                                                 external: bool) -> None:
    study = make_study(tmp_path, seeds=[1, 2], bootstrap=30, ingest={"source": "nih"})
    dataset = write_dataset(study, source="nih", label_source="mined from reports by an NLP labeller",
                            official_test="NIH's test_list.txt")
    folder = make_external(study) if external else no_external(study)
    text = study.run(inputs=report.Inputs(study.coverage, dataset, folder))
    block = text.split("## Caveats", 1)[1].split("\n## ", 1)[0]
    assert "**Labels:** mined from reports by an NLP labeller." in block
    assert "**Official test list:** NIH's test_list.txt." in block
    assert ("no external test set" in block) != external
    assert ("evaluated at another site" in block) == external
    for confounder in load_references().confounders:
        assert f"**Known confounder, {confounder.name}:**" in block and confounder.source in block
    assert "Prevalence (this test set)" not in block, "the NIH comparison is for the phantom's sample"


def test_the_coverage_of_every_interval_is_shown_beside_its_nominal_level(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=[1, 2], bootstrap=30, coverage={"value": 0.871})
    text = study.run()
    methods = text.split("## How the uncertainty is computed", 1)[1]
    assert re.search(r"Measured coverage, beside the nominal 95%.\*\* At this run's eligible findings' counts and "
                     r"AUROCs: 87\.1% for one model's AUROC, 87\.1% for a paired difference", methods)
    assert "(measured coverage of that 95% interval in simulation: 87.1%)" in text


@pytest.mark.parametrize("grid", ["apart", "overlap", "another run", None])
def test_the_calibration_section_says_whether_the_loss_causes_it(tmp_path: Path, grid: str | None) -> None:
    study = make_study(tmp_path, seeds=[1, 2], bootstrap=50)
    path = None
    if grid is not None:
        focal = [0.18, 0.19] if grid == "apart" else [0.18, 0.035]
        auroc = {s: study.metrics_of(s)["auroc_mean"] + (0.01 if grid == "another run" else 0.0) for s in (1, 2)}
        arms = [{"name": n, "loss_name": loss, "clahe": c, "baseline": n == "a",
                 "seeds": {str(s): {"ece": e[k], "auroc_mean": auroc[s]} for k, s in enumerate((1, 2))}}
                for n, loss, c, e in (("a", "focal", "on", focal), ("b", "focal", "off", [0.17, 0.2]),
                                      ("c", "bce", "on", [0.03, 0.04]))]
        path = tmp_path / "experiments.json"
        path.write_text(json.dumps({"arms": arms}))
    text = study.run(inputs=report.Inputs(study.coverage, grid=path))
    section = text.split("## Calibration", 1)[1].split("\n## ", 1)[0]
    assert "Skill against the prevalence predictor, with BCa intervals on the same resamples: seed 1 " in section
    assert re.search(r"The reliability curve \(the 2 seeds pooled, all findings pooled; a bin counts where its "
                     r"observed − predicted interval excludes 0\) (stays within noise|over-predicts|under-predicts)",
                     section)
    if grid is None:
        assert "no grid summary was given to this report, so it is not known here" in section
    elif grid == "another run":  # a summary made before the run changed does not speak for it
        assert re.search(r"the grid summary given \(reports/experiments\.json\) is of another run \(its baseline "
                         r"arm's seed 1 has mean AUROC [\d.]+, this run's [\d.]+: re-run the grid", section)
        assert "ECE by loss" not in section
    else:
        grid_line = "In the loss × CLAHE grid (3 arms, reports/experiments.md), the seed models' ECE by loss: focal"
        assert grid_line in section
        assert ("Every focal model lies apart from every model of each other loss" in section) == (grid == "apart")
        assert ("the grid does not show that the loss causes it" in section) == (grid == "overlap")
        assert section.count(": the loss causes it") == (grid == "apart")

"""Whom it fails (`cxrstudy.reporting.subgroups`), against planted truths: a view gap planted in the AP images'
predictions is found (interval excludes 0, AP below PA, beyond noise after Holm), and with nothing planted no gap is
claimed. Then the stage's tracked file and the report's section, on a synthetic study."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrstudy.errors import InputError
from cxrstudy.reporting import report, subgroups
from cxrstudy.reporting.coverage import load_coverage
from cxrstudy.reporting.results import Predictions, read_predictions
from cxrstudy.reporting.study import settings
from tests.synthetic import Study, make_study, write_dataset


def _study(tmp_path: Path) -> tuple[Study, Path]:
    study = make_study(tmp_path, seeds=[1, 2, 3], n_test=700, n_patients=450, bootstrap=200, noise=0.3)
    return study, write_dataset(study, ap_share=0.4)


def _load(study: Study, folder: str = "") -> list[Predictions]:
    return [read_predictions(study.predictions / folder / f"seed_{s}.csv") for s in study.params.seeds]


def _flatten(pred: Predictions, rows: np.ndarray, contrast: float, seed: int) -> Predictions:
    """The `rows`' scores pulled towards noise: what an AP film whose findings show at `contrast` of their PA strength
    would give (1: nothing planted, 0: the model sees nothing there)."""
    noise = np.random.default_rng(seed).random(pred.probs.shape)
    probs = pred.probs.copy()
    probs[rows] = contrast * probs[rows] + (1 - contrast) * noise[rows]
    return dataclasses.replace(pred, probs=probs)


def _subgroup_study(study: Study, dataset: Path, contrast: float) -> subgroups.SubgroupStudy:
    preds, val = _load(study), _load(study, "val")
    found = subgroups.read_groups(dataset.parent, preds[0].images, study.params.report.age_bands)
    ap = next(g.rows for g in found if g.name == "AP")
    preds = [_flatten(p, ap, contrast, k) for k, p in enumerate(preds)]
    chosen = settings(study.params, load_coverage(study.coverage))
    return subgroups.subgroup_study(preds, val, study.params.seeds, found, chosen, study.params.report.age_bands)


def _gap(result: subgroups.SubgroupStudy, axis: str) -> list[subgroups.Gap]:
    return [g for g in result.gaps if g.axis == axis]


def test_a_planted_view_gap_is_found_with_its_sign(tmp_path: Path) -> None:
    study, dataset = _study(tmp_path)
    result = _subgroup_study(study, dataset, contrast=0.3)
    view = _gap(result, "view")
    assert {(g.first, g.second) for g in view} == {("AP", "PA")}
    assert len(view) == 4, "each of the 3 seeds and the ensemble"
    for g in view:
        assert g.auroc is not None, f"{g.model}: the view gap was not tested"
        d = g.auroc.difference
        assert d.value < 0 and d.high < 0, f"{g.model}: AP - PA = {d.value:.3f} [{d.low:.3f}, {d.high:.3f}]"
        assert g.auroc.beyond_noise, f"{g.model}: Holm-adjusted p {g.auroc.p_holm}"
    assert result.axis_findings["view"], "the view means are over at least one eligible finding"
    beyond = {g.axis for g in result.gaps if g.auroc is not None and g.auroc.beyond_noise}
    assert beyond == {"view"}, "only the planted axis goes beyond noise"


def test_with_nothing_planted_no_gap_is_claimed(tmp_path: Path) -> None:
    study, dataset = _study(tmp_path)
    result = _subgroup_study(study, dataset, contrast=1.0)
    tested = [g for g in result.gaps if g.auroc is not None]
    assert len(tested) >= 4 * 4, "every axis's gap is tested for every model"
    claimed = [(g.model, g.axis, g.first, g.auroc.difference.value) for g in tested if g.auroc and g.auroc.beyond_noise]
    assert claimed == []
    view = [g.auroc for g in _gap(result, "view") if g.auroc]
    assert all(t.difference.low <= 0 <= t.difference.high for t in view)


def test_groups_follow_the_contracts_columns_and_the_age_bands(tmp_path: Path) -> None:
    table = pd.DataFrame({"image": ["a", "b", "c", "d", "e"], "sex": ["M", "F", "", "F", "M"],
                          "age": ["39", "40", "59", "60", ""], "view": ["PA", "AP", "lateral", "", "PA"],
                          "follow_up": [0, 1, 0, 3, 2]})
    found = {g.name: g.rows.tolist() for g in subgroups.groups(["a", "b", "c", "d", "e"], table, [40, 60], "t")}
    assert subgroups.age_names([40, 60]) == ["< 40", "40–59", "≥ 60"]
    assert found["M"] == [True, False, False, False, True] and found["F"] == [False, True, False, True, False]
    assert found["< 40"] == [True, False, False, False, False]
    assert found["40–59"] == [False, True, True, False, False]
    assert found["≥ 60"] == [False, False, False, True, False], "an empty age is in no band"
    assert found["PA"] == [True, False, False, False, True] and found["AP"] == [False, True, False, False, False]
    assert found["first"] == [True, False, True, False, False] and found["later"] == [False, True, False, True, True]
    with pytest.raises(InputError, match="test image z"):
        subgroups.groups(["z"], table, [40, 60], "images.csv")


def test_underdiagnosis_is_the_share_of_patients_with_a_finding_called_no_finding() -> None:
    # 4 images with a finding (patients 0..3), 1 without; thresholds 0.5: images 0 and 2 have every score below.
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 1], [0, 0]], dtype=float)
    probs = np.array([[0.1, 0.2], [0.6, 0.1], [0.3, 0.4], [0.2, 0.9], [0.1, 0.1]])
    index = np.arange(5)
    counts = np.ones((3, 5))
    stat, missed, found = subgroups._no_finding_stat(labels, probs, np.array([0.5, 0.5]), index, 5, counts,
                                                     np.ones(5, bool))
    assert stat.point == pytest.approx(2 / 4) and (missed, found) == (2, 2)
    assert np.allclose(stat.draws, 0.5)


def test_the_stage_writes_tracked_numbers_and_the_report_renders_them(tmp_path: Path) -> None:
    study, dataset = _study(tmp_path)
    out = tmp_path / "metrics/subgroups.json"
    subgroups.run(study.params, study.metrics, study.predictions, study.splits, dataset, study.coverage, out)
    tracked = json.loads(out.read_text())
    entry = tracked["subgroups"]
    assert entry["age_bands"] == study.params.report.age_bands and entry["model"] == "ensemble"
    assert set(entry["groups"]) == {"sex.M", "sex.F", "age.<40", "age.40-59", "age.>=60", "view.PA", "view.AP",
                                    "follow-up.first", "follow-up.later"}
    assert all(g["patients"] > 0 for g in entry["groups"].values())
    view = entry["gaps"]["view.AP-vs-PA"]
    assert view["low"] <= view["auroc"] <= view["high"] and {"seed_1", "seed_2", "seed_3"} <= set(view)
    assert "environment" in tracked
    inputs = report.Inputs(study.coverage, dataset, subgroups=out)
    text = study.run(inputs=inputs)
    section = text.split("## Whom it fails", 1)[1].split("\n## ", 1)[0]
    assert "< 40" in section and "AP − PA" in section
    entry["gaps"]["view.AP-vs-PA"]["auroc"] = 0.5  # a stale or edited file is not rendered
    out.write_text(json.dumps(tracked))
    with pytest.raises(InputError, match="re-run the subgroups stage"):
        study.run(inputs=inputs)

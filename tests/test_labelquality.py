"""Label quality (`cxrstudy.reporting.labelquality`): agreement numbers on tables that can be checked by hand and
against scikit-learn, then the whole machinery on the real rows of Majkowska et al. 2019's file: NIH's own mined
labels (its `Finding Labels` column) against the radiologists' on the 1,962 images of NIH's official test list."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from cxrstudy.reporting import labelquality as lq
from cxrstudy.reporting.results import Predictions
from cxrstudy.reporting.study import Settings
from tests.synthetic import NIH_NAMES

SETTINGS = Settings(resamples=200, seed=0, level=0.95, min_positives=8, bins=10, single="percentile",
                    difference="normal")


def _table(tp: int, fn: int, fp: int, tn: int) -> np.ndarray:
    return np.array([[tp, fn, fp, tn]], dtype=np.float64)


def test_agreement_of_a_hand_computed_table() -> None:
    # 8 of the experts' 10 positives are NIH positives, 85 of their 90 negatives NIH negatives.
    sens, spec, kappa = lq.agreement(_table(8, 2, 5, 85))
    observed, expected = 0.93, (13 * 10 + 87 * 90) / 100 ** 2
    assert sens[0] == pytest.approx(0.8) and spec[0] == pytest.approx(85 / 90)
    assert kappa[0] == pytest.approx((observed - expected) / (1 - expected))
    nih = np.repeat([1, 0, 1, 0], [8, 2, 5, 85])
    experts = np.repeat([1, 1, 0, 0], [8, 2, 5, 85])
    assert kappa[0] == pytest.approx(cohen_kappa_score(experts, nih))


def test_agreement_at_its_limits() -> None:
    sens, spec, kappa = lq.agreement(np.vstack([_table(5, 0, 0, 5), _table(0, 5, 5, 0), _table(0, 0, 3, 7)]))
    assert (sens[0], spec[0], kappa[0]) == (1.0, 1.0, 1.0), "perfect agreement"
    assert (sens[1], spec[1], kappa[1]) == (0.0, 0.0, -1.0), "perfect disagreement"
    assert np.isnan(sens[2]) and spec[2] == pytest.approx(0.7), "no expert positive: no sensitivity"


def test_the_embedded_file_is_majkowskas_with_its_counts() -> None:
    experts = lq.load_expert_labels()
    counts = lq.expert_counts(experts)
    assert counts["images"] == 4376 and counts["sets"] == {"test": 1962, "val": 2414}
    assert set(experts.findings) == {"Pneumothorax", "Nodule or mass"}
    assert experts.findings["Nodule or mass"] == ["Nodule", "Mass"]
    raw = pd.read_csv(lq.resources.files("cxrstudy") / "resources" / experts.file, dtype=str)
    assert counts["positives"] == {f: int((raw[f] == "YES").sum()) for f in experts.findings}


def _real_test_rows() -> tuple[Predictions, pd.DataFrame]:
    """Predictions on the real test rows of the file: NIH's mined labels as the labels, and a model that reads the
    experts' labels (plus noise), so that it must score higher against them than against NIH's."""
    experts = lq.load_expert_labels()
    raw = pd.read_csv(lq.resources.files("cxrstudy") / "resources" / experts.file, dtype=str)
    raw = raw[raw["Set Id"] == "test"].sort_values("Image Index").reset_index(drop=True)
    labels = np.array([[float(n in row.split("|")) for n in NIH_NAMES] for row in raw["Finding Labels"]])
    expert = pd.DataFrame({f: (raw[f] == "YES").astype(float) for f in experts.findings})
    truth = np.zeros_like(labels)
    truth[:, NIH_NAMES.index("Pneumothorax")] = expert["Pneumothorax"]
    truth[:, NIH_NAMES.index("Nodule")] = expert["Nodule or mass"]
    truth[:, NIH_NAMES.index("Mass")] = expert["Nodule or mass"]
    rng = np.random.default_rng(0)
    probs = 1 / (1 + np.exp(-(2.0 * truth - 1 + rng.normal(0, 1.0, truth.shape))))
    pred = Predictions(list(raw["Image Index"]), raw["Patient ID"].to_numpy(), labels, probs, NIH_NAMES)
    return pred, pd.concat([raw, expert.add_prefix("expert ")], axis=1)


def test_nihs_labels_against_the_experts_on_the_real_test_rows() -> None:
    pred, raw = _real_test_rows()
    quality = lq.label_quality([pred], [1], lq.load_expert_labels(), SETTINGS)
    assert quality.skipped == []
    found = {f.finding: f for f in quality.findings}
    for finding, covers in (("Pneumothorax", ["Pneumothorax"]), ("Nodule or mass", ["Nodule", "Mass"])):
        nih = np.array([any(n in row.split("|") for n in covers) for row in raw["Finding Labels"]]).astype(int)
        expert = raw[f"expert {finding}"].to_numpy().astype(int)
        f = found[finding]
        assert f.images == 1962 and f.patients == raw["Patient ID"].nunique()
        assert f.expert_positive[0] == expert.sum() and f.nih_positive[0] == nih.sum()
        assert f.sensitivity.value == pytest.approx(nih[expert == 1].mean())
        assert f.specificity.value == pytest.approx(1 - nih[expert == 0].mean())
        assert f.kappa.value == pytest.approx(cohen_kappa_score(expert, nih))
        for e in (f.sensitivity, f.specificity, f.kappa):
            assert e.has_interval and e.low <= e.value <= e.high, f"{finding}: thousands of images carry an interval"
        (model, against_nih, against_experts, gap), = f.auroc
        assert gap is not None and gap.difference.low > 0, f"{finding}: a model reading the experts' labels must " \
            f"score higher against them ({against_experts.value:.3f} vs NIH {against_nih.value:.3f})"


def test_no_interval_from_a_handful_of_patients() -> None:
    pred, _ = _real_test_rows()
    keep = np.arange(30)  # 30 images: too few expert positives for an interval
    few = Predictions([pred.images[i] for i in keep], pred.patients[keep], pred.labels[keep], pred.probs[keep],
                      pred.findings)
    quality = lq.label_quality([few], [1], lq.load_expert_labels(), SETTINGS)
    thin = [f for f in quality.findings if f.expert_positive[1] < SETTINGS.min_positives]
    assert thin, "30 images hold fewer than 8 expert-positive patients of some finding"
    for f in thin:
        assert not f.sensitivity.has_interval and not f.kappa.has_interval and not math.isnan(f.kappa.value)
        assert all(t is None and not b.has_interval for _, _, b, t in f.auroc)

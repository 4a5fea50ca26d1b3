"""`seed_study()`, its tables and the calibration analysis, tested on objects (no files, no Markdown): eligibility by
positive patients, contrasts found by their identity, best-seed claims, the tables' cells, the reliability curve's
shape and whether the loss causes it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrstudy.reporting import naming, reliability, tables
from cxrstudy.reporting.cells import Below, Diff, Table, WithCI
from cxrstudy.reporting.inference import Estimate
from cxrstudy.reporting.results import Predictions, SeedMetrics
from cxrstudy.reporting.study import SeedStudy, Settings, seed_study

SETTINGS = Settings(resamples=300, seed=0, level=0.95, min_positives=8, bins=10, single="bca", difference="normal")
NAMES = ("Clustered", "Spread", "Clear")
SEEDS = [12, 22, 32, 42]


def _predictions(seed: int, boost: float = 0.0) -> Predictions:
    """120 patients, 2 images each. Clustered: 8 positive images in 4 patients; Spread: 12 in 12 patients; Clear:
    30 in 30 patients. A `boost` makes a seed far better on Clear."""
    patients = np.repeat([f"p{i:03d}" for i in range(120)], 2)
    labels = np.zeros((240, 3))
    labels[:8, 0] = 1  # both images of p000..p003
    labels[np.arange(12) * 20, 1] = 1
    labels[np.arange(30) * 8 + 1, 2] = 1
    rng = np.random.default_rng(seed)
    shared = np.random.default_rng(0).normal(0, 1, labels.shape)
    strength = np.array([1.0, 1.0, 0.8 + boost])
    logits = strength * (2 * labels - 1) + shared + rng.normal(0, 0.3, labels.shape) - 1.5
    images = [f"{i:05d}.png" for i in range(240)]
    return Predictions(images, patients, labels, 1 / (1 + np.exp(-logits)), NAMES, tuple(images))


@pytest.fixture(scope="module")
def study() -> SeedStudy:
    preds = [_predictions(s, boost=3.0 if s == 42 else 0.0) for s in SEEDS]
    return seed_study(preds, [_predictions(s) for s in SEEDS], SEEDS, SETTINGS)


def _metrics(study: SeedStudy) -> list[SeedMetrics]:
    return [SeedMetrics(seed, 0.04, m.auroc_mean, 0.3, 0.4, "per-class thresholds maximising F1 on the validation set",
                        m.auroc, dict.fromkeys(NAMES, 0.3), 240) for seed, m in zip(SEEDS, study.per_seed, strict=True)]


def test_eligibility_counts_positive_patients_not_images(study: SeedStudy) -> None:
    assert study.counts.images == {"Clustered": 8, "Spread": 12, "Clear": 30}
    assert study.counts.patients == {"Clustered": 4, "Spread": 12, "Clear": 30}
    assert study.eligible == ["Spread", "Clear"]
    assert set(study.per_seed[0].per_class) == {"Spread", "Clear"}, "no interval below the threshold"
    assert set(study.per_finding) == {"Spread", "Clear"}
    clustered = next(b for b in study.best if b.finding == "Clustered")
    assert clustered.seed is None and clustered.lead is None and not clustered.claimed


def test_contrasts_are_found_by_their_identity(study: SeedStudy) -> None:
    assert [t.contrast.kind for t in study.overall] == [naming.SEED_PAIR] * 6 + [naming.ENSEMBLE_VS_MEAN,
                                                                                 naming.ENSEMBLE_VS_BEST]
    best = study.contrasts(naming.ENSEMBLE_VS_BEST)[0].contrast
    assert best.first == naming.ensemble(4) and best.second == naming.seed(42)
    assert naming.contrast_label(best) == "ensemble − best seed (42)"
    assert naming.column_label(best) == "ensemble − best seed"
    assert all(t.p == t.difference.p and (t.p < 0.05) == t.difference.excludes(0) for t in study.overall)


def test_renaming_the_labels_regroups_nothing(monkeypatch: pytest.MonkeyPatch, study: SeedStudy) -> None:
    monkeypatch.setattr(naming, "label", lambda model: "the same text for every model")
    again = seed_study([_predictions(s, boost=3.0 if s == 42 else 0.0) for s in SEEDS], None, SEEDS, SETTINGS)
    assert [t.contrast for t in again.overall] == [t.contrast for t in study.overall]
    assert [(b.finding, b.seed, b.claimed) for b in again.best] == [(b.finding, b.seed, b.claimed) for b in study.best]


def test_a_seed_is_claimed_best_only_when_it_beats_every_other_seed(study: SeedStudy) -> None:
    clear = next(b for b in study.best if b.finding == "Clear")
    assert clear.seed == 42 and clear.claimed and clear.lead is not None
    assert clear.lead.contrast.first == naming.seed(42) and clear.lead.difference.low > 0
    spread = next(b for b in study.best if b.finding == "Spread")
    assert not spread.claimed


def test_the_variance_and_rank_first_are_on_the_eligible_mean(study: SeedStudy) -> None:
    assert study.variance is not None and study.variance.seeds == 4
    assert max(study.rank_first, key=study.rank_first.__getitem__) == 42
    assert study.per_seed[3].mean.value == pytest.approx(np.mean([study.per_seed[3].auroc[n] for n in study.eligible]))


def test_the_tables_hold_values_with_counts_beside_them(study: SeedStudy) -> None:
    seeds = _metrics(study)
    per_class = tables.per_class_table(seeds, study, None)
    assert per_class.header[-4:-1] == ["Positive patients (test)", "Positive images (test)", "Positive patients (val)"]
    rows = {r[0]: r for r in per_class.rows}
    ci = per_class.header.index("Ensemble 95% CI (BCa)")
    assert rows["Clustered"][ci] is None and rows["Clustered"][-4] == Below(4, 8)
    assert isinstance(rows["Clear"][ci], Estimate) and rows["Clear"][-4] == 30
    best = {r[0]: r for r in tables.best_table(seeds, study).rows}
    assert best["Clustered"][3] == "not ranked (< 8 positive patients)" and best["Clear"][3] == 42
    assert isinstance(best["Clear"][5], Diff) and best["Clear"][6] == "yes"
    per_finding = tables.per_finding_table(study)
    assert per_finding.header[:2] == ["Class", "Positive patients"] and per_finding.header[-1] == "ensemble − best seed"
    assert [r[0] for r in per_finding.rows] == ["Spread", "Clear"]
    overall = tables.overall_table(seeds, study)
    assert isinstance(overall.rows[0][3], WithCI) and overall.rows[-1][0].startswith("ensemble")
    contrasts = tables.contrast_table(study.overall, study)
    assert contrasts.header[2] == "95% CI (paired, normal)" and len(contrasts.rows) == 8


def test_the_calibration_table_sets_each_model_against_the_prevalence_predictor(study: SeedStudy) -> None:
    table = tables.calibration_table(_metrics(study), study, 10)
    assert table.header[1:4] == ["Brier (mean over 3 findings)", "Brier of predicting the prevalence",
                                 "Brier skill score"]
    for row in table.rows:
        assert row[3] == pytest.approx(1 - row[1] / row[2], abs=1e-12)


def test_a_table_refuses_rows_that_do_not_match_its_header() -> None:
    with pytest.raises(ValueError, match="table rows must have 2 cells"):
        Table(["a", "b"], ["l", "r"], [[1]])


# ------------------------------------------------------------------------------------------------ calibration


def test_the_skill_score_is_one_minus_brier_over_the_prevalence_predictors() -> None:
    pred = _predictions(12)
    stat = reliability.skill(pred.labels, pred.probs, pred.patients, 50, 0)
    brier = np.mean((pred.probs - pred.labels) ** 2, axis=0)
    reference = pred.labels.mean(axis=0) * (1 - pred.labels.mean(axis=0))
    assert stat.point == pytest.approx(1 - brier.sum() / reference.sum())
    assert stat.draws.shape == (50,) and stat.jack.shape == (120,) and np.isfinite(stat.draws).all()


def _bin(low: float, gap: tuple[float, float]) -> reliability.Bin:
    return reliability.Bin(low, low + 0.1, 100, low + 0.05, low + 0.05 + sum(gap) / 2,
                           Estimate(sum(gap) / 2, gap[0], gap[1], "bca", 0, 100))


@pytest.mark.parametrize(("gaps", "kind", "over", "under"), [
    ([(-0.2, -0.1), (-0.1, -0.05), (-0.05, 0.05), (0.05, 0.1)], "flatter", [(0.0, 0.2)], [(0.3, 0.4)]),
    ([(0.05, 0.1), (-0.05, 0.05), (-0.2, -0.1)], "steeper", [(0.2, 0.3)], [(0.0, 0.1)]),
    ([(-0.2, -0.1), (-0.05, 0.05), (-0.2, -0.1)], "over", [(0.0, 0.1), (0.2, 0.3)], []),
    ([(-0.05, 0.05), (-0.01, 0.02)], "within", [], []),
])
def test_the_reliability_curve_is_described_by_its_runs_of_bins(gaps: list[tuple[float, float]], kind: str,
                                                                over: list[tuple[float, float]],
                                                                under: list[tuple[float, float]]) -> None:
    found = reliability.shape([_bin(i / 10, g) for i, g in enumerate(gaps)])
    def rounded(runs: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(round(a, 9), round(b, 9)) for a, b in runs]

    assert found.kind == kind and rounded(found.over) == over and rounded(found.under) == under


def test_reliability_bins_pool_the_models_and_bracket_each_gap() -> None:
    preds = [_predictions(s) for s in SEEDS[:2]]
    bins = reliability.reliability_bins([(p.labels, p.probs) for p in preds], preds[0].patients, 10, 200, 0, 0.95,
                                        "percentile")
    assert sum(b.pairs for b in bins) == 2 * preds[0].labels.size
    for b in bins:
        assert b.gap.value == pytest.approx(b.frequency - b.mean_prob)
        assert not b.gap.has_interval or b.gap.low <= b.gap.value <= b.gap.high


THIS_RUN = {0: 0.85, 1: 0.86}  # the baseline arm's seeds' mean AUROC in the grid below, as in this run


def _grid(focal: list[float], bce: list[float], focal_off: list[float]) -> dict[str, object]:
    def arm(name: str, loss: str, clahe: str, ece: list[float]) -> dict[str, object]:
        return {"name": name, "loss_name": loss, "clahe": clahe, "baseline": name == "a",
                "seeds": {str(i): {"ece": e, "auroc_mean": THIS_RUN.get(i)} for i, e in enumerate(ece)}}
    return {"arms": [arm("a", "focal", "on", focal), arm("b", "bce", "on", bce), arm("c", "focal", "off", focal_off)]}


def test_the_loss_causes_the_miscalibration_only_when_its_models_lie_apart() -> None:
    apart = reliability.loss_effect(_grid([0.18, 0.19], [0.03, 0.04], [0.17, 0.2]), "focal", THIS_RUN)
    assert apart is not None and apart.apart and apart.ece["focal"] == [0.17, 0.18, 0.19, 0.2]
    assert apart.clahe_spread == pytest.approx(0.0) and apart.other_run == ""
    overlap = reliability.loss_effect(_grid([0.18, 0.05], [0.03, 0.06], [0.17, 0.2]), "focal", THIS_RUN)
    assert overlap is not None and not overlap.apart
    assert reliability.loss_effect(None, "focal", THIS_RUN) is None
    assert reliability.loss_effect(_grid([0.1, 0.1], [0.1, 0.1], [0.1, 0.1]), "weighted_bce", THIS_RUN) is None
    assert math.isnan(reliability.loss_effect({"arms": _grid([0.1, 0.1], [0.2, 0.2], [0.1, 0.1])["arms"][:2]},  # type: ignore[index]
                                              "focal", THIS_RUN).clahe_spread)  # type: ignore[union-attr]


@pytest.mark.parametrize(("this_run", "why"), [({0: 0.85, 1: 0.87}, "its baseline arm's seed 1 has mean AUROC 0.86, "
                                                                   "this run's 0.870000"),
                                               ({0: 0.85}, "its baseline arm has seeds [0, 1], this run [0]")])
def test_a_grid_of_another_run_is_not_used(this_run: dict[int, float], why: str) -> None:
    effect = reliability.loss_effect(_grid([0.18, 0.19], [0.03, 0.04], [0.17, 0.2]), "focal", this_run)
    assert effect is not None and effect.other_run.startswith(why) and effect.ece == {} and not effect.apart

"""The coverage stage: simulated test sets of known AUROC, every interval method's measured coverage, and the choice
of method and threshold the report then uses; deterministic for its parameters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cxrstudy.errors import InputError
from cxrstudy.reporting import coverage
from cxrstudy.reporting.inference import METHODS
from cxrstudy.reporting.stats import patient_weighted_auroc
from cxrstudy.reporting.study import settings
from tests.conftest import run_cli, tiny_params, tiny_raw, write_params

SMALL = {"reps": 30, "positive_patients": [3, 10], "auroc": [0.8, 0.99]}


def small_params(**report: Any) -> Any:
    return tiny_params(report={"bootstrap": 200, "min_positives": 10, "coverage": SMALL, **report})


@pytest.fixture(scope="module")
def simulated() -> dict[str, Any]:
    return coverage.simulate_all(small_params(), progress=False)


def test_the_simulated_truth_is_the_binormal_auroc() -> None:
    """Scores Phi^-1-shifted by sqrt(2) Phi^-1(a) have population AUROC a: large simulated test sets average it."""
    cfg = small_params(coverage={**SMALL, "patients": 4000, "positive_patients": [3]}).report.coverage
    rng = np.random.default_rng(0)
    patient = coverage.layout(cfg, rng)
    sample = coverage.simulate(cfg, patient, [1500], [0.9], 4, rng)
    ones = np.ones((1, int(patient.max()) + 1))
    for scores in (sample.first, sample.second):
        assert patient_weighted_auroc(sample.labels, scores, patient, ones)[0].mean() == pytest.approx(0.9, abs=0.004)
    positives = [len(set(patient[sample.labels[:, j] == 1])) for j in range(4)]
    assert positives == [1500] * 4


def test_every_method_is_measured_at_every_condition(simulated: dict[str, Any]) -> None:
    for kind in coverage.KINDS:
        for method in METHODS:
            by_k = simulated[kind][method]
            assert sorted(by_k, key=int) == ["3", "10"]
            assert all(sorted(by_a) == ["0.8", "0.99"] for by_a in by_k.values())
            for cell in (c for by_a in by_k.values() for c in by_a.values()):
                assert 0 <= cell["coverage"] <= 1 and cell["width"] > 0 and cell["without_interval"] < 0.2
    assert [f["positive_patients"] for f in simulated["mean"]["findings"]] == [10]
    assert simulated["design"]["resamples"] == 200 and simulated["design"]["min_positives"] == 10


def test_the_stage_is_deterministic(simulated: dict[str, Any]) -> None:
    again = coverage.simulate_all(small_params(), progress=False)
    assert json.dumps(again, sort_keys=True) == json.dumps(simulated, sort_keys=True)


def _grid(values: dict[str, dict[int, float]]) -> dict[str, Any]:
    """A grid in which method m covers values[m][k] at every AUROC of count k, for both kinds."""
    def cells(m: str) -> dict[str, Any]:
        return {str(k): {a: {"coverage": c, "width": 0.1, "without_interval": 0.0} for a in ("0.8", "0.99")}
                for k, c in values[m].items()}
    return {kind: {m: cells(m) for m in METHODS} for kind in coverage.KINDS}


def test_the_method_with_the_best_worst_case_coverage_above_the_threshold_is_chosen() -> None:
    grid = _grid({"percentile": {3: 0.99, 10: 0.90, 20: 0.93}, "bca": {3: 0.5, 10: 0.93, 20: 0.94},
                  "normal": {3: 0.7, 10: 0.91, 20: 0.95}})
    choice = coverage.choose(grid, 0.95, 10, 0.025)
    assert choice["single"]["method"] == "bca" and choice["difference"]["method"] == "bca"
    assert choice["single"]["worst_coverage"] == {"percentile": 0.90, "bca": 0.93, "normal": 0.91}
    assert choice["single"]["supported_threshold"] == 10  # 0.93 and 0.94 from 10 up, within 0.025 of 0.95
    strict = coverage.choose(grid, 0.95, 10, 0.005)
    assert strict["single"]["supported_threshold"] is None


def test_the_report_reads_the_choice_and_looks_up_the_nearest_simulated_condition(tmp_path: Path,
                                                                                  simulated: dict[str, Any]) -> None:
    path = tmp_path / "coverage.json"
    path.write_text(json.dumps(simulated))
    found = coverage.load_coverage(path)
    assert found.method("single") in METHODS and found.threshold == 10
    by_k = simulated["single"][found.method("single")]
    assert found.at("single", 9, 0.97) == by_k["3"]["0.99"]["coverage"]  # the largest count not above 9
    assert found.at("single", 40, 0.81) == by_k["10"]["0.8"]["coverage"]
    assert found.at("single", 2, 0.9) is None  # below every simulated count
    assert settings(small_params(), found).single == found.method("single")


def test_coverage_simulated_for_other_settings_is_refused(tmp_path: Path, simulated: dict[str, Any]) -> None:
    path = tmp_path / "coverage.json"
    path.write_text(json.dumps(simulated))
    with pytest.raises(InputError, match=r"coverage\.json: simulated for report\.min_positives 10 \(params\.yaml: 8\)"):
        settings(small_params(min_positives=8), coverage.load_coverage(path))


@pytest.mark.parametrize("content", ["{", '{"choice": {}}', '{"design": {}, "choice": {"single": {"method": "x"}}}'])
def test_a_missing_or_malformed_coverage_file_is_an_error_naming_it(tmp_path: Path, content: str) -> None:
    with pytest.raises(InputError, match=r"nope\.json: coverage file not found; run the coverage stage"):
        coverage.load_coverage(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(InputError, match=r"bad\.json: malformed coverage file"):
        coverage.load_coverage(bad)


def test_the_stage_runs_from_the_command_line(tmp_path: Path) -> None:
    write_params(tmp_path / "params.yaml", tiny_raw(report={"bootstrap": 100, "min_positives": 10,
                                                            "coverage": {**SMALL, "reps": 10}}))
    done = run_cli(tmp_path, "coverage", "--out", "metrics/coverage.json")
    assert done.returncode == 0, done.stderr
    written = json.loads((tmp_path / "metrics/coverage.json").read_text())
    assert set(written["choice"]) == {"single", "difference", "threshold", "tolerance"}
    assert "environment" in written and "coverage, difference:" in done.stdout


def test_without_resamples_there_is_nothing_to_measure_and_no_method(tmp_path: Path) -> None:
    """report.bootstrap: 0 turns the report's intervals off: the stage records that, and the report reads it."""
    result = coverage.simulate_all(small_params(bootstrap=0), progress=False)
    assert result["choice"]["single"]["method"] == result["choice"]["difference"]["method"] == "none"
    path = tmp_path / "coverage.json"
    path.write_text(json.dumps(result))
    assert settings(small_params(bootstrap=0), coverage.load_coverage(path)).difference == "none"


def test_more_positive_patients_than_patients_is_refused_naming_the_parameters() -> None:
    with pytest.raises(InputError, match=r"report\.coverage\.positive_patients: 200 is not below "
                                         r"report\.coverage\.patients \(128\)"):
        coverage.simulate_all(small_params(coverage={**SMALL, "positive_patients": [3, 200]}), progress=False)

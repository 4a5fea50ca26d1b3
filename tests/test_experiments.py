"""`python -m cxrstudy experiments`: DVC experiments read from `dvc exp show --json`, each arm's predictions from its
own commit, compared with the baseline arm on the same test patients; and a two-arm grid run for real (slow)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from cxrstudy.errors import InputError
from cxrstudy.reporting import experiments
from tests.conftest import cli, copy_project, git, sh, table_after, tiny_params, tiny_raw
from tests.synthetic import make_study

SEEDS = [12, 22]


def _entry(rev: str, name: str, params: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    data = {"rev": rev, "timestamp": None, "params": {"params.yaml": {"data": params}}, "metrics": metrics,
            "deps": {}, "outs": {}, "meta": {}}
    return {"rev": rev, "name": name, "data": data, "error": None, "experiments": None}


def arm_commit(repo: Path, tmp: Path, name: str, loss: str, clahe: bool, offset: float) -> dict[str, Any]:
    """Commit a synthetic arm's metrics and predictions in `repo`; return its `dvc exp show` entry."""
    study = make_study(tmp / name, seeds=SEEDS, bootstrap=200, offset=dict.fromkeys(SEEDS, offset))
    for folder in ("metrics", "predictions"):
        shutil.rmtree(repo / folder, ignore_errors=True)
        shutil.copytree(study.root / folder, repo / folder)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", name, "--allow-empty")
    params = {"seeds": SEEDS, "ingest": {"source": "phantom"}, "split": {"seed": 0},
              "preprocess": {"clahe": clahe}, "train": {"loss": {"name": loss, "alpha": -1, "gamma": 2.0}}}
    metrics = {f"metrics/eval/seed_{s}.json": {"data": study.metrics_of(s)} for s in SEEDS}
    return _entry(git(repo, "rev-parse", "HEAD"), name, params, metrics)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """A git repository with a baseline commit and three experiment commits; their `dvc exp show --json`."""
    repo = tmp_path_factory.mktemp("repo")
    tmp = tmp_path_factory.mktemp("arms")
    git(repo, "init", "-q")
    base = arm_commit(repo, tmp, "main", "focal", True, 0.0)
    runs = [arm_commit(repo, tmp, "focal-clahe", "focal", True, 0.0),
            arm_commit(repo, tmp, "bce-clahe", "bce", True, 0.8),
            arm_commit(repo, tmp, "focal-noclahe", "focal", False, -0.05)]
    queued = _entry("f" * 40, "wbce-noclahe", {"seeds": SEEDS}, {})
    base["experiments"] = [{"revs": [r], "executor": None, "name": r["name"]} for r in runs]
    base["experiments"].append({"revs": [queued], "executor": {"state": "queued"}, "name": "wbce-noclahe"})
    workspace = {**base, "rev": "workspace", "experiments": None}
    return repo, [workspace, base]


def test_exp_show_json_is_parsed_into_experiments(grid: tuple[Path, list[dict[str, Any]]]) -> None:
    found, skipped = experiments.parse_exp_show(grid[1])
    assert [e.name for e in found] == ["main", "focal-clahe", "bce-clahe", "focal-noclahe"]
    assert found[0].baseline and not found[1].baseline
    assert [s.seed for s in found[2].seeds] == SEEDS
    assert found[2].loss == "bce" and found[3].clahe == "off" and found[1].loss == "focal (gamma 2.0, alpha off)"
    assert skipped == ["wbce-noclahe (queued)"]


def test_the_arm_that_repeats_the_baseline_commit_is_the_baseline(grid: tuple[Path, list[dict[str, Any]]]) -> None:
    found, _ = experiments.parse_exp_show(grid[1])
    arms, base = experiments.arms_of(found, None)
    assert [a.name for a in arms] == ["focal-clahe", "bce-clahe", "focal-noclahe"]
    assert base.name == "focal-clahe"
    assert experiments.arms_of(found, "bce-clahe")[1].name == "bce-clahe"
    with pytest.raises(InputError, match="--baseline nope: no such experiment"):
        experiments.arms_of(found, "nope")


def test_the_comparison_pairs_each_arm_with_the_baseline(grid: tuple[Path, list[dict[str, Any]]],
                                                         tmp_path: Path) -> None:
    repo, data = grid
    (tmp_path / "exp.json").write_text(json.dumps(data))
    out = tmp_path / "experiments.md"
    experiments.run(tiny_params(seeds=SEEDS, report={"bootstrap": 200}), tmp_path / "exp.json", repo, out)
    text = out.read_text()
    assert text.startswith("# Phantom run — Experiment comparison: loss × CLAHE")
    deltas = table_after(text, "## Against the baseline")
    assert [r[0] for r in deltas[1:]] == ["bce-clahe", "focal-noclahe"]
    bce = next(r for r in deltas if r[0] == "bce-clahe")
    assert bce[1].endswith("✱") and bce[4] == "yes"
    arms = table_after(text, "## Arms")
    assert arms[1][0] == "focal-clahe (baseline)"
    clahe = table_after(text, "## CLAHE on − off, per loss")
    assert clahe[1][0].startswith("focal")
    assert "Not compared (no metrics yet): wbce-noclahe (queued)." in text


def test_the_differences_match_the_arms_own_numbers(grid: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    repo, data = grid
    (tmp_path / "exp.json").write_text(json.dumps(data))
    out = tmp_path / "experiments.md"
    experiments.run(tiny_params(seeds=SEEDS, report={"bootstrap": 100}), tmp_path / "exp.json", repo, out)
    arms = table_after(out.read_text(), "## Arms")
    point = {r[0].split()[0]: float(r[6].split()[0]) for r in arms[1:]}
    deltas = table_after(out.read_text(), "## Against the baseline")
    for row in deltas[1:]:
        assert float(row[1].split()[0]) == pytest.approx(point[row[0]] - point["focal-clahe"], abs=2e-4)


def test_arms_on_different_test_sets_are_refused(grid: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    repo, data = grid
    data = json.loads(json.dumps(data))
    other = make_study(tmp_path / "other", seeds=SEEDS, data_seed=9)
    shutil.rmtree(repo / "predictions")
    shutil.copytree(other.predictions, repo / "predictions")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "other test set")
    data[1]["experiments"][2]["revs"][0]["data"]["rev"] = git(repo, "rev-parse", "HEAD")
    data[1]["experiments"][2]["revs"][0]["data"]["params"]["params.yaml"]["data"]["split"] = {"seed": 5}
    (tmp_path / "exp.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"different images .*split\.seed"):
        experiments.run(tiny_params(seeds=SEEDS), tmp_path / "exp.json", repo, tmp_path / "out.md")
    git(repo, "reset", "-q", "--hard", "HEAD~1")


def test_a_file_that_is_not_exp_show_output_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "exp.json"
    bad.write_text('{"rev": "workspace"}')
    with pytest.raises(InputError, match=r"exp\.json: not `dvc exp show --json` output"):
        experiments.run(tiny_params(), bad, tmp_path, tmp_path / "c.md")


# ------------------------------------------------------------------------------------------------ for real


@pytest.mark.slow
@pytest.mark.infra  # the experiment grid: DVC experiments queued and run, about 1.5 minutes
def test_a_two_arm_grid_runs_end_to_end(tmp_path: Path) -> None:
    """queue -> run -> compare -> render, at toy size: CLAHE on (the baseline) and off, through `dvc exp`."""
    root = copy_project(tmp_path / "project",
                        drop=("dvc.lock", "reports/report.md", "reports/experiments.md", "metrics", "predictions"),
                        params=tiny_raw(report={"bootstrap": 100, "min_positives": 3}))
    sh(["dvc", "repro"], root)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "baseline")
    sh(["dvc", "exp", "run", "--queue", "-S", "preprocess.clahe=true,false"], root)
    sh(["dvc", "exp", "run", "--run-all", "--jobs", "1"], root)
    sh(cli("experiments", "--out", "reports/experiments.md"), root)
    text = (root / "reports/experiments.md").read_text()
    arms = table_after(text, "## Arms")
    assert len(arms) == 3 and sorted(r[3] for r in arms[1:]) == ["off", "on"]
    assert next(r for r in arms[1:] if r[0].endswith("(baseline)"))[3] == "on"
    deltas = table_after(text, "## Against the baseline")
    assert len(deltas) == 2 and not math.isnan(float(deltas[1][1].split()[0]))
    assert "## CLAHE on − off, per loss" in text

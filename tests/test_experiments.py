"""`python -m cxrstudy experiments`: DVC experiments read from `dvc exp show --json`, each arm's predictions from its
own commit, compared with the baseline arm on the same test patients; and a two-arm grid run for real (slow)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cxrstudy.errors import InputError
from cxrstudy.params import Params
from cxrstudy.reporting import experiments, naming
from cxrstudy.reporting import grid as arms
from cxrstudy.reporting.inference import Stat
from cxrstudy.reporting.study import Settings
from tests.conftest import cli, copy_project, git, sh, table_after, tiny_params, tiny_raw
from tests.synthetic import make_external, make_study, write_coverage

SEEDS = [12, 22]


def _entry(rev: str, name: str, params: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    data = {"rev": rev, "timestamp": None, "params": {"params.yaml": {"data": params}}, "metrics": metrics,
            "deps": {}, "outs": {}, "meta": {}}
    return {"rev": rev, "name": name, "data": data, "error": None, "experiments": None}


def arm_commit(repo: Path, tmp: Path, name: str, loss: str, clahe: bool, offset: float,
               external: dict[str, Any] | None = None) -> dict[str, Any]:
    """Commit a synthetic arm's metrics and predictions in `repo`, with its predictions at an external site made by
    `make_external(**external)` (default: signal 1.0); return its `dvc exp show` entry."""
    study = make_study(tmp / name, seeds=SEEDS, bootstrap=200, offset=dict.fromkeys(SEEDS, offset))
    make_external(study, **{"strength": 1.0, **(external or {})})
    for folder in ("metrics", "predictions"):
        shutil.rmtree(repo / folder, ignore_errors=True)
        shutil.copytree(study.root / folder, repo / folder)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", name, "--allow-empty")
    params = {"seeds": SEEDS, "ingest": {"source": "phantom"}, "split": {"seed": 0},
              "preprocess": {"clahe": clahe}, "train": {"loss": {"name": loss, "alpha": -1, "gamma": 2.0},
                                                       "lr": 0.002, "schedule": "onecycle", "epochs": 5,
                                                       "optimizer": "adamw"}}
    metrics = {f"metrics/eval/seed_{s}.json": {"data": study.metrics_of(s)} for s in SEEDS}
    return _entry(git(repo, "rev-parse", "HEAD"), name, params, metrics)


def make_grid(repo: Path, tmp: Path, noclahe_offset: float, noclahe_external: dict[str, Any]) -> list[dict[str, Any]]:
    """A baseline commit and three experiment commits in a new repository `repo`; their `dvc exp show --json`.
    The CLAHE-off arm has `noclahe_offset` more signal than the focal baseline internally and its external
    predictions from `make_external(**noclahe_external)` (the others': signal 1.0)."""
    git(repo, "init", "-q")
    base = arm_commit(repo, tmp, "main", "focal", True, 0.0)
    runs = [arm_commit(repo, tmp, "focal-clahe", "focal", True, 0.0),
            arm_commit(repo, tmp, "bce-clahe", "bce", True, 0.8),
            arm_commit(repo, tmp, "focal-noclahe", "focal", False, noclahe_offset, external=noclahe_external)]
    queued = _entry("f" * 40, "wbce-noclahe", {"seeds": SEEDS}, {})
    base["experiments"] = [{"revs": [r], "executor": None, "name": r["name"]} for r in runs]
    base["experiments"].append({"revs": [queued], "executor": {"state": "queued"}, "name": "wbce-noclahe"})
    workspace = {**base, "rev": "workspace", "experiments": None}
    return [workspace, base]


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """The grid with a planted truth at the external site: without CLAHE, the focal arm loses more there (its
    signal 0.3 against 1.0)."""
    repo = tmp_path_factory.mktemp("repo")
    return repo, make_grid(repo, tmp_path_factory.mktemp("arms"), -0.05, {"strength": 0.3})


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


def render(data: list[dict[str, Any]], repo: Path, tmp_path: Path, params: Params) -> str:
    (tmp_path / "exp.json").write_text(json.dumps(data))
    out = tmp_path / "experiments.md"
    experiments.run(params, tmp_path / "exp.json", repo, out,
                    coverage_file=write_coverage(tmp_path / "coverage.json", params))
    return out.read_text()


@pytest.fixture(scope="module")
def rendered(grid: tuple[Path, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory) -> str:
    return render(grid[1], grid[0], tmp_path_factory.mktemp("render"), tiny_params(seeds=SEEDS,
                                                                                   report={"bootstrap": 200}))


def test_each_question_is_one_family_and_the_arms_are_paired_by_it(rendered: str) -> None:
    assert rendered.startswith("# Phantom run — Experiment comparison: loss × CLAHE")
    loss = table_after(rendered, "## Loss, at each CLAHE setting")
    assert [r[0].split()[:3] for r in loss[1:]] == [["bce-clahe", "−", "focal-clahe"]]
    assert loss[1][2].endswith("✱") and loss[1][4] == "yes"
    clahe = table_after(rendered, "## CLAHE on − off, per loss")
    assert [r[0].split()[:3] for r in clahe[1:]] == [["focal-clahe", "−", "focal-noclahe"]]
    assert "## Other arms against the baseline" not in rendered
    arms = table_after(rendered, "## Arms")
    assert arms[1][0] == "focal-clahe (baseline)"
    assert "Not compared (no metrics yet): wbce-noclahe (queued)." in rendered


def test_every_interval_column_says_what_noise_it_holds(rendered: str) -> None:
    headers = [h for table in (table_after(rendered, "## Arms"), table_after(rendered, "## Loss, at each CLAHE"))
               for h in table[0] if "CI" in h]
    assert headers and all("test sampling only" in h or "test sampling + training" in h for h in headers), headers
    assert any("descriptive, not tested" in h for h in headers)


EXTERNAL = "## At the external site: does CLAHE generalise better?"


def test_every_arm_is_tested_at_the_external_site_and_the_planted_clahe_effect_is_found(rendered: str) -> None:
    """Planted: without CLAHE the focal arm's external signal is 0.3 instead of 1.0, so it loses more there."""
    at_sites = table_after(rendered, EXTERNAL)
    assert [r[0] for r in at_sites[1:]] == ["focal-clahe", "bce-clahe", "focal-noclahe"]
    assert all("test sampling only" in h for h in at_sites[0][3:6])
    for row in at_sites[1:]:
        internal, external, drop = (float(c.split()[0]) for c in row[3:6])
        assert drop == pytest.approx(internal - external, abs=2e-4)
    drops = {r[0]: float(r[5].split()[0]) for r in at_sites[1:]}
    assert drops["focal-noclahe"] > drops["focal-clahe"] + 0.1
    (header, row) = table_after(rendered, "Each row is the drop with CLAHE on − the drop with CLAHE off")
    assert row[0].split()[:3] == ["focal-clahe", "−", "focal-noclahe"] and row[4] == "yes"
    assert float(row[1].split()[0]) == pytest.approx(drops["focal-clahe"] - drops["focal-noclahe"], abs=2e-4)
    assert "beyond noise, CLAHE loses less at the other site" in rendered


def test_without_a_planted_effect_the_clahe_question_is_within_noise(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Null: the same signal with and without CLAHE at both sites, only the seeds' noise at the external site
    differs."""
    repo = tmp_path_factory.mktemp("flat")
    data = make_grid(repo, tmp_path_factory.mktemp("flat-arms"), 0.0, {"noise_seed": 200})
    text = render(data, repo, tmp_path_factory.mktemp("flat-render"), tiny_params(seeds=SEEDS,
                                                                                  report={"bootstrap": 200}))
    (_, row) = table_after(text, "Each row is the drop with CLAHE on − the drop with CLAHE off")
    assert row[4] == "no" and "so this grid cannot say that CLAHE" in text


def test_arms_without_an_external_site_are_said_to_be_so(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    data = make_grid(repo, tmp_path / "arms", -0.05, {"strength": 0.3})
    (repo / "metrics/external/seed_12.json").write_text(json.dumps({"seed": 12, "external": None}))
    git(repo, "commit", "-qam", "no external site")
    data[1]["experiments"][2]["revs"][0]["data"]["rev"] = git(repo, "rev-parse", "HEAD")
    text = render(data, repo, tmp_path, tiny_params(seeds=SEEDS, report={"bootstrap": 50}))
    assert "Not compared at an external site: focal-noclahe has no external test set (ingest.external: none)." in text
    assert json.loads((tmp_path / "experiments.json").read_text())["external"] is None


def test_the_per_class_table_carries_its_counts(rendered: str) -> None:
    per_class = table_after(rendered, "## Per-class AUROC, mean over each arm's seeds")
    assert per_class[0][:3] == ["Class", "Positive patients (test)", "Positive images (test)"]
    assert all(int(r[1]) <= int(r[2]) for r in per_class[1:])


def test_the_shared_settings_are_said_to_be_tuned_for_the_baseline(rendered: str) -> None:
    assert re.search(r"Every arm shares the baseline's training settings \(train\.lr [\d.e-]+, train\.schedule "
                     r"\w+, train\.epochs \d+, train\.optimizer \w+\), which were tuned for the\s+baseline", rendered)


def test_the_ranking_points_to_the_family_that_tests_the_leader(rendered: str) -> None:
    line = next(x for x in rendered.splitlines() if x.startswith("The first, "))
    assert line.startswith("The first, bce-clahe")
    assert "this pair's verdict, corrected for multiplicity, is in the loss" in line


@pytest.mark.parametrize("second", [0.801, 0.70])
def test_the_ranking_says_whether_an_untested_leader_leads_beyond_noise(second: float) -> None:
    """The baseline "highest" while within noise of the runner-up must not read as a win."""
    rng = np.random.default_rng(0)

    def arm(name: str, value: float, lr: float) -> arms.Arm:
        info = arms.ArmInfo(name, "0" * 40, {"train.lr": lr}, "focal", "on", [])
        return arms.Arm(info, [Stat(value, value + rng.normal(0, 0.01, 400), np.zeros(3))] * 2, None, None)

    first, other = arm("a", 0.80, 0.1), arm("b", second, 0.2)
    r = arms.ranking([first, other], Settings(400, 0, 0.95, 8, 10, "bca", "normal"), {naming.OTHER: []})
    assert r["lead_kind"] is None and [a.info.name for a in r["eligible"]] == (["b", "a"] if second > 0.8 else
                                                                                ["a", "b"])
    assert r["lead"].difference.excludes(0) == (second < 0.8)


def test_the_differences_match_the_arms_own_numbers(rendered: str) -> None:
    arms = table_after(rendered, "## Arms")
    point = {r[0].split()[0]: float(r[6].split()[0]) for r in arms[1:]}
    for heading in ("## Loss, at each CLAHE setting", "## CLAHE on − off, per loss"):
        for row in table_after(rendered, heading)[1:]:
            first, _, second = row[0].split()[:3]
            assert float(row[1].split()[0]) == pytest.approx(point[first] - point[second], abs=2e-4)
            assert float(row[2].split()[0]) == float(row[1].split()[0])


def test_the_grid_summary_records_each_arms_calibration(grid: tuple[Path, list[dict[str, Any]]],
                                                        rendered: str, tmp_path: Path) -> None:
    render(grid[1], grid[0], tmp_path, tiny_params(seeds=SEEDS, report={"bootstrap": 50}))
    summary = json.loads((tmp_path / "experiments.json").read_text())
    by_name = {a["name"]: a for a in summary["arms"]}
    assert set(by_name) == {"focal-clahe", "bce-clahe", "focal-noclahe"} and by_name["focal-clahe"]["baseline"]
    assert by_name["bce-clahe"]["loss_name"] == "bce" and by_name["focal-noclahe"]["clahe"] == "off"
    assert set(by_name["bce-clahe"]["seeds"]) == {"12", "22"}
    assert all(isinstance(v["ece"], float) for a in summary["arms"] for v in a["seeds"].values())
    external = summary["external"]
    assert external["site"] == "CheXpert-shaped phantom (site B)" and set(external["arms"]) == set(by_name)
    (clahe,) = external["clahe_drop"]
    assert (clahe["on"], clahe["off"]) == ("focal-clahe", "focal-noclahe") and clahe["high"] < 0


def _arm(name: str, loss: str, clahe: bool, **extra: Any) -> arms.Arm:
    params = {"train.loss.name": loss, "preprocess.clahe": clahe, "train.lr": 0.002, **extra}
    info = arms.ArmInfo(name, "0" * 40, params, loss, "on" if clahe else "off", [])
    return arms.Arm(info, [Stat(0.8, np.full(5, 0.8), np.full(3, 0.8))], None, None)


def test_no_comparison_sits_in_two_families() -> None:
    """The six-arm grid: the loss question compares losses at equal CLAHE (4), the CLAHE question on - off at equal
    loss (3); an arm that also changes the learning rate is compared with the baseline on its own."""
    six = [_arm(f"{loss}-{c}", loss, c) for loss in ("focal", "bce", "weighted_bce") for c in (True, False)]
    six.append(_arm("focal-lr", "focal", True, **{"train.lr": 0.01}))
    found = arms.families(six, six[0])
    named = {k: [(a.info.name, b.info.name) for a, b in v] for k, v in found.items()}
    assert named[naming.LOSS] == [("bce-True", "focal-True"), ("bce-False", "focal-False"),
                                  ("weighted_bce-True", "focal-True"), ("weighted_bce-False", "focal-False")]
    assert named[naming.CLAHE] == [("focal-True", "focal-False"), ("bce-True", "bce-False"),
                                   ("weighted_bce-True", "weighted_bce-False")]
    assert named[naming.OTHER] == [("focal-lr", "focal-True")]
    pairs = [frozenset(p) for v in named.values() for p in v]
    assert len(pairs) == len(set(pairs))


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
        experiments.run(tiny_params(seeds=SEEDS), tmp_path / "exp.json", repo, tmp_path / "out.md",
                        coverage_file=write_coverage(tmp_path / "coverage.json", tiny_params(seeds=SEEDS)))
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
    clahe = table_after(text, "## CLAHE on − off, per loss")
    assert len(clahe) == 2 and not math.isnan(float(clahe[1][1].split()[0]))
    # the tiny parameters have no external site: each arm's external stage says so in its commit, and the page too
    assert json.loads((root / "reports/experiments.json").read_text())["external"] is None
    assert re.search(r"Not compared at an external site: \S+ has no external test set \(ingest\.external: none\)\.",
                     text)

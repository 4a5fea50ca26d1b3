"""`python -m cxrstudy compare`: head − base on the same test patients, with paired intervals, for a PR comment."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cxrstudy.errors import InputError
from cxrstudy.params import parse_params
from cxrstudy.reporting import compare, naming
from cxrstudy.reporting.coverage import load_coverage
from cxrstudy.reporting.results import read_predictions
from cxrstudy.reporting.study import Settings, settings
from tests.conftest import ROOT, git, markdown_tables, run_cli, tiny_raw, write_params
from tests.synthetic import STUDY_SEEDS, Study, make_study, write_coverage


def rows(text: str) -> dict[str, list[str]]:
    """The body rows of the first table in `text`, by their first cell."""
    return {row[0]: row[1:] for row in markdown_tables(text)[0][2:]}


def sides(study: Study) -> dict[int, object]:
    return {s: read_predictions(study.predictions / f"seed_{s}.csv") for s in STUDY_SEEDS}


def study_settings(study: Study) -> Settings:
    return settings(study.params, load_coverage(study.coverage))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Study:
    return make_study(tmp_path_factory.mktemp("base"), bootstrap=300)


def test_the_same_predictions_change_nothing(base: Study) -> None:
    result = compare.compare(sides(base), sides(base), study_settings(base))  # type: ignore[arg-type]
    assert [naming.label(r.model) for r in result.rows] == [*(f"seed {s}" for s in STUDY_SEEDS), "mean of 4 seeds",
                                                            "ensemble"]
    assert all(r.tested.difference.value == 0 and not r.tested.beyond_noise for r in result.rows)
    assert {r.tested.contrast.kind for r in result.rows} == {naming.HEAD_VS_BASE}
    assert "No change goes beyond test-sampling noise." in compare.markdown(result, "`main`", "`predictions`")


def test_a_better_seed_is_reported_beyond_noise_and_the_others_are_not(base: Study, tmp_path: Path) -> None:
    head = make_study(tmp_path, bootstrap=300, offset={42: 0.6})
    result = compare.compare(sides(base), sides(head), study_settings(base))  # type: ignore[arg-type]
    by_name = {naming.label(r.model): r for r in result.rows}
    assert by_name["seed 42"].tested.beyond_noise and by_name["seed 42"].tested.difference.low > 0
    assert all(by_name[f"seed {s}"].tested.difference.value == 0 for s in (12, 22, 32))
    text = compare.markdown(result, "`main`", "`predictions`")
    table = rows(text)
    assert table["seed 42"][-1] == "yes" and table["seed 12"][-1] == "no"
    assert table["seed 42"][2] == f"{by_name['seed 42'].head - by_name['seed 42'].base:+.4f}"
    assert re.search(r"Beyond test-sampling noise: seed 42", text)
    assert "training (seed) sd" in text


def test_different_test_sets_cannot_be_paired(base: Study, tmp_path: Path) -> None:
    other = make_study(tmp_path, bootstrap=300, data_seed=8)
    with pytest.raises(InputError, match="different images"):
        compare.compare(sides(base), sides(other), study_settings(base))  # type: ignore[arg-type]


def _repo_with_a_better_head(base: Study, tmp_path: Path) -> Path:
    """A git repo whose committed predictions are `base` and whose workspace has seed 12 clearly better."""
    repo = tmp_path / "repo"
    shutil.copytree(base.predictions, repo / "predictions")
    _project_files(repo, base)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    better = make_study(tmp_path / "head", bootstrap=300, offset={12: 0.6})
    shutil.rmtree(repo / "predictions")
    shutil.copytree(better.predictions, repo / "predictions")
    return repo


def _project_files(repo: Path, base: Study) -> None:
    """What `compare` reads besides the predictions: params, the split's lists, the coverage stage's choice."""
    raw = tiny_raw(seeds=STUDY_SEEDS, report={"bootstrap": 200})
    write_params(repo / "params.yaml", raw)
    shutil.copytree(base.splits, repo / "data/splits")
    write_coverage(repo / "metrics/coverage.json", parse_params(raw))


def test_the_command_reads_the_base_from_a_git_revision(base: Study, tmp_path: Path) -> None:
    repo = _repo_with_a_better_head(base, tmp_path)
    done = run_cli(repo, "compare", "--base", "HEAD")
    assert done.returncode == 0, done.stderr
    assert rows(done.stdout)["seed 12"][-1] == "yes"
    assert "head (`predictions`) minus base (`HEAD`)" in done.stdout


def test_a_base_revision_without_predictions_is_an_error_naming_it(base: Study, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(base.predictions, repo / "predictions")
    _project_files(repo, base)
    (repo / "README").write_text("x\n")
    git(repo, "init", "-q")
    git(repo, "add", "README", "params.yaml")
    git(repo, "commit", "-qm", "no predictions")
    done = run_cli(repo, "compare", "--base", "HEAD", "--out", "comment.md")
    assert done.returncode == 2
    assert "HEAD:predictions/seed_12.csv: no such file at that revision" in done.stderr
    assert "Traceback" not in done.stderr and not (repo / "comment.md").exists()


def test_the_command_wants_exactly_one_base(tmp_path: Path) -> None:
    write_params(tmp_path / "params.yaml", tiny_raw())
    done = run_cli(tmp_path, "compare")
    assert done.returncode == 2 and "exactly one of --base REV" in done.stderr


def test_the_pr_comment_carries_the_paired_block(base: Study, tmp_path: Path) -> None:
    """scripts/ci/comment_body.py puts `compare --base` into the comment, under the metrics diff."""
    repo = _repo_with_a_better_head(base, tmp_path)
    (repo / "dvc.yaml").write_text("stages: {}\n")
    out = tmp_path / "body.md"
    script = ROOT / "scripts" / "ci" / "comment_body.py"
    done = subprocess.run([sys.executable, str(script), "--repo-dir", str(repo), "--out", str(out), "--base", "HEAD",
                           "--marker", "t"], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"})
    assert done.returncode == 0, done.stderr
    body = out.read_text()
    assert "head (`predictions`) minus base (`HEAD`)" in body
    assert rows(body.split("head (`predictions`)")[1])["seed 12"][-1] == "yes"
    assert "could not say" not in body


@pytest.mark.parametrize(("rev", "message"), [
    ("no-such-branch", "no-such-branch: unknown revision in . (no branch, tag or commit of that name"),
    ("-n", "'-n': not a revision (a branch, tag or commit; it may not start with '-')"),
    ("--output=/tmp/x", "'--output=/tmp/x': not a revision"),
])
def test_an_unknown_or_option_like_revision_says_so_and_never_reaches_git_as_an_option(base: Study, tmp_path: Path,
                                                                                     rev: str, message: str) -> None:
    repo = _repo_with_a_better_head(base, tmp_path)
    done = run_cli(repo, "compare", f"--base={rev}")
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "not in git" not in done.stderr and "Traceback" not in done.stderr and not Path("/tmp/x").exists()


@pytest.mark.parametrize("side", ["head", "base"])
def test_predictions_that_differ_from_the_split_are_refused_on_either_side(base: Study, tmp_path: Path,
                                                                          side: str) -> None:
    repo = _repo_with_a_better_head(base, tmp_path)
    path = repo / "predictions/seed_22.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[3], lines[5] = lines[5], lines[3]  # two swapped rows
    path.write_text("".join(lines))
    if side == "base":
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "swapped at base")
        shutil.copy(base.predictions / "seed_22.csv", path)
    done = run_cli(repo, "compare", "--base", "HEAD")
    where = "HEAD:predictions/seed_22.csv" if side == "base" else "predictions/seed_22.csv"
    assert done.returncode == 2 and f"{where}: line 4 holds image" in done.stderr, done.stderr
    assert "rows swapped or reordered" in done.stderr

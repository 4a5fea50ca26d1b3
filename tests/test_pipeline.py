"""End to end: `dvc repro` in a temporary git clone of the project, with tiny parameters."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, UP_TO_DATE, copy_repro, git, sh, shown, table_rows, tiny_raw, tree_bytes, write_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(repro_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project with the tiny parameters after `dvc repro`, its results committed (conftest.repro_project)."""
    return copy_repro(repro_project, tmp_path_factory.mktemp("pipeline") / "project")


# --------------------------------------------------------------------------------------------------------------------
# The README's commands, as a newcomer types them: in a new shell, with nothing but what the README says

VENV = Path(sys.prefix)  # the environment `make` made, which a copy of the project links to as its own .venv
MAKE_STAMPS = (".cxrstudy-installed", ".cxrstudy-dev-installed")


def readme_blocks(section: str) -> list[str]:
    """The ```bash blocks of a section (`## section`) of README.md, in order."""
    text = (ROOT / "README.md").read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```bash\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def with_the_venv(project: Path) -> Path:
    """`project` with this environment as its `.venv`, as `make` left it: the files its installs depend on are older
    than its stamps, so `make` installs nothing (pip is off: were it to, the command would fail, not download)."""
    if not all((VENV / stamp).is_file() for stamp in MAKE_STAMPS):
        pytest.skip(f"the tests do not run in an environment that `make` made ({VENV} has no {MAKE_STAMPS[0]})")
    if not (project / ".venv").exists():
        (project / ".venv").symlink_to(VENV)
    made = min((VENV / stamp).stat().st_mtime for stamp in MAKE_STAMPS) - 60
    for name in ("requirements.lock", "requirements-dev.lock", "pyproject.toml", "docker/install-deps.sh"):
        os.utime(project / name, (made, made))
    return project


def new_shell(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a new login on a bare machine: a home, the system's PATH, nothing of this test run's."""
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PIP_NO_INDEX": "1",
            **extra}


def test_the_readme_quick_start_works_as_typed_each_block_in_a_new_shell(project: Path, tmp_path: Path) -> None:
    """The Quick start's blocks, each in a new bash (no profile, no venv on PATH), on the project as published
    (its results committed), then nothing for git to see. `make test` runs as typed, on one quick test file in one
    process (PYTEST_ADDOPTS, TEST_WORKERS), so as not to run this suite inside itself."""
    _commit(project, "as published")
    with_the_venv(project)
    blocks = readme_blocks("Quick start")
    assert blocks and "make repro" in blocks[0] and "source .venv/bin/activate" in blocks[1], blocks
    env = new_shell(tmp_path / "home", PYTEST_ADDOPTS="-p no:cacheprovider tests/test_losses.py", TEST_WORKERS="0")

    for block in blocks:
        done = subprocess.run(["bash", "--noprofile", "--norc", "-e", "-x", "-c", block], cwd=project, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"README block\n{block}\n{shown(done)}"

    assert (project / "dvc_plots/index.html").is_file()
    assert git(project, "status", "--porcelain") == ""


def test_the_venvs_dvc_runs_the_stages_with_the_projects_python_without_the_venv_on_path(
        project: Path, tmp_path: Path) -> None:
    """`.venv/bin/dvc repro` in a shell that did not activate `.venv`: `python` there is the system's (no cxrstudy),
    and DVC does not put its own interpreter on PATH; the stages' scripts/python takes the project's `.venv`."""
    _commit(project, "before a run without the venv on PATH")
    with_the_venv(project)
    env = new_shell(tmp_path / "home")

    done = subprocess.run([".venv/bin/dvc", "repro", "--force", "--single-item", "split"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)

    assert done.returncode == 0, shown(done)
    assert "Running stage 'split'" in done.stdout
    assert git(project, "status", "--porcelain") == ""  # the same splits, the same dvc.lock


def test_another_machines_record_changes_neither_dvc_nor_git(project: Path) -> None:
    """models/seed_N/machine.json names the CPU that trained the model: kept beside it, outside its DVC hash, so a
    run on another machine (the same numbers, another CPU) changes neither `dvc status`, dvc.lock, nor git."""
    _commit(project, "before another machine")
    record = project / "models/seed_1/machine.json"
    assert json.loads(record.read_text())["cpu_model"]
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    (digest,) = [out["md5"] for out in lock["stages"]["train@1"]["outs"] if out["path"] == "models/seed_1"]
    listing = json.loads((project / ".dvc/cache/files/md5" / digest[:2] / digest[2:]).read_text())
    assert sorted(entry["relpath"] for entry in listing) == ["model.pt", "summary.json"]

    record.write_text(json.dumps({"cpu_model": "another vendor's CPU", "cpu_flags": ["amx_tile", "avx2"]}))

    assert_up_to_date(project)
    assert git(project, "status", "--porcelain") == ""


def test_repro_writes_metrics_for_every_seed_and_the_report(project: Path) -> None:
    for seed in (1, 2):
        metrics = json.loads((project / f"metrics/eval/seed_{seed}.json").read_text())
        assert metrics["seed"] == seed
        assert (project / f"models/seed_{seed}/model.pt").is_file()
        assert (project / f"predictions/seed_{seed}.csv").is_file()
    assert (project / "reports/report.md").is_file()


def test_report_tables_match_the_metrics_files(project: Path) -> None:
    report = (project / "reports/report.md").read_text()
    # Columns: seed, loss, mean AUROC, its bootstrap CI, mean F1 (validation thresholds), mean F1 (test-tuned).
    overall = {int(r[0]): r for r in table_rows(report, "## Overall Metrics Comparison") if r[0].isdigit()}
    for seed in (1, 2):
        m = json.loads((project / f"metrics/eval/seed_{seed}.json").read_text())
        row = overall[seed]
        assert [row[1], row[2], row[4], row[5]] == [f"{m['loss']:.4f}", f"{m['auroc_mean']:.4f}",
                                                    f"{m['f1_mean']:.4f}", f"{m['f1_test_tuned_mean']:.4f}"]
    per_class = table_rows(report, "## Per-Class AUROC Comparison")
    assert len(per_class) == 14
    m1 = json.loads((project / "metrics/eval/seed_1.json").read_text())
    for row in per_class:
        value = m1["auroc"][row[0]]
        assert row[1] == ("n/a" if value is None else f"{value:.4f}")
    best = table_rows(report, "## Best Seed per Class")
    assert [r[0] for r in best] == [r[0] for r in per_class]  # all 14 classes, Pneumothorax included


def test_metrics_show_lists_each_seed(project: Path) -> None:
    shown = json.loads(sh(["dvc", "metrics", "show", "--json"], project).stdout)
    files = next(iter(shown.values()))["data"]
    assert {"metrics/eval/seed_1.json", "metrics/eval/seed_2.json"} <= set(files)


def assert_up_to_date(project: Path) -> None:
    """`dvc status` lists nothing but the manifest stage, which runs every time (it records the data source)."""
    status = json.loads(sh(["dvc", "status", "--json"], project).stdout)
    assert status in UP_TO_DATE, f"dvc status: {status}"


def _commit(project: Path, message: str) -> None:
    git(project, "add", "-A")
    git(project, "commit", "-qm", message, "--allow-empty")


def test_a_second_repro_has_nothing_to_do(project: Path) -> None:
    out = sh(["dvc", "repro"], project).stdout
    assert set(re.findall(r"Running stage '([^']+)'", out)) == set()  # `make repro` re-runs manifest, not DVC
    assert "Stage 'ingest@internal' didn't change, skipping" in out
    assert "Stage 'report' didn't change, skipping" in out
    assert_up_to_date(project)


def test_a_training_parameter_reruns_only_train_evaluate_and_report(project: Path) -> None:
    _commit(project, "baseline")
    write_params(project / "params.yaml", tiny_raw(train={"lr": 0.001}))
    out = sh(["dvc", "repro"], project).stdout
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    assert ran == {"train@1", "train@2", "evaluate@1", "evaluate@2", "external@1", "external@2", "subgroups", "report"}
    diff = sh(["dvc", "metrics", "diff", "--md", "HEAD"], project).stdout
    assert "metrics/eval/seed_1.json" in diff and "metrics/eval/seed_2.json" in diff
    assert "auroc_mean" in diff


def test_a_bad_parameter_stops_repro_and_nothing_is_recorded(project: Path) -> None:
    _commit(project, "before")
    lock = (project / "dvc.lock").read_text()
    before = tree_bytes(project, ("data/processed",))
    write_params(project / "params.yaml", tiny_raw(preprocess={"clip_limit": 0}))
    done = sh(["dvc", "repro"], project, check=False)
    assert done.returncode != 0
    assert "preprocess.clip_limit: Input should be greater than 0" in done.stdout + done.stderr
    assert (project / "dvc.lock").read_text() == lock  # no half output recorded
    sh(["git", "checkout", "params.yaml"], project)
    sh(["dvc", "checkout"], project)  # DVC removed the stage's output before running it; the cache has it
    assert tree_bytes(project, ("data/processed",)) == before
    assert_up_to_date(project)


def test_an_unknown_top_level_key_stops_make_repro_even_when_nothing_is_stale(project: Path) -> None:
    """No stage depends on a key nobody reads, so no stage of a plain `dvc repro` would run to refuse it: `make repro`
    validates params.yaml first (`check-params`)."""
    _commit(project, "before an unknown key")
    assert_up_to_date(project)
    lock = (project / "dvc.lock").read_text()
    params = project / "params.yaml"
    params.write_text(params.read_text() + "trian:\n  epochs: 1\n")

    done = sh(["make", "repro", "VENV="], project, check=False)

    assert done.returncode != 0
    assert "trian: unknown parameter (did you mean 'train'?)" in done.stdout + done.stderr
    assert (project / "dvc.lock").read_text() == lock
    sh(["git", "checkout", "params.yaml"], project)


REPORT_OUTS = ("reports/report.md", "reports/figures", "plots/report", "metrics/report.json")


def test_a_failed_report_stage_is_undone_by_git_checkout_not_by_dvc_checkout(project: Path) -> None:
    """The report's outputs are `cache: false`: DVC removes them before the stage runs and has no copy to bring
    back; they are committed to git, which has."""
    _commit(project, "before a failed report")
    before = tree_bytes(project, REPORT_OUTS)
    predictions = project / "predictions/seed_1.csv"
    text = predictions.read_text()
    predictions.unlink()  # never write through a link into DVC's cache
    predictions.write_text(text.replace(",", ";"))  # the report stage refuses it

    done = sh(["dvc", "repro", "--single-item", "--force", "report"], project, check=False)

    assert done.returncode != 0 and "seed_1.csv" in done.stdout + done.stderr
    assert not (project / "reports/report.md").exists(), "DVC removes a stage's outputs before running it"
    sh(["dvc", "checkout", "--force"], project)
    assert not (project / "reports/report.md").exists(), "dvc checkout has no copy of a cache: false output"
    # The predictions are `cache: false` too (in git, for CI's base revision): git brings them back as well.
    git(project, "checkout", "--", "predictions/seed_1.csv", *REPORT_OUTS)
    assert tree_bytes(project, REPORT_OUTS) == before
    assert_up_to_date(project)


def test_a_configuration_run_before_comes_back_from_the_run_cache_without_training(project: Path) -> None:
    """After a kill, `dvc repro` of a configuration that DVC has already run restores that run's outputs from its
    run-cache instead of running (and resuming) the stage: `--no-run-cache` runs it."""
    _commit(project, "before the run-cache")
    committed = (project / "params.yaml").read_text()
    write_params(project / "params.yaml", tiny_raw())  # the configuration of the first `dvc repro`
    assert (project / "params.yaml").read_text() != committed

    out = sh(["dvc", "repro"], project).stdout

    assert "Running stage 'train@1'" not in out
    assert re.search(r"Stage 'train@1' is cached - skipping run, checking out outputs", out), out
    sh(["git", "checkout", "--", "."], project)
    sh(["dvc", "checkout"], project)

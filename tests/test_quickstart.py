"""What a newcomer meets first: the interpreter the pipeline's stages run with, and what git and DVC leave alone.

The README's own commands are run as written, in a new shell, by tests/test_pipeline.py (it has the pipeline's run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cxrstudy.atomic import atomic_dir, atomic_file
from cxrstudy.learning.train import MACHINE_FILE
from tests.conftest import REQUIRE_TOOLS, ROOT, find_tool, leftovers, pytest_runtest_setup, shown

LAUNCHER = ROOT / "scripts" / "python"

# --------------------------------------------------------------------------------------------------------------------
# scripts/python: the stages' interpreter, whatever comes first on PATH


def test_every_stage_runs_through_scripts_python() -> None:
    """DVC runs a stage's command with DVC's environment unchanged: a bare `python` would be whichever is first on
    PATH (the system's, without cxrstudy, under `.venv/bin/dvc repro` in a shell that did not activate `.venv`)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, spec in stages.items():
        cmd = spec.get("do", spec)["cmd"]
        for line in cmd if isinstance(cmd, list) else [cmd]:
            assert line.startswith("scripts/python -m cxrstudy "), f"stage {name}: {line!r}"


def _interpreter(path: Path, *, has_cxrstudy: bool = True) -> Path:
    """A stand-in interpreter: `-c CODE` (the launcher's check) succeeds when it "has" cxrstudy; anything else prints
    its own path, its process id and its arguments."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n"
                    f'if [ "$1" = "-c" ]; then exit {0 if has_cxrstudy else 1}; fi\n'
                    'echo "$0 $$ $*"\n')
    path.chmod(0o755)
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with the launcher and a PATH of its own whose python3 is a stand-in."""
    (tmp_path / "project/scripts").mkdir(parents=True)
    shutil.copy2(LAUNCHER, tmp_path / "project/scripts/python")
    _interpreter(tmp_path / "path/python3")
    return tmp_path / "project"


def _launch(project: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": f"{project.parent / 'path'}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    return subprocess.run(["scripts/python", "-m", "cxrstudy", "split"], cwd=project, env={**base, **env},
                          capture_output=True, text=True, timeout=60)


def _chosen(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, shown(done)
    path, _, args = done.stdout.strip().split(" ", 2)
    assert args == "-m cxrstudy split"
    return path


def test_the_launcher_takes_cxrstudy_python_first(project: Path, tmp_path: Path) -> None:
    chosen = _interpreter(tmp_path / "chosen/python")
    _interpreter(tmp_path / "active/bin/python")
    _interpreter(project / ".venv/bin/python")
    done = _launch(project, CXRSTUDY_PYTHON=str(chosen), VIRTUAL_ENV=str(tmp_path / "active"))
    assert _chosen(done) == str(chosen)


def test_the_launcher_takes_an_activated_environment_before_the_projects_venv(project: Path, tmp_path: Path) -> None:
    active = _interpreter(tmp_path / "active/bin/python")
    _interpreter(project / ".venv/bin/python")
    assert _chosen(_launch(project, VIRTUAL_ENV=str(tmp_path / "active"))) == str(active)


def test_the_launcher_takes_the_projects_venv_whatever_python_is_first_on_path(project: Path) -> None:
    _interpreter(project / ".venv/bin/python")
    assert _chosen(_launch(project)) == str(project / ".venv/bin/python")


def test_the_launcher_falls_back_to_python3_on_path(project: Path) -> None:
    assert _chosen(_launch(project)) == str(project.parent / "path/python3")


def test_the_launcher_replaces_itself_by_the_interpreter(project: Path, tmp_path: Path) -> None:
    """exec, not a child: a stop (SIGTERM, SIGINT) reaches the stage, and its exit status is the stage's."""
    _interpreter(project / ".venv/bin/python")
    proc = subprocess.Popen(["scripts/python", "-m", "cxrstudy", "split"], cwd=project, text=True,
                            stdout=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
    out, _ = proc.communicate(timeout=60)
    assert out.split()[1] == str(proc.pid)


def test_an_interpreter_without_cxrstudy_is_named_with_the_ways_out(project: Path, tmp_path: Path) -> None:
    _interpreter(tmp_path / "active/bin/python", has_cxrstudy=False)
    done = _launch(project, VIRTUAL_ENV=str(tmp_path / "active"))
    assert done.returncode == 1 and done.stdout == "", shown(done)
    assert f"{tmp_path}/active/bin/python (from the activated environment, VIRTUAL_ENV) cannot import cxrstudy" \
        in done.stderr, shown(done)
    assert "make setup" in done.stderr and "CXRSTUDY_PYTHON" in done.stderr


# --------------------------------------------------------------------------------------------------------------------
# What git and DVC ignore


def _git_ignores(*paths: str) -> list[str]:
    """The paths that git, by the project's ignore files, would leave out of `git add -A`."""
    done = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, input="\n".join(paths),
                          capture_output=True, text=True, check=False)
    assert done.returncode in (0, 1), shown(done)
    return done.stdout.split()


def _dvc_ignores(*paths: str) -> list[str]:
    dvc = find_tool("dvc")
    assert dvc is not None
    done = subprocess.run([dvc, "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode in (0, 1), shown(done)
    return done.stdout.split()


def test_a_killed_writers_temporaries_are_ignored_by_git_and_dvc(tmp_path: Path) -> None:
    """A kill can leave an output's hidden temporary behind (the next write of that output sweeps it): as large as
    the output, 7 GB for NIH's processed array, so `git add -A` must never take it, nor DVC hash it."""
    names: list[str] = []
    (tmp_path / "processed").mkdir()
    with atomic_file(tmp_path / "images.npy", "wb"), atomic_dir(tmp_path / "processed"):
        names += leftovers(tmp_path)  # the real writers' names, while they are writing
    assert len(names) == 2, names
    names.append(".processed.old-abcd1234")  # the earlier output, between atomic_dir's two renames
    # Beside a DVC output (data/, models/) and beside the outputs committed to git (metrics/, reports/, ...).
    paths = [f"{folder}/{name}" for folder in ("data", "metrics/eval", "reports") for name in names]
    paths += [f"models/{name}/model.pt" for name in names]
    assert sorted(_git_ignores(*paths)) == sorted(paths)
    assert sorted(_dvc_ignores(*paths)) == sorted(paths)
    assert _git_ignores("metrics/eval/seed_12.json", "metrics/eval/seed_12.json.tmp", "src/cxrstudy/old-x.py") == []


def test_dvc_plots_show_writes_where_git_does_not_look() -> None:
    assert _git_ignores("dvc_plots/index.html") == ["dvc_plots/index.html"]


def test_the_machine_record_is_beside_the_model_but_outside_its_dvc_hash() -> None:
    """machine.json (CPU model and flags) differs between machines whose numbers are the same: DVC ignores it, so
    another machine's run changes neither dvc.lock nor `git status`; git ignores the model folder (DVC's output).
    tests/test_pipeline.py checks it on a real run."""
    record = f"models/seed_12/{MACHINE_FILE}"
    assert _dvc_ignores(record, "models/seed_12/model.pt") == [record]


def test_bytecode_caches_are_outside_every_dvc_hash() -> None:
    """Importing the adapters writes src/cxrstudy/data/sources/__pycache__ on a machine without
    PYTHONDONTWRITEBYTECODE: that folder is a stage dependency, so DVC must not hash the caches, or dvc.lock would
    depend on how a machine's Python was started."""
    caches = ["src/cxrstudy/data/sources/__pycache__/nih.cpython-312.pyc", "src/cxrstudy/data/sources/nih.pyc"]
    assert _dvc_ignores(*caches, "src/cxrstudy/data/sources/nih.py") == caches


# --------------------------------------------------------------------------------------------------------------------
# A test that needs a system tool: skipped with the reason on a newcomer's machine, failed in CI


class _Marked:
    """A test item carrying `@pytest.mark.tools(*names)`, as the setup hook sees it."""

    def __init__(self, *names: str) -> None:
        self.marks = [pytest.mark.tools(*names).mark]

    def iter_markers(self, name: str) -> list[pytest.Mark]:
        return [mark for mark in self.marks if mark.name == name]


def test_a_missing_tool_skips_naming_it_and_in_ci_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_TOOLS, raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"needs no-such-tool-a, not found \(\.ci/run names"):
        pytest_runtest_setup(_Marked("git", "no-such-tool-a"))
    pytest_runtest_setup(_Marked("git", "no-such-tool-a|sh"))  # either of the two will do

    monkeypatch.setenv(REQUIRE_TOOLS, "1")
    with pytest.raises(pytest.fail.Exception, match=f"needs no-such-tool-a, not found.*{REQUIRE_TOOLS}=1"):
        pytest_runtest_setup(_Marked("no-such-tool-a"))

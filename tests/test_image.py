"""The images of docker/Dockerfile, built and run for real with podman.

- The base is made from Debian's packages with mmdebstrap (scripts/ci/base_image.sh, cached between runs), since
  no container registry may be reachable; CXR_TEST_BASE_IMAGE selects another (tests/containers.py).
- The `cpu` target is built and run: its user, workspace, labels and init; `scripts/ci/docker_smoke.sh` (the CI
  job's script) with podman; and the pipeline on a reduced profile inside it, as the image's non-root user, whose
  `metrics/` must equal byte for byte those of the same run on the host.
- The `cuda` target is built, and only inspected.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, copy_project, git, snapshot, tiny_raw
from tests.containers import build, build_env, podman, require

# The first test builds the base and the cpu image (about 7.5 minutes on a fresh machine), the cuda build fetches
# the CUDA wheels.
pytestmark = [pytest.mark.slow, pytest.mark.infra, pytest.mark.timeout(3600)]

CPU = "localhost/cxrstudy:test-cpu"
CUDA = "localhost/cxrstudy:test-cuda"
SMOKE = "localhost/cxrstudy:test-smoke"
APP_UID = "1001"


def pyproject_version() -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert match
    return match.group(1)


def labels(image: str) -> dict[str, str]:
    return json.loads(podman("image", "inspect", "--format", "{{json .Labels}}", image).stdout)


@pytest.fixture(scope="module")
def cpu_image() -> Iterator[str]:
    require("podman")
    build("cpu", CPU)
    yield CPU
    # The test images go when this file is done (a CI machine's disk is shared with the act jobs' venvs).
    subprocess.run(["podman", "rmi", "--force", CPU, SMOKE], capture_output=True, check=False)


def test_default_command_is_the_cli(cpu_image):
    out = podman("run", "--rm", cpu_image).stdout
    assert out.startswith("usage: cxrstudy"), out


def test_user_is_not_root_and_owns_its_workspace(cpu_image):
    out = podman(
        "run", "--rm", cpu_image, "sh", "-c", "id -u; pwd; touch probe; stat -c %u probe; cat /proc/1/comm"
    ).stdout.split()
    uid, cwd, owner, init = out
    assert uid == APP_UID != "0"
    assert cwd == "/workspace"
    assert owner == APP_UID, "the user must be able to write its own workspace without a mount"
    assert init == "tini", "PID 1 is the image's init"


def test_labels_name_the_source_revision_and_version(cpu_image):
    found = labels(cpu_image)
    assert found["org.opencontainers.image.revision"] == git(ROOT, "rev-parse", "HEAD")
    assert found["org.opencontainers.image.version"] == pyproject_version()
    assert found["org.opencontainers.image.source"]


def test_the_build_ca_is_not_in_the_image(cpu_image):
    """The extra CA bundle is a build secret: no layer has it, pip is not configured with it."""
    out = podman(
        "run", "--rm", cpu_image, "sh", "-c",
        "ls /run/secrets 2>/dev/null; env | grep -i -E '^(PIP_CERT|SSL_CERT_FILE|REQUESTS_CA_BUNDLE)=' ; "
        "python -m pip config list",
    ).stdout  # fmt: skip
    assert "build_ca" not in out and "PIP_CERT" not in out and "cert" not in out.lower(), out
    history = podman("image", "history", "--no-trunc", "--format", "{{.CreatedBy}}", cpu_image).stdout
    assert "BEGIN CERTIFICATE" not in history


def wait_for_log(container: str, text: str, timeout: float = 120) -> None:
    """Poll the container's output until `text` appears (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = podman("logs", container, check=False)
        if text in proc.stdout + proc.stderr:
            return
        if podman("inspect", "--format", "{{.State.Running}}", container).stdout.strip() != "true":
            raise AssertionError(f"{container} stopped before printing {text!r}: {proc.stdout}{proc.stderr}")
        time.sleep(0.2)
    raise AssertionError(f"{container} did not print {text!r} within {timeout} s")


def stop_exit_code(image: str, run_args: list[str], command: list[str], grace: int) -> int:
    """`podman run -d RUN_ARGS IMAGE COMMAND -c 'echo ready; sleep 1000'`, then a stop.

    The stop sends SIGTERM, then SIGKILL after `grace` seconds.

    Returns the container's exit code: 143 (128 + SIGTERM) when the command got the signal, 137 when it was
    killed at the end of the grace period.
    """
    name = f"cxr-stop-{os.getpid()}-{grace}"
    podman("rm", "--force", name, check=False)
    podman("run", "--detach", "--name", name, *run_args, image, *command, "-c", "echo ready; sleep 1000")
    try:
        wait_for_log(name, "ready")
        podman("stop", "--time", str(grace), name, timeout=grace + 120)
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip())
    finally:
        podman("rm", "--force", name, check=False)


def test_a_stop_reaches_the_command_through_the_init(cpu_image):
    """The image's entry point (tini) forwards the stop to the command's process group.

    `sh` stands for any command (`make repro`, a stage): were the signal not forwarded, the stop would end in
    a SIGKILL after the 120 s grace period, exit code 137.
    """
    assert stop_exit_code(cpu_image, [], ["sh"], grace=120) == 143


def test_without_an_init_a_stop_ends_in_a_kill(cpu_image):
    """The control: a shell as PID 1 ignores SIGTERM, so the stop falls back to SIGKILL (137)."""
    assert stop_exit_code(cpu_image, ["--entrypoint", "sh"], [], grace=2) == 137


def test_docker_smoke_script_passes_with_podman(cpu_image, tmp_path):
    """scripts/ci/docker_smoke.sh, the CI job's script, on a clone of the project (its own .git)."""
    project = copy_project(tmp_path / "project")
    project.chmod(0o755)  # the other-uid step mounts it
    env = {**build_env(), "IMAGE": SMOKE}
    proc = subprocess.run(
        [str(project / "scripts/ci/docker_smoke.sh"), "cpu"], capture_output=True, text=True, env=env, timeout=3600
    )
    podman("image", "rm", SMOKE, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert f"smoke test of {SMOKE} passed" in proc.stdout
    assert git(project, "rev-parse", "HEAD") in proc.stdout, "git in the image reads the mounted workspace"


# --------------------------------------------------------------------------
# The pipeline in the container equals the pipeline on the host
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone of the project with the tiny parameters and no recorded outputs."""
    project = copy_project(tmp_path_factory.mktemp("image") / "project", drop=("dvc.lock", "metrics"),
                           params=tiny_raw())
    project.chmod(0o755)
    return project


def test_pipeline_in_the_container_equals_the_host_run(cpu_image, tiny_project, tmp_path):
    # In the container: the workspace is copied into /workspace (owned by the image's user) and
    # `make repro VENV=` runs there, as CI's container jobs do, as the non-root user.
    name = f"cxr-repro-{os.getpid()}"
    podman("rm", "--force", name, check=False)
    try:
        run = podman(
            "run", "--name", name, "--volume", f"{tiny_project}:/src:ro", cpu_image,
            "sh", "-c", "cp -R /src/. /workspace/ && make repro VENV= && id -u && stat -c %u metrics/report.json",
            timeout=3600,
        )  # fmt: skip
        assert run.stdout.split()[-2:] == [APP_UID, APP_UID], "ran as the image's user, which wrote the metrics"
        in_container = tmp_path / "container"
        in_container.mkdir()
        podman("cp", f"{name}:/workspace/metrics", str(in_container))
    finally:
        podman("rm", "--force", name, check=False)

    # On the host: the same clone, the same command.
    host = tmp_path / "host"
    shutil.copytree(tiny_project, host, symlinks=True)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(host / "src"),
    }
    proc = subprocess.run(["dvc", "repro"], cwd=host, capture_output=True, text=True, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]

    expected = snapshot(host / "metrics")
    got = snapshot(in_container / "metrics")
    assert expected, "the host run wrote no metrics"
    assert sorted(got) == sorted(expected)
    differing = [name for name in expected if got[name] != expected[name]]
    assert not differing, f"metrics differ between the container and the host: {differing}\n" + "\n".join(
        f"--- host {n}\n{expected[n].decode()}\n--- container {n}\n{got[n].decode()}" for n in differing[:1]
    )


# --------------------------------------------------------------------------
# The CUDA target: built, inspected
# --------------------------------------------------------------------------


def test_cuda_target_builds_with_the_cuda_wheels():
    require("podman")
    build("cuda", CUDA)
    try:
        config = json.loads(podman("image", "inspect", "--format", "{{json .Config}}", CUDA).stdout)
        assert config["User"] == f"{APP_UID}:{APP_UID}"
        assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in config["Env"]
        assert config["Entrypoint"][0] == "/usr/bin/tini"
        assert labels(CUDA)["org.opencontainers.image.revision"] == git(ROOT, "rev-parse", "HEAD")
        out = podman("run", "--rm", CUDA, "python", "-c", "import torch; print(torch.version.cuda)").stdout.strip()
        assert re.fullmatch(r"\d+\.\d+", out), f"torch in the cuda image is not a CUDA build: {out}"
    finally:
        # Several GB (the CUDA wheels): gone before the next test needs the disk; the base image stays cached.
        subprocess.run(["podman", "rmi", "--force", CUDA], capture_output=True, check=False)
        subprocess.run(["podman", "image", "prune", "--force"], capture_output=True, check=False)

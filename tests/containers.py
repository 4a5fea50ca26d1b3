"""Shared code for the tests that build and run the images and the workflows for real.

They need podman, mmdebstrap (for a base image made from Debian's packages), act and gh. `.ci/run` installs
them and sets CXR_REQUIRE_CONTAINERS=1, so that in CI a missing tool fails these tests instead of skipping them;
CXR_CONTAINER_TESTS=0 skips them (ci.yml's `tests` job on GitHub, whose other jobs do the same for real).

Settings (environment):
  CXR_TEST_BASE_IMAGE       base image for the builds; default: one made by scripts/ci/base_image.sh
                            (set it to the official python:3.11.15-slim-bookworm where a registry is reachable)
  CXR_TEST_TORCH_INDEX_URL  TORCH_INDEX_URL for the builds; default empty (PyPI's torch)
  CXR_TEST_BUILD_CA         extra CA certificates trusted during the builds; default: the system bundle
                            (/etc/ssl/certs/ca-certificates.crt) when it exists
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "ci"
CONTAINERS_CONF = SCRIPTS / "containers.conf"
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_TAG = "localhost/cxrstudy-base:bookworm"


def require(*tools: str) -> None:
    """Skip (or, with CXR_REQUIRE_CONTAINERS=1, fail) unless every tool is on PATH.

    CXR_CONTAINER_TESTS=0 skips these tests: ci.yml's `tests` job sets it, since its `docker`, `lint` and
    `repro` jobs build the image and run the jobs on GitHub itself.
    """
    if os.environ.get("CXR_CONTAINER_TESTS") == "0":
        pytest.skip("CXR_CONTAINER_TESTS=0")
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return
    message = f"not installed: {', '.join(missing)} (apt-get install podman mmdebstrap gh jq; .ci/run installs them)"
    if os.environ.get("CXR_REQUIRE_CONTAINERS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, env=podman_env(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def base_image() -> str:
    """The base image for the builds: CXR_TEST_BASE_IMAGE, or one made from Debian's packages (cached)."""
    configured = os.environ.get("CXR_TEST_BASE_IMAGE")
    if configured:
        return configured
    require("podman", "mmdebstrap")
    proc = subprocess.run(
        [str(SCRIPTS / "base_image.sh"), BASE_TAG], capture_output=True, text=True, env=podman_env(), timeout=1800
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return BASE_TAG


def build_env() -> dict[str, str]:
    """Environment for scripts/ci/build_image.sh (and docker_smoke.sh) with podman."""
    env = podman_env()
    env["ENGINE"] = "podman"
    env["BASE_IMAGE"] = base_image()
    env["TORCH_INDEX_URL"] = os.environ.get("CXR_TEST_TORCH_INDEX_URL", "")
    ca = os.environ.get("CXR_TEST_BUILD_CA", str(SYSTEM_BUNDLE) if SYSTEM_BUNDLE.is_file() else "")
    if ca:
        env["BUILD_CA"] = ca
    return env


def build(target: str, tag: str) -> None:
    require("podman")
    proc = subprocess.run(
        [str(SCRIPTS / "build_image.sh"), target, tag], capture_output=True, text=True, env=build_env(), timeout=3600
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]

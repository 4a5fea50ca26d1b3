"""The lock files: every dependency pinned with its hashes, in step with the top-level pins, and nothing of this
machine in them. `make setup` installs requirements.lock, `make dev` requirements-dev.lock, the images
requirements.lock (the CPU image without the CUDA libraries); `make lock` regenerates both."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
CUDA_ONLY = re.compile(r"^(nvidia-|cuda-|triton==)")


def top_level(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("-r "):
            pins |= top_level(path.parent / line.split()[1])
        elif match := PIN.match(line.strip()):
            pins[match.group(1).lower()] = match.group(2)
    return pins


def locked(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) for each block of a pip-compile --generate-hashes file."""
    return parse_lock(path.read_text())


def parse_lock(text: str) -> dict[str, tuple[str, int]]:
    blocks: dict[str, tuple[str, int]] = {}
    name = None
    for line in text.splitlines():
        if match := PIN.match(line):
            name = match.group(1).lower()
            blocks[name] = (match.group(2), 0)
        elif name and line.strip().startswith("--hash=sha256:"):
            version, hashes = blocks[name]
            blocks[name] = (version, hashes + 1)
    return blocks


@pytest.mark.parametrize(("source", "lock"), [("requirements.txt", "requirements.lock"),
                                              ("requirements-dev.txt", "requirements-dev.lock")])
def test_every_top_level_pin_is_locked_at_its_version_with_hashes(source: str, lock: str) -> None:
    pins, blocks = top_level(ROOT / source), locked(ROOT / lock)
    assert pins, source
    wrong = {name: (version, blocks.get(name)) for name, version in pins.items()
             if name not in blocks or blocks[name][0] != version}
    assert not wrong, f"{lock} is stale against {source} (run `make lock`): {wrong}"
    unhashed = sorted(name for name, (_, hashes) in blocks.items() if hashes == 0)
    assert not unhashed, f"{lock}: no hash for {unhashed}"


def test_the_dev_lock_installs_the_runtime_lock_unchanged() -> None:
    runtime, dev = locked(ROOT / "requirements.lock"), locked(ROOT / "requirements-dev.lock")
    differ = {name: (v, dev.get(name, ("missing",))[0]) for name, (v, _) in runtime.items()
              if dev.get(name, ("missing",))[0] != v}
    assert not differ, f"requirements-dev.lock differs from requirements.lock: {differ}"


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-dev.lock"])
def test_a_lock_holds_nothing_of_the_machine_it_was_made_on(lock: str) -> None:
    text = (ROOT / lock).read_text()
    for marker in ("--find-links", "--index-url", "--extra-index-url", "file://", "/opt/", "/root/", "/home/"):
        assert marker not in text, f"{lock} holds {marker!r}: regenerate it with `make lock`"


def test_the_cpu_image_installs_the_lock_without_the_cuda_libraries() -> None:
    """install-deps.sh --print cpu: what the CPU image installs after torch from the CPU index."""
    script, lock = str(ROOT / "docker/install-deps.sh"), str(ROOT / "requirements.lock")
    done = subprocess.run(["bash", script, "--print", "cpu", lock], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "TORCH_INDEX_URL": "x"})
    assert done.returncode == 0, done.stderr
    printed = parse_lock(done.stdout)
    full = locked(ROOT / "requirements.lock")
    dropped = sorted(set(full) - set(printed))
    assert dropped and all(CUDA_ONLY.match(f"{n}==") or n in ("torch", "torchvision") for n in dropped), dropped
    assert any(n.startswith("nvidia-") for n in dropped), "the CUDA libraries stay out of the CPU image"
    assert all(hashes > 0 for _, hashes in printed.values()) and "numpy" in printed


def test_with_pypis_torch_both_images_install_the_whole_lock() -> None:
    for variant in ("cpu", "cuda"):
        done = subprocess.run(["bash", str(ROOT / "docker/install-deps.sh"), "--print", variant,
                               str(ROOT / "requirements.lock")],
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "TORCH_INDEX_URL": ""})
        assert done.returncode == 0, done.stderr
        assert parse_lock(done.stdout) == locked(ROOT / "requirements.lock"), variant


def test_one_python_target_everywhere() -> None:
    """The package, ruff, mypy, the locks, CI and the images all name the same Python (major.minor)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = {
        "pyproject requires-python": project["project"]["requires-python"].removeprefix(">="),
        "ruff target-version": project["tool"]["ruff"]["target-version"].replace("py3", "3."),
        "mypy python_version": project["tool"]["mypy"]["python_version"],
        "ci.yml PYTHON_VERSION": re.search(r'PYTHON_VERSION: "([\d.]+)"',
                                           (ROOT / ".github/workflows/ci.yml").read_text()).group(1),  # type: ignore[union-attr]
        "Dockerfile base": re.search(r"python:(\d+\.\d+)\.", (ROOT / "docker/Dockerfile").read_text()).group(1),  # type: ignore[union-attr]
    }
    for lock in ("requirements.lock", "requirements-dev.lock"):
        found[lock] = re.search(r"pip-compile with Python (\d+\.\d+)", (ROOT / lock).read_text()).group(1)  # type: ignore[union-attr]
    assert len(set(found.values())) == 1, found

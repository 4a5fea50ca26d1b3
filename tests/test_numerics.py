"""Same commit, same numbers on another machine: the pinned numerics hold when the run's environment looks like
another machine's (fewer cores, another instruction set, another vendor's CPU), and without the pins it does not.

Each run is `python -m cxrstudy train` (+ `evaluate`) in a fresh process on the tiny data set, as `dvc repro` runs it.
Another machine is emulated by what decides its kernels: core affinity (`taskset`), the ISA caps that oneDNN, ATen,
MKL, NumPy and OpenCV read from the environment, and, when `qemu-x86_64` is installed (.ci/run installs it), a
whole other CPU: an Intel Haswell (AVX2, no AVX-512, other caches) emulated instruction by instruction.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from cxrstudy import numerics
from tests.conftest import cli, tiny_raw, write_params

SEED = 1
# What a different machine's defaults look like to the libraries: one core, no pins, other kernels.
OTHER_MACHINE = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "ATEN_CPU_CAPABILITY": "default",
    "DNNL_MAX_CPU_ISA": "SSE41",
    "MKL_CBWR": "AUTO",
    "NPY_DISABLE_CPU_FEATURES": "",
    "OPENCV_CPU_DISABLE": "",
}


@dataclass(frozen=True)
class Run:
    weights: str
    metrics: bytes
    predictions: bytes


def weights_digest(model_file: Path) -> str:
    state = torch.load(model_file, map_location="cpu", weights_only=True)["model"]
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_seed(tiny_data: Path, out: Path, numerics_cfg: dict[str, Any], env: dict[str, str] | None = None,
             prefix: tuple[str, ...] = (), evaluate: bool = True) -> Run:
    """Train (one epoch) and evaluate seed 1 in fresh processes, under `env` and behind `prefix` (taskset, qemu)."""
    out.mkdir(parents=True, exist_ok=True)
    params = write_params(out / "params.yaml", tiny_raw(numerics=numerics_cfg, train={"epochs": 1}))
    data = ["--raw", str(tiny_data / "data/raw"), "--processed", str(tiny_data / "data/processed"),
            "--splits", str(tiny_data / "data/splits")]
    base_env = {k: v for k, v in os.environ.items() if k not in OTHER_MACHINE and k not in numerics.AVX2_ENV}
    full_env = {**base_env, "TQDM_DISABLE": "1", **(env or {})}
    stages = [["train", *data, "--out", str(out / "model"), "--plots", str(out / "history.csv"),
               "--checkpoints", str(out / "ckpt")]]
    if evaluate:
        stages.append(["evaluate", *data, "--model", str(out / "model"), "--metrics", str(out / "metrics.json"),
                       "--predictions", str(out / "predictions.csv")])
    for stage in stages:
        cmd = [*prefix, *cli(stage[0], "--seed", str(SEED), *stage[1:], params=str(params))]
        done = subprocess.run(cmd, cwd=out, env=full_env, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return Run(weights_digest(out / "model" / "model.pt"),
               (out / "metrics.json").read_bytes() if evaluate else b"",
               (out / "predictions.csv").read_bytes() if evaluate else b"")


PINNED = {"isa": "avx2", "threads": 2}
UNPINNED = {"isa": "native", "threads": 0}


@pytest.fixture(scope="module")
def pinned(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_seed(tiny_data, tmp_path_factory.mktemp("pinned"), PINNED)


@pytest.fixture(scope="module")
def unpinned(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_seed(tiny_data, tmp_path_factory.mktemp("unpinned"), UNPINNED, evaluate=False)


def has_taskset() -> bool:
    return shutil.which("taskset") is not None and len(os.sched_getaffinity(0)) >= 2


def other_isa() -> str:
    """An ISA cap that changes this machine's oneDNN kernels: AVX2 on an AVX-512 machine, else SSE4.1."""
    return "AVX2" if "avx512f" in numerics.cpu_flags() else "SSE41"


@pytest.mark.slow
def test_pinned_run_is_identical_under_another_machines_environment(tiny_data: Path, tmp_path: Path,
                                                                    pinned: Run) -> None:
    prefix = ("taskset", "-c", "0") if has_taskset() else ()
    other = run_seed(tiny_data, tmp_path / "other", PINNED, env=OTHER_MACHINE, prefix=prefix)
    assert other.weights == pinned.weights
    assert other.predictions == pinned.predictions
    assert other.metrics == pinned.metrics  # the environment record included: it names only what decides numbers


@pytest.mark.slow
def test_unpinned_run_changes_with_the_instruction_set(tiny_data: Path, tmp_path: Path, unpinned: Run) -> None:
    capped = run_seed(tiny_data, tmp_path / "isa", UNPINNED, env={"DNNL_MAX_CPU_ISA": other_isa()},
                      evaluate=False)
    assert capped.weights != unpinned.weights, "the emulation changes nothing: the pinned test above proves nothing"


@pytest.mark.slow
@pytest.mark.skipif(not has_taskset(), reason="needs taskset and two usable cores")
def test_unpinned_run_changes_with_the_core_count(tiny_data: Path, tmp_path: Path, unpinned: Run) -> None:
    one_core = run_seed(tiny_data, tmp_path / "cores", UNPINNED, prefix=("taskset", "-c", "0"), evaluate=False)
    assert one_core.weights != unpinned.weights


@pytest.mark.slow
@pytest.mark.infra  # about 3 minutes: every instruction emulated
@pytest.mark.tools("qemu-x86_64")  # Debian's qemu-user
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="emulates an x86-64 CPU on an x86-64 machine")
def test_pinned_run_is_identical_on_an_emulated_intel_haswell(tiny_data: Path, tmp_path: Path, pinned: Run) -> None:
    """A different vendor (GenuineIntel), no AVX-512 and other cache sizes: oneDNN and MKL choose their kernels
    from exactly these, and the weights must not change."""
    qemu = shutil.which("qemu-x86_64")
    assert qemu is not None
    other = run_seed(tiny_data, tmp_path / "haswell", PINNED, prefix=(qemu, "-cpu", "Haswell"), evaluate=False)
    assert other.weights == pinned.weights


def test_pinning_refuses_a_library_loaded_with_other_settings() -> None:
    from cxrstudy.params import NumericsParams

    with pytest.raises(RuntimeError, match="already loaded with other settings"):
        numerics.pin(NumericsParams(isa="avx2", threads=7))


def test_the_command_line_loads_no_numeric_library_before_pinning() -> None:
    code = "import sys, cxrstudy.cli; print(sorted(m for m in ('torch', 'numpy', 'cv2') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_environment_differences_ignore_the_commit_and_name_what_changes_numbers() -> None:
    base = {"numerics": {"isa": "avx2", "threads": 2}, "versions": {"torch": "2.14.1"},
            "device": {"kind": "cpu", "kernels": "AVX2"}, "code": {"commit": "a" * 40, "dirty": False}}
    same = {**base, "code": {"commit": "b" * 40, "dirty": True}}
    assert numerics.numerics_differences(base, same) == []
    other = {**same, "versions": {"torch": "2.11.0"}, "device": {"kind": "cpu", "kernels": "AVX512"}}
    assert numerics.numerics_differences(base, other) == [("device.kernels", "AVX2", "AVX512"),
                                                          ("versions.torch", "2.14.1", "2.11.0")]

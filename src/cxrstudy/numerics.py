"""What decides the numbers on a CPU, pinned in one place before torch, NumPy and OpenCV load; and the record of
the environment that every result carries.

Measured on DenseNet-121 (docs/reproducibility.md, `benchmarks/bench_numerics.py`): the weights after a few
training steps change with the thread count (the order of parallel reductions), with oneDNN's kernels (AVX-512 and
AVX2 block the convolutions differently), and, between Intel and AMD CPUs, with MKL's vector-math functions (its
`sqrt` and `exp` take vendor-specific paths unless MKL runs in its reproducible "compatible" branch). With
`numerics.isa: avx2` every library is held to its AVX2 kernels and MKL to that branch, and `numerics.threads` fixes
the thread count, so the same commit gives the same bytes on any x86-64 CPU with AVX2. The training optimiser is
torch's fused implementation, whose square root is exact (the for-each one goes through MKL's).

The command line calls `pin` right after reading params.yaml, before any stage module imports torch, NumPy or
OpenCV: most of these settings are read once, when a library loads.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrstudy.errors import InputError
from cxrstudy.params import NumericsParams

if TYPE_CHECKING:  # type hints only: torch must not load before the numerics are pinned
    import torch

# The variables that hold each library to its AVX2 kernels. Environment variables set by the user are overridden:
# the point is that a machine's own defaults cannot change the numbers.
AVX2_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels
    "DNNL_MAX_CPU_ISA": "AVX2",  # oneDNN (convolutions, pooling)
    "MKL_CBWR": "COMPATIBLE",  # MKL's conditional numerical reproducibility: one code path on Intel and AMD
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # NumPy's AVX-512 loops
    "OPENCV_CPU_DISABLE": "AVX512-SKX",  # OpenCV's AVX-512 dispatch
    "OPENBLAS_CORETYPE": "Haswell",  # OpenBLAS (NumPy's, OpenCV's): its AVX2 kernels
}
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# The libraries these settings must reach before they load.
LIBRARIES = ("torch", "numpy", "cv2")
CODE_PATHS = ("src", "dvc.yaml", "params.yaml", "requirements.txt", "requirements.lock", "pyproject.toml")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo does not say."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_count(cfg: NumericsParams) -> int:
    """The thread count a stage runs with: `cfg.threads`, or one per core this process may use."""
    return cfg.threads or usable_cores()


def settings(cfg: NumericsParams) -> dict[str, str]:
    """The environment variables that `pin` sets for `cfg`."""
    env = dict(AVX2_ENV) if cfg.isa == "avx2" else {}
    if cfg.threads:
        env.update({name: str(cfg.threads) for name in THREAD_ENV})
    return env


def pin(cfg: NumericsParams) -> None:
    """Set the numerics of this process (and of the workers it starts) before torch, NumPy or OpenCV load.

    Raises `InputError` when `isa: avx2` is asked of a CPU without AVX2 and FMA, and `RuntimeError` when a library
    was loaded before with other settings (a programming error: it would silently ignore them).
    """
    if cfg.isa == "avx2" and platform.machine() in ("x86_64", "AMD64"):
        flags = cpu_flags()
        if flags and not {"avx2", "fma"} <= flags:
            raise InputError("numerics.isa: 'avx2' needs a CPU with AVX2 and FMA, and this one lacks them; set "
                             "numerics.isa: native (the numbers then depend on the CPU model)")
    env = settings(cfg)
    loaded = [name for name in LIBRARIES if name in sys.modules]
    if loaded and any(os.environ.get(k) != v for k, v in env.items()):
        raise RuntimeError(f"numerics.pin: {', '.join(loaded)} already loaded with other settings; pin first")
    os.environ.update(env)


def apply_threads(cfg: NumericsParams) -> int:
    """Give torch and OpenCV the pinned thread count (call after importing torch); returns it."""
    import cv2
    import torch

    threads = thread_count(cfg)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    return threads


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def code_version(root: Path = Path(".")) -> dict[str, Any]:
    """The last git commit that changed the code or the configuration (`CODE_PATHS`), and whether the working tree
    differs from it there. Committing results afterwards does not change it, so a clone of the commit that holds
    the results records the same value. `commit` is None outside a git repository."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)

    try:
        paths = [p for p in CODE_PATHS if (root / p).exists()]
        last = git("log", "-1", "--format=%H", "--", *paths)
        status = git("status", "--porcelain", "--untracked-files=normal", "--", *paths)
    except OSError:  # no git
        return {"commit": None, "dirty": None}
    if last.returncode != 0 or not last.stdout.strip():
        return {"commit": None, "dirty": None}
    return {"commit": last.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _best_isa(flags: set[str]) -> str:
    return "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "DEFAULT"


def device_record(device: torch.device | None, cfg: NumericsParams) -> dict[str, Any]:
    """What ran the numbers: the kernels and threads of a CPU, or the GPU, its driver and CUDA. In a stage that does
    not load torch (device None), the kernels are those the pins allow NumPy and OpenCV."""
    if device is not None and device.type == "cuda":
        import torch

        props = torch.cuda.get_device_properties(device)
        return {
            "kind": "cuda",
            "gpu": props.name,
            "capability": f"{props.major}.{props.minor}",
            "driver": _nvidia_driver(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    loaded = sys.modules.get("torch")
    best = _best_isa(cpu_flags())
    record: dict[str, Any] = {
        "kind": "cpu",
        "arch": platform.machine(),
        # the ISA torch's own kernels run (read from torch when this stage uses it), e.g. AVX2
        "kernels": (loaded.backends.cpu.get_cpu_capability() if loaded is not None
                    else "AVX2" if cfg.isa == "avx2" and best != "DEFAULT" else best),
        "onednn_max_isa": os.environ.get("DNNL_MAX_CPU_ISA", "the CPU's best"),
        "mkl_cbwr": os.environ.get("MKL_CBWR", "AUTO"),
        "threads": loaded.get_num_threads() if loaded is not None else thread_count(cfg),
    }
    if cfg.isa == "native":  # the numbers depend on the CPU model: name it
        record["cpu_model"] = cpu_model()
    return record


def _nvidia_driver() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def versions() -> dict[str, str | None]:
    """The versions of what computes the numbers (Python as major.minor: its patch level changes none of them)."""
    return {
        "python": ".".join(platform.python_version_tuple()[:2]),
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "opencv": _version("opencv-python-headless") or _version("opencv-python"),
        "scikit-learn": _version("scikit-learn"),
    }


def environment(cfg: NumericsParams, device: torch.device | None = None) -> dict[str, Any]:
    """The environment record written into every metrics file: everything here can change the numbers (so it
    is the same on any machine when they cannot change), plus the code's commit."""
    return {
        "numerics": cfg.model_dump(),
        "versions": versions(),
        "device": device_record(device, cfg),
        "code": code_version(),
    }


def machine() -> dict[str, Any]:
    """What this machine is, beyond what decides the numbers: kept beside the model, outside its DVC hash (.dvcignore),
    not in git."""
    flags = cpu_flags()
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx", "fma", "amx", "sse4"))),
        "cores_usable": usable_cores(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def numerics_differences(base: dict[str, Any], head: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """The fields of two environment records that can change the numbers and differ: (field, base, head).

    Everything in a record can, except the code's commit (which is what a pull request changes on purpose)."""
    flat_base = {k: v for k, v in _flatten(base).items() if not k.startswith("code.")}
    flat_head = {k: v for k, v in _flatten(head).items() if not k.startswith("code.")}
    return [(k, flat_base.get(k), flat_head.get(k)) for k in sorted(set(flat_base) | set(flat_head))
            if flat_base.get(k) != flat_head.get(k)]

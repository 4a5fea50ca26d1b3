"""Which operations of a DenseNet-121 training step depend on the machine: a digest of each op's output and
gradients on fixed inputs, under the numerics of this process.

    .venv/bin/python benchmarks/numerics_ops.py [--isa avx2|native] [--threads 2] [--out FILE.json]
    qemu-x86_64 -cpu Haswell .venv/bin/python benchmarks/numerics_ops.py --out haswell.json   # another CPU

Run it on two machines (or under an emulated CPU with Debian's qemu-user) and compare the digests: an op whose
digest differs is one whose result depends on the CPU. It also counts how often `torch.sqrt` on float32 differs
from the correctly rounded square root: MKL's vector square root, which torch's for-each optimisers use, is not
exact on every vendor, which is why training uses the fused optimisers. docs/reproducibility.md has the results.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Nothing here imports NumPy or torch before `numerics.pin`: `common` (which does) is imported after it.
sys.path.insert(0, str(Path(__file__).resolve().parent))
if importlib.util.find_spec("cxrstudy") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def run(isa: str, threads: int) -> dict[str, Any]:
    from cxrstudy import numerics
    from cxrstudy.params import NumericsParams

    pins = NumericsParams(isa=isa, threads=threads)  # type: ignore[arg-type]
    numerics.pin(pins)
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torchvision.ops import sigmoid_focal_loss

    numerics.apply_threads(pins)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        # uniform draws (not torch.randn, whose vectorised sampler itself depends on the ISA)
        return torch.rand(*shape, generator=gen) * 2 - 1

    def digest(*tensors: torch.Tensor) -> str:
        out = hashlib.sha256()
        for t in tensors:
            out.update(t.detach().contiguous().numpy().tobytes())
        return out.hexdigest()[:12]

    cl = torch.channels_last
    rows: dict[str, str] = {}

    def check(name: str, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> None:
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        out = fn(*leaves)
        out.backward(rand(*out.shape) if out.dim() else None)
        grads = [x.grad for x in leaves if x.grad is not None]
        rows[name] = f"{digest(out)} / {digest(*grads)}"

    x = rand(16, 64, 16, 16).contiguous(memory_format=cl)
    x128 = rand(16, 128, 16, 16).contiguous(memory_format=cl)
    check("conv 1x1 (oneDNN)", lambda a, w: F.conv2d(a, w), x, rand(128, 64, 1, 1).contiguous(memory_format=cl))
    check("conv 3x3 (oneDNN)", lambda a, w: F.conv2d(a, w, padding=1), x128,
          rand(32, 128, 3, 3).contiguous(memory_format=cl))
    check("conv 7x7/2 stem", lambda a, w: F.conv2d(a, w, stride=2, padding=3),
          rand(16, 1, 64, 64).contiguous(memory_format=cl), rand(64, 1, 7, 7).contiguous(memory_format=cl))
    check("batch norm", lambda a, w, b: F.batch_norm(a, torch.zeros(64), torch.ones(64), w, b, training=True), x,
          torch.ones(64), torch.zeros(64))
    check("max pool", lambda a: F.max_pool2d(a, 3, 2, 1), x)
    check("avg pool", lambda a: F.avg_pool2d(a, 2, 2), x)
    check("linear (MKL sgemm)", lambda a, w, b: F.linear(a, w, b), rand(16, 1024), rand(14, 1024), rand(14))
    check("focal loss", lambda a: sigmoid_focal_loss(a, (rand(16, 14) > 0.8).float(), alpha=-1, gamma=2,
                                                     reduction="mean"), rand(16, 14))
    check("exp (MKL VML)", torch.exp, rand(1000))
    check("sqrt (MKL VML)", torch.sqrt, rand(1000).abs() + 0.1)
    for kind in ("foreach", "fused"):
        param = [rand(1000).requires_grad_(True)]
        opt = torch.optim.AdamW(param, lr=1e-3, **{kind: True})
        for step in range(3):
            param[0].grad = rand(1000) * (step + 1)
            opt.step()
        rows[f"AdamW {kind}"] = digest(param[0])
    values = torch.rand(100_000, generator=gen) + 0.1
    exact = np.sqrt(values.numpy().astype(np.float64)).astype(np.float32)
    inexact = int((torch.sqrt(values).numpy() != exact).sum())
    return {"numerics": {"isa": isa, "threads": threads}, "device": numerics.device_record(None, pins),
            "cpu": numerics.cpu_model(), "ops": rows, "torch_sqrt_not_correctly_rounded_of_100000": inexact}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isa", choices=("avx2", "native"), default="avx2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the digests as JSON (default: print only)")
    args = parser.parse_args()
    result = run(args.isa, args.threads)
    from common import machine, table, write_result

    print(table(f"op digests (output / gradients), isa {args.isa}, {args.threads} threads, "
                f"{result['device']['kernels']} kernels", ["op", "digest"], sorted(result["ops"].items())))
    print(f"torch.sqrt not correctly rounded: {result['torch_sqrt_not_correctly_rounded_of_100000']} of 100,000")
    if args.out is not None:
        write_result(args.out, {"benchmark": "numerics_ops", "machine": machine(), **result})
    else:
        print(json.dumps(result["ops"], indent=1))


if __name__ == "__main__":
    main()

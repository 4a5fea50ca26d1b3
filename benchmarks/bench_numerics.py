"""What the pinned numerics cost: DenseNet-121 training steps per second with `numerics.isa` avx2 vs native, at
1 and 2 threads, and the fused vs for-each AdamW.

    .venv/bin/python benchmarks/bench_numerics.py [--size 64] [--batch 16] [--steps 12] [--repeats 3]
                                                  [--out benchmarks/results/numerics.json]

Each configuration runs in a fresh process (the pins must be set before torch loads), on the stage's own code:
`cxrstudy.numerics.pin`, `cxrstudy.learning.model.build_model`, `cxrstudy.learning.train.make_optimizer` (fused) and
`train_one_epoch`'s step, on the same synthetic uint8 batches; the fastest of `--repeats` timed windows is kept,
after two warm-up steps. It also prints the weights' digest after the timed steps, which shows what the pins are
for: the digests differ between thread counts and between ISAs unless pinned.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Nothing here imports NumPy or torch before `numerics.pin` (a worker's first step): `common` imports NumPy, so the
# parent process imports it only in `main`.
sys.path.insert(0, str(Path(__file__).resolve().parent))
if importlib.util.find_spec("cxrstudy") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
RESULTS = Path(__file__).resolve().parent / "results"

CONFIGS: list[dict[str, Any]] = [
    {"isa": "native", "threads": 1, "optimizer": "fused"},
    {"isa": "avx2", "threads": 1, "optimizer": "fused"},
    {"isa": "native", "threads": 2, "optimizer": "fused"},
    {"isa": "avx2", "threads": 2, "optimizer": "fused"},
    {"isa": "avx2", "threads": 2, "optimizer": "foreach"},
]


def worker(cfg: dict[str, Any], size: int, batch: int, steps: int, repeats: int) -> dict[str, Any]:
    """One configuration, in this (fresh) process."""
    from cxrstudy import numerics
    from cxrstudy.params import NumericsParams, load_params

    pins = NumericsParams(isa=cfg["isa"], threads=cfg["threads"])
    numerics.pin(pins)
    import torch

    from cxrstudy.learning.loader import to_input
    from cxrstudy.learning.losses import make_criterion
    from cxrstudy.learning.model import build_model
    from cxrstudy.learning.train import make_optimizer

    numerics.apply_threads(pins)
    train_cfg = load_params(Path(__file__).resolve().parents[1] / "params.yaml").train
    torch.manual_seed(0)
    model = build_model(14).to(memory_format=torch.channels_last)
    if cfg["optimizer"] == "fused":
        opt = make_optimizer(model, train_cfg)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay,
                                foreach=True)
    criterion = make_criterion(train_cfg.loss)
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (4, batch, 1, size, size), dtype=torch.uint8, generator=gen)
    labels = (torch.rand(4, batch, 14, generator=gen) < 0.1).float()

    def step(i: int) -> None:
        loss = criterion(model(to_input(images[i % 4], torch.device("cpu"), True)), labels[i % 4])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    for i in range(2):
        step(i)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        best = min(best, time.perf_counter() - start)
    digest = hashlib.sha256()
    for _, tensor in sorted(model.state_dict().items()):
        digest.update(tensor.contiguous().numpy().tobytes())
    device = numerics.device_record(None, pins)
    return {**cfg, "images_per_s": round(batch * steps / best, 2), "kernels": device["kernels"],
            "weights_sha256": digest.hexdigest()[:16]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "numerics.json")
    parser.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker), args.size, args.batch, args.steps, args.repeats)))
        return
    from common import machine, table, write_result

    rows = []
    for cfg in CONFIGS:
        done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg), "--size", str(args.size),
                               "--batch", str(args.batch), "--steps", str(args.steps), "--repeats",
                               str(args.repeats)], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = {(r["threads"], r["optimizer"]): r["images_per_s"] for r in rows if r["isa"] == "native"}
    for r in rows:
        native = base.get((r["threads"], "fused"))
        r["vs_native_same_threads"] = round(r["images_per_s"] / native, 3) if native else None
    print(table(f"DenseNet-121 training step, {args.size} px, batch {args.batch} (fastest of {args.repeats} x "
                f"{args.steps} steps)", ["isa", "threads", "optimizer", "kernels", "img/s", "vs native", "weights"],
                [[r["isa"], r["threads"], r["optimizer"], r["kernels"], f"{r['images_per_s']:.1f}",
                  r["vs_native_same_threads"] or "-", r["weights_sha256"]] for r in rows]))
    write_result(args.out, {"benchmark": "numerics", "size": args.size, "batch": args.batch, "steps": args.steps,
                            "repeats": args.repeats, "machine": machine(), "results": rows})


if __name__ == "__main__":
    main()

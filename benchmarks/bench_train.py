"""Benchmark the training step and evaluation (images/s) of the pipeline's own code on synthetic input.

    .venv/bin/python benchmarks/bench_train.py [--sizes 128,224] [--batch 8] [--steps 3] [--device auto]
                                               [--out benchmarks/results/train.json]

The step is `cxrstudy.learning.train.train_one_epoch` (the stage's loop: uint8 batch -> `to_input` -> model -> focal
loss -> AdamW), evaluation is `cxrstudy.learning.predict.predict`, the model `cxrstudy.learning.model.build_model`; only
the input is synthetic (the same few uint8 batches, already in memory), so the figures are the step's own speed
with no loader in the way.
For each size: NCHW vs channels_last in fp32, and on CUDA bf16 autocast too. A last check runs one batch through
every variant from the same weights and reports how far their outputs are from fp32 NCHW: the speed options must
not change the results in meaning.

The helpers here (`step_config`, `train_epochs`, `eval_rate`, ...) are also what bench_loader.py and gpu_check.py
measure with. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import RESULTS, fmt_rate, machine, study_params, table, target, target_rows, use_repo_src, write_result
from torch import nn

use_repo_src()

from cxrstudy.learning.loader import to_input  # noqa: E402
from cxrstudy.learning.losses import make_criterion  # noqa: E402
from cxrstudy.learning.model import build_model  # noqa: E402
from cxrstudy.learning.predict import predict  # noqa: E402
from cxrstudy.learning.train import make_optimizer, make_scheduler, train_one_epoch  # noqa: E402
from cxrstudy.params import TrainParams  # noqa: E402

NUM_CLASSES = 14
Batch = tuple[torch.Tensor, torch.Tensor]


StepConfig = TrainParams  # the training step reads params.yaml's train section, validated


def step_config(**changes: Any) -> TrainParams:
    """The study's train section (`common.study_params`) with `changes` (amp, channels_last, ...)."""
    return study_params().train.model_copy(update=changes)


class StepClock:
    """A monitor for `train_one_epoch` that notes when each step ended (the loop reads the loss back every step,
    so on CUDA that is when the GPU finished it). Monitoring is otherwise off, as with the stage's NullMonitor."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.ends: list[float] = []
        self.images: list[int] = []

    def step(self, *, images: int, **_: Any) -> None:
        self.ends.append(time.perf_counter())
        self.images.append(images)

    def steady_rate(self, skip_fraction: float = 0.2) -> float | None:
        """Images/s between the end of the first `skip_fraction` of the steps and the last: the epoch's pace once
        the loader's pipeline is full (an epoch of the real study is ~300 steps; a benchmark's only a few dozen)."""
        k = int(len(self.ends) * skip_fraction)
        if len(self.ends) - k < 2:
            return None
        return sum(self.images[k + 1:]) / (self.ends[-1] - self.ends[k])

    def median_rate(self) -> float | None:
        """Images/s of the median step (start to end of one step, loader wait included): robust to bursts of
        other load on a shared machine."""
        if not self.ends:
            return None
        gaps = np.diff([self.start, *self.ends])
        return float(np.median(np.array(self.images) / gaps))


def variant_name(cfg: StepConfig, device: torch.device, compiled: bool = False) -> str:
    dtype = "bf16" if cfg.amp and device.type == "cuda" else "fp32"
    return f"{dtype} {'channels_last' if cfg.channels_last else 'NCHW'}{' compiled' if compiled else ''}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batches(count: int, batch: int, size: int, *, distinct: int = 2, seed: int = 0,
                      pin: bool = False) -> list[Batch]:
    """`count` batches of uint8 images (B x 1 x size x size) and 0/1 labels (~10 % positive), cycling through
    `distinct` different ones (memory stays small whatever the count)."""
    gen = torch.Generator().manual_seed(seed)
    made = []
    for _ in range(min(distinct, count)):
        images = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, generator=gen)
        labels = (torch.rand((batch, NUM_CLASSES), generator=gen) < 0.1).float()
        made.append((images.pin_memory(), labels.pin_memory()) if pin else (images, labels))
    return [made[i % len(made)] for i in range(count)]


def build(device: torch.device, cfg: StepConfig, *, compiled: bool = False, seed: int = 0) -> nn.Module:
    """The stage's model, placed as train.run places it (same weights for the same seed)."""
    torch.manual_seed(seed)
    model: nn.Module = build_model(NUM_CLASSES).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compiled else model  # type: ignore[return-value]


@dataclass
class EpochTiming:
    images: int
    seconds: float
    steady_img_s: float | None
    median_step_img_s: float | None

    @property
    def img_s(self) -> float:
        return self.images / self.seconds


def train_epochs(model: nn.Module, cfg: StepConfig, device: torch.device, epochs: Sequence[Iterable[Batch]],
                 train_labels: np.ndarray | None = None) -> list[EpochTiming]:
    """Run `train.train_one_epoch` once per entry of `epochs` (lists of batches or DataLoaders) with one optimizer,
    as the stage does; the timing of each."""
    criterion = make_criterion(cfg.loss, train_labels)  # type: ignore[arg-type]
    opt = make_optimizer(model, cfg)  # type: ignore[arg-type]
    steps = sum(len(e) for e in epochs)  # type: ignore[arg-type]
    sched = make_scheduler(opt, cfg, max(steps, 1))  # type: ignore[arg-type]
    out = []
    for epoch, loader in enumerate(epochs, start=1):
        sync(device)
        clock = StepClock()
        train_one_epoch(model, loader, criterion, opt, sched, device, cfg, epoch,  # type: ignore[arg-type]
                        clock, show=False)
        sync(device)
        out.append(EpochTiming(sum(clock.images), time.perf_counter() - clock.start, clock.steady_rate(),
                               clock.median_rate()))
    return out


def train_rate(model: nn.Module, cfg: StepConfig, device: torch.device, batches: list[Batch], warmup: int,
               median: bool = False) -> float:
    """Training images/s over `batches[warmup:]`, after a first epoch over `batches[:warmup]` (autotuning, caches);
    of the whole timed epoch, or with `median`, of its median step."""
    timing = train_epochs(model, cfg, device, [batches[:warmup], batches[warmup:]])[-1]
    return (timing.median_step_img_s or timing.img_s) if median else timing.img_s


def eval_rate(model: nn.Module, cfg: StepConfig, device: torch.device, loader: Iterable[Batch],
              warm: Iterable[Batch] | None = None, repeats: int = 1) -> float:
    """Evaluation images/s of `predict.predict` (the stage's inference, bf16 autocast on CUDA when cfg.amp): the
    fastest of `repeats` passes after a warm-up pass over `warm`."""
    predict(model, warm if warm is not None else loader, device, cfg.channels_last, cfg.amp)  # type: ignore[arg-type]
    best = 0.0
    for _ in range(max(1, repeats)):
        sync(device)
        start = time.perf_counter()
        logits, _ = predict(model, loader, device, cfg.channels_last, cfg.amp)  # type: ignore[arg-type]
        sync(device)
        best = max(best, len(logits) / (time.perf_counter() - start))
    return best


def agreement(device: torch.device, variants: Sequence[StepConfig], size: int, batch: int) -> dict[str, Any]:
    """One batch through every variant from the same weights (training mode, batch statistics, no update): the
    largest difference of predicted probabilities from fp32 NCHW, and of the focal loss."""
    batch = max(batch, 8)  # batch statistics of fewer images are too unstable to compare variants by
    images, labels = synthetic_batches(1, batch, size, seed=1)[0]

    def run(cfg: StepConfig) -> tuple[torch.Tensor, float]:
        model = build(device, cfg)
        model.train()
        criterion = make_criterion(cfg.loss)  # type: ignore[arg-type]
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16,
                                             enabled=cfg.amp and device.type == "cuda"):
            logits = model(to_input(images, device, cfg.channels_last))
        loss = float(criterion(logits, labels.to(device)))
        return torch.sigmoid(logits.float()).cpu(), loss

    ref_cfg = variants[0].model_copy(update={"amp": False, "channels_last": False})
    ref_probs, ref_loss = run(ref_cfg)
    out: dict[str, Any] = {"reference": variant_name(ref_cfg, device), "batch": batch, "image_size": size,
                           "variants": {}}
    for cfg in variants:
        probs, loss = run(cfg)
        out["variants"][variant_name(cfg, device)] = {
            "max_abs_prob_diff": float((probs - ref_probs).abs().max()),
            "rel_loss_diff": abs(loss - ref_loss) / max(abs(ref_loss), 1e-12),
        }
    return out


def variants_for(device: torch.device) -> list[StepConfig]:
    amps = [False, True] if device.type == "cuda" else [False]
    return [step_config(amp=a, channels_last=cl) for a in amps for cl in (False, True)]


def run(device: torch.device, sizes: Sequence[int], batch: int, steps: int, warmup: int, eval_batch: int,
        eval_batches: int) -> dict[str, Any]:
    variants = variants_for(device)
    rows = []
    for size in sizes:
        batches = synthetic_batches(warmup + steps, batch, size, pin=device.type == "cuda")
        evals = synthetic_batches(eval_batches, eval_batch, size, pin=device.type == "cuda")
        for cfg in variants:
            model = build(device, cfg)
            rows.append({"image_size": size, "variant": variant_name(cfg, device),
                         "train_img_s": round(train_rate(model, cfg, device, batches, warmup, median=True), 2),
                         "eval_img_s": round(eval_rate(model, cfg, device, evals, evals[:1], repeats=2), 2)})
            del model
    speedups: dict[str, dict[str, float]] = {}
    for size in sizes:
        by = {r["variant"]: r for r in rows if r["image_size"] == size}
        speedups[str(size)] = {
            kind: round(by["fp32 channels_last"][f"{kind}_img_s"] / by["fp32 NCHW"][f"{kind}_img_s"], 3)
            for kind in ("train", "eval")}
    agree = agreement(device, variants, min(sizes), 8 if device.type == "cpu" else batch)
    worst_fp32 = max(v["max_abs_prob_diff"] for k, v in agree["variants"].items() if k.startswith("fp32"))
    targets = [target(f"channels_last training speed-up at {s} px (fp32)", sp["train"], 1.15, unit="x")
               for s, sp in speedups.items()]
    targets.append(target("fp32 channels_last vs NCHW: max |delta p|", worst_fp32, 1e-3, higher_is_better=False))
    bf16 = [v["max_abs_prob_diff"] for k, v in agree["variants"].items() if k.startswith("bf16")]
    if bf16:
        targets.append(target("bf16 vs fp32: max |delta p|", max(bf16), 0.05, higher_is_better=False))
    info = {"device_name": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}
    return {
        "benchmark": "train",
        "machine": machine(torch_threads=torch.get_num_threads(), **info),
        "device": device.type, "batch": batch, "steps": steps, "warmup": warmup,
        "eval_batch": eval_batch, "eval_batches": eval_batches,
        "recipe": "focal loss, AdamW, constant LR (the study's); synthetic uint8 input, no loader",
        "rates": "training: the median step; evaluation: the faster of 2 passes (robust to other load)",
        "rows": rows,
        "channels_last_speedup": speedups,
        "agreement": agree,
        "targets": targets,
    }


def print_report(r: dict[str, Any]) -> None:
    rows = [[f"{x['image_size']} px {x['variant']}", fmt_rate(x["train_img_s"]), fmt_rate(x["eval_img_s"])]
            for x in r["rows"]]
    print(table(f"train step and evaluation on {r['device']} ({r['machine']['cpus']} CPUs, "
                f"{r['machine']['torch_threads']} torch threads, load {r['machine'].get('load_average_1m_at_end')}), "
                f"batch {r['batch']}, {r['steps']} timed steps", ["", "train", "eval"], rows))
    agree = [[k, f"{v['max_abs_prob_diff']:.2e}", f"{v['rel_loss_diff']:.2e}"]
             for k, v in r["agreement"]["variants"].items()]
    print(table(f"same results in meaning (vs {r['agreement']['reference']}, one batch, same weights)",
                ["", "max |dp|", "rel. loss diff"], agree))
    print(table("targets", ["", "measured", ""], target_rows(r["targets"])))


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int_list, default=[128, 224], help="image sizes, px (default 128,224)")
    parser.add_argument("--batch", type=int, default=8, help="training batch (default 8)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--eval-batch", type=int, default=32, help="evaluation batch (default 32)")
    parser.add_argument("--eval-batches", type=int, default=2, help="timed evaluation batches (default 2)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS / "train.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if use_cuda:
        torch.backends.cudnn.benchmark = True
    result = run(device, args.sizes, args.batch, args.steps, args.warmup, args.eval_batch, args.eval_batches)
    print_report(result)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

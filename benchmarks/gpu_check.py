"""Every GPU check of issue 4 in one call (at most ~8 minutes on one H100), printing a short table last.

    PYTHONPATH=src python3 benchmarks/gpu_check.py [--out DIR/gpu_check.json] [--budget-s 450] [--no-compile]
    .venv/bin/python benchmarks/gpu_check.py --cpu-smoke        # the same code path at tiny sizes (any machine)
    .venv/bin/python benchmarks/gpu_check.py --readme-from benchmarks/results/gpu_check.json   # projection -> README

Needs torch, torchvision, numpy, OpenCV, pydantic and PyYAML and this repo's `cxrstudy` (found in ../src when not
installed); no DVC. Its settings are the study's (`common.study_params`: params.yaml + configs/nih-study.yaml, validated
by the stages' schema); on a machine without pydantic, bring its wheels along (benchmarks/README.md says how). It
makes its own synthetic data in a temporary folder and measures, with the stage's own model, loader and training-step
code (`cxrstudy.learning.train.train_one_epoch`, `predict`, `cxrstudy.learning.loader.make_loader`):

1. synthetic-input training images/s at 224 px, fp32 vs bf16 autocast x NCHW vs channels_last, eager; then
   compiled (torch.compile) when the time budget allows; peak GPU memory of each;
2. the bf16 channels_last step across batch sizes (the study's batch 8 up to one that fills the GPU), and with
   `deterministic: true` (the study config's setting);
3. the real loader (memory-mapped uint8 array, the study's augmentations, pinned memory, persistent workers)
   alone and feeding the real training step, against the synthetic speed;
4. evaluation images/s: synthetic input, and the real loader as train.py / evaluate.py build it (no workers)
   and with workers;
5. the preprocess stage's per-core rate on this machine's CPUs (a few 1024 px PNGs);
6. that the speed options keep the results (one batch through every variant from the same weights);
7. a projection of the full 4-seed NIH study from these figures (goal: <= 45 minutes).

Without CUDA (or with --cpu-smoke) every step runs on the CPU at tiny sizes: that is how the tests check this
script before it ever meets a GPU. Writes JSON and a Markdown summary beside it (gpu_check.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
README = BENCH / "README.md"
BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
GOAL_TRAIN_IMG_S = 3300.0
GOAL_REAL_OVER_SYNTHETIC = 0.95
GOAL_LOADER_OVER_STEP = 3.0
GOAL_STUDY_MIN = 45.0


@dataclass(frozen=True)
class Sizes:
    image: int          # training crop, px
    stored: int         # processed size, px
    batch: int          # the batch that fills the GPU
    sweep: tuple[int, ...]
    warmup: int         # untimed synthetic steps (cudnn autotuning)
    steps: int          # timed synthetic steps
    loader_steps: int   # steps per epoch of the real loader
    workers: tuple[int, ...]
    eval_images: int
    eval_batch: int
    agree_batch: int
    preprocess_images: int
    preprocess_source: int


GPU = Sizes(image=224, stored=256, batch=256, sweep=(8, 64, 512), warmup=8, steps=25, loader_steps=40,
            workers=(8, max(1, min(16, (os.cpu_count() or 2) - 2))), eval_images=8192, eval_batch=256,
            agree_batch=32, preprocess_images=16, preprocess_source=1024)
SMOKE = Sizes(image=32, stored=40, batch=4, sweep=(2,), warmup=1, steps=2, loader_steps=3, workers=(0, 1),
              eval_images=16, eval_batch=8, agree_batch=8, preprocess_images=3, preprocess_source=256)


@dataclass
class Report:
    """Everything measured, in the order measured; `skipped` says what the time budget left out."""

    mode: str
    sizes: dict[str, Any]
    machine: dict[str, Any] = field(default_factory=dict)
    synthetic_train: list[dict[str, Any]] = field(default_factory=list)
    batch_sweep: list[dict[str, Any]] = field(default_factory=list)
    deterministic: dict[str, Any] | None = None
    loader_alone_img_s: dict[str, float] = field(default_factory=dict)
    real_loader_train: dict[str, Any] | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    preprocess: dict[str, Any] | None = None
    agreement: dict[str, Any] | None = None
    projection: dict[str, Any] | None = None
    targets: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    section_seconds: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    complete: bool = False  # False in the copy written after each section (a run cut short keeps its figures)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def allows(self, needed: float) -> bool:
        return self.left() >= needed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "gpu_check.json")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (automatic without CUDA)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget; optional parts are "
                        "skipped when it runs short (default 450)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--compile", action="store_true", help="run the compiled variant even in --cpu-smoke")
    parser.add_argument("--epochs", type=int, default=25, help="epochs per seed for the projection (study: 25)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds for the projection (study: 4)")
    parser.add_argument("--readme-from", type=Path, metavar="JSON",
                        help="write the projection of this result into --readme, then exit (no measuring)")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--check-imports", action="store_true",
                        help="only import everything the checks use, then exit (a pre-flight for a GPU box)")
    args = parser.parse_args(argv)
    if args.readme_from:
        update_readme(args.readme, json.loads(args.readme_from.read_text()))
        print(f"updated {args.readme} from {args.readme_from}")
        return 0

    sys.path.insert(0, str(BENCH))
    from common import use_repo_src

    use_repo_src()
    # As train.run has it before cuBLAS first runs: the deterministic row needs it from the start.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    try:
        import bench_train  # noqa: F401  (cxrstudy.learning.train, .data, .losses, .model: the code measured)

        import cxrstudy.data.preprocess  # noqa: F401
    except ImportError as err:
        print(f"gpu_check: cannot import the pipeline's training code ({type(err).__name__}: {err}). Where pydantic "
              "is missing, cxrstudy's training modules must import it for type hints only (see benchmarks/README.md)"
              ", or carry pydantic's wheels.", file=sys.stderr)
        return 2
    if args.check_imports:
        print(f"gpu_check: imports fine (torch {torch.__version__}, CUDA available: {torch.cuda.is_available()})")
        return 0
    smoke = args.cpu_smoke or not torch.cuda.is_available()
    report = measure(smoke, args)
    report.complete = True
    save(args.out, report)
    args.out.with_suffix(".md").write_text(render_markdown(asdict(report)) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    print(short_table(asdict(report)))
    return 1 if report.errors else 0


def measure(smoke: bool, args: argparse.Namespace) -> Report:
    import bench_train as bt
    import torch
    from common import machine

    from cxrstudy.learning.predict import seed_everything

    sizes = SMOKE if smoke else GPU
    budget = Budget(args.budget_s)
    device = torch.device("cpu" if smoke else "cuda")
    report = Report(mode="cpu-smoke" if smoke else "cuda", sizes=asdict(sizes))
    report.machine = machine(**device_info(torch, device))
    if smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    seed_everything(0, deterministic=False)  # the stage's speed setting: cudnn.benchmark on

    @contextlib.contextmanager
    def section(name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        except Exception as err:  # one failed check must not lose the others' figures
            report.errors.append(f"{name}: {type(err).__name__}: {err}")
            print(f"gpu_check: {name} failed: {type(err).__name__}: {err}", file=sys.stderr)
        finally:
            report.section_seconds[name] = round(time.perf_counter() - start, 1)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"gpu_check: {name} done ({report.section_seconds[name]:.1f} s, {budget.left():.0f} s left)",
                  flush=True)
            save(args.out, report)

    def synthetic(cfg: bt.StepConfig, batch: int, compiled: bool = False) -> dict[str, Any]:
        row: dict[str, Any] = {"variant": bt.variant_name(cfg, device, compiled), "batch": batch}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            model = bt.build(device, cfg, compiled=compiled)
            batches = bt.synthetic_batches(sizes.warmup + sizes.steps, batch, sizes.image, pin=device.type == "cuda")
            warm, timed = bt.train_epochs(model, cfg, device, [batches[:sizes.warmup], batches[sizes.warmup:]])
            row.update(img_s=round(timed.img_s, 1), warmup_s=round(warm.seconds, 1), status="ok")
        except torch.cuda.OutOfMemoryError:
            row.update(img_s=None, status="out of memory")
        finally:
            model = batches = None  # type: ignore[assignment]
        if device.type == "cuda":
            row["peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        return row

    fast = bt.step_config(amp=True, channels_last=True)
    with section("synthetic training"):
        plain = fast.model_copy(update={"channels_last": False})
        for cfg in bt.variants_for(device) if device.type == "cuda" else [plain, fast]:
            report.synthetic_train.append(synthetic(cfg, sizes.batch))

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        data = Path(tmp)
        with section("real loader"):
            real_loader(report, sizes, device, data, fast, synthetic_rate(report, fast, device, sizes.batch))
        with section("evaluation"):
            evaluation(report, sizes, device, data, fast)

    with section("batch sweep"):
        for batch in sizes.sweep:
            needed = 20 if batch <= 64 else 30
            if smoke or budget.allows(needed + 200):
                report.batch_sweep.append(synthetic(fast, batch))
            else:
                report.skipped.append(f"batch {batch} (time)")
        same = [r for r in report.synthetic_train if r["variant"] == bt.variant_name(fast, device)]
        report.batch_sweep += [{**r, "note": "from the synthetic rows"} for r in same[:1]]
        report.batch_sweep.sort(key=lambda r: r["batch"])

    with section("deterministic"):
        if smoke or budget.allows(200):
            seed_everything(0, deterministic=True)
            try:
                report.deterministic = synthetic(fast, sizes.batch)
            finally:
                torch.use_deterministic_algorithms(False)
                seed_everything(0, deterministic=False)
        else:
            report.skipped.append("deterministic (time)")

    with section("preprocess"):
        report.preprocess = preprocess_rate(sizes)

    with section("agreement"):
        report.agreement = bt.agreement(device, bt.variants_for(device), sizes.image, sizes.agree_batch)

    want_compile = (not args.no_compile) and (not smoke or args.compile)
    with section("compile"):
        if want_compile and (smoke or budget.allows(240)):
            report.synthetic_train.append(synthetic(fast, sizes.batch, compiled=True))
        elif want_compile:
            report.skipped.append(f"compiled variant (time: {budget.left():.0f} s left, ~240 s needed)")
        else:
            report.skipped.append("compiled variant (not asked for)")

    report.machine = machine(**device_info(torch, device))
    report.projection = projection(report, args.epochs, args.seeds, sizes)
    report.targets = targets(report, device, fast)
    return report


def save(path: Path, report: Report) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=2, allow_nan=False) + "\n")


def synthetic_rate(report: Report, cfg: Any, device: Any, batch: int) -> float | None:
    import bench_train as bt

    name = bt.variant_name(cfg, device)
    for row in report.synthetic_train:
        if row["variant"] == name and row["batch"] == batch:
            return row["img_s"]  # type: ignore[no-any-return]
    return None


def real_loader(report: Report, sizes: Sizes, device: Any, data: Path, cfg: Any, synthetic: float | None) -> None:
    """The loader alone per worker count, then the best feeding the stage's training step for two epochs."""
    import bench_train as bt
    import numpy as np
    import torch
    from common import make_images, write_processed

    from cxrstudy.data.shards import load_processed
    from cxrstudy.learning.loader import SplitData, XrayDataset, make_loader, train_transform

    n = sizes.batch * sizes.loader_steps
    processed = data / "processed"
    chunk = 1024

    def drawn() -> Any:
        for start in range(0, n, chunk):
            yield from make_images(min(chunk, n - start), sizes.stored)

    write_processed(processed, drawn(), n, sizes.stored, min(12, n))  # the stage's layout: a shard per NIH archive
    images = load_processed(processed)
    labels = (np.random.default_rng(0).random((n, 14)) < 0.1).astype(np.float32)
    part = SplitData(rows=np.arange(n, dtype=np.int64), labels=labels, names=images.names,
                     patients=np.array([f"p{i}" for i in range(n)]), label_names=tuple(f"f{k}" for k in range(14)))
    dataset = XrayDataset(images, part, train_transform(sizes.image, bt.study_params().train.augment))
    pin = device.type == "cuda"

    def loader(workers: int) -> Any:
        return make_loader(dataset, sizes.batch, shuffle=True, generator=torch.Generator().manual_seed(0),
                           num_workers=workers, pin_memory=pin)

    for w in sizes.workers:
        it = loader(w)
        for _ in it:  # start the workers
            pass
        start = time.perf_counter()
        seen = sum(len(x) for x, _ in it)
        report.loader_alone_img_s[str(w)] = round(seen / (time.perf_counter() - start), 1)
        del it
    best = max(sizes.workers, key=lambda w: report.loader_alone_img_s[str(w)])
    model = bt.build(device, cfg)
    feed = loader(best)
    warm, timed = bt.train_epochs(model, cfg, device, [feed, feed], labels)
    steady = timed.steady_img_s
    report.real_loader_train = {
        "variant": bt.variant_name(cfg, device), "batch": sizes.batch, "workers": best, "images_per_epoch": n,
        "epoch_img_s": round(timed.img_s, 1), "steady_img_s": None if steady is None else round(steady, 1),
        "first_epoch_s": round(warm.seconds, 1), "synthetic_img_s": synthetic,
        "steady_over_synthetic": None if not (synthetic and steady) else round(steady / synthetic, 3),
        "epoch_over_synthetic": None if not synthetic else round(timed.img_s / synthetic, 3),
    }


def evaluation(report: Report, sizes: Sizes, device: Any, data: Path, cfg: Any) -> None:
    """`predict.predict` on synthetic batches, and on the real loader (stored size -> eval resize) as the stage builds
    it (no workers) and with the best worker count."""
    import bench_train as bt
    import numpy as np

    from cxrstudy.data.shards import load_processed
    from cxrstudy.learning.loader import SplitData, XrayDataset, eval_transform, make_loader

    model = bt.build(device, cfg)
    batches = bt.synthetic_batches(max(2, sizes.eval_images // sizes.eval_batch), sizes.eval_batch, sizes.image,
                                   pin=device.type == "cuda")
    report.evaluation["synthetic_img_s"] = round(bt.eval_rate(model, cfg, device, batches, batches[:1]), 1)
    images = load_processed(data / "processed")
    n = min(len(images), sizes.eval_images)
    part = SplitData(rows=np.arange(n, dtype=np.int64), labels=np.zeros((n, 14), np.float32), names=images.names[:n],
                     patients=np.array([f"p{i}" for i in range(n)]), label_names=tuple(f"f{k}" for k in range(14)))
    dataset = XrayDataset(images, part, eval_transform(sizes.image, sizes.stored))
    workers = sorted({0, max(sizes.workers)})
    for w in workers:
        loader = make_loader(dataset, sizes.eval_batch, shuffle=False, generator=None, num_workers=w,
                             pin_memory=device.type == "cuda")
        warm = loader if w else batches[:1]  # a first pass starts the (persistent) workers
        report.evaluation[f"real_loader_{w}_workers_img_s"] = round(bt.eval_rate(model, cfg, device, loader, warm), 1)
    report.evaluation["images"] = n


def preprocess_rate(sizes: Sizes) -> dict[str, Any]:
    """The preprocess stage itself (`cxrstudy.data.preprocess.run`) at one process on a few NIH-sized PNGs, in an
    NIH-style archive of a raw folder in the dataset contract, as the stage reads them: images/s per core on this
    machine, beside decoding alone."""
    import cv2
    from common import study_params, synthetic_xray, write_contract, xray_base

    from cxrstudy.data import preprocess
    from cxrstudy.data.imageio import ARCHIVES_DIR, write_archive
    from cxrstudy.data.shards import read_index

    with tempfile.TemporaryDirectory(prefix="gpu-check-png-") as tmp:
        base = xray_base(sizes.preprocess_source)
        paths = []
        for i in range(sizes.preprocess_images):
            path = Path(tmp) / f"{i:08d}_000.png"
            cv2.imwrite(str(path), synthetic_xray(i, sizes.preprocess_source, base), [cv2.IMWRITE_PNG_COMPRESSION, 6])
            paths.append(path)
        names = [p.name for p in paths]
        raw = Path(tmp) / "raw"
        for folder, members in (("warm", paths[:1]), ("raw", paths)):
            (Path(tmp) / folder / ARCHIVES_DIR).mkdir(parents=True)
            write_archive(Path(tmp) / folder / ARCHIVES_DIR / "images_001.tar.gz",
                          ((p.name, p.read_bytes()) for p in members))
            write_contract(Path(tmp) / folder, [p.name for p in members])
        size = min(256, sizes.preprocess_source)
        study = study_params()
        params = study.model_copy(update={"preprocess": study.preprocess.model_copy(
            update={"image_size": size, "workers": 1})})
        preprocess.run(params, Path(tmp) / "warm", Path(tmp) / "warm-out")
        start = time.perf_counter()
        preprocess.run(params, raw, Path(tmp) / "processed")
        seconds = time.perf_counter() - start
        decode_start = time.perf_counter()
        for p in paths:
            cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        decode_s = time.perf_counter() - decode_start
        if read_index(Path(tmp) / "processed") != names:
            raise RuntimeError("preprocess left images out")
    return {"source_px": sizes.preprocess_source, "images": len(paths), "cpus": os.cpu_count(),
            "img_s_per_core": round(len(paths) / seconds, 1),
            "decode_only_img_s_per_core": round(len(paths) / decode_s, 1)}


def device_info(torch: Any, device: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_precision=torch.get_float32_matmul_precision())
    else:
        info["device_name"] = "CPU (smoke sizes)"
    return info


def projection(report: Report, epochs: int, seeds: int, sizes: Sizes) -> dict[str, Any] | None:
    """The full study from the measured rates: per seed, `epochs` x (train + validation) + the evaluate stage."""
    from common import NIH_IMAGES, NIH_TEST, NIH_TRAIN, NIH_VAL

    real = report.real_loader_train or {}
    train = real.get("steady_img_s") or real.get("epoch_img_s")
    ev = report.evaluation
    eval_now = ev.get("real_loader_0_workers_img_s")  # what train.py and evaluate.py build today
    eval_best = max((v for k, v in ev.items() if k.startswith("real_loader_") and v), default=None)
    pre = report.preprocess or {}
    if not (train and eval_now):
        return None
    startup_s = 30.0

    def study(train_img_s: float, eval_img_s: float) -> float:
        per_seed = epochs * (NIH_TRAIN / train_img_s + NIH_VAL / eval_img_s) + (NIH_VAL + NIH_TEST) / eval_img_s
        return seeds * (per_seed + startup_s)

    pre_s = NIH_IMAGES / (pre["img_s_per_core"] * (pre["cpus"] or 1) * 0.9) if pre.get("img_s_per_core") else 0.0
    protocol = next((r for r in report.batch_sweep if r["batch"] == 8 and r.get("img_s")), None)
    out = {
        "device": report.machine.get("device_name"),
        "assumes": f"{seeds} seeds x {epochs} epochs, NIH official split (train {NIH_TRAIN:,}, val {NIH_VAL:,}, "
                   f"test {NIH_TEST:,}), seeds one after another on this one GPU, {startup_s:.0f} s start-up per "
                   "seed, preprocess on this machine's cores at 90 % scaling; ingest (download) not included",
        "train_img_s": train, "batch": real.get("batch"), "eval_img_s_as_built": eval_now, "eval_img_s_best": eval_best,
        "preprocess_s": round(pre_s, 1),
        "study_min": round((study(train, eval_now) + pre_s) / 60, 1),
        "study_min_eval_with_workers": round((study(train, eval_best or eval_now) + pre_s) / 60, 1),
        "study_min_at_batch_8": None if not protocol else round(
            (study(protocol["img_s"], eval_now) + pre_s) / 60, 1),
        "goal_min": GOAL_STUDY_MIN,
    }
    if sizes is SMOKE:
        out["note"] = "CPU smoke sizes: the figures only exercise the formula"
    return out


def targets(report: Report, device: Any, fast: Any) -> list[dict[str, Any]]:
    import bench_train as bt
    from common import target

    rate = synthetic_rate(report, fast, device, report.sizes["batch"])
    real = report.real_loader_train or {}
    loader_best = max(report.loader_alone_img_s.values(), default=None)
    proj = report.projection or {}
    out = [
        target(f"synthetic training, {bt.variant_name(fast, device)}, eager", rate, GOAL_TRAIN_IMG_S, unit="img/s"),
        target("real loader + step / synthetic (steady)", real.get("steady_over_synthetic"), GOAL_REAL_OVER_SYNTHETIC),
        target("loader alone / training step", None if not (loader_best and rate) else loader_best / rate,
               GOAL_LOADER_OVER_STEP, unit="x"),
        target("4-seed NIH study, projected", proj.get("study_min"), GOAL_STUDY_MIN, higher_is_better=False,
               unit="min"),
    ]
    return out


# --- output -----------------------------------------------------------------------------------------------------


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f} img/s"


def summary_rows(r: dict[str, Any]) -> list[list[str]]:
    rows = []
    for row in r["synthetic_train"]:
        mem = f"{row['peak_gb']:.1f} GB" if row.get("peak_gb") is not None else ""
        rows.append([f"train, synthetic, {row['variant']}, batch {row['batch']}",
                     _rate(row["img_s"]) if row["status"] == "ok" else row["status"], mem])
    for row in r["batch_sweep"]:
        if "note" not in row:
            mem = f"{row['peak_gb']:.1f} GB" if row.get("peak_gb") is not None else ""
            rows.append([f"train, synthetic, {row['variant']}, batch {row['batch']}",
                         _rate(row["img_s"]) if row["status"] == "ok" else row["status"], mem])
    if r["deterministic"]:
        d = r["deterministic"]
        rows.append([f"train, synthetic, {d['variant']}, deterministic", _rate(d["img_s"]), ""])
    for w, v in r["loader_alone_img_s"].items():
        rows.append([f"loader alone, {w} workers", _rate(v), ""])
    real = r["real_loader_train"]
    if real:
        share = real.get("steady_over_synthetic")
        rows.append([f"train, real loader ({real['workers']} workers) + step, steady", _rate(real["steady_img_s"]),
                     "" if share is None else f"{share:.0%} of synthetic"])
        rows.append(["train, real loader + step, whole epoch", _rate(real["epoch_img_s"]), ""])
    ev = r["evaluation"]
    for k, v in ev.items():
        if k.endswith("_img_s"):
            rows.append([f"evaluate, {k[:-6].replace('_', ' ')}", _rate(v), ""])
    pre = r["preprocess"]
    if pre:
        rows.append([f"preprocess {pre['source_px']} px PNG, per core ({pre['cpus']} cores)",
                     _rate(pre["img_s_per_core"]), f"decode alone {_rate(pre['decode_only_img_s_per_core'])}"])
    return rows


def short_table(r: dict[str, Any]) -> str:
    from common import table, target_rows

    m = r["machine"]
    head = (f"gpu_check ({r['mode']}) on {m.get('device_name')}, torch {m.get('torch')}, "
            f"{r['sizes']['image']} px, in {sum(r['section_seconds'].values()):.0f} s")
    out = [table(head, ["", "rate", ""], summary_rows(r))]
    p = r["projection"]
    if p:
        out.append(f"  projection: {p['study_min']:.1f} min for the 4-seed NIH study at batch {p['batch']} "
                   f"(eval loader with workers: {p['study_min_eval_with_workers']:.1f} min; at batch 8: "
                   f"{'-' if p['study_min_at_batch_8'] is None else format(p['study_min_at_batch_8'], '.1f')} min); "
                   f"goal <= {p['goal_min']:.0f}")
    out.append(table("targets", ["", "measured", ""], target_rows(r["targets"])))
    if r["skipped"]:
        out.append("  skipped: " + "; ".join(r["skipped"]))
    if r["errors"]:
        out.append("  ERRORS: " + "; ".join(r["errors"]))
    return "\n".join(out)


def render_markdown(r: dict[str, Any]) -> str:
    """The README block: the card, the figures, the projection."""
    m, p = r["machine"], r["projection"]
    lines = [f"Measured by `benchmarks/gpu_check.py` ({r['mode']}) on **{m.get('device_name')}** "
             f"({m.get('cpus')} CPU cores; torch {m.get('torch')}, CUDA {m.get('cuda', '-')}, "
             f"cuDNN {m.get('cudnn', '-')}), {r['sizes']['image']} px:", "",
             "| measurement | rate | |", "| --- | ---: | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in summary_rows(r)]
    lines.append("")
    if p:
        eight = "-" if p["study_min_at_batch_8"] is None else f"{p['study_min_at_batch_8']:.1f}"
        lines += [f"**Projected 4-seed NIH study on {p['device']}: {p['study_min']:.1f} min** "
                  f"(goal <= {p['goal_min']:.0f} min) at batch {p['batch']}; "
                  f"{p['study_min_eval_with_workers']:.1f} min with workers in the evaluation loaders; "
                  f"{eight} min at the protocol's batch 8. Assumes: {p['assumes']}.", ""]
    lines.append("| target | measured | |")
    lines.append("| --- | ---: | --- |")
    from common import target_rows

    lines += [f"| {a} | {b} | {c} |" for a, b, c in target_rows(r["targets"])]
    if r["skipped"]:
        lines += ["", "Skipped: " + "; ".join(r["skipped"]) + "."]
    return "\n".join(lines)


def update_readme(readme: Path, result: dict[str, Any]) -> None:
    """Replace the block between the gpu-check markers of `readme` by `result`'s summary."""
    sys.path.insert(0, str(BENCH))
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: no {BEGIN} ... {END} block to update")
    block = f"{BEGIN}\n{render_markdown(result)}\n{END}"
    readme.write_text(re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S))


if __name__ == "__main__":
    sys.exit(main())

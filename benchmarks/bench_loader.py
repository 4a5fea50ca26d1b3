"""Benchmark the processed format and the training loader: which format to store, and whether the loader keeps up.

    .venv/bin/python benchmarks/bench_loader.py [--params configs/nih-study.yaml] [--n 2000] [--workers 0,1,2]
                                                [--dvc-n 2000] [--out benchmarks/results/loader.json]

1. Formats, on `--n` synthetic processed images (stored size from --params): a folder of pre-resized PNGs (one file
   each, as `write_png` writes them), one uint8 array memory-mapped (`images.npy`, what the preprocess stage wrote
   before it was sharded), and the stage's shards (`--shard-size` images per .npy, written by its own ShardWriter,
   with its index.csv, read through `load_processed`; the stage writes one shard per raw archive). For each: files,
   bytes, time to write, random-access reads per second in one process (page cache warm), and the DVC cost of keeping
   it: `dvc add`, a no-op `dvc status` and `dvc push` to a local remote, timed in a scratch DVC repo (`--dvc-n` 0
   skips them).
2. The training loader as the stage builds it (`XrayDataset` on the memory-mapped shards of `load_processed`, NIH's
   12 of them, `train_transform` with the augmentations of --params, `make_loader`), in images/s for each
   `--workers` count (the second epoch: persistent workers already started).
3. What a training step consumes on the same machine (bench_train.py's measurement, the stage's own step at the
   same size) and the ratio; the issue asks for a loader >= 3x the step. On a GPU box gpu_check.py measures the
   same loader against the GPU's step.

Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    NIH_IMAGES,
    RESULTS,
    ROOT,
    fmt_rate,
    machine,
    make_images,
    table,
    target,
    target_rows,
    timed,
    use_repo_src,
    write_processed,
    write_result,
)

use_repo_src()

from bench_train import build, step_config, synthetic_batches, train_rate  # noqa: E402

from cxrstudy.data.imageio import read_gray, write_png  # noqa: E402
from cxrstudy.data.shards import load_processed  # noqa: E402
from cxrstudy.learning.loader import SplitData, XrayDataset, make_loader, train_transform  # noqa: E402
from cxrstudy.params import Params  # noqa: E402
from cxrstudy.profile import load as load_profile  # noqa: E402

GOAL_LOADER_OVER_STEP = 3.0
NIH_ARCHIVES = 12  # the stage writes one shard per raw archive
LABELS = tuple(f"finding_{k}" for k in range(14))


def write_png_dir(images: np.ndarray, folder: Path) -> None:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        write_png(folder / f"{i:08d}_000.png", image)


def write_npy(images: np.ndarray, path: Path) -> None:
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=images.shape)
    array[:] = images
    array.flush()
    del array


def write_shards(images: np.ndarray, folder: Path, shard_size: int) -> None:
    write_processed(folder, images, len(images), images.shape[1], -(-len(images) // shard_size))


def reader(kind: str, where: Path, n: int, shard_size: int) -> Callable[[int], np.ndarray]:
    """A function returning image i (a private copy, as the Dataset makes) in format `kind`."""
    if kind == "png_dir":
        paths = sorted(where.iterdir())
        return lambda i: read_gray(paths[i])
    if kind == "npy":
        array = np.load(where, mmap_mode="r")
        return lambda i: np.array(array[i])
    processed = load_processed(where)
    return lambda i: np.array(processed[i])


def disk(where: Path) -> tuple[int, int]:
    if where.is_file():
        return 1, where.stat().st_size
    files = [p for p in where.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def dvc_available() -> bool:
    return importlib.util.find_spec("dvc") is not None


def dvc(args: list[str], cwd: Path) -> float:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return seconds


def dvc_repo(repo: Path, remote: Path) -> None:
    repo.mkdir(parents=True)
    dvc(["init", "--no-scm", "-q"], repo)
    dvc(["remote", "add", "-d", "-q", "local", str(remote)], repo)


def dvc_costs(repo: Path, target_name: str) -> dict[str, float]:
    """Seconds of `dvc add`, a no-op `dvc status` and `dvc push` (local remote) of one target of `repo`."""
    return {
        "add_s": round(dvc(["add", "-q", target_name], repo), 3),
        "status_noop_s": round(dvc(["status", "-q", f"{target_name}.dvc"], repo), 3),
        "push_s": round(dvc(["push", "-q", f"{target_name}.dvc"], repo), 3),
    }


def formats(images: np.ndarray, root: Path, shard_size: int, reads: int, dvc_n: int) -> dict[str, dict[str, Any]]:
    n = len(images)
    order = np.random.default_rng(0).permutation(n)[:reads]
    out: dict[str, dict[str, Any]] = {}
    places = {"png_dir": root / "png_dir", "npy": root / "images.npy", "shards": root / "shards"}
    writers: dict[str, Callable[[np.ndarray, Path], None]] = {
        "png_dir": write_png_dir, "npy": write_npy,
        "shards": lambda imgs, where: write_shards(imgs, where, shard_size)}
    for kind, where in places.items():
        write_s = timed(lambda kind=kind, where=where: writers[kind](images, where))  # type: ignore[misc]
        files, size = disk(where)
        read = reader(kind, where, n, shard_size)
        for i in order:  # warm the page cache
            read(int(i))
        read_s = timed(lambda read=read: [read(int(i)) for i in order])  # type: ignore[misc]
        out[kind] = {"files": files, "bytes": size, "write_s": round(write_s, 3),
                     "random_reads_per_s": round(len(order) / read_s, 1)}
    if dvc_n and dvc_available():
        repo = root / "dvc-repo"
        dvc_repo(repo, root / "dvc-remote")
        subset = images[:dvc_n]
        for kind, where in places.items():
            writers[kind](subset, repo / where.name)
            out[kind]["dvc"] = {"images": len(subset), **dvc_costs(repo, where.name)}
    return out


def dvc_projection(fmts: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Linear in files: the cost per file of the PNG folder over the one-file array, times NIH's 112,120."""
    if "dvc" not in fmts["png_dir"]:
        return None
    png, npy = fmts["png_dir"]["dvc"], fmts["npy"]["dvc"]
    n = png["images"]
    out: dict[str, Any] = {"assumes": "cost linear in the number of files, measured at "
                                      f"{n} images; the array's cost is then mostly DVC's start-up and hashing",
                           "measured_files": n}
    for key in ("add_s", "status_noop_s", "push_s"):
        per_file = max(0.0, png[key] - npy[key]) / n
        out[f"png_dir_{key}"] = round(npy[key] + per_file * NIH_IMAGES, 1)
    return out


def loader_rates(images: np.ndarray, root: Path, size: int, batch: int, workers: list[int],
                 params: Params) -> dict[str, float]:
    """The stage's training loader on the memory-mapped shards: images/s of a second epoch, per worker count."""
    n = len(images)
    write_processed(root / "loader", images, n, images.shape[1], min(NIH_ARCHIVES, n))
    processed = load_processed(root / "loader")
    labels = (np.random.default_rng(0).random((n, len(LABELS))) < 0.1).astype(np.float32)
    part = SplitData(rows=np.arange(n, dtype=np.int64), labels=labels, names=processed.names,
                     patients=np.array([f"p{i}" for i in range(n)]), label_names=LABELS)
    dataset = XrayDataset(processed, part, train_transform(size, params.train.augment))
    rates = {}
    for w in workers:
        loader = make_loader(dataset, batch, shuffle=True, generator=torch.Generator().manual_seed(0),
                             num_workers=w, pin_memory=False)
        for _ in loader:  # first epoch: starts the (persistent) workers
            pass
        start = time.perf_counter()
        seen = sum(len(x) for x, _ in loader)
        rates[str(w)] = round(seen / (time.perf_counter() - start), 1)
        del loader
    return rates


def run(params: Params, source: str, n: int, stored: int, size: int, batch: int, workers: list[int],
        shard_size: int, reads: int, dvc_n: int, step_batch: int, step_steps: int) -> dict[str, Any]:
    images = make_images(n, stored)
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        root = Path(tmp)
        fmts = formats(images, root, shard_size, min(reads, n), min(dvc_n, n))
        rates = loader_rates(images, root, size, batch, workers, params)
    step = None
    if step_steps:
        cfg = step_config(channels_last=params.train.channels_last, amp=False)
        device = torch.device("cpu")
        model = build(device, cfg)
        step = train_rate(model, cfg, device, synthetic_batches(1 + step_steps, step_batch, size), warmup=1)
    best = max(rates.values())
    ratio = None if step is None else best / step
    return {
        "benchmark": "loader",
        "machine": machine(torch_threads=torch.get_num_threads()),
        "params": source, "images": n, "stored_size": stored, "image_size": size, "batch": batch,
        "augment": params.train.augment.model_dump(),
        "formats": fmts,
        "dvc_available": dvc_available(),
        "dvc_projection_nih": dvc_projection(fmts),
        "chosen_format": "shards",
        "loader_images_per_s_by_workers": rates,
        "train_step_images_per_s": None if step is None else round(step, 2),
        "train_step": None if step is None else {"device": "cpu", "batch": step_batch, "steps": step_steps,
                                                  "channels_last": params.train.channels_last},
        "loader_over_step": None if ratio is None else round(ratio, 2),
        "targets": [target("loader / training step (same machine)", ratio, GOAL_LOADER_OVER_STEP, unit="x")],
    }


def print_report(r: dict[str, Any]) -> None:
    rows = []
    for kind, f in r["formats"].items():
        d = f.get("dvc", {})
        rows.append([kind, f"{f['files']:,}", f"{f['bytes'] / 1e6:,.1f} MB", f"{f['write_s']:.2f} s",
                     fmt_rate(f["random_reads_per_s"]),
                     *(f"{d[k]:.2f} s" if k in d else "-" for k in ("add_s", "status_noop_s", "push_s"))])
    print(table(f"processed formats: {r['images']:,} images of {r['stored_size']} px, {r['machine']['cpus']} CPUs "
                f"(load {r['machine'].get('load_average_1m_at_end')})",
                ["", "files", "size", "write", "random reads", "dvc add", "dvc status", "dvc push"], rows))
    proj = r["dvc_projection_nih"]
    if proj:
        print(f"  -> a PNG folder of {NIH_IMAGES:,} files, extrapolated from {proj['measured_files']:,}: dvc add "
              f"{proj['png_dir_add_s']:,.0f} s, no-op dvc status {proj['png_dir_status_noop_s']:,.0f} s, "
              f"dvc push {proj['png_dir_push_s']:,.0f} s")
    rows = [[f"training loader, {w} workers", fmt_rate(v)] for w, v in r["loader_images_per_s_by_workers"].items()]
    if r["train_step_images_per_s"] is not None:
        rows.append([f"training step (CPU, batch {r['train_step']['batch']})", fmt_rate(r["train_step_images_per_s"])])
        rows.append(["loader / step", f"{r['loader_over_step']:.1f}x"])
    print(table(f"loader on the stage's shards, {r['stored_size']} -> {r['image_size']} px, batch {r['batch']}, "
                f"augment {r['augment']}", ["", "rate"], rows))
    print(table("targets", ["", "measured", ""], target_rows(r["targets"])))


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=ROOT / "configs" / "nih-study.yaml",
                        help="a profile applied on params.yaml for augmentations, sizes and batch (default: the study)")
    parser.add_argument("--n", type=int, default=2000, help="synthetic processed images (default 2000)")
    parser.add_argument("--stored", type=int, help="stored size, px (default: preprocess.image_size)")
    parser.add_argument("--size", type=int, help="training crop, px (default: train.image_size)")
    parser.add_argument("--batch", type=int, default=64, help="loader batch (default 64)")
    parser.add_argument("--workers", type=int_list, default=[0, 1, 2], help="loader worker counts (default 0,1,2)")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    parser.add_argument("--reads", type=int, default=1000, help="random reads timed per format (default 1000)")
    parser.add_argument("--dvc-n", type=int, default=2000, help="images per format for the DVC timings; 0 = none")
    parser.add_argument("--step-batch", type=int, default=8, help="batch of the CPU training step (default 8)")
    parser.add_argument("--step-steps", type=int, default=2, help="timed CPU training steps; 0 = skip (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS / "loader.json")
    args = parser.parse_args(argv)
    params = load_profile(args.params, ROOT / "params.yaml")
    stored = args.stored or params.preprocess.image_size
    size = args.size or params.train.image_size
    if size > stored:
        parser.error(f"--size {size} is larger than the stored size {stored}")
    result = run(params, str(args.params), args.n, stored, size, args.batch, args.workers, args.shard_size,
                 args.reads, args.dvc_n, args.step_batch, args.step_steps)
    print_report(result)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the preprocess stage (CLAHE + resize) against the decode floor and a naive baseline, side by side.

    .venv/bin/python benchmarks/bench_preprocess.py [--n 64] [--image-size 256] [--workers 2]
                                                    [--out benchmarks/results/preprocess.json]

On synthetic 1024 px PNGs of NIH's size (~370 KB, see common.synthetic_xray), read once beforehand so that the
page cache holds them (CPU cost, not this machine's disk), it times in one run:

- floor: reading + decoding the same PNGs and nothing else, one process, OpenCV single-threaded;
- naive: one process, scikit-image (io.imread, exposure.equalize_adapthist, transform.resize) on a subset;
- ours: `cxrstudy.data.preprocess.run`, the stage itself on a raw folder in the dataset contract (the PNGs streamed
  out of NIH-style `.tar.gz` archives and MD5-checked in the same read, one shard per archive, into a new output
  folder each time), at 1 and at `--workers` processes;
- a per-image breakdown (decode, CLAHE, resize, PNG encode) and a what-if: CLAHE run after a first area
  downscale to `--clahe-size` px instead of at the source resolution, with how much that changes the output.

Targets (issue 4): ours at 1 process >= 85 % of the floor rate (per core), >= 1.8x from 1 to 2 processes, output
identical whatever the number of processes. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from common import (
    NIH_IMAGES,
    RESULTS,
    ROOT,
    fmt_rate,
    machine,
    synthetic_xray,
    table,
    target,
    target_rows,
    timed,
    use_repo_src,
    write_contract,
    write_result,
    xray_base,
)

use_repo_src()

from cxrstudy.data import preprocess  # noqa: E402
from cxrstudy.data.imageio import ARCHIVES_DIR, write_archive  # noqa: E402
from cxrstudy.data.release import archive_file_names  # noqa: E402
from cxrstudy.data.shards import load_processed  # noqa: E402
from cxrstudy.params import PreprocessParams, load_params  # noqa: E402

SOURCE_SIZE = 1024
TARGET_CORES = 16
GOAL_EFFICIENCY = 0.85
GOAL_SCALING = 1.8


def make_pngs(folder: Path, n: int, size: int) -> list[Path]:
    folder.mkdir(parents=True)
    base = xray_base(size)
    paths = [folder / f"{i:08d}_000.png" for i in range(n)]
    for i, path in enumerate(paths):
        ok, buf = cv2.imencode(".png", synthetic_xray(i, size, base), [cv2.IMWRITE_PNG_COMPRESSION, 6])
        assert ok
        path.write_bytes(buf.tobytes())
    return paths


def decode(path: Path) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)


def run_floor(paths: list[Path]) -> None:
    for p in paths:
        decode(p)


def run_naive(paths: list[Path], cfg: PreprocessParams) -> list[np.ndarray]:
    from skimage import exposure, io, transform, util

    out = []
    for p in paths:
        image = io.imread(p)
        # skimage's clip_limit is a fraction of the tile's pixels, OpenCV's a multiple of the mean bin count:
        # 2.0 / 256 bins is the same clipping level.
        image = exposure.equalize_adapthist(image, kernel_size=image.shape[0] // cfg.tile_grid,
                                            clip_limit=cfg.clip_limit / 256)
        image = transform.resize(image, (cfg.image_size, cfg.image_size), anti_aliasing=True)
        out.append(util.img_as_ubyte(image))
    return out


def pack(paths: list[Path], raw: Path) -> list[Path]:
    """The PNGs as the stage reads them: a raw folder in the dataset contract, with NIH-style archives (NIH's 12
    archive sizes, scaled), gzipped."""
    folder = raw / ARCHIVES_DIR
    folder.mkdir(parents=True)
    archives, start = [], 0
    for name, count in archive_file_names(len(paths)).items():
        write_archive(folder / name, ((p.name, p.read_bytes()) for p in paths[start : start + count]))
        archives.append(folder / name)
        start += count
    write_contract(raw, [p.name for p in paths])
    return archives


def run_ours(raw: Path, cfg: PreprocessParams) -> np.ndarray:
    """The stage on `raw` into a new output folder (an earlier output's shards would be kept, not re-made); the
    images in the label table's order."""
    out = raw.parent / "processed"
    shutil.rmtree(out, ignore_errors=True)
    preprocess.run(load_params(ROOT / "params.yaml").model_copy(update={"preprocess": cfg}), raw, out)
    processed = load_processed(out)
    return np.stack([np.array(processed[i]) for i in range(len(processed))])


def fastest(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(seconds of the fastest run, what the last run returned)."""
    best, value = float("inf"), None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def per_image_ms(fn: Callable[[], Any], repeats: int = 5) -> float:
    fn()
    return statistics.median(timed(fn) for _ in range(repeats)) * 1e3


def area(image: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def breakdown(paths: list[Path], cfg: PreprocessParams, clahe_size: int) -> dict[str, float]:
    """Single-thread milliseconds per image of each step (median over a few images)."""
    clahe = cv2.createCLAHE(clipLimit=cfg.clip_limit, tileGridSize=(cfg.tile_grid, cfg.tile_grid))
    sample = paths[: min(4, len(paths))]
    images = [decode(p) for p in sample]
    small = [area(im, clahe_size) for im in images]
    stored = [area(im, cfg.image_size) for im in images]

    def each(fn: Callable[[int], Any]) -> float:
        return statistics.median(per_image_ms(lambda i=i: fn(i)) for i in range(len(sample)))  # type: ignore[misc]

    return {
        "read_file": each(lambda i: sample[i].read_bytes()),
        "decode": each(lambda i: decode(sample[i])),
        "clahe_at_source": each(lambda i: clahe.apply(images[i])),
        "resize_source_to_stored": each(lambda i: area(images[i], cfg.image_size)),
        f"resize_source_to_{clahe_size}": each(lambda i: area(images[i], clahe_size)),
        f"clahe_at_{clahe_size}": each(lambda i: clahe.apply(small[i])),
        f"resize_{clahe_size}_to_stored": each(lambda i: area(small[i], cfg.image_size)),
        "png_encode_stored": each(lambda i: cv2.imencode(".png", stored[i], [cv2.IMWRITE_PNG_COMPRESSION, 1])),
    }


def clahe_at(image: np.ndarray, cfg: PreprocessParams, size: int) -> np.ndarray:
    """The what-if: area-downscale to `size`, CLAHE there, then to the stored size."""
    clahe = cv2.createCLAHE(clipLimit=cfg.clip_limit, tileGridSize=(cfg.tile_grid, cfg.tile_grid))
    if min(image.shape) > size:
        image = area(image, size)
    return area(clahe.apply(image), cfg.image_size)


def run(n: int, naive_n: int, image_size: int, workers: int, clahe_size: int, repeats: int) -> dict[str, Any]:
    cv2.setNumThreads(1)
    cfg1 = PreprocessParams.model_validate({**load_params(ROOT / "params.yaml").preprocess.model_dump(),
                                            "image_size": image_size, "clahe_size": 0, "workers": 1})
    cfgn = cfg1.model_copy(update={"workers": workers})
    has_option = "clahe_size" in PreprocessParams.model_fields
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        paths = make_pngs(Path(tmp) / "images", n, SOURCE_SIZE)
        raw = Path(tmp) / "raw"
        archives = pack(paths, raw)
        mean_kb = sum(p.stat().st_size for p in paths) / n / 1024
        for p in [*paths, *archives]:  # warm the page cache: time the CPU work, not the disk
            p.read_bytes()
        floor_s, _ = fastest(lambda: run_floor(paths), repeats)
        naive_paths = paths[:naive_n]
        naive_s, naive_out = fastest(lambda: run_naive(naive_paths, cfg1), 1) if naive_n else (None, None)
        ours1_s, out1 = fastest(lambda: run_ours(raw, cfg1), repeats)
        oursn_s, outn = fastest(lambda: run_ours(raw, cfgn), repeats)
        variants: dict[str, Any] = {}
        if has_option:  # the stage's own option, once it exists (see docs/performance.md)
            v1 = cfg1.model_copy(update={"clahe_size": clahe_size})
            vn = v1.model_copy(update={"workers": workers})
            v1_s, vout1 = fastest(lambda: run_ours(raw, v1), repeats)
            vn_s, voutn = fastest(lambda: run_ours(raw, vn), repeats)
            variants = {"rate_1": n / v1_s, "rate_n": n / vn_s, "identical": bool(np.array_equal(vout1, voutn))}
        steps = breakdown(paths, cfg1, clahe_size)
        source = [decode(p) for p in paths[: min(8, n)]]
        what_if = np.stack([clahe_at(im, cfg1, clahe_size) for im in source]).astype(np.int16)
        diff = np.abs(what_if - out1[: len(source)].astype(np.int16))
        naive_diff = (None if naive_out is None else
                      float(np.abs(np.stack(naive_out).astype(np.int16) - out1[:naive_n].astype(np.int16)).mean()))
    rates = {"floor (decode only, 1 process)": n / floor_s,
             "naive skimage (1 process)": None if naive_s is None else naive_n / naive_s,
             "ours, 1 process": n / ours1_s,
             f"ours, {workers} processes": n / oursn_s}
    if variants:
        rates[f"ours, CLAHE at {clahe_size} px, 1 process"] = variants["rate_1"]
        rates[f"ours, CLAHE at {clahe_size} px, {workers} processes"] = variants["rate_n"]
    efficiency = (n / ours1_s) / (n / floor_s)
    scaling = ours1_s / oursn_s
    identical = bool(np.array_equal(out1, outn))
    predicted = steps["decode"] + steps["read_file"]
    what_if_ms = predicted + steps[f"resize_source_to_{clahe_size}"] + steps[f"clahe_at_{clahe_size}"] + \
        steps[f"resize_{clahe_size}_to_stored"]
    targets = [
        target("ours at 1 process / decode floor", efficiency, GOAL_EFFICIENCY),
        target(f"speed-up from 1 to {workers} processes", scaling, GOAL_SCALING, unit="x"),
        target(f"output identical at 1 and {workers} processes", float(identical), 1.0),
    ]
    if variants:
        targets += [
            target(f"CLAHE at {clahe_size} px: ours at 1 process / floor", variants["rate_1"] / (n / floor_s),
                   GOAL_EFFICIENCY),
            target(f"CLAHE at {clahe_size} px: speed-up 1 to {workers}", variants["rate_n"] / variants["rate_1"],
                   GOAL_SCALING, unit="x"),
            target(f"CLAHE at {clahe_size} px: identical at 1 and {workers}", float(variants["identical"]), 1.0),
        ]
    per_core = n / ours1_s
    return {
        "benchmark": "preprocess",
        "machine": machine(opencv=cv2.__version__),
        "images": n, "naive_images": naive_n, "source_size": SOURCE_SIZE, "mean_file_kb": round(mean_kb, 1),
        "image_size": image_size, "workers": workers, "repeats": repeats,
        "settings": cfg1.model_dump(exclude={"workers"}),
        "images_per_s": {k: None if v is None else round(v, 2) for k, v in rates.items()},
        "efficiency_vs_floor": round(efficiency, 3),
        "scaling": round(scaling, 3),
        "identical_across_processes": identical,
        "naive_mean_abs_diff_grey_levels": None if naive_diff is None else round(naive_diff, 2),
        "ms_per_image_single_thread": {k: round(v, 3) for k, v in steps.items()},
        "clahe_at_reduced_size": {
            "clahe_size": clahe_size,
            "stage_option_present": has_option,
            "predicted_efficiency_vs_floor": round(predicted / what_if_ms, 3),
            "mean_abs_diff_grey_levels": round(float(diff.mean()), 3),
            "p99_abs_diff_grey_levels": float(np.percentile(diff, 99)),
            "max_abs_diff_grey_levels": int(diff.max()),
        },
        "targets": targets,
        "projection_nih_on_16_cores_s": round(NIH_IMAGES / (per_core * TARGET_CORES * min(1.0, scaling / workers)), 1),
        "sha256_ours": hashlib.sha256(out1.tobytes()).hexdigest()[:16],
    }


def print_report(r: dict[str, Any]) -> None:
    floor = r["images_per_s"]["floor (decode only, 1 process)"]
    rows = [[name, fmt_rate(v), "-" if v is None else f"{v / floor:.2f}"] for name, v in r["images_per_s"].items()]
    load = r["machine"].get("load_average_1m_at_end")
    print(table(f"preprocess: {r['images']} synthetic {r['source_size']} px PNGs (mean {r['mean_file_kb']} KB) -> "
                f"{r['image_size']} px, {r['machine']['cpus']} CPUs (load {load})",
                ["", "rate", "x floor"], rows))
    steps = [[k.replace("_", " "), f"{v:.2f}"] for k, v in r["ms_per_image_single_thread"].items()]
    print(table("per image, single thread", ["step", "ms"], steps))
    w = r["clahe_at_reduced_size"]
    print(f"  CLAHE at {w['clahe_size']} px instead of the source: predicted {w['predicted_efficiency_vs_floor']:.0%} "
          f"of the floor; output differs by {w['mean_abs_diff_grey_levels']:.2f} grey levels on average "
          f"(p99 {w['p99_abs_diff_grey_levels']:.0f}, max {w['max_abs_diff_grey_levels']})"
          + ("" if w["stage_option_present"] else "; the stage has no such option yet"))
    print(f"  -> {NIH_IMAGES:,} images on {TARGET_CORES} cores at this per-core rate and scaling: "
          f"{r['projection_nih_on_16_cores_s']:,.0f} s")
    print(table("targets", ["", "measured", ""], target_rows(r["targets"])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="synthetic images (default 64)")
    parser.add_argument("--naive-n", type=int, default=8, help="of them through the naive baseline (default 8)")
    parser.add_argument("--image-size", type=int, default=256, help="stored size, px (default 256, the study's)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes for the parallel run (default 2)")
    parser.add_argument("--clahe-size", type=int, default=512, help="the what-if's CLAHE resolution (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS / "preprocess.json")
    args = parser.parse_args(argv)
    if args.clahe_size < args.image_size:
        parser.error("--clahe-size must be at least --image-size")
    result = run(args.n, min(args.naive_n, args.n), args.image_size, args.workers, args.clahe_size, args.repeats)
    print_report(result)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

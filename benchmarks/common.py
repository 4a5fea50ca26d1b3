"""Shared helpers for the benchmark scripts: the machine, timing, synthetic images, one table, one JSON file.

Every benchmark prints a table and writes its figures as JSON (default: `benchmarks/results/<name>.json`). Speed
targets are stated and checked here, in the benchmarks, never in timed tests: each result carries a `targets` list
of {"target", "measured", "met"} so a reader sees at once which goals a run met on which machine.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"

# NIH ChestX-ray14, official split: train_val_list.txt and test_list.txt; the pipeline carves validation patients
# out of train_val (split.val_fraction = 0.1), so about a tenth of the train_val images.
NIH_IMAGES = 112_120
NIH_TRAIN_VAL = 86_524
NIH_TEST = 25_596
NIH_VAL = round(NIH_TRAIN_VAL * 0.1)
NIH_TRAIN = NIH_TRAIN_VAL - NIH_VAL


def use_repo_src() -> None:
    """Import `cxrstudy` from this checkout's src/ when it is not installed (a bare GPU box: PYTHONPATH unset)."""
    if importlib.util.find_spec("cxrstudy") is None:
        sys.path.insert(0, str(ROOT / "src"))


@functools.cache
def study_params() -> Any:
    """params.yaml with the study profile (configs/nih-study.yaml) laid over it, validated by the stages' own schema
    (`cxrstudy.params.Params`): the benchmarks measure the study's settings, never a copy of them. Read once; callers
    change it with `model_copy(update=...)`, which leaves this one as it is."""
    use_repo_src()
    from cxrstudy.profile import load

    return load(ROOT / "configs" / "nih-study.yaml", ROOT / "params.yaml")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(**extra: Any) -> dict[str, Any]:
    """Where the figures come from. The load average says whether other work shared the cores during the run."""
    info: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
    }
    for name, module in (("opencv", "cv2"), ("torch", "torch"), ("torchvision", "torchvision")):
        if module in sys.modules:
            info[name] = getattr(sys.modules[module], "__version__", "?")
    if hasattr(os, "getloadavg"):
        info["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    info.update(extra)
    return info


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_rate(fn: Callable[[], Any], items: int, repeats: int) -> float:
    """Items per second of the fastest of `repeats` runs (the least disturbed by other load on a shared machine)."""
    return items / min(timed(fn) for _ in range(max(1, repeats)))


def target(name: str, measured: float | None, goal: float, *, higher_is_better: bool = True,
           unit: str = "") -> dict[str, Any]:
    """One speed goal and whether this run met it (None when it was not measured)."""
    met = None if measured is None else (measured >= goal if higher_is_better else measured <= goal)
    return {"target": name, "goal": goal, "measured": None if measured is None else float(f"{measured:.4g}"),
            "unit": unit, "met": met}


def target_rows(targets: Sequence[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for t in targets:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        measured = "-" if t["measured"] is None else f"{t['measured']:,.3g} {t['unit']}".strip()
        rows.append([t["target"], measured, verdict])
    return rows


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  " + "  ".join(parts).rstrip()

    rule = "  " + "  ".join("-" * w for w in widths)
    return "\n".join([title, line(cells[0]), rule, *(line(r) for r in cells[1:])])


def fmt_rate(value: float | None, unit: str = "img/s") -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:,.1f} {unit}"


def write_result(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False, allow_nan=False) + "\n")
    print(f"wrote {path}")


def xray_base(size: int) -> np.ndarray:
    """The noiseless part of `synthetic_xray`: bright mediastinum, two darker lungs (float32)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = 60 + 120 * np.exp(-((x - 0.5) ** 2 / 0.08 + (y - 0.55) ** 2 / 0.15))
    lungs = sum(50 * np.exp(-((x - cx) ** 2 / 0.01 + (y - 0.5) ** 2 / 0.05)) for cx in (0.32, 0.68))
    return (body - lungs).astype(np.float32)


def synthetic_xray(seed: int, size: int = 1024, base: np.ndarray | None = None) -> np.ndarray:
    """A chest-like 8-bit grey image with quantum-like noise: as a PNG at compression 6 it
    weighs what an NIH image does (~370 KB at 1024 px), so it decodes at the same speed. Pass `base` (from
    `xray_base`) to draw many images quickly."""
    rng = np.random.default_rng(seed)
    base = xray_base(size) if base is None else base
    noise = rng.standard_normal((size, size), dtype=np.float32)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_contract(raw: Path, names: Sequence[str]) -> None:
    """The dataset contract's files (images.csv, dataset.json, archives.md5) for a raw folder whose archives
    (`raw/archives/*.tar.gz`) already hold `names`: one patient per image, one label, nothing else known. Written by
    the contract's own module, so that the stages read it as they read any dataset."""
    use_repo_src()
    import pandas as pd

    from cxrstudy.data.dataset import COLUMNS, Dataset, DatasetInfo, write
    from cxrstudy.data.ingest import write_md5

    table = pd.DataFrame({column: "" for column in COLUMNS}, index=range(len(names)))
    table = table.assign(image=list(names), patient=[f"p{i}" for i in range(len(names))], study="1", follow_up=0,
                         site="bench", Finding="0")
    info = DatasetInfo(source="bench", name="benchmark images", site="bench", label_space="bench",
                       labels=("Finding",), uncertain="zeros", label_source="none", official_test="")
    write(Dataset(table, info), raw)
    write_md5(raw, {})


def write_processed(folder: Path, images: Iterable[np.ndarray], n: int, size: int, shards: int) -> None:
    """`n` images of `size` px as the preprocess stage lays them out (`cxrstudy.data.shards`): `shards` .npy files
    written by the stage's own ShardWriter, in order, and index.csv; `load_processed(folder)` reads them."""
    use_repo_src()
    from cxrstudy.data.shards import INDEX_FILE, SHARDS_DIR, ShardWriter, write_index

    (folder / SHARDS_DIR).mkdir(parents=True)
    located: dict[str, tuple[str, int]] = {}
    names = [f"{i:08d}_000.png" for i in range(n)]
    bounds = np.linspace(0, n, shards + 1).astype(int)
    stream = iter(images)
    for k in range(shards):
        shard = f"images_{k + 1:03d}"
        writer = ShardWriter(folder / SHARDS_DIR / f"{shard}.npy", size)
        for i in range(bounds[k], bounds[k + 1]):
            located[names[i]] = (shard, writer.append(next(stream)))
        writer.close()
    write_index(folder / INDEX_FILE, names, located)


def make_images(n: int, size: int) -> np.ndarray:
    """`n` processed-looking uint8 images (n x size x size): 16 drawn, the rest shifted copies of them (fast)."""
    base = xray_base(size)
    drawn = [synthetic_xray(i, size, base) for i in range(min(n, 16))]
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        out[i] = np.roll(drawn[i % len(drawn)], shift=i // len(drawn), axis=1)
    return out

"""Peak memory of a preprocess worker when an archive holds a bomb, against an ordinary archive.

    .venv/bin/python benchmarks/bench_bombs.py [--n 24] [--source-px 1024] [--png-bomb-px 30000]
        [--tar-member-mb 1500] [--header-px 60000] [--no-uncapped] [--out benchmarks/results/bombs.json]

Each case is a raw folder in the dataset contract with two archives: `images_001.tar.gz` holds `--n` ordinary
synthetic chest PNGs of `--source-px` (NIH's ~370 KB at 1024 px), `images_002.tar.gz` the same number, behind one
member that is (issue 25, item 2):

- `ordinary`: nothing more (the reference);
- `png_bomb`: a valid `--png-bomb-px` square grey PNG of zeros, under 1 MB on disk (decoded: width x height bytes,
  then CLAHE's and the resize's copies);
- `tar_bomb`: a `--tar-member-mb` member of zeros named like a PNG, a few MB once gzipped (read whole: that many
  bytes before its signature is even looked at);
- `header_bomb`: a PNG whose header declares `--header-px` square (OpenCV refuses it with its own traceback).

The preprocess stage runs on each through the command line (`python -m cxrstudy preprocess`, two worker processes,
one archive each, `on_bad_image: skip`), with the limits of params.yaml (`preprocess.max_image_mb`,
`max_image_pixels`), and unless `--no-uncapped`, with the largest limits the parameters accept (what the stage would
cost without them). The high-water mark of resident memory (`VmHWM` in /proc) of every process of the stage is
sampled every 20 ms: the worker that read the bomb's archive, the other worker, and the stage's main process.

Target: with the limits, the bomb's worker stays within `GOAL_MARGIN_MB` of the ordinary archive's worker, whatever
the bomb; each bomb is one line naming the archive (or the member), and the stage exits 0 (the bomb is left out).
Prints a table, writes JSON. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import cv2
import psutil
import yaml
from common import (
    RESULTS,
    ROOT,
    machine,
    synthetic_xray,
    table,
    target,
    target_rows,
    use_repo_src,
    write_contract,
    write_result,
    xray_base,
)

use_repo_src()

from cxrstudy.data.imageio import ARCHIVES_DIR, member_info, write_archive  # noqa: E402
from cxrstudy.params import PreprocessParams  # noqa: E402

CASES = ("ordinary", "png_bomb", "tar_bomb", "header_bomb")
BOMB = "99999999_000.png"  # the bomb's name: first in the second archive, listed in the label table
GOAL_MARGIN_MB = 64.0
SAMPLE_S = 0.02
CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------------------------
# The bombs, made without holding them in memory


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int) -> bytes:
    """A valid `side` x `side` 8-bit grey PNG of zeros, compressed row by row (never `side`**2 bytes in memory)."""
    packer = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0, then the pixels
    parts = [packer.compress(row) for _ in range(side)]
    data = b"".join(parts) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def header_bomb(side: int) -> bytes:
    """A PNG whose header declares `side` x `side` grey pixels and whose data is a few bytes."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _chunk(b"IEND", b""))


class Zeros(io.RawIOBase):
    """`size` zero bytes as a file, made as they are read."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def write_tar_bomb(path: Path, ordinary: list[tuple[str, bytes]], size: int) -> None:
    """The second archive of `tar_bomb`: a `size`-byte member of zeros named like a PNG, then the ordinary images."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(member_info(BOMB, size), io.BufferedReader(Zeros(size), CHUNK))
        for name, data in ordinary:
            tar.addfile(member_info(name, len(data)), io.BytesIO(data))


def ordinary_images(n: int, side: int, first: int) -> list[tuple[str, bytes]]:
    base = xray_base(side)
    out = []
    for i in range(first, first + n):
        ok, buf = cv2.imencode(".png", synthetic_xray(i, side, base), [cv2.IMWRITE_PNG_COMPRESSION, 6])
        assert ok
        out.append((f"{i:08d}_000.png", buf.tobytes()))
    return out


def build_case(raw: Path, case: str, args: argparse.Namespace, first: list[tuple[str, bytes]],
               second: list[tuple[str, bytes]]) -> dict[str, Any]:
    """A raw folder in the dataset contract: two archives, the second led by this case's bomb."""
    folder = raw / ARCHIVES_DIR
    folder.mkdir(parents=True)
    write_archive(folder / "images_001.tar.gz", first)
    names = [n for n, _ in first + second]
    bomb: bytes | None = None
    if case == "tar_bomb":
        write_tar_bomb(folder / "images_002.tar.gz", second, args.tar_member_mb * 10**6)
    else:
        if case == "png_bomb":
            bomb = png_bomb(args.png_bomb_px)
        elif case == "header_bomb":
            bomb = header_bomb(args.header_px)
        write_archive(folder / "images_002.tar.gz", ([(BOMB, bomb)] if bomb else []) + second)
    if case != "ordinary":
        names.append(BOMB)
    write_contract(raw, names)
    return {"archive_bytes": (folder / "images_002.tar.gz").stat().st_size,
            "bomb_bytes": len(bomb) if bomb is not None else (args.tar_member_mb * 10**6 if case == "tar_bomb"
                                                              else 0)}


# ---------------------------------------------------------------------------------------------------------------
# Running the stage and watching its processes


def hwm_mb(pid: int) -> float | None:
    """The process's resident-memory high-water mark (VmHWM), MB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_stage(project: Path, raw: Path, out: Path, params: dict[str, Any]) -> dict[str, Any]:
    """`python -m cxrstudy preprocess` on `raw`; every process's peak, sampled until it ends."""
    params_file = project / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cxrstudy", "--params", str(params_file), "preprocess",
                             "--raw", str(raw), "--out", str(out)], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peaks: dict[int, float] = {}
    parents: dict[int, int] = {}
    main = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            family = [main, *main.children(recursive=True)]
        except psutil.Error:
            family = []
        for p in family:
            value = hwm_mb(p.pid)
            if value is not None:
                peaks[p.pid] = max(peaks.get(p.pid, 0.0), value)
                if p.pid not in parents:
                    with contextlib.suppress(psutil.Error):
                        parents[p.pid] = p.ppid()
        time.sleep(SAMPLE_S)
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    # The workers are the children of the forkserver, itself a child of the stage's process.
    forkservers = {pid for pid, parent in parents.items() if parent == proc.pid}
    workers = sorted((peaks[pid] for pid, parent in parents.items() if parent in forkservers), reverse=True)
    return {"exit": proc.returncode, "seconds": round(seconds, 2), "main_peak_mb": round(peaks.get(proc.pid, 0.0), 1),
            "worker_peaks_mb": [round(w, 1) for w in workers], "stdout": stdout, "stderr": stderr}


def bomb_lines(run: dict[str, Any], out: Path) -> list[str]:
    """What the stage said about the bomb: its line of bad_images.txt, or of the error."""
    listing = out / "bad_images.txt"
    lines = listing.read_text().splitlines() if listing.is_file() else []
    lines += run["stderr"].splitlines()
    return [line for line in lines if BOMB in line]


def caps(args: argparse.Namespace, base: dict[str, Any], uncapped: bool) -> dict[str, Any]:
    """The preprocess settings of a run: params.yaml's limits (or those given), or the largest the schema allows."""
    cfg = dict(base)
    if uncapped:
        for key in ("max_image_mb", "max_image_pixels"):
            bound = next(m.le for m in PreprocessParams.model_fields[key].metadata if hasattr(m, "le"))
            cfg[key] = bound
    else:
        cfg["max_image_mb"] = args.max_image_mb or cfg["max_image_mb"]
        cfg["max_image_pixels"] = args.max_image_pixels or cfg["max_image_pixels"]
    return cfg


def run(args: argparse.Namespace) -> dict[str, Any]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"]["external"] = "none"
    params["numerics"]["threads"] = 1
    base = {**params["preprocess"], "workers": 2, "on_bad_image": "skip", "image_size": 256,
            "clahe_size": 0}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-bombs-", dir=args.work) as tmp:
        root = Path(tmp)
        first, second = ordinary_images(args.n, args.source_px, 0), ordinary_images(args.n, args.source_px, args.n)
        for case in CASES:
            raw = root / case / "raw"
            made = build_case(raw, case, args, first, second)
            for uncapped in ([False, True] if args.uncapped else [False]):
                cfg = caps(args, base, uncapped)
                out = root / case / ("uncapped" if uncapped else "capped")
                print(f"   {case}, {'largest limits allowed' if uncapped else 'params.yaml limits'} ...", flush=True)
                done = run_stage(root, raw, out, {**params, "preprocess": cfg})
                said = bomb_lines(done, out)
                rows.append({"case": case, "limits": "largest allowed" if uncapped else "params.yaml",
                             "max_image_mb": cfg["max_image_mb"], "max_image_pixels": cfg["max_image_pixels"],
                             **made, "exit": done["exit"], "seconds": done["seconds"],
                             "main_peak_mb": done["main_peak_mb"], "worker_peaks_mb": done["worker_peaks_mb"],
                             "bomb_worker_peak_mb": done["worker_peaks_mb"][0] if done["worker_peaks_mb"] else None,
                             "said": said, "traceback": "Traceback" in done["stderr"],
                             "stderr_tail": done["stderr"][-600:] if done["exit"] else ""})
    reference = next(r for r in rows if r["case"] == "ordinary" and r["limits"] == "params.yaml")
    targets = []
    for r in rows:
        if r["case"] == "ordinary" or r["limits"] != "params.yaml":
            continue
        over = None if r["bomb_worker_peak_mb"] is None or reference["bomb_worker_peak_mb"] is None else \
            r["bomb_worker_peak_mb"] - reference["bomb_worker_peak_mb"]
        targets.append(target(f"{r['case']}: worker peak over the ordinary archive's", over, GOAL_MARGIN_MB,
                              higher_is_better=False, unit="MB"))
        one_line = r["exit"] == 0 and len(r["said"]) == 1 and not r["traceback"]
        targets.append(target(f"{r['case']}: left out, one line naming it, exit 0", float(one_line), 1.0))
    return {"benchmark": "bombs", "machine": machine(opencv=cv2.__version__),
            "settings": {"ordinary_images_per_archive": args.n, "source_px": args.source_px,
                         "png_bomb_px": args.png_bomb_px, "tar_member_mb": args.tar_member_mb,
                         "header_px": args.header_px, "workers": 2, "stored_px": 256, "sample_s": SAMPLE_S},
            "runs": rows, "targets": targets}


def print_report(r: dict[str, Any]) -> None:
    rows = []
    for x in r["runs"]:
        peaks = x["worker_peaks_mb"]
        said = x["said"][0] if x["said"] else ("-" if x["case"] == "ordinary" else "(nothing)")
        if x["exit"] != 0 and not x["said"]:
            said = f"exit {x['exit']}: " + (x["stderr_tail"].strip().splitlines() or ["?"])[-1]
        rows.append([x["case"], x["limits"], f"{x['archive_bytes'] / 1e6:,.1f} MB",
                     f"{peaks[0]:,.0f}" if peaks else "-", f"{peaks[1]:,.0f}" if len(peaks) > 1 else "-",
                     f"{x['main_peak_mb']:,.0f}", f"{x['seconds']:.1f}", str(x["exit"]), said[:110]])
    s = r["settings"]
    print(table(f"preprocess with a bomb in its second archive ({s['ordinary_images_per_archive']} ordinary "
                f"{s['source_px']} px PNGs per archive, 2 workers), {r['machine']['cpus']} CPUs",
                ["case", "limits", "archive", "bomb worker MB", "other worker MB", "main MB", "s", "exit",
                 "what the stage said about the bomb"], rows))
    print(table("targets", ["", "measured", ""], target_rows(r["targets"])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=24, help="ordinary images per archive (default 24)")
    parser.add_argument("--source-px", type=int, default=1024, help="their size, px (default 1024, NIH's)")
    parser.add_argument("--png-bomb-px", type=int, default=30000, help="side of the valid PNG bomb (default 30000)")
    parser.add_argument("--tar-member-mb", type=int, default=1500, help="size of the tar member bomb (default 1500)")
    parser.add_argument("--header-px", type=int, default=60000, help="side its header declares (default 60000)")
    parser.add_argument("--max-image-mb", type=float, help="the limit of the capped runs (default: params.yaml's)")
    parser.add_argument("--max-image-pixels", type=int, help="the limit of the capped runs (default: params.yaml's)")
    parser.add_argument("--no-uncapped", dest="uncapped", action="store_false",
                        help="skip the runs with the largest limits allowed (they take the bombs' full memory)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder's parent (default: the system's)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bombs.json")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        parser.error("needs Linux (/proc/<pid>/status)")
    result = run(args)
    print_report(result)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

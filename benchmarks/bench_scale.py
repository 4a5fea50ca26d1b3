"""The data stages at NIH's scale: a synthetic release with the real image names, run under DVC, stage by stage.

    .venv/bin/python benchmarks/bench_scale.py --data-entry PATH/Data_Entry_2017_v2020.csv.gz \
        [--n 11212,112120] [--size 256] [--stored 256] [--workers 0] [--layouts] [--work DIR] [--keep] \
        [--out benchmarks/results/scale.json]

For each count in `--n` it builds, in a scratch folder (`--work`, default the system's temporary folder):

1. a release in NIH's distribution format: the first N rows of NIH's `Data_Entry_2017_v2020.csv` (`--data-entry`,
   NIH's file or torchxrayvision's copy; without it, the 3,000 rows packaged with cxrstudy), synthetic chest-like
   PNGs of `--size` px under those names, packed as NIH's 12 archives (NIH's own sizes, scaled), patient-wise
   synthetic official lists, and an md5sum list of the archives (`ingest.nih.md5_file`);
2. a copy of this project (git + DVC, `cache.type hardlink,symlink` as `make study` sets it) whose params.yaml reads
   that release as a local NIH copy (`ingest.source: nih`), with the study's preprocessing (`--stored` px);

then runs `dvc repro -s STAGE` for manifest, ingest, preprocess and split (the training site's: `ingest@internal`,
`preprocess@internal`; no external site), and times each: the whole DVC call, the stage's command alone (a `python`
shim first on PATH records it), DVC's share (the difference: mostly hashing what the stage wrote, one shard per
archive, `core.checksum_jobs` at a time), the peak memory of the largest process and of the whole process tree. Then:

- a no-op `dvc status` and a no-op `dvc repro split` (three times each);
- one changed archive: one image's pixel changed in one archive of the release (and its line of the release's md5sum
  list), then what `make repro` runs (`dvc repro --force --single-item manifest`, then `dvc repro
  preprocess@internal`): ingest re-verifies that archive, preprocess re-makes its one shard and keeps the other
  eleven (hard links); its command and DVC's share, against the full run's;
- the checkpoint fingerprint that training computes at its start (`cxrstudy.learning.checkpoint.fingerprint`: the
  processed data known by each shard's record and its size, time and inode), against what it cost before the shards:
  a SHA-256 of every processed byte (page cache warm: a lower bound);
- `dvc status` after one image's pixel is changed in data/raw itself (it must show).

With `--layouts` it also measures DVC alone on the raw-layout options: a folder of N PNG links (the layout before the
archives), the same in 12 folders as 12 outputs, and the 12 archives with DVC's default `core.checksum_jobs` (half
the cores, at most 4) and with the project's 12 (`.dvc/config`: one hashing thread per archive).

Prints a table and writes JSON. The scratch folder is deleted at the end unless `--keep`.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
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
    write_result,
    xray_base,
)

use_repo_src()

from cxrstudy.data.imageio import ARCHIVES_DIR, decode_gray, encode_png, iter_images, write_archive  # noqa: E402
from cxrstudy.data.nihtable import read_data_entry  # noqa: E402
from cxrstudy.data.release import archive_file_names  # noqa: E402
from cxrstudy.data.split import patient_split  # noqa: E402

INGEST, PREPROCESS = "ingest@internal", "preprocess@internal"
STAGES = ("manifest", INGEST, PREPROCESS, "split")
DISK_MARGIN = 4 * 10**9  # bytes of free disk the benchmark leaves to the other users of a shared machine
FINGERPRINT_GOAL_S = 1.0  # the checkpoint fingerprint at the start of training: it must not cost a read of the data
NIH_TEST_SHARE = 25_596 / 112_120  # test_list.txt's share of NIH's images
GOAL_S = 5.0  # the goals: no-op status / repro, and DVC's share of each stage run
SAMPLE = ROOT / "src" / "cxrstudy" / "resources" / "nih_sample.csv"
SHIM = """#!{python}
# Records the wall time and peak memory of a command DVC runs as `python ...`, then exits with its status.
import json, os, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call([{python!r}, *sys.argv[1:]])
seconds = time.perf_counter() - start
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(os.environ["CXR_BENCH_LOG"], "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "seconds": seconds, "peak_kb": peak_kb}}) + "\\n")
sys.exit(code)
"""


# ---------------------------------------------------------------------------------------------------------------
# The synthetic release


def entry_lines(path: Path) -> tuple[bytes, list[bytes]]:
    """The header and the data lines of a Data_Entry file (plain or .gz), byte for byte."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    lines = data.splitlines(keepends=True)
    return lines[0], [line for line in lines[1:] if line.strip()]


def _write_one_archive(job: tuple[str, list[tuple[int, str]], int]) -> tuple[str, str, int]:
    path, members, size = job
    cv2.setNumThreads(1)
    base = xray_base(size)
    write_archive(Path(path), ((name, encode_png(synthetic_xray(seed, size, base))) for seed, name in members),
                  compresslevel=1)
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return Path(path).name, digest.hexdigest(), os.path.getsize(path)


def build_release(folder: Path, header: bytes, lines: list[bytes], size: int, jobs: int) -> dict[str, Any]:
    """NIH's distribution format for these label rows: 12 archives of synthetic PNGs, metadata, an md5sum list."""
    folder.mkdir(parents=True)
    (folder / "Data_Entry_2017_v2020.csv").write_bytes(header + b"".join(lines))
    table = read_data_entry(folder / "Data_Entry_2017_v2020.csv")
    train_val, test = patient_split(table, NIH_TEST_SHARE, 0)
    (folder / "train_val_list.txt").write_text("".join(f"{n}\n" for n in table["image"].iloc[train_val]))
    (folder / "test_list.txt").write_text("".join(f"{n}\n" for n in table["image"].iloc[test]))
    names = sorted(table["image"])
    work: list[tuple[str, list[tuple[int, str]], int]] = []
    start = 0
    for archive, count in archive_file_names(len(names)).items():
        work.append((str(folder / archive), [(start + i, n) for i, n in enumerate(names[start : start + count])],
                     size))
        start += count
    began = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        done = sorted(pool.map(_write_one_archive, sorted(work, key=lambda w: -len(w[1]))))
    (folder / "release.md5").write_text("".join(f"{md5}  {name}\n" for name, md5, _ in done))
    return {"images": len(names), "archives": len(done), "archive_bytes": sum(b for _, _, b in done),
            "build_s": round(time.perf_counter() - began, 1)}


# ---------------------------------------------------------------------------------------------------------------
# Running DVC


class Runner:
    """Runs commands in a project with the python shim first on PATH; times them and samples their memory."""

    def __init__(self, project: Path, shim_dir: Path, cache_type: str = "") -> None:
        self.project = project
        self.cache_type = cache_type
        self.log = project.parent / "commands.jsonl"
        self.env = {**os.environ, "PATH": f"{shim_dir}{os.pathsep}{os.environ['PATH']}", "TQDM_DISABLE": "1",
                    "CXR_BENCH_LOG": str(self.log), "DVC_NO_ANALYTICS": "1"}
        self.env.pop("PYTHONPATH", None)  # the project copy's own src/ is what runs (installed below)
        self.env["PYTHONPATH"] = str(project / "src")

    def run(self, *args: str, check: bool = True) -> dict[str, Any]:
        before = self.log.read_text().count("\n") if self.log.exists() else 0
        start = time.perf_counter()
        proc = subprocess.Popen(args, cwd=self.project, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        peak = {"tree": 0}
        stop = threading.Event()

        def sample() -> None:
            try:
                root = psutil.Process(proc.pid)
                while not stop.wait(0.1):
                    procs = [root, *root.children(recursive=True)]
                    total = 0
                    for p in procs:
                        with contextlib.suppress(psutil.Error):  # a process that ended meanwhile
                            total += p.memory_info().rss
                    peak["tree"] = max(peak["tree"], total)
            except psutil.Error:
                pass

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        output, _ = proc.communicate()
        wall = time.perf_counter() - start
        stop.set()
        sampler.join()
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{output[-4000:]}")
        commands = [json.loads(line) for line in self.log.read_text().splitlines()[before:]] if self.log.exists() \
            else []
        command_s = sum(c["seconds"] for c in commands)
        return {"wall_s": round(wall, 2), "command_s": round(command_s, 2), "dvc_s": round(wall - command_s, 2),
                "peak_rss_mb_largest_process": round(max((c["peak_kb"] for c in commands), default=0) / 1024, 1),
                "peak_rss_mb_tree": round(peak["tree"] / 2**20, 1), "output": output}


def make_shim(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):
        shim = folder / name
        shim.write_text(SHIM.format(python=sys.executable))
        shim.chmod(0o755)
    return folder


def copy_project(dest: Path) -> Path:
    """This project's tracked and untracked-but-not-ignored files, as a fresh git repository."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file() and not name.startswith(("data/", "models/", "metrics/", "predictions/")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    (dest / "dvc.lock").unlink(missing_ok=True)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "project")
    return dest


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args], cwd=cwd, check=True,
                   capture_output=True)


def configure(project: Path, release: Path, work: Path, stored: int, workers: int, cache_type: str) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    study = yaml.safe_load((ROOT / "configs" / "nih-study.yaml").read_text())
    params["ingest"]["source"] = "nih"
    params["ingest"]["external"] = "none"
    params["ingest"]["nih"].update(local_path=str(release), md5_file=str(release / "release.md5"),
                                   download_dir=str(work / "downloads"), workers=workers)
    params["preprocess"].update(study["preprocess"], image_size=stored, workers=workers,
                                clahe_size=max(study["preprocess"]["clahe_size"], stored))
    params["train"]["image_size"] = min(study["train"]["image_size"], stored)  # valid; training is not run here
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "cache.type", cache_type],
                   cwd=project, check=True, capture_output=True)


def dvc(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "dvc", *args)


def change_one_pixel(archive: Path) -> str:
    """Replace `archive` by a new file in which its first image has one pixel changed; that image's name."""
    members: list[tuple[str, bytes]] = []
    for name, data in iter_images(archive):
        if not isinstance(data, bytes):
            raise RuntimeError(str(data))
        members.append((name, data))
    name, data = members[0]
    image = decode_gray(data, name)
    image[0, 0] ^= 1
    members[0] = (name, encode_png(image))
    archive.unlink()  # a new file: the old one may be DVC's cache entry (hardlinked), never written through
    write_archive(archive, members, compresslevel=1)
    return name


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def changed_archive_run(runner: Runner, release: Path, full: dict[str, Any]) -> dict[str, Any]:
    """One archive of the release changed (one pixel of one image), its MD5 line with it, as a corrected mirror would
    ship it; then what `make repro` runs. Only that archive's shard is made again; the others are hard-linked from the
    earlier output, unless DVC replaced them first: before it runs a stage whose output persists, DVC turns each
    linked file of it into a copy of its own (`unprotect`), so with `cache.type hardlink,symlink` the whole processed
    output is copied before the stage starts, and needs that much free disk. Skipped, saying so, without it."""
    shards_dir = runner.project / "data" / "processed" / "shards"
    before = {p.name: p.stat().st_ino for p in shards_dir.glob("*.npy")}
    size = sum(p.stat().st_size for p in shards_dir.glob("*.npy"))
    free = shutil.disk_usage(shards_dir).free
    if free < size + DISK_MARGIN:
        return {"skipped": f"needs {(size + DISK_MARGIN) / 1e9:.1f} GB free (DVC copies the {size / 1e9:.1f} GB "
                           f"of shards first, and {DISK_MARGIN / 1e9:.0f} GB are left to others), "
                           f"{free / 1e9:.1f} GB free"}
    archive = release / "images_006.tar.gz"
    name = change_one_pixel(archive)
    sums = release / "release.md5"
    sums.write_text("".join(f"{file_md5(archive)}  {archive.name}\n" if line.endswith(f"  {archive.name}") else
                            f"{line}\n" for line in sums.read_text().splitlines()))
    manifest = runner.run(*dvc("repro", "--force", "--single-item", "manifest"))
    logged = len(runner.log.read_text().splitlines())
    repro = runner.run(*dvc("repro", PREPROCESS))
    commands = [json.loads(line) for line in runner.log.read_text().splitlines()[logged:]]
    output = repro.pop("output")
    manifest.pop("output")
    kept = re.search(r"\((\d+) shard\(s\) unchanged, kept\)", output)
    after = {p.name: p.stat().st_ino for p in shards_dir.glob("*.npy")}
    shards = len(after)
    result: dict[str, Any] = {
        "archive": archive.name, "image": name, "manifest": manifest, "ingest_and_preprocess": repro,
        "shards": shards, "shards_kept": int(kept.group(1)) if kept else None,
        "shards_same_file_as_before": sum(after.get(n) == i for n, i in before.items()),
        "cache_type": runner.cache_type,
        "ingest_reran": f"Running stage '{INGEST}'" in output,
        "preprocess_reran": f"Running stage '{PREPROCESS}'" in output,
        "full_preprocess_command_s": full["command_s"], "full_preprocess_dvc_s": full["dvc_s"],
    }
    for stage in ("ingest", "preprocess"):  # each stage's command alone, from the shim's records of this repro
        seconds = [c["seconds"] for c in commands if stage in c["argv"]]
        result[f"{stage}_command_s"] = round(seconds[0], 2) if seconds else None
    return result


def fingerprint_cost(project: Path, params_file: Path) -> dict[str, Any]:
    """What training computes at its start to match a checkpoint to its inputs (the processed data by its shards'
    records, sizes, times and inodes), against a SHA-256 of every processed byte, which it computed before."""
    code = textwrap.dedent(f"""
        import hashlib, json, sys, time
        from pathlib import Path
        from cxrstudy import numerics
        from cxrstudy.params import load_params
        params = load_params(Path({str(params_file)!r}))
        numerics.pin(params.numerics)
        from cxrstudy.data.shards import records_fingerprint
        from cxrstudy.learning.checkpoint import fingerprint
        data = Path({str(project / "data")!r})
        start = time.perf_counter()
        fingerprint(params, 1, data / "raw", data / "processed", data / "splits", 1)
        whole = time.perf_counter() - start
        start = time.perf_counter()
        records_fingerprint(data / "processed")
        processed = time.perf_counter() - start
        shards = sorted((data / "processed" / "shards").glob("*.npy"))
        total = sum(p.stat().st_size for p in shards)
        for p in shards:  # warm the page cache: the old cost is then a lower bound
            with p.open("rb") as fh:
                while fh.read(1 << 24):
                    pass
        start = time.perf_counter()
        digest = hashlib.sha256()
        for p in shards:
            with p.open("rb") as fh:
                digest.update(hashlib.file_digest(fh, "sha256").digest())
        sha = time.perf_counter() - start
        print(json.dumps({{"fingerprint_s": round(whole, 4), "processed_part_s": round(processed, 4),
                           "sha256_of_processed_s": round(sha, 2), "processed_bytes": total, "shards": len(shards)}}))
    """)
    env = {**os.environ, "PYTHONPATH": str(project / "src"), "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"fingerprint measurement failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def md5_rate() -> float:
    """MD5 bytes per second on one core (what DVC's hashing costs per byte here)."""
    block = os.urandom(1 << 26)
    start = time.perf_counter()
    digest = hashlib.md5(usedforsecurity=False)
    for _ in range(8):
        digest.update(block)
    return 8 * len(block) / (time.perf_counter() - start)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def pipeline_run(work: Path, header: bytes, lines: list[bytes], args: argparse.Namespace,
                 shim: Path) -> dict[str, Any]:
    print(f"\n== {len(lines):,} images: building the release in {work}", flush=True)
    release = build_release(work / "release", header, lines, args.size, args.jobs)
    print(f"   {release['archive_bytes'] / 1e9:.2f} GB in {release['archives']} archives, {release['build_s']} s",
          flush=True)
    project = copy_project(work / "project")
    configure(project, work / "release", work, args.stored, args.workers, args.cache_type)
    runner = Runner(project, shim, args.cache_type)
    result: dict[str, Any] = {"images": len(lines), "image_px": args.size, "stored_px": args.stored,
                              "release": release, "stages": {}}
    for stage in STAGES:
        print(f"   dvc repro -s {stage} ...", flush=True)
        measured = runner.run(*dvc("repro", "-s", stage))
        measured.pop("output")
        result["stages"][stage] = measured
    raw, processed = project / "data" / "raw", project / "data" / "processed"
    result["bytes"] = {"data/raw": folder_bytes(raw), "data/processed": folder_bytes(processed)}
    # DVC's share is mostly hashing what the stage wrote: files over 1 MiB are hashed `core.checksum_jobs` at a time,
    # each on one thread, so the time is the larger of (bytes / threads) and the largest file, over the MD5 rate.
    jobs = int(subprocess.run(dvc("config", "core.checksum_jobs"), cwd=project, capture_output=True,
                              text=True).stdout.strip() or 1)
    for stage, folder in ((INGEST, raw), (PREPROCESS, processed)):
        big = [p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.stat().st_size > 2**20]
        threads = min(jobs, len(big), os.cpu_count() or 1) if len(big) > 1 else 1
        result["stages"][stage]["output_bytes"] = folder_bytes(folder)
        hashed = max(folder_bytes(folder) / threads, max(big, default=0))
        result["stages"][stage]["md5_estimate_s"] = round(hashed / args.md5_rate, 2)
    statuses = [runner.run(*dvc("status")) for _ in range(3)]
    repros = [runner.run(*dvc("repro", "split")) for _ in range(3)]
    for r in repros:
        assert "Running stage" not in r["output"], r["output"]
    result["noop"] = {
        "dvc_status_s": [s["wall_s"] for s in statuses],
        "dvc_repro_split_s": [r["wall_s"] for r in repros],
        "dvc_repro_split_command_s": [r["command_s"] for r in repros],
        "dvc_repro_split_dvc_s": [r["dvc_s"] for r in repros],
    }
    print("   checkpoint fingerprint ...", flush=True)
    result["checkpoint_fingerprint"] = fingerprint_cost(project, project / "params.yaml")
    print("   one changed archive ...", flush=True)
    result["changed_archive"] = changed_archive_run(runner, work / "release", result["stages"][PREPROCESS])
    name = change_one_pixel(sorted((raw / ARCHIVES_DIR).iterdir())[0])
    changed = runner.run(*dvc("status", "--json"))
    status = json.loads(changed["output"][changed["output"].index("{"):])
    data_stages = {stage: status[stage] for stage in STAGES if stage in status and stage != "manifest"}
    result["one_pixel_changed"] = {
        "image": name, "dvc_status_s": changed["wall_s"], "data_stages_shown": data_stages,
        "shown": data_stages.get(INGEST) == [{"changed outs": {"data/raw": "modified"}}]
        and data_stages.get(PREPROCESS) in ([{"changed deps": {"data/raw/archives": "modified"}}],
                                           [{"changed deps": {"data/raw": "modified"}}])
        and "split" not in data_stages,  # split reads no image: unaffected
    }
    return result


# ---------------------------------------------------------------------------------------------------------------
# Raw-layout options, DVC alone


def _extract_one(job: tuple[str, str]) -> int:
    archive, folder = job
    count = 0
    for name, data in iter_images(Path(archive)):
        (Path(folder) / name).write_bytes(data)  # type: ignore[arg-type]
        count += 1
    return count


def layout_project(folder: Path, layout: str, sources: dict[str, Path], checksum_jobs: int | None) -> Path:
    """A bare DVC repository with two stages: `make` links the files of `layout` into data/raw (its output(s)), and
    `use` depends on them."""
    folder.mkdir(parents=True)
    git(folder, "init", "-q")
    subprocess.run(dvc("init", "-q"), cwd=folder, check=True, capture_output=True)
    subprocess.run(dvc("config", "--local", "cache.type", "hardlink,symlink"), cwd=folder, check=True,
                   capture_output=True)
    subprocess.run(dvc("config", "core.analytics", "false"), cwd=folder, check=True, capture_output=True)
    if checksum_jobs:
        subprocess.run(dvc("config", "--local", "core.checksum_jobs", str(checksum_jobs)), cwd=folder, check=True,
                       capture_output=True)
    plan: list[tuple[str, str]] = []  # (source folder, output folder)
    if layout == "folder":
        plan = [(str(sources["images"]), "data/raw/images")]
    elif layout == "shards":
        plan = [(str(p), f"data/raw/{p.name}") for p in sorted(sources["shards"].iterdir())]
    else:
        plan = [(str(sources["archives"]), "data/raw/archives")]
    (folder / "make.py").write_text(
        "import os, sys\nfrom pathlib import Path\n"
        f"for src, dst in {plan!r}:\n"
        "    Path(dst).mkdir(parents=True)\n"
        "    for entry in os.scandir(src):\n"
        "        if entry.name.endswith(('.png', '.tar.gz')):\n"
        "            os.link(entry.path, os.path.join(dst, entry.name))\n")
    outs = [dst for _, dst in plan]
    stages = {
        "make": {"cmd": "python make.py", "deps": ["make.py"], "outs": outs},
        "use": {"cmd": "python -c \"open('used.txt', 'w').write('ok')\"", "deps": outs, "outs": ["used.txt"]},
    }
    (folder / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", "layout")
    return folder


def layouts_run(work: Path, shim: Path, release: Path, n: int) -> list[dict[str, Any]]:
    print(f"   layouts: extracting {n:,} PNGs for the folder layouts", flush=True)
    images = work / "extracted"
    shards = work / "shards"
    images.mkdir()
    archives = sorted(release.glob("images_*.tar.gz"))
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_extract_one, [(str(a), str(images)) for a in archives]))
    for archive in archives:  # the same files again, one folder per archive (hardlinks: no extra space)
        shard = shards / archive.name.removesuffix(".tar.gz")
        shard.mkdir(parents=True)
        for name, _ in iter_images(archive):
            os.link(images / name, shard / name)
    arch = work / "archive-links"
    arch.mkdir()
    for archive in archives:
        os.link(archive, arch / archive.name)
    sources = {"images": images, "shards": shards, "archives": arch}
    results = []
    default_jobs = max(1, min(4, (os.cpu_count() or 1) // 2))  # DVC's own default: half the cores, at most 4
    for label, layout, jobs in (("a folder of PNG links (before)", "folder", None),
                                ("12 folders, 12 outputs (sharded)", "shards", None),
                                (f"12 archives, DVC's default core.checksum_jobs ({default_jobs})", "archives", None),
                                ("12 archives, core.checksum_jobs 12 (chosen)", "archives", 12)):
        print(f"   layout: {label}", flush=True)
        project = layout_project(work / f"layout-{layout}-{jobs or 'default'}", layout, sources, jobs)
        runner = Runner(project, shim)
        make = runner.run(*dvc("repro", "make"))
        use = runner.run(*dvc("repro", "use"))
        statuses = [runner.run(*dvc("status"))["wall_s"] for _ in range(3)]
        repros = [runner.run(*dvc("repro"))["wall_s"] for _ in range(2)]
        results.append({"layout": label, "files": n if layout != "archives" else len(archives),
                        "outputs": 12 if layout == "shards" else 1,
                        "first_run_dvc_s": make["dvc_s"], "dependent_stage_dvc_s": use["dvc_s"],
                        "noop_dvc_status_s": statuses, "noop_dvc_repro_s": repros})
        shutil.rmtree(project)
    for folder in (images, shards, arch):
        shutil.rmtree(folder)
    return results


# ---------------------------------------------------------------------------------------------------------------
# Report


def median(values: Sequence[float]) -> float:
    return float(np.median(values))


def changed_rows(arch: dict[str, Any]) -> list[list[str]]:
    again = arch["ingest_and_preprocess"]
    alone = arch["preprocess_command_s"]
    return [[f"one archive changed: ingest + {PREPROCESS}", f"{again['command_s']:.1f}", f"{again['dvc_s']:.1f}", "-",
             f"{again['wall_s']:.1f}", f"{again['peak_rss_mb_largest_process']:.0f}",
             f"{arch['shards_kept']} of {arch['shards']} shards kept"],
            ["  of which preprocess's command", "-" if alone is None else f"{alone:.1f}", "-", "-", "-", "-",
             f"full run {arch['full_preprocess_command_s']:.1f} s"],
            ["  shards still the earlier files", "-", "-", "-", "-", "-",
             f"{arch['shards_same_file_as_before']} of {arch['shards']} (cache.type {arch['cache_type']})"]]


def summary(results: list[dict[str, Any]]) -> str:
    blocks = []
    for r in results:
        rows = [[stage, f"{s['command_s']:.1f}", f"{s['dvc_s']:.1f}",
                 f"{s['md5_estimate_s']:.1f}" if "md5_estimate_s" in s else "-", f"{s['wall_s']:.1f}",
                 f"{s['peak_rss_mb_largest_process']:.0f}", f"{s['peak_rss_mb_tree']:.0f}"]
                for stage, s in r["stages"].items()]
        noop = r["noop"]
        rows.append(["no-op dvc status", "-", f"{median(noop['dvc_status_s']):.1f}", "-",
                     f"{median(noop['dvc_status_s']):.1f}", "-", "-"])
        rows.append(["no-op dvc repro split", f"{median(noop['dvc_repro_split_command_s']):.1f}",
                     f"{median(noop['dvc_repro_split_dvc_s']):.1f}", "-", f"{median(noop['dvc_repro_split_s']):.1f}",
                     "-", "-"])
        arch = r["changed_archive"]
        if "skipped" in arch:
            rows.append(["one archive changed", "-", "-", "-", "-", "-", f"skipped: {arch['skipped']}"])
        else:
            rows += changed_rows(arch)
        fp = r["checkpoint_fingerprint"]
        rows.append(["checkpoint fingerprint (train start)", f"{fp['fingerprint_s']:.3f}", "-", "-", "-", "-",
                     f"SHA-256 of {fp['processed_bytes'] / 1e9:.2f} GB: {fp['sha256_of_processed_s']:.1f} s"])
        changed = r["one_pixel_changed"]
        rows.append(["dvc status, one pixel changed", "-", f"{changed['dvc_status_s']:.1f}", "-",
                     f"{changed['dvc_status_s']:.1f}", "-", "shown" if changed["shown"] else "NOT SHOWN"])
        blocks.append(table(
            f"{r['images']:,} images of {r['image_px']} px ({r['release']['archive_bytes'] / 1e9:.2f} GB in "
            f"{r['release']['archives']} archives), stored at {r['stored_px']} px",
            ["step", "command s", "DVC s", "of which MD5 (est.)", "total s", "peak MB (largest)",
             "peak MB (tree)"], rows))
        if r.get("layouts"):
            blocks.append(table(
                f"raw-layout options at {r['images']:,} images, DVC alone (seconds of DVC, not of the commands)",
                ["layout", "files", "producing stage", "a stage depending on it", "no-op status", "no-op repro"],
                [[x["layout"], f"{x['files']:,}", f"{x['first_run_dvc_s']:.1f}", f"{x['dependent_stage_dvc_s']:.1f}",
                  f"{median(x['noop_dvc_status_s']):.1f}", f"{median(x['noop_dvc_repro_s']):.1f}"]
                 for x in r["layouts"]]))
    return "\n\n".join(blocks)


def targets_of(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    largest = max(results, key=lambda r: r["images"])
    n = f"{largest['images']:,} images"
    out = [target(f"no-op dvc status at {n}", median(largest["noop"]["dvc_status_s"]), GOAL_S,
                  higher_is_better=False, unit="s"),
           target(f"no-op dvc repro at {n}", median(largest["noop"]["dvc_repro_split_s"]), GOAL_S,
                  higher_is_better=False, unit="s")]
    out += [target(f"DVC's share of `{stage}` at {n}", s["dvc_s"], GOAL_S, higher_is_better=False, unit="s")
            for stage, s in largest["stages"].items()]
    arch = next((r["changed_archive"] for r in sorted(results, key=lambda r: -r["images"])
                 if "skipped" not in r["changed_archive"]), None)
    where = "" if arch is None else f"at {next(r['images'] for r in results if r['changed_archive'] is arch):,} images"
    out.append(target(f"one changed archive: shards made again {where}".strip(),
                      None if arch is None or arch["shards_kept"] is None else arch["shards"] - arch["shards_kept"],
                      1.0, higher_is_better=False, unit="shards"))
    out.append(target(f"checkpoint fingerprint at the start of training at {n}",
                      largest["checkpoint_fingerprint"]["fingerprint_s"], FINGERPRINT_GOAL_S, higher_is_better=False,
                      unit="s"))
    out.append(target(f"one changed pixel shown by dvc status at {n}",
                      1.0 if largest["one_pixel_changed"]["shown"] else 0.0, 1.0, unit="yes"))
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="11212,112120", help="image counts, comma-separated (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="px of the synthetic PNGs (default: %(default)s)")
    parser.add_argument("--stored", type=int, default=256, help="preprocess.image_size (default: the study's 256)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="preprocess.workers and ingest.nih.workers (default: one per core)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes building the release")
    parser.add_argument("--data-entry", type=Path, default=None,
                        help="NIH's Data_Entry_2017_v2020.csv(.gz) for the real names (default: the 3,000 rows "
                             "packaged with cxrstudy, enough for small runs only)")
    parser.add_argument("--cache-type", default="hardlink,symlink",
                        help="DVC's cache.type in the project (default: %(default)s, as `make study` sets it)")
    parser.add_argument("--layouts", action="store_true", help="also measure DVC on the raw-layout options")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()), help="scratch folder's parent")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(c) for c in args.n.split(",")]
    header, lines = entry_lines(args.data_entry or SAMPLE)
    if max(counts) > len(lines):
        print(f"error: --n {max(counts)}: {args.data_entry or SAMPLE} has {len(lines)} rows; give --data-entry NIH's "
              "Data_Entry_2017_v2020.csv(.gz) (from NIH's Box page, or the copy in the torchxrayvision wheel)",
              file=sys.stderr)
        return 2
    args.md5_rate = md5_rate()
    work = Path(tempfile.mkdtemp(prefix="cxr-scale-", dir=args.work))
    results: list[dict[str, Any]] = []
    try:
        shim = make_shim(work / "shim")
        for n in counts:
            run_dir = work / f"n{n}"
            result = pipeline_run(run_dir, header, lines[:n], args, shim)
            if args.layouts:
                result["layouts"] = layouts_run(run_dir, shim, run_dir / "release", n)
            results.append(result)
            if not args.keep:
                shutil.rmtree(run_dir)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    targets = targets_of(results)
    print()
    print(summary(results))
    print()
    print(table("targets", ["target", "measured", "verdict"], target_rows(targets)))
    write_result(args.out, {
        "machine": machine(dvc=subprocess.run(dvc("--version"), capture_output=True, text=True).stdout.strip(),
                           md5_mb_s_one_core=round(args.md5_rate / 1e6)),
        "settings": {"size": args.size, "stored": args.stored, "workers": args.workers,
                     "data_entry": "NIH's Data_Entry_2017_v2020.csv" if args.data_entry else "packaged sample"},
        "runs": results, "targets": targets,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The preprocess stage: CLAHE (the study's contrast enhancement) and a resize of every image, one shard per archive.

The images are streamed out of the archives, one archive per worker process, and each is read and decoded exactly
once: this is where bad images are found (missing, empty, truncated, neither PNG nor JPEG, undecodable, or over the
limits), all of them in one run. An archive member is never trusted: one larger than `preprocess.max_image_mb` (from
its tar header) is not read, and an image whose header declares more than `preprocess.max_image_pixels` is not
decoded, so a worker's memory stays bounded whatever an archive holds. Every archive is checked against the MD5 that
ingest recorded (`archives.md5`), in the same read: an archive changed since ingest (a damaged copy, or a linked DVC
cache holding damaged bytes) is refused before any of its images is used.

Output (`data/processed/`, `cxrstudy.data.shards`): a shard per archive, its record, `index.csv`, `meta.json` and,
with `on_bad_image: skip`, `bad_images.txt`. A shard whose archive MD5, settings, code and label table are those of
the shard already there is kept as it is (hard-linked into the new output): a changed archive re-processes only its
own shard. The whole output is put in place at once, or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from cxrstudy.atomic import atomic_dir, write_json
from cxrstudy.data.dataset import MD5_FILE, TABLE_FILE, read_info, read_table
from cxrstudy.data.imageio import ARCHIVES_DIR, ArchiveError, ImageError, archive_paths, decode_gray, iter_images
from cxrstudy.data.pool import WORKER_CONTEXT, die_with, sigint_ignored
from cxrstudy.data.release import MD5_LINE
from cxrstudy.data.shards import (
    BAD_IMAGES_FILE,
    INDEX_FILE,
    META_FILE,
    SHARDS_DIR,
    ShardWriter,
    read_sidecar,
    shard_name,
    write_index,
)
from cxrstudy.errors import InputError
from cxrstudy.params import Params, PreprocessParams

MAX_LISTED = 100  # bad images named in an error message; the full list goes to a file
CODE = (Path(__file__).with_name("imageio.py"), Path(__file__), Path(__file__).with_name("shards.py"))


def apply_clahe(image: np.ndarray, clip_limit: float, tile_grid: int) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (OpenCV) of a uint8 image."""
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid)).apply(image)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Square `size` px: area averaging when shrinking, bilinear when enlarging; unchanged when already so."""
    if image.shape == (size, size):
        return image
    interp = cv2.INTER_AREA if min(image.shape) >= size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def process_image(image: np.ndarray, cfg: PreprocessParams) -> np.ndarray:
    """CLAHE, then an area resize to `cfg.image_size`.

    CLAHE runs at the source resolution, or with `cfg.clahe_size` set, after a first area downscale to that size
    (the tile grid stays the same, so each tile covers the same anatomy): about 4x less CLAHE work at 512 px
    for a 1024 px source, which brings the stage to ~85-90 % of the rate of the PNG decoding it cannot avoid.
    """
    if cfg.clahe:
        if cfg.clahe_size and min(image.shape) > cfg.clahe_size:
            image = resize(image, cfg.clahe_size)
        image = apply_clahe(image, cfg.clip_limit, cfg.tile_grid)
    return resize(image, cfg.image_size)


@dataclass
class ArchiveResult:
    """What one archive gave: the wanted images found in it (archive order, = the shard's rows), those unusable,
    with the reason, the images not in the label table, and why the archive cannot be used (None when it can)."""

    archive: str
    seen: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    extra: int = 0
    error: str | None = None

    def record(self, key: str) -> dict[str, Any]:
        return {"key": key, "archive": self.archive, "images": self.seen, "bad": self.bad, "extra": self.extra}


@dataclass(frozen=True)
class Job:
    archive: str  # its path
    md5: str  # as ingest recorded it
    key: str  # what makes the shard: archive MD5, settings, code, the table's images
    out: str  # the shard's path (.npy; its record beside it, .json)


@dataclass(frozen=True)
class _Work:
    cfg: PreprocessParams
    wanted: frozenset[str]


_work: _Work | None = None


def _init_worker(work: _Work, stage: int) -> None:
    global _work
    die_with(stage)
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would only oversubscribe
    _work = work


def process_archive(job: Job) -> ArchiveResult:
    """Stream one archive (verifying its MD5 in the same read): decode, process and append each wanted image to its
    shard; write the shard's record beside it unless the archive cannot be used."""
    assert _work is not None
    cfg = _work.cfg
    archive = Path(job.archive)
    result = ArchiveResult(archive.name)
    writer = ShardWriter(Path(job.out), cfg.image_size)
    digest = hashlib.md5(usedforsecurity=False)
    met: set[str] = set()
    try:
        for name, data in iter_images(archive, max_bytes=int(cfg.max_image_mb * 1e6), digest=digest):
            if name not in _work.wanted:
                result.extra += 1
                continue
            if name in met:
                result.bad.append((name, f"in two members of {archive.name}"))
                continue
            met.add(name)
            try:
                if isinstance(data, ImageError):
                    raise data
                image = process_image(decode_gray(data, name, max_pixels=cfg.max_image_pixels), cfg)
            except ImageError as err:
                result.bad.append((name, str(err).removeprefix(f"{name}: ")))
                continue
            writer.append(image)
            result.seen.append(name)
    except ArchiveError as err:
        result.error = str(err)
    finally:
        writer.close()
    if result.error is None and digest.hexdigest() != job.md5:
        result.error = (f"{archive}: MD5 {digest.hexdigest()}, but ingest recorded {job.md5} in {MD5_FILE}: the "
                        "archive changed after ingest (with a linked DVC cache, the cache's copy may be damaged "
                        "too; see docs/robustness.md); none of its images was used")
    if result.error is None:
        write_json(Path(job.out).with_suffix(".json"), result.record(job.key))
    return result


def run_jobs(jobs: Sequence[Job], work: _Work, workers: int) -> list[ArchiveResult]:
    """Process the archives, one per worker process (`workers`; 0 or 1 = in this process), largest first."""
    count = min(workers, len(jobs))
    if count <= 1:
        _init_worker_here(work)
        return [process_archive(job) for job in tqdm(jobs, desc="preprocess", unit="archive")]
    pool = ProcessPoolExecutor(mp_context=WORKER_CONTEXT, max_workers=count, initializer=_init_worker,
                               initargs=(work, os.getpid()))
    results: list[ArchiveResult] = []
    try:
        largest_first = sorted(jobs, key=lambda j: -Path(j.archive).stat().st_size)
        with sigint_ignored():  # submit() starts the workers (and the forkserver) now
            futures = {pool.submit(process_archive, job): job for job in largest_first}
        with tqdm(total=len(futures), desc="preprocess", unit="archive") as bar:
            for future in as_completed(futures):
                results.append(future.result())
                bar.update()
    except BrokenProcessPool:
        running = sorted(Path(futures[f].archive).name for f in futures if not f.done() or f.exception())
        raise InputError(f"preprocess: a worker process died (killed by the system: out of memory?) while reading "
                         f"{', '.join(running) or 'an archive'}; nothing was replaced. Lower preprocess.workers, or "
                         "preprocess.max_image_pixels / max_image_mb, and re-run") from None
    finally:  # an error or Ctrl-C: the archives not yet started are cancelled, the running ones waited for
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _init_worker_here(work: _Work) -> None:
    global _work
    _work = work


def read_md5(raw_dir: Path) -> dict[str, str]:
    """`archives.md5` (written by ingest): archive name -> MD5."""
    path = raw_dir / MD5_FILE
    if not path.is_file():
        raise InputError(f"{path}: not found; re-run the ingest stage (dvc repro ingest)")
    found: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = MD5_LINE.match(line.strip())
        if not match:
            raise InputError(f"{path}:{number}: not an md5sum line; re-run the ingest stage")
        found[Path(match.group(2).strip()).name] = match.group(1).lower()
    return found


def shard_key(archive: str, md5: str, cfg: PreprocessParams, names_digest: str) -> str:
    """What decides a shard's bytes: its archive, the settings (but the worker count), the code and the images the
    label table names."""
    code = hashlib.sha256(b"".join(p.read_bytes() for p in CODE)).hexdigest()
    settings = cfg.model_dump(exclude={"workers"})
    blob = json.dumps([archive, md5, settings, code, names_digest], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _reuse(old: Path, new: Path) -> None:
    """Put an unchanged shard and its record into the new output: a hard link, or a copy across file systems."""
    for suffix in (".npy", ".json"):
        try:
            os.link(old.with_suffix(suffix), new.with_suffix(suffix))
        except OSError:
            shutil.copyfile(old.with_suffix(suffix), new.with_suffix(suffix))


def _refuse(broken: list[str], bad: list[tuple[str, str]], total: int, listing: Path) -> None:
    """One error naming every unusable archive and every unusable image (the first MAX_LISTED; all in `listing`)."""
    lines = []
    if broken:
        lines.append(f"preprocess: {len(broken)} archive(s) cannot be used:")
        lines += [f"  {error}" for error in sorted(broken)]
    if bad:
        listing.write_text("".join(f"{name}\t{reason}\n" for name, reason in bad))
        lines.append(f"preprocess: {len(bad)} unusable image(s) of {total} (full list: {listing}):")
        lines += [f"  {name}: {reason}" for name, reason in bad[:MAX_LISTED]]
        if len(bad) > MAX_LISTED:
            lines.append(f"  ... and {len(bad) - MAX_LISTED} more")
    lines.append(f"every image listed in {TABLE_FILE} must be a complete, readable PNG or JPEG (8- or 16-bit; grey, "
                 "grey+alpha, RGB or RGBA) within preprocess.max_image_mb and max_image_pixels, in one archive that "
                 "matches its MD5: replace the archives that hold these images, or set preprocess.on_bad_image: skip "
                 "to leave the images out")
    raise InputError("\n".join(lines))


def run(params: Params, raw_dir: Path, out_dir: Path) -> None:
    """Stage entry point: `raw_dir` (the dataset contract) -> `out_dir` (shards, index, records, meta)."""
    if not raw_dir.is_dir():
        raise InputError(f"{raw_dir}: raw data folder not found; run the ingest stage first (dvc repro ingest)")
    cfg = params.preprocess
    from cxrstudy.data.dataset import has_dataset

    if not has_dataset(raw_dir):  # the external site's placeholder (ingest.external: none)
        with atomic_dir(out_dir) as tmp:
            write_json(tmp / META_FILE, {"images": 0, "source": "none"})
        print(f"preprocess: no dataset in {raw_dir} (ingest.external: none) -> {out_dir}")
        return
    names: list[str] = read_table(raw_dir, read_info(raw_dir))["image"].tolist()
    archives = archive_paths(raw_dir)
    if not archives:
        raise InputError(f"{raw_dir / ARCHIVES_DIR}: no image archive (*.tar.gz, *.tgz or *.tar); run the ingest "
                         "stage first (dvc repro ingest)")
    md5 = read_md5(raw_dir)
    unlisted = [a.name for a in archives if a.name not in md5]
    if unlisted:
        raise InputError(f"{raw_dir / MD5_FILE}: no MD5 for {', '.join(unlisted)}; re-run the ingest stage")
    names_digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    listing = out_dir.parent / BAD_IMAGES_FILE  # the full list when the stage stops on bad images
    with atomic_dir(out_dir) as tmp:
        (tmp / SHARDS_DIR).mkdir()
        jobs, kept = [], []
        for archive in archives:
            key = shard_key(archive.name, md5[archive.name], cfg, names_digest)
            job = Job(str(archive), md5[archive.name], key, str(tmp / SHARDS_DIR / f"{shard_name(archive)}.npy"))
            old = out_dir / SHARDS_DIR / f"{shard_name(archive)}.npy"
            record = read_sidecar(old.with_suffix(".json"))
            if record is not None and record.get("key") == key and old.is_file():
                _reuse(old, Path(job.out))
                kept.append(ArchiveResult(record["archive"], list(record["images"]),
                                          [tuple(b) for b in record["bad"]], int(record["extra"])))
            else:
                jobs.append(job)
        results = kept + run_jobs(jobs, _Work(cfg, frozenset(names)), cfg.workers)
        located: dict[str, tuple[str, int]] = {}
        bad: dict[str, str] = {}
        for result in sorted(results, key=lambda r: r.archive):
            for row, name in enumerate(result.seen):
                if name in located:
                    bad[name] = f"in more than one archive ({located[name][0]}, {result.archive})"
                located.setdefault(name, (shard_name(Path(result.archive)), row))
            bad.update(result.bad)
        for name in names:
            if name not in located and name not in bad:
                bad[name] = f"missing image file (named in {TABLE_FILE}, in no archive of {raw_dir / ARCHIVES_DIR})"
        broken = [r.error for r in results if r.error]
        bad_list = sorted(bad.items())
        if broken or (bad_list and (cfg.on_bad_image == "error" or len(bad_list) == len(names))):
            _refuse(broken, bad_list, len(names), listing)
        kept_names = [n for n in names if n not in bad]
        write_index(tmp / INDEX_FILE, kept_names, located)
        if bad_list:
            (tmp / BAD_IMAGES_FILE).write_text("".join(f"{name}\t{reason}\n" for name, reason in bad_list))
        meta = {"images": len(kept_names), "left_out": len(bad_list), "shards": len(archives),
                **cfg.model_dump(exclude={"workers"})}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    listing.unlink(missing_ok=True)  # a list left by an earlier, refused run no longer holds
    extra = sum(r.extra for r in results)
    if extra:
        print(f"note: {extra} image(s) in the archives are not in {TABLE_FILE} and were not used")
    if bad_list:
        print(f"WARNING: left out {len(bad_list)} unusable image(s) (preprocess.on_bad_image: skip), listed with the "
              f"reason in {out_dir / BAD_IMAGES_FILE}; split leaves them out too")
    print(f"preprocess: {len(kept_names)} images from {len(archives)} archives ({len(kept)} shard(s) unchanged, "
          f"kept), CLAHE {'on' if cfg.clahe else 'off'}, {cfg.image_size} px -> {out_dir}")

"""The preprocess stage: CLAHE and resize every image once, into one memory-mappable uint8 array.

Input: the image archives in `data/raw/archives/` (NIH's `images_NNN.tar.gz`, or `.tar`) and the label table. The
PNGs are streamed out of the archives, one archive per worker process, and each is read and decoded exactly once:
this is where bad images are found (missing, empty, truncated, not a PNG, undecodable), all of them in one run.

Output (`data/processed/`): `images.npy` (N × S × S, uint8, in `Data_Entry` order), `index.txt` (the image names,
one a line, same order), `meta.json` (what was done) and, with `on_bad_image: skip`, `bad_images.txt` (the images
left out, with the reason). One large file keeps `dvc status` / `dvc push` fast where a directory of 100k small PNGs
would not, and lets the training loader read any image without decoding.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cxrstudy.atomic import atomic_dir
from cxrstudy.data.imageio import ARCHIVES_DIR, ArchiveError, ImageError, archive_paths, decode_gray, iter_pngs
from cxrstudy.errors import InputError
from cxrstudy.labels import DATA_ENTRY_FILE, read_data_entry
from cxrstudy.params import Params, PreprocessParams

IMAGES_FILE = "images.npy"
INDEX_FILE = "index.txt"
META_FILE = "meta.json"
BAD_IMAGES_FILE = "bad_images.txt"
MAX_LISTED = 100  # bad images named in an error message; the full list goes to a file

# forkserver, not fork: forking a process that already used OpenCV's or torch's threads can deadlock.
WORKER_CONTEXT = multiprocessing.get_context("forkserver")


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
    """What one archive gave: the wanted images found in it (archive order), those unusable, with the reason, the
    PNGs not in the label table, and why the archive could not be read to its end (None when it could)."""

    archive: str
    seen: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    extra: int = 0
    error: str | None = None


@dataclass(frozen=True)
class _Work:
    cfg: PreprocessParams
    row_of: dict[str, int]  # image name -> its row in the output array
    images: str  # the output array (.npy), already allocated


_work: _Work | None = None


def _init_worker(work: _Work) -> None:
    global _work
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would only oversubscribe
    _work = work


def process_archive(archive: str) -> ArchiveResult:
    """Stream one archive: decode, process and write each wanted image into its row of the output array."""
    assert _work is not None
    out = np.load(_work.images, mmap_mode="r+")
    result = ArchiveResult(Path(archive).name)
    try:
        for name, data in iter_pngs(Path(archive)):
            row = _work.row_of.get(name)
            if row is None:
                result.extra += 1
                continue
            result.seen.append(name)
            try:
                out[row] = process_image(decode_gray(data, name), _work.cfg)
            except ImageError as err:
                result.bad.append((name, str(err).removeprefix(f"{name}: ")))
    except ArchiveError as err:
        result.error = str(err)
    out.flush()
    del out
    return result


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in this process while the block starts worker processes, which inherit that (through the
    forkserver's exec too): Ctrl-C, sent to the whole process group, then stops the stage once, here, instead of
    printing a traceback from every worker (or a bogus ImportError from one caught importing NumPy)."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def process_archives(archives: Sequence[Path], names: Sequence[str], images: Path,
                     cfg: PreprocessParams) -> Generator[ArchiveResult, None, None]:
    """Process every archive into `images` (an allocated N × S × S .npy whose row i is `names[i]`), one archive
    per worker process (`cfg.workers`; 0 or 1 = in this process); yields each archive's result as it finishes."""
    work = _Work(cfg, {name: row for row, name in enumerate(names)}, str(images))
    workers = min(cfg.workers, len(archives))
    if workers <= 1:
        _init_worker(work)
        yield from (process_archive(str(a)) for a in archives)
        return
    pool = ProcessPoolExecutor(mp_context=WORKER_CONTEXT, max_workers=workers, initializer=_init_worker,
                               initargs=(work,))
    try:
        largest_first = sorted(archives, key=lambda a: -a.stat().st_size)  # the last to finish is a small one
        with _sigint_ignored():  # submit() starts the workers (and the forkserver) now
            futures = [pool.submit(process_archive, str(a)) for a in largest_first]
        yield from (future.result() for future in as_completed(futures))
    finally:  # an error or Ctrl-C: the archives not yet started are cancelled, the running ones waited for
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class Findings:
    """Every archive's result, gathered: which images were found where, and everything unusable."""

    names: Sequence[str]
    where: dict[str, str] = field(default_factory=dict)  # image -> the archive it was found in
    bad: dict[str, str] = field(default_factory=dict)  # image -> why it cannot be used
    broken: list[str] = field(default_factory=list)  # archives that cannot be read to their end
    extra: int = 0

    def add(self, result: ArchiveResult) -> None:
        for name in result.seen:
            if name in self.where:
                self.bad[name] = f"in more than one archive member ({self.where[name]}, {result.archive})"
            self.where.setdefault(name, result.archive)
        self.bad.update(result.bad)
        self.extra += result.extra
        if result.error:
            self.broken.append(result.error)

    def finish(self, archives_dir: Path) -> list[tuple[str, str]]:
        """The complete list of unusable images, sorted: the undecodable, the repeated and the missing."""
        for name in self.names:
            if name not in self.where:
                self.bad[name] = f"missing image file (named in {DATA_ENTRY_FILE}, in no archive of {archives_dir})"
        return sorted(self.bad.items())


def reserve(path: Path) -> None:
    """Allocate a freshly created memory-mappable file's blocks now. `open_memmap` creates a sparse file, and a write
    into a hole on a full disk kills the process with SIGBUS; allocating first makes it a clean ENOSPC `OSError`."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def process_into(images: Path, archives: Sequence[Path], names: Sequence[str], cfg: PreprocessParams,
                 progress: bool = True) -> Findings:
    """Create `images` (an N × S × S uint8 .npy whose row i is `names[i]`) and fill it from the archives; return
    what was found (`Findings.finish` lists the unusable images)."""
    array = np.lib.format.open_memmap(images, mode="w+", dtype=np.uint8,
                                      shape=(len(names), cfg.image_size, cfg.image_size))
    reserve(images)
    del array
    found = Findings(names)
    results = process_archives(archives, names, images, cfg)
    try:
        with tqdm(total=len(names), desc="preprocess", unit="img", disable=not progress) as bar:
            for result in results:
                found.add(result)
                bar.update(len(result.seen))
    finally:
        results.close()  # stops the workers now, not at exit (Ctrl-C)
    return found


def _refuse(found: Findings, bad: list[tuple[str, str]], listing: Path) -> None:
    """One error naming every broken archive and every unusable image (the first MAX_LISTED; all in `listing`)."""
    lines = []
    if found.broken:
        lines.append(f"preprocess: {len(found.broken)} archive(s) cannot be read to their end:")
        lines += [f"  {error}" for error in sorted(found.broken)]
    if bad:
        listing.write_text("".join(f"{name}\t{reason}\n" for name, reason in bad))
        lines.append(f"preprocess: {len(bad)} unusable image(s) of {len(found.names)} (full list: {listing}):")
        lines += [f"  {name}: {reason}" for name, reason in bad[:MAX_LISTED]]
        if len(bad) > MAX_LISTED:
            lines.append(f"  ... and {len(bad) - MAX_LISTED} more")
    lines.append(f"every image listed in {DATA_ENTRY_FILE} must be a complete, readable PNG (8- or 16-bit; grey, "
                 "grey+alpha, RGB or RGBA) in one readable archive: replace the archives that hold these images, or "
                 "set preprocess.on_bad_image: skip to leave the images out")
    raise InputError("\n".join(lines))


def _keep_rows(images: Path, rows: list[int]) -> None:
    """Rewrite the array at `images` with only `rows`, in order (the images left out by on_bad_image: skip)."""
    source = np.load(images, mmap_mode="r")
    kept_path = images.with_name("kept.npy")
    kept = np.lib.format.open_memmap(kept_path, mode="w+", dtype=np.uint8, shape=(len(rows), *source.shape[1:]))
    reserve(kept_path)
    for start in range(0, len(rows), 1024):
        kept[start : start + 1024] = source[rows[start : start + 1024]]
    kept.flush()
    del kept, source
    os.replace(kept_path, images)


def run(params: Params, raw_dir: Path, out_dir: Path) -> None:
    """Stage entry point: `raw_dir` (archives + label table) -> `out_dir` (images.npy, index.txt, meta.json)."""
    if not raw_dir.is_dir():
        raise InputError(f"{raw_dir}: raw data folder not found; run the ingest stage first (dvc repro ingest)")
    cfg = params.preprocess
    table = read_data_entry(raw_dir / DATA_ENTRY_FILE)
    names: list[str] = table["image"].tolist()
    archives = archive_paths(raw_dir)
    if not archives:
        raise InputError(f"{raw_dir / ARCHIVES_DIR}: no image archive (*.tar.gz, *.tgz or *.tar); run the ingest "
                         "stage first (dvc repro ingest)")
    listing = out_dir.parent / BAD_IMAGES_FILE  # the full list when the stage stops on bad images
    with atomic_dir(out_dir) as tmp:
        found = process_into(tmp / IMAGES_FILE, archives, names, cfg)
        bad = found.finish(raw_dir / ARCHIVES_DIR)
        if found.broken or (bad and (cfg.on_bad_image == "error" or len(bad) == len(names))):
            _refuse(found, bad, listing)
        if bad:
            left_out = {name for name, _ in bad}
            _keep_rows(tmp / IMAGES_FILE, [row for row, name in enumerate(names) if name not in left_out])
            names = [name for name in names if name not in left_out]
            (tmp / BAD_IMAGES_FILE).write_text("".join(f"{name}\t{reason}\n" for name, reason in bad))
        (tmp / INDEX_FILE).write_text("".join(f"{n}\n" for n in names))
        meta = {"images": len(names), "left_out": len(bad), **cfg.model_dump()}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    listing.unlink(missing_ok=True)  # a list left by an earlier, refused run no longer holds
    if found.extra:
        print(f"note: {found.extra} PNG(s) in the archives are not in {DATA_ENTRY_FILE} and were not used")
    if bad:
        print(f"WARNING: left out {len(bad)} unusable image(s) (preprocess.on_bad_image: skip), listed with the "
              f"reason in {out_dir / BAD_IMAGES_FILE}; split leaves them out too")
    print(f"preprocess: {len(names)} images from {len(archives)} archives, CLAHE {'on' if cfg.clahe else 'off'}, "
          f"{cfg.image_size} px -> {out_dir}")


def read_index(processed_dir: Path) -> list[str]:
    """The names of the processed images, in the array's order."""
    path = processed_dir / INDEX_FILE
    if not path.is_file():
        raise InputError(f"{path}: processed image index not found; run the preprocess stage first")
    return path.read_text().split()


def load_processed(processed_dir: Path) -> tuple[np.ndarray, list[str]]:
    """The processed images (memory-mapped, read-only) and their names. A missing, truncated or foreign file is an
    `InputError` naming it."""
    images_path, index_path = processed_dir / IMAGES_FILE, processed_dir / INDEX_FILE
    rerun = "re-run the preprocess stage (dvc repro preprocess, or python -m cxrstudy preprocess)"
    for path in (images_path, index_path):
        if not path.is_file():
            raise InputError(f"{path}: processed data not found; {rerun}")
    try:
        images = np.load(images_path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # numpy's words for a truncated or foreign file
        raise InputError(f"{images_path}: not a complete .npy array ({err}); {rerun}") from None
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise InputError(f"{images_path}: holds a {images.dtype} array of shape {images.shape}; expected uint8 "
                         f"images N x S x S; {rerun}")
    names = index_path.read_text().split()
    if len(names) != len(images):
        raise InputError(f"{processed_dir}: {INDEX_FILE} lists {len(names)} names for {len(images)} images; {rerun}")
    return images, names

"""The preprocess stage: CLAHE and resize every image once, into one memory-mappable uint8 array.

Output (`data/processed/`): `images.npy` (N × S × S, uint8, in `Data_Entry` order), `index.txt` (the image names,
one a line, same order) and `meta.json` (what was done). One large file keeps `dvc status` / `dvc push` fast where a
directory of 100k small PNGs would not, and lets the training loader read any image without decoding.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections.abc import Generator, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from tqdm import tqdm

from cxrstudy.atomic import atomic_dir
from cxrstudy.errors import InputError
from cxrstudy.imageio import ImageError, read_gray
from cxrstudy.labels import DATA_ENTRY_FILE, read_data_entry

if TYPE_CHECKING:  # type hints only: the training code runs where pydantic is not installed
    from cxrstudy.params import Params, PreprocessParams

IMAGES_FILE = "images.npy"
INDEX_FILE = "index.txt"
META_FILE = "meta.json"

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


_cfg: PreprocessParams | None = None


def _init_worker(cfg: PreprocessParams) -> None:
    global _cfg
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would only oversubscribe
    _cfg = cfg


def _process_path(path: str) -> np.ndarray | str:
    assert _cfg is not None
    try:
        return process_image(read_gray(Path(path)), _cfg)
    except ImageError as err:
        return str(err)


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


def process_all(paths: list[Path], cfg: PreprocessParams) -> Generator[np.ndarray | str, None, None]:
    """Processed images in input order; an unusable image yields its error message instead. Closing the iterator
    early (an error, Ctrl-C) cancels the images not yet started and waits only for those in progress."""
    if cfg.workers <= 1:
        _init_worker(cfg)
        yield from (_process_path(str(p)) for p in paths)
        return
    pool = ProcessPoolExecutor(mp_context=WORKER_CONTEXT, max_workers=cfg.workers, initializer=_init_worker,
                               initargs=(cfg,))
    try:
        with _sigint_ignored():  # map() starts the workers (and the forkserver) now
            results = pool.map(_process_path, [str(p) for p in paths], chunksize=32)
        yield from results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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


def run(params: Params, raw_dir: Path, out_dir: Path) -> None:
    """Stage entry point: `raw_dir` (NIH layout) -> `out_dir` (images.npy, index.txt, meta.json)."""
    if not raw_dir.is_dir():
        raise InputError(f"{raw_dir}: raw data folder not found; run the ingest stage first (dvc repro ingest)")
    cfg = params.preprocess
    table = read_data_entry(raw_dir / DATA_ENTRY_FILE)
    names = table["image"].tolist()
    paths = [raw_dir / "images" / n for n in names]
    errors: list[str] = []
    with atomic_dir(out_dir) as tmp:
        array = np.lib.format.open_memmap(tmp / IMAGES_FILE, mode="w+", dtype=np.uint8,
                                          shape=(len(names), cfg.image_size, cfg.image_size))
        reserve(tmp / IMAGES_FILE)
        results = process_all(paths, cfg)
        try:
            for i, result in enumerate(tqdm(results, total=len(paths), desc="preprocess", unit="img")):
                if isinstance(result, str):
                    errors.append(result)
                else:
                    array[i] = result
        finally:
            results.close()  # stops the workers now, not at exit (Ctrl-C)
        if errors:
            listed = "\n  ".join(errors[:50])
            more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
            raise InputError(f"preprocess: {len(errors)} unusable image(s):\n  {listed}{more}\n"
                             f"every image listed in {DATA_ENTRY_FILE} must be a complete, readable PNG (8- or "
                             "16-bit; grey, grey+alpha, RGB or RGBA): replace these files, or remove their rows")
        array.flush()
        del array
        (tmp / INDEX_FILE).write_text("".join(f"{n}\n" for n in names))
        meta = {"images": len(names), **cfg.model_dump()}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"preprocess: {len(names)} images, CLAHE {'on' if cfg.clahe else 'off'}, {cfg.image_size} px -> {out_dir}")


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

"""The ingest stage: a dataset as NIH ChestX-ray14 distributes it, under `data/raw/`.

    data/raw/archives/images_001.tar.gz ...  Data_Entry_2017.csv  train_val_list.txt  test_list.txt
    BBox_List_2017.csv

`ingest.source` chooses where it comes from: `phantom` (the embedded, offline sample; the default) or `nih`
(the real release, downloaded or linked from a local copy; see `cxrstudy.data.nih`). The phantom is written as NIH's
twelve archives are (in proportion), so that the default run goes through the code that reads the real ones.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from cxrstudy.atomic import atomic_dir
from cxrstudy.data.imageio import ARCHIVES_DIR, encode_png, write_archive
from cxrstudy.data.phantom import Box, PhantomRenderer, load_bboxes, load_sample, take_patients
from cxrstudy.data.release import archive_file_names
from cxrstudy.data.split import TEST_LIST, TRAIN_VAL_LIST, patient_split, write_list
from cxrstudy.labels import DATA_ENTRY_FILE, write_data_entry
from cxrstudy.params import Params, PhantomParams

BBOX_OUT = "BBox_List_2017.csv"

_renderer: PhantomRenderer | None = None

# forkserver, not fork: forking a process that already used OpenCV's or torch's threads can deadlock.
WORKER_CONTEXT = multiprocessing.get_context("forkserver")


def _init_worker(size: int, seed: int) -> None:
    global _renderer
    import cv2

    cv2.setNumThreads(1)
    _renderer = PhantomRenderer(size, seed, load_bboxes())


def _render(job: tuple[str, int, int, str]) -> tuple[bytes, list[Box]]:
    name, patient, follow_up, labels = job
    assert _renderer is not None
    image, boxes = _renderer.render(patient, follow_up, [] if labels == "No Finding" else labels.split("|"))
    return encode_png(image, name=name), boxes


def build_phantom(cfg: PhantomParams, out_dir: Path, workers: int = 2) -> pd.DataFrame:
    """Write the phantom dataset into `out_dir` (which must exist) and return its label table.

    The images go into NIH-style archives (`archives/images_NNN.tar.gz`, names sorted, NIH's 12 archive sizes
    scaled to the sample), rendered in parallel and written in one pass.
    """
    table = take_patients(load_sample(), cfg.n_images)
    jobs = sorted((row.image, int(row.patient), int(row.follow_up), row.labels)
                  for row in table.itertuples(index=False))
    archives_dir = out_dir / ARCHIVES_DIR
    archives_dir.mkdir()
    boxes_of: dict[str, list[Box]] = {}
    with ProcessPoolExecutor(mp_context=WORKER_CONTEXT, max_workers=max(1, workers), initializer=_init_worker,
                             initargs=(cfg.image_size, cfg.seed)) as pool, \
            tqdm(total=len(jobs), desc="phantom", unit="img") as bar:
        rendered = zip((job[0] for job in jobs), pool.map(_render, jobs, chunksize=16), strict=True)

        def members(count: int) -> Iterator[tuple[str, bytes]]:
            for _ in range(count):
                name, (png, boxes) = next(rendered)
                boxes_of[name] = boxes
                bar.update()
                yield name, png

        for archive, count in archive_file_names(len(jobs)).items():
            write_archive(archives_dir / archive, members(count), compresslevel=1)
    scale = 1024.0 / cfg.image_size
    bbox_rows = [
        (name, "Infiltrate" if b.finding == "Infiltration" else b.finding,
         b.x * scale, b.y * scale, b.w * scale, b.h * scale)
        for name in table["image"] for b in boxes_of[name]
    ]
    table = table.assign(width=1024, height=1024)
    write_data_entry(table, out_dir / DATA_ENTRY_FILE)
    # The phantom's "official" split: patient-wise, fixed by the phantom's own seed.
    train_val, test = patient_split(table, cfg.test_fraction, cfg.seed)
    write_list(out_dir / TRAIN_VAL_LIST, table["image"].iloc[train_val].tolist())
    write_list(out_dir / TEST_LIST, table["image"].iloc[test].tolist())
    boxes_df = pd.DataFrame(bbox_rows, columns=["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"])
    boxes_df.round(3).to_csv(out_dir / BBOX_OUT, index=False, lineterminator="\n")
    return table


def run(params: Params, out_dir: Path, workers: int = 2) -> None:
    """Stage entry point: build `out_dir` from the configured source, atomically."""
    with atomic_dir(out_dir) as tmp:
        if params.ingest.source == "phantom":
            table = build_phantom(params.ingest.phantom, tmp, workers=workers)
        else:
            from cxrstudy.data.nih import check_dvc_links, ingest_nih

            check_dvc_links()
            table = ingest_nih(params.ingest.nih, tmp)
    print(f"ingest ({params.ingest.source}): {len(table)} images of {table['patient'].nunique()} patients "
          f"-> {out_dir}")

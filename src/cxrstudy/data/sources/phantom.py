"""Site A: the embedded, NIH-shaped phantom (`ingest.source: phantom`, the default).

Label rows come from a committed subset of NIH's `Data_Entry_2017_v2020.csv` (`resources/nih_sample.csv`: whole
patients with their follow-ups; see `resources/README.md` for attribution); each image is a synthetic chest drawn by
`cxrstudy.data.phantom` for its findings and view. Its "official" test list is drawn by patient with the phantom's
own seed, as NIH's `test_list.txt` would be.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrstudy.data.dataset import Dataset, DatasetInfo
from cxrstudy.data.imageio import ARCHIVES_DIR
from cxrstudy.data.nihtable import FINDINGS, NIH_LABEL_SOURCE, parse_labels, read_data_entry, to_contract
from cxrstudy.data.phantom import (
    PhantomRenderer,
    RenderJob,
    boxes_table,
    load_bboxes,
    render_archives,
    resource_path,
    take_patients,
)
from cxrstudy.data.split import patient_split
from cxrstudy.ingestschema import PhantomParams
from cxrstudy.params import Params

NAME = "phantom"
SAMPLE_FILE = "nih_sample.csv"
MAX_IMAGES_PER_PATIENT = 6
SITE = "phantom site A (NIH-shaped)"


def load_sample() -> pd.DataFrame:
    """The committed NIH label rows the phantom draws from, in selection order."""
    return read_data_entry(resource_path(SAMPLE_FILE))


def select_sample(entries: pd.DataFrame, n_images: int, seed: int, min_positives: int = 40) -> pd.DataFrame:
    """Choose whole patients from the NIH table: first enough for `min_positives` of every finding, then at random.

    Patients with more than `MAX_IMAGES_PER_PATIENT` images are left out so that no one patient dominates.
    The returned rows are ordered by selection, so any prefix of whole patients is itself a stratified sample.
    (How `resources/nih_sample.csv` was chosen.)
    """
    rng = np.random.default_rng(seed)
    counts = entries.groupby("patient")["image"].transform("size")
    pool = entries[counts <= MAX_IMAGES_PER_PATIENT]
    patients = pool["patient"].unique()
    rng.shuffle(patients)
    by_patient = {pid: rows for pid, rows in pool.groupby("patient", sort=False)}
    have = dict.fromkeys(FINDINGS, 0)
    chosen: list[int] = []
    total = 0
    # Rarest findings first, so that Hernia (0.2 % of NIH) is represented at all.
    prevalence = {f: pool["labels"].str.contains(f, regex=False).sum() for f in FINDINGS}
    for finding in sorted(FINDINGS, key=prevalence.__getitem__):
        for pid in patients:
            if have[finding] >= min_positives or total >= n_images:
                break
            if pid in chosen:
                continue
            rows = by_patient[pid]
            if not rows["labels"].str.contains(finding, regex=False).any():
                continue
            chosen.append(pid)
            total += len(rows)
            for cell in rows["labels"]:
                for name in parse_labels(cell):
                    have[name] += 1
    chosen_set = set(chosen)
    for pid in patients:
        if total >= n_images:
            break
        if pid not in chosen_set:
            chosen.append(pid)
            chosen_set.add(pid)
            total += len(by_patient[pid])
    return pd.concat([by_patient[pid] for pid in chosen], ignore_index=True)


def make_renderer(cfg: PhantomParams) -> PhantomRenderer:
    """Site A's renderer: its own acquisition, AP views' signatures at `ap_signature_contrast` (a planted gap)."""
    return PhantomRenderer(cfg.image_size, cfg.seed, load_bboxes(), ap_signature_contrast=cfg.ap_signature_contrast)


def ingest(params: Params, out_dir: Path, workers: int) -> Dataset:
    """Draw site A's images into `out_dir/archives` and return its table, boxes and description."""
    cfg = params.ingest.phantom
    entries = take_patients(load_sample(), cfg.n_images)
    jobs = [RenderJob(row.image, int(row.patient), int(row.follow_up), tuple(parse_labels(row.labels)), row.view)
            for row in entries.itertuples(index=False)]
    boxes_of = render_archives(jobs, functools.partial(make_renderer, cfg), out_dir / ARCHIVES_DIR, workers)
    # The phantom's "official" split: patient-wise, fixed by the phantom's own seed.
    train_val, test = patient_split(entries, cfg.test_fraction, cfg.seed)
    table = to_contract(entries, entries["image"].iloc[train_val], entries["image"].iloc[test], SITE)
    info = DatasetInfo(
        source=NAME, name="NIH-shaped phantom", site=SITE, label_space="nih", labels=FINDINGS, uncertain="zeros",
        label_source=f"real NIH label rows ({NIH_LABEL_SOURCE}) with synthetic images drawn for them",
        official_test=f"the phantom's patient-wise test list ({cfg.test_fraction:.0%} of patients, seed {cfg.seed})")
    return Dataset(table, info, boxes_table(boxes_of, cfg.image_size))


def manifest(params: Params) -> dict[str, Any]:
    """Nothing outside the project: the phantom is made from the package and its parameters."""
    return {}

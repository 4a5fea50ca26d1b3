"""Site B: the embedded, CheXpert-shaped phantom (`ingest.external: chexpert_phantom`, the default external test site;
`ingest.source: chexpert_phantom` trains on it).

Label rows come from a committed subset of CheXpert's train.csv (`resources/chexpert_sample.csv`: real rows, whole
patients; see `resources/README.md` for how they were chosen and for attribution), read by the CheXpert adapter's own
parser, so that site B's table is what CheXpert's would be: CheXpert's patients, studies, sexes, ages, views (far more
AP views than NIH's) and its 14 observations with their uncertain and blank labels. Each image is a synthetic chest
drawn by `cxrstudy.data.phantom` with site A's signatures for the same findings, acquired differently: site B's
exposure, noise and burned-in corner marker (`cxrstudy.data.acquisition.SITE_B`) and detector size
(`ingest.chexpert_phantom.image_size`, 320 px against site A's 256).

Which signature each observation draws (`SIGNATURES`): the 7 findings CheXpert shares with NIH draw site A's, paired
by `resources/label_map.csv` (Pleural Effusion draws Effusion's); Lung Opacity draws Infiltration's (patchy opacity),
Lung Lesion Nodule's, Pleural Other Pleural_Thickening's; Enlarged Cardiomediastinum, Fracture and Support Devices have
signatures of their own; No Finding draws nothing. An uncertain label (-1) draws its finding with probability
`UNCERTAIN_DRAWN` (1/2), once per study, seeded: so the uncertainty policy matters, as it does on CheXpert, where the
labeler's "uncertain" hides positives and negatives alike. Under `zeros` or `ones` about half of the uncertain cells
are wrong targets; under `ignore` they are left out.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrstudy.data.acquisition import SITE_B
from cxrstudy.data.dataset import COLUMNS, Dataset, DatasetInfo
from cxrstudy.data.imageio import ARCHIVES_DIR
from cxrstudy.data.phantom import (
    PhantomRenderer,
    RenderJob,
    boxes_table,
    load_bboxes,
    render_archives,
    resource_path,
    take_patients,
)
from cxrstudy.data.sources.chexpert import OBSERVATIONS, Faults, number_follow_ups, read_labels_csv
from cxrstudy.data.split import patient_split
from cxrstudy.ingestschema import ChexpertPhantomParams
from cxrstudy.labels import label_map
from cxrstudy.params import Params

NAME = "chexpert_phantom"
SAMPLE_FILE = "chexpert_sample.csv"
SITE = "phantom site B (CheXpert-shaped)"
UNCERTAIN_DRAWN = 0.5  # the probability that an uncertain label's finding is drawn
UNCERTAIN_STREAM = 1_000_003  # tags the per-study random stream of the uncertain draws (image streams never use it)
MAX_IMAGES_PER_PATIENT = 6
# CheXpert observation -> the renderer's signature: the shared findings by the label map, then CheXpert's own.
SIGNATURES: dict[str, str] = {
    **{row["chexpert"]: row["nih"] for row in label_map() if row["chexpert"] and row["nih"]},
    "Lung Opacity": "Infiltration", "Lung Lesion": "Nodule", "Pleural Other": "Pleural_Thickening",
    "Enlarged Cardiomediastinum": "Enlarged Cardiomediastinum", "Fracture": "Fracture",
    "Support Devices": "Support Devices",
}
FINDING_OF = {signature: name for name, signature in SIGNATURES.items()}  # for the boxes
SHARED = tuple(row["chexpert"] for row in label_map() if row["chexpert"] and row["nih"])  # with NIH


def load_sample() -> pd.DataFrame:
    """The committed CheXpert rows as `read_labels_csv` gives them (every view), follow-ups numbered, in file order."""
    faults = Faults()
    rows = read_labels_csv(resource_path(SAMPLE_FILE), "test", faults)
    faults.raise_if_any(f"the packaged CheXpert sample ({SAMPLE_FILE})")
    return number_follow_ups(rows)


def select_sample(rows: pd.DataFrame, n_images: int, seed: int, min_positives: int = 40) -> pd.DataFrame:
    """Choose whole patients from CheXpert rows (`read_labels_csv`'s, all views): first, rarest finding first, enough
    patients for `min_positives` patients with a positive frontal image of each finding shared with NIH; then patients
    at random until `n_images` rows. Patients with more than `MAX_IMAGES_PER_PATIENT` images are left out, so that no
    one patient dominates. The rows come out ordered by selection, a patient's together, so that any prefix of whole
    patients is itself a sample with the rare findings in it. (How `resources/chexpert_sample.csv` was chosen.)"""
    rng = np.random.default_rng(seed)
    sizes = rows.groupby("patient")["image"].transform("size")
    pool = rows[sizes <= MAX_IMAGES_PER_PATIENT]
    first_seen = pool["patient"].unique().tolist()
    patients = [first_seen[k] for k in rng.permutation(len(first_seen))]
    by_patient = {pid: part for pid, part in pool.groupby("patient", sort=False)}
    positive = {name: set(pool["patient"][(pool[name] == "1") & pool["frontal"].astype(bool)]) for name in SHARED}
    chosen: list[str] = []
    picked: set[str] = set()
    total = 0
    for name in sorted(SHARED, key=lambda n: len(positive[n])):
        for pid in patients:
            if len(positive[name] & picked) >= min_positives or total >= n_images:
                break
            if pid in positive[name] and pid not in picked:
                chosen.append(pid)
                picked.add(pid)
                total += len(by_patient[pid])
    for pid in patients:
        if total >= n_images:
            break
        if pid not in picked:
            chosen.append(pid)
            picked.add(pid)
            total += len(by_patient[pid])
    return pd.concat([by_patient[pid] for pid in chosen], ignore_index=True)


def drawn_findings(patient: int, follow_up: int, cells: Sequence[str], seed: int) -> tuple[str, ...]:
    """The signatures to draw for one image with the label `cells` (in `OBSERVATIONS` order): its positive
    observations', and each uncertain one's with probability `UNCERTAIN_DRAWN`, decided once per study (the same for
    all its views) by a stream seeded with the study."""
    draws = np.random.default_rng([seed, patient, follow_up, UNCERTAIN_STREAM]).random(len(OBSERVATIONS))
    return tuple(SIGNATURES[name] for name, cell, u in zip(OBSERVATIONS, cells, draws, strict=True)
                 if name in SIGNATURES and (cell == "1" or (cell == "-1" and u < UNCERTAIN_DRAWN)))


def patient_number(patient: str) -> int:
    """`patient00042` -> 42, which seeds the patient's anatomy."""
    return int(patient.removeprefix("patient"))


def shot_of(image: str) -> int:
    """`..._view2_frontal.jpg` -> 1: the image's place in its study (0 = the first), which seeds a later view."""
    match = re.search(r"_view(\d+)_", image)
    return int(match.group(1)) - 1 if match else 0


def make_renderer(cfg: ChexpertPhantomParams) -> PhantomRenderer:
    return PhantomRenderer(cfg.image_size, cfg.seed, load_bboxes(), SITE_B)


def jobs_of(rows: pd.DataFrame, seed: int) -> list[RenderJob]:
    """One render job per row (`read_labels_csv`'s rows, follow-ups numbered)."""
    cells = rows[list(OBSERVATIONS)].to_numpy(dtype=str)
    jobs = []
    for k, (image, patient, follow_up, view) in enumerate(
            zip(rows["image"], rows["patient"], rows["follow_up"], rows["view"], strict=True)):
        number = patient_number(patient)
        findings = drawn_findings(number, int(follow_up), cells[k], seed)
        jobs.append(RenderJob(image, number, int(follow_up), findings, view, shot_of(image)))
    return jobs


def official_split(rows: pd.DataFrame, cfg: ChexpertPhantomParams) -> pd.Series:
    """Every image `test` (test_fraction 1: an external test site), or a patient-wise draw with the phantom's seed."""
    if cfg.test_fraction >= 1.0:
        return pd.Series("test", index=rows.index)
    _, test = patient_split(rows, cfg.test_fraction, cfg.seed)
    split = pd.Series("train_val", index=rows.index)
    split.iloc[test] = "test"
    return split


def ingest(params: Params, out_dir: Path, workers: int) -> Dataset:
    """Draw site B's images into `out_dir/archives` and return its table, boxes and description."""
    cfg = params.ingest.chexpert_phantom
    rows = load_sample()
    if cfg.views == "frontal":
        rows = rows[rows["frontal"].astype(bool)]
    rows = take_patients(rows.reset_index(drop=True), cfg.n_images)
    rows = rows.assign(site=SITE, official_split=official_split(rows, cfg))
    boxes_of = render_archives(jobs_of(rows, cfg.seed), functools.partial(make_renderer, cfg),
                               out_dir / ARCHIVES_DIR, workers, desc="phantom site B")
    boxes = boxes_table(boxes_of, cfg.image_size)
    boxes["finding"] = boxes["finding"].map(FINDING_OF)
    table = rows[[*COLUMNS, *OBSERVATIONS]].reset_index(drop=True)
    everything = cfg.test_fraction >= 1.0
    info = DatasetInfo(
        source=NAME, name="CheXpert-shaped phantom", site=SITE, label_space="chexpert", labels=OBSERVATIONS,
        uncertain=cfg.uncertain,
        label_source="real CheXpert label rows (train.csv: the CheXpert labeler, rule-based NLP on radiology reports) "
                     "with synthetic images drawn for them; an uncertain label's finding drawn with probability "
                     f"{UNCERTAIN_DRAWN:g}",
        official_test="every image: site B is an external test site (test_fraction 1)" if everything else
        f"the phantom's patient-wise test list ({cfg.test_fraction:.0%} of patients, seed {cfg.seed})")
    return Dataset(table.assign(follow_up=table["follow_up"].astype("int64")), info, boxes)


def manifest(params: Params) -> dict[str, Any]:
    """Nothing outside the project: the phantom is made from the package and its parameters."""
    return {}

"""The phantom: synthetic low-contrast chest radiographs with a learnable signature per finding, drawn for real label
rows (NIH's for site A, CheXpert's for site B; `cxrstudy.data.sources.phantom`, `...chexpert_phantom`).

Each image is drawn from its own random stream, seeded by (phantom seed, patient, follow-up), so images do not depend
on the sample size or drawing order. Each finding has a signature at a plausible place. Eight findings take their
position and size from a real box of NIH's `BBox_List_2017.csv` for that finding; the others are placed by anatomy.
A site's acquisition (`cxrstudy.data.acquisition`: exposure, noise, a burned-in marker) turns the drawn chest into
8-bit grey levels; site A's exposure is deliberately poor, so that local contrast enhancement matters. The images are
written as archives, like the real releases, rendered in parallel.

A planted subgroup gap (`ingest.phantom.ap_signature_contrast` < 1): AP views' finding signatures are drawn at that
fraction of their contrast, PA views' unchanged. A signature is what the finding adds to the chest; for the two drawn
into the anatomy, Cardiomegaly's enlarged heart and Emphysema's larger, darker lungs, their departure from the normal
chest is scaled likewise. At 1 (the default) nothing is planted and the images are those of earlier versions, bit
for bit.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from cxrstudy.data.acquisition import SITE_A, Acquisition, encode, expose
from cxrstudy.data.imageio import write_archive
from cxrstudy.data.nihtable import BBOX_NAMES
from cxrstudy.data.pool import WORKER_CONTEXT, die_with, sigint_ignored
from cxrstudy.data.release import archive_file_names

BBOX_FILE = "BBox_List_2017.csv.gz"


def resource_path(name: str) -> Path:
    return Path(str(resources.files("cxrstudy") / "resources" / name))


def load_bboxes() -> dict[str, np.ndarray]:
    """Real NIH boxes per finding, as rows of (x, y, w, h) in 1024-px coordinates."""
    with gzip.open(resource_path(BBOX_FILE), "rt") as handle:
        boxes = pd.read_csv(handle)
    boxes = boxes.iloc[:, :6]
    boxes.columns = ["image", "finding", "x", "y", "w", "h"]
    boxes["finding"] = boxes["finding"].replace(BBOX_NAMES)
    return {
        name: group[["x", "y", "w", "h"]].to_numpy(dtype=np.float64) for name, group in boxes.groupby("finding")
    }


def take_patients(sample: pd.DataFrame, n_images: int) -> pd.DataFrame:
    """The shortest prefix of whole patients holding at least `n_images` images (all of them if fewer)."""
    first_row = sample.groupby("patient", sort=False).cumcount() == 0
    starts = np.flatnonzero(first_row.to_numpy())
    cut = next((s for s in starts if s >= n_images), len(sample))
    return sample.iloc[:cut].reset_index(drop=True)


@dataclass(frozen=True)
class Box:
    """A planted finding's box, in the phantom's pixel coordinates."""

    finding: str
    x: float
    y: float
    w: float
    h: float


def _ellipse(img: np.ndarray, center: tuple[float, float], axes: tuple[float, float], value: float,
             angle: float = 0.0) -> None:
    mask = np.zeros(img.shape, np.uint8)
    c = (round(center[0] * 16), round(center[1] * 16))
    a = (max(1, round(axes[0] * 16)), max(1, round(axes[1] * 16)))
    cv2.ellipse(mask, c, a, angle, 0, 360, 1, -1, lineType=cv2.LINE_AA, shift=4)
    img += value * mask


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigmaX=max(sigma, 0.3))


def _noise_field(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Smooth random field with unit standard deviation."""
    field = _blur(rng.standard_normal((size, size)).astype(np.float32), sigma)
    return field / (field.std() + 1e-6)


def _toward(normal: float, diseased: float, strength: float) -> float:
    """`normal` moved `strength` of the way to `diseased`: exactly `diseased` at 1, exactly `normal` at 0."""
    return diseased if strength == 1.0 else normal + strength * (diseased - normal)


@dataclass(frozen=True)
class RenderJob:
    """One image to draw: its name, the patient and follow-up that seed it, its findings (names the renderer knows),
    its view, and which shot of the study it is (0 = the first; a later one gets its own random stream)."""

    image: str
    patient: int
    follow_up: int
    findings: tuple[str, ...]
    view: str
    shot: int = 0


class PhantomRenderer:
    """Draws one phantom chest radiograph for a given set of findings, as the site's `acquisition` takes it, AP views'
    signatures at `ap_signature_contrast` of their contrast."""

    def __init__(self, size: int, seed: int, bboxes: dict[str, np.ndarray], acquisition: Acquisition = SITE_A,
                 ap_signature_contrast: float = 1.0) -> None:
        self.size = size
        self.seed = seed
        self.bboxes = bboxes
        self.acquisition = acquisition
        self.ap_signature_contrast = ap_signature_contrast

    def _real_box(self, rng: np.random.Generator, finding: str) -> tuple[float, float, float, float] | None:
        boxes = self.bboxes.get(finding)
        if boxes is None or len(boxes) == 0:
            return None
        x, y, w, h = boxes[rng.integers(len(boxes))] * (self.size / 1024.0)
        return float(x), float(y), float(w), float(h)

    def render_job(self, job: RenderJob) -> tuple[np.ndarray, list[Box]]:
        """The image and planted boxes of one job."""
        return self.render(job.patient, job.follow_up, list(job.findings), job.view, job.shot)

    def render(self, patient: int, follow_up: int, findings: list[str], view: str = "",
               shot: int = 0) -> tuple[np.ndarray, list[Box]]:
        """The 8-bit image and the boxes planted in it."""
        img, boxes, rng = self.scene(patient, follow_up, findings, view, shot)
        return expose(img, rng, self.acquisition), boxes

    def scene(self, patient: int, follow_up: int, findings: list[str], view: str = "",
              shot: int = 0) -> tuple[np.ndarray, list[Box], np.random.Generator]:
        """The drawn chest before acquisition (float32), its boxes, and the image's random stream, to be exposed."""
        s = self.size
        anatomy = np.random.default_rng([self.seed, patient])  # the same chest at every follow-up
        rng = np.random.default_rng([self.seed, patient, follow_up, *([shot] if shot else [])])
        img = np.zeros((s, s), np.float32)
        boxes: list[Box] = []
        has = set(findings)
        strength = self.ap_signature_contrast if view == "AP" else 1.0

        # Body, lungs (radiolucent, so darker), spine, heart, clavicles.
        cx = s * (0.5 + anatomy.normal(0, 0.01))
        _ellipse(img, (cx, s * 0.56), (s * 0.44, s * 0.52), 0.55)
        emph = strength if "Emphysema" in has else 0.0
        lung_h = s * (0.25 + anatomy.normal(0, 0.01)) * _toward(1.0, 1.12, emph)
        lung_w = s * (0.13 + anatomy.normal(0, 0.006)) * _toward(1.0, 1.08, emph)
        lung_y = s * 0.45 + (lung_h - s * 0.25) * 0.5
        lungs = np.zeros((s, s), np.float32)
        left = (cx - s * 0.17, lung_y)
        right = (cx + s * 0.17, lung_y)
        _ellipse(lungs, left, (lung_w, lung_h), 1.0)
        _ellipse(lungs, right, (lung_w * 0.95, lung_h * 0.97), 1.0)
        lungs = np.clip(_blur(lungs, s * 0.006), 0, 1)
        img -= _toward(0.32, 0.42, emph) * lungs
        markings = _noise_field(rng, s, s * 0.006) * _toward(0.03, 0.012, emph)
        img += markings * lungs
        _ellipse(img, (cx, s * 0.5), (s * 0.035, s * 0.5), 0.18)
        heart_w, heart_h = s * (0.11 + anatomy.normal(0, 0.005)), s * 0.095
        normal_heart = (heart_w, heart_h)
        heart_c = (cx + s * 0.05, s * 0.64)
        if "Cardiomegaly" in has:
            box = self._real_box(rng, "Cardiomegaly")
            if box is not None:
                heart_w = max(box[2] / 2, heart_w * 1.35)
                heart_h = max(box[3] / 2.4, heart_h * 1.15)
            else:
                heart_w, heart_h = heart_w * 1.4, heart_h * 1.15
        if "Cardiomegaly" in has and strength != 1.0:  # the enlargement at `strength` of its contrast
            _ellipse(img, heart_c, normal_heart, 0.22 * (1.0 - strength))
            _ellipse(img, heart_c, (heart_w, heart_h), 0.22 * strength)
        else:
            _ellipse(img, heart_c, (heart_w, heart_h), 0.22)
        if "Cardiomegaly" in has:
            boxes.append(Box("Cardiomegaly", heart_c[0] - heart_w, heart_c[1] - heart_h, 2 * heart_w, 2 * heart_h))
        for side in (-1, 1):
            _ellipse(img, (cx + side * s * 0.16, s * 0.2), (s * 0.14, s * 0.012), 0.12, angle=side * 12)
        # Ribs: curved bands across the lungs.
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
        ribs = np.sin(2 * np.pi * (yy * 11 + 2.0 * (xx - cx / s) ** 2) + anatomy.uniform(0, 6.3)) > 0.55
        img += 0.05 * ribs.astype(np.float32) * lungs

        # The signatures, drawn straight into the chest, or into a layer added at `strength` of its contrast.
        layer = img if strength == 1.0 else np.zeros_like(img)
        for finding in findings:
            self._draw(finding, layer, lungs, rng, left, right, lung_w, lung_h, cx, boxes)
        if layer is not img:
            img += np.float32(strength) * layer
        return img, boxes, rng

    def _draw(self, finding: str, img: np.ndarray, lungs: np.ndarray, rng: np.random.Generator,
              left: tuple[float, float], right: tuple[float, float], lung_w: float, lung_h: float, cx: float,
              boxes: list[Box]) -> None:
        s = self.size
        side = left if rng.random() < 0.5 else right
        box = self._real_box(rng, finding)

        def in_lung(dx: float, dy: float) -> tuple[float, float]:
            return side[0] + dx * lung_w, side[1] + dy * lung_h

        def planted(bx: tuple[float, float, float, float]) -> None:
            boxes.append(Box(finding, *bx))

        if finding == "Atelectasis":  # plate-like band in a lower zone
            x, y, w, h = box or (*in_lung(-0.5, 0.3), lung_w, lung_h * 0.3)
            layer = np.zeros_like(img)
            _ellipse(layer, (x + w / 2, y + h / 2), (max(w / 2, s * 0.04), max(h / 4, s * 0.015)), 1.0,
                     angle=rng.uniform(-20, 20))
            img += 0.3 * _blur(layer, s * 0.004) * lungs
            planted((x, y, w, h))
        elif finding == "Consolidation":  # dense, homogeneous, ill-defined lobar opacity
            x, y = in_lung(rng.uniform(-0.4, 0.4), rng.uniform(-0.1, 0.5))
            r = s * rng.uniform(0.06, 0.09)
            layer = np.zeros_like(img)
            _ellipse(layer, (x, y), (r, r * 0.8), 1.0)
            img += 0.3 * np.clip(_blur(layer, r * 0.3), 0, 1) * lungs
            planted((x - r, y - r, 2 * r, 2 * r))
        elif finding == "Edema":  # bilateral perihilar haze and basal Kerley lines
            for hil in (left, right):
                layer = np.zeros_like(img)
                _ellipse(layer, (hil[0] + (cx - hil[0]) * 0.3, hil[1] + lung_h * 0.1), (lung_w * 0.7, lung_h * 0.45),
                         1.0)
                img += 0.13 * _blur(layer, s * 0.03) * lungs
                lines = np.zeros_like(img)
                for k in range(4):
                    y = hil[1] + lung_h * (0.45 + 0.08 * k)
                    x0 = hil[0] - lung_w if hil is left else hil[0] + lung_w * 0.6
                    cv2.line(lines, (int(x0), int(y)), (int(x0 + lung_w * 0.4), int(y)), 1.0, 1)
                img += 0.1 * lines * lungs
        elif finding == "Effusion":  # fluid filling a costophrenic angle, meniscus-shaped
            x, y, w, h = box or (*in_lung(-0.9, 0.4), lung_w * 1.8, lung_h * 0.6)
            level = min(y + h * 0.3, side[1] + lung_h * 0.75)
            yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
            meniscus = level - 0.25 * np.abs(xx - side[0]) * (lung_h / lung_w) * 0.3
            fluid = np.clip((yy - meniscus) / (s * 0.015), 0, 1)
            near = np.clip(1 - np.abs(xx - side[0]) / (lung_w * 1.2), 0, 1) > 0
            img += 0.28 * fluid * lungs * near
            planted((x, y, w, h))
        elif finding == "Emphysema":  # drawn in the anatomy: larger, darker lungs with sparse markings
            pass
        elif finding == "Fibrosis":  # reticular lines in the lower, peripheral lungs
            field = _noise_field(rng, s, s * 0.009)
            reticular = _blur((np.abs(field) < 0.25).astype(np.float32), s * 0.002)
            yy = np.mgrid[0:s, 0:s][0].astype(np.float32)
            lower = np.clip((yy - s * 0.42) / (s * 0.15), 0, 1)
            img += 0.22 * reticular * lungs * lower
        elif finding == "Hernia":  # hiatus hernia: round retrocardiac opacity with an air bubble
            x, y = cx + s * rng.normal(0, 0.01), s * 0.7
            r = s * rng.uniform(0.055, 0.075)
            _ellipse(img, (x, y), (r, r * 0.85), 0.3)
            _ellipse(img, (x, y - r * 0.4), (r * 0.5, r * 0.25), -0.15)
            planted((x - r, y - r, 2 * r, 2 * r))
        elif finding == "Infiltration":  # patchy, hazy opacities
            x, y, w, h = box or (*in_lung(-0.6, -0.3), lung_w * 1.2, lung_h * 0.8)
            patch = np.clip(_noise_field(rng, s, s * 0.015) - 0.3, 0, None)
            region = np.zeros_like(img)
            _ellipse(region, (x + w / 2, y + h / 2), (max(w / 2, s * 0.04), max(h / 2, s * 0.04)), 1.0)
            img += 0.16 * patch * _blur(region, s * 0.02) * lungs
            planted((x, y, w, h))
        elif finding == "Mass":  # well-defined round opacity, > 3 cm
            x, y, w, h = box or (*in_lung(0, 0), s * 0.12, s * 0.12)
            r = max(min(w, h) / 2, s * 0.03)
            _ellipse(img, (x + w / 2, y + h / 2), (r, r * rng.uniform(0.85, 1.0)), 0.28)
            planted((x, y, w, h))
        elif finding == "Nodule":  # small round opacity, < 3 cm
            x, y, w, h = box or (*in_lung(0, 0), s * 0.05, s * 0.05)
            r = max(min(w, h) / 2, s * 0.016)
            _ellipse(img, (x + w / 2, y + h / 2), (r, r), 0.3)
            planted((x, y, w, h))
        elif finding == "Pleural_Thickening":  # dense band along the lateral chest wall or apex
            outer = side[0] - lung_w * 0.95 if side is left else side[0] + lung_w * 0.95
            layer = np.zeros_like(img)
            _ellipse(layer, (outer, side[1] - lung_h * 0.2), (s * 0.018, lung_h * 0.55), 1.0)
            _ellipse(layer, (side[0], side[1] - lung_h * 0.93), (lung_w * 0.6, s * 0.015), 1.0)
            img += 0.28 * np.clip(_blur(layer, s * 0.003), 0, 1)
        elif finding == "Pneumonia":  # patchy air-space opacity with air bronchograms
            x, y, w, h = box or (*in_lung(-0.4, 0.1), lung_w * 0.8, lung_h * 0.5)
            region = np.zeros_like(img)
            _ellipse(region, (x + w / 2, y + h / 2), (max(w / 2.5, s * 0.03), max(h / 2.5, s * 0.03)), 1.0)
            patch = np.clip(_noise_field(rng, s, s * 0.008) + 0.8, 0, None)
            img += 0.09 * patch * _blur(region, s * 0.01) * lungs
            planted((x, y, w, h))
        elif finding == "Pneumothorax":  # apical/lateral air without markings, behind a thin pleural line
            x, y, w, h = box or (*in_lung(-0.8, -0.9), lung_w * 1.2, lung_h)
            region = np.zeros_like(img)
            _ellipse(region, (x + w / 2, y + h / 3), (max(w / 2, s * 0.04), max(h / 2.5, s * 0.05)), 1.0)
            region = _blur(region, s * 0.004) * lungs
            img -= 0.13 * region
            edge = cv2.Laplacian(region, cv2.CV_32F)
            img += 0.6 * np.clip(-edge, 0, None)
            planted((x, y, w, h))
        # CheXpert's own observations (site B), beyond those that share a signature with an NIH finding.
        elif finding == "Enlarged Cardiomediastinum":  # a widened upper mediastinum above the heart
            w, h, y = s * rng.uniform(0.07, 0.09), s * 0.12, s * 0.42
            layer = np.zeros_like(img)
            _ellipse(layer, (cx, y), (w, h), 1.0)
            img += 0.16 * _blur(layer, s * 0.01)
            planted((cx - w, y - h, 2 * w, 2 * h))
        elif finding == "Fracture":  # a healing rib fracture: a callus on a rib near the lateral chest wall
            x = side[0] + (-1 if side is left else 1) * lung_w * rng.uniform(0.6, 0.9)
            y = side[1] + lung_h * rng.uniform(-0.5, 0.3)
            r = s * rng.uniform(0.012, 0.018)
            _ellipse(img, (x, y), (r * 1.6, r), 0.3, angle=rng.uniform(-30, 30))
            planted((x - 2 * r, y - 2 * r, 4 * r, 4 * r))
        elif finding == "Support Devices":  # a tube or line: a thin radio-opaque curve from the neck into the chest
            t = np.linspace(0.0, 1.0, 16)
            xs = cx + s * (rng.uniform(-0.02, 0.02) + 0.04 * np.sin(t * rng.uniform(1.0, 3.0)))
            ys = s * (0.02 + t * rng.uniform(0.4, 0.55))
            layer = np.zeros_like(img)
            points = np.stack([xs, ys], axis=1).round().astype(np.int32)
            cv2.polylines(layer, [points], False, 1.0, thickness=max(1, round(s / 128)), lineType=cv2.LINE_AA)
            img += 0.35 * layer
            planted((float(xs.min()), float(ys.min()), float(np.ptp(xs)) + 1, float(np.ptp(ys)) + 1))


# ---------------------------------------------------------------------------------------------------------------
# Rendering in parallel, into archives

_renderer: PhantomRenderer | None = None


def _init_worker(make_renderer: Callable[[], PhantomRenderer], stage: int) -> None:
    global _renderer
    die_with(stage)
    cv2.setNumThreads(1)
    _renderer = make_renderer()


def _render(job: RenderJob) -> tuple[bytes, list[Box]]:
    assert _renderer is not None
    image, boxes = _renderer.render_job(job)
    return encode(image, _renderer.acquisition, job.image), boxes


def render_archives(jobs: Sequence[RenderJob], make_renderer: Callable[[], PhantomRenderer], archives_dir: Path,
                    workers: int, desc: str = "phantom") -> dict[str, list[Box]]:
    """Draw every job (sorted by image name) into NIH-style archives in `archives_dir` (which must not exist): NIH's
    12 archive sizes scaled to the number of images. `make_renderer` (picklable) makes each worker's renderer.
    Returns the boxes planted in each image, in the renderer's pixel coordinates."""
    jobs = sorted(jobs, key=lambda job: job.image)
    archives_dir.mkdir()
    boxes_of: dict[str, list[Box]] = {}
    pool = ProcessPoolExecutor(mp_context=WORKER_CONTEXT, max_workers=max(1, workers), initializer=_init_worker,
                               initargs=(make_renderer, os.getpid()))
    with pool, tqdm(total=len(jobs), desc=desc, unit="img") as bar:
        with sigint_ignored():  # map() submits every job, which starts the workers (and the forkserver) now
            results = pool.map(_render, jobs, chunksize=16)
        rendered = zip((job.image for job in jobs), results, strict=True)

        def members(count: int) -> Iterator[tuple[str, bytes]]:
            for _ in range(count):
                name, (png, boxes) = next(rendered)
                boxes_of[name] = boxes
                bar.update()
                yield name, png

        for archive, count in archive_file_names(len(jobs)).items():
            write_archive(archives_dir / archive, members(count), compresslevel=1)
    return boxes_of


def boxes_table(boxes_of: dict[str, list[Box]], size: int) -> pd.DataFrame:
    """The planted boxes as the contract's `boxes.csv` rows: fractions of the `size`-px image, by image name."""
    rows = [(name, b.finding, b.x / size, b.y / size, b.w / size, b.h / size)
            for name in sorted(boxes_of) for b in boxes_of[name]]
    return pd.DataFrame(rows, columns=["image", "finding", "x", "y", "w", "h"])

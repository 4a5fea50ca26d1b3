"""The phantoms: site A (NIH-shaped) and site B (CheXpert-shaped), deterministic, with a learnable signature per
finding, the same signatures at both sites under different acquisitions, and a planted subgroup gap (AP views'
signatures at reduced contrast) that plants nothing at its default."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrstudy.data import imageio
from cxrstudy.data.acquisition import SITE_A, SITE_B, marker_box
from cxrstudy.data.dataset import check_table, read_boxes, read_info, read_table, write
from cxrstudy.data.imageio import JPEG_SIGNATURE, PNG_SIGNATURE
from cxrstudy.data.nihtable import FINDINGS, label_matrix
from cxrstudy.data.phantom import PhantomRenderer, load_bboxes, take_patients
from cxrstudy.data.preprocess import apply_clahe
from cxrstudy.data.sources import chexpert_phantom, phantom
from cxrstudy.data.sources.chexpert import OBSERVATIONS
from cxrstudy.data.sources.chexpert_phantom import SHARED, SIGNATURES, UNCERTAIN_DRAWN
from cxrstudy.labels import label_map
from cxrstudy.params import parse_params
from tests.conftest import project_params, tiny_params

CHEXPERT_ONLY = ("Enlarged Cardiomediastinum", "Fracture", "Support Devices")  # signatures of their own


def members(raw: Path) -> dict[str, bytes]:
    return {name: data for archive in imageio.archive_paths(raw) for name, data in imageio.iter_images(archive)}


def ingest(adapter: object, tmp_path: Path, name: str, **section: object) -> Path:
    """Run a phantom adapter with the tiny parameters and `section` laid over its own section; returns the folder."""
    key = "phantom" if adapter is phantom else "chexpert_phantom"
    params = tiny_params(ingest={key: section})
    out = tmp_path / name
    out.mkdir()
    write(adapter.ingest(params, out, workers=1), out)  # type: ignore[attr-defined]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Site A and the renderer


def test_the_committed_sample_keeps_patients_whole_and_covers_every_finding() -> None:
    sample = phantom.load_sample()
    counts = label_matrix(sample).sum(axis=0)
    assert all(c >= 40 for c in counts), dict(zip(FINDINGS, counts, strict=True))
    # Patients appear as one contiguous block: kept with all their follow-ups.
    blocks = (sample["patient"] != sample["patient"].shift()).sum()
    assert blocks == sample["patient"].nunique()


def test_take_patients_cuts_between_patients() -> None:
    sample = phantom.load_sample()
    part = take_patients(sample, 100)
    assert len(part) >= 100
    last = part["patient"].iloc[-1]
    assert (sample["patient"] == last).sum() == (part["patient"] == last).sum()


def test_rendering_is_deterministic_and_independent_of_order() -> None:
    renderer = PhantomRenderer(128, 7, load_bboxes())
    a, _ = renderer.render(5, 1, ["Mass"])
    renderer.render(6, 0, ["Effusion"])
    b, _ = renderer.render(5, 1, ["Mass"])
    assert a.dtype == np.uint8 and a.shape == (128, 128)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("finding", [*FINDINGS, *CHEXPERT_ONLY])
def test_every_finding_changes_the_image(finding: str) -> None:
    renderer = PhantomRenderer(128, 7, load_bboxes())
    plain = renderer.render(9, 0, [])[0].astype(np.int16)
    with_finding = renderer.render(9, 0, [finding])[0].astype(np.int16)
    # The same patient and follow-up share the same noise up to the finding's own random draws.
    assert np.abs(with_finding - plain).mean() > 0.2


def test_boxed_findings_take_their_box_from_nihs_bbox_list() -> None:
    renderer = PhantomRenderer(256, 7, load_bboxes())
    _, boxes = renderer.render(11, 0, ["Nodule", "Mass"])
    assert {b.finding for b in boxes} == {"Nodule", "Mass"}
    for b in boxes:
        assert 0 <= b.x < 256 and 0 <= b.y < 256 and b.w > 0 and b.h > 0


def test_the_exposure_is_poor_so_that_clahe_matters() -> None:
    renderer = PhantomRenderer(256, 7, load_bboxes())
    image, _ = renderer.render(3, 0, [])
    spread = np.percentile(image, 99) - np.percentile(image, 1)
    enhanced = apply_clahe(image, 2.0, 8)
    assert spread < 140  # a narrow grey range
    assert np.percentile(enhanced, 99) - np.percentile(enhanced, 1) > spread


@pytest.fixture(scope="module")
def site_a(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Site A's first 103 images at 64 px (20 of them AP views with a finding): nothing planted, and the gap planted
    at half contrast."""
    root = tmp_path_factory.mktemp("site_a")
    return (ingest(phantom, root, "plain", n_images=100, image_size=64),
            ingest(phantom, root, "planted", n_images=100, image_size=64, ap_signature_contrast=0.5))


def test_site_a_goes_through_nih_style_archives_as_pngs(site_a: tuple[Path, Path]) -> None:
    raw = site_a[0]
    archives = imageio.archive_paths(raw)
    assert [a.name for a in archives] == [f"images_{i:03d}.tar.gz" for i in range(1, len(archives) + 1)]
    images = members(raw)
    assert sorted(images) == sorted(read_table(raw)["image"])
    assert all(data.startswith(PNG_SIGNATURE) for data in images.values())


# ---------------------------------------------------------------------------------------------------------------
# The planted subgroup gap (ingest.phantom.ap_signature_contrast)

# SHA-256 of PNG members that the version before the planted gap and site B (commit 2790f41) wrote into its archives
# with `ingest.phantom` n_images 60, image_size 64, seed 2017 (an image depends on its patient, follow-up and size
# only, not on n_images). With nothing planted, today's must be the same bytes.
EARLIER_VERSION = {
    "00004269_005.png": "e2816348d337d3b98c0207a9ac5db083dc09907dba595b367fbdaca634417939",  # AP, Nodule
    "00011805_002.png": "a88ef284df8cb3d96d0db8e69dec1b29e8846ec45622839d31c01999f3ba51c4",  # PA, No Finding
    "00012053_000.png": "68819f4b4d93a03234ec1ce72afc9a165c705754e18c4f3545150d557cdfe7f5",  # PA, Atelectasis|Fibrosis
    "00012053_001.png": "1125c49f6f31079da0d1a19372a7e5f16aa5a2ce41e115f7292cb37eb1cbbfcd",  # PA, Hernia
    "00012053_003.png": "45747c6296ba6cb3b76eff1da2cb1b9633c72f477b35ed8bc449f8686996aec7",  # AP, Atelectasis
}


def test_nothing_planted_gives_the_images_of_the_earlier_version(site_a: tuple[Path, Path]) -> None:
    images = members(site_a[0])
    assert {name: hashlib.sha256(images[name]).hexdigest() for name in EARLIER_VERSION} == EARLIER_VERSION


def scene(contrast: float, view: str, findings: list[str], patient: int = 21) -> np.ndarray:
    renderer = PhantomRenderer(128, 7, load_bboxes(), ap_signature_contrast=contrast)
    return renderer.scene(patient, 0, findings, view)[0]


@pytest.mark.parametrize("finding", ["Atelectasis", "Cardiomegaly", "Effusion", "Mass", "Pneumothorax", "Edema"])
def test_ap_signatures_are_drawn_at_the_contrast_asked(finding: str) -> None:
    normal = scene(1.0, "AP", [])
    full = scene(1.0, "AP", [finding]) - normal  # the signature: what the finding adds to the chest
    faint = scene(0.4, "AP", [finding]) - normal
    assert np.abs(full).max() > 0.02  # a signature there is
    np.testing.assert_allclose(faint, 0.4 * full, atol=1e-5)


def test_emphysema_departs_less_from_the_normal_chest_on_ap_views() -> None:
    normal = scene(1.0, "AP", [])
    full = np.abs(scene(1.0, "AP", ["Emphysema"]) - normal).sum()
    faint = np.abs(scene(0.4, "AP", ["Emphysema"]) - normal).sum()
    assert 0.25 * full < faint < 0.6 * full


@pytest.mark.parametrize("view", ["PA", ""])
def test_other_views_are_untouched_by_the_planted_gap(view: str) -> None:
    findings = ["Cardiomegaly", "Effusion", "Emphysema", "Nodule"]
    planted = PhantomRenderer(128, 7, load_bboxes(), ap_signature_contrast=0.3).render(21, 0, findings, view)[0]
    assert np.array_equal(planted, PhantomRenderer(128, 7, load_bboxes()).render(21, 0, findings, view)[0])


def test_the_planted_gap_reaches_site_a_ap_images_with_findings_only(site_a: tuple[Path, Path]) -> None:
    plain, planted = site_a
    table = read_table(plain)
    a, b = members(plain), members(planted)
    has_finding = (table[list(read_info(plain).labels)] == "1").any(axis=1)
    changed = {name for name in a if a[name] != b[name]}
    ap_with_finding = set(table["image"][(table["view"] == "AP") & has_finding])
    assert len(ap_with_finding) >= 20 and changed == ap_with_finding


# ---------------------------------------------------------------------------------------------------------------
# Site B


def test_the_committed_chexpert_sample_holds_every_shared_finding_in_the_default_run() -> None:
    sample = chexpert_phantom.load_sample()
    assert 1_500 <= len(sample) <= 3_000
    blocks = (sample["patient"] != sample["patient"].shift()).sum()
    assert blocks == sample["patient"].nunique()  # whole patients, each in one block
    cfg = parse_params(project_params()).ingest.chexpert_phantom  # the project's defaults
    default = take_patients(sample[sample["frontal"].astype(bool)].reset_index(drop=True), cfg.n_images)
    for name in SHARED:
        assert default["patient"][default[name] == "1"].nunique() >= 40, name


def test_select_sample_takes_whole_patients_rare_findings_first() -> None:
    rows = chexpert_phantom.load_sample()
    chosen = chexpert_phantom.select_sample(rows, 300, seed=1, min_positives=10)
    assert len(chosen) >= 300 and len(chosen) - 300 < chexpert_phantom.MAX_IMAGES_PER_PATIENT
    assert chosen.groupby("patient").size().to_dict() == rows[rows["patient"].isin(chosen["patient"])].groupby(
        "patient").size().to_dict()
    for name in SHARED:
        assert chosen["patient"][(chosen[name] == "1") & chosen["frontal"].astype(bool)].nunique() >= 10, name
    assert chosen.equals(chexpert_phantom.select_sample(rows, 300, seed=1, min_positives=10))


def test_shared_findings_draw_site_as_signatures() -> None:
    pairs = {row["chexpert"]: row["nih"] for row in label_map()}
    assert {name: SIGNATURES[name] for name in SHARED} == pairs
    assert SIGNATURES["Pleural Effusion"] == "Effusion"
    a = PhantomRenderer(128, 7, load_bboxes(), SITE_A)
    b = PhantomRenderer(128, 7, load_bboxes(), SITE_B)
    for name in SHARED:  # the drawn chest is the same; only the acquisition differs
        assert np.array_equal(a.scene(3, 0, [pairs[name]])[0], b.scene(3, 0, [SIGNATURES[name]])[0])
    assert not np.array_equal(a.render(3, 0, ["Effusion"])[0], b.render(3, 0, ["Effusion"])[0])


def corner(image: np.ndarray) -> np.ndarray:
    rows, cols = marker_box(image.shape[0])
    return image[rows, cols]


def test_site_b_is_acquired_differently() -> None:
    size, patients = 256, range(30)
    a = [PhantomRenderer(size, 7, load_bboxes(), SITE_A).render(p, 0, [])[0].astype(np.float32) for p in patients]
    b = [PhantomRenderer(size, 7, load_bboxes(), SITE_B).render(p, 0, [])[0].astype(np.float32) for p in patients]

    def noise(img: np.ndarray) -> float:  # the high-pass residual over soft tissue below the lungs, beside the spine
        return float((img - cv2.GaussianBlur(img, (0, 0), 1.5))[205:230, 64:108].std())

    # Exposure: site B is darker; the gap in mean grey level is larger than the spread between images of one site.
    mean_a, mean_b = np.array([i.mean() for i in a]), np.array([i.mean() for i in b])
    assert mean_a.mean() - mean_b.mean() > max(mean_a.std(), mean_b.std())
    # Noise: site B's is higher than site A's in every image, and on average about twice it.
    assert min(noise(i) for i in b) > max(noise(i) for i in a)
    assert np.mean([noise(i) for i in b]) > 1.5 * np.mean([noise(i) for i in a])
    # The marker: burned in at full white in the corner of every site B image, never in site A's.
    assert all((corner(i) == 255).sum() >= 20 for i in b) and all((corner(i) == 255).sum() == 0 for i in a)


@pytest.fixture(scope="module")
def site_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Site B's first 40 frontal images at 64 px."""
    return ingest(chexpert_phantom, tmp_path_factory.mktemp("site_b"), "b", n_images=40, image_size=64)


def test_site_b_table_and_images_are_chexperts(site_b: Path) -> None:
    raw = site_b
    table, info = read_table(raw), read_info(raw)
    check_table(table, OBSERVATIONS, "site B")
    assert (info.source, info.label_space, info.labels) == ("chexpert_phantom", "chexpert", OBSERVATIONS)
    assert set(table["official_split"]) == {"test"} and set(table["view"]) <= {"AP", "PA"}  # views: frontal
    assert table["image"].str.fullmatch(r"patient\d{5}_study\d+_view\d+_frontal\.jpg").all()
    images = members(raw)
    assert sorted(images) == sorted(table["image"])
    assert all(data.startswith(JPEG_SIGNATURE) for data in images.values())
    assert set(read_boxes(raw)["finding"]) <= set(OBSERVATIONS)


def test_site_b_has_more_ap_views_and_another_detector() -> None:
    site_a = phantom.load_sample()
    site_b = chexpert_phantom.load_sample()
    site_b = site_b[site_b["frontal"].astype(bool)]
    share_a = (site_a["view"] == "AP").mean()
    share_b = (site_b["view"] == "AP").mean()
    assert share_b > share_a + 0.3, (share_a, share_b)
    defaults = parse_params(project_params()).ingest
    assert defaults.chexpert_phantom.image_size != defaults.phantom.image_size


def test_site_b_is_deterministic(tmp_path: Path, site_b: Path) -> None:
    first, second = site_b, ingest(chexpert_phantom, tmp_path, "again", n_images=40, image_size=64)
    for archive in imageio.archive_paths(first):
        assert archive.read_bytes() == (second / "archives" / archive.name).read_bytes()
    assert (first / "images.csv").read_bytes() == (second / "images.csv").read_bytes()


def test_uncertain_labels_draw_their_finding_half_the_time() -> None:
    rows = chexpert_phantom.load_sample()
    jobs = chexpert_phantom.jobs_of(rows, seed=2019)
    cells = rows[list(OBSERVATIONS)].to_numpy(dtype=str)
    drawn = np.array([[SIGNATURES.get(n) in job.findings for n in OBSERVATIONS] for job in jobs])
    with_signature = np.array([n in SIGNATURES for n in OBSERVATIONS])
    assert drawn[(cells == "1") & with_signature].all()
    assert not drawn[(cells == "0") | (cells == "")].any()
    uncertain = (cells == "-1") & with_signature
    share = drawn[uncertain].mean()
    n = int(uncertain.sum())
    assert abs(share - UNCERTAIN_DRAWN) < 4 * np.sqrt(UNCERTAIN_DRAWN * (1 - UNCERTAIN_DRAWN) / n), (share, n)
    # Decided once per study: every view of a study draws the same.
    per_study = pd.DataFrame(drawn[:, with_signature]).groupby(rows["study"].to_numpy()).nunique()
    same_cells = pd.DataFrame(cells[:, with_signature]).groupby(rows["study"].to_numpy()).nunique()
    assert (per_study[same_cells == 1] <= 1).all().all()

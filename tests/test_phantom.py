"""The embedded phantom: NIH-shaped, deterministic, with a learnable signature per finding; written as NIH's archives
are."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrstudy.data import imageio
from cxrstudy.data.phantom import PhantomRenderer, load_bboxes, load_sample, take_patients
from cxrstudy.data.preprocess import apply_clahe
from cxrstudy.labels import FINDINGS, label_matrix, read_data_entry
from tests.raw_data import archive_of, raw_names


def test_the_committed_sample_keeps_patients_whole_and_covers_every_finding() -> None:
    sample = load_sample()
    counts = label_matrix(sample).sum(axis=0)
    assert all(c >= 40 for c in counts), dict(zip(FINDINGS, counts, strict=True))
    # Patients appear as one contiguous block: kept with all their follow-ups.
    blocks = (sample["patient"] != sample["patient"].shift()).sum()
    assert blocks == sample["patient"].nunique()


def test_take_patients_cuts_between_patients() -> None:
    sample = load_sample()
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


def test_every_finding_changes_the_image() -> None:
    renderer = PhantomRenderer(128, 7, load_bboxes())
    plain = renderer.render(9, 0, [])[0].astype(np.int16)
    for finding in FINDINGS:
        with_finding = renderer.render(9, 0, [finding])[0].astype(np.int16)
        # The same patient and follow-up share the same noise up to the finding's own random draws.
        assert np.abs(with_finding - plain).mean() > 0.2, finding


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


def test_the_phantom_goes_through_nih_style_archives(tiny_data: Path) -> None:
    raw = tiny_data / "data/raw"
    archives = imageio.archive_paths(raw)
    assert [a.name for a in archives] == [f"images_{i:03d}.tar.gz" for i in range(1, 13)]
    assert not (raw / "images").exists()
    names = read_data_entry(raw / "Data_Entry_2017.csv")["image"]
    assert raw_names(raw) == sorted(names)
    assert archive_of(raw, min(names)) == archives[0] and archive_of(raw, max(names)) == archives[-1]

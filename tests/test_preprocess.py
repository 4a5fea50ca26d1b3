"""Preprocess: CLAHE with the configured settings, resize, one uint8 array; bad images named, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrstudy import preprocess
from cxrstudy.errors import InputError
from cxrstudy.preprocess import apply_clahe, load_processed, process_image
from tests.conftest import tiny_params


def test_process_image_applies_opencv_clahe_then_resizes() -> None:
    rng = np.random.default_rng(0)
    image = (100 + 20 * rng.random((96, 96))).astype(np.uint8)
    cfg = tiny_params(preprocess={"clip_limit": 3.0, "tile_grid": 4, "image_size": 32}).preprocess
    expected = cv2.resize(cv2.createCLAHE(3.0, (4, 4)).apply(image), (32, 32), interpolation=cv2.INTER_AREA)
    assert np.array_equal(process_image(image, cfg), expected)


def test_clahe_can_be_switched_off() -> None:
    image = np.full((32, 32), 90, np.uint8)
    cfg = tiny_params(preprocess={"clahe": False}).preprocess
    assert np.array_equal(process_image(image, cfg), image)


def test_clahe_widens_a_narrow_grey_range() -> None:
    image = np.tile(np.linspace(100, 130, 64, dtype=np.uint8), (64, 1))
    out = apply_clahe(image, 2.0, 8)
    assert int(out.max()) - int(out.min()) > 30


def test_stage_output_matches_the_label_table(tiny_data: Path) -> None:
    images, names = load_processed(tiny_data / "data/processed")
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32)
    assert len(names) == len(images)
    meta = json.loads((tiny_data / "data/processed/meta.json").read_text())
    assert meta["clahe"] is True and meta["images"] == len(names)


def test_output_is_identical_whatever_the_number_of_workers(tiny_data: Path, tmp_path: Path) -> None:
    raw = tiny_data / "data/raw"
    preprocess.run(tiny_params(preprocess={"workers": 2}), raw, tmp_path / "two")
    one, _ = load_processed(tiny_data / "data/processed")
    two, _ = load_processed(tmp_path / "two")
    assert np.array_equal(one, two)


def test_a_missing_raw_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"raw data folder not found; run the ingest stage first"):
        preprocess.run(tiny_params(), tmp_path / "nope", tmp_path / "out")


def test_bad_images_are_all_named_and_the_previous_output_survives(tiny_data: Path, tmp_path: Path) -> None:
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(tiny_data / "data/raw", raw)
    out = tmp_path / "processed"
    preprocess.run(tiny_params(), raw, out)
    before = (out / "images.npy").read_bytes()
    victims = sorted((raw / "images").iterdir())[:2]
    victims[0].write_bytes(b"")
    victims[1].write_bytes(victims[1].read_bytes()[:200])
    with pytest.raises(InputError) as err:
        preprocess.run(tiny_params(), raw, out)
    message = str(err.value)
    assert "2 unusable image(s)" in message
    assert victims[0].name in message and "empty file" in message
    assert victims[1].name in message and "truncated" in message
    assert (out / "images.npy").read_bytes() == before
    assert not any(p.name.startswith(".processed.tmp") for p in tmp_path.iterdir())

"""Preprocess: every PNG streamed out of the raw archives and decoded once; CLAHE with the configured settings,
resize, one uint8 array; every bad image named in one run (or left out with on_bad_image: skip); nothing
half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrstudy.data import imageio, ingest, preprocess, split
from cxrstudy.data.imageio import ARCHIVES_DIR, decode_gray, write_archive
from cxrstudy.data.preprocess import apply_clahe, load_processed, process_image
from cxrstudy.errors import InputError
from cxrstudy.labels import read_data_entry
from tests.conftest import tiny_params
from tests.raw_data import raw_bytes, raw_names, rewrite_member


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


def copy_raw(tiny_data: Path, tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(tiny_data / "data/raw", raw)
    return raw


def test_bad_images_are_all_named_and_the_previous_output_survives(tiny_data: Path, tmp_path: Path) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    out = tmp_path / "processed"
    preprocess.run(tiny_params(), raw, out)
    before = (out / "images.npy").read_bytes()
    victims = raw_names(raw)[:4]
    rewrite_member(raw, victims[0], lambda data: b"")
    rewrite_member(raw, victims[1], lambda data: data[:200])
    rewrite_member(raw, victims[2], None)
    rewrite_member(raw, victims[3], lambda data: b"GIF89a" + data[6:])
    with pytest.raises(InputError) as err:
        preprocess.run(tiny_params(), raw, out)
    message = str(err.value)
    assert "4 unusable image(s)" in message
    assert f"{victims[0]}: empty file" in message
    assert f"{victims[1]}: truncated" in message
    assert f"{victims[2]}: missing image file" in message
    assert f"{victims[3]}: not a PNG" in message
    listing = (tmp_path / preprocess.BAD_IMAGES_FILE).read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in listing) == sorted(victims)
    assert (out / "images.npy").read_bytes() == before
    assert not any(p.name.startswith(".processed.tmp") for p in tmp_path.iterdir())


def test_skip_leaves_bad_images_out_and_split_follows(tiny_data: Path, tmp_path: Path) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    victims = raw_names(raw)[3:5]
    rewrite_member(raw, victims[0], lambda data: data[: len(data) // 2])
    rewrite_member(raw, victims[1], None)
    params = tiny_params(preprocess={"on_bad_image": "skip"})
    out = tmp_path / "processed"
    preprocess.run(params, raw, out)
    images, names = load_processed(out)
    full, full_names = load_processed(tiny_data / "data/processed")
    assert names == [n for n in full_names if n not in victims]
    assert np.array_equal(images, full[[full_names.index(n) for n in names]])  # the others untouched, in order
    listed = dict(line.split("\t") for line in (out / preprocess.BAD_IMAGES_FILE).read_text().splitlines())
    assert set(listed) == set(victims) and "truncated" in listed[victims[0]] and "missing" in listed[victims[1]]
    split.run(params, raw, tmp_path / "splits", out)
    parts = [(tmp_path / "splits" / f"{p}.txt").read_text().split() for p in split.PARTS]
    assert sorted(n for part in parts for n in part) == sorted(names)


def test_skip_still_stops_when_every_image_is_bad(tiny_data: Path, tmp_path: Path) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    for archive in imageio.archive_paths(raw):
        archive.unlink()
        write_archive(archive, [])
    with pytest.raises(InputError, match=r"unusable image\(s\) of (\d+) .*\n.*missing image file"):
        preprocess.run(tiny_params(preprocess={"on_bad_image": "skip"}), raw, tmp_path / "processed")


def test_an_image_in_two_archives_is_named(tiny_data: Path, tmp_path: Path) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    name = raw_names(raw)[0]
    write_archive(raw / ARCHIVES_DIR / "images_013.tar.gz", [(name, raw_bytes(raw, name))])
    with pytest.raises(InputError, match=rf"{name}: in more than one archive member \(images_001.tar.gz, "
                                         r"images_013.tar.gz\)"):
        preprocess.run(tiny_params(preprocess={"workers": 0}), raw, tmp_path / "processed")


def test_a_broken_archive_is_named_whatever_on_bad_image_says(tiny_data: Path, tmp_path: Path) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    archive = imageio.archive_paths(raw)[4]
    archive.write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(InputError, match=rf"1 archive\(s\) cannot be read to their end:\n  {archive}: not a "
                                         r"readable tar\(.gz\) archive"):
        preprocess.run(tiny_params(preprocess={"on_bad_image": "skip"}), raw, tmp_path / "processed")


def test_pngs_not_in_the_label_table_are_counted_not_used(tiny_data: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    write_archive(raw / ARCHIVES_DIR / "images_013.tar.gz", [("99999999_000.png", raw_bytes(raw, raw_names(raw)[0]))])
    preprocess.run(tiny_params(), raw, tmp_path / "processed")
    assert "1 PNG(s) in the archives are not in Data_Entry_2017.csv" in capsys.readouterr().out
    assert load_processed(tmp_path / "processed")[1] == load_processed(tiny_data / "data/processed")[1]


def test_odd_but_valid_images_are_accepted(tiny_data: Path, tmp_path: Path) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    names = raw_names(raw)[:3]
    gray = {name: decode_gray(raw_bytes(raw, name)) for name in names}
    odd = {names[0]: np.dstack([gray[names[0]]] * 3 + [np.full_like(gray[names[0]], 255)]),  # RGBA
           names[1]: gray[names[1]].astype(np.uint16) * 257,  # 16-bit
           names[2]: cv2.resize(gray[names[2]], (192, 192))}  # another size
    for name, image in odd.items():
        rewrite_member(raw, name, lambda data, image=image: cv2.imencode(".png", image)[1].tobytes())
    preprocess.run(tiny_params(), raw, tmp_path / "processed")
    images, index = load_processed(tmp_path / "processed")
    reference, _ = load_processed(tiny_data / "data/processed")
    for name in names[:2]:  # the same pixels once reduced to one 8-bit channel
        assert np.array_equal(images[index.index(name)], reference[index.index(name)])


def test_data_stages_decode_each_image_exactly_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[str] = []
    real = imageio.decode_gray

    def counting(data: bytes, name: str = "image") -> np.ndarray:
        decoded.append(name)
        return real(data, name)

    monkeypatch.setattr(preprocess, "decode_gray", counting)  # workers: 0 keeps every decode in this process
    monkeypatch.setattr(imageio, "decode_gray", counting)
    params = tiny_params(preprocess={"workers": 0})
    ingest.run(params, tmp_path / "raw", workers=1)
    assert decoded == []  # ingest renders and writes; it decodes nothing
    preprocess.run(params, tmp_path / "raw", tmp_path / "processed")
    split.run(params, tmp_path / "raw", tmp_path / "splits", tmp_path / "processed")
    names = read_data_entry(tmp_path / "raw" / "Data_Entry_2017.csv")["image"]
    assert sorted(decoded) == sorted(names)

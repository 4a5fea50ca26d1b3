"""Preprocess: every image streamed out of the raw archives and decoded once; CLAHE with the configured settings,
resize, one uint8 shard per archive and an index; every bad image named in one run (or left out with on_bad_image:
skip); nothing half-written.

Nothing in an archive is trusted: each archive must match the MD5 that ingest recorded, a member over
`preprocess.max_image_mb` is not read, an image whose header declares more than `preprocess.max_image_pixels` is not
decoded, a worker killed by the system is named with its archive, and a killed stage leaves no worker behind. A
changed archive re-processes only its own shard; the others are kept, hard-linked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import tarfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import psutil
import pytest

from cxrstudy.data import imageio, ingest, preprocess, split
from cxrstudy.data.dataset import MD5_FILE, TABLE_FILE
from cxrstudy.data.imageio import decode_gray
from cxrstudy.data.preprocess import apply_clahe, process_image
from cxrstudy.data.shards import INDEX_FILE, META_FILE, SHARDS_DIR, Processed, load_processed, shard_name
from cxrstudy.errors import InputError
from tests.conftest import cli, snapshot, tiny_params, tiny_raw, write_params
from tests.raw_data import add_archive, archive_of, raw_bytes, raw_names, record_md5, rewrite_member


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


def images_of(processed: Processed) -> dict[str, np.ndarray]:
    """Every processed image, by name."""
    return {name: np.array(processed[i]) for i, name in enumerate(processed.names)}


def table_names(raw: Path) -> list[str]:
    return pd.read_csv(raw / TABLE_FILE, dtype=str, keep_default_na=False)["image"].tolist()


def test_stage_output_is_one_shard_per_archive_indexed_in_the_label_tables_order(tiny_data: Path) -> None:
    raw, out = tiny_data / "data/raw", tiny_data / "data/processed"
    processed = load_processed(out)
    assert processed.names == table_names(raw)
    assert processed.shape == (len(processed.names), 32, 32)
    archives = imageio.archive_paths(raw)
    assert sorted(p.name for p in (out / SHARDS_DIR).glob("*.npy")) == [f"{shard_name(a)}.npy" for a in archives]
    index = pd.read_csv(out / INDEX_FILE, dtype={"shard": str})
    for archive in archives:  # each shard holds its archive's images, in archive order
        rows = index[index["shard"] == shard_name(archive)].sort_values("row")
        assert rows["image"].tolist() == [name for name, _ in imageio.iter_images(archive)]
        record = json.loads((out / SHARDS_DIR / f"{shard_name(archive)}.json").read_text())
        assert record["archive"] == archive.name and record["images"] == rows["image"].tolist()
        shard = np.load(out / SHARDS_DIR / f"{shard_name(archive)}.npy", mmap_mode="r")
        assert shard.dtype == np.uint8 and shard.shape == (len(rows), 32, 32)
    meta = json.loads((out / META_FILE).read_text())
    assert meta["clahe"] is True and meta["images"] == len(processed) and meta["shards"] == len(archives)
    first = processed.names[0]  # an image is the CLAHE of its raw pixels, resized
    expected = process_image(decode_gray(raw_bytes(raw, first)), tiny_params().preprocess)
    assert np.array_equal(processed[0], expected)


def test_output_is_identical_whatever_the_number_of_workers(tiny_data: Path, tmp_path: Path) -> None:
    raw = tiny_data / "data/raw"
    preprocess.run(tiny_params(preprocess={"workers": 2}), raw, tmp_path / "two")
    preprocess.run(tiny_params(preprocess={"workers": 0}), raw, tmp_path / "zero")
    one = snapshot(tiny_data / "data/processed")
    assert snapshot(tmp_path / "two") == one and snapshot(tmp_path / "zero") == one


def test_a_missing_raw_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"raw data folder not found; run the ingest stage first"):
        preprocess.run(tiny_params(), tmp_path / "nope", tmp_path / "out")


def test_no_external_site_gives_an_empty_output_saying_so(tmp_path: Path) -> None:
    params = tiny_params()  # ingest.external: none
    ingest.run(params, "external", tmp_path / "external/raw")
    assert json.loads((tmp_path / "external/raw/dataset.json").read_text()) == {"source": "none"}
    preprocess.run(params, tmp_path / "external/raw", tmp_path / "external/processed")
    assert sorted(p.name for p in (tmp_path / "external/processed").iterdir()) == [META_FILE]
    assert json.loads((tmp_path / "external/processed" / META_FILE).read_text()) == {"images": 0, "source": "none"}


def copy_raw(tiny_data: Path, tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(tiny_data / "data/raw", raw)
    return raw


def test_bad_images_are_all_named_and_the_previous_output_survives(tiny_data: Path, tmp_path: Path) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    out = tmp_path / "processed"
    preprocess.run(tiny_params(), raw, out)
    before = snapshot(out)
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
    assert f"{victims[3]}: neither a PNG nor a JPEG" in message
    listing = (tmp_path / preprocess.BAD_IMAGES_FILE).read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in listing) == sorted(victims)
    assert snapshot(out) == before
    assert not any(p.name.startswith(".processed.tmp") for p in tmp_path.iterdir())


def test_skip_leaves_bad_images_out_and_split_follows(tiny_data: Path, tmp_path: Path) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    victims = raw_names(raw)[3:5]
    rewrite_member(raw, victims[0], lambda data: data[: len(data) // 2])
    rewrite_member(raw, victims[1], None)
    params = tiny_params(preprocess={"on_bad_image": "skip"})
    out = tmp_path / "processed"
    preprocess.run(params, raw, out)
    processed, full = load_processed(out), load_processed(tiny_data / "data/processed")
    assert processed.names == [n for n in full.names if n not in victims]
    reference = images_of(full)
    assert all(np.array_equal(image, reference[name]) for name, image in images_of(processed).items())
    listed = dict(line.split("\t") for line in (out / preprocess.BAD_IMAGES_FILE).read_text().splitlines())
    assert set(listed) == set(victims) and "truncated" in listed[victims[0]] and "missing" in listed[victims[1]]
    assert json.loads((out / META_FILE).read_text())["left_out"] == 2
    split.run(params, raw, tmp_path / "splits", out)
    parts = [(tmp_path / "splits" / f"{p}.txt").read_text().split() for p in split.PARTS]
    assert sorted(n for part in parts for n in part) == sorted(processed.names)


def test_skip_still_stops_when_every_image_is_bad(tiny_data: Path, tmp_path: Path) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    for archive in imageio.archive_paths(raw):
        archive.unlink()
        imageio.write_archive(archive, [])
        record_md5(raw, archive)
    with pytest.raises(InputError, match=r"unusable image\(s\) of (\d+) .*\n.*missing image file"):
        preprocess.run(tiny_params(preprocess={"on_bad_image": "skip"}), raw, tmp_path / "processed")


def test_an_image_in_two_archives_or_two_members_is_named(tiny_data: Path, tmp_path: Path) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    first, second = raw_names(raw)[:2]
    home = archive_of(raw, first)
    add_archive(raw, "images_013.tar.gz", [(first, raw_bytes(raw, first))])
    with pytest.raises(InputError, match=rf"{first}: in more than one archive \({shard_name(home)}(\.tar\.gz)?, "
                                         r"images_013\.tar\.gz\)"):
        preprocess.run(tiny_params(preprocess={"workers": 0}), raw, tmp_path / "processed")
    (raw / "archives/images_013.tar.gz").unlink()
    data = raw_bytes(raw, second)
    rewrite_member(raw, second, None)
    add_archive(raw, "images_013.tar.gz", [(second, data), (second, data)])
    with pytest.raises(InputError, match=rf"{second}: in two members of images_013\.tar\.gz"):
        preprocess.run(tiny_params(preprocess={"workers": 0}), raw, tmp_path / "processed")


def test_a_broken_archive_is_named_whatever_on_bad_image_says(tiny_data: Path, tmp_path: Path) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    archive = imageio.archive_paths(raw)[4]
    archive.write_bytes(archive.read_bytes()[:-100])
    record_md5(raw, archive)  # the source held it so: unreadable, not changed since ingest
    with pytest.raises(InputError, match=rf"1 archive\(s\) cannot be used:\n  {archive}: not a readable "
                                         r"tar\(.gz\) archive"):
        preprocess.run(tiny_params(preprocess={"on_bad_image": "skip"}), raw, tmp_path / "processed")


def test_images_not_in_the_label_table_are_counted_not_used(tiny_data: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    add_archive(raw, "images_013.tar.gz", [("99999999_000.png", raw_bytes(raw, raw_names(raw)[0]))])
    preprocess.run(tiny_params(), raw, tmp_path / "processed")
    assert "1 image(s) in the archives are not in images.csv and were not used" in capsys.readouterr().out
    assert load_processed(tmp_path / "processed").names == load_processed(tiny_data / "data/processed").names


def test_odd_but_valid_images_are_accepted(tiny_data: Path, tmp_path: Path) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    names = raw_names(raw)[:4]
    gray = {name: decode_gray(raw_bytes(raw, name)) for name in names}
    odd = {names[0]: cv2.imencode(".png", np.dstack([gray[names[0]]] * 3 + [np.full_like(gray[names[0]], 255)]))[1],
           names[1]: cv2.imencode(".png", gray[names[1]].astype(np.uint16) * 257)[1],  # 16-bit
           names[2]: cv2.imencode(".png", cv2.resize(gray[names[2]], (192, 192)))[1],  # another size
           names[3]: cv2.imencode(".jpg", gray[names[3]], [cv2.IMWRITE_JPEG_QUALITY, 100])[1]}  # a JPEG
    for name, data in odd.items():
        rewrite_member(raw, name, lambda _, data=data: data.tobytes())
    preprocess.run(tiny_params(), raw, tmp_path / "processed")
    ours, reference = images_of(load_processed(tmp_path / "processed")), images_of(load_processed(tiny_data /
                                                                                                  "data/processed"))
    for name in names[:2]:  # the same pixels once reduced to one 8-bit channel
        assert np.array_equal(ours[name], reference[name])
    assert ours[names[2]].shape == ours[names[3]].shape == (32, 32)
    assert np.abs(ours[names[3]].astype(int) - reference[names[3]]).mean() < 2  # a JPEG of the same picture


def test_data_stages_decode_each_image_exactly_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[str] = []
    real = imageio.decode_gray

    def counting(data: bytes, name: str = "image", max_pixels: int | None = None) -> np.ndarray:
        decoded.append(name)
        return real(data, name, max_pixels)

    monkeypatch.setattr(preprocess, "decode_gray", counting)  # workers: 0 keeps every decode in this process
    monkeypatch.setattr(imageio, "decode_gray", counting)
    params = tiny_params(preprocess={"workers": 0})
    ingest.run(params, "internal", tmp_path / "raw", workers=1)
    assert decoded == []  # ingest renders and writes; it decodes nothing
    preprocess.run(params, tmp_path / "raw", tmp_path / "processed")
    split.run(params, tmp_path / "raw", tmp_path / "splits", tmp_path / "processed")
    assert sorted(decoded) == sorted(table_names(tmp_path / "raw"))


# ---------------------------------------------------------------------------------------------------------------
# A changed archive: only its shard is made again


def processed_archives(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The archives the stage reads from now on (workers: 0 keeps them in this process)."""
    seen: list[str] = []
    real = preprocess.process_archive

    def counting(job: preprocess.Job) -> preprocess.ArchiveResult:
        seen.append(Path(job.archive).name)
        return real(job)

    monkeypatch.setattr(preprocess, "process_archive", counting)
    return seen


def test_a_changed_archive_reprocesses_only_its_shard_and_keeps_the_others_linked(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    out = tmp_path / "processed"
    params = tiny_params(preprocess={"workers": 0})
    preprocess.run(params, raw, out)
    held = tmp_path / "held"  # links to the first run's shards: their inodes cannot be reused meanwhile
    held.mkdir()
    for shard in (out / SHARDS_DIR).iterdir():
        os.link(shard, held / shard.name)
    victim = raw_names(raw)[-1]
    changed = rewrite_member(raw, victim, lambda data: cv2.imencode(".png", 255 - decode_gray(data))[1].tobytes())
    seen = processed_archives(monkeypatch)
    capsys.readouterr()
    preprocess.run(params, raw, out)
    assert seen == [changed.name]
    archives = imageio.archive_paths(raw)
    assert f"({len(archives) - 1} shard(s) unchanged, kept)" in capsys.readouterr().out
    for shard in (out / SHARDS_DIR).iterdir():
        kept = os.path.samefile(shard, held / shard.name)
        assert kept == (shard.stem != shard_name(changed)), shard.name
    fresh = tmp_path / "fresh"  # and the output is byte for byte what a run from nothing makes (DVC sees one hash)
    preprocess.run(params, raw, fresh)
    assert snapshot(out) == snapshot(fresh)
    assert not np.array_equal(images_of(load_processed(out))[victim], images_of(load_processed(tiny_data /
                                                                                               "data/processed"))[victim])


def test_changed_settings_or_label_table_reprocess_every_shard(tiny_data: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    out = tmp_path / "processed"
    preprocess.run(tiny_params(preprocess={"workers": 0}), raw, out)
    seen = processed_archives(monkeypatch)
    preprocess.run(tiny_params(preprocess={"workers": 0, "clip_limit": 3.0}), raw, out)
    assert len(seen) == len(imageio.archive_paths(raw))
    seen.clear()
    preprocess.run(tiny_params(preprocess={"workers": 3, "clip_limit": 3.0}), raw, out)  # another worker count:
    assert seen == []  # every shard kept, no archive read (a worker process would have failed to pickle `counting`)
    table = raw / TABLE_FILE
    lines = table.read_text().splitlines(keepends=True)
    table.write_text("".join(lines[:-1]))  # one image fewer in the label table
    preprocess.run(tiny_params(preprocess={"workers": 0}), raw, out)
    assert len(seen) == len(imageio.archive_paths(raw))


# ---------------------------------------------------------------------------------------------------------------
# Nothing in an archive is trusted


def test_an_archive_changed_since_ingest_is_refused_by_name_and_none_of_its_images_used(
        tiny_data: Path, tmp_path: Path) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    victim = raw_names(raw)[5]
    archive = rewrite_member(raw, victim, lambda data: data[:-20] + bytes(20), record=False)  # after ingest
    recorded = dict(line.split("  ")[::-1] for line in (raw / MD5_FILE).read_text().splitlines())[archive.name]
    out = tmp_path / "processed"
    with pytest.raises(InputError) as err:
        preprocess.run(tiny_params(preprocess={"on_bad_image": "skip"}), raw, out)
    message = str(err.value)
    assert f"1 archive(s) cannot be used:\n  {archive}: MD5 " in message
    assert f"but ingest recorded {recorded} in {MD5_FILE}: the archive changed after ingest" in message
    assert "none of its images was used" in message
    assert not out.exists()  # skip does not skip a changed archive: nothing is written


def test_a_member_over_the_size_cap_is_refused_from_its_tar_header_not_read(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    victim = raw_names(raw)[7]
    archive = rewrite_member(raw, victim, lambda data: data + bytes(3_000_000))  # 3 MB: over a 1 MB cap
    extracted: list[str] = []
    real = tarfile.TarFile.extractfile

    def counting(self: tarfile.TarFile, member: tarfile.TarInfo | str) -> object:
        extracted.append(member if isinstance(member, str) else member.name)
        return real(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", counting)
    out = tmp_path / "processed"
    preprocess.run(tiny_params(preprocess={"workers": 0, "on_bad_image": "skip", "max_image_mb": 1.0}), raw, out)
    assert f"images/{victim}" not in extracted and len(extracted) == len(raw_names(raw)) - 1
    listed = dict(line.split("\t") for line in (out / preprocess.BAD_IMAGES_FILE).read_text().splitlines())
    size = len(raw_bytes(raw, victim)) / 1e6
    assert listed == {victim: f"member of {archive.name} declares {size:,.1f} MB, over the limit of 1.0 MB "
                              "(preprocess.max_image_mb); not read"}
    assert victim not in load_processed(out).names


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` grey pixels in its header and holds a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_an_image_over_the_pixel_cap_is_refused_from_its_header_not_decoded(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = copy_raw(tiny_data, tmp_path)
    header_bomb, real_bomb = raw_names(raw)[8:10]
    bombs = {header_bomb: png_header_only(60_000, 60_000),
             real_bomb: cv2.imencode(".png", np.zeros((1200, 1000), np.uint8))[1].tobytes()}  # valid, ~1 KB
    for name, data in bombs.items():
        rewrite_member(raw, name, lambda _, data=data: data)
    decoded: list[bytes] = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: decoded.append(buf.tobytes()) or real(buf, flags))
    out = tmp_path / "processed"
    params = tiny_params(preprocess={"workers": 0, "on_bad_image": "skip", "max_image_pixels": 1_000_000})
    preprocess.run(params, raw, out)
    assert not set(bombs.values()) & set(decoded) and len(decoded) == len(raw_names(raw)) - 2
    listed = dict(line.split("\t") for line in (out / preprocess.BAD_IMAGES_FILE).read_text().splitlines())
    assert listed == {
        header_bomb: "60000 x 60000 px declared in its header, over the limit of 1,000,000 pixels "
                     "(preprocess.max_image_pixels); not decoded",
        real_bomb: "1000 x 1200 px declared in its header, over the limit of 1,000,000 pixels "
                   "(preprocess.max_image_pixels); not decoded"}


def project(tiny_data: Path, root: Path, **override: object) -> Path:
    """A project folder with the tiny raw data and parameters, for the command line."""
    root.mkdir()
    shutil.copytree(tiny_data / "data/raw", root / "data/raw")
    write_params(root / "params.yaml", tiny_raw(**override))  # type: ignore[arg-type]
    return root


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "TQDM_DISABLE": "1", **extra}


def test_a_60000_px_header_is_one_line_on_the_command_line_no_opencv_traceback(tiny_data: Path,
                                                                               tmp_path: Path) -> None:
    ws = project(tiny_data, tmp_path / "ws", preprocess={"workers": 2})  # the default cap, in worker processes
    victim = raw_names(ws / "data/raw")[0]
    archive = rewrite_member(ws / "data/raw", victim, lambda _: png_header_only(60_000, 60_000))
    done = subprocess.run(cli("preprocess"), cwd=ws, capture_output=True, text=True, timeout=300, env=env())
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "cv2" not in done.stderr, done.stderr
    about = [line for line in done.stderr.splitlines() if victim in line]
    assert about == [f"  {victim}: 60000 x 60000 px declared in its header, over the limit of 40,000,000 pixels "
                     "(preprocess.max_image_pixels); not decoded"], done.stderr
    assert done.stderr.startswith("error: preprocess: 1 unusable image(s) of ")
    assert archive.exists() and not (ws / "data/processed").exists()


# A hook run by every Python process of the stage (its workers included): `process_archive` of the archive named
# in $CXR_HOOK_ARCHIVE kills its process with SIGKILL ($CXR_HOOK=kill, as the out-of-memory killer does) or writes
# $CXR_HOOK_STARTED and sleeps ($CXR_HOOK=sleep). Installed lazily, when the stage imports the module, so that the
# numerics are pinned before NumPy loads, as in production.
SITECUSTOMIZE = '''
import importlib.abc, importlib.util, os, signal, sys, time

class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "cxrstudy.data.preprocess":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            real = module.process_archive

            def process_archive(job):
                if os.path.basename(job.archive) == os.environ["CXR_HOOK_ARCHIVE"]:
                    if os.environ["CXR_HOOK"] == "kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    open(os.environ["CXR_HOOK_STARTED"], "w").close()
                    time.sleep(600)
                return real(job)

            process_archive.__qualname__ = process_archive.__name__  # picklable by name, as the real one
            process_archive.__module__ = module.__name__
            module.process_archive = process_archive

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _Hook())
'''


def hooked_env(tmp_path: Path, mode: str, archive: str) -> dict[str, str]:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    return env(PYTHONPATH=path, CXR_HOOK=mode, CXR_HOOK_ARCHIVE=archive, CXR_HOOK_STARTED=str(tmp_path / "started"))


def test_a_worker_killed_by_the_system_is_one_line_naming_its_archive(tiny_data: Path, tmp_path: Path) -> None:
    ws = project(tiny_data, tmp_path / "ws", preprocess={"workers": 2})
    archive = imageio.archive_paths(ws / "data/raw")[3].name
    done = subprocess.run(cli("preprocess"), cwd=ws, capture_output=True, text=True, timeout=300,
                          env=hooked_env(tmp_path, "kill", archive))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: preprocess: a worker process died (killed by the system: out of memory?) "
                                  "while reading "), done.stderr
    assert archive in done.stderr.split(" while reading ", 1)[1].split(";", 1)[0].split(", "), done.stderr
    assert "nothing was replaced" in done.stderr and "preprocess.workers" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr and "BrokenProcessPool" not in done.stderr, done.stderr
    assert not (ws / "data/processed").exists()


def test_a_killed_stage_leaves_no_worker_process_alive(tiny_data: Path, tmp_path: Path) -> None:
    ws = project(tiny_data, tmp_path / "ws", preprocess={"workers": 2})
    archive = imageio.archive_paths(ws / "data/raw")[0].name
    started = tmp_path / "started"
    stage = subprocess.Popen(cli("preprocess"), cwd=ws, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=hooked_env(tmp_path, "sleep", archive))
    family: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while not started.exists():  # a worker is inside an archive
            assert stage.poll() is None and time.monotonic() < deadline, "the stage never reached its archive"
            time.sleep(0.02)
        family = psutil.Process(stage.pid).children(recursive=True)  # forkserver, resource tracker, workers
        assert len(family) >= 3, family
        stage.send_signal(signal.SIGKILL)  # as the out-of-memory killer or a preempted job ends it
        stage.wait(timeout=30)
        gone, alive = psutil.wait_procs(family, timeout=15)
        assert alive == [], f"still running 15 s after the stage was killed: {[p.cmdline() for p in alive]}"
    finally:  # whatever the outcome, none of the processes this test started outlives it
        for process in family:
            if process.is_running():
                process.kill()
        if stage.poll() is None:
            stage.kill()
            stage.wait()

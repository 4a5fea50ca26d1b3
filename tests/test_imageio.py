"""Reading PNGs as they really are: one 8-bit channel out, or an `ImageError` that names the file; and reading them
out of NIH-style tar(.gz) archives, which are written byte-for-byte reproducibly."""

from __future__ import annotations

import io
import struct
import tarfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrstudy.data.imageio import (
    ARCHIVES_DIR,
    ArchiveError,
    ImageError,
    archive_paths,
    decode_gray,
    iter_pngs,
    read_gray,
    read_raw_images,
    to_gray8,
    write_archive,
    write_png,
)


def raw_png(pixels: np.ndarray, color_type: int) -> bytes:
    """A PNG written byte by byte (OpenCV cannot write grey+alpha): 8- or 16-bit, no filtering."""
    height, width = pixels.shape[:2]
    depth = 16 if pixels.dtype == np.uint16 else 8
    sample = ">u2" if depth == 16 else "u1"
    rows = b"".join(b"\x00" + pixels[y].astype(sample).tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def encoded(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def ramp(size: int = 16) -> np.ndarray:
    return (np.arange(size * size, dtype=np.uint32).reshape(size, size) % 256).astype(np.uint8)


def test_gray_passes_through() -> None:
    assert np.array_equal(decode_gray(encoded(ramp())), ramp())


def test_rgba_is_reduced_to_luminance_and_alpha_dropped() -> None:
    rgba = np.dstack([ramp()] * 3 + [np.zeros((16, 16), np.uint8)])  # fully transparent
    out = decode_gray(encoded(rgba))
    assert out.shape == (16, 16) and out.dtype == np.uint8
    assert np.array_equal(out, ramp())


def test_la_is_reduced_to_its_grey_channel() -> None:
    la = np.dstack([ramp(), np.full((16, 16), 128, np.uint8)])
    out = decode_gray(raw_png(la, color_type=4))
    assert out.shape == (16, 16) and np.array_equal(out, ramp())


def test_16_bit_keeps_the_high_byte() -> None:
    image = np.array([[0, 255, 256, 40000, 65535]], dtype=np.uint16)
    out = decode_gray(raw_png(image, color_type=0))
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 0, 1, 156, 255]]


def test_16_bit_grey_alpha_is_reduced_too() -> None:
    la = np.dstack([np.full((4, 4), 40000, np.uint16), np.full((4, 4), 65535, np.uint16)])
    out = decode_gray(raw_png(la, color_type=4))
    assert out.shape == (4, 4) and int(out[0, 0]) == 156


def test_sizes_other_than_1024_are_kept() -> None:
    assert decode_gray(encoded(np.zeros((512, 384), np.uint8))).shape == (512, 384)


def test_empty_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"a\.png: empty file"):
        read_gray(path)


def test_truncated_png_is_rejected() -> None:
    with pytest.raises(ImageError, match="x.png: truncated PNG"):
        decode_gray(encoded(ramp(64))[:-40], "x.png")


def test_not_a_png_is_rejected() -> None:
    with pytest.raises(ImageError, match="not a PNG"):
        decode_gray(b"\xff\xd8\xff\xe0 a JPEG header", "x.png")


def test_corrupt_data_with_an_intact_end_is_rejected() -> None:
    data = bytearray(raw_png(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8), 0))
    data[60:90] = bytes(30)  # inside IDAT; IEND intact
    with pytest.raises(ImageError, match="corrupt PNG"):
        decode_gray(bytes(data), "x.png")


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"nope\.png: missing image file"):
        read_gray(tmp_path / "nope.png")


def test_dangling_symlink_counts_as_missing(tmp_path: Path) -> None:
    (tmp_path / "link.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(ImageError, match="missing image file"):
        read_gray(tmp_path / "link.png")


def test_float_images_are_refused() -> None:
    with pytest.raises(ImageError, match="unsupported pixel type"):
        to_gray8(np.zeros((4, 4), np.float32))


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    write_png(tmp_path / "r.png", ramp())
    assert np.array_equal(read_gray(tmp_path / "r.png"), ramp())


# ---------------------------------------------------------------------------------------------------------------
# Archives


def members(n: int = 3) -> list[tuple[str, bytes]]:
    return [(f"0000000{i}_000.png", encoded(ramp(16 + i))) for i in range(n)]


@pytest.mark.parametrize("compresslevel", [1, None])
def test_archives_round_trip_in_order(tmp_path: Path, compresslevel: int | None) -> None:
    path = tmp_path / "a.tar.gz"
    assert write_archive(path, members(), compresslevel=compresslevel) == 3
    assert list(iter_pngs(path)) == members()
    with tarfile.open(path) as tar:  # NIH's layout inside: images/<name>
        assert tar.getnames() == [f"images/{name}" for name, _ in members()]


def test_the_same_images_give_the_same_archive_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_archive(tmp_path / "a.tar.gz", members())
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)  # another day: nothing of the clock gets in
    write_archive(tmp_path / "b.tar.gz", members())
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()


def test_only_regular_png_members_are_read_and_folders_dropped(tmp_path: Path) -> None:
    buf = io.BytesIO()
    data = encoded(ramp())
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, payload in (("images", tarfile.DIRTYPE, b""), ("images/a.png", tarfile.REGTYPE, data),
                                    ("images/._a.png", tarfile.REGTYPE, b"mac"), ("README", tarfile.REGTYPE, b"x"),
                                    ("deep/er/b.PNG", tarfile.REGTYPE, data), ("images/c.png", tarfile.SYMTYPE, b"")):
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(payload)
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info, io.BytesIO(payload))
    (tmp_path / "x.tar").write_bytes(buf.getvalue())
    assert [name for name, _ in iter_pngs(tmp_path / "x.tar")] == ["a.png", "b.PNG"]


@pytest.mark.parametrize("damage", ["cut", "garbage"])
def test_a_damaged_archive_is_named_with_how_far_it_got(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "images_001.tar.gz"
    write_archive(path, members(), compresslevel=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200] if damage == "cut" else b"not an archive at all")
    with pytest.raises(ArchiveError, match=r"images_001\.tar\.gz: not a readable tar\(.gz\) archive"):
        list(iter_pngs(path))


def test_raw_images_are_found_across_archives_and_a_missing_one_named(tmp_path: Path) -> None:
    folder = tmp_path / ARCHIVES_DIR
    folder.mkdir()
    write_archive(folder / "images_001.tar.gz", members()[:2])
    write_archive(folder / "images_002.tar", members()[2:], compresslevel=None)
    (folder / "notes.txt").write_text("not an archive")
    assert [p.name for p in archive_paths(tmp_path)] == ["images_001.tar.gz", "images_002.tar"]
    found = read_raw_images(tmp_path, ["00000000_000.png", "00000002_000.png"])
    assert np.array_equal(found["00000002_000.png"], ramp(18)) and found["00000000_000.png"].shape == (16, 16)
    with pytest.raises(ImageError, match=r"00000009_000\.png: missing image file \(in no archive of"):
        read_raw_images(tmp_path, ["00000001_000.png", "00000009_000.png"])

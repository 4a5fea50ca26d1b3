"""Reading PNGs and JPEGs as they really are: one 8-bit channel out, or an `ImageError` that names the file; reading
them out of NIH-style tar(.gz) archives, which are written byte-for-byte reproducibly; and never trusting a member: its
size comes from the tar header before its bytes, its width and height from the image header before it is decoded."""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile
import time
import tracemalloc
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
    image_size,
    iter_images,
    read_gray,
    read_raw_images,
    to_gray8,
    write_archive,
    write_png,
)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(pixels: np.ndarray, color_type: int) -> bytes:
    """A PNG written byte by byte (OpenCV cannot write grey+alpha): 8- or 16-bit, no filtering."""
    height, width = pixels.shape[:2]
    depth = 16 if pixels.dtype == np.uint16 else 8
    sample = ">u2" if depth == 16 else "u1"
    rows = b"".join(b"\x00" + pixels[y].astype(sample).tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    """A complete-looking PNG whose header declares `width` x `height` grey pixels but whose data is a few bytes: what
    a hostile member looks like (decoding it would allocate width x height bytes first)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


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


def test_neither_a_png_nor_a_jpeg_is_rejected() -> None:
    with pytest.raises(ImageError, match=r"x\.png: neither a PNG nor a JPEG \(bad signature\)"):
        decode_gray(b"GIF89a" + encoded(ramp())[6:], "x.png")


def test_a_jpeg_is_read_into_one_grey_channel() -> None:
    smooth = np.tile(np.linspace(40, 200, 64, dtype=np.uint8), (48, 1))
    grey = decode_gray(jpeg(smooth), "view1_frontal.jpg")
    assert grey.shape == (48, 64) and grey.dtype == np.uint8
    assert np.abs(grey.astype(int) - smooth).max() <= 3  # lossy, but the same picture
    colour = decode_gray(jpeg(np.dstack([smooth] * 3)), "c.jpg")  # a colour JPEG: its luminance
    assert colour.shape == (48, 64) and np.abs(colour.astype(int) - smooth).max() <= 3


def test_a_truncated_jpeg_is_rejected() -> None:
    with pytest.raises(ImageError, match=r"x\.jpg: truncated JPEG \(no end-of-image marker"):
        decode_gray(jpeg(np.zeros((64, 64), np.uint8))[:-100], "x.jpg")


def test_the_size_comes_from_the_header_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr(cv2, "imdecode", refuse)
    assert image_size(encoded(np.zeros((30, 50), np.uint8))) == (50, 30)
    assert image_size(jpeg(np.zeros((24, 40), np.uint8))) == (40, 24)
    assert image_size(png_header_only(60_000, 60_000)) == (60_000, 60_000)


def test_an_image_over_the_pixel_cap_is_refused_before_it_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(1) or real(*a))
    with pytest.raises(ImageError) as err:
        decode_gray(png_header_only(60_000, 60_000), "bomb.png", max_pixels=40_000_000)
    assert str(err.value) == ("bomb.png: 60000 x 60000 px declared in its header, over the limit of 40,000,000 "
                              "pixels (preprocess.max_image_pixels); not decoded")
    with pytest.raises(ImageError, match=r"big\.jpg: 40 x 30 px declared .* limit of 1,000 pixels"):
        decode_gray(jpeg(np.zeros((30, 40), np.uint8)), "big.jpg", max_pixels=1000)
    assert decoded == []
    assert decode_gray(encoded(ramp()), "ok.png", max_pixels=256).shape == (16, 16)  # at the cap: decoded
    assert decoded == [1]


def test_a_corrupt_header_is_named() -> None:
    data = bytearray(encoded(ramp()))
    data[12:16] = b"XXXX"  # IHDR's chunk type
    with pytest.raises(ImageError, match=r"h\.png: corrupt PNG header"):
        decode_gray(bytes(data), "h.png", max_pixels=10**6)


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
    assert list(iter_images(path)) == members()
    with tarfile.open(path) as tar:  # NIH's layout inside: images/<name>
        assert tar.getnames() == [f"images/{name}" for name, _ in members()]


def test_the_same_images_give_the_same_archive_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_archive(tmp_path / "a.tar.gz", members())
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)  # another day: nothing of the clock gets in
    write_archive(tmp_path / "b.tar.gz", members())
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()


def test_only_regular_image_members_are_read_and_folders_dropped(tmp_path: Path) -> None:
    buf = io.BytesIO()
    data = encoded(ramp())
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, payload in (("images", tarfile.DIRTYPE, b""), ("images/a.png", tarfile.REGTYPE, data),
                                    ("images/._a.png", tarfile.REGTYPE, b"mac"), ("README", tarfile.REGTYPE, b"x"),
                                    ("deep/er/b.PNG", tarfile.REGTYPE, data), ("images/c.png", tarfile.SYMTYPE, b""),
                                    ("train/p1/s1/view1_frontal.jpg", tarfile.REGTYPE, data),
                                    ("images/d.JPEG", tarfile.REGTYPE, data), ("images/e.gif", tarfile.REGTYPE, data),
                                    ("images/f.png", tarfile.LNKTYPE, b"")):
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(payload)
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info, io.BytesIO(payload))
    (tmp_path / "x.tar").write_bytes(buf.getvalue())
    assert [name for name, _ in iter_images(tmp_path / "x.tar")] == ["a.png", "b.PNG", "view1_frontal.jpg", "d.JPEG"]


@pytest.mark.parametrize("damage", ["cut", "garbage"])
def test_a_damaged_archive_is_named_with_how_far_it_got(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "images_001.tar.gz"
    write_archive(path, members(), compresslevel=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200] if damage == "cut" else b"not an archive at all")
    with pytest.raises(ArchiveError, match=r"images_001\.tar\.gz: not a readable tar\(.gz\) archive"):
        list(iter_images(path))


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


def zeros(size: int) -> io.RawIOBase:
    """`size` zero bytes as a file, made as they are read (no `size` bytes in memory)."""

    class Zeros(io.RawIOBase):
        left = size

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            count = min(len(buffer), self.left)
            buffer[:count] = bytes(count)
            self.left -= count
            return count

    return Zeros()


def archive_with_a_large_member(path: Path, size: int) -> Path:
    """A gzipped archive: an ordinary image, a member of `size` bytes of zeros (a few hundred KB once compressed) named
    like an image, and another ordinary image after it."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, length, data in (("images/a.png", None, encoded(ramp())), ("images/huge.png", size, None),
                                   ("images/c.png", None, encoded(ramp(20)))):
            info = tarfile.TarInfo(name)
            info.size = len(data) if data is not None else length  # type: ignore[arg-type]
            tar.addfile(info, io.BytesIO(data) if data is not None else io.BufferedReader(zeros(size)))
    return path


def test_a_member_over_the_size_cap_is_refused_from_its_tar_header_and_not_read(tmp_path: Path) -> None:
    size = 64 * 2**20
    path = archive_with_a_large_member(tmp_path / "images_001.tar.gz", size)
    assert path.stat().st_size < 2**20  # 64 MiB of zeros in under 1 MiB: a bomb in a small archive
    tracemalloc.start()
    try:
        found = list(iter_images(path, max_bytes=2_000_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [name for name, _ in found] == ["a.png", "huge.png", "c.png"]  # the images after it are still read
    refusal = found[1][1]
    assert isinstance(refusal, ImageError)
    assert str(refusal) == ("huge.png: member of images_001.tar.gz declares 67.1 MB, over the limit of 2.0 MB "
                            "(preprocess.max_image_mb); not read")
    assert found[2][1] == encoded(ramp(20))
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB held while skipping a {size / 2**20:.0f} MiB member"


def test_the_archive_is_hashed_in_the_read_that_streams_it(tmp_path: Path) -> None:
    path = tmp_path / "a.tar.gz"
    write_archive(path, members())
    path.write_bytes(path.read_bytes() + b"\0" * 5000)  # trailing bytes the tar reader never needs
    digest = hashlib.md5(usedforsecurity=False)
    assert [name for name, _ in iter_images(path, digest=digest)] == [name for name, _ in members()]
    assert digest.hexdigest() == hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()

"""The real-data ingest (`cxrstudy.nih`), on small releases in NIH's exact layout made here.

A local HTTP server on 127.0.0.1 (a thread, port 0) stands in for NIH's address or a mirror: it answers Range
requests and can cut a connection half-way, stall, fail once with 503, or 404. Nothing reaches the internet.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import socket
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from cxrstudy import nih
from cxrstudy.errors import InputError
from cxrstudy.labels import DATA_ENTRY_FILE, write_data_entry
from cxrstudy.nih import download, ingest_nih
from cxrstudy.params import NihParams
from tests.conftest import project_params, section, tiny_params

# ---------------------------------------------------------------------------------------------------------------
# A small release in NIH's layout: 2 archives x 4 images, 4 patients with 2 images each; patient 4 is the test set.

PATIENTS = (1, 2, 3, 4)
LABELS = ("No Finding", "Cardiomegaly|Effusion", "Hernia", "Infiltration", "Mass|Nodule", "No Finding",
          "Pneumothorax", "Atelectasis")


def png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def gray(size: int = 32, value: int = 0) -> np.ndarray:
    rng = np.random.default_rng(value)
    return rng.integers(0, 256, (size, size), dtype=np.uint8)


def image_names() -> list[str]:
    return [f"{p:08d}_{f:03d}.png" for p in PATIENTS for f in range(2)]


def data_entry_csv(names: list[str]) -> bytes:
    table = pd.DataFrame({
        "image": names,
        "labels": [LABELS[i % len(LABELS)] for i in range(len(names))],
        "follow_up": [int(n[9:12]) for n in names],
        "patient": [int(n[:8]) for n in names],
        "age": 50, "sex": "M", "view": "PA", "width": 2500, "height": 2048,
    })
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "entry.csv"
        write_data_entry(table, path)
        return path.read_bytes()


def tar_gz(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo("images")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class Release:
    """Every file of a small release, by name, and the checksum table for its archives."""

    images: dict[str, bytes]
    files: dict[str, bytes]
    checksums: dict[str, str]


def make_release(images: dict[str, bytes] | None = None, rows: list[str] | None = None,
                 test_patients: tuple[int, ...] = (4,)) -> Release:
    """Archives images_001/002.tar.gz (half the images each, under images/), the metadata files, and MD5s."""
    if images is None:
        images = {name: png(gray(32, i)) for i, name in enumerate(image_names())}
    rows = rows if rows is not None else sorted(images)
    names = sorted(images)
    half = len(names) // 2
    archives = {
        "images_001.tar.gz": tar_gz({f"images/{n}": images[n] for n in names[:half]}),
        "images_002.tar.gz": tar_gz({f"images/{n}": images[n] for n in names[half:]}),
    }
    test = [n for n in rows if int(n[:8]) in test_patients]
    train_val = [n for n in rows if n not in test]
    files = dict(archives)
    files["Data_Entry_2017_v2020.csv"] = data_entry_csv(rows)
    files["train_val_list.txt"] = "".join(f"{n}\n" for n in train_val).encode()
    files["test_list.txt"] = "".join(f"{n}\n" for n in test).encode()
    files["BBox_List_2017.csv"] = b"Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
    return Release(images, files, {name: md5(data) for name, data in archives.items()})


# ---------------------------------------------------------------------------------------------------------------
# The local HTTP server


@dataclass
class ServerState:
    files: dict[str, bytes]
    modes: dict[str, str] = field(default_factory=dict)  # name -> cut | stall | fail-once | no-range
    log: list[tuple[str, str | None]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    spent: set[str] = field(default_factory=set)  # one-shot faults already played


class Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        name = self.path.lstrip("/")
        requested = self.headers.get("Range")
        state.log.append((name, requested))
        mode = state.modes.get(name, "")
        if mode == "stall":
            state.release.wait(5)
            return
        if mode == "fail-once" and name not in state.spent:
            state.spent.add(name)
            self.send_error(503)
            return
        if name not in state.files:
            self.send_error(404)
            return
        self._send(state, name, mode, requested)

    def _send(self, state: ServerState, name: str, mode: str, requested: str | None) -> None:
        data = state.files[name]
        start = 0
        if requested and mode != "no-range":
            start = int(requested.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "cut" and name not in state.spent:
            state.spent.add(name)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    state = ServerState(files={})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", state
    state.release.set()
    httpd.shutdown()
    httpd.server_close()


def params(tmp_path: Path, **kw: object) -> NihParams:
    base: dict[str, object] = {"download_dir": str(tmp_path / "downloads"), "timeout_s": 2.0, "retries": 2,
                               "backoff_s": 0.01, "workers": 2}
    base.update(kw)
    return section("ingest", "nih", **base)


def out(tmp_path: Path, name: str = "raw") -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


def local_copy(tmp_path: Path, release: Release, archives: bool = False) -> Path:
    """The release as a user might hold it: extracted images/ (or the archives) plus the metadata files."""
    root = tmp_path / "nih-copy"
    (root / "images").mkdir(parents=True)
    for name, data in release.files.items():
        if not name.endswith(".tar.gz") or archives:
            (root / name).write_bytes(data)
    if not archives:
        for name, data in release.images.items():
            (root / "images" / name).write_bytes(data)
    return root


# ---------------------------------------------------------------------------------------------------------------
# Download


def test_full_download_writes_nih_layout(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    release = make_release()
    state.files.update(release.files)
    raw = out(tmp_path)
    table = ingest_nih(params(tmp_path, base_url=url), raw, checksums=release.checksums)
    assert sorted(table["image"]) == sorted(release.images)
    assert sorted(p.name for p in (raw / "images").iterdir()) == sorted(release.images)
    for name, data in release.images.items():
        assert (raw / "images" / name).read_bytes() == data
    assert (raw / DATA_ENTRY_FILE).read_bytes() == release.files["Data_Entry_2017_v2020.csv"]
    for name in ("train_val_list.txt", "test_list.txt", "BBox_List_2017.csv"):
        assert (raw / name).read_bytes() == release.files[name]


def test_downloaded_images_are_links_into_the_cache(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    release = make_release()
    state.files.update(release.files)
    raw = out(tmp_path)
    ingest_nih(params(tmp_path, base_url=url), raw, checksums=release.checksums)
    name = sorted(release.images)[0]
    cached = tmp_path / "downloads" / "extracted" / "images" / name
    assert os.path.samefile(raw / "images" / name, cached)


def test_second_ingest_downloads_nothing(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    release = make_release()
    state.files.update(release.files)
    cfg = params(tmp_path, base_url=url)
    ingest_nih(cfg, out(tmp_path, "raw1"), checksums=release.checksums)
    state.log.clear()
    ingest_nih(cfg, out(tmp_path, "raw2"), checksums=release.checksums)
    assert state.log == []


def test_cut_connection_is_resumed_with_range(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    release = make_release()
    state.files.update(release.files)
    state.modes["images_001.tar.gz"] = "cut"
    ingest_nih(params(tmp_path, base_url=url), out(tmp_path), checksums=release.checksums)
    requests = [r for name, r in state.log if name == "images_001.tar.gz"]
    half = (len(release.files["images_001.tar.gz"])) // 2
    assert requests == [None, f"bytes={half}-"]


def test_part_file_left_by_an_earlier_run_is_resumed(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    data = os.urandom(300_000)
    state.files["blob.bin"] = data
    dest = tmp_path / "dl" / "blob.bin"
    dest.parent.mkdir()
    (dest.parent / "blob.bin.part").write_bytes(data[:120_000])
    download(url + "blob.bin", dest, md5(data), params(tmp_path))
    assert dest.read_bytes() == data
    assert state.log == [("blob.bin", "bytes=120000-")]
    assert not (dest.parent / "blob.bin.part").exists()


def test_server_ignoring_range_restarts_cleanly(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    data = os.urandom(200_000)
    state.files["blob.bin"] = data
    state.modes["blob.bin"] = "no-range"
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(data[:50_000])
    download(url + "blob.bin", dest, md5(data), params(tmp_path))
    assert dest.read_bytes() == data


def test_server_error_is_retried(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    state.files["blob.bin"] = b"x" * 1000
    state.modes["blob.bin"] = "fail-once"
    download(url + "blob.bin", tmp_path / "blob.bin", None, params(tmp_path))
    assert [n for n, _ in state.log] == ["blob.bin", "blob.bin"]


def test_md5_mismatch_names_the_archive(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    release = make_release()
    state.files.update(release.files)
    checksums = {**release.checksums, "images_002.tar.gz": "0" * 32}
    with pytest.raises(InputError, match=r"images_002\.tar\.gz: MD5 mismatch: got [0-9a-f]{32}, expected 0{32}"):
        ingest_nih(params(tmp_path, base_url=url), out(tmp_path), checksums=checksums)
    assert not list((tmp_path / "downloads").glob("images_002*"))


def test_missing_archive_404_names_it(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    release = make_release()
    state.files.update({k: v for k, v in release.files.items() if k != "images_002.tar.gz"})
    with pytest.raises(InputError, match=r"images_002\.tar\.gz: cannot download: .*HTTP 404"):
        ingest_nih(params(tmp_path, base_url=url), out(tmp_path), checksums=release.checksums)


def test_stalled_server_times_out_and_names_the_archive(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    release = make_release()
    state.files.update(release.files)
    state.modes["images_001.tar.gz"] = "stall"
    started = time.monotonic()
    with pytest.raises(InputError, match=r"images_001\.tar\.gz: download from .* failed 2 time\(s\)"):
        ingest_nih(params(tmp_path, base_url=url, timeout_s=0.3, retries=1), out(tmp_path),
                   checksums=release.checksums)
    assert time.monotonic() - started < 3


def test_keep_archives_false_deletes_them_after_extraction(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    release = make_release()
    state.files.update(release.files)
    ingest_nih(params(tmp_path, base_url=url, keep_archives=False), out(tmp_path), checksums=release.checksums)
    assert not list((tmp_path / "downloads").glob("images_*.tar.gz"))
    state.log.clear()
    ingest_nih(params(tmp_path, base_url=url, keep_archives=False), out(tmp_path, "again"),
               checksums=release.checksums)
    assert state.log == []


def test_official_address_uses_nih_box_names() -> None:
    cfg = section("ingest", "nih")
    assert nih.archive_url(cfg, "images_001.tar.gz") == (
        "https://nihcc.box.com/shared/static/vfk49d74nhbxq3nqjg0900w5nvkorp5c.gz")
    mirror = section("ingest", "nih", base_url="https://mirror.example/nih")
    assert nih.archive_url(mirror, "images_012.tar.gz") == "https://mirror.example/nih/images_012.tar.gz"
    assert nih.metadata_base(cfg) is None and nih.metadata_base(mirror) == "https://mirror.example/nih"


def test_nih_tables_cover_the_twelve_archives() -> None:
    assert nih.archive_names(nih.NIH_MD5) == [f"images_{i:03d}.tar.gz" for i in range(1, 13)]
    assert set(nih.NIH_BOX_NAMES) == set(nih.NIH_MD5)


def test_official_address_without_metadata_says_where_to_put_it(tmp_path: Path) -> None:
    cfg = params(tmp_path)  # NIH's Box: no fixed address for the metadata files
    with pytest.raises(InputError, match=r"Data_Entry_2017_v2020\.csv, train_val_list\.txt, test_list\.txt.*"
                                         r"nihcc\.app\.box\.com"):
        ingest_nih(cfg, out(tmp_path), checksums=make_release().checksums)


def test_missing_bbox_falls_back_to_the_packaged_copy(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    release = make_release()
    state.files.update({k: v for k, v in release.files.items() if k != "BBox_List_2017.csv"})
    raw = out(tmp_path)
    ingest_nih(params(tmp_path, base_url=url), raw, checksums=release.checksums)
    lines = (raw / "BBox_List_2017.csv").read_text().splitlines()
    assert lines[0].startswith("Image Index,Finding Label,Bbox [x") and len(lines) == 985


# ---------------------------------------------------------------------------------------------------------------
# Local copy


def test_local_extracted_copy_is_hardlinked_not_copied(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release)
    raw = out(tmp_path)
    ingest_nih(params(tmp_path, local_path=str(root)), raw, checksums=release.checksums)
    for name in release.images:
        assert os.path.samefile(raw / "images" / name, root / "images" / name)
    assert not (tmp_path / "downloads" / "extracted").exists()


def test_local_copy_as_symlinks(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release)
    raw = out(tmp_path)
    ingest_nih(params(tmp_path, local_path=str(root), link="symlink"), raw, checksums=release.checksums)
    name = sorted(release.images)[0]
    assert (raw / "images" / name).is_symlink()
    assert os.readlink(raw / "images" / name) == str((root / "images" / name).resolve())


def test_local_copy_reads_each_image_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = make_release()
    root = local_copy(tmp_path, release)
    reads: list[str] = []
    real = nih.read_gray

    def counting(path: Path) -> np.ndarray:
        reads.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(nih, "read_gray", counting)
    ingest_nih(params(tmp_path, local_path=str(root)), out(tmp_path), checksums=release.checksums)
    assert sorted(reads) == sorted(release.images)


def test_local_kaggle_layout_is_found(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release)
    for i, name in enumerate(sorted(release.images)):
        folder = root / f"images_{i // 4 + 1:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        (root / "images" / name).rename(folder / name)
    (root / "images").rmdir()
    table = ingest_nih(params(tmp_path, local_path=str(root)), out(tmp_path), checksums=release.checksums)
    assert len(table) == len(release.images)


def test_local_archives_are_verified_and_extracted_once(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release, archives=True)
    (root / "images").rmdir()
    raw = out(tmp_path)
    ingest_nih(params(tmp_path, local_path=str(root)), raw, checksums=release.checksums)
    extracted = tmp_path / "downloads" / "extracted"
    assert sorted(p.name for p in extracted.glob(".done-*")) == [".done-images_001.tar.gz", ".done-images_002.tar.gz"]
    assert (root / "images_001.tar.gz").exists()  # the user's archives are never deleted
    assert nih.extract_archive(root / "images_001.tar.gz", extracted / "images",
                               release.checksums["images_001.tar.gz"], "images_001.tar.gz") == 0


def test_local_archive_md5_mismatch_names_it(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release, archives=True)
    (root / "images").rmdir()
    checksums = {**release.checksums, "images_001.tar.gz": "f" * 32}
    with pytest.raises(InputError, match=r"images_001\.tar\.gz: MD5 mismatch"):
        ingest_nih(params(tmp_path, local_path=str(root)), out(tmp_path), checksums=checksums)
    assert not (tmp_path / "downloads" / "extracted" / "images").exists()


def test_local_archives_must_all_be_there(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release, archives=True)
    (root / "images").rmdir()
    (root / "images_002.tar.gz").unlink()
    with pytest.raises(InputError, match=r"has 1 of 2 archives; missing: images_002\.tar\.gz"):
        ingest_nih(params(tmp_path, local_path=str(root)), out(tmp_path), checksums=release.checksums)


def test_extracted_images_beside_archives_win(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release)
    for name in release.checksums:
        (root / name).write_bytes(b"not even an archive")
    ingest_nih(params(tmp_path, local_path=str(root)), out(tmp_path), checksums=release.checksums)
    assert not (tmp_path / "downloads" / "extracted").exists()


def test_deleted_extraction_is_redone(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_gz({"images/x.png": png(gray(8))}))
    images = tmp_path / "cache" / "images"
    assert nih.extract_archive(archive, images, None, "a.tar.gz") == 1
    for path in images.iterdir():
        path.unlink()
    images.rmdir()
    assert nih.extract_archive(archive, images, None, "a.tar.gz") == 1


def test_archive_members_cannot_escape(tmp_path: Path) -> None:
    data = png(gray(8))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("../evil.png", "images/ok.png"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("images/link.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(buf.getvalue())
    images = tmp_path / "cache" / "images"
    assert nih.extract_archive(archive, images, None, "a.tar.gz") == 2
    assert sorted(p.name for p in images.iterdir()) == ["evil.png", "ok.png"]
    assert not (tmp_path / "evil.png").exists()


def test_gzipped_metadata_and_the_2017_file_are_accepted(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release)
    entry = release.files["Data_Entry_2017_v2020.csv"]
    (root / "Data_Entry_2017_v2020.csv").unlink()
    # The 2017 file: same columns, every line ending with an empty column.
    (root / "Data_Entry_2017.csv.gz").write_bytes(gzip.compress(entry.replace(b"\n", b",\n")))
    raw = out(tmp_path)
    table = ingest_nih(params(tmp_path, local_path=str(root), metadata="2017"), raw, checksums=release.checksums)
    assert len(table) == len(release.images)
    assert (raw / DATA_ENTRY_FILE).read_bytes() == entry.replace(b"\n", b",\n")


def test_local_path_that_is_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="ingest.nih.local_path: .* is not a folder"):
        ingest_nih(params(tmp_path, local_path=str(tmp_path / "nope")), out(tmp_path))


# ---------------------------------------------------------------------------------------------------------------
# Images as they really are


def odd_images() -> dict[str, bytes]:
    names = image_names()
    rgba = np.dstack([gray(32, 1)] * 3 + [np.full((32, 32), 255, np.uint8)])
    return {
        names[0]: png(gray(32)),
        names[1]: png(rgba),
        names[2]: png(gray(32).astype(np.uint16) * 257),
        names[3]: png(gray(512)),
        names[4]: png(gray(32))[:-30],  # truncated
        names[5]: b"",  # zero bytes
        names[6]: b"GIF89a not a png",
        names[7]: png(gray(32)),
    }


BAD = {image_names()[4]: "truncated", image_names()[5]: "empty", image_names()[6]: "not a PNG"}


def test_odd_but_valid_images_are_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = {k: v for k, v in odd_images().items() if k not in BAD}
    release = make_release(images, rows=sorted(images))
    root = local_copy(tmp_path, release)
    table = ingest_nih(params(tmp_path, local_path=str(root)), out(tmp_path), checksums=release.checksums)
    assert len(table) == 5
    assert "5 image(s) are not 1024x1024" in capsys.readouterr().out


def test_bad_images_are_reported_all_together(tmp_path: Path) -> None:
    release = make_release(odd_images(), rows=image_names())
    root = local_copy(tmp_path, release)
    missing = image_names()[7]
    (root / "images" / missing).unlink()
    with pytest.raises(InputError) as err:
        ingest_nih(params(tmp_path, local_path=str(root)), out(tmp_path), checksums=release.checksums)
    message = str(err.value)
    assert message.startswith("4 of 8 image(s) cannot be used")
    for name, reason in {**BAD, missing: "missing image file"}.items():
        assert f"{name}: " in message and reason in message.split(f"{name}: ")[1].splitlines()[0]
    report = (tmp_path / "downloads" / "bad_images.txt").read_text().splitlines()
    assert len(report) == 4


def test_skip_drops_bad_images_and_lists_them(tmp_path: Path) -> None:
    release = make_release(odd_images(), rows=image_names())
    root = local_copy(tmp_path, release)
    raw = out(tmp_path)
    table = ingest_nih(params(tmp_path, local_path=str(root), on_bad_image="skip"), raw,
                       checksums=release.checksums)
    assert set(table["image"]).isdisjoint(BAD)
    assert len(table) == 5
    listed = dict(line.split("\t") for line in (raw / "bad_images.txt").read_text().splitlines())
    assert set(listed) == set(BAD)
    kept = (raw / "train_val_list.txt").read_text() + (raw / "test_list.txt").read_text()
    assert not any(name in kept for name in BAD)
    assert not any((raw / "images" / name).exists() for name in BAD)


def test_skip_still_fails_when_every_image_is_bad(tmp_path: Path) -> None:
    release = make_release({n: b"" for n in image_names()})
    root = local_copy(tmp_path, release)
    with pytest.raises(InputError, match="8 of 8 image"):
        ingest_nih(params(tmp_path, local_path=str(root), on_bad_image="skip"), out(tmp_path),
                   checksums=release.checksums)


# ---------------------------------------------------------------------------------------------------------------
# Split lists


def test_patient_on_both_sides_of_the_lists_is_an_error(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release)
    with (root / "test_list.txt").open("a") as fh:
        fh.write("00000001_001.png\n")  # patient 1's other image is in train_val
    lines = [n for n in (root / "train_val_list.txt").read_text().split() if n != "00000001_001.png"]
    (root / "train_val_list.txt").write_text("".join(f"{n}\n" for n in lines))
    with pytest.raises(InputError, match="patient leakage: 1 patient"):
        ingest_nih(params(tmp_path, local_path=str(root)), out(tmp_path), checksums=release.checksums)


def test_list_naming_an_unknown_image_is_an_error(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release)
    with (root / "test_list.txt").open("a") as fh:
        fh.write("99999999_000.png\n")
    with pytest.raises(InputError, match="not in the metadata"):
        ingest_nih(params(tmp_path, local_path=str(root)), out(tmp_path), checksums=release.checksums)


# ---------------------------------------------------------------------------------------------------------------
# Parameters


def test_params_are_strict_and_frozen() -> None:
    with pytest.raises(ValidationError):
        NihParams.model_validate({**project_params()["ingest"]["nih"], "base_ulr": "x"})
    cfg = section("ingest", "nih")
    with pytest.raises(ValidationError):
        cfg.retries = 3  # type: ignore[misc]




def test_ingest_stage_and_official_split_on_a_local_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrstudy import ingest, split

    monkeypatch.chdir(tmp_path)  # no DVC project here: nothing to say about its cache type
    release = make_release()
    root = local_copy(tmp_path, release)
    nih_cfg = params(tmp_path, local_path=str(root)).model_dump()
    cfg = tiny_params(ingest={"source": "nih", "nih": nih_cfg}, split={"method": "official", "val_fraction": 0.4})
    raw = tmp_path / "data" / "raw"
    ingest.run(cfg, raw)
    table = split.read_data_entry(raw / DATA_ENTRY_FILE)
    parts = split.make_splits(table, raw, cfg.split)
    assert sorted(parts["test"]) == ["00000004_000.png", "00000004_001.png"]
    assert len(parts["train"]) + len(parts["val"]) == 6

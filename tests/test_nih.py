"""The real-data ingest (`cxrstudy.data.nih`, `cxrstudy.data.download`, `cxrstudy.data.release`), on small releases
in NIH's exact layout made here: the raw data are NIH's archives, verified and linked, never extracted; no image is
decoded; NIH's table, official lists and boxes become the dataset contract.

A local HTTP server on 127.0.0.1 (a thread, port 0) stands in for NIH's address or a mirror: it answers Range
requests and can cut a connection half-way, stall, fail once with 503, or 404. Nothing reaches the internet.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import queue
import select
import socket
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from cxrstudy.data import dataset, imageio, nih
from cxrstudy.data import download as downloads
from cxrstudy.data import release as nih_release
from cxrstudy.data.download import download
from cxrstudy.data.imageio import ARCHIVES_DIR
from cxrstudy.data.nih import ingest_nih
from cxrstudy.data.nihtable import BBOX_NAMES, FINDINGS, NIH_SITE, read_data_entry, to_contract, write_data_entry
from cxrstudy.errors import InputError
from cxrstudy.ingestschema import NihParams
from tests.conftest import project_params, section, tiny_params
from tests.raw_data import members

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
    hung_up: queue.Queue[str] = field(default_factory=queue.Queue)  # stalled requests the client gave up on


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
            self._stall(state, name)
            return
        if mode == "fail-once" and name not in state.spent:
            state.spent.add(name)
            self.send_error(503)
            return
        if name not in state.files:
            self.send_error(404)
            return
        self._send(state, name, mode, requested)

    def _stall(self, state: ServerState, name: str) -> None:
        """Answer nothing until the client hangs up (recorded) or the test ends, whichever comes first."""
        while not state.release.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                state.hung_up.put(name)
                return

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


def raw_images(raw: Path) -> dict[str, bytes]:
    """Every image in `raw`'s archives, by name."""
    return {name: data for archive in imageio.archive_paths(raw) for name, data in members(archive)}


def release_table(release: Release, tmp_path: Path) -> pd.DataFrame:
    """The release's Data_Entry file, read as NIH ships it."""
    path = tmp_path / "entry-check.csv"
    path.write_bytes(release.files["Data_Entry_2017_v2020.csv"])
    return read_data_entry(path)


def test_full_download_gives_nihs_archives_and_the_contract(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    release = make_release()
    state.files.update(release.files)
    raw = out(tmp_path)
    got = ingest_nih(params(tmp_path, base_url=url), raw, checksums=release.checksums)
    assert sorted(p.name for p in (raw / ARCHIVES_DIR).iterdir()) == sorted(release.checksums)
    assert sorted(p.name for p in raw.iterdir()) == [ARCHIVES_DIR]  # the metadata becomes the contract's files
    for name in release.checksums:
        assert (raw / ARCHIVES_DIR / name).read_bytes() == release.files[name]
    assert raw_images(raw) == release.images
    entries = release_table(release, tmp_path)
    test = release.files["test_list.txt"].decode().split()
    train_val = release.files["train_val_list.txt"].decode().split()
    pd.testing.assert_frame_equal(got.table, to_contract(entries, train_val, test, NIH_SITE))
    assert got.table["official_split"].tolist() == ["test" if n in test else "train_val" for n in entries["image"]]
    assert (got.info.source, got.info.label_space, got.info.labels, got.info.uncertain) == ("nih", "nih", FINDINGS,
                                                                                            "zeros")
    assert "test_list.txt" in got.info.official_test and "NLP" in got.info.label_source
    assert got.archive_md5 == release.checksums  # verified on arrival: ingest need not hash them again
    assert got.boxes.empty and list(got.boxes.columns) == list(dataset.BOX_COLUMNS)  # no box in this release


def test_downloaded_archives_are_linked_never_extracted(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    release = make_release()
    state.files.update(release.files)
    raw = out(tmp_path)
    ingest_nih(params(tmp_path, base_url=url), raw, checksums=release.checksums)
    for name in release.checksums:
        assert os.path.samefile(raw / ARCHIVES_DIR / name, tmp_path / "downloads" / name)
    assert not list((tmp_path / "downloads").rglob("*.png"))  # no second copy of the images


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


@pytest.mark.timeout(60)  # without the client's timeout the download would wait for ever
def test_stalled_server_times_out_and_names_the_archive(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    release = make_release()
    state.files.update(release.files)
    state.modes["images_001.tar.gz"] = "stall"  # the server never answers: only the client's timeout ends a try
    tried_twice = r"images_001\.tar\.gz: download from .* failed 2 time\(s\), last: .*timed out"
    with pytest.raises(InputError, match=tried_twice):
        ingest_nih(params(tmp_path, base_url=url, timeout_s=0.3, retries=1), out(tmp_path),
                   checksums=release.checksums)
    gave_up = [state.hung_up.get(timeout=30) for _ in range(2)]  # the server notices each hang-up (bounded)
    assert gave_up == ["images_001.tar.gz"] * 2 and state.hung_up.empty(), "the client ended both tries"


def test_official_address_uses_nih_box_names() -> None:
    cfg = section("ingest", "nih")
    assert downloads.archive_url(cfg, "images_001.tar.gz") == (
        "https://nihcc.box.com/shared/static/vfk49d74nhbxq3nqjg0900w5nvkorp5c.gz")
    mirror = section("ingest", "nih", base_url="https://mirror.example/nih")
    assert downloads.archive_url(mirror, "images_012.tar.gz") == "https://mirror.example/nih/images_012.tar.gz"
    assert downloads.metadata_base(cfg) is None and downloads.metadata_base(mirror) == "https://mirror.example/nih"


def test_nih_tables_cover_the_twelve_archives() -> None:
    assert nih_release.archive_names(nih_release.NIH_MD5) == [f"images_{i:03d}.tar.gz" for i in range(1, 13)]
    assert set(downloads.NIH_BOX_NAMES) == set(nih_release.NIH_MD5)
    assert nih_release.archive_file_names(112_120) == dict(
        zip(nih_release.NIH_MD5, nih_release.NIH_ARCHIVE_IMAGES, strict=True))


@pytest.mark.parametrize("n", [20, 124, 1400, 11_212])
def test_a_smaller_release_keeps_nihs_proportions(n: int) -> None:
    counts = nih_release.archive_file_names(n)
    assert sum(counts.values()) == n and all(c > 0 for c in counts.values())
    assert list(counts) == sorted(counts) and len(counts) <= 12
    if n >= 1400:  # the first archive holds about half as many images as the next ones, the last about 0.7
        middle = counts["images_006.tar.gz"]
        assert abs(counts["images_001.tar.gz"] / middle - 0.5) < 0.05
        assert abs(counts["images_012.tar.gz"] / middle - 0.712) < 0.05


def test_official_address_without_metadata_says_where_to_put_it(tmp_path: Path) -> None:
    cfg = params(tmp_path)  # NIH's Box: no fixed address for the metadata files
    with pytest.raises(InputError, match=r"Data_Entry_2017_v2020\.csv, train_val_list\.txt, test_list\.txt.*"
                                         r"nihcc\.app\.box\.com"):
        ingest_nih(cfg, out(tmp_path), checksums=make_release().checksums)


def test_missing_bbox_falls_back_to_the_packaged_copy(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    packaged = pd.read_csv(Path(str(resources.files("cxrstudy") / "resources" / "BBox_List_2017.csv.gz")))
    boxed = packaged["Image Index"].iloc[0]  # a real image with a box in NIH's list
    names = [*image_names()[:-1], boxed]
    release = make_release({name: png(gray(32, i)) for i, name in enumerate(names)}, test_patients=(4,))
    state.files.update({k: v for k, v in release.files.items() if k != "BBox_List_2017.csv"})
    got = ingest_nih(params(tmp_path, base_url=url), out(tmp_path), checksums=release.checksums)
    first = packaged[packaged["Image Index"] == boxed].iloc[0]
    x, y, w, h = (float(v) / 1024 for v in first.iloc[2:6])
    assert got.boxes.to_dict("records")[:1] == [
        {"image": boxed, "finding": BBOX_NAMES.get(first["Finding Label"], first["Finding Label"]),
         "x": pytest.approx(x), "y": pytest.approx(y), "w": pytest.approx(w), "h": pytest.approx(h)}]
    assert set(got.boxes["image"]) == {boxed}  # the boxes of the ingested images only


# ---------------------------------------------------------------------------------------------------------------
# Local copy


def test_local_archives_are_hardlinked_not_copied(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release, archives=True)
    raw = out(tmp_path)
    ingest_nih(params(tmp_path, local_path=str(root)), raw, checksums=release.checksums)
    for name in release.checksums:
        assert os.path.samefile(raw / ARCHIVES_DIR / name, root / name)
    assert not (tmp_path / "downloads" / nih.PACKED).exists()  # nothing packed: the archives are used as they are
    assert raw_images(raw) == release.images


def test_local_archives_as_symlinks(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release, archives=True)
    raw = out(tmp_path)
    ingest_nih(params(tmp_path, local_path=str(root), link="symlink"), raw, checksums=release.checksums)
    link = raw / ARCHIVES_DIR / "images_001.tar.gz"
    assert link.is_symlink() and os.readlink(link) == str((root / "images_001.tar.gz").resolve())


def test_local_archives_are_read_once_until_they_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = make_release()
    root = local_copy(tmp_path, release, archives=True)
    hashed: list[str] = []
    real = nih.file_md5

    def counting(path: Path) -> str:
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(nih, "file_md5", counting)
    cfg = params(tmp_path, local_path=str(root))
    ingest_nih(cfg, out(tmp_path, "raw1"), checksums=release.checksums)
    assert sorted(hashed) == sorted(release.checksums)
    ingest_nih(cfg, out(tmp_path, "raw2"), checksums=release.checksums)
    assert len(hashed) == 2  # remembered by file identity, size and modification time
    archive = root / "images_002.tar.gz"
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))
    ingest_nih(cfg, out(tmp_path, "raw3"), checksums=release.checksums)
    assert hashed[2:] == ["images_002.tar.gz"]


def test_ingest_decodes_no_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("ingest decoded an image: preprocess is the one place that does")

    monkeypatch.setattr(imageio, "decode_gray", refuse)
    monkeypatch.setattr(cv2, "imdecode", refuse)
    release = make_release()
    ingest_nih(params(tmp_path, local_path=str(local_copy(tmp_path, release, archives=True))), out(tmp_path),
               checksums=release.checksums)
    ingest_nih(params(tmp_path, local_path=str(local_copy(tmp_path / "x", release))), out(tmp_path, "packed"),
               checksums=release.checksums)


def test_local_extracted_copy_is_packed_once_into_nih_style_archives(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release)
    raw = out(tmp_path)
    ingest_nih(params(tmp_path, local_path=str(root)), raw, checksums=release.checksums)
    packed = tmp_path / "downloads" / nih.PACKED
    names = sorted(p.name for p in (raw / ARCHIVES_DIR).iterdir())
    assert names == list(nih_release.archive_file_names(len(release.images), ".tar"))  # NIH's split, by name
    for name in names:
        assert os.path.samefile(raw / ARCHIVES_DIR / name, packed / name)
    assert raw_images(raw) == release.images
    first = {p.name: p.stat().st_mtime_ns for p in packed.glob("*.tar")}
    ingest_nih(params(tmp_path, local_path=str(root)), out(tmp_path, "again"), checksums=release.checksums)
    assert {p.name: p.stat().st_mtime_ns for p in packed.glob("*.tar")} == first  # not packed again


def test_a_changed_extracted_image_is_packed_again(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release)
    cfg = params(tmp_path, local_path=str(root))
    ingest_nih(cfg, out(tmp_path), checksums=release.checksums)
    name = sorted(release.images)[-1]
    (root / "images" / name).write_bytes(png(gray(32, 99)))
    raw = out(tmp_path, "again")
    ingest_nih(cfg, raw, checksums=release.checksums)
    assert raw_images(raw)[name] == png(gray(32, 99))


def test_local_kaggle_layout_is_found(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release)
    for i, name in enumerate(sorted(release.images)):
        folder = root / f"images_{i // 4 + 1:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        (root / "images" / name).rename(folder / name)
    (root / "images").rmdir()
    raw = out(tmp_path)
    got = ingest_nih(params(tmp_path, local_path=str(root)), raw, checksums=release.checksums)
    assert len(got.table) == len(release.images)
    assert raw_images(raw) == release.images


def test_every_local_archive_md5_mismatch_is_named_at_once(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release, archives=True)
    checksums = {name: "f" * 32 for name in release.checksums}
    with pytest.raises(InputError, match=r"MD5 mismatch") as err:
        ingest_nih(params(tmp_path, local_path=str(root)), out(tmp_path), checksums=checksums)
    for name, good in release.checksums.items():
        assert f"{name}: got {good}, expected {'f' * 32}" in str(err.value)


def test_local_archives_must_all_be_there(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release, archives=True)
    (root / "images_002.tar.gz").unlink()
    with pytest.raises(InputError, match=r"has 1 of 2 archives; missing: images_002\.tar\.gz"):
        ingest_nih(params(tmp_path, local_path=str(root)), out(tmp_path), checksums=release.checksums)


def test_archives_beside_extracted_images_win(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release, archives=True)
    for name, data in release.images.items():
        (root / "images" / name).write_bytes(data)
    raw = out(tmp_path)
    ingest_nih(params(tmp_path, local_path=str(root)), raw, checksums=release.checksums)
    assert not (tmp_path / "downloads" / nih.PACKED).exists()
    assert os.path.samefile(raw / ARCHIVES_DIR / "images_001.tar.gz", root / "images_001.tar.gz")


def test_gzipped_metadata_and_the_2017_file_are_accepted(tmp_path: Path) -> None:
    release = make_release()
    root = local_copy(tmp_path, release)
    entry = release.files["Data_Entry_2017_v2020.csv"]
    (root / "Data_Entry_2017_v2020.csv").unlink()
    # The 2017 file: same columns, every line ending with an empty column.
    (root / "Data_Entry_2017.csv.gz").write_bytes(gzip.compress(entry.replace(b"\n", b",\n")))
    got = ingest_nih(params(tmp_path, local_path=str(root), metadata="2017"), out(tmp_path),
                     checksums=release.checksums)
    assert got.table["image"].tolist() == release_table(release, tmp_path)["image"].tolist()
    assert got.table[list(FINDINGS)].to_numpy().tolist() == to_contract(
        release_table(release, tmp_path), [], [], "")[list(FINDINGS)].to_numpy().tolist()


def test_local_path_that_is_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="ingest.nih.local_path: .* is not a folder"):
        ingest_nih(params(tmp_path, local_path=str(tmp_path / "nope")), out(tmp_path))


def nih_stage_params(tmp_path: Path, release: Release, **nih_cfg: object) -> object:
    """The tiny parameters with a local NIH copy of `release` (archives) and its own MD5 list as the source."""
    sums = tmp_path / "release.md5"
    sums.write_text("".join(f"{md5}  {name}\n" for name, md5 in release.checksums.items()))
    root = local_copy(tmp_path, release, archives=True)
    cfg = params(tmp_path, local_path=str(root), md5_file=str(sums), **nih_cfg).model_dump()
    return tiny_params(ingest={"source": "nih", "nih": cfg}, split={"method": "official", "val_fraction": 0.4})


def test_bad_images_pass_ingest_and_are_all_named_by_preprocess(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrstudy.data import ingest, preprocess

    monkeypatch.chdir(tmp_path)  # no DVC project here: nothing to say about its cache type
    images = {name: png(gray(32, i)) for i, name in enumerate(image_names())}
    bad = {image_names()[1]: b"", image_names()[6]: b"GIF89a not a png"}
    cfg = nih_stage_params(tmp_path, make_release({**images, **bad}))
    raw = tmp_path / "data" / "raw"
    ingest.run(cfg, "internal", raw)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"2 unusable image\(s\) of 8") as err:
        preprocess.run(cfg, raw, tmp_path / "data" / "processed")  # type: ignore[arg-type]
    assert f"{image_names()[1]}: empty file" in str(err.value)
    assert f"{image_names()[6]}: neither a PNG nor a JPEG" in str(err.value)


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
    from cxrstudy.data import ingest, split

    monkeypatch.chdir(tmp_path)  # no DVC project here: nothing to say about its cache type
    release = make_release()
    root = local_copy(tmp_path, release)
    nih_cfg = params(tmp_path, local_path=str(root)).model_dump()
    cfg = tiny_params(ingest={"source": "nih", "nih": nih_cfg}, split={"method": "official", "val_fraction": 0.4})
    raw = tmp_path / "data" / "raw"
    ingest.run(cfg, "internal", raw)
    assert sorted(p.name for p in raw.iterdir()) == sorted([ARCHIVES_DIR, dataset.MD5_FILE, dataset.TABLE_FILE,
                                                            dataset.INFO_FILE, dataset.BOXES_FILE])
    assert dataset.read_boxes(raw).empty  # no boxes in this release: the file holds the header only
    info = dataset.read_info(raw)
    assert info.counts["images"] == 8 and info.counts["patients"] == 4
    assert info.counts["official_split"] == {"test": 2, "train_val": 6}
    table = dataset.read_table(raw, info)
    parts = split.make_splits(table, cfg.split)
    assert sorted(parts["test"]) == ["00000004_000.png", "00000004_001.png"]
    assert len(parts["train"]) + len(parts["val"]) == 6


def test_the_archive_md5s_recorded_are_the_ones_verified_not_hashed_again(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrstudy.data import ingest

    monkeypatch.chdir(tmp_path)
    release = make_release()
    cfg = nih_stage_params(tmp_path, release)

    def refuse(path: Path) -> str:
        raise AssertionError(f"{path} hashed a second time")

    monkeypatch.setattr(ingest, "file_md5", refuse)
    raw = tmp_path / "data" / "raw"
    ingest.run(cfg, "internal", raw)  # type: ignore[arg-type]
    assert (raw / dataset.MD5_FILE).read_text() == "".join(f"{release.checksums[name]}  {name}\n"
                                                          for name in sorted(release.checksums))

"""Downloading NIH's files: resumable (`.part` files, HTTP Range), retried with backoff, MD5-checked on the fly.

`cxrstudy.data.nih` calls `download` for each archive and metadata file it needs (`ingest.nih.local_path: null`).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from cxrstudy.data.release import NIH_ORIGIN
from cxrstudy.errors import InputError, shown_address
from cxrstudy.ingestschema import NihParams
from cxrstudy.params import OFFICIAL_BASE_URL

CHUNK = 1 << 20

# NIH's batch_download_zips.py: the file name of each archive at OFFICIAL_BASE_URL.
NIH_BOX_NAMES: dict[str, str] = {
    "images_001.tar.gz": "vfk49d74nhbxq3nqjg0900w5nvkorp5c.gz",
    "images_002.tar.gz": "i28rlmbvmfjbl8p2n3ril0pptcmcu9d1.gz",
    "images_003.tar.gz": "f1t00wrtdk94satdfb9olcolqx20z2jp.gz",
    "images_004.tar.gz": "0aowwzs5lhjrceb3qp67ahp0rd1l1etg.gz",
    "images_005.tar.gz": "v5e3goj22zr6h8tzualxfsqlqaygfbsn.gz",
    "images_006.tar.gz": "asi7ikud9jwnkrnkj99jnpfkjdes7l6l.gz",
    "images_007.tar.gz": "jn1b4mw4n6lnh74ovmcjb8y48h8xj07n.gz",
    "images_008.tar.gz": "tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j.gz",
    "images_009.tar.gz": "upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj.gz",
    "images_010.tar.gz": "l6nilvfa9cg3s28tqv1qc1olm3gnz54p.gz",
    "images_011.tar.gz": "hhq8fkdgvcari67vfhs7ppg2w6ni4jze.gz",
    "images_012.tar.gz": "ioqwiy20ihqwyr8pf4c24eazhh281pbu.gz",
}




class _Transient(Exception):
    """A failure worth retrying (cut connection, timeout, 5xx)."""


def join_url(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def archive_url(cfg: NihParams, name: str) -> str:
    """The address of archive `name` (images_NNN.tar.gz) under `cfg.base_url`."""
    style = cfg.url_style
    if style == "auto":
        style = "nih-box" if cfg.base_url.rstrip("/") == OFFICIAL_BASE_URL.rstrip("/") else "plain"
    if style == "nih-box":
        if name not in NIH_BOX_NAMES:
            raise InputError(f"{name}: not one of NIH's archives; url_style 'nih-box' knows {sorted(NIH_BOX_NAMES)}")
        return join_url(cfg.base_url, NIH_BOX_NAMES[name])
    return join_url(cfg.base_url, name)


def metadata_base(cfg: NihParams) -> str | None:
    """Where metadata files are fetched by name, or None when there is no such address (NIH's Box)."""
    if cfg.metadata_url:
        return cfg.metadata_url
    if cfg.base_url.rstrip("/") == OFFICIAL_BASE_URL.rstrip("/"):
        return None
    return cfg.base_url


@dataclass
class _Hashed:
    """An MD5 over the first `size` bytes of a `.part` file."""

    md5: hashlib._Hash = field(default_factory=lambda: hashlib.md5(usedforsecurity=False))
    size: int = 0


def _hash_prefix(part: Path) -> _Hashed:
    state = _Hashed()
    if part.exists():
        with part.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                state.md5.update(chunk)
                state.size += len(chunk)
    return state


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": "cxrstudy-ingest"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:  # nothing left to send: the .part is already whole
            raise _RangeDone() from None
        if err.code >= 500 or err.code in (408, 429):
            raise _Transient(f"HTTP {err.code} {err.reason}") from None
        raise InputError(f"{shown_address(url, keep_name=True)}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _Transient(str(getattr(err, "reason", err))) from None
    return response


class _RangeDone(Exception):
    """The server answered 416 to a Range request: the partial file already holds everything."""


def _expected_total(response: http.client.HTTPResponse, offset: int) -> int | None:
    """Total size of the file from Content-Range (206) or Content-Length (200), when the server says."""
    content_range = response.headers.get("Content-Range", "")
    match = re.match(r"bytes (\d+)-\d+/(\d+)", content_range)
    if response.status == 206 and match:
        if int(match.group(1)) != offset:
            raise _Transient(f"server resumed at byte {match.group(1)}, not {offset}")
        return int(match.group(2))
    length = response.headers.get("Content-Length")
    return int(length) if length is not None and length.isdigit() else None


def _fetch_once(url: str, part: Path, state: _Hashed, timeout: float, label: str) -> _Hashed:
    """One attempt: append the rest of `url` to `part` (from byte `state.size`), updating the running MD5."""
    try:
        response = _open(url, state.size, timeout)
    except _RangeDone:
        return state
    with response:
        if state.size and response.status != 206:  # the server ignored Range: start over
            state = _Hashed()
            part.unlink(missing_ok=True)
        total = _expected_total(response, state.size)
        with part.open("ab") as out, tqdm(total=total, initial=state.size, unit="B", unit_scale=True,
                                          unit_divisor=1024, desc=label, leave=False, mininterval=1.0) as bar:
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    state.md5.update(chunk)
                    state.size += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:  # timeouts and cut connections
                raise _Transient(f"{type(err).__name__}: {err} after {state.size} bytes") from None
    if total is not None and state.size != total:
        raise _Transient(f"connection closed at byte {state.size} of {total}")
    return state


def download(url: str, dest: Path, md5: str | None, cfg: NihParams, label: str | None = None,
             origin: str = NIH_ORIGIN) -> Path:
    """Download `url` to `dest` unless `dest` exists (a finished, verified download).

    Bytes go to `dest.part` first, so a cut download resumes (HTTP Range) on the next attempt or the next run.
    Retries transient failures `cfg.retries` times with exponential backoff; checks the MD5 when `md5` is given and
    deletes a mismatching file. Raises `InputError` naming the file on a 4xx answer, a mismatch or when retries
    run out.
    """
    label = label or dest.name
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    state = _hash_prefix(part)
    errors: list[str] = []
    for attempt in range(cfg.retries + 1):
        if attempt:
            time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
        try:
            state = _fetch_once(url, part, state, cfg.timeout_s, label)
            break
        except _Transient as err:
            errors.append(str(err))
            print(f"{label}: attempt {attempt + 1} of {cfg.retries + 1} failed ({err})", file=sys.stderr)
        except InputError as err:
            raise InputError(f"{label}: cannot download: {err} (check ingest.nih.base_url / metadata_url)") from None
    else:
        raise InputError(
            f"{label}: download from {shown_address(url, keep_name=True)} failed {cfg.retries + 1} time(s), "
            f"last: {errors[-1]}; "
            f"{state.size} bytes are kept in {part} and the next run resumes from there "
            "(raise ingest.nih.retries / timeout_s, or set base_url to a mirror)"
        )
    if md5 is not None and state.md5.hexdigest() != md5.lower():
        part.unlink(missing_ok=True)
        raise InputError(
            f"{label}: MD5 mismatch: got {state.md5.hexdigest()}, expected {md5} ({origin}) for the file from "
            f"{shown_address(url, keep_name=True)}; "
            "the download was deleted. A cut transfer is fixed by running again; if it mismatches again, the server "
            "holds another file than the list describes: check ingest.nih.base_url, or ingest.nih.md5_file"
        )
    os.replace(part, dest)
    return dest

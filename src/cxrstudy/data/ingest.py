"""The ingest stage: a source, through its adapter, into the dataset contract (`cxrstudy.data.dataset`).

    python -m cxrstudy ingest --site internal --out data/raw            the training site (`ingest.source`)
    python -m cxrstudy ingest --site external --out data/external/raw   the external test site (`ingest.external`)

The adapter (`cxrstudy.data.sources.<name>`) writes the images as archives and hands over the table, what the dataset
is and its boxes; this stage checks them, writes `images.csv`, `dataset.json`, `boxes.csv` and `archives.md5` (each
archive's MD5, as the adapter verified it or as computed here), and puts the folder in place atomically. With
`ingest.external: none` the external folder holds only a `dataset.json` saying so.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from cxrstudy.atomic import atomic_dir, write_json
from cxrstudy.data.dataset import INFO_FILE, MD5_FILE, NONE, write
from cxrstudy.data.imageio import archive_paths
from cxrstudy.params import Params

Site = Literal["internal", "external"]
CHUNK = 1 << 20


def source_of(params: Params, site: Site) -> str:
    """The source configured for `site`: `ingest.source` (internal) or `ingest.external`."""
    return params.ingest.source if site == "internal" else params.ingest.external


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_md5(folder: Path, known: dict[str, str]) -> None:
    """`folder/archives.md5` in md5sum format: each archive's MD5 from `known`, or computed now."""
    lines = [f"{known.get(p.name) or file_md5(p)}  {p.name}\n" for p in archive_paths(folder)]
    (folder / MD5_FILE).write_text("".join(lines))


def run(params: Params, site: Site, out_dir: Path, workers: int = 2) -> None:
    """Stage entry point: build `out_dir` from the source configured for `site`, atomically."""
    from cxrstudy.data.sources import adapter

    source = source_of(params, site)
    with atomic_dir(out_dir) as tmp:
        if source == NONE:
            write_json(tmp / INFO_FILE, {"source": NONE})
        else:
            dataset = adapter(source).ingest(params, tmp, workers)
            info = write(dataset, tmp)
            write_md5(tmp, dataset.archive_md5)
    if source == NONE:
        print(f"ingest ({site}): no external test set (ingest.external: none) -> {out_dir}")
        return
    c = info.counts
    print(f"ingest ({site}, {source}): {c['images']} images of {c['patients']} patients, {len(info.labels)} labels "
          f"-> {out_dir}")


"""One seam between the datasets and the rest: nothing outside `cxrstudy.data` knows a dataset's layout, and a new
dataset is a handful of files, proven by adding one to a copy of the project and training on it."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, tiny_raw, write_params
from tests.test_dvc_graph import PACKAGE, imported_modules

# What the phases above the data layer may import from it: the contract, the processed images, the split lists and
# image decoding. Never an adapter, nor a module that knows one dataset (NIH's table, a phantom, a release).
SEAM = {"cxrstudy.data", "cxrstudy.data.dataset", "cxrstudy.data.shards", "cxrstudy.data.split",
        "cxrstudy.data.imageio", "cxrstudy.data.preprocess"}
ABOVE = ("learning", "reporting")


def modules_above() -> list[Path]:
    return sorted(p for phase in ABOVE for p in (PACKAGE / phase).rglob("*.py"))


@pytest.mark.parametrize("path", modules_above(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_above_the_data_layer_imports_a_dataset_adapter(path: Path) -> None:
    data = {m for m in imported_modules(path) if m.startswith("cxrstudy.data")}
    assert data <= SEAM, f"{path.relative_to(ROOT)} imports {sorted(data - SEAM)}: go through cxrstudy.data.dataset"


@pytest.mark.parametrize("path", sorted((PACKAGE / "learning").rglob("*.py")), ids=lambda p: p.name)
def test_learning_takes_the_label_names_from_the_data(path: Path) -> None:
    tree = ast.parse(path.read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "FINDINGS" not in names, f"{path.name} uses a fixed label list"


def test_the_command_line_imports_adapters_only_through_the_ingest_and_manifest_stages() -> None:
    adapters = {m for m in imported_modules(PACKAGE / "cli.py") if m.startswith("cxrstudy.data.sources")}
    assert not adapters


TOY_ADAPTER = '''
"""A toy dataset: two findings drawn as bright squares, for the seam test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrstudy.data.dataset import Dataset, DatasetInfo
from cxrstudy.data.imageio import ARCHIVES_DIR, encode_png, write_archive
from cxrstudy.params import Params

NAME = "toy"
LABELS = ("Square", "Bar")


def ingest(params: Params, out_dir: Path, workers: int) -> Dataset:
    cfg = params.ingest.toy
    rng = np.random.default_rng(cfg.seed)
    rows, members = [], []
    for i in range(cfg.n_images):
        square, bar = (int(v) for v in rng.integers(0, 2, 2))
        image = (rng.random((48, 48)) * 60).astype(np.uint8)
        if square:
            image[10:20, 10:20] = 220
        if bar:
            image[30:34, 5:40] = 200
        name = f"toy{i:04d}.png"
        members.append((name, encode_png(image)))
        rows.append({"image": name, "patient": f"t{i // 2}", "study": "1", "follow_up": 0, "sex": "F",
                     "age": "50", "view": "PA", "site": "toy site",
                     "official_split": "test" if i // 2 % 5 == 0 else "train_val",
                     "Square": str(square), "Bar": str(bar)})
    (out_dir / ARCHIVES_DIR).mkdir()
    write_archive(out_dir / ARCHIVES_DIR / "toy_001.tar.gz", iter(members))
    info = DatasetInfo(source=NAME, name="Toy", site="toy site", label_space="toy", labels=LABELS,
                       uncertain="zeros", label_source="drawn", official_test="every fifth patient")
    return Dataset(pd.DataFrame(rows), info)


def manifest(params: Params) -> dict[str, Any]:
    return {}
'''

TOY_SCHEMA = '''

class ToyParams(Section):
    n_images: int
    seed: int
'''


def add_toy_dataset(root: Path) -> list[str]:
    """Add the toy dataset to the project at `root` as a user would; return the files changed."""
    (root / "src/cxrstudy/data/sources/toy.py").write_text(TOY_ADAPTER.lstrip())
    schema = root / "src/cxrstudy/ingestschema.py"
    text = schema.read_text()
    text = re.sub(r'(Source = Literal\[)', r'\1"toy", ', text, count=1)
    text = text.replace('    chexpert: ChexpertParams\n', '    chexpert: ChexpertParams\n    toy: ToyParams\n', 1)
    text = text.replace("\n\nSource = Literal[", TOY_SCHEMA + "\n\nSource = Literal[", 1)
    schema.write_text(text)
    raw = tiny_raw(ingest={"source": "toy", "external": "none", "toy": {"n_images": 120, "seed": 0}},
                   split={"method": "official"}, train={"epochs": 1})
    write_params(root / "params.yaml", raw)
    return ["src/cxrstudy/data/sources/toy.py", "src/cxrstudy/ingestschema.py", "params.yaml"]


@pytest.mark.slow
def test_a_new_dataset_is_three_files_and_trains(tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    changed = add_toy_dataset(root)
    assert len(changed) + 1 <= 4  # and its page in docs/datasets.md

    def stage(*argv: str) -> None:
        done = subprocess.run([sys.executable, "-m", "cxrstudy", *argv], cwd=root, capture_output=True, text=True,
                              env={"PYTHONPATH": str(root / "src"), "PATH": "/usr/bin:/bin", "TQDM_DISABLE": "1"})
        assert done.returncode == 0, f"{argv[0]}: {done.stderr[-2000:]}"

    stage("ingest", "--out", "data/raw", "--workers", "1")
    stage("preprocess", "--raw", "data/raw", "--out", "data/processed")
    stage("split", "--raw", "data/raw", "--processed", "data/processed", "--out", "data/splits")
    stage("train", "--seed", "1")
    stage("evaluate", "--seed", "1")
    metrics = json.loads((root / "metrics/eval/seed_1.json").read_text())
    assert set(metrics["auroc"]) == {"Square", "Bar"}  # the label names came from the data
    header = (root / "predictions/seed_1.csv").read_text().splitlines()[0]
    assert header == "image,patient,label_Square,label_Bar,prob_Square,prob_Bar"
    # Nothing else of the project changed: the copy differs from it in exactly the files listed.
    differing = {str(p.relative_to(root)) for p in (root / "src").rglob("*.py")
                 if not (ROOT / p.relative_to(root)).is_file()
                 or (ROOT / p.relative_to(root)).read_bytes() != p.read_bytes()}
    assert differing == {c for c in changed if c.startswith("src/")}

"""The catalogue of bad inputs (docs/robustness.md), each run end to end through the command line.

Every case runs one stage as `python -m cxrstudy --params params.yaml STAGE ...` in a copy of the tiny dataset and
checks the same three things: exit status 2, a message on stderr that names the offender and what would be
accepted (and no traceback), and the stage's earlier output left byte for byte as it was, with no temporary left
beside it. A fault in the dataset contract (`data/raw/images.csv`) is met by the stages that read it (split here);
a fault in NIH's own files (`Data_Entry_2017.csv`, the official lists) by ingest, which turns them into the contract
and leaves the earlier `data/raw` as it was. The unit tests of each check live next to its module (test_imageio,
test_dataset, test_nihtable, test_nih, test_split, test_params, test_preprocess); these make sure the whole path, up
to the exit status, holds.
"""

from __future__ import annotations

import csv
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrstudy.data.imageio import encode_png
from cxrstudy.data.nihtable import write_data_entry
from tests.conftest import changed, leftovers, run_cli, run_patched, shown, snapshot, workspace
from tests.raw_data import rewrite_member

pytestmark = pytest.mark.slow

RAW = Path("data/raw")
TABLE = RAW / "images.csv"
UNKNOWN_IMAGE = "00099999_000.png"


# --------------------------------------------------------------------------------------------------------------------
# Helpers (the workspace, the command line, snapshots and leftovers are shared: tests/conftest.py)


def assert_refused(proc: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> None:
    """Exit status `code`, every needle in stderr, and a message rather than a traceback."""
    assert proc.returncode == code, shown(proc)
    assert "Traceback" not in proc.stderr, shown(proc)
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in the message\n{shown(proc)}"


def earlier_model(ws: Path) -> dict[str, bytes]:
    """Stand-ins for a previous train stage's outputs (only their bytes matter), and their snapshot."""
    (ws / "models/seed_1").mkdir(parents=True)
    (ws / "models/seed_1/model.pt").write_bytes(b"an earlier model")
    (ws / "models/seed_1/summary.json").write_text('{"earlier": true}\n')
    (ws / "plots/train").mkdir(parents=True)
    (ws / "plots/train/seed_1.csv").write_text("epoch,train_loss,val_loss,val_auroc,lr\n1,0.5,0.5,0.5,0.001\n")
    return {**snapshot(ws / "models"), **{"plots": (ws / "plots/train/seed_1.csv").read_bytes()}}


def model_outputs(ws: Path) -> dict[str, bytes]:
    return {**snapshot(ws / "models"), **{"plots": (ws / "plots/train/seed_1.csv").read_bytes()}}


def edit_csv(path: Path, change: Callable[[list[list[str]]], None]) -> None:
    """Rewrite a CSV file after `change` edited its rows (the header is rows[0])."""
    rows = list(csv.reader(path.read_text().splitlines()))
    change(rows)
    with path.open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def table_rows(ws: Path) -> list[dict[str, str]]:
    """The rows of the workspace's images.csv, by column name."""
    return list(csv.DictReader((ws / TABLE).read_text().splitlines()))


def first_image(ws: Path) -> str:
    return table_rows(ws)[0]["image"]


def train_steps(ws: Path, batch_size: int = 16) -> int:
    """Optimizer steps per epoch of the tiny run (the loader drops the last partial batch)."""
    return len((ws / "data/splits/train.txt").read_text().split()) // batch_size


# --------------------------------------------------------------------------------------------------------------------
# Images (preprocess)


def _corrupt(data: bytes) -> bytes:
    out = bytearray(data)
    out[60:90] = bytes(30)  # inside the IDAT stream; the signature and IEND stay intact
    return bytes(out)


# name -> (what to do to the file's bytes, None = delete it; what the message must say)
BAD_IMAGES: dict[str, tuple[Callable[[bytes], bytes] | None, str]] = {
    "corrupt": (_corrupt, "corrupt PNG"),
    "truncated": (lambda data: data[: len(data) // 2], "truncated PNG"),
    "empty": (lambda data: b"", "empty file (0 bytes)"),
    "not-an-image": (lambda data: b"GIF89a a GIF, neither a PNG nor a JPEG", "neither a PNG nor a JPEG"),
    "truncated-jpeg": (lambda data: b"\xff\xd8\xff\xe0\x00\x10JFIF a JPEG cut short", "truncated JPEG"),
    "missing": (None, "missing image file"),
}


def spoil(ws: Path, name: str, how: Callable[[bytes], bytes] | None) -> None:
    """Rewrite the raw archive that holds image `name` with `how(bytes)` in its place (None: without it), its new MD5
    in archives.md5, as if the source had held it so (an archive changed since ingest is another fault)."""
    rewrite_member(ws / RAW, name, how)


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_a_bad_image_is_named_and_the_processed_data_survive(case: str, tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path)
    before = snapshot(ws / "data/processed")
    name = first_image(ws)
    how, reason = BAD_IMAGES[case]
    spoil(ws, name, how)

    proc = run_cli(ws, "preprocess")

    assert_refused(proc, "1 unusable image(s)", f"{name}: {reason}")
    assert changed(before, snapshot(ws / "data/processed")) == []
    assert leftovers(ws) == []


def test_the_bad_image_message_says_what_is_accepted(tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path)
    names = sorted(row["image"] for row in table_rows(ws))[: len(BAD_IMAGES)]
    for name, (how, _) in zip(names, BAD_IMAGES.values(), strict=True):
        spoil(ws, name, how)

    proc = run_cli(ws, "preprocess")

    assert_refused(proc, f"{len(names)} unusable image(s)", *names)
    assert re.search(r"(accepted|expected|must be)[^\n]*PNG or JPEG", proc.stderr), proc.stderr


# --------------------------------------------------------------------------------------------------------------------
# The dataset contract's table, data/raw/images.csv (split)


def test_an_image_listed_twice_is_named(tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path)
    before = snapshot(ws / "data/splits")
    name = first_image(ws)
    edit_csv(ws / TABLE, lambda rows: rows.append(list(rows[1])))

    proc = run_cli(ws, "split")

    assert_refused(proc, str(TABLE), "listed more than once", name, "each image must have one row")
    assert changed(before, snapshot(ws / "data/splits")) == []
    assert leftovers(ws) == []


@pytest.mark.parametrize(("column", "value", "accepted"), [
    pytest.param("Cardiomegaly", "2", "accepted: 1, 0, -1 or empty (not mentioned)", id="label-cell"),
    pytest.param("Cardiomegaly", "yes", "accepted: 1, 0, -1 or empty (not mentioned)", id="label-word"),
    pytest.param("view", "LL", "accepted: PA, AP, lateral or empty", id="view"),
    pytest.param("sex", "female", "accepted: M, F or empty", id="sex"),
    pytest.param("official_split", "val", "accepted: train_val, test or empty", id="official-split"),
])
def test_a_bad_table_cell_is_named_with_what_is_accepted(tiny_data: Path, tmp_path: Path, column: str, value: str,
                                                         accepted: str) -> None:
    ws = workspace(tiny_data, tmp_path)
    before = snapshot(ws / "data/splits")
    name = first_image(ws)

    def change(rows: list[list[str]]) -> None:
        rows[1][rows[0].index(column)] = value

    edit_csv(ws / TABLE, change)

    proc = run_cli(ws, "split")

    assert_refused(proc, str(TABLE), f"line 2 ({name}): {column} {value!r}; {accepted}")
    assert changed(before, snapshot(ws / "data/splits")) == []


@pytest.mark.parametrize(("old", "new"), [
    pytest.param("patient", "PatientID", id="renamed-column"),
    pytest.param("Cardiomegaly", "Pneumonitis", id="unknown-label"),  # a label not in dataset.json's labels
])
def test_a_wrong_csv_header_is_named_with_the_expected_one(tiny_data: Path, tmp_path: Path, old: str,
                                                           new: str) -> None:
    ws = workspace(tiny_data, tmp_path)
    before = snapshot(ws / "data/splits")

    def change(rows: list[list[str]]) -> None:
        rows[0][rows[0].index(old)] = new

    edit_csv(ws / TABLE, change)

    proc = run_cli(ws, "split")

    assert_refused(proc, str(TABLE), f"'{new}'", "expected [", f"'{old}'")
    expected = proc.stderr.split("expected", 1)[1]
    assert f"'{old}'" in expected and f"'{new}'" not in expected, proc.stderr
    assert changed(before, snapshot(ws / "data/splits")) == []


def test_a_patient_on_both_sides_of_the_official_split_is_named(tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path)
    before = snapshot(ws / "data/splits")
    rows = table_rows(ws)
    test_rows = [r for r in rows if r["official_split"] == "test"]
    counts: dict[str, int] = {}
    for row in test_rows:
        counts[row["patient"]] = counts.get(row["patient"], 0) + 1
    moved = next(r for r in test_rows if counts[r["patient"]] > 1)  # that patient keeps an image in test

    def change(lines: list[list[str]]) -> None:
        header = lines[0]
        line = next(line for line in lines[1:] if line[header.index("image")] == moved["image"])
        line[header.index("official_split")] = "train_val"

    edit_csv(ws / TABLE, change)

    proc = run_cli(ws, "split")

    assert_refused(proc, "images.csv official_split", "patient leakage", "train_val and test",
                   repr(moved["patient"]), "all images of a patient must be on one side of a split")
    assert changed(before, snapshot(ws / "data/splits")) == []


def test_a_stage_split_list_naming_an_unprocessed_image_stops_training(tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path)
    before = earlier_model(ws)
    listed = ws / "data/splits/train.txt"
    listed.write_text(listed.read_text() + f"{UNKNOWN_IMAGE}\n")

    proc = run_cli(ws, "train", "--seed", "1")

    assert_refused(proc, "data/splits/train.txt", "1 image(s) not among the processed images", UNKNOWN_IMAGE,
                   "re-run preprocess")
    assert changed(before, model_outputs(ws)) == []
    assert leftovers(ws) == []


# --------------------------------------------------------------------------------------------------------------------
# NIH's own files (ingest with `ingest.source: nih` and a local copy): refused before data/raw is touched

NIH_ENTRY = "Data_Entry_2017_v2020.csv"  # the file `ingest.nih.metadata: v2020` reads
NIH_PATIENTS = (1, 2, 3, 4)  # two images each; patient 4's are the official test list


def nih_copy(root: Path) -> Path:
    """A local copy of a small NIH release as a user holds it: extracted images/*.png, the label table, the two
    official lists and the box file, in NIH's layouts."""
    names = [f"{p:08d}_{f:03d}.png" for p in NIH_PATIENTS for f in range(2)]
    (root / "images").mkdir(parents=True)
    for i, name in enumerate(names):
        (root / "images" / name).write_bytes(encode_png(np.full((16, 16), 10 * i, dtype=np.uint8)))
    write_data_entry(pd.DataFrame({
        "image": names, "labels": ["No Finding", "Cardiomegaly|Effusion"] * (len(names) // 2),
        "follow_up": [int(n[9:12]) for n in names], "patient": [int(n[:8]) for n in names],
        "age": 50, "sex": "M", "view": "PA", "width": 1024, "height": 1024,
    }), root / NIH_ENTRY)
    (root / "train_val_list.txt").write_text("".join(f"{n}\n" for n in names if not n.startswith("00000004")))
    (root / "test_list.txt").write_text("".join(f"{n}\n" for n in names if n.startswith("00000004")))
    (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    return root


def nih_workspace(tiny_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A workspace whose data/raw came from an earlier ingest, configured to ingest a local NIH copy (returned)."""
    copy = nih_copy(tmp_path / "nih-copy")
    ws = workspace(tiny_data, tmp_path / "project", ingest={"source": "nih", "nih": {"local_path": str(copy),
                                                                                     "workers": 1}})
    return ws, copy


def test_the_nih_copy_made_here_is_ingested(tiny_data: Path, tmp_path: Path) -> None:
    """The control for the NIH cases below: unspoilt, the copy goes through ingest (so each refusal is its fault's)."""
    ws, _ = nih_workspace(tiny_data, tmp_path)
    proc = run_cli(ws, "ingest")
    assert proc.returncode == 0, shown(proc)
    assert len(table_rows(ws)) == 2 * len(NIH_PATIENTS)


def nih_refused(tiny_data: Path, tmp_path: Path, spoil_copy: Callable[[Path], None], *needles: str) -> None:
    """Spoil the NIH copy, run ingest: refused with `needles`, the earlier data/raw byte for byte as it was."""
    ws, copy = nih_workspace(tiny_data, tmp_path)
    before = snapshot(ws / RAW)
    spoil_copy(copy)

    proc = run_cli(ws, "ingest")

    assert_refused(proc, *needles)
    assert changed(before, snapshot(ws / RAW)) == []
    assert leftovers(ws) == []


def test_an_image_listed_twice_in_nihs_table_is_named(tiny_data: Path, tmp_path: Path) -> None:
    nih_refused(tiny_data, tmp_path, lambda copy: edit_csv(copy / NIH_ENTRY, lambda rows: rows.append(list(rows[1]))),
                NIH_ENTRY, "listed more than once", "00000001_000.png", "each image must have one row")


@pytest.mark.parametrize(("labels", "needles"), [
    pytest.param("Cardiomegaly|Pneumonitis",
                 ("unknown label 'Pneumonitis'", "accepted: 'No Finding'", "Pleural_Thickening"), id="unknown-label"),
    pytest.param("", ("empty 'Finding Labels'", "expected 'No Finding' or findings joined by '|'"), id="empty-labels"),
])
def test_a_bad_finding_label_is_named_with_what_is_accepted(tiny_data: Path, tmp_path: Path, labels: str,
                                                            needles: tuple[str, ...]) -> None:
    def change(rows: list[list[str]]) -> None:
        rows[1][1] = labels

    nih_refused(tiny_data, tmp_path, lambda copy: edit_csv(copy / NIH_ENTRY, change),
                NIH_ENTRY, "line 2 (00000001_000.png)", *needles)


def test_a_wrong_header_in_nihs_table_is_named_with_the_expected_one(tiny_data: Path, tmp_path: Path) -> None:
    def change(rows: list[list[str]]) -> None:
        rows[0][3] = "PatientID"

    nih_refused(tiny_data, tmp_path, lambda copy: edit_csv(copy / NIH_ENTRY, change),
                NIH_ENTRY, "unexpected CSV header", "'PatientID'", "expected NIH's Data_Entry header", "Patient ID")


def test_a_patient_on_both_sides_of_nihs_lists_is_named(tiny_data: Path, tmp_path: Path) -> None:
    def change(copy: Path) -> None:  # one of patient 4's two test images moves to train_val
        (copy / "test_list.txt").write_text("00000004_001.png\n")
        with (copy / "train_val_list.txt").open("a") as handle:
            handle.write("00000004_000.png\n")

    nih_refused(tiny_data, tmp_path, change, "NIH split lists", "patient leakage", "train_val and test", "[4]",
                "all images of a patient must be on one side of a split")


def test_a_split_list_naming_an_image_not_in_the_metadata_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    def change(copy: Path) -> None:
        with (copy / "test_list.txt").open("a") as handle:
            handle.write(f"{UNKNOWN_IMAGE}\n")

    nih_refused(tiny_data, tmp_path, change, "NIH split lists", "test names 1 image(s) not in the metadata",
                UNKNOWN_IMAGE, "every listed image must have a row in the label table")


# --------------------------------------------------------------------------------------------------------------------
# Parameters (any stage: the whole file is validated before a stage starts)

def test_a_bad_parameter_is_named_with_the_keys_accepted_there_and_nothing_runs(tiny_data: Path,
                                                                                tmp_path: Path) -> None:
    """The command line's path for every invalid params.yaml: exit 2, the parser's message, no work. What the
    message says for each kind of bad value, and for a file that is missing or not YAML, is tested once, on the
    parser itself (test_params)."""
    ws = workspace(tiny_data, tmp_path, train={"learning_rate": 0.1})
    before = snapshot(ws / "data/splits")

    proc = run_cli(ws, "split")

    assert_refused(proc, "params.yaml", "invalid parameter(s)", "train.learning_rate", "unknown parameter")
    line = next(line for line in proc.stderr.splitlines() if "train.learning_rate" in line)
    assert "'lr'" in line, line  # the likely intended key
    for key in ("epochs", "batch_size", "weight_decay", "schedule"):
        assert key in line, line
    assert proc.stdout == ""
    assert changed(before, snapshot(ws / "data/splits")) == []


# --------------------------------------------------------------------------------------------------------------------
# A non-finite loss (train): injected into the criterion, so the case does not depend on a learning rate diverging

NON_FINITE_LOSS = """
    import cxrstudy.learning.train as train

    _make_criterion = train.make_criterion
    calls = [0]

    def make_criterion(*args, **kwargs):
        criterion = _make_criterion(*args, **kwargs)

        def poisoned(logits, labels):
            loss = criterion(logits, labels)
            if logits.requires_grad:  # training steps only, not the validation loss
                calls[0] += 1
                if calls[0] == {at}:
                    return loss * float("{value}")
            return loss

        return poisoned

    train.make_criterion = make_criterion
"""


@pytest.mark.parametrize(("value", "epoch", "step"), [("nan", 2, 2), ("inf", 1, 1)])
def test_a_non_finite_training_loss_stops_naming_the_epoch_step_and_batch(
    value: str, epoch: int, step: int, tiny_data: Path, tmp_path: Path
) -> None:
    ws = workspace(tiny_data, tmp_path)
    before = earlier_model(ws)
    steps = train_steps(ws)
    at = (epoch - 1) * steps + step

    proc = run_patched(ws, NON_FINITE_LOSS.format(at=at, value=value), "train", "--seed", "1")

    assert_refused(proc, f"non-finite training loss ({value})", f"at epoch {epoch}, step {step}/{steps}",
                   "(batch of 16 images)", "lower train.lr")
    assert changed(before, model_outputs(ws)) == []
    checkpoint = ws / "checkpoints/seed_1/last.pt"
    if epoch > 1:  # the epochs before the bad step stay checkpointed
        assert torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"] == epoch - 1
    else:
        assert not checkpoint.exists()
    assert leftovers(ws) == []


NON_FINITE_VALIDATION = """
    import cxrstudy.learning.train as train

    _predict = train.predict

    def predict(*args, **kwargs):  # as if the last steps of the epoch had driven the weights to NaN
        logits, labels = _predict(*args, **kwargs)
        logits[:] = float("nan")
        return logits, labels

    train.predict = predict
"""


def test_a_non_finite_validation_loss_stops_naming_the_epoch(tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path)
    before = earlier_model(ws)

    proc = run_patched(ws, NON_FINITE_VALIDATION, "train", "--seed", "1")

    assert_refused(proc, "non-finite validation loss", "epoch 1", "lower train.lr")
    assert changed(before, model_outputs(ws)) == []
    assert leftovers(ws) == []

"""The catalogue of bad inputs (docs/robustness.md), each run end to end through the command line.

Every case runs one stage as `python -m cxrstudy --params params.yaml STAGE ...` in a copy of the tiny dataset and
checks the same three things: exit status 2, a message on stderr that names the offender and what would be
accepted (and no traceback), and the stage's earlier output left byte for byte as it was, with no temporary left
beside it. The unit tests of each check live next to its module (test_imageio, test_labels, test_split,
test_params, test_preprocess); these make sure the whole path, up to the exit status, holds.
"""

from __future__ import annotations

import csv
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.conftest import changed, leftovers, run_cli, run_patched, shown, snapshot, workspace

pytestmark = pytest.mark.slow

ENTRY = Path("data/raw/Data_Entry_2017.csv")
TRAIN_VAL_LIST = Path("data/raw/train_val_list.txt")
TEST_LIST = Path("data/raw/test_list.txt")
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


def edit_entry(ws: Path, change: Callable[[list[list[str]]], None]) -> None:
    """Rewrite Data_Entry_2017.csv after `change` edited its rows (the header is rows[0])."""
    path = ws / ENTRY
    rows = list(csv.reader(path.read_text().splitlines()))
    change(rows)
    with path.open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def first_image(ws: Path) -> str:
    return next(csv.reader((ws / ENTRY).read_text().splitlines()[1:2]))[0]


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
    "not-png": (lambda data: b"\xff\xd8\xff\xe0\x00\x10JFIF a JPEG, not a PNG", "not a PNG"),
    "missing": (None, "missing image file"),
}


def spoil(ws: Path, name: str, how: Callable[[bytes], bytes] | None) -> None:
    """Rewrite the raw archive that holds image `name` with `how(bytes)` in its place (None: without it)."""
    from cxrstudy.data.imageio import archive_paths, iter_pngs, write_archive

    for archive in archive_paths(ws / "data/raw"):
        members = list(iter_pngs(archive))
        if any(member == name for member, _ in members):
            archive.unlink()  # a new file: never a write through a link
            write_archive(archive, [(m, data if m != name or how is None else how(data)) for m, data in members
                                    if m != name or how is not None])
            return
    raise AssertionError(f"{name} is in no raw archive")


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_a_bad_image_is_named_and_the_processed_data_survive(case: str, tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path)
    before = snapshot(ws / "data/processed")
    name = first_image(ws)
    how, reason = BAD_IMAGES[case]
    spoil(ws, name, how)

    proc = run_cli(ws, "preprocess")

    assert_refused(proc, "1 unusable image(s)", name, reason)
    assert changed(before, snapshot(ws / "data/processed")) == []
    assert leftovers(ws) == []


def test_the_bad_image_message_says_what_is_accepted(tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path)
    names = sorted(row[0] for row in csv.reader((ws / ENTRY).read_text().splitlines()[1:]))[: len(BAD_IMAGES)]
    for name, (how, _) in zip(names, BAD_IMAGES.values(), strict=True):
        spoil(ws, name, how)

    proc = run_cli(ws, "preprocess")

    assert_refused(proc, f"{len(names)} unusable image(s)", *names)
    assert re.search(r"(accepted|expected|must be)[^\n]*PNG", proc.stderr), proc.stderr


# --------------------------------------------------------------------------------------------------------------------
# The label table and the split lists (split)


def test_an_image_listed_twice_is_named(tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path)
    before = snapshot(ws / "data/splits")
    name = first_image(ws)
    edit_entry(ws, lambda rows: rows.append(list(rows[1])))

    proc = run_cli(ws, "split")

    assert_refused(proc, "Data_Entry_2017.csv", "listed more than once", name, "each image must have one row")
    assert changed(before, snapshot(ws / "data/splits")) == []
    assert leftovers(ws) == []


@pytest.mark.parametrize(("labels", "needles"), [
    pytest.param("Cardiomegaly|Pneumonitis",
                 ("unknown label 'Pneumonitis'", "accepted: 'No Finding'", "Pleural_Thickening"), id="unknown-label"),
    pytest.param("", ("empty 'Finding Labels'", "expected 'No Finding' or findings joined by '|'"), id="empty-labels"),
])
def test_a_bad_finding_label_is_named_with_what_is_accepted(tiny_data: Path, tmp_path: Path, labels: str,
                                                            needles: tuple[str, ...]) -> None:
    ws = workspace(tiny_data, tmp_path)
    before = snapshot(ws / "data/splits")
    name = first_image(ws)

    def change(rows: list[list[str]]) -> None:
        rows[1][1] = labels

    edit_entry(ws, change)

    proc = run_cli(ws, "split")

    assert_refused(proc, "line 2", name, *needles)
    assert changed(before, snapshot(ws / "data/splits")) == []


def test_a_wrong_csv_header_is_named_with_the_expected_one(tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path)
    before = snapshot(ws / "data/splits")

    def change(rows: list[list[str]]) -> None:
        rows[0][3] = "PatientID"

    edit_entry(ws, change)

    proc = run_cli(ws, "split")

    assert_refused(proc, "Data_Entry_2017.csv", "unexpected CSV header", "'PatientID'",
                   "expected NIH's Data_Entry header", "Patient ID")
    assert changed(before, snapshot(ws / "data/splits")) == []


def test_a_patient_on_both_sides_of_the_split_is_named(tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path)
    before = snapshot(ws / "data/splits")
    patient_of = {row[0]: row[3] for row in csv.reader((ws / ENTRY).read_text().splitlines()[1:])}
    test = (ws / TEST_LIST).read_text().split()
    counts: dict[str, int] = {}
    for name in test:
        counts[patient_of[name]] = counts.get(patient_of[name], 0) + 1
    moved = next(name for name in test if counts[patient_of[name]] > 1)  # that patient keeps an image in test
    (ws / TEST_LIST).write_text("".join(f"{n}\n" for n in test if n != moved))
    (ws / TRAIN_VAL_LIST).write_text((ws / TRAIN_VAL_LIST).read_text() + f"{moved}\n")

    proc = run_cli(ws, "split")

    assert_refused(proc, "patient leakage", "train_val and test", str(int(patient_of[moved])),
                   "all images of a patient must be on one side of a split")
    assert changed(before, snapshot(ws / "data/splits")) == []


def test_a_split_list_naming_an_image_not_in_the_metadata_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path)
    before = snapshot(ws / "data/splits")
    (ws / TEST_LIST).write_text((ws / TEST_LIST).read_text() + f"{UNKNOWN_IMAGE}\n")

    proc = run_cli(ws, "split")

    assert_refused(proc, "test names 1 image(s) not in the metadata", UNKNOWN_IMAGE,
                   "every listed image must have a row in Data_Entry_2017.csv")
    assert changed(before, snapshot(ws / "data/splits")) == []


def test_a_stage_split_list_naming_an_unprocessed_image_stops_training(tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path)
    before = earlier_model(ws)
    listed = ws / "data/splits/train.txt"
    listed.write_text(listed.read_text() + f"{UNKNOWN_IMAGE}\n")

    proc = run_cli(ws, "train", "--seed", "1")

    assert_refused(proc, "data/splits/train.txt", UNKNOWN_IMAGE, "not in data/processed", "re-run preprocess")
    assert changed(before, model_outputs(ws)) == []
    assert leftovers(ws) == []


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

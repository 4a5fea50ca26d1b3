"""Atomic stage outputs: a stage that fails (an error, a full disk, a kill) leaves its earlier output as it was.

The atomic writers (`cxrstudy.atomic`) are tested in-process first; then whole stages through the command line,
with a full disk simulated by handing the writer `/dev/full` (every write fails with ENOSPC, as on a full disk)
in place of its temporary file, with a real full disk (a tiny tmpfs; root only, skipped elsewhere), and with a
SIGKILL in the middle of a stage.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from cxrstudy import atomic
from cxrstudy.atomic import atomic_dir, atomic_file, write_json
from cxrstudy.data.dataset import read_info
from cxrstudy.learning.model import build_model
from tests.conftest import tiny_raw, write_params
from tests.test_bad_inputs import changed, leftovers, snapshot

DEV_FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full to simulate a full disk")


# --------------------------------------------------------------------------------------------------------------------
# Helpers


def fill_disk_for(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    """From now on a temporary file whose name starts with `prefix` is written to /dev/full: its writes fail with
    ENOSPC exactly as on a full disk, while the (empty) temporary file itself exists and must be cleaned up."""
    real = tempfile.mkstemp

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real(*args, **kwargs)
        if Path(name).name.startswith(prefix):
            os.close(fd)
            fd = os.open(DEV_FULL, os.O_WRONLY)
        return fd, name

    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)


# The same, for a stage run through the command line in a fresh interpreter; `prefix` may start with the folder
# ("predictions/.seed_1.csv.tmp-": the test predictions, not predictions/val/'s file of the same name). One file at a
# time: a writer locks each temporary it makes, and two descriptors of /dev/full would wait for each other's lock.
FULL_DISK_PATCH = """
    import os, tempfile

    _mkstemp = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, name = _mkstemp(*args, **kwargs)
        if ("/" + name).endswith("/" + {prefix!r} + name[-8:]):
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, name

    tempfile.mkstemp = mkstemp
"""


def workspace(tiny_data: Path, root: Path, **override: Any) -> Path:
    shutil.copytree(tiny_data / "data", root / "data")
    write_params(root / "params.yaml", tiny_raw(**override))
    return root


def _env() -> dict[str, str]:
    return {**os.environ, "TQDM_DISABLE": "1"}


def run_cli(ws: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cxrstudy", "--params", "params.yaml", *args], cwd=ws,
                          capture_output=True, text=True, timeout=timeout, env=_env())


def patched_cli(patch: str, *args: str) -> list[str]:
    code = textwrap.dedent(patch) + "\nimport sys\nfrom cxrstudy.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return [sys.executable, "-c", code, "--params", "params.yaml", *args]


def run_patched(ws: Path, patch: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(patched_cli(patch, *args), cwd=ws, capture_output=True, text=True, timeout=timeout,
                          env=_env())


def shown(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


# --------------------------------------------------------------------------------------------------------------------
# atomic_file / write_json


def test_atomic_file_replaces_the_target_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "out" / "a.txt"
    with atomic_file(target) as handle:
        handle.write("new")
        assert not target.exists(), "visible before the block completed"
    assert target.read_text() == "new"
    assert leftovers(tmp_path) == []


def test_an_error_while_writing_a_file_keeps_the_earlier_one(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_json(target, {"earlier": True})
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="half way"), atomic_file(target) as handle:
        handle.write('{"later": ')
        raise RuntimeError("half way")
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_an_error_while_writing_a_file_that_did_not_exist_leaves_none(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.txt"
    with pytest.raises(KeyboardInterrupt), atomic_file(target) as handle:
        handle.write("partial")
        raise KeyboardInterrupt
    assert not target.exists()
    assert leftovers(tmp_path) == []


@needs_dev_full
@pytest.mark.parametrize("size", [10, 100_000], ids=["fails-at-flush", "fails-at-write"])
def test_a_full_disk_while_writing_a_file_keeps_the_earlier_one(
    size: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"earlier": True})
    before = target.read_bytes()
    fill_disk_for(monkeypatch, ".metrics.json.tmp-")
    with pytest.raises(OSError) as err:
        write_json(target, {"later": "x" * size})
    assert err.value.errno == errno.ENOSPC
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == []


@needs_dev_full
def test_a_full_disk_error_names_the_output_being_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "metrics.json"
    fill_disk_for(monkeypatch, ".metrics.json.tmp-")
    with pytest.raises(OSError) as err:
        write_json(target, {"later": True})
    assert err.value.errno == errno.ENOSPC
    assert err.value.filename == str(target)


# --------------------------------------------------------------------------------------------------------------------
# atomic_dir


def _earlier_dir(target: Path) -> dict[str, bytes]:
    target.mkdir(parents=True)
    (target / "a.txt").write_text("earlier a\n")
    (target / "sub").mkdir()
    (target / "sub" / "b.bin").write_bytes(bytes(range(256)))
    return snapshot(target)


def test_atomic_dir_replaces_the_whole_directory(tmp_path: Path) -> None:
    target = tmp_path / "data" / "out"
    _earlier_dir(target)
    with atomic_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        (tmp / "c.txt").write_text("new\n")
        assert (target / "a.txt").exists(), "the earlier output must stay in place until the new one is complete"
    assert snapshot(target) == {"c.txt": b"new\n"}  # nothing of the earlier output lingers
    assert leftovers(tmp_path) == []


def test_an_error_inside_atomic_dir_keeps_the_earlier_directory(tmp_path: Path) -> None:
    target = tmp_path / "out"
    before = _earlier_dir(target)
    with pytest.raises(ValueError, match="bad row"), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half of a new output\n")
        raise ValueError("bad row")
    assert changed(before, snapshot(target)) == []
    assert leftovers(tmp_path) == []


def test_an_error_inside_atomic_dir_with_no_earlier_output_leaves_none(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(ValueError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half\n")
        raise ValueError
    assert not target.exists()
    assert leftovers(tmp_path) == []


@needs_dev_full
def test_a_full_disk_inside_atomic_dir_keeps_the_earlier_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "splits"
    before = _earlier_dir(target)
    fill_disk_for(monkeypatch, ".summary.json.tmp-")
    with pytest.raises(OSError) as err, atomic_dir(target) as tmp:
        (tmp / "train.txt").write_text("a.png\n")
        write_json(tmp / "summary.json", {"images": 1})
    assert err.value.errno == errno.ENOSPC
    assert changed(before, snapshot(target)) == []
    assert leftovers(tmp_path) == []


def test_a_write_sweeps_the_temporaries_a_killed_writer_of_its_target_left(tmp_path: Path) -> None:
    stale_dir = tmp_path / ".out.tmp-abcd1234"
    stale_dir.mkdir()
    (stale_dir / "images.npy").write_bytes(bytes(1000))
    stale_file = tmp_path / ".last.pt.tmp-abcd1234"
    stale_file.write_bytes(bytes(1000))
    other = tmp_path / ".other.tmp-abcd1234"  # another output's: its own next write sweeps it
    other.write_bytes(b"")

    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a\n")
    with atomic_file(tmp_path / "last.pt", "wb") as handle:
        handle.write(b"checkpoint")

    assert not stale_dir.exists() and not stale_file.exists()
    assert other.exists()


def test_a_writer_killed_between_the_two_renames_of_atomic_dir_gets_the_earlier_output_back(tmp_path: Path) -> None:
    """Killed after moving the earlier output aside (`.out.old-*`) and before renaming the new one into place."""
    target = tmp_path / "out"
    before = _earlier_dir(target)
    os.replace(target, tmp_path / ".out.old-abcd1234")
    (tmp_path / ".out.tmp-abcd1234").mkdir()

    with pytest.raises(ValueError), atomic_dir(target):
        raise ValueError("the next write fails too")

    assert changed(before, snapshot(target)) == []
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------------------------------
# Whole stages, a full disk simulated with /dev/full


@needs_dev_full
@pytest.mark.slow
def test_a_full_disk_in_a_stage_is_a_message_naming_the_output(tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path)

    proc = run_patched(ws, FULL_DISK_PATCH.format(prefix=".summary.json.tmp-"), "split")

    assert proc.returncode == 1, shown(proc)
    assert "Traceback" not in proc.stderr, shown(proc)
    assert "No space left on device" in proc.stderr and "data/splits" in proc.stderr, shown(proc)
    assert "free" in proc.stderr and "re-run" in proc.stderr, shown(proc)


def random_model(ws: Path, seed: int = 1) -> None:
    """An untrained model for the dataset in `ws/data/raw` (its label names, as train records them), in
    `ws/models/seed_N/model.pt`."""
    labels = read_info(ws / "data/raw").labels
    torch.manual_seed(0)
    path = ws / f"models/seed_{seed}/model.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": build_model(len(labels), pretrained=False).state_dict(), "labels": list(labels)}, path)


# Evaluate's five outputs (cli.py's defaults for seed 1), each with an earlier version.
EVALUATE_OUTPUTS = {"metrics/eval/seed_1.json": b'{"earlier": true}\n', "metrics/localize/seed_1.json": b"{}\n",
                    "predictions/seed_1.csv": b"image,patient\n", "predictions/val/seed_1.csv": b"image,patient\n",
                    "heatmaps/seed_1.npz": b"earlier heatmaps"}


def earlier_evaluation(ws: Path) -> list[Path]:
    """An earlier version of each of evaluate's outputs in `ws`: their paths."""
    for name, data in EVALUATE_OUTPUTS.items():
        (ws / name).parent.mkdir(parents=True, exist_ok=True)
        (ws / name).write_bytes(data)
    return [ws / name for name in EVALUATE_OUTPUTS]


@needs_dev_full
@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_a_stage_with_two_outputs_replaces_both_or_neither(stage: str, tiny_data: Path, tmp_path: Path) -> None:
    """The second output fails on a full disk: the first must not have been replaced either."""
    ws = workspace(tiny_data, tmp_path, train={"epochs": 1})
    if stage == "train":
        (ws / "models/seed_1").mkdir(parents=True)
        (ws / "models/seed_1/model.pt").write_bytes(b"an earlier model")
        (ws / "plots/train").mkdir(parents=True)
        (ws / "plots/train/seed_1.csv").write_text("epoch,train_loss,val_loss,val_auroc,lr\n")
        outputs = [ws / "models/seed_1", ws / "plots/train/seed_1.csv"]
        failing = ".seed_1.csv.tmp-"  # the plots file, written after the model folder
    else:
        random_model(ws)
        outputs = earlier_evaluation(ws)
        failing = "predictions/.seed_1.csv.tmp-"  # the test predictions: after both metrics files, before the others
    before = {f"{p.relative_to(ws)}/{name}": data for p in outputs for name, data in snapshot(p).items()}

    proc = run_patched(ws, FULL_DISK_PATCH.format(prefix=failing), stage, "--seed", "1")

    assert proc.returncode != 0, shown(proc)
    assert "No space left on device" in proc.stderr, shown(proc)
    after = {f"{p.relative_to(ws)}/{name}": data for p in outputs for name, data in snapshot(p).items()}
    assert changed(before, after) == []
    assert leftovers(ws) == []


# --------------------------------------------------------------------------------------------------------------------
# A real full disk: a tmpfs just large enough for the earlier output (root only)


def _disk_just_too_small(tiny_data: Path, mount: Callable[[int], Path]) -> Path:
    """A tmpfs holding a copy of the processed data (the shards folder included), with room for about half a second
    copy."""
    earlier = tiny_data / "data/processed"
    pages = sum(-(-p.stat().st_size // 4096) if p.is_file() else 1 for p in earlier.rglob("*")) + 1
    disk = mount((pages + pages // 2) * 4096)
    shutil.copytree(earlier, disk / "processed")
    return disk


@pytest.mark.slow
def test_a_really_full_disk_is_a_message_and_leaves_the_earlier_output_and_the_disk_as_they_were(
    tiny_data: Path, tmp_path: Path, small_disk: Callable[[int], Path]
) -> None:
    ws = workspace(tiny_data, tmp_path / "ws", **OTHER_SETTINGS)  # every shard made anew: a second copy
    disk = _disk_just_too_small(tiny_data, small_disk)
    before = snapshot(disk / "processed")
    free = shutil.disk_usage(disk).free

    proc = run_cli(ws, "preprocess", "--out", str(disk / "processed"))

    assert proc.returncode == 1, shown(proc)  # once: -7, killed by SIGBUS writing into the memory map
    assert "Traceback" not in proc.stderr, shown(proc)
    assert "No space left on device" in proc.stderr and str(disk / "processed") in proc.stderr, shown(proc)
    assert changed(before, snapshot(disk / "processed")) == []
    assert leftovers(disk) == []
    assert shutil.disk_usage(disk).free == free


# --------------------------------------------------------------------------------------------------------------------
# SIGKILL in the middle of a stage

# Preprocess, stopped after two of the twelve archives are written into its new output (it says so with a file) until
# the test kills it: the kill lands in the middle of the stage, whatever the machine's speed. The archives are
# processed in the stage's own process (preprocess.workers: 1), where the patch applies.
HALTED_PREPROCESS = """
    import time
    from pathlib import Path
    import cxrstudy.data.preprocess as preprocess

    _process_archive = preprocess.process_archive
    done = []

    def process_archive(job):
        done.append(_process_archive(job))
        if len(done) == 2:
            Path("half-way").touch()
            time.sleep(600)
        return done[-1]

    preprocess.process_archive = process_archive
"""

# Other CLAHE settings than the tiny data's: preprocess makes every shard anew (a shard whose archive, settings and
# code are unchanged would be kept, linked from the earlier output, and there would be nothing to interrupt).
OTHER_SETTINGS: dict[str, Any] = {"preprocess": {"clip_limit": 3.0, "workers": 1}}


def _kill_preprocess_half_way(ws: Path) -> None:
    proc = subprocess.Popen(patched_cli(HALTED_PREPROCESS, "preprocess"), cwd=ws, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (ws / "half-way").exists():
            assert proc.poll() is None, f"preprocess ended (exit {proc.returncode}) before it was half way"
            assert time.monotonic() < deadline, "preprocess was not half way after 120 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_kill_9_in_the_middle_of_a_stage_keeps_the_earlier_output(tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path, **OTHER_SETTINGS)
    before = snapshot(ws / "data/processed")

    _kill_preprocess_half_way(ws)

    assert changed(before, snapshot(ws / "data/processed")) == []
    # What a kill can leave: the unfinished new output, hidden beside the real one (never recorded by DVC).
    left = leftovers(ws)
    assert left and all(name.startswith("data/.processed.tmp-") for name in left), left
    unfinished = ws / left[0] / "shards"
    assert len(list(unfinished.glob("*.json"))) == 2, "the kill did not land after two archives"


@pytest.mark.slow
def test_a_rerun_sweeps_what_a_killed_stage_left_behind(tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path / "ws", **OTHER_SETTINGS)
    _kill_preprocess_half_way(ws)
    assert leftovers(ws), "the kill left nothing to sweep"

    proc = run_cli(ws, "preprocess")

    assert proc.returncode == 0, shown(proc)
    assert leftovers(ws) == []
    # The output a run from scratch makes with these settings (not the earlier one, made with others).
    fresh = run_cli(ws, "preprocess", "--out", str(tmp_path / "fresh"))
    assert fresh.returncode == 0, shown(fresh)
    assert snapshot(ws / "data/processed") == snapshot(tmp_path / "fresh")
    assert snapshot(ws / "data/processed") != snapshot(tiny_data / "data/processed")


def test_write_json_is_stable(tmp_path: Path) -> None:
    """Sorted keys and a final newline: the same metrics give the same bytes (DVC hashes them)."""
    write_json(tmp_path / "a.json", {"b": 1, "a": [1.5, None]})
    assert (tmp_path / "a.json").read_text() == '{\n  "a": [\n    1.5,\n    null\n  ],\n  "b": 1\n}\n'
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": [1.5, None], "b": 1}


# --------------------------------------------------------------------------------------------------------------------
# all_or_nothing: several outputs replaced together, or none


def _earlier_outputs(root: Path) -> tuple[Path, Path, Path, dict[str, bytes]]:
    """An earlier model folder, history file and figure under `root`, and a snapshot of all three."""
    model, history, figure = root / "models/seed_1", root / "plots/train/seed_1.csv", root / "figures/roc.png"
    _earlier_dir(model)
    history.parent.mkdir(parents=True)
    history.write_text("epoch,loss\n1,0.5\n")
    figure.parent.mkdir(parents=True)
    figure.write_bytes(b"an earlier figure")
    return model, history, figure, snapshot(root)


def _write_all(model: Path, history: Path, figure: Path, hook: Callable[[], None] = lambda: None) -> None:
    with atomic.all_or_nothing() as out:
        folder = out.dir(model)
        (folder / "model.pt").write_bytes(b"new weights")
        out.file(history).write("epoch,loss\n1,0.4\n")
        out.path(figure).write_bytes(b"a new figure")
        hook()


def test_all_or_nothing_replaces_every_output_together(tmp_path: Path) -> None:
    model, history, figure, _ = _earlier_outputs(tmp_path)

    _write_all(model, history, figure)

    assert snapshot(model) == {"model.pt": b"new weights"}
    assert history.read_text() == "epoch,loss\n1,0.4\n" and figure.read_bytes() == b"a new figure"
    assert leftovers(tmp_path) == []


def test_an_error_in_an_all_or_nothing_block_replaces_none_of_its_outputs(tmp_path: Path) -> None:
    model, history, figure, before = _earlier_outputs(tmp_path)

    def fail() -> None:
        raise ValueError("the last figure failed")

    with pytest.raises(ValueError, match="last figure"):
        _write_all(model, history, figure, fail)

    assert changed(before, snapshot(tmp_path)) == []
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("flag", ["i", "a"], ids=["immutable", "append-only"])
@pytest.mark.parametrize("which", ["model", "history"])
def test_a_protected_output_is_named_before_any_work(
    which: str, flag: str, tmp_path: Path, protect: Callable[[Path, str], None]
) -> None:
    model, history, _, before = _earlier_outputs(tmp_path)
    target = model if which == "model" else history
    protect(target, flag)

    with pytest.raises(atomic.OutputError) as err:
        atomic.check_writable(history, model)

    assert err.value.filename == str(target)
    kind = "immutable" if flag == "i" else "append-only"
    assert f"{target} is {kind}" in err.value.strerror and f"chattr -{flag}" in err.value.strerror
    assert changed(before, snapshot(tmp_path)) == [] and leftovers(tmp_path) == []


@pytest.mark.parametrize("which", ["model", "history"])
def test_a_rename_refused_at_the_end_undoes_the_others_and_names_the_output(
    which: str, tmp_path: Path, protect: Callable[[Path, str], None]
) -> None:
    """The output turns immutable while the stage works: checked at the start, refused at the rename. The history is
    staged (and renamed) after the model folder: either way nothing is replaced and no temporary stays."""
    model, history, figure, before = _earlier_outputs(tmp_path)
    target = model if which == "model" else history

    with pytest.raises(atomic.OutputError) as err:
        _write_all(model, history, figure, lambda: protect(target, "i"))

    assert err.value.errno == errno.EPERM and err.value.filename == str(target)
    assert "immutable" in err.value.strerror
    assert changed(before, snapshot(tmp_path)) == []
    assert leftovers(tmp_path) == []


def test_an_output_folder_that_is_a_mount_point_is_named_before_any_work_and_at_the_rename(
    tmp_path: Path, mount_point: Callable[[Path], None]
) -> None:
    """A container volume mounted on the output folder: renaming it is EBUSY, which used to be a traceback."""
    model, history, figure, before = _earlier_outputs(tmp_path)
    mount_point(model)
    assert not os.path.ismount(model), "a bind mount on the same file system: os.path.ismount cannot tell"

    with pytest.raises(atomic.OutputError) as early:
        atomic.check_writable(history, model)
    with pytest.raises(atomic.OutputError) as late, atomic.all_or_nothing() as out:
        out.file(history).write("new")
        out.dir(model)

    for err in (early.value, late.value):
        assert err.errno == errno.EBUSY and err.filename == str(model)
        assert "mount point" in err.strerror and "mount the folder above it" in err.strerror
    assert changed(before, snapshot(tmp_path)) == [] and leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------------------------------
# Temporaries: a dead writer's are swept wherever the next run starts, a live writer's never


LIVE_WRITER = """
import sys
from pathlib import Path
from cxrstudy.atomic import all_or_nothing

model, history = map(Path, sys.argv[1:3])
with all_or_nothing() as out:
    (out.dir(model) / "model.pt").write_bytes(bytes(1 << 20))
    out.file(history).write("epoch,loss\\n")
    print("written", flush=True)
    sys.stdin.readline()
"""


def test_a_live_writers_temporaries_are_kept_and_a_killed_ones_swept(tmp_path: Path) -> None:
    model, history, _, before = _earlier_outputs(tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(model), str(history)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "written\n"
        staged = leftovers(tmp_path)
        assert len(staged) == 2, staged

        atomic.sweep_tree(tmp_path)  # what the next stage does first, while this writer still lives
        atomic.sweep_stale(model)
        atomic.sweep_stale(history)

        assert leftovers(tmp_path) == staged
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL

    atomic.sweep_tree(tmp_path)

    assert leftovers(tmp_path) == []
    assert changed(before, snapshot(tmp_path)) == []


def test_sweep_tree_puts_back_an_output_that_a_killed_writer_had_moved_aside(tmp_path: Path) -> None:
    target = tmp_path / "models" / "seed_1"
    before = _earlier_dir(target)
    os.replace(target, target.parent / ".seed_1.old-abcd1234")
    (target.parent / ".seed_1.tmp-abcd1234").mkdir()
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / ".seed_1.csv.tmp-x1y2z3w4").write_text("half")
    unrelated = tmp_path / "plots" / ".seed_1.csv.tmp-backup"  # not a name the writers give: left alone
    unrelated.write_text("mine")

    atomic.sweep_tree(tmp_path)

    assert changed(before, snapshot(target)) == []
    assert leftovers(tmp_path) == ["plots/.seed_1.csv.tmp-backup"]

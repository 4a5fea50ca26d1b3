"""Exact resume: a training run killed at any moment and run again ends bit for bit where an uninterrupted run ends.

The end-to-end tests run the train stage through the command line on the tiny dataset (3 epochs, one CPU thread,
deterministic): once uninterrupted (the reference), then killed (SIGKILL just after a random training step after
the first checkpoint; SIGTERM; SIGINT) and run again, and compare the model tensor by tensor and the history byte
for byte. `CXR_KILL_SEED=<n>` repeats a given random step. The checkpoint itself is tested in-process.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from cxrstudy import atomic, closure, numerics
from cxrstudy.learning import checkpoint
from cxrstudy.learning.checkpoint import EpochRecord, TrainState, fingerprint, load_checkpoint, save_checkpoint
from cxrstudy.learning.train import make_optimizer, make_scheduler
from cxrstudy.params import parse_params
from tests.conftest import ROOT, tiny_params, tiny_raw, write_params

EPOCHS = 3
SEED = 1
CHECKPOINT = Path(f"checkpoints/seed_{SEED}/last.pt")
MODEL = Path(f"models/seed_{SEED}/model.pt")
SUMMARY = Path(f"models/seed_{SEED}/summary.json")
PLOTS = Path(f"plots/train/seed_{SEED}.csv")


# --------------------------------------------------------------------------------------------------------------------
# End to end


def workspace(tiny_data: Path, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tiny_data / "data", root / "data")
    write_params(root / "params.yaml", tiny_raw(train={"epochs": EPOCHS}))
    return root


def train_command(patch: str = "") -> list[str]:
    """The train stage's command line; with `patch` (Python source), run after it in a fresh interpreter."""
    code = textwrap.dedent(patch) + "\nimport sys\nfrom cxrstudy.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return [sys.executable, "-c", code, "--params", "params.yaml", "train", "--seed", str(SEED)]


# Appends a line to steps.log after every optimiser step (line-buffered: each line is written when it is done).
STEP_LOG = """
    from pathlib import Path
    import cxrstudy.learning.train as train

    _make_optimizer = train.make_optimizer

    def make_optimizer(*args, **kwargs):
        opt = _make_optimizer(*args, **kwargs)
        log = Path("steps.log").open("a", buffering=1)
        opt.register_step_post_hook(lambda *_: log.write("step\\n"))
        return opt

    train.make_optimizer = make_optimizer
"""


def steps_done(ws: Path) -> int:
    log = ws / "steps.log"
    return log.read_text().count("\n") if log.exists() else 0


def steps_per_epoch(ws: Path) -> int:
    """Full batches in the training list (the last incomplete one is dropped)."""
    images = len((ws / "data/splits/train.txt").read_text().split())
    return images // tiny_params().train.batch_size


def _env() -> dict[str, str]:
    return {**os.environ, "TQDM_DISABLE": "1"}


@dataclass
class Running:
    """A train stage started in the background, its output going to two files beside the workspace."""

    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def output(self) -> tuple[str, str]:
        return self.stdout.read_text(), self.stderr.read_text()

    def shown(self) -> str:
        out, err = self.output()
        return f"exit {self.proc.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


def start_train(ws: Path, patch: str = "") -> Running:
    stdout, stderr = ws.parent / f"{ws.name}.out", ws.parent / f"{ws.name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(train_command(patch), cwd=ws, stdout=out, stderr=err, env=_env())
    return Running(proc, stdout, stderr)


def wait_until(done: Callable[[], bool], running: Running, what: str, timeout: float = 300) -> None:
    """Poll until `done()`, which what the running stage writes makes true; fail if it ends or times out first."""
    deadline = time.monotonic() + timeout
    while not done():
        if running.proc.poll() is not None:
            pytest.fail(f"training ended before {what}\n{running.shown()}")
        if time.monotonic() > deadline:
            running.proc.kill()
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(0.01)


def wait_for_checkpoint(ws: Path, running: Running, timeout: float = 300) -> None:
    wait_until((ws / CHECKPOINT).exists, running, "the first checkpoint", timeout)


def run_train(ws: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(train_command(), cwd=ws, capture_output=True, text=True, timeout=600, env=_env())


@pytest.fixture(scope="module")
def reference(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workspace of one uninterrupted run."""
    ws = workspace(tiny_data, tmp_path_factory.mktemp("resume") / "reference")
    done = run_train(ws)
    assert done.returncode == 0, done.stderr
    assert "resuming" not in done.stdout
    assert not (ws / CHECKPOINT).exists(), "a finished run keeps no checkpoint"
    return ws


def assert_same_results(ws: Path, ref: Path, note: str = "") -> None:
    """The model, tensor by tensor, and the model summary and per-epoch history, byte for byte."""
    ours = torch.load(ws / MODEL, map_location="cpu", weights_only=True)
    theirs = torch.load(ref / MODEL, map_location="cpu", weights_only=True)
    assert ours.keys() == theirs.keys(), note
    for key in ours:
        if key != "model":
            assert ours[key] == theirs[key], f"{key}: {ours[key]!r} != {theirs[key]!r} {note}"
    assert ours["model"].keys() == theirs["model"].keys(), note
    differ = [k for k in ours["model"] if not torch.equal(ours["model"][k], theirs["model"][k])]
    assert differ == [], f"{len(differ)} tensor(s) differ, e.g. {differ[:5]} {note}"
    assert (ws / SUMMARY).read_bytes() == (ref / SUMMARY).read_bytes(), note
    assert (ws / PLOTS).read_text() == (ref / PLOTS).read_text(), note


@pytest.mark.slow
def test_kill_9_at_a_random_step_then_a_rerun_ends_bit_for_bit_as_an_uninterrupted_run(
    reference: Path, tiny_data: Path, tmp_path: Path
) -> None:
    ws = workspace(tiny_data, tmp_path / "killed")
    kill_seed = int(os.environ.get("CXR_KILL_SEED", time.time_ns() % 2**32))
    steps = steps_per_epoch(ws)
    after = random.Random(kill_seed).randrange(steps + 1, EPOCHS * steps)  # after the first checkpoint, not the last
    note = f"(SIGKILL just after step {after} of {EPOCHS * steps}; CXR_KILL_SEED={kill_seed} repeats it)"

    running = start_train(ws, STEP_LOG)
    wait_until(lambda: steps_done(ws) >= after, running, f"step {after} {note}")
    running.proc.kill()
    running.proc.wait(timeout=60)
    assert running.proc.returncode == -signal.SIGKILL
    assert (ws / CHECKPOINT).is_file(), f"the kill lost the checkpoint {note}"

    resumed = run_train(ws)

    assert resumed.returncode == 0, f"{note}\n{resumed.stdout}\n{resumed.stderr}"
    assert "resuming after epoch" in resumed.stdout, note
    assert_same_results(ws, reference, note)
    assert not (ws / CHECKPOINT).exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_keep_the_checkpoint_exit_non_zero_and_a_rerun_resumes(
    signum: signal.Signals, reference: Path, tiny_data: Path, tmp_path: Path
) -> None:
    ws = workspace(tiny_data, tmp_path / "stopped")

    running = start_train(ws)
    wait_for_checkpoint(ws, running)
    running.proc.send_signal(signum)
    running.proc.wait(timeout=120)

    assert running.proc.returncode == 128 + signum, running.shown()  # 143 for SIGTERM, 130 for SIGINT
    _, err = running.output()
    assert f"training stopped by {signum.name}" in err and "re-run the stage to resume" in err, running.shown()
    assert "Traceback" not in err, running.shown()
    saved = torch.load(ws / CHECKPOINT, map_location="cpu", weights_only=True)
    assert 1 <= saved["epoch"] < EPOCHS
    assert not (ws / "models").exists() and not (ws / "plots").exists(), "an interrupted run wrote an output"
    if signum != signal.SIGTERM:
        return  # one resume after a signal is enough (the SIGKILL test resumes too)

    resumed = run_train(ws)

    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {saved['epoch']}" in resumed.stdout
    assert_same_results(ws, reference)
    assert not (ws / CHECKPOINT).exists()


# --------------------------------------------------------------------------------------------------------------------
# The checkpoint, in-process


def _tiny_training(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler,
                                       torch.Generator]:
    """A small model, optimizer and scheduler (the train stage's own factories) after a few steps."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    cfg = tiny_params().train
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps=20)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3):
        loss = model(torch.randn(4, 6, generator=gen)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model, opt, sched, gen


def _same(a: Any, b: Any) -> bool:
    """Equal, tensors exactly, through nested dicts, lists and tuples (optimizer and scheduler states)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _draws(gen: torch.Generator) -> list[Any]:
    """One number from each random source that training uses."""
    return [random.random(), float(np.random.rand()), torch.rand(3).tolist(), torch.rand(3, generator=gen).tolist()]


# What `fingerprint` returns, for the in-process checkpoint tests.
INPUTS = {"parameters": "p", "processed": "d", "splits": "s", "labels": "l", "code": "c"}


def test_a_checkpoint_restores_model_optimizer_scheduler_best_so_far_and_every_rng_state(tmp_path: Path) -> None:
    model, opt, sched, gen = _tiny_training(seed=3)
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    state = TrainState(epoch=2, best_epoch=1, best_auroc=0.61, best_model=best,
                       history=[EpochRecord(1, 0.5, 0.4, 0.61, 1e-3), EpochRecord(2, 0.3, 0.45, 0.58, 5e-4)])
    save_checkpoint(tmp_path / "last.pt", INPUTS, state, model, opt, sched, gen)
    expected = _draws(gen)

    random.seed(0)  # anything else, as in a fresh process
    np.random.seed(0)
    torch.manual_seed(0)
    model2, opt2, sched2, gen2 = _tiny_training(seed=4)
    restored = load_checkpoint(tmp_path / "last.pt", INPUTS, model2, opt2, sched2, gen2)

    assert restored is not None
    assert (restored.epoch, restored.best_epoch, restored.best_auroc) == (2, 1, 0.61)
    assert restored.history == state.history
    assert restored.best_model is not None
    assert all(torch.equal(restored.best_model[k], best[k]) for k in best)
    assert _same(model2.state_dict(), model.state_dict())
    assert _same(opt2.state_dict(), opt.state_dict())
    assert _same(sched2.state_dict(), sched.state_dict())
    assert _draws(gen2) == expected


def test_a_checkpoint_from_another_configuration_is_not_resumed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, opt, sched, gen = _tiny_training(seed=3)
    save_checkpoint(tmp_path / "last.pt", INPUTS, TrainState(epoch=1), model, opt, sched, gen)
    model2, opt2, sched2, gen2 = _tiny_training(seed=4)
    before = [t.clone() for t in model2.state_dict().values()]

    now = {**INPUTS, "parameters": "other"}
    assert load_checkpoint(tmp_path / "last.pt", now, model2, opt2, sched2, gen2, {"parameters": "the lr"}) is None
    assert "from another configuration: the lr changed since it was written; starting afresh" in \
        capsys.readouterr().out
    torch.save({"fingerprint": "an older version's"}, tmp_path / "old.pt")  # records no inputs
    assert load_checkpoint(tmp_path / "old.pt", INPUTS, model2, opt2, sched2, gen2) is None
    assert "(it records no inputs); starting afresh" in capsys.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(before, model2.state_dict().values(), strict=True))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to simulate a full disk")
def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, opt, sched, gen = _tiny_training(seed=3)
    path = tmp_path / "seed_1" / "last.pt"
    save_checkpoint(path, INPUTS, TrainState(epoch=1), model, opt, sched, gen)
    before = path.read_bytes()
    real = tempfile.mkstemp

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name  # every write fails with ENOSPC

    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)
    with pytest.raises(OSError) as err:
        save_checkpoint(path, INPUTS, TrainState(epoch=2), model, opt, sched, gen)

    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def _train_stage_params() -> list[str]:
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["do"]
    return [p for p in stage["params"] if isinstance(p, str)]


# A change to each parameter (section or key) that dvc.yaml's train stage depends on.
CHANGES: dict[str, dict[str, Any]] = {
    "train": {"train": {"lr": 0.001}},
    "numerics": {"numerics": {"threads": 2}},  # the reduction order, hence the weights
}


def test_changes_covers_every_train_stage_parameter() -> None:
    assert sorted(CHANGES) == sorted(_train_stage_params()), "add the new dvc.yaml train params to CHANGES"


def _fingerprint(params: Any, data: Path, seed: int = SEED, world_size: int = 1) -> dict[str, str]:
    return fingerprint(params, seed, data / "raw", data / "processed", data / "splits", world_size)


@pytest.fixture
def data_copy(tiny_data: Path, tmp_path: Path) -> Path:
    """A copy of the tiny data/ folder (raw, processed, splits) that a test may change."""
    shutil.copytree(tiny_data / "data", tmp_path / "data")
    return tmp_path / "data"


def _changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(k for k in before if before[k] != after[k])


@pytest.mark.parametrize("param", list(CHANGES))
def test_a_changed_train_parameter_invalidates_the_checkpoint(param: str, data_copy: Path) -> None:
    base = _fingerprint(tiny_params(), data_copy)
    assert _changed(base, _fingerprint(parse_params(tiny_raw(**CHANGES[param])), data_copy)) == ["parameters"]


def test_a_changed_validation_batch_size_invalidates_the_checkpoint(data_copy: Path) -> None:
    base = _fingerprint(tiny_params(), data_copy)
    changed = parse_params(tiny_raw(train={"val_batch_size": 32}))  # the validation that chooses the best epoch
    assert _changed(base, _fingerprint(changed, data_copy)) == ["parameters"]


def test_the_fingerprint_follows_the_seed_and_the_process_count_not_other_stages_parameters(data_copy: Path) -> None:
    params = tiny_params()
    base = _fingerprint(params, data_copy)
    assert _changed(base, _fingerprint(params, data_copy, seed=SEED + 1)) == ["parameters"]
    assert _changed(base, _fingerprint(params, data_copy, world_size=2)) == ["parameters"]
    for other in ({"report": {"bootstrap": 7}}, {"evaluate": {"batch_size": 7}}, {"split": {"seed": 9}}):
        assert _fingerprint(parse_params(tiny_raw(**other)), data_copy) == base, other


# Each input that decides a training result, and a change to its bytes that leaves every parameter as it was.
def _drop_last_training_image(data: Path) -> None:
    train = data / "splits/train.txt"
    train.write_text("".join(f"{n}\n" for n in train.read_text().split()[:-1]))


def _relabel_first_image(data: Path) -> None:
    table = data / "raw/images.csv"
    header, first, *rest = table.read_text().splitlines(keepends=True)
    column = header.rstrip("\n").split(",").index("Hernia")
    cells = first.rstrip("\n").split(",")
    cells[column] = "0" if cells[column] == "1" else "1"
    table.write_text(header + ",".join(cells) + "\n" + "".join(rest))


def _another_uncertainty_policy(data: Path) -> None:
    info = data / "raw/dataset.json"
    info.write_text(info.read_text().replace('"uncertain": "zeros"', '"uncertain": "ones"', 1))


def _shard(data: Path) -> Path:
    return sorted((data / "processed/shards").glob("*.npy"))[-1]


def _replace_a_shard_by_a_copy(data: Path) -> None:
    """The same bytes in a new file, as a restore from a cache or a re-processed shard would be."""
    shard = _shard(data)
    copy = shard.with_name("copy.tmp")
    copy.write_bytes(shard.read_bytes())
    copy.replace(shard)


def _reprocess_one_archive(data: Path) -> None:
    record = _shard(data).with_suffix(".json")
    record.write_text(record.read_text().replace('"key": "', '"key": "0', 1))


DATA_CHANGES = {
    "splits": _drop_last_training_image,
    "labels": _relabel_first_image,
    "policy": _another_uncertainty_policy,
    "shard record": _reprocess_one_archive,
}
DIGEST_OF = {"splits": "splits", "labels": "labels", "policy": "labels", "shard record": "processed"}


@pytest.mark.parametrize("change", list(DATA_CHANGES))
def test_changed_data_invalidates_the_checkpoint(change: str, data_copy: Path) -> None:
    """A new split list, relabelled rows, another uncertainty policy, a shard made from another archive: each with the
    same parameters must not resume a checkpoint trained on other data."""
    base = _fingerprint(tiny_params(), data_copy)
    DATA_CHANGES[change](data_copy)
    assert _changed(base, _fingerprint(tiny_params(), data_copy)) == [DIGEST_OF[change]]


_opened: list[str] | None = None


def _record_opens(event: str, args: tuple[Any, ...]) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        _opened.append(os.fsdecode(args[0]))


def test_the_processed_images_are_fingerprinted_without_reading_them(data_copy: Path) -> None:
    """At NIH's scale a hash of the images cost ~5.6 GB of reading per seed at every start; the shards are known by
    their records (archive MD5, settings, code)."""
    global _opened
    sys.addaudithook(_record_opens)  # an audit hook stays for the session; it records only while _opened is a list
    _opened = []
    try:
        first = _fingerprint(tiny_params(), data_copy)
        opened = list(_opened)
    finally:
        _opened = None
    assert opened, "the audit hook saw nothing"
    assert not [name for name in opened if name.endswith(".npy")], opened
    assert first == _fingerprint(tiny_params(), data_copy)  # and it is stable


def test_the_same_data_elsewhere_resumes(data_copy: Path, tmp_path: Path) -> None:
    """A shard restored from DVC's cache or pulled on another runner (same records, other files) resumes: the
    fingerprint knows the shards by their records (archive MD5, settings, code), not by where their files lie. An edit
    of a shard in place is DVC's to see (`dvc status`: data/processed modified)."""
    base = _fingerprint(tiny_params(), data_copy)
    _replace_a_shard_by_a_copy(data_copy)
    assert _fingerprint(tiny_params(), data_copy) == base
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(data_copy, elsewhere)
    assert _fingerprint(tiny_params(), elsewhere) == base


def test_the_test_list_is_not_part_of_the_training_fingerprint(data_copy: Path) -> None:
    base = _fingerprint(tiny_params(), data_copy)
    test = data_copy / "splits/test.txt"
    test.write_text("".join(f"{n}\n" for n in test.read_text().split()[:-1]))
    assert _fingerprint(tiny_params(), data_copy) == base


def test_changed_code_invalidates_the_checkpoint(data_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = _fingerprint(tiny_params(), data_copy)
    real = numerics.versions
    monkeypatch.setattr(numerics, "versions", lambda: {**real(), "torch": "0.0.1"})
    assert _changed(base, _fingerprint(tiny_params(), data_copy)) == ["code"]
    monkeypatch.setattr(numerics, "versions", real)
    try:
        for n, module in enumerate(("metrics.py", "learning/train.py", "reporting/report.py")):
            copy = _package_copy(PACKAGE, data_copy.parent / f"copy{n}", module)
            monkeypatch.setattr(closure, "PACKAGE", copy)
            monkeypatch.setattr(checkpoint, "SOURCES", copy)
            closure.stage_closure.cache_clear()
            # the core and the training loop are the train stage's code; the report is not: no retrain follows it
            expected = [] if module.startswith("reporting/") else ["code"]
            assert _changed(base, _fingerprint(tiny_params(), data_copy)) == expected, module
    finally:
        monkeypatch.undo()
        closure.stage_closure.cache_clear()


PACKAGE = closure.PACKAGE


def _package_copy(package: Path, root: Path, changed: str) -> Path:
    """A copy of the package's sources under `root`, with one comment added to its file `changed`."""
    copy = root / "cxrstudy"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / changed).open("a") as handle:
        handle.write("\n# changed\n")
    return copy


def test_the_code_digest_covers_the_train_stages_own_imports_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model file records the code version: the files dvc.yaml lists for train (its import closure, kept equal
    to its deps by test_dvc_graph), so a reporting change neither changes a retrained model's bytes nor blocks a
    resume, while a change to the training code does."""
    digested: list[list[Path]] = []
    real = checkpoint._digest
    monkeypatch.setattr(checkpoint, "_digest", lambda files, root: digested.append(list(files)) or real(files, root))
    checkpoint.code_digest()
    (files,) = digested
    package = closure.PACKAGE
    assert set(files) == closure.stage_closure("train")
    assert package / "learning/train.py" in files and package / "learning/losses.py" in files
    assert package / "data/shards.py" in files and package / "closure.py" in files
    assert not [f for f in files if f.is_relative_to(package / "reporting")]
    assert package / "learning/evaluate.py" not in files

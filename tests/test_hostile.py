"""A hostile run, repeated: the failures found by killing, signalling, filling disks, locking folders, planting
secrets and training weak models against a small copy of the pipeline. Each section is one item of that run, and
each test names what used to break (`docs/robustness.md` lists them with the message a user now sees).

Tests that need a real full disk, or a read-only folder as root, mount a tmpfs (or a read-only bind mount) and are
skipped where that is not possible; as another user, a read-only folder is a `chmod`.
"""

from __future__ import annotations

import errno
import http.server
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from cxrstudy.cli import OUTPUT_FOLDERS
from cxrstudy.data import nih
from cxrstudy.data.shards import SHARDS_DIR, load_processed
from cxrstudy.errors import InputError, Interrupted, shown_address
from cxrstudy.learning import monitoring
from cxrstudy.learning.evaluate import compute_metrics, save_predictions
from cxrstudy.learning.train import (
    TrainState,
    make_optimizer,
    make_scheduler,
    save_checkpoint,
    sigmoid,
    signals_to_exceptions,
)
from cxrstudy.params import load_params, parse_params
from cxrstudy.reporting import report
from tests.conftest import (
    REPORTS,
    ROOT,
    cli,
    copy_project,
    leftovers,
    patched_cli,
    run_cli,
    run_patched,
    section,
    sh,
    shown,
    skip_unless_chattr,
    skip_unless_mount,
    snapshot,
    tiny_params,
    tiny_raw,
    workspace,
    write_params,
)
from tests.synthetic import NIH_NAMES, write_coverage, write_split
from tests.test_atomic import earlier_evaluation, random_model
from tests.test_monitoring import SlowGateway
from tests.test_resume import (
    CHECKPOINT,
    assert_same_results,
    run_train,
    start_train,
    wait_for_checkpoint,
    wait_until,
)
from tests.test_resume import workspace as train_workspace


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], None]]:
    """`make(folder)` makes `folder` unwritable for this user: a read-only bind mount as root, `chmod` otherwise."""
    undo: list[Callable[[], object]] = []

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            folder.chmod(0o555)
            undo.append(lambda: folder.chmod(0o755))
        else:
            if not sys.platform.startswith("linux") or shutil.which("mount") is None:
                pytest.skip("a read-only folder for root needs a bind mount (Linux, mount)")
            bound = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
            if bound.returncode != 0:
                pytest.skip(f"cannot bind-mount a folder here: {bound.stderr.strip()}")
            undo.append(lambda: subprocess.run(["umount", str(folder)], capture_output=True))
            subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        assert not os.access(folder, os.W_OK)

    yield make
    for step in reversed(undo):
        step()


# --------------------------------------------------------------------------------------------------------------------
# 1. Resume on changed data: a checkpoint is resumed only on the inputs it was trained on
# (the fingerprint itself, part by part, is tested in test_resume.py)


def _regenerate_data(ws: Path, **override: Any) -> None:
    """Re-run ingest, preprocess and split through the command line with changed parameters, as `dvc repro` would."""
    write_params(ws / "params.yaml", tiny_raw(train={"epochs": 3}, **override))
    for stage in (["ingest", "--workers", "1"], ["preprocess"], ["split"]):
        done = run_cli(ws, *stage)
        assert done.returncode == 0, shown(done)


@pytest.mark.slow
def test_a_run_killed_then_rerun_on_changed_data_starts_afresh_and_ends_as_a_fresh_run(
    tiny_data: Path, tmp_path: Path
) -> None:
    """Used to say "resuming after epoch 1" on the new split, and end on a model trained on two different ones."""
    ws = train_workspace(tiny_data, tmp_path / "killed")
    running = start_train(ws)
    wait_for_checkpoint(ws, running)
    running.proc.kill()
    running.proc.wait(timeout=60)
    train_list = (ws / "data/splits/train.txt").read_text()
    _regenerate_data(ws, ingest={"phantom": {"test_fraction": 0.3}})  # only ingest parameters change
    assert (ws / "data/splits/train.txt").read_text() != train_list

    rerun = run_train(ws)

    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" not in rerun.stdout
    assert "starting afresh" in rerun.stdout and "the training or validation list" in rerun.stdout, rerun.stdout
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copytree(ws / "data", fresh / "data")
    shutil.copy(ws / "params.yaml", fresh / "params.yaml")
    assert run_train(fresh).returncode == 0
    assert_same_results(ws, fresh)


# --------------------------------------------------------------------------------------------------------------------
# 2. A full disk during torch.save: the checkpoint and the model file


def _checkpoint_parts(width: int) -> tuple[torch.nn.Module, Any, Any, torch.Generator]:
    """A model of about width² float32 weights, its optimizer, scheduler and loader generator."""
    model = torch.nn.Linear(width, width)
    cfg = tiny_params().train
    opt = make_optimizer(model, cfg)
    return model, opt, make_scheduler(opt, cfg, steps=4), torch.Generator()


INPUTS = {"parameters": "p", "processed": "d", "splits": "s", "labels": "l", "code": "c"}


def test_a_disk_filling_up_while_checkpointing_is_named_and_keeps_the_previous_checkpoint(
    small_disk: Callable[[int], Path]
) -> None:
    """torch's zip writer, when the disk fills in the middle of a write, used to hide the ENOSPC:
    `RuntimeError ... unexpected pos 704 vs 598`, and no name."""
    disk = small_disk(1 << 20)
    path = disk / "seed_1" / "last.pt"
    save_checkpoint(path, INPUTS, TrainState(epoch=1), *_checkpoint_parts(64))
    before = path.read_bytes()

    with pytest.raises(OSError) as err:  # about 1 MB of weights: the disk fills part way through
        save_checkpoint(path, INPUTS, TrainState(epoch=2), *_checkpoint_parts(512))

    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
    assert path.read_bytes() == before
    assert leftovers(disk) == []


@pytest.mark.slow
@pytest.mark.parametrize("where", ["checkpoints"])
def test_a_really_full_disk_under_the_train_stage_is_one_line_naming_the_output(
    where: str, tiny_data: Path, tmp_path: Path, small_disk: Callable[[int], Path]
) -> None:
    """The checkpoint (after epoch 1) or the model folder (at the end) on a disk with 256 KiB left."""
    ws = workspace(tiny_data, tmp_path / "ws")
    disk = small_disk(256 << 10)
    target = disk / "seed_1"
    free = shutil.disk_usage(disk).free

    done = run_cli(ws, "train", "--seed", "1", f"--{where}", str(target))

    assert done.returncode == 1, shown(done)
    assert "Traceback" not in done.stderr, shown(done)
    named = target / "last.pt" if where == "checkpoints" else target
    assert f"error: {named}: No space left on device while writing it" in done.stderr, shown(done)
    assert leftovers(disk) == [] and not named.exists()
    assert shutil.disk_usage(disk).free == free


# --------------------------------------------------------------------------------------------------------------------
# 3. A read-only output folder


def test_a_read_only_data_folder_names_the_output_not_its_temporary(
    tiny_data: Path, tmp_path: Path, read_only: Callable[[Path], None]
) -> None:
    """Used to be a traceback: `PermissionError ... data/.splits.tmp-...`."""
    ws = workspace(tiny_data, tmp_path / "ws")
    before = snapshot(ws / "data/splits")
    read_only(ws / "data")

    done = run_cli(ws, "split")

    assert done.returncode == 1, shown(done)
    assert "Traceback" not in done.stderr and ".tmp-" not in done.stderr, shown(done)
    assert re.search(r"^error: data/splits: cannot write this output there \((Read-only file system|Permission "
                     r"denied)\);.*make its folder writable", done.stderr, flags=re.MULTILINE), shown(done)
    assert snapshot(ws / "data/splits") == before


def test_train_with_a_read_only_out_folder_stops_before_the_first_epoch(
    tiny_data: Path, tmp_path: Path, read_only: Callable[[Path], None]
) -> None:
    """Used to train every epoch, then fail writing the model."""
    ws = workspace(tiny_data, tmp_path / "ws")
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(locked)

    done = run_cli(ws, "train", "--seed", "1", "--out", str(locked / "seed_1"))

    assert done.returncode == 1, shown(done)
    assert f"error: {locked / 'seed_1'}: cannot write this output there" in done.stderr, shown(done)
    assert "epoch" not in done.stdout and "Traceback" not in done.stderr, shown(done)
    assert not (ws / "checkpoints").exists() and not (ws / "plots").exists()


def _earlier_training(ws: Path) -> dict[str, bytes]:
    """An earlier model folder and history for seed 1 in `ws`, and a snapshot of both."""
    (ws / "models/seed_1").mkdir(parents=True)
    (ws / "models/seed_1/model.pt").write_bytes(b"an earlier model")
    (ws / "plots/train").mkdir(parents=True)
    (ws / "plots/train/seed_1.csv").write_text("epoch,train_loss,val_loss,val_auroc,lr\n1,0.5,0.5,0.6,0.001\n")
    return {**snapshot(ws / "models"), **snapshot(ws / "plots")}


def _training_outputs(ws: Path) -> dict[str, bytes]:
    return {**snapshot(ws / "models"), **snapshot(ws / "plots")}


@pytest.mark.slow
def test_an_immutable_model_folder_stops_train_before_the_first_epoch(
    tiny_data: Path, tmp_path: Path, protect: Callable[[Path, str], None]
) -> None:
    """`chattr +i models/seed_12`: every epoch trained (517 s), then "nothing was replaced", though the history had
    been, and a 28 MB models/.seed_12.tmp-* stayed."""
    ws = workspace(tiny_data, tmp_path / "ws")
    before = _earlier_training(ws)
    protect(ws / "models/seed_1", "i")

    done = run_cli(ws, "train", "--seed", "1")

    assert done.returncode == 1, shown(done)
    assert "error: models/seed_1: cannot write this output there (Operation not permitted: models/seed_1 is " \
           "immutable (lsattr -d shows it; chattr -i undoes it))" in done.stderr, shown(done)
    assert "epoch" not in done.stdout and "Traceback" not in done.stderr, shown(done)
    assert _training_outputs(ws) == before
    assert leftovers(ws) == []


# Train as usual, but its model folder turns immutable (or becomes a mount point) once the epochs are done: the
# check at the start passes, the rename at the end is refused.
PROTECTED_AT_THE_END = """
    import subprocess
    import cxrstudy.learning.train as train

    _write_outputs = train._write_outputs

    def write_outputs(state, seed, fp, labels, out_dir, *args):
        subprocess.run({command!r} + [str(out_dir)], check=True)
        return _write_outputs(state, seed, fp, labels, out_dir, *args)

    train._write_outputs = write_outputs
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["immutable", "mount-point"])
def test_a_model_folder_refused_at_the_end_replaces_nothing_and_leaves_no_temporary(
    how: str, tiny_data: Path, tmp_path: Path
) -> None:
    """The model folder could not be renamed into place: the history used to be replaced all the same, the
    message said "nothing was replaced", the model's temporary stayed (28 MB), and a mount point was a traceback."""
    ws = workspace(tiny_data, tmp_path / "ws")
    before = _earlier_training(ws)
    model = ws / "models/seed_1"
    if how == "immutable":
        skip_unless_chattr(tmp_path)
        command = ["chattr", "+i"]
    else:
        skip_unless_mount(tmp_path)
        command = ["mount", "--bind", str(model)]
    try:
        done = run_patched(ws, PROTECTED_AT_THE_END.format(command=command), "train", "--seed", "1")
    finally:
        subprocess.run(["chattr", "-i", str(model)] if how == "immutable" else ["umount", str(model)],
                       capture_output=True)

    assert done.returncode == 1, shown(done)
    assert "epoch 2/2" in done.stdout, shown(done)
    why = "Operation not permitted: models/seed_1 is immutable" if how == "immutable" else \
        "Device or resource busy: it is a mount point"
    assert f"error: models/seed_1: cannot write this output there ({why}" in done.stderr, shown(done)
    assert "Traceback" not in done.stderr, shown(done)
    assert _training_outputs(ws) == before, "an output was replaced"
    assert leftovers(ws) == []
    assert (ws / CHECKPOINT).is_file(), "the finished training is kept for the re-run"


@pytest.mark.slow
def test_an_output_folder_that_is_a_mount_point_stops_train_before_the_first_epoch(
    tiny_data: Path, tmp_path: Path, mount_point: Callable[[Path], None]
) -> None:
    """An output folder that is a container volume: renaming it is EBUSY, which was a traceback at the end."""
    ws = workspace(tiny_data, tmp_path / "ws")
    before = _earlier_training(ws)
    mount_point(ws / "models/seed_1")

    done = run_cli(ws, "train", "--seed", "1")

    assert done.returncode == 1, shown(done)
    assert "error: models/seed_1: cannot write this output there (Device or resource busy: it is a mount point (a " \
           "container volume, say), and an output is replaced whole by a rename; mount the folder above it instead)" \
           in done.stderr, shown(done)
    assert "epoch" not in done.stdout and "Traceback" not in done.stderr, shown(done)
    assert _training_outputs(ws) == before and leftovers(ws) == []


# Evaluate as usual, but its metrics file turns immutable once the metrics are computed.
METRICS_PROTECTED_AT_THE_END = """
    import subprocess
    import cxrstudy.learning.evaluate as evaluate

    _compute_metrics = evaluate.compute_metrics

    def compute_metrics(*args, **kwargs):
        subprocess.run(["chattr", "+i", "metrics/eval/seed_1.json"], check=True)
        return _compute_metrics(*args, **kwargs)

    evaluate.compute_metrics = compute_metrics
"""


@pytest.mark.slow
def test_evaluate_with_a_metrics_file_refused_at_the_end_replaces_no_prediction_and_names_it(
    tiny_data: Path, tmp_path: Path
) -> None:
    """Evaluate used to replace both prediction files, then fail on the metrics file, say "nothing was replaced",
    and could name another file than the one that failed."""
    ws = workspace(tiny_data, tmp_path / "ws")
    random_model(ws)
    outputs = earlier_evaluation(ws)  # the metrics, the localisation metrics, both predictions, the heatmaps
    before = {str(p): p.read_bytes() for p in outputs}
    skip_unless_chattr(tmp_path)

    try:
        done = run_patched(ws, METRICS_PROTECTED_AT_THE_END, "evaluate", "--seed", "1")
    finally:
        subprocess.run(["chattr", "-i", str(ws / "metrics/eval/seed_1.json")], capture_output=True)

    assert done.returncode == 1, shown(done)
    assert "error: metrics/eval/seed_1.json: cannot write this output there (Operation not permitted: " \
           "metrics/eval/seed_1.json is immutable" in done.stderr, shown(done)
    assert "predictions" not in done.stderr and "heatmaps" not in done.stderr, shown(done)
    assert "Traceback" not in done.stderr, shown(done)
    assert {str(p): p.read_bytes() for p in outputs} == before
    assert leftovers(ws) == []


# --------------------------------------------------------------------------------------------------------------------
# 4. Signals are never swallowed by monitoring


def test_a_signal_while_a_push_hangs_goes_through_at_once_and_nothing_more_is_pushed() -> None:
    """The push's `except Exception` used to turn SIGTERM into a warning; then `close()` pushed again, and the
    signal waited a whole push timeout more."""
    gateway = SlowGateway(None, on_push=lambda: os.kill(os.getpid(), signal.SIGTERM))  # silent, once a push is in
    monitor = monitoring.PrometheusMonitor(section("monitor", pushgateway=gateway.address, push_timeout_s=120.0),
                                           seed=1)
    try:
        with pytest.raises(Interrupted), signals_to_exceptions():
            monitor.epoch_end(epoch=1, val_loss=0.5, val_auroc=0.6)
            monitor.close()  # the last push waits behind the hanging one: the signal ends the wait
        monitor.abort()
        assert monitor.flush(timeout=10), "the push in flight was not cut by abort"
    finally:
        gateway.close()
    assert gateway.pushes == 1 and gateway.unanswered == 1, "pushed after the signal, or the push was not cut"


@pytest.mark.slow
@pytest.mark.parametrize("answer", [None, 2.0], ids=["silent", "one-byte-every-2-s"])
def test_sigterm_while_a_push_hangs_stops_training_at_once_with_its_checkpoint(
    answer: float | None, tiny_data: Path, tmp_path: Path
) -> None:
    """A gateway answering one byte every 2 s held the end of epoch 1 forever (the timeout was per receive) and
    SIGTERM for 45 s and more; a silent one held the exit a whole push_timeout_s, because `close()` pushed again,
    with the message "training continues"."""
    gateway = SlowGateway(answer)
    ws = train_workspace(tiny_data, tmp_path / "ws")
    write_params(ws / "params.yaml", tiny_raw(train={"epochs": 4},
                                              monitor={"pushgateway": gateway.address, "push_timeout_s": 120.0}))
    try:
        running = start_train(ws)
        wait_until(lambda: _checkpoint_epoch(ws) >= 2, running, "epoch 2's checkpoint while the first push hangs")
        assert gateway.pushes == 1 and not gateway.cut.is_set(), "the first push is not in flight"
        running.proc.send_signal(signal.SIGTERM)
        running.proc.wait(timeout=30)  # before: a whole push_timeout_s (120 s) and more
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
        gateway.close()

    assert running.proc.returncode == 128 + signal.SIGTERM, running.shown()
    _, err = running.output()
    assert "training stopped by SIGTERM" in err and "Interrupted" not in err, running.shown()
    assert "training continues" not in err and "Traceback" not in err, running.shown()
    assert gateway.pushes == 1, "a push after the signal"
    assert 2 <= _checkpoint_epoch(ws) < 4
    assert not (ws / "models").exists()


def _checkpoint_epoch(ws: Path) -> int:
    try:
        return int(torch.load(ws / CHECKPOINT, map_location="cpu", weights_only=True)["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0


# --------------------------------------------------------------------------------------------------------------------
# 5. No secret is echoed


SECRET = "s3cr3t"
ADDRESSES = {
    "userinfo": f"user:{SECRET}@gw.example:9091",
    "userinfo-with-scheme": f"https://user:{SECRET}@gw.example:9091",
    "token-in-path": f"gw.example:9091/{SECRET}",
    "token-in-path-with-scheme": f"https://gw.example/{SECRET}/",
    "token-in-query": f"gw.example:9091?token={SECRET}",
    "token-in-fragment": f"https://gw.example/#{SECRET}",
    "bad-port": f"user:{SECRET}@gw.example:port",
}


@pytest.mark.parametrize("address", list(ADDRESSES.values()), ids=list(ADDRESSES))
@pytest.mark.parametrize("where", ["monitor.pushgateway", "ingest.nih.base_url", "ingest.nih.metadata_url"])
def test_a_refused_address_never_echoes_a_secret(where: str, address: str) -> None:
    """Redaction used to work only after `://`, and a token in a path or a query was echoed as given."""
    *sections, key = where.split(".")
    override: dict[str, Any] = {key: address}
    for name in reversed(sections):
        override = {name: override}
    raw = tiny_raw(**override)
    try:
        parse_params(raw)
    except InputError as err:
        assert SECRET not in str(err), str(err)
        assert where in str(err)
    else:
        assert where == "ingest.nih.base_url" or where == "ingest.nih.metadata_url", "a bad gateway was accepted"
        assert "?" not in address and "#" not in address and "@" not in address  # a path is a mirror's business


@pytest.mark.parametrize("value", [[f"user:{SECRET}@gw.example:9091"], {"url": f"https://gw.example/{SECRET}"}],
                         ids=["list", "mapping"])
def test_a_value_of_the_wrong_shape_is_not_echoed(value: object) -> None:
    with pytest.raises(InputError) as err:
        parse_params(tiny_raw(monitor={"pushgateway": value}))
    assert SECRET not in str(err.value) and "monitor.pushgateway" in str(err.value)


BRACKETED = "http://alice:S[3cr3t]PW@127.0.0.1:9091"  # urlsplit's own error quoted the part in brackets


@pytest.mark.parametrize("where", ["monitor.pushgateway", "ingest.nih.base_url", "ingest.nih.metadata_url"])
def test_a_password_with_brackets_is_never_echoed(where: str, tmp_path: Path) -> None:
    """Used to be refused with "'3cr3t' does not appear to be an IPv4 or IPv6 address"."""
    section_name, *middle, key = where.split(".")
    raw = tiny_raw()
    node = raw[section_name]
    for name in middle:
        node = node[name]
    node[key] = BRACKETED
    write_params(tmp_path / "params.yaml", raw)

    done = run_cli(tmp_path, "check-params")

    assert done.returncode == 2, shown(done)
    assert where in done.stderr and "must not embed credentials" in done.stderr, shown(done)
    for part in ("3cr3t", "S[", "alice"):
        assert part not in done.stdout + done.stderr, shown(done)


def test_a_bracketed_address_without_a_password_is_refused_without_echoing_it() -> None:
    with pytest.raises(InputError) as err:
        parse_params(tiny_raw(ingest={"nih": {"base_url": "https://[t0ken]/images/"}}))
    assert "t0ken" not in str(err.value) and "ingest.nih.base_url: Value error, the address is not a valid address" \
        in str(err.value)
    assert "3cr3t" not in shown_address(BRACKETED) and "alice" not in shown_address(BRACKETED, keep_name=True)


def test_shown_address_keeps_scheme_host_port_and_with_keep_name_the_file_name() -> None:
    from cxrstudy.errors import shown_address

    assert shown_address(f"https://user:{SECRET}@Mirror.example:8443/{SECRET}/images_001.tar.gz?sig={SECRET}",
                         keep_name=True) == "https://mirror.example:8443/<…>/images_001.tar.gz"
    assert shown_address(f"gw.example:9091/{SECRET}") == "gw.example:9091/<rest not shown>"
    assert shown_address("http://127.0.0.1:9091") == "http://127.0.0.1:9091"


class _Answer(http.server.BaseHTTPRequestHandler):
    status = 404

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize("status", [404, 503], ids=["refused", "retries-run-out"])
def test_a_failed_download_does_not_echo_a_token_in_the_mirror_path(
    status: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    handler = type("Answer", (_Answer,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{SECRET}/images_001.tar.gz"
        cfg = section("ingest", "nih", retries=0, backoff_s=0.0, timeout_s=10.0)
        with pytest.raises(InputError) as err:
            nih.download(url, tmp_path / "images_001.tar.gz", None, cfg)
    finally:
        server.shutdown()
        server.server_close()
    assert SECRET not in str(err.value) and "images_001.tar.gz" in str(err.value), str(err.value)


# --------------------------------------------------------------------------------------------------------------------
# 6. The report works for any valid model


def _weak_study(root: Path) -> Any:
    """One seed whose probabilities are all below 1e-7 (a model after one epoch, say), in the pipeline's files."""
    rng = np.random.default_rng(0)
    n = 300
    labels = (rng.random((n, len(NIH_NAMES))) < 0.15).astype(np.float32)
    labels[0] = 1
    logits = (-20.0 + labels * 0.5 + rng.normal(0, 0.5, labels.shape)).astype(np.float32)
    probs = sigmoid(logits)
    assert probs.max() < 1e-7
    val = (labels[:150], probs[:150])
    metrics = compute_metrics(1, 0.04, val, (labels, probs), names=NIH_NAMES)
    (root / "metrics/eval").mkdir(parents=True)
    (root / "metrics/eval/seed_1.json").write_text(json.dumps(metrics))
    names = [f"{i:08d}_000.png" for i in range(n)]
    save_predictions(root / "predictions/seed_1.csv", names, np.arange(n) // 2 + 1000, labels, probs, NIH_NAMES)
    save_predictions(root / "predictions/val/seed_1.csv", names[:150], np.arange(150) // 2 + 5000, *val, NIH_NAMES)
    # The split's lists, which the report checks the predictions against.
    write_split(root / "data/splits", {"test": (names, [str(p) for p in np.arange(n) // 2 + 1000]),
                                       "val": (names[:150], [str(p) for p in np.arange(150) // 2 + 5000])})
    return metrics


def test_the_report_accepts_a_weak_model_whose_probabilities_are_tiny(tmp_path: Path) -> None:
    """Predictions rounded to 7 decimals made ties of tiny probabilities: "disagree on Cardiomegaly AUROC"."""
    metrics = _weak_study(tmp_path)
    out = tmp_path / "reports/report.md"

    params = tiny_params(seeds=[1], report={"bootstrap": 20})
    report.run(params, tmp_path / "metrics/eval",
               tmp_path / "data/splits", out, predictions_dir=tmp_path / "predictions", history_dir=None,
               raw_dir=None, processed_dir=None, figures_dir=None, plots_dir=None,
               summary_file=tmp_path / "metrics/report.json",
               inputs=report.Inputs(write_coverage(tmp_path / "metrics/coverage.json", params)))

    assert f"{metrics['auroc_mean']:.4f}" in out.read_text()


def test_the_agreement_check_still_catches_a_small_disagreement(tmp_path: Path) -> None:
    """The check compares like with like (6 decimals), so it is no looser than before: 1e-4 is a disagreement."""
    metrics = _weak_study(tmp_path)
    auroc = {name: (v if v is None else v + 1e-4) for name, v in metrics["auroc"].items()}
    (tmp_path / "metrics/eval/seed_1.json").write_text(json.dumps({**metrics, "auroc": auroc}))
    with pytest.raises(InputError, match=r"seed_1\.csv and .*seed_1\.json disagree"):
        report.run(tiny_params(seeds=[1]), tmp_path / "metrics/eval", tmp_path / "data/splits",
                   tmp_path / "report.md", predictions_dir=tmp_path / "predictions", history_dir=None, raw_dir=None,
                   processed_dir=None, figures_dir=None, plots_dir=None, summary_file=None,
                   inputs=report.Inputs(write_coverage(tmp_path / "coverage.json", tiny_params(seeds=[1]))))


@pytest.mark.slow
def test_one_epoch_then_evaluate_then_report_through_the_command_line(tiny_data: Path, tmp_path: Path) -> None:
    """`train.epochs: 1`, as the README suggests for a quicker look, used to stop the report every time."""
    ws = workspace(tiny_data, tmp_path / "ws", seeds=[1], train={"epochs": 1})
    for stage in (["train", "--seed", "1"], ["evaluate", "--seed", "1"], ["coverage"], ["report"]):
        done = run_cli(ws, *stage)
        assert done.returncode == 0, shown(done)
    assert (ws / "reports/report.md").is_file()


# --------------------------------------------------------------------------------------------------------------------
# 7. Smaller gaps
# `epochs: true` and repeated keys: test_params.py (test_no_silent_coercion_and_densenet_sized_inputs,
# test_a_key_given_twice_is_refused_with_its_lines); an unknown key when nothing is stale, and what DVC's checkout
# and run-cache bring back: test_pipeline.py.


def _foreach_items(stage: dict[str, Any]) -> list[dict[str, str]]:
    """The values a stage's `${...}` take, once per item of its `foreach`: a mapping's items (`internal: {raw:
    data/raw}`: `${key}`, `${item.raw}`), or the seeds (`${seeds}`: `${item}` as N); one empty set without one."""
    each = stage.get("foreach")
    if each is None:
        return [{}]
    if isinstance(each, dict):
        return [{"${key}": key, **{f"${{item.{name}}}": str(value) for name, value in item.items()}}
                for key, item in each.items()]
    assert each == "${seeds}", f"a foreach this test cannot expand: {each!r}"
    return [{"${item}": "N"}]


def _stage_outputs() -> dict[str, bool]:
    """Every output, metric and plot file of dvc.yaml (each foreach item expanded, a seed as N), and whether DVC
    caches it."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    found: dict[str, bool] = {}
    for stage in stages.values():
        body = stage.get("do", stage)
        for values in _foreach_items(stage):
            for kind in ("outs", "metrics", "plots"):
                for entry in body.get(kind, []):
                    path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
                    for variable, value in values.items():
                        path = path.replace(variable, value)
                    assert "${" not in path, f"dvc.yaml: {path} is not expanded"
                    found[path] = (options or {}).get("cache", True)
    return found


def test_the_docs_say_what_brings_each_output_back() -> None:
    """The README said `dvc checkout` restores the report's outputs after an interrupted report: they are not cached."""
    rows = [line for line in (ROOT / "docs/robustness.md").read_text().splitlines() if line.startswith("| `")]
    for path, cached in _stage_outputs().items():
        command = "`dvc checkout`" if cached else "`git checkout -- PATH`"
        assert any(f"`{path}`" in row and row.split("|")[-2].strip().startswith(command) for row in rows), \
            f"{path}: docs/robustness.md must say that {command} brings it back"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def _other_array(path: Path) -> None:
    np.save(path, np.zeros((3, 4), dtype=np.float64))


BROKEN_ARRAYS = {"truncated": _truncate, "garbage": _garbage, "another-array": _other_array}


@pytest.mark.parametrize("case", list(BROKEN_ARRAYS))
def test_a_broken_processed_array_is_named(case: str, tiny_data: Path, tmp_path: Path) -> None:
    """`np.load` was unguarded: a numpy traceback."""
    processed = tmp_path / "processed"
    shutil.copytree(tiny_data / "data/processed", processed)
    shard = sorted((processed / SHARDS_DIR).glob("*.npy"))[0]
    BROKEN_ARRAYS[case](shard)
    with pytest.raises(InputError, match=rf"{shard.name}: .*re-run the preprocess stage"):
        load_processed(processed)


def test_train_on_a_truncated_processed_array_is_one_line(tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path / "ws")
    shard = sorted((ws / "data/processed" / SHARDS_DIR).glob("*.npy"))[0]
    _truncate(shard)

    done = run_cli(ws, "train", "--seed", "1")

    assert done.returncode == 2, shown(done)
    assert "Traceback" not in done.stderr, shown(done)
    assert f"error: {shard.relative_to(ws)}: not a complete .npy array" in done.stderr, shown(done)


# The stage, held once every archive is processed but before it finishes: its worker processes are up and idle.
# (An idle worker used to print a traceback of its own.)
PREPROCESS_HELD = """
    import concurrent.futures
    import sys
    import cxrstudy.data.preprocess as preprocess

    def as_completed(futures):
        done = list(concurrent.futures.as_completed(futures))
        print("started", flush=True)
        sys.stdin.readline()  # SIGINT interrupts this read
        yield from done

    preprocess.as_completed = as_completed
"""


@pytest.mark.slow
def test_ctrl_c_during_preprocess_is_one_line_and_keeps_the_earlier_output(tiny_data: Path, tmp_path: Path) -> None:
    """Used to flood the terminal with a traceback per worker (once a misleading "numpy bad install")."""
    # Other CLAHE settings than the earlier output's: every archive is processed anew (an unchanged shard is kept).
    ws = workspace(tiny_data, tmp_path / "ws", preprocess={"workers": 2, "clip_limit": 3.0})
    before = snapshot(ws / "data/processed")
    # As from a terminal: SIGINT at its default (a pytest-xdist worker ignores it, and a child inherits that, so
    # Python would install no KeyboardInterrupt handler).
    proc = subprocess.Popen(patched_cli(PREPROCESS_HELD, "preprocess"), cwd=ws, start_new_session=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        started = proc.stdout.readline()  # blocks until the stage holds, its workers idle
        assert started == "started\n", f"exit {proc.wait()}: {started}{proc.communicate()}"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole process group
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    assert proc.returncode == 130, f"exit {proc.returncode}\n{out}\n{err}"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "ImportError" not in err, err
    messages = [line for line in err.strip().splitlines() if not re.match(r"preprocess: +\d+%\|", line)]  # tqdm's bar
    assert len(messages) == 1 and messages[0].startswith("interrupted by SIGINT"), err
    assert snapshot(ws / "data/processed") == before
    assert leftovers(ws / "data") == []


# --------------------------------------------------------------------------------------------------------------------
# 8. A YAML alias bomb in params.yaml, which DVC parses before any stage runs

BOMB = "".join([
    'lol_a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n',
    *(f"lol_{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)),
])  # nine levels: 9**9 = 387,420,489 strings once expanded


def _limited_memory(megabytes: int) -> Callable[[], None]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (megabytes << 20, megabytes << 20))

    return limit


@pytest.mark.parametrize("command", [["check-params"], ["train", "--seed", "1"],
                                     ["profile", "configs/nih-study.yaml", "--run"]], ids=["check", "stage", "profile"])
def test_a_yaml_alias_bomb_is_refused_before_anything_expands_it(command: list[str], tmp_path: Path) -> None:
    """Our loader refused it only because its keys are unknown (after building the aliases); DVC, which reads
    params.yaml first, took 3.8 GB in 70 s. It is now refused while parsing, in 512 MB of address space at most;
    the profile command (`make study`) refuses it before it starts `dvc exp run`."""
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs/nih-study.yaml", tmp_path / "configs")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text() + BOMB)

    done = subprocess.run(cli(*command), cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          preexec_fn=_limited_memory(512), env={**os.environ, "TQDM_DISABLE": "1"})

    assert done.returncode == 2, shown(done)
    assert "error: params.yaml: not valid YAML: alias *a names a list or a mapping; aliases may name single values " \
           "only" in done.stderr, shown(done)
    second_level = len((ROOT / "params.yaml").read_text().splitlines()) + 2  # the first alias of a list
    assert f"line {second_level}, column" in done.stderr, shown(done)
    assert "dvc exp run" not in done.stdout, shown(done)


def test_an_alias_of_a_single_value_is_still_accepted(tmp_path: Path) -> None:
    text = (ROOT / "params.yaml").read_text()
    text = text.replace("  image_size: 64             # stored", "  image_size: &size 64       # stored")
    text = text.replace("\n  image_size: 64\n", "\n  image_size: *size\n")
    assert "*size" in text
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").train.image_size == 64


@pytest.mark.parametrize("text", ["a: &a [1, *a]\n", "a: &a {b: *a}\n"], ids=["list", "mapping"])
def test_a_recursive_alias_is_refused(text: str, tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(InputError, match=r"alias \*a names a list or a mapping"):
        load_params(tmp_path / "params.yaml")


def test_a_huge_or_deeply_nested_params_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "big.yaml").write_text("x: [" + "1, " * 200_000 + "1]\n")
    (tmp_path / "deep.yaml").write_text("x: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(InputError, match=r"big\.yaml: [\d,]+ bytes; a parameters file is a few KB"):
        load_params(tmp_path / "big.yaml")
    with pytest.raises(InputError, match=r"deep\.yaml: nested too deeply"):
        load_params(tmp_path / "deep.yaml")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target", ["repro", "study"])
def test_make_validates_params_before_it_starts_dvc(target: str) -> None:
    """make's recipes, as make would run them (`make -n`): the check comes before the first dvc command."""
    recipe = sh(["make", "-n", "--no-print-directory", target, "VENV="], ROOT).stdout.splitlines()
    checks = [i for i, line in enumerate(recipe) if "python -m cxrstudy check-params" in line]
    starts = [i for i, line in enumerate(recipe) if re.search(r"(^|[ /])dvc ", line)
              or "cxrstudy profile" in line and "--run" in line]
    assert checks and starts and checks[0] < min(starts), "\n".join(recipe)


# --------------------------------------------------------------------------------------------------------------------
# 9. What a killed run leaves behind goes, whatever the next run does


# The train stage, killed (SIGKILL) the moment its outputs are written in full, before they are renamed into place.
KILLED_BEFORE_THE_RENAMES = """
    import contextlib, os, signal
    import cxrstudy.learning.train as train

    _all_or_nothing = train.all_or_nothing

    @contextlib.contextmanager
    def all_or_nothing():
        with _all_or_nothing() as out:
            yield out
            os.kill(os.getpid(), signal.SIGKILL)

    train.all_or_nothing = all_or_nothing
"""


@pytest.mark.slow
def test_a_killed_runs_temporaries_go_when_dvc_restores_the_stage_from_its_run_cache(tmp_path: Path) -> None:
    """DVC restored the killed stage's outputs from its run cache without running it, and nothing swept its
    temporaries (a 28 MB model folder per seed at the study's size). `make repro` re-runs the manifest stage first,
    every time (test_make_repro_runs_the_manifest_stage_before_the_pipeline), and every stage sweeps first."""
    project = copy_project(tmp_path / "project", drop=("dvc.lock", "metrics", "predictions", *REPORTS, "plots"),
                           params=tiny_raw(seeds=[1]))
    sh(["dvc", "repro", "train@1"], project)  # configuration A: its run goes into the run cache
    first = (project / "params.yaml").read_text()
    write_params(project / "params.yaml", tiny_raw(seeds=[1], train={"epochs": 1}))
    sh(["dvc", "repro", "train@1"], project)  # B: dvc.lock now records B
    write_params(project / "params.yaml", tiny_raw(seeds=[1]))
    assert (project / "params.yaml").read_text() == first
    killed = run_patched(project, KILLED_BEFORE_THE_RENAMES, "train", "--seed", "1")  # A again, killed
    assert killed.returncode == -signal.SIGKILL, shown(killed)
    left = leftovers(project)
    assert any(name.startswith("models/.seed_1.tmp-") for name in left), left
    assert any(name.startswith("plots/train/.seed_1.csv.tmp-") for name in left), left

    sh(["dvc", "repro", "--force", "--single-item", "manifest"], project)  # what `make repro` runs first
    done = sh(["dvc", "repro", "train@1"], project)

    assert "Stage 'train@1' is cached - skipping run, checking out outputs" in done.stdout, done.stdout
    assert leftovers(project) == []


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_repro_runs_the_manifest_stage_before_the_pipeline() -> None:
    """The manifest stage is not `always_changed` (`dvc status` would never be clean): `make repro` forces it before
    `dvc repro`, so that a run restored from DVC's run cache still starts by sweeping what killed writers left."""
    recipe = sh(["make", "-n", "--no-print-directory", "repro", "VENV="], ROOT).stdout.splitlines()
    forced = [i for i, line in enumerate(recipe) if re.search(r"(^|[ /])dvc repro --force --single-item manifest$",
                                                              line)]
    repro = [i for i, line in enumerate(recipe) if re.search(r"(^|[ /])dvc repro$", line)]
    assert forced and repro and forced[0] < repro[0], "\n".join(recipe)


def test_every_stage_output_lies_under_a_folder_that_every_stage_sweeps() -> None:
    """A new output elsewhere would keep its killed writer's temporaries after a run-cache restore."""
    swept = {str(folder) for folder in OUTPUT_FOLDERS}
    assert all(Path(path).parts[0] in swept for path in _stage_outputs()), sorted(_stage_outputs())


# --------------------------------------------------------------------------------------------------------------------
# 10. Processed images of another size than params.yaml says


def test_train_refuses_processed_images_smaller_than_preprocess_image_size(tiny_data: Path, tmp_path: Path) -> None:
    """16 px processed images with preprocess.image_size 64 used to be upsampled to 64 px without a word."""
    ws = workspace(tiny_data, tmp_path / "ws", preprocess={"image_size": 64}, train={"image_size": 64})
    for shard in (ws / "data/processed" / SHARDS_DIR).glob("*.npy"):
        images = np.load(shard)
        np.save(shard, np.ascontiguousarray(images[:, ::2, ::2]))  # 32 px -> 16 px
    assert load_processed(ws / "data/processed").size == 16

    done = run_cli(ws, "train", "--seed", "1")

    assert done.returncode == 2, shown(done)
    assert done.stderr.strip() == (
        "error: data/processed: holds 16 px images, but preprocess.image_size is 64: they were made with other "
        "parameters, and training would upsample them to train.image_size (64 px); re-run the preprocess stage "
        "(dvc repro preprocess@internal, or python -m cxrstudy preprocess)"), shown(done)
    assert not (ws / "checkpoints").exists() and not (ws / "models").exists()

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
import shutil
import signal
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from cxrstudy.data import nih
from cxrstudy.data.preprocess import load_processed
from cxrstudy.errors import InputError, Interrupted
from cxrstudy.labels import FINDINGS
from cxrstudy.learning import monitoring
from cxrstudy.learning.evaluate import compute_metrics, save_predictions
from cxrstudy.learning.train import TrainState, make_optimizer, make_scheduler, save_checkpoint, sigmoid
from cxrstudy.params import parse_params
from cxrstudy.reporting import report
from tests.conftest import (
    ROOT,
    leftovers,
    patched_cli,
    run_cli,
    section,
    shown,
    snapshot,
    tiny_params,
    tiny_raw,
    workspace,
    write_params,
)
from tests.synthetic import write_coverage, write_split
from tests.test_resume import (
    CHECKPOINT,
    assert_same_results,
    run_train,
    start_train,
    wait_for_checkpoint,
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


# --------------------------------------------------------------------------------------------------------------------
# 4. Signals are never swallowed by monitoring


def test_a_signal_during_a_push_goes_through_the_monitor(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Interrupted` was an `Exception`, and the push's `except Exception` turned SIGTERM into a warning."""
    def push_interrupted(*args: object, **kwargs: object) -> None:
        raise Interrupted(signal.SIGTERM, "training stopped by SIGTERM")

    monkeypatch.setattr(monitoring, "push_to_gateway", push_interrupted)
    params = section("monitor", pushgateway="127.0.0.1:9", port=None)
    monitor = monitoring.PrometheusMonitor(params, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", monitoring.MonitorWarning)
        with pytest.raises(Interrupted):
            monitor.push("end of epoch 1")


@pytest.fixture
def silent_gateway() -> Iterator[tuple[str, socket.socket]]:
    """A Pushgateway address that accepts connections and never answers: a push blocks until its timeout."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(1.0)
    yield f"127.0.0.1:{server.getsockname()[1]}", server
    server.close()


@pytest.mark.slow
def test_sigterm_while_a_push_hangs_stops_training_with_its_checkpoint(
    tiny_data: Path, tmp_path: Path, silent_gateway: tuple[str, socket.socket]
) -> None:
    """Used to print "push failed: Interrupted: training stopped by SIGTERM; training continues", then exit 0."""
    address, server = silent_gateway
    ws = train_workspace(tiny_data, tmp_path / "ws")
    write_params(ws / "params.yaml", tiny_raw(train={"epochs": 3},
                                              monitor={"pushgateway": address, "push_timeout_s": 120.0}))
    running = start_train(ws)
    while True:  # until the push at the end of epoch 1 connects (and waits for an answer that never comes)
        try:
            connection, _ = server.accept()
            break
        except TimeoutError:
            if running.proc.poll() is not None:
                pytest.fail(f"training ended before its first push\n{running.shown()}")
    server.close()  # later pushes (the one at close) are refused at once
    running.proc.send_signal(signal.SIGTERM)
    running.proc.wait(timeout=120)
    connection.close()

    assert running.proc.returncode == 128 + signal.SIGTERM, running.shown()
    _, err = running.output()
    assert "training stopped by SIGTERM" in err and "Interrupted" not in err, running.shown()
    assert torch.load(ws / CHECKPOINT, map_location="cpu", weights_only=True)["epoch"] == 1
    assert not (ws / "models").exists()


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
    labels = (rng.random((n, len(FINDINGS))) < 0.15).astype(np.float32)
    labels[0] = 1
    logits = (-20.0 + labels * 0.5 + rng.normal(0, 0.5, labels.shape)).astype(np.float32)
    probs = sigmoid(logits)
    assert probs.max() < 1e-7
    val = (labels[:150], probs[:150])
    metrics = compute_metrics(1, 0.04, val, (labels, probs))
    (root / "metrics/eval").mkdir(parents=True)
    (root / "metrics/eval/seed_1.json").write_text(json.dumps(metrics))
    names = [f"{i:08d}_000.png" for i in range(n)]
    save_predictions(root / "predictions/seed_1.csv", names, np.arange(n) // 2 + 1000, labels, probs)
    save_predictions(root / "predictions/val/seed_1.csv", names[:150], np.arange(150) // 2 + 5000, *val)
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


def _stage_outputs() -> dict[str, bool]:
    """Every output, metric and plot file of dvc.yaml (`${item}` as N), and whether DVC caches it."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    found: dict[str, bool] = {}
    for stage in stages.values():
        body = stage.get("do", stage)
        for kind in ("outs", "metrics", "plots"):
            for entry in body.get(kind, []):
                path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
                found[path.replace("${item}", "N")] = options.get("cache", True)
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
    BROKEN_ARRAYS[case](processed / "images.npy")
    with pytest.raises(InputError, match=r"images\.npy: .*re-run the preprocess stage"):
        load_processed(processed)


def test_train_on_a_truncated_processed_array_is_one_line(tiny_data: Path, tmp_path: Path) -> None:
    ws = workspace(tiny_data, tmp_path / "ws")
    _truncate(ws / "data/processed/images.npy")

    done = run_cli(ws, "train", "--seed", "1")

    assert done.returncode == 2, shown(done)
    assert "Traceback" not in done.stderr, shown(done)
    assert "error: data/processed/images.npy: not a complete .npy array" in done.stderr, shown(done)


# The stage, held once every archive is processed but before it finishes: its worker processes are up and idle.
# (An idle worker used to print a traceback of its own.)
PREPROCESS_HELD = """
    import sys
    import cxrstudy.data.preprocess as preprocess

    _process_archives = preprocess.process_archives

    def process_archives(archives, names, images, cfg):
        results = _process_archives(archives, names, images, cfg)
        try:
            done = [next(results) for _ in archives]
            print("started", flush=True)
            sys.stdin.readline()  # SIGINT interrupts this read
            yield from done
        finally:
            results.close()

    preprocess.process_archives = process_archives
"""


@pytest.mark.slow
def test_ctrl_c_during_preprocess_is_one_line_and_keeps_the_earlier_output(tiny_data: Path, tmp_path: Path) -> None:
    """Used to flood the terminal with a traceback per worker (once a misleading "numpy bad install")."""
    ws = workspace(tiny_data, tmp_path / "ws", preprocess={"workers": 2})
    before = snapshot(ws / "data/processed")
    proc = subprocess.Popen(patched_cli(PREPROCESS_HELD, "preprocess"), cwd=ws, start_new_session=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})
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

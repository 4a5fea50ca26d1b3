"""Distributed training: `torchrun` trains one seed on two gloo processes (CPU), launched two ways:

- "processes": one machine, `--nproc_per_node=2 --standalone`;
- "nodes": two `torchrun` agents, each a "node" with one process, meeting through a c10d rendezvous on 127.0.0.1
  (`--nnodes=2 --rdzv-backend=c10d`): the launch of a multi-node GPU run (docs/performance.md), on one machine.

Checked for each: the run exits 0 with rank-0 side effects only (one model, one history, one summary line); the model
it writes evaluates; the validation metrics it records are those of the whole validation set, each image once (an
odd count, where DistributedSampler would pad one rank with a duplicate), equal to what one process computes from
the saved model; and every rank saw the same gathered predictions, losses and weights (per-rank records written under
$CXRSTUDY_RANK_LOG).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrstudy.learning import evaluate, predict
from cxrstudy.learning.loader import XrayDataset, eval_transform, load_part, make_loader
from cxrstudy.learning.losses import make_criterion
from cxrstudy.metrics import per_class_auroc
from cxrstudy.params import Params
from tests.conftest import free_port, tiny_params, tiny_raw, write_params

pytestmark = pytest.mark.slow

SEED = 1
NPROC = 2


@dataclass(frozen=True)
class DdpRun:
    root: Path
    data: Path
    splits: Path
    params: Params
    proc: subprocess.CompletedProcess[str]  # for two nodes: exit status 0 only if both are, their output joined

    @property
    def model_dir(self) -> Path:
        return self.root / "model"


def launchers(launch: str) -> list[list[str]]:
    """The torchrun command line(s) of one launch: one agent with 2 processes, or 2 agents ("nodes") of one each."""
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    if launch == "processes":
        return [[*torchrun, f"--nproc_per_node={NPROC}", "--standalone"]]
    endpoint, run_id = f"127.0.0.1:{free_port()}", uuid.uuid4().hex[:8]
    return [[*torchrun, f"--nnodes={NPROC}", "--nproc_per_node=1", "--rdzv-backend=c10d",
             f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}", "--local-addr=127.0.0.1",
             f"--rdzv-conf=is_host={int(node == 0)},join_timeout=300"] for node in range(NPROC)]


def run_all(commands: list[list[str]], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Start every command at once, wait for all (each rendezvous waits for the others), join their results."""
    procs = [subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in commands]
    outputs = []
    try:
        outputs = [proc.communicate(timeout=900) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    code = next((p.returncode for p in procs if p.returncode), 0)
    stdout, stderr = "".join(out for out, _ in outputs), "".join(err for _, err in outputs)
    return subprocess.CompletedProcess(commands[0], code, stdout, stderr)


# The multi-node launch (two torchrun agents, a c10d rendezvous) is launch infrastructure: make test-all.
@pytest.fixture(scope="module", params=["processes", pytest.param("nodes", marks=pytest.mark.infra)])
def ddp_run(request: pytest.FixtureRequest, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> DdpRun:
    root = tmp_path_factory.mktemp(f"ddp-{request.param}")
    splits = root / "splits"
    shutil.copytree(tiny_data / "data/splits", splits)
    val = (splits / "val.txt").read_text().split()
    if len(val) % NPROC == 0:  # an odd count: DistributedSampler would pad one rank with a duplicate image
        (splits / "val.txt").write_text("".join(f"{n}\n" for n in val[:-1]))
    raw = tiny_raw()
    params_file = write_params(root / "params.yaml", raw)
    env = {**os.environ, "CXRSTUDY_RANK_LOG": str(root / "ranks"), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
           "GLOO_SOCKET_IFNAME": "lo"}  # gloo over the loopback interface: both "nodes" are this machine
    train = ["-m", "cxrstudy", "--params", str(params_file), "train", "--seed", str(SEED),
             "--raw", str(tiny_data / "data/raw"), "--processed", str(tiny_data / "data/processed"),
             "--splits", str(splits), "--out", str(root / "model"), "--plots", str(root / "history.csv"),
             "--checkpoints", str(root / "ckpt")]
    proc = run_all([[*launcher, *train] for launcher in launchers(request.param)], root, env)
    return DdpRun(root, tiny_data, splits, tiny_params(), proc)


def history(run: DdpRun) -> list[dict[str, str]]:
    return list(csv.DictReader((run.root / "history.csv").open()))


def test_torchrun_trains_one_seed_on_two_gloo_processes(ddp_run: DdpRun) -> None:
    assert ddp_run.proc.returncode == 0, ddp_run.proc.stdout[-3000:] + ddp_run.proc.stderr[-3000:]
    assert (ddp_run.model_dir / "model.pt").is_file()
    assert [int(r["epoch"]) for r in history(ddp_run)] == list(range(1, ddp_run.params.train.epochs + 1))
    assert not (ddp_run.root / "ckpt" / "last.pt").exists()
    # rank-0 side effects: one closing line, one line per epoch, whatever the number of processes
    assert ddp_run.proc.stdout.count(f"train seed {SEED}: best epoch") == 1
    assert ddp_run.proc.stdout.count(f"seed {SEED} epoch 1/") == 1


def test_the_distributed_model_evaluates(ddp_run: DdpRun, tmp_path: Path) -> None:
    assert ddp_run.proc.returncode == 0
    data = ddp_run.data / "data"
    evaluate.run(ddp_run.params, SEED, data / "raw", data / "processed", ddp_run.splits, ddp_run.model_dir,
                 tmp_path / "metrics.json", tmp_path / "pred.csv")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_test"] > 0 and 0.0 <= metrics["auroc_mean"] <= 1.0


def test_recorded_validation_is_the_whole_set_once_as_one_process_computes_it(ddp_run: DdpRun) -> None:
    assert ddp_run.proc.returncode == 0
    data = ddp_run.data / "data"
    images, val = load_part(data / "raw", data / "processed", ddp_run.splits, "val")
    _, train_part = load_part(data / "raw", data / "processed", ddp_run.splits, "train")
    cfg = ddp_run.params.train
    model = predict.load_trained(ddp_run.model_dir / predict.MODEL_FILE)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(XrayDataset(images, val, eval_transform(cfg.image_size, images.shape[-1])),
                         ddp_run.params.evaluate.batch_size, shuffle=False, generator=None, num_workers=0,
                         pin_memory=False)
    logits, labels = predict.predict(model, loader, torch.device("cpu"), cfg.channels_last, cfg.amp)
    auroc = np.nanmean(per_class_auroc(labels, predict.sigmoid(logits)))
    loss = float(make_criterion(cfg.loss, train_part.labels)(torch.from_numpy(logits), torch.from_numpy(labels)))
    best = int(json.loads((ddp_run.model_dir / "summary.json").read_text())["best_epoch"])
    row = history(ddp_run)[best - 1]
    assert float(row["val_auroc"]) == pytest.approx(auroc, abs=2e-6)
    assert float(row["val_loss"]) == pytest.approx(loss, abs=2e-6)


def test_every_rank_sees_the_same_gathered_predictions_losses_and_weights(ddp_run: DdpRun) -> None:
    assert ddp_run.proc.returncode == 0
    n_val = len((ddp_run.splits / "val.txt").read_text().split())
    logs = {}
    for rank in range(NPROC):
        path = ddp_run.root / "ranks" / f"rank{rank}.jsonl"
        assert path.is_file(), f"no per-rank record from rank {rank}"
        logs[rank] = [json.loads(line) for line in path.read_text().splitlines()]
    epochs = ddp_run.params.train.epochs
    for rank, records in logs.items():
        assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
        assert all(r["rank"] == rank and r["world_size"] == NPROC and r["n_val"] == n_val for r in records)
    strip = [[{k: v for k, v in r.items() if k != "rank"} for r in records] for records in logs.values()]
    assert all(s == strip[0] for s in strip[1:])
    rows = history(ddp_run)
    for record, row in zip(logs[0], rows, strict=True):  # rank 0's history is the ranks' common view
        assert float(row["val_auroc"]) == pytest.approx(record["val_auroc"], abs=1e-6)
        assert float(row["train_loss"]) == pytest.approx(record["train_loss"], abs=1e-6)

"""The train stage: one DenseNet-121 per seed, the best epoch chosen on the validation set.

Runs on one CPU or GPU, or on N processes under `torchrun --nproc_per_node=N` (DDP: `distributed`). Every epoch ends
with a checkpoint (`checkpoint`); re-running the stage resumes from it when nothing that decides the result has
changed, and reaches the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from cxrstudy import numerics
from cxrstudy.atomic import all_or_nothing, atomic_file, check_writable, sweep_stale, write_json
from cxrstudy.errors import InputError, Interrupted, TrainingError
from cxrstudy.learning.checkpoint import (
    CHECKPOINT_FILE,
    EpochRecord,
    TrainState,
    describe_inputs,
    fingerprint,
    fingerprint_id,
    load_checkpoint,
    save_checkpoint,
    save_torch,
    state_dict_cpu,
)
from cxrstudy.learning.distributed import (
    Dist,
    close_distributed,
    gather_rows,
    init_distributed,
    local_rank,
    mean_over_ranks,
    shard,
    unwrap,
)
from cxrstudy.learning.loader import XrayDataset, eval_transform, load_parts, make_loader, to_input, train_transform
from cxrstudy.learning.losses import Criterion, make_criterion
from cxrstudy.learning.model import build_model
from cxrstudy.learning.monitoring import Monitor, open_monitor
from cxrstudy.learning.predict import MODEL_FILE, pick_device, predict, seed_everything, sigmoid
from cxrstudy.metrics import per_class_auroc
from cxrstudy.params import Params, TrainParams

# The machine that trained the model (CPU model and flags, cores, OS), beside it. .dvcignore keeps it out of the
# model's DVC hash (it differs between machines whose numbers are identical) and DVC's cache; git ignores the folder.
MACHINE_FILE = "machine.json"
# Debugging distributed runs: a folder where every rank appends one JSON line per epoch (rank<R>.jsonl).
RANK_LOG_ENV = "CXRSTUDY_RANK_LOG"

Loader = DataLoader[tuple[torch.Tensor, torch.Tensor]]


def make_optimizer(model: nn.Module, cfg: TrainParams) -> torch.optim.Optimizer:
    """torch's fused optimisers: one kernel per step, and on a CPU a square root that is exact on every vendor (the
    for-each implementation takes MKL's, which rounds differently on Intel and AMD)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay,
                           fused=True)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainParams, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per batch."""
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


@contextmanager
def signals_to_exceptions() -> Iterator[None]:
    """SIGTERM / SIGINT become `Interrupted`, so that the stage exits non-zero after the last checkpoint."""
    def handler(signum: int, _frame: object) -> None:
        raise Interrupted(signum, f"training stopped by {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def log_rank(where: Dist, model: nn.Module, record: dict[str, Any]) -> None:
    """With $CXRSTUDY_RANK_LOG set, append what this rank saw (and a digest of its weights) to <folder>/rank<R>.jsonl,
    so that a test can check that the ranks agree."""
    folder = os.environ.get(RANK_LOG_ENV)
    if not folder:
        return
    digest = hashlib.sha256()
    for name, tensor in sorted(unwrap(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    Path(folder).mkdir(parents=True, exist_ok=True)
    line = json.dumps({"rank": where.rank, "world_size": where.world_size, **record,
                       "weights_sha256": digest.hexdigest()[:16]})
    with open(Path(folder) / f"rank{where.rank}.jsonl", "a") as handle:
        handle.write(line + "\n")


# --------------------------------------------------------------------------------------------------------------------
# Setting up


@dataclass
class Training:
    """Everything one seed's training works with."""

    model: nn.Module  # DDP-wrapped on N processes: the weights that are checkpointed
    forward: nn.Module  # the model, or its torch.compile'd version: what runs the batches
    criterion: Criterion
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    train_loader: Loader
    val_loader: Loader
    loader_gen: torch.Generator  # the training order (and the workers' seeds), checkpointed with the RNG states
    labels: tuple[str, ...]  # the label names, in the order of the model's outputs (from the dataset)


def check_stored_size(processed_dir: Path, stored: int, preprocess_size: int, train_size: int) -> None:
    """The processed images must have the size `preprocess.image_size` gives them: others were made with other
    parameters (a stale or copied data/processed), and smaller ones would be silently upsampled."""
    if stored == preprocess_size:
        return
    effect = (f"upsample them to train.image_size ({train_size} px)" if stored < train_size
              else "train on images preprocessed otherwise than params.yaml says")
    raise InputError(f"{processed_dir}: holds {stored} px images, but preprocess.image_size is "
                     f"{preprocess_size}: they were made with other parameters, and training would {effect}; re-run "
                     "the preprocess stage (dvc repro preprocess@internal, or python -m cxrstudy preprocess)")


def build_loaders(cfg: TrainParams, seed: int, where: Dist, device: torch.device, raw_dir: Path, processed_dir: Path,
                  splits_dir: Path, preprocess_size: int
                  ) -> tuple[Loader, Loader, np.ndarray, torch.Generator, tuple[str, ...]]:
    """The training loader (a new order every epoch from the seed; on N processes each rank takes its share of every
    batch), the validation loader (this rank's shard, in order), the training labels (shuffled with
    `train.shuffle_labels`, the negative control), the generator of the training order and the label names. The
    processed images must be `preprocess_size` px (`check_stored_size`)."""
    images, parts = load_parts(raw_dir, processed_dir, splits_dir, ("train", "val"))
    check_stored_size(processed_dir, int(images.shape[-1]), preprocess_size, cfg.image_size)
    train_labels = parts["train"].labels
    if cfg.shuffle_labels:  # negative control: break the image-label link, keep the label distribution
        train_labels = train_labels[np.random.default_rng(seed).permutation(len(train_labels))]
    train_set = XrayDataset(images, parts["train"], train_transform(cfg.image_size, cfg.augment), train_labels)
    val_set = XrayDataset(images, parts["val"], eval_transform(cfg.image_size, images.shape[-1]))
    if len(val_set) < where.world_size:
        raise TrainingError(f"train: {len(val_set)} validation images for {where.world_size} process(es)")

    loader_gen = torch.Generator().manual_seed(seed)
    batch = max(1, cfg.batch_size // where.world_size)
    sampler: DistributedSampler[Any] | None = None
    if where.world_size > 1:
        sampler = DistributedSampler(train_set, where.world_size, where.rank, shuffle=True, seed=seed, drop_last=True)
    pin = device.type == "cuda"
    train_loader = make_loader(train_set, batch, shuffle=True, sampler=sampler, generator=loader_gen,
                               num_workers=cfg.num_workers, pin_memory=pin)
    if len(train_loader) == 0:
        raise TrainingError(f"train: {len(train_set)} training images make no full batch of {batch}; "
                            "lower train.batch_size")
    val_loader = make_loader(val_set, cfg.val_batch_size, shuffle=False, sampler=shard(len(val_set), where),
                             generator=None, num_workers=cfg.num_workers, pin_memory=pin)
    return train_loader, val_loader, train_labels, loader_gen, parts["train"].label_names


def build_training(cfg: TrainParams, seed: int, where: Dist, device: torch.device, raw_dir: Path,
                   processed_dir: Path, splits_dir: Path, preprocess_size: int) -> Training:
    """The loaders, then the model (initialised from the seeded generator), loss, optimizer and scheduler."""
    train_loader, val_loader, train_labels, loader_gen, labels = build_loaders(
        cfg, seed, where, device, raw_dir, processed_dir, splits_dir, preprocess_size)
    model: nn.Module = build_model(train_labels.shape[1], cfg.pretrained).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if where.world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = cast(nn.Module, torch.compile(model)) if cfg.compile else model
    criterion = make_criterion(cfg.loss, train_labels)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, cfg.epochs * len(train_loader))
    return Training(model, forward, criterion, opt, sched, train_loader, val_loader, loader_gen, labels)


# --------------------------------------------------------------------------------------------------------------------
# Training


def train_one_epoch(model: nn.Module, loader: Loader, criterion: Criterion, opt: torch.optim.Optimizer,
                    sched: torch.optim.lr_scheduler.LRScheduler, device: torch.device, cfg: TrainParams, epoch: int,
                    monitor: Monitor, show: bool) -> float:
    """One pass over the training data; returns the mean training loss. A non-finite loss stops training."""
    model.train()
    total, batches = 0.0, 0
    steps = len(loader)
    progress = tqdm(loader, desc=f"epoch {epoch}", unit="batch", disable=None if show else True, leave=False)
    for step, (images, labels) in enumerate(progress):
        start = time.perf_counter()
        x = to_input(images, device, cfg.channels_last)
        y = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda"):
            logits = model(x)
        loss = criterion(logits, y)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError(f"non-finite training loss ({value}) at epoch {epoch}, step {step + 1}/{steps} "
                                f"(batch of {len(images)} images); lower train.lr or check the input data")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += value
        batches += 1
        monitor.step(epoch=epoch, step=(epoch - 1) * steps + step + 1, loss=value, images=len(images),
                     seconds=time.perf_counter() - start, lr=float(sched.get_last_lr()[0]))
    return total / max(batches, 1)


def validate(t: Training, cfg: TrainParams, where: Dist, device: torch.device, epoch: int) -> tuple[float, float, int]:
    """The validation loss and mean AUROC over the whole validation set (every rank's shard gathered), and its
    size. A non-finite loss stops training."""
    logits, labels = predict(t.forward, t.val_loader, device, cfg.channels_last, cfg.amp)
    logits, labels = gather_rows(logits, where), gather_rows(labels, where)
    loss = float(t.criterion(torch.from_numpy(logits), torch.from_numpy(labels)))
    if not math.isfinite(loss):
        raise TrainingError(f"non-finite validation loss ({loss}) after epoch {epoch}: the weights diverged in its "
                            "last steps; lower train.lr or check the input data")
    return loss, float(np.nanmean(per_class_auroc(labels, sigmoid(logits)))), len(labels)


def train_epochs(t: Training, state: TrainState, cfg: TrainParams, seed: int, where: Dist, device: torch.device,
                 ckpt_path: Path, inputs: dict[str, str], monitor: Monitor) -> None:
    """Train from the epoch after `state.epoch` to the last, updating `state`; every epoch ends with a checkpoint
    (at `ckpt_path`, made from `inputs`), then a report to the monitor."""
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if isinstance(t.train_loader.sampler, DistributedSampler):
            t.train_loader.sampler.set_epoch(epoch)
        train_loss = train_one_epoch(t.forward, t.train_loader, t.criterion, t.opt, t.sched, device, cfg, epoch,
                                     monitor, show=where.is_main)
        train_loss = mean_over_ranks(train_loss, where, device)
        val_loss, val_auroc, n_val = validate(t, cfg, where, device, epoch)
        log_rank(where, t.model, {"epoch": epoch, "n_val": n_val, "train_loss": train_loss, "val_loss": val_loss,
                                  "val_auroc": val_auroc})
        state.epoch = epoch
        state.history.append(EpochRecord(epoch, train_loss, val_loss, val_auroc, float(t.sched.get_last_lr()[0])))
        if val_auroc > state.best_auroc:
            state.best_epoch, state.best_auroc, state.best_model = epoch, val_auroc, state_dict_cpu(t.model)
        if where.is_main:
            save_checkpoint(ckpt_path, inputs, state, t.model, t.opt, t.sched, t.loader_gen)
            print(f"seed {seed} epoch {epoch}/{cfg.epochs}: train loss {train_loss:.4f}, "
                  f"val loss {val_loss:.4f}, val AUROC {val_auroc:.4f}")
        # After the checkpoint: a signal during a slow push loses no finished epoch.
        monitor.epoch_end(epoch=epoch, val_loss=val_loss, val_auroc=val_auroc)


def run(params: Params, seed: int, raw_dir: Path, processed_dir: Path, splits_dir: Path, out_dir: Path,
        plots_file: Path, checkpoint_dir: Path) -> None:
    """Stage entry point: train one seed, write `out_dir/model.pt` and the per-epoch history to `plots_file`."""
    cfg = params.train
    device = pick_device(cfg, local_rank())
    where = init_distributed(device)
    ckpt_path = checkpoint_dir / CHECKPOINT_FILE
    if where.is_main:  # an output that cannot be written stops the stage now, not after the last epoch
        check_writable(out_dir, plots_file, ckpt_path)
    numerics.apply_threads(params.numerics)
    seed_everything(seed, cfg.deterministic)
    t = build_training(cfg, seed, where, device, raw_dir, processed_dir, splits_dir, params.preprocess.image_size)

    inputs = fingerprint(params, seed, raw_dir, processed_dir, splits_dir, where.world_size)
    state = load_checkpoint(ckpt_path, inputs, t.model, t.opt, t.sched, t.loader_gen,
                            describe_inputs(raw_dir, processed_dir, splits_dir)) or TrainState()
    if state.epoch and where.is_main:
        print(f"train seed {seed}: resuming after epoch {state.epoch} from {ckpt_path}")

    monitor = open_monitor(params.monitor, seed=seed, rank=where.rank)
    started = time.perf_counter()
    try:
        with signals_to_exceptions():
            train_epochs(t, state, cfg, seed, where, device, ckpt_path, inputs, monitor)
            monitor.close()  # the last push, waited for at most monitor.push_timeout_s; a signal still stops it
    finally:
        monitor.abort()  # after a failure or a signal: no push; the endpoint stops
    seconds = time.perf_counter() - started
    if where.is_main:
        model_id = fingerprint_id(inputs)  # the same wherever the data lies
        environment = numerics.environment(params.numerics, device)
        _write_outputs(state, seed, model_id, t.labels, out_dir, plots_file, environment)
        ckpt_path.unlink(missing_ok=True)
        sweep_stale(ckpt_path)  # what a run killed while checkpointing left behind
        print(f"train seed {seed}: best epoch {state.best_epoch} (val AUROC {state.best_auroc:.4f}), "
              f"{seconds:.1f} s -> {out_dir}")
        print(f"train seed {seed}: the machine (CPU: {numerics.cpu_model()}) is recorded in {out_dir / MACHINE_FILE}")
    close_distributed(where)


def _write_outputs(state: TrainState, seed: int, fp: str, labels: tuple[str, ...], out_dir: Path, plots_file: Path,
                   environment: dict[str, Any]) -> None:
    """The model folder and the history, both or neither: everything is written and synced before either is
    renamed into place. The model folder records the environment that trained it, and the machine (MACHINE_FILE,
    outside the model's DVC hash)."""
    with all_or_nothing() as out:
        tmp, handle = out.dir(out_dir), out.file(plots_file)
        with atomic_file(tmp / MODEL_FILE, "wb") as model_out:  # a Python file: a full disk is an OSError
            save_torch({"model": state.best_model, "seed": seed, "epoch": state.best_epoch,
                        "val_auroc": state.best_auroc, "fingerprint": fp, "labels": list(labels)}, model_out)
        write_json(tmp / "summary.json", {"seed": seed, "best_epoch": state.best_epoch,
                                          "best_val_auroc": round(state.best_auroc, 6),
                                          "epochs": state.epoch, "environment": environment})
        write_json(tmp / MACHINE_FILE, numerics.machine())
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["epoch", "train_loss", "val_loss", "val_auroc", "lr"])
        for r in state.history:
            writer.writerow([r.epoch, f"{r.train_loss:.6f}", f"{r.val_loss:.6f}", f"{r.val_auroc:.6f}",
                             f"{r.lr:.8g}"])

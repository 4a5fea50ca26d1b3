"""The train stage: one DenseNet-121 per seed, the best epoch chosen on the validation set.

Runs on one CPU or GPU, or on N processes under `torchrun --nproc_per_node=N` (DDP; NCCL on GPUs, gloo on CPUs).
Every epoch ends with an atomic checkpoint (model, optimizer, scheduler, RNG states, best-so-far) under
`checkpoints/seed_<seed>/`; re-running the stage resumes from it when the configuration is unchanged, and reaches the
same numbers as an uninterrupted run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import random
import signal
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from cxrstudy import numerics
from cxrstudy.atomic import atomic_dir, atomic_file, check_writable, sweep_stale, sync, write_json
from cxrstudy.data.preprocess import IMAGES_FILE, INDEX_FILE, META_FILE
from cxrstudy.errors import Interrupted, TrainingError
from cxrstudy.labels import DATA_ENTRY_FILE
from cxrstudy.learning.loader import XrayDataset, eval_transform, load_parts, make_loader, to_input, train_transform
from cxrstudy.learning.losses import Criterion, make_criterion
from cxrstudy.learning.model import build_model
from cxrstudy.metrics import nanmean, per_class_auroc

if TYPE_CHECKING:  # type hints only: the training code runs where pydantic is not installed (GPU boxes)
    from cxrstudy.params import Params, TrainParams

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "last.pt"
MACHINE_FILE = "machine.json"
# Debugging distributed runs: a folder where every rank appends one JSON line per epoch (rank<R>.jsonl).
RANK_LOG_ENV = "CXRSTUDY_RANK_LOG"


@dataclass(frozen=True)
class Dist:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """Read the variables `torchrun` sets; start the process group when there is more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(cfg: TrainParams, where: Dist) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainingError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
        torch.cuda.set_device(where.local_rank)
        return torch.device("cuda", where.local_rank)
    return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def _digest(files: Iterable[Path], root: Path) -> str:
    """SHA-256 over the names (relative to `root`) and bytes of `files`; a missing file counts as such."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        if path.is_file():
            with path.open("rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
        else:
            digest.update(b"missing\0")
    return digest.hexdigest()[:16]


def code_digest() -> str:
    """The version of everything that computes a training result: this package's source files, and the versions of
    Python, torch, torchvision, NumPy, OpenCV and scikit-learn (validation AUROC picks the best epoch)."""
    package = Path(__file__).resolve().parent
    sources = _digest(sorted(package.rglob("*.py")), package)
    return hashlib.sha256(json.dumps([sources, numerics.versions()], sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(params: Params, seed: int, raw_dir: Path, processed_dir: Path, splits_dir: Path,
                world_size: int) -> dict[str, str]:
    """What a checkpoint must match to be resumed, one digest per input (`describe_inputs` words them): the parameters
    (training, numerics, the seed and the process count), the bytes of the processed data, of the training and
    validation lists and of the label table, and the code's version. Whatever else changes a training result changes
    one of them."""
    settings = json.dumps({"train": params.train.model_dump(), "numerics": params.numerics.model_dump(),
                           "seed": seed, "world": world_size}, sort_keys=True)
    return {
        "parameters": hashlib.sha256(settings.encode()).hexdigest()[:16],
        "processed": _digest([processed_dir / name for name in (IMAGES_FILE, INDEX_FILE, META_FILE)], processed_dir),
        "splits": _digest([splits_dir / f"{part}.txt" for part in ("train", "val")], splits_dir),
        "labels": _digest([raw_dir / DATA_ENTRY_FILE], raw_dir),
        "code": code_digest(),
    }


def fingerprint_id(inputs: Mapping[str, str]) -> str:
    """One digest of all `fingerprint` parts (recorded in the model file)."""
    return hashlib.sha256(json.dumps(dict(inputs), sort_keys=True).encode()).hexdigest()[:16]


def describe_inputs(raw_dir: Path, processed_dir: Path, splits_dir: Path) -> dict[str, str]:
    """What each `fingerprint` part stands for, in words a message can show."""
    return {
        "parameters": "the training parameters (params.yaml train, numerics), the seed or the process count",
        "processed": f"the processed images ({processed_dir})",
        "splits": f"the training or validation list ({splits_dir / 'train.txt'}, {splits_dir / 'val.txt'})",
        "labels": f"the labels ({raw_dir / DATA_ENTRY_FILE})",
        "code": "the code (cxrstudy's source, or the version of Python, torch, torchvision, NumPy, OpenCV or "
                "scikit-learn)",
    }


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


def _rng_state(loader_gen: torch.Generator) -> dict[str, Any]:
    np_state: Any = np.random.get_state()
    py_state = random.getstate()
    return {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": loader_gen.get_state(),
    }


def _set_rng_state(state: dict[str, Any], loader_gen: torch.Generator) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_s = state["numpy"]
    np.random.set_state((np_s[0], np.array(np_s[1], dtype=np.uint32), np_s[2], np_s[3], np_s[4]))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    loader_gen.set_state(state["loader"])


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


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
            channels_last: bool, amp: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid probabilities and float32 logits for every image the loader yields, in order."""
    model.eval()
    logits_all, labels_all = [], []
    for images, labels in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = model(to_input(images, device, channels_last))
        logits_all.append(logits.float().cpu())
        labels_all.append(labels)
    return torch.cat(logits_all).numpy(), torch.cat(labels_all).numpy()


def shard(n: int, where: Dist) -> list[int]:
    """This rank's items of n (every world_size-th from its rank), without DistributedSampler's padding: gathered,
    the shards hold every item exactly once."""
    return list(range(where.rank, n, where.world_size))


def gather_rows(array: np.ndarray, where: Dist) -> np.ndarray:
    """Every rank's rows of its `shard`, gathered back into item order; the identity on one process."""
    if where.world_size == 1:
        return array
    parts: list[np.ndarray | None] = [None] * where.world_size
    dist.all_gather_object(parts, array)
    rows = np.concatenate([p for p in parts if p is not None])
    order = np.concatenate([np.arange(r, len(rows), where.world_size) for r in range(where.world_size)])
    out = np.empty_like(rows)
    out[order] = rows
    return out


def mean_over_ranks(value: float, where: Dist, device: torch.device) -> float:
    if where.world_size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total) / where.world_size


def log_rank(where: Dist, model: nn.Module, record: dict[str, Any]) -> None:
    """With $CXRSTUDY_RANK_LOG set, append what this rank saw (and a digest of its weights) to <folder>/rank<R>.jsonl,
    so that a test can check that the ranks agree."""
    folder = os.environ.get(RANK_LOG_ENV)
    if not folder:
        return
    digest = hashlib.sha256()
    for name, tensor in sorted(_unwrap(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    Path(folder).mkdir(parents=True, exist_ok=True)
    line = json.dumps({"rank": where.rank, "world_size": where.world_size, **record,
                       "weights_sha256": digest.hexdigest()[:16]})
    with open(Path(folder) / f"rank{where.rank}.jsonl", "a") as handle:
        handle.write(line + "\n")


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """float32 probabilities from float32 logits, with torch's kernel: what evaluate saves and the report reads."""
    return torch.sigmoid(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))).numpy()


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    val_auroc: float
    lr: float


@dataclass
class TrainState:
    epoch: int = 0
    best_epoch: int = 0
    best_auroc: float = -math.inf
    best_model: dict[str, torch.Tensor] | None = None
    history: list[EpochRecord] = field(default_factory=list)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _state_dict_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in _unwrap(model).state_dict().items()}


def save_torch(payload: object, handle: IO[bytes]) -> None:
    """`torch.save` into memory, then one plain write into `handle`: torch's own zip writer reports a full disk as
    "RuntimeError: ... unexpected pos", a plain write as the ENOSPC `OSError` that the atomic writers name."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    handle.write(buffer.getbuffer())


def save_checkpoint(path: Path, inputs: Mapping[str, str], state: TrainState, model: nn.Module,
                    opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                    loader_gen: torch.Generator) -> None:
    payload = {
        "fingerprint": fingerprint_id(inputs),
        "inputs": dict(inputs),
        "epoch": state.epoch,
        "best_epoch": state.best_epoch,
        "best_auroc": state.best_auroc,
        "best_model": state.best_model,
        "history": [vars(r) for r in state.history],
        "model": _state_dict_cpu(model),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": _rng_state(loader_gen),
    }
    with atomic_file(path, "wb") as handle:
        save_torch(payload, handle)


def load_checkpoint(path: Path, inputs: Mapping[str, str], model: nn.Module, opt: torch.optim.Optimizer,
                    sched: torch.optim.lr_scheduler.LRScheduler, loader_gen: torch.Generator,
                    described: Mapping[str, str] | None = None) -> TrainState | None:
    """Restore a checkpoint made from the same `inputs` (`fingerprint`); None when there is none, or when it was
    made from other inputs: then it says which changed (`described` words them) and training starts afresh."""
    if not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    saved = payload.get("inputs")
    if not isinstance(saved, dict):
        print(f"{path}: checkpoint is from another version of cxrstudy (it records no inputs); starting afresh")
        return None
    changed = [key for key in sorted(inputs.keys() | saved.keys()) if saved.get(key) != inputs.get(key)]
    if changed:
        words = [(described or {}).get(key, key) for key in changed]
        print(f"{path}: checkpoint is from another configuration: {'; '.join(words)} changed since it was written; "
              "starting afresh")
        return None
    _unwrap(model).load_state_dict(payload["model"])
    opt.load_state_dict(payload["optimizer"])
    sched.load_state_dict(payload["scheduler"])
    _set_rng_state(payload["rng"], loader_gen)
    return TrainState(
        epoch=payload["epoch"],
        best_epoch=payload["best_epoch"],
        best_auroc=payload["best_auroc"],
        best_model=payload["best_model"],
        history=[EpochRecord(**r) for r in payload["history"]],
    )


def train_one_epoch(model: nn.Module, loader: DataLoader[tuple[torch.Tensor, torch.Tensor]], criterion: Criterion,
                    opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler, device: torch.device,
                    cfg: TrainParams, epoch: int, monitor: Any, show: bool) -> float:
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
                     seconds=time.perf_counter() - start, lr=sched.get_last_lr()[0])
    return total / max(batches, 1)


def run(params: Params, seed: int, raw_dir: Path, processed_dir: Path, splits_dir: Path, out_dir: Path,
        plots_file: Path, checkpoint_dir: Path) -> None:
    """Stage entry point: train one seed, write `out_dir/model.pt` and the per-epoch history to `plots_file`."""
    cfg = params.train
    device_kind = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    where = init_distributed(device_kind)
    ckpt_path = checkpoint_dir / CHECKPOINT_FILE
    if where.is_main:  # an output that cannot be written stops the stage now, not after the last epoch
        check_writable(out_dir, plots_file, ckpt_path)
    device = pick_device(cfg, where)
    numerics.apply_threads(params.numerics)
    seed_everything(seed, cfg.deterministic)

    images, parts = load_parts(raw_dir, processed_dir, splits_dir, ("train", "val"))
    train_part, val_part = parts["train"], parts["val"]
    stored = images.shape[-1]
    train_labels = train_part.labels
    if cfg.shuffle_labels:  # negative control: break the image-label link, keep the label distribution
        train_labels = train_labels[np.random.default_rng(seed).permutation(len(train_labels))]
    train_set = XrayDataset(images, train_part, train_transform(cfg.image_size, cfg.augment), train_labels)
    val_set = XrayDataset(images, val_part, eval_transform(cfg.image_size, stored))

    loader_gen = torch.Generator().manual_seed(seed)
    pin = device.type == "cuda"
    per_rank_batch = max(1, cfg.batch_size // where.world_size)
    if where.world_size > 1:
        sampler: DistributedSampler[Any] | None = DistributedSampler(train_set, where.world_size, where.rank,
                                                                     shuffle=True, seed=seed, drop_last=True)
        train_loader: DataLoader[Any] = DataLoader(train_set, batch_size=per_rank_batch, sampler=sampler,
                                                   drop_last=True, num_workers=cfg.num_workers, pin_memory=pin,
                                                   persistent_workers=cfg.num_workers > 0, generator=loader_gen)
        if len(val_set) < where.world_size:
            raise TrainingError(f"train: {len(val_set)} validation images for {where.world_size} processes")
        val_loader: DataLoader[Any] = DataLoader(val_set, batch_size=cfg.val_batch_size,
                                                 sampler=shard(len(val_set), where), num_workers=cfg.num_workers,
                                                 pin_memory=pin, persistent_workers=cfg.num_workers > 0)
    else:
        sampler = None
        train_loader = make_loader(train_set, per_rank_batch, shuffle=True, generator=loader_gen,
                                   num_workers=cfg.num_workers, pin_memory=pin)
        val_loader = make_loader(val_set, cfg.val_batch_size, shuffle=False, generator=None,
                                 num_workers=cfg.num_workers, pin_memory=pin)
    if len(train_loader) == 0:
        raise TrainingError(f"train: {len(train_set)} training images make no full batch of "
                            f"{per_rank_batch}; lower train.batch_size")

    model: nn.Module = build_model(len(train_part.labels[0]), cfg.pretrained).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if where.world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward_model = cast(nn.Module, torch.compile(model)) if cfg.compile else model
    criterion = make_criterion(cfg.loss, train_labels)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, cfg.epochs * len(train_loader))

    inputs = fingerprint(params, seed, raw_dir, processed_dir, splits_dir, where.world_size)
    state = load_checkpoint(ckpt_path, inputs, model, opt, sched, loader_gen,
                            describe_inputs(raw_dir, processed_dir, splits_dir)) or TrainState()
    if state.epoch and where.is_main:
        print(f"train seed {seed}: resuming after epoch {state.epoch} from {ckpt_path}")

    from cxrstudy.learning.monitoring import open_monitor  # here: its pydantic import is not needed to use this module

    monitor = open_monitor(params.monitor, seed=seed, rank=where.rank)
    started = time.perf_counter()
    try:
        with signals_to_exceptions():
            for epoch in range(state.epoch + 1, cfg.epochs + 1):
                if sampler is not None:
                    sampler.set_epoch(epoch)
                train_loss = train_one_epoch(forward_model, train_loader, criterion, opt, sched, device, cfg,
                                             epoch, monitor, show=where.is_main)
                train_loss = mean_over_ranks(train_loss, where, device)
                logits, labels = predict(forward_model, val_loader, device, cfg.channels_last, cfg.amp)
                logits, labels = gather_rows(logits, where), gather_rows(labels, where)
                val_loss = float(criterion(torch.from_numpy(logits), torch.from_numpy(labels)))
                if not math.isfinite(val_loss):
                    raise TrainingError(f"non-finite validation loss ({val_loss}) after epoch {epoch}: the weights "
                                        "diverged in its last steps; lower train.lr or check the input data")
                val_auroc = nanmean(per_class_auroc(labels, sigmoid(logits)))
                log_rank(where, model, {"epoch": epoch, "n_val": len(labels), "train_loss": train_loss,
                                        "val_loss": val_loss, "val_auroc": val_auroc})
                state.epoch = epoch
                state.history.append(EpochRecord(epoch, train_loss, val_loss, val_auroc,
                                                  float(sched.get_last_lr()[0])))
                if val_auroc > state.best_auroc:
                    state.best_epoch, state.best_auroc, state.best_model = epoch, val_auroc, _state_dict_cpu(model)
                if where.is_main:
                    save_checkpoint(ckpt_path, inputs, state, model, opt, sched, loader_gen)
                    print(f"seed {seed} epoch {epoch}/{cfg.epochs}: train loss {train_loss:.4f}, "
                          f"val loss {val_loss:.4f}, val AUROC {val_auroc:.4f}")
                # After the checkpoint: a signal during a slow push loses no finished epoch.
                monitor.epoch_end(epoch=epoch, val_loss=val_loss, val_auroc=val_auroc)
    finally:
        monitor.close()
    seconds = time.perf_counter() - started
    if where.is_main:
        environment = numerics.environment(params.numerics, device)
        _write_outputs(state, seed, fingerprint_id(inputs), out_dir, plots_file, environment)
        ckpt_path.unlink(missing_ok=True)
        sweep_stale(ckpt_path)  # what a run killed while checkpointing left behind
        print(f"train seed {seed}: best epoch {state.best_epoch} (val AUROC {state.best_auroc:.4f}), "
              f"{seconds:.1f} s -> {out_dir}")
    if where.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()


def _write_outputs(state: TrainState, seed: int, fp: str, out_dir: Path, plots_file: Path,
                   environment: dict[str, Any]) -> None:
    """The model folder and the history, both or neither: everything is written and synced before either is
    renamed into place. The model folder records the environment that trained it, and the machine."""
    with atomic_dir(out_dir) as tmp, atomic_file(plots_file) as handle:
        with atomic_file(tmp / MODEL_FILE, "wb") as model_out:  # a Python file: a full disk is an OSError
            save_torch({"model": state.best_model, "seed": seed, "epoch": state.best_epoch,
                        "val_auroc": state.best_auroc, "fingerprint": fp}, model_out)
        write_json(tmp / "summary.json", {"seed": seed, "best_epoch": state.best_epoch,
                                          "best_val_auroc": round(state.best_auroc, 6),
                                          "epochs": state.epoch, "environment": environment})
        write_json(tmp / MACHINE_FILE, numerics.machine())
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["epoch", "train_loss", "val_loss", "val_auroc", "lr"])
        for r in state.history:
            writer.writerow([r.epoch, f"{r.train_loss:.6f}", f"{r.val_loss:.6f}", f"{r.val_auroc:.6f}",
                             f"{r.lr:.8g}"])
        sync(handle)


def load_trained(path: Path, num_classes: int = 14) -> nn.Module:
    """The best model of a train stage, loaded safely (`weights_only=True`)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(num_classes, pretrained=False)
    model.load_state_dict(payload["model"])
    return model

"""Resuming training exactly: the per-epoch checkpoint, and the fingerprint that says whether it may be resumed.

Every epoch ends with an atomic checkpoint (model, optimizer, scheduler, every RNG state, the best model so far and
the history) under `checkpoints/seed_<seed>/`. A re-run resumes from it only when nothing that decides a training
result has changed (`fingerprint`); it then reaches the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from cxrstudy import numerics
from cxrstudy.atomic import atomic_file
from cxrstudy.closure import stage_closure
from cxrstudy.data.dataset import INFO_FILE, TABLE_FILE
from cxrstudy.data.shards import records_fingerprint
from cxrstudy.learning.distributed import unwrap
from cxrstudy.params import Params

CHECKPOINT_FILE = "last.pt"
SOURCES = Path(__file__).resolve().parents[1]  # the cxrstudy package, whose source is part of the fingerprint


@dataclass
class EpochRecord:
    """One row of the training history."""

    epoch: int
    train_loss: float
    val_loss: float
    val_auroc: float
    lr: float


@dataclass
class TrainState:
    """How far training has got: the last finished epoch, the best one so far (and its weights), the history."""

    epoch: int = 0
    best_epoch: int = 0
    best_auroc: float = -math.inf
    best_model: dict[str, torch.Tensor] | None = None
    history: list[EpochRecord] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------------
# The fingerprint


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
    """The version of everything that computes a training result: the source files the train stage's command
    imports (`closure.stage_closure`, which are its dvc.yaml deps: a change elsewhere in the package neither blocks a
    resume nor changes a retrained model file's bytes), and the versions of Python, torch, torchvision, NumPy, OpenCV
    and scikit-learn (validation AUROC picks the best epoch)."""
    sources = _digest(sorted(stage_closure("train")), SOURCES)
    return hashlib.sha256(json.dumps([sources, numerics.versions()], sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(params: Params, seed: int, raw_dir: Path, processed_dir: Path, splits_dir: Path,
                world_size: int) -> dict[str, str]:
    """What a checkpoint must match to be resumed, one digest per input (`describe_inputs` words them): the parameters
    (training, numerics, the seed and the process count), the processed data (its index, settings and each shard's
    record: the archive MD5, settings and code that made it; no image is read again, and a copy elsewhere, e.g. on
    another runner, resumes), the bytes of the training and validation lists and of the label
    table, and the code's version. Whatever else changes a training result changes one of them."""
    settings = json.dumps({"train": params.train.model_dump(), "numerics": params.numerics.model_dump(),
                           "seed": seed, "world": world_size}, sort_keys=True)
    return {
        "parameters": hashlib.sha256(settings.encode()).hexdigest()[:16],
        "processed": records_fingerprint(processed_dir),
        "splits": _digest([splits_dir / f"{part}.txt" for part in ("train", "val")], splits_dir),
        "labels": _digest([raw_dir / TABLE_FILE, raw_dir / INFO_FILE], raw_dir),
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
        "labels": f"the labels ({raw_dir / TABLE_FILE}, {raw_dir / INFO_FILE})",
        "code": "the code (cxrstudy's source, or the version of Python, torch, torchvision, NumPy, OpenCV or "
                "scikit-learn)",
    }


# --------------------------------------------------------------------------------------------------------------------
# Saving and restoring


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


def state_dict_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the (unwrapped) model's weights on the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}


def save_torch(payload: object, handle: IO[bytes]) -> None:
    """`torch.save` into memory, then one plain write into `handle`: torch's own zip writer reports a full disk as
    "RuntimeError: ... unexpected pos", a plain write as the ENOSPC `OSError` that the atomic writers name."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    handle.write(buffer.getbuffer())


def save_checkpoint(path: Path, inputs: Mapping[str, str], state: TrainState, model: nn.Module,
                    opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                    loader_gen: torch.Generator) -> None:
    """Write everything `load_checkpoint` needs to carry on exactly where `state` stands, atomically."""
    payload = {
        "fingerprint": fingerprint_id(inputs),
        "inputs": dict(inputs),
        "epoch": state.epoch,
        "best_epoch": state.best_epoch,
        "best_auroc": state.best_auroc,
        "best_model": state.best_model,
        "history": [vars(r) for r in state.history],
        "model": state_dict_cpu(model),
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
    unwrap(model).load_state_dict(payload["model"])
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

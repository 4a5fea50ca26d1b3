"""Running a model: the device, the seeds, the trained model's file, and batched inference.

What the train stage (validation after every epoch) and the evaluate stage (validation and test sets) share, so
that both compute their probabilities with the same code.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cxrstudy.errors import InputError, TrainingError
from cxrstudy.learning.loader import to_input
from cxrstudy.learning.model import ChestDenseNet, build_model
from cxrstudy.params import TrainParams

MODEL_FILE = "model.pt"  # the trained model, in the train stage's output folder


def pick_device(cfg: TrainParams, local_rank: int = 0) -> torch.device:
    """The device `train.device` asks for ('auto': a GPU when there is one); on a GPU, the `local_rank`-th one."""
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainingError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python's, NumPy's and torch's generators; with `deterministic`, only deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
            channels_last: bool, amp: bool) -> tuple[np.ndarray, np.ndarray]:
    """float32 logits and the labels of every image the loader yields, in order (bf16 autocast on a GPU with
    `amp`)."""
    model.eval()
    logits_all, labels_all = [], []
    for images, labels in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            logits = model(to_input(images, device, channels_last))
        logits_all.append(logits.float().cpu())
        labels_all.append(labels)
    return torch.cat(logits_all).numpy(), torch.cat(labels_all).numpy()


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """float32 probabilities from float32 logits, with torch's kernel: what evaluate saves and the report reads."""
    return torch.sigmoid(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))).numpy()


def read_trained(path: Path) -> dict[str, Any]:
    """A train stage's `MODEL_FILE`, loaded safely (`weights_only=True`); a missing file is an `InputError`."""
    if not path.is_file():
        raise InputError(f"{path}: trained model not found; run the train stage for this seed")
    return dict(torch.load(path, map_location="cpu", weights_only=True))


def model_labels(payload: dict[str, Any]) -> tuple[str, ...]:
    """The label names a trained model predicts, in the order of its outputs, and its label space."""
    labels = payload.get("labels")
    if not labels:
        raise InputError("the model file records no label names: it was trained by an older version; re-run the "
                         "train stage (dvc repro train)")
    return tuple(str(n) for n in labels)


def load_trained(path: Path) -> ChestDenseNet:
    """The best model of a train stage (its `MODEL_FILE`), with as many outputs as it was trained with."""
    payload = read_trained(path)
    model = build_model(int(payload["model"]["net.classifier.weight"].shape[0]), pretrained=False)
    model.load_state_dict(payload["model"])
    return model

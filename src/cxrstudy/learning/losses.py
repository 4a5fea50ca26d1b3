"""Training criteria: sigmoid focal loss (torchvision), BCE, and BCE weighted by class prevalence."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from cxrstudy.params import LossParams

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_criterion(cfg: LossParams, train_labels: np.ndarray | None = None) -> Criterion:
    """A mean-reduced loss over all (image, finding) pairs.

    Focal loss uses torchvision's alpha convention (positives × alpha, negatives × (1 - alpha); alpha = -1: none).
    `weighted_bce` weights positives of each class by negatives / positives in `train_labels`.
    """
    if cfg.name == "focal":
        alpha, gamma = cfg.alpha, cfg.gamma

        def focal(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return sigmoid_focal_loss(logits.float(), targets, alpha=alpha, gamma=gamma, reduction="mean")

        return focal
    if cfg.name == "bce":
        return lambda logits, targets: F.binary_cross_entropy_with_logits(logits.float(), targets)
    if train_labels is None:
        raise ValueError("weighted_bce needs the training labels to weight the classes")
    pos = train_labels.sum(axis=0)
    weight = torch.tensor((len(train_labels) - pos) / np.maximum(pos, 1.0), dtype=torch.float32)

    def weighted(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=weight.to(logits.device))

    return weighted

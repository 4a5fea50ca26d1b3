"""Training criteria: sigmoid focal loss (torchvision), BCE, and BCE weighted by class prevalence."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from cxrstudy.params import LossParams

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def masked(elementwise: Criterion) -> Criterion:
    """A mean over the (image, finding) pairs whose target is known: a NaN target (an uncertain label under
    `uncertain: ignore`) counts neither in the loss nor in the mean. Without NaN, exactly the plain mean."""
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(targets)
        if bool(known.all()):
            return elementwise(logits, targets).mean()
        values = elementwise(logits, torch.where(known, targets, torch.zeros_like(targets)))
        return values[known].mean() if bool(known.any()) else values.sum() * 0.0

    return loss


def make_criterion(cfg: LossParams, train_labels: np.ndarray | None = None) -> Criterion:
    """A mean-reduced loss over all (image, finding) pairs whose target is known (`masked`).

    Focal loss uses torchvision's alpha convention (positives × alpha, negatives × (1 - alpha); alpha = -1: none).
    `weighted_bce` weights positives of each class by negatives / positives among the known `train_labels`.
    """
    if cfg.name == "focal":
        alpha, gamma = cfg.alpha, cfg.gamma
        return masked(lambda logits, targets: sigmoid_focal_loss(logits.float(), targets, alpha=alpha, gamma=gamma,
                                                                 reduction="none"))
    if cfg.name == "bce":
        return masked(lambda logits, targets: F.binary_cross_entropy_with_logits(logits.float(), targets,
                                                                                 reduction="none"))
    if train_labels is None:
        raise ValueError("weighted_bce needs the training labels to weight the classes")
    pos = np.nansum(train_labels, axis=0)
    known = np.sum(~np.isnan(train_labels), axis=0).astype(np.float32) if np.isnan(train_labels).any() \
        else len(train_labels)  # float32 arithmetic either way
    weight = torch.tensor((known - pos) / np.maximum(pos, 1.0), dtype=torch.float32)

    def weighted(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=weight.to(logits.device),
                                                  reduction="none")

    return masked(weighted)

"""Loss functions, and the alpha convention of torchvision's focal loss."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cxrstudy.learning.losses import make_criterion
from tests.conftest import tiny_params


def reference_focal(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Lin et al. 2017, written out: -alpha_t (1 - p_t)^gamma log(p_t)."""
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    loss = (1 - p_t) ** gamma * ce
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean()


def sample() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 14, generator=g) * 3, (torch.rand(8, 14, generator=g) < 0.3).float()


def test_focal_loss_matches_the_formula_without_weighting() -> None:
    logits, targets = sample()
    crit = make_criterion(tiny_params().train.loss)
    assert torch.allclose(crit(logits, targets), reference_focal(logits, targets, -1, 2.0), atol=1e-6)


def test_focal_alpha_weights_positives_by_alpha_and_negatives_by_one_minus_alpha() -> None:
    logits, targets = sample()
    crit = make_criterion(tiny_params(train={"loss": {"alpha": 0.25, "gamma": 1.0}}).train.loss)
    assert torch.allclose(crit(logits, targets), reference_focal(logits, targets, 0.25, 1.0), atol=1e-6)


def test_focal_with_gamma_zero_is_bce() -> None:
    logits, targets = sample()
    crit = make_criterion(tiny_params(train={"loss": {"gamma": 0.0}}).train.loss)
    assert torch.allclose(crit(logits, targets), F.binary_cross_entropy_with_logits(logits, targets), atol=1e-6)


def test_weighted_bce_weights_positives_by_the_negative_to_positive_ratio() -> None:
    logits, targets = sample()
    labels = np.zeros((10, 14), np.float32)
    labels[:2] = 1  # 2 positives, 8 negatives in every class: weight 4
    crit = make_criterion(tiny_params(train={"loss": {"name": "weighted_bce"}}).train.loss, labels)
    expected = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=torch.full((14,), 4.0))
    assert torch.allclose(crit(logits, targets), expected)

"""Loss functions, the alpha convention of torchvision's focal loss, and masked targets (an uncertain label under
`uncertain: ignore`) left out of the loss."""

from __future__ import annotations

import numpy as np
import pytest
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


def masked_sample() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits and targets with about a quarter of the targets masked (NaN: an uncertain label under `ignore`)."""
    logits, targets = sample()
    mask = torch.rand(targets.shape, generator=torch.Generator().manual_seed(1)) < 0.25
    return logits, torch.where(mask, torch.full_like(targets, float("nan")), targets), mask


@pytest.mark.parametrize("name", ["focal", "bce", "weighted_bce"])
def test_a_masked_target_counts_neither_in_the_loss_nor_in_its_mean(name: str) -> None:
    logits, targets, mask = masked_sample()
    labels = targets.numpy()
    crit = make_criterion(tiny_params(train={"loss": {"name": name}}).train.loss, labels)
    loss = crit(logits, targets)
    assert torch.isfinite(loss)
    # The same loss as on the known pairs alone: whatever logit a masked pair has, it changes nothing.
    moved = logits.clone()
    moved[mask] += 100.0
    assert torch.allclose(crit(moved, targets), loss)
    known = ~mask
    if name == "focal":
        expected = reference_focal(logits[known], targets[known], -1, 2.0)
        assert torch.allclose(loss, expected, atol=1e-6)
    elif name == "bce":
        assert torch.allclose(loss, F.binary_cross_entropy_with_logits(logits[known], targets[known]), atol=1e-6)
    logits.requires_grad_(True)
    crit(logits, targets).backward()
    assert logits.grad is not None and bool((logits.grad[mask] == 0).all()) and torch.isfinite(logits.grad).all()


def test_without_masked_targets_the_loss_is_the_plain_mean() -> None:
    logits, targets = sample()
    crit = make_criterion(tiny_params(train={"loss": {"name": "bce"}}).train.loss)
    assert torch.equal(crit(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))


def test_a_batch_with_every_target_masked_has_zero_loss_and_a_gradient() -> None:
    logits = torch.randn(4, 3, requires_grad=True)
    loss = make_criterion(tiny_params().train.loss)(logits, torch.full((4, 3), float("nan")))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad is not None and bool((logits.grad == 0).all())


def test_weighted_bce_counts_only_the_known_labels() -> None:
    labels = np.zeros((10, 2), np.float32)
    labels[:2] = 1  # 2 positives
    labels[2:6, 1] = np.nan  # column 1: 2 positives, 4 negatives known -> weight 2; column 0: 8 negatives -> 4
    logits, targets = torch.randn(6, 2, generator=torch.Generator().manual_seed(2)), torch.tensor(
        [[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    crit = make_criterion(tiny_params(train={"loss": {"name": "weighted_bce"}}).train.loss, labels)
    expected = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=torch.tensor([4.0, 2.0]))
    assert torch.allclose(crit(logits, targets), expected)

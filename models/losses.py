"""Training losses: soft Dice plus cross-entropy, and the whole-tumour loss that scores a
tumour without caring how it divides into its classes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes (class 0 is background)."""
    probabilities = torch.softmax(logits, dim=1)
    one_hot = F.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    intersection = (probabilities * one_hot).sum(dims)
    total = probabilities.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + 1e-5) / (total + 1e-5)
    return 1 - dice[1:].mean()


def whole_tumor_loss(
    logits: torch.Tensor, target: torch.Tensor, tumor_classes: list[int]
) -> torch.Tensor:
    """Soft Dice plus cross-entropy of the whole tumour (the sum of ``tumor_classes``
    against the rest): blind to how the tumour divides into its classes."""
    log_probabilities = logits.log_softmax(1)
    others = [c for c in range(logits.shape[1]) if c not in tumor_classes]
    binary = torch.stack(
        [
            log_probabilities[:, others].logsumexp(1),
            log_probabilities[:, tumor_classes].logsumexp(1),
        ],
        dim=1,
    )
    inside = torch.isin(target, torch.tensor(tumor_classes, device=target.device)).long()
    return soft_dice_loss(binary, inside) + F.nll_loss(binary, inside)


def batch_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    whole_tumor_only: torch.Tensor | None = None,
    tumor_classes: list[int] | None = None,
) -> torch.Tensor:
    """Soft Dice plus cross-entropy over the batch; the samples flagged in
    ``whole_tumor_only`` are scored by ``whole_tumor_loss`` instead, each part weighted by its
    share of the batch."""
    if whole_tumor_only is None or not whole_tumor_only.any():
        return soft_dice_loss(logits, target) + F.cross_entropy(logits, target)
    loss = whole_tumor_only.float().mean() * whole_tumor_loss(
        logits[whole_tumor_only], target[whole_tumor_only], tumor_classes
    )
    full = ~whole_tumor_only
    if full.any():
        loss = loss + full.float().mean() * batch_loss(logits[full], target[full])
    return loss

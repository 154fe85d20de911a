"""Training losses of the two branches."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["class_balanced_bce", "softmax_cross_entropy"]


def class_balanced_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits on one-hot targets, mean over
    batch x classes, positives weighted by ``C - 1``: each image has one
    positive class against ``C - 1`` negatives, so this balances them."""
    num_classes = logits.shape[1]
    targets = F.one_hot(labels, num_classes).to(logits.dtype)
    pos_weight = torch.tensor(float(num_classes - 1), dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)

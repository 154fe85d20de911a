"""The dual-branch sigmoid method (Oh & Noh, BMVC 2025), its rules in one place
(docs/method.md).

* **The branch**: a second head of the same shape beside the classifier's
  head, reading the same input (:meth:`wsol.model.CAMModel.add_sigmoid_branch`
  puts it there).  Initialised as a copy of the head (the paper) or as the
  public code does (:func:`normal_branch_init` and the architectures' own).
* **Training**: everything but the branch frozen (in eval mode), the branch
  fitted with a class-balanced binary cross-entropy (:func:`class_balanced_bce`);
  :func:`training_loss` is the objective of a training step.
* **Maps**: the softmax head still classifies; maps come from the branch with
  every channel weight clamped at zero (:func:`clamp_weights`); softmax-branch
  maps are never clamped (which branch clamps what: :mod:`wsol.branches`).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SIGMOID_BRANCH", "normal_branch_init", "class_balanced_bce",
           "softmax_cross_entropy", "training_loss", "clamp_weights"]

SIGMOID_BRANCH = "fc2"  # the branch's attribute; also its name on the command line


def normal_branch_init(branch: nn.Module) -> None:
    """The public code's initialisation of a new head: every Linear and conv
    N(0, 0.01), bias 0."""
    for m in branch.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


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


def training_loss(outputs: dict[str, torch.Tensor | None], labels: torch.Tensor,
                  joint: bool, method_loss: Callable[[dict, torch.Tensor], torch.Tensor]
                  | None = None) -> torch.Tensor:
    """A vanilla model: cross-entropy of the softmax head.  A dual-branch one:
    the class-balanced BCE of the sigmoid branch, plus the softmax head's
    cross-entropy when anything besides the branch trains (``joint``; the
    public code's sum, which has no gradient otherwise).  Multi-label data
    (``labels`` multi-hot [B, C]): every head is a BCE head, trained with the
    plain multi-label BCE (ReCAM's loss; one positive per image no longer
    holds, so there is no class balancing).  ``method_loss``: a WSOL
    method's own objective for the softmax head (ACoL's, SPG's:
    :func:`wsol.wsol_methods.method_loss`).  In float32."""
    if labels.dim() == 2:
        from wsol.recam import multilabel_bce
        head_loss = branch_loss = multilabel_bce
    else:
        head_loss, branch_loss = softmax_cross_entropy, class_balanced_bce
    def head() -> torch.Tensor:
        if method_loss is not None:
            return method_loss(outputs, labels)
        return head_loss(outputs["logits"].float(), labels)
    if outputs["logits_sigmoid"] is None:
        return head()
    loss = branch_loss(outputs["logits_sigmoid"].float(), labels)
    return loss + head() if joint else loss


def clamp_weights(weights: torch.Tensor) -> torch.Tensor:
    """The method's rule: negative weights (channel or element-wise) are removed."""
    return weights.clamp_min(0)

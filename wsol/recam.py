"""Class re-activation (ReCAM; Chen et al., CVPR 2022), its rules in one place
(docs/method.md, "ReCAM").

* **The mask**: for every ground-truth class k of an image, the BCE head's CAM
  ``M_k = ReLU(sum_c W1_kc A_c) / (max(...) + 1e-5)``, recomputed every step
  and not detached, so the SCE term trains the BCE head too.  The BCE head is
  the sigmoid branch of a dual-branch model (with its clamped weights: the
  method's maps) and the model's head otherwise (a multi-label model's head is
  a BCE head).
* **The re-activation head** ``fc_re``: bias-free, ``W2 [C, K]``, a softmax
  classifier of the class-specific features ``f_k = mean_hw(M_k * A)``.
* **The loss**: softmax cross-entropy of ``fc_re(f_k)`` with label k, averaged
  over an image's classes, summed over images, divided by the batch size
  (:func:`reactivation_loss`); added to the head's loss times ``lambda``.
* **The maps** (the ``recam`` branch): class weights ``W2 * W1`` (``product``,
  ReCAM's PASCAL VOC maps), ``W1`` after re-activation (``mask_head``, its COCO
  maps) or ``W2`` (``reactivation``), applied to the (re-activated) features.
  Clamping is spelled out (:data:`RECAM_CLAMPS`): ``none`` (ReCAM),
  ``factors`` (both factors clamped at zero before the product) or
  ``product`` (the product's channel weights clamped, as the sigmoid branch's).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["RECAM_MAPS", "RECAM_CLAMPS", "RECAM_TRAINS", "multilabel_bce",
           "reactivation_loss", "recam_class_weights", "new_reactivation_head",
           "multi_hot"]

RECAM_MAPS = ("product", "mask_head", "reactivation")
RECAM_CLAMPS = ("none", "factors", "product")
RECAM_TRAINS = ("heads", "all")
MASK_EPS = 1e-5  # ReCAM's guard in M_k's max normalisation


def multilabel_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits on multi-hot targets, mean over
    batch x classes (PyTorch's multilabel_soft_margin_loss, ReCAM's loss)."""
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def multi_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices [B] -> one-hot [B, C]; multi-hot [B, C] unchanged."""
    if labels.dim() == 2:
        return labels
    return F.one_hot(labels.long(), num_classes).to(torch.float32)


def reactivation_loss(features: torch.Tensor, mask_weights: torch.Tensor,
                      reactivation_weights: torch.Tensor,
                      targets: torch.Tensor) -> torch.Tensor:
    """ReCAM's SCE term.

    Args:
        features: A, [B, K, h, w] (the CAM layer's output, as the head reads it).
        mask_weights: W1 [C, K] of the BCE head (with gradient, not detached).
        reactivation_weights: W2 [C, K] of the re-activation head.
        targets: multi-hot [B, C] (one-hot for single-label data).

    One term per (image, ground-truth class) pair: the cross-entropy of
    ``W2 f_k`` with label k, ``f_k = mean_hw(M_k * A)``; averaged over each
    image's classes, summed over the images, divided by B.  An image
    without classes adds nothing (and still counts in B, as in ReCAM).
    """
    batch = features.shape[0]
    image, cls = torch.nonzero(targets > 0, as_tuple=True)
    if image.numel() == 0:
        return features.sum() * 0.0
    a = features[image]                                          # [P, K, h, w]
    cams = F.relu(torch.einsum("pk,pkhw->phw", mask_weights[cls].to(a.dtype), a))
    cams = cams / (cams.amax((1, 2), keepdim=True) + MASK_EPS)
    pooled = torch.einsum("phw,pkhw->pk", cams, a) / (a.shape[2] * a.shape[3])
    logits = pooled @ reactivation_weights.to(pooled.dtype).t()   # [P, C]
    terms = F.cross_entropy(logits.float(), cls, reduction="none")
    per_image = torch.zeros(batch, device=terms.device, dtype=terms.dtype)
    per_image.index_add_(0, image, terms)
    counts = torch.bincount(image, minlength=batch).clamp_min(1).to(terms.dtype)
    return (per_image / counts).sum() / batch


def recam_class_weights(mask_weights: torch.Tensor, reactivation_weights: torch.Tensor,
                        mode: str, clamp: str) -> torch.Tensor:
    """The ``recam`` branch's class weights [C, K] (see the module docstring);
    ``clamp="product"`` is applied later, to the channel weights of each map,
    as the sigmoid branch's clamp is."""
    if mode not in RECAM_MAPS:
        raise ValueError(f"unknown ReCAM map {mode!r}; choose one of {RECAM_MAPS}")
    if clamp not in RECAM_CLAMPS:
        raise ValueError(f"unknown ReCAM clamp {clamp!r}; choose one of {RECAM_CLAMPS}")
    w1, w2 = mask_weights, reactivation_weights
    if clamp == "factors":
        w1, w2 = w1.clamp_min(0), w2.clamp_min(0)
    if mode == "product":
        return w2 * w1
    return w1 if mode == "mask_head" else w2


def new_reactivation_head(channels: int, num_classes: int, seed: int = 0) -> nn.Linear:
    """A bias-free linear head ``K -> C`` initialised as PyTorch initialises a
    1x1 convolution (ReCAM's FC2), from its own generator: adding it draws
    nothing from the global random stream, so everything else trains as
    without it."""
    head = nn.Linear(channels, num_classes, bias=False)
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(channels)  # kaiming_uniform_(a=sqrt(5)) of a K-input layer
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=generator)
    return head

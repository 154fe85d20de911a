"""wsolevaluation's WSOL training methods (its ``--wsol_method``; docs/method.md).

``cam`` trains the network as it is.  Hide-and-Seek (``has``) and CutMix
(``cutmix``) change only the training batches, so they train the plain CAM
network -- with or without the sigmoid branch -- and their maps are CAM's.
ACoL, SPG and ADL change the network itself (:mod:`wsol.wsol_networks`,
selected by :func:`wsol.architectures.wsol_network`); ACoL and SPG also train
with losses of their own (:func:`method_loss`).

Each batch's randomness comes from its own generator seeded by
(``--seed``, rank, epoch, batch), so a resumed or re-run epoch draws the
same hidden cells and boxes, and ranks draw different ones.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from wsol.wsol_networks import acol_loss, spg_loss

__all__ = ["WSOL_METHODS", "BatchMix", "method_loss", "hide_and_seek_mask", "cutmix_box",
           "HideAndSeek", "CutMix", "batch_augment"]

Tensor = torch.Tensor

WSOL_METHODS = ("cam", "has", "acol", "spg", "adl", "cutmix")


@dataclass
class BatchMix:
    """A training batch after the method's augmentation.  The loss is
    ``lam * loss(labels) + (1 - lam) * loss(labels_b)`` (CutMix); without a
    second label set it is ``loss(labels)``."""
    images: Tensor
    labels: Tensor
    labels_b: Tensor | None = None
    lam: float = 1.0


def batch_rng(seed: int, rank: int, epoch: int, batch: int) -> np.random.Generator:
    """The batch's own random source (see the module's docstring)."""
    return np.random.default_rng([seed, rank, epoch, batch])


def hide_and_seek_mask(height: int, width: int, batch: int, grid_size: int, drop_rate: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Hide-and-Seek's keep mask ``[batch, height, width]`` (bool): the image is
    cut into cells of ``grid_size`` x ``grid_size`` pixels (the last row and
    column may be narrower) and each cell is hidden when its uniform draw is
    ``<= drop_rate`` -- wsolevaluation's rule; its ``--has_grid_size`` is the
    cell's side in pixels, not the number of cells.  Draws are in row-major
    cell order per image."""
    rows, cols = math.ceil(height / grid_size), math.ceil(width / grid_size)
    keep = rng.random((batch, rows, cols)) > drop_rate
    return keep.repeat(grid_size, 1)[:, :height].repeat(grid_size, 2)[:, :, :width]


def cutmix_box(height: int, width: int, lam: float,
               rng: np.random.Generator) -> tuple[int, int, int, int]:
    """CutMix's box ``(top, left, bottom, right)`` for a mixing ratio ``lam``:
    sides ``int(side * sqrt(1 - lam))``, centre uniform over the pixels, the
    box clipped to the image (so it may be smaller near an edge)."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    return int(top), int(left), int(bottom), int(right)


@dataclass(frozen=True)
class HideAndSeek:
    """Hide-and-Seek (Singh & Lee, ICCV 2017): hidden cells are set to zero,
    which after normalisation is the dataset's mean colour."""
    grid_size: int = 4
    drop_rate: float = 0.5
    seed: int = 0
    rank: int = 0

    def __call__(self, images: Tensor, labels: Tensor, epoch: int, batch: int) -> BatchMix:
        if self.grid_size == 0:
            return BatchMix(images, labels)
        b, _, h, w = images.shape
        keep = hide_and_seek_mask(h, w, b, self.grid_size, self.drop_rate,
                                  batch_rng(self.seed, self.rank, epoch, batch))
        keep = torch.from_numpy(keep).to(images.device, non_blocking=True)
        return BatchMix(images * keep[:, None].to(images.dtype), labels)


@dataclass(frozen=True)
class CutMix:
    """CutMix (Yun et al., ICCV 2019): with probability ``prob``, a box of each
    image is replaced by the same box of another image of the batch (a random
    permutation); ``lam`` (first drawn from Beta(beta, beta)) becomes the
    share of the image left unreplaced."""
    beta: float = 1.0
    prob: float = 1.0
    seed: int = 0
    rank: int = 0

    def __call__(self, images: Tensor, labels: Tensor, epoch: int, batch: int) -> BatchMix:
        rng = batch_rng(self.seed, self.rank, epoch, batch)
        if not (self.beta > 0 and self.prob > rng.random()):
            return BatchMix(images, labels)
        b, _, h, w = images.shape
        lam = float(rng.beta(self.beta, self.beta))
        order = torch.from_numpy(rng.permutation(b)).to(images.device)
        top, left, bottom, right = cutmix_box(h, w, lam, rng)
        mixed = images.clone()
        mixed[:, :, top:bottom, left:right] = images[order, :, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (h * w)
        return BatchMix(mixed, labels, labels[order], lam)


def batch_augment(method: str, *, has_grid_size: int = 4, has_drop_rate: float = 0.5,
                  cutmix_beta: float = 1.0, cutmix_prob: float = 1.0, seed: int = 0,
                  rank: int = 0) -> Callable[[Tensor, Tensor, int, int], BatchMix] | None:
    """The training batches' augmentation of a WSOL method, or None (``cam``)."""
    if method == "has":
        return HideAndSeek(has_grid_size, has_drop_rate, seed, rank)
    if method == "cutmix":
        return CutMix(cutmix_beta, cutmix_prob, seed, rank)
    if method in ("acol", "spg", "adl"):
        return None  # their networks do their part (wsol.wsol_networks)
    if method != "cam":
        raise ValueError(f"--wsol_method {method!r}: choose from {', '.join(WSOL_METHODS)}")
    return None


def method_loss(method: str, spg_thresholds: tuple[tuple[float, float], ...] = (
        (0.7, 0.01), (0.5, 0.05), (0.7, 0.1))) -> Callable[[dict, Tensor], Tensor] | None:
    """The softmax head's objective of a WSOL method, from the model's outputs
    and the labels: ACoL's and SPG's own (:mod:`wsol.wsol_networks`), None for
    the others (cross-entropy).  ``spg_thresholds``: ((1h, 1l), (2h, 2l), (3h, 3l))."""
    if method == "acol":
        return acol_loss
    if method == "spg":
        return functools.partial(spg_loss, thresholds=spg_thresholds)
    return None

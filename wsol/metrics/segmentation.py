"""Seed mIoU: class activation maps as segmentation seeds (ReCAM's protocol,
docs/protocol.md "Seed mIoU").

For each image, the maps of its ground-truth classes (normalised per class
to [0, 1]) are stacked after a constant background score ``t``; every pixel
takes the argmax (the background on a tie, as numpy's argmax takes the first
maximum); a ``(C + 1) x (C + 1)`` confusion matrix over the evaluation images
is accumulated with the label 255 ignored; IoU per class, mIoU = their mean
over the classes that occur (NaN ones skipped).  Reported at the fixed ``t``
(0.21 on VOC) and over a sweep of ``t`` in steps of 0.01, whose best is
chosen on the ground truth (an upper bound, flagged as such).

The comparison is done in the maps' dtype, as ReCAM's evaluation does (its
float32 maps padded with the threshold: ``t`` is rounded to float32 too).
:class:`SegmentationEvaluator` keeps, per image pixel, how many thresholds
it beats (one bincount), so every threshold of the sweep comes from one pass.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from wsol.data.metadata import (MetadataError, configure_metadata, get_image_ids,
                                get_segmentation_paths)
from wsol.metrics.base import EvalContext, Evaluator, SeedBatch

__all__ = ["SegmentationEvaluator", "IGNORE_LABEL", "sweep_thresholds", "miou",
           "load_label_map"]

IGNORE_LABEL = 255
SWEEP_STEP = 0.01


def sweep_thresholds(fixed: float, dtype=np.float32) -> np.ndarray:
    """0, 0.01, ..., 0.99 and ``fixed``, sorted, in the maps' dtype."""
    values = np.concatenate([np.arange(100) * SWEEP_STEP, [fixed]]).astype(dtype)
    return np.unique(values)


def miou(confusion: np.ndarray) -> tuple[float, np.ndarray]:
    """(mIoU in percent over the classes with a defined IoU, IoU per class)."""
    confusion = confusion.astype(np.float64)
    diagonal = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - diagonal
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = diagonal / union
    defined = iou[~np.isnan(iou)]
    return (100.0 * float(defined.mean()) if defined.size else math.nan), iou


def load_label_map(path: str) -> np.ndarray:
    """A class-index mask (VOC's palette PNGs hold the indices) as uint8."""
    from PIL import Image
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise MetadataError(f"{path}: a class-index mask must be a palette or grey PNG, "
                                f"not {image.mode}")
        return np.array(image, dtype=np.uint8)


class SegmentationEvaluator(Evaluator):
    """wsolevaluation's shape: constructed from a split's metadata,
    ``accumulate(maps, keys, image_id)`` per image, then ``compute()``; in a
    run the evaluator protocol (:mod:`wsol.metrics.base`, :class:`SeedBatch`).

    ``maps``: float [K, H, W] in [0, 1], the maps of the image's ground-truth
    classes at the mask's size; ``keys``: their class indices (0-based,
    ascending as ReCAM lists them).  State: integer counts, summed across
    processes (``state()`` / ``load_state()``).
    """

    def __init__(self, metadata: dict, dataset_name: str, split: str, mask_root: str,
                 num_classes: int, threshold: float = 0.21, per_image: bool = False):
        self.metadata = metadata
        self.dataset_name = dataset_name
        self.split = split
        self.mask_root = mask_root
        self.num_classes = int(num_classes)
        self.threshold = float(threshold)
        self.image_ids = get_image_ids(metadata)
        self.mask_paths = get_segmentation_paths(metadata)
        missing = [i for i in self.image_ids if i not in self.mask_paths]
        if missing:
            raise MetadataError(f"{metadata['segmentation']}: no mask for {len(missing)} "
                                f"image id(s) of image_ids.txt, first: {missing[0]!r}")
        self._thresholds: np.ndarray | None = None
        # Each image's confusion at the fixed threshold (per_image: for the bootstrap).
        self._index = ({image_id: i for i, image_id in enumerate(self.image_ids)}
                       if per_image else {})
        self.reset()

    @classmethod
    def for_run(cls, context: EvalContext) -> "SegmentationEvaluator":
        return cls(context.metadata, context.dataset.name, context.split, context.mask_folder,
                   context.num_classes, context.seed_threshold, context.bootstrap > 0)

    # -- the evaluator protocol (wsol.metrics.base) -------------------------------
    def reset(self) -> None:
        self._counts: np.ndarray | None = None  # [T + 1, C + 1, C + 1]
        self.num_images = 0
        n = self.num_classes + 1
        self.image_confusions = (np.zeros((len(self._index), n, n), np.int32)
                                 if self._index else None)

    def process(self, batch: SeedBatch) -> None:
        self.accumulate(batch.maps, batch.keys, batch.image_id)

    def evaluate(self) -> dict:
        return self.summary()

    def thresholds(self, dtype=np.float32) -> np.ndarray:
        if self._thresholds is None:
            self._thresholds = sweep_thresholds(self.threshold, dtype)
        return self._thresholds

    def _zero(self) -> np.ndarray:
        n = self.num_classes + 1
        return np.zeros((len(self.thresholds()) + 1, n, n), np.int64)

    def label_map(self, image_id: str) -> np.ndarray:
        return load_label_map(os.path.join(self.mask_root, self.mask_paths[image_id]))

    def accumulate(self, maps: np.ndarray, keys: Sequence[int], image_id: str) -> None:
        if image_id not in self.mask_paths:
            raise KeyError(f"image id {image_id!r} has no mask in {self.metadata['segmentation']}")
        maps = np.asarray(maps)
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        if maps.ndim != 3 or maps.shape[0] != keys.size:
            raise ValueError(f"expected maps [K, H, W] for {keys.size} classes, got "
                             f"{maps.shape}")
        if keys.size and (keys.min() < 0 or keys.max() >= self.num_classes):
            raise ValueError(f"class indices must lie in [0, {self.num_classes})")
        labels = self.label_map(image_id)
        if keys.size and labels.shape != maps.shape[1:]:
            raise ValueError(f"maps of {image_id!r} are {maps.shape[1:]}, its mask is "
                             f"{labels.shape}: seeds are scored at the mask's size")
        thresholds = self.thresholds(maps.dtype if maps.dtype in (np.float32, np.float64)
                                     else np.float32)
        if keys.size:
            top = maps.max(0)
            predicted = keys[maps.argmax(0)] + 1  # the first maximum, as numpy's argmax
            beaten = np.searchsorted(thresholds, top.astype(thresholds.dtype), side="left")
        else:  # no class: every pixel is background
            predicted = np.zeros(labels.shape, np.int64)
            beaten = np.zeros(labels.shape, np.int64)
        valid = labels != IGNORE_LABEL
        truth = labels[valid].astype(np.int64)
        if truth.size and truth.max() > self.num_classes:
            raise MetadataError(f"{self.mask_paths[image_id]}: label {truth.max()} is neither a "
                                f"class (1..{self.num_classes}) nor {IGNORE_LABEL}")
        n = self.num_classes + 1
        index = (beaten[valid] * n + truth) * n + predicted[valid]
        counts = np.bincount(index, minlength=(len(thresholds) + 1) * n * n)
        if self.image_confusions is not None:  # a pixel beats the fixed t: its class
            fixed = int(np.flatnonzero(thresholds == thresholds.dtype.type(self.threshold))[0])
            seeds = np.where(beaten[valid] > fixed, predicted[valid], 0)
            self.image_confusions[self._index[image_id]] = np.bincount(
                truth * n + seeds, minlength=n * n).reshape(n, n)
        if self._counts is None:
            self._counts = self._zero()
        self._counts += counts.reshape(-1, n, n)
        self.num_images += 1

    def confusions(self) -> np.ndarray:
        """The confusion matrix at every threshold: [T, C + 1, C + 1] (rows:
        ground truth, columns: prediction).  A pixel that beats ``b``
        thresholds is its class for the first ``b`` of them, background after."""
        counts = self._counts if self._counts is not None else self._zero()
        beyond = np.cumsum(counts[::-1], axis=0)[::-1]     # beyond[j] = sum_{b >= j} counts[b]
        confusion = beyond[1:].copy()                       # b > j: the predicted class
        below = np.cumsum(counts, axis=0)[:-1]             # b <= j: background
        confusion[:, :, 0] += below.sum(2)
        return confusion

    def compute(self) -> float:
        """mIoU (percent) at the fixed threshold."""
        index = int(np.flatnonzero(self.thresholds() == self.thresholds().dtype.type(
            self.threshold))[0])
        return miou(self.confusions()[index])[0]

    def summary(self) -> dict:
        thresholds = self.thresholds()
        values = [miou(c) for c in self.confusions()]
        index = int(np.flatnonzero(thresholds == thresholds.dtype.type(self.threshold))[0])
        curve = [v for v, _ in values]
        best = int(np.nanargmax(curve)) if not all(math.isnan(v) for v in curve) else index
        return {"mIoU": curve[index], "threshold": self.threshold,
                "mIoU (best t, chosen on GT)": curve[best], "best t": float(thresholds[best]),
                "iou_per_class": [None if math.isnan(v) else 100.0 * float(v)
                                  for v in values[index][1]],
                "curves": {"thresholds": [float(t) for t in thresholds], "mIoU": curve},
                "num_images": self.num_images}

    def state(self) -> dict[str, np.ndarray]:
        counts = self._counts if self._counts is not None else self._zero()
        state = {"counts": counts.copy(), "num_images": np.asarray(self.num_images, np.int64)}
        if self.image_confusions is not None:
            state["image_confusions"] = self.image_confusions.copy()
        return state

    def bootstrap_samples(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Seed mIoU at the fixed threshold of each resample (``weights``:
        ``[R, images]``); the sweep's best is chosen on the ground truth and has
        no interval."""
        if self.image_confusions is None:
            raise RuntimeError("per-image results were not kept: per_image=True")
        n = self.num_classes + 1
        confusion = (weights.astype(np.float64) @ self.image_confusions.reshape(
            len(self.image_confusions), -1).astype(np.float64)).reshape(-1, n, n)
        diagonal = np.diagonal(confusion, axis1=1, axis2=2)
        union = confusion.sum(1) + confusion.sum(2) - diagonal
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = diagonal / union
            return {"mIoU": 100.0 * np.nanmean(iou, axis=1)}

    def load_state(self, state: dict) -> None:
        counts = np.asarray(state["counts"], np.int64)
        if counts.shape != self._zero().shape:
            raise ValueError(f"state['counts'] has shape {counts.shape}, expected "
                             f"{self._zero().shape}")
        self._counts = counts.copy()
        self.num_images = int(np.asarray(state["num_images"]))
        if self.image_confusions is not None:
            self.image_confusions = np.asarray(state["image_confusions"]).astype(np.int32)



def segmentation_evaluator(metadata_root: str, mask_root: str, dataset_name: str, split: str,
                           num_classes: int, threshold: float = 0.21) -> SegmentationEvaluator:
    """The evaluator of ``<metadata_root>/<dataset>/<split>`` with masks under
    ``<mask_root>/<dataset>``."""
    metadata = configure_metadata(os.path.join(metadata_root, dataset_name, split))
    return SegmentationEvaluator(metadata, dataset_name, split,
                                 os.path.join(mask_root, dataset_name), num_classes, threshold)

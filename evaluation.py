"""Localization metrics of the wsolevaluation protocol (SPEC §3), exact and fast.

Public names and meanings follow clovaai/wsolevaluation's ``evaluation.py``:
``calculate_multiple_iou``, ``resize_bbox``, ``compute_bboxes_from_scoremaps``,
``get_mask``, ``BoxEvaluator`` / ``MaskEvaluator`` (constructed with
``metadata, dataset_name, split, cam_threshold_list, iou_threshold_list,
mask_root, multi_contour_eval``; ``accumulate(scoremap, image_id)`` and
``compute()``).  Given the same score maps, MaxBoxAcc, MaxBoxAccV2 and PxAP
are identical to wsolevaluation's, bit for bit.

How the box metrics are made fast without changing a result:

* A map is quantised once, ``uint8(map * 255)`` in float64, and a threshold
  ``t`` keeps the pixels strictly above ``int(t * max)``; only 257 such
  levels exist, whatever the threshold list, so every threshold is mapped to
  its level through a table indexed by the map's quantised maximum.
* The boxes of every contour (holes included) at every level come from three
  union-find sweeps over the pixels sorted by value (``wsol/_box_kernels.py``
  explains why that equals OpenCV's ``findContours``), compiled with numba.
  Levels where the single-contour winner cannot be told apart by area alone
  are settled by OpenCV itself.
* Images run in parallel threads (the compiled code releases the GIL), both
  contour modes and the GT-known / Top-1 Loc counts come from the same pass,
  and all state is integer counts, so evaluators of several processes can be
  summed (``counts()`` / ``add_counts()`` / ``merge()``).

``ReferenceBoxEvaluator`` is the straightforward per-threshold evaluator
(``cv2.findContours`` for each threshold), kept for the equality tests and
the benchmark (``scripts/bench_eval.py``).

Command line (scores saved maps, ``<scoremap_root>/<image_id>.npy``, as
wsolevaluation's evaluator does)::

    python evaluation.py --scoremap_root train_log/scoremaps \
        --metadata_root metadata/ --mask_root dataset/ --dataset_name CUB \
        --split test --cam_curve_interval 0.001 --iou_threshold_list 30 50 70
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch

from data_loaders import (MetadataError, configure_metadata,
                          get_bounding_boxes, get_image_ids, get_image_sizes,
                          get_mask_paths)
from wsol import _box_kernels as _kernels
from wsol.cams import normalize_maps

__all__ = [
    "make_threshold_list",
    "check_scoremap_validity",
    "check_box_convention",
    "calculate_multiple_iou",
    "resize_bbox",
    "compute_bboxes_from_scoremaps",
    "normalize_scoremap",
    "normalize_scoremaps",
    "load_mask_image",
    "get_mask",
    "LocalizationEvaluator",
    "BoxEvaluator",
    "MaskEvaluator",
    "ReferenceBoxEvaluator",
    "evaluate_wsol",
    "evaluate_scoremaps",
]

logger = logging.getLogger(__name__)

_RESIZE_LENGTH = 224
# OpenCV 3 returns (image, contours, hierarchy); later versions drop image.
_CONTOUR_INDEX = 1 if cv2.__version__.split(".")[0] == "3" else 0
_NUM_LEVELS = _kernels.NUM_LEVELS
# Maps accumulated one at a time are buffered and scored in batches of this
# size, so that the per-image API also runs in parallel threads.
_FLUSH_SIZE = 256


# --------------------------------------------------------------------------
# wsolevaluation's helpers
# --------------------------------------------------------------------------

def make_threshold_list(interval: float, style: str = "wsolevaluation") -> list[float]:
    """CAM thresholds as wsolevaluation builds them: ``arange(0, 1, interval)``;
    ``style="public_code"``: as the method's public code builds them,
    ``round(i * interval, 3)`` for ``i = 0 .. 1/interval`` (1.0 included).

    Kept as those exact expressions: the floating-point values decide which
    integer level each threshold maps to (e.g. 0.2 * 5 is 1 while the arange
    value just below 0.2 gives 0).
    """
    if not interval > 0:
        raise ValueError(f"cam_curve_interval must be > 0, got {interval}")
    if style == "public_code":
        return [round(i * interval, 3) for i in range(int(1 / interval) + 1)]
    if style != "wsolevaluation":
        raise ValueError(f"unknown threshold list style {style!r}")
    return list(np.arange(0, 1, interval))


def _check_scoremap_type(scoremap) -> None:
    """A 2-D floating numpy array (the cheap part of wsolevaluation's checks)."""
    if not isinstance(scoremap, np.ndarray):
        raise TypeError(f"Scoremap must be a numpy array; it is {type(scoremap)}.")
    if not np.issubdtype(scoremap.dtype, np.floating):
        raise TypeError(f"Scoremap must be of a float type; it is of "
                        f"{scoremap.dtype} type.")
    if scoremap.ndim != 2:
        raise ValueError(f"Scoremap must be a 2D array; it is {scoremap.ndim}D.")


def check_scoremap_validity(scoremap: np.ndarray) -> None:
    """wsolevaluation's checks: a 2-D float array in [0, 1] without NaN.

    Unlike wsolevaluation (which demands float64), any floating dtype is
    accepted; values are quantised in float64 either way.
    """
    _check_scoremap_type(scoremap)
    if np.isnan(scoremap).any():
        raise ValueError("Scoremap must not contain nans.")
    if (scoremap > 1).any() or (scoremap < 0).any():
        raise ValueError(f"Scoremap must be in range [0, 1]. "
                         f"scoremap.min()={scoremap.min()}, "
                         f"scoremap.max()={scoremap.max()}.")


def check_box_convention(boxes: np.ndarray, convention: str) -> None:
    """Raise RuntimeError unless boxes (4,) or (N, 4) follow ``convention``
    ('x0y0x1y1' or 'xywh') with non-negative coordinates."""
    boxes = np.asarray(boxes)
    if (boxes < 0).any():
        raise RuntimeError("Box coordinates must be non-negative.")
    if boxes.ndim == 1:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise RuntimeError("Box array must have dimension (4) or (num_boxes, 4).")
    if convention == "x0y0x1y1":
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
    elif convention == "xywh":
        widths = boxes[:, 2]
        heights = boxes[:, 3]
    else:
        raise ValueError(f"Unknown convention {convention}.")
    if (widths < 0).any() or (heights < 0).any():
        raise RuntimeError(f"Boxes do not follow the {convention} convention.")


def calculate_multiple_iou(box_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``box_a`` (N, 4) with every box in ``box_b`` (M, 4).

    x0y0x1y1 boxes with inclusive pixel coordinates (+1 on width and height);
    a non-positive union gives IoU 0.  Returns float64 (N, M).
    """
    box_a = np.asarray(box_a)
    box_b = np.asarray(box_b)
    check_box_convention(box_a, "x0y0x1y1")
    check_box_convention(box_b, "x0y0x1y1")
    a = box_a[:, None, :]
    b = box_b[None, :, :]
    min_x = np.maximum(a[..., 0], b[..., 0])
    min_y = np.maximum(a[..., 1], b[..., 1])
    max_x = np.minimum(a[..., 2], b[..., 2])
    max_y = np.minimum(a[..., 3], b[..., 3])
    area_intersect = (np.maximum(0, max_x - min_x + 1)
                      * np.maximum(0, max_y - min_y + 1))
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    denominator = area_a + area_b - area_intersect
    degenerate = denominator <= 0
    denominator = np.where(degenerate, 1, denominator)
    ious = area_intersect / denominator
    ious[degenerate] = 0
    return ious


def resize_bbox(box: Sequence[float], image_size: Sequence[float],
                resize_size: Sequence[float]) -> tuple[int, int, int, int]:
    """Rescale an x0y0x1y1 box from ``image_size`` (w, h) to ``resize_size``
    (w, h), truncating with ``int()`` as wsolevaluation does."""
    check_box_convention(np.array(box), "x0y0x1y1")
    box_x0, box_y0, box_x1, box_y1 = map(float, box)
    image_w, image_h = map(float, image_size)
    new_image_w, new_image_h = map(float, resize_size)
    return (int(box_x0 * new_image_w / image_w),
            int(box_y0 * new_image_h / image_h),
            int(box_x1 * new_image_w / image_w),
            int(box_y1 * new_image_h / image_h))


def _quantise(scoremap: np.ndarray) -> np.ndarray:
    """wsolevaluation's ``(scoremap * 255).astype(np.uint8)``, in float64."""
    return (scoremap.astype(np.float64, copy=False) * 255).astype(np.uint8)


def _contours_above(scoremap_image: np.ndarray, level: int) -> list:
    """OpenCV contours of the pixels strictly above ``level`` (uint8 image)."""
    _, thresholded = cv2.threshold(src=scoremap_image, thresh=level,
                                   maxval=255, type=cv2.THRESH_BINARY)
    return cv2.findContours(image=thresholded, mode=cv2.RETR_TREE,
                            method=cv2.CHAIN_APPROX_SIMPLE)[_CONTOUR_INDEX]


def _contour_box(contour, width: int, height: int) -> list[int]:
    x, y, w, h = cv2.boundingRect(contour)
    return [x, y, min(x + w, width - 1), min(y + h, height - 1)]


def compute_bboxes_from_scoremaps(scoremap: np.ndarray,
                                  scoremap_threshold_list: Iterable[float],
                                  multi_contour_eval: bool = False
                                  ) -> tuple[list[np.ndarray], list[int]]:
    """Boxes of a score map at each threshold, exactly as wsolevaluation.

    Returns ``(boxes_at_each_threshold, number_of_boxes)``: per threshold an
    int array (n, 4) of x0y0x1y1 boxes, in OpenCV's contour order (all
    contours, holes included, when ``multi_contour_eval``; else the first
    contour of largest ``cv2.contourArea``), or ``[[0, 0, 0, 0]]`` when
    nothing is above the threshold.  Each distinct integer level is computed
    once.
    """
    check_scoremap_validity(scoremap)
    height, width = scoremap.shape
    scoremap_image = _quantise(scoremap)
    max_value = np.max(scoremap_image)
    cache: dict[int, tuple[np.ndarray, int]] = {}
    boxes_at_thresholds: list[np.ndarray] = []
    number_of_boxes: list[int] = []
    for threshold in scoremap_threshold_list:
        level = int(threshold * max_value)
        if level not in cache:
            contours = _contours_above(scoremap_image, level)
            if len(contours) == 0:
                cache[level] = (np.asarray([[0, 0, 0, 0]]), 1)
            else:
                if not multi_contour_eval:
                    contours = [max(contours, key=cv2.contourArea)]
                boxes = [_contour_box(c, width, height) for c in contours]
                cache[level] = (np.asarray(boxes), len(contours))
        boxes, count = cache[level]
        boxes_at_thresholds.append(boxes.copy())
        number_of_boxes.append(count)
    return boxes_at_thresholds, number_of_boxes


def normalize_scoremap(cam: np.ndarray) -> np.ndarray:
    """Min-max normalise one map to [0, 1]; a constant or NaN map gives zeros.

    Same arithmetic as wsolevaluation (subtract the min, divide by the max of
    the result) but returns a new array instead of changing ``cam``.
    """
    if np.isnan(cam).any():
        return np.zeros_like(cam)
    if cam.min() == cam.max():
        return np.zeros_like(cam)
    out = cam - cam.min()
    out /= out.max()
    return out


def normalize_scoremaps(cams: torch.Tensor) -> torch.Tensor:
    """Batched :func:`normalize_scoremap` for a tensor (B, H, W) on any device.

    A map containing NaN or an infinite value, or a constant map, becomes
    zeros (the same arithmetic as wsolevaluation otherwise).  To have NaN
    maps *counted* by an evaluator, give the raw maps to
    ``accumulate_batch(..., normalized=False)`` instead.
    """
    if cams.dim() != 3:
        raise ValueError(f"expected maps of shape (B, H, W), got {tuple(cams.shape)}")
    return normalize_maps(cams)


# --------------------------------------------------------------------------
# Masks (OpenImages format)
# --------------------------------------------------------------------------

def load_mask_image(file_path: str, resize_size: tuple[int, int]) -> np.ndarray:
    """Grey-level mask as float32, resized (nearest) to ``resize_size`` (w, h)."""
    image = cv2.imread(file_path, cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"cannot read mask image {file_path}")
    mask = np.float32(image)
    return cv2.resize(mask, resize_size, interpolation=cv2.INTER_NEAREST)


def get_mask(mask_root: str, mask_paths: Sequence[str], ignore_path: str | None,
             resize_length: int = _RESIZE_LENGTH) -> np.ndarray:
    """GT mask of one image: 1 foreground, 255 ignored, 0 background.

    Foreground = union of the instance masks (> 0.5); ignored = the ignore
    box region minus the foreground.  ``ignore_path`` may be None (no ignore
    region; the SYNTH masks have none).
    """
    size = (resize_length, resize_length)
    instances = [load_mask_image(os.path.join(mask_root, path), size) > 0.5
                 for path in mask_paths]
    if not instances:
        raise ValueError("an image needs at least one mask")
    foreground = np.stack(instances, axis=0).any(axis=0)
    if ignore_path:
        ignore_box = load_mask_image(os.path.join(mask_root, ignore_path), size) > 0.5
        ignore = np.logical_and(ignore_box, np.logical_not(foreground))
    else:
        ignore = np.zeros_like(foreground)
    if np.logical_and(ignore, foreground).any():
        raise RuntimeError("Ignore and foreground masks intersect.")
    return foreground.astype(np.uint8) + 255 * ignore.astype(np.uint8)


# --------------------------------------------------------------------------
# Evaluators
# --------------------------------------------------------------------------

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _thread_pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                       thread_name_prefix="wsol-eval")
        return _POOL


def _to_list_of_bool(corrects, count: int) -> list[bool | None]:
    if corrects is None:
        return [None] * count
    if isinstance(corrects, torch.Tensor):
        corrects = corrects.detach().cpu().tolist()
    corrects = list(corrects)
    if len(corrects) != count:
        raise ValueError(f"got {len(corrects)} correctness flags for {count} maps")
    return [None if c is None else bool(c) for c in corrects]


def _to_host_async(tensor: torch.Tensor) -> torch.Tensor:
    """A host copy; from a CUDA tensor into pinned memory without waiting
    (read it only after the batch's ``ready`` event)."""
    if tensor.device.type != "cuda":
        return tensor.cpu()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)


@dataclass
class _HostBatch:
    """A batch of quantised maps on its way to the host."""
    q: torch.Tensor            # (B, H, W) uint8
    flags: torch.Tensor        # (3, B) bool: NaN map, constant map, values outside [0, 1]
    corrects: object           # host tensor, list or None (see _to_list_of_bool)
    image_ids: list[str]
    ready: object = None       # torch.cuda.Event recorded after the copies; None: on the host

    def landed(self) -> bool:
        return self.ready is None or self.ready.query()

    def wait(self) -> None:
        if self.ready is not None:
            self.ready.synchronize()


def _quantise_batch(scoremaps, normalized: bool, resize_length: int, corrects,
                    image_ids: list[str]) -> _HostBatch:
    """Quantise a batch (tensor on any device, or array) to uint8 where it is,
    and start copying the result to the host.

    With ``normalized=False`` the maps are min-max normalised first.  A map
    with NaN is flagged and scored as all zeros; values outside [0, 1] of a
    normalised map are flagged (the caller raises).  Nothing here waits for
    the GPU.
    """
    if isinstance(scoremaps, np.ndarray):
        scoremaps = torch.from_numpy(scoremaps)
    if not isinstance(scoremaps, torch.Tensor):
        raise TypeError(f"score maps must be a tensor or an array, got {type(scoremaps)}")
    if scoremaps.dim() != 3:
        raise ValueError(f"expected maps of shape (B, H, W), got {tuple(scoremaps.shape)}")
    if tuple(scoremaps.shape[1:]) != (resize_length, resize_length):
        raise ValueError(f"score maps must be {resize_length}x{resize_length}, "
                         f"got {tuple(scoremaps.shape[1:])}")
    if not scoremaps.is_floating_point():
        raise TypeError(f"score maps must be floating point, got {scoremaps.dtype}")
    maps = scoremaps.detach()
    flat = maps.flatten(1)
    nan = torch.isnan(flat).any(1)
    if normalized:
        # Quantise in float64, as wsolevaluation does with its float64 maps.
        values = torch.where(nan[:, None], torch.zeros_like(flat), flat).double()
        low = values.amin(1)
        high = values.amax(1)
        outside = (low < 0) | (high > 1)
        constant = (low == high) & ~nan
        values = values.clamp(0, 1)  # flagged maps raise; this only keeps the cast defined
    else:
        clean = torch.where(nan[:, None], torch.zeros_like(flat), flat)
        constant = (clean.amin(1) == clean.amax(1)) & ~nan
        outside = torch.zeros_like(nan)
        values = normalize_scoremaps(maps).flatten(1).double()
    q = (values * 255).to(torch.uint8).view(maps.shape)
    if isinstance(corrects, torch.Tensor):
        corrects = _to_host_async(corrects.detach().to(device=maps.device, dtype=torch.bool))
    batch = _HostBatch(q=_to_host_async(q), flags=_to_host_async(torch.stack([nan, constant,
                                                                                outside])),
                       corrects=corrects, image_ids=image_ids)
    if maps.device.type == "cuda":
        batch.ready = torch.cuda.Event()
        batch.ready.record(torch.cuda.current_stream(maps.device))
    return batch


class LocalizationEvaluator:
    """Base class: register annotations at construction, ``accumulate`` score
    maps in a loop, then ``compute`` the final localisation performance."""

    def __init__(self, metadata: dict, dataset_name: str, split: str,
                 cam_threshold_list: Sequence[float],
                 iou_threshold_list: Sequence[float] | None, mask_root: str | None,
                 multi_contour_eval: bool | None):
        self.metadata = metadata
        self.cam_threshold_list = list(cam_threshold_list)
        self.iou_threshold_list = (list(iou_threshold_list)
                                   if iou_threshold_list is not None else None)
        self.dataset_name = dataset_name
        self.split = split
        self.mask_root = mask_root
        self.multi_contour_eval = multi_contour_eval
        if len(self.cam_threshold_list) == 0:
            raise ValueError("cam_threshold_list is empty")

    def accumulate(self, scoremap, image_id):
        raise NotImplementedError

    def compute(self):
        raise NotImplementedError


_BOX_COUNT_KEYS = ("num_images", "correct_multi", "correct_single",
                   "gt_known", "top1", "gt_known_first", "top1_first",
                   "num_nan_maps", "num_constant_maps", "num_top1_unknown")


class BoxEvaluator(LocalizationEvaluator):
    """MaxBoxAcc / MaxBoxAccV2 and GT-known / Top-1 Loc over score maps.

    Both contour modes are counted in one pass: ``compute()`` returns
    wsolevaluation's value for the configured ``multi_contour_eval`` (a list
    of MaxBoxAcc, one per IoU threshold, in percent) and ``summary()``
    reports everything.

    Top-1 Loc needs whether the classifier's top-1 prediction was right
    (``correct``); a map accumulated without it (None) counts as a wrong
    prediction for Top-1 Loc (it still counts for GT-known Loc) and is
    reported as ``num_top1_unknown``; when no map had it (scoring saved maps)
    Top-1 Loc is NaN.

    ``num_workers``: threads scoring each batch (default: all cores; 1 scores
    in the calling thread).  Scoring runs in the background between calls;
    ``compute``, ``summary`` and ``counts`` wait for it.
    """

    def __init__(self, metadata: dict, dataset_name: str, split: str,
                 cam_threshold_list: Sequence[float],
                 iou_threshold_list: Sequence[float] = (30, 50, 70),
                 mask_root: str | None = None, multi_contour_eval: bool = True,
                 resize_length: int = _RESIZE_LENGTH, loc_threshold: float = 0.2,
                 first_box_only: bool = False, num_workers: int | None = None):
        super().__init__(metadata=metadata, dataset_name=dataset_name,
                         split=split, cam_threshold_list=cam_threshold_list,
                         iou_threshold_list=iou_threshold_list,
                         mask_root=mask_root,
                         multi_contour_eval=multi_contour_eval)
        if not self.iou_threshold_list:
            raise ValueError("iou_threshold_list is empty")
        self.resize_length = int(resize_length)
        self.loc_threshold = loc_threshold
        self.first_box_only = bool(first_box_only)
        self.num_workers = num_workers or os.cpu_count() or 1
        self.image_ids = get_image_ids(metadata=self.metadata)
        self.original_bboxes = get_bounding_boxes(self.metadata)
        self.image_sizes = get_image_sizes(self.metadata)
        self.gt_bboxes = self._load_resized_boxes(self.original_bboxes)
        self._gt_arrays = {image_id: np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
                           for image_id, boxes in self.gt_bboxes.items()}

        # IoU thresholds counted: the requested ones, plus 50 for MaxBoxAcc
        # (V1) when missing.  Compared as wsolevaluation does: iou >= t / 100.
        self._ious = list(self.iou_threshold_list)
        if not any(t == 50 for t in self._ious):
            self._ious.append(50)
        self._iou_values = np.array([t / 100 for t in self._ious], dtype=np.float64)
        self._level_table, self._loc_levels, self._needed = self._make_level_tables()

        n_iou, n_thr = len(self._ious), len(self.cam_threshold_list)
        self._counts = {
            "num_images": np.zeros((), np.int64),
            "correct_multi": np.zeros((n_iou, n_thr), np.int64),
            "correct_single": np.zeros((n_iou, n_thr), np.int64),
            "gt_known": np.zeros((), np.int64),
            "top1": np.zeros((), np.int64),
            "gt_known_first": np.zeros((), np.int64),
            "top1_first": np.zeros((), np.int64),
            "num_nan_maps": np.zeros((), np.int64),
            "num_constant_maps": np.zeros((), np.int64),
            "num_top1_unknown": np.zeros((), np.int64),
        }
        self._pending_maps: list[np.ndarray] = []
        self._pending_ids: list[str] = []
        self._pending_correct: list[bool | None] = []
        self._inflight: list[dict] = []
        self._arriving: list[_HostBatch] = []  # accumulate_batch copies not yet scored
        # Tests set 0 to exercise the kernels' filled-sweep path.
        self._hole_record_capacity: int | None = None

    # -- set-up ------------------------------------------------------------

    def _load_resized_boxes(self, original_bboxes):
        size = (self.resize_length, self.resize_length)
        missing = [i for i in self.image_ids if i not in original_bboxes]
        if missing:
            raise MetadataError(
                f"{self.metadata['localization']}: no box for {len(missing)} "
                f"image(s) of image_ids.txt, first: {missing[0]!r}")
        missing = [i for i in self.image_ids if i not in self.image_sizes]
        if missing:
            raise MetadataError(
                f"{self.metadata['image_sizes']}: no size for {len(missing)} "
                f"image(s), first: {missing[0]!r}")
        for image_id in self.image_ids:
            width, height = self.image_sizes[image_id]
            for x0, y0, x1, y1 in original_bboxes[image_id]:
                if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                    raise MetadataError(
                        f"{self.metadata['localization']}: box {[x0, y0, x1, y1]} of "
                        f"{image_id!r} lies outside the image ({width}x{height} in "
                        f"image_sizes.txt)")
        return {image_id: [resize_bbox(box, self.image_sizes[image_id], size)
                           for box in original_bboxes[image_id]]
                for image_id in self.image_ids}

    def _make_level_tables(self):
        """Level index (L + 1) of every threshold for every quantised maximum.

        wsolevaluation thresholds at ``int(t * max)`` with cv2.threshold,
        which keeps values strictly above it: levels below -1 behave as -1
        (everything) and above 255 as 255 (nothing).
        """
        thresholds = np.asarray(self.cam_threshold_list, dtype=np.float64)
        maxima = np.arange(256, dtype=np.float64)
        levels = np.trunc(maxima[:, None] * thresholds[None, :])
        levels = np.clip(levels, -1, 255).astype(np.int64) + 1
        loc = np.clip(np.trunc(maxima * np.float64(self.loc_threshold)),
                      -1, 255).astype(np.int64) + 1
        needed = np.zeros((256, _NUM_LEVELS), dtype=np.bool_)
        rows = np.repeat(np.arange(256), levels.shape[1])
        needed[rows, levels.ravel()] = True
        needed[np.arange(256), loc] = True
        return levels, loc, needed

    # -- accumulation --------------------------------------------------------

    def _check_image_id(self, image_id: str) -> None:
        if image_id not in self._gt_arrays:
            raise KeyError(f"image id {image_id!r} is not in the metadata of "
                           f"split {self.split!r}")

    def accumulate(self, scoremap: np.ndarray, image_id: str,
                   correct: bool | None = None) -> None:
        """Add one score map (resize_length x resize_length, in [0, 1]).

        Raises ValueError for a NaN map or values outside [0, 1], as
        wsolevaluation does.  Scoring is deferred to batches of maps.
        """
        _check_scoremap_type(scoremap)
        if scoremap.shape != (self.resize_length, self.resize_length):
            raise ValueError(f"Scoremap must be {self.resize_length}x"
                             f"{self.resize_length}; it is {scoremap.shape}.")
        self._check_image_id(image_id)
        quantised = np.empty(scoremap.shape, np.uint8)
        has_nan, low, high = _kernels.check_and_quantise(scoremap, quantised)
        if has_nan:
            raise ValueError("Scoremap must not contain nans.")
        if low < 0 or high > 1:
            raise ValueError(f"Scoremap must be in range [0, 1]. "
                             f"scoremap.min()={low}, scoremap.max()={high}.")
        if low == high:
            self._counts["num_constant_maps"] += 1
        self._pending_maps.append(quantised)
        self._pending_ids.append(image_id)
        self._pending_correct.append(None if correct is None else bool(correct))
        if len(self._pending_maps) >= _FLUSH_SIZE:
            self._flush(wait=False)

    def accumulate_batch(self, scoremaps, image_ids: Sequence[str],
                         corrects=None, normalized: bool = True) -> None:
        """Add a batch of maps: a tensor (B, H, W) on any device (or an array).

        ``normalized=True``: maps are already min-max normalised to [0, 1].
        ``normalized=False``: raw maps, normalised here.  Either way a map
        containing NaN is counted in ``num_nan_maps`` and scored as zeros
        (no exception, unlike ``accumulate``), and constant maps are counted
        in ``num_constant_maps``.  ``corrects``: top-1 correctness per map
        (bool tensor, list, or None).

        CUDA maps are quantised on the GPU and only the uint8 maps travel to
        the host, asynchronously; a batch is scored once its copy has landed
        (at the latest when the next batch or ``compute`` comes), so its
        range check (ValueError) may surface one call later.
        """
        image_ids = list(image_ids)
        if len(image_ids) != len(scoremaps):
            raise ValueError(f"got {len(image_ids)} image ids for {len(scoremaps)} maps")
        for image_id in image_ids:
            self._check_image_id(image_id)
        if corrects is not None and len(corrects) != len(image_ids):
            raise ValueError(f"got {len(corrects)} correctness flags for {len(image_ids)} maps")
        batch = _quantise_batch(scoremaps, normalized, self.resize_length, corrects, image_ids)
        self._arriving.append(batch)
        # GPU batches are scored once their copy has landed: at the latest when
        # the next batch arrives, so the GPU always has queued work meanwhile.
        while self._arriving and (len(self._arriving) > 1 or self._arriving[0].landed()):
            self._score_arrived(self._arriving.pop(0))

    def _score_arrived(self, batch: _HostBatch) -> None:
        batch.wait()
        nan, constant, outside = batch.flags.numpy()
        if outside.any():
            raise ValueError("normalised score maps must lie in [0, 1]; pass "
                             "normalized=False to normalise them here")
        self._counts["num_nan_maps"] += int(nan.sum())
        self._counts["num_constant_maps"] += int(constant.sum())
        self._score(batch.q.numpy(), batch.image_ids,
                    _to_list_of_bool(batch.corrects, len(batch.image_ids)))

    def _flush(self, wait: bool = True) -> None:
        """Score the buffered maps; with ``wait``, also collect every batch
        still being scored, so that the counts are complete."""
        while self._arriving:
            self._score_arrived(self._arriving.pop(0))
        if self._pending_maps:
            q = np.stack(self._pending_maps)
            ids, flags = self._pending_ids, self._pending_correct
            self._pending_maps, self._pending_ids, self._pending_correct = [], [], []
            self._score(q, ids, flags)
        if wait:
            while self._inflight:
                self._finish(self._inflight.pop(0))

    def _score(self, q: np.ndarray, image_ids: list[str],
               corrects: list[bool | None]) -> None:
        """Start scoring quantised maps q (B, H, W) uint8 in the thread pool.

        Counts are added by ``_finish`` later, so the caller can prepare the
        next maps meanwhile; at most two batches are in flight.
        """
        if len(image_ids) == 0:
            return
        self._inflight.append(self._launch(q, image_ids, corrects))
        while len(self._inflight) > 2:
            self._finish(self._inflight.pop(0))

    def _launch(self, q, image_ids, corrects) -> dict:
        count = len(image_ids)
        q = np.ascontiguousarray(q)
        gts = [self._gt_arrays[i] for i in image_ids]
        n_gt = np.array([len(g) for g in gts], dtype=np.int64)
        gt = np.zeros((count, max(1, int(n_gt.max())), 4), dtype=np.int64)
        for b, boxes in enumerate(gts):
            gt[b, :len(boxes)] = boxes
        maxima = q.reshape(count, -1).max(axis=1).astype(np.int64)
        job = {"q": q, "gt": gt, "n_gt": n_gt, "maxima": maxima,
               "needed": self._needed[maxima], "corrects": corrects,
               "multi": np.zeros((count, _NUM_LEVELS)),
               "box": np.zeros((count, _NUM_LEVELS, 4), dtype=np.int32),
               "flag": np.zeros((count, _NUM_LEVELS), dtype=np.bool_),
               "v1_best": np.zeros((count, _NUM_LEVELS)),
               "v1_first": np.zeros((count, _NUM_LEVELS))}
        args = (q, gt, n_gt, job["needed"], job["multi"], job["box"],
                job["flag"], job["v1_best"], job["v1_first"])
        capacity = self._hole_record_capacity
        if capacity is None:
            capacity = 2 * q.shape[1] * q.shape[2]
        if self.num_workers <= 1:
            # Single-threaded on request: score here, nothing left in flight.
            _kernels.score_maps(*args, 0, count, capacity)
            job["futures"] = []
            return job
        # A few chunks per worker even out maps of unequal cost.
        bounds = np.linspace(0, count, min(count, 4 * self.num_workers) + 1).astype(int)
        pool = _thread_pool()
        job["futures"] = [pool.submit(_kernels.score_maps, *args, int(lo), int(hi), capacity)
                          for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
        return job

    def _finish(self, job: dict) -> None:
        """Wait for a launched batch and add its counts."""
        for future in job["futures"]:
            future.result()
        self._settle_flagged(job["q"], job["gt"], job["n_gt"], job["needed"],
                             job["flag"], job["box"], job["v1_best"], job["v1_first"])
        count = len(job["corrects"])
        correct_loc = np.zeros(count, np.int64)
        correct_loc_first = np.zeros(count, np.int64)
        _kernels.accumulate_counts(
            job["maxima"], self._level_table, self._loc_levels, self._iou_values,
            job["multi"], job["v1_best"], job["v1_first"],
            self._counts["correct_multi"], self._counts["correct_single"],
            correct_loc, correct_loc_first)
        corrects = job["corrects"]
        top1 = np.array([c is True for c in corrects], dtype=np.int64)
        counts = self._counts
        counts["num_images"] += count
        counts["gt_known"] += int(correct_loc.sum())
        counts["gt_known_first"] += int(correct_loc_first.sum())
        counts["top1"] += int((correct_loc * top1).sum())
        counts["top1_first"] += int((correct_loc_first * top1).sum())
        counts["num_top1_unknown"] += sum(c is None for c in corrects)

    @staticmethod
    def _settle_flagged(q, gt, n_gt, needed, flag, box, v1_best, v1_first):
        """Single-contour box with OpenCV where areas tie (rare; see kernels)."""
        height, width = q.shape[1:]
        flagged = np.nonzero(flag & needed)
        logger.debug("%d level(s) of %d map(s) settled with OpenCV",
                     len(flagged[0]), len(q))
        for b, li in zip(*flagged):
            contours = _contours_above(q[b], int(li) - 1)
            chosen = _contour_box(max(contours, key=cv2.contourArea), width, height)
            box[b, li] = chosen
            ious = calculate_multiple_iou(np.array([chosen]), gt[b, :n_gt[b]])[0]
            v1_best[b, li] = ious.max()
            v1_first[b, li] = ious[0]

    # -- results ---------------------------------------------------------------

    def counts(self) -> dict[str, np.ndarray]:
        """All state as integer arrays (copies); sum them across processes."""
        self._flush()
        return {key: value.copy() for key, value in self._counts.items()}

    def add_counts(self, counts: dict[str, np.ndarray]) -> None:
        """Add counts from ``counts()`` of an evaluator with the same settings."""
        self._flush()
        for key in _BOX_COUNT_KEYS:
            value = np.asarray(counts[key], dtype=np.int64)
            if value.shape != self._counts[key].shape:
                raise ValueError(f"counts[{key!r}] has shape {value.shape}, "
                                 f"expected {self._counts[key].shape}")
            self._counts[key] += value

    def merge(self, other: "BoxEvaluator") -> None:
        self.add_counts(other.counts())

    @property
    def cnt(self) -> int:
        """Number of maps accumulated (wsolevaluation's ``cnt``)."""
        self._flush()
        return int(self._counts["num_images"])

    @property
    def num_correct(self) -> dict:
        """wsolevaluation's ``num_correct``: per IoU threshold, the number of
        correct maps at each CAM threshold, for the configured contour mode."""
        self._flush()
        key = "correct_multi" if self.multi_contour_eval else "correct_single"
        return {t: self._counts[key][i].astype(np.float64)
                for i, t in enumerate(self._ious) if t in self.iou_threshold_list}

    @property
    def num_nan_maps(self) -> int:
        return int(self._counts["num_nan_maps"])

    @property
    def num_constant_maps(self) -> int:
        return int(self._counts["num_constant_maps"])

    def _accuracy_curves(self, key: str) -> dict:
        cnt = int(self._counts["num_images"])
        if cnt == 0:
            raise RuntimeError("no score map has been accumulated")
        return {t: self._counts[key][i] * 100. / float(cnt)
                for i, t in enumerate(self._ious)}

    def compute(self) -> list:
        """wsolevaluation's result: MaxBoxAcc (percent) per IoU threshold of
        ``iou_threshold_list``, for the configured contour mode."""
        self._flush()
        key = "correct_multi" if self.multi_contour_eval else "correct_single"
        curves = self._accuracy_curves(key)
        return [curves[t].max() for t in self.iou_threshold_list]

    def summary(self) -> dict:
        """Every box metric from the one pass (accuracies in percent)."""
        self._flush()
        multi = self._accuracy_curves("correct_multi")
        single = self._accuracy_curves("correct_single")
        cnt = float(self._counts["num_images"])
        thresholds = [float(t) for t in self.cam_threshold_list]
        out: dict = {}
        v2 = [multi[t].max() for t in self.iou_threshold_list]
        out["MaxBoxAccV2"] = float(np.average(v2))
        for t, value in zip(self.iou_threshold_list, v2):
            out[f"MaxBoxAccV2@{t}"] = float(value)
        out["MaxBoxAcc"] = float(single[50].max())
        for t in self.iou_threshold_list:
            out[f"MaxBoxAcc@{t}"] = float(single[t].max())
        best = {
            "GT-known Loc (best box)": self._counts["gt_known"] * 100. / cnt,
            "Top-1 Loc (best box)": self._counts["top1"] * 100. / cnt,
            "GT-known Loc (first box)": self._counts["gt_known_first"] * 100. / cnt,
            "Top-1 Loc (first box)": self._counts["top1_first"] * 100. / cnt,
        }
        if self._counts["num_top1_unknown"] == self._counts["num_images"]:
            # No map came with the classifier's verdict: Top-1 Loc unknown.
            for key in ("Top-1 Loc (best box)", "Top-1 Loc (first box)"):
                best[key] = math.nan
        elif self._counts["num_top1_unknown"]:
            logger.warning("%d map(s) without top-1 correctness counted as wrong "
                           "for Top-1 Loc", int(self._counts["num_top1_unknown"]))
        variant = "first box" if self.first_box_only else "best box"
        out["GT-known Loc"] = float(best[f"GT-known Loc ({variant})"])
        out["Top-1 Loc"] = float(best[f"Top-1 Loc ({variant})"])
        out.update({k: float(v) for k, v in best.items()})
        out["loc_threshold"] = float(self.loc_threshold)
        for t in self.iou_threshold_list:
            out[f"best_threshold@{t}"] = thresholds[int(np.argmax(multi[t]))]
        out["best_threshold_v1@50"] = thresholds[int(np.argmax(single[50]))]
        curves = {"thresholds": thresholds}
        for t in self.iou_threshold_list:
            curves[f"MaxBoxAccV2@{t}"] = multi[t].tolist()
        curves["MaxBoxAcc@50"] = single[50].tolist()
        out["curves"] = curves
        out["num_images"] = int(cnt)
        out["num_nan_maps"] = self.num_nan_maps
        out["num_constant_maps"] = self.num_constant_maps
        out["num_top1_unknown"] = int(self._counts["num_top1_unknown"])
        out["multi_contour_eval"] = bool(self.multi_contour_eval)
        return out


class ReferenceBoxEvaluator(BoxEvaluator):
    """The straightforward evaluator: for every threshold of the list, one
    ``cv2.threshold`` + ``cv2.findContours`` on the quantised map, as the
    protocol describes (both contour modes from the same contours).

    Same interface and counts as :class:`BoxEvaluator`; used to check it.
    """

    def _score(self, q, image_ids, corrects):
        counts = self._counts
        height, width = q.shape[1:]
        for quantised, image_id, correct in zip(q, image_ids, corrects):
            gt = self._gt_arrays[image_id]
            scoremap_image = np.expand_dims(quantised, 2)
            max_value = np.max(scoremap_image)
            all_boxes, number_of_boxes, largest_boxes = [], [], []
            for threshold in self.cam_threshold_list:
                contours = _contours_above(scoremap_image,
                                           int(threshold * max_value))
                if len(contours) == 0:
                    boxes = [[0, 0, 0, 0]]
                    largest = [0, 0, 0, 0]
                else:
                    boxes = [_contour_box(c, width, height) for c in contours]
                    largest = _contour_box(max(contours, key=cv2.contourArea),
                                           width, height)
                all_boxes.extend(boxes)
                number_of_boxes.append(len(boxes))
                largest_boxes.append(largest)
            # Like wsolevaluation: one IoU call for all boxes, then the best
            # box of each threshold.
            best_iou = calculate_multiple_iou(np.array(all_boxes), gt).max(1)
            ends = np.cumsum(number_of_boxes)
            multi = np.array([best_iou[end - n:end].max()
                              for end, n in zip(ends, number_of_boxes)])
            single = calculate_multiple_iou(np.array(largest_boxes), gt).max(1)
            for d, t in enumerate(self._ious):
                counts["correct_multi"][d] += multi >= (t / 100)
                counts["correct_single"][d] += single >= (t / 100)
            contours = _contours_above(scoremap_image,
                                       int(self.loc_threshold * max_value))
            largest = ([0, 0, 0, 0] if len(contours) == 0 else
                       _contour_box(max(contours, key=cv2.contourArea), width, height))
            ious = calculate_multiple_iou(np.array([largest]), gt)[0]
            hit_best = int(ious.max() >= 0.5)
            hit_first = int(ious[0] >= 0.5)
            counts["num_images"] += 1
            counts["gt_known"] += hit_best
            counts["gt_known_first"] += hit_first
            counts["top1"] += hit_best * (correct is True)
            counts["top1_first"] += hit_first * (correct is True)
            counts["num_top1_unknown"] += correct is None


class MaskEvaluator(LocalizationEvaluator):
    """PxAP: pixel-wise average precision over the whole split (percent).

    Histograms of map values over foreground and background pixels are int64
    (on the maps' device for batches); bins are ``[t_i, t_i+1)`` over the
    threshold list followed by ``[1, 2)`` and ``[2, 3]``, as wsolevaluation.
    Masks are read once and cached (bit-packed).
    """

    def __init__(self, metadata: dict, dataset_name: str, split: str,
                 cam_threshold_list: Sequence[float],
                 iou_threshold_list: Sequence[float] | None = None,
                 mask_root: str | None = None, multi_contour_eval: bool | None = None,
                 resize_length: int = _RESIZE_LENGTH, cache_masks: bool = True):
        super().__init__(metadata=metadata, dataset_name=dataset_name,
                         split=split, cam_threshold_list=cam_threshold_list,
                         iou_threshold_list=iou_threshold_list,
                         mask_root=mask_root,
                         multi_contour_eval=multi_contour_eval)
        if mask_root is None:
            raise ValueError("MaskEvaluator needs mask_root (the dataset's mask folder)")
        self.resize_length = int(resize_length)
        self.cache_masks = cache_masks
        self.mask_paths, self.ignore_paths = get_mask_paths(self.metadata)
        self.num_bins = len(self.cam_threshold_list) + 2
        self.threshold_list_right_edge = np.append(
            np.asarray(self.cam_threshold_list, dtype=np.float64), [1.0, 2.0, 3.0])
        if np.any(self.threshold_list_right_edge[:-1] > self.threshold_list_right_edge[1:]):
            raise ValueError("bins must increase monotonically "
                             "(cam_threshold_list must be sorted)")
        self.gt_true_score_hist = np.zeros(self.num_bins, dtype=np.int64)
        self.gt_false_score_hist = np.zeros(self.num_bins, dtype=np.int64)
        self._num_images = 0
        self._device_hists: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._edges_on: dict[torch.device, torch.Tensor] = {}
        self._mask_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _mask(self, image_id: str) -> np.ndarray:
        """GT label map of an image (1 fg, 255 ignore, 0 bg), cached packed."""
        cached = self._mask_cache.get(image_id)
        if cached is not None:
            shape = (self.resize_length, self.resize_length)
            count = shape[0] * shape[1]
            fg = np.unpackbits(cached[0], count=count).reshape(shape)
            ignore = np.unpackbits(cached[1], count=count).reshape(shape)
            return fg + 255 * ignore
        if image_id not in self.mask_paths:
            raise KeyError(f"image id {image_id!r} has no mask in the metadata "
                           f"of split {self.split!r}")
        mask = get_mask(self.mask_root, self.mask_paths[image_id],
                        self.ignore_paths.get(image_id), self.resize_length)
        if self.cache_masks:
            self._mask_cache[image_id] = (np.packbits(mask == 1), np.packbits(mask == 255))
        return mask

    def _bin_index(self, values: np.ndarray) -> np.ndarray:
        # np.histogram's bins: edges[i] <= v < edges[i+1], last bin closed.
        index = np.searchsorted(self.threshold_list_right_edge, values, side="right") - 1
        return np.minimum(index, self.num_bins - 1)

    def accumulate(self, scoremap: np.ndarray, image_id: str) -> None:
        """Add one map's values to the foreground / background histograms."""
        check_scoremap_validity(scoremap)
        if scoremap.shape != (self.resize_length, self.resize_length):
            raise ValueError(f"Scoremap must be {self.resize_length}x"
                             f"{self.resize_length}; it is {scoremap.shape}.")
        mask = self._mask(image_id)
        values = scoremap.astype(np.float64, copy=False)
        self.gt_true_score_hist += np.bincount(
            self._bin_index(values[mask == 1]), minlength=self.num_bins)
        self.gt_false_score_hist += np.bincount(
            self._bin_index(values[mask == 0]), minlength=self.num_bins)
        self._num_images += 1

    def accumulate_batch(self, scoremaps, image_ids: Sequence[str],
                         normalized: bool = True) -> None:
        """Add a batch (tensor (B, H, W) on any device); histograms stay on
        that device until ``compute``.  NaN maps are scored as zeros."""
        if isinstance(scoremaps, np.ndarray):
            scoremaps = torch.from_numpy(scoremaps)
        image_ids = list(image_ids)
        if scoremaps.dim() != 3 or len(image_ids) != scoremaps.shape[0]:
            raise ValueError("expected maps (B, H, W) and B image ids")
        if tuple(scoremaps.shape[1:]) != (self.resize_length, self.resize_length):
            raise ValueError(f"score maps must be {self.resize_length}x"
                             f"{self.resize_length}, got {tuple(scoremaps.shape[1:])}")
        maps = scoremaps.detach()
        if not normalized:
            maps = normalize_scoremaps(maps)
        # A map containing NaN counts as all zeros, as normalize_scoremap makes it.
        nan = torch.isnan(maps).flatten(1).any(1)
        maps = torch.where(nan[:, None, None], torch.zeros_like(maps), maps).double()
        device = maps.device
        outside = ((maps < 0) | (maps > 1)).any()
        if device.type != "cuda" and bool(outside):
            raise ValueError("normalised score maps must lie in [0, 1]")
        labels = torch.from_numpy(np.stack([self._mask(i) for i in image_ids]))
        if device.type == "cuda":
            labels = labels.pin_memory()
        labels = labels.to(device, non_blocking=True)
        if device not in self._edges_on:
            self._edges_on[device] = torch.from_numpy(self.threshold_list_right_edge).to(device)
            self._device_hists[device] = (
                torch.zeros(self.num_bins, dtype=torch.int64, device=device),
                torch.zeros(self.num_bins, dtype=torch.int64, device=device),
                torch.zeros((), dtype=torch.int64, device=device))
        index = torch.bucketize(maps, self._edges_on[device], right=True) - 1
        index = index.clamp_(max=self.num_bins - 1)
        true_hist, false_hist, num_outside = self._device_hists[device]
        # One scatter-add over (pixel class, bin): unlike boolean indexing or
        # bincount, it never asks the GPU for a size, so nothing waits for it.
        pixel_class = torch.where(labels == 1, 1, torch.where(labels == 0, 0, 2))
        key = (index + self.num_bins * pixel_class).flatten()
        counts = torch.zeros(3 * self.num_bins, dtype=torch.int64, device=device)
        counts.scatter_add_(0, key, torch.ones_like(key))
        false_hist += counts[:self.num_bins]
        true_hist += counts[self.num_bins:2 * self.num_bins]
        num_outside += outside  # checked in _gather: a GPU batch is not waited for
        self._num_images += len(image_ids)

    def _gather(self) -> None:
        for true_hist, false_hist, num_outside in self._device_hists.values():
            if int(num_outside):
                raise ValueError("normalised score maps must lie in [0, 1]")
            self.gt_true_score_hist += true_hist.cpu().numpy()
            self.gt_false_score_hist += false_hist.cpu().numpy()
            true_hist.zero_()
            false_hist.zero_()

    def counts(self) -> dict[str, np.ndarray]:
        self._gather()
        return {"num_images": np.array(self._num_images, np.int64),
                "gt_true_score_hist": self.gt_true_score_hist.copy(),
                "gt_false_score_hist": self.gt_false_score_hist.copy()}

    def add_counts(self, counts: dict[str, np.ndarray]) -> None:
        self._gather()
        for key in ("gt_true_score_hist", "gt_false_score_hist"):
            value = np.asarray(counts[key], dtype=np.int64)
            if value.shape != (self.num_bins,):
                raise ValueError(f"counts[{key!r}] has shape {value.shape}, "
                                 f"expected ({self.num_bins},)")
        self.gt_true_score_hist += np.asarray(counts["gt_true_score_hist"], np.int64)
        self.gt_false_score_hist += np.asarray(counts["gt_false_score_hist"], np.int64)
        self._num_images += int(counts["num_images"])

    def merge(self, other: "MaskEvaluator") -> None:
        self.add_counts(other.counts())

    def _precision_recall(self):
        """tp, fn, fp by decreasing threshold, exactly as wsolevaluation."""
        self._gather()
        num_gt_true = self.gt_true_score_hist.sum()
        tp = self.gt_true_score_hist[::-1].cumsum()
        fn = num_gt_true - tp
        fp = self.gt_false_score_hist[::-1].cumsum()
        if ((tp + fn) <= 0).all():
            raise RuntimeError("No positive ground truth in the eval set.")
        if ((tp + fp) <= 0).all():
            raise RuntimeError("No positive prediction in the eval set.")
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = tp / (tp + fp)
            recall = tp / (tp + fn)
        return tp, fp, precision, recall

    def compute(self) -> float:
        """PxAP in percent: sum of precision_i * (recall_i - recall_{i-1})."""
        tp, fp, precision, recall = self._precision_recall()
        non_zero_indices = (tp + fp) != 0
        auc = (precision[1:] * np.diff(recall))[non_zero_indices[1:]].sum()
        auc *= 100
        return auc

    def summary(self) -> dict:
        auc = self.compute()
        _, _, precision, recall = self._precision_recall()
        # Index k of the decreasing-threshold arrays is threshold list entry
        # num_bins - 1 - k; report the curves along the ascending list.
        order = self.num_bins - 1 - np.arange(len(self.cam_threshold_list))
        return {"PxAP": float(auc),
                "curves": {"thresholds": [float(t) for t in self.cam_threshold_list],
                           "precision": [float(p) for p in precision[order]],
                           "recall": [float(r) for r in recall[order]]},
                "num_images": int(self._num_images)}


# --------------------------------------------------------------------------
# Scoring saved maps (wsolevaluation's evaluate_wsol)
# --------------------------------------------------------------------------

def _load_scoremap(scoremap_root: str, image_id: str) -> np.ndarray:
    # wsolevaluation saves np.save(join(root, image_id)) -> "<image_id>.npy".
    path = os.path.join(scoremap_root, image_id + ".npy")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing score map for image {image_id!r}: {path}")
    scoremap = np.load(path, allow_pickle=False)
    # wsolevaluation's loader turns every map into float64 (t2n).
    return scoremap.astype(np.float64, copy=False)


def evaluate_scoremaps(scoremap_root: str, metadata_root: str, mask_root: str,
                       dataset_name: str, split: str,
                       multi_contour_eval: bool = False,
                       iou_threshold_list: Sequence[float] = (30, 50, 70),
                       cam_curve_interval: float = .001, metric: str = "auto",
                       loc_threshold: float = 0.2) -> dict:
    """Score saved maps; returns {"box": BoxEvaluator summary, "mask": ...}.

    ``metric``: 'box', 'mask', 'both' or 'auto' (OpenImages -> mask; a split
    with localization_masks.txt, such as SYNTH, -> both; else box).
    Metadata is read from ``<metadata_root>/<dataset_name>/<split>`` and
    masks from ``<mask_root>/<dataset_name>``.
    """
    metadata = configure_metadata(os.path.join(metadata_root, dataset_name, split))
    image_ids = get_image_ids(metadata)
    thresholds = make_threshold_list(cam_curve_interval)
    if metric == "auto":
        if dataset_name == "OpenImages":
            metric = "mask"
        elif os.path.isfile(metadata["localization_masks"]):
            metric = "both"
        else:
            metric = "box"
    evaluators: dict[str, LocalizationEvaluator] = {}
    common = dict(metadata=metadata, dataset_name=dataset_name, split=split,
                  cam_threshold_list=thresholds,
                  mask_root=os.path.join(mask_root, dataset_name))
    if metric in ("box", "both"):
        evaluators["box"] = BoxEvaluator(iou_threshold_list=iou_threshold_list,
                                         multi_contour_eval=multi_contour_eval,
                                         loc_threshold=loc_threshold, **common)
    if metric in ("mask", "both"):
        evaluators["mask"] = MaskEvaluator(iou_threshold_list=iou_threshold_list,
                                           multi_contour_eval=multi_contour_eval,
                                           **common)
    if not evaluators:
        raise ValueError(f"unknown metric {metric!r}")
    for image_id in image_ids:
        scoremap = _load_scoremap(scoremap_root, image_id)
        for evaluator in evaluators.values():
            evaluator.accumulate(scoremap, image_id)
    return {name: evaluator.summary() for name, evaluator in evaluators.items()}


def evaluate_wsol(scoremap_root: str, metadata_root: str, mask_root: str,
                  dataset_name: str, split: str, multi_contour_eval: bool,
                  multi_iou_eval: bool, iou_threshold_list: Sequence[float],
                  cam_curve_interval: float = .001) -> float:
    """wsolevaluation's entry point: MaxBoxAcc (mean over IoUs when
    ``multi_iou_eval``, else at IoU 50) for boxes, PxAP for OpenImages."""
    metric = "mask" if dataset_name == "OpenImages" else "box"
    summary = evaluate_scoremaps(scoremap_root, metadata_root, mask_root,
                                 dataset_name, split, multi_contour_eval,
                                 iou_threshold_list, cam_curve_interval, metric)
    if metric == "mask":
        return summary["mask"]["PxAP"]
    box = summary["box"]
    prefix = "MaxBoxAccV2" if multi_contour_eval else "MaxBoxAcc"
    values = [box[f"{prefix}@{t}"] for t in iou_threshold_list]
    if multi_iou_eval:
        return float(np.average(values))
    return values[list(iou_threshold_list).index(50)]


def _str2bool(value: str) -> bool:
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {value!r}")


def _json_ready(value):
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _print_summary(summary: dict) -> None:
    for name, section in summary.items():
        print(f"[{name}]")
        for key, value in section.items():
            if key == "curves":
                continue
            print(f"  {key}: {value:.4f}" if isinstance(value, float)
                  else f"  {key}: {value}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Score saved score maps (<scoremap_root>/<image_id>.npy) "
                    "with the wsolevaluation metrics.")
    parser.add_argument("--scoremap_root", default="train_log/scoremaps/",
                        help="Folder of the saved maps.")
    parser.add_argument("--metadata_root", default="metadata/",
                        help="Root of metadata/<dataset>/<split>/.")
    parser.add_argument("--mask_root", default="dataset/",
                        help="Root of the masks: <mask_root>/<dataset>/...")
    parser.add_argument("--dataset_name", required=True,
                        help="CUB, ILSVRC, OpenImages, SYNTH, ...")
    parser.add_argument("--split", default="test", help="val or test.")
    parser.add_argument("--cam_curve_interval", type=float, default=0.01,
                        help="Threshold interval (wsolevaluation's CLI default).")
    parser.add_argument("--multi_contour_eval", type=_str2bool, nargs="?",
                        const=True, default=False,
                        help="Headline value from all contours (MaxBoxAccV2).")
    parser.add_argument("--multi_iou_eval", type=_str2bool, nargs="?",
                        const=True, default=False,
                        help="Headline value averaged over the IoU list.")
    parser.add_argument("--iou_threshold_list", nargs="+", type=int,
                        default=[30, 50, 70])
    parser.add_argument("--loc_threshold", type=float, default=0.2,
                        help="CAM threshold of GT-known / Top-1 Loc.")
    parser.add_argument("--metric", choices=("auto", "box", "mask", "both"),
                        default="auto")
    parser.add_argument("--output_json", default=None,
                        help="Write the full summary (with curves) here.")
    args = parser.parse_args(argv)
    try:
        summary = evaluate_scoremaps(
            args.scoremap_root, args.metadata_root, args.mask_root,
            args.dataset_name, args.split, args.multi_contour_eval,
            args.iou_threshold_list, args.cam_curve_interval, args.metric,
            args.loc_threshold)
    except (MetadataError, FileNotFoundError, KeyError, ValueError,
            TypeError, RuntimeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2
    _print_summary(summary)
    if "box" in summary:
        box = summary["box"]
        prefix = "MaxBoxAccV2" if args.multi_contour_eval else "MaxBoxAcc"
        values = [box[f"{prefix}@{t}"] for t in args.iou_threshold_list]
        if args.multi_iou_eval:
            print(f"localization: {np.average(values)}")
        elif 50 in args.iou_threshold_list:
            print(f"localization: {values[args.iou_threshold_list.index(50)]}")
    elif "mask" in summary:
        print(f"localization: {summary['mask']['PxAP']}")
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as f:
            json.dump(_json_ready(summary), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

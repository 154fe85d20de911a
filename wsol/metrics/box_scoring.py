"""How box counts are obtained from quantised maps: two interchangeable
strategies of :class:`wsol.metrics.boxes.BoxEvaluator` (as detectron2's
``COCOeval`` and ``COCOeval_opt``).

* :class:`ReferenceScorer`: the protocol as written (docs/protocol.md): for
  every threshold one ``cv2.threshold`` + ``cv2.findContours``, both contour
  modes from those contours, one IoU call per image as wsolevaluation does.
* :class:`FastScorer`: every contour's box at every one of the 257 integer
  levels from three union-find sweeps (:mod:`wsol.metrics._box_kernels`,
  compiled with numba); each threshold maps to its level through a table
  indexed by the map's quantised maximum; levels where the single-contour
  winner cannot be told apart by area alone are settled by OpenCV.  Chunks of
  a batch run on threads (the compiled code releases the GIL).

Both return the same integer counts (tests assert it; ``scripts/bench_eval.py``
times them).  ``submit`` returns a job whose ``result()`` is the batch's
count increments; the fast scorer's jobs run in the background.
"""
from __future__ import annotations

import logging
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from wsol.metrics import _box_kernels as kernels
from wsol.protocol import (calculate_multiple_iou, contour_box, contours_above,
                           largest_contour_box)

__all__ = ["BoxSettings", "ReferenceScorer", "FastScorer", "COUNT_KEYS", "zero_counts",
           "level_tables", "PER_IMAGE"]

log = logging.getLogger(__name__)

COUNT_KEYS = ("num_images", "correct_multi", "correct_single", "gt_known", "top1",
              "gt_known_first", "top1_first", "num_nan_maps", "num_constant_maps",
              "num_top1_unknown")


@dataclass(frozen=True)
class BoxSettings:
    thresholds: tuple[float, ...]  # CAM thresholds
    ious: tuple[float, ...]        # IoU thresholds in percent (50 always included)
    loc_threshold: float           # GT-known / Top-1 Loc's CAM threshold


def level_tables(settings: BoxSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Level index (L + 1) of every threshold for every quantised maximum
    ``[256, T]``, of the loc threshold ``[256]``, and which levels some
    threshold needs ``[256, 257]``.

    wsolevaluation thresholds at ``int(t * max)`` with cv2.threshold, which
    keeps values strictly above it: levels below -1 behave as -1 (everything)
    and above 255 as 255 (nothing).
    """
    thresholds = np.asarray(settings.thresholds, dtype=np.float64)
    maxima = np.arange(256, dtype=np.float64)
    levels = np.trunc(maxima[:, None] * thresholds[None, :])
    levels = np.clip(levels, -1, 255).astype(np.int64) + 1
    loc = np.clip(np.trunc(maxima * np.float64(settings.loc_threshold)),
                  -1, 255).astype(np.int64) + 1
    needed = np.zeros((256, kernels.NUM_LEVELS), dtype=np.bool_)
    rows = np.repeat(np.arange(256), levels.shape[1])
    needed[rows, levels.ravel()] = True
    needed[np.arange(256), loc] = True
    return levels, loc, needed


# What a scorer reports of each map when asked (``keep_per_image``), for the
# bootstrap (wsol.metrics.bootstrap): its quantised maximum, whether its
# boxes hit at each IoU threshold and level (all contours, the largest), and
# its GT-known verdicts at the loc threshold (best, first GT box).
PER_IMAGE = "per_image"


def _per_image(maxima: np.ndarray, multi: np.ndarray, single: np.ndarray, ious,
               hit_best: np.ndarray, hit_first: np.ndarray) -> dict:
    values = np.asarray([t / 100 for t in ious], dtype=np.float64)[None, :, None]
    return {"maxima": maxima.astype(np.uint8),
            "hits": np.stack([multi[:, None, :] >= values, single[:, None, :] >= values], 1),
            "gt_best": hit_best.astype(bool), "gt_first": hit_first.astype(bool)}


def zero_counts(settings: BoxSettings) -> dict[str, np.ndarray]:
    shape = (len(settings.ious), len(settings.thresholds))
    return {key: np.zeros(shape if key.startswith("correct_") else (), np.int64)
            for key in COUNT_KEYS}


class _Done:
    """A job that finished when it was submitted."""

    def __init__(self, counts: dict[str, np.ndarray]):
        self.counts = counts

    def result(self) -> dict[str, np.ndarray]:
        return self.counts


def _add_verdicts(counts: dict, hit_best: np.ndarray, hit_first: np.ndarray,
                  corrects: Sequence[bool | None]) -> None:
    """GT-known and Top-1 Loc of each map, from its largest-contour box hits."""
    top1 = np.array([c is True for c in corrects], dtype=np.int64)
    counts["num_images"] += len(corrects)
    counts["gt_known"] += int(hit_best.sum())
    counts["gt_known_first"] += int(hit_first.sum())
    counts["top1"] += int((hit_best * top1).sum())
    counts["top1_first"] += int((hit_first * top1).sum())
    counts["num_top1_unknown"] += sum(c is None for c in corrects)


class ReferenceScorer:
    """The straightforward strategy: OpenCV at every threshold of the list."""

    def __init__(self, settings: BoxSettings):
        self.settings = settings
        self.keep_per_image = False
        self.level_table, self.loc_levels, _ = level_tables(settings)

    def submit(self, q: np.ndarray, gts: Sequence[np.ndarray],
               corrects: Sequence[bool | None]) -> _Done:
        s = self.settings
        counts = zero_counts(s)
        height, width = q.shape[1:]
        hit_best = np.zeros(len(q), np.int64)
        hit_first = np.zeros(len(q), np.int64)
        keep = self.keep_per_image
        maxima = q.reshape(len(q), -1).max(axis=1) if len(q) else np.zeros(0, np.uint8)
        by_level = np.zeros((2, len(q), kernels.NUM_LEVELS)) if keep else None
        for b, (quantised, gt) in enumerate(zip(q, gts)):
            image = np.expand_dims(quantised, 2)
            max_value = np.max(image)
            all_boxes, number_of_boxes, largest_boxes = [], [], []
            for threshold in s.thresholds:
                contours = contours_above(image, int(threshold * max_value))
                boxes = ([contour_box(c, width, height) for c in contours]
                         if len(contours) else [[0, 0, 0, 0]])
                all_boxes.extend(boxes)
                number_of_boxes.append(len(boxes))
                largest_boxes.append(largest_contour_box(contours, width, height))
            # As wsolevaluation: one IoU call for all boxes, then the best box
            # of each threshold.
            best_iou = calculate_multiple_iou(np.array(all_boxes), gt).max(1)
            ends = np.cumsum(number_of_boxes)
            multi = np.array([best_iou[end - n:end].max()
                              for end, n in zip(ends, number_of_boxes)])
            single = calculate_multiple_iou(np.array(largest_boxes), gt).max(1)
            for d, t in enumerate(s.ious):
                counts["correct_multi"][d] += multi >= (t / 100)
                counts["correct_single"][d] += single >= (t / 100)
            if keep:  # every threshold of a level has the same boxes
                levels = self.level_table[int(max_value)]
                by_level[0, b, levels] = multi
                by_level[1, b, levels] = single
            contours = contours_above(image, int(s.loc_threshold * max_value))
            ious = calculate_multiple_iou(
                np.array([largest_contour_box(contours, width, height)]), gt)[0]
            hit_best[b], hit_first[b] = ious.max() >= 0.5, ious[0] >= 0.5
        _add_verdicts(counts, hit_best, hit_first, corrects)
        if keep:
            counts[PER_IMAGE] = _per_image(maxima, by_level[0], by_level[1], s.ious, hit_best,
                                           hit_first)
        return _Done(counts)


class _FastJob:
    """A batch being scored on threads; ``result()`` waits and counts."""

    def __init__(self, scorer: "FastScorer", arrays: dict, futures: list,
                 corrects: Sequence[bool | None]):
        self.scorer, self.arrays, self.futures, self.corrects = scorer, arrays, futures, corrects

    def result(self) -> dict[str, np.ndarray]:
        for future in self.futures:
            future.result()
        a = self.arrays
        _settle_flagged(a)
        counts = zero_counts(self.scorer.settings)
        hit_best = np.zeros(len(self.corrects), np.int64)
        hit_first = np.zeros(len(self.corrects), np.int64)
        kernels.accumulate_counts(
            a["maxima"], self.scorer.level_table, self.scorer.loc_levels,
            self.scorer.iou_values, a["multi"], a["v1_best"], a["v1_first"],
            counts["correct_multi"], counts["correct_single"], hit_best, hit_first)
        _add_verdicts(counts, hit_best, hit_first, self.corrects)
        if self.scorer.keep_per_image:
            counts[PER_IMAGE] = _per_image(a["maxima"], a["multi"], a["v1_best"],
                                           self.scorer.settings.ious, hit_best, hit_first)
        return counts


def _settle_flagged(a: dict) -> None:
    """Single-contour box with OpenCV where areas tie (rare; see the kernels)."""
    q, gt, n_gt = a["q"], a["gt"], a["n_gt"]
    height, width = q.shape[1:]
    flagged = np.nonzero(a["flag"] & a["needed"])
    log.debug("%d level(s) of %d map(s) settled with OpenCV", len(flagged[0]), len(q))
    for b, li in zip(*flagged):
        chosen = largest_contour_box(contours_above(q[b], int(li) - 1), width, height)
        a["box"][b, li] = chosen
        ious = calculate_multiple_iou(np.array([chosen]), gt[b, :n_gt[b]])[0]
        a["v1_best"][b, li] = ious.max()
        a["v1_first"][b, li] = ious[0]


class FastScorer:
    """The compiled strategy; ``executor`` runs the chunks (a shared pool, or
    one of ``num_workers`` threads made on first use; 1: in the caller's thread)."""

    def __init__(self, settings: BoxSettings, num_workers: int = 1,
                 executor: Executor | None = None):
        self.settings = settings
        self.num_workers = max(1, int(num_workers))
        self.executor = executor
        # Tests set 0 to exercise the kernels' filled-sweep path.
        self.hole_record_capacity: int | None = None
        self.keep_per_image = False
        self.level_table, self.loc_levels, self.needed = level_tables(settings)
        self.iou_values = np.array([t / 100 for t in settings.ious], dtype=np.float64)

    def submit(self, q: np.ndarray, gts: Sequence[np.ndarray],
               corrects: Sequence[bool | None]) -> _FastJob:
        count = len(q)
        q = np.ascontiguousarray(q)
        n_gt = np.array([len(g) for g in gts], dtype=np.int64)
        gt = np.zeros((count, max(1, int(n_gt.max())), 4), dtype=np.int64)
        for b, boxes in enumerate(gts):
            gt[b, :len(boxes)] = boxes
        maxima = q.reshape(count, -1).max(axis=1).astype(np.int64)
        levels = kernels.NUM_LEVELS
        a = {"q": q, "gt": gt, "n_gt": n_gt, "maxima": maxima, "needed": self.needed[maxima],
             "multi": np.zeros((count, levels)), "box": np.zeros((count, levels, 4), np.int32),
             "flag": np.zeros((count, levels), np.bool_), "v1_best": np.zeros((count, levels)),
             "v1_first": np.zeros((count, levels))}
        args = (q, gt, n_gt, a["needed"], a["multi"], a["box"], a["flag"], a["v1_best"],
                a["v1_first"])
        capacity = self.hole_record_capacity
        if capacity is None:
            capacity = 2 * q.shape[1] * q.shape[2]
        if self.num_workers == 1 and self.executor is None:
            kernels.score_maps(*args, 0, count, capacity)
            return _FastJob(self, a, [], corrects)
        if self.executor is None:
            self.executor = ThreadPoolExecutor(self.num_workers, thread_name_prefix="wsol-box")
        # A few chunks per worker even out maps of unequal cost.
        bounds = np.linspace(0, count, min(count, 4 * self.num_workers) + 1).astype(int)
        futures = [self.executor.submit(kernels.score_maps, *args, int(lo), int(hi), capacity)
                   for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
        return _FastJob(self, a, futures, corrects)

"""MaxBoxAcc, MaxBoxAccV2, GT-known Loc and Top-1 Loc (docs/protocol.md).

:class:`BoxEvaluator` keeps wsolevaluation's shape -- constructed from a
split's metadata, ``accumulate(scoremap, image_id)`` per map, then
``compute()`` -- and its results, bit for bit; in a run it follows the
evaluator protocol (:mod:`wsol.metrics.base`).  Its state is integer counts
(``state()`` / ``load_state()``), so evaluators of several processes add up.
How the counts are obtained is a strategy (:mod:`wsol.metrics.box_scoring`):
``scorer="fast"`` (default) or ``"reference"``.  Both contour modes and the
GT-known / Top-1 Loc counts come from the same pass.

Maps on a GPU reach it through :class:`DeviceHandOff`: quantised there, copied
to the host asynchronously and scored on CPU threads while the GPU goes on.
"""
from __future__ import annotations

import logging
import math
import os
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from wsol.data.metadata import GroundTruth, get_bounding_boxes, get_image_sizes
from wsol.metrics import _box_kernels as kernels
from wsol.metrics.base import EvalContext, Evaluator, MapBatch
from wsol.metrics.bootstrap import proportion_samples
from wsol.metrics.box_scoring import (COUNT_KEYS, PER_IMAGE, BoxSettings, FastScorer,
                                      ReferenceScorer, zero_counts)
from wsol.protocol import RESIZE_LENGTH, check_scoremap_type, quantise_maps

__all__ = ["LocalizationEvaluator", "BoxEvaluator", "DeviceHandOff"]

log = logging.getLogger(__name__)

# Maps accumulated one at a time are buffered and scored in batches of this
# size, so that the per-map API also runs on threads.
_FLUSH_SIZE = 256
# Per image (for the bootstrap): the hit bits of each curve at the 257 levels,
# packed; and its verdicts: scored, GT-known (best / first box), top-1 right,
# top-1 verdict known.
_PACKED = (kernels.NUM_LEVELS + 7) // 8
_VERDICTS = ("seen", "gt_best", "gt_first", "correct", "known")
_IMAGE_CHUNK = 4096  # images unpacked at a time by the bootstrap


class LocalizationEvaluator(Evaluator):
    """wsolevaluation's base: annotations registered at construction,
    ``accumulate`` maps in a loop, then ``compute`` the performance."""

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

    def state(self) -> dict:
        raise NotImplementedError

    def load_state(self, state: dict) -> None:
        raise NotImplementedError



class BoxEvaluator(LocalizationEvaluator):
    """Box metrics over score maps.

    ``compute()`` returns wsolevaluation's value for the configured
    ``multi_contour_eval`` (MaxBoxAcc in percent, one per IoU threshold);
    ``summary()`` reports everything.  Top-1 Loc needs whether the
    classifier's top-1 prediction was right (``correct``); a map without it
    counts as a wrong prediction (``num_top1_unknown``) and when no map had
    it Top-1 Loc is NaN.  ``ground_truth``: the split's boxes, when already
    loaded (shared with other evaluators); ``num_workers`` / ``executor``:
    threads of the fast scorer (default: all cores).
    """

    def __init__(self, metadata: dict, dataset_name: str, split: str,
                 cam_threshold_list: Sequence[float],
                 iou_threshold_list: Sequence[float] = (30, 50, 70),
                 mask_root: str | None = None, multi_contour_eval: bool = True,
                 resize_length: int = RESIZE_LENGTH, loc_threshold: float = 0.2,
                 first_box_only: bool = False, num_workers: int | None = None,
                 ground_truth: GroundTruth | None = None, scorer: str = "fast",
                 executor: Executor | None = None, per_image: bool = False):
        super().__init__(metadata=metadata, dataset_name=dataset_name, split=split,
                         cam_threshold_list=cam_threshold_list,
                         iou_threshold_list=iou_threshold_list, mask_root=mask_root,
                         multi_contour_eval=multi_contour_eval)
        if not self.iou_threshold_list:
            raise ValueError("iou_threshold_list is empty")
        self.resize_length = int(resize_length)
        self.loc_threshold = loc_threshold
        self.first_box_only = bool(first_box_only)
        self.ground_truth = ground_truth or GroundTruth(metadata, self.resize_length)
        if self.ground_truth.resize_length != self.resize_length:
            raise ValueError("the ground truth is at another resize_length")
        # IoU thresholds counted: the requested ones, plus 50 for MaxBoxAcc
        # (V1) when missing.  Compared as wsolevaluation does: iou >= t / 100.
        ious = list(self.iou_threshold_list)
        if not any(t == 50 for t in ious):
            ious.append(50)
        self._ious = ious
        settings = BoxSettings(tuple(self.cam_threshold_list), tuple(ious), loc_threshold)
        if scorer == "fast":
            self.scorer = FastScorer(settings, num_workers or os.cpu_count() or 1, executor)
        elif scorer == "reference":
            self.scorer = ReferenceScorer(settings)
        else:
            raise ValueError(f"unknown scorer {scorer!r}; use 'fast' or 'reference'")
        self._settings = settings
        self._pending: list[tuple[np.ndarray, str, bool | None]] = []
        self._inflight: list = []
        self._hand_off: DeviceHandOff | None = None
        # What each image contributed (per_image: for the bootstrap), by its
        # place in the split; the arrays add up across processes.
        self.scorer.keep_per_image = bool(per_image)
        self._index = ({image_id: i for i, image_id in enumerate(self.ground_truth.image_ids)}
                       if per_image else {})
        self._counts = self._zero()
        self._original_bboxes: dict | None = None
        self._image_sizes: dict | None = None

    def _zero(self) -> dict[str, np.ndarray]:
        counts = zero_counts(self._settings)
        if self._index:
            n, curves = len(self._index), 2 * len(self._ious)
            counts.update({"image_hits": np.zeros((n, curves, _PACKED), np.uint8),
                           "image_verdicts": np.zeros((n, len(_VERDICTS)), np.uint8),
                           "image_max": np.zeros(n, np.uint8)})
        return counts

    @classmethod
    def for_run(cls, context: EvalContext) -> "BoxEvaluator":
        """The box evaluator of one (method, branch) of a run."""
        threads = context.box_threads or os.cpu_count() or 1
        return cls(metadata=context.metadata, dataset_name=context.dataset.name,
                   split=context.split, cam_threshold_list=context.thresholds,
                   iou_threshold_list=list(context.iou_threshold_list),
                   mask_root=context.mask_folder,
                   multi_contour_eval=context.multi_contour_eval,
                   resize_length=context.resize_length, loc_threshold=context.loc_threshold,
                   first_box_only=context.first_box_only, num_workers=threads,
                   ground_truth=context.ground_truth, executor=context.executor,
                   per_image=context.bootstrap > 0)

    # -- the evaluator protocol (wsol.metrics.base) -------------------------------
    def reset(self) -> None:
        self._flush()
        self._counts = self._zero()

    def process(self, batch: MapBatch) -> None:
        """Saved maps one by one as wsolevaluation scores them; a run's raw maps
        through the device hand-off."""
        if batch.normalized:
            corrects = batch.corrects if batch.corrects is not None else [None] * len(
                batch.image_ids)
            for scoremap, image_id, correct in zip(batch.maps, batch.image_ids, corrects):
                self.accumulate(scoremap, image_id, correct)
            return
        if self._hand_off is None:
            self._hand_off = DeviceHandOff(self)
        self._hand_off.add(batch.maps, batch.image_ids, batch.corrects)

    def evaluate(self) -> dict:
        return self.summary()

    @property
    def gt_bboxes(self) -> dict[str, np.ndarray]:
        """GT boxes of each image at the evaluation size (wsolevaluation's name)."""
        return self.ground_truth.boxes

    @property
    def original_bboxes(self) -> dict[str, list[list[float]]]:
        """GT boxes of each image as the metadata gives them (wsolevaluation's name)."""
        if self._original_bboxes is None:
            self._original_bboxes = get_bounding_boxes(self.metadata)
        return self._original_bboxes

    @property
    def image_sizes(self) -> dict[str, tuple[int, int]]:
        """``(width, height)`` of each original image (wsolevaluation's name)."""
        if self._image_sizes is None:
            self._image_sizes = get_image_sizes(self.metadata)
        return self._image_sizes

    @property
    def image_ids(self) -> list[str]:
        """The split's image ids (wsolevaluation's name)."""
        return self.ground_truth.image_ids

    # -- accumulation ----------------------------------------------------------
    def _check_image_id(self, image_id: str) -> None:
        if image_id not in self.ground_truth.boxes:
            raise KeyError(f"image id {image_id!r} is not in the metadata of "
                           f"split {self.split!r}")

    def accumulate(self, scoremap: np.ndarray, image_id: str,
                   correct: bool | None = None) -> None:
        """Add one score map (resize_length x resize_length, in [0, 1]).

        Raises ValueError for a NaN map or values outside [0, 1], as
        wsolevaluation does.  Scoring is deferred to batches of maps.
        """
        check_scoremap_type(scoremap)
        if scoremap.shape != (self.resize_length, self.resize_length):
            raise ValueError(f"Scoremap must be {self.resize_length}x"
                             f"{self.resize_length}; it is {scoremap.shape}.")
        self._check_image_id(image_id)
        quantised = np.empty(scoremap.shape, np.uint8)
        has_nan, low, high = kernels.check_and_quantise(scoremap, quantised)
        if has_nan:
            raise ValueError("Scoremap must not contain nans.")
        if low < 0 or high > 1:
            raise ValueError(f"Scoremap must be in range [0, 1]. "
                             f"scoremap.min()={low}, scoremap.max()={high}.")
        if low == high:
            self._counts["num_constant_maps"] += 1
        self._pending.append((quantised, image_id, None if correct is None else bool(correct)))
        if len(self._pending) >= _FLUSH_SIZE:
            self._flush_pending()

    def accumulate_batch(self, scoremaps, image_ids: Sequence[str], corrects=None,
                         normalized: bool = True) -> None:
        """Add a batch of maps (B, H, W): a tensor on any device, or an array.

        ``normalized=True``: maps already min-max normalised to [0, 1];
        ``normalized=False``: raw maps, normalised here.  A map containing NaN
        is counted in ``num_nan_maps`` and scored as zeros (no exception,
        unlike ``accumulate``), constant maps in ``num_constant_maps``.
        ``corrects``: top-1 correctness per map (bool tensor, list, or None).
        Device maps are quantised where they are and copied to the host (the
        evaluation pipeline does that copy asynchronously: DeviceHandOff).
        """
        maps = torch.as_tensor(scoremaps) if isinstance(scoremaps, np.ndarray) else scoremaps
        if not isinstance(maps, torch.Tensor):
            raise TypeError(f"score maps must be a tensor or an array, got {type(scoremaps)}")
        if maps.dim() != 3 or tuple(maps.shape[1:]) != (self.resize_length,) * 2:
            raise ValueError(f"expected maps (B, {self.resize_length}, {self.resize_length}), "
                             f"got {tuple(maps.shape)}")
        if not maps.is_floating_point():
            raise TypeError(f"score maps must be floating point, got {maps.dtype}")
        q, nan, constant, outside = quantise_maps(maps, normalized)
        flags = torch.stack([nan, constant, outside]).cpu().numpy()
        if isinstance(corrects, torch.Tensor):
            corrects = corrects.detach().cpu().tolist()
        self.accumulate_quantised(q.cpu().numpy(), image_ids, corrects, *flags)

    def accumulate_quantised(self, q: np.ndarray, image_ids: Sequence[str], corrects=None,
                             nan: np.ndarray | None = None, constant: np.ndarray | None = None,
                             outside: np.ndarray | None = None) -> None:
        """Add quantised maps ``uint8 (B, H, W)`` with their flags (see
        :func:`wsol.protocol.quantise_maps`); what the other entry points end in."""
        image_ids = list(image_ids)
        if len(image_ids) != len(q):
            raise ValueError(f"got {len(image_ids)} image ids for {len(q)} maps")
        for image_id in image_ids:
            self._check_image_id(image_id)
        corrects = [None] * len(q) if corrects is None else list(corrects)
        if len(corrects) != len(q):
            raise ValueError(f"got {len(corrects)} correctness flags for {len(q)} maps")
        if outside is not None and outside.any():
            raise ValueError("normalised score maps must lie in [0, 1]; pass "
                             "normalized=False to normalise them here")
        if nan is not None:
            self._counts["num_nan_maps"] += int(nan.sum())
        if constant is not None:
            self._counts["num_constant_maps"] += int(constant.sum())
        self._submit(q, image_ids, [None if c is None else bool(c) for c in corrects])

    def _submit(self, q: np.ndarray, image_ids: list[str],
                corrects: list[bool | None]) -> None:
        """Start scoring; at most two batches are in flight, so the caller
        prepares the next maps while the last ones are scored."""
        if not image_ids:
            return
        gts = [self.ground_truth.boxes[i] for i in image_ids]
        self._inflight.append((self.scorer.submit(q, gts, corrects), image_ids, corrects))
        while len(self._inflight) > 2:
            self._add(*self._inflight.pop(0))

    def _add(self, job, image_ids: list[str], corrects: list[bool | None]) -> None:
        counts = job.result()
        for key in COUNT_KEYS:
            self._counts[key] += counts[key]
        if PER_IMAGE in counts:
            self._add_images(counts[PER_IMAGE], image_ids, corrects)

    def _add_images(self, images: dict, image_ids: list[str],
                    corrects: list[bool | None]) -> None:
        rows = np.asarray([self._index[i] for i in image_ids], dtype=np.int64)
        hits = images["hits"].reshape(len(rows), -1, kernels.NUM_LEVELS)
        self._counts["image_hits"][rows] = np.packbits(hits, axis=-1)
        correct = np.asarray([c is True for c in corrects])
        known = np.asarray([c is not None for c in corrects])
        self._counts["image_verdicts"][rows] = np.stack(
            [np.ones(len(rows), bool), images["gt_best"], images["gt_first"], correct, known],
            1)
        self._counts["image_max"][rows] = images["maxima"]

    def _flush_pending(self) -> None:
        if self._pending:
            q = np.stack([m for m, _, _ in self._pending])
            ids = [i for _, i, _ in self._pending]
            corrects = [c for _, _, c in self._pending]
            self._pending = []
            self._submit(q, ids, corrects)

    def _flush(self) -> None:
        """Score everything accumulated; the counts are complete afterwards."""
        if self._hand_off is not None:
            self._hand_off.finish()
        self._flush_pending()
        while self._inflight:
            self._add(*self._inflight.pop(0))

    # -- state -------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """All state as int64 arrays (copies); sum them across processes."""
        self._flush()
        return {key: value.copy() for key, value in self._counts.items()}

    def load_state(self, state: dict) -> None:
        """Replace the state by ``state`` (from ``state()`` of an evaluator with
        the same settings, or a sum of several)."""
        self._flush()
        for key, own in self._counts.items():
            value = np.asarray(state[key]).astype(own.dtype)
            if value.shape != own.shape:
                raise ValueError(f"state[{key!r}] has shape {value.shape}, expected "
                                 f"{own.shape}")
            self._counts[key] = value.copy()

    # -- results -----------------------------------------------------------------
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
        return {t: self._counts[key][i] * 100. / float(cnt) for i, t in enumerate(self._ious)}

    def compute(self) -> list:
        """wsolevaluation's result: MaxBoxAcc (percent) per IoU threshold of
        ``iou_threshold_list``, for the configured contour mode."""
        self._flush()
        key = "correct_multi" if self.multi_contour_eval else "correct_single"
        curves = self._accuracy_curves(key)
        return [curves[t].max() for t in self.iou_threshold_list]

    def bootstrap_samples(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """The box metrics of each resample (``weights``: ``[R, images]``, how
        often each image of the split was drawn), as :meth:`summary` computes
        them; MaxBoxAcc re-takes its maximum over thresholds in every resample.

        A threshold's hit of an image depends on the threshold only through
        its level (``int(t * max)``), so the weighted hits are summed per
        level (images grouped by their quantised maximum), then read out at
        each threshold's level."""
        self._flush()
        if not self._index:
            raise RuntimeError("per-image results were not kept: per_image=True")
        c = self._counts
        verdicts = c["image_verdicts"].astype(bool)
        seen = verdicts[:, 0]
        resamples = weights.shape[0]
        curves = c["image_hits"].shape[1]
        per_level = {}  # quantised maximum -> [R, curves, levels]
        for maximum in np.unique(c["image_max"][seen]):
            images = np.flatnonzero(seen & (c["image_max"] == maximum))
            total = np.zeros((resamples, curves * kernels.NUM_LEVELS), np.float32)
            for start in range(0, len(images), _IMAGE_CHUNK):
                chunk = images[start:start + _IMAGE_CHUNK]
                hits = np.unpackbits(c["image_hits"][chunk], axis=-1,
                                     count=kernels.NUM_LEVELS).reshape(len(chunk), -1)
                total += weights[:, chunk] @ hits.astype(np.float32)
            per_level[int(maximum)] = total.reshape(resamples, curves, kernels.NUM_LEVELS)
        counts = np.zeros((resamples, curves, len(self.cam_threshold_list)), np.float32)
        for maximum, total in per_level.items():
            counts += total[:, :, self.scorer.level_table[maximum]]
        images = (weights @ seen.astype(np.float32)).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):  # exact counts, divided in float64
            accuracy = 100.0 * counts.astype(np.float64) / images[:, None, None]
        best = accuracy.max(axis=2)  # [R, curves]: the best threshold of each resample
        n_ious = len(self._ious)
        out: dict[str, np.ndarray] = {}
        for d, t in enumerate(self._ious):
            if t in self.iou_threshold_list:
                out[f"MaxBoxAccV2@{t}"] = best[:, d]
                out[f"MaxBoxAcc@{t}"] = best[:, n_ious + d]
        out["MaxBoxAccV2"] = np.mean([out[f"MaxBoxAccV2@{t}"] for t in self.iou_threshold_list],
                                     axis=0)
        out["MaxBoxAcc"] = best[:, n_ious + self._ious.index(50)]
        correct, known = verdicts[:, 3], verdicts[:, 4]
        for variant, gt in (("best box", verdicts[:, 1]), ("first box", verdicts[:, 2])):
            out[f"GT-known Loc ({variant})"] = proportion_samples(weights, gt, seen)
            top1 = proportion_samples(weights, gt & correct, seen)
            out[f"Top-1 Loc ({variant})"] = top1 if known.any() else np.full(resamples, np.nan)
        variant = "first box" if self.first_box_only else "best box"
        out["GT-known Loc"] = out[f"GT-known Loc ({variant})"]
        out["Top-1 Loc"] = out[f"Top-1 Loc ({variant})"]
        return out

    def summary(self) -> dict:
        """Every box metric from the one pass (accuracies in percent)."""
        self._flush()
        counts = self._counts
        multi = self._accuracy_curves("correct_multi")
        single = self._accuracy_curves("correct_single")
        cnt = float(counts["num_images"])
        thresholds = [float(t) for t in self.cam_threshold_list]
        out: dict = {}
        v2 = [multi[t].max() for t in self.iou_threshold_list]
        out["MaxBoxAccV2"] = float(np.average(v2))
        for t, value in zip(self.iou_threshold_list, v2):
            out[f"MaxBoxAccV2@{t}"] = float(value)
        out["MaxBoxAcc"] = float(single[50].max())
        for t in self.iou_threshold_list:
            out[f"MaxBoxAcc@{t}"] = float(single[t].max())
        loc = {
            "GT-known Loc (best box)": counts["gt_known"] * 100. / cnt,
            "Top-1 Loc (best box)": counts["top1"] * 100. / cnt,
            "GT-known Loc (first box)": counts["gt_known_first"] * 100. / cnt,
            "Top-1 Loc (first box)": counts["top1_first"] * 100. / cnt,
        }
        if counts["num_top1_unknown"] == counts["num_images"]:
            # No map came with the classifier's verdict: Top-1 Loc unknown.
            for key in ("Top-1 Loc (best box)", "Top-1 Loc (first box)"):
                loc[key] = math.nan
        elif counts["num_top1_unknown"]:
            log.warning("%d map(s) without top-1 correctness counted as wrong for Top-1 Loc",
                        int(counts["num_top1_unknown"]))
        variant = "first box" if self.first_box_only else "best box"
        out["GT-known Loc"] = float(loc[f"GT-known Loc ({variant})"])
        out["Top-1 Loc"] = float(loc[f"Top-1 Loc ({variant})"])
        out.update({k: float(v) for k, v in loc.items()})
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
        out["num_top1_unknown"] = int(counts["num_top1_unknown"])
        out["multi_contour_eval"] = bool(self.multi_contour_eval)
        return out


@dataclass
class _HostBatch:
    """Quantised maps of one batch on their way to the host."""
    q: torch.Tensor            # (B, H, W) uint8
    flags: torch.Tensor        # (3, B) bool: NaN map, constant map, values outside [0, 1]
    corrects: torch.Tensor | None  # (B,) bool
    image_ids: list[str]
    ready: object = None       # a CUDA event recorded after the copies; None: on the host

    def landed(self) -> bool:
        return self.ready is None or self.ready.query()


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A host copy; from a CUDA tensor into pinned memory without waiting."""
    if tensor.device.type != "cuda":
        return tensor.cpu()
    return torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True).copy_(
        tensor, non_blocking=True)


class DeviceHandOff:
    """Feeds a box evaluator from maps on the device: quantises them there,
    copies the uint8 maps and their flags to the host asynchronously, and
    hands a batch over once its copy has landed -- at the latest when the next
    batch arrives -- so the GPU always has queued work meanwhile."""

    def __init__(self, evaluator: BoxEvaluator):
        self.evaluator = evaluator
        self._arriving: list[_HostBatch] = []

    def add(self, maps: torch.Tensor, image_ids: list[str],
            corrects: torch.Tensor | None) -> None:
        q, nan, constant, outside = quantise_maps(maps, normalized=False)
        batch = _HostBatch(_to_host(q), _to_host(torch.stack([nan, constant, outside])),
                           None if corrects is None else _to_host(
                               torch.as_tensor(corrects).detach().bool()), list(image_ids))
        if maps.device.type == "cuda":
            batch.ready = torch.cuda.Event()
            batch.ready.record(torch.cuda.current_stream(maps.device))
        self._arriving.append(batch)
        while self._arriving and (len(self._arriving) > 1 or self._arriving[0].landed()):
            self._hand_over(self._arriving.pop(0))

    def finish(self) -> None:
        while self._arriving:
            self._hand_over(self._arriving.pop(0))

    def _hand_over(self, batch: _HostBatch) -> None:
        if batch.ready is not None:
            batch.ready.synchronize()
        self.evaluator.accumulate_quantised(
            batch.q.numpy(), batch.image_ids,
            None if batch.corrects is None else batch.corrects.tolist(), *batch.flags.numpy())

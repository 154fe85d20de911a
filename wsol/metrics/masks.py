"""PxAP: pixel-wise average precision over a split (docs/protocol.md).

:class:`MaskEvaluator` keeps wsolevaluation's shape and results; batches are
binned on their own device (a scatter-add that never waits for the GPU).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from wsol.data.metadata import GroundTruth
from wsol.metrics.base import EvalContext, MapBatch
from wsol.metrics.boxes import LocalizationEvaluator
from wsol.protocol import RESIZE_LENGTH, check_scoremap_validity, normalize_maps

__all__ = ["MaskEvaluator"]


class MaskEvaluator(LocalizationEvaluator):
    """PxAP: pixel-wise average precision over the whole split (percent).

    Histograms of map values over foreground and background pixels are int64
    (on the maps' device for batches); bins are ``[t_i, t_i+1)`` over the
    threshold list followed by ``[1, 2)`` and ``[2, 3]``, as wsolevaluation.
    Masks come from ``ground_truth`` (shared with other evaluators and the
    overlays), read once and kept bit-packed.  ``state()`` / ``load_state()``
    are the histograms (int64), which add up across processes.
    """

    def __init__(self, metadata: dict, dataset_name: str, split: str,
                 cam_threshold_list: Sequence[float],
                 iou_threshold_list: Sequence[float] | None = None,
                 mask_root: str | None = None, multi_contour_eval: bool | None = None,
                 resize_length: int = RESIZE_LENGTH, ground_truth: GroundTruth | None = None,
                 per_image: bool = False):
        super().__init__(metadata=metadata, dataset_name=dataset_name,
                         split=split, cam_threshold_list=cam_threshold_list,
                         iou_threshold_list=iou_threshold_list,
                         mask_root=mask_root,
                         multi_contour_eval=multi_contour_eval)
        self.resize_length = int(resize_length)
        if ground_truth is None:
            if mask_root is None:
                raise ValueError("MaskEvaluator needs mask_root (the dataset's mask folder)")
            ground_truth = GroundTruth(metadata, self.resize_length, mask_root, boxes=False,
                                       masks=True)
        self.ground_truth = ground_truth
        self.num_bins = len(self.cam_threshold_list) + 2
        self.threshold_list_right_edge = np.append(
            np.asarray(self.cam_threshold_list, dtype=np.float64), [1.0, 2.0, 3.0])
        if np.any(self.threshold_list_right_edge[:-1] > self.threshold_list_right_edge[1:]):
            raise ValueError("bins must increase monotonically "
                             "(cam_threshold_list must be sorted)")
        self._edges_on: dict[torch.device, torch.Tensor] = {}
        # Each image's histograms (per_image: for the bootstrap), by its place
        # in the split: uint16 is enough for the pixels of one map.
        self._index = ({image_id: i for i, image_id in enumerate(self.ground_truth.image_ids)}
                       if per_image else {})
        self.reset()

    @classmethod
    def for_run(cls, context: EvalContext) -> "MaskEvaluator":
        """The PxAP evaluator of one (method, branch) of a run."""
        return cls(metadata=context.metadata, dataset_name=context.dataset.name,
                   split=context.split, cam_threshold_list=context.thresholds,
                   mask_root=context.mask_folder, resize_length=context.resize_length,
                   ground_truth=context.ground_truth, per_image=context.bootstrap > 0)

    # -- the evaluator protocol (wsol.metrics.base) -------------------------------
    def reset(self) -> None:
        self.gt_true_score_hist = np.zeros(self.num_bins, dtype=np.int64)
        self.gt_false_score_hist = np.zeros(self.num_bins, dtype=np.int64)
        self._num_images = 0
        self._device_hists: dict[torch.device, tuple] = {}
        self._arriving: list[tuple] = []  # per-image histograms on their way to the host
        self.image_hists = (np.zeros((len(self._index), 2, self.num_bins), np.uint16)
                            if self._index else None)  # [images, (background, fg), bins]

    def process(self, batch: MapBatch) -> None:
        """Saved maps one by one as wsolevaluation scores them; a run's raw maps
        binned on their device."""
        if batch.normalized:
            for scoremap, image_id in zip(batch.maps, batch.image_ids):
                self.accumulate(scoremap, image_id)
        else:
            self.accumulate_batch(batch.maps, batch.image_ids, normalized=False)

    def evaluate(self) -> dict:
        summary = self.summary()
        return {"PxAP": summary["PxAP"], "mask_curves": summary["curves"]}

    def _mask(self, image_id: str) -> np.ndarray:
        return self.ground_truth.mask(image_id)

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
        true = np.bincount(self._bin_index(values[mask == 1]), minlength=self.num_bins)
        false = np.bincount(self._bin_index(values[mask == 0]), minlength=self.num_bins)
        self.gt_true_score_hist += true
        self.gt_false_score_hist += false
        if self.image_hists is not None:
            self.image_hists[self._index[image_id]] = np.stack([false, true])
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
            maps = normalize_maps(maps)
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
        if device not in self._device_hists:
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
        key = index + self.num_bins * pixel_class
        if self.image_hists is not None:  # one histogram per image: [B, 3, bins]
            key = key + 3 * self.num_bins * torch.arange(
                len(image_ids), device=device).view(-1, 1, 1)
        images = len(image_ids) if self.image_hists is not None else 1
        counts = torch.zeros(images * 3 * self.num_bins, dtype=torch.int64, device=device)
        counts.scatter_add_(0, key.flatten(), torch.ones_like(key.flatten()))
        if self.image_hists is not None:
            per_image = counts.view(len(image_ids), 3, self.num_bins)
            self._hand_over_images(per_image[:, :2].to(torch.int32), image_ids)
            counts = per_image.sum(0).flatten()
        false_hist += counts[:self.num_bins]
        true_hist += counts[self.num_bins:2 * self.num_bins]
        num_outside += outside  # checked in _gather: a GPU batch is not waited for
        self._num_images += len(image_ids)

    def _hand_over_images(self, hists: torch.Tensor, image_ids: list[str]) -> None:
        """Per-image histograms to the host: from a GPU asynchronously (taken in
        once their copy has landed), so no batch waits for it."""
        rows = [self._index[i] for i in image_ids]
        if hists.device.type == "cuda":
            host = torch.empty(hists.shape, dtype=hists.dtype, pin_memory=True)
            host.copy_(hists, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(hists.device))
            self._arriving.append((rows, host, ready))
        else:
            self._arriving.append((rows, hists, None))
        self._take_images(wait=False)

    def _take_images(self, wait: bool) -> None:
        while self._arriving:
            rows, host, ready = self._arriving[0]
            if ready is not None and not wait and not ready.query():
                return
            if ready is not None:
                ready.synchronize()
            self.image_hists[rows] = host.numpy().astype(np.uint16)
            self._arriving.pop(0)

    def _gather(self) -> None:
        if self._arriving:
            self._take_images(wait=True)
        for true_hist, false_hist, num_outside in self._device_hists.values():
            if int(num_outside):
                raise ValueError("normalised score maps must lie in [0, 1]")
            self.gt_true_score_hist += true_hist.cpu().numpy()
            self.gt_false_score_hist += false_hist.cpu().numpy()
            true_hist.zero_()
            false_hist.zero_()

    def state(self) -> dict[str, np.ndarray]:
        self._gather()
        state = {"num_images": np.array(self._num_images, np.int64),
                 "gt_true_score_hist": self.gt_true_score_hist.copy(),
                 "gt_false_score_hist": self.gt_false_score_hist.copy()}
        if self.image_hists is not None:
            state["image_hists"] = self.image_hists.copy()
        return state

    def load_state(self, state: dict) -> None:
        self._gather()
        for key in ("gt_true_score_hist", "gt_false_score_hist"):
            value = np.asarray(state[key], dtype=np.int64)
            if value.shape != (self.num_bins,):
                raise ValueError(f"state[{key!r}] has shape {value.shape}, "
                                 f"expected ({self.num_bins},)")
        self.gt_true_score_hist = np.asarray(state["gt_true_score_hist"], np.int64).copy()
        self.gt_false_score_hist = np.asarray(state["gt_false_score_hist"], np.int64).copy()
        self._num_images = int(state["num_images"])
        if self.image_hists is not None:
            self.image_hists = np.asarray(state["image_hists"]).astype(np.uint16)

    def bootstrap_samples(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """PxAP of each resample (``weights``: ``[R, images]``), from the
        images' own histograms, as :meth:`compute` computes it."""
        self._gather()
        if self.image_hists is None:
            raise RuntimeError("per-image results were not kept: per_image=True")
        hists = np.zeros((weights.shape[0], 2 * self.num_bins), np.float64)
        flat = self.image_hists.reshape(len(self.image_hists), -1)
        for start in range(0, len(flat), 2048):  # float64: pixel counts exceed 2**24
            hists += weights[:, start:start + 2048].astype(np.float64) @ \
                flat[start:start + 2048].astype(np.float64)
        false, true = hists[:, :self.num_bins], hists[:, self.num_bins:]
        tp = true[:, ::-1].cumsum(1)
        fp = false[:, ::-1].cumsum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = tp / (tp + fp)
            recall = tp / true.sum(1, keepdims=True)
        terms = np.where((tp + fp)[:, 1:] != 0, precision[:, 1:] * np.diff(recall, axis=1), 0.0)
        return {"PxAP": 100.0 * terms.sum(1)}

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

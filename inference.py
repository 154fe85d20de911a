"""Compute class activation maps over a loader and feed the evaluators.

One pass over the data serves every requested method and branch: for each
batch, :func:`wsol.cams.compute_cams_per_branch` runs one forward shared by
both branches (and one backward through the head per branch for the
gradient methods), the maps are resized and normalised on the device, and
the box/mask evaluators accumulate them in batches.  Nothing in the loop
waits for the GPU: classification counts stay on the device, PxAP
histograms are filled on it, and the box evaluator receives the quantised
maps through an asynchronous copy and scores them on CPU threads while the
GPU works on the next batches.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data_loaders import configure_metadata
from evaluation import BoxEvaluator, MaskEvaluator, make_threshold_list
from wsol.acceleration import Acceleration, autocast, to_device
from wsol.architectures import IMAGENET_MEAN, IMAGENET_STD
from wsol.cams import compute_cams_per_branch, evaluation_maps, normalize_maps
from wsol.distributed import DistContext, all_reduce_sum
from wsol.dual_branch import CAMModel
from wsol.fidelity import FidelityEvaluator, insertion_deletion_auc, masked_images

__all__ = ["EvalSettings", "CAMComputer"]

_BRANCH_KEYS = {"softmax": "logits", "sigmoid": "logits_sigmoid"}


def _branch_logits(out, branch: str) -> torch.Tensor:
    return out.logits if branch == "softmax" else out.logits_sigmoid

log = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    methods: Sequence[str]
    branches: Sequence[str]
    clamp: bool = True
    box_metrics: bool = True
    mask_metrics: bool = False
    cam_curve_interval: float = 0.001
    iou_threshold_list: Sequence[int] = (30, 50, 70)
    multi_contour_eval: bool = True
    loc_threshold: float = 0.2
    first_box_only: bool = False
    resize_length: int = 224
    scoremap_root: str | None = None
    map_style: str = "wsolevaluation"       # or "public_code" (wsol.cams.evaluation_maps)
    threshold_list: str = "wsolevaluation"  # or "public_code" (evaluation.make_threshold_list)
    fidelity: bool = False
    fidelity_steps: int = 0           # > 0: insertion/deletion AUC with this many steps
    fidelity_protocol: str = "softmax_head"  # or "public_code" (Table 1's definition)
    cam_kwargs: dict = field(default_factory=dict)
    show_progress: bool = True
    overlay_count: int = 0            # --save_overlays: images per (method, branch)
    overlay_root: str | None = None   # where they go (<log_folder>/overlays/<split>)
    accel: Acceleration = field(default_factory=Acceleration)  # --amp, --channels_last
    normalization: tuple = (IMAGENET_MEAN, IMAGENET_STD)  # the images' (for the overlays)


class CAMComputer:
    """Scores every (method, branch) pair of ``settings`` on one split."""

    def __init__(self, model: CAMModel, loader: DataLoader, metadata_root: str,
                 mask_root: str, dataset_name: str, split: str, settings: EvalSettings,
                 device: torch.device, dist_ctx: DistContext = DistContext()):
        self.dist = dist_ctx
        self.model = model
        self.loader = loader
        self.settings = settings
        self.device = device
        metadata = configure_metadata(metadata_root)
        thresholds = make_threshold_list(settings.cam_curve_interval, settings.threshold_list)
        self.pairs = [(m, b) for b in settings.branches for m in settings.methods]
        self.box = {}
        self.mask = {}
        for pair in self.pairs:
            if settings.box_metrics:
                self.box[pair] = BoxEvaluator(
                    metadata=metadata, dataset_name=dataset_name, split=split,
                    cam_threshold_list=thresholds,
                    iou_threshold_list=list(settings.iou_threshold_list),
                    mask_root=mask_root, multi_contour_eval=settings.multi_contour_eval,
                    resize_length=settings.resize_length, loc_threshold=settings.loc_threshold,
                    first_box_only=settings.first_box_only)
            if settings.mask_metrics:
                self.mask[pair] = MaskEvaluator(
                    metadata=metadata, dataset_name=dataset_name, split=split,
                    cam_threshold_list=thresholds, iou_threshold_list=None,
                    mask_root=mask_root, multi_contour_eval=None,
                    resize_length=settings.resize_length)
        self.fidelity = {}
        if settings.fidelity:
            self.fidelity = {pair: FidelityEvaluator() for pair in self.pairs}
        self.overlays = None  # first N images and their maps, for --save_overlays
        if settings.overlay_count > 0 and settings.overlay_root and dist_ctx.is_main:
            from wsol.visualize import OverlayCollector
            self.overlays = OverlayCollector.from_metadata(
                settings.overlay_count, metadata, mask_root, dataset_name, model.num_classes,
                settings.loc_threshold, settings.resize_length, boxes=settings.box_metrics,
                masks=settings.mask_metrics,
                gt_boxes=next(iter(self.box.values())).gt_bboxes if self.box else None,
                normalization=settings.normalization)

    def _save(self, maps: torch.Tensor, image_ids: Sequence[str], method: str, branch: str) -> None:
        folder = os.path.join(self.settings.scoremap_root, f"{method}_{branch}")
        arrays = maps.float().cpu().numpy()
        for array, image_id in zip(arrays, image_ids):
            path = os.path.join(folder, image_id + ".npy")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            np.save(path, array)

    def compute_and_evaluate(self) -> dict:
        """Run the pass; returns ``{"classification": ..., "rows": [...]}``."""
        self.model.eval()
        size = (self.settings.resize_length, self.settings.resize_length)
        correct_softmax = torch.zeros((), dtype=torch.long, device=self.device)
        correct_sigmoid = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        bar = tqdm(self.loader, desc="evaluate", leave=False,
                   disable=not self.settings.show_progress)
        needs_normalised = bool(self.overlays is not None or self.fidelity
                                or self.settings.scoremap_root)
        for images, labels, image_ids in bar:
            if labels.numel() == 0:  # every image of the batch was unreadable and skipped
                continue
            images = to_device(images, self.device, self.settings.accel)
            labels = labels.to(self.device, non_blocking=True)
            image_ids = list(image_ids)
            with autocast(self.device, self.settings.accel):
                outputs = compute_cams_per_branch(
                    self.model, images, labels, self.settings.methods,
                    self.settings.branches, clamp=self.settings.clamp,
                    **self.settings.cam_kwargs)
            first = outputs[self.settings.branches[0]]
            predicted = first.logits.argmax(1)
            correct = predicted == labels  # the softmax head classifies
            correct_softmax += correct.sum()
            if first.logits_sigmoid is not None:
                correct_sigmoid += (first.logits_sigmoid.argmax(1) == labels).sum()
            fidelity_maps = self._fidelity_maps(images, predicted, size)
            for branch, out in outputs.items():
                # wsolevaluation resizes score maps with cv2.INTER_CUBIC; torch bicubic matches
                # it.  The evaluators get them before normalisation, to count NaN maps.
                resized = evaluation_maps(out, size, normalize=False,
                                          style=self.settings.map_style)
                # Normalised copies only for what needs them (the evaluators normalise
                # as they quantise).
                maps = ({method: normalize_maps(r) for method, r in resized.items()}
                        if needs_normalised else {})
                if self.overlays is not None:  # keeps only the first N images
                    self.overlays.add(branch, images, labels, out.logits.argmax(1),
                                      image_ids, maps)
                for method in self.settings.methods:
                    pair = (method, branch)
                    if pair in self.box:
                        self.box[pair].accumulate_batch(resized[method], image_ids, correct,
                                                        normalized=False)
                    if pair in self.mask:
                        self.mask[pair].accumulate_batch(resized[method], image_ids,
                                                         normalized=False)
                    if pair in self.fidelity:
                        if fidelity_maps is None:
                            self._accumulate_fidelity(pair, images, maps[method], labels,
                                                      first.logits, "logits")
                        else:
                            self._accumulate_fidelity(
                                pair, images, fidelity_maps[branch][method], predicted,
                                _branch_logits(first, branch), _BRANCH_KEYS[branch])
                    if self.settings.scoremap_root:
                        self._save(maps[method], image_ids, method, branch)
            seen += labels.shape[0]
        totals = torch.stack([correct_softmax, correct_sigmoid,
                              torch.tensor(seen, device=self.device),
                              torch.tensor(len(self.loader.sampler), device=self.device)])
        totals = all_reduce_sum(totals, self.dist).tolist()
        correct_softmax, correct_sigmoid, seen, expected = totals
        self._reduce_evaluators()
        if self.overlays is not None:
            self.overlays.write(self.settings.overlay_root)
        if seen == 0:
            raise ValueError("the evaluation loader yielded no images")
        classification = {"Top-1 Cls": 100.0 * correct_softmax / seen}
        if self.model.is_dual:
            classification["Top-1 Cls (sigmoid branch)"] = 100.0 * correct_sigmoid / seen
        skipped = expected - seen  # unreadable images (--skip_bad_images)
        return {"classification": classification, "num_images": seen,
                "num_skipped_images": skipped, "rows": self._rows()}

    def _reduce_evaluators(self) -> None:
        """Sum every rank's integer counts (and fidelity sums), so each rank
        holds the totals."""
        if not self.dist.enabled:
            return
        for fidelity in self.fidelity.values():
            fidelity.set_sums(all_reduce_sum(fidelity.sums(self.device).to(self.device),
                                             self.dist))
        for evaluator in [*self.box.values(), *self.mask.values()]:
            own = evaluator.counts()
            delta = {}
            for key, value in own.items():
                local = torch.as_tensor(value, dtype=torch.int64)
                total = all_reduce_sum(local.to(self.device), self.dist).cpu()
                delta[key] = (total - local).numpy()
            evaluator.add_counts(delta)

    def _fidelity_maps(self, images, predicted, size) -> dict | None:
        """Table 1's fidelity (``fidelity_protocol="public_code"``) scores maps of
        the softmax head's predicted class: one more pass for them."""
        if not self.fidelity or self.settings.fidelity_protocol != "public_code":
            return None
        with autocast(self.device, self.settings.accel):
            outputs = compute_cams_per_branch(
                self.model, images, predicted, self.settings.methods, self.settings.branches,
                clamp=self.settings.clamp, **self.settings.cam_kwargs)
        return {branch: {method: normalize_maps(r) for method, r in evaluation_maps(
                    out, size, normalize=False, style=self.settings.map_style).items()}
                for branch, out in outputs.items()}

    def _accumulate_fidelity(self, pair, images, maps, classes, logits, key) -> None:
        # Scored on the image multiplied by the map at its size, with the
        # softmax of the ``key`` logits (the softmax head's, or Table 1's
        # softmax over the sigmoid branch's), in log space (an overconfident
        # model's probabilities underflow to 0 even in float64); the full
        # image's scores are those of the CAM forward (``logits``).
        def log_probabilities(x: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.settings.accel):
                return self.model(x)[key].double().log_softmax(1)

        with torch.no_grad():
            saliency = torch.nn.functional.interpolate(
                maps[:, None], size=images.shape[-2:], mode="bilinear",
                align_corners=False)[:, 0]
            full = logits.double().log_softmax(1)
            masked = log_probabilities(masked_images(images, saliency))
            index = classes[:, None]
            self.fidelity[pair].accumulate(full.gather(1, index)[:, 0],
                                           masked.gather(1, index)[:, 0], log_space=True)
            if self.settings.fidelity_steps > 0:
                auc = insertion_deletion_auc(lambda x: log_probabilities(x).exp(), images,
                                             saliency, classes,
                                             steps=self.settings.fidelity_steps)
                self.fidelity[pair].accumulate_auc(auc["insertion"], auc["deletion"])

    def _rows(self) -> list[dict]:
        rows = []
        for method, branch in self.pairs:
            row = {"method": method, "branch": branch,
                   "clamp": self.settings.clamp and branch == "sigmoid"}
            if (method, branch) in self.box:
                row.update(self.box[(method, branch)].summary())
            if (method, branch) in self.mask:
                summary = self.mask[(method, branch)].summary()
                row["PxAP"] = summary["PxAP"]
                row["mask_curves"] = summary.get("curves")
            if (method, branch) in self.fidelity:
                row.update(self.fidelity[(method, branch)].compute())
            rows.append(row)
        return rows


if __name__ == "__main__":
    import sys

    print("the single-image tool is explain.py: python explain.py --ckpt CKPT --image FILE",
          file=sys.stderr)
    sys.exit(2)

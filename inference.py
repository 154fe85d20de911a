"""Compute class activation maps over a loader and feed the evaluators.

One pass over the data serves every requested method and branch: for each
batch and branch, :func:`wsol.cams.compute_cams` runs one forward (and one
backward for the gradient methods), the maps are post-processed on the
device, and the box/mask evaluators accumulate them in batches.
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
from wsol.cams import compute_cams, evaluation_maps
from wsol.dual_branch import CAMModel

__all__ = ["EvalSettings", "CAMComputer"]

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
    fidelity: bool = False
    cam_kwargs: dict = field(default_factory=dict)
    show_progress: bool = True


class CAMComputer:
    """Scores every (method, branch) pair of ``settings`` on one split."""

    def __init__(self, model: CAMModel, loader: DataLoader, metadata_root: str,
                 mask_root: str, dataset_name: str, split: str, settings: EvalSettings,
                 device: torch.device):
        self.model = model
        self.loader = loader
        self.settings = settings
        self.device = device
        metadata = configure_metadata(metadata_root)
        thresholds = make_threshold_list(settings.cam_curve_interval)
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
            from wsol.fidelity import FidelityEvaluator
            self.fidelity = {pair: FidelityEvaluator() for pair in self.pairs}

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
        for images, labels, image_ids in bar:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            for branch in self.settings.branches:
                out = compute_cams(self.model, images, targets=labels,
                                   methods=self.settings.methods, branch=branch,
                                   clamp=self.settings.clamp, **self.settings.cam_kwargs)
                correct = out.logits.argmax(1) == labels  # the softmax head classifies
                if branch == self.settings.branches[0]:
                    correct_softmax += correct.sum()
                    if out.logits_sigmoid is not None:
                        correct_sigmoid += (out.logits_sigmoid.argmax(1) == labels).sum()
                maps = evaluation_maps(out, size)
                for method in self.settings.methods:
                    pair = (method, branch)
                    if pair in self.box:
                        self.box[pair].accumulate_batch(maps[method], list(image_ids), correct)
                    if pair in self.mask:
                        self.mask[pair].accumulate_batch(maps[method], list(image_ids))
                    if pair in self.fidelity:
                        self._accumulate_fidelity(pair, images, maps[method], labels)
                    if self.settings.scoremap_root:
                        self._save(maps[method], image_ids, method, branch)
            seen += labels.shape[0]
        if seen == 0:
            raise ValueError("the evaluation loader yielded no images")
        classification = {"Top-1 Cls": 100.0 * correct_softmax.item() / seen}
        if self.model.is_dual:
            classification["Top-1 Cls (sigmoid branch)"] = 100.0 * correct_sigmoid.item() / seen
        return {"classification": classification, "num_images": seen, "rows": self._rows()}

    def _accumulate_fidelity(self, pair, images, maps, labels) -> None:
        # Scored with the softmax head, on the image multiplied by the map.
        with torch.no_grad():
            small = torch.nn.functional.interpolate(maps[:, None], size=images.shape[-2:],
                                                    mode="bilinear", align_corners=False)
            full = self.model(images)["logits"].softmax(1)
            masked = self.model(images * small)["logits"].softmax(1)
        index = labels[:, None]
        self.fidelity[pair].accumulate(full.gather(1, index)[:, 0], masked.gather(1, index)[:, 0])

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

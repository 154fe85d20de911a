"""One pass over a split: maps of every method and branch into the evaluators.

:class:`MapPass` (WSOL datasets): for each batch,
:func:`wsol.cams.compute_cams_per_branch` runs one forward shared by the
branches (and one backward through the head per branch for the gradient
methods), the maps are resized on the device, and every evaluator of the
run's :class:`wsol.metrics.EvaluatorSet` takes the batch
(:class:`wsol.metrics.MapBatch`).  Nothing in the loop waits for the GPU:
classification counts stay on the device, PxAP histograms are filled there,
and the box evaluators receive quantised maps through an asynchronous copy
(:class:`wsol.metrics.DeviceHandOff`).

:class:`SeedPass` (multi-label datasets): one image at a time at its own size,
seed maps of its ground-truth classes (:mod:`wsol.seeds`) into the seed
evaluators.

:func:`evaluate_run` builds either from a run's settings.  Under torchrun each
rank scores its share of the images and the evaluators' states are summed.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from wsol.branches import branch_rule, clamp_rule
from wsol.cams import CAMMethod, compute_cams_per_branch, evaluation_maps, normalize_maps
from wsol.data.metadata import GroundTruth, configure_metadata, get_image_ids
from wsol.errors import UserError
from wsol.metrics import METRICS, EvalContext, EvaluatorSet, FidelityInputs, MapBatch, SeedBatch
from wsol.model import CAMModel
from wsol.protocol import RESIZE_LENGTH, make_threshold_list
from wsol.runtime.acceleration import Acceleration, autocast, to_device
from wsol.runtime.distributed import (DistContext, ShardSampler, all_reduce_sum,
                                      reduce_state)
from wsol.runtime.progress import progress
from wsol.saved_maps import MapWriter, scored_settings
from wsol.seeds import SeedMaps, seed_maps_with_logits
from wsol.settings import RunSettings

__all__ = ["MapPass", "SeedPass", "evaluate_run", "evaluation_context", "NothingToScore"]

log = logging.getLogger(__name__)


class NothingToScore(UserError):
    """No image of the split reached the evaluators."""


class MapPass:
    """Scores every (method, branch) of ``evaluators`` on the images of ``loader``."""

    def __init__(self, model: CAMModel, loader: DataLoader, evaluators: EvaluatorSet,
                 methods: Sequence[CAMMethod], branches: Sequence[str], device: torch.device,
                 clamp: bool = True, map_style: str = "wsolevaluation",
                 fidelity_protocol: str = "softmax_head", dist: DistContext = DistContext(),
                 accel: Acceleration = Acceleration(), show_progress: bool = True,
                 writer: MapWriter | None = None, overlays=None,
                 resize_length: int = RESIZE_LENGTH):
        self.model, self.loader, self.evaluators = model, loader, evaluators
        self.methods, self.branches = list(methods), list(branches)
        self.names = [m.name for m in self.methods]
        self.device, self.clamp, self.map_style = device, clamp, map_style
        self.fidelity_protocol = fidelity_protocol
        self.dist, self.accel, self.show_progress = dist, accel, show_progress
        self.writer, self.overlays = writer, overlays
        self.size = (resize_length, resize_length)

    def run(self) -> dict:
        """The pass; returns ``{"classification": ..., "rows": [...], ...}``."""
        self.model.eval()
        fidelity = self.evaluators.has("fidelity")
        # Normalised copies only for what needs them (the evaluators normalise
        # as they quantise).
        needs_normalised = bool(self.overlays is not None or fidelity or self.writer)
        counts = torch.zeros(3, dtype=torch.long, device=self.device)  # softmax, sigmoid, NaN
        seen = 0
        for images, labels, image_ids in progress(self.loader, "evaluate", self.show_progress):
            if labels.numel() == 0:  # every image of the batch was unreadable and skipped
                continue
            images = to_device(images, self.device, self.accel)
            labels = labels.to(self.device, non_blocking=True)
            image_ids = list(image_ids)
            with autocast(self.device, self.accel):
                outputs = compute_cams_per_branch(self.model, images, labels, self.methods,
                                                  self.branches, clamp=self.clamp)
            first = outputs[self.branches[0]]
            predicted = first.logits.argmax(1)
            correct = predicted == labels  # the softmax head classifies
            finite = torch.isfinite(first.logits).all(1)
            counts[0] += correct.sum()
            if first.logits_sigmoid is not None:
                counts[1] += (first.logits_sigmoid.argmax(1) == labels).sum()
                finite &= torch.isfinite(first.logits_sigmoid).all(1)
            counts[2] += (~finite).sum()  # a diverged model: flagged in the table
            if self.writer is not None:
                self.writer.predictions.update(zip(image_ids, predicted.tolist()))
            predicted_maps = (self._predicted_class_maps(images, predicted)
                              if fidelity and self.fidelity_protocol == "public_code" else None)
            for branch, out in outputs.items():
                # The evaluators get the maps before normalisation, to count NaN maps.
                resized = evaluation_maps(out, self.size, normalize=False, style=self.map_style)
                maps = ({method: normalize_maps(r) for method, r in resized.items()}
                        if needs_normalised else {})
                if self.overlays is not None:  # keeps only the first N images
                    self.overlays.add(branch, images, labels, predicted, image_ids, maps)
                for method in self.names:
                    batch = MapBatch(method, branch, resized[method], image_ids, correct,
                                     images=images)
                    if fidelity:
                        batch.fidelity = (
                            FidelityInputs(maps[method], labels, first.logits, "logits")
                            if predicted_maps is None else FidelityInputs(
                                predicted_maps[branch][method], predicted,
                                first.branch_logits(branch), branch_rule(branch).logits_key))
                    self.evaluators.process(batch)
                    if self.writer is not None:
                        self.writer.save(maps[method], image_ids, method, branch)
            seen += labels.shape[0]
        return self._finish(counts, seen)

    def _predicted_class_maps(self, images: torch.Tensor, predicted: torch.Tensor) -> dict:
        """Table 1's fidelity (protocol ``public_code``) scores maps of the
        softmax head's predicted class: one more pass for them."""
        with autocast(self.device, self.accel):
            outputs = compute_cams_per_branch(self.model, images, predicted, self.methods,
                                              self.branches, clamp=self.clamp)
        return {branch: {method: normalize_maps(r) for method, r in evaluation_maps(
                    out, self.size, normalize=False, style=self.map_style).items()}
                for branch, out in outputs.items()}

    def _finish(self, counts: torch.Tensor, seen: int) -> dict:
        totals = torch.cat([counts, torch.tensor([seen, len(self.loader.sampler)],
                                                 device=self.device)])
        correct_softmax, correct_sigmoid, nonfinite, seen, expected = \
            all_reduce_sum(totals, self.dist).tolist()
        self.evaluators.synchronize(lambda state: reduce_state(state, self.dist, self.device))
        if self.writer is not None:
            self.writer.write_record(self.evaluators.rules)
        if seen == 0:
            raise NothingToScore("no image of the split could be scored: every one was "
                                 "unreadable and skipped (--skip_bad_images); fix or "
                                 "replace the images")
        classification = {"Top-1 Cls": 100.0 * correct_softmax / seen}
        if self.model.is_dual:
            classification["Top-1 Cls (sigmoid branch)"] = 100.0 * correct_sigmoid / seen
        if nonfinite:
            log.warning("%d of %d images got NaN/inf logits: the model has diverged; its "
                        "numbers mean nothing", nonfinite, seen)
        return {"classification": classification, "num_images": seen,
                "num_skipped_images": expected - seen,  # unreadable (--skip_bad_images)
                "num_nonfinite_logits": nonfinite, **self.evaluators.results(self.dist.is_main)}


class SeedPass:
    """One pass over a segmentation split (batch 1, images at their own size):
    seed maps of every method and branch for each image's ground-truth
    classes, into the seed evaluators."""

    def __init__(self, model: CAMModel, loader: DataLoader, evaluators: EvaluatorSet,
                 methods: Sequence[CAMMethod], branches: Sequence[str], device: torch.device,
                 scales: Sequence[float] = (), clamp: bool = True, resize: str = "image",
                 normalization: tuple | None = None, dist: DistContext = DistContext(),
                 accel: Acceleration = Acceleration(), show_progress: bool = True,
                 writer: MapWriter | None = None):
        self.model, self.loader, self.evaluators = model, loader, evaluators
        self.methods, self.branches = list(methods), list(branches)
        self.device, self.scales, self.clamp, self.resize = device, tuple(scales), clamp, resize
        self.normalization = normalization
        self.dist, self.accel, self.show_progress, self.writer = dist, accel, show_progress, writer

    def run(self) -> dict:
        self.model.eval()
        hits = seen = 0
        extra = {} if self.normalization is None else {"normalization": self.normalization}
        for images, labels, image_ids in progress(self.loader, "seeds", self.show_progress):
            if labels.numel() == 0:
                continue
            for image, hot, image_id in zip(images, labels, image_ids):
                image = to_device(image[None], self.device, self.accel)
                classes = torch.nonzero(hot > 0)[:, 0].tolist()
                done = seed_maps_with_logits(
                    self.model, image, classes, self.methods, self.branches, self.scales,
                    self.clamp, self.accel, self.resize, **extra) if classes else SeedMaps({}, None)
                logits = done.logits
                if logits is None:  # no pass of the image as it is
                    with torch.no_grad(), autocast(self.device, self.accel):
                        logits = self.model(image)["logits"]
                hits += int(hot[int(logits.argmax(1))] > 0)
                seen += 1
                correct = bool(hot[int(logits.argmax(1))] > 0)
                for method, branch in self.evaluators.pairs:
                    found = done.maps.get((method, branch))
                    array = (found.cpu().numpy() if found is not None
                             else np.zeros((0, *image.shape[-2:]), np.float32))
                    self.evaluators.process(SeedBatch(method, branch, image_id, array, classes,
                                                      correct))
                    if self.writer is not None:
                        self.writer.save_seeds(array, classes, image_id, method, branch)
        if self.writer is not None:
            self.writer.write_record(self.evaluators.rules)
        totals = all_reduce_sum(torch.tensor([hits, seen], device=self.device), self.dist)
        hits, seen = (int(v) for v in totals.tolist())
        self.evaluators.synchronize(lambda state: reduce_state(state, self.dist, self.device))
        if seen == 0:
            raise NothingToScore("no image of the split could be scored: every one was "
                                 "unreadable and skipped (--skip_bad_images); fix or "
                                 "replace the images")
        return {"classification": {"Top-1 Cls": 100.0 * hits / seen}, "num_images": seen,
                "num_skipped_images": len(self.loader.sampler) - seen
                if not self.dist.enabled else 0, **self.evaluators.results(self.dist.is_main)}


# ---------------------------------------------------------------------------
# From a run's settings
# ---------------------------------------------------------------------------
def evaluation_context(settings: RunSettings, split: str | None = None,
                       fidelity_scorer=None) -> EvalContext:
    """What the evaluators of a run are built from: the split's metadata and
    ground truth (read once, shared), the thresholds and the scoring settings."""
    data, evaluation, choices = settings.data, settings.evaluation, settings.choices
    split = split or evaluation.split
    metadata = configure_metadata(data.split_metadata(split))
    info = data.info
    context = EvalContext(
        dataset=info, split=split, metadata=metadata, mask_folder=data.mask_folder,
        num_classes=settings.model.num_classes,
        thresholds=make_threshold_list(evaluation.cam_curve_interval, choices.threshold_list),
        iou_threshold_list=evaluation.iou_threshold_list,
        multi_contour_eval=evaluation.multi_contour_eval,
        loc_threshold=evaluation.loc_threshold, first_box_only=choices.first_box_only,
        box_threads=evaluation.box_threads, seed_threshold=evaluation.seed_threshold,
        fidelity=evaluation.fidelity, fidelity_steps=evaluation.fidelity_steps,
        fidelity_road=evaluation.fidelity_road, fidelity_scorer=fidelity_scorer,
        bootstrap=evaluation.bootstrap, seed=choices.seed)
    if not info.multi_label:
        context.ground_truth = GroundTruth(metadata, RESIZE_LENGTH, data.mask_folder,
                                           boxes=info.boxes, masks=info.masks)
    context.image_ids = (context.ground_truth.image_ids if context.ground_truth is not None
                         else get_image_ids(metadata))
    return context


def evaluate_run(settings: RunSettings, model: CAMModel, spec, device: torch.device,
                 ctx: DistContext = DistContext(), accel: Acceleration = Acceleration(),
                 show_progress: bool = False) -> dict:
    """Score the model on the run's split with every method, branch and
    metric its settings ask for; returns the results (rows, classification)."""
    from wsol.data.loaders import get_data_loader
    from wsol.runtime.build import loader_settings
    data, evaluation, cams = settings.data, settings.evaluation, settings.cams
    split = evaluation.split
    loader = get_data_loader(
        {split: data.image_root}, data.metadata_folder,
        loader_settings(settings, spec, train=False, device=device), splits=(split,),
        num_classes=settings.model.num_classes,
        sampler_factory=lambda dataset, _split: ShardSampler(len(dataset), ctx.rank,
                                                             ctx.world_size),
        train_split="")[split]  # evaluation: no split augments, even VOC's "train"
    methods = cams.instances(torch.Generator(device=device).manual_seed(settings.choices.seed))
    writer = (MapWriter(os.path.join(settings.log_folder, "scoremaps", split),
                        scored_settings(settings), ctx.rank if ctx.enabled else None)
              if evaluation.save_scoremaps else None)  # each rank writes its own images

    def log_probabilities(images: torch.Tensor, key: str) -> torch.Tensor:
        with torch.no_grad(), autocast(device, accel):
            return model(images)[key].double().log_softmax(1)

    context = evaluation_context(settings, split, log_probabilities)
    pairs = [(m.name, b) for b in cams.branches for m in methods]
    executor = None
    threads = evaluation.box_threads or os.cpu_count() or 1
    if data.info.boxes and threads > 1:  # one pool for every box evaluator
        executor = context.executor = ThreadPoolExecutor(threads, thread_name_prefix="wsol-box")
    try:
        evaluators = EvaluatorSet(METRICS, context, pairs, {
            b: clamp_rule(b, cams.clamp, settings.model.recam_clamp) for b in cams.branches})
        if data.info.multi_label:
            results = SeedPass(model, loader, evaluators, methods, cams.branches, device,
                               evaluation.tta_scales, cams.clamp, settings.choices.seed_resize,
                               (spec.mean, spec.std), ctx, accel, show_progress, writer).run()
        else:
            overlays = None
            if evaluation.save_overlays > 0 and ctx.is_main:
                from wsol.visualize import OverlayCollector
                overlays = OverlayCollector.from_ground_truth(
                    evaluation.save_overlays, context.ground_truth, data.dataset_name,
                    settings.model.num_classes, evaluation.loc_threshold, boxes=data.info.boxes,
                    normalization=(spec.mean, spec.std))
            results = MapPass(model, loader, evaluators, methods, cams.branches, device,
                              cams.clamp, settings.choices.map_style,
                              settings.choices.fidelity, ctx, accel, show_progress, writer,
                              overlays).run()
            if overlays is not None:
                overlays.write(os.path.join(settings.log_folder, "overlays", split))
    finally:
        if executor is not None:
            executor.shutdown()
    results.update({"experiment": settings.runtime.experiment_name,
                    "dataset": data.dataset_name, "architecture": settings.model.network,
                    "model_structure": settings.model.model_structure,
                    "wsol_method": settings.wsol.method, "split": split,
                    "choices": settings.choices.as_dict(), "replay": settings.replay})
    return results

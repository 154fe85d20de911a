"""Compute class activation maps over a loader and feed the evaluators.

One pass over the data serves every requested method and branch: for each
batch, :func:`wsol.cams.compute_cams_per_branch` runs one forward shared by
the branches (and one backward through the head per branch for the gradient
methods), the maps are resized and normalised on the device, and the
evaluators accumulate them in batches.  The split's ground truth is read once
(:class:`wsol.data.metadata.GroundTruth`) for every evaluator and the overlays.

Nothing in the loop waits for the GPU: classification counts stay on the
device, PxAP histograms are filled there, and the box evaluator receives the
quantised maps through an asynchronous copy to pinned memory
(:class:`DeviceHandOff`), scoring them on CPU threads while the GPU works on
the next batches.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from wsol.cams import CAMMethod, compute_cams_per_branch, evaluation_maps, normalize_maps
from wsol.data.metadata import GroundTruth, configure_metadata
from wsol.metrics import BoxEvaluator, FidelityEvaluator, MaskEvaluator, SegmentationEvaluator
from wsol.branches import branch_rule, clamp_rule
from wsol.metrics.fidelity import insertion_deletion_auc, masked_images
from wsol.model import CAMModel
from wsol.protocol import IMAGENET_MEAN, IMAGENET_STD, make_threshold_list, quantise_maps
from wsol.results import branch_row
from wsol.saved_maps import write_record
from wsol.seeds import SeedPass, seed_pass
from wsol.runtime.acceleration import Acceleration, autocast, to_device
from wsol.runtime.distributed import DistContext, all_reduce_sum, reduce_state
from wsol.runtime.progress import progress

__all__ = ["EvalSettings", "CAMComputer", "DeviceHandOff", "SeedComputer"]

log = logging.getLogger(__name__)

@dataclass
class EvalSettings:
    methods: Sequence[CAMMethod]      # with their settings (wsol.cams.methods)
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
    threshold_list: str = "wsolevaluation"  # or "public_code" (wsol.protocol)
    fidelity: bool = False
    fidelity_steps: int = 0           # > 0: insertion/deletion AUC with this many steps
    fidelity_protocol: str = "softmax_head"  # or "public_code" (Table 1's definition)
    box_threads: int = 0              # threads of the box scoring (0: one per core)
    show_progress: bool = True
    overlay_count: int = 0            # --save_overlays: images per (method, branch)
    overlay_root: str | None = None   # where they go (<log_folder>/overlays/<split>)
    accel: Acceleration = field(default_factory=Acceleration)  # --amp, --channels_last
    normalization: tuple = (IMAGENET_MEAN, IMAGENET_STD)  # the images' (for the overlays)


@dataclass
class _HostBatch:
    """Quantised maps of one batch on their way to the host."""
    q: torch.Tensor            # (B, H, W) uint8
    flags: torch.Tensor        # (3, B) bool: NaN map, constant map, values outside [0, 1]
    corrects: torch.Tensor     # (B,) bool
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

    def add(self, maps: torch.Tensor, image_ids: list[str], corrects: torch.Tensor) -> None:
        q, nan, constant, outside = quantise_maps(maps, normalized=False)
        batch = _HostBatch(_to_host(q), _to_host(torch.stack([nan, constant, outside])),
                           _to_host(corrects.detach().bool()), image_ids)
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
        self.evaluator.accumulate_quantised(batch.q.numpy(), batch.image_ids,
                                            batch.corrects.tolist(), *batch.flags.numpy())


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
        self.ground_truth = GroundTruth(metadata, settings.resize_length, mask_root,
                                        boxes=settings.box_metrics,
                                        masks=settings.mask_metrics)
        thresholds = make_threshold_list(settings.cam_curve_interval, settings.threshold_list)
        self.names = [m.name for m in settings.methods]
        self.pairs = [(m, b) for b in settings.branches for m in self.names]
        common = dict(metadata=metadata, dataset_name=dataset_name, split=split,
                      cam_threshold_list=thresholds, mask_root=mask_root,
                      resize_length=settings.resize_length, ground_truth=self.ground_truth)
        # One thread pool for every box evaluator: their batches take turns.
        threads = settings.box_threads or os.cpu_count() or 1
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="wsol-box") \
            if settings.box_metrics and threads > 1 else None
        self.box = {pair: BoxEvaluator(iou_threshold_list=list(settings.iou_threshold_list),
                                       multi_contour_eval=settings.multi_contour_eval,
                                       loc_threshold=settings.loc_threshold,
                                       first_box_only=settings.first_box_only,
                                       num_workers=threads, executor=self.executor, **common)
                    for pair in self.pairs if settings.box_metrics}
        self.hand_off = {pair: DeviceHandOff(evaluator) for pair, evaluator in self.box.items()}
        self.mask = {pair: MaskEvaluator(**common)
                     for pair in self.pairs if settings.mask_metrics}
        self.fidelity = {pair: FidelityEvaluator() for pair in self.pairs} \
            if settings.fidelity else {}
        self.overlays = None  # first N images and their maps, for --save_overlays
        if settings.overlay_count > 0 and settings.overlay_root and dist_ctx.is_main:
            from wsol.visualize import OverlayCollector
            self.overlays = OverlayCollector.from_ground_truth(
                settings.overlay_count, self.ground_truth, dataset_name, model.num_classes,
                settings.loc_threshold, boxes=settings.box_metrics,
                normalization=settings.normalization)
        self.predictions: dict[str, int] = {}  # kept when the maps are saved

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
        settings = self.settings
        size = (settings.resize_length, settings.resize_length)
        correct_softmax = torch.zeros((), dtype=torch.long, device=self.device)
        correct_sigmoid = torch.zeros((), dtype=torch.long, device=self.device)
        nonfinite = torch.zeros((), dtype=torch.long, device=self.device)  # images
        seen = 0
        needs_normalised = bool(self.overlays is not None or self.fidelity
                                or settings.scoremap_root)
        for images, labels, image_ids in progress(self.loader, "evaluate", settings.show_progress):
            if labels.numel() == 0:  # every image of the batch was unreadable and skipped
                continue
            images = to_device(images, self.device, settings.accel)
            labels = labels.to(self.device, non_blocking=True)
            image_ids = list(image_ids)
            with autocast(self.device, settings.accel):
                outputs = compute_cams_per_branch(self.model, images, labels, settings.methods,
                                                  settings.branches, clamp=settings.clamp)
            first = outputs[settings.branches[0]]
            predicted = first.logits.argmax(1)
            correct = predicted == labels  # the softmax head classifies
            correct_softmax += correct.sum()
            finite = torch.isfinite(first.logits).all(1)
            if first.logits_sigmoid is not None:
                correct_sigmoid += (first.logits_sigmoid.argmax(1) == labels).sum()
                finite &= torch.isfinite(first.logits_sigmoid).all(1)
            nonfinite += (~finite).sum()  # a diverged model: flagged in the table
            if settings.scoremap_root:
                self.predictions.update(zip(image_ids, predicted.tolist()))
            fidelity_maps = self._fidelity_maps(images, predicted, size)
            for branch, out in outputs.items():
                # The evaluators get the maps before normalisation, to count NaN maps.
                resized = evaluation_maps(out, size, normalize=False, style=settings.map_style)
                # Normalised copies only for what needs them (the evaluators
                # normalise as they quantise).
                maps = ({method: normalize_maps(r) for method, r in resized.items()}
                        if needs_normalised else {})
                if self.overlays is not None:  # keeps only the first N images
                    self.overlays.add(branch, images, labels, predicted, image_ids, maps)
                for method in self.names:
                    pair = (method, branch)
                    if pair in self.hand_off:
                        self.hand_off[pair].add(resized[method], image_ids, correct)
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
                                first.branch_logits(branch), branch_rule(branch).logits_key)
                    if settings.scoremap_root:
                        self._save(maps[method], image_ids, method, branch)
            seen += labels.shape[0]
        for hand_off in self.hand_off.values():
            hand_off.finish()
        totals = torch.stack([correct_softmax, correct_sigmoid, nonfinite,
                              torch.tensor(seen, device=self.device),
                              torch.tensor(len(self.loader.sampler), device=self.device)])
        correct_softmax, correct_sigmoid, nonfinite, seen, expected = \
            all_reduce_sum(totals, self.dist).tolist()
        for evaluator in [*self.box.values(), *self.mask.values(), *self.fidelity.values()]:
            evaluator.load_state(reduce_state(evaluator.state(), self.dist, self.device))
        if self.overlays is not None:
            self.overlays.write(settings.overlay_root)
        if settings.scoremap_root:
            self._write_record()
        if seen == 0:
            raise ValueError("the evaluation loader yielded no images")
        classification = {"Top-1 Cls": 100.0 * correct_softmax / seen}
        if self.model.is_dual:
            classification["Top-1 Cls (sigmoid branch)"] = 100.0 * correct_sigmoid / seen
        skipped = expected - seen  # unreadable images (--skip_bad_images)
        rows = self._rows()
        if self.executor is not None:
            self.executor.shutdown()
        if nonfinite:
            log.warning("%d of %d images got NaN/inf logits: the model has diverged; its "
                        "numbers mean nothing", nonfinite, seen)
        return {"classification": classification, "num_images": seen,
                "num_skipped_images": skipped, "num_nonfinite_logits": nonfinite,
                "rows": rows}

    def _write_record(self) -> None:
        """``run.json`` beside the saved maps: what ``python evaluation.py``
        needs to print main.py's table from them (each rank its own images)."""
        s = self.settings
        write_record(s.scoremap_root, {
            "cam_curve_interval": s.cam_curve_interval,
            "iou_threshold_list": s.iou_threshold_list, "loc_threshold": s.loc_threshold,
            "first_box_only": s.first_box_only, "multi_contour_eval": s.multi_contour_eval,
            "threshold_list": s.threshold_list}, self.predictions,
            {b: self._clamp_rule(b) for b in s.branches},
            self.dist.rank if self.dist.enabled else None)

    def _fidelity_maps(self, images, predicted, size) -> dict | None:
        """Table 1's fidelity (``fidelity_protocol="public_code"``) scores maps of
        the softmax head's predicted class: one more pass for them."""
        if not self.fidelity or self.settings.fidelity_protocol != "public_code":
            return None
        with autocast(self.device, self.settings.accel):
            outputs = compute_cams_per_branch(
                self.model, images, predicted, self.settings.methods, self.settings.branches,
                clamp=self.settings.clamp)
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

    def _clamp_rule(self, branch: str) -> str:
        return clamp_rule(branch, self.settings.clamp, self.model.recam_clamp)

    def _rows(self) -> list[dict]:
        rows = []
        for method, branch in self.pairs:
            row = branch_row(method, branch, self._clamp_rule(branch))
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


# ---------------------------------------------------------------------------
# Segmentation seeds (VOC2012, SYNTH_ML): ReCAM's protocol
# ---------------------------------------------------------------------------
class SeedComputer:
    """One pass over a segmentation split (batch 1, images at their own size):
    seed maps of every method and branch for each image's ground-truth
    classes, scored by a :class:`SegmentationEvaluator` per (method, branch)."""

    def __init__(self, model: CAMModel, loader: DataLoader, metadata_root: str,
                 mask_root: str, dataset_name: str, split: str, settings: EvalSettings,
                 device: torch.device, num_classes: int, threshold: float,
                 scales: Sequence[float], dist: DistContext = DistContext(),
                 resize: str = "image"):
        self.model, self.loader, self.settings = model, loader, settings
        self.device, self.dist, self.scales = device, dist, tuple(scales)
        self.threshold = threshold
        self.resize = resize  # SEED_RESIZES
        metadata = configure_metadata(metadata_root)
        self.pairs = [(m.name, b) for b in settings.branches for m in settings.methods]
        self.evaluators = {pair: SegmentationEvaluator(metadata, dataset_name, split, mask_root,
                                                       num_classes, threshold)
                           for pair in self.pairs}

    def compute_and_evaluate(self) -> dict:
        self.model.eval()
        s = self.settings
        hits = seen = 0
        for images, labels, image_ids in progress(self.loader, "seeds", s.show_progress):
            if labels.numel() == 0:
                continue
            for image, hot, image_id in zip(images, labels, image_ids):
                image = to_device(image[None], self.device, s.accel)
                classes = torch.nonzero(hot > 0)[:, 0].tolist()
                done = seed_pass(self.model, image, classes, s.methods, s.branches,
                                 self.scales, s.clamp, s.accel, self.resize,
                                 s.normalization) if classes else SeedPass({}, None)
                maps, logits = done.maps, done.logits
                if logits is None:  # no pass of the image as it is
                    with torch.no_grad(), autocast(self.device, s.accel):
                        logits = self.model(image)["logits"]
                hits += int(hot[int(logits.argmax(1))] > 0)
                seen += 1
                for pair, evaluator in self.evaluators.items():
                    found = maps.get(pair)
                    array = (found.cpu().numpy() if found is not None
                             else np.zeros((0, *image.shape[-2:]), np.float32))
                    evaluator.accumulate(array, classes, image_id)
                    if s.scoremap_root:
                        path = os.path.join(s.scoremap_root, f"{pair[0]}_{pair[1]}",
                                            image_id + ".npz")
                        os.makedirs(os.path.dirname(path), exist_ok=True)
                        np.savez(path, maps=array, keys=np.asarray(classes, np.int64))
        if s.scoremap_root:
            write_record(s.scoremap_root, {"seed_threshold": self.threshold}, {},
                         {b: clamp_rule(b, s.clamp, self.model.recam_clamp) for b in s.branches},
                         self.dist.rank if self.dist.enabled else None)
        totals = all_reduce_sum(torch.tensor([hits, seen], device=self.device), self.dist)
        hits, seen = (int(v) for v in totals.tolist())
        for evaluator in self.evaluators.values():
            evaluator.load_state(reduce_state(evaluator.state(), self.dist, self.device))
        if seen == 0:
            raise ValueError("the evaluation loader yielded no images")
        rows = []
        for (method, branch), evaluator in self.evaluators.items():
            row = branch_row(method, branch, clamp_rule(branch, s.clamp,
                                                        self.model.recam_clamp))
            row.update(evaluator.summary())
            rows.append(row)
        return {"classification": {"Top-1 Cls": 100.0 * hits / seen}, "num_images": seen,
                "num_skipped_images": len(self.loader.sampler) - seen
                if not self.dist.enabled else 0, "rows": rows}

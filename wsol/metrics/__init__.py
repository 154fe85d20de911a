"""The metrics: boxes (MaxBoxAcc, MaxBoxAccV2, GT-known / Top-1 Loc), masks
(PxAP), explanation fidelity and segmentation seeds (mIoU), each an
evaluator of the protocol in :mod:`wsol.metrics.base` (wsolevaluation's
``accumulate`` / ``compute`` names kept) with a summable ``state()``.

:data:`METRICS` is the registry a run's :class:`EvaluatorSet` is built from:
each metric, when it applies to a run, and how its evaluator is made.
"""
from wsol.metrics.base import (EvalContext, Evaluator, EvaluatorSet, FidelityInputs, MapBatch,
                               Metric, SeedBatch)
from wsol.metrics.boxes import BoxEvaluator, DeviceHandOff, LocalizationEvaluator
from wsol.metrics.fidelity import FidelityEvaluator, insertion_deletion_auc, masked_images
from wsol.metrics.masks import MaskEvaluator
from wsol.metrics.segmentation import SegmentationEvaluator

__all__ = ["LocalizationEvaluator", "BoxEvaluator", "MaskEvaluator", "FidelityEvaluator",
           "SegmentationEvaluator", "DeviceHandOff", "insertion_deletion_auc", "masked_images",
           "Evaluator", "EvaluatorSet", "EvalContext", "MapBatch", "SeedBatch", "FidelityInputs",
           "Metric", "METRICS"]

METRICS: tuple[Metric, ...] = (
    Metric("boxes", lambda c: c.dataset.boxes, BoxEvaluator.for_run),
    Metric("masks", lambda c: c.dataset.masks, MaskEvaluator.for_run),
    Metric("fidelity", lambda c: c.fidelity and not c.dataset.multi_label,
           FidelityEvaluator.for_run),
    Metric("seeds", lambda c: c.dataset.multi_label, SegmentationEvaluator.for_run),
)

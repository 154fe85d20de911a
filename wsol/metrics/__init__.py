"""The metrics: boxes (MaxBoxAcc, MaxBoxAccV2, GT-known / Top-1 Loc), masks
(PxAP), explanation fidelity and segmentation seeds (mIoU), each an
evaluator with wsolevaluation's ``accumulate`` / ``compute`` shape and a
summable ``state()``."""
from wsol.metrics.boxes import BoxEvaluator, LocalizationEvaluator
from wsol.metrics.fidelity import FidelityEvaluator, insertion_deletion_auc, masked_images
from wsol.metrics.masks import MaskEvaluator
from wsol.metrics.segmentation import SegmentationEvaluator

__all__ = ["LocalizationEvaluator", "BoxEvaluator", "MaskEvaluator", "FidelityEvaluator",
           "SegmentationEvaluator",
           "insertion_deletion_auc", "masked_images"]

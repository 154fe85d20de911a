"""The metrics: boxes (MaxBoxAcc, MaxBoxAccV2, GT-known / Top-1 Loc), masks
(PxAP) and explanation fidelity, each an evaluator with wsolevaluation's
``accumulate`` / ``compute`` shape and a summable ``state()``."""
from wsol.metrics.boxes import BoxEvaluator, LocalizationEvaluator
from wsol.metrics.fidelity import FidelityEvaluator, insertion_deletion_auc, masked_images
from wsol.metrics.masks import MaskEvaluator

__all__ = ["LocalizationEvaluator", "BoxEvaluator", "MaskEvaluator", "FidelityEvaluator",
           "insertion_deletion_auc", "masked_images"]

"""wsolevaluation's center baseline: one fixed map, peaked at the image's
centre, for every image -- no model.  Its numbers are the floor a WSOL method
must clear (wsolevaluation's main table, docs/protocol.md).

The map is an isotropic Gaussian of the distance to the centre, in
coordinates where the image spans [-1, 1] on each axis, with standard
deviation 1.  The box and mask metrics only see the order of the map's values
(nested discs around the centre, swept over the thresholds), so the standard
deviation hardly matters -- as wsolevaluation says of its own choice.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

__all__ = ["CENTER", "center_gaussian", "score_center_baseline"]

CENTER = "center"
_BATCH = 64


def center_gaussian(size: int, sigma: float = 1.0) -> np.ndarray:
    """The center map [size, size], float64, min-max normalised to [0, 1]
    (peak 1 at the centre, 0 in the corners)."""
    if size < 2:
        raise ValueError(f"the map needs at least 2 x 2 pixels, got {size}")
    axis = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0  # pixel centres
    squared = axis[:, None] ** 2 + axis[None, :] ** 2
    gaussian = np.exp(-squared / (2.0 * sigma ** 2))
    return (gaussian - gaussian.min()) / (gaussian.max() - gaussian.min())


def score_center_baseline(evaluators, image_ids: Iterable[str]) -> dict:
    """Feed the center map of every image to ``evaluators`` (a
    :class:`wsol.metrics.EvaluatorSet` over the pair ``("center", "-")``) and
    return its results.  There is no classifier: Top-1 Loc is unknown."""
    from wsol.metrics import MapBatch
    image_ids = list(image_ids)
    if evaluators.context.dataset.multi_label:
        raise ValueError("the center baseline scores boxes and masks; seed mIoU needs a "
                         "map per class")
    center = center_gaussian(evaluators.context.resize_length)
    for start in range(0, len(image_ids), _BATCH):
        ids = image_ids[start:start + _BATCH]
        evaluators.process(MapBatch(CENTER, "-", [center] * len(ids), ids, None,
                                    normalized=True))
    return evaluators.results()

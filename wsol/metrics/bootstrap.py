"""Every number with its uncertainty: the bootstrap over images
(docs/protocol.md, "Intervals").

The images of a split are resampled with replacement ``resamples`` times, the
same resamples for every row of a run (seeded; :func:`resample_indices`).  A
resample is a vector of weights, how often each image was drawn
(:func:`resample_weights`), so a metric that sums per-image contributions is
re-computed for a block of resamples with one matrix product: each evaluator
keeps what each image contributed (hits at each quantisation level for boxes,
histograms for masks, confusion matrices for seeds, per-image scores for
fidelity) and turns a block of weights into the metric's samples
(``Evaluator.bootstrap_samples``).  MaxBoxAccV2 re-takes its maximum over
thresholds inside every resample.

From the samples: a 95% percentile interval per metric and row, and for two
rows measured on the same images the difference with its interval and a
two-sided p-value (the share of resampled differences on the other side of
zero, doubled).
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

__all__ = ["resample_indices", "resample_weights", "interval", "paired_difference",
           "BLOCK", "proportion_samples"]

BLOCK = 200  # resamples drawn and evaluated together (fixed: the draws depend on it)


def resample_indices(num_images: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The image indices of each resample, in blocks of :data:`BLOCK`
    (``[block, num_images]``): block ``k`` is drawn from the generator seeded
    with ``(seed, k)``, so any block can be reproduced on its own."""
    for k, start in enumerate(range(0, resamples, BLOCK)):
        rng = np.random.default_rng([seed, k])
        yield rng.integers(0, num_images, (min(BLOCK, resamples - start), num_images))


def resample_weights(num_images: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Each resample as weights, how often each image was drawn: float32
    ``[block, num_images]`` (exact: counts stay far below 2**24)."""
    for block in resample_indices(num_images, resamples, seed):
        offsets = (np.arange(len(block)) * num_images)[:, None]
        counts = np.bincount((block + offsets).ravel(), minlength=len(block) * num_images)
        yield counts.reshape(len(block), num_images).astype(np.float32)


def proportion_samples(weights: np.ndarray, flags: np.ndarray, seen: np.ndarray
                       ) -> np.ndarray:
    """Percentages of flagged images among the seen ones, per resample."""
    total = (weights @ seen.astype(np.float32)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # exact counts, divided in float64
        return 100.0 * (weights @ flags.astype(np.float32)).astype(np.float64) / total


def interval(samples: np.ndarray, level: float = 0.95) -> list[float] | None:
    """The percentile interval of the samples; None when any is NaN (a metric
    that is not defined on some resample)."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.size == 0 or np.isnan(samples).any():
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return [float(low), float(high)]


def paired_difference(a: np.ndarray, b: np.ndarray, level: float = 0.95
                      ) -> tuple[list[float] | None, float]:
    """The interval of a - b over the same resamples, and the two-sided
    p-value of "no difference": twice the share of resampled differences at or
    beyond zero on the side away from their median (1 when they are all zero)."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if diff.size == 0 or np.isnan(diff).any():
        return None, math.nan
    p = 2.0 * min(float(np.mean(diff <= 0)), float(np.mean(diff >= 0)))
    return interval(diff, level), min(1.0, p)

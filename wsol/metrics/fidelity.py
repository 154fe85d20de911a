"""Explanation fidelity metrics (docs/protocol.md), batched torch, any device.

* Average Drop (%) = mean over images of ``max(0, y - o) / y`` x 100 and
  Increase in Confidence (%) = share of images with ``o > y`` x 100, where
  ``y`` is the softmax-head probability of the class on the image and ``o``
  the same on the image multiplied by the normalised map (Grad-CAM++ paper).
* Insertion / deletion AUC (RISE paper): pixels are revealed (insertion) or
  removed (deletion) in decreasing order of saliency, ``steps`` equal
  fractions at a time, and the class probability is recorded after each
  step; the AUC is the trapezoid area under that curve over the fraction of
  pixels in [0, 1].  Deletion replaces pixels with a baseline of zeros (the
  dataset mean after input normalisation); insertion starts from a blurred
  copy of the image (Gaussian, kernel 11, sigma 5, as RISE) and puts the
  original pixels back.  Both baselines can be changed.  Ties in saliency
  are broken by pixel index (a stable sort), so results are deterministic.
* ROAD (``road``; :mod:`wsol.metrics.road`): the class probability after
  removing the most (MoRF) / least (LeRF) relevant pixels and imputing them,
  minus the image's, averaged over the percentiles 10..90; ROAD =
  (LeRF - MoRF) / 2.  Each image's imputation noise is seeded by the run's
  seed and the image id, so it does not depend on batches or processes.

One :class:`FidelityEvaluator` per (CAM method, branch) accumulates the
per-image values; ``compute()`` gives the four numbers.  In a run it follows
the evaluator protocol (:mod:`wsol.metrics.base`): ``process`` scores each
batch's masked images with the run's ``scorer`` (the model).
"""
from __future__ import annotations

import math
import zlib
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from wsol.metrics.base import EvalContext, Evaluator, MapBatch
from wsol.metrics.road import road_scores

__all__ = ["FidelityEvaluator", "masked_images", "insertion_deletion_auc",
           "gaussian_blur"]

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
# (images, model output key) -> float64 log-probabilities [B, C] of the masked images
Scorer = Callable[[torch.Tensor, str], torch.Tensor]


def masked_images(images: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) multiplied by their normalised maps (B, H, W)."""
    if saliency.shape != (images.shape[0],) + tuple(images.shape[2:]):
        raise ValueError(f"maps {tuple(saliency.shape)} do not match images "
                         f"{tuple(images.shape)}")
    return images * saliency[:, None].to(images.dtype)


def gaussian_blur(images: torch.Tensor, kernel_size: int = 11,
                  sigma: float = 5.0) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflected borders."""
    half = kernel_size // 2
    x = torch.arange(kernel_size, dtype=images.dtype, device=images.device) - half
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    pad_h = min(half, images.shape[2] - 1)
    pad_w = min(half, images.shape[3] - 1)
    out = F.pad(images, (pad_w, pad_w, pad_h, pad_h), mode="reflect")
    # Kernel rows/columns beyond a tiny image are cut to the padding.
    kh = kernel[half - pad_h:half + pad_h + 1]
    kw = kernel[half - pad_w:half + pad_w + 1]
    out = F.conv2d(out, (kh / kh.sum()).view(1, 1, -1, 1).repeat(channels, 1, 1, 1),
                   groups=channels)
    out = F.conv2d(out, (kw / kw.sum()).view(1, 1, 1, -1).repeat(channels, 1, 1, 1),
                   groups=channels)
    return out


def _resolve_baseline(baseline, images: torch.Tensor) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
        return baseline.to(images.device, images.dtype).expand_as(images)
    if baseline == "zeros":
        return torch.zeros_like(images)
    if baseline == "blur":
        return gaussian_blur(images)
    raise ValueError(f"baseline must be 'zeros', 'blur' or a tensor, got {baseline!r}")


def _trapezoid_auc(curve: torch.Tensor) -> torch.Tensor:
    """Area under curve (B, steps + 1) sampled at 0, 1/steps, ..., 1."""
    steps = curve.shape[1] - 1
    return (curve.sum(1) - (curve[:, 0] + curve[:, -1]) / 2) / steps


@torch.no_grad()
def insertion_deletion_auc(score_fn: ScoreFn, images: torch.Tensor,
                           saliency: torch.Tensor, targets: torch.Tensor,
                           steps: int = 100, baseline: str | torch.Tensor = "zeros",
                           insertion_baseline: str | torch.Tensor = "blur",
                           which: tuple[str, ...] = ("insertion", "deletion"),
                           return_curves: bool = False) -> dict[str, torch.Tensor]:
    """Insertion and deletion AUC of each image (values in [0, 1]).

    score_fn: images (B, C, H, W) -> class probabilities (B, num_classes),
        e.g. ``lambda x: model(x).softmax(1)`` for the softmax head.
    saliency: (B, H, W) maps at the image resolution (any scale; only the
        order matters).
    targets: (B,) class indices.
    steps: number of equal steps; step k reveals/removes the ``k * H * W //
        steps`` most salient pixels (all channels of a pixel together).
    baseline: what deleted pixels become ('zeros', 'blur' or a tensor
        broadcastable to the images); insertion_baseline: what insertion
        starts from.
    Returns {"insertion": (B,), "deletion": (B,)} (and "<name>_curve"
    (B, steps + 1) when ``return_curves``).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    batch, _, height, width = images.shape
    if saliency.shape != (batch, height, width):
        raise ValueError(f"saliency must be {(batch, height, width)}, "
                         f"got {tuple(saliency.shape)}")
    if steps < 1:
        raise ValueError("steps must be >= 1")
    pixels = height * width
    order = torch.sort(saliency.reshape(batch, pixels).float(), dim=1,
                       descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(pixels, device=order.device)
                   .expand(batch, pixels).contiguous())
    ranks = ranks.view(batch, 1, height, width)
    targets = targets.to(images.device).long().view(-1, 1)
    out: dict[str, torch.Tensor] = {}
    for name in which:
        if name == "deletion":
            start, end = images, _resolve_baseline(baseline, images)
        elif name == "insertion":
            start, end = _resolve_baseline(insertion_baseline, images), images
        else:
            raise ValueError(f"unknown curve {name!r}")
        curve = torch.empty(batch, steps + 1, device=images.device)
        for k in range(steps + 1):
            # The k * pixels // steps most salient pixels are switched.
            switched = ranks < (k * pixels) // steps
            probs = score_fn(torch.where(switched, end, start))
            curve[:, k] = probs.gather(1, targets)[:, 0].float()
        out[name] = _trapezoid_auc(curve)
        if return_curves:
            out[f"{name}_curve"] = curve
    return out


class FidelityEvaluator(Evaluator):
    """Accumulates per-image fidelity values of one (method, branch).

    ``accumulate(scores_full, scores_masked)``: the softmax-head probability
    of the class on the image (y) and on the image times its normalised map
    (o), for Average Drop and Increase in Confidence.
    ``accumulate_auc(insertion, deletion)``: per-image AUCs from
    :func:`insertion_deletion_auc`.
    Sums are float64 tensors on the device of the scores (nothing is read
    back per batch); ``state()`` / ``load_state()`` (the sums, which add up
    across processes) and ``merge`` combine evaluators.
    """

    KEYS = ("drop_sum", "num_increase", "num_confidence", "insertion_sum", "deletion_sum",
            "num_auc", "num_invalid", "morf_sum", "lerf_sum", "num_road")

    # Per image (image_ids given: for the bootstrap): drop, increase, valid,
    # insertion, deletion, AUC measured, MoRF, LeRF, ROAD measured.
    IMAGE_KEYS = ("drop", "increase", "valid", "insertion", "deletion", "auc",
                  "morf", "lerf", "road")

    def __init__(self, scorer: Scorer | None = None, steps: int = 0,
                 image_ids: list[str] | None = None, road: bool = False,
                 seed: int = 0) -> None:
        self.scorer = scorer  # needed by process()
        self.steps = int(steps)  # > 0: insertion/deletion AUC in this many steps
        self.road, self.seed = bool(road), int(seed)
        self._index = {image_id: i for i, image_id in enumerate(image_ids or ())}
        self.reset()

    @classmethod
    def for_run(cls, context: EvalContext) -> "FidelityEvaluator":
        return cls(context.fidelity_scorer, context.fidelity_steps,
                   list(context.image_ids) if context.bootstrap > 0 else None,
                   road=context.fidelity_road, seed=context.seed)

    # -- the evaluator protocol (wsol.metrics.base) -------------------------------
    def reset(self) -> None:
        self._sums = None
        self.image_values = (np.zeros((len(self._index), len(self.IMAGE_KEYS)))
                             if self._index else None)

    @torch.no_grad()
    def process(self, batch: MapBatch) -> None:
        """Score each image times its map (``batch.fidelity``: the protocol's
        maps, classes and full-image logits) in log space: an overconfident
        model's probabilities underflow to 0 even in float64."""
        if self.scorer is None:
            raise ValueError("FidelityEvaluator.process needs a scorer (the model)")
        inputs, images = batch.fidelity, batch.images
        saliency = F.interpolate(inputs.maps[:, None], size=images.shape[-2:],
                                 mode="bilinear", align_corners=False)[:, 0]
        index = inputs.classes[:, None]
        full = inputs.logits.double().log_softmax(1).gather(1, index)[:, 0]
        masked = self.scorer(masked_images(images, saliency), inputs.key).gather(1, index)[:, 0]
        drop, increase, valid = self.accumulate(full, masked, log_space=True)
        per_image = {"drop": drop, "increase": increase, "valid": valid}
        probabilities = lambda x: self.scorer(x, inputs.key).exp()  # noqa: E731
        if self.steps > 0:
            auc = insertion_deletion_auc(probabilities, images, saliency, inputs.classes,
                                         steps=self.steps)
            self.accumulate_auc(auc["insertion"], auc["deletion"])
            per_image.update(insertion=auc["insertion"], deletion=auc["deletion"],
                             auc=torch.ones_like(full))
        if self.road:
            generators = [torch.Generator().manual_seed(
                (self.seed * 1_000_003 + zlib.crc32(str(i).encode())) % 2 ** 63)
                for i in batch.image_ids]
            road = road_scores(probabilities, images, saliency, inputs.classes, full.exp(),
                               generators)
            self._add(full.device, morf_sum=road["MoRF"].sum(), lerf_sum=road["LeRF"].sum(),
                      num_road=road["MoRF"].numel())
            per_image.update(morf=road["MoRF"], lerf=road["LeRF"], road=torch.ones_like(full))
        if self.image_values is not None:
            rows = [self._index[i] for i in batch.image_ids]
            for key, value in per_image.items():
                column = self.IMAGE_KEYS.index(key)
                self.image_values[rows, column] = value.double().cpu().numpy()

    def bootstrap_samples(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """The fidelity metrics of each resample (``weights``: ``[R, images]``)."""
        if self.image_values is None:
            raise RuntimeError("per-image results were not kept: pass image_ids")
        drop, increase, valid, insertion, deletion, auc, morf, lerf, road = self.image_values.T
        w = weights.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            counted, measured, roads = w @ valid, w @ auc, w @ road
            samples = {"Average Drop": 100.0 * (w @ (drop * valid)) / counted,
                       "Increase in Confidence": 100.0 * (w @ (increase * valid)) / counted,
                       "Insertion AUC": (w @ insertion) / measured,
                       "Deletion AUC": (w @ deletion) / measured}
            if self.road:
                samples.update({"ROAD MoRF": (w @ morf) / roads, "ROAD LeRF": (w @ lerf) / roads,
                                "ROAD": (w @ (lerf - morf)) / (2 * roads)})
            return samples

    def evaluate(self) -> dict[str, float]:
        return self.compute()

    def _totals(self) -> torch.Tensor:
        """The running sums (float64, in ``KEYS`` order); zeros if empty."""
        if self._sums is None:
            return torch.zeros(len(self.KEYS), dtype=torch.float64)
        return self._sums

    def state(self) -> dict[str, torch.Tensor]:
        state = {"sums": self._totals().clone()}
        if self.image_values is not None:
            state["image_values"] = torch.from_numpy(self.image_values.copy())
        return state

    def load_state(self, state: dict) -> None:
        self._sums = torch.as_tensor(state["sums"]).to(torch.float64).clone()
        if self.image_values is not None:
            self.image_values = torch.as_tensor(state["image_values"]).double().cpu().numpy()

    def merge(self, other: "FidelityEvaluator") -> None:
        mine, theirs = self.state(), other.state()
        self.load_state({k: v + theirs[k].to(v.device) for k, v in mine.items()})

    def _add(self, device: torch.device, **values) -> None:
        update = torch.zeros(len(self.KEYS), dtype=torch.float64, device=device)
        for key, value in values.items():
            update[self.KEYS.index(key)] = value  # a device copy, not a read-back
        self._sums = update if self._sums is None else self._sums + update.to(self._sums.device)

    def accumulate(self, scores_full: torch.Tensor, scores_masked: torch.Tensor,
                   log_space: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores of the class on the full and on the masked images:
        probabilities, or with ``log_space`` log-probabilities (then a
        vanishing probability is no problem: ``o / y = exp(log o - log y)``).

        Probabilities must be > 0; on the CPU a zero raises ValueError at
        once.  Otherwise an invalid score (zero probability, non-finite
        log-probability) leaves its image out of both averages and is
        counted in ``num_invalid_scores``.  Returns each image's drop,
        increase and validity."""
        y = torch.as_tensor(scores_full).detach().double().flatten()
        o = torch.as_tensor(scores_masked).detach().double().flatten().to(y.device)
        if y.shape != o.shape:
            raise ValueError(f"got {y.numel()} full and {o.numel()} masked scores")
        if log_space:
            invalid = ~(torch.isfinite(y) & torch.isfinite(o))
            ratio = torch.exp(o - y)
        else:
            invalid = ~(y > 0) | torch.isnan(o)
            if not y.is_cuda and bool(invalid.any()):
                raise ValueError("full-image scores must be > 0 (probabilities)")
            ratio = o / torch.where(invalid, 1.0, y)
        valid = ~invalid
        drop = torch.where(valid, torch.clamp(1 - ratio, min=0), 0.0)
        increase = (o > y) & valid
        self._add(y.device, drop_sum=drop.sum(), num_increase=increase.sum(),
                  num_confidence=valid.sum(), num_invalid=invalid.sum())
        return drop, increase, valid

    def accumulate_auc(self, insertion: torch.Tensor, deletion: torch.Tensor) -> None:
        insertion = torch.as_tensor(insertion).detach().double().flatten()
        deletion = torch.as_tensor(deletion).detach().double().flatten().to(insertion.device)
        if insertion.shape != deletion.shape:
            raise ValueError("insertion and deletion need one value per image each")
        self._add(insertion.device, insertion_sum=insertion.sum(),
                  deletion_sum=deletion.sum(), num_auc=insertion.numel())

    def totals(self) -> dict[str, float | int]:
        """The sums by name (counts as integers)."""
        values = self._totals().tolist()
        return {key: int(v) if key.startswith("num_") else v
                for key, v in zip(self.KEYS, values)}

    def compute(self) -> dict[str, float]:
        """Average Drop and Increase in Confidence in percent, mean insertion
        and deletion AUC in [0, 1], with ``road`` ROAD MoRF / LeRF / ROAD
        (probability differences); NaN for what was never accumulated."""
        nan = math.nan
        state = self.totals()
        n, m, r = state["num_confidence"], state["num_auc"], state["num_road"]
        road = {}
        if self.road:
            road = {"ROAD MoRF": state["morf_sum"] / r if r else nan,
                    "ROAD LeRF": state["lerf_sum"] / r if r else nan,
                    "ROAD": (state["lerf_sum"] - state["morf_sum"]) / (2 * r) if r else nan}
        return {
            "Average Drop": 100.0 * state["drop_sum"] / n if n else nan,
            "Increase in Confidence": 100.0 * state["num_increase"] / n if n else nan,
            "Insertion AUC": state["insertion_sum"] / m if m else nan,
            "Deletion AUC": state["deletion_sum"] / m if m else nan,
            **road,
            "num_images": n,
            "num_auc_images": m,
            "num_invalid_scores": state["num_invalid"],
        }

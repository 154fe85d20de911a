"""ROAD (Rong et al., ICML 2022: "remove and debias"), as pytorch-grad-cam 1.5.7
computes it (docs/protocol.md).

At each percentile ``p`` (10, 20, ..., 90) the pixels whose map value is at
least the map's ``p``-th percentile are removed (MoRF, most relevant first:
``map >= q_p(map)``; LeRF, least relevant first: the same on ``1 - map``) and
filled by *noisy linear imputation*: every removed pixel is the weighted mean
of its 8 neighbours (1/6 across an edge, 1/12 across a corner; neighbours
outside the image dropped), removed or not, which is one sparse linear system
per image, plus N(0, 0.01^2) noise.  The score is the class probability of
the imputed image minus that of the image; MoRF and LeRF average it over the
percentiles, and ROAD (the library's ``ROADCombined``) is (LeRF - MoRF) / 2:
higher is better.

The library solves each system with SciPy's sparse LU, one image and one
percentile at a time; here the 8-neighbour operator is a 3x3 convolution and
all systems of a batch are solved together by conjugate gradients in float64
(the system is symmetric positive definite on the removed pixels), to a
relative residual of 1e-10.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["ROAD_PERCENTILES", "impute", "road_scores"]

Tensor = torch.Tensor

ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
NOISE = 0.01

# The neighbours' weights (pytorch-grad-cam's ``neighbors_weights``).
_KERNEL = torch.tensor([[1 / 12, 1 / 6, 1 / 12],
                        [1 / 6, 0.0, 1 / 6],
                        [1 / 12, 1 / 6, 1 / 12]], dtype=torch.float64)


def _neighbours(x: Tensor) -> Tensor:
    """Weighted sum of each pixel's in-image neighbours: [N, 1, H, W] -> same."""
    return F.conv2d(x, _KERNEL.to(x.device).view(1, 1, 3, 3), padding=1)


def impute(images: Tensor, removed: Tensor, tolerance: float = 1e-10,
           max_iterations: int | None = None) -> Tensor:
    """The linear imputation (no noise) of the ``removed`` pixels ([N, H, W]
    bool) of ``images`` ([N, C, H, W]): each removed pixel the weighted mean of
    its neighbours.  Conjugate gradients on every (image, channel) at once."""
    batch, channels, height, width = images.shape
    x = images.double().reshape(batch * channels, 1, height, width)
    unknown = removed[:, None].expand(batch, channels, height, width).reshape_as(x).double()
    known = 1.0 - unknown
    weight_sum = _neighbours(torch.ones_like(x[:1]))  # < 1 at the border

    def operator(v: Tensor) -> Tensor:  # (S - W) restricted to the removed pixels
        return unknown * (weight_sum * v - _neighbours(unknown * v))

    rhs = unknown * _neighbours(known * x)
    solution = torch.zeros_like(x)
    residual = rhs.clone()
    direction = residual.clone()
    rr = (residual * residual).sum((1, 2, 3), keepdim=True)
    goal = tolerance ** 2 * rr.clamp_min(1e-300)
    limit = max_iterations or 20 * (height + width) + 100
    for _ in range(limit):
        active = rr > goal  # a converged system stops, whatever the rest of the batch does
        if not bool(active.any()):
            break
        applied = operator(direction)
        curvature = (direction * applied).sum((1, 2, 3), keepdim=True)
        step = torch.where(active & (curvature > 0), rr / curvature.clamp_min(1e-300), 0.0)
        solution += step * direction
        residual -= step * applied
        new_rr = (residual * residual).sum((1, 2, 3), keepdim=True)
        beta = torch.where(active & (rr > 0), new_rr / rr.clamp_min(1e-300), 0.0)
        direction = torch.where(active, residual + beta * direction, direction)
        rr = torch.where(active, new_rr, rr)
    filled = known * x + unknown * solution
    return filled.reshape(batch, channels, height, width).to(images.dtype)


def _removed(saliency: Tensor, percentile: float) -> Tensor:
    """Pixels at or above the map's percentile (numpy's linear interpolation)."""
    flat = saliency.flatten(1)
    threshold = torch.quantile(flat.double(), percentile / 100.0, dim=1,
                               interpolation="linear").to(flat.dtype)
    return ~(saliency < threshold.view(-1, 1, 1))


def road_scores(score_fn: Callable[[Tensor], Tensor], images: Tensor, saliency: Tensor,
                targets: Tensor, full_scores: Tensor,
                generators: Sequence[torch.Generator] | torch.Generator,
                percentiles: Sequence[float] = ROAD_PERCENTILES,
                noise: float = NOISE) -> dict[str, Tensor]:
    """Per image MoRF, LeRF and ROAD (``(LeRF - MoRF) / 2``).

    score_fn: images -> class probabilities [B, classes]; ``full_scores``: the
    target's probability on the images [B]; ``saliency`` [B, H, W] at the
    images' size.  The noise of image ``i`` comes from ``generators[i]`` (a
    single generator: shared, drawn in pytorch-grad-cam's order -- LeRF then
    MoRF, percentile by percentile, image by image -- so the library's draws
    from torch's global generator are reproduced with a CPU generator seeded
    alike), per removed pixel in row-major order, channels first.
    """
    batch = images.shape[0]
    targets = targets.view(-1, 1).to(images.device)
    out = {}
    for name, ranked in (("LeRF", 1 - saliency), ("MoRF", saliency)):
        differences = []
        for percentile in percentiles:
            removed = _removed(ranked, percentile)
            filled = impute(images, removed)
            for i in range(batch):
                generator = generators if isinstance(generators, torch.Generator) \
                    else generators[i]
                where = removed[i].flatten().nonzero()[:, 0]
                # As the library draws it: randn_like of its solution, which SciPy
                # returns in Fortran order, so a contiguous [C, pixels].
                draw = torch.randn((images.shape[1], where.numel()), generator=generator,
                                   device=generator.device, dtype=torch.float32)
                flat = filled[i].flatten(1)
                flat[:, where] += noise * draw.to(flat.device, flat.dtype)
            probabilities = score_fn(filled).gather(1, targets)[:, 0].double()
            differences.append(probabilities - full_scores.double().flatten())
        out[name] = torch.stack(differences).mean(0)
    out["ROAD"] = (out["LeRF"] - out["MoRF"]) / 2
    return out

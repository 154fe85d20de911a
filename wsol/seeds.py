"""Segmentation seeds from class activation maps, as ReCAM makes them
(Chen et al., CVPR 2022; docs/protocol.md "Seed mIoU", docs/reproducing.md
"ReCAM"): every ground-truth class of an image at several scales with flips,
summed, normalised per class; scored by :class:`wsol.metrics.SegmentationEvaluator`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from wsol.cams import CAMMethod, compute_cams_for_target_sets
from wsol.model import CAMModel
from wsol.protocol import IMAGENET_MEAN, IMAGENET_STD
from wsol.runtime.acceleration import Acceleration, autocast

__all__ = ["seed_maps", "seed_maps_with_logits", "SeedMaps", "SEED_RESIZES", "SEED_EPS"]

RECAM_STRIDE = 16  # ReCAM's ResNet50 output stride, which its seed maps are resized to
SEED_EPS = 1e-5  # ReCAM's guard in the per-class max normalisation


SEED_RESIZES = ("image", "recam")


@dataclass
class SeedMaps:
    maps: dict[tuple[str, str], torch.Tensor]  # (method, branch) -> [K, H, W] in [0, 1]
    logits: torch.Tensor | None                # softmax-head logits [1, C] of the image at
                                               # scale 1.0, unflipped (None: no such pass)


def seed_maps(model: CAMModel, image: torch.Tensor, classes: Sequence[int],
              methods: Sequence[CAMMethod], branches: Sequence[str], scales: Sequence[float],
              clamp: bool = True, accel: Acceleration = Acceleration(), resize: str = "image",
              normalization: tuple = (IMAGENET_MEAN, IMAGENET_STD)
              ) -> dict[tuple[str, str], torch.Tensor]:
    """Seed maps of one image: :func:`seed_maps_with_logits`'s maps."""
    return seed_maps_with_logits(model, image, classes, methods, branches, scales, clamp, accel,
                                 resize, normalization).maps


def seed_maps_with_logits(model: CAMModel, image: torch.Tensor, classes: Sequence[int],
              methods: Sequence[CAMMethod], branches: Sequence[str], scales: Sequence[float],
              clamp: bool = True, accel: Acceleration = Acceleration(), resize: str = "image",
              normalization: tuple = (IMAGENET_MEAN, IMAGENET_STD)) -> SeedMaps:
    """Seed maps of one image ``[1, 3, H, W]`` for its ground-truth ``classes``
    (ascending): ``{(method, branch): [K, H, W]}`` in [0, 1], and the logits of
    the image as it is from the same forward (classification needs no other).

    As ReCAM makes them: for every scale (an empty ``scales``: the image as it
    is, no flip; otherwise each scale with a horizontally flipped copy) the
    maps are ReLU'd, the flipped one flipped back, resized bilinearly and
    summed; each class's map is then divided by its maximum + 1e-5.  All
    classes of a pass share one forward (one backward per class and branch for
    the gradient methods).

    ``resize="recam"`` is ReCAM's own way (docs/reproducing.md): the image is
    rescaled as PIL does (antialiased bicubic on its 8-bit values, rounded;
    ``normalization``: the images' mean and std, to undo it), and each scale's
    maps are resized to the image's grid at ReCAM's output stride 16
    (``ceil(H / 16) * 16``, its ``get_strided_up_size``) and cropped to
    ``H x W``.  ``"image"`` (the default) resizes the normalised tensor
    bicubically and the maps straight to ``H x W``.
    """
    if resize not in SEED_RESIZES:
        raise ValueError(f"unknown seed resize {resize!r}; choose one of {SEED_RESIZES}")
    height, width = image.shape[-2:]
    passes = [(1.0, False)] if not scales else [(s, flip) for s in scales
                                               for flip in (False, True)]
    sums: dict[tuple[str, str], torch.Tensor] = {}
    logits = None
    targets = torch.as_tensor(list(classes), device=image.device).view(-1, 1)
    for scale in dict.fromkeys(s for s, _ in passes):
        x = image if scale == 1.0 else _rescale(image, scale, resize, normalization)
        flips = [f for s, f in passes if s == scale]
        batch = torch.cat([x.flip(-1) if f else x for f in flips])
        with autocast(image.device, accel):
            outputs = compute_cams_for_target_sets(
                model, batch, targets.expand(-1, batch.shape[0]), methods, branches, clamp)
        if scale == 1.0 and flips[0] is False:
            logits = next(iter(outputs.values()))[0].logits[:1]
        for branch, per_class in outputs.items():
            for method in per_class[0].maps:
                stacked = torch.stack([out.maps[method] for out in per_class])  # [K, n, h, w]
                stacked = stacked.float().clamp_min(0)
                for i, flipped in enumerate(flips):
                    if flipped:
                        stacked[:, i] = stacked[:, i].flip(-1)
                summed = stacked.sum(1, keepdim=True)
                size = (height, width)
                if resize == "recam":  # ReCAM's stride-16 grid, then cropped
                    size = (-(-height // RECAM_STRIDE) * RECAM_STRIDE,
                            -(-width // RECAM_STRIDE) * RECAM_STRIDE)
                resized = torch.nn.functional.interpolate(
                    summed, size=size, mode="bilinear", align_corners=False)[:, 0, :height, :width]
                key = (method, branch)
                sums[key] = resized if key not in sums else sums[key] + resized
    return SeedMaps({key: m / (m.amax((1, 2), keepdim=True) + SEED_EPS)
                     for key, m in sums.items()}, logits)


def _rescale(image: torch.Tensor, scale: float, resize: str, normalization: tuple
             ) -> torch.Tensor:
    """The image at ``scale`` (sizes rounded as ReCAM's ``round(H * scale)``)."""
    height, width = image.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if resize == "image":
        return torch.nn.functional.interpolate(image, size=size, mode="bicubic",
                                               align_corners=False)
    # PIL's bicubic resize of the 8-bit image, before the normalisation:
    # antialiased (its kernel widens when shrinking), the rows first, then the
    # columns, rounded to 8 bits after each pass.
    mean, std = (torch.tensor(v, dtype=image.dtype, device=image.device).view(1, -1, 1, 1)
                 for v in normalization)
    pixels = torch.floor((image * std + mean) * 255 + 0.5)
    for step in ((height, size[1]), size):
        pixels = torch.nn.functional.interpolate(pixels, size=step, mode="bicubic",
                                                 align_corners=False, antialias=True)
        pixels = torch.floor(pixels.clamp(0, 255) + 0.5)
    return (pixels / 255 - mean) / std

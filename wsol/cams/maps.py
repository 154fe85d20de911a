"""The maps the metrics score: a method's final ReLU, resizing to the
evaluation size, min-max normalisation (docs/protocol.md)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from wsol.cams.compute import CAMOutput
from wsol.cams.registry import CAM_METHODS
from wsol.protocol import normalize_maps

__all__ = ["MAP_STYLES", "evaluation_maps"]

Tensor = torch.Tensor


MAP_STYLES = ("wsolevaluation", "public_code")


def evaluation_maps(output: CAMOutput | dict[str, Tensor], size: tuple[int, int],
                    mode: str = "bicubic", normalize: bool = True,
                    style: str = "wsolevaluation") -> dict[str, Tensor]:
    """Evaluation-ready maps: per method its final ReLU where its definition
    has one, resize to ``size`` (``mode``, align_corners=False; bicubic is
    OpenCV's INTER_CUBIC, which wsolevaluation uses), min-max normalisation
    per map, constant or NaN maps -> zeros.  Values in [0, 1], float32,
    [B, *size].  ``normalize=False`` stops before the normalisation (for
    evaluators that normalise, and count NaN maps).

    ``style="public_code"`` post-processes as the method's public code does
    (docs/reproducing.md): ``cam`` as above with bicubic resizing; every other
    method ReLU, min-max normalised with a 1e-7 guard, then resized
    *bilinearly* (its Grad-CAM library), before the final normalisation."""
    maps = output.maps if isinstance(output, CAMOutput) else output
    if mode not in ("bilinear", "bicubic", "nearest", "area"):
        raise ValueError(f"unsupported resize mode {mode!r}")
    if style not in MAP_STYLES:
        raise ValueError(f"unknown map style {style!r}; choose one of {MAP_STYLES}")
    result = {}
    for name, raw in maps.items():
        if name not in CAM_METHODS:
            raise ValueError(f"unknown CAM method {name!r}; known methods: "
                             f"{', '.join(CAM_METHODS)}")
        raw = raw.float()
        how = mode
        if style == "public_code":
            how = "bicubic"
            if name != "cam":
                raw = raw.clamp_min(0)
                low = raw.amin((1, 2), keepdim=True)
                raw = (raw - low) / (1e-7 + (raw - low).amax((1, 2), keepdim=True))
                how = "bilinear"
        elif CAM_METHODS[name].rectify:
            raw = raw.clamp_min(0)  # NaN stays NaN, so such a map still becomes zeros
        resized = F.interpolate(raw[:, None], size=tuple(size), mode=how,
                                align_corners=False if how in ("bilinear", "bicubic")
                                else None)[:, 0]
        result[name] = normalize_maps(resized) if normalize else resized
    return result

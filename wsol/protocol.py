"""The definitions of the wsolevaluation protocol (docs/protocol.md), in one place.

Score maps are min-max normalised per image and quantised as
``uint8(map * 255)`` in float64; a threshold ``t`` keeps the pixels strictly
above ``int(t * max)``; boxes are the bounding rectangles of the OpenCV
contours (``RETR_TREE``, ``CHAIN_APPROX_SIMPLE``) of what is kept; IoU counts
inclusive pixels; GT boxes are rescaled to the evaluation size with
``int()``; masks are resized nearest, foreground above 0.5, the ignore region
excluded.  Names follow wsolevaluation's ``evaluation.py``; this module
imports nothing else of the toolkit, and everything that scores maps uses it.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "RESIZE_LENGTH", "make_threshold_list",
           "check_scoremap_type", "check_scoremap_validity", "check_box_convention",
           "calculate_multiple_iou", "resize_bbox", "quantise", "quantise_maps",
           "contours_above", "contour_box", "largest_contour_box", "compute_bboxes_from_scoremaps",
           "normalize_scoremap", "normalize_maps", "load_mask_image", "get_mask"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_LENGTH = 224  # maps and boxes are compared at 224 x 224
# OpenCV 3 returns (image, contours, hierarchy); later versions drop image.
_CONTOUR_INDEX = 1 if cv2.__version__.split(".")[0] == "3" else 0


def make_threshold_list(interval: float, style: str = "wsolevaluation") -> list[float]:
    """CAM thresholds as wsolevaluation builds them: ``arange(0, 1, interval)``;
    ``style="public_code"``: as the method's public code builds them,
    ``round(i * interval, 3)`` for ``i = 0 .. 1/interval`` (1.0 included).

    Kept as those exact expressions: the floating-point values decide which
    integer level each threshold maps to (e.g. 0.285 * 200 is 56.99... while
    the arange value 0.28500000000000003 gives 57).
    """
    if not interval > 0:
        raise ValueError(f"cam_curve_interval must be > 0, got {interval}")
    if style == "public_code":
        return [round(i * interval, 3) for i in range(int(1 / interval) + 1)]
    if style != "wsolevaluation":
        raise ValueError(f"unknown threshold list style {style!r}")
    return list(np.arange(0, 1, interval))


def check_scoremap_type(scoremap) -> None:
    """A 2-D floating numpy array (the cheap part of wsolevaluation's checks)."""
    if not isinstance(scoremap, np.ndarray):
        raise TypeError(f"Scoremap must be a numpy array; it is {type(scoremap)}.")
    if not np.issubdtype(scoremap.dtype, np.floating):
        raise TypeError(f"Scoremap must be of a float type; it is of "
                        f"{scoremap.dtype} type.")
    if scoremap.ndim != 2:
        raise ValueError(f"Scoremap must be a 2D array; it is {scoremap.ndim}D.")


def check_scoremap_validity(scoremap: np.ndarray) -> None:
    """wsolevaluation's checks: a 2-D float array in [0, 1] without NaN.

    Unlike wsolevaluation (which demands float64), any floating dtype is
    accepted; values are quantised in float64 either way.
    """
    check_scoremap_type(scoremap)
    if np.isnan(scoremap).any():
        raise ValueError("Scoremap must not contain nans.")
    if (scoremap > 1).any() or (scoremap < 0).any():
        raise ValueError(f"Scoremap must be in range [0, 1]. "
                         f"scoremap.min()={scoremap.min()}, "
                         f"scoremap.max()={scoremap.max()}.")


def check_box_convention(boxes: np.ndarray, convention: str) -> None:
    """Raise RuntimeError unless boxes (4,) or (N, 4) follow ``convention``
    ('x0y0x1y1' or 'xywh') with non-negative coordinates."""
    boxes = np.asarray(boxes)
    if (boxes < 0).any():
        raise RuntimeError("Box coordinates must be non-negative.")
    if boxes.ndim == 1:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise RuntimeError("Box array must have dimension (4) or (num_boxes, 4).")
    if convention == "x0y0x1y1":
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
    elif convention == "xywh":
        widths = boxes[:, 2]
        heights = boxes[:, 3]
    else:
        raise ValueError(f"Unknown convention {convention}.")
    if (widths < 0).any() or (heights < 0).any():
        raise RuntimeError(f"Boxes do not follow the {convention} convention.")


def calculate_multiple_iou(box_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``box_a`` (N, 4) with every box in ``box_b`` (M, 4).

    x0y0x1y1 boxes with inclusive pixel coordinates (+1 on width and height);
    a non-positive union gives IoU 0.  Returns float64 (N, M).
    """
    box_a = np.asarray(box_a)
    box_b = np.asarray(box_b)
    check_box_convention(box_a, "x0y0x1y1")
    check_box_convention(box_b, "x0y0x1y1")
    a = box_a[:, None, :]
    b = box_b[None, :, :]
    min_x = np.maximum(a[..., 0], b[..., 0])
    min_y = np.maximum(a[..., 1], b[..., 1])
    max_x = np.minimum(a[..., 2], b[..., 2])
    max_y = np.minimum(a[..., 3], b[..., 3])
    area_intersect = (np.maximum(0, max_x - min_x + 1)
                      * np.maximum(0, max_y - min_y + 1))
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    denominator = area_a + area_b - area_intersect
    degenerate = denominator <= 0
    denominator = np.where(degenerate, 1, denominator)
    ious = area_intersect / denominator
    ious[degenerate] = 0
    return ious


def resize_bbox(box: Sequence[float], image_size: Sequence[float],
                resize_size: Sequence[float]) -> tuple[int, int, int, int]:
    """Rescale an x0y0x1y1 box from ``image_size`` (w, h) to ``resize_size``
    (w, h), truncating with ``int()`` as wsolevaluation does."""
    check_box_convention(np.array(box), "x0y0x1y1")
    box_x0, box_y0, box_x1, box_y1 = map(float, box)
    image_w, image_h = map(float, image_size)
    new_image_w, new_image_h = map(float, resize_size)
    return (int(box_x0 * new_image_w / image_w),
            int(box_y0 * new_image_h / image_h),
            int(box_x1 * new_image_w / image_w),
            int(box_y1 * new_image_h / image_h))


def quantise(scoremap: np.ndarray) -> np.ndarray:
    """wsolevaluation's ``(scoremap * 255).astype(np.uint8)``, in float64."""
    return (scoremap.astype(np.float64, copy=False) * 255).astype(np.uint8)


def normalize_scoremap(cam: np.ndarray) -> np.ndarray:
    """Min-max normalise one map to [0, 1]; a constant or NaN map gives zeros.

    Same arithmetic as wsolevaluation (subtract the min, divide by the max of
    the result) but returns a new array instead of changing ``cam``.
    """
    if np.isnan(cam).any():
        return np.zeros_like(cam)
    if cam.min() == cam.max():
        return np.zeros_like(cam)
    out = cam - cam.min()
    out /= out.max()
    return out


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """:func:`normalize_scoremap` for a batch ``[B, H, W]`` on any device; a map
    with a NaN or infinite value, or a constant map, becomes all zeros."""
    if maps.dim() != 3:
        raise ValueError(f"expected maps of shape (B, H, W), got {tuple(maps.shape)}")
    low = maps.amin((1, 2), keepdim=True)  # amin/amax propagate NaN
    spread = maps.amax((1, 2), keepdim=True) - low
    ok = torch.isfinite(spread) & (spread > 0)
    return torch.where(ok, (maps - low) / torch.where(ok, spread, 1.0), 0.0)


def quantise_maps(maps: torch.Tensor, normalized: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch ``[B, H, W]`` quantised where it is: ``(uint8 maps, NaN flag,
    constant flag, outside-[0, 1] flag)``, flags ``[B]`` bool.

    ``normalized=False``: the maps are normalised first.  A map with NaN is
    flagged and quantised as zeros; the values of a normalised map outside
    [0, 1] are flagged (the caller rejects the map).  Nothing here reads a
    value back, so on a GPU nothing waits.
    """
    flat = maps.detach().flatten(1)
    nan = torch.isnan(flat).any(1)
    if normalized:
        # Quantised in float64, as wsolevaluation does with its float64 maps.
        values = torch.where(nan[:, None], torch.zeros_like(flat), flat).double()
        low, high = values.amin(1), values.amax(1)
        outside = (low < 0) | (high > 1)
        constant = (low == high) & ~nan
        values = values.clamp(0, 1)  # flagged maps raise; this keeps the cast defined
    else:
        clean = torch.where(nan[:, None], torch.zeros_like(flat), flat)
        constant = (clean.amin(1) == clean.amax(1)) & ~nan
        outside = torch.zeros_like(nan)
        values = normalize_maps(maps.detach()).flatten(1).double()
    q = (values * 255).to(torch.uint8).view(maps.shape)
    return q, nan, constant, outside


def contours_above(scoremap_image: np.ndarray, level: int) -> list:
    """OpenCV contours of the pixels strictly above ``level`` (uint8 image)."""
    _, thresholded = cv2.threshold(src=scoremap_image, thresh=level,
                                   maxval=255, type=cv2.THRESH_BINARY)
    return cv2.findContours(image=thresholded, mode=cv2.RETR_TREE,
                            method=cv2.CHAIN_APPROX_SIMPLE)[_CONTOUR_INDEX]


def contour_box(contour, width: int, height: int) -> list[int]:
    """A contour's bounding box (x0, y0, x1, y1), clipped to the image."""
    x, y, w, h = cv2.boundingRect(contour)
    return [x, y, min(x + w, width - 1), min(y + h, height - 1)]


def largest_contour_box(contours: list, width: int, height: int) -> list[int]:
    """The box of the contour of largest area (the first of equal ones);
    ``[0, 0, 0, 0]`` without contours."""
    if len(contours) == 0:
        return [0, 0, 0, 0]
    return contour_box(max(contours, key=cv2.contourArea), width, height)


def compute_bboxes_from_scoremaps(scoremap: np.ndarray,
                                  scoremap_threshold_list: Iterable[float],
                                  multi_contour_eval: bool = False
                                  ) -> tuple[list[np.ndarray], list[int]]:
    """Boxes of a score map at each threshold, exactly as wsolevaluation.

    Returns ``(boxes_at_each_threshold, number_of_boxes)``: per threshold an
    int array (n, 4) of x0y0x1y1 boxes, in OpenCV's contour order (all
    contours, holes included, when ``multi_contour_eval``; else the first
    contour of largest ``cv2.contourArea``), or ``[[0, 0, 0, 0]]`` when
    nothing is above the threshold.  Each distinct integer level is computed
    once.
    """
    check_scoremap_validity(scoremap)
    height, width = scoremap.shape
    scoremap_image = quantise(scoremap)
    max_value = np.max(scoremap_image)
    cache: dict[int, tuple[np.ndarray, int]] = {}
    boxes_at_thresholds: list[np.ndarray] = []
    number_of_boxes: list[int] = []
    for threshold in scoremap_threshold_list:
        level = int(threshold * max_value)
        if level not in cache:
            contours = contours_above(scoremap_image, level)
            if len(contours) == 0:
                cache[level] = (np.asarray([[0, 0, 0, 0]]), 1)
            elif multi_contour_eval:
                boxes = [contour_box(c, width, height) for c in contours]
                cache[level] = (np.asarray(boxes), len(contours))
            else:
                cache[level] = (np.asarray([largest_contour_box(contours, width, height)]), 1)
        boxes, count = cache[level]
        boxes_at_thresholds.append(boxes.copy())
        number_of_boxes.append(count)
    return boxes_at_thresholds, number_of_boxes


def load_mask_image(file_path: str, resize_size: tuple[int, int]) -> np.ndarray:
    """Grey-level mask as float32, resized (nearest) to ``resize_size`` (w, h)."""
    image = cv2.imread(file_path, cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"cannot read mask image {file_path}")
    mask = np.float32(image)
    return cv2.resize(mask, resize_size, interpolation=cv2.INTER_NEAREST)


def get_mask(mask_root: str, mask_paths: Sequence[str], ignore_path: str | None,
             resize_length: int = RESIZE_LENGTH) -> np.ndarray:
    """GT mask of one image: 1 foreground, 255 ignored, 0 background.

    Foreground = union of the instance masks (> 0.5); ignored = the ignore
    box region minus the foreground.  ``ignore_path`` may be None (no ignore
    region; the SYNTH masks have none).
    """
    size = (resize_length, resize_length)
    instances = [load_mask_image(os.path.join(mask_root, path), size) > 0.5
                 for path in mask_paths]
    if not instances:
        raise ValueError("an image needs at least one mask")
    foreground = np.stack(instances, axis=0).any(axis=0)
    if ignore_path:
        ignore_box = load_mask_image(os.path.join(mask_root, ignore_path), size) > 0.5
        ignore = np.logical_and(ignore_box, np.logical_not(foreground))
    else:
        ignore = np.zeros_like(foreground)
    if np.logical_and(ignore, foreground).any():
        raise RuntimeError("Ignore and foreground masks intersect.")
    return foreground.astype(np.uint8) + 255 * ignore.astype(np.uint8)

"""Pictures of class activation maps: overlays, comparison grids and curves.

- :func:`render_overlay` draws one map over its image as a heatmap with the
  ground-truth boxes (green), the predicted box (red: the largest contour of
  the map at ``--loc_threshold``, the box GT-known Loc scores) or, for mask
  datasets, the ground-truth mask contour (green) and the contour of the map
  at the same threshold (red), under a caption with the class, the
  prediction and the IoU.
- :class:`OverlayCollector` keeps the first N images of an evaluation pass
  with the maps of every (method, branch) and writes
  ``overlays/<split>/<method>_<branch>/NN_<image>.png`` plus
  ``grid_<method>.png``: one column per image, one row per branch, so the
  softmax and sigmoid maps of the same images sit one above the other.
- :func:`write_plots` draws the curves of a results dict (``results_*.json``):
  localization accuracy against the CAM threshold, one line per IoU and
  branch, and the PxAP precision-recall curve per branch.
- :func:`write_pictures` is what ``main.py --save_overlays N --plots`` calls
  after the evaluation; it also sends the pictures to wandb when it is on.

``python -m wsol.visualize RESULTS.json [--output DIR]`` redraws the curves of
a finished run.  Only OpenCV and NumPy draw the overlays; matplotlib (Agg
backend, imported on first use) draws grids and curves.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import re
import shutil
import sys
from typing import Callable, Iterable, Mapping, Sequence

import cv2
import numpy as np
import torch

from wsol.branches import branch_title
from wsol.data.metadata import GroundTruth
from wsol.protocol import (IMAGENET_MEAN, IMAGENET_STD, calculate_multiple_iou,
                           compute_bboxes_from_scoremaps, quantise)
from wsol.results import row_branch_label, row_clamp_rule

__all__ = ["GT_COLOR", "PRED_COLOR", "denormalize", "colorize", "blend", "draw_boxes",
           "draw_mask_contour", "add_caption", "predicted_box", "best_iou", "mask_iou",
           "render_overlay", "OverlayCollector", "class_names_for", "read_class_names",
           "plot_box_curves", "plot_pr_curves", "write_plots", "write_pictures",
           "log_pictures", "save_png", "main"]

log = logging.getLogger(__name__)

GT_COLOR = (40, 230, 40)      # RGB
PRED_COLOR = (255, 40, 40)
_OUTLINE = (0, 0, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


# --------------------------------------------------------------------------
# drawing primitives (RGB uint8 arrays, H x W x 3)
# --------------------------------------------------------------------------

def denormalize(images: torch.Tensor, size: int | None = None,
                mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Normalised images [B, 3, H, W] -> uint8 RGB [B, size, size, 3]."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
    x = images.detach().float().cpu()
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                            align_corners=False)
    x = (x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)).clamp(0, 1)
    return (x * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def colorize(scoremap: np.ndarray) -> np.ndarray:
    """A map in [0, 1] as a JET heatmap (RGB uint8)."""
    values = np.nan_to_num(np.asarray(scoremap, dtype=np.float32), nan=0.0)
    quantised = (np.clip(values, 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(quantised, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def blend(image: np.ndarray, scoremap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` with the heatmap of ``scoremap`` (resized to it) on top."""
    height, width = image.shape[:2]
    scoremap = np.asarray(scoremap, dtype=np.float32)
    if scoremap.shape != (height, width):
        scoremap = cv2.resize(scoremap, (width, height), interpolation=cv2.INTER_LINEAR)
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colorize(scoremap)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def _thickness(image: np.ndarray) -> int:
    return max(1, round(min(image.shape[:2]) / 112))


def draw_boxes(image: np.ndarray, boxes: Iterable[Sequence[float]], color=GT_COLOR,
               thickness: int | None = None) -> np.ndarray:
    """x0y0x1y1 boxes (inclusive pixels) drawn on a copy, with a dark outline."""
    out = np.ascontiguousarray(image).copy()
    t = thickness or _thickness(out)
    for box in boxes:
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), _OUTLINE, t + 2)
        cv2.rectangle(out, (x0, y0), (x1, y1), tuple(int(c) for c in color), t)
    return out


def draw_mask_contour(image: np.ndarray, mask: np.ndarray, color=GT_COLOR,
                      thickness: int | None = None) -> np.ndarray:
    """Outlines of the True region of ``mask`` (resized to the image) on a copy."""
    out = np.ascontiguousarray(image).copy()
    binary = np.asarray(mask).astype(np.uint8)
    if binary.shape != out.shape[:2]:
        binary = cv2.resize(binary, (out.shape[1], out.shape[0]),
                            interpolation=cv2.INTER_NEAREST)
    contours = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[-2]
    t = thickness or _thickness(out)
    cv2.drawContours(out, contours, -1, _OUTLINE, t + 2)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), t)
    return out


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def _fit_text(text: str, width: int, scale: float) -> str:
    """Shorten ``text`` with '..' until it fits ``width`` pixels."""
    text = _ascii(text)
    while text and cv2.getTextSize(text, _FONT, scale, 1)[0][0] > width - 6:
        text = text[:-3] + ".." if len(text) > 3 else ""
    return text


def _wrap(text: str, width: int, scale: float) -> list[str]:
    """``text`` in lines of at most ``width`` pixels, broken between words (a
    single word too long for a line is shortened)."""
    lines: list[str] = []
    for word in _ascii(text).split(" "):
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(candidate, _FONT, scale, 1)[0][0] <= width - 6:
            lines[-1] = candidate
        else:
            lines.append(_fit_text(word, width, scale))
    return lines or [""]


def add_caption(image: np.ndarray, lines: Sequence[str], scale: float | None = None,
                colors: Sequence[tuple[int, int, int]] | None = None) -> np.ndarray:
    """``image`` below a dark strip holding ``lines`` of text, each wrapped to
    the image's width (nothing is cut off)."""
    width = image.shape[1]
    scale = scale or max(0.35, min(0.6, width / 520))
    wrapped = [(part, colors[i] if colors else (235, 235, 235))
               for i, line in enumerate(lines) for part in _wrap(line, width, scale)]
    line_height = int(cv2.getTextSize("Ag", _FONT, scale, 1)[0][1] * 1.9) + 2
    strip = np.full((line_height * len(wrapped) + 4, width, 3), 24, np.uint8)
    for i, (line, color) in enumerate(wrapped):
        cv2.putText(strip, line, (4, line_height * (i + 1) - 3), _FONT, scale,
                    tuple(int(c) for c in color), 1, cv2.LINE_AA)
    return np.concatenate([strip, image], axis=0)


def predicted_box(scoremap: np.ndarray, threshold: float) -> np.ndarray:
    """The box GT-known Loc scores: largest contour of the map above ``threshold``
    (``[0, 0, 0, 0]`` when nothing is above it)."""
    boxes, _ = compute_bboxes_from_scoremaps(np.asarray(scoremap, dtype=np.float32),
                                             [threshold], multi_contour_eval=False)
    return np.asarray(boxes[0][0], dtype=np.int64)


def best_iou(box: Sequence[float], gt_boxes: Sequence[Sequence[float]]) -> float:
    """IoU (inclusive pixels) of ``box`` with its best-matching GT box."""
    if len(gt_boxes) == 0:
        return float("nan")
    return float(calculate_multiple_iou(np.asarray([box], dtype=np.float64),
                                        np.asarray(gt_boxes, dtype=np.float64)).max())


def mask_iou(region: np.ndarray, gt_mask: np.ndarray) -> float:
    """IoU of a predicted region with the GT foreground (1), ignoring 255 pixels."""
    valid = gt_mask != 255
    fg = (gt_mask == 1) & valid
    pred = region & valid
    union = np.logical_or(fg, pred).sum()
    return float(np.logical_and(fg, pred).sum() / union) if union else float("nan")


def _threshold_region(scoremap: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels strictly above ``int(threshold * max)`` of the quantised map, as
    the box evaluation thresholds them."""
    quantised = quantise(np.asarray(scoremap))
    return quantised > int(threshold * quantised.max())


def render_overlay(image: np.ndarray, scoremap: np.ndarray, *,
                   gt_boxes: Sequence[Sequence[float]] | None = None,
                   gt_mask: np.ndarray | None = None, loc_threshold: float = 0.2,
                   caption: Sequence[str] = (), alpha: float = 0.5,
                   show_prediction: bool = True) -> tuple[np.ndarray, dict]:
    """Heatmap of ``scoremap`` over ``image`` (same size, map in [0, 1]) with
    the GT boxes / mask contour in green and the prediction at
    ``loc_threshold`` in red; returns the picture and ``{"iou", "box_iou",
    "mask_iou", "pred_box"}`` (absent entries are missing)."""
    picture = blend(image, scoremap, alpha)
    info: dict = {}
    if gt_mask is not None:
        region = _threshold_region(scoremap, loc_threshold)
        if show_prediction:  # below the GT contour, which stays visible where they meet
            picture = draw_mask_contour(picture, region, PRED_COLOR,
                                        thickness=max(1, _thickness(picture) - 1))
            info["mask_iou"] = mask_iou(region, gt_mask)
        picture = draw_mask_contour(picture, gt_mask == 1, GT_COLOR)
    if gt_boxes is not None:
        picture = draw_boxes(picture, gt_boxes, GT_COLOR)
    if show_prediction and (gt_boxes is not None or gt_mask is None):
        box = predicted_box(scoremap, loc_threshold)
        info["pred_box"] = [int(v) for v in box]
        picture = draw_boxes(picture, [box], PRED_COLOR)
        if gt_boxes is not None:
            info["box_iou"] = best_iou(box, gt_boxes)
    info["iou"] = info.get("box_iou", info.get("mask_iou"))
    if caption:
        picture = add_caption(picture, caption)
    return picture, info


def save_png(path: str, image: np.ndarray) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


# --------------------------------------------------------------------------
# class names
# --------------------------------------------------------------------------

def read_class_names(path: str) -> list[str]:
    """One class name per line (line i = class i), or ``index,name`` /
    ``index name`` lines (CUB's classes.txt counts from 1 and is shifted)."""
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    indexed = [re.match(r"^(\d+)[,\s]+(.+)$", line) for line in lines]
    if lines and all(indexed):
        pairs = {int(m.group(1)): m.group(2).strip() for m in indexed}
        first = min(pairs)
        return [pairs.get(i + first, str(i)) for i in range(max(pairs) - first + 1)]
    return lines


def class_names_for(dataset_name: str | None, num_classes: int,
                    path: str | None = None) -> list[str]:
    """Names for class indices: ``path`` when given; SYNTH's generated names;
    ImageNet's (torchvision's list, the sorted-wnid order) for 1000 ILSVRC
    classes; otherwise ``class <k>``."""
    names: list[str] = []
    if path:
        names = read_class_names(path)
    elif dataset_name == "SYNTH":
        from wsol.data.synth import synth_class_names
        names = synth_class_names(num_classes)
    elif dataset_name == "ILSVRC" and num_classes == 1000:
        try:
            from torchvision.models import ResNet50_Weights
            names = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
        except Exception:  # an older or trimmed torchvision: numbers will do
            names = []
    names = list(names[:num_classes])
    return names + [f"class {k}" for k in range(len(names), num_classes)]


# --------------------------------------------------------------------------
# overlays of an evaluation pass
# --------------------------------------------------------------------------

def _safe_name(text: str, limit: int = 60) -> str:
    text = os.path.splitext(text)[0] if text.lower().endswith(
        (".png", ".jpg", ".jpeg", ".bmp", ".webp")) else text
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return name[-limit:] or "image"


class OverlayCollector:
    """The first ``count`` images of an evaluation pass and their maps.

    ``add`` is called per batch and branch with the evaluation maps
    ([B, S, S] in [0, 1]); it keeps copies for the first ``count`` image ids
    only, so it costs nothing once full.  ``write`` renders the PNGs.
    ``gt_boxes``: image id -> boxes at the maps' scale; ``gt_mask``: image id
    -> label map (1 fg, 255 ignore, 0 bg) at that scale; either may be None.
    """

    def __init__(self, count: int, loc_threshold: float = 0.2, size: int = 224,
                 class_names: Sequence[str] | None = None,
                 gt_boxes: Mapping[str, Sequence[Sequence[float]]] | None = None,
                 gt_mask: Callable[[str], np.ndarray] | None = None,
                 normalization: tuple[Sequence[float], Sequence[float]] = (IMAGENET_MEAN,
                                                                          IMAGENET_STD)):
        self.count = int(count)
        self.normalization = normalization
        self.loc_threshold = float(loc_threshold)
        self.size = int(size)
        self.class_names = list(class_names or [])
        self.gt_boxes = gt_boxes
        self.gt_mask = gt_mask
        self.image_ids: list[str] = []
        self.images: dict[str, np.ndarray] = {}
        self.labels: dict[str, int] = {}
        self.predictions: dict[str, int] = {}
        self.maps: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    @classmethod
    def from_ground_truth(cls, count: int, ground_truth: GroundTruth, dataset_name: str,
                          num_classes: int, loc_threshold: float, boxes: bool = True,
                          normalization: tuple = (IMAGENET_MEAN, IMAGENET_STD)
                          ) -> "OverlayCollector":
        """Ground truth as the evaluators read it: boxes for box datasets, mask
        contours only for mask-only datasets (SYNTH has both; its overlays
        show boxes, which stay readable)."""
        mask_fn = None
        if not boxes and ground_truth.mask_paths:
            def mask_fn(image_id: str) -> np.ndarray | None:
                return ground_truth.mask(image_id) if image_id in ground_truth.mask_paths \
                    else None
        return cls(count, loc_threshold, ground_truth.resize_length,
                   class_names_for(dataset_name, num_classes),
                   ground_truth.boxes if boxes else None, mask_fn, normalization)

    @property
    def full(self) -> bool:
        return len(self.image_ids) >= self.count

    def add(self, branch: str, images: torch.Tensor, labels: torch.Tensor,
            predictions: torch.Tensor, image_ids: Sequence[str],
            maps: Mapping[str, torch.Tensor]) -> None:
        """Keep the maps of the images among the first ``count`` (new ones are
        taken while there is room)."""
        picked = []
        for i, image_id in enumerate(image_ids):
            if image_id in self.images:
                picked.append(i)
            elif not self.full:
                self.image_ids.append(image_id)
                self.images[image_id] = None  # filled below
                picked.append(i)
        if not picked:
            return
        index = torch.as_tensor(picked, dtype=torch.long)
        fresh = [i for i in picked if self.images[image_ids[i]] is None]
        if fresh:
            pixels = denormalize(images[torch.as_tensor(fresh, device=images.device)], self.size,
                                 *self.normalization)
            for k, i in enumerate(fresh):
                image_id = image_ids[i]
                self.images[image_id] = pixels[k]
                self.labels[image_id] = int(labels[i])
                self.predictions[image_id] = int(predictions[i])
        for method, method_maps in maps.items():
            chosen = method_maps.detach()[index.to(method_maps.device)].float().cpu().numpy()
            store = self.maps.setdefault((method, branch), {})
            for k, i in enumerate(picked):
                store[image_ids[i]] = chosen[k]

    # -- rendering -----------------------------------------------------------

    def _name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)

    def _ground_truth(self, image_id: str):
        boxes = self.gt_boxes.get(image_id) if self.gt_boxes is not None else None
        mask = self.gt_mask(image_id) if self.gt_mask is not None else None
        return boxes, mask

    def render(self, method: str, branch: str, image_id: str,
               ground_truth=None) -> tuple[np.ndarray, dict]:
        boxes, mask = ground_truth or self._ground_truth(image_id)
        label, pred = self.labels[image_id], self.predictions[image_id]
        verdict = "right" if label == pred else "wrong"
        picture, info = render_overlay(self.images[image_id],
                                       self.maps[(method, branch)][image_id],
                                       gt_boxes=boxes, gt_mask=mask,
                                       loc_threshold=self.loc_threshold)
        iou_name = "IoU" if info.get("box_iou") is not None else "mask IoU"
        iou = info.get("iou")
        lines = [f"{method} | {branch_title(branch)}",
                 f"gt {self._name(label)}",
                 f"pred {self._name(pred)} ({verdict})",
                 (f"{iou_name} {iou:.2f} at thr {self.loc_threshold:g}" if iou is not None
                  and not np.isnan(iou) else f"thr {self.loc_threshold:g}")]
        colors = [(235, 235, 235), GT_COLOR, (235, 235, 235) if label == pred else (255, 150, 60),
                  PRED_COLOR]
        return add_caption(picture, lines, colors=colors), info

    def write(self, folder: str) -> dict[str, list[str]]:
        """PNGs under ``folder``: ``<method>_<branch>/NN_<image>.png`` and
        ``grid_<method>.png``; returns paths by wandb key.  Earlier PNGs in
        those places are removed first, so the folder shows this run only."""
        written: dict[str, list[str]] = {}
        if not self.image_ids:
            return written
        ground_truth = {i: self._ground_truth(i) for i in self.image_ids}
        methods = list(dict.fromkeys(m for m, _ in self.maps))
        for (method, branch), store in self.maps.items():
            sub = os.path.join(folder, f"{method}_{branch}")
            if os.path.isdir(sub):
                shutil.rmtree(sub)
            paths = []
            for n, image_id in enumerate(self.image_ids):
                if image_id not in store:
                    continue
                picture, _ = self.render(method, branch, image_id, ground_truth[image_id])
                path = os.path.join(sub, f"{n:02d}_{_safe_name(image_id)}.png")
                paths.append(save_png(path, picture))
            written[f"overlays/{method}_{branch}"] = paths
        for method in methods:
            branches = [b for m, b in self.maps if m == method]
            path = os.path.join(folder, f"grid_{_safe_name(method)}.png")
            self.write_grid(method, branches, path, ground_truth)
            written[f"grids/{method}"] = [path]
        return written

    def write_grid(self, method: str, branches: Sequence[str], path: str,
                   ground_truth: Mapping | None = None) -> str:
        """One column per image; rows: the image with its ground truth, then
        the overlay of each branch (its IoU in the row's caption)."""
        ground_truth = ground_truth or {i: self._ground_truth(i) for i in self.image_ids}
        ids = [i for i in self.image_ids
               if all(i in self.maps[(method, b)] for b in branches)]
        rows = [[], *[[] for _ in branches]]
        for image_id in ids:
            boxes, mask = ground_truth[image_id]
            plain = self.images[image_id]
            if mask is not None:
                plain = draw_mask_contour(plain, mask == 1, GT_COLOR)
            if boxes is not None:
                plain = draw_boxes(plain, boxes, GT_COLOR)
            label, pred = self.labels[image_id], self.predictions[image_id]
            rows[0].append(add_caption(plain, [f"gt {self._name(label)}",
                                               f"pred {self._name(pred)}"],
                                       colors=[GT_COLOR, (235, 235, 235) if label == pred
                                               else (255, 150, 60)]))
            for r, branch in enumerate(branches, start=1):
                picture, info = render_overlay(self.images[image_id],
                                               self.maps[(method, branch)][image_id],
                                               gt_boxes=boxes, gt_mask=mask,
                                               loc_threshold=self.loc_threshold)
                iou = info.get("iou")
                kind = "IoU" if info.get("box_iou") is not None else "mask IoU"
                text = (f"{kind} {iou:.2f}" if iou is not None and not np.isnan(iou) else "")
                rows[r].append(add_caption(picture, [text], colors=[PRED_COLOR]))
        titles = [branch_title(b) for b in branches]
        labels = ["image + GT", *titles]
        which = (f"the {titles[0]} branch" if len(titles) == 1 else " vs ".join(titles))
        return save_png(path, _grid(rows, labels, f"{method} maps of the GT class, {which} "
                                                  f"(green: GT, red: predicted box at thr "
                                                  f"{self.loc_threshold:g})"))


def _grid(rows: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str],
          title: str, gap: int = 4) -> np.ndarray:
    """Tiles in rows (tiles of a row share a height), a label column on the
    left and a title strip on top; white background."""
    label_width = 0
    scale = 0.5
    for label in row_labels:
        for word in label.split():
            label_width = max(label_width, cv2.getTextSize(word, _FONT, scale, 1)[0][0] + 12)
    row_images = []
    for tiles, label in zip(rows, row_labels):
        if not tiles:
            continue
        height = max(t.shape[0] for t in tiles)
        padded = [np.pad(t, ((0, height - t.shape[0]), (0, gap), (0, 0)),
                         constant_values=255) for t in tiles]
        body = np.concatenate(padded, axis=1)
        side = np.full((height, label_width, 3), 255, np.uint8)
        words = label.split()
        for k, word in enumerate(words):
            y = height // 2 + int((k - (len(words) - 1) / 2) * 20) + 5
            cv2.putText(side, word, (6, y), _FONT, scale, (20, 20, 20), 1, cv2.LINE_AA)
        row_images.append(np.pad(np.concatenate([side, body], axis=1),
                                 ((0, gap), (0, 0), (0, 0)), constant_values=255))
    if not row_images:
        return np.full((32, 32, 3), 255, np.uint8)
    width = max(r.shape[1] for r in row_images)
    row_images = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                  for r in row_images]
    header = np.full((28, width, 3), 255, np.uint8)
    cv2.putText(header, _fit_text(title, width, 0.55), (6, 19), _FONT, 0.55, (20, 20, 20), 1,
                cv2.LINE_AA)
    return np.concatenate([header, *row_images], axis=0)


# --------------------------------------------------------------------------
# curves
# --------------------------------------------------------------------------

def _pyplot():
    import matplotlib
    if matplotlib.get_backend().lower() != "agg":
        try:
            matplotlib.use("Agg", force=True)
        except Exception:  # a backend already in use elsewhere: keep it
            pass
    import matplotlib.pyplot as plt
    return plt


_IOU_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
_BRANCH_STYLES = {"softmax": "--", "sigmoid": "-"}


def plot_box_curves(rows: Sequence[Mapping], path: str, title: str = "",
                    loc_threshold: float | None = None) -> str | None:
    """Box accuracy (%) against the CAM threshold: one line per IoU of
    MaxBoxAccV2 and per branch (softmax dashed, sigmoid solid), the maximum of
    each marked.  ``rows``: result rows of one method carrying ``curves``."""
    rows = [r for r in rows if isinstance(r.get("curves"), Mapping)]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for row in rows:
        curves = row["curves"]
        x = np.asarray(curves["thresholds"], dtype=float)
        keys = sorted((k for k in curves if k.startswith("MaxBoxAccV2@")),
                      key=lambda k: float(k.split("@")[1]))
        style = _BRANCH_STYLES.get(row.get("branch"), ":")
        for n, key in enumerate(keys):
            y = np.asarray(curves[key], dtype=float)
            best = int(np.nanargmax(y)) if np.isfinite(y).any() else 0
            color = _IOU_COLORS[n % len(_IOU_COLORS)]
            ax.plot(x, y, style, color=color, lw=1.6,
                    label=f"IoU {key.split('@')[1]}, {row_branch_label(row)} (max {y[best]:.1f})")
            ax.plot([x[best]], [y[best]], "o", color=color, ms=4)
    if loc_threshold is not None:  # where GT-known / Top-1 Loc are measured
        ax.axvline(loc_threshold, color="0.5", lw=0.8, ls=":")
    summary = ", ".join(f"{row_branch_label(r)} {r['MaxBoxAccV2']:.1f}" for r in rows
                        if isinstance(r.get("MaxBoxAccV2"), (int, float)))
    if summary:
        title = f"{title}\nMaxBoxAccV2: {summary}"
    ax.set_xlabel("CAM threshold")
    ax.set_ylabel("box accuracy (%)  [all contours]")
    ax.set_xlim(0, 1)
    return _finish_plot(plt, fig, ax, path, title, legend_size=7)


def plot_pr_curves(rows: Sequence[Mapping], path: str, title: str = "") -> str | None:
    """PxAP's pixel precision-recall curve, one line per branch, PxAP in the
    legend.  ``rows``: result rows of one method carrying ``mask_curves``."""
    rows = [r for r in rows if isinstance(r.get("mask_curves"), Mapping)]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.2), dpi=100)
    for n, row in enumerate(rows):
        curves = row["mask_curves"]
        precision = np.asarray(curves["precision"], dtype=float) * 100
        recall = np.asarray(curves["recall"], dtype=float) * 100
        pxap = row.get("PxAP")
        label = row_branch_label(row) + (f" (PxAP {pxap:.1f})" if pxap is not None else "")
        ax.plot(recall, precision, _BRANCH_STYLES.get(row.get("branch"), ":"),
                color=_IOU_COLORS[n % len(_IOU_COLORS)], lw=1.6, label=label)
    ax.set_xlabel("recall (%)")
    ax.set_ylabel("precision (%)")
    ax.set_xlim(0, 100)
    return _finish_plot(plt, fig, ax, path, title, legend_size=8)


def _finish_plot(plt, fig, ax, path: str, title: str, legend_size: int) -> str:
    """The common tail of both plots: percent y axis, grid, title, legend, save."""
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=legend_size, loc="upper right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_group(row: Mapping) -> str:
    """Rows plotted together: a method's branches, with a clamp variant that
    is not its branch's default (an ablation) in a plot of its own."""
    method = str(row.get("method", "?"))
    if row_branch_label(row) == row.get("branch"):
        return method
    rule = row_clamp_rule(row)
    return f"{method}_{'noclamp' if rule == 'none' else rule + 'clamp'}"


def write_plots(results: Mapping, folder: str, prefix: str = "") -> dict[str, list[str]]:
    """Curves of a results dict (``results_<split>.json``) under ``folder``:
    ``<prefix>box_accuracy_<method>.png`` and ``<prefix>pxap_pr_<method>.png``,
    each with every branch of that method, titled with the experiment; returns
    paths by wandb key."""
    by_method: dict[str, list[Mapping]] = {}
    for row in results.get("rows", []):
        by_method.setdefault(_plot_group(row), []).append(row)
    what = " ".join(str(results[k]) for k in ("experiment", "dataset", "architecture", "split")
                    if results.get(k))
    written: dict[str, list[str]] = {}
    for method, rows in by_method.items():
        name = _safe_name(method)
        loc = next((r.get("loc_threshold") for r in rows if r.get("loc_threshold") is not None),
                   None)
        path = plot_box_curves(rows, os.path.join(folder, f"{prefix}box_accuracy_{name}.png"),
                               f"{method}: box accuracy vs CAM threshold ({what})", loc)
        if path:
            written[f"plots/box_accuracy_{method}"] = [path]
        path = plot_pr_curves(rows, os.path.join(folder, f"{prefix}pxap_pr_{name}.png"),
                              f"{method}: PxAP precision-recall ({what})")
        if path:
            written[f"plots/pxap_pr_{method}"] = [path]
    return written


# --------------------------------------------------------------------------
# after an evaluation run
# --------------------------------------------------------------------------

def log_pictures(tracker, pictures: Mapping[str, Sequence[str]]) -> None:
    """Send PNGs to wandb as images, only when the tracker has a live run."""
    if getattr(tracker, "run", None) is None or not pictures:
        return
    try:
        import wandb
        payload = {key: [wandb.Image(p, caption=os.path.basename(p)) for p in paths]
                   for key, paths in pictures.items() if paths}
    except Exception as error:  # wandb missing or broken: pictures stay on disk
        log.warning("could not send pictures to wandb (%s)", error)
        return
    tracker.log(payload)


def _overlay_files(folder: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(glob.glob(os.path.join(folder, "grid_*.png"))):
        found[f"grids/{os.path.basename(path)[5:-4]}"] = [path]
    for sub in sorted(glob.glob(os.path.join(folder, "*", ""))):
        paths = sorted(glob.glob(os.path.join(sub, "*.png")))
        if paths:
            found[f"overlays/{os.path.basename(os.path.dirname(sub))}"] = paths
    return found


def write_pictures(folder: str, split: str, results: Mapping, plots: bool, overlays: bool,
                   tracker=None) -> dict[str, list[str]]:
    """``plots``: curves under ``<folder>/plots/<split>/``; ``overlays``: the
    overlays the evaluation wrote under ``<folder>/overlays/<split>/``.  Both
    go to wandb when the tracker has a run."""
    pictures: dict[str, list[str]] = {}
    if plots:
        where = os.path.join(folder, "plots", split)
        pictures.update(write_plots(results, where))
        log.info("curves written to %s", where)
    if overlays:
        where = os.path.join(folder, "overlays", split)
        pictures.update(_overlay_files(where))
        log.info("overlays written to %s", where)
    log_pictures(tracker, pictures)
    return pictures


def main(argv: Sequence[str] | None = None) -> int:
    """Redraw the curves of finished runs from their results JSON."""
    import json
    parser = argparse.ArgumentParser(
        prog="python -m wsol.visualize",
        description="Draw the box-accuracy and PxAP precision-recall curves of results_*.json.")
    parser.add_argument("results", nargs="+", help="results_<split>.json file(s)")
    parser.add_argument("--output", default=None,
                        help="folder for the PNGs (default: plots/<split>/ beside each JSON)")
    args = parser.parse_args(argv)
    status = 0
    used: set[str] = set()
    for path in args.results:
        try:
            with open(path) as f:
                results = json.load(f)
        except (OSError, ValueError) as error:
            print(f"error: cannot read {path}: {error}", file=sys.stderr)
            status = 2
            continue
        folder = args.output or os.path.join(os.path.dirname(os.path.abspath(path)), "plots",
                                             str(results.get("split", "test")))
        prefix = ""
        if args.output and len(args.results) > 1:
            # Several runs into one folder: each run's files carry its name.
            prefix = _unique(_safe_name(str(results.get("experiment") or os.path.splitext(
                os.path.basename(path))[0])), used) + "_"
        for paths in write_plots(results, folder, prefix).values():
            for p in paths:
                print(p)
    return status


def _unique(name: str, used: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... if already taken (recorded in ``used``)."""
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}_{n}"
    used.add(candidate)
    return candidate


if __name__ == "__main__":
    sys.exit(main())

"""SYNTH_ML: a small multi-label segmentation dataset that is generated, not
downloaded (the CPU stand-in for PASCAL VOC in ReCAM's seed protocol).

Each image holds 2 or 3 objects of *different* classes (the classes, their
shapes, textures and colours are SYNTH's, :mod:`wsol.data.synth`) over
SYNTH's cluttered backgrounds and distractors, so that co-occurring classes
compete for pixels as in VOC.  Written as VOC is laid out for this toolkit
(``scripts/prepare_voc.py``):

- images   ``<data_root>/SYNTH_ML/<split>/<split>_<index:05d>.png``
- masks    ``<mask_root>/SYNTH_ML/masks/<split>/<split>_<index:05d>.png``: palette
  PNGs of class indices (0 background, class c as c + 1, 255 on a one-pixel
  band along every object's outline, VOC's "void" border), val and test only
- metadata ``<metadata_root>/SYNTH_ML/<split>/{image_ids,class_labels,
  image_sizes}.txt`` (``class_labels.txt``: one line per class of an image)
  and, for val/test, ``segmentation.txt`` (``path,mask_png``)

Deterministic: every image comes from ``numpy.random.default_rng((seed,
split, index))``; the same arguments give byte-identical files.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time

import cv2
import numpy as np
from PIL import Image

from wsol.data.synth import (_PALETTES, _background, _blob_polygon, _class_specs,
                             _draw_lines, _jitter_colour, _paint, _place, _sample_stamp,
                             _texture, _unit_polygons, _write_lines, _write_png)

__all__ = ["DATASET_NAME", "generate_synth_ml", "ensure_synth_ml", "VOC_PALETTE"]

log = logging.getLogger(__name__)

DATASET_NAME = "SYNTH_ML"
SPLITS = ("train", "val", "test")
MASK_SPLITS = ("val", "test")
CONFIG_FILENAME = "synth_ml_config.json"
FORMAT_VERSION = 1
DEFAULTS = dict(seed=0, image_size=96, num_classes=8, train_images=480, val_images=40,
                test_images=120)


def _voc_palette() -> list[int]:
    """PASCAL VOC's colour map (index -> RGB) for 256 indices."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


VOC_PALETTE = _voc_palette()


def _make_image(rng: np.random.Generator, specs, image_size: int
                ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(RGB image, class-index mask, classes present, ascending)."""
    w = int(rng.integers(int(0.8 * image_size), image_size + 1))
    h = int(rng.integers(int(0.8 * image_size), image_size + 1))
    count = 2 if rng.random() < 0.6 else 3
    classes = sorted(int(c) for c in rng.choice(len(specs), count, replace=False))
    placed = []
    for label in classes:
        stamp = box = None
        for _ in range(20):
            stamp = _sample_stamp(rng, _unit_polygons(specs[label].shape), (0.06, 0.22), w, h)
            box = None if stamp is None else _place(rng, stamp, w, h,
                                                    [b for _, _, b in placed], gap=2)
            if box is not None:
                break
        if box is not None:
            placed.append((label, stamp, box))
    canvas = _background(rng, w, h)
    for _ in range(int(rng.integers(2, 5))):  # distractors: blobs in other looks
        stamp = _sample_stamp(rng, _blob_polygon(rng), (0.01, 0.04), w, h)
        if stamp is None:
            continue
        box = _place(rng, stamp, w, h, [b for _, _, b in placed], gap=2, tries=15)
        if box is None:
            continue
        palette = list(_PALETTES)[int(rng.integers(len(_PALETTES)))]
        a, b = (_jitter_colour(rng, c) for c in _PALETTES[palette])
        _paint(canvas, stamp, box[0], box[1], _texture(rng, "solid", stamp, a, b),
               float(rng.uniform(0.35, 0.8)))
    _draw_lines(rng, canvas)
    mask = np.zeros((h, w), np.uint8)
    outline = np.zeros((h, w), bool)
    for label, stamp, (x0, y0, x1, y1) in placed:
        spec = specs[label]
        a, b = (_jitter_colour(rng, c) for c in _PALETTES[spec.palette])
        _paint(canvas, stamp, x0, y0, _texture(rng, spec.texture, stamp, a, b))
        full = np.zeros((h, w), np.uint8)
        full[y0:y1 + 1, x0:x1 + 1] = stamp.mask
        mask[full > 0] = label + 1
        kernel = np.ones((3, 3), np.uint8)
        outline |= cv2.dilate(full, kernel) != cv2.erode(full, kernel)
    mask[outline] = 255
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(
        rng.uniform(1.5, 4.0))
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return image, mask, sorted({label for label, _, _ in placed})


def _config(params: dict) -> dict:
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown SYNTH_ML argument(s): {sorted(unknown)}")
    full = {**DEFAULTS, **params}
    if full["image_size"] < 32 or min(full[f"{s}_images"] for s in SPLITS) < 1:
        raise ValueError("SYNTH_ML needs image_size >= 32 and at least one image per split")
    if not 3 <= full["num_classes"] <= 40:
        raise ValueError(f"num_classes must be between 3 and 40, got {full['num_classes']}")
    return {"dataset": DATASET_NAME, "format_version": FORMAT_VERSION, **full,
            "classes": [s.name for s in _class_specs(full["num_classes"])]}


def generate_synth_ml(data_root: str, metadata_root: str, mask_root: str | None = None,
                      **params) -> None:
    """Write SYNTH_ML (replacing an older one); the config is written last, so
    an interrupted run is regenerated by :func:`ensure_synth_ml`."""
    config = _config(params)
    mask_root = data_root if mask_root is None else mask_root
    specs = _class_specs(config["num_classes"])
    image_dir = os.path.join(data_root, DATASET_NAME)
    mask_dir = os.path.join(mask_root, DATASET_NAME)
    meta_dir = os.path.join(metadata_root, DATASET_NAME)
    config_path = os.path.join(image_dir, CONFIG_FILENAME)
    start = time.perf_counter()
    if os.path.exists(config_path):
        os.remove(config_path)
    for split in SPLITS:
        for folder in (os.path.join(image_dir, split), os.path.join(mask_dir, "masks", split),
                       os.path.join(meta_dir, split)):
            if os.path.isdir(folder):
                shutil.rmtree(folder)
    for number, split in enumerate(SPLITS):
        ids, labels, sizes, masks = [], [], [], []
        for index in range(config[f"{split}_images"]):
            rng = np.random.default_rng([config["seed"], number, index])
            image, mask, classes = _make_image(rng, specs, config["image_size"])
            image_id = f"{split}/{split}_{index:05d}.png"
            _write_png(os.path.join(image_dir, image_id), image)
            ids.append(image_id)
            labels.extend(f"{image_id},{c}" for c in classes)
            sizes.append(f"{image_id},{image.shape[1]},{image.shape[0]}")
            if split in MASK_SPLITS:
                mask_rel = f"masks/{split}/{split}_{index:05d}.png"
                path = os.path.join(mask_dir, mask_rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                png = Image.fromarray(mask, "P")
                png.putpalette(VOC_PALETTE)
                png.save(path)
                masks.append(f"{image_id},{mask_rel}")
        folder = os.path.join(meta_dir, split)
        _write_lines(os.path.join(folder, "image_ids.txt"), ids)
        _write_lines(os.path.join(folder, "class_labels.txt"), labels)
        _write_lines(os.path.join(folder, "image_sizes.txt"), sizes)
        if split in MASK_SPLITS:
            _write_lines(os.path.join(folder, "segmentation.txt"), masks)
    os.makedirs(image_dir, exist_ok=True)
    with open(config_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    os.replace(config_path + ".tmp", config_path)
    log.info("generated SYNTH_ML (%d classes, %s images) in %.1f s under %s",
             config["num_classes"], "/".join(str(config[f"{s}_images"]) for s in SPLITS),
             time.perf_counter() - start, image_dir)


def ensure_synth_ml(data_root: str, metadata_root: str, mask_root: str | None = None,
                    **params) -> bool:
    """Generate SYNTH_ML unless the same generation is complete; True when it generated."""
    wanted = _config(params)
    try:
        with open(os.path.join(data_root, DATASET_NAME, CONFIG_FILENAME), encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, ValueError):
        stored = None
    complete = all(os.path.isfile(os.path.join(metadata_root, DATASET_NAME, s, "image_ids.txt"))
                   for s in SPLITS)
    if stored == wanted and complete:
        return False
    generate_synth_ml(data_root, metadata_root, mask_root, **params)
    return True

"""SYNTH: a small synthetic WSOL dataset that is generated, not downloaded.

Why it exists: ``python main.py`` with no arguments must train and score a
CAM network on a laptop CPU in minutes, with both box metrics (MaxBoxAccV2,
GT-known Loc) and mask metrics (PxAP), without any dataset download.  The
generator writes images plus wsolevaluation-style metadata (docs/protocol.md):

- images   ``<data_root>/SYNTH/<split>/<class>/<split>_<index:06d>.png``
- metadata ``<metadata_root>/SYNTH/<split>/{image_ids,class_labels,
  image_sizes,localization}.txt`` and, for val/test,
  ``localization_masks.txt`` (``path,mask_png,ignore_png``)
- masks    ``<mask_root>/SYNTH/masks/<split>/<class>/...`` (uint8, 255 = object)

Image paths in the metadata are relative to ``<data_root>/SYNTH``; mask paths
are relative to ``<mask_root>/SYNTH`` (``mask_root`` defaults to
``data_root``).

What an image holds, so that neither classification nor localization is
trivial:

- the object(s): a class is a (shape, texture, colour pair) combination and
  every single attribute value is shared by at least two of the default
  classes, so no single cue decides the class.  Objects are randomly
  scaled (box area 5%-60% of the image), stretched, rotated and placed; about
  one image in five holds two instances (two boxes, two instance masks);
- a cluttered background: low-frequency colour noise, a gradient and random
  lines;
- distractors that are not objects (no box, not in any mask): small pieces of
  other classes' shapes and patches of their textures, often semi-transparent,
  kept clear of the object boxes and never in the class's own texture and
  colours;
- in about a quarter of the images a faded, sometimes partly cut-off,
  look-alike of the image's own class; in val/test its box is the image's
  ignore region (like OpenImages' ignore boxes for ambiguous areas).

Everything is drawn from ``numpy.random.default_rng`` streams keyed by
(seed, split, index), so the same arguments give byte-identical files and the
class definitions do not depend on the seed.  Boxes are the exact bounding
boxes (inclusive pixels) of the instance masks, and the masks are exactly the
pixels the objects cover.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

__all__ = [
    "SYNTH_CLASSES",
    "DATASET_NAME",
    "CONFIG_FILENAME",
    "FORMAT_VERSION",
    "BOX_AREA_RANGE",
    "SPLITS",
    "synth_class_names",
    "generate_synth",
    "ensure_synth",
    "main",
]

log = logging.getLogger(__name__)

DATASET_NAME = "SYNTH"
CONFIG_FILENAME = "synth_config.json"
# Bump whenever the pixels or the file layout change, so ensure_synth
# regenerates datasets written by an older generator.
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
MASK_SPLITS = ("val", "test")
# Allowed area of an instance box as a fraction of the image area.
BOX_AREA_RANGE = (0.05, 0.60)

_DEFAULTS = {
    "seed": 0,
    "image_size": 128,
    "train_per_class": 100,
    "val_per_class": 10,
    "test_per_class": 30,
    "num_classes": 10,
}

# --------------------------------------------------------------------------
# class definitions
# --------------------------------------------------------------------------

_SHAPES = ("disc", "square", "triangle", "cross", "star", "ring", "diamond", "hexagon")
_TEXTURES = ("solid", "stripes", "checker", "dots")
# Colour pairs (RGB): primary fill and secondary colour of the texture.
_PALETTES = {
    "red-yellow": ((205, 35, 35), (245, 205, 50)),
    "blue-white": ((35, 75, 200), (235, 235, 240)),
    "green-black": ((40, 165, 65), (30, 30, 30)),
    "purple-orange": ((135, 55, 175), (245, 140, 35)),
    "cyan-magenta": ((40, 190, 205), (205, 45, 160)),
    "brown-pink": ((125, 75, 35), (245, 160, 190)),
}

# The ten default classes.  Each shape occurs twice, each texture two or three
# times and each colour pair twice, so a classifier has to combine cues.
_BASE_CLASSES = (
    ("disc", "stripes", "red-yellow"),
    ("disc", "checker", "blue-white"),
    ("square", "stripes", "blue-white"),
    ("square", "dots", "green-black"),
    ("triangle", "checker", "red-yellow"),
    ("triangle", "solid", "purple-orange"),
    ("cross", "dots", "purple-orange"),
    ("cross", "stripes", "cyan-magenta"),
    ("star", "solid", "green-black"),
    ("star", "checker", "cyan-magenta"),
)


@dataclass(frozen=True)
class _ClassSpec:
    shape: str
    texture: str
    palette: str

    @property
    def name(self) -> str:
        return f"{self.shape}_{self.texture}_{self.palette}"


def _class_specs(num_classes: int) -> list[_ClassSpec]:
    """The first ``num_classes`` class definitions (independent of the seed).

    Beyond the ten hand-picked classes, the remaining attribute combinations
    follow in a fixed pseudo-random order."""
    combos = [c for c in itertools.product(_SHAPES, _TEXTURES, _PALETTES)
              if c not in _BASE_CLASSES]
    order = np.random.default_rng(20200331).permutation(len(combos))
    all_specs = list(_BASE_CLASSES) + [combos[i] for i in order]
    if not 1 <= num_classes <= len(all_specs):
        raise ValueError(f"num_classes must be between 1 and {len(all_specs)}, "
                         f"got {num_classes}")
    return [_ClassSpec(*c) for c in all_specs[:num_classes]]


def synth_class_names(num_classes: int = 10) -> list[str]:
    """Class names (index = label) of a SYNTH set with ``num_classes`` classes."""
    return [spec.name for spec in _class_specs(num_classes)]


SYNTH_CLASSES: list[str] = synth_class_names(_DEFAULTS["num_classes"])

# --------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------


def _circle(n: int, radius: float = 1.0, start: float = 0.0) -> np.ndarray:
    t = start + np.arange(n) * (2 * math.pi / n)
    return np.stack([np.cos(t), np.sin(t)], axis=1) * radius


def _unit_polygons(shape: str) -> list[tuple[np.ndarray, int]]:
    """(vertices in [-1, 1]^2, fill value) pairs; later ones paint over earlier
    ones, so value 0 cuts holes (the ring)."""
    if shape == "disc":
        return [(_circle(48), 1)]
    if shape == "ring":
        return [(_circle(48), 1), (_circle(48, 0.55), 0)]
    if shape == "square":
        return [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.75, 1)]
    if shape == "triangle":
        return [(_circle(3, 1.0, -math.pi / 2), 1)]
    if shape == "hexagon":
        return [(_circle(6), 1)]
    if shape == "diamond":
        return [(np.array([[0, -1], [0.65, 0], [0, 1], [-0.65, 0]], float), 1)]
    if shape == "star":
        outer = _circle(5, 1.0, -math.pi / 2)
        inner = _circle(5, 0.45, -math.pi / 2 + math.pi / 5)
        return [(np.stack([outer, inner], axis=1).reshape(-1, 2), 1)]
    if shape == "cross":
        a, b = 0.33, 1.0
        pts = [[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a],
               [a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a]]
        return [(np.array(pts, float), 1)]
    raise ValueError(f"unknown shape {shape!r}")


def _blob_polygon(rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """An irregular star-convex blob (the outline of a texture patch)."""
    n = int(rng.integers(6, 11))
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radii = rng.uniform(0.55, 1.0, n)
    return [(np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None], 1)]


@dataclass
class _Stamp:
    """A rendered shape, cropped to its exact bounding box.

    ``mask`` is a bool array (h, w) with pixels on every border row/column;
    ``cx, cy`` is the shape centre in crop coordinates (for the texture)."""
    mask: np.ndarray
    cx: float
    cy: float
    radius: float
    angle: float

    @property
    def h(self) -> int:
        return self.mask.shape[0]

    @property
    def w(self) -> int:
        return self.mask.shape[1]


def _render(polygons: list[tuple[np.ndarray, int]], radius: float, aspect: float,
            angle: float, cut: tuple[float, float] | None = None) -> _Stamp | None:
    """Rasterise polygons scaled by ``radius`` (y squeezed by ``aspect``),
    rotated by ``angle``; ``cut = (direction, offset)`` keeps only the side of
    a line (a piece of the shape).  None when nothing is left."""
    half = int(math.ceil(radius)) + 2
    size = 2 * half + 1
    canvas = np.zeros((size, size), np.uint8)
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    for vertices, value in polygons:
        pts = vertices * np.array([1.0, aspect]) * radius
        pts = pts @ rot.T + half
        fixed = np.round(pts * 16).astype(np.int32)  # 4 fractional bits
        cv2.fillPoly(canvas, [fixed], int(value), lineType=cv2.LINE_8, shift=4)
    mask = canvas > 0
    if cut is not None:
        direction, offset = cut
        ys, xs = np.ogrid[0:size, 0:size]
        side = (xs - half) * math.cos(direction) + (ys - half) * math.sin(direction)
        mask &= side < offset * radius
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
    return _Stamp(mask[y0:y1 + 1, x0:x1 + 1].copy(), half - x0, half - y0, radius, angle)


def _sample_stamp(rng: np.random.Generator, polygons, area_range: tuple[float, float],
                  image_w: int, image_h: int, cut: bool = False,
                  bounds: tuple[float, float] | None = None) -> _Stamp | None:
    """A shape whose bounding-box area is about a log-uniform fraction of the
    image in ``area_range`` and, when ``bounds`` is given, strictly within
    those fractions.  The first render measures the box, the second rescales
    to the target."""
    image_area = image_w * image_h
    lo, hi = bounds if bounds is not None else (0.0, 1.0)
    for _ in range(30):
        target = math.exp(rng.uniform(math.log(area_range[0]), math.log(area_range[1])))
        target *= image_area
        aspect = float(rng.uniform(0.7, 1.0))
        angle = float(rng.uniform(0, 2 * math.pi))
        cut_line = None
        if cut:
            cut_line = (float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(-0.1, 0.5)))
        radius = math.sqrt(target) / 2
        stamp = _render(polygons, radius, aspect, angle, cut_line)
        if stamp is None:
            continue
        radius *= math.sqrt(target / (stamp.h * stamp.w))
        stamp = _render(polygons, radius, aspect, angle, cut_line)
        if stamp is None or stamp.w > image_w or stamp.h > image_h:
            continue
        if lo * image_area <= stamp.h * stamp.w <= hi * image_area:
            return stamp
    return None

# --------------------------------------------------------------------------
# painting
# --------------------------------------------------------------------------


def _jitter_colour(rng: np.random.Generator, colour: Sequence[int]) -> np.ndarray:
    """Per-image colour variation, so classes are not told apart by exact RGB."""
    jittered = (np.asarray(colour, np.float32) + rng.normal(0, 12, 3)) * rng.uniform(0.85, 1.1)
    return np.clip(jittered, 0, 255).astype(np.float32)


def _texture(rng: np.random.Generator, texture: str, stamp: _Stamp,
             colour_a: np.ndarray, colour_b: np.ndarray) -> np.ndarray:
    """RGB float image (h, w, 3) of the texture over the stamp's crop, in the
    object's own frame (it scales and rotates with the object)."""
    h, w, r = stamp.h, stamp.w, stamp.radius
    dx = np.arange(w, dtype=np.float32)[None, :] - np.float32(stamp.cx)
    dy = np.arange(h, dtype=np.float32)[:, None] - np.float32(stamp.cy)
    theta = stamp.angle + rng.uniform(0, math.pi)
    c, s = math.cos(theta), math.sin(theta)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    if texture == "solid":
        width = max(1, int(round(r * 0.12)))
        eroded = cv2.erode(stamp.mask.astype(np.uint8), np.ones((3, 3), np.uint8),
                           iterations=width, borderValue=0)
        second = stamp.mask & (eroded == 0)
    elif texture == "stripes":
        band = max(2.0, r * rng.uniform(0.16, 0.26))
        second = np.floor((u + rng.uniform(0, band)) / band).astype(np.int64) % 2 == 1
    elif texture == "checker":
        cell = max(2.5, r * rng.uniform(0.28, 0.42))
        phase_u, phase_v = rng.uniform(0, cell, 2)
        second = (np.floor((u + phase_u) / cell) + np.floor((v + phase_v) / cell)) % 2 == 1
    elif texture == "dots":
        spacing = max(5.0, r * rng.uniform(0.42, 0.6))
        phase_u, phase_v = rng.uniform(0, spacing, 2)
        du = u + phase_u - spacing * np.round((u + phase_u) / spacing)
        dv = v + phase_v - spacing * np.round((v + phase_v) / spacing)
        second = du * du + dv * dv < (0.32 * spacing) ** 2
    else:
        raise ValueError(f"unknown texture {texture!r}")
    second = np.broadcast_to(second, (h, w))
    out = np.where(second[..., None], colour_b, colour_a)
    # Gentle directional shading, as if lit from one side.
    light = rng.uniform(0, 2 * math.pi)
    shade = 1.0 + 0.12 * (dx * math.cos(light) + dy * math.sin(light)) / max(r, 1.0)
    return out * shade[..., None].astype(np.float32)


def _paint(canvas: np.ndarray, stamp: _Stamp, x0: int, y0: int, rgb: np.ndarray,
           alpha: float = 1.0) -> None:
    region = canvas[y0:y0 + stamp.h, x0:x0 + stamp.w]
    m = stamp.mask
    if alpha >= 1.0:
        region[m] = rgb[m]
    else:
        region[m] = (1 - alpha) * region[m] + alpha * rgb[m]


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Low-frequency, mostly desaturated colour noise plus a brightness gradient."""
    g = int(rng.integers(2, 5))
    cells = rng.uniform(40, 215, (g, g, 3))
    grey = cells.mean(axis=2, keepdims=True)
    cells = grey + (cells - grey) * rng.uniform(0.25, 0.9)
    base = cv2.resize(cells.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    fine = cv2.resize(rng.normal(0, 12, (8, 8, 3)).astype(np.float32), (w, h),
                      interpolation=cv2.INTER_LINEAR)
    gx, gy = rng.uniform(-45, 45, 2)
    gradient = ((np.arange(w, dtype=np.float32)[None, :] / w - 0.5) * np.float32(gx)
                + (np.arange(h, dtype=np.float32)[:, None] / h - 0.5) * np.float32(gy))
    return np.clip(base + fine + gradient[..., None], 0, 255).astype(np.float32)


def _draw_lines(rng: np.random.Generator, canvas: np.ndarray) -> None:
    h, w = canvas.shape[:2]
    for _ in range(int(rng.integers(1, 6))):
        p0 = (int(rng.integers(-10, w + 10)), int(rng.integers(-10, h + 10)))
        p1 = (int(rng.integers(-10, w + 10)), int(rng.integers(-10, h + 10)))
        if rng.random() < 0.5:
            colour = rng.uniform(0, 255, 3)
        else:
            colour = np.full(3, rng.uniform(0, 255))
        cv2.line(canvas, p0, p1, tuple(float(c) for c in colour),
                 int(rng.integers(1, 3)), lineType=cv2.LINE_AA)

# --------------------------------------------------------------------------
# placement
# --------------------------------------------------------------------------

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 inclusive


def _clear(box: Box, others: Sequence[Box], gap: int) -> bool:
    """Whether ``box`` keeps at least ``gap`` empty pixels to every other box."""
    x0, y0, x1, y1 = box
    for a0, b0, a1, b1 in others:
        if x0 <= a1 + gap and a0 <= x1 + gap and y0 <= b1 + gap and b0 <= y1 + gap:
            return False
    return True


def _place(rng: np.random.Generator, stamp: _Stamp, w: int, h: int,
           avoid: Sequence[Box], gap: int, tries: int = 40) -> Box | None:
    for _ in range(tries):
        x0 = int(rng.integers(0, w - stamp.w + 1))
        y0 = int(rng.integers(0, h - stamp.h + 1))
        box = (x0, y0, x0 + stamp.w - 1, y0 + stamp.h - 1)
        if _clear(box, avoid, gap):
            return box
    return None

# --------------------------------------------------------------------------
# one image
# --------------------------------------------------------------------------


@dataclass
class _Sample:
    image: np.ndarray             # uint8 RGB (h, w, 3)
    boxes: list[Box]              # one per instance
    masks: list[np.ndarray]       # bool (h, w) per instance
    ignore: np.ndarray | None     # bool (h, w) or None


_TWO_INSTANCE_PROB = 0.2
_LOOKALIKE_PROB = 0.25


def _make_image(rng: np.random.Generator, label: int, specs: list[_ClassSpec],
                image_size: int) -> _Sample:
    spec = specs[label]
    w = int(rng.integers(int(math.ceil(0.75 * image_size)), image_size + 1))
    h = int(rng.integers(int(math.ceil(0.75 * image_size)), image_size + 1))
    lo, hi = BOX_AREA_RANGE

    # 1. the instances
    polygons = _unit_polygons(spec.shape)
    placed: list[tuple[_Stamp, Box]] = []
    if rng.random() < _TWO_INSTANCE_PROB:
        for _ in range(2):
            stamp = _sample_stamp(rng, polygons, (lo, 0.2), w, h, bounds=(lo, hi))
            if stamp is None:
                break
            box = _place(rng, stamp, w, h, [b for _, b in placed], gap=3)
            if box is None:
                break
            placed.append((stamp, box))
        if len(placed) < 2:
            placed = []
    if not placed:
        stamp = None
        for _ in range(100):  # one call nearly always succeeds
            stamp = _sample_stamp(rng, polygons, (0.06, 0.55), w, h, bounds=(lo, hi))
            if stamp is not None:
                break
        if stamp is None:
            raise RuntimeError(f"cannot fit a {spec.shape} into a {w}x{h} image")
        placed.append((stamp, _place(rng, stamp, w, h, [], gap=0)))
    object_boxes = [b for _, b in placed]

    # 2. a faded / partly cut-off look-alike of the class (ignore region)
    lookalike = None
    ignore_box = None
    if rng.random() < _LOOKALIKE_PROB:
        stamp = _sample_stamp(rng, polygons, (0.03, 0.12), w, h,
                              cut=rng.random() < 0.5)
        if stamp is not None:
            box = _place(rng, stamp, w, h, object_boxes, gap=5)
            if box is not None:
                lookalike = (stamp, box, float(rng.uniform(0.25, 0.45)))
                ignore_box = (max(box[0] - 2, 0), max(box[1] - 2, 0),
                              min(box[2] + 2, w - 1), min(box[3] + 2, h - 1))
    reserved = object_boxes + ([ignore_box] if ignore_box else [])

    # 3. distractors: pieces of other classes' shapes, patches of their textures
    # A distractor never carries the class's own texture in the class's own
    # colours: the only own-class look-alike is the one under the ignore box.
    others = [s for i, s in enumerate(specs) if i != label] or [
        _ClassSpec(*c) for c in _BASE_CLASSES if _ClassSpec(*c) != spec]
    looks = [(t, p) for t in dict.fromkeys(s.texture for s in others)
             for p in dict.fromkeys(s.palette for s in others)
             if (t, p) != (spec.texture, spec.palette)] or [
        (t, p) for t in _TEXTURES for p in _PALETTES if (t, p) != (spec.texture, spec.palette)]
    distractors = []
    for _ in range(int(rng.integers(3, 7))):
        if rng.random() < 0.5:
            source = others[int(rng.integers(len(others)))]
            stamp = _sample_stamp(rng, _unit_polygons(source.shape), (0.01, 0.05), w, h,
                                  cut=True)
            alpha = float(rng.uniform(0.5, 1.0))
        else:
            stamp = _sample_stamp(rng, _blob_polygon(rng), (0.01, 0.04), w, h)
            alpha = float(rng.uniform(0.35, 0.85))
        texture, palette = looks[int(rng.integers(len(looks)))]
        if stamp is None:
            continue
        box = _place(rng, stamp, w, h, reserved, gap=2, tries=15)
        if box is not None:
            distractors.append((stamp, box, alpha, texture, palette))

    # 4. draw: background, distractors, lines, look-alike, objects, noise
    canvas = _background(rng, w, h)
    for stamp, box, alpha, texture, palette in distractors:
        a, b = (_jitter_colour(rng, c) for c in _PALETTES[palette])
        _paint(canvas, stamp, box[0], box[1], _texture(rng, texture, stamp, a, b), alpha)
    _draw_lines(rng, canvas)
    colour_a, colour_b = (_jitter_colour(rng, c) for c in _PALETTES[spec.palette])
    if lookalike is not None:
        stamp, box, alpha = lookalike
        _paint(canvas, stamp, box[0], box[1],
               _texture(rng, spec.texture, stamp, colour_a, colour_b), alpha)
    masks = []
    for stamp, box in placed:
        _paint(canvas, stamp, box[0], box[1],
               _texture(rng, spec.texture, stamp, colour_a, colour_b))
        full = np.zeros((h, w), bool)
        full[box[1]:box[3] + 1, box[0]:box[2] + 1] = stamp.mask
        masks.append(full)
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(
        rng.uniform(1.5, 5.0))
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)

    ignore = None
    if ignore_box is not None:
        ignore = np.zeros((h, w), bool)
        ignore[ignore_box[1]:ignore_box[3] + 1, ignore_box[0]:ignore_box[2] + 1] = True
    return _Sample(image, object_boxes, masks, ignore)

# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------


def _write_png(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if array.ndim == 3:
        array = np.ascontiguousarray(array[..., ::-1])  # RGB -> BGR for OpenCV
    if not cv2.imwrite(path, array):
        raise OSError(f"could not write {path}")


def _write_lines(path: str, lines: list[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)


def _relative(path: str, start: str) -> str:
    """``path`` relative to ``start`` in '/' form (stable when the project
    folder moves); absolute when no relative path exists."""
    try:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(start))
    except ValueError:  # other drive on Windows
        return os.path.abspath(path).replace(os.sep, "/")
    return rel.replace(os.sep, "/")


def _config(data_root: str, metadata_root: str, mask_root: str | None,
            params: dict) -> dict:
    """Everything that determines the generated files (paths relative to
    data_root), compared by ensure_synth."""
    unknown = set(params) - set(_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown SYNTH generation argument(s): {sorted(unknown)}")
    full = {**_DEFAULTS, **params}
    for key, value in full.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{key} must be an int, got {value!r}")
        full[key] = int(value)
    if full["seed"] < 0:
        raise ValueError(f"seed must be >= 0, got {full['seed']}")
    if full["image_size"] < 32:
        raise ValueError(f"image_size must be >= 32, got {full['image_size']}")
    for split in SPLITS:
        if full[f"{split}_per_class"] < 1:
            raise ValueError(f"{split}_per_class must be >= 1, got {full[f'{split}_per_class']}")
    classes = synth_class_names(full["num_classes"])
    mask_root = data_root if mask_root is None else mask_root
    return {
        "dataset": DATASET_NAME,
        "format_version": FORMAT_VERSION,
        **full,
        "metadata_root": _relative(metadata_root, data_root),
        "mask_root": _relative(mask_root, data_root),
        "classes": classes,
    }


def _config_path(data_root: str) -> str:
    return os.path.join(data_root, DATASET_NAME, CONFIG_FILENAME)


def _split_seed(split: str) -> int:
    return SPLITS.index(split)


def generate_synth(data_root: str, metadata_root: str, mask_root: str | None = None,
                   seed: int = 0, image_size: int = 128, train_per_class: int = 100,
                   val_per_class: int = 10, test_per_class: int = 30,
                   num_classes: int = 10) -> None:
    """Write the SYNTH images, masks and metadata (replacing an older SYNTH).

    The config file is removed first and written last, so an interrupted run
    leaves no config and ``ensure_synth`` regenerates.  Images of a split
    follow the labels 0, 1, ..., num_classes-1, 0, 1, ... so that any prefix
    of image_ids.txt is class-balanced."""
    params = dict(seed=seed, image_size=image_size, train_per_class=train_per_class,
                  val_per_class=val_per_class, test_per_class=test_per_class,
                  num_classes=num_classes)
    config = _config(data_root, metadata_root, mask_root, params)
    mask_root = data_root if mask_root is None else mask_root
    specs = _class_specs(num_classes)
    image_dir = os.path.join(data_root, DATASET_NAME)
    mask_dir = os.path.join(mask_root, DATASET_NAME)
    meta_dir = os.path.join(metadata_root, DATASET_NAME)

    start = time.perf_counter()
    os.makedirs(image_dir, exist_ok=True)
    if os.path.exists(_config_path(data_root)):
        os.remove(_config_path(data_root))
    for split in SPLITS:  # stale files of a larger earlier set must not remain
        for folder in (os.path.join(image_dir, split), os.path.join(mask_dir, "masks", split),
                       os.path.join(meta_dir, split)):
            if os.path.isdir(folder):
                shutil.rmtree(folder)

    for split in SPLITS:
        per_class = config[f"{split}_per_class"]
        ids, labels, sizes, boxes, mask_lines = [], [], [], [], []
        for index in range(per_class * num_classes):
            label = index % num_classes
            class_name = specs[label].name
            rng = np.random.default_rng([seed, _split_seed(split), index])
            sample = _make_image(rng, label, specs, image_size)
            stem = f"{split}_{index:06d}"
            image_id = f"{split}/{class_name}/{stem}.png"
            _write_png(os.path.join(image_dir, image_id), sample.image)
            h, w = sample.image.shape[:2]
            ids.append(image_id)
            labels.append(f"{image_id},{label}")
            sizes.append(f"{image_id},{w},{h}")
            boxes.extend(f"{image_id},{x0},{y0},{x1},{y1}" for x0, y0, x1, y1 in sample.boxes)
            if split in MASK_SPLITS:
                ignore_rel = ""
                if sample.ignore is not None:
                    ignore_rel = f"masks/{split}/{class_name}/{stem}_ignore.png"
                    _write_png(os.path.join(mask_dir, ignore_rel),
                               sample.ignore.astype(np.uint8) * 255)
                for k, mask in enumerate(sample.masks):
                    mask_rel = f"masks/{split}/{class_name}/{stem}_{k}.png"
                    _write_png(os.path.join(mask_dir, mask_rel), mask.astype(np.uint8) * 255)
                    mask_lines.append(f"{image_id},{mask_rel},{ignore_rel if k == 0 else ''}")
        split_meta = os.path.join(meta_dir, split)
        _write_lines(os.path.join(split_meta, "image_ids.txt"), ids)
        _write_lines(os.path.join(split_meta, "class_labels.txt"), labels)
        _write_lines(os.path.join(split_meta, "image_sizes.txt"), sizes)
        _write_lines(os.path.join(split_meta, "localization.txt"), boxes)
        if split in MASK_SPLITS:
            _write_lines(os.path.join(split_meta, "localization_masks.txt"), mask_lines)

    tmp = _config_path(data_root) + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, _config_path(data_root))
    log.info("generated SYNTH (%d classes, %s images per class) in %.1f s under %s",
             num_classes, "/".join(str(config[f"{s}_per_class"]) for s in SPLITS),
             time.perf_counter() - start, image_dir)


def _metadata_complete(metadata_root: str) -> bool:
    for split in SPLITS:
        names = ["image_ids", "class_labels", "image_sizes", "localization"]
        if split in MASK_SPLITS:
            names.append("localization_masks")
        for name in names:
            if not os.path.isfile(os.path.join(metadata_root, DATASET_NAME, split,
                                               f"{name}.txt")):
                return False
    return True


def ensure_synth(data_root: str, metadata_root: str, mask_root: str | None = None,
                 **kwargs) -> bool:
    """Generate SYNTH unless an identical, complete generation is already there.

    ``kwargs`` are generate_synth's keyword arguments (defaults otherwise).
    Regenerates when the config file is missing (never written, or the last
    run was interrupted), differs from the requested arguments or format
    version, or a metadata file is missing.  Returns True when it generated."""
    wanted = _config(data_root, metadata_root, mask_root, kwargs)
    try:
        with open(_config_path(data_root), encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, ValueError):
        stored = None
    if stored == wanted and _metadata_complete(metadata_root):
        return False
    if stored is not None and stored != wanted:
        log.info("SYNTH config changed; regenerating")
    generate_synth(data_root, metadata_root, mask_root, **kwargs)
    return True

# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m wsol.data.synth",
        description="Generate the synthetic SYNTH WSOL dataset (images, instance masks, "
                    "ignore masks and wsolevaluation-style metadata).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_root", default="dataset",
                   help="images go to <data_root>/SYNTH/<split>/<class>/")
    p.add_argument("--metadata_root", default="metadata",
                   help="metadata goes to <metadata_root>/SYNTH/<split>/")
    p.add_argument("--mask_root", default=None,
                   help="masks go to <mask_root>/SYNTH/masks/; None = --data_root")
    helps = {"seed": "random seed; the same arguments give byte-identical files",
             "image_size": "largest image side; each side is drawn from [0.75, 1] x this",
             "train_per_class": "training images per class",
             "val_per_class": "validation images per class",
             "test_per_class": "test images per class",
             "num_classes": f"number of classes (the first {len(SYNTH_CLASSES)} are the "
                            "hand-designed defaults)"}
    for key, value in _DEFAULTS.items():
        p.add_argument(f"--{key}", type=int, default=value, help=helps[key])
    p.add_argument("--if_needed", action="store_true",
                   help="only generate when missing or generated with other arguments")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    params = {key: vars(args)[key] for key in _DEFAULTS}
    start = time.perf_counter()
    try:
        if args.if_needed:
            generated = ensure_synth(args.data_root, args.metadata_root, args.mask_root,
                                     **params)
        else:
            generate_synth(args.data_root, args.metadata_root, args.mask_root, **params)
            generated = True
    except (ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    where = os.path.join(args.data_root, DATASET_NAME)
    if generated:
        print(f"SYNTH written to {where} in {time.perf_counter() - start:.1f} s")
    else:
        print(f"SYNTH in {where} is up to date; nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())

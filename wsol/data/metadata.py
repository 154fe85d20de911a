"""Metadata of a split in the wsolevaluation format, and its ground truth.

A split's metadata lives in ``<metadata_root>/<split>/`` as comma-separated
text files (docs/protocol.md):

- ``image_ids.txt``          ``path``
- ``image_ids_proxy.txt``    ``path``  (optional proxy training subset)
- ``class_labels.txt``       ``path,label``
- ``image_sizes.txt``        ``path,width,height``
- ``localization.txt``       ``path,x0,y0,x1,y1`` (boxes, one line per box) or
                             ``path,mask_png,ignore_png`` (OpenImages masks)
- ``localization_masks.txt`` masks of a dataset that also has boxes (SYNTH)
- ``segmentation.txt``       ``path,mask_png`` (class-index masks of a
                             multi-label segmentation dataset: VOC2012, SYNTH_ML,
                             whose ``class_labels.txt`` has a line per class)

Every reader names the file and line of a malformed entry.
:class:`GroundTruth` loads a split's boxes and masks once, at the evaluation
size, for every evaluator and the overlays.
"""
from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np

from wsol.errors import UserError
from wsol.protocol import RESIZE_LENGTH, get_mask, resize_bbox

__all__ = ["MetadataError", "configure_metadata", "get_image_ids", "get_class_labels",
           "get_multi_labels", "get_segmentation_paths",
           "get_bounding_boxes", "get_image_sizes", "get_mask_paths", "check_ids_present",
           "check_image_sizes", "GroundTruth"]


class MetadataError(UserError):
    """A metadata file is missing or has a malformed line."""


def configure_metadata(metadata_root: str) -> dict:
    """Paths of one split's metadata files (``metadata_root`` = the split folder)."""
    if not os.path.isdir(metadata_root):
        raise MetadataError(
            f"metadata folder not found: {metadata_root}. Generate it with the "
            f"dataset's scripts/prepare_*.py (or check --metadata_root).")
    join = os.path.join
    return {
        "root": metadata_root,
        "image_ids": join(metadata_root, "image_ids.txt"),
        "image_ids_proxy": join(metadata_root, "image_ids_proxy.txt"),
        "class_labels": join(metadata_root, "class_labels.txt"),
        "image_sizes": join(metadata_root, "image_sizes.txt"),
        "localization": join(metadata_root, "localization.txt"),
        "localization_masks": join(metadata_root, "localization_masks.txt"),
        "segmentation": join(metadata_root, "segmentation.txt"),
    }


def _read_rows(path: str, num_fields: tuple[int, ...]) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) of a comma-separated metadata file."""
    if not os.path.isfile(path):
        raise MetadataError(f"metadata file not found: {path}")
    # utf-8-sig: a byte-order mark (Windows editors write one) is not part
    # of the first image id.
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split(",")
            if len(fields) not in num_fields:
                expected = " or ".join(str(n) for n in num_fields)
                raise MetadataError(
                    f"{path}:{line_no}: expected {expected} comma-separated "
                    f"fields, got {len(fields)}: {line!r}")
            yield line_no, [x.strip() for x in fields]


def _to_number(path: str, line_no: int, value: str, kind: type):
    try:
        number = kind(value)
    except ValueError:
        raise MetadataError(
            f"{path}:{line_no}: {value!r} is not a valid {kind.__name__}") from None
    if not math.isfinite(number):
        raise MetadataError(f"{path}:{line_no}: {value!r} is not a finite number")
    return number


class _Unique:
    """Refuses a second line for the same image id, naming both lines (a
    duplicate would be scored twice, or silently take the last value)."""

    def __init__(self, path: str):
        self.path = path
        self.lines: dict[str, int] = {}

    def check(self, image_id: str, line_no: int) -> None:
        first = self.lines.setdefault(image_id, line_no)
        if first != line_no:
            raise MetadataError(f"{self.path}:{line_no}: image id {image_id!r} is listed "
                                f"again (first on line {first}); remove the duplicate")


def get_image_ids(metadata: dict, proxy: bool = False) -> list[str]:
    """Image ids in file order (``image_ids_proxy.txt`` when ``proxy``)."""
    path = metadata["image_ids_proxy" if proxy else "image_ids"]
    unique = _Unique(path)
    ids = []
    for line_no, (image_id,) in _read_rows(path, (1,)):
        unique.check(image_id, line_no)
        ids.append(image_id)
    return ids


def get_class_labels(metadata: dict) -> dict[str, int]:
    path = metadata["class_labels"]
    unique = _Unique(path)
    labels = {}
    for line_no, (image_id, label) in _read_rows(path, (2,)):
        unique.check(image_id, line_no)
        labels[image_id] = _to_number(path, line_no, label, int)
        if labels[image_id] < 0:
            raise MetadataError(f"{path}:{line_no}: negative class label {label}")
    return labels


def get_multi_labels(metadata: dict) -> dict[str, list[int]]:
    """Every class of each image, in file order, for multi-label datasets
    (PASCAL VOC, SYNTH_ML): ``class_labels.txt`` holds one line per (image,
    class), as ``localization.txt`` holds one line per box.  A repeated
    (image, class) pair is refused with its line."""
    path = metadata["class_labels"]
    labels: dict[str, list[int]] = {}
    seen: dict[tuple[str, int], int] = {}
    for line_no, (image_id, label) in _read_rows(path, (2,)):
        value = _to_number(path, line_no, label, int)
        if value < 0:
            raise MetadataError(f"{path}:{line_no}: negative class label {label}")
        first = seen.setdefault((image_id, value), line_no)
        if first != line_no:
            raise MetadataError(f"{path}:{line_no}: class {value} of {image_id!r} is listed "
                                f"again (first on line {first}); remove the duplicate")
        labels.setdefault(image_id, []).append(value)
    return labels


def get_segmentation_paths(metadata: dict) -> dict[str, str]:
    """The class-index mask (VOC's SegmentationClass format: 0 background,
    class c as c + 1, 255 ignored) of each image, relative to the dataset's
    mask folder, from ``segmentation.txt`` (``path,mask_png``)."""
    path = metadata["segmentation"]
    unique = _Unique(path)
    masks = {}
    for line_no, (image_id, mask) in _read_rows(path, (2,)):
        unique.check(image_id, line_no)
        masks[image_id] = mask
    return masks


def get_bounding_boxes(metadata: dict) -> dict[str, list[list[float]]]:
    """All boxes ``[x0, y0, x1, y1]`` of each image (one line per box), in
    file order."""
    path = metadata["localization"]
    boxes: dict[str, list[list[float]]] = {}
    for line_no, (image_id, *coords) in _read_rows(path, (5,)):
        x0, y0, x1, y1 = (_to_number(path, line_no, c, float) for c in coords)
        if x1 < x0 or y1 < y0:
            raise MetadataError(
                f"{path}:{line_no}: box {coords} has x1 < x0 or y1 < y0")
        boxes.setdefault(image_id, []).append([x0, y0, x1, y1])
    return boxes


def get_image_sizes(metadata: dict) -> dict[str, tuple[int, int]]:
    """``(width, height)`` of each original image."""
    path = metadata["image_sizes"]
    unique = _Unique(path)
    sizes = {}
    for line_no, (image_id, w, h) in _read_rows(path, (3,)):
        unique.check(image_id, line_no)
        sizes[image_id] = (_to_number(path, line_no, w, int),
                           _to_number(path, line_no, h, int))
        if min(sizes[image_id]) <= 0:
            raise MetadataError(f"{path}:{line_no}: image size {w}x{h} is not positive")
    return sizes


def check_image_sizes(metadata: dict, image_root: str, workers: int = 8) -> None:
    """``image_sizes.txt`` must give each image's size as it is read (after its
    EXIF orientation): the GT boxes are rescaled with it, so a wrong size
    gives plausible, wrong box metrics.  A MetadataError with the count and
    the first three mismatches (file:line and both sizes); unreadable images
    are left to the loader, which names them."""
    from concurrent.futures import ThreadPoolExecutor

    from wsol.data.images import READ_ERRORS, upright_size
    path = metadata["image_sizes"]
    rows = [(line_no, image_id, _to_number(path, line_no, w, int),
             _to_number(path, line_no, h, int))
            for line_no, (image_id, w, h) in _read_rows(path, (3,))]

    def actual(image_id: str) -> tuple[int, int] | None:
        try:
            return upright_size(os.path.join(image_root, image_id))
        except READ_ERRORS:
            return None

    with ThreadPoolExecutor(max(1, workers)) as pool:  # headers only: I/O bound
        sizes = list(pool.map(actual, [image_id for _, image_id, _, _ in rows]))
    wrong = [f"{path}:{line_no} says {w}x{h} for {image_id}, which is {size[0]}x{size[1]}"
             for (line_no, image_id, w, h), size in zip(rows, sizes)
             if size is not None and size != (w, h)]
    if wrong:
        raise MetadataError(f"image_sizes.txt disagrees with {len(wrong)} of {len(rows)} "
                            f"images (after their EXIF orientation): {'; '.join(wrong[:3])}"
                            f"{'; ...' if len(wrong) > 3 else ''}. Fix it: the boxes are "
                            f"rescaled with these sizes (scripts/prepare_*.py read them from "
                            f"the images)")


def get_mask_paths(metadata: dict) -> tuple[dict[str, list[str]], dict[str, str | None]]:
    """Instance-mask paths and the ignore-mask path of each image.

    Reads ``localization_masks.txt`` when present (datasets with both boxes
    and masks), otherwise ``localization.txt`` (OpenImages).  Only the first
    line of an image carries its ignore png; later lines leave it empty.
    """
    path = metadata["localization_masks"]
    if not os.path.isfile(path):
        path = metadata["localization"]
    mask_paths: dict[str, list[str]] = {}
    ignore_paths: dict[str, str | None] = {}
    for _, (image_id, mask_path, ignore_path) in _read_rows(path, (3,)):
        if image_id not in mask_paths:
            ignore_paths[image_id] = ignore_path or None
        elif ignore_path and not ignore_paths[image_id]:
            ignore_paths[image_id] = ignore_path
        mask_paths.setdefault(image_id, []).append(mask_path)
    return mask_paths, ignore_paths


def check_ids_present(image_ids: list[str], table: dict, path: str,
                      what: str = "missing") -> None:
    """A :class:`MetadataError` naming ``path`` when an image id of
    image_ids.txt has no entry in ``table``."""
    missing = [i for i in image_ids if i not in table]
    if missing:
        raise MetadataError(
            f"{path}: {what} {len(missing)} image id(s) of image_ids.txt, "
            f"first: {missing[0]!r}")


class GroundTruth:
    """The boxes and masks of one split at the evaluation size, read once and
    shared by the box and mask evaluators and the overlays.

    ``boxes[image_id]``: GT boxes rescaled to ``resize_length`` (int64 [n, 4]),
    for every image of ``image_ids.txt``, checked against the image sizes;
    ``mask(image_id)``: the label map (1 foreground, 255 ignored, 0
    background), decoded on first use and kept bit-packed.
    """

    def __init__(self, metadata: dict, resize_length: int = RESIZE_LENGTH,
                 mask_root: str | None = None, boxes: bool = True, masks: bool = False):
        self.metadata = metadata
        self.resize_length = int(resize_length)
        self.mask_root = mask_root
        self.image_ids = get_image_ids(metadata)
        self.boxes: dict[str, np.ndarray] = self._resized_boxes() if boxes else {}
        self.mask_paths: dict[str, list[str]] = {}
        self.ignore_paths: dict[str, str | None] = {}
        if masks:
            if mask_root is None:
                raise ValueError("mask ground truth needs mask_root (the dataset's mask folder)")
            self.mask_paths, self.ignore_paths = get_mask_paths(metadata)
        self._packed: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _resized_boxes(self) -> dict[str, np.ndarray]:
        original = get_bounding_boxes(self.metadata)
        sizes = get_image_sizes(self.metadata)
        check_ids_present(self.image_ids, original, self.metadata["localization"], "no box for")
        check_ids_present(self.image_ids, sizes, self.metadata["image_sizes"], "no size for")
        size = (self.resize_length, self.resize_length)
        out = {}
        for image_id in self.image_ids:
            width, height = sizes[image_id]
            for x0, y0, x1, y1 in original[image_id]:
                if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                    raise MetadataError(
                        f"{self.metadata['localization']}: box {[x0, y0, x1, y1]} of "
                        f"{image_id!r} lies outside the image ({width}x{height} in "
                        f"image_sizes.txt)")
            out[image_id] = np.asarray([resize_bbox(box, sizes[image_id], size)
                                        for box in original[image_id]],
                                       dtype=np.int64).reshape(-1, 4)
        return out

    def mask(self, image_id: str) -> np.ndarray:
        packed = self._packed.get(image_id)
        shape = (self.resize_length, self.resize_length)
        if packed is not None:
            count = shape[0] * shape[1]
            foreground = np.unpackbits(packed[0], count=count).reshape(shape)
            ignore = np.unpackbits(packed[1], count=count).reshape(shape)
            return foreground + 255 * ignore
        if image_id not in self.mask_paths:
            raise KeyError(f"image id {image_id!r} has no mask in "
                           f"{self.metadata['root']}")
        mask = get_mask(self.mask_root, self.mask_paths[image_id],
                        self.ignore_paths.get(image_id), self.resize_length)
        self._packed[image_id] = (np.packbits(mask == 1), np.packbits(mask == 255))
        return mask

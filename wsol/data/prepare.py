"""Shared helpers of the ``scripts/prepare_*.py`` metadata converters.

Each converter reads one dataset's official distribution, builds a list of
:class:`Record` per split (image path relative to the dataset's image folder,
0-based class label, boxes or masks), checks everything it reads, and only
then writes ``<metadata_root>/<DATASET>/<split>/`` in the format of docs/protocol.md:

- ``image_ids.txt``     ``path``
- ``class_labels.txt``  ``path,label``
- ``image_sizes.txt``   ``path,width,height`` (read from the image headers)
- ``localization.txt``  ``path,x0,y0,x1,y1`` (one line per box) or
  ``path,mask_png,ignore_png`` (one line per instance mask; only the first
  line of an image carries its ignore png)

Every problem found in the input raises :class:`PrepareError` with one message
that names the file (and line) and the fix; :func:`run` turns it into a
single ``error:`` line on stderr and exit status 1, without a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Callable, Iterable, Iterator, Sequence

from PIL import Image, UnidentifiedImageError

LOG = logging.getLogger("prepare")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
METADATA_FILES = ("image_ids.txt", "class_labels.txt", "image_sizes.txt",
                  "localization.txt")


class PrepareError(Exception):
    """Bad or missing input; the message says where and how to fix it."""


Box = tuple  # (x0, y0, x1, y1) floats


@dataclass(slots=True)
class Record:
    """One image of a split."""
    image_id: str                 # path relative to the dataset's image folder
    label: int                    # 0-based class index
    source: str                   # where it was read from ("file:line")
    boxes: list = field(default_factory=list)      # [(x0, y0, x1, y1), ...]
    masks: list = field(default_factory=list)      # mask pngs, relative paths
    ignore: str | None = None                      # ignore png, relative path
    size: tuple | None = None                      # (width, height)


@dataclass
class Stats:
    """Things worth reporting besides the per-split counts."""
    clipped_boxes: int = 0
    notes: list = field(default_factory=list)


# --------------------------------------------------------------------------
# reading input
# --------------------------------------------------------------------------

def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise PrepareError(f"{what} not found: {path}")
    return path


def require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise PrepareError(f"{what} not found: {path}")
    return path


def read_table(path: str, num_fields: int | Sequence[int],
               what: str | None = None) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_no, fields)`` of a whitespace-separated text file
    (CUB's ``images.txt`` style); blank lines are skipped and a line with the
    wrong number of fields is an error.  ``num_fields`` may be a minimum
    given as ``(n, None)``: the last field then keeps the rest of the line
    (file names with spaces)."""
    require_file(path, what or "annotation file")
    if isinstance(num_fields, int):
        num_fields = (num_fields,)
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            text = line.strip()
            if not text:
                continue
            if len(num_fields) == 2 and num_fields[1] is None:
                fields = text.split(maxsplit=num_fields[0] - 1)
                ok = len(fields) == num_fields[0]
                expected = str(num_fields[0])
            else:
                fields = text.split()
                ok = len(fields) in num_fields
                expected = " or ".join(str(n) for n in num_fields)
            if not ok:
                raise PrepareError(
                    f"{path}:{line_no}: malformed line, expected {expected} "
                    f"whitespace-separated fields, got {len(fields)}: {text!r}")
            yield line_no, fields


def parse_int(text: str, where: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise PrepareError(f"{where}: {what} {text!r} is not an integer") from None


def parse_float(text: str, where: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PrepareError(f"{where}: {what} {text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise PrepareError(f"{where}: {what} {text!r} is not a finite number")
    return value


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def read_image_size(path: str, where: str) -> tuple[int, int]:
    """``(width, height)`` of the upright image (EXIF orientation applied, as
    the loaders read it), from the headers only (PIL opens lazily)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            # Orientations 5-8 turn the image by 90 degrees.
            turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            return (height, width) if turned else (width, height)
    except FileNotFoundError:
        raise PrepareError(f"{where}: image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise PrepareError(f"{where}: cannot read the image header of {path}: "
                           f"{error}") from None


def fill_sizes(records: Sequence[Record], image_root: str, workers: int = 8,
               what: str = "images") -> None:
    """Read the size of every record's image (threads: the work is file I/O).
    A missing or unreadable file raises at the first such record in order."""
    todo = [r for r in records if r.size is None]
    if not todo:
        return
    if len(todo) > 20000:
        LOG.info("reading the sizes of %d %s ...", len(todo), what)

    def one(record: Record) -> tuple[int, int]:
        return read_image_size(os.path.join(image_root, record.image_id), record.source)

    if workers <= 1 or len(todo) < 64:
        for record in todo:
            record.size = one(record)
        return
    chunk = 8192  # bounded number of pending futures; stops at the first failing chunk
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            for record, size in zip(part, pool.map(one, part)):
                record.size = size
            if len(todo) > 20000 and (start // chunk + 1) % 13 == 0:
                LOG.info("  %d / %d", start + len(part), len(todo))


def check_box(box: Sequence[float], record: Record, where: str, clip: bool,
              stats: Stats) -> Box:
    """Validate one ``(x0, y0, x1, y1)`` box of ``record`` (whose size must be
    known): ``x1 >= x0``, ``y1 >= y0`` and ``0 <= x0, x1 <= width``,
    ``0 <= y0, y1 <= height``.  With ``clip`` a box that sticks out is clipped
    to the image instead (and counted); one with no part inside still fails."""
    x0, y0, x1, y1 = box
    width, height = record.size
    shown = ",".join(format_number(v) for v in box)
    if x1 < x0 or y1 < y0:
        raise PrepareError(
            f"{where}: box ({shown}) of image {record.image_id!r} has x1 < x0 "
            f"or y1 < y0")
    inside = 0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height
    if inside:
        return (x0, y0, x1, y1)
    if not clip:
        raise PrepareError(
            f"{where}: box ({shown}) of image {record.image_id!r} lies outside "
            f"the image ({width}x{height}); fix the annotation or pass "
            f"--clip_boxes to clip boxes to the image")
    cx0, cy0 = min(max(x0, 0), width), min(max(y0, 0), height)
    cx1, cy1 = min(max(x1, 0), width), min(max(y1, 0), height)
    if cx1 <= cx0 or cy1 <= cy0:
        raise PrepareError(
            f"{where}: box ({shown}) of image {record.image_id!r} has no part "
            f"inside the image ({width}x{height}), even with --clip_boxes")
    stats.clipped_boxes += 1
    return (cx0, cy0, cx1, cy1)


def check_record_boxes(records: Iterable[Record], clip: bool, stats: Stats,
                       box_sources: dict | None = None) -> None:
    """Run :func:`check_box` on every box; ``box_sources`` maps
    ``(image_id, box_index)`` to the annotation line for messages."""
    for record in records:
        checked = []
        for index, box in enumerate(record.boxes):
            where = (box_sources or {}).get((record.image_id, index), record.source)
            checked.append(check_box(box, record, where, clip, stats))
        record.boxes = checked


def check_unique(records: Sequence[Record], split: str) -> None:
    seen: dict[str, str] = {}
    for record in records:
        if record.image_id in seen:
            raise PrepareError(
                f"{record.source}: image {record.image_id!r} is listed twice in "
                f"the {split} split (first at {seen[record.image_id]})")
        seen[record.image_id] = record.source


def check_disjoint(a: Sequence[Record], b: Sequence[Record], name_a: str,
                   name_b: str) -> None:
    ids_a = {r.image_id for r in a}
    for record in b:
        if record.image_id in ids_a:
            raise PrepareError(
                f"{record.source}: image {record.image_id!r} is in both the "
                f"{name_a} and the {name_b} split; the splits must be disjoint")


def check_labels(records: Iterable[Record], num_classes: int) -> None:
    for record in records:
        if not 0 <= record.label < num_classes:
            raise PrepareError(
                f"{record.source}: unknown class label {record.label} of image "
                f"{record.image_id!r} (the dataset has {num_classes} classes, "
                f"labels 0..{num_classes - 1})")


def require_localization(records: Iterable[Record], split: str, kind: str) -> None:
    for record in records:
        if not (record.boxes if kind == "boxes" else record.masks):
            raise PrepareError(
                f"{record.source}: image {record.image_id!r} of the {split} split "
                f"has no {'bounding box' if kind == 'boxes' else 'instance mask'}; "
                f"every {split} image needs one")


# --------------------------------------------------------------------------
# the validation split
# --------------------------------------------------------------------------

def read_wsol_split(folder: str, image_root: str, num_classes: int, clip: bool,
                    stats: Stats, workers: int = 8) -> list[Record]:
    """Read a split folder in the box format of docs/protocol.md (``image_ids.txt``,
    ``class_labels.txt``, ``localization.txt``; ``image_sizes.txt`` optional
    and compared with the files).  This is how the full-supervision sets are
    published (CUBV2 and ImageNetV2 boxes as wsolevaluation's
    ``metadata/<DATASET>/val``); the images must be under ``image_root``."""
    require_dir(folder, "--val_source folder")
    ids_path = require_file(os.path.join(folder, "image_ids.txt"),
                            "image_ids.txt of --val_source")
    labels_path = require_file(os.path.join(folder, "class_labels.txt"),
                               "class_labels.txt of --val_source")
    boxes_path = require_file(os.path.join(folder, "localization.txt"),
                              "localization.txt of --val_source")
    records: list[Record] = []
    by_id: dict[str, Record] = {}
    for line_no, (image_id,) in _read_csv(ids_path, (1,)):
        record = Record(image_id, None, f"{ids_path}:{line_no}")
        if record.image_id in by_id:
            raise PrepareError(f"{record.source}: image {record.image_id!r} "
                               f"is listed twice")
        by_id[record.image_id] = record
        records.append(record)
    for line_no, (image_id, label) in _read_csv(labels_path, (2,)):
        where = f"{labels_path}:{line_no}"
        if image_id not in by_id:
            raise PrepareError(f"{where}: image {image_id!r} is not in image_ids.txt")
        by_id[image_id].label = parse_int(label, where, "class label")
    for record in records:
        if record.label is None:
            raise PrepareError(f"{labels_path}: no class label for image "
                               f"{record.image_id!r}")
    check_labels(records, num_classes)
    box_sources = {}
    for line_no, (image_id, *coords) in _read_csv(boxes_path, (5,)):
        where = f"{boxes_path}:{line_no}"
        if image_id not in by_id:
            raise PrepareError(f"{where}: image {image_id!r} is not in image_ids.txt")
        record = by_id[image_id]
        box_sources[(image_id, len(record.boxes))] = where
        record.boxes.append(tuple(parse_float(c, where, "box coordinate")
                                  for c in coords))
    require_localization(records, "val", "boxes")
    fill_sizes(records, image_root, workers)
    sizes_path = os.path.join(folder, "image_sizes.txt")
    if os.path.isfile(sizes_path):
        for line_no, (image_id, w, h) in _read_csv(sizes_path, (3,)):
            where = f"{sizes_path}:{line_no}"
            if image_id in by_id:
                listed = (parse_int(w, where, "width"), parse_int(h, where, "height"))
                if listed != by_id[image_id].size:
                    raise PrepareError(
                        f"{where}: image {image_id!r} is listed as "
                        f"{listed[0]}x{listed[1]} but the file is "
                        f"{by_id[image_id].size[0]}x{by_id[image_id].size[1]}")
    check_record_boxes(records, clip, stats, box_sources)
    return records


def _read_csv(path: str, num_fields: tuple[int, ...]) -> Iterator[tuple[int, list[str]]]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            fields = [x.strip() for x in text.split(",")]
            if len(fields) not in num_fields:
                raise PrepareError(
                    f"{path}:{line_no}: malformed line, expected "
                    f"{' or '.join(map(str, num_fields))} comma-separated fields, "
                    f"got {len(fields)}: {text!r}")
            yield line_no, fields


def sample_per_class(records: Sequence[Record], count: int, seed: int,
                     stats: Stats, usable: Callable[[Record], bool] | None = None
                     ) -> list[Record]:
    """A fixed, seeded sample of ``count`` images per class (in file order).
    Classes with fewer usable images give all they have (noted)."""
    if count <= 0:
        raise PrepareError(
            "--num_val_sample_per_class must be > 0 to build the val split from "
            "train (or pass --val_source)")
    by_label: dict[int, list[int]] = {}
    for index, record in enumerate(records):
        if usable is None or usable(record):
            by_label.setdefault(record.label, []).append(index)
    labels_all = sorted({r.label for r in records})
    rng = random.Random(seed)
    chosen: list[int] = []
    short = []
    for label in labels_all:
        candidates = by_label.get(label, [])
        if len(candidates) < count:
            short.append(label)
        chosen.extend(rng.sample(candidates, min(count, len(candidates))))
    if short:
        stats.notes.append(
            f"{len(short)} class(es) have fewer than {count} usable train images "
            f"for val (first: label {short[0]}); they contribute all they have")
    return [_copy(records[i]) for i in sorted(chosen)]


def _copy(record: Record) -> Record:
    return Record(record.image_id, record.label, record.source, list(record.boxes),
                  list(record.masks), record.ignore, record.size)


@dataclass(frozen=True)
class ValPlan:
    """Where a dataset's full-supervision val split comes from (the flags of
    :func:`make_parser` of the same names)."""
    val_source: str | None = None
    num_val_sample_per_class: int = 5
    seed: int = 0
    exclude_val_from_train: bool = False
    clip_boxes: bool = False
    workers: int = 8

    @classmethod
    def of(cls, values: dict) -> "ValPlan":
        """The plan among a script's settings (``vars`` of its parsed flags)."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def build_val(plan: ValPlan, train: list[Record], image_root: str,
              num_classes: int, stats: Stats,
              usable: Callable[[Record], bool] | None = None
              ) -> tuple[list[Record], list[Record]]:
    """The full-supervision val split and the (possibly reduced) train split.

    With ``val_source`` the val split is read from that folder (the box format
    of docs/protocol.md, "Metadata").  Otherwise it is a seeded sample of
    ``num_val_sample_per_class`` train images per class with their boxes;
    those images stay in train unless ``exclude_val_from_train``."""
    if plan.val_source:
        val = read_wsol_split(plan.val_source, image_root, num_classes,
                              plan.clip_boxes, stats, plan.workers)
        stats.notes.append(f"val: {len(val)} images read from --val_source "
                           f"{plan.val_source}")
        shared = {r.image_id for r in train} & {r.image_id for r in val}
        if shared:
            stats.notes.append(f"WARNING: {len(shared)} --val_source image(s) are also "
                               f"train images (first: {sorted(shared)[0]})")
        return val, train
    val = sample_per_class(train, plan.num_val_sample_per_class, plan.seed, stats,
                           usable)
    if not val:
        raise PrepareError("no train image has a bounding box, so no val split can be "
                           "sampled from train; pass --val_source")
    if plan.exclude_val_from_train:
        taken = {r.image_id for r in val}
        kept = [r for r in train if r.image_id not in taken]
        emptied = sorted({r.label for r in train} - {r.label for r in kept})
        if emptied:
            raise PrepareError(
                f"--exclude_val_from_train would leave class {emptied[0]} "
                f"({len(emptied)} class(es) in all) without train images; lower "
                f"--num_val_sample_per_class or keep the val images in train")
        train = kept
        stats.notes.append(
            f"val: {len(val)} images sampled from TRAIN ({plan.num_val_sample_per_class}"
            f"/class, seed {plan.seed}) and removed from train "
            f"(--exclude_val_from_train)")
    else:
        stats.notes.append(
            f"val: {len(val)} images sampled from TRAIN ({plan.num_val_sample_per_class}"
            f"/class, seed {plan.seed}); they ALSO stay in train (no held-out "
            f"full-supervision set given: pass --val_source, or "
            f"--exclude_val_from_train)")
    return val, train


# --------------------------------------------------------------------------
# writing output
# --------------------------------------------------------------------------

def format_number(value: float) -> str:
    """``10.0`` -> ``10``; other values keep their exact float repr."""
    value = float(value)
    if value.is_integer():
        return str(int(value))
    return repr(value)


def _check_path_text(path: str, where: str) -> None:
    if "," in path or "\n" in path or "\r" in path or path != path.strip() or not path:
        raise PrepareError(
            f"{where}: path {path!r} cannot be written to a comma-separated "
            f"metadata file (it is empty, has a comma, a line break or "
            f"surrounding spaces); rename the file")


def write_split(out_dir: str, records: Sequence[Record], kind: str) -> None:
    """Write one split folder.  ``kind`` is ``"boxes"`` or ``"masks"``.
    ``localization.txt`` is written when some image has localization and a
    stale one is removed otherwise.  Files are written to a temporary name
    and renamed, so an interrupted run leaves no half-written file."""
    for record in records:
        _check_path_text(record.image_id, record.source)
        for path in record.masks + ([record.ignore] if record.ignore else []):
            _check_path_text(path, record.source)
        if record.size is None:
            raise AssertionError(f"size of {record.image_id} was not read")
    os.makedirs(out_dir, exist_ok=True)
    contents = {
        "image_ids.txt": "".join(f"{r.image_id}\n" for r in records),
        "class_labels.txt": "".join(f"{r.image_id},{r.label}\n" for r in records),
        "image_sizes.txt": "".join(f"{r.image_id},{r.size[0]},{r.size[1]}\n"
                                   for r in records),
    }
    lines = []
    for r in records:
        if kind == "boxes":
            lines.extend(f"{r.image_id},{','.join(format_number(v) for v in box)}\n"
                         for box in r.boxes)
        else:
            lines.extend(f"{r.image_id},{mask},{(r.ignore or '') if i == 0 else ''}\n"
                         for i, mask in enumerate(r.masks))
    loc_path = os.path.join(out_dir, "localization.txt")
    if lines:
        contents["localization.txt"] = "".join(lines)
    elif os.path.isfile(loc_path):
        os.remove(loc_path)
    for name, text in contents.items():
        path = os.path.join(out_dir, name)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    others = sorted(set(os.listdir(out_dir)) - set(METADATA_FILES))
    if others:
        LOG.warning("%s also holds %s, not written by this run (stale?)",
                    out_dir, ", ".join(others))


def write_dataset(metadata_root: str, name: str, splits: dict[str, list[Record]],
                  kind: str, stats: Stats) -> None:
    """Write every split, then log the counts per split."""
    for split, records in splits.items():
        write_split(os.path.join(metadata_root, name, split), records, kind)
    report(metadata_root, name, splits, kind, stats)


def report(metadata_root: str, name: str, splits: dict[str, list[Record]],
           kind: str, stats: Stats) -> None:
    unit = "boxes" if kind == "boxes" else "masks"
    LOG.info("%s metadata written to %s", name, os.path.join(metadata_root, name))
    for split, records in splits.items():
        count = sum(len(r.boxes if kind == "boxes" else r.masks) for r in records)
        with_loc = sum(1 for r in records if (r.boxes if kind == "boxes" else r.masks))
        extra = ""
        if kind == "masks":
            extra = f", {sum(1 for r in records if r.ignore)} ignore masks"
        LOG.info("  %-5s %7d images, %5d classes, %7d %s (%d images with %s%s)",
                 split, len(records), len({r.label for r in records}), count, unit,
                 with_loc, unit, extra)
    if stats.clipped_boxes:
        LOG.info("  %d boxes were clipped to their image (--clip_boxes)",
                 stats.clipped_boxes)
    for note in stats.notes:
        LOG.info("  %s", note)


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------

class _HelpFormatter(argparse.RawDescriptionHelpFormatter,
                     argparse.ArgumentDefaultsHelpFormatter):
    pass


def make_parser(description: str, default_val_per_class: int | None,
                val_source: bool = True) -> argparse.ArgumentParser:
    """Parser with the options every converter shares."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--metadata_root", default="metadata",
                        help="output: <metadata_root>/<DATASET>/{train,val,test}/")
    parser.add_argument("--clip_boxes", action="store_true",
                        help="clip boxes that stick out of their image instead of "
                             "failing (boxes are checked against the real image size)")
    parser.add_argument("--workers", type=int, default=8,
                        help="threads reading image headers")
    if default_val_per_class is not None:
        if val_source:
            parser.add_argument(
                "--val_source", default=None,
                help="folder of the held-out full-supervision val set in the box format "
                     "of docs/protocol.md (image_ids.txt, class_labels.txt, localization.txt), "
                     "its images under the dataset's image folder; without it, val "
                     "is sampled from TRAIN (see --num_val_sample_per_class)")
        parser.add_argument(
            "--num_val_sample_per_class", type=int, default=default_val_per_class,
            help="without --val_source: val = this many TRAIN images per class with "
                 "their boxes, a fixed sample drawn with --seed")
        parser.add_argument("--seed", type=int, default=0,
                            help="seed of the val sample drawn from train")
        parser.add_argument(
            "--exclude_val_from_train", action="store_true",
            help="remove the images sampled for val from the train split (by default "
                 "they stay in train too)")
    return parser


def run(main_body: Callable[[argparse.Namespace], None],
        parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv``, run, and turn a :class:`PrepareError` into one
    ``error:`` line on stderr and exit status 1."""
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    LOG.setLevel(logging.INFO)
    try:
        main_body(args)
    except PrepareError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    return 0

"""Convert Stanford Cars (196 classes) into metadata/CARS/{train,val,test}/.

Reads the official distribution (``--cars_root``, the toolkit's ``dataset/CARS``):

    <cars_root>/cars_train/00001.jpg ...          cars_train.tgz
    <cars_root>/cars_test/00001.jpg ...           cars_test.tgz
    <cars_root>/devkit/cars_train_annos.mat       car_devkit.tgz
    <cars_root>/devkit/cars_meta.mat
    <cars_root>/cars_test_annos_withlabels.mat    (or in devkit/; the test labels,
                                                   a separate download)

``cars_*_annos*.mat`` hold the struct array ``annotations`` with the fields
bbox_x1, bbox_y1, bbox_x2, bbox_y2 (min/max x and y of the box, in pixels),
class (1..196) and fname (file name in the image folder); ``cars_meta.mat``
holds the cell array ``class_names``.  They are read with scipy.io.loadmat.

Writes (paths relative to <cars_root>, e.g. ``cars_train/00001.jpg``):

    train = cars_train, test = cars_test (labels from
    cars_test_annos_withlabels.mat), val = there is no official held-out
    localization set, so a fixed seeded sample of --num_val_sample_per_class
    TRAIN images per class with their boxes (kept in train unless
    --exclude_val_from_train), or --val_source if you have one in the metadata
    box format.

Labels are class - 1 (0-based).  Boxes are written as annotated
(bbox_x1, bbox_y1, bbox_x2, bbox_y2 -> x0, y0, x1, y1, no shift), the way the
ILSVRC and CUB metadata keep their annotation values.  Image sizes are read
from the image headers and every box is checked against them.

    python scripts/prepare_cars.py --cars_root dataset/CARS
"""
from __future__ import annotations

import os
import sys

import numpy as np

from wsol.data.prepare import (LOG, PrepareError, Record, Stats, ValPlan,
                             build_val, check_disjoint, check_record_boxes,
                             check_unique, fill_sizes, make_parser, require_dir,
                             require_file, run, write_dataset)

NAME = "CARS"
_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")


def build_parser():
    parser = make_parser(__doc__, default_val_per_class=5)
    parser.add_argument("--cars_root", required=True,
                        help="folder holding cars_train/, cars_test/, devkit/ and "
                             "cars_test_annos_withlabels.mat")
    parser.add_argument("--devkit", default=None,
                        help="devkit folder (default: <cars_root>/devkit)")
    parser.add_argument("--test_annos", default=None,
                        help="cars_test_annos_withlabels.mat (default: looked up in "
                             "<cars_root> then in the devkit)")
    return parser


def _loadmat(path: str, what: str) -> dict:
    from scipy.io import loadmat
    require_file(path, what)
    try:
        return loadmat(path)
    except Exception as error:  # scipy raises several types on a bad file
        raise PrepareError(f"{path}: cannot read the .mat file: {error}") from None


def _scalar(value, where: str, field: str):
    arr = np.asarray(value).ravel()
    if arr.size != 1:
        raise PrepareError(f"{where}: field {field!r} should hold one value, "
                           f"got {arr.size}")
    return arr[0]


def read_class_names(path: str) -> list[str]:
    data = _loadmat(path, "cars_meta.mat")
    if "class_names" not in data:
        raise PrepareError(f"{path}: no variable 'class_names'")
    names = [str(_scalar(v, path, "class_names")) for v in np.asarray(
        data["class_names"], dtype=object).ravel()]
    if not names:
        raise PrepareError(f"{path}: 'class_names' is empty")
    return names


def read_annos(path: str, folder: str, num_classes: int) -> list[Record]:
    """Records of one annotation file; ``folder`` is cars_train or cars_test."""
    data = _loadmat(path, f"annotation file for {folder}")
    if "annotations" not in data:
        raise PrepareError(f"{path}: no variable 'annotations'")
    annos = np.asarray(data["annotations"])
    names = annos.dtype.names or ()
    missing = [f for f in _FIELDS if f not in names]
    if missing:
        hint = (" (cars_test_annos.mat has no labels: use "
                "cars_test_annos_withlabels.mat)" if missing == ["class"] else "")
        raise PrepareError(f"{path}: 'annotations' lacks the field(s) "
                           f"{', '.join(missing)}{hint}")
    records = []
    for index, entry in enumerate(annos.ravel(), start=1):
        where = f"{path}: annotation {index}"
        fname = str(_scalar(entry["fname"], where, "fname")).strip()
        if not fname or "/" in fname or "\\" in fname:
            raise PrepareError(f"{where}: malformed fname {fname!r}")
        try:
            values = [float(_scalar(entry[f], where, f)) for f in _FIELDS[:5]]
        except (TypeError, ValueError):
            raise PrepareError(f"{where}: a bbox or class value of {fname!r} is not "
                               f"a number") from None
        x1, y1, x2, y2, label = values
        if not label.is_integer() or not 1 <= label <= num_classes:
            raise PrepareError(f"{where}: unknown class {format(label, 'g')} of "
                               f"{fname!r} (cars_meta.mat has 1..{num_classes})")
        records.append(Record(f"{folder}/{fname}", int(label) - 1, where,
                              boxes=[(x1, y1, x2, y2)]))
    if not records:
        raise PrepareError(f"{path}: 'annotations' is empty")
    return records


def prepare(args) -> None:
    stats = Stats()
    root = require_dir(args.cars_root, "--cars_root folder")
    devkit = args.devkit or os.path.join(root, "devkit")
    test_annos = args.test_annos
    if test_annos is None:
        candidates = [os.path.join(root, "cars_test_annos_withlabels.mat"),
                      os.path.join(devkit, "cars_test_annos_withlabels.mat")]
        test_annos = next((c for c in candidates if os.path.isfile(c)), None)
        if test_annos is None:
            raise PrepareError(f"cars_test_annos_withlabels.mat not found in {root} "
                               f"or {devkit}; download it (the test labels) or pass "
                               f"--test_annos")
    class_names = read_class_names(os.path.join(devkit, "cars_meta.mat"))
    train = read_annos(os.path.join(devkit, "cars_train_annos.mat"), "cars_train",
                       len(class_names))
    test = read_annos(test_annos, "cars_test", len(class_names))
    for split, records in (("train", train), ("test", test)):
        check_unique(records, split)
    fill_sizes(train + test, root, args.workers)
    check_record_boxes(train + test, args.clip_boxes, stats)
    val, train = build_val(ValPlan.of(vars(args)), train, root, len(class_names), stats)
    check_unique(val, "val")
    check_disjoint(train, test, "train", "test")
    check_disjoint(test, val, "test", "val")
    write_dataset(args.metadata_root, NAME, {"train": train, "val": val, "test": test},
                  "boxes", stats)
    LOG.info("  image paths are relative to %s (toolkit: dataset/%s)", root, NAME)


def main(argv=None) -> int:
    return run(prepare, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

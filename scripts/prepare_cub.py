"""Convert CUB-200-2011 into metadata/CUB/{train,val,test}/ (docs/protocol.md).

Reads the official CUB_200_2011 folder:

    CUB_200_2011/
        images/<class folder>/<file>.jpg     e.g. images/001.Black_footed_Albatross/...
        images.txt              <image_id> <path relative to images/>
        image_class_labels.txt  <image_id> <class_id>            (class_id 1..200)
        train_test_split.txt    <image_id> <is_training_image>   (1 train, 0 test)
        bounding_boxes.txt      <image_id> <x> <y> <width> <height>   (floats)
        classes.txt             <class_id> <class folder name>

and writes, with image paths relative to the image folder (wsolevaluation's
``dataset/CUB`` = the ``images/`` folder, e.g.
``001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg``):

    train = the official train split, test = the official test split,
    val   = the full-supervision split: with --val_source, the held-out set
            (wsolevaluation uses CUBV2: its images extracted into the image
            folder, its boxes in the metadata format (docs/protocol.md) of metadata/CUB/val);
            otherwise a fixed seeded sample of --num_val_sample_per_class
            TRAIN images per class (kept in train unless
            --exclude_val_from_train).

Labels are class_id - 1.  Boxes: x0 = x, y0 = y, x1 = x + width,
y1 = y + height, the convention of wsolevaluation's released CUB metadata
(image 1, Black_Footed_Albatross_0046_18.jpg: ``60.0 27.0 325.0 304.0`` in
bounding_boxes.txt is ``60,27,385,331`` there).  Image sizes are read from
the image headers and every box is checked against them.

    python scripts/prepare_cub.py --cub_root /data/CUB_200_2011
    mv /data/CUB_200_2011/images dataset/CUB     # the image folder the toolkit reads
"""
from __future__ import annotations

import os
import sys

from wsol.data.prepare import (LOG, PrepareError, Record, Stats, ValPlan,
                             build_val, check_disjoint, check_record_boxes,
                             check_unique, fill_sizes, make_parser, parse_float,
                             parse_int, read_table, require_dir, require_file, run,
                             write_dataset)

NAME = "CUB"


def build_parser():
    parser = make_parser(__doc__, default_val_per_class=5)
    parser.add_argument("--cub_root", required=True,
                        help="the official CUB_200_2011 folder (images.txt, "
                             "image_class_labels.txt, train_test_split.txt, "
                             "bounding_boxes.txt, classes.txt, images/)")
    parser.add_argument("--image_root", default=None,
                        help="folder the image paths are relative to "
                             "(default: <cub_root>/images)")
    return parser


def _read_id_map(path: str, what: str, known: dict, num_fields=2) -> dict:
    """``{image_id: (line_no, fields[1:])}`` of a per-image CUB file; every id
    must be in ``known`` and appear once."""
    out = {}
    for line_no, fields in read_table(path, num_fields, what):
        where = f"{path}:{line_no}"
        image_id = parse_int(fields[0], where, "image id")
        if image_id not in known:
            raise PrepareError(f"{where}: image id {image_id} is not in images.txt")
        if image_id in out:
            raise PrepareError(f"{where}: image id {image_id} is listed twice")
        out[image_id] = (line_no, fields[1:])
    missing = [i for i in known if i not in out]
    if missing:
        raise PrepareError(f"{path}: no entry for image id {missing[0]} "
                           f"({known[missing[0]][1]}) of images.txt "
                           f"({len(missing)} image(s) missing)")
    return out


def read_cub(cub_root: str) -> tuple[list[Record], list[Record], int, dict]:
    """Train and test records (sizes not read yet), the number of classes and
    the bounding_boxes.txt line of each box (for messages)."""
    require_dir(cub_root, "--cub_root folder")
    join = os.path.join
    paths = {name: require_file(join(cub_root, name), f"CUB file {name}")
             for name in ("images.txt", "image_class_labels.txt",
                          "train_test_split.txt", "bounding_boxes.txt", "classes.txt")}

    classes = {}
    for line_no, (class_id, name) in read_table(paths["classes.txt"], (2, None)):
        where = f"{paths['classes.txt']}:{line_no}"
        class_id = parse_int(class_id, where, "class id")
        if class_id in classes:
            raise PrepareError(f"{where}: class id {class_id} is listed twice")
        classes[class_id] = name
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise PrepareError(f"{paths['classes.txt']}: class ids must be 1..N without "
                           f"gaps, got {sorted(classes)[:5]}...")

    images = {}   # image_id -> (line_no, path)
    seen_paths = {}
    for line_no, (image_id, path) in read_table(paths["images.txt"], (2, None)):
        where = f"{paths['images.txt']}:{line_no}"
        image_id = parse_int(image_id, where, "image id")
        if image_id in images:
            raise PrepareError(f"{where}: image id {image_id} is listed twice")
        if path in seen_paths:
            raise PrepareError(f"{where}: image {path!r} is listed twice "
                               f"(also line {seen_paths[path]})")
        images[image_id] = (line_no, path)
        seen_paths[path] = line_no
    if not images:
        raise PrepareError(f"{paths['images.txt']}: no images listed")

    labels = _read_id_map(paths["image_class_labels.txt"], "image_class_labels.txt",
                          images)
    splits = _read_id_map(paths["train_test_split.txt"], "train_test_split.txt", images)
    boxes = _read_id_map(paths["bounding_boxes.txt"], "bounding_boxes.txt", images, 5)

    train, test, box_sources = [], [], {}
    for image_id, (line_no, path) in images.items():
        source = f"{paths['images.txt']}:{line_no}"
        label_line, (class_text,) = labels[image_id]
        where = f"{paths['image_class_labels.txt']}:{label_line}"
        class_id = parse_int(class_text, where, "class id")
        if class_id not in classes:
            raise PrepareError(f"{where}: unknown class id {class_id} of image "
                               f"{path!r} (classes.txt has 1..{len(classes)})")
        folder = path.split("/")[0] if "/" in path else None
        if folder is not None and folder != classes[class_id]:
            raise PrepareError(
                f"{where}: image {path!r} is labelled class {class_id} "
                f"({classes[class_id]}) but lies in folder {folder!r}")
        split_line, (flag,) = splits[image_id]
        where = f"{paths['train_test_split.txt']}:{split_line}"
        if flag not in ("0", "1"):
            raise PrepareError(f"{where}: is_training_image must be 1 or 0, "
                               f"got {flag!r}")
        box_line, coords = boxes[image_id]
        where = f"{paths['bounding_boxes.txt']}:{box_line}"
        x, y, w, h = (parse_float(c, where, "box value") for c in coords)
        if w < 0 or h < 0:
            raise PrepareError(f"{where}: box of image {path!r} has a negative "
                               f"width or height ({w}, {h})")
        # bounding_boxes.txt is x, y, width, height; the metadata is x0,y0,x1,y1.
        record = Record(path, class_id - 1, source, boxes=[(x, y, x + w, y + h)])
        box_sources[(path, 0)] = where
        (train if flag == "1" else test).append(record)
    return train, test, len(classes), box_sources


def prepare(args) -> None:
    stats = Stats()
    image_root = args.image_root or os.path.join(args.cub_root, "images")
    train, test, num_classes, box_sources = read_cub(args.cub_root)
    require_dir(image_root, "CUB image folder (--image_root)")
    fill_sizes(train + test, image_root, args.workers)
    check_record_boxes(train + test, args.clip_boxes, stats, box_sources)
    val, train = build_val(ValPlan.of(vars(args)), train, image_root, num_classes, stats)
    for split, records in (("train", train), ("val", val), ("test", test)):
        check_unique(records, split)
    check_disjoint(train, test, "train", "test")
    check_disjoint(test, val, "test", "val")
    if not train or not test:
        raise PrepareError(f"{args.cub_root}/train_test_split.txt: the "
                           f"{'train' if not train else 'test'} split is empty")
    write_dataset(args.metadata_root, NAME, {"train": train, "val": val, "test": test},
                  "boxes", stats)
    LOG.info("  image paths are relative to %s (toolkit: dataset/%s)", image_root, NAME)


def main(argv=None) -> int:
    return run(prepare, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

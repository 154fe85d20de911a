"""Convert ImageNet (ILSVRC 2012 CLS-LOC) into metadata/ILSVRC/{train,val,test}/.

Reads the official distribution, laid out as wsolevaluation's
``dataset/prepare_imagenet.sh`` leaves it (``--image_root``, the toolkit's
``dataset/ILSVRC``; Kaggle's ``ILSVRC/Data/CLS-LOC`` has the same layout):

    <image_root>/train/<wnid>/<wnid>_<n>.JPEG     ILSVRC2012_img_train.tar, one folder per class
    <image_root>/val/ILSVRC2012_val_<8 digits>.JPEG   ILSVRC2012_img_val.tar, flat

and the box annotations of the validation images (``--val_annotations``),
either

    a folder of per-image XML files  ILSVRC2012_val_00000001.xml ...
        (ILSVRC2012_bbox_val_v3.tgz; Kaggle: ILSVRC/Annotations/CLS-LOC/val)
        <annotation><object><name>wnid</name>
            <bndbox><xmin/><ymin/><xmax/><ymax/></bndbox></object>...
    or Kaggle's LOC_val_solution.csv
        ImageId,PredictionString
        ILSVRC2012_val_00000001,n01751748 111 108 441 193 [wnid x0 y0 x1 y1 ...]

Optionally ``--train_annotations``: the train boxes, a folder of
``<wnid>/<wnid>_<n>.xml`` (Kaggle: ILSVRC/Annotations/CLS-LOC/train; or
ILSVRC2012_bbox_train_v2.tar.gz with its per-class archives extracted) or
LOC_train_solution.csv; only about 40% of train images have boxes.

Writes (paths relative to <image_root>, e.g. ``train/n01440764/n01440764_10026.JPEG``
and ``val/ILSVRC2012_val_00000001.JPEG``):

    train = ImageNet train (boxes where --train_annotations has them),
    test  = ImageNet val, with ALL boxes of each image,
    val   = the full-supervision split: with --val_source, the held-out set
            (wsolevaluation uses ImageNetV2 threshold-0.7, extracted to
            <image_root>/val2, with boxes in the metadata format (docs/protocol.md) of its
            metadata/ILSVRC/val); otherwise a fixed seeded sample of
            --num_val_sample_per_class TRAIN images per class among those with
            boxes (needs --train_annotations; kept in train unless
            --exclude_val_from_train).

Labels are the index of the wnid in sorted order (= the line order of
LOC_synset_mapping.txt; n01440764 -> 0), or in --synset_mapping if given.
Boxes are written as annotated (xmin, ymin, xmax, ymax): wsolevaluation's
metadata copies them unchanged (ILSVRC2012_val_00000001: XML 111,108,441,193,
metadata ``val/ILSVRC2012_val_00000001.JPEG,111,108,441,193``).  Image sizes
are read from the image headers and every box is checked against them.

    python scripts/prepare_ilsvrc.py --image_root dataset/ILSVRC \\
        --val_annotations /data/ILSVRC2012_bbox_val/val
"""
from __future__ import annotations

import csv
import os
import sys
import xml.etree.ElementTree as ET

from wsol.data.prepare import (LOG, PrepareError, Record, Stats, ValPlan,
                             build_val, check_disjoint, check_record_boxes,
                             check_unique, fill_sizes, is_image_file, make_parser,
                             parse_float, require_dir, require_file,
                             require_localization, run, write_dataset)

NAME = "ILSVRC"


def build_parser():
    parser = make_parser(__doc__, default_val_per_class=10)
    parser.add_argument("--image_root", required=True,
                        help="folder holding train/<wnid>/ and val/ (dataset/ILSVRC)")
    parser.add_argument("--val_annotations", required=True,
                        help="folder of ILSVRC2012_val_*.xml or LOC_val_solution.csv")
    parser.add_argument("--train_annotations", default=None,
                        help="optional train boxes: folder of <wnid>/*.xml or "
                             "LOC_train_solution.csv")
    parser.add_argument("--synset_mapping", default=None,
                        help="optional LOC_synset_mapping.txt (or one wnid per line) "
                             "fixing the class order; default: sorted train folders")
    return parser


# --------------------------------------------------------------------------
# annotations: {image name without extension: (wnid per box, boxes, where)}
# --------------------------------------------------------------------------

def _xml_text(node, tag: str, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise PrepareError(f"{where}: malformed annotation, <{tag}> is missing or empty")
    return child.text.strip()


def read_xml(path: str) -> list[tuple[str, tuple]]:
    """``[(wnid, (xmin, ymin, xmax, ymax)), ...]`` of one annotation file."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise PrepareError(f"{path}: malformed XML: {error}") from None
    objects = []
    for obj in root.iter("object"):
        wnid = _xml_text(obj, "name", path)
        box_node = obj.find("bndbox")
        if box_node is None:
            raise PrepareError(f"{path}: malformed annotation, an <object> has no "
                               f"<bndbox>")
        box = tuple(parse_float(_xml_text(box_node, tag, path), path, tag)
                    for tag in ("xmin", "ymin", "xmax", "ymax"))
        objects.append((wnid, box))
    return objects


def read_xml_folder(folder: str) -> dict[str, tuple[list, str]]:
    """All ``*.xml`` of a folder and its sub-folders (one level, <wnid>/)."""
    out = {}
    entries = sorted(os.listdir(folder))
    for entry in entries:
        path = os.path.join(folder, entry)
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                if name.endswith(".xml"):
                    _add(out, name[:-4], read_xml(os.path.join(path, name)),
                         os.path.join(path, name))
        elif entry.endswith(".xml"):
            _add(out, entry[:-4], read_xml(path), path)
    if not out:
        raise PrepareError(f"{folder}: no .xml annotation files found")
    return out


def _add(out: dict, name: str, objects: list, where: str) -> None:
    if name in out:
        raise PrepareError(f"{where}: image {name!r} is annotated twice "
                           f"(also {out[name][1]})")
    out[name] = (objects, where)


def read_loc_csv(path: str) -> dict[str, tuple[list, str]]:
    """Kaggle's LOC_*_solution.csv: ``ImageId,PredictionString`` with
    PredictionString = ``wnid xmin ymin xmax ymax`` repeated."""
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId",
                                                                 "PredictionString"]:
            raise PrepareError(f"{path}:1: expected the header "
                               f"'ImageId,PredictionString', got {header!r}")
        for line_no, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            where = f"{path}:{line_no}"
            if len(row) != 2:
                raise PrepareError(f"{where}: malformed line, expected 2 "
                                   f"comma-separated fields, got {len(row)}")
            tokens = row[1].split()
            if not tokens or len(tokens) % 5:
                raise PrepareError(
                    f"{where}: malformed PredictionString, expected groups of "
                    f"'wnid xmin ymin xmax ymax', got {len(tokens)} tokens")
            objects = []
            for i in range(0, len(tokens), 5):
                box = tuple(parse_float(t, where, "box coordinate")
                            for t in tokens[i + 1:i + 5])
                objects.append((tokens[i], box))
            _add(out, row[0].strip(), objects, where)
    return out


def read_annotations(path: str, what: str) -> dict[str, tuple[list, str]]:
    if os.path.isdir(path):
        return read_xml_folder(path)
    if os.path.isfile(path) and path.lower().endswith(".csv"):
        return read_loc_csv(path)
    raise PrepareError(f"{what} must be a folder of .xml files or a "
                       f"LOC_*_solution.csv file, got: {path}")


# --------------------------------------------------------------------------

def read_classes(image_root: str, mapping: str | None) -> tuple[list[str], dict]:
    """The train class folders and ``{wnid: label}``."""
    train_dir = require_dir(os.path.join(image_root, "train"), "ImageNet train folder")
    folders = sorted(e for e in os.listdir(train_dir)
                     if os.path.isdir(os.path.join(train_dir, e)))
    if not folders:
        raise PrepareError(f"{train_dir}: no class folders (extract the per-class "
                           f"tar files into train/<wnid>/)")
    if mapping is None:
        return folders, {wnid: i for i, wnid in enumerate(folders)}
    wnids = []
    with open(require_file(mapping, "--synset_mapping file"), encoding="utf-8") as f:
        wnids = [line.split()[0] for line in f if line.strip()]
    index = {wnid: i for i, wnid in enumerate(wnids)}
    if len(index) != len(wnids):
        raise PrepareError(f"{mapping}: a wnid is listed twice")
    for wnid in folders:
        if wnid not in index:
            raise PrepareError(f"{train_dir}/{wnid}: unknown class, not in {mapping}")
    for wnid in wnids:
        if wnid not in folders:
            raise PrepareError(f"{train_dir}: no folder for class {wnid} of {mapping}")
    return folders, index


def read_train(image_root: str, folders: list[str], classes: dict) -> list[Record]:
    records = []
    for wnid in folders:
        folder = os.path.join(image_root, "train", wnid)
        names = sorted(n for n in os.listdir(folder) if is_image_file(n))
        if not names:
            raise PrepareError(f"{folder}: class folder has no images")
        records.extend(Record(f"train/{wnid}/{name}", classes[wnid], f"{folder}/{name}")
                       for name in names)
    return records


def read_test(image_root: str, annotations: dict, classes: dict,
              box_sources: dict) -> list[Record]:
    """ImageNet val with every box of each image."""
    val_dir = require_dir(os.path.join(image_root, "val"), "ImageNet val folder")
    present = {os.path.splitext(n)[0]: n for n in os.listdir(val_dir) if is_image_file(n)}
    records = []
    for name in sorted(annotations):
        objects, where = annotations[name]
        if not objects:
            raise PrepareError(f"{where}: image {name!r} has no bounding box")
        wnids = {wnid for wnid, _ in objects}
        for wnid in sorted(wnids):
            if wnid not in classes:
                raise PrepareError(f"{where}: unknown class {wnid!r} of image {name!r} "
                                   f"(no train folder of that name)")
        if len(wnids) > 1:
            raise PrepareError(f"{where}: the boxes of image {name!r} name several "
                               f"classes {sorted(wnids)}; expected one label per image")
        if name not in present:
            raise PrepareError(f"{where}: image file not found: "
                               f"{os.path.join(val_dir, name)}.JPEG")
        record = Record(f"val/{present[name]}", classes[objects[0][0]], where,
                        boxes=[box for _, box in objects])
        for i in range(len(objects)):
            box_sources[(record.image_id, i)] = where
        records.append(record)
    unannotated = sorted(set(present) - set(annotations))
    if unannotated:
        raise PrepareError(
            f"{val_dir}: {len(unannotated)} image(s) have no annotation in "
            f"--val_annotations (first: {present[unannotated[0]]}); remove them or "
            f"give the complete annotations")
    return records


def add_train_boxes(train: list[Record], annotations: dict, classes: dict,
                    box_sources: dict, stats: Stats) -> None:
    by_name = {os.path.splitext(r.image_id.split("/")[-1])[0]: r for r in train}
    other_class = 0
    for name in sorted(annotations):
        objects, where = annotations[name]
        record = by_name.get(name)
        if record is None:
            raise PrepareError(f"{where}: image {name!r} is not in the train folders "
                               f"(missing file?)")
        for wnid, box in objects:
            if wnid not in classes:
                raise PrepareError(f"{where}: unknown class {wnid!r} of image {name!r}")
            if classes[wnid] != record.label:
                other_class += 1
                continue
            box_sources[(record.image_id, len(record.boxes))] = where
            record.boxes.append(box)
    if other_class:
        stats.notes.append(f"{other_class} train box(es) of a class other than the "
                           f"image's own were skipped")


def prepare(args) -> None:
    stats = Stats()
    require_dir(args.image_root, "--image_root folder")
    folders, classes = read_classes(args.image_root, args.synset_mapping)
    box_sources: dict = {}
    test = read_test(args.image_root,
                     read_annotations(args.val_annotations, "--val_annotations"),
                     classes, box_sources)
    train = read_train(args.image_root, folders, classes)
    if args.train_annotations:
        add_train_boxes(train, read_annotations(args.train_annotations,
                                                "--train_annotations"),
                        classes, box_sources, stats)
    elif not args.val_source:
        raise PrepareError(
            "the val split needs boxes: pass --val_source (a held-out set such as "
            "ImageNetV2 with boxes in the metadata format (docs/protocol.md)) or "
            "--train_annotations (train boxes, to sample val from train)")
    fill_sizes(test, args.image_root, args.workers, "val images")
    fill_sizes(train, args.image_root, args.workers, "train images")
    check_record_boxes(test + train, args.clip_boxes, stats, box_sources)
    require_localization(test, "test", "boxes")
    val, train = build_val(ValPlan.of(vars(args)), train, args.image_root, len(classes),
                           stats, usable=lambda r: bool(r.boxes))
    for split, records in (("train", train), ("val", val), ("test", test)):
        check_unique(records, split)
    check_disjoint(train, test, "train", "test")
    check_disjoint(test, val, "test", "val")
    write_dataset(args.metadata_root, NAME, {"train": train, "val": val, "test": test},
                  "boxes", stats)
    LOG.info("  image paths are relative to %s (toolkit: dataset/%s)",
             args.image_root, NAME)


def main(argv=None) -> int:
    return run(prepare, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

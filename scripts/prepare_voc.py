"""Convert PASCAL VOC 2012 into metadata/VOC2012/{train_aug,train,val}/ (seed mIoU).

Reads the official devkit (``--voc_root``, i.e. ``VOCdevkit/VOC2012``; pass
``--data_root VOCdevkit`` to main.py so that ``<data_root>/VOC2012`` is it):

    <voc_root>/JPEGImages/<id>.jpg
    <voc_root>/Annotations/<id>.xml                  image labels, as ReCAM reads them:
                                                     every object name of the 20
                                                     classes (difficult ones included)
    <voc_root>/SegmentationClass/<id>.png            class-index masks (255 = void)
    <voc_root>/ImageSets/Segmentation/{train,val}.txt

and, when given, SBD's ``train_aug`` id list (``--train_aug_list``, 10,582
ids, e.g. ReCAM's ``voc12/train_aug.txt``); ids are read as strings
(``2007_000032``).  Writes, paths relative to ``<voc_root>``:

    train_aug  training images and their labels (the Segmentation train list
               when no --train_aug_list is given: 1,464 images, said so)
    train      the 1,464 seed-evaluation images, with segmentation.txt
    val        the 1,449 val images, with segmentation.txt

``class_labels.txt`` has one line per (image, class), classes 0..19 in
VOC's order (aeroplane ... tvmonitor); ``segmentation.txt`` holds
``JPEGImages/<id>.jpg,SegmentationClass/<id>.png``.

    python scripts/prepare_voc.py --voc_root VOCdevkit/VOC2012 \\
        --train_aug_list train_aug.txt
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence
from xml.etree import ElementTree

from PIL import Image

NAME = "VOC2012"
CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
           "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
           "sheep", "sofa", "train", "tvmonitor")


class PrepareError(ValueError):
    pass


def read_ids(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise PrepareError(f"id list not found: {path}")
    with open(path, encoding="utf-8-sig") as f:
        ids = [line.split()[0] for line in f if line.strip()]
    seen = set()
    for number, image_id in enumerate(ids, start=1):
        if image_id in seen:
            raise PrepareError(f"{path}:{number}: id {image_id} is listed twice")
        seen.add(image_id)
    return ids


def image_classes(voc_root: str, image_id: str) -> list[int]:
    """The classes of an image from its annotation XML (ReCAM's rule: every
    <name> of the 20 classes, part names such as 'head' ignored)."""
    path = os.path.join(voc_root, "Annotations", image_id + ".xml")
    if not os.path.isfile(path):
        raise PrepareError(f"annotation not found for {image_id}: {path}")
    try:
        names = [e.text.strip() for e in ElementTree.parse(path).iter("name") if e.text]
    except ElementTree.ParseError as error:
        raise PrepareError(f"{path}: not valid XML ({error})") from None
    return sorted({CLASSES.index(n) for n in names if n in CLASSES})


def image_size(voc_root: str, image_id: str) -> tuple[int, int]:
    path = os.path.join(voc_root, "JPEGImages", image_id + ".jpg")
    if not os.path.isfile(path):
        raise PrepareError(f"image not found for {image_id}: {path}")
    with Image.open(path) as image:
        return image.size


def write_split(metadata_root: str, split: str, voc_root: str, ids: Sequence[str],
                with_masks: bool) -> int:
    lines = {"image_ids": [], "class_labels": [], "image_sizes": [], "segmentation": []}
    unlabeled = 0
    for image_id in ids:
        path = f"JPEGImages/{image_id}.jpg"
        classes = image_classes(voc_root, image_id)
        unlabeled += not classes
        width, height = image_size(voc_root, image_id)
        lines["image_ids"].append(path)
        lines["class_labels"].extend(f"{path},{c}" for c in classes)
        lines["image_sizes"].append(f"{path},{width},{height}")
        if with_masks:
            mask = f"SegmentationClass/{image_id}.png"
            if not os.path.isfile(os.path.join(voc_root, mask)):
                raise PrepareError(f"segmentation mask not found for {image_id}: "
                                   f"{os.path.join(voc_root, mask)}")
            lines["segmentation"].append(f"{path},{mask}")
    folder = os.path.join(metadata_root, NAME, split)
    os.makedirs(folder, exist_ok=True)
    for name, rows in lines.items():
        if name == "segmentation" and not with_masks:
            continue
        with open(os.path.join(folder, f"{name}.txt"), "w", encoding="utf-8", newline="\n") as f:
            f.writelines(row + "\n" for row in rows)
    if unlabeled:
        print(f"note: {unlabeled} image(s) of {split} have no object of the 20 classes",
              file=sys.stderr)
    return len(ids)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--voc_root", required=True, help="VOCdevkit/VOC2012")
    p.add_argument("--train_aug_list", default=None,
                   help="SBD's train_aug id list (default: the Segmentation train list)")
    p.add_argument("--metadata_root", default="metadata")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not os.path.isdir(os.path.join(args.voc_root, "JPEGImages")):
            raise PrepareError(f"{args.voc_root} has no JPEGImages/: pass VOCdevkit/VOC2012")
        sets = os.path.join(args.voc_root, "ImageSets", "Segmentation")
        train = read_ids(os.path.join(sets, "train.txt"))
        val = read_ids(os.path.join(sets, "val.txt"))
        overlap = set(train) & set(val)
        if overlap:
            raise PrepareError(f"train and val share {len(overlap)} id(s), e.g. {min(overlap)}")
        if args.train_aug_list:
            train_aug = read_ids(args.train_aug_list)
            leaked = set(train_aug) & set(val)
            if leaked:
                raise PrepareError(f"{args.train_aug_list} holds {len(leaked)} val id(s), e.g. "
                                   f"{min(leaked)}: seeds would be scored on training images")
        else:
            train_aug = train
            print("note: no --train_aug_list: training on the 1,464 Segmentation train images "
                  "(ReCAM trains on SBD's 10,582 train_aug)", file=sys.stderr)
        counts = {"train_aug": write_split(args.metadata_root, "train_aug", args.voc_root,
                                           train_aug, with_masks=False),
                  "train": write_split(args.metadata_root, "train", args.voc_root, train, True),
                  "val": write_split(args.metadata_root, "val", args.voc_root, val, True)}
    except PrepareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{NAME} metadata written to {os.path.join(args.metadata_root, NAME)}: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

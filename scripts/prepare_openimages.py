"""Convert OpenImages30k into metadata/OpenImages/{train,val,test}/ (mask format).

Reads the wsolevaluation distribution of OpenImages30k (OpenImages_images.zip
and OpenImages_annotations.zip unzipped into one folder, ``--openimages_root``,
the toolkit's ``dataset/OpenImages``; see wsolevaluation's
dataset/prepare_openimages.sh):

    <root>/train/<class>/<image>.jpg
    <root>/val/<class>/<image>.jpg
    <root>/val/<class>/<image>_m<class>_<instance>.png    one per instance mask
    <root>/val/<class>/<image>_ignore.png                 ignore region (optional)
    <root>/test/<class>/...                               as val

``<class>`` is the OpenImages class id without its ``/m/`` prefix (e.g.
``01226z``).  Writes, with paths relative to <root>:

    image_ids.txt     test/01226z/7af766bd43da900b.jpg
    localization.txt  test/01226z/7af766bd43da900b.jpg,test/01226z/7af766bd43da900b_m01226z_6554d965.png,test/01226z/7af766bd43da900b_ignore.png
                      (one line per instance mask; only an image's first line
                      carries its ignore png)

train = OpenImages30k train (no masks needed), val = its val (the
full-supervision split, as in wsolevaluation), test = its test; every val and
test image needs at least one instance mask.  Labels are the index of the
class folder among the sorted train class folders (01226z -> 0, as in
wsolevaluation's metadata).  Masks are listed in file-name order.  Image sizes
are read from the image headers.  For evaluation, the masks are found under
<mask_root>/OpenImages/, i.e. pass the parent of <root> as --mask_root.

    python scripts/prepare_openimages.py --openimages_root dataset/OpenImages
"""
from __future__ import annotations

import os
import sys

from wsol.data.prepare import (LOG, PrepareError, Record, Stats,
                             check_unique, fill_sizes, make_parser,
                             read_image_size, require_dir, require_localization, run,
                             write_dataset)

NAME = "OpenImages"
_IMAGE_EXT = (".jpg", ".jpeg")


def build_parser():
    parser = make_parser(__doc__, default_val_per_class=None)
    parser.add_argument("--openimages_root", required=True,
                        help="folder holding train/, val/ and test/ class folders")
    parser.add_argument("--check_masks", action="store_true",
                        help="also open every mask png header and require it to have "
                             "the size of its image")
    return parser


def read_split(root: str, split: str, classes: dict, stats: Stats) -> list[Record]:
    split_dir = require_dir(os.path.join(root, split), f"OpenImages {split} folder")
    records = []
    for cls in sorted(os.listdir(split_dir)):
        folder = os.path.join(split_dir, cls)
        if not os.path.isdir(folder):
            continue
        if cls not in classes:
            raise PrepareError(f"{folder}: unknown class {cls!r} (no train folder of "
                               f"that name)")
        names = sorted(os.listdir(folder))
        images = {}
        for name in names:
            if name.lower().endswith(_IMAGE_EXT) and not name.startswith("."):
                stem = os.path.splitext(name)[0]
                images[stem] = Record(f"{split}/{cls}/{name}", classes[cls],
                                      os.path.join(folder, name))
        skipped = 0
        for name in names:
            path = os.path.join(folder, name)
            if name.lower().endswith(_IMAGE_EXT) or not os.path.isfile(path):
                continue
            if not name.endswith(".png"):
                skipped += 1
                continue
            if name.endswith("_ignore.png"):
                stem, is_ignore = name[:-len("_ignore.png")], True
            elif f"_m{cls}_" in name:
                stem, is_ignore = name[:name.index(f"_m{cls}_")], False
            else:
                raise PrepareError(
                    f"{path}: unexpected png name; expected "
                    f"<image>_m{cls}_<instance>.png or <image>_ignore.png (a mask of "
                    f"another class in this folder?)")
            record = images.get(stem)
            if record is None:
                raise PrepareError(f"{path}: mask of a missing image {stem}.jpg")
            if is_ignore:
                record.ignore = f"{split}/{cls}/{name}"
            else:
                record.masks.append(f"{split}/{cls}/{name}")
        if skipped:
            stats.notes.append(f"{split}/{cls}: {skipped} file(s) that are neither "
                               f".jpg nor .png were ignored")
        if not images:
            raise PrepareError(f"{folder}: class folder has no .jpg images")
        records.extend(images[stem] for stem in sorted(images))
    if not records:
        raise PrepareError(f"{split_dir}: no images")
    return records


def check_mask_sizes(root: str, records: list[Record]) -> None:
    for record in records:
        for path in record.masks + ([record.ignore] if record.ignore else []):
            size = read_image_size(os.path.join(root, path), record.source)
            if size != record.size:
                raise PrepareError(
                    f"{os.path.join(root, path)}: mask is {size[0]}x{size[1]} but "
                    f"its image is {record.size[0]}x{record.size[1]}")


def prepare(args) -> None:
    stats = Stats()
    root = require_dir(args.openimages_root, "--openimages_root folder")
    train_dir = require_dir(os.path.join(root, "train"), "OpenImages train folder")
    class_names = sorted(e for e in os.listdir(train_dir)
                         if os.path.isdir(os.path.join(train_dir, e)))
    if not class_names:
        raise PrepareError(f"{train_dir}: no class folders")
    classes = {cls: i for i, cls in enumerate(class_names)}
    splits = {split: read_split(root, split, classes, stats)
              for split in ("train", "val", "test")}
    for split in ("val", "test"):
        require_localization(splits[split], split, "masks")
    for split, records in splits.items():
        check_unique(records, split)
    # Paths differ by their split folder; the splits must not share an image.
    by_name = {}
    for split, records in splits.items():
        for record in records:
            name = os.path.basename(record.image_id)
            if name in by_name:
                raise PrepareError(
                    f"{record.source}: image {name} is also in {by_name[name]}; "
                    f"the splits must be disjoint")
            by_name[name] = record.source
    for split, records in splits.items():
        fill_sizes(records, root, args.workers, f"{split} images")
        if args.check_masks:
            check_mask_sizes(root, records)
    write_dataset(args.metadata_root, NAME, splits, "masks", stats)
    LOG.info("  image and mask paths are relative to %s (toolkit: dataset/%s)",
             root, NAME)


def main(argv=None) -> int:
    return run(prepare, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

"""Tests of scripts/prepare_*.py: each converter runs on a tiny fake copy of
its dataset's official distribution (written here: real image files and
annotation files in the official formats), and its output is read back with
the data_loaders readers.  Broken inputs must fail with one clear message."""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.io as sio
from PIL import Image

from data_loaders import (configure_metadata, get_bounding_boxes, get_class_labels,
                          get_image_ids, get_image_sizes, get_mask_paths)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_cub = load_script("prepare_cub")
prepare_ilsvrc = load_script("prepare_ilsvrc")
prepare_cars = load_script("prepare_cars")
prepare_openimages = load_script("prepare_openimages")


def write_image(path, width, height, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (width, height), (120, 30, 200)).save(path, format=fmt)


def write_text(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(f"{line}\n" for line in lines))


def replace_line(path, old, new):
    with open(path) as f:
        text = f.read()
    assert old in text, (old, text)
    with open(path, "w") as f:
        f.write(text.replace(old, new))


def read_split(meta_root, dataset, split):
    md = configure_metadata(os.path.join(meta_root, dataset, split))
    out = {"ids": get_image_ids(md), "labels": get_class_labels(md),
           "sizes": get_image_sizes(md)}
    if os.path.isfile(md["localization"]):
        with open(md["localization"]) as f:
            first = f.readline()
        if first.count(",") == 4:
            out["boxes"] = get_bounding_boxes(md)
        else:
            out["masks"], out["ignore"] = get_mask_paths(md)
    return out


def run_failing(main, argv, capsys, *needles):
    """``main(argv)`` must return 1 and print one 'error:' line with ``needles``."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "error:" in lines[0] and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --------------------------------------------------------------------------
# CUB-200-2011
# --------------------------------------------------------------------------

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
# image_id: (path, class_id, is_train, (w, h), "x y width height")
CUB_IMAGES = {
    1: ("001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg", 1, 0, (64, 80),
        "5.0 6.0 20.0 30.0"),
    2: ("001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg", 1, 1, (80, 64),
        "10.0 20.0 30.0 40.0"),
    3: ("001.Black_footed_Albatross/Black_Footed_Albatross_0002_55.jpg", 1, 1, (50, 50),
        "1.5 2.0 10.25 5.0"),
    4: ("002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg", 2, 1, (60, 40),
        "0.0 0.0 60.0 40.0"),
    5: ("002.Laysan_Albatross/Laysan_Albatross_0082_524.jpg", 2, 0, (40, 60),
        "3.0 4.0 5.0 6.0"),
    6: ("002.Laysan_Albatross/Laysan_Albatross_0070_788.jpg", 2, 1, (40, 40),
        "7.0 8.0 9.0 10.0"),
    7: ("003.Sooty_Albatross/Sooty_Albatross_0003_1078.jpg", 3, 1, (45, 35),
        "2.0 2.0 3.0 3.0"),
    8: ("003.Sooty_Albatross/Sooty_Albatross_0044_1105.jpg", 3, 0, (33, 44),
        "1.0 1.0 31.0 42.0"),
    9: ("003.Sooty_Albatross/Sooty_Albatross_0071_1116.jpg", 3, 1, (30, 20),
        "0.0 0.0 30.0 20.0"),
}


def cub_box(image_id):
    x, y, w, h = map(float, CUB_IMAGES[image_id][4].split())
    return [x, y, x + w, y + h]


@pytest.fixture
def cub(tmp_path):
    root = tmp_path / "CUB_200_2011"
    for image_id, (path, _, _, (w, h), _) in CUB_IMAGES.items():
        write_image(str(root / "images" / path), w, h)
    write_text(str(root / "classes.txt"), [f"{i + 1} {c}" for i, c in enumerate(CUB_CLASSES)])
    write_text(str(root / "images.txt"), [f"{i} {v[0]}" for i, v in CUB_IMAGES.items()])
    write_text(str(root / "image_class_labels.txt"),
               [f"{i} {v[1]}" for i, v in CUB_IMAGES.items()])
    write_text(str(root / "train_test_split.txt"),
               [f"{i} {v[2]}" for i, v in CUB_IMAGES.items()])
    write_text(str(root / "bounding_boxes.txt"), [f"{i} {v[4]}" for i, v in CUB_IMAGES.items()])
    meta = str(tmp_path / "metadata")
    return {"root": str(root), "meta": meta,
            "argv": ["--cub_root", str(root), "--metadata_root", meta,
                     "--num_val_sample_per_class", "1"]}


def test_cub_round_trip(cub, caplog):
    caplog.set_level(logging.INFO)
    assert prepare_cub.main(cub["argv"]) == 0
    path = {i: v[0] for i, v in CUB_IMAGES.items()}
    train = read_split(cub["meta"], "CUB", "train")
    test = read_split(cub["meta"], "CUB", "test")
    assert train["ids"] == [path[i] for i in (2, 3, 4, 6, 7, 9)]
    assert test["ids"] == [path[i] for i in (1, 5, 8)]
    for split in (train, test):
        for image_id in split["ids"]:
            number = next(i for i, v in CUB_IMAGES.items() if v[0] == image_id)
            assert split["labels"][image_id] == CUB_IMAGES[number][1] - 1
            assert split["sizes"][image_id] == CUB_IMAGES[number][3]
            assert split["boxes"][image_id] == [cub_box(number)]
    # x, y, width, height -> x0, y0, x1 = x + width, y1 = y + height
    assert train["boxes"][path[2]] == [[10, 20, 40, 60]]
    assert train["boxes"][path[3]] == [[1.5, 2, 11.75, 7]]
    with open(os.path.join(cub["meta"], "CUB", "train", "localization.txt")) as f:
        assert f"{path[2]},10,20,40,60\n" in f.read()
    # val: one train image per class, with its box, still in train
    val = read_split(cub["meta"], "CUB", "val")
    assert len(val["ids"]) == 3
    assert sorted(val["labels"][i] for i in val["ids"]) == [0, 1, 2]
    assert set(val["ids"]) <= set(train["ids"])
    for image_id in val["ids"]:
        assert val["boxes"][image_id] == train["boxes"][image_id]
        assert val["sizes"][image_id] == train["sizes"][image_id]
    assert re.search(r"train\s+6 images,\s+3 classes,\s+6 boxes", caplog.text)
    assert re.search(r"test\s+3 images,\s+3 classes,\s+3 boxes", caplog.text)
    assert "sampled from TRAIN" in caplog.text


def test_cub_val_sample_is_fixed_and_can_be_excluded(cub):
    assert prepare_cub.main(cub["argv"]) == 0
    first = read_split(cub["meta"], "CUB", "val")["ids"]
    assert prepare_cub.main(cub["argv"] + ["--exclude_val_from_train"]) == 0
    assert read_split(cub["meta"], "CUB", "val")["ids"] == first
    train = read_split(cub["meta"], "CUB", "train")["ids"]
    assert len(train) == 3 and not set(train) & set(first)


def test_cub_val_source(cub, tmp_path):
    # A CUBV2-style held-out set: images extracted into the image folder,
    # boxes in the metadata format (docs/protocol.md).
    image = "002.Laysan_Albatross/25513167677.jpg"
    write_image(os.path.join(cub["root"], "images", image), 70, 50)
    source = tmp_path / "cubv2"
    write_text(str(source / "image_ids.txt"), [image])
    write_text(str(source / "class_labels.txt"), [f"{image},1"])
    write_text(str(source / "localization.txt"), [f"{image},3,4,60,45", f"{image},0,0,5,5"])
    assert prepare_cub.main(cub["argv"] + ["--val_source", str(source)]) == 0
    val = read_split(cub["meta"], "CUB", "val")
    assert val["ids"] == [image] and val["labels"] == {image: 1}
    assert val["boxes"] == {image: [[3, 4, 60, 45], [0, 0, 5, 5]]}
    assert val["sizes"] == {image: (70, 50)}
    assert len(read_split(cub["meta"], "CUB", "train")["ids"]) == 6
    # the same source with a box outside its image fails
    write_text(str(source / "localization.txt"), [f"{image},3,4,71,45"])
    assert prepare_cub.main(cub["argv"] + ["--val_source", str(source)]) == 1


def test_cub_clip_boxes(cub, capsys):
    replace_line(os.path.join(cub["root"], "bounding_boxes.txt"),
                 "1 5.0 6.0 20.0 30.0", "1 50.0 60.0 30.0 40.0")
    run_failing(prepare_cub.main, cub["argv"], capsys, "bounding_boxes.txt:1",
                "Black_Footed_Albatross_0046_18.jpg", "outside the image (64x80)",
                "--clip_boxes")
    assert prepare_cub.main(cub["argv"] + ["--clip_boxes"]) == 0
    test = read_split(cub["meta"], "CUB", "test")
    assert test["boxes"][CUB_IMAGES[1][0]] == [[50, 60, 64, 80]]


@pytest.mark.parametrize("breakage, needles", [
    ("missing_image", ["image file not found", "Laysan_Albatross_0070_788.jpg"]),
    ("missing_file", ["train_test_split.txt not found"]),
    ("unknown_class", ["image_class_labels.txt:3", "unknown class id 7"]),
    ("malformed_line", ["bounding_boxes.txt:4", "malformed line"]),
    ("not_a_number", ["bounding_boxes.txt:4", "'abc' is not a number"]),
    ("missing_entry", ["train_test_split.txt", "no entry for image id 8"]),
    ("bad_split_flag", ["train_test_split.txt:2", "must be 1 or 0"]),
    ("wrong_folder", ["image_class_labels.txt:4", "lies in folder"]),
    ("duplicate", ["images.txt:10", "listed twice"]),
])
def test_cub_broken_input(cub, capsys, breakage, needles):
    root = cub["root"]
    if breakage == "missing_image":
        os.remove(os.path.join(root, "images", CUB_IMAGES[6][0]))
    elif breakage == "missing_file":
        os.remove(os.path.join(root, "train_test_split.txt"))
    elif breakage == "unknown_class":
        replace_line(os.path.join(root, "image_class_labels.txt"), "3 1\n", "3 7\n")
    elif breakage == "malformed_line":
        replace_line(os.path.join(root, "bounding_boxes.txt"),
                     "4 0.0 0.0 60.0 40.0", "4 0.0 0.0 60.0")
    elif breakage == "not_a_number":
        replace_line(os.path.join(root, "bounding_boxes.txt"),
                     "4 0.0 0.0 60.0 40.0", "4 abc 0.0 60.0 40.0")
    elif breakage == "missing_entry":
        replace_line(os.path.join(root, "train_test_split.txt"), "8 0\n", "")
    elif breakage == "bad_split_flag":
        replace_line(os.path.join(root, "train_test_split.txt"), "2 1\n", "2 yes\n")
    elif breakage == "wrong_folder":
        replace_line(os.path.join(root, "image_class_labels.txt"), "4 2\n", "4 3\n")
    elif breakage == "duplicate":
        with open(os.path.join(root, "images.txt"), "a") as f:
            f.write(f"10 {CUB_IMAGES[2][0]}\n")
    run_failing(prepare_cub.main, cub["argv"], capsys, *needles)
    assert not os.path.exists(os.path.join(cub["meta"], "CUB"))  # nothing half-written


# --------------------------------------------------------------------------
# ILSVRC
# --------------------------------------------------------------------------

WNIDS = ["n01440764", "n01443537", "n01484850"]
# val image -> (wnid, size, boxes as in the XML: xmin ymin xmax ymax)
ILSVRC_VAL = {
    "ILSVRC2012_val_00000001": ("n01484850", (100, 75), [(11, 10, 44, 19)]),
    "ILSVRC2012_val_00000002": ("n01440764", (75, 100), [(4, 4, 70, 16), (0, 6, 43, 20)]),
    "ILSVRC2012_val_00000003": ("n01443537", (60, 60), [(0, 0, 60, 60)]),
}
# train image -> boxes (only some train images are annotated)
ILSVRC_TRAIN_BOXES = {
    "n01440764_10026": [(1, 2, 30, 40)],
    "n01440764_10027": [(3, 3, 9, 9)],
    "n01443537_2": [(5, 5, 25, 25), (0, 0, 10, 10)],
    "n01484850_7": [(2, 4, 6, 8)],
}


def ilsvrc_xml(name, wnid, size, boxes):
    objects = "".join(
        f"<object><name>{wnid}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for b in boxes)
    return (f"<annotation><folder>val</folder><filename>{name}</filename><source>"
            f"<database>ILSVRC_2012</database></source><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size><segmented>0</segmented>"
            f"{objects}</annotation>")


def solution_row(name, wnid, boxes):
    return f"{name}," + " ".join(f"{wnid} {b[0]} {b[1]} {b[2]} {b[3]}" for b in boxes) + " "


@pytest.fixture
def ilsvrc(tmp_path):
    root = tmp_path / "ILSVRC"
    train_names = {"n01440764": ["n01440764_10026", "n01440764_10027", "n01440764_3"],
                   "n01443537": ["n01443537_2", "n01443537_5"],
                   "n01484850": ["n01484850_7", "n01484850_8"]}
    for wnid, names in train_names.items():
        for k, name in enumerate(names):
            write_image(str(root / "train" / wnid / f"{name}.JPEG"), 40 + k, 50, "JPEG")
    (root / "train" / "n01440764.tar").write_bytes(b"left over by the extraction")
    for name, (wnid, size, _) in ILSVRC_VAL.items():
        write_image(str(root / "val" / f"{name}.JPEG"), *size, "JPEG")
    xml_dir = tmp_path / "bbox_val" / "val"
    xml_dir.mkdir(parents=True)
    for name, (wnid, size, boxes) in ILSVRC_VAL.items():
        (xml_dir / f"{name}.xml").write_text(ilsvrc_xml(name, wnid, size, boxes))
    csv_path = tmp_path / "LOC_val_solution.csv"
    write_text(str(csv_path), ["ImageId,PredictionString"] + [
        solution_row(name, wnid, boxes) for name, (wnid, _, boxes) in ILSVRC_VAL.items()])
    train_xml = tmp_path / "bbox_train"
    for name, boxes in ILSVRC_TRAIN_BOXES.items():
        wnid = name.split("_")[0]
        (train_xml / wnid).mkdir(parents=True, exist_ok=True)
        (train_xml / wnid / f"{name}.xml").write_text(ilsvrc_xml(name, wnid, (40, 50), boxes))
    train_csv = tmp_path / "LOC_train_solution.csv"
    write_text(str(train_csv), ["ImageId,PredictionString"] + [
        solution_row(name, name.split("_")[0], boxes)
        for name, boxes in ILSVRC_TRAIN_BOXES.items()])
    meta = str(tmp_path / "metadata")
    return {"root": str(root), "meta": meta, "xml": str(xml_dir), "csv": str(csv_path),
            "train_xml": str(train_xml), "train_csv": str(train_csv), "tmp": tmp_path,
            "argv": ["--image_root", str(root), "--metadata_root", meta,
                     "--val_annotations", str(xml_dir),
                     "--train_annotations", str(train_xml)]}


@pytest.mark.parametrize("annotation_format", ["xml", "csv"])
def test_ilsvrc_round_trip(ilsvrc, caplog, annotation_format):
    caplog.set_level(logging.INFO)
    argv = ["--image_root", ilsvrc["root"], "--metadata_root", ilsvrc["meta"],
            "--val_annotations", ilsvrc[annotation_format],
            "--train_annotations", ilsvrc[f"train_{annotation_format}"],
            "--num_val_sample_per_class", "1"]
    assert prepare_ilsvrc.main(argv) == 0
    test = read_split(ilsvrc["meta"], "ILSVRC", "test")
    assert test["ids"] == [f"val/{name}.JPEG" for name in sorted(ILSVRC_VAL)]
    for name, (wnid, size, boxes) in ILSVRC_VAL.items():
        image_id = f"val/{name}.JPEG"
        assert test["labels"][image_id] == WNIDS.index(wnid)
        assert test["sizes"][image_id] == size
        assert test["boxes"][image_id] == [list(map(float, b)) for b in boxes]  # all boxes
    train = read_split(ilsvrc["meta"], "ILSVRC", "train")
    assert len(train["ids"]) == 7
    assert train["ids"][0] == "train/n01440764/n01440764_10026.JPEG"
    assert train["labels"]["train/n01484850/n01484850_8.JPEG"] == 2
    assert train["sizes"]["train/n01440764/n01440764_3.JPEG"] == (42, 50)
    assert train["boxes"]["train/n01443537/n01443537_2.JPEG"] == [[5, 5, 25, 25],
                                                                  [0, 0, 10, 10]]
    assert len(train["boxes"]) == 4
    val = read_split(ilsvrc["meta"], "ILSVRC", "val")
    assert sorted(val["labels"][i] for i in val["ids"]) == [0, 1, 2]
    for image_id in val["ids"]:  # sampled among the train images with boxes
        assert val["boxes"][image_id] == train["boxes"][image_id]
    assert re.search(r"test\s+3 images,\s+3 classes,\s+4 boxes", caplog.text)


def test_ilsvrc_synset_mapping(ilsvrc, capsys, tmp_path):
    mapping = tmp_path / "LOC_synset_mapping.txt"
    write_text(str(mapping), ["n01484850 great white shark, white shark",
                              "n01440764 tench, Tinca tinca",
                              "n01443537 goldfish, Carassius auratus"])
    assert prepare_ilsvrc.main(ilsvrc["argv"] + ["--synset_mapping", str(mapping)]) == 0
    test = read_split(ilsvrc["meta"], "ILSVRC", "test")
    assert test["labels"]["val/ILSVRC2012_val_00000001.JPEG"] == 0  # n01484850 first
    with open(mapping, "a") as f:
        f.write("n09999999 not downloaded\n")
    capsys.readouterr()  # the successful run's report, whichever stream logging uses
    run_failing(prepare_ilsvrc.main, ilsvrc["argv"] + ["--synset_mapping", str(mapping)],
                capsys, "no folder for class n09999999")


def test_ilsvrc_val_source_without_train_boxes(ilsvrc, tmp_path):
    image = "val2/0/a31041fd31109279f69ba5827fe508eee00abd75.jpeg"
    write_image(os.path.join(ilsvrc["root"], image), 50, 40, "JPEG")
    source = tmp_path / "imagenetv2"
    write_text(str(source / "image_ids.txt"), [image])
    write_text(str(source / "class_labels.txt"), [f"{image},0"])
    write_text(str(source / "image_sizes.txt"), [f"{image},50,40"])
    write_text(str(source / "localization.txt"), [f"{image},15,16,31,23"])
    argv = ["--image_root", ilsvrc["root"], "--metadata_root", ilsvrc["meta"],
            "--val_annotations", ilsvrc["csv"], "--val_source", str(source)]
    assert prepare_ilsvrc.main(argv) == 0
    val = read_split(ilsvrc["meta"], "ILSVRC", "val")
    assert val["ids"] == [image] and val["boxes"] == {image: [[15, 16, 31, 23]]}
    assert "boxes" not in read_split(ilsvrc["meta"], "ILSVRC", "train")
    # a wrong size in the source's image_sizes.txt is caught
    write_text(str(source / "image_sizes.txt"), [f"{image},40,50"])
    assert prepare_ilsvrc.main(argv) == 1


@pytest.mark.parametrize("breakage, needles", [
    ("missing_image", ["ILSVRC2012_val_00000002.xml", "image file not found"]),
    ("box_outside", ["ILSVRC2012_val_00000003.xml", "outside the image (60x60)"]),
    ("unknown_class", ["ILSVRC2012_val_00000001.xml", "unknown class 'n99999999'"]),
    ("malformed_xml", ["ILSVRC2012_val_00000001.xml", "<xmax> is missing"]),
    ("broken_xml", ["ILSVRC2012_val_00000003.xml", "malformed XML"]),
    ("malformed_csv", ["LOC_val_solution.csv:3", "malformed PredictionString"]),
    ("unannotated_image", ["no annotation", "ILSVRC2012_val_00000009.JPEG"]),
    ("missing_train_image", ["n01443537_2", "not in the train folders"]),
    ("no_val_boxes", ["--val_source", "--train_annotations"]),
])
def test_ilsvrc_broken_input(ilsvrc, capsys, breakage, needles):
    argv = list(ilsvrc["argv"])
    xml = lambda name: os.path.join(ilsvrc["xml"], f"{name}.xml")  # noqa: E731
    if breakage == "missing_image":
        os.remove(os.path.join(ilsvrc["root"], "val", "ILSVRC2012_val_00000002.JPEG"))
    elif breakage == "box_outside":
        replace_line(xml("ILSVRC2012_val_00000003"), "<xmax>60</xmax>", "<xmax>61</xmax>")
    elif breakage == "unknown_class":
        replace_line(xml("ILSVRC2012_val_00000001"), "n01484850</name>", "n99999999</name>")
    elif breakage == "malformed_xml":
        replace_line(xml("ILSVRC2012_val_00000001"), "<xmax>44</xmax>", "")
    elif breakage == "broken_xml":
        replace_line(xml("ILSVRC2012_val_00000003"), "</annotation>", "")
    elif breakage == "malformed_csv":
        replace_line(ilsvrc["csv"], "n01440764 0 6 43 20", "n01440764 0 6 43")
        argv[argv.index(ilsvrc["xml"])] = ilsvrc["csv"]
    elif breakage == "unannotated_image":
        write_image(os.path.join(ilsvrc["root"], "val", "ILSVRC2012_val_00000009.JPEG"),
                    10, 10, "JPEG")
    elif breakage == "missing_train_image":
        os.remove(os.path.join(ilsvrc["root"], "train", "n01443537", "n01443537_2.JPEG"))
    elif breakage == "no_val_boxes":
        argv = argv[:-2]
    run_failing(prepare_ilsvrc.main, argv, capsys, *needles)


# --------------------------------------------------------------------------
# Stanford Cars
# --------------------------------------------------------------------------

CAR_NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]
# fname -> (bbox_x1, bbox_y1, bbox_x2, bbox_y2, class 1-based, (w, h))
CARS_TRAIN = {
    "00001.jpg": (39, 16, 56, 37, 1, (60, 40)),
    "00002.jpg": (3, 5, 20, 30, 1, (30, 30)),
    "00003.jpg": (1, 1, 50, 40, 2, (50, 40)),
    "00004.jpg": (10, 10, 20, 20, 2, (25, 25)),
    "00005.jpg": (4, 4, 8, 8, 3, (20, 30)),
    "00006.jpg": (2, 2, 3, 3, 3, (10, 10)),
}
CARS_TEST = {
    "00001.jpg": (30, 52, 46, 70, 3, (50, 75)),
    "00002.jpg": (1, 1, 10, 10, 2, (12, 12)),
    "00003.jpg": (5, 5, 15, 15, 1, (16, 16)),
}


def write_cars_annos(path, entries, with_class=True):
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"] + (["class"] if with_class else [])
    fields.append("fname")
    annos = np.zeros((1, len(entries)), dtype=[(f, "O") for f in fields])
    for k, (fname, values) in enumerate(entries.items()):
        row = [np.array([[v]], dtype=np.uint16) for v in values[:4]]
        if with_class:
            row.append(np.array([[values[4]]], dtype=np.uint8))
        row.append(np.array([fname]))
        annos[0, k] = tuple(row)
    sio.savemat(path, {"annotations": annos})


@pytest.fixture
def cars(tmp_path):
    root = tmp_path / "CARS"
    for folder, entries in (("cars_train", CARS_TRAIN), ("cars_test", CARS_TEST)):
        for fname, values in entries.items():
            write_image(str(root / folder / fname), *values[5], "JPEG")
    (root / "devkit").mkdir()
    names = np.empty((1, len(CAR_NAMES)), dtype=object)
    for k, name in enumerate(CAR_NAMES):
        names[0, k] = np.array([name])
    sio.savemat(str(root / "devkit" / "cars_meta.mat"), {"class_names": names})
    write_cars_annos(str(root / "devkit" / "cars_train_annos.mat"), CARS_TRAIN)
    write_cars_annos(str(root / "devkit" / "cars_test_annos.mat"), CARS_TEST, False)
    write_cars_annos(str(root / "cars_test_annos_withlabels.mat"), CARS_TEST)
    meta = str(tmp_path / "metadata")
    return {"root": str(root), "meta": meta,
            "argv": ["--cars_root", str(root), "--metadata_root", meta,
                     "--num_val_sample_per_class", "1", "--exclude_val_from_train"]}


def test_cars_round_trip(cars, caplog):
    caplog.set_level(logging.INFO)
    assert prepare_cars.main(cars["argv"]) == 0
    splits = {s: read_split(cars["meta"], "CARS", s) for s in ("train", "val", "test")}
    assert splits["test"]["ids"] == [f"cars_test/{f}" for f in CARS_TEST]
    assert len(splits["val"]["ids"]) == 3 and len(splits["train"]["ids"]) == 3
    assert not set(splits["val"]["ids"]) & set(splits["train"]["ids"])
    assert (sorted(splits["val"]["ids"] + splits["train"]["ids"])
            == [f"cars_train/{f}" for f in CARS_TRAIN])
    for folder, entries in (("cars_train", CARS_TRAIN), ("cars_test", CARS_TEST)):
        for fname, (x1, y1, x2, y2, label, size) in entries.items():
            image_id = f"{folder}/{fname}"
            split = next(s for s in splits.values() if image_id in s["labels"])
            assert split["labels"][image_id] == label - 1
            assert split["boxes"][image_id] == [[x1, y1, x2, y2]]
            assert split["sizes"][image_id] == size
    assert re.search(r"test\s+3 images,\s+3 classes,\s+3 boxes", caplog.text)


def test_cars_exclusion_may_not_empty_a_class(cars, capsys):
    argv = cars["argv"][:]
    argv[argv.index("--num_val_sample_per_class") + 1] = "2"
    run_failing(prepare_cars.main, argv, capsys, "--exclude_val_from_train",
                "without train images")
    assert prepare_cars.main(argv[:-1]) == 0  # kept in train: fine
    assert len(read_split(cars["meta"], "CARS", "val")["ids"]) == 6


@pytest.mark.parametrize("breakage, needles", [
    ("missing_image", ["image file not found", "cars_train/00004.jpg"]),
    ("unknown_class", ["annotation 2", "unknown class 197"]),
    ("box_outside", ["annotation 1", "cars_test/00001.jpg", "outside the image (50x75)"]),
    ("no_labels", ["lacks the field(s) class", "cars_test_annos_withlabels.mat"]),
    ("missing_meta", ["cars_meta.mat not found"]),
    ("malformed", ["annotation 3", "not a number"]),
    ("not_a_mat", ["cannot read the .mat file"]),
])
def test_cars_broken_input(cars, capsys, breakage, needles):
    root, argv = cars["root"], list(cars["argv"])
    if breakage == "missing_image":
        os.remove(os.path.join(root, "cars_train", "00004.jpg"))
    elif breakage == "unknown_class":
        entries = dict(CARS_TRAIN)
        entries["00002.jpg"] = (3, 5, 20, 30, 197, (30, 30))
        write_cars_annos(os.path.join(root, "devkit", "cars_train_annos.mat"), entries)
    elif breakage == "box_outside":
        entries = dict(CARS_TEST)
        entries["00001.jpg"] = (30, 52, 46, 76, 3, (50, 75))
        write_cars_annos(os.path.join(root, "cars_test_annos_withlabels.mat"), entries)
    elif breakage == "no_labels":
        argv += ["--test_annos", os.path.join(root, "devkit", "cars_test_annos.mat")]
    elif breakage == "missing_meta":
        os.remove(os.path.join(root, "devkit", "cars_meta.mat"))
    elif breakage == "malformed":
        path = os.path.join(root, "devkit", "cars_train_annos.mat")
        annos = sio.loadmat(path)["annotations"]
        annos[0, 2]["bbox_x2"] = np.array(["wide"])
        sio.savemat(path, {"annotations": annos})
    elif breakage == "not_a_mat":
        with open(os.path.join(root, "devkit", "cars_train_annos.mat"), "w") as f:
            f.write("not a mat file")
    run_failing(prepare_cars.main, argv, capsys, *needles)


# --------------------------------------------------------------------------
# OpenImages30k
# --------------------------------------------------------------------------

OI_CLASSES = ["01226z", "0138tl", "0bt_c3"]  # sorted, as the labels are


@pytest.fixture
def openimages(tmp_path):
    root = tmp_path / "OpenImages"

    def image(split, cls, name, size=(32, 24), masks=(), ignore=True):
        folder = root / split / cls
        write_image(str(folder / f"{name}.jpg"), *size, "JPEG")
        for mask in masks:
            write_image(str(folder / f"{name}_m{cls}_{mask}.png"), *size, "PNG")
        if ignore:
            write_image(str(folder / f"{name}_ignore.png"), *size, "PNG")

    for k, cls in enumerate(OI_CLASSES):
        image("train", cls, f"aa{k}0", ignore=False)
        image("train", cls, f"aa{k}1", (20, 30), ignore=False)
        image("val", cls, f"bb{k}0", masks=["6554d965"])
    image("test", "01226z", "7af766bd43da900b", (40, 30), masks=["8856c605", "6554d965"])
    image("test", "01226z", "973645e9516726b3", masks=["9ad378d4"], ignore=False)
    image("test", "0bt_c3", "0a51958fcd523ae4", masks=["41344f12"])
    meta = str(tmp_path / "metadata")
    return {"root": str(root), "meta": meta, "image": image,
            "argv": ["--openimages_root", str(root), "--metadata_root", meta]}


def test_openimages_round_trip(openimages, caplog):
    caplog.set_level(logging.INFO)
    assert prepare_openimages.main(openimages["argv"] + ["--check_masks"]) == 0
    train = read_split(openimages["meta"], "OpenImages", "train")
    assert len(train["ids"]) == 6 and "masks" not in train
    assert train["labels"]["train/0bt_c3/aa21.jpg"] == 2
    assert train["sizes"]["train/0138tl/aa11.jpg"] == (20, 30)
    val = read_split(openimages["meta"], "OpenImages", "val")
    assert val["ids"] == [f"val/{c}/bb{k}0.jpg" for k, c in enumerate(OI_CLASSES)]
    assert val["masks"]["val/0138tl/bb10.jpg"] == ["val/0138tl/bb10_m0138tl_6554d965.png"]
    test = read_split(openimages["meta"], "OpenImages", "test")
    first = "test/01226z/7af766bd43da900b.jpg"
    assert test["ids"] == [first, "test/01226z/973645e9516726b3.jpg",
                           "test/0bt_c3/0a51958fcd523ae4.jpg"]
    assert test["labels"] == {first: 0, "test/01226z/973645e9516726b3.jpg": 0,
                              "test/0bt_c3/0a51958fcd523ae4.jpg": 2}
    assert test["sizes"][first] == (40, 30)
    assert test["masks"][first] == ["test/01226z/7af766bd43da900b_m01226z_6554d965.png",
                                    "test/01226z/7af766bd43da900b_m01226z_8856c605.png"]
    assert test["ignore"][first] == "test/01226z/7af766bd43da900b_ignore.png"
    assert test["ignore"]["test/01226z/973645e9516726b3.jpg"] is None
    with open(os.path.join(openimages["meta"], "OpenImages", "test", "localization.txt")) as f:
        lines = f.read().splitlines()
    assert lines[0] == (f"{first},test/01226z/7af766bd43da900b_m01226z_6554d965.png,"
                        f"test/01226z/7af766bd43da900b_ignore.png")
    assert lines[1] == f"{first},test/01226z/7af766bd43da900b_m01226z_8856c605.png,"
    for path in test["masks"][first] + [test["ignore"][first]]:
        assert os.path.isfile(os.path.join(openimages["root"], path))
    assert re.search(r"test\s+3 images,\s+2 classes,\s+4 masks", caplog.text)


@pytest.mark.parametrize("breakage, needles", [
    ("unknown_class", ["unknown class '0zzzzz'"]),
    ("foreign_mask", ["unexpected png name", "bb10_m01226z_1.png"]),
    ("orphan_mask", ["mask of a missing image", "cc99.jpg"]),
    ("no_mask", ["ee00", "has no instance mask"]),
    ("missing_split", ["OpenImages test folder not found"]),
    ("mask_size", ["--check_masks", "mask is 10x10 but its image is 32x24"]),
    ("shared_image", ["aa00.jpg", "disjoint"]),
])
def test_openimages_broken_input(openimages, capsys, breakage, needles):
    root, argv = openimages["root"], list(openimages["argv"])
    if breakage == "unknown_class":
        openimages["image"]("test", "0zzzzz", "dd00", masks=["1"])
    elif breakage == "foreign_mask":
        write_image(os.path.join(root, "val", "0138tl", "bb10_m01226z_1.png"), 32, 24, "PNG")
    elif breakage == "orphan_mask":
        write_image(os.path.join(root, "val", "0138tl", "cc99_m0138tl_1.png"), 32, 24, "PNG")
    elif breakage == "no_mask":
        openimages["image"]("test", "0138tl", "ee00", masks=[])
    elif breakage == "missing_split":
        shutil.rmtree(os.path.join(root, "test"))
    elif breakage == "mask_size":
        write_image(os.path.join(root, "val", "0138tl", "bb10_m0138tl_6554d965.png"),
                    10, 10, "PNG")
        argv.append("--check_masks")
        needles = ["mask is 10x10 but its image is 32x24"]
    elif breakage == "shared_image":
        openimages["image"]("test", "01226z", "aa00", masks=["1"])
    run_failing(prepare_openimages.main, argv, capsys, *needles)


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------

@pytest.mark.parametrize("script, layout", [
    ("prepare_cub.py", "bounding_boxes.txt"),
    ("prepare_ilsvrc.py", "LOC_val_solution.csv"),
    ("prepare_cars.py", "cars_test_annos_withlabels.mat"),
    ("prepare_openimages.py", "_ignore.png"),
])
def test_help_documents_layout(script, layout):
    result = subprocess.run([sys.executable, os.path.join("scripts", script), "--help"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert layout in result.stdout and "--metadata_root" in result.stdout


def test_cli_error_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join("scripts", "prepare_cub.py"), "--cub_root",
         str(tmp_path / "nowhere"), "--metadata_root", str(tmp_path / "m")],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"prepare_cub.py: error: --cub_root folder not found: {tmp_path / 'nowhere'}"]

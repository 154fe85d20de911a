"""Tests of wsol/synth.py: the generated SYNTH files are deterministic, in the
wsolevaluation metadata format, and their boxes, masks and pixels agree."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import cv2
import numpy as np
import pytest
from PIL import Image

from wsol.data import synth
from wsol.data.synth import (BOX_AREA_RANGE, CONFIG_FILENAME, SYNTH_CLASSES, ensure_synth,
                        generate_synth, synth_class_names)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size=64, train_per_class=2, val_per_class=2, test_per_class=2)
# Enough images for the statistics below, still well under a second.
SMALL = dict(seed=3, image_size=128, train_per_class=6, val_per_class=4, test_per_class=6)
SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def roots(base) -> tuple[str, str]:
    return os.path.join(str(base), "dataset"), os.path.join(str(base), "metadata")


def tree_bytes(base) -> dict[str, bytes]:
    """Every file under ``base`` by relative path."""
    files = {}
    for folder, _, names in os.walk(str(base)):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, str(base))] = f.read()
    return files


def read_rows(path: str) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split(",") for line in f if line.strip()]


class Split:
    """The metadata of one generated split, read straight from the files."""

    def __init__(self, base, split: str):
        data_root, metadata_root = roots(base)
        self.image_dir = os.path.join(data_root, "SYNTH")
        self.mask_dir = os.path.join(data_root, "SYNTH")  # mask_root = data_root
        self.folder = os.path.join(metadata_root, "SYNTH", split)
        meta = lambda name: os.path.join(self.folder, name)  # noqa: E731
        self.ids = [row[0] for row in read_rows(meta("image_ids.txt"))]
        self.labels = {p: int(label) for p, label in read_rows(meta("class_labels.txt"))}
        self.sizes = {p: (int(w), int(h)) for p, w, h in read_rows(meta("image_sizes.txt"))}
        self.boxes: dict[str, list[tuple[int, ...]]] = {}
        for p, *box in read_rows(meta("localization.txt")):
            self.boxes.setdefault(p, []).append(tuple(int(v) for v in box))
        self.mask_rows = (read_rows(meta("localization_masks.txt"))
                          if os.path.isfile(meta("localization_masks.txt")) else None)

    def image(self, image_id: str) -> np.ndarray:
        return np.asarray(Image.open(os.path.join(self.image_dir, image_id)))

    def mask(self, rel: str) -> np.ndarray:
        return np.asarray(Image.open(os.path.join(self.mask_dir, rel)))

    def masks_of(self) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        for p, mask, ignore in self.mask_rows:
            out.setdefault(p, []).append((mask, ignore))
        return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    base = tmp_path_factory.mktemp("small")
    generate_synth(*roots(base), **SMALL)
    return base


def bbox_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


# --------------------------------------------------------------------------
# class definitions and arguments
# --------------------------------------------------------------------------

def test_default_classes_share_every_attribute():
    specs = synth._class_specs(10)
    assert [s.name for s in specs] == SYNTH_CLASSES == synth_class_names()
    assert len(SYNTH_CLASSES) == 10 and len(set(SYNTH_CLASSES)) == 10
    assert len({(s.shape, s.texture, s.palette) for s in specs}) == 10
    for attribute in ("shape", "texture", "palette"):
        counts = Counter(getattr(s, attribute) for s in specs)
        # No attribute value is unique to one class: no single cue decides.
        assert min(counts.values()) >= 2, (attribute, counts)
    # More classes extend the list; fewer take a prefix.
    assert synth_class_names(25)[:10] == SYNTH_CLASSES
    assert len(set(synth_class_names(25))) == 25
    assert synth_class_names(4) == SYNTH_CLASSES[:4]


@pytest.mark.parametrize("bad", [dict(num_classes=0), dict(num_classes=10**6),
                                 dict(image_size=16), dict(seed=-1),
                                 dict(train_per_class=0), dict(seed=1.5)])
def test_bad_arguments_are_rejected(tmp_path, bad):
    with pytest.raises((ValueError, TypeError)):
        generate_synth(*roots(tmp_path), **bad)
    assert not os.path.exists(os.path.join(tmp_path, "dataset", "SYNTH", CONFIG_FILENAME))


def test_ensure_synth_rejects_unknown_argument(tmp_path):
    with pytest.raises(TypeError, match="colour"):
        ensure_synth(*roots(tmp_path), colour=3)


# --------------------------------------------------------------------------
# determinism
# --------------------------------------------------------------------------

def test_same_seed_gives_identical_bytes(tmp_path):
    generate_synth(*roots(tmp_path / "a"), seed=5, **TINY)
    generate_synth(*roots(tmp_path / "b"), seed=5, **TINY)
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    # images, masks, ignore pngs, every metadata file and the config
    assert len(a) > 60
    assert a.keys() == b.keys()
    for path in a:
        assert a[path] == b[path], path


def test_other_seed_gives_other_images(tmp_path):
    generate_synth(*roots(tmp_path / "a"), seed=5, **TINY)
    generate_synth(*roots(tmp_path / "b"), seed=6, **TINY)
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    images = [p for p in a if p.endswith(".png") and os.sep + "masks" + os.sep not in p]
    assert images and set(images) <= b.keys()  # same layout, same ids
    assert all(a[p] != b[p] for p in images)
    box_file = os.path.join("metadata", "SYNTH", "test", "localization.txt")
    assert a[box_file] != b[box_file]


# --------------------------------------------------------------------------
# layout and metadata
# --------------------------------------------------------------------------

def test_counts_and_every_id_in_every_file(small):
    for split in SPLITS:
        meta = Split(small, split)
        expected = 10 * SMALL[f"{split}_per_class"]
        assert len(meta.ids) == len(set(meta.ids)) == expected
        ids = set(meta.ids)
        assert set(meta.labels) == ids
        assert set(meta.sizes) == ids
        assert set(meta.boxes) == ids
        for image_id in meta.ids:
            parts = image_id.split("/")
            assert parts[0] == split and len(parts) == 3
            assert parts[1] == SYNTH_CLASSES[meta.labels[image_id]]
            assert parts[2].startswith(f"{split}_") and parts[2].endswith(".png")
        on_disk = {os.path.relpath(os.path.join(folder, name), meta.image_dir).replace(os.sep, "/")
                   for folder, _, names in os.walk(os.path.join(meta.image_dir, split))
                   for name in names}
        assert on_disk == ids  # no missing and no stray images
        if split == "train":
            assert meta.mask_rows is None
        else:
            assert {row[0] for row in meta.mask_rows} == ids
            # one mask line per box line, in the same order
            assert [row[0] for row in meta.mask_rows] == [
                p for p in meta.ids for _ in meta.boxes[p]]


def test_labels_in_range_and_balanced(small):
    for split in SPLITS:
        meta = Split(small, split)
        counts = Counter(meta.labels.values())
        assert set(counts) == set(range(10))
        assert set(counts.values()) == {SMALL[f"{split}_per_class"]}


def test_image_sizes_match_pngs(small):
    sizes = set()
    for split in SPLITS:
        meta = Split(small, split)
        for image_id in meta.ids:
            with Image.open(os.path.join(meta.image_dir, image_id)) as image:
                assert image.mode == "RGB"
                assert image.size == meta.sizes[image_id]
            w, h = meta.sizes[image_id]
            assert 0.75 * 128 <= w <= 128 and 0.75 * 128 <= h <= 128
            sizes.add((w, h))
    # Sizes vary, so consumers must rescale boxes per image.
    assert len(sizes) > 20


def test_boxes_inside_images_and_area_in_range(small):
    lo, hi = BOX_AREA_RANGE
    fractions = []
    for split in SPLITS:
        meta = Split(small, split)
        for image_id, boxes in meta.boxes.items():
            w, h = meta.sizes[image_id]
            for x0, y0, x1, y1 in boxes:
                assert 0 <= x0 <= x1 <= w - 1 and 0 <= y0 <= y1 <= h - 1
                fraction = (x1 - x0 + 1) * (y1 - y0 + 1) / (w * h)
                assert lo <= fraction <= hi, (image_id, fraction)
                fractions.append(fraction)
    fractions = np.array(fractions)
    # Both small and large objects occur.
    assert (fractions < 0.12).any() and (fractions > 0.35).any()


def test_some_images_hold_two_instances(small):
    counts = Counter()
    for split in SPLITS:
        meta = Split(small, split)
        counts.update(len(b) for b in meta.boxes.values())
    total = sum(counts.values())
    assert set(counts) == {1, 2}
    assert 0.05 <= counts[2] / total <= 0.4


def test_boxes_are_mask_bounding_boxes(small):
    for split in ("val", "test"):
        meta = Split(small, split)
        masks = meta.masks_of()
        for image_id in meta.ids:
            w, h = meta.sizes[image_id]
            instance_paths = [m for m, _ in masks[image_id]]
            assert len(instance_paths) == len(meta.boxes[image_id])
            union = np.zeros((h, w), bool)
            for rel, box in zip(instance_paths, meta.boxes[image_id]):
                assert rel.startswith(f"masks/{split}/")
                mask = meta.mask(rel)
                assert mask.shape == (h, w) and mask.dtype == np.uint8
                assert set(np.unique(mask)) <= {0, 255}
                assert bbox_of(mask > 0) == box
                assert not (union & (mask > 0)).any()  # instances are disjoint
                union |= mask > 0


def test_ignore_field_only_on_first_line_and_ignore_masks_valid(small):
    with_ignore = without_ignore = 0
    for split in ("val", "test"):
        meta = Split(small, split)
        masks = meta.masks_of()
        for image_id in meta.ids:
            rows = masks[image_id]
            assert all(ignore == "" for _, ignore in rows[1:])
            ignore_rel = rows[0][1]
            if not ignore_rel:
                without_ignore += 1
                continue
            with_ignore += 1
            ignore = meta.mask(ignore_rel)
            assert ignore.shape == meta.image(image_id).shape[:2]
            assert set(np.unique(ignore)) == {0, 255}
            # a filled box ...
            x0, y0, x1, y1 = bbox_of(ignore > 0)
            assert (ignore[y0:y1 + 1, x0:x1 + 1] == 255).all()
            # ... that leaves every object alone
            for rel, _ in rows:
                assert not ((meta.mask(rel) > 0) & (ignore > 0)).any()
    assert with_ignore > 0 and without_ignore > with_ignore


def test_masks_cover_the_object_pixels(small):
    """Mask pixels have the class's colours and the one-pixel ring just
    outside mostly does not: a mask (or object) shifted by one pixel fails."""
    specs = synth._class_specs(10)
    inside, ring_share = [], []
    for split in ("val", "test"):
        meta = Split(small, split)
        masks = meta.masks_of()
        for image_id in meta.ids:
            image = meta.image(image_id).astype(np.float32)
            colours = np.array(synth._PALETTES[specs[meta.labels[image_id]].palette],
                               np.float32)
            # distance of each pixel to the nearer of the class's two colours
            distance = np.linalg.norm(image[:, :, None] - colours[None, None],
                                      axis=-1).min(axis=-1)
            near = distance < 60
            for rel, _ in masks[image_id]:
                mask = meta.mask(rel) > 0
                ring = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
                ring &= ~mask
                inside.append(near[mask].mean())
                ring_share.append(near[ring].mean())
    assert min(inside) > 0.5 and np.mean(inside) > 0.9
    # measured: about 0.01 as generated, 0.24 with objects painted 1 px aside
    assert np.mean(ring_share) < 0.08


def test_data_loaders_read_the_metadata(small):
    data_loaders = pytest.importorskip("data_loaders")
    for split in SPLITS:
        meta = Split(small, split)
        metadata = data_loaders.configure_metadata(meta.folder)
        assert data_loaders.get_image_ids(metadata) == meta.ids
        assert data_loaders.get_class_labels(metadata) == meta.labels
        assert data_loaders.get_image_sizes(metadata) == meta.sizes
        boxes = data_loaders.get_bounding_boxes(metadata)
        assert {k: [tuple(int(v) for v in b) for b in bs] for k, bs in boxes.items()} \
            == meta.boxes
        if split != "train":
            mask_paths, ignore_paths = data_loaders.get_mask_paths(metadata)
            assert set(mask_paths) == set(meta.ids)
            for image_id, rows in meta.masks_of().items():
                assert mask_paths[image_id] == [m for m, _ in rows]
                assert ignore_paths[image_id] == (rows[0][1] or None)


# --------------------------------------------------------------------------
# ensure_synth and the command line
# --------------------------------------------------------------------------

def test_ensure_synth_generates_only_when_needed(tmp_path):
    data_root, metadata_root = roots(tmp_path)
    config_path = os.path.join(data_root, "SYNTH", CONFIG_FILENAME)
    args = dict(seed=1, **TINY)
    assert ensure_synth(data_root, metadata_root, **args) is True
    with open(config_path) as f:
        config = json.load(f)
    assert config["format_version"] == synth.FORMAT_VERSION
    for key, value in args.items():
        assert config[key] == value
    assert config["num_classes"] == 10

    probe = os.path.join(data_root, "SYNTH", "train", SYNTH_CLASSES[0], "train_000000.png")
    before = tree_bytes(tmp_path)
    os.utime(probe, (1, 1))
    assert ensure_synth(data_root, metadata_root, **args) is False
    assert os.stat(probe).st_mtime == 1  # untouched

    # another seed: regenerated, with other pixels
    assert ensure_synth(data_root, metadata_root, **{**args, "seed": 2}) is True
    assert tree_bytes(tmp_path)[os.path.relpath(probe, tmp_path)] != before[
        os.path.relpath(probe, tmp_path)]
    assert ensure_synth(data_root, metadata_root, **{**args, "seed": 2}) is False

    # back to seed 1: identical to the first generation
    assert ensure_synth(data_root, metadata_root, **args) is True
    assert tree_bytes(tmp_path) == before

    # other metadata location: regenerated so the metadata exists there
    other_meta = os.path.join(str(tmp_path), "meta2")
    assert ensure_synth(data_root, other_meta, **args) is True
    assert os.path.isfile(os.path.join(other_meta, "SYNTH", "test", "localization_masks.txt"))


def test_ensure_synth_recovers_from_interrupted_or_stale_state(tmp_path):
    data_root, metadata_root = roots(tmp_path)
    config_path = os.path.join(data_root, "SYNTH", CONFIG_FILENAME)
    assert ensure_synth(data_root, metadata_root, **TINY) is True
    complete = tree_bytes(tmp_path)

    # interrupted run: images half written, config missing
    os.remove(config_path)
    os.remove(os.path.join(metadata_root, "SYNTH", "test", "localization.txt"))
    assert ensure_synth(data_root, metadata_root, **TINY) is True
    assert tree_bytes(tmp_path) == complete

    # a metadata file lost after a complete run
    os.remove(os.path.join(metadata_root, "SYNTH", "val", "image_ids.txt"))
    assert ensure_synth(data_root, metadata_root, **TINY) is True
    assert tree_bytes(tmp_path) == complete

    # written by an older generator version
    with open(config_path) as f:
        config = json.load(f)
    config["format_version"] -= 1
    with open(config_path, "w") as f:
        json.dump(config, f)
    assert ensure_synth(data_root, metadata_root, **TINY) is True
    assert tree_bytes(tmp_path) == complete

    # a smaller set replaces a larger one without stray files
    assert ensure_synth(data_root, metadata_root, **{**TINY, "train_per_class": 1}) is True
    train_images = [p for p in tree_bytes(tmp_path)
                    if p.startswith(os.path.join("dataset", "SYNTH", "train"))]
    assert len(train_images) == 10


def test_separate_mask_root(tmp_path):
    data_root, metadata_root = roots(tmp_path)
    mask_root = os.path.join(str(tmp_path), "masks_elsewhere")
    generate_synth(data_root, metadata_root, mask_root, **TINY)
    rows = read_rows(os.path.join(metadata_root, "SYNTH", "val", "localization_masks.txt"))
    for _, mask, ignore in rows:
        assert os.path.isfile(os.path.join(mask_root, "SYNTH", mask))
        assert not os.path.exists(os.path.join(data_root, "SYNTH", mask))
    assert not os.path.exists(os.path.join(data_root, "SYNTH", "masks"))


def run_cli(*args: str, cwd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "wsol.data.synth", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_the_same_files_as_the_function(tmp_path):
    (tmp_path / "cli").mkdir()
    result = run_cli("--data_root", "dataset", "--metadata_root", "metadata", "--seed", "4",
                     "--image_size", "64", "--train_per_class", "2", "--val_per_class", "2",
                     "--test_per_class", "2", cwd=str(tmp_path / "cli"))
    assert result.returncode == 0, result.stderr
    generate_synth(*roots(tmp_path / "fn"), seed=4, **TINY)
    cli, fn = tree_bytes(tmp_path / "cli"), tree_bytes(tmp_path / "fn")
    assert len(cli) > 60 and cli == fn

    again = run_cli("--data_root", "dataset", "--metadata_root", "metadata", "--seed", "4",
                    "--image_size", "64", "--train_per_class", "2", "--val_per_class", "2",
                    "--test_per_class", "2", "--if_needed", cwd=str(tmp_path / "cli"))
    assert again.returncode == 0 and "up to date" in again.stdout


def test_cli_help_and_errors(tmp_path):
    result = run_cli("--help", cwd=str(tmp_path))
    assert result.returncode == 0
    for flag in ("--data_root", "--metadata_root", "--mask_root", "--seed", "--num_classes"):
        assert flag in result.stdout
    bad = run_cli("--num_classes", "0", cwd=str(tmp_path))
    assert bad.returncode == 2 and "num_classes" in bad.stderr

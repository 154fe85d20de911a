"""Benchmark: wsolevaluation's box evaluator algorithm against ours, same maps.

The maps look like real CAMs, in four groups of equal size (224x224, resized
with OpenCV's INTER_CUBIC and min-max normalised, as the pipeline makes them):

* ``blobs``: multi-modal objects (2-3 parts each, 1-3 objects with a GT box
  each) and unboxed distractors over a cluttered background (low-frequency
  noise plus per-cell noise), on a 7, 14 or 28 px grid; half ReLU'd like
  Grad-CAM maps (flat zero regions);
* ``rings``: objects whose response is strongest on their outline (rings
  broken by gaps, low interior with bumps inside: nested contours and holes,
  where RETR_TREE's inner contours count), on a 14, 28 or 56 px grid;
* ``upsampled``: 7x7 or 14x14 maps of noise plus one weak object;
* ``trained``: CAMs of a trained SYNTH model (``--checkpoint``, by default the
  demo's ``train_log/demo_b2/last_checkpoint.pth.tar``; run ``python main.py``
  first) on SYNTH test images, both branches, at the model's input size and
  twice it, with the images' real boxes.  Skipped, with a note, without one.

GT boxes of the synthetic groups are stored at CUB-like original image sizes
(300-500 px), so resizing them to 224 truncates as with real data.

Baseline: wsolevaluation's algorithm, re-implemented here as written
(docs/protocol.md): per map and threshold ``cv2.threshold`` +
``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)``, boxes by
``cv2.boundingRect``, IoUs by tiling; one evaluator per contour mode, as a
user needs for MaxBoxAccV2 (multi) and MaxBoxAcc / GT-known / Top-1 Loc
(single).  Ours: ``BoxEvaluator``, both modes and the Loc metrics in one.
Both are fed through the per-map API (``accumulate`` per map, then the
results), maps in float64 (wsolevaluation refuses other dtypes).  Printed: times (medians),
maps per second per thread, the ratio, thread scaling, and whether every
count is identical (both curves at every CAM and IoU threshold, GT-known and
Top-1 Loc); the exit status is 1 if any differs.

    python scripts/bench_eval.py --num_maps 400 --cam_curve_interval 0.001
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import cv2
import numpy as np

# The shared flags are main.py's (config.py, at the repository root).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wsol.data.metadata import configure_metadata
from wsol.metrics import BoxEvaluator, MaskEvaluator
from wsol.protocol import make_threshold_list

GROUPS = ("blobs", "rings", "upsampled", "trained")
SIZE = 224
DEMO_CHECKPOINT = os.path.join("train_log", "demo_b2", "last_checkpoint.pth.tar")


@dataclass
class Sample:
    scoremap: np.ndarray        # float64 (224, 224) in [0, 1], as wsolevaluation takes them
    boxes: list                 # GT boxes in original-image pixels (x0, y0, x1, y1)
    image_size: tuple           # original (width, height)
    correct: bool               # the classifier's top-1 verdict


# -- maps ---------------------------------------------------------------------------
def _finish(low_res: np.ndarray) -> np.ndarray:
    """Upsample as wsolevaluation's pipeline does (float64, cv2.INTER_CUBIC)
    and min-max normalise."""
    cam = cv2.resize(low_res.astype(np.float64), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    cam -= cam.min()
    peak = cam.max()
    return cam / peak if peak > 0 else cam


def _gaussian(grid: int, cx: float, cy: float, sx: float, sy: float, angle: float
              ) -> np.ndarray:
    y, x = np.mgrid[0:grid, 0:grid].astype(np.float64)
    c, s = np.cos(angle), np.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    return np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))


def _smooth_noise(rng: np.random.Generator, grid: int, scale: float) -> np.ndarray:
    coarse = rng.standard_normal((max(2, int(grid / scale)),) * 2).astype(np.float32)
    return cv2.resize(coarse, (grid, grid), interpolation=cv2.INTER_CUBIC)


def _box_of(mask: np.ndarray, grid: int, rng: np.random.Generator) -> tuple[float, ...]:
    """The box of a region on the grid, in 224 px, jittered like an annotation."""
    ys, xs = np.nonzero(mask)
    scale = SIZE / grid
    box = np.array([xs.min() * scale, ys.min() * scale, (xs.max() + 1) * scale - 1,
                    (ys.max() + 1) * scale - 1]) + rng.normal(0, 4, 4)
    return tuple(np.clip(box, 0, SIZE - 1))


def blobs_over_clutter(rng: np.random.Generator) -> tuple[np.ndarray, list]:
    grid = int(rng.choice([7, 14, 28]))
    cam = 0.35 * rng.uniform(0.3, 1) * _smooth_noise(rng, grid, grid / 3)
    cam += rng.uniform(0.05, 0.3) * rng.standard_normal((grid, grid))
    boxes = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        cx, cy = rng.uniform(0.15, 0.85, 2) * grid
        extent = rng.uniform(0.08, 0.3) * grid
        body = np.zeros((grid, grid))
        for _ in range(rng.integers(2, 4)):  # parts: the object is multi-modal
            body = np.maximum(body, rng.uniform(0.5, 1) * _gaussian(
                grid, cx + rng.normal(0, extent), cy + rng.normal(0, extent),
                max(0.5, extent * rng.uniform(0.3, 0.8)),
                max(0.5, extent * rng.uniform(0.3, 0.8)), rng.uniform(0, np.pi)))
        cam += body
        boxes.append(_box_of(body > 0.3 * body.max(), grid, rng))
    for _ in range(rng.integers(0, 4)):  # distractors: no box
        cam += rng.uniform(0.2, 0.8) * _gaussian(grid, *rng.uniform(0, grid, 2),
                                                  *rng.uniform(0.3, 0.12 * grid + 0.5, 2), 0)
    if rng.random() < 0.5:
        cam = np.maximum(cam, 0)
    return _finish(cam), boxes


def rings_with_holes(rng: np.random.Generator) -> tuple[np.ndarray, list]:
    grid = int(rng.choice([14, 28, 56]))  # 56: LayerCAM on a shallow layer
    y, x = np.mgrid[0:grid, 0:grid].astype(np.float64)
    cam = 0.2 * _smooth_noise(rng, grid, grid / 4)
    boxes = []
    for _ in range(rng.choice([1, 1, 2])):
        cx, cy = rng.uniform(0.25, 0.75, 2) * grid
        rx, ry = rng.uniform(0.12, 0.3, 2) * grid
        radius = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        width = rng.uniform(0.1, 0.3)
        ring = np.exp(-0.5 * ((radius - 1) / width) ** 2)
        angle = np.arctan2(y - cy, x - cx)
        for gap in rng.uniform(-np.pi, np.pi, rng.integers(0, 3)):  # broken outline
            ring *= 1 - 0.8 * np.exp(-0.5 * (np.angle(np.exp(1j * (angle - gap))) / 0.25) ** 2)
        for _ in range(rng.integers(0, 3)):  # bumps inside the hole
            ring += rng.uniform(0.3, 0.9) * _gaussian(
                grid, cx + rng.normal(0, rx / 3), cy + rng.normal(0, ry / 3),
                rx * 0.12, ry * 0.12, 0)
        cam += ring
        boxes.append(_box_of(radius <= 1 + width, grid, rng))
    cam += 0.08 * rng.standard_normal((grid, grid))
    return _finish(cam), boxes


def upsampled_low_res(rng: np.random.Generator) -> tuple[np.ndarray, list]:
    grid = int(rng.choice([7, 14]))
    cx, cy = rng.uniform(0.2, 0.8, 2) * grid
    extent = rng.uniform(0.1, 0.3) * grid
    body = _gaussian(grid, cx, cy, extent, extent * rng.uniform(0.5, 1.5), rng.uniform(0, 3))
    cam = rng.standard_normal((grid, grid)) + rng.uniform(1, 2.5) * body
    return _finish(cam), [_box_of(body > 0.35 * body.max(), grid, rng)]


SYNTHETIC = {"blobs": blobs_over_clutter, "rings": rings_with_holes,
             "upsampled": upsampled_low_res}


def synthetic_samples(kind: str, count: int, rng: np.random.Generator) -> list[Sample]:
    samples = []
    for _ in range(count):
        scoremap, boxes = SYNTHETIC[kind](rng)
        width, height = (int(v) for v in rng.integers(300, 501, 2))
        sx, sy = width / SIZE, height / SIZE
        # One decimal, as written to the metadata, so both evaluators see the same box.
        original = [tuple(round(float(v), 1) for v in (x0 * sx, y0 * sy, min(x1 * sx, width - 1),
                                                        min(y1 * sy, height - 1)))
                    for x0, y0, x1, y1 in boxes]
        samples.append(Sample(scoremap, original, (width, height), bool(rng.random() < 0.7)))
    return samples


def trained_samples(checkpoint: str, data_root: str, metadata_root: str, count: int
                    ) -> list[Sample]:
    """CAMs of a trained SYNTH model on SYNTH test images (both branches, at
    the trained input size and at twice it), upsampled to 224."""
    import torch
    from PIL import Image

    from wsol.cams import compute_cams, evaluation_maps
    from wsol.data.images import open_rgb
    from wsol.data.metadata import get_bounding_boxes, get_class_labels, get_image_sizes
    from wsol.protocol import IMAGENET_MEAN, IMAGENET_STD
    from wsol.runtime.checkpoint import model_from_checkpoint

    model, _, settings = model_from_checkpoint(checkpoint)
    metadata = configure_metadata(os.path.join(metadata_root, "SYNTH", "test"))
    labels, sizes = get_class_labels(metadata), get_image_sizes(metadata)
    boxes = get_bounding_boxes(metadata)
    branches = ["softmax", "sigmoid"] if model.is_dual else ["softmax"]
    ids = list(labels)[:max(1, -(-count // (2 * len(branches))))]  # two sizes per branch
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    samples = []
    for side in (settings["crop_size"], 2 * settings["crop_size"]):
        images = torch.stack([
            (torch.from_numpy(np.array(open_rgb(os.path.join(data_root, "SYNTH", i))
                                       .resize((side, side), Image.BILINEAR)))
             .permute(2, 0, 1).float() / 255 - mean) / std for i in ids])
        targets = torch.tensor([labels[i] for i in ids])
        for branch in branches:
            output = compute_cams(model, images, targets, ["cam"], branch)
            predicted = output.logits.argmax(1) == targets
            maps = evaluation_maps(output, (SIZE, SIZE))["cam"].numpy()
            samples += [Sample(m.astype(np.float64), boxes[i], tuple(sizes[i]), bool(c))
                        for m, i, c in zip(maps, ids, predicted.tolist())]
    return samples[:count]


def write_metadata(folder: str, samples: list[Sample]) -> list[str]:
    ids = [f"bench/{i:05d}.jpg" for i in range(len(samples))]
    with open(os.path.join(folder, "image_ids.txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in ids))
    with open(os.path.join(folder, "class_labels.txt"), "w") as f:
        f.write("".join(f"{i},0\n" for i in ids))
    with open(os.path.join(folder, "image_sizes.txt"), "w") as sizes, \
            open(os.path.join(folder, "localization.txt"), "w") as boxes:
        for image_id, sample in zip(ids, samples):
            sizes.write(f"{image_id},{sample.image_size[0]},{sample.image_size[1]}\n")
            for box in sample.boxes:
                boxes.write(f"{image_id}," + ",".join(f"{v:.1f}" for v in box) + "\n")
    return ids


# -- wsolevaluation's algorithm -------------------------------------------------------
class WsolevaluationBoxEvaluator:
    """wsolevaluation's ``BoxEvaluator`` algorithm for one contour mode (the
    baseline; written from docs/protocol.md, not imported).  ``correct`` adds
    the per-threshold Top-1 count the method's public code keeps."""

    def __init__(self, gt_boxes: dict, thresholds: list[float], ious: list[int],
                 multi_contour_eval: bool):
        self.gt_boxes, self.thresholds, self.ious = gt_boxes, thresholds, ious
        self.multi_contour_eval = multi_contour_eval
        self.num_correct = {t: np.zeros(len(thresholds)) for t in ious}
        self.num_correct_top1 = {t: np.zeros(len(thresholds)) for t in ious}
        self.cnt = 0

    def boxes_at_thresholds(self, scoremap: np.ndarray) -> tuple[list, list]:
        height, width = scoremap.shape
        image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
        all_boxes, counts = [], []
        for threshold in self.thresholds:
            _, binary = cv2.threshold(image, int(threshold * np.max(image)), 255,
                                      cv2.THRESH_BINARY)
            contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
            if len(contours) == 0:
                all_boxes.append(np.asarray([[0, 0, 0, 0]]))
                counts.append(1)
                continue
            if not self.multi_contour_eval:
                contours = [max(contours, key=cv2.contourArea)]
            boxes = []
            for contour in contours:
                x, y, w, h = cv2.boundingRect(contour)
                boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
            all_boxes.append(np.asarray(boxes))
            counts.append(len(contours))
        return all_boxes, counts

    @staticmethod
    def multiple_iou(box_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
        num_a, num_b = len(box_a), len(box_b)
        a = np.tile(box_a, num_b).reshape((num_a, num_b, 4))
        b = np.transpose(np.tile(box_b, num_a).reshape((num_b, num_a, 4)), (1, 0, 2))
        inter = (np.maximum(0, np.minimum(a[..., 2], b[..., 2])
                            - np.maximum(a[..., 0], b[..., 0]) + 1)
                 * np.maximum(0, np.minimum(a[..., 3], b[..., 3])
                              - np.maximum(a[..., 1], b[..., 1]) + 1))
        area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
        area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
        denominator = area_a + area_b - inter
        degenerate = denominator <= 0
        denominator[degenerate] = 1
        ious = inter / denominator
        ious[degenerate] = 0
        return ious

    def accumulate(self, scoremap: np.ndarray, image_id: str, correct: bool) -> None:
        boxes, counts = self.boxes_at_thresholds(scoremap)
        ious = self.multiple_iou(np.concatenate(boxes), np.array(self.gt_boxes[image_id]))
        per_threshold, start = [], 0
        for n in counts:
            # As written there: the row maxima are taken again for every
            # threshold, and the slice's maximum with Python's max().
            per_threshold.append(max(ious.max(1)[start:start + n]))
            start += n
        per_threshold = np.asarray(per_threshold)
        for t in self.ious:
            hits = np.where(per_threshold >= t / 100)[0]
            self.num_correct[t][hits] += 1
            if correct:
                self.num_correct_top1[t][hits] += 1
        self.cnt += 1


def resized_gt_boxes(samples: list[Sample], ids: list[str]) -> dict:
    """wsolevaluation's resize_bbox: scale to 224 and truncate."""
    out = {}
    for image_id, sample in zip(ids, samples):
        width, height = sample.image_size
        out[image_id] = [(int(x0 * SIZE / width), int(y0 * SIZE / height),
                          int(x1 * SIZE / width), int(y1 * SIZE / height))
                         for x0, y0, x1, y1 in sample.boxes]
    return out


# -- timing -------------------------------------------------------------------------
def run_baseline(samples, ids, thresholds, ious):
    gt = resized_gt_boxes(samples, ids)
    """Both contour modes, one evaluator each; returns the seconds each took."""
    multi = WsolevaluationBoxEvaluator(gt, thresholds, ious, True)
    single = WsolevaluationBoxEvaluator(gt, thresholds, ious, False)
    seconds = {"multi": 0.0, "single": 0.0}
    for sample, image_id in zip(samples, ids):
        for mode, evaluator in (("multi", multi), ("single", single)):
            start = time.perf_counter()
            evaluator.accumulate(sample.scoremap, image_id, sample.correct)
            seconds[mode] += time.perf_counter() - start
    return seconds, (multi, single)


def run_ours(samples, ids, metadata, thresholds, ious, loc_threshold, workers):
    evaluator = BoxEvaluator(metadata=metadata, dataset_name="BENCH", split="test",
                             cam_threshold_list=thresholds, iou_threshold_list=ious,
                             multi_contour_eval=True, loc_threshold=loc_threshold,
                             num_workers=workers)
    start = time.perf_counter()
    for sample, image_id in zip(samples, ids):
        evaluator.accumulate(sample.scoremap, image_id, sample.correct)
    summary = evaluator.summary()  # scores what is still buffered
    return time.perf_counter() - start, evaluator.state(), summary


def bootstrap_cost(samples, ids, metadata, thresholds, ious, loc_threshold, images: int,
                   resamples: int, folder: str) -> dict:
    """The bootstrap of one row of a split of ``images`` images (ILSVRC's
    validation set: 50,000): the per-image results of the benchmark's maps,
    repeated to that many images, resampled ``resamples`` times.  Returns
    the seconds, the bytes kept per row, and the box scoring time of as many
    maps at this machine's rate (the part of an evaluation it adds to)."""
    from wsol.metrics.bootstrap import resample_weights
    scored = BoxEvaluator(metadata=metadata, dataset_name="BENCH", split="test",
                          cam_threshold_list=thresholds, iou_threshold_list=ious,
                          loc_threshold=loc_threshold, per_image=True)
    start = time.perf_counter()
    for sample, image_id in zip(samples, ids):
        scored.accumulate(sample.scoremap, image_id, sample.correct)
    state = scored.state()
    rate = len(samples) / (time.perf_counter() - start)  # maps/s, all cores
    big = [samples[i % len(samples)] for i in range(images)]
    big_folder = os.path.join(folder, "big")
    os.makedirs(big_folder)
    big_ids = write_metadata(big_folder, big)
    row = BoxEvaluator(metadata=configure_metadata(big_folder), dataset_name="BENCH",
                       split="test", cam_threshold_list=thresholds, iou_threshold_list=ious,
                       loc_threshold=loc_threshold, per_image=True)
    tiled = {key: np.resize(value, (images, *value.shape[1:]))
             for key, value in state.items() if key.startswith("image_")}
    row.load_state({**row.state(), **tiled})
    kept = sum(value.nbytes for value in tiled.values())
    start = time.perf_counter()
    for weights in resample_weights(len(big_ids), resamples, 0):
        row.bootstrap_samples(weights)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "bytes": kept, "scoring_seconds": images / rate}


def pxap_bootstrap_cost(samples, thresholds, images: int, resamples: int) -> dict:
    """The PxAP bootstrap of one row of a split of ``images`` images
    (OpenImages30K's test set: 10,000): each image's foreground / background
    histograms, from the benchmark's maps with the pixels above their mean
    as the foreground, repeated to that many images."""
    from wsol.metrics.bootstrap import resample_weights
    edges = np.append(np.asarray(thresholds, np.float64), [1.0, 2.0, 3.0])
    bins = len(edges) - 1

    def histograms(scoremap):
        index = np.minimum(np.searchsorted(edges, scoremap.ravel(), side="right") - 1, bins - 1)
        fg = (scoremap > scoremap.mean()).ravel()
        return np.stack([np.bincount(index[~fg], minlength=bins),
                         np.bincount(index[fg], minlength=bins)])
    own = np.stack([histograms(s.scoremap) for s in samples]).astype(np.uint16)
    evaluator = MaskEvaluator.__new__(MaskEvaluator)  # the histograms only: no masks to read
    evaluator.num_bins, evaluator._arriving, evaluator._device_hists = bins, [], {}
    evaluator.image_hists = np.resize(own, (images, 2, bins))
    start = time.perf_counter()
    for weights in resample_weights(images, resamples, 0):
        evaluator.bootstrap_samples(weights)
    return {"seconds": time.perf_counter() - start, "bytes": evaluator.image_hists.nbytes}


def compare(baseline, ours: dict, ious: list[int], loc_index: int) -> list[str]:
    """Every count that differs (empty: identical)."""
    multi, single = baseline
    problems = []
    for row, t in enumerate(ious):
        if not np.array_equal(ours["correct_multi"][row], multi.num_correct[t]):
            problems.append(f"multi-contour curve at IoU {t}")
        if not np.array_equal(ours["correct_single"][row], single.num_correct[t]):
            problems.append(f"single-contour curve at IoU {t}")
    row50 = ious.index(50)
    if ours["gt_known"] != single.num_correct[50][loc_index]:
        problems.append("GT-known Loc")
    if ours["top1"] != single.num_correct_top1[50][loc_index]:
        problems.append("Top-1 Loc")
    if ours["num_images"] != multi.cnt or row50 < 0:
        problems.append("number of maps")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_maps", type=int, default=400,
                        help="Maps in all, split evenly between the groups.")
    parser.add_argument("--groups", default=",".join(GROUPS),
                        help=f"Comma-separated subset of {', '.join(GROUPS)}.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs of ours (median).")
    parser.add_argument("--ref_repeats", type=int, default=1,
                        help="Timed runs of the baseline (median).")
    parser.add_argument("--checkpoint", default=DEMO_CHECKPOINT,
                        help="A trained SYNTH checkpoint for the 'trained' group.")
    parser.add_argument("--bootstrap_images", type=int, default=50000,
                        help="Images of the split whose bootstrap is timed (ILSVRC's "
                             "validation set: 50000; 0: skip).")
    parser.add_argument("--bootstrap_mask_images", type=int, default=10000,
                        help="Images of the split whose PxAP bootstrap is timed "
                             "(OpenImages30K's test set: 10000).")
    import config
    config.add_flags(parser, ("cam_curve_interval", "iou_threshold_list", "loc_threshold",
                              "box_threads", "data_root", "metadata_root", "seed",
                              "bootstrap"),
                     bootstrap={"help": "resamples of the timed bootstrap"},
                     box_threads={"nargs": "+", "default": [1, 0],
                                  "help": "thread counts of ours to time (1: one thread, 0: "
                                          "one per core)"},
                     data_root={"help": "the 'trained' group's SYNTH images are under "
                                        "<data_root>/SYNTH"},
                     seed={"help": "seed of the synthetic maps"})
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    ious = sorted(set(args.iou_threshold_list) | {50})
    thresholds = make_threshold_list(args.cam_curve_interval)
    loc_index = int(np.flatnonzero(np.isclose(thresholds, args.loc_threshold))[0])
    thresholds[loc_index] = args.loc_threshold  # the exact value both sides use

    rng = np.random.default_rng(args.seed)
    per_group = args.num_maps // len(groups)
    samples, made = [], {}
    for group in groups:
        if group == "trained":
            if not os.path.isfile(args.checkpoint):
                print(f"note: no trained maps ({args.checkpoint} not found; run "
                      f"`python main.py` here first, or pass --checkpoint)")
                continue
            group_samples = trained_samples(args.checkpoint, args.data_root,
                                            args.metadata_root, per_group)
        else:
            group_samples = synthetic_samples(group, per_group, rng)
        made[group] = len(group_samples)
        samples += group_samples
    count = len(samples)
    with tempfile.TemporaryDirectory() as folder:
        ids = write_metadata(folder, samples)
        metadata = configure_metadata(folder)
        # Warm-up: compilation or loading of the compiled kernels is not timed.
        run_ours(samples[:8], ids[:8], metadata, thresholds, ious, args.loc_threshold, 1)
        ours = {w: [] for w in args.box_threads}
        for workers in args.box_threads:
            for _ in range(args.repeats):
                seconds, state, summary = run_ours(samples, ids, metadata, thresholds, ious,
                                                   args.loc_threshold, workers or None)
                ours[workers].append((seconds, state))
        baseline_times = []
        for _ in range(args.ref_repeats):
            seconds, baseline = run_baseline(samples, ids, thresholds, ious)
            baseline_times.append(seconds)
        cost = mask_cost = None
        if args.bootstrap_images and args.bootstrap:
            cost = bootstrap_cost(samples, ids, metadata, thresholds, ious, args.loc_threshold,
                                  args.bootstrap_images, args.bootstrap, folder)
            mask_cost = pxap_bootstrap_cost(samples, thresholds, args.bootstrap_mask_images,
                                            args.bootstrap)

    problems = sorted({p for runs in ours.values() for _, state in runs
                       for p in compare(baseline, state, ious, loc_index)})
    reference = {mode: statistics.median(t[mode] for t in baseline_times)
                 for mode in ("multi", "single")}
    reference["both"] = reference["multi"] + reference["single"]
    cores = os.cpu_count() or 1
    print(f"maps: {count} (224x224; " + ", ".join(f"{g} {n}" for g, n in made.items())
          + f"), thresholds: {len(thresholds)}, IoUs: {ious}, cores: {cores}")
    for mode, what in (("multi", "multi-contour evaluator (MaxBoxAccV2)"),
                       ("single", "single-contour evaluator (MaxBoxAcc, Loc)"),
                       ("both", "both evaluators")):
        print(f"wsolevaluation's algorithm, {what}: {reference[mode]:.2f} s, "
              f"{count / reference[mode]:.1f} maps/s")
    single_thread = None
    for workers, runs in ours.items():
        seconds = statistics.median(t for t, _ in runs)
        threads = workers or cores
        label = "all cores" if workers == 0 else f"{workers} thread{'s' * (workers > 1)}"
        if threads == 1:
            single_thread = seconds
        scaling = (f", {single_thread / seconds:.2f}x of one thread"
                   if single_thread and threads > 1 else "")
        print(f"ours ({label}): {seconds:.3f} s, {count / seconds / threads:.0f} maps/s per "
              f"thread{scaling}; runs: " + ", ".join(f"{t:.3f}" for t, _ in runs))
        print(f"  speed-up ({label}): {reference['multi'] / seconds:.1f}x over the multi-contour "
              f"evaluator, {reference['single'] / seconds:.1f}x over the single-contour one, "
              f"{reference['both'] / seconds:.1f}x over both (ours computes both modes)")
    print("identical counts (both curves at every CAM and IoU threshold, GT-known and "
          f"Top-1 Loc): {'yes' if not problems else 'NO: ' + ', '.join(problems)}")
    print(f"MaxBoxAccV2 {summary['MaxBoxAccV2']:.2f}, MaxBoxAcc {summary['MaxBoxAcc']:.2f}, "
          f"GT-known Loc {summary['GT-known Loc']:.2f}, Top-1 Loc {summary['Top-1 Loc']:.2f}")
    if cost:
        print(f"bootstrap of one row, {args.bootstrap_images} images, {args.bootstrap} "
              f"resamples: {cost['seconds']:.2f} s, {cost['bytes'] / 2 ** 20:.1f} MB kept per "
              f"row; box scoring of as many maps (all cores): {cost['scoring_seconds']:.1f} s; "
              f"bootstrap / scoring = {cost['seconds'] / cost['scoring_seconds']:.1%}")
        print(f"PxAP bootstrap of one row, {args.bootstrap_mask_images} images, "
              f"{args.bootstrap} resamples: {mask_cost['seconds']:.2f} s, "
              f"{mask_cost['bytes'] / 2 ** 20:.1f} MB kept per row")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())

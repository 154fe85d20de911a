"""Benchmark: straightforward per-threshold evaluator vs ours, same maps.

Builds N CAM-like score maps (random low-resolution maps upsampled with
bicubic interpolation and min-max normalised, as the pipeline produces them)
with synthetic metadata (1-3 GT boxes per image, original sizes 200-600 px),
scores them with ``ReferenceBoxEvaluator`` (one cv2.findContours per
threshold, both contour modes from the same contours) and ``BoxEvaluator``,
and prints both times, the ratio and whether every count (so every accuracy,
for both contour modes, every IoU and threshold, GT-known and Top-1 Loc) is
identical.  Timings are medians over repeats.

    python scripts/bench_eval.py --num_maps 1000 --cam_curve_interval 0.001
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np

from wsol.data.metadata import configure_metadata
from wsol.metrics import BoxEvaluator
from wsol.protocol import make_threshold_list, normalize_scoremap


def make_maps(num: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """CAM-like maps: a low-res map (7, 14 or 28 px; ReLU'd for a third, as
    Grad-CAM maps are) resized with cv2.INTER_CUBIC and min-max normalised."""
    maps = np.empty((num, size, size), np.float64)
    for i in range(num):
        low = (7, 14, 28)[i % 3]
        cam = rng.standard_normal((low, low))
        cam += 2.0 * np.exp(-((np.arange(low)[:, None] - rng.uniform(0, low)) ** 2
                              + (np.arange(low)[None, :] - rng.uniform(0, low)) ** 2)
                            / (2 * (low / 5) ** 2))
        if i % 3 == 2:
            cam = np.maximum(cam, 0)
        cam = cv2.resize(cam, (size, size), interpolation=cv2.INTER_CUBIC)
        maps[i] = normalize_scoremap(cam)
    return maps


def write_metadata(folder: str, maps: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Metadata with GT boxes near each map's high region (so accuracies are
    neither 0 nor 100), in original-image coordinates."""
    size = maps.shape[1]
    ids = [f"bench/{i:05d}.jpg" for i in range(len(maps))]
    with open(os.path.join(folder, "image_ids.txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in ids))
    with open(os.path.join(folder, "class_labels.txt"), "w") as f:
        f.write("".join(f"{i},{k % 10}\n" for k, i in enumerate(ids)))
    with open(os.path.join(folder, "image_sizes.txt"), "w") as sizes, \
            open(os.path.join(folder, "localization.txt"), "w") as boxes:
        for image_id, scoremap in zip(ids, maps):
            width, height = rng.integers(200, 600, 2)
            sizes.write(f"{image_id},{width},{height}\n")
            for _ in range(rng.integers(1, 4)):
                ys, xs = np.nonzero(scoremap > rng.uniform(0.2, 0.8))
                x0, x1 = xs.min(), xs.max()
                y0, y1 = ys.min(), ys.max()
                jitter = rng.integers(-10, 11, 4)
                x0, x1 = sorted(np.clip([x0 + jitter[0], x1 + jitter[1]], 0, size - 1))
                y0, y1 = sorted(np.clip([y0 + jitter[2], y1 + jitter[3]], 0, size - 1))
                sx, sy = width / size, height / size
                boxes.write(f"{image_id},{x0 * sx:.1f},{y0 * sy:.1f},"
                            f"{min(x1 * sx, width - 1):.1f},{min(y1 * sy, height - 1):.1f}\n")
    return ids


def run(scorer, metadata, ids, maps, corrects, thresholds, args, workers=None):
    evaluator = BoxEvaluator(metadata=metadata, dataset_name="BENCH", split="test",
                             cam_threshold_list=thresholds,
                             iou_threshold_list=args.iou_threshold_list,
                             multi_contour_eval=True, num_workers=workers, scorer=scorer)
    start = time.perf_counter()
    for scoremap, image_id, correct in zip(maps, ids, corrects):
        evaluator.accumulate(scoremap, image_id, correct)
    counts = evaluator.state()  # flushes the buffered maps
    return time.perf_counter() - start, counts, evaluator.summary()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_maps", type=int, default=1000)
    parser.add_argument("--cam_curve_interval", type=float, default=0.001)
    parser.add_argument("--iou_threshold_list", type=int, nargs="+", default=[30, 50, 70])
    parser.add_argument("--repeats", type=int, default=5,
                        help="Timed runs of our evaluator (median reported).")
    parser.add_argument("--ref_repeats", type=int, default=1,
                        help="Timed runs of the reference (median reported).")
    parser.add_argument("--workers", type=int, nargs="+", default=[0],
                        help="Thread counts to time our evaluator with "
                             "(0: all cores, 1: single-threaded).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    maps = make_maps(args.num_maps, 224, rng)
    corrects = list(rng.random(args.num_maps) < 0.7)
    thresholds = make_threshold_list(args.cam_curve_interval)
    with tempfile.TemporaryDirectory() as folder:
        ids = write_metadata(folder, maps, rng)
        metadata = configure_metadata(folder)
        # Warm-up: numba compilation or cache loading is not part of the timing.
        run("fast", metadata, ids[:8], maps[:8], corrects[:8],
            thresholds, args)
        fast_times: dict[int, list[float]] = {w: [] for w in args.workers}
        fast_counts = {}
        for workers in args.workers:
            for _ in range(args.repeats):
                seconds, fast_counts[workers], summary = run(
                    "fast", metadata, ids, maps, corrects,
                    thresholds, args, workers or None)
                fast_times[workers].append(seconds)
        ref_times = []
        for _ in range(args.ref_repeats):
            seconds, ref_counts, _ = run("reference", metadata,
                                         ids, maps, corrects, thresholds, args)
            ref_times.append(seconds)

    identical = all(np.array_equal(counts[k], ref_counts[k])
                    for counts in fast_counts.values() for k in ref_counts)
    ref = statistics.median(ref_times)
    print(f"maps: {args.num_maps} (224x224), thresholds: {len(thresholds)} "
          f"(interval {args.cam_curve_interval}), IoUs: {args.iou_threshold_list}, "
          f"cores: {os.cpu_count()}")
    print(f"reference (cv2.findContours per threshold): {ref:.2f} s "
          f"({1000 * ref / args.num_maps:.2f} ms/map), runs: "
          f"{', '.join(f'{t:.2f}' for t in ref_times)}")
    for workers, times in fast_times.items():
        fast = statistics.median(times)
        label = "all cores" if workers == 0 else f"{workers} thread(s)"
        print(f"ours (BoxEvaluator, {label}): {fast:.3f} s "
              f"({1000 * fast / args.num_maps:.3f} ms/map), runs: "
              f"{', '.join(f'{t:.3f}' for t in times)}")
        print(f"speed-up ({label}): {ref / fast:.1f}x")
    print(f"identical counts (MaxBoxAcc V1/V2 curves, GT-known/Top-1 Loc): {identical}")
    print(f"MaxBoxAccV2 {summary['MaxBoxAccV2']:.2f}, MaxBoxAcc {summary['MaxBoxAcc']:.2f}, "
          f"GT-known Loc {summary['GT-known Loc']:.2f}, Top-1 Loc {summary['Top-1 Loc']:.2f}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())

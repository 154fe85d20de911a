"""Localization metrics of the wsolevaluation protocol, and scoring saved maps.

wsolevaluation's ``evaluation`` names, from the library: the protocol's
definitions (:mod:`wsol.protocol`: ``calculate_multiple_iou``,
``resize_bbox``, ``compute_bboxes_from_scoremaps``, ``get_mask``...) and the
evaluators (:mod:`wsol.metrics`: ``BoxEvaluator`` / ``MaskEvaluator``,
constructed with ``metadata, dataset_name, split, cam_threshold_list,
iou_threshold_list, mask_root, multi_contour_eval``; ``accumulate(scoremap,
image_id)`` and ``compute()``).  Given the same maps, MaxBoxAcc, MaxBoxAccV2
and PxAP are wsolevaluation's, bit for bit.

Seed mIoU (:class:`SegmentationEvaluator`, ReCAM's protocol) scores the
seed maps of VOC2012 / SYNTH_ML (``.npz`` per image: the ground-truth
classes' maps and their indices)::

    python evaluation.py --dataset_name VOC2012 --scoremap_root DIR --split train

As a command, it scores maps saved as ``.npy`` files and prints the table
``main.py`` prints, with ``main.py``'s defaults.  ``main.py --save_scoremaps``
writes them to ``<root>/<experiment>/scoremaps/<split>/<method>_<branch>/``
with a ``run.json`` (the softmax head's predictions, for Top-1 Cls and Top-1
Loc, and the settings of the run); a folder of maps of wsolevaluation's own
layout (``<scoremap_root>/<image_id>.npy``) works too::

    python evaluation.py --root train_log --experiment_name demo_b2 \\
        --dataset_name SYNTH --split test
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np

from config import DATASET_NUM_CLASSES, SEGMENTATION_DATASETS, given_flags, str2bool
from config import build_parser as build_main_parser
from wsol.data.metadata import (GroundTruth, MetadataError, configure_metadata,
                                get_class_labels, get_image_ids)
from wsol.errors import UserError
from wsol.metrics import (BoxEvaluator, LocalizationEvaluator, MaskEvaluator,
                          SegmentationEvaluator)
from wsol.metrics.segmentation import segmentation_evaluator
from wsol.protocol import (calculate_multiple_iou, check_box_convention,
                           check_scoremap_validity, compute_bboxes_from_scoremaps, get_mask,
                           load_mask_image, make_threshold_list, normalize_maps,
                           normalize_scoremap, resize_bbox)
from wsol.results import branch_row, format_table, write_json
from wsol.saved_maps import RECORD, SCORED_SETTINGS, adopt_settings, describe_settings, read_record

__all__ = ["make_threshold_list", "check_scoremap_validity", "check_box_convention",
           "calculate_multiple_iou", "resize_bbox", "compute_bboxes_from_scoremaps",
           "normalize_scoremap", "normalize_maps", "load_mask_image", "get_mask",
           "LocalizationEvaluator", "BoxEvaluator", "MaskEvaluator", "ReferenceBoxEvaluator",
           "SegmentationEvaluator", "configure_metadata", "evaluate_wsol", "evaluate_scoremaps",
           "evaluate_seeds", "main"]



class ReferenceBoxEvaluator(BoxEvaluator):
    """:class:`BoxEvaluator` with the straightforward strategy: OpenCV at every
    threshold, as the protocol describes (kept to check the fast one)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, scorer="reference", **kwargs)


SCOREMAP_RECORD = RECORD  # beside main.py's saved maps (wsol.saved_maps)


def _load_scoremap(folder: str, image_id: str) -> np.ndarray:
    # wsolevaluation saves np.save(join(root, image_id)) -> "<image_id>.npy".
    path = os.path.join(folder, image_id + ".npy")
    if not os.path.isfile(path):
        raise MetadataError(f"missing score map for image {image_id!r}: {path} (was it "
                            f"saved with --save_scoremaps for this split?)")
    # wsolevaluation's loader turns every map into float64 (t2n).
    return np.load(path, allow_pickle=False).astype(np.float64, copy=False)


def _metric(dataset_name: str, metadata: dict, metric: str) -> str:
    if metric != "auto":
        return metric
    if dataset_name == "OpenImages":
        return "mask"
    return "both" if os.path.isfile(metadata["localization_masks"]) else "box"


def evaluate_scoremaps(scoremap_root: str, metadata_root: str, mask_root: str,
                       dataset_name: str, split: str, multi_contour_eval: bool = True,
                       iou_threshold_list: Sequence[float] = (30, 50, 70),
                       cam_curve_interval: float = .001, metric: str = "auto",
                       loc_threshold: float = 0.2, first_box_only: bool = False,
                       threshold_list: str = "wsolevaluation",
                       corrects: dict[str, bool] | None = None,
                       box_threads: int = 0) -> dict:
    """Score the maps of one folder; returns {"box": BoxEvaluator summary,
    "mask": {"PxAP": ...}} for the metrics of ``metric`` ('box', 'mask',
    'both' or 'auto': OpenImages -> mask, a split with
    localization_masks.txt such as SYNTH -> both, else box).  ``corrects``:
    the classifier's top-1 verdict per image (for Top-1 Loc); ``box_threads``:
    threads of the box scoring (0: one per core)."""
    metadata = configure_metadata(os.path.join(metadata_root, dataset_name, split))
    metric = _metric(dataset_name, metadata, metric)
    if metric not in ("box", "mask", "both"):
        raise ValueError(f"unknown metric {metric!r}")
    thresholds = make_threshold_list(cam_curve_interval, threshold_list)
    ground_truth = GroundTruth(metadata, mask_root=os.path.join(mask_root, dataset_name),
                               boxes=metric != "mask", masks=metric != "box")
    common = dict(metadata=metadata, dataset_name=dataset_name, split=split,
                  cam_threshold_list=thresholds, iou_threshold_list=iou_threshold_list,
                  mask_root=ground_truth.mask_root, multi_contour_eval=multi_contour_eval,
                  ground_truth=ground_truth)
    evaluators: dict[str, LocalizationEvaluator] = {}
    if metric in ("box", "both"):
        evaluators["box"] = BoxEvaluator(loc_threshold=loc_threshold,
                                         first_box_only=first_box_only,
                                         num_workers=box_threads or None, **common)
    if metric in ("mask", "both"):
        evaluators["mask"] = MaskEvaluator(**common)
    for image_id in ground_truth.image_ids:
        scoremap = _load_scoremap(scoremap_root, image_id)
        for name, evaluator in evaluators.items():
            if name == "box":
                evaluator.accumulate(scoremap, image_id, None if corrects is None
                                     else corrects.get(image_id))
            else:
                evaluator.accumulate(scoremap, image_id)
    return {name: evaluator.summary() for name, evaluator in evaluators.items()}


def evaluate_wsol(scoremap_root: str, metadata_root: str, mask_root: str,
                  dataset_name: str, split: str, multi_contour_eval: bool,
                  multi_iou_eval: bool, iou_threshold_list: Sequence[float],
                  cam_curve_interval: float = .001) -> float:
    """wsolevaluation's entry point: MaxBoxAcc (mean over IoUs when
    ``multi_iou_eval``, else at IoU 50) for boxes, PxAP for OpenImages."""
    metric = "mask" if dataset_name == "OpenImages" else "box"
    summary = evaluate_scoremaps(scoremap_root, metadata_root, mask_root, dataset_name,
                                 split, multi_contour_eval, iou_threshold_list,
                                 cam_curve_interval, metric)
    if metric == "mask":
        return summary["mask"]["PxAP"]
    prefix = "MaxBoxAccV2" if multi_contour_eval else "MaxBoxAcc"
    values = [summary["box"][f"{prefix}@{t}"] for t in iou_threshold_list]
    if multi_iou_eval:
        return float(np.average(values))
    return values[list(iou_threshold_list).index(50)]


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python evaluation.py",
        description="Score saved maps (.npy) with the wsolevaluation metrics and print the "
                    "table main.py prints, with main.py's defaults.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # Shared flags take main.py's defaults from its parser, so the two commands cannot drift.
    main_default = build_main_parser().get_default
    p.add_argument("--scoremap_root", default=None,
                   help="a folder of <image_id>.npy maps, or of <method>_<branch>/ folders of "
                        "them (default: <root>/<experiment_name>/scoremaps/<split>, where "
                        "main.py --save_scoremaps writes)")
    p.add_argument("--root", "--log_root", dest="root", default=main_default("root"),
                   help="experiment root, as main.py's")
    p.add_argument("--experiment_name", default=main_default("experiment_name"),
                   help="as main.py's")
    p.add_argument("--metadata_root", default=main_default("metadata_root"),
                   help="metadata of dataset D is under <metadata_root>/D/<split>")
    p.add_argument("--mask_root", default="dataset/",
                   help="masks of dataset D are under <mask_root>/D")
    p.add_argument("--dataset_name", required=True,
                   help="CUB, ILSVRC, OpenImages, CARS, SYNTH, VOC2012, SYNTH_ML")
    p.add_argument("--split", default=main_default("split"), choices=("train", "val", "test"),
                   help="train: VOC2012's seed evaluation images")
    p.add_argument("--cam_curve_interval", type=float, default=main_default("cam_curve_interval"),
                   help="threshold step (wsolevaluation's main.py default; its evaluation.py "
                        "command used 0.01)")
    p.add_argument("--multi_contour_eval", type=str2bool, nargs="?", const=True,
                   default=main_default("multi_contour_eval"),
                   help="the box column is MaxBoxAccV2 (all contours) when TRUE, MaxBoxAcc "
                        "(largest contour, IoU 50) when FALSE")
    p.add_argument("--iou_threshold_list", nargs="+", type=int,
                   default=main_default("iou_threshold_list"))
    p.add_argument("--loc_threshold", type=float, default=main_default("loc_threshold"),
                   help="CAM threshold of GT-known Loc and Top-1 Loc")
    p.add_argument("--first_box_only", action="store_true",
                   help="GT-known/Top-1 Loc against the first GT box (the public code's)")
    p.add_argument("--threshold_list", default=main_default("threshold_list"),
                   choices=("wsolevaluation", "public_code"))
    p.add_argument("--metric", choices=("auto", "box", "mask", "both"), default="auto")
    p.add_argument("--box_threads", type=int, default=main_default("box_threads"),
                   help="threads scoring the box metrics (0: one per core)")
    p.add_argument("--seed_threshold", type=float, default=main_default("seed_threshold"),
                   help="VOC2012 / SYNTH_ML seed mIoU: the background score (a sweep in steps "
                        "of 0.01 is reported beside it)")
    p.add_argument("--output_json", default=None,
                   help="write the results (rows as in results_<split>.json) here")
    return p


def _pair_folders(root: str) -> dict[tuple[str, str], str]:
    """(method, branch) -> folder: main.py's <method>_<branch>/ sub-folders, or
    the folder itself (wsolevaluation's layout) as ("maps", "-")."""
    from wsol.cams import CAM_METHODS
    pairs = {}
    for name in sorted(os.listdir(root)):
        method, _, branch = name.rpartition("_")
        if method in CAM_METHODS and os.path.isdir(os.path.join(root, name)):
            pairs[(method, branch)] = os.path.join(root, name)
    return pairs or {("maps", "-"): root}


def evaluate_seeds(folder: str, metadata_root: str, mask_root: str, dataset_name: str,
                   split: str, num_classes: int, threshold: float = 0.21) -> dict:
    """Seed mIoU of the maps of one folder: ``<image_id>.npz`` files holding
    ``maps`` (the image's ground-truth classes' maps [K, H, W], normalised per
    class, at the mask's size) and ``keys`` (their class indices, 0-based),
    as ``main.py --save_scoremaps`` writes them for VOC2012 / SYNTH_ML."""
    evaluator = segmentation_evaluator(metadata_root, mask_root, dataset_name, split,
                                       num_classes, threshold)
    for image_id in evaluator.image_ids:
        path = os.path.join(folder, image_id + ".npz")
        if not os.path.isfile(path):
            raise MetadataError(f"missing seed maps for image {image_id!r}: {path} (was it "
                                f"saved with --save_scoremaps for this split?)")
        with np.load(path, allow_pickle=False) as saved:
            evaluator.accumulate(saved["maps"], saved["keys"], image_id)
    return evaluator.summary()


def run(args: argparse.Namespace, explicit: set[str] = frozenset()) -> dict:
    """Score the saved maps; ``explicit``: the flags given on the command line
    (they must agree with the run's record, which replaces the defaults)."""
    if args.box_threads < 0:
        raise UserError(f"--box_threads must be >= 0 (0: one per core), got {args.box_threads}")
    root = args.scoremap_root or os.path.join(args.root, args.experiment_name, "scoremaps",
                                              args.split)
    if not os.path.isdir(root):
        raise MetadataError(f"no saved maps in {root}: pass --scoremap_root, or run main.py "
                            f"--save_scoremaps for that experiment and split")
    record = read_record(root)
    used = adopt_settings({k: getattr(args, k) for k in SCORED_SETTINGS}, explicit, record)
    for key, value in used.items():
        setattr(args, key, value)
    rules = record.clamp_rules if record is not None else {}
    segmentation = args.dataset_name in SEGMENTATION_DATASETS
    keys = ("seed_threshold",) if segmentation else SCORED_SETTINGS[:-1]
    results = {"scoremap_root": root, "settings": {k: used[k] for k in keys},
               "settings_note": describe_settings(used, keys, record)}
    if segmentation:
        rows = []
        for (method, branch), folder in _pair_folders(root).items():
            row = branch_row(method, branch, rules.get(branch, "none"))
            row.update(evaluate_seeds(folder, args.metadata_root, args.mask_root,
                                      args.dataset_name, args.split,
                                      DATASET_NUM_CLASSES[args.dataset_name],
                                      args.seed_threshold))
            rows.append(row)
        return {"classification": {"Top-1 Cls": None}, "rows": rows, **results}
    metadata = configure_metadata(os.path.join(args.metadata_root, args.dataset_name,
                                               args.split))
    predictions = record.predictions if record is not None else None
    corrects = None
    classification = {"Top-1 Cls": None}
    if predictions:
        labels = get_class_labels(metadata)
        corrects = {i: predictions.get(i) == labels[i] for i in get_image_ids(metadata)}
        classification["Top-1 Cls"] = 100.0 * sum(corrects.values()) / max(len(corrects), 1)
    rows = []
    for (method, branch), folder in _pair_folders(root).items():
        summary = evaluate_scoremaps(
            folder, args.metadata_root, args.mask_root, args.dataset_name, args.split,
            args.multi_contour_eval, args.iou_threshold_list, args.cam_curve_interval,
            args.metric, args.loc_threshold, args.first_box_only, args.threshold_list,
            corrects, args.box_threads)
        row = branch_row(method, branch, rules.get(branch, "none"))
        row.update(summary.get("box", {}))
        if "mask" in summary:
            row["PxAP"] = summary["mask"]["PxAP"]
        rows.append(row)
    return {"classification": classification, "rows": rows, **results}


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        results = run(args, given_flags(parser, argv))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(results, "MaxBoxAccV2" if args.multi_contour_eval else "MaxBoxAcc"))
    print(results["settings_note"])
    if results["classification"]["Top-1 Cls"] is None and \
            args.dataset_name not in SEGMENTATION_DATASETS:
        print(f"(Top-1 Cls and Top-1 Loc need the classifier's predictions, which main.py "
              f"--save_scoremaps writes to {SCOREMAP_RECORD} beside the maps; this folder has "
              f"none)")
    if args.output_json:
        write_json(results, args.output_json, "the results (printed above) to")
    return 0


if __name__ == "__main__":
    sys.exit(main())

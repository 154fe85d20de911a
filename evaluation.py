"""Localization metrics of the wsolevaluation protocol, and scoring saved maps.

wsolevaluation's ``evaluation`` names, from the library: the protocol's
definitions (:mod:`wsol.protocol`: ``calculate_multiple_iou``,
``resize_bbox``, ``compute_bboxes_from_scoremaps``, ``get_mask``...) and the
evaluators (:mod:`wsol.metrics`: ``BoxEvaluator`` / ``MaskEvaluator``,
constructed with ``metadata, dataset_name, split, cam_threshold_list,
iou_threshold_list, mask_root, multi_contour_eval``; ``accumulate(scoremap,
image_id)`` and ``compute()``).  Given the same maps, MaxBoxAcc, MaxBoxAccV2
and PxAP are wsolevaluation's, bit for bit.

As a command, it scores maps saved as ``.npy`` files (seed maps of VOC2012 /
SYNTH_ML as ``.npz``) and prints the table ``main.py`` prints.
``main.py --save_scoremaps`` writes them to
``<root>/<experiment>/scoremaps/<split>/<method>_<branch>/`` with a
``run.json``: the softmax head's predictions (for Top-1 Cls and Top-1 Loc)
and the run's settings, which the maps are scored with
(:mod:`wsol.saved_maps`); a folder of maps of wsolevaluation's own layout
(``<scoremap_root>/<image_id>.npy``) is scored with the flags::

    python evaluation.py --root train_log --experiment_name demo_b2 \\
        --dataset_name SYNTH --split test
    python evaluation.py --dataset_name VOC2012 --scoremap_root DIR --split train
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Sequence

import numpy as np

from config import add_flags, check_scoring, given_flags
from wsol.baselines import CENTER, score_center_baseline
from wsol.cams import CAM_METHODS
from wsol.data.datasets import DATASETS
from wsol.data.metadata import (GroundTruth, MetadataError, configure_metadata,
                                get_class_labels, get_image_ids)
from wsol.errors import UserError
from wsol.metrics import (METRICS, BoxEvaluator, EvalContext, EvaluatorSet,
                          LocalizationEvaluator, MaskEvaluator, SegmentationEvaluator)
from wsol.protocol import (calculate_multiple_iou, check_box_convention,
                           check_scoremap_validity, compute_bboxes_from_scoremaps, get_mask,
                           load_mask_image, make_threshold_list, normalize_maps,
                           normalize_scoremap, resize_bbox)
from wsol.results import format_results, write_json
from wsol.saved_maps import (RECORD, SCORED_SETTINGS, adopt_settings, describe_settings,
                             pair_folders, read_record, score_saved_maps)

__all__ = ["make_threshold_list", "check_scoremap_validity", "check_box_convention",
           "calculate_multiple_iou", "resize_bbox", "compute_bboxes_from_scoremaps",
           "normalize_scoremap", "normalize_maps", "load_mask_image", "get_mask",
           "LocalizationEvaluator", "BoxEvaluator", "MaskEvaluator", "ReferenceBoxEvaluator",
           "SegmentationEvaluator", "configure_metadata", "evaluate_wsol", "evaluate_scoremaps",
           "evaluate_seeds", "build_parser", "main"]


class ReferenceBoxEvaluator(BoxEvaluator):
    """:class:`BoxEvaluator` with the straightforward strategy: OpenCV at every
    threshold, as the protocol describes (kept to check the fast one)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, scorer="reference", **kwargs)


SCOREMAP_RECORD = RECORD  # beside main.py's saved maps (wsol.saved_maps)
# --metric: what a folder of maps is scored with (auto: the dataset's own).
_METRIC_SCORES = {"box": ("boxes",), "mask": ("masks",), "both": ("boxes", "masks")}


def _context(metadata_root: str, mask_root: str, dataset_name: str, split: str,
             metric: str = "auto", **settings) -> EvalContext:
    """The evaluators' context of one split; ``settings``: EvalContext's fields
    (thresholds, IoUs...)."""
    metadata = configure_metadata(os.path.join(metadata_root, dataset_name, split))
    dataset = DATASETS[dataset_name]
    if metric != "auto":
        if metric not in _METRIC_SCORES:
            raise ValueError(f"unknown metric {metric!r}")
        dataset = dataclasses.replace(dataset, scores=_METRIC_SCORES[metric])
    mask_folder = os.path.join(mask_root, dataset_name)
    context = EvalContext(dataset=dataset, split=split, metadata=metadata,
                          mask_folder=mask_folder, num_classes=dataset.num_classes, **settings)
    if not dataset.multi_label:
        context.ground_truth = GroundTruth(metadata, mask_root=mask_folder,
                                           boxes=dataset.boxes, masks=dataset.masks)
    context.image_ids = get_image_ids(metadata)
    return context


def evaluate_scoremaps(scoremap_root: str, metadata_root: str, mask_root: str,
                       dataset_name: str, split: str, multi_contour_eval: bool = True,
                       iou_threshold_list: Sequence[float] = (30, 50, 70),
                       cam_curve_interval: float = .001, metric: str = "auto",
                       loc_threshold: float = 0.2, first_box_only: bool = False,
                       threshold_list: str = "wsolevaluation",
                       corrects: dict[str, bool] | None = None,
                       box_threads: int = 0) -> dict:
    """Score the maps of one folder: the row of the metrics of ``metric``
    ('box', 'mask', 'both' or 'auto': the dataset's own, SYNTH both).
    ``corrects``: the classifier's top-1 verdict per image (for Top-1 Loc);
    ``box_threads``: threads of the box scoring (0: one per core)."""
    context = _context(metadata_root, mask_root, dataset_name, split, metric,
                       thresholds=make_threshold_list(cam_curve_interval, threshold_list),
                       iou_threshold_list=iou_threshold_list,
                       multi_contour_eval=multi_contour_eval, loc_threshold=loc_threshold,
                       first_box_only=first_box_only, box_threads=box_threads)
    evaluators = EvaluatorSet(METRICS, context, [("maps", "-")])
    return score_saved_maps({("maps", "-"): scoremap_root}, evaluators,
                            context.ground_truth.image_ids, corrects)["rows"][0]


def evaluate_wsol(scoremap_root: str, metadata_root: str, mask_root: str,
                  dataset_name: str, split: str, multi_contour_eval: bool,
                  multi_iou_eval: bool, iou_threshold_list: Sequence[float],
                  cam_curve_interval: float = .001) -> float:
    """wsolevaluation's entry point: MaxBoxAcc (mean over IoUs when
    ``multi_iou_eval``, else at IoU 50) for boxes, PxAP for OpenImages."""
    metric = "mask" if dataset_name == "OpenImages" else "box"
    row = evaluate_scoremaps(scoremap_root, metadata_root, mask_root, dataset_name, split,
                             multi_contour_eval, iou_threshold_list, cam_curve_interval, metric)
    if metric == "mask":
        return row["PxAP"]
    prefix = "MaxBoxAccV2" if multi_contour_eval else "MaxBoxAcc"
    values = [row[f"{prefix}@{t}"] for t in iou_threshold_list]
    if multi_iou_eval:
        return float(np.average(values))
    return values[list(iou_threshold_list).index(50)]


def evaluate_seeds(folder: str, metadata_root: str, mask_root: str, dataset_name: str,
                   split: str, num_classes: int, threshold: float = 0.21) -> dict:
    """Seed mIoU of the maps of one folder: ``<image_id>.npz`` files holding
    ``maps`` (the image's ground-truth classes' maps [K, H, W], normalised per
    class, at the mask's size) and ``keys`` (their class indices, 0-based),
    as ``main.py --save_scoremaps`` writes them for VOC2012 / SYNTH_ML."""
    context = _context(metadata_root, mask_root, dataset_name, split, seed_threshold=threshold,
                       thresholds=(0.0,))
    context.num_classes = num_classes
    evaluators = EvaluatorSet(METRICS, context, [("maps", "-")])
    return score_saved_maps({("maps", "-"): folder}, evaluators,
                            get_image_ids(context.metadata))["rows"][0]


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python evaluation.py",
        description="Score saved maps (.npy; seeds .npz) with the wsolevaluation metrics and "
                    "print the table main.py prints, with the run's settings.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scoremap_root", default=None,
                   help="a folder of <image_id>.npy maps, or of <method>_<branch>/ folders of "
                        "them (default: <root>/<experiment_name>/scoremaps/<split>, where "
                        "main.py --save_scoremaps writes)")
    # main.py's flags (config.py): one declaration, one default.
    add_flags(p, ("root", "experiment_name", "dataset_name", "metadata_root", "mask_root",
                  "split", *SCORED_SETTINGS, "box_threads", "bootstrap", "seed"),
              dataset_name={"default": None, "required": True},
              mask_root={"default": "dataset/",
                         "help": "masks of dataset D are under <mask_root>/D"},
              cam_curve_interval={"help": "threshold step of the box/mask accuracy curves "
                                          "(wsolevaluation's main.py default; its "
                                          "evaluation.py command used 0.01)"})
    p.add_argument("--metric", choices=("auto", "box", "mask", "both"), default="auto",
                   help="what the maps are scored with: auto is the dataset's own (SYNTH: "
                        "boxes and masks)")
    p.add_argument("--method", choices=(CENTER,), default=None,
                   help="center: score wsolevaluation's center baseline (one fixed map "
                        "peaked at the image centre; no model, no saved maps)")
    p.add_argument("--output_json", default=None,
                   help="write the results (rows as in results_<split>.json) here")
    return p


def _scoring_context(args: argparse.Namespace, used: dict) -> EvalContext:
    """The evaluators' context of the command's split, scored with ``used``."""
    return _context(
        args.metadata_root, args.mask_root, args.dataset_name, args.split, args.metric,
        thresholds=make_threshold_list(used["cam_curve_interval"], used["threshold_list"]),
        iou_threshold_list=used["iou_threshold_list"],
        multi_contour_eval=used["multi_contour_eval"], loc_threshold=used["loc_threshold"],
        first_box_only=used["first_box_only"], box_threads=args.box_threads,
        seed_threshold=used["seed_threshold"], bootstrap=args.bootstrap, seed=args.seed)


def run(args: argparse.Namespace, explicit: set[str] = frozenset()) -> dict:
    """Score the saved maps; ``explicit``: the flags given on the command line
    (they must agree with the run's record, which replaces the defaults)."""
    if args.box_threads < 0:
        raise UserError(f"--box_threads must be >= 0 (0: one per core), got {args.box_threads}")
    if args.method == CENTER:
        return run_center_baseline(args)
    root = args.scoremap_root or os.path.join(args.root, args.experiment_name, "scoremaps",
                                              args.split)
    if not os.path.isdir(root):
        raise MetadataError(f"no saved maps in {root}: pass --scoremap_root, or run main.py "
                            f"--save_scoremaps for that experiment and split")
    record = read_record(root)
    used = adopt_settings({k: vars(args)[k] for k in SCORED_SETTINGS}, explicit, record)
    check_scoring(used)
    segmentation = DATASETS[args.dataset_name].multi_label
    keys = ("seed_threshold",) if segmentation else SCORED_SETTINGS[:-1]
    context = _scoring_context(args, used)
    folders = pair_folders(root, CAM_METHODS)
    evaluators = EvaluatorSet(METRICS, context, list(folders),
                              record.clamp_rules if record is not None else None)
    image_ids = get_image_ids(context.metadata)
    corrects = None
    classification = {"Top-1 Cls": None}
    if record is not None and record.predictions and not segmentation:
        labels = get_class_labels(context.metadata)
        corrects = {i: record.predictions.get(i) == labels[i] for i in image_ids}
        classification["Top-1 Cls"] = 100.0 * sum(corrects.values()) / max(len(corrects), 1)
    found = score_saved_maps(folders, evaluators, image_ids, corrects)
    rows = found["rows"]
    if corrects is None:  # no classifier verdicts: Top-1 Loc is unknown, as Top-1 Cls
        for row in rows:
            row.update({k: None for k in row if k.startswith("Top-1 Loc")})
    return {"classification": classification, **found, "scoremap_root": root,
            "settings": {k: used[k] for k in keys},
            "settings_note": describe_settings(used, keys, record),
            "box_column": "MaxBoxAccV2" if used["multi_contour_eval"] else "MaxBoxAcc"}


def run_center_baseline(args: argparse.Namespace) -> dict:
    """wsolevaluation's center baseline on the split (wsol.baselines), with the
    flags' scoring settings."""
    if args.scoremap_root:
        raise UserError("--method center scores a fixed map, not saved maps: drop "
                        "--scoremap_root")
    if DATASETS[args.dataset_name].multi_label:
        raise UserError(f"--method center scores boxes and masks; {args.dataset_name}'s seed "
                        f"mIoU needs a map per class")
    used = {k: vars(args)[k] for k in SCORED_SETTINGS}
    check_scoring(used)
    context = _scoring_context(args, used)
    evaluators = EvaluatorSet(METRICS, context, [(CENTER, "-")])
    found = score_center_baseline(evaluators, context.ground_truth.image_ids)
    for row in found["rows"]:  # no classifier
        row.update({k: None for k in row if k.startswith("Top-1 Loc")})
    keys = SCORED_SETTINGS[:-1]
    return {"classification": {"Top-1 Cls": None}, **found, "scoremap_root": None,
            "settings": {k: used[k] for k in keys},
            "settings_note": describe_settings(used, keys, None, maps=False),
            "box_column": "MaxBoxAccV2" if used["multi_contour_eval"] else "MaxBoxAcc"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        results = run(args, given_flags(parser, argv))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_results(results, results["box_column"]))
    print(results["settings_note"])
    if args.method == CENTER:
        print("(the center baseline has no classifier: Top-1 Cls and Top-1 Loc do not apply)")
    elif results["classification"]["Top-1 Cls"] is None and \
            not DATASETS[args.dataset_name].multi_label:
        print(f"(Top-1 Cls and Top-1 Loc need the classifier's predictions, which main.py "
              f"--save_scoremaps writes to {SCOREMAP_RECORD} beside the maps; this folder has "
              f"none)")
    if args.output_json:
        write_json(results, args.output_json, "the results (printed above) to")
    return 0


if __name__ == "__main__":
    sys.exit(main())

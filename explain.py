#!/usr/bin/env python
"""Class activation map of one image of your choosing: the everyday use.

``python explain.py --ckpt train_log/demo_b2/last_checkpoint.pth.tar --image
photo.jpg --method gradcam`` writes ``photo.jpg_gradcam.png``: the image with
the top-1 class of the softmax head, then the heatmap of each branch (softmax
= the vanilla model, sigmoid = ours, clamped) over the image at its own
aspect ratio, with the box GT-known Loc would score (largest contour at
``--loc_threshold``) in red.  The top-k classes are printed.

The model is rebuilt from what the checkpoint (and its experiment's
``config.json``) record: architecture, number of classes, structure, input
size, large feature map.  For a bare wsolevaluation checkpoint, which records
none of it, pass ``--architecture`` (and ``--large_feature_map``,
``--crop_size``); a flag that contradicts the checkpoint is an error.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np
import torch

from config import add_flags, check_scoring, given_flags
from data_loaders import get_transforms
from wsol.cams import (CAMMethod, ModelCheckError, compute_cams_per_branch, evaluation_maps,
                       parse_methods, resolve_methods, verify_cam_model)
from wsol.errors import UserError
from wsol.protocol import IMAGENET_MEAN, IMAGENET_STD
from wsol.runtime.checkpoint import RECOGNISED, model_from_checkpoint
from wsol.runtime.seeding import resolve_device
from wsol.settings import CAMSettings
from wsol.branches import branch_title
from wsol.visualize import (PRED_COLOR, add_caption, blend, class_names_for,
                            draw_boxes, predicted_box, save_png)

__all__ = ["build_parser", "load_model", "explain_image", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python explain.py",
        description="Overlay the class activation map of the given image(s), from the "
                    "softmax branch (vanilla), the sigmoid branch (ours) or both.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", required=True,
                   help="checkpoint: an experiment's last_checkpoint.pth.tar (dual-branch "
                        "or vanilla) or a wsolevaluation vanilla checkpoint")
    p.add_argument("--image", required=True, nargs="+", help="image file(s)")
    p.add_argument("--branch", default=None, choices=("softmax", "sigmoid", "both"),
                   help="which branch's map (default: both for a dual-branch checkpoint, "
                        "else softmax)")
    p.add_argument("--output", default=None,
                   help="PNG to write (one image) or folder (several); default: "
                        "<image file name>_<method>.png in the current folder")
    p.add_argument("--target", default=None,
                   help="class to explain, as an index or a name (default: the softmax "
                        "head's top-1 prediction)")
    p.add_argument("--topk", type=int, default=5, help="predictions to print")
    p.add_argument("--no_box", action="store_true", help="do not draw the predicted box")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity")
    p.add_argument("--max_size", type=int, default=448,
                   help="longest side of each panel in the output, in pixels")
    p.add_argument("--class_names", default=None,
                   help="file with one class name per line (or 'index,name' / CUB's "
                        "classes.txt)")
    # main.py's flags (config.py); what the checkpoint records fills those left out.
    recorded = "what the checkpoint records, else {}"
    add_flags(p, ("method", "loc_threshold", "no_clamp", "smooth_samples", "smooth_sigma",
                  "scorecam_batch_size", "scorecam_topk", "cam_option", "architecture",
                  "num_classes", "large_feature_map", "crop_size", "dataset_name", "gpus"),
              method={"default": "cam"},
              loc_threshold={"help": "CAM threshold of the drawn box (as GT-known Loc)"},
              architecture={"default": None, "help": "the network, for a checkpoint that "
                            "does not record it (vgg16, resnet50, inception_v3, ...; see "
                            "main.py --list)"},
              num_classes={"help": recorded.format("its head's classes")},
              large_feature_map={"default": None, "help": recorded.format("FALSE")},
              crop_size={"default": None, "help": "the network's input size: " +
                         recorded.format("224")},
              dataset_name={"default": None, "help": "for class names: " +
                            recorded.format("class indices")})
    return p


def load_model(args) -> tuple[object, dict]:
    """The CAMModel of ``--ckpt`` (eval mode) and the settings it was built with."""
    given = {"architecture": args.architecture, "num_classes": args.num_classes,
             "large_feature_map": args.large_feature_map, "crop_size": args.crop_size}
    model, spec, settings = model_from_checkpoint(args.ckpt, given)
    if settings.get(RECOGNISED):
        print(f"note: {settings[RECOGNISED]}", file=sys.stderr)
    settings["mean"], settings["std"] = spec.mean, spec.std
    settings["dataset_name"] = args.dataset_name or settings.get("dataset_name")
    return model, settings


def _load_image(path: str):
    from wsol.data.images import READ_ERRORS, open_rgb
    if not os.path.isfile(path):
        raise UserError(f"image not found: {path}")
    try:
        return open_rgb(path)  # upright and 8-bit, as the loaders read it
    except READ_ERRORS as error:
        raise UserError(f"cannot read image {path}: {error}") from None


def _resolve_target(target: str | None, names: Sequence[str]) -> int | None:
    if target is None:
        return None
    if target.strip().lstrip("-").isdigit():
        index = int(target)
    else:
        lowered = [n.lower() for n in names]
        if target.lower() not in lowered:
            close = [n for n in names if target.lower() in n.lower()][:5]
            raise UserError(f"--target {target!r} is not a class name"
                            + (f"; did you mean: {', '.join(close)}" if close else ""))
        index = lowered.index(target.lower())
    if not 0 <= index < len(names):
        raise UserError(f"--target {index} is outside 0..{len(names) - 1}")
    return index


def explain_image(model, image, methods: Sequence[str | CAMMethod], branches: Sequence[str],
                  crop_size: int, target: int | None = None, clamp: bool = True,
                  display_size: tuple[int, int] | None = None,
                  device: torch.device = torch.device("cpu"),
                  mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD) -> dict:
    """Maps of one PIL image: ``{"maps": {(method, branch): HxW array in [0, 1]},
    "probabilities": softmax-head probabilities [C], "sigmoid": sigmoid-branch
    probabilities [C] or None, "target": explained class}``; maps at
    ``display_size`` (w, h), default the image's size."""
    x = get_transforms("test", crop_size, crop_size, mean, std)(image)[None].to(device)
    width, height = display_size or image.size
    targets = None if target is None else torch.tensor([target], device=device)
    outputs = compute_cams_per_branch(model, x, targets, list(methods), branches, clamp)
    first = outputs[branches[0]]
    probabilities = first.logits.softmax(1)[0].detach().cpu().numpy()
    sigmoid = None if first.logits_sigmoid is None else \
        first.logits_sigmoid.sigmoid()[0].detach().cpu().numpy()
    maps = {}
    for name in first.maps:  # the branches of a method side by side
        for branch in branches:
            resized = evaluation_maps({name: outputs[branch].maps[name]}, (height, width))
            maps[(name, branch)] = resized[name][0].cpu().numpy()
    return {"maps": maps, "probabilities": probabilities, "sigmoid": sigmoid,
            "target": int(first.targets[0])}


def _methods_for(model, methods: list[CAMMethod], branches: Sequence[str], size: int,
                 device: torch.device, given: bool) -> list[CAMMethod]:
    """The methods, checked on the model; the default cam on a model whose head
    has no class weights (a ViT's class token) becomes gradcam, with a note."""
    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        verify_cam_model(model, probe.to(device), methods, branches)
        return methods
    except ModelCheckError as error:
        if given or any(not m.needs_class_weights for m in methods):
            raise
        print(f"note: --method gradcam, not the default cam: {error}", file=sys.stderr)
        return resolve_methods("gradcam")


def _display_size(image, max_size: int, min_size: int = 256) -> tuple[int, int]:
    """Panel size: the image's, its longest side brought into [min, max]."""
    width, height = image.size
    longest = max(width, height)
    scale = min(max_size, max(min_size, longest)) / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def render_explanation(image, result: dict, names: Sequence[str], loc_threshold: float,
                       alpha: float, draw_box: bool, display_size: tuple[int, int]) -> np.ndarray:
    """One row: the image captioned with the prediction, then one panel per
    (method, branch)."""
    width, height = display_size
    pixels = np.asarray(image.resize((width, height)), dtype=np.uint8)
    probabilities = result["probabilities"]
    top = int(probabilities.argmax())
    target = result["target"]
    panels = [add_caption(pixels, [f"pred {names[top]}", f"p = {probabilities[top]:.2f}",
                                   f"explains {names[target]}"])]
    for (method, branch), scoremap in result["maps"].items():
        picture = blend(pixels, scoremap, alpha)
        if draw_box:
            picture = draw_boxes(picture, [predicted_box(scoremap, loc_threshold)], PRED_COLOR)
        score = ""
        if branch == "sigmoid" and result["sigmoid"] is not None:
            score = f"sigmoid score {result['sigmoid'][target]:.2f}"
        elif branch == "softmax":
            score = f"softmax p {probabilities[target]:.2f}"
        panels.append(add_caption(picture, [method, branch_title(branch), score]))
    height = max(p.shape[0] for p in panels)
    panels = [np.pad(p, ((0, height - p.shape[0]), (0, 4), (0, 0)), constant_values=255)
              for p in panels]
    return np.concatenate(panels, axis=1)[:, :-4]


def _output_path(args, image_path: str, methods: Sequence[str], several: bool) -> str:
    # The file name keeps the image's extension: photo.jpg and photo.png differ.
    name = f"{os.path.basename(image_path)}_{'_'.join(methods)}.png".replace("+", "p")
    if args.output is None:
        return name
    if several or os.path.isdir(args.output) or args.output.endswith(os.sep):
        return os.path.join(args.output, name)
    return args.output


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.method_given = "method" in given_flags(parser, argv)
    try:
        return _run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args) -> int:
    try:
        cams = CAMSettings(methods=tuple(parse_methods(args.method)),
                           smooth_samples=args.smooth_samples, smooth_sigma=args.smooth_sigma,
                           scorecam_batch_size=args.scorecam_batch_size,
                           scorecam_topk=args.scorecam_topk,
                           method_options=tuple(args.cam_option))
        methods = cams.instances()
    except ValueError as error:
        raise UserError(str(error)) from None
    check_scoring({"loc_threshold": args.loc_threshold})
    model, info = load_model(args)
    if args.branch in (None, "both"):
        branches = ["softmax", "sigmoid"] if model.is_dual else ["softmax"]
    else:
        branches = [args.branch]
    if "sigmoid" in branches and not model.is_dual:
        raise UserError(f"{args.ckpt} has no sigmoid branch (fc2): it is a vanilla model; "
                        f"use --branch softmax or a fine-tuned (b2) checkpoint")
    try:
        device = resolve_device(args.gpus)
    except ValueError as error:
        raise UserError(str(error)) from None
    model.to(device)
    methods = _methods_for(model, methods, branches, info["crop_size"], device,
                           given=args.method_given)
    args.methods = [m.name for m in methods]
    if args.class_names and not os.path.isfile(args.class_names):
        raise UserError(f"--class_names file not found: {args.class_names}")
    names = class_names_for(info["dataset_name"], info["num_classes"], args.class_names)
    target = _resolve_target(args.target, names)
    several = len(args.image) > 1
    for image_path in args.image:
        image = _load_image(image_path)
        size = _display_size(image, args.max_size)
        result = explain_image(model, image, methods, branches, info["crop_size"], target,
                               clamp=not args.no_clamp, display_size=size, device=device,
                               mean=info["mean"], std=info["std"])
        picture = render_explanation(image, result, names, args.loc_threshold, args.alpha,
                                     not args.no_box, size)
        path = _output_path(args, image_path, args.methods, several)
        save_png(path, picture)
        probabilities = result["probabilities"]
        order = np.argsort(-probabilities)[:max(1, args.topk)]
        print(f"{image_path}: " + ", ".join(f"{names[k]} {probabilities[k]:.3f}"
                                           for k in order))
        print(f"  explained class: {names[result['target']]}; overlay written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

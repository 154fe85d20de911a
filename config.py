"""Command-line arguments and experiment folders.

Flags follow wsolevaluation and the method's public code, so their commands
run unchanged (``--epoch``, ``--gpus 0``, ``--large_feature_map FALSE``,
``--wsol_method cam``, ``--wandb_name``, ``--project``...).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from typing import Sequence

__all__ = ["DATASET_NUM_CLASSES", "get_configs", "build_parser", "configure_log_folder",
           "ConfigError", "str2bool"]

DATASET_NUM_CLASSES = {"CUB": 200, "ILSVRC": 1000, "OpenImages": 100, "CARS": 196, "SYNTH": 10}
# Datasets scored with boxes, with masks (PxAP), or both.
BOX_DATASETS = ("CUB", "ILSVRC", "CARS", "SYNTH")
MASK_DATASETS = ("OpenImages", "SYNTH")
ARCHITECTURE_NAMES = ("vgg16", "resnet18", "resnet50", "inception_v3",
                      "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf", "shufflenet_v2_x0_5")
MODEL_STRUCTURES = ("vanilla", "b2")


class ConfigError(ValueError):
    """A flag combination that cannot work, with the fix in the message."""


def str2bool(value: str) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1", "on"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Dual-branch sigmoid CAM: train a vanilla model, fine-tune its sigmoid "
                    "branch, and score CAMs of both branches with the wsolevaluation protocol. "
                    "With no arguments, runs the CPU demo on the built-in SYNTH dataset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    g = p.add_argument_group("experiment")
    g.add_argument("--experiment_name", default="test_case",
                   help="folder name under --log_root holding checkpoints, log and results")
    g.add_argument("--log_root", default="train_log", help="parent folder of experiment folders")
    g.add_argument("--override_cache", type=str2bool, nargs="?", const=True, default=False,
                   help="allow training into an existing experiment folder (it is emptied)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted training run from its last checkpoint")
    g.add_argument("--workers", type=int, default=4, help="data-loading processes")
    g.add_argument("--gpus", default=None,
                   help="GPU index (e.g. 0); without CUDA the CPU is used with a warning")
    g.add_argument("--demo", action="store_true",
                   help="run the SYNTH demo (what `python main.py` with no arguments does)")
    g.add_argument("--wandb", default="off", choices=("off", "offline", "online", "on"),
                   help="Weights & Biases logging; 'on' = online. Never fails the run.")
    g.add_argument("--wandb_name", default=None, help="wandb run name")
    g.add_argument("--project", default="dual-branch-cam", help="wandb project")

    g = p.add_argument_group("data")
    g.add_argument("--dataset_name", default="SYNTH", choices=tuple(DATASET_NUM_CLASSES))
    g.add_argument("--data_root", default="dataset/",
                   help="images of dataset D are under <data_root>/D")
    g.add_argument("--root", default=None,
                   help="the dataset's image folder itself (overrides <data_root>/<dataset_name>)")
    g.add_argument("--metadata_root", default="metadata/",
                   help="metadata of dataset D is under <metadata_root>/D/<split>")
    g.add_argument("--mask_root", default=None,
                   help="masks of dataset D are under <mask_root>/D (default: --data_root)")
    g.add_argument("--num_classes", type=int, default=None,
                   help="default: 200 CUB, 1000 ILSVRC, 100 OpenImages, 196 CARS, 10 SYNTH")
    g.add_argument("--proxy_training_set", type=str2bool, nargs="?", const=True, default=False)
    g.add_argument("--skip_bad_images", action="store_true",
                   help="skip unreadable images (counted in the results) instead of failing")
    g.add_argument("--num_val_sample_per_class", type=int, default=0,
                   help="images per class of the val split (0 = all)")
    g.add_argument("--resize_size", type=int, default=256)
    g.add_argument("--crop_size", type=int, default=224)

    g = p.add_argument_group("model")
    g.add_argument("--architecture", default="resnet50", choices=ARCHITECTURE_NAMES)
    g.add_argument("--large_feature_map", type=str2bool, nargs="?", const=True, default=False)
    g.add_argument("--model_structure", default=None, choices=MODEL_STRUCTURES,
                   help="vanilla: one softmax head; b2: add and fine-tune the sigmoid branch "
                        "fc2 (default: b2 when --ft_ckpt is given, else vanilla)")
    g.add_argument("--ft_ckpt", default=None,
                   help="vanilla checkpoint to start from ({'state_dict': ...}, keys may "
                        "carry 'module.'); for b2 the sigmoid branch is added to it")
    g.add_argument("--pretrained_path", default=None,
                   help="local torchvision ImageNet .pth to initialise a vanilla backbone")
    g.add_argument("--unfreeze_layer", default="fc2",
                   help="comma-separated parameter-name prefixes trained in b2 fine-tuning")
    g.add_argument("--sigmoid_init", default="clone", choices=("clone", "random"),
                   help="clone the softmax head (paper) or N(0,0.01) init (public code)")
    g.add_argument("--wsol_method", default="cam", choices=("cam",),
                   help="wsolevaluation's WSOL training method; only plain CAM training")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", "--epoch", dest="epochs", type=int, default=10)
    g.add_argument("--batch_size", type=int, default=32)
    g.add_argument("--lr", type=float, default=0.003)
    g.add_argument("--lr_decay_frequency", type=int, default=3,
                   help="multiply the learning rate by 0.1 every this many epochs")
    g.add_argument("--lr_classifier_ratio", type=float, default=10.0,
                   help="vanilla training: the head's lr is lr x this ratio; b2 fine-tuning "
                        "trains only the branch, at lr")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight_decay", type=float, default=1e-4)

    g = p.add_argument_group("speed (same results up to float rounding; see docs/PERFORMANCE.md)")
    g.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast for training and CAM passes (CPU, or GPUs with "
                        "bf16); CAM maps are still formed in float32")
    g.add_argument("--channels_last", action="store_true",
                   help="channels-last (NHWC) memory format for images and weights")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the backbone blocks (slow first batches while compiling)")
    g.add_argument("--decode_on_device", action="store_true",
                   help="workers only read the files; decode (nvJPEG on a GPU) and resize/crop/"
                        "flip on the model's device, freeing CPU cores (images within about one "
                        "grey level of the default PIL path)")
    g.add_argument("--prefetch_factor", type=int, default=4,
                   help="batches each data-loading worker prepares ahead")

    g = p.add_argument_group("evaluation")
    g.add_argument("--eval_only", action="store_true",
                   help="evaluate the experiment's checkpoint (or --ft_ckpt for vanilla)")
    g.add_argument("--skip_eval", action="store_true",
                   help="train only; score later with --eval_only (the run scripts do this)")
    g.add_argument("--eval_checkpoint_type", default="last",
                   help="checkpoint file prefix in the experiment folder: last, epoch3, ...")
    g.add_argument("--split", default="test", choices=("val", "test"),
                   help="split scored after training / with --eval_only")
    g.add_argument("--method", "--methods", dest="method", default="cam,gradcam",
                   help="CAM method(s), comma-separated, or 'all'")
    g.add_argument("--cam_branch", default=None,
                   help="softmax, sigmoid or softmax,sigmoid (default: sigmoid for b2, "
                        "softmax for vanilla)")
    g.add_argument("--no_clamp", action="store_true",
                   help="ablation: keep negative sigmoid-branch channel weights")
    g.add_argument("--cam_curve_interval", type=float, default=0.001,
                   help="threshold step of the box/mask accuracy curves")
    g.add_argument("--multi_contour_eval", type=str2bool, nargs="?", const=True, default=True)
    g.add_argument("--iou_threshold_list", type=int, nargs="+", default=[30, 50, 70])
    g.add_argument("--loc_threshold", type=float, default=0.2,
                   help="CAM threshold of GT-known Loc and Top-1 Loc")
    g.add_argument("--first_box_only", action="store_true",
                   help="GT-known/Top-1 Loc against the first GT box (public code's variant)")
    g.add_argument("--save_scoremaps", action="store_true",
                   help="write each map as .npy under scoremaps/<split>/<method>_<branch>/")
    g.add_argument("--save_overlays", type=int, default=0, metavar="N",
                   help="write N overlay PNGs per method and branch (map, GT and predicted "
                        "box or mask contours) and a softmax-vs-sigmoid grid per method "
                        "under overlays/<split>/")
    g.add_argument("--plots", action="store_true",
                   help="write box-accuracy-vs-threshold and PxAP precision-recall curves "
                        "under plots/<split>/")
    g.add_argument("--fidelity", action="store_true",
                   help="also compute Average Drop and Increase in Confidence (softmax head)")
    g.add_argument("--fidelity_steps", type=int, default=0, metavar="N",
                   help="with --fidelity: also insertion/deletion AUC in N steps (costs "
                        "2(N+1) forwards per image, method and branch)")
    g.add_argument("--scorecam_batch_size", type=int, default=32)
    g.add_argument("--scorecam_topk", type=int, default=None)
    g.add_argument("--smooth_samples", type=int, default=8)
    g.add_argument("--smooth_sigma", type=float, default=0.15)
    return p


def finalize(args: argparse.Namespace) -> argparse.Namespace:
    """Derived settings and checks that need several flags at once."""
    if args.wandb == "on":
        args.wandb = "online"
    if args.num_classes is None:
        args.num_classes = DATASET_NUM_CLASSES[args.dataset_name]
    if args.model_structure is None:
        args.model_structure = "b2" if args.ft_ckpt else "vanilla"
    if args.mask_root is None:
        args.mask_root = args.data_root
    args.image_root = args.root or os.path.join(args.data_root, args.dataset_name)
    args.dataset_mask_root = os.path.join(args.mask_root, args.dataset_name)
    args.split_metadata_root = os.path.join(args.metadata_root, args.dataset_name)
    if args.cam_branch is None:
        args.cam_branches = ["sigmoid"] if args.model_structure == "b2" else ["softmax"]
    else:
        args.cam_branches = [b.strip() for b in args.cam_branch.split(",") if b.strip()]
        for b in args.cam_branches:
            if b not in ("softmax", "sigmoid"):
                raise ConfigError(f"--cam_branch {b!r}: use softmax, sigmoid or softmax,sigmoid")
        if "sigmoid" in args.cam_branches and args.model_structure != "b2":
            raise ConfigError("--cam_branch sigmoid needs a dual-branch model: "
                              "add --model_structure b2")
    args.unfreeze_layers = tuple(s.strip() for s in args.unfreeze_layer.split(",") if s.strip())
    args.log_folder = os.path.join(args.log_root, args.experiment_name)
    if args.epochs < 0 or args.batch_size < 1 or args.lr_decay_frequency < 1:
        raise ConfigError("--epochs must be >= 0, --batch_size and --lr_decay_frequency >= 1")
    if not 0 < args.cam_curve_interval < 1:
        raise ConfigError("--cam_curve_interval must be in (0, 1)")
    if args.fidelity_steps < 0 or (args.fidelity_steps and not args.fidelity):
        raise ConfigError("--fidelity_steps N (N >= 1) goes with --fidelity")
    if args.prefetch_factor < 1:
        raise ConfigError("--prefetch_factor must be >= 1")
    if args.save_overlays < 0:
        raise ConfigError("--save_overlays must be >= 0 (images per method and branch)")
    return args


def get_configs(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return finalize(build_parser().parse_args(argv))


def configure_log_folder(args: argparse.Namespace) -> str:
    """Create the experiment folder for training; never silently overwrite one."""
    folder = args.log_folder
    if getattr(args, "resume", False) and not args.eval_only:
        if not os.path.isfile(os.path.join(folder, "last_checkpoint.pth.tar")):
            raise ConfigError(f"--resume: {folder} has no last_checkpoint.pth.tar to resume from")
        return folder
    if args.eval_only:
        os.makedirs(folder, exist_ok=True)
        return folder
    if os.path.isdir(folder) and os.listdir(folder):
        if not args.override_cache:
            raise ConfigError(f"experiment folder {folder} exists: choose another "
                              f"--experiment_name or pass --override_cache to replace it")
        shutil.rmtree(folder)
    os.makedirs(folder, exist_ok=True)
    return folder


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now, not the stream it was
    created with (a replaced or closed stderr must not break logging)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(log_folder: str | None) -> None:
    """Log to stderr and, when there is an experiment folder, to its log.log."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    stream = _StderrHandler()
    stream.setFormatter(fmt)
    root.addHandler(stream)
    if log_folder:
        file_handler = logging.FileHandler(os.path.join(log_folder, "log.log"))
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)
    root.setLevel(logging.INFO)


def save_config(args: argparse.Namespace, path: str) -> None:
    plain = {k: v for k, v in vars(args).items()
             if isinstance(v, (str, int, float, bool, list, tuple, type(None)))}
    with open(path, "w") as f:
        json.dump(plain, f, indent=2, sort_keys=True)

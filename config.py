"""Command-line arguments and experiment folders.

Flags keep the meaning they have in wsolevaluation and in the method's public
code, so their commands run unchanged: ``--root`` is the experiment root
(experiments are ``<root>/<experiment_name>``), images are under
``<data_root>/<dataset_name>``, metadata under
``<metadata_root>/<dataset_name>/<split>``; ``--epoch``, ``--gpus 0``,
``--large_feature_map FALSE``, ``--wsol_method cam``, ``--wandb_name``,
``--project`` are accepted.  Where this toolkit deliberately differs, the
flag's help says so.
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import shutil
import sys
from typing import Sequence

from wsol.architectures import architecture_names, get_spec, network_for
from wsol.data.datasets import DATASETS
from wsol.errors import UserError
from wsol.cams import CAM_METHODS, CAMMethod, ScoreCAM, SmoothGradCAMPlusPlus, parse_methods
from wsol.model import FROZEN_MODES
from wsol.replay import REPLAYS, RunChoices, resolve_choices
from wsol.seeds import SEED_RESIZES
from wsol.runtime.checkpoint import RECOGNISED
from wsol.runtime.lock import FolderLock
from wsol.results import run_record, write_json

__all__ = ["DATASET_NUM_CLASSES", "SEGMENTATION_DATASETS", "get_configs", "build_parser", "configure_log_folder",
           "ConfigError", "str2bool", "explicit_flags", "checkpoint_path", "cam_methods"]

# Views of the dataset table (wsol.data.datasets).
DATASET_NUM_CLASSES = {name: d.num_classes for name, d in DATASETS.items()}
SEGMENTATION_DATASETS = tuple(name for name, d in DATASETS.items() if d.multi_label)
BOX_DATASETS = tuple(name for name, d in DATASETS.items() if d.boxes)
MASK_DATASETS = tuple(name for name, d in DATASETS.items() if d.masks)
# Flags that mean something only for some of a dataset's scores (SCORES): one
# given for a dataset scored otherwise is refused, naming what it is scored with.
_FLAG_SCORES = {
    **dict.fromkeys(("iou_threshold_list", "loc_threshold", "multi_contour_eval",
                     "first_box_only", "box_threads"), ("boxes",)),
    **dict.fromkeys(("cam_curve_interval", "threshold_list", "map_style", "fidelity",
                     "fidelity_steps", "fidelity_protocol", "save_overlays", "plots"),
                    ("boxes", "masks")),
    **dict.fromkeys(("tta_scales", "seed_threshold", "seed_resize"), ("seeds",)),
}
_SCORE_WORDS = {"boxes": "boxes", "masks": "masks (PxAP)", "seeds": "segmentation seeds (seed mIoU)"}
MODEL_STRUCTURES = ("vanilla", "b2")
NETWORK_TYPES = ("auto", "cam", "gradcam")


class ConfigError(UserError):
    """A flag combination that cannot work, with the fix in the message."""


def str2bool(value: str) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1", "on"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {value!r}")


def _check_flags_apply(dataset, given: set[str]) -> None:
    """A flag given for a dataset whose maps it does not score is an error
    (it would be silently ignored)."""
    for dest in sorted(given & set(_FLAG_SCORES)):
        if not set(_FLAG_SCORES[dest]) & set(dataset.scores):
            scored = " and ".join(_SCORE_WORDS[s] for s in dataset.scores)
            raise ConfigError(f"--{dest} does not apply to {dataset.name}, whose maps are scored "
                              f"as {scored}: drop it")


def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Dual-branch sigmoid CAM: train a vanilla model, fine-tune its sigmoid "
                    "branch, and score CAMs of both branches with the wsolevaluation protocol. "
                    "With no arguments, runs the CPU demo on the built-in SYNTH dataset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    flag = str2bool

    g = p.add_argument_group("experiment")
    g.add_argument("--experiment_name", default="test_case",
                   help="the experiment folder's name, under --root")
    g.add_argument("--root", "--log_root", dest="root", default="train_log",
                   help="experiment root: the experiment folder is <root>/<experiment_name> "
                        "(as in the public code, whose default is experiment/ILSVRC)")
    g.add_argument("--override_cache", type=flag, nargs="?", const=True, default=False,
                   help="allow training into an existing experiment folder (it is emptied)")
    g.add_argument("--seed", type=int, default=0,
                   help="random seed (the public code's is 42, which --replay public_code sets)")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted training run from its last checkpoint")
    g.add_argument("--workers", type=int, default=_default_workers(),
                   help="data-loading processes; the default is min(4, CPU cores)")
    g.add_argument("--dist_timeout", type=float, default=300,
                   help="seconds a torchrun process waits for the others in a collective "
                        "before the job ends with a message (a stopped or crashed rank)")
    g.add_argument("--gpus", default=None,
                   help="GPU index (e.g. 0); without CUDA the CPU is used with a warning")
    g.add_argument("--demo", action="store_true",
                   help="run the SYNTH demo (what `python main.py` with no arguments does); "
                        "flags given with it apply to both of its runs")
    g.add_argument("--list", action="store_true",
                   help="print the architectures, CAM methods and datasets, and exit")
    g.add_argument("--wandb", default="off", choices=("off", "offline", "online", "on"),
                   help="Weights & Biases logging; 'on' = online. Never fails the run "
                        "(the public code's default is on)")
    g.add_argument("--wandb_name", default=None, help="wandb run name")
    g.add_argument("--project", default="dual-branch-cam", help="wandb project")

    g = p.add_argument_group("data")
    g.add_argument("--dataset_name", default="SYNTH", choices=tuple(DATASET_NUM_CLASSES),
                   help="the dataset (SYNTH: the built-in one, generated on first use)")
    g.add_argument("--data_root", default="dataset/",
                   help="images of dataset D are under <data_root>/D")
    g.add_argument("--metadata_root", default="metadata/",
                   help="metadata of dataset D is under <metadata_root>/D/<split>")
    g.add_argument("--mask_root", default=None,
                   help="masks of dataset D are under <mask_root>/D (default: --data_root)")
    g.add_argument("--num_classes", type=int, default=None,
                   help="default: 200 CUB, 1000 ILSVRC, 100 OpenImages, 196 CARS, 10 SYNTH, "
                        "20 VOC2012, 8 SYNTH_ML")
    g.add_argument("--train_split", default=None,
                   help="the split to train on (default: train_aug for VOC2012, else train)")
    g.add_argument("--proxy_training_set", type=flag, nargs="?", const=True, default=False,
                   help="train on image_ids_proxy.txt (wsolevaluation's proxy train set)")
    g.add_argument("--skip_bad_images", action="store_true",
                   help="skip unreadable images (counted in the results) instead of failing")
    g.add_argument("--num_val_sample_per_class", type=int, default=0,
                   help="images per class of the val split (0 = all)")
    g.add_argument("--resize_size", type=int, default=256,
                   help="training images are resized to this square, then randomly cropped")
    g.add_argument("--crop_size", type=int, default=224,
                   help="the network's input size (test images are resized to it)")

    g = p.add_argument_group("model")
    g.add_argument("--architecture", default="resnet50", metavar="NAME",
                   help="one of: " + ", ".join(architecture_names()))
    g.add_argument("--network_type", default="auto", choices=NETWORK_TYPES,
                   help="cam: the CAM networks (vgg16 = VGG16-CAM ...); gradcam: the networks "
                        "the public code trains for a gradient --method (vgg16 -> "
                        "vgg16_gradcam, inception_v3 -> inception_v3_gradcam; resnet50 is "
                        "both); auto: cam when --method includes cam, else gradcam (the "
                        "public code's rule)")
    g.add_argument("--large_feature_map", type=flag, nargs="?", const=True, default=False,
                   help="one stride less before the CAM layer (28x28 maps at 224 px) for "
                        "vgg16, vgg16_gradcam, resnet18/50, inception_v3")
    g.add_argument("--model_structure", default=None, choices=MODEL_STRUCTURES,
                   help="vanilla: one softmax head; b2: add and fine-tune the sigmoid branch "
                        "(default: b2 when --ft_ckpt is given, else vanilla)")
    g.add_argument("--ft_ckpt", default=None,
                   help="vanilla checkpoint to start from ({'state_dict': ...} or a plain "
                        "state_dict, keys may carry 'module.'); for b2 the branch is added "
                        "to it (the public code ignores it for ILSVRC's Grad-CAM VGG16 and "
                        "loads torchvision's VGG16: pass that file here to do the same)")
    g.add_argument("--pretrained", type=flag, nargs="?", const=True, default=False,
                   help="initialise from ImageNet weights: --pretrained_path, else "
                        "torchvision's cache ($TORCH_HOME/hub/checkpoints) or timm's; "
                        "nothing is downloaded (the public code's default is TRUE and "
                        "downloads)")
    g.add_argument("--pretrained_path", default=None, metavar="FILE|DIR",
                   help="ImageNet weights (a torchvision .pth, or a folder holding it); "
                        "implies --pretrained")
    g.add_argument("--unfreeze_layer", default="fc2",
                   help="b2 fine-tuning trains these comma-separated parameter-name prefixes; "
                        "fc2 = the sigmoid branch whatever its name (SPG_A4_2, classifier_2, "
                        "head2), all = everything")
    g.add_argument("--sigmoid_init", default="clone", choices=("clone", "random"),
                   help="clone the softmax head (the paper) or initialise it as the public "
                        "code does (random)")
    g.add_argument("--frozen_mode", default="eval", choices=FROZEN_MODES,
                   help="b2 fine-tuning: eval keeps the frozen part in eval mode (BatchNorm "
                        "statistics, no dropout); public_code leaves it in train mode as the "
                        "public code does (BatchNorm batch statistics, dropout on)")
    g.add_argument("--cam_layer", default=None,
                   help="module whose output is the CAM activation (default: the "
                        "architecture's)")
    g.add_argument("--head", default=None,
                   help="the classification head module (default: the architecture's)")
    g.add_argument("--replay", default="none", choices=tuple(REPLAYS),
                   help="public_code: every choice of the method's public code at once "
                        "(random branch init, --frozen_mode public_code, bilinear gradient "
                        "maps, --first_box_only, its threshold list and fidelity, seed 42); "
                        "recam: ReCAM's code's (--seed_resize recam); flags given explicitly "
                        "still win")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", "--epoch", dest="epochs", type=int, default=10,
                   help="training epochs (0: save the initial model)")
    g.add_argument("--batch_size", type=int, default=32, help="images per batch and process")
    g.add_argument("--global_batch_size", type=int, default=None,
                   help="images per optimisation step over all torchrun processes: each "
                        "takes global / world size (so that N processes train the experiment "
                        "one process trains with --batch_size equal to it); instead of "
                        "--batch_size")
    g.add_argument("--lr", type=float, default=0.003,
                   help="learning rate of the feature part; the rest trains at lr x "
                        "--lr_classifier_ratio (wsolevaluation's groups, which the published "
                        "recipes mean: with it the VGG16 and InceptionV3 sigmoid branch trains "
                        "at 10 x lr, the ResNet one at lr; see lr_schedule.json)")
    g.add_argument("--lr_decay_frequency", type=int, default=3,
                   help="multiply the learning rate by 0.1 before epochs f, 2f, ... (1-based, "
                        "as the public code: f=3 decays at epochs 3, 6, 9)")
    g.add_argument("--lr_classifier_ratio", type=float, default=10.0,
                   help="learning-rate factor of the classifier part")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD (Nesterov) momentum")
    g.add_argument("--weight_decay", type=float, default=1e-4, help="SGD weight decay")

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
                   help="checkpoint file prefix in the experiment folder: last, or an epoch "
                        "number (3 or epoch3)")
    g.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="split scored after training / with --eval_only")
    g.add_argument("--method", "--methods", dest="method", default="cam,gradcam",
                   help="CAM method(s), comma-separated, or 'all': " + ", ".join(CAM_METHODS))
    g.add_argument("--cam_branch", default=None,
                   help="softmax, sigmoid or softmax,sigmoid (default: sigmoid for b2, "
                        "softmax for vanilla)")
    g.add_argument("--no_clamp", action="store_true",
                   help="ablation: keep negative sigmoid-branch channel weights")
    g.add_argument("--cam_curve_interval", type=float, default=0.001,
                   help="threshold step of the box/mask accuracy curves")
    g.add_argument("--multi_contour_eval", type=flag, nargs="?", const=True, default=True,
                   help="TRUE: the table's box metric is MaxBoxAccV2 (all contours); FALSE: "
                        "MaxBoxAcc (the largest contour, IoU 50); both are in the results JSON")
    g.add_argument("--iou_threshold_list", type=int, nargs="+", default=[30, 50, 70],
                   help="IoU thresholds (percent) MaxBoxAccV2 averages over")
    g.add_argument("--box_threads", type=int, default=0,
                   help="threads scoring the box metrics (0: one per core; 1 on a machine "
                        "busy with other work, where threads compete for the cores)")
    g.add_argument("--loc_threshold", type=float, default=0.2,
                   help="CAM threshold of GT-known Loc and Top-1 Loc")
    g.add_argument("--first_box_only", action="store_true",
                   help="GT-known/Top-1 Loc against the first GT box (public code's variant)")
    g.add_argument("--map_style", default="wsolevaluation",
                   choices=("wsolevaluation", "public_code"),
                   help="public_code: gradient-method maps ReLU'd, min-max normalised and "
                        "resized bilinearly, as the public code's Grad-CAM library")
    g.add_argument("--threshold_list", default="wsolevaluation",
                   choices=("wsolevaluation", "public_code"),
                   help="CAM thresholds: arange(0, 1, interval) (wsolevaluation) or the public "
                        "code's rounded list ending at 1.0")
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
                   help="also compute Average Drop and Increase in Confidence")
    g.add_argument("--fidelity_protocol", default="softmax_head",
                   choices=("softmax_head", "public_code"),
                   help="softmax_head: the softmax head's scores of the GT class; public_code: "
                        "Table 1's (softmax over the branch's logits, the predicted class)")
    g.add_argument("--fidelity_steps", type=int, default=0, metavar="N",
                   help="with --fidelity: also insertion/deletion AUC in N steps (costs "
                        "2(N+1) forwards per image, method and branch)")
    g.add_argument("--scorecam_batch_size", type=int, default=32,
                   help="scorecam: masked images per forward")
    g.add_argument("--scorecam_topk", type=int, default=None,
                   help="scorecam: score only the k channels of largest mean activation "
                        "(default: all)")
    g.add_argument("--smooth_samples", type=int, default=8,
                   help="smoothgradcam++: noisy copies of each image")
    g.add_argument("--smooth_sigma", type=float, default=0.15,
                   help="smoothgradcam++: noise std relative to each image's value range")
    g = p.add_argument_group(
        "ReCAM and segmentation seeds",
        "class re-activation (Chen et al., CVPR 2022; docs/method.md) and the seed mIoU of "
        "VOC2012 / SYNTH_ML")
    g.add_argument("--recam", action="store_true",
                   help="add ReCAM's re-activation head fc_re and its SCE term; maps of the "
                        "recam branch become available (--cam_branch ...,recam)")
    g.add_argument("--recam_weight", type=float, default=1.0,
                   help="lambda: loss = head loss + lambda x SCE (ReCAM: 1.0 VOC, 0.1 COCO)")
    g.add_argument("--recam_trains", default="heads", choices=("heads", "all"),
                   help="heads: only the BCE head (the sigmoid branch of a b2 model) and "
                        "fc_re train, classification unchanged; all: backbone and BCE head "
                        "at 0.1 x --lr, fc_re at --lr, BatchNorm statistics frozen (ReCAM)")
    g.add_argument("--recam_map", default="product",
                   choices=("product", "mask_head", "reactivation"),
                   help="recam branch weights: W2 * W1 (ReCAM's VOC maps), W1 after "
                        "re-activation (its COCO maps), or W2")
    g.add_argument("--recam_clamp", default="none", choices=("none", "factors", "product"),
                   help="recam branch: no clamp (ReCAM), both factors clamped at zero, or the "
                        "product's channel weights clamped (as the sigmoid branch's)")
    g.add_argument("--head_bias", type=flag, nargs="?", const=True, default=True,
                   help="FALSE: a bias-free head (ReCAM's 1x1 classifier)")
    g.add_argument("--freeze", default="",
                   help="comma-separated parameter prefixes that never train (ReCAM: conv1,bn1)")
    g.add_argument("--frozen_bn", action="store_true",
                   help="BatchNorm running statistics stay as loaded while training (ReCAM)")
    g.add_argument("--lr_groups", default="published", choices=("published", "head"),
                   help="which parameters train at lr x --lr_classifier_ratio: the published "
                        "rule of the network (e.g. ResNet's layer4 and fc), or the head alone "
                        "(ReCAM's 'newly added' group)")
    g.add_argument("--nesterov", type=flag, nargs="?", const=True, default=True,
                   help="Nesterov momentum (the method's recipe; ReCAM's SGD has none)")
    g.add_argument("--lr_schedule", default="step", choices=("step", "poly"),
                   help="step: x0.1 every --lr_decay_frequency epochs; poly: ReCAM's "
                        "(1 - step / steps) ** --poly_power, per step")
    g.add_argument("--poly_power", type=float, default=0.9,
                   help="the poly schedule's exponent (ReCAM: 0.9)")
    g.add_argument("--train_augment", default="wsol", choices=("wsol", "recam"),
                   help="wsol: resize, random crop, flip; recam: long side random in "
                        "--resize_long, flip, random --crop_size crop padded with zeros")
    g.add_argument("--resize_long", type=int, nargs=2, default=[320, 640], metavar=("LOW", "HIGH"),
                   help="--train_augment recam: the range of the random long side")
    g.add_argument("--tta_scales", default="",
                   help="seed maps: comma-separated scales, each with a flipped copy (ReCAM: "
                        "1.0,0.5,1.5,2.0); default: the image as it is")
    g.add_argument("--seed_resize", default="image", choices=SEED_RESIZES,
                   help="seed maps: image resizes each scale's maps straight to the image; "
                        "recam as ReCAM's code (PIL-style image rescaling, maps resized to the "
                        "output-stride grid and cropped; --replay recam sets it)")
    g.add_argument("--seed_threshold", type=float, default=0.21,
                   help="seed mIoU: the background score (ReCAM: 0.21 VOC, 0.15 COCO); a sweep "
                        "in steps of 0.01 is reported beside it")

    g = p.add_argument_group(
        "compatibility", "flags of the method's public code that this toolkit accepts as they "
                         "are (also --log_root for --root, --epoch for --epochs, --methods for "
                         "--method)")
    g.add_argument("--wsol_method", default="cam", choices=("cam",),
                   help="wsolevaluation's WSOL training method; only plain CAM training exists "
                        "here")
    return p


# Flags a replay sets unless given explicitly, and the RunChoices field of each.
_CHOICE_FLAGS = {"sigmoid_init": "sigmoid_init", "frozen_mode": "frozen_mode",
                 "map_style": "map_style", "first_box_only": "first_box_only",
                 "threshold_list": "threshold_list", "fidelity_protocol": "fidelity",
                 "seed": "seed", "seed_resize": "seed_resize"}


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the flags of ``parser`` given on the command line."""
    parser = copy.deepcopy(parser)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    namespace, _ = parser.parse_known_args(list(argv))
    return set(vars(namespace))


def explicit_flags(argv: Sequence[str]) -> set[str]:
    """The destinations of main.py's flags given on the command line."""
    return given_flags(build_parser(), argv)


def finalize(args: argparse.Namespace, given: set[str] | None = None) -> argparse.Namespace:
    """Derived settings and checks that need several flags at once; ``given``:
    the flags given explicitly (they win over --replay)."""
    given = set() if given is None else given
    if args.wandb == "on":
        args.wandb = "online"
    if args.num_classes is None:
        args.num_classes = DATASET_NUM_CLASSES[args.dataset_name]
    if args.model_structure is None:
        args.model_structure = "b2" if args.ft_ckpt else "vanilla"
    if args.mask_root is None:
        args.mask_root = args.data_root
    if args.pretrained_path:
        args.pretrained = True
    try:
        args.methods = parse_methods(args.method)
    except ValueError as error:
        raise ConfigError(f"--method: {error}") from None
    network_type = args.network_type
    if network_type == "auto":
        network_type = "cam" if "cam" in args.methods else "gradcam"
    args.network = network_for(args.architecture, network_type)
    args.log_folder = os.path.join(args.root, args.experiment_name)
    args.notes = []  # lines for the log, once it is set up
    if args.eval_only:
        _adopt_recorded_settings(args, given)
    elif args.ft_ckpt and "network_type" not in given:
        _recognise_start_checkpoint(args)
    args.choices = resolve_choices(args.replay, **{
        field: getattr(args, dest) for dest, field in _CHOICE_FLAGS.items() if dest in given})
    args.sigmoid_init = args.choices.sigmoid_init
    args.frozen_mode = args.choices.frozen_mode
    args.map_style = args.choices.map_style
    args.first_box_only = args.choices.first_box_only
    args.threshold_list = args.choices.threshold_list
    args.fidelity_protocol = args.choices.fidelity
    args.seed = args.choices.seed
    args.seed_resize = args.choices.seed_resize
    try:
        get_spec(args.network, args.crop_size)
    except ValueError as error:
        raise ConfigError(f"--architecture: {error}") from None
    args.image_root = os.path.join(args.data_root, args.dataset_name)
    args.dataset_mask_root = os.path.join(args.mask_root, args.dataset_name)
    args.split_metadata_root = os.path.join(args.metadata_root, args.dataset_name)
    if args.cam_branch is None:
        args.cam_branches = ["sigmoid"] if args.model_structure == "b2" else ["softmax"]
    else:
        args.cam_branches = [b.strip() for b in args.cam_branch.split(",") if b.strip()]
        for b in args.cam_branches:
            if b not in ("softmax", "sigmoid", "recam"):
                raise ConfigError(f"--cam_branch {b!r}: use softmax, sigmoid or recam, or "
                                  f"several comma-separated (softmax,sigmoid,recam)")
        if "sigmoid" in args.cam_branches and args.model_structure != "b2":
            raise ConfigError("--cam_branch sigmoid needs a dual-branch model: "
                              "add --model_structure b2")
        if "recam" in args.cam_branches and not args.recam:
            raise ConfigError("--cam_branch recam needs the re-activation head: add --recam "
                              "(training) or evaluate a checkpoint trained with it")
    dataset = DATASETS[args.dataset_name]
    args.segmentation = dataset.multi_label
    args.train_split = args.train_split or dataset.train_split
    _check_flags_apply(dataset, given)
    if args.split == "train" and not args.segmentation:
        raise ConfigError("--split train is for the seed evaluation of VOC2012 / SYNTH_ML; "
                          "WSOL datasets are scored on val or test")
    args.freeze_prefixes = tuple(s.strip() for s in args.freeze.split(",") if s.strip())
    try:
        args.tta = tuple(float(v) for v in args.tta_scales.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--tta_scales {args.tta_scales!r}: comma-separated numbers, "
                          f"e.g. 1.0,0.5,1.5,2.0") from None
    if any(v <= 0 for v in args.tta):
        raise ConfigError(f"--tta_scales {args.tta_scales!r}: scales must be > 0")
    if args.recam_weight < 0:
        raise ConfigError(f"--recam_weight must be >= 0, got {args.recam_weight}")
    args.unfreeze_layers = tuple(s.strip() for s in args.unfreeze_layer.split(",") if s.strip())
    if args.global_batch_size is not None:
        world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun sets it before we start
        if "batch_size" in given:
            raise ConfigError("pass either --batch_size (per process) or --global_batch_size "
                              "(over all processes), not both")
        if args.global_batch_size < world or args.global_batch_size % world:
            raise ConfigError(f"--global_batch_size {args.global_batch_size} must be a "
                              f"multiple of the number of processes ({world})")
        args.batch_size = args.global_batch_size // world
    if args.dist_timeout <= 0:
        raise ConfigError(f"--dist_timeout must be > 0 seconds, got {args.dist_timeout}")
    for name, value, low in (("--epochs", args.epochs, 0), ("--batch_size", args.batch_size, 1),
                             ("--lr_decay_frequency", args.lr_decay_frequency, 1),
                             ("--workers", args.workers, 0),
                             ("--prefetch_factor", args.prefetch_factor, 1),
                             ("--save_overlays", args.save_overlays, 0),
                             ("--fidelity_steps", args.fidelity_steps, 0),
                             ("--box_threads", args.box_threads, 0)):
        if value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}")
    if not 0 < args.cam_curve_interval < 1:
        raise ConfigError("--cam_curve_interval must be in (0, 1)")
    if args.fidelity_steps and not args.fidelity:
        raise ConfigError("--fidelity_steps N goes with --fidelity")
    try:
        cam_methods(args)  # their settings' checks, before any work
    except ValueError as error:
        raise ConfigError(f"--smooth_samples / --scorecam_*: {error}") from None
    return args


# Model settings a checkpoint records (wsol.checkpoint.MODEL_SETTINGS) that
# --eval_only takes from it: the flag (argparse destination) of each.
_RECORDED_FLAGS = {"architecture": "architecture", "num_classes": "num_classes",
                   "model_structure": "model_structure",
                   "large_feature_map": "large_feature_map", "crop_size": "crop_size",
                   "resize_size": "resize_size", "cam_layer": "cam_layer", "head": "head",
                   "replay": "replay", "recam": "recam", "head_bias": "head_bias"}


def _adopt_recorded_settings(args: argparse.Namespace, given: set[str]) -> None:
    """--eval_only: the model is rebuilt as the checkpoint (and its experiment's
    config.json) record it; an explicit flag that contradicts them is an error
    naming both, a default is replaced silently (it was never the user's)."""
    from wsol.runtime.checkpoint import CheckpointError, check_settings, recorded_settings
    path = checkpoint_path(args.log_folder, args.eval_checkpoint_type)
    if not os.path.isfile(path):
        return  # reported when the checkpoint is loaded
    try:
        recorded = recorded_settings(path)
    except CheckpointError:
        return  # an unreadable checkpoint is reported when it is loaded
    try:
        explicit = {key: getattr(args, dest) for key, dest in _RECORDED_FLAGS.items()
                    if dest in given}
        if "architecture" in explicit:
            explicit["architecture"] = args.network
        # --architecture vgg16 names VGG16 whichever of its networks was trained,
        # unless --network_type says which.
        same_backbone = (lambda a, b: a == b) if "network_type" in given else (
            lambda a, b: network_for(a, "cam") == network_for(b, "cam"))
        check_settings(path, recorded, explicit, {"architecture": same_backbone})
    except CheckpointError as error:
        raise ConfigError(str(error)) from None
    for key, dest in _RECORDED_FLAGS.items():
        if key in recorded and recorded[key] is not None:
            setattr(args, dest, recorded[key])
    if "architecture" in recorded:
        args.network = recorded["architecture"]
        args.architecture = network_for(args.network, "cam")
    if RECOGNISED in recorded:
        args.notes.append(recorded[RECOGNISED])


def _recognise_start_checkpoint(args: argparse.Namespace) -> None:
    """--ft_ckpt of the other network of the backbone that --network_type auto
    picked from --method (the public code's checkpoints name only the
    backbone): the network the checkpoint's weights belong to, with a note."""
    from wsol.architectures import recognise_network
    from wsol.runtime.checkpoint import CheckpointError, peek_checkpoint
    try:
        state = peek_checkpoint(args.ft_ckpt)["state_dict"]
    except CheckpointError:
        return  # reported when the checkpoint is loaded
    found, reason = recognise_network(args.network, state)
    if reason:
        args.notes.append(f"--ft_ckpt {args.ft_ckpt}: {reason}; training {found}, not the "
                          f"{args.network} that --method {args.method} picks (--network_type "
                          f"chooses explicitly)")
        args.network = found


def get_configs(argv: Sequence[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = finalize(build_parser().parse_args(argv), explicit_flags(argv))
    args.argv = ["main.py", *argv]  # the command line, for the record of the run
    return args


def cam_methods(args: argparse.Namespace,
                generator: "torch.Generator | None" = None) -> list[CAMMethod]:
    """The methods of --method, with the settings of --smooth_* and --scorecam_*."""
    made = {"smoothgradcam++": lambda: SmoothGradCAMPlusPlus(
                args.smooth_samples, getattr(args, "smooth_sigma", 0.15), generator),
            "scorecam": lambda: ScoreCAM(args.scorecam_batch_size,
                                         getattr(args, "scorecam_topk", None))}
    return [made[name]() if name in made else CAM_METHODS[name] for name in args.methods]


def checkpoint_path(log_folder: str, prefix: str) -> str:
    """``<folder>/<prefix>_checkpoint.pth.tar``; an epoch is ``3`` (the public
    code's name) or ``epoch3``."""
    if prefix.startswith("epoch") and prefix[5:].isdigit():
        prefix = prefix[5:]
    return os.path.join(log_folder, f"{prefix}_checkpoint.pth.tar")


def configure_log_folder(args: argparse.Namespace) -> tuple[str, bool, FolderLock | None]:
    """The experiment folder, whether this run created it, and its lock
    (held by a training run; None for --eval_only).  Training never silently
    overwrites a folder that holds checkpoints or results, nor touches one
    another live run holds (wsol.runtime.lock); a folder left by a run that
    failed before its first checkpoint is reused.  Temporary files of
    interrupted saves are removed once the folder is held."""
    folder = args.log_folder
    lock = FolderLock(folder)
    if getattr(args, "resume", False) and not args.eval_only:
        if not resume_candidates(folder):
            raise ConfigError(f"--resume: {folder} holds no checkpoint to resume from")
        lock.acquire("resume in")
        remove_stale_temporaries(folder)
        return folder, False, lock
    existed = os.path.isdir(folder)
    if args.eval_only:
        os.makedirs(folder, exist_ok=True)
        return folder, not existed, None
    if existed:
        lock.check("replace" if args.override_cache else "train in")
        if holds_results(folder) and not args.override_cache:
            raise ConfigError(f"experiment folder {folder} exists: choose another "
                              f"--experiment_name or pass --override_cache to replace it, or "
                              f"--resume to continue it")
        shutil.rmtree(folder)
    os.makedirs(folder, exist_ok=True)
    lock.acquire("train in")
    return folder, True, lock


def resume_candidates(folder: str) -> list[str]:
    """The checkpoints a --resume may continue from: ``interrupted`` (mid-epoch),
    ``last`` and every ``<epoch>_checkpoint`` present."""
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if name.endswith("_checkpoint.pth.tar"))


def remove_stale_temporaries(folder: str) -> None:
    """``*.tmp`` files of saves a killed run left behind (the caller holds the folder)."""
    for name in os.listdir(folder):
        if name.endswith(".tmp"):
            try:
                os.remove(os.path.join(folder, name))
                logging.getLogger(__name__).info("removed %s, left by an interrupted save", name)
            except OSError:
                pass


def holds_results(folder: str) -> bool:
    """Whether a folder holds checkpoints or results (not just a failed run's log)."""
    return any(name.endswith((".pth.tar", ".json")) and name not in ("config.json",
                                                                      "lr_schedule.json")
               for name in os.listdir(folder))


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
    plain["choices"] = args.choices.as_dict() if isinstance(args.choices, RunChoices) else None
    plain["run"] = run_record(getattr(args, "argv", []), os.path.dirname(os.path.abspath(__file__)),
                              seed=args.seed)
    write_json(dict(sorted(plain.items())), path)

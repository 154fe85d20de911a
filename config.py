"""Command-line flags, declared once, and the run's settings built from them.

Every flag of every entry point is declared here, once, in a group
(:data:`GROUPS`); ``main.py`` takes them all (:func:`build_parser`),
``evaluation.py``, ``explain.py`` and the scripts the ones they need
(:func:`add_flags`, with their own defaults where they differ).
:func:`get_configs` parses main.py's flags and builds the
:class:`wsol.settings.RunSettings` of the run once, resolving what depends on
several flags (the network from ``--architecture``, ``--network_type``,
``--method`` and the checkpoint's keys; the model settings ``--eval_only``
reads from the checkpoint) and refusing combinations that cannot work, with
the fix in one line, before any work.

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
import dataclasses
import os
import sys
from typing import Any, Iterable, Sequence

from wsol.architectures import (architecture_names, get_spec, import_timm, network_for,
                                recognise_network, wsol_network)
from wsol.cams import CAM_METHODS, parse_methods
from wsol.data.datasets import DATASETS
from wsol.errors import UserError
from wsol.model import FROZEN_MODES
from wsol.replay import REPLAYS, resolve_choices
from wsol.runtime.checkpoint import (RECOGNISED, CheckpointError, check_settings,
                                     peek_checkpoint, recorded_settings)
from wsol.runtime.experiment import checkpoint_path
from wsol.seeds import SEED_RESIZES
from wsol.wsol_methods import WSOL_METHODS
from wsol.settings import (CAMSettings, DataSettings, EvalSettings, ModelSettings,
                           OptimSettings, RunSettings, RuntimeSettings, WSOLSettings,
                           read_run_settings)

__all__ = ["DATASET_NUM_CLASSES", "SEGMENTATION_DATASETS", "BOX_DATASETS", "MASK_DATASETS",
           "GROUPS", "ConfigError", "str2bool", "add_flags", "build_parser", "given_flags",
           "get_configs", "build_settings", "parse_main_args", "check_scoring"]

# Views of the dataset table (wsol.data.datasets).
DATASET_NUM_CLASSES = {name: d.num_classes for name, d in DATASETS.items()}
SEGMENTATION_DATASETS = tuple(name for name, d in DATASETS.items() if d.multi_label)
BOX_DATASETS = tuple(name for name, d in DATASETS.items() if d.boxes)
MASK_DATASETS = tuple(name for name, d in DATASETS.items() if d.masks)
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


def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)


# ---------------------------------------------------------------------------
# The flags, declared once
# ---------------------------------------------------------------------------
_RECAM = "ReCAM and segmentation seeds"
_WSOL = "WSOL methods"
# Group titles (in --help's order) and descriptions.
GROUPS: dict[str, str | None] = {
    "experiment": None, "data": None, "model": None, "training": None,
    "speed": "same results up to float rounding; see docs/PERFORMANCE.md",
    "evaluation": None,
    _RECAM: "class re-activation (Chen et al., CVPR 2022; docs/method.md) and the seed mIoU "
            "of VOC2012 / SYNTH_ML",
    _WSOL: "wsolevaluation's training methods (Choe et al., CVPR 2020), with its flags' "
           "names and defaults (docs/method.md)",
    "compatibility": "flags of the public code (wsolevaluation, beyond-softmax, Dual-CAM) "
                     "accepted with their meaning there, or refused with what to use here "
                     "(also --log_root for --root, --epoch for --epochs, --methods for "
                     "--method)",
}
# dest -> (group, option strings, argparse keyword arguments)
_FLAGS: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {}


def _flag(group: str, *names: str, **kwargs: Any) -> None:
    kwargs.setdefault("dest", names[0].lstrip("-"))
    _FLAGS[kwargs["dest"]] = (group, names, kwargs)


# -- experiment ----------------------------------------------------------------------
_flag("experiment", "--experiment_name", default="test_case",
      help="the experiment folder's name, under --root")
_flag("experiment", "--root", "--log_root", dest="root", default="train_log",
      help="experiment root: the experiment folder is <root>/<experiment_name> "
           "(as in the public code, whose default is experiment/ILSVRC)")
_flag("experiment", "--override_cache", type=str2bool, nargs="?", const=True, default=False,
      help="allow training into an existing experiment folder (it is emptied)")
_flag("experiment", "--seed", type=int, default=0,
      help="random seed (the public code's is 42, which --replay public_code sets)")
_flag("experiment", "--resume", action="store_true",
      help="continue an interrupted training run from its last checkpoint")
_flag("experiment", "--workers", type=int, default=_default_workers(),
      help="data-loading processes; the default is min(4, CPU cores)")
_flag("experiment", "--dist_timeout", type=float, default=300,
      help="seconds a torchrun process waits for the others in a collective "
           "before the job ends with a message (a stopped or crashed rank)")
_flag("experiment", "--gpus", default=None,
      help="GPU index (e.g. 0); without CUDA the CPU is used with a warning")
_flag("experiment", "--demo", action="store_true",
      help="run the SYNTH demo (what `python main.py` with no arguments does); "
           "flags given with it apply to both of its runs")
_flag("experiment", "--list", action="store_true",
      help="print the architectures, CAM methods and datasets, and exit")
_flag("experiment", "--wandb", default="off", choices=("off", "offline", "online", "on"),
      help="Weights & Biases logging; 'on' = online. Never fails the run "
           "(the public code's default is on)")
_flag("experiment", "--wandb_name", default=None, help="wandb run name")
_flag("experiment", "--project", default="dual-branch-cam", help="wandb project")


# -- data ----------------------------------------------------------------------------
_flag("data", "--dataset_name", default="SYNTH", choices=tuple(DATASET_NUM_CLASSES),
      help="the dataset (SYNTH: the built-in one, generated on first use)")
_flag("data", "--data_root", default="dataset/",
      help="images of dataset D are under <data_root>/D")
_flag("data", "--metadata_root", default="metadata/",
      help="metadata of dataset D is under <metadata_root>/D/<split>")
_flag("data", "--mask_root", default=None,
      help="masks of dataset D are under <mask_root>/D (default: --data_root)")
_flag("data", "--num_classes", type=int, default=None,
      help="default: 200 CUB, 1000 ILSVRC, 100 OpenImages, 196 CARS, 10 SYNTH, "
           "20 VOC2012, 8 SYNTH_ML")
_flag("data", "--train_split", default=None,
      help="the split to train on (default: train_aug for VOC2012, else train)")
_flag("data", "--proxy_training_set", type=str2bool, nargs="?", const=True, default=False,
      help="train on image_ids_proxy.txt (wsolevaluation's proxy train set)")
_flag("data", "--skip_bad_images", action="store_true",
      help="skip unreadable images (counted in the results) instead of failing")
_flag("data", "--num_val_sample_per_class", type=int, default=0,
      help="images per class of the val split (0 = all)")
_flag("data", "--resize_size", type=int, default=256,
      help="training images are resized to this square, then randomly cropped")
_flag("data", "--crop_size", type=int, default=224,
      help="the network's input size (test images are resized to it)")


# -- model ---------------------------------------------------------------------------
_flag("model", "--architecture", default="resnet50", metavar="NAME",
      help="one of: " + ", ".join(architecture_names()))
_flag("model", "--network_type", default="auto", choices=NETWORK_TYPES,
      help="cam: the CAM networks (vgg16 = VGG16-CAM ...); gradcam: the networks "
           "the public code trains for a gradient --method (vgg16 -> "
           "vgg16_gradcam, inception_v3 -> inception_v3_gradcam; resnet50 is "
           "both); auto: cam when --method includes cam, else gradcam (the "
           "public code's rule)")
_flag("model", "--large_feature_map", type=str2bool, nargs="?", const=True, default=False,
      help="one stride less before the CAM layer (28x28 maps at 224 px) for "
           "vgg16, vgg16_gradcam, resnet18/50, inception_v3")
_flag("model", "--model_structure", default=None, choices=MODEL_STRUCTURES,
      help="vanilla: one softmax head; b2: add and fine-tune the sigmoid branch "
           "(default: b2 when --ft_ckpt is given, else vanilla)")
_flag("model", "--ft_ckpt", default=None,
      help="vanilla checkpoint to start from ({'state_dict': ...} or a plain "
           "state_dict, keys may carry 'module.'); for b2 the branch is added "
           "to it (the public code ignores it for ILSVRC's Grad-CAM VGG16 and "
           "loads torchvision's VGG16: pass that file here to do the same)")
_flag("model", "--pretrained", type=str2bool, nargs="?", const=True, default=False,
      help="initialise from ImageNet weights: --pretrained_path, else "
           "torchvision's cache ($TORCH_HOME/hub/checkpoints) or timm's; "
           "nothing is downloaded (the public code's default is TRUE and "
           "downloads)")
_flag("model", "--pretrained_path", default=None, metavar="FILE|DIR",
      help="ImageNet weights (a torchvision .pth, or a folder holding it); "
           "implies --pretrained")
_flag("model", "--unfreeze_layer", default="fc2",
      help="b2 fine-tuning trains these comma-separated parameter-name prefixes; "
           "fc2 = the sigmoid branch whatever its name (SPG_A4_2, classifier_2, "
           "head2), all = everything")
_flag("model", "--sigmoid_init", default="clone", choices=("clone", "random"),
      help="clone the softmax head (the paper) or initialise it as the public "
           "code does (random)")
_flag("model", "--frozen_mode", default="eval", choices=FROZEN_MODES,
      help="b2 fine-tuning: eval keeps the frozen part in eval mode (BatchNorm "
           "statistics, no dropout); public_code leaves it in train mode as the "
           "public code does (BatchNorm batch statistics, dropout on)")
_flag("model", "--cam_layer", default=None,
      help="module whose output is the CAM activation (default: the "
           "architecture's)")
_flag("model", "--head", default=None,
      help="the classification head module (default: the architecture's)")
_flag("model", "--replay", default="none", choices=tuple(REPLAYS),
      help="public_code: every choice of the method's public code at once "
           "(random branch init, --frozen_mode public_code, bilinear gradient "
           "maps, --first_box_only, its threshold list and fidelity, seed 42); "
           "recam: ReCAM's code's (--seed_resize recam); flags given explicitly "
           "still win")


# -- training ------------------------------------------------------------------------
_flag("training", "--epochs", "--epoch", dest="epochs", type=int, default=10,
      help="training epochs (0: save the initial model)")
_flag("training", "--batch_size", type=int, default=32, help="images per batch and process")
_flag("training", "--global_batch_size", type=int, default=None,
      help="images per optimisation step over all torchrun processes: each "
           "takes global / world size (so that N processes train the experiment "
           "one process trains with --batch_size equal to it); instead of "
           "--batch_size")
_flag("training", "--lr", type=float, default=0.003,
      help="learning rate of the feature part; the rest trains at lr x "
           "--lr_classifier_ratio (wsolevaluation's groups, which the published "
           "recipes mean: with it the VGG16 and InceptionV3 sigmoid branch trains "
           "at 10 x lr, the ResNet one at lr; see lr_schedule.json)")
_flag("training", "--lr_decay_frequency", type=int, default=3,
      help="multiply the learning rate by 0.1 before epochs f, 2f, ... (1-based, "
           "as the public code: f=3 decays at epochs 3, 6, 9)")
_flag("training", "--lr_classifier_ratio", type=float, default=10.0,
      help="learning-rate factor of the classifier part")
_flag("training", "--momentum", type=float, default=0.9, help="SGD (Nesterov) momentum")
_flag("training", "--weight_decay", type=float, default=1e-4, help="SGD weight decay")


# -- speed ---------------------------------------------------------------------------
_flag("speed", "--amp", action="store_true",
      help="bfloat16 autocast for training and CAM passes (CPU, or GPUs with "
           "bf16); CAM maps are still formed in float32")
_flag("speed", "--channels_last", action="store_true",
      help="channels-last (NHWC) memory format for images and weights")
_flag("speed", "--compile", action="store_true",
      help="torch.compile the backbone blocks (slow first batches while compiling)")
_flag("speed", "--decode_on_device", action="store_true",
      help="workers only read the files; decode (nvJPEG on a GPU) and resize/crop/"
           "flip on the model's device, freeing CPU cores (images within about one "
           "grey level of the default PIL path)")
_flag("speed", "--prefetch_factor", type=int, default=4,
      help="batches each data-loading worker prepares ahead")


# -- evaluation ----------------------------------------------------------------------
_flag("evaluation", "--eval_only", action="store_true",
      help="evaluate the experiment's checkpoint (or --ft_ckpt for vanilla)")
_flag("evaluation", "--skip_eval", action="store_true",
      help="train only; score later with --eval_only (the run scripts do this)")
_flag("evaluation", "--eval_checkpoint_type", default="last",
      help="checkpoint file prefix in the experiment folder: last, or an epoch "
           "number (3 or epoch3)")
_flag("evaluation", "--split", default="test", choices=("train", "val", "test"),
      help="split scored after training / with --eval_only")
_flag("evaluation", "--method", "--methods", dest="method", default="cam,gradcam",
      help="CAM method(s), comma-separated, or 'all': " + ", ".join(CAM_METHODS))
_flag("evaluation", "--cam_branch", default=None,
      help="the branches whose maps are scored, comma-separated: softmax, sigmoid, recam "
           "(default: sigmoid for b2, softmax for vanilla)")
_flag("evaluation", "--no_clamp", action="store_true",
      help="ablation: keep negative sigmoid-branch channel weights")
_flag("evaluation", "--cam_curve_interval", type=float, default=0.001,
      help="threshold step of the box/mask accuracy curves")
_flag("evaluation", "--multi_contour_eval", type=str2bool, nargs="?", const=True, default=True,
      help="TRUE: the table's box metric is MaxBoxAccV2 (all contours); FALSE: "
           "MaxBoxAcc (the largest contour, IoU 50); both are in the results JSON")
_flag("evaluation", "--box_v2_metric", type=str2bool, nargs="?", const=True, default=True,
      help="wsolevaluation's switch: FALSE scores MaxBoxAcc (V1): the largest contour "
           "and IoU 50 only (it sets --multi_contour_eval FALSE --multi_iou_eval FALSE)")
_flag("evaluation", "--multi_iou_eval", type=str2bool, nargs="?", const=True, default=True,
      help="FALSE: box accuracy at IoU 50 only (wsolevaluation's meaning)")
_flag("evaluation", "--iou_threshold_list", type=int, nargs="+", default=[30, 50, 70],
      help="IoU thresholds (percent) MaxBoxAccV2 averages over")
_flag("evaluation", "--box_threads", type=int, default=0,
      help="threads scoring the box metrics (0: one per core; 1 on a machine "
           "busy with other work, where threads compete for the cores)")
_flag("evaluation", "--loc_threshold", type=float, default=0.2,
      help="CAM threshold of GT-known Loc and Top-1 Loc")
_flag("evaluation", "--first_box_only", action="store_true",
      help="GT-known/Top-1 Loc against the first GT box (public code's variant)")
_flag("evaluation", "--map_style", default="wsolevaluation",
      choices=("wsolevaluation", "public_code"),
      help="public_code: gradient-method maps ReLU'd, min-max normalised and "
           "resized bilinearly, as the public code's Grad-CAM library")
_flag("evaluation", "--threshold_list", default="wsolevaluation",
      choices=("wsolevaluation", "public_code"),
      help="CAM thresholds: arange(0, 1, interval) (wsolevaluation) or the public "
           "code's rounded list ending at 1.0")
_flag("evaluation", "--save_scoremaps", action="store_true",
      help="write each map as .npy under scoremaps/<split>/<method>_<branch>/")
_flag("evaluation", "--save_overlays", type=int, default=0, metavar="N",
      help="write N overlay PNGs per method and branch (map, GT and predicted "
           "box or mask contours) and a softmax-vs-sigmoid grid per method "
           "under overlays/<split>/")
_flag("evaluation", "--plots", action="store_true",
      help="write box-accuracy-vs-threshold and PxAP precision-recall curves "
           "under plots/<split>/")
_flag("evaluation", "--bootstrap", type=int, default=1000, metavar="N",
      help="95%% intervals of every number and paired differences between rows from N "
           "resamples of the images with replacement (the same for every row; seeded by "
           "--seed); 0: none")
_flag("evaluation", "--fidelity", action="store_true",
      help="also compute Average Drop and Increase in Confidence")
_flag("evaluation", "--fidelity_protocol", default="softmax_head",
      choices=("softmax_head", "public_code"),
      help="softmax_head: the softmax head's scores of the GT class; public_code: "
           "Table 1's (softmax over the branch's logits, the predicted class)")
_flag("evaluation", "--fidelity_steps", type=int, default=0, metavar="N",
      help="with --fidelity: also insertion/deletion AUC in N steps (costs "
           "2(N+1) forwards per image, method and branch)")
_flag("evaluation", "--fidelity_road", action="store_true",
      help="with --fidelity: also ROAD (pytorch-grad-cam's remove-and-debias: MoRF, LeRF and "
           "(LeRF - MoRF) / 2 over the percentiles 10..90; 18 imputations and forwards per "
           "image, method and branch)")
_flag("evaluation", "--scorecam_batch_size", type=int, default=32,
      help="scorecam: masked images per forward")
_flag("evaluation", "--scorecam_topk", type=int, default=None,
      help="scorecam: score only the k channels of largest mean activation "
           "(default: all)")
_flag("evaluation", "--smooth_samples", type=int, default=8,
      help="smoothgradcam++: noisy copies of each image")
_flag("evaluation", "--smooth_sigma", type=float, default=0.15,
      help="smoothgradcam++: noise std relative to each image's value range")
_flag("evaluation", "--cam_option", action="append", default=[], metavar="METHOD.SETTING=VALUE",
      help="a CAM method's setting (repeatable), e.g. sscam.samples=10, "
           "refinecam.layers=layer2+layer3+layer4, ablationcam.batch_size=64; "
           "docs/method.md lists them")

# -- ReCAM and segmentation seeds ----------------------------------------------------
_flag(_RECAM, "--recam", action="store_true",
      help="add ReCAM's re-activation head fc_re and its SCE term; maps of the "
           "recam branch become available (--cam_branch ...,recam)")
_flag(_RECAM, "--recam_weight", type=float, default=1.0,
      help="lambda: loss = head loss + lambda x SCE (ReCAM: 1.0 VOC, 0.1 COCO)")
_flag(_RECAM, "--recam_trains", default="heads", choices=("heads", "all"),
      help="heads: only the BCE head (the sigmoid branch of a b2 model) and "
           "fc_re train, classification unchanged; all: backbone and BCE head "
           "at 0.1 x --lr, fc_re at --lr, BatchNorm statistics frozen (ReCAM)")
_flag(_RECAM, "--recam_map", default="product",
      choices=("product", "mask_head", "reactivation"),
      help="recam branch weights: W2 * W1 (ReCAM's VOC maps), W1 after "
           "re-activation (its COCO maps), or W2")
_flag(_RECAM, "--recam_clamp", default="none", choices=("none", "factors", "product"),
      help="recam branch: no clamp (ReCAM), both factors clamped at zero, or the "
           "product's channel weights clamped (as the sigmoid branch's)")
_flag(_RECAM, "--head_bias", type=str2bool, nargs="?", const=True, default=True,
      help="FALSE: a bias-free head (ReCAM's 1x1 classifier)")
_flag(_RECAM, "--freeze", default="",
      help="comma-separated parameter prefixes that never train (ReCAM: conv1,bn1)")
_flag(_RECAM, "--frozen_bn", action="store_true",
      help="BatchNorm running statistics stay as loaded while training (ReCAM)")
_flag(_RECAM, "--lr_groups", default="published", choices=("published", "head"),
      help="which parameters train at lr x --lr_classifier_ratio: the published "
           "rule of the network (e.g. ResNet's layer4 and fc), or the head alone "
           "(ReCAM's 'newly added' group)")
_flag(_RECAM, "--nesterov", type=str2bool, nargs="?", const=True, default=True,
      help="Nesterov momentum (the method's recipe; ReCAM's SGD has none)")
_flag(_RECAM, "--lr_schedule", default="step", choices=("step", "poly"),
      help="step: x0.1 every --lr_decay_frequency epochs; poly: ReCAM's "
           "(1 - step / steps) ** --poly_power, per step")
_flag(_RECAM, "--poly_power", type=float, default=0.9,
      help="the poly schedule's exponent (ReCAM: 0.9)")
_flag(_RECAM, "--train_augment", default="wsol", choices=("wsol", "recam"),
      help="wsol: resize, random crop, flip; recam: long side random in "
           "--resize_long, flip, random --crop_size crop padded with zeros")
_flag(_RECAM, "--resize_long", type=int, nargs=2, default=[320, 640], metavar=("LOW", "HIGH"),
      help="--train_augment recam: the range of the random long side")
_flag(_RECAM, "--tta_scales", default="",
      help="seed maps: comma-separated scales, each with a flipped copy (ReCAM: "
           "1.0,0.5,1.5,2.0); default: the image as it is")
_flag(_RECAM, "--seed_resize", default="image", choices=SEED_RESIZES,
      help="seed maps: image resizes each scale's maps straight to the image; "
           "recam as ReCAM's code (PIL-style image rescaling, maps resized to the "
           "output-stride grid and cropped; --replay recam sets it)")
_flag(_RECAM, "--seed_threshold", type=float, default=0.21,
      help="seed mIoU: the background score (ReCAM: 0.21 VOC, 0.15 COCO); a sweep "
           "in steps of 0.01 is reported beside it")


# -- wsolevaluation's WSOL methods -----------------------------------------------------
_flag(_WSOL, "--wsol_method", default="cam", choices=WSOL_METHODS,
      help="cam: plain training; has: Hide-and-Seek; cutmix: CutMix (both train the CAM "
           "network); acol, spg, adl: their own networks on vgg16, resnet50 and inception_v3 "
           "(<architecture>_<method>) with their losses; each with or without the sigmoid "
           "branch (docs/method.md)")
_flag(_WSOL, "--has_grid_size", type=int, default=4,
      help="Hide-and-Seek: the side of a hidden cell in pixels (wsolevaluation's meaning)")
_flag(_WSOL, "--has_drop_rate", type=float, default=0.5,
      help="Hide-and-Seek: the probability that a cell is hidden")
_flag(_WSOL, "--acol_threshold", type=float, default=0.7, help="ACoL's erasing threshold")
for _spg, _default in zip(("1h", "1l", "2h", "2l", "3h", "3l"),
                          (0.7, 0.01, 0.5, 0.05, 0.7, 0.1)):
    _flag(_WSOL, f"--spg_threshold_{_spg}", type=float, default=_default,
          help=f"SPG's threshold {_spg}")
_flag(_WSOL, "--adl_drop_rate", type=float, default=0.75, help="ADL's drop rate")
_flag(_WSOL, "--adl_threshold", type=float, default=0.9, help="ADL's threshold")
_flag(_WSOL, "--cutmix_beta", type=float, default=1.0,
      help="CutMix: the mixing ratio is drawn from Beta(beta, beta); 0 turns CutMix off")
_flag(_WSOL, "--cutmix_prob", type=float, default=1.0,
      help="CutMix: the probability that a batch is mixed")

# -- compatibility -------------------------------------------------------------------
# Flags of the public config.py files that name something this toolkit does
# another way: accepted with their meaning, or refused with the fix (_public_code_flags).
_flag("compatibility", "--train_only", action="store_true",
      help="refused: it is --skip_eval here")
_flag("compatibility", "--wandb_dir", default=None,
      help="refused: set the WANDB_DIR environment variable (wandb reads it)")
_flag("compatibility", "--last_layer", default="fc", choices=("fc", "conv"),
      help="Dual-CAM's head: fc (the linear head, as here); conv is refused")
_flag("compatibility", "--init_weight", default=None,
      help="Dual-CAM's flag; no effect (it reads every value as true, and networks "
           "here are always initialised before any weights are loaded)")
_flag("compatibility", "--debug", action="store_true",
      help="log at DEBUG level (Dual-CAM's debug prints)")
_flag("compatibility", "--c1", default="cross_entropy",
      choices=("cross_entropy", "binary_cross_entropy"),
      help="Dual-CAM: the softmax head's loss; only cross_entropy is built")
_flag("compatibility", "--c2", default="binary_cross_entropy",
      choices=("cross_entropy", "binary_cross_entropy"),
      help="Dual-CAM: the sigmoid branch's loss; only binary_cross_entropy (class-balanced) "
           "is built")
_flag("compatibility", "--t1", action="store_true",
      help="refused: Dual-CAM's clamp of the softmax branch's maps (never clamped here)")
_flag("compatibility", "--t2", action="store_true",
      help="Dual-CAM's clamp of the sigmoid branch's weights: always on here "
           "(--no_clamp turns it off)")
_flag("compatibility", "--alpha", type=float, default=None,
      help="Dual-CAM's Finer-CAM alpha: the same as --cam_option finercam.alpha=VALUE")


# ---------------------------------------------------------------------------
# Parsers
# ---------------------------------------------------------------------------
def add_flags(parser: argparse.ArgumentParser, dests: Iterable[str] | None = None,
              **overrides: dict[str, Any]) -> argparse.ArgumentParser:
    """Add flags (by destination; all of them by default) to ``parser``, in
    their groups; ``overrides``: per flag, the argparse keyword arguments that
    differ for this entry point (its default, ``required``, its help)."""
    chosen = list(_FLAGS) if dests is None else list(dests)
    unknown = [d for d in chosen if d not in _FLAGS] + [d for d in overrides if d not in chosen]
    if unknown:
        raise ValueError(f"no such flag: {', '.join(unknown)}")
    order = list(GROUPS)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for dest in sorted(chosen, key=lambda d: order.index(_FLAGS[d][0])):
        group, names, kwargs = _FLAGS[dest]
        if group not in groups:
            groups[group] = parser.add_argument_group(group, GROUPS[group])
        groups[group].add_argument(*names, **{**kwargs, **overrides.get(dest, {})})
    return parser


def build_parser() -> argparse.ArgumentParser:
    """main.py's parser: every flag."""
    return add_flags(argparse.ArgumentParser(
        prog="python main.py",
        description="Dual-branch sigmoid CAM: train a vanilla model, fine-tune its sigmoid "
                    "branch, and score CAMs of both branches with the wsolevaluation protocol. "
                    "With no arguments, runs the CPU demo on the built-in SYNTH dataset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter))


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the flags of ``parser`` given on the command line."""
    parser = copy.deepcopy(parser)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    namespace, _ = parser.parse_known_args(list(argv))
    return set(vars(namespace))


def parse_main_args(argv: Sequence[str]) -> tuple[argparse.Namespace, set[str]]:
    """main.py's flags and which of them were given."""
    parser = build_parser()
    return parser.parse_args(list(argv)), given_flags(parser, argv)


def get_configs(argv: Sequence[str] | None = None) -> RunSettings:
    """The settings of a main.py command line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, given = parse_main_args(argv)
    return build_settings(args, given, argv)


# ---------------------------------------------------------------------------
# The settings, built once
# ---------------------------------------------------------------------------
# Flags a replay sets unless given explicitly, and the RunChoices field of each.
_CHOICE_FLAGS = {"sigmoid_init": "sigmoid_init", "frozen_mode": "frozen_mode",
                 "map_style": "map_style", "first_box_only": "first_box_only",
                 "threshold_list": "threshold_list", "fidelity_protocol": "fidelity",
                 "seed": "seed", "seed_resize": "seed_resize"}
# Flags that mean something only for some of a dataset's scores: one given for a
# dataset scored otherwise is refused, naming what it is scored with.
_FLAG_SCORES = {
    **dict.fromkeys(("iou_threshold_list", "loc_threshold", "multi_contour_eval",
                     "first_box_only", "box_threads"), ("boxes",)),
    **dict.fromkeys(("cam_curve_interval", "threshold_list", "map_style", "fidelity",
                     "fidelity_steps", "fidelity_road", "fidelity_protocol", "save_overlays",
                     "plots"),
                    ("boxes", "masks")),
    **dict.fromkeys(("tta_scales", "seed_threshold", "seed_resize"), ("seeds",)),
}
_SCORE_WORDS = {"boxes": "boxes", "masks": "masks (PxAP)",
                "seeds": "segmentation seeds (seed mIoU)"}
# What a checkpoint records of its model (wsol.runtime.checkpoint.MODEL_SETTINGS)
# that --eval_only takes from it: the flag (argparse destination) of each.
_RECORDED_FLAGS = {"architecture": "architecture", "num_classes": "num_classes",
                   "model_structure": "model_structure",
                   "large_feature_map": "large_feature_map", "crop_size": "crop_size",
                   "resize_size": "resize_size", "cam_layer": "cam_layer", "head": "head",
                   "replay": "replay", "recam": "recam", "head_bias": "head_bias"}


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def build_settings(args: argparse.Namespace, given: set[str] | None = None,
                   argv: Sequence[str] = ()) -> RunSettings:
    """The run's settings from main.py's parsed flags; ``given``: the flags
    given explicitly (they win over --replay and must agree with what an
    evaluated checkpoint records)."""
    given = set() if given is None else given
    values = vars(copy.copy(args))
    notes: list[str] = []
    dataset = DATASETS[args.dataset_name]
    try:
        methods = tuple(parse_methods(args.method))
    except ValueError as error:
        raise ConfigError(f"--method: {error}") from None
    network_type = args.network_type
    if network_type == "auto":
        network_type = "cam" if "cam" in methods else "gradcam"
    try:
        values["network"] = wsol_network(network_for(args.architecture, network_type),
                                          args.wsol_method)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    values["num_classes"] = args.num_classes or dataset.num_classes
    values["model_structure"] = args.model_structure or ("b2" if args.ft_ckpt else "vanilla")
    log_folder = os.path.join(args.root, args.experiment_name)
    if args.eval_only:
        _adopt_recorded_settings(values, given, log_folder, notes)
    elif args.ft_ckpt and "network_type" not in given:
        _recognise_start_checkpoint(values, notes)
    try:
        choices = resolve_choices(values["replay"], **{
            field: values[dest] for dest, field in _CHOICE_FLAGS.items() if dest in given})
    except ValueError as error:
        raise ConfigError(str(error)) from None
    try:
        spec = get_spec(values["network"], values["crop_size"])
        if spec.needs_timm:
            import_timm(spec.name)
    except ValueError as error:
        name, message = values["architecture"], str(error)
        raise ConfigError(f"--architecture {message}" if message.startswith(name)
                          else f"--architecture {name}: {message}") from None
    if spec.wsol_method != "cam" and values["wsol_method"] != spec.wsol_method:
        # A checkpoint recognised by its keys as a WSOL method's network.
        if "wsol_method" in given:
            raise ConfigError(f"--wsol_method {values['wsol_method']}: the checkpoint is a "
                              f"{spec.description} network; drop the flag or use "
                              f"--wsol_method {spec.wsol_method}")
        values["wsol_method"] = spec.wsol_method
    _check_flags_apply(dataset, given, values, notes)
    _public_code_flags(values, given, notes)
    settings = RunSettings(
        data=_data(values, dataset), model=_model(values), optim=_optim(values, given),
        wsol=_wsol(values),
        cams=_cams(values, methods, given), evaluation=_evaluation(values, dataset),
        runtime=_runtime(values), choices=choices, replay=values["replay"],
        argv=("main.py", *argv), notes=tuple(notes))
    if settings.runtime.resume and not settings.runtime.eval_only:
        settings = _resume_as_recorded(settings, given)
    _check(settings)
    return settings


# On --resume the sections that define the training continue as config.json
# records them, but for these fields of theirs (how the data is loaded).
_RESUMED = {"model": (), "optim": (), "wsol": (), "choices": (),
            "data": ("workers", "prefetch_factor", "decode_on_device")}
# Fields a --resume may change explicitly: more epochs continue the same schedule.
_MAY_CHANGE = {("optim", "epochs")}
# Settings fields whose flags have other names (or are several flags).
_FIELD_FLAGS = {("model", "network"): ("architecture", "network_type", "method"),
                ("wsol", "method"): ("wsol_method",),
                ("model", "unfreeze"): ("unfreeze_layer",),
                ("model", "pretrained"): ("pretrained", "pretrained_path"),
                ("optim", "batch_size"): ("batch_size", "global_batch_size"),
                ("choices", "fidelity"): ("fidelity_protocol",),
                ("data", "mask_root"): ("mask_root", "data_root")}


def _resume_as_recorded(settings: RunSettings, given: set[str]) -> RunSettings:
    """--resume continues the run as it was trained: the model, optimisation,
    data and protocol settings its config.json records take the place of
    defaults; a flag given explicitly that contradicts them is an error."""
    recorded = read_run_settings(settings.log_folder)
    if recorded is None:
        return settings  # nothing to resume from: reported when the folder is opened
    folder = os.path.join(settings.log_folder, "config.json")
    changes: dict[str, dict] = {}
    adopted = []
    for section, own in _RESUMED.items():
        ours, theirs = getattr(settings, section), getattr(recorded, section)
        changes[section] = {}
        for field in dataclasses.fields(ours):
            mine, old = getattr(ours, field.name), getattr(theirs, field.name)
            if field.name in own or mine == old:
                continue
            flags = _FIELD_FLAGS.get((section, field.name), (field.name,))
            if set(flags) & given and (section, field.name) in _MAY_CHANGE:
                continue
            if set(flags) & given:
                raise ConfigError(
                    f"--resume continues the run {folder} records, trained with "
                    f"{section}.{field.name} {old!r}, not {mine!r} (--{flags[0]}): drop the "
                    f"flag, or train a new experiment")
            changes[section][field.name] = old
            adopted.append(f"{section}.{field.name}")
    if recorded.replay != settings.replay:
        if "replay" in given:
            raise ConfigError(f"--resume continues the run {folder} records, trained with "
                              f"--replay {recorded.replay}, not {settings.replay}: drop the "
                              f"flag, or train a new experiment")
        adopted.append("replay")
    notes = settings.notes + ((f"--resume: {', '.join(adopted)} as {folder} records",)
                              if adopted else ())
    return dataclasses.replace(settings.replace(**changes), replay=recorded.replay, notes=notes)


def _data(v: dict, dataset) -> DataSettings:
    return DataSettings(
        dataset_name=v["dataset_name"], data_root=v["data_root"],
        metadata_root=v["metadata_root"], mask_root=v["mask_root"] or v["data_root"],
        train_split=v["train_split"] or dataset.train_split,
        proxy_training_set=v["proxy_training_set"],
        num_val_sample_per_class=v["num_val_sample_per_class"],
        skip_bad_images=v["skip_bad_images"], resize_size=v["resize_size"],
        crop_size=v["crop_size"], train_augment=v["train_augment"],
        resize_long=tuple(v["resize_long"]), workers=v["workers"],
        prefetch_factor=v["prefetch_factor"], decode_on_device=v["decode_on_device"])


def _model(v: dict) -> ModelSettings:
    return ModelSettings(
        network=v["network"], num_classes=v["num_classes"],
        model_structure=v["model_structure"], large_feature_map=v["large_feature_map"],
        cam_layer=v["cam_layer"], head=v["head"], head_bias=v["head_bias"],
        ft_ckpt=v["ft_ckpt"], pretrained=v["pretrained"] or bool(v["pretrained_path"]),
        pretrained_path=v["pretrained_path"], unfreeze=_names(v["unfreeze_layer"]),
        freeze=_names(v["freeze"]), frozen_bn=v["frozen_bn"], recam=v["recam"],
        recam_map=v["recam_map"], recam_clamp=v["recam_clamp"],
        recam_trains=v["recam_trains"])


def _optim(v: dict, given: set[str]) -> OptimSettings:
    batch_size = v["batch_size"]
    if v["global_batch_size"] is not None:
        world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun sets it before we start
        if "batch_size" in given:
            raise ConfigError("pass either --batch_size (per process) or --global_batch_size "
                              "(over all processes), not both")
        if v["global_batch_size"] < world or v["global_batch_size"] % world:
            raise ConfigError(f"--global_batch_size {v['global_batch_size']} must be a "
                              f"multiple of the number of processes ({world})")
        batch_size = v["global_batch_size"] // world
    if v["recam_weight"] < 0:
        raise ConfigError(f"--recam_weight must be >= 0, got {v['recam_weight']}")
    return OptimSettings(
        epochs=v["epochs"], batch_size=batch_size, lr=v["lr"],
        lr_decay_frequency=v["lr_decay_frequency"],
        lr_classifier_ratio=v["lr_classifier_ratio"], lr_groups=v["lr_groups"],
        momentum=v["momentum"], nesterov=v["nesterov"], weight_decay=v["weight_decay"],
        lr_schedule=v["lr_schedule"], poly_power=v["poly_power"],
        recam_weight=v["recam_weight"])


# Flags of the public code refused here, with what to use instead.
_REFUSED = {"train_only": "--train_only is --skip_eval here (train now, score later with "
                          "--eval_only)",
            "wandb_dir": "--wandb_dir: set the WANDB_DIR environment variable instead "
                         "(wandb reads it)",
            "t1": "--t1 clamps the softmax branch's maps; they are never clamped here (the "
                  "method, docs/method.md): drop the flag"}
# A WSOL method's own flags.
_WSOL_FLAGS = {"has": ("has_grid_size", "has_drop_rate"), "acol": ("acol_threshold",),
               "spg": tuple(f"spg_threshold_{k}" for k in ("1h", "1l", "2h", "2l", "3h", "3l")),
               "adl": ("adl_drop_rate", "adl_threshold"),
               "cutmix": ("cutmix_beta", "cutmix_prob")}


def _public_code_flags(v: dict, given: set[str], notes: list[str]) -> None:
    """The flags of wsolevaluation's, beyond-softmax's and Dual-CAM's config.py
    that mean something else here: their meaning, a refusal naming what to
    use, or a note (docs/reproducing.md)."""
    for dest, message in _REFUSED.items():
        if dest in given:
            raise ConfigError(message)
    if v["last_layer"] != "fc":
        raise ConfigError("--last_layer conv: Dual-CAM's convolutional head is not built "
                          "here; the linear head (--last_layer fc) is")
    if v["c1"] != "cross_entropy" or v["c2"] != "binary_cross_entropy":
        raise ConfigError(f"--c1 {v['c1']} --c2 {v['c2']}: the softmax head trains with "
                          f"cross_entropy and the sigmoid branch with (class-balanced) "
                          f"binary_cross_entropy here; other pairs are not built")
    if "init_weight" in given:
        notes.append("--init_weight has no effect: Dual-CAM reads every value of it as true, "
                     "and networks here are always initialised before weights are loaded")
    if v["alpha"] is not None:
        option = f"finercam.alpha={v['alpha']}"
        if not any(o.replace(" ", "").startswith("finercam.alpha=") for o in v["cam_option"]):
            v["cam_option"] = [*v["cam_option"], option]
        if "finercam" not in _names(v["method"]) and "all" not in _names(v["method"]):
            notes.append(f"--alpha is Finer-CAM's ({option}); finercam is not among "
                         f"--method {v['method']}")
    method = v["wsol_method"]
    if method in ("acol", "spg") and DATASETS[v["dataset_name"]].multi_label:
        raise ConfigError(f"--wsol_method {method} trains on one class per image (its "
                          f"erasing and masks follow that class); {v['dataset_name']} is "
                          f"multi-label: use cam, has or adl")
    if method == "cutmix" and v["recam"]:
        raise ConfigError("--wsol_method cutmix with --recam: ReCAM's loss takes one label "
                          "set per image; use --wsol_method cam or has")
    for other, flags in _WSOL_FLAGS.items():
        stray = [f"--{f}" for f in flags if f in given]
        if stray and other != method:
            notes.append(f"{', '.join(stray)} applies to --wsol_method {other}; this run "
                         f"trains with --wsol_method {method}")
    if not 0 <= v["has_drop_rate"] <= 1 or v["has_grid_size"] < 0:
        raise ConfigError(f"--has_drop_rate is a probability in [0, 1] and --has_grid_size a "
                          f"side in pixels >= 0, got {v['has_drop_rate']} and "
                          f"{v['has_grid_size']}")
    if not 0 <= v["cutmix_prob"] <= 1 or v["cutmix_beta"] < 0:
        raise ConfigError(f"--cutmix_prob is a probability in [0, 1] and --cutmix_beta >= 0, "
                          f"got {v['cutmix_prob']} and {v['cutmix_beta']}")
    # wsolevaluation: --box_v2_metric FALSE scores MaxBoxAcc (V1), which turns off
    # both multi-contour boxes and the IoU average.
    if not v["box_v2_metric"]:
        if "multi_contour_eval" in given and v["multi_contour_eval"]:
            raise ConfigError("--box_v2_metric FALSE scores MaxBoxAcc (the largest contour); "
                              "it contradicts --multi_contour_eval TRUE: drop one of them")
        v["multi_contour_eval"], v["multi_iou_eval"] = False, False
    if not v["multi_iou_eval"]:
        if "iou_threshold_list" in given and list(v["iou_threshold_list"]) != [50]:
            raise ConfigError(f"--multi_iou_eval FALSE scores IoU 50 only; it contradicts "
                              f"--iou_threshold_list {' '.join(map(str, v['iou_threshold_list']))}"
                              f": drop one of them")
        v["iou_threshold_list"] = [50]


def _wsol(v: dict) -> WSOLSettings:
    return WSOLSettings(method=v["wsol_method"], **{
        f.name: v[f.name] for f in dataclasses.fields(WSOLSettings) if f.name != "method"})


def _cams(v: dict, methods: tuple[str, ...], given: set[str]) -> CAMSettings:
    if v["cam_branch"] is None:
        branches = ("sigmoid",) if v["model_structure"] == "b2" else ("softmax",)
    else:
        branches = _names(v["cam_branch"])
        for branch in branches:
            if branch not in ("softmax", "sigmoid", "recam"):
                raise ConfigError(f"--cam_branch {branch!r}: use softmax, sigmoid or recam, or "
                                  f"several comma-separated (softmax,sigmoid,recam)")
    # Left at the default or 'all': the methods the model cannot give are dropped, with a note.
    cams = CAMSettings(methods=methods,
                       defaulted="method" not in given or "all" in _names(v["method"]),
                       branches=tuple(dict.fromkeys(branches)),
                       clamp=not v["no_clamp"], smooth_samples=v["smooth_samples"],
                       smooth_sigma=v["smooth_sigma"],
                       scorecam_batch_size=v["scorecam_batch_size"],
                       scorecam_topk=v["scorecam_topk"],
                       method_options=tuple(v["cam_option"]))
    try:
        cams.instances()  # their settings' checks, before any work
    except ValueError as error:
        raise ConfigError(f"--cam_option / --smooth_samples / --scorecam_*: {error}") from None
    return cams


def _evaluation(v: dict, dataset) -> EvalSettings:
    try:
        tta = tuple(float(s) for s in v["tta_scales"].split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--tta_scales {v['tta_scales']!r}: comma-separated numbers, "
                          f"e.g. 1.0,0.5,1.5,2.0") from None
    if any(s <= 0 for s in tta):
        raise ConfigError(f"--tta_scales {v['tta_scales']!r}: scales must be > 0")
    if v["split"] == "train" and not dataset.multi_label:
        raise ConfigError("--split train is for the seed evaluation of VOC2012 / SYNTH_ML; "
                          "WSOL datasets are scored on val or test")
    return EvalSettings(
        split=v["split"], checkpoint=v["eval_checkpoint_type"],
        cam_curve_interval=v["cam_curve_interval"],
        iou_threshold_list=tuple(v["iou_threshold_list"]),
        multi_contour_eval=v["multi_contour_eval"], loc_threshold=v["loc_threshold"],
        box_threads=v["box_threads"], fidelity=v["fidelity"],
        fidelity_steps=v["fidelity_steps"], fidelity_road=v["fidelity_road"], tta_scales=tta,
        seed_threshold=v["seed_threshold"], bootstrap=v["bootstrap"],
        save_scoremaps=v["save_scoremaps"],
        save_overlays=v["save_overlays"], plots=v["plots"])


def _runtime(v: dict) -> RuntimeSettings:
    if v["dist_timeout"] <= 0:
        raise ConfigError(f"--dist_timeout must be > 0 seconds, got {v['dist_timeout']}")
    return RuntimeSettings(
        experiment_name=v["experiment_name"], root=v["root"], eval_only=v["eval_only"],
        skip_eval=v["skip_eval"], resume=v["resume"], override_cache=v["override_cache"],
        gpus=v["gpus"], dist_timeout=v["dist_timeout"], amp=v["amp"],
        channels_last=v["channels_last"], compile=v["compile"],
        wandb="online" if v["wandb"] == "on" else v["wandb"], wandb_name=v["wandb_name"],
        project=v["project"], debug=v["debug"])


def _check(s: RunSettings) -> None:
    """Checks that need several sections at once, and the flags' ranges."""
    branches = s.cams.branches
    if "sigmoid" in branches and not s.model.dual:
        raise ConfigError("--cam_branch sigmoid needs a dual-branch model: "
                          "add --model_structure b2")
    if "recam" in branches and not s.model.recam:
        raise ConfigError("--cam_branch recam needs the re-activation head: add --recam "
                          "(training) or evaluate a checkpoint trained with it")
    for name, value, low in (("--epochs", s.optim.epochs, 0),
                             ("--batch_size", s.optim.batch_size, 1),
                             ("--lr_decay_frequency", s.optim.lr_decay_frequency, 1),
                             ("--workers", s.data.workers, 0),
                             ("--prefetch_factor", s.data.prefetch_factor, 1),
                             ("--save_overlays", s.evaluation.save_overlays, 0),
                             ("--fidelity_steps", s.evaluation.fidelity_steps, 0),
                             ("--box_threads", s.evaluation.box_threads, 0),
                             ("--bootstrap", s.evaluation.bootstrap, 0)):
        if value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}")
    check_scoring(dataclasses.asdict(s.evaluation))
    if s.evaluation.fidelity_steps and not s.evaluation.fidelity:
        raise ConfigError("--fidelity_steps N goes with --fidelity")
    if s.evaluation.fidelity_road and not s.evaluation.fidelity:
        raise ConfigError("--fidelity_road goes with --fidelity: add --fidelity")


def check_scoring(values: dict[str, Any]) -> None:
    """The ranges of the scoring flags (main.py's and evaluation.py's): IoU
    thresholds in (0, 100], CAM and seed thresholds in [0, 1], the threshold
    step in (0, 1)."""
    if "cam_curve_interval" in values and not 0 < values["cam_curve_interval"] < 1:
        raise ConfigError(f"--cam_curve_interval must be in (0, 1), got "
                          f"{values['cam_curve_interval']}")
    bad = [t for t in values.get("iou_threshold_list", ()) if not 0 < t <= 100]
    if bad:
        raise ConfigError(f"--iou_threshold_list: IoU thresholds are percentages in (0, 100], "
                          f"got {' '.join(map(str, bad))}")
    for name in ("loc_threshold", "seed_threshold"):
        if name in values and not 0 <= values[name] <= 1:
            raise ConfigError(f"--{name} must be in [0, 1] (a fraction of the map's "
                              f"maximum), got {values[name]}")


def _check_flags_apply(dataset, given: set[str], values: dict | None = None,
                       notes: list[str] | None = None) -> None:
    """A flag given for a dataset whose maps it does not score is an error
    (it would be silently ignored) -- or, given at its default value (as
    wsolevaluation's published OpenImages command gives --iou_threshold_list
    30 50 70), a note: the command means what it meant there."""
    for dest in sorted(given & set(_FLAG_SCORES)):
        if not set(_FLAG_SCORES[dest]) & set(dataset.scores):
            scored = " and ".join(_SCORE_WORDS[s] for s in dataset.scores)
            if values is not None and notes is not None and \
                    values.get(dest) == _FLAGS[dest][2].get("default"):
                notes.append(f"--{dest} does not apply to {dataset.name}, whose maps are "
                             f"scored as {scored}; given at its default, it changes nothing")
                continue
            raise ConfigError(f"--{dest} does not apply to {dataset.name}, whose maps are "
                              f"scored as {scored}: drop it")


def _adopt_recorded_settings(values: dict, given: set[str], log_folder: str,
                             notes: list[str]) -> None:
    """--eval_only: the model is rebuilt as the checkpoint (and its experiment's
    config.json) record it; an explicit flag that contradicts them is an error
    naming both, a default is replaced silently (it was never the user's)."""
    _adopt_recorded_wsol_method(values, given, log_folder)
    path = checkpoint_path(log_folder, values["eval_checkpoint_type"])
    if not os.path.isfile(path):
        return  # reported when the checkpoint is loaded
    try:
        recorded = recorded_settings(path)
    except CheckpointError:
        return  # an unreadable checkpoint is reported when it is loaded
    try:
        explicit = {key: values[dest] for key, dest in _RECORDED_FLAGS.items() if dest in given}
        if "architecture" in explicit:
            explicit["architecture"] = values["network"]
        # --architecture vgg16 names VGG16 whichever of its networks was trained,
        # unless --network_type says which.
        same_backbone = (lambda a, b: a == b) if "network_type" in given else (
            lambda a, b: network_for(a, "cam") == network_for(b, "cam"))
        check_settings(path, recorded, explicit, {"architecture": same_backbone})
    except CheckpointError as error:
        raise ConfigError(str(error)) from None
    for key, dest in _RECORDED_FLAGS.items():
        if key in recorded and recorded[key] is not None:
            values[dest] = recorded[key]
    if "architecture" in recorded:
        values["network"] = recorded["architecture"]
        values["architecture"] = network_for(values["network"], "cam")
    if RECOGNISED in recorded:
        notes.append(recorded[RECOGNISED])


def _adopt_recorded_wsol_method(values: dict, given: set[str], log_folder: str) -> None:
    """--eval_only: the results name the WSOL method the experiment was trained
    with (its config.json), not the flag's default."""
    recorded = read_run_settings(log_folder)
    if recorded is None:
        return
    method = recorded.wsol.method
    if "wsol_method" in given and values["wsol_method"] != method:
        raise ConfigError(f"--wsol_method {values['wsol_method']}: "
                          f"{os.path.join(log_folder, 'config.json')} records that the "
                          f"experiment was trained with --wsol_method {method}; drop the flag")
    values["wsol_method"] = method


def _recognise_start_checkpoint(values: dict, notes: list[str]) -> None:
    """--ft_ckpt of the other network of the backbone that --network_type auto
    picked from --method (the public code's checkpoints name only the
    backbone): the network the checkpoint's weights belong to, with a note."""
    try:
        state = peek_checkpoint(values["ft_ckpt"])["state_dict"]
    except CheckpointError:
        return  # reported when the checkpoint is loaded
    found, reason = recognise_network(values["network"], state)
    if reason:
        notes.append(f"--ft_ckpt {values['ft_ckpt']}: {reason}; training {found}, not the "
                     f"{values['network']} that --method {values['method']} picks "
                     f"(--network_type chooses explicitly)")
        values["network"] = found

#!/usr/bin/env python
"""Run the paper's experiments: one dataset, its backbones and CAM methods.

Methods come in two families (docs/reproducing.md): ``cam`` is scored on the
CAM networks (VGG16-CAM, ResNet50-CAM, InceptionV3-CAM), every gradient
method on the networks the method's public code trains for its Grad-CAM rows
(``vgg16_gradcam``, ``inception_v3_gradcam``, ResNet50 without the large
feature map).  For every (backbone, family) of a dataset the plan is:

1. the vanilla model: a released checkpoint (``--vanilla NETWORK=PATH``, or
   ``--vanilla_dir`` with ``--vanilla_pattern``; ILSVRC's Grad-CAM VGG16 is
   torchvision's ImageNet VGG16 itself), or, where none is released (Stanford
   Cars; SYNTH; any dataset with ``--train_vanilla``), ``main.py
   --model_structure vanilla`` from torchvision's ImageNet weights (SYNTH,
   which has none: its ResNet18 from scratch; its ResNet50 from a plain
   ResNet50 trained on SYNTH first, ``SYNTH_resnet50_pretrain``);
2. fine-tuning of the sigmoid branch with the published recipe of the
   dataset, backbone and family (docs/reproducing.md, "Recipes");
3. one evaluation of both branches with every method of the family
   (``--cam_branch softmax,sigmoid``; with ``--fidelity`` on the fine-grained
   datasets, Table 1), writing ``<root>/<experiment>/results_<split>.json``
   (``scripts/make_tables.py`` turns a set of them into the paper's tables).

``--dry_run`` runs nothing: it prints every command with the learning rate
each parameter group gets at every epoch, and checks that each parses with
``config.get_configs``, that the image and metadata folders and files exist,
and that every checkpoint exists or is made by an earlier step; a problem
exits 1 naming the path.  Without it, steps whose output exists are skipped
(an interrupted training run resumes), so the script can be re-run after a
failure.  Flags after ``--`` go to every ``main.py`` command (e.g. ``--
--wandb online``); they come last, so they override the recipe.

    python -m scripts.run_experiments --dataset ILSVRC --vanilla_dir ckpt --dry_run
    python -m scripts.run_experiments --dataset CARS --architectures resnet50 \\
        --pretrained resnet50=~/.cache/torch/hub/checkpoints/resnet50-0676ba61.pth

The shell scripts ``scripts/run_<dataset>.sh`` call this with the paper's
backbones and methods.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

try:
    import config  # the command line's flags, at the top level
except ImportError:
    sys.exit("run it from the repository root: python -m scripts.run_experiments")
from wsol.architectures import ARCHITECTURES, network_for, wsol_network
from wsol.wsol_methods import WSOL_METHODS
from wsol.errors import UserError
from wsol.runtime.experiment import checkpoint_path

MAIN_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "main.py")
DATASETS = tuple(config.DATASET_NUM_CLASSES)
PAPER_BACKBONES = ("vgg16", "resnet50", "inception_v3")
FAMILIES = ("cam", "gradcam")


@dataclass(frozen=True)
class Recipe:
    """One fine-tuning (or vanilla) run; ``note`` says where it is not published."""
    lr: float
    large_feature_map: bool = False
    weight_decay: float | None = None  # None: the backbone's (5e-4 VGG16/InceptionV3, 1e-4)
    note: str = ""
    epochs: int | None = None  # None: the plan's (vanilla_epochs for a vanilla run)


@dataclass(frozen=True)
class DatasetPlan:
    epochs: int
    lr_decay_frequency: int
    finetune: dict            # (backbone, family) -> Recipe
    methods: dict             # family -> methods scored by default
    fidelity: bool = False    # Table 1's fine-grained datasets
    vanilla: dict | None = None  # (backbone, family) -> Recipe when the vanilla model is trained
    vanilla_epochs: int = 0
    vanilla_decay: int = 1
    backbones: tuple = PAPER_BACKBONES
    extra: tuple = ()         # further main.py flags of every step
    # backbone -> Recipe of the plain classifier trained on the dataset itself, which the
    # vanilla networks start from where no ImageNet weights exist (SYNTH: its stand-in).
    pretrain: dict | None = None


WEIGHT_DECAY = {"vgg16": 5e-4, "inception_v3": 5e-4, "resnet50": 1e-4, "resnet18": 1e-4}
TABLE2_METHODS = {"cam": ("cam",), "gradcam": ("gradcam",)}
TABLE1_METHODS = {"cam": ("cam",), "gradcam": ("gradcam", "gradcam++", "xgradcam", "layercam")}
UNPUBLISHED = "not published: "

# The published recipes (docs/reproducing.md; SGD Nesterov, momentum 0.9, batch 32).
PLANS = {
    "ILSVRC": DatasetPlan(10, 3, {
        ("vgg16", "cam"): Recipe(3e-3), ("vgg16", "gradcam"): Recipe(1e-4),
        ("resnet50", "cam"): Recipe(1e-4, large_feature_map=True),
        ("resnet50", "gradcam"): Recipe(5e-3),
        ("inception_v3", "cam"): Recipe(5e-4), ("inception_v3", "gradcam"): Recipe(5e-4)},
        TABLE2_METHODS),
    "CUB": DatasetPlan(50, 15, {
        ("vgg16", "cam"): Recipe(5e-5),
        ("vgg16", "gradcam"): Recipe(5e-5, note=UNPUBLISHED + "VGG16 CAM's lr"),
        ("resnet50", "cam"): Recipe(1e-4), ("resnet50", "gradcam"): Recipe(1e-4),
        ("inception_v3", "cam"): Recipe(1e-4), ("inception_v3", "gradcam"): Recipe(1e-4)},
        TABLE1_METHODS, fidelity=True),
    "CARS": DatasetPlan(10, 15, {
        ("vgg16", "cam"): Recipe(3e-3), ("vgg16", "gradcam"): Recipe(1e-4),
        ("resnet50", "cam"): Recipe(1e-4), ("resnet50", "gradcam"): Recipe(1e-4),
        ("inception_v3", "cam"): Recipe(1e-4), ("inception_v3", "gradcam"): Recipe(5e-3)},
        TABLE1_METHODS, fidelity=True,
        vanilla={("vgg16", "cam"): Recipe(1e-3), ("vgg16", "gradcam"): Recipe(1e-3),
                 ("resnet50", "cam"): Recipe(1e-3), ("resnet50", "gradcam"): Recipe(1e-3),
                 ("inception_v3", "cam"): Recipe(5.678e-3),
                 ("inception_v3", "gradcam"): Recipe(5e-4)},
        vanilla_epochs=10, vanilla_decay=15),
    "OpenImages": DatasetPlan(10, 3, {
        ("vgg16", "cam"): Recipe(5e-4), ("vgg16", "gradcam"): Recipe(5e-4),
        ("resnet50", "cam"): Recipe(5e-4, weight_decay=5e-4,
                                    note=UNPUBLISHED + "ResNet50 Grad-CAM's recipe"),
        ("resnet50", "gradcam"): Recipe(5e-4, weight_decay=5e-4),
        ("inception_v3", "cam"): Recipe(3e-4), ("inception_v3", "gradcam"): Recipe(3e-4)},
        TABLE2_METHODS),
    # The CPU demo of main.py (python main.py): one ResNet18 serves both families.
    # ResNet50 (--architectures resnet50: the WSOL methods' backbone) runs at stride 16 (ACoL's
    # and SPG's 1024-channel heads on 8x8 maps would cost ten times the backbone on the CPU) and,
    # as in wsolevaluation, every method's network starts from a pretrained backbone (its
    # ILSVRC rule: the class head is kept where it fits, ACoL's and SPG's are new): SYNTH has no
    # ImageNet weights, so a plain ResNet50 trained on SYNTH stands in (ACoL's He-initialised
    # heads diverge from scratch at any lr that learns in a few epochs; docs/reproducing.md).
    "SYNTH": DatasetPlan(1, 4, {("resnet18", "cam"): Recipe(0.02, large_feature_map=True),
                                ("resnet50", "cam"): Recipe(0.02)},
                         {"cam": ("cam", "gradcam")},
                         vanilla={("resnet18", "cam"): Recipe(0.05, large_feature_map=True),
                                  ("resnet50", "cam"): Recipe(
                                      0.002, epochs=2, note="from SYNTH_resnet50_pretrain")},
                         vanilla_epochs=3, vanilla_decay=3, backbones=("resnet18",),
                         extra=("--resize_size", "72", "--crop_size", "64"),
                         pretrain={"resnet50": Recipe(0.05, note="the ImageNet stand-in")})}
# The demo trains its vanilla model with every layer at --lr, at batch 16.
VANILLA_EXTRA = {"SYNTH": ("--lr_classifier_ratio", "1", "--batch_size", "16")}
# Datasets without released vanilla checkpoints: the vanilla model is trained.
TRAIN_VANILLA = ("CARS", "SYNTH")


@dataclass
class Step:
    kind: str                 # "pretrain", "vanilla", "finetune" or "evaluate"
    experiment: str
    argv: list[str]
    note: str = ""
    inputs: list[str] = field(default_factory=list)  # checkpoints it reads

    @property
    def title(self) -> str:
        return f"{self.experiment}: {self.kind}"

    def command(self, python: str = "python") -> str:
        return shlex.join([python, os.path.relpath(MAIN_PY), *self.argv])


class PlanError(ValueError):
    """The plan cannot be built (unknown backbone, bad --vanilla entry...)."""


def method_family(method: str) -> str:
    return "cam" if method == "cam" else "gradcam"


def experiment_name(dataset: str, backbone: str, family: str | None = None,
                    network: str | None = None, wsol_method: str = "cam") -> str:
    """``<dataset>_<backbone>_<family>_b2`` (``<dataset>_<backbone>_b2`` when one
    fine-tuning serves both families); ``<dataset>_<network>_vanilla``; a WSOL
    method other than CAM before the last part (``CUB_resnet50_has_vanilla``)."""
    method = "" if wsol_method == "cam" else f"_{wsol_method}"
    if network is not None and network.endswith(method):  # vgg16_acol: named already
        method = ""
    if network is not None:
        return f"{dataset}_{network}{method}_vanilla"
    return (f"{dataset}_{backbone}_{family}{method}_b2" if family
            else f"{dataset}_{backbone}{method}_b2")


def _pairs(entries: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for entry in entries or ():
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise PlanError(f"{flag} {entry!r}: expected NETWORK=PATH")
        out[name.strip()] = os.path.expanduser(path.strip())
    return out


def _default_pretrained_dir() -> str:
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    return os.path.join(torch_home, "hub", "checkpoints")


def torchvision_file(network: str) -> str | None:
    """torchvision's file name of a network's ImageNet weights."""
    from wsol.architectures import get_spec
    from wsol.runtime.checkpoint import _torchvision_file
    spec = get_spec(network)
    return _torchvision_file(spec)[0] if spec.torchvision_weights else None


def _common(args, dataset: str, backbone: str, recipe: Recipe,
            wsol_method: str | None = None) -> list[str]:
    wsol_method = wsol_method or args.wsol_method
    argv = ["--dataset_name", dataset, "--architecture", backbone,
            "--large_feature_map", str(recipe.large_feature_map).upper(),
            *(["--wsol_method", wsol_method] if wsol_method != "cam" else []),
            "--data_root", args.data_root, "--metadata_root", args.metadata_root,
            "--root", args.root, "--batch_size", str(args.batch_size),
            "--workers", str(args.workers), "--seed", str(args.seed)]
    if args.mask_root:
        argv += ["--mask_root", args.mask_root]
    if args.gpus is not None:
        argv += ["--gpus", str(args.gpus)]
    return argv


def _groups(plan: DatasetPlan, backbones: Sequence[str], methods: Sequence[str],
            wsol_method: str = "cam") -> list:
    """(backbone, family, network, recipe, methods) of every fine-tuning, one
    per family, or one for both when they are the same network and recipe."""
    runs = []
    for backbone in backbones:
        by_family: dict[str, list[str]] = {}
        for method in methods:
            by_family.setdefault(method_family(method), []).append(method)
        merged: dict[tuple, list] = {}
        for family, family_methods in by_family.items():
            recipe = plan.finetune.get((backbone, family)) or plan.finetune.get(
                (backbone, "cam" if family == "gradcam" else "gradcam"))
            if recipe is None:
                known = sorted({b for b, _ in plan.finetune})
                raise PlanError(f"no recipe for {backbone} (recipes exist for "
                                f"{', '.join(known)}): pass --lr")
            try:  # ACoL, SPG, ADL: their own network, whatever the family
                network = wsol_network(network_for(backbone, family), wsol_method)
            except ValueError as error:
                raise PlanError(str(error)) from None
            key = (network, recipe.lr, recipe.large_feature_map, recipe.weight_decay)
            if key in merged:
                merged[key][1] = None  # one run serves both families
                merged[key][4] += family_methods
            else:
                merged[key] = [backbone, family, network, recipe, list(family_methods)]
        runs += [tuple(v) for v in merged.values()]
    return runs


def build_plan(args, extra: Sequence[str] = ()) -> list[Step]:
    """Every main.py command of the experiments, in order."""
    dataset = args.dataset
    plan = PLANS[dataset]
    backbones = _split(args.architectures) or list(plan.backbones)
    methods = _split(args.methods) or [m for ms in plan.methods.values() for m in ms]
    from wsol.cams import CAM_METHODS
    unknown = [m for m in methods if m not in CAM_METHODS]
    if unknown:
        raise PlanError(f"unknown CAM method(s) {', '.join(unknown)}; known: "
                        f"{', '.join(CAM_METHODS)}")
    vanilla_paths = _pairs(args.vanilla, "--vanilla")
    pretrained_paths = _pairs(args.pretrained, "--pretrained")
    for backbone in backbones:
        if backbone not in ARCHITECTURES and not backbone.startswith("timm:"):
            raise PlanError(f"unknown architecture {backbone!r}; choose from "
                            f"{', '.join(ARCHITECTURES)}")
    steps: list[Step] = []
    trained_vanilla: dict[str, str] = {}
    # family None: one fine-tuning serves both families (the same network and recipe).
    for backbone, family, network, recipe, run_methods in _groups(plan, backbones, methods,
                                                                  args.wsol_method):
        vanilla, vanilla_steps = _vanilla(args, plan, backbone, family or "cam", network,
                                          vanilla_paths, pretrained_paths, trained_vanilla,
                                          extra)
        steps += vanilla_steps
        name = experiment_name(dataset, backbone, family, wsol_method=args.wsol_method)
        common = _common(args, dataset, backbone, recipe)
        lr = args.lr if args.lr is not None else recipe.lr
        note = "lr from --lr" if args.lr is not None else (recipe.note or "published recipe")
        wd = recipe.weight_decay or WEIGHT_DECAY.get(backbone, 1e-4)
        family_flags = ["--network_type", family or "cam"]
        init = ["--sigmoid_init", args.sigmoid_init] if args.sigmoid_init else []
        argv = [*common, "--experiment_name", name, "--model_structure", "b2",
                *family_flags, "--ft_ckpt", vanilla, "--unfreeze_layer", "fc2",
                *init, "--epochs", str(plan.epochs),
                "--lr", str(lr), "--lr_decay_frequency", str(plan.lr_decay_frequency),
                "--weight_decay", str(wd), "--skip_eval", *plan.extra]
        steps.append(Step("finetune", name, [*argv, *extra], note, [vanilla]))
        argv = [*common, "--experiment_name", name, "--model_structure", "b2",
                *family_flags, "--eval_only", "--eval_checkpoint_type", "last",
                "--method", ",".join(run_methods), "--cam_branch", "softmax,sigmoid",
                "--split", args.split, *plan.extra]
        if plan.fidelity:
            argv += ["--fidelity"]
        if args.save_overlays:
            argv += ["--save_overlays", str(args.save_overlays)]
        if args.plots:
            argv += ["--plots"]
        checkpoint = os.path.join(args.root, name, "last_checkpoint.pth.tar")
        steps.append(Step("evaluate", name, [*argv, *extra], "", [checkpoint]))
    return steps


def _vanilla(args, plan: DatasetPlan, backbone: str, family: str, network: str,
             vanilla_paths: dict, pretrained_paths: dict, trained: dict,
             extra: Sequence[str]) -> tuple[str, list[Step]]:
    """The vanilla checkpoint of a network, and the step that trains it if needed."""
    dataset = args.dataset
    given = vanilla_paths.get(network) or (vanilla_paths.get(backbone)
                                            if network == backbone else None)
    if given:
        return given, []
    if network in trained:
        return trained[network], []
    # A WSOL method other than CAM trains its own vanilla model (none is released here).
    if not (dataset in TRAIN_VANILLA or args.train_vanilla or args.wsol_method != "cam"):
        if dataset == "ILSVRC" and network == "vgg16_gradcam":
            # The paper's ILSVRC Grad-CAM VGG16 baseline is torchvision's VGG16.
            return pretrained_paths.get(network) or os.path.join(
                args.pretrained_dir, torchvision_file(network)), []
        return os.path.join(args.vanilla_dir, args.vanilla_pattern.format(
            dataset=dataset, architecture=network)), []
    recipe = (plan.vanilla or {}).get((backbone, family)) or Recipe(
        1e-3, note=UNPUBLISHED + "lr 1e-3 stands in (wsolevaluation searched each method's lr; "
                                 "its config.py default is 0.01)")
    name = experiment_name(dataset, backbone, network=network, wsol_method=args.wsol_method)
    steps = []
    pretrained = (pretrained_paths.get(network) or pretrained_paths.get(backbone)
                  or (None if dataset == "SYNTH" else os.path.join(
                      args.pretrained_dir, torchvision_file(network) or f"{network}.pth")))
    if pretrained is None and backbone in (plan.pretrain or {}):
        pretrained, steps = _pretrain(args, plan, backbone, trained, extra)
    argv = [*_common(args, dataset, backbone, recipe), "--experiment_name", name,
            "--model_structure", "vanilla", "--network_type", family,
            *_training(args.dataset, plan, backbone, recipe)]
    if pretrained:
        argv += ["--pretrained_path", pretrained]
    trained[network] = os.path.join(args.root, name, "last_checkpoint.pth.tar")
    return trained[network], [*steps, Step("vanilla", name, [*argv, *extra],
                                           recipe.note or "published recipe",
                                           [pretrained] if pretrained else [])]


def _training(dataset: str, plan: DatasetPlan, backbone: str, recipe: Recipe) -> list[str]:
    """The training flags of a vanilla or pretraining run."""
    return ["--epochs", str(recipe.epochs or plan.vanilla_epochs), "--lr", str(recipe.lr),
            "--lr_decay_frequency", str(plan.vanilla_decay),
            "--weight_decay", str(recipe.weight_decay or WEIGHT_DECAY.get(backbone, 1e-4)),
            "--skip_eval", *VANILLA_EXTRA.get(dataset, ()), *plan.extra]


def _pretrain(args, plan: DatasetPlan, backbone: str, trained: dict,
              extra: Sequence[str]) -> tuple[str, list[Step]]:
    """The plain classifier every network of ``backbone`` starts from on a
    dataset without ImageNet weights (``DatasetPlan.pretrain``), trained once."""
    key = f"pretrain:{backbone}"
    if key in trained:
        return trained[key], []
    recipe = plan.pretrain[backbone]
    name = f"{args.dataset}_{backbone}_pretrain"
    argv = [*_common(args, args.dataset, backbone, recipe, wsol_method="cam"),
            "--experiment_name", name, "--model_structure", "vanilla", "--network_type", "cam",
            *_training(args.dataset, plan, backbone, recipe)]
    trained[key] = os.path.join(args.root, name, "last_checkpoint.pth.tar")
    return trained[key], [Step("pretrain", name, [*argv, *extra], recipe.note)]


def _split(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


# --------------------------------------------------------------------------
# the dry run
# --------------------------------------------------------------------------

def parse_step(step: Step):
    """The step's argv through config.get_configs; (settings, error message)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return config.get_configs(step.argv), None
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()
        return None, message[-1] if message else "argument error"
    except UserError as error:
        return None, str(error)


def _expected_files(settings, step: Step) -> list[tuple[str, str]]:
    """(kind, path) of what the step reads from the dataset."""
    needed: list[tuple[str, str]] = []
    data = settings.data
    synth_generated = (data.dataset_name == "SYNTH"
                       and not os.path.isdir(data.metadata_folder))
    if synth_generated:
        return needed  # main.py generates SYNTH on its first run
    needed.append(("dataset image folder", data.image_root + os.sep))
    split = data.train_split if step.kind != "evaluate" else settings.evaluation.split
    folder = data.split_metadata(split)
    needed.append((f"{split} metadata folder", folder + os.sep))
    names = ["image_ids.txt", "class_labels.txt"]
    if step.kind == "evaluate":
        names += ["image_sizes.txt", "localization.txt"]
        if data.info.masks and data.dataset_name != "SYNTH":
            needed.append(("mask folder", data.mask_folder + os.sep))
    if os.path.isdir(folder):  # else the missing folder is the one problem to report
        needed += [(f"{split} metadata file", os.path.join(folder, n)) for n in names]
    return needed


def check_plan(steps: Sequence[Step]) -> list[str]:
    """Problems that would stop the plan, each naming its path or flag."""
    problems: list[str] = []
    reported: set[str] = set()
    produced: set[str] = set()
    for step in steps:
        args, error = parse_step(step)
        if error:
            problems.append(f"{step.title}: main.py rejects the flags: {error}")
            continue
        for kind, path in _expected_files(args, step):
            exists = os.path.isdir(path) if path.endswith(os.sep) else os.path.isfile(path)
            path = path.rstrip(os.sep)
            if not exists and path not in reported:
                reported.add(path)
                problems.append(f"missing {kind}: {path} (needed by {step.title})")
        for path in step.inputs:
            norm = os.path.normpath(path)
            if norm not in produced and not os.path.isfile(path) and norm not in reported:
                reported.add(norm)
                what = ("torchvision ImageNet weights" if step.kind == "vanilla"
                        else "vanilla checkpoint" if step.kind == "finetune" else "checkpoint")
                problems.append(f"missing {what}: {path} (needed by {step.title})")
        if step.kind in ("pretrain", "vanilla", "finetune"):
            produced.add(os.path.normpath(os.path.join(args.log_folder,
                                                       "last_checkpoint.pth.tar")))
    return problems


# --------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------

def step_state(step: Step) -> tuple[str, list[str]]:
    """("done" | "resume" | "fresh" | "override", extra flags) of a step."""
    settings, error = parse_step(step)
    if error:
        raise PlanError(f"{step.title}: {error}")
    folder = settings.log_folder
    last = os.path.join(folder, "last_checkpoint.pth.tar")
    if step.kind == "evaluate":
        results = os.path.join(folder, f"results_{settings.evaluation.split}.json")
        if (os.path.isfile(results) and os.path.isfile(last)
                and os.path.getmtime(results) >= os.path.getmtime(last)):
            return "done", []
        return "fresh", []
    if os.path.isfile(checkpoint_path(folder, str(settings.optim.epochs))):
        return "done", []
    if os.path.isfile(last):
        return "resume", ["--resume"]
    if os.path.isdir(folder) and os.listdir(folder):
        return "override", ["--override_cache"]  # a run that died before its first epoch
    return "fresh", []


def learning_rates(step: Step) -> list[str]:
    """The learning rate each parameter group of a training step gets, epoch
    by epoch (``lr_schedule.json``), from the model built on the meta device."""
    if step.kind == "evaluate":
        return []
    settings, error = parse_step(step)
    if error:
        return []
    import torch

    from wsol.runtime.build import build_model
    from wsol.runtime.trainer import optim_config
    from wsol.runtime.training import lr_schedule
    # The structure only: no weights are read.
    structure = settings.replace(model={"ft_ckpt": None, "pretrained": False,
                                        "pretrained_path": None},
                                 runtime={"eval_only": True})
    try:
        with torch.device("meta"):
            model, spec = build_model(structure)
    except (ValueError, RuntimeError) as error:
        return [f"lr: cannot build the model ({error})"]
    schedule = lr_schedule(model, optim_config(settings), spec.lr_rule, settings.optim.epochs)
    lines = []
    for group in schedule["groups"]:
        runs: list[list] = []
        for lr in group["lr"]:
            if runs and runs[-1][0] == lr:
                runs[-1][1] += 1
            else:
                runs.append([lr, 1])
        epochs = ", ".join(f"{lr:.4g} x{count}" for lr, count in runs)
        lines.append(f"lr {', '.join(group['params'])}: {epochs} (epochs)")
    return lines


def subprocess_runner(python: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        return subprocess.call([python, MAIN_PY, *argv])
    return run


def execute(steps: Sequence[Step], runner: Callable[[list[str]], int], force: bool = False,
            reevaluate: bool = False, python: str = "python",
            out=sys.stdout) -> int:
    """Run the steps in order; stop at the first failure (its exit status)."""
    for n, step in enumerate(steps, start=1):
        state, flags = step_state(step)
        if force or (reevaluate and step.kind == "evaluate"):
            # training into an existing folder replaces it; evaluation just re-runs
            state, flags = ("again", []) if step.kind == "evaluate" else \
                ("again", ["--override_cache"])
        if state == "done":
            print(f"[{n}/{len(steps)}] {step.title}: done already, skipped", file=out)
            continue
        argv = [*step.argv, *flags]
        print(f"[{n}/{len(steps)}] {step.title} ({state})\n  "
              f"{shlex.join([python, os.path.relpath(MAIN_PY), *argv])}", file=out, flush=True)
        status = runner(argv)
        if status != 0:
            print(f"{step.title} failed (exit status {status}); fix it and re-run: finished "
                  f"steps are skipped", file=out)
            return status or 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scripts.run_experiments",
        description="Vanilla model (released or trained), sigmoid-branch fine-tuning and "
                    "evaluation of both branches for one dataset's backbones and methods, "
                    "with the published recipes (docs/reproducing.md). Flags after '--' go "
                    "to every main.py command.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--architectures", default=None,
                   help="comma-separated backbones (default: vgg16,resnet50,inception_v3; "
                        "resnet18 for SYNTH)")
    p.add_argument("--methods", default=None,
                   help="comma-separated CAM methods; cam is scored on the CAM networks, the "
                        "others on the Grad-CAM networks (default: cam,gradcam; on CUB and "
                        "CARS also gradcam++,xgradcam,layercam, with --fidelity)")
    p.add_argument("--vanilla", action="append", default=[], metavar="NETWORK=PATH",
                   help="vanilla checkpoint of a network (vgg16, vgg16_gradcam, resnet50, "
                        "inception_v3, inception_v3_gradcam); repeat per network")
    p.add_argument("--vanilla_dir", default="checkpoints",
                   help="where vanilla checkpoints not given by --vanilla are looked for")
    p.add_argument("--vanilla_pattern", default="{dataset}_{architecture}_vanilla.pth.tar",
                   help="their file names inside --vanilla_dir")
    p.add_argument("--wsol_method", default="cam", choices=WSOL_METHODS,
                   help="wsolevaluation's training method of the vanilla model and the "
                        "fine-tuning (its flags' defaults; docs/method.md); other than cam, "
                        "the vanilla model is trained unless --vanilla gives it; acol, spg "
                        "and adl train their own networks (vgg16, resnet50, inception_v3)")
    p.add_argument("--train_vanilla", action="store_true",
                   help="train the vanilla models (from --pretrained) instead of using "
                        "released ones; always so for CARS and SYNTH")
    p.add_argument("--pretrained", action="append", default=[], metavar="NETWORK=PATH",
                   help="torchvision ImageNet .pth of a network, for vanilla training (on "
                        "SYNTH it replaces the pretraining step)")
    p.add_argument("--pretrained_dir", default=_default_pretrained_dir(),
                   help="where torchvision's weight files (vgg16-*.pth, resnet50-*.pth, "
                        "inception_v3_google-*.pth) are looked for")
    p.add_argument("--dry_run", action="store_true",
                   help="print and check every command (flags, paths, checkpoints); train "
                        "nothing")
    p.add_argument("--force", action="store_true",
                   help="re-run steps that look finished (their folders are replaced)")
    p.add_argument("--reevaluate", action="store_true",
                   help="re-run the evaluations even where results exist")
    p.add_argument("--python", default=sys.executable, help="interpreter for main.py")
    # main.py's flags (config.py), passed on to every command.
    config.add_flags(p, ("root", "data_root", "metadata_root", "mask_root", "split",
                         "batch_size", "workers", "seed", "gpus", "lr", "sigmoid_init",
                         "save_overlays", "plots"),
                     split={"choices": ("val", "test")},
                     lr={"default": None, "help": "fine-tuning lr for every backbone and "
                                                  "method (default: the recipe's)"},
                     sigmoid_init={"default": None, "help": "the branch's initialisation "
                                   "(default: main.py's, or --replay's)"})
    return p


def main(argv: Sequence[str] | None = None,
         runner: Callable[[list[str]], int] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    try:
        steps = build_plan(args, extra)
    except PlanError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        for n, step in enumerate(steps, start=1):
            note = f"  # {step.note}" if step.note else ""
            print(f"[{n}/{len(steps)}] {step.title}{note}\n  {step.command('python')}")
            for line in learning_rates(step):
                print(f"    {line}")
        problems = check_plan(steps)
        if problems:
            print(f"\ndry run: {len(problems)} problem(s):", file=sys.stderr)
            for problem in problems:
                print(f"  - {problem}", file=sys.stderr)
            return 1
        print(f"\ndry run: {len(steps)} command(s) parse; every folder, metadata file and "
              f"checkpoint exists or is made by an earlier step")
        return 0
    problems = check_plan(steps)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    try:
        return execute(steps, runner or subprocess_runner(args.python), args.force,
                       args.reevaluate, python=os.path.basename(args.python))
    except PlanError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Run the paper's experiments: one dataset, its backbones and CAM methods.

For every (backbone, method) of a dataset the plan is:

1. the vanilla model: wsolevaluation's released checkpoint of that dataset
   and backbone (``--vanilla ARCH=PATH``, or ``--vanilla_dir`` with
   ``--vanilla_pattern``), or, where none is released (Stanford Cars; SYNTH;
   any dataset with ``--train_vanilla``), ``main.py --model_structure
   vanilla`` from torchvision's ImageNet weights (``--pretrained ARCH=PATH``
   or found in ``--pretrained_dir``), once per backbone;
2. fine-tuning of the sigmoid branch (``--model_structure b2 --ft_ckpt``)
   with the SPEC §1 recipe of the dataset, backbone and method;
3. evaluation of both branches (``--eval_only --cam_branch softmax,sigmoid``)
   on ``--split``, writing ``<log_root>/<experiment>/results_<split>.json``
   (``scripts/make_tables.py`` turns a set of them into the paper's tables).

``--dry_run`` runs nothing: it prints every command and checks that each
parses with ``config.get_configs``, that the image and metadata folders and
files exist, and that every checkpoint exists or is made by an earlier step;
a problem exits 1 naming the path.  Without it, steps whose output exists are
skipped (an interrupted training run resumes), so the script can be re-run
after a failure.  Flags after ``--`` go to every ``main.py`` command (e.g.
``-- --wandb online``); they come last, so they override the recipe.

    python scripts/run_experiments.py --dataset ILSVRC --vanilla_dir ckpt --dry_run
    python scripts/run_experiments.py --dataset CARS --architectures resnet50 \\
        --pretrained resnet50=~/.cache/torch/hub/checkpoints/resnet50-0676ba61.pth

The shell scripts ``scripts/run_<dataset>.sh`` call this with the paper's
backbones and methods.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import config  # noqa: E402  (the repository root is on the path now)

MAIN_PY = os.path.join(REPO_ROOT, "main.py")
DATASETS = tuple(config.DATASET_NUM_CLASSES)
PAPER_BACKBONES = ("vgg16", "resnet50", "inception_v3")
DEFAULT_ARCHITECTURES = {name: PAPER_BACKBONES for name in DATASETS}
DEFAULT_ARCHITECTURES["SYNTH"] = ("resnet18",)
DEFAULT_METHODS = ("cam", "gradcam")

# wsolevaluation's settings per backbone (SPEC §1): weight decay, and the
# larger CAM resolution it uses for ResNet50 and InceptionV3.
WEIGHT_DECAY = {"vgg16": 5e-4, "inception_v3": 5e-4, "resnet50": 1e-4, "resnet18": 1e-4}
LARGE_FEATURE_MAP = {"vgg16": False, "resnet50": True, "inception_v3": True, "resnet18": True}
# Methods whose maps come from the head's weights or forward scores, not
# gradients: they share the "cam" learning rate, the others Grad-CAM's.
WEIGHT_BASED = ("cam", "scorecam", "eigencam")
# torchvision's ImageNet weight files (as in $TORCH_HOME/hub/checkpoints).
TORCHVISION_FILES = {"vgg16": "vgg16-*.pth", "resnet50": "resnet50-*.pth",
                     "resnet18": "resnet18-*.pth", "inception_v3": "inception_v3_google-*.pth"}
# Datasets without released vanilla checkpoints: the vanilla model is trained.
TRAIN_VANILLA = ("CARS", "SYNTH")


@dataclass(frozen=True)
class Recipe:
    epochs: int
    lr_decay_frequency: int
    lr: dict  # (architecture, "cam" | "grad") -> lr
    note: str = ""
    published: tuple = ()  # (architecture, family) keys the paper publishes
    extra: tuple = ()      # further main.py flags


# Fine-tuning of the sigmoid branch: SGD Nesterov, momentum 0.9, batch 32
# (main.py's defaults), step decay x0.1 every lr_decay_frequency epochs.
FINETUNE = {
    "ILSVRC": Recipe(10, 3, {("vgg16", "cam"): 3e-3, ("vgg16", "grad"): 1e-4,
                             ("resnet50", "cam"): 1e-4, ("resnet50", "grad"): 5e-3,
                             ("inception_v3", "cam"): 5e-4, ("inception_v3", "grad"): 5e-4},
                     published=(("vgg16", "cam"), ("vgg16", "grad"), ("resnet50", "cam"),
                                ("resnet50", "grad"), ("inception_v3", "cam"),
                                ("inception_v3", "grad"))),
    "CUB": Recipe(50, 15, {("vgg16", "cam"): 5e-5, ("vgg16", "grad"): 5e-5,
                           ("resnet50", "cam"): 1e-4, ("resnet50", "grad"): 1e-4,
                           ("inception_v3", "cam"): 1e-4, ("inception_v3", "grad"): 1e-4},
                  note="VGG16 Grad-CAM lr not published: VGG16 CAM's",
                  published=(("vgg16", "cam"), ("resnet50", "cam"), ("resnet50", "grad"),
                             ("inception_v3", "cam"), ("inception_v3", "grad"))),
    "OpenImages": Recipe(10, 3, {("vgg16", "cam"): 3e-4, ("vgg16", "grad"): 3e-4,
                                 ("resnet50", "cam"): 5e-4, ("resnet50", "grad"): 5e-4,
                                 ("inception_v3", "cam"): 5e-4, ("inception_v3", "grad"): 5e-4},
                         note="the paper gives 3e-4 to 5e-4 without a per-backbone split"),
    "CARS": Recipe(10, 3, {("vgg16", "cam"): 5e-5, ("vgg16", "grad"): 5e-5,
                           ("resnet50", "cam"): 1e-4, ("resnet50", "grad"): 1e-4,
                           ("inception_v3", "cam"): 1e-4, ("inception_v3", "grad"): 1e-4},
                   note="only the 10 epochs are published; CUB's learning rates, decay every 3"),
    # The CPU demo of main.py (python main.py), at any scale you like.
    "SYNTH": Recipe(3, 3, {("resnet18", "cam"): 0.01, ("resnet18", "grad"): 0.01},
                    note="main.py's demo recipe",
                    published=(("resnet18", "cam"), ("resnet18", "grad")),
                    extra=("--resize_size", "72", "--crop_size", "64")),
}

# Vanilla training where no checkpoint is released.  Stanford Cars: the
# paper publishes none, so wsolevaluation's CUB CAM settings (fine-grained,
# 50 epochs, decay every 15, head at 10x lr) stand in.  SYNTH: the demo's.
VANILLA = {
    "CARS": Recipe(50, 15, {("vgg16", "cam"): 1.268269e-5, ("resnet50", "cam"): 2.3222617e-4,
                            ("inception_v3", "cam"): 2.24844746e-3},
                   note="wsolevaluation's CUB CAM settings (not published for Cars)"),
    "SYNTH": Recipe(6, 5, {("resnet18", "cam"): 0.05}, note="main.py's demo recipe",
                    extra=("--lr_classifier_ratio", "1", "--resize_size", "72",
                           "--crop_size", "64")),
}


@dataclass
class Step:
    kind: str                 # "vanilla", "finetune" or "evaluate"
    experiment: str
    argv: list[str]
    note: str = ""
    inputs: list[str] = field(default_factory=list)  # checkpoints it reads

    @property
    def title(self) -> str:
        return f"{self.experiment}: {self.kind}"

    def command(self, python: str = "python") -> str:
        return shlex.join([python, os.path.relpath(MAIN_PY), *self.argv])


def method_family(method: str) -> str:
    return "cam" if method in WEIGHT_BASED else "grad"


def experiment_name(dataset: str, architecture: str, method: str | None = None) -> str:
    if method is None:
        return f"{dataset}_{architecture}_vanilla"
    return f"{dataset}_{architecture}_{method.replace('+', 'p')}_b2"


def _lookup_lr(recipe: Recipe, dataset: str, architecture: str, family: str) -> float:
    for key in ((architecture, family), (architecture, "cam"), (architecture, "grad")):
        if key in recipe.lr:
            return recipe.lr[key]
    known = sorted({a for a, _ in recipe.lr})
    raise PlanError(f"no {dataset} recipe for {architecture} (recipes exist for "
                    f"{', '.join(known)}): pass --lr")


class PlanError(ValueError):
    """The plan cannot be built (unknown backbone, bad --vanilla entry...)."""


def _pairs(entries: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for entry in entries or ():
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise PlanError(f"{flag} {entry!r}: expected ARCHITECTURE=PATH")
        out[name.strip()] = os.path.expanduser(path.strip())
    return out


def _default_pretrained_dir() -> str:
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    return os.path.join(torch_home, "hub", "checkpoints")


def find_pretrained(architecture: str, folder: str) -> str | None:
    pattern = TORCHVISION_FILES.get(architecture)
    if not pattern:
        return None
    found = sorted(glob.glob(os.path.join(folder, pattern)))
    return found[-1] if found else None


def _common(args, dataset: str, architecture: str) -> list[str]:
    argv = ["--dataset_name", dataset, "--architecture", architecture,
            "--large_feature_map", str(LARGE_FEATURE_MAP.get(architecture, False)).upper(),
            "--data_root", args.data_root, "--metadata_root", args.metadata_root,
            "--log_root", args.log_root, "--batch_size", str(args.batch_size),
            "--workers", str(args.workers), "--seed", str(args.seed)]
    if args.mask_root:
        argv += ["--mask_root", args.mask_root]
    if args.gpus is not None:
        argv += ["--gpus", str(args.gpus)]
    return argv


def build_plan(args, extra: Sequence[str] = ()) -> list[Step]:
    """Every main.py command of the experiments, in order."""
    dataset = args.dataset
    architectures = _split(args.architectures) or list(DEFAULT_ARCHITECTURES[dataset])
    methods = _split(args.methods) or list(DEFAULT_METHODS)
    from_cams = _known_methods()
    if from_cams is not None:
        unknown = [m for m in methods if m not in from_cams]
        if unknown:
            raise PlanError(f"unknown CAM method(s) {', '.join(unknown)}; known: "
                            f"{', '.join(from_cams)}")
    vanilla_paths = _pairs(args.vanilla, "--vanilla")
    pretrained_paths = _pairs(args.pretrained, "--pretrained")
    finetune = FINETUNE[dataset]
    steps: list[Step] = []
    for arch in architectures:
        if arch not in config.ARCHITECTURE_NAMES:
            raise PlanError(f"unknown architecture {arch!r}; choose from "
                            f"{', '.join(config.ARCHITECTURE_NAMES)}")
        common = _common(args, dataset, arch)
        wd = str(WEIGHT_DECAY.get(arch, 1e-4))
        train_vanilla = arch not in vanilla_paths and (dataset in TRAIN_VANILLA
                                                       or args.train_vanilla)
        if train_vanilla:
            recipe = VANILLA.get(dataset, VANILLA["CARS"])
            name = experiment_name(dataset, arch)
            argv = [*common, "--experiment_name", name, "--model_structure", "vanilla",
                    "--epochs", str(recipe.epochs),
                    "--lr", str(_lookup_lr(recipe, dataset, arch, "cam")),
                    "--lr_decay_frequency", str(recipe.lr_decay_frequency),
                    "--weight_decay", wd, "--skip_eval", *recipe.extra]
            inputs = []
            if dataset != "SYNTH":
                path = pretrained_paths.get(arch) or find_pretrained(
                    arch, args.pretrained_dir) or os.path.join(
                    args.pretrained_dir, TORCHVISION_FILES.get(arch, f"{arch}.pth"))
                argv += ["--pretrained_path", path]
                inputs.append(path)
            steps.append(Step("vanilla", name, [*argv, *extra], recipe.note, inputs))
            vanilla = os.path.join(args.log_root, name, "last_checkpoint.pth.tar")
        else:
            vanilla = vanilla_paths.get(arch) or os.path.join(
                args.vanilla_dir, args.vanilla_pattern.format(dataset=dataset,
                                                              architecture=arch))
        for method in methods:
            family = method_family(method)
            lr = args.lr if args.lr is not None else _lookup_lr(finetune, dataset, arch, family)
            if args.lr is not None:
                note = "lr from --lr"
            elif (arch, family) in finetune.published and method in ("cam", "gradcam"):
                note = "published recipe" if dataset != "SYNTH" else finetune.note
            else:
                note = finetune.note or "lr not published for this case"
                if method not in ("cam", "gradcam"):
                    note += f"; {method} takes the {'CAM' if family == 'cam' else 'Grad-CAM'} lr"
            name = experiment_name(dataset, arch, method)
            argv = [*common, "--experiment_name", name, "--model_structure", "b2",
                    "--ft_ckpt", vanilla, "--unfreeze_layer", "fc2",
                    "--sigmoid_init", args.sigmoid_init, "--method", method,
                    "--epochs", str(finetune.epochs), "--lr", str(lr),
                    "--lr_decay_frequency", str(finetune.lr_decay_frequency),
                    "--weight_decay", wd, "--skip_eval", *finetune.extra]
            steps.append(Step("finetune", name, [*argv, *extra], note, [vanilla]))
            argv = [*common, "--experiment_name", name, "--model_structure", "b2",
                    "--eval_only", "--eval_checkpoint_type", "last", "--method", method,
                    "--cam_branch", "softmax,sigmoid", "--split", args.split, *finetune.extra]
            if args.save_overlays:
                argv += ["--save_overlays", str(args.save_overlays)]
            if args.plots:
                argv += ["--plots"]
            checkpoint = os.path.join(args.log_root, name, "last_checkpoint.pth.tar")
            steps.append(Step("evaluate", name, [*argv, *extra], "", [checkpoint]))
    return steps


def _split(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def _known_methods() -> list[str] | None:
    """CAM method names, when wsol.cams imports (it needs torch)."""
    try:
        from wsol.cams import CAM_METHODS
    except Exception:
        return None
    return list(CAM_METHODS)


# --------------------------------------------------------------------------
# the dry run
# --------------------------------------------------------------------------

def parse_step(step: Step):
    """The step's argv through config.get_configs; (args, error message)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return config.get_configs(step.argv), None
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()
        return None, message[-1] if message else "argument error"
    except config.ConfigError as error:
        return None, str(error)


def _expected_files(args, step: Step) -> list[tuple[str, str]]:
    """(kind, path) of what the step reads from the dataset."""
    needed: list[tuple[str, str]] = []
    synth_generated = (args.dataset_name == "SYNTH"
                       and not os.path.isdir(args.split_metadata_root))
    if synth_generated:
        return needed  # main.py generates SYNTH on its first run
    needed.append(("dataset image folder", args.image_root + os.sep))
    split = "train" if step.kind != "evaluate" else args.split
    folder = os.path.join(args.split_metadata_root, split)
    needed.append((f"{split} metadata folder", folder + os.sep))
    names = ["image_ids.txt", "class_labels.txt"]
    if step.kind == "evaluate":
        names += ["image_sizes.txt", "localization.txt"]
        if args.dataset_name in config.MASK_DATASETS and args.dataset_name != "SYNTH":
            needed.append(("mask folder", args.dataset_mask_root + os.sep))
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
        if step.kind in ("vanilla", "finetune"):
            produced.add(os.path.normpath(os.path.join(args.log_folder,
                                                       "last_checkpoint.pth.tar")))
    return problems


# --------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------

def step_state(step: Step) -> tuple[str, list[str]]:
    """("done" | "resume" | "fresh" | "override", extra flags) of a step."""
    args, error = parse_step(step)
    if error:
        raise PlanError(f"{step.title}: {error}")
    folder = args.log_folder
    last = os.path.join(folder, "last_checkpoint.pth.tar")
    if step.kind == "evaluate":
        results = os.path.join(folder, f"results_{args.split}.json")
        if (os.path.isfile(results) and os.path.isfile(last)
                and os.path.getmtime(results) >= os.path.getmtime(last)):
            return "done", []
        return "fresh", []
    if os.path.isfile(os.path.join(folder, f"epoch{args.epochs}_checkpoint.pth.tar")):
        return "done", []
    if os.path.isfile(last):
        return "resume", ["--resume"]
    if os.path.isdir(folder) and os.listdir(folder):
        return "override", ["--override_cache"]  # a run that died before its first epoch
    return "fresh", []


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
        prog="scripts/run_experiments.py",
        description="Vanilla model (released or trained), sigmoid-branch fine-tuning and "
                    "evaluation of both branches for one dataset's backbones and methods "
                    "(SPEC §1 recipes). Flags after '--' go to every main.py command.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--architectures", default=None,
                   help="comma-separated backbones (default: vgg16,resnet50,inception_v3; "
                        "resnet18 for SYNTH)")
    p.add_argument("--methods", default=None,
                   help="comma-separated CAM methods (default: cam,gradcam)")
    p.add_argument("--data_root", default="dataset", help="images under <data_root>/<dataset>")
    p.add_argument("--metadata_root", default="metadata")
    p.add_argument("--mask_root", default=None, help="OpenImages masks (default: --data_root)")
    p.add_argument("--log_root", default="train_log")
    p.add_argument("--vanilla", action="append", default=[], metavar="ARCH=PATH",
                   help="vanilla checkpoint of a backbone (wsolevaluation's released one); "
                        "repeat per backbone")
    p.add_argument("--vanilla_dir", default="checkpoints",
                   help="where vanilla checkpoints not given by --vanilla are looked for")
    p.add_argument("--vanilla_pattern", default="{dataset}_{architecture}_vanilla.pth.tar",
                   help="their file names inside --vanilla_dir")
    p.add_argument("--train_vanilla", action="store_true",
                   help="train the vanilla models (from --pretrained) instead of using "
                        "released ones; always so for CARS and SYNTH")
    p.add_argument("--pretrained", action="append", default=[], metavar="ARCH=PATH",
                   help="torchvision ImageNet .pth of a backbone, for vanilla training")
    p.add_argument("--pretrained_dir", default=_default_pretrained_dir(),
                   help="where torchvision's weight files (vgg16-*.pth, resnet50-*.pth, "
                        "inception_v3_google-*.pth) are looked for")
    p.add_argument("--lr", type=float, default=None,
                   help="fine-tuning lr for every backbone and method (default: the recipe)")
    p.add_argument("--sigmoid_init", default="clone", choices=("clone", "random"))
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpus", default=None, help="passed to main.py")
    p.add_argument("--save_overlays", type=int, default=0, metavar="N",
                   help="overlay PNGs per method and branch in the evaluation")
    p.add_argument("--plots", action="store_true", help="curves in the evaluation")
    p.add_argument("--dry_run", action="store_true",
                   help="print and check every command (flags, paths, checkpoints); train "
                        "nothing")
    p.add_argument("--force", action="store_true",
                   help="re-run steps that look finished (their folders are replaced)")
    p.add_argument("--reevaluate", action="store_true",
                   help="re-run the evaluations even where results exist")
    p.add_argument("--python", default=sys.executable, help="interpreter for main.py")
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

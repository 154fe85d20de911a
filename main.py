"""Train and evaluate dual-branch sigmoid CAMs (the command-line entry point).

``python main.py`` with no arguments runs the CPU demo on the built-in SYNTH
dataset; ``python main.py --help`` lists the flags.  A run, top to bottom
(:func:`run`): the flags become settings (config.py); the experiment folder is
opened (wsol.runtime.experiment); the model is built and checked
(wsol.runtime.build); it is trained (wsol.runtime.trainer) unless
``--eval_only``; its maps are scored (wsol.pipeline); the table is printed
and the results written (wsol.results).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Sequence

import torch

import config
from wsol.errors import UserError
from wsol.results import (evaluation_record, format_results, results_path, run_record,
                          write_json)
from wsol.runtime.acceleration import Acceleration, check_amp, prepare_model
from wsol.runtime.build import (build_model, check_start_files, ensure_builtin_dataset,
                                load_for_evaluation, preflight)
from wsol.runtime.distributed import DistContext, init_distributed, is_timeout
from wsol.runtime.experiment import Experiment, checkpoint_path, resume_candidates
from wsol.runtime.interruption import Interrupted, StopSignals
from wsol.runtime.seeding import resolve_device, seed_everything
from wsol.runtime.tracking import Tracker
from wsol.runtime.trainer import Trainer
from wsol.settings import RunSettings

log = logging.getLogger("main")
CODE_DIR = os.path.dirname(os.path.abspath(__file__))


def run(settings: RunSettings) -> dict | None:
    """Train (unless --eval_only) and evaluate one experiment.  Under torchrun
    every rank computes; only rank 0 writes files and logs."""
    ctx = init_distributed(settings.runtime.dist_timeout)
    check_start_files(settings)
    with Experiment(settings, ctx, CODE_DIR), StopSignals():  # a signal: stop with a message
        _barrier(ctx)
        device = (torch.device("cuda", ctx.local_rank)
                  if ctx.enabled and torch.cuda.is_available()
                  else resolve_device(settings.runtime.gpus))
        generator = seed_everything(settings.choices.seed)
        if ctx.is_main:
            ensure_builtin_dataset(settings)
        _barrier(ctx)
        runtime = settings.runtime
        accel = check_amp(device, Acceleration(runtime.amp, runtime.channels_last,
                                               runtime.compile))
        model, spec = build_model(settings)
        model = prepare_model(model, device, accel)
        evaluated = load_for_evaluation(settings, model) if runtime.eval_only else None
        settings = preflight(settings, model, device)
        tracker = Tracker(runtime.wandb if ctx.is_main else "off", runtime.project,
                          runtime.wandb_name or runtime.experiment_name,
                          _flat(settings.to_dict()), settings.log_folder)
        try:
            if evaluated:
                log.info("evaluating %s", evaluated)
            else:
                Trainer(settings, model, spec, device, generator, ctx, accel, tracker).fit()
            if runtime.skip_eval:
                return None
            return evaluate(settings, model, spec, device, ctx, accel, tracker)
        finally:
            tracker.finish()


def evaluate(settings: RunSettings, model, spec, device: torch.device, ctx: DistContext,
             accel: Acceleration, tracker: Tracker | None = None) -> dict:
    """Score the model, print the table, write the results (and pictures)."""
    from wsol.pipeline import evaluate_run
    start = time.perf_counter()
    results = evaluate_run(settings, model, spec, device, ctx, accel,
                           show_progress=sys.stderr.isatty() and ctx.is_main)
    results["eval_seconds"] = time.perf_counter() - start
    results["evaluation"] = evaluation_record(settings)
    results["run"] = run_record(list(settings.argv), CODE_DIR, describe_device(device),
                                settings.choices.seed)
    if not ctx.is_main:
        return results
    folder, split = settings.log_folder, settings.evaluation.split
    print(format_results(results, settings.evaluation.box_column))
    write_json(results, results_path(folder, split, results["evaluation"]),
               "the results (printed above) to")
    if tracker is not None:
        tracker.log({**{f"{r['method']}/{r['branch']}/{k}": v for r in results["rows"]
                        for k, v in r.items() if isinstance(v, (int, float))},
                     **results["classification"]})
    if settings.evaluation.plots or settings.evaluation.save_overlays:
        from wsol.visualize import write_pictures
        write_pictures(folder, split, results, settings.evaluation.plots,
                       bool(settings.evaluation.save_overlays), tracker)
    return results


def _flat(record: dict) -> dict:
    """The settings as wandb's flat config."""
    return {f"{section}.{key}": value for section, values in record.items()
            if isinstance(values, dict) for key, value in values.items()
            if isinstance(value, (str, int, float, bool))}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({os.cpu_count()} cores)"


def _barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        torch.distributed.barrier()


# The CPU demo: small backbone, small images, few epochs.  The same code path
# runs the paper's experiments at 224 px.
DEMO_COMMON = ["--dataset_name", "SYNTH", "--architecture", "resnet18",
               "--large_feature_map", "TRUE", "--resize_size", "72", "--crop_size", "64",
               "--batch_size", "32", "--workers", "1", "--seed", "0",
               "--method", "cam,gradcam"]
# Sized to finish in about 1.5 min on a quiet 2-core CPU (README, "The demo"): three
# vanilla epochs at batch 16 (more updates per second of CPU than batch 32 here), one
# epoch of the sigmoid branch.
DEMO_VANILLA = ["--experiment_name", "demo_vanilla", "--model_structure", "vanilla",
                "--epochs", "3", "--lr", "0.05", "--lr_classifier_ratio", "1",
                "--lr_decay_frequency", "3", "--weight_decay", "1e-4", "--batch_size", "16"]
DEMO_B2 = ["--experiment_name", "demo_b2", "--model_structure", "b2", "--override_cache",
           "--epochs", "1", "--lr", "0.02", "--lr_decay_frequency", "4",
           "--weight_decay", "1e-4", "--cam_branch", "softmax,sigmoid",
           "--save_overlays", "8", "--plots"]  # the pictures README shows


def run_demo(extra: Sequence[str] = ()) -> dict:
    """Vanilla model (reused when already trained), its sigmoid branch
    fine-tuned, and both branches scored with CAM and Grad-CAM.  ``extra``:
    flags for both runs, after the demo's own (so they win)."""
    start = time.perf_counter()
    vanilla = config.get_configs([*DEMO_COMMON, *DEMO_VANILLA, "--override_cache",
                                  "--skip_eval", *extra])
    vanilla_ckpt = checkpoint_path(vanilla.log_folder, "last")
    b2 = config.get_configs([*DEMO_COMMON, *DEMO_B2, "--ft_ckpt", vanilla_ckpt, *extra])
    if os.path.isfile(vanilla_ckpt):
        print(f"reusing the vanilla model {vanilla_ckpt} (delete it to retrain)")
    else:
        run(vanilla)
    results = run(b2)
    print(f"demo finished in {time.perf_counter() - start:.0f} s; results in "
          f"{os.path.join(b2.log_folder, 'results_test.json')}")
    return results


def print_choices() -> None:
    """``--list``: what --architecture, --method and --dataset_name take."""
    from wsol.architectures import ARCHITECTURES
    from wsol.cams import CAM_METHODS
    print("architectures (--architecture):")
    for name, spec in ARCHITECTURES.items():
        print(f"  {name:22s} {spec.description}")
    print("  timm:<model name>      any timm model (pip install timm)")
    print("CAM methods (--method, comma-separated, or all; settings: --cam_option "
          "METHOD.SETTING=VALUE):")
    for name, method in CAM_METHODS.items():
        settings = ", ".join(f"{k}={v}" for k, v in method.settings().items())
        print(f"  {name:22s} {(type(method).__doc__ or '').splitlines()[0]}"
              + (f" [{settings}]" if settings else ""))
    print("datasets (--dataset_name):")
    for name, classes in config.DATASET_NUM_CLASSES.items():
        print(f"  {name:22s} {classes} classes")


def _one_line(error: BaseException) -> str:
    """A user error's message; one raised in a DataLoader worker arrives
    wrapped in the worker's traceback, of which only the last line counts."""
    text = str(error)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def _kept(folder: str | None) -> str:
    """What an interrupted run leaves to continue from."""
    candidates = resume_candidates(folder)
    if not candidates:
        return "nothing was saved yet"
    newest = max(candidates, key=os.path.getmtime)
    return (f"the newest checkpoint is {newest}: --resume continues the training, "
            f"--eval_only evaluates it")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    folder, timeout = None, 0.0
    try:
        args, given = config.parse_main_args(argv)
        if args.list:
            print_choices()
            return 0
        if not argv or args.demo:
            run_demo([a for a in argv if a != "--demo"])
            return 0
        settings = config.build_settings(args, given, argv)
        folder, timeout = settings.log_folder, settings.runtime.dist_timeout
        run(settings)
        return 0
    except UserError as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        message = str(stop)
        if "--resume" not in message:  # stopped outside training
            message += f"; {_kept(folder)}"
        print(message, file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print(f"interrupted (Ctrl-C); {_kept(folder)}", file=sys.stderr)
        return 130
    except RuntimeError as error:
        text = str(error)
        if "DataLoader worker" in text and ("killed" in text or "exited unexpectedly" in text):
            print(f"error: {text.splitlines()[0]} (usually the out-of-memory killer): lower "
                  f"--workers, --batch_size or --prefetch_factor", file=sys.stderr)
            return 1
        if is_timeout(error):
            rank = os.environ.get("RANK", "0")
            print(f"error: rank {rank}: another process of this torchrun job did not answer "
                  f"within --dist_timeout ({timeout:g} s): a stopped or crashed rank? (raise "
                  f"--dist_timeout if one step can take longer)", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())

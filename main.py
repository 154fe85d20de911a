"""Train and evaluate dual-branch sigmoid CAMs (the command-line entry point).

``python main.py`` with no arguments runs the CPU demo on the built-in SYNTH
dataset; ``python main.py --help`` lists the flags.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from typing import Sequence

import torch

import config
from config import ConfigError, checkpoint_path
from data_loaders import (GroundTruth, LoaderSettings, MetadataError, configure_metadata,
                          get_class_labels, get_data_loader)
from wsol.data.metadata import get_multi_labels, get_segmentation_paths
from wsol.architectures import ArchitectureSpec, build_cam_model, get_spec
from wsol.errors import UserError
from wsol.model import CAMModel
from wsol.cams import verify_cam_model
from wsol.results import format_table, json_ready, read_json, run_record, write_json
from wsol.runtime.acceleration import Acceleration, check_amp, prepare_model
from wsol.runtime.checkpoint import (MODEL_SETTINGS, CheckpointError, export_state_dict,
                                     find_pretrained, link_checkpoint, load_checkpoint_file,
                                     load_into_cam_model, load_pretrained, save_checkpoint)
from wsol.runtime.interruption import Interrupted, StopSignals
from wsol.runtime.distributed import DistContext, ShardSampler, init_distributed, is_timeout
from wsol.runtime.seeding import resolve_device, rng_state, seed_everything, set_rng_state
from wsol.runtime.tracking import Tracker
from wsol.runtime.training import (EpochProgress, OptimConfig, build_optimizer,
                                   build_scheduler, lr_schedule, recam_groups, train_one_epoch)

log = logging.getLogger("main")

def build_model(args) -> tuple[CAMModel, ArchitectureSpec]:
    """The architecture, initialised from --ft_ckpt (or ImageNet weights with
    --pretrained), with the sigmoid branch added for b2."""
    model, spec = build_cam_model(args.network, args.num_classes, args.large_feature_map,
                                  args.crop_size, args.cam_layer, args.head)
    if not args.head_bias:
        model.drop_head_bias()
    training = not args.eval_only
    if training and args.ft_ckpt:
        checkpoint = load_checkpoint_file(args.ft_ckpt)
        has_branch = any(k.split(".", 1)[0] in ("fc2", model.sigmoid_branch_name)
                         for k in checkpoint["state_dict"])
        if has_branch and args.model_structure == "b2":  # continue a fine-tuned branch
            model.add_sigmoid_branch(args.sigmoid_init)
        load_into_cam_model(model, args.ft_ckpt, checkpoint)
        log.info("%s weights loaded from %s", "dual-branch" if model.is_dual else "vanilla",
                 args.ft_ckpt)
    elif training and args.pretrained:
        path = find_pretrained(spec, args.pretrained_path)
        load_pretrained(model, spec, path)
        log.info("initialised from the ImageNet weights %s", path)
    if args.model_structure == "b2":
        if training and not (args.ft_ckpt or args.pretrained):
            raise ConfigError("--model_structure b2 fine-tunes the sigmoid branch of a trained "
                              "vanilla model: pass its checkpoint with --ft_ckpt (or "
                              "--pretrained to start from ImageNet weights)")
        if not model.is_dual:
            model.add_sigmoid_branch(args.sigmoid_init)
        model.freeze_backbone(args.unfreeze_layers, args.frozen_mode)
    if args.recam:
        try:
            model.add_reactivation_head(args.seed, args.recam_map, args.recam_clamp)
        except ValueError as error:  # a head without class weights
            raise ConfigError(f"--recam: {error}") from None
        if args.recam_trains == "heads":  # the BCE head and fc_re; classification unchanged
            bce_head = "fc2" if model.is_dual else model.head_name
            model.freeze_backbone((bce_head, "fc_re"), args.frozen_mode)
        else:
            model.freeze_backbone(("all",))
            model.frozen_bn = True  # ReCAM's FixedBatchNorm
    if args.freeze_prefixes:
        try:
            model.freeze(args.freeze_prefixes)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    model.frozen_bn = model.frozen_bn or args.frozen_bn
    return model, spec


def checkpoint_payload(model: CAMModel, args, epoch: int, optimizer, scheduler,
                       generator: torch.Generator) -> dict:
    """Weights, training state, and the settings that rebuild the model
    (``--eval_only`` and explain.py read them)."""
    payload = {"state_dict": export_state_dict(model), "epoch": epoch,
               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "rng": rng_state(generator)}
    payload.update({k: getattr(args, k) for k in MODEL_SETTINGS if k != "architecture"})
    payload["architecture"] = args.network
    return payload


def acceleration(args, device: torch.device) -> Acceleration:
    return check_amp(device, Acceleration(amp=args.amp, channels_last=args.channels_last,
                                          compile=args.compile))


def loader_settings(args, train: bool, device: torch.device) -> LoaderSettings:
    spec = get_spec(args.network, args.crop_size)
    seeds = args.segmentation and not train  # seed maps at the images' own size
    return LoaderSettings(1 if seeds else args.batch_size, args.workers, args.resize_size,
                          args.crop_size, args.proxy_training_set and train,
                          args.num_val_sample_per_class, args.skip_bad_images,
                          args.prefetch_factor,
                          device if args.decode_on_device and not seeds else None,
                          spec.mean, spec.std, multi_label=args.segmentation,
                          augment=args.train_augment, resize_long=tuple(args.resize_long),
                          keep_size=seeds)


def train(args, model: CAMModel, spec: ArchitectureSpec, device: torch.device,
          tracker: Tracker, generator: torch.Generator, ctx: DistContext = DistContext(),
          accel: Acceleration = Acceleration()) -> None:
    sampler_factory = None
    forward = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data import DistributedSampler
        sampler_factory = lambda dataset, split: DistributedSampler(  # noqa: E731
            dataset, ctx.world_size, ctx.rank, shuffle=True, seed=args.seed)
        forward = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    train_split = args.train_split
    loaders = get_data_loader(
        {train_split: args.image_root}, args.split_metadata_root,
        loader_settings(args, True, device),
        splits=(train_split,), num_classes=args.num_classes, generator=generator,
        sampler_factory=sampler_factory, train_split=train_split)
    loaders["train"] = loaders.pop(train_split)
    cfg = OptimConfig(args.lr, args.momentum, args.weight_decay, args.lr_classifier_ratio,
                      args.lr_decay_frequency, args.nesterov, args.lr_schedule, args.poly_power)
    groups = (recam_groups(model, cfg) if args.recam and args.recam_trains == "all"
              else None)
    rule = spec.lr_rule if args.lr_groups == "published" else None  # None: the head alone
    optimizer = build_optimizer(model, cfg, rule, groups)
    steps_per_epoch = len(loaders["train"])
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch * args.epochs)
    schedule = lr_schedule(model, cfg, rule, args.epochs, groups, steps_per_epoch)
    if ctx.is_main:
        write_json(schedule, os.path.join(args.log_folder, "lr_schedule.json"))
        for group in schedule["groups"] if args.epochs else ():
            log.info("lr by epoch %s for %s", " ".join(f"{lr:.3g}" for lr in group["lr"]),
                     ", ".join(group["params"]))
    first_epoch, position = 1, None
    if args.resume:
        first_epoch, position = resume_training(args, model, optimizer, scheduler, generator)
    log.info("training %s (%s) for epochs %d..%d on %d images", args.architecture,
             args.model_structure, first_epoch, args.epochs, len(loaders["train"].dataset))
    sampler = loaders["train"].sampler
    batches_per_epoch = len(loaders["train"])
    with StopSignals() as signals:
        signals.deferred = True  # checked after each step (wsol.runtime.interruption)
        for epoch in range(first_epoch, args.epochs + 1):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            epoch_start = generator.get_state()  # what the epoch's order is drawn from
            if position is not None:
                generator.set_state(position.pop("generator"))
                epoch_start = generator.get_state()
                sampler.resume_after(position["batches"] * args.batch_size)
                position = EpochProgress(**{k: position[k] for k in
                                            ("batches", "loss_sum", "correct", "seen")})
            stats, done = train_one_epoch(
                model, loaders["train"], optimizer, device, epoch,
                show_progress=sys.stderr.isatty() and ctx.is_main, forward=forward,
                accel=accel, start=position, stop=lambda: _agreed(signals.received, ctx, device),
                recam_weight=args.recam_weight if args.recam else None,
                step_scheduler=scheduler.step if scheduler.per_step else None)
            position = None
            if stats is None:
                raise _preempted(args, model, epoch, done, batches_per_epoch, epoch_start,
                                 optimizer, scheduler, generator, signals, ctx)
            if not scheduler.per_step:
                scheduler.step()
            if ctx.is_main:
                tracker.log({**stats, "lr": optimizer.param_groups[0]["lr"]}, step=epoch)
                payload = checkpoint_payload(model, args, epoch, optimizer, scheduler, generator)
                path = checkpoint_path(args.log_folder, str(epoch))
                save_checkpoint(payload, path)
                link_checkpoint(path, checkpoint_path(args.log_folder, "last"))
                _remove(checkpoint_path(args.log_folder, INTERRUPTED))
            if _agreed(signals.received, ctx, device):  # arrived during the save
                raise Interrupted(signals.received, f"stopped by {signals.name} after epoch "
                                  f"{epoch}; continue with --resume (from "
                                  f"{checkpoint_path(args.log_folder, str(epoch))})")
    if args.epochs == 0 and ctx.is_main:
        save_checkpoint(checkpoint_payload(model, args, 0, optimizer, scheduler, generator),
                        checkpoint_path(args.log_folder, "last"))


INTERRUPTED = "interrupted"  # <folder>/interrupted_checkpoint.pth.tar: a mid-epoch state


def _agreed(received: int | None, ctx: DistContext, device: torch.device) -> bool:
    """Whether to stop now; under torchrun every rank stops at the same step
    (a one-element all-reduce per step)."""
    if not ctx.enabled:
        return received is not None
    import torch.distributed as dist
    flag = torch.tensor([int(received is not None)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _preempted(args, model: CAMModel, epoch: int, done: EpochProgress, batches_per_epoch: int,
               epoch_start, optimizer, scheduler, generator: torch.Generator,
               signals: StopSignals, ctx: DistContext) -> Interrupted:
    """Write the mid-epoch checkpoint (model, optimizer, scheduler, random
    states, and where the epoch stands) and say how to continue."""
    path = checkpoint_path(args.log_folder, INTERRUPTED)
    if ctx.is_main:
        payload = checkpoint_payload(model, args, epoch - 1, optimizer, scheduler, generator)
        payload["position"] = {"epoch": epoch, "generator": epoch_start, **done.as_dict()}
        save_checkpoint(payload, path)
    signum = signals.received or 15
    return Interrupted(signum, f"stopped by {signals.name or 'a signal'} in epoch {epoch} after "
                       f"batch {done.batches} of {batches_per_epoch}; its "
                       f"state is in {path}: continue with --resume")


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def resume_training(args, model: CAMModel, optimizer, scheduler,
                    generator: torch.Generator) -> tuple[int, dict | None]:
    """Restore the newest complete checkpoint of any kind (mid-epoch, last,
    or an epoch's; one that cannot be read is passed over with a warning):
    model, optimizer, LR schedule and random states.  Returns the epoch to
    run next and, for a mid-epoch checkpoint, where that epoch stands."""
    candidates = []
    paths = config.resume_candidates(args.log_folder)
    for path in paths:
        if any(other != path and os.path.samefile(other, path) for other in paths
               if other < path):
            continue  # last_checkpoint is a link to an epoch's
        try:
            checkpoint = load_checkpoint_file(path)
        except CheckpointError as error:
            log.warning("--resume: passing over %s", error)
            continue
        missing = [k for k in ("optimizer", "scheduler", "rng", "epoch") if k not in checkpoint]
        if missing:
            log.warning("--resume: passing over %s: it lacks %s", path, ", ".join(missing))
            continue
        position = checkpoint.get("position")
        rank = (int(checkpoint["epoch"]), position["batches"] if position else 0)
        candidates.append((rank, path, checkpoint))
    if not candidates:
        raise CheckpointError(f"--resume: no complete checkpoint in {args.log_folder} was "
                              f"written by a training run of this toolkit")
    (epoch, batches), path, checkpoint = max(candidates, key=lambda c: c[0])
    load_into_cam_model(model, path, checkpoint)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_state(checkpoint["rng"], generator)
    position = checkpoint.get("position")
    if position:
        log.info("resuming epoch %d after batch %d from %s", position["epoch"], batches, path)
        return int(position["epoch"]), dict(position)
    log.info("resuming after epoch %d from %s", epoch, path)
    return epoch + 1, None


def load_for_evaluation(args, model: CAMModel) -> str:
    """Load the checkpoint that --eval_only scores; fail at once if missing."""
    path = checkpoint_path(args.log_folder, args.eval_checkpoint_type)
    if os.path.isfile(path):
        load_into_cam_model(model, path)
        return path
    if args.model_structure == "vanilla" and args.ft_ckpt:
        load_into_cam_model(model, args.ft_ckpt)
        return args.ft_ckpt
    raise CheckpointError(f"no checkpoint to evaluate: {path} does not exist (train first, "
                          f"or check --experiment_name/--eval_checkpoint_type)")


def evaluate(args, model: CAMModel, device: torch.device,
             ctx: DistContext = DistContext(), accel: Acceleration = Acceleration()) -> dict:
    from inference import CAMComputer, EvalSettings

    loader = get_data_loader(
        {args.split: args.image_root}, args.split_metadata_root,
        loader_settings(args, False, device),
        splits=(args.split,), num_classes=args.num_classes,
        sampler_factory=lambda dataset, split: ShardSampler(len(dataset), ctx.rank,
                                                            ctx.world_size),
        train_split="")[args.split]  # evaluation: no split augments, even VOC's "train"
    scoremap_root = (os.path.join(args.log_folder, "scoremaps", args.split)
                     if args.save_scoremaps else None)  # each rank writes its own images
    spec = get_spec(args.network, args.crop_size)
    settings = EvalSettings(
        methods=config.cam_methods(args, torch.Generator(device=device).manual_seed(args.seed)),
        branches=args.cam_branches, clamp=not args.no_clamp,
        box_metrics=args.dataset_name in config.BOX_DATASETS,
        mask_metrics=args.dataset_name in config.MASK_DATASETS,
        cam_curve_interval=args.cam_curve_interval, iou_threshold_list=args.iou_threshold_list,
        multi_contour_eval=args.multi_contour_eval, loc_threshold=args.loc_threshold,
        first_box_only=args.first_box_only, scoremap_root=scoremap_root,
        map_style=args.map_style, threshold_list=args.threshold_list,
        fidelity=args.fidelity, fidelity_steps=args.fidelity_steps,
        fidelity_protocol=args.fidelity_protocol, box_threads=args.box_threads,
        normalization=(spec.mean, spec.std),
        show_progress=sys.stderr.isatty() and ctx.is_main, accel=accel,
        overlay_count=getattr(args, "save_overlays", 0),
        overlay_root=os.path.join(args.log_folder, "overlays", args.split))
    metadata_root = os.path.join(args.split_metadata_root, args.split)
    if args.segmentation:
        from inference import SeedComputer
        computer = SeedComputer(model, loader, metadata_root, args.dataset_mask_root,
                                args.dataset_name, args.split, settings, device,
                                args.num_classes, args.seed_threshold, args.tta, ctx,
                                args.seed_resize)
    else:
        computer = CAMComputer(model, loader, metadata_root, args.dataset_mask_root,
                               args.dataset_name, args.split, settings, device, ctx)
    results = computer.compute_and_evaluate()
    results.update({"experiment": args.experiment_name, "dataset": args.dataset_name,
                    "architecture": args.network, "model_structure": args.model_structure,
                    "split": args.split, "choices": args.choices.as_dict(),
                    "replay": args.replay})
    return results


def run(args) -> dict | None:
    """Train (unless --eval_only) and evaluate one experiment.  Under torchrun
    every rank computes; only rank 0 writes files and logs.  A run that fails
    before its first checkpoint removes the folder it created."""
    ctx = init_distributed(args.dist_timeout)
    folder, created, lock = None, False, None
    if ctx.is_main:
        folder, created, lock = config.configure_log_folder(args)
    try:
        if ctx.is_main:
            config.configure_logging(folder)
            for note in args.notes:
                log.info("%s", note)
            config.save_config(args, os.path.join(folder, "config.json" if not args.eval_only
                                                  else "config_eval.json"))
        else:
            config.configure_logging(None)
            logging.getLogger().setLevel(logging.WARNING)
        with StopSignals():  # SIGTERM/SIGUSR1 outside training: stop with a message
            return _run(args, ctx)
    except BaseException:
        if created and not config.holds_results(folder):
            config.configure_logging(None)  # release log.log before removing it
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.release()


def _run(args, ctx: DistContext) -> dict | None:
    _barrier(ctx)
    device = (torch.device("cuda", ctx.local_rank) if ctx.enabled and torch.cuda.is_available()
              else resolve_device(args.gpus))
    generator = seed_everything(args.seed)
    if args.dataset_name in ("SYNTH", "SYNTH_ML") and not os.path.isdir(args.split_metadata_root):
        if ctx.is_main:  # the built-in datasets are generated the first time they are needed
            if args.dataset_name == "SYNTH":
                from wsol.data.synth import ensure_synth
                ensure_synth(args.data_root, args.metadata_root, args.mask_root)
            else:
                from wsol.data.synth_ml import ensure_synth_ml
                ensure_synth_ml(args.data_root, args.metadata_root, args.mask_root)
        _barrier(ctx)
    accel = acceleration(args, device)
    model, spec = build_model(args)
    model = prepare_model(model, device, accel)
    evaluated = load_for_evaluation(args, model) if args.eval_only else None
    preflight(args, model, device)
    tracker = Tracker(args.wandb if ctx.is_main else "off", args.project,
                      args.wandb_name or args.experiment_name,
                      {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool))},
                      args.log_folder)
    try:
        if args.eval_only:
            log.info("evaluating %s", evaluated)
        else:
            train(args, model, spec, device, tracker, generator, ctx, accel)
        if getattr(args, "skip_eval", False):
            return None
        start = time.perf_counter()
        results = evaluate(args, model, device, ctx, accel)
        results["eval_seconds"] = time.perf_counter() - start
        results["evaluation"] = evaluation_record(args)
        results["run"] = run_record(args.argv, os.path.dirname(os.path.abspath(__file__)),
                                    describe_device(device), args.seed)
        if ctx.is_main:
            print(format_table(results, "MaxBoxAccV2" if args.multi_contour_eval
                               else "MaxBoxAcc"))
            write_json(results, results_path(args.log_folder, args.split, results["evaluation"]),
                       "the results (printed above) to")
            tracker.log({**{f"{r['method']}/{r['branch']}/{k}": v for r in results["rows"]
                            for k, v in r.items() if isinstance(v, (int, float))},
                         **results["classification"]})
            if getattr(args, "plots", False) or getattr(args, "save_overlays", 0):
                from wsol.visualize import write_pictures
                write_pictures(args.log_folder, args.split, results, args.plots,
                               bool(args.save_overlays), tracker)
        return results
    finally:
        tracker.finish()


def preflight(args, model: CAMModel, device: torch.device) -> None:
    """What can fail later is checked before any work: the splits' images and
    metadata, and whether the model's CAM layer and head fit the methods
    (wsol.cams.verify_cam_model, on a random image of the input size)."""
    splits = (([] if args.eval_only else [args.train_split])
              + ([] if args.skip_eval else [args.split]))
    for split in splits:
        if not os.path.isdir(args.image_root):
            raise MetadataError(f"image folder not found: {args.image_root} (check --data_root: "
                                f"images of dataset D are under <data_root>/D)")
        metadata = configure_metadata(os.path.join(args.split_metadata_root, split))
        if args.segmentation:
            get_multi_labels(metadata)
            if split == args.split and not args.skip_eval:
                get_segmentation_paths(metadata)
        elif split == args.split and not args.skip_eval:
            GroundTruth(metadata, mask_root=args.dataset_mask_root,
                        boxes=args.dataset_name in config.BOX_DATASETS,
                        masks=args.dataset_name in config.MASK_DATASETS)
        else:
            get_class_labels(metadata)
    if not args.skip_eval:
        probe = torch.randn(2, 3, args.crop_size, args.crop_size,
                            generator=torch.Generator().manual_seed(0)).to(device)
        verify_cam_model(model, probe, config.cam_methods(args), args.cam_branches)


def evaluation_record(args) -> dict:
    """What an evaluation's numbers depend on besides the model."""
    return {"split": args.split, "checkpoint": args.eval_checkpoint_type if args.eval_only
            else "last", "methods": [repr(m) for m in config.cam_methods(args)],
            "branches": list(args.cam_branches), "clamp": not args.no_clamp,
            "cam_curve_interval": args.cam_curve_interval,
            "iou_threshold_list": list(args.iou_threshold_list),
            "loc_threshold": args.loc_threshold, "multi_contour_eval": args.multi_contour_eval,
            "choices": args.choices.as_dict(), "fidelity": args.fidelity,
            "fidelity_steps": args.fidelity_steps, "crop_size": args.crop_size,
            "recam_map": args.recam_map, "recam_clamp": args.recam_clamp,
            "tta_scales": list(args.tta), "seed_threshold": args.seed_threshold}


def results_path(folder: str, split: str, evaluation: dict) -> str:
    """``results_<split>.json``, unless it holds an evaluation of other
    settings: then ``results_<split>_<fingerprint>.json`` (nothing is overwritten
    by numbers of other settings)."""
    path = os.path.join(folder, f"results_{split}.json")
    if os.path.isfile(path):
        try:
            previous = read_json(path).get("evaluation")
        except (OSError, ValueError, AttributeError):
            previous = None
        if previous is not None and previous != json_ready(evaluation):
            digest = hashlib.sha1(json.dumps(json_ready(evaluation), sort_keys=True)
                                  .encode()).hexdigest()[:8]
            path = os.path.join(folder, f"results_{split}_{digest}.json")
            log.info("results_%s.json holds an evaluation of other settings; writing %s",
                     split, os.path.basename(path))
    return path


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({os.cpu_count()} cores)"


def _barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        torch.distributed.barrier()


# The CPU demo: small backbone, small images, few epochs (about 3 minutes on
# 2 cores).  The same code path runs the paper's experiments at 224 px.
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
    vanilla_args = config.get_configs([*DEMO_COMMON, *DEMO_VANILLA, "--override_cache",
                                       "--skip_eval", *extra])
    vanilla_ckpt = checkpoint_path(vanilla_args.log_folder, "last")
    b2_args = config.get_configs([*DEMO_COMMON, *DEMO_B2, "--ft_ckpt", vanilla_ckpt, *extra])
    if os.path.isfile(vanilla_ckpt):
        print(f"reusing the vanilla model {vanilla_ckpt} (delete it to retrain)")
    else:
        run(vanilla_args)
    results = run(b2_args)
    print(f"demo finished in {time.perf_counter() - start:.0f} s; results in "
          f"{os.path.join(b2_args.log_folder, 'results_test.json')}")
    return results


def print_choices() -> None:
    """``--list``: what --architecture, --method and --dataset_name take."""
    from wsol.architectures import ARCHITECTURES
    from wsol.cams import CAM_METHODS
    print("architectures (--architecture):")
    for name, spec in ARCHITECTURES.items():
        print(f"  {name:22s} {spec.description}")
    print("  timm:<model name>      any timm model (pip install timm)")
    print("CAM methods (--method, comma-separated, or all):")
    for name, method in CAM_METHODS.items():
        print(f"  {name:22s} {(type(method).__doc__ or '').splitlines()[0]}")
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
    candidates = config.resume_candidates(folder) if folder else []
    if not candidates:
        return "nothing was saved yet"
    newest = max(candidates, key=os.path.getmtime)
    return (f"the newest checkpoint is {newest}: --resume continues the training, "
            f"--eval_only evaluates it")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    folder, timeout = None, 0.0
    try:
        if "--list" in argv:
            print_choices()
            return 0
        if not argv or "--demo" in argv:
            run_demo([a for a in argv if a != "--demo"])
            return 0
        args = config.get_configs(argv)
        folder, timeout = args.log_folder, args.dist_timeout
        run(args)
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

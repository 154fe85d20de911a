"""Training a model for a run: the optimiser and schedule as published, the
epochs, a checkpoint after each, ``--resume`` from the newest complete
checkpoint, and pre-emption (a signal finishes the current step and saves a
mid-epoch checkpoint that ``--resume`` continues bit for bit).

The pieces (parameter groups, schedules, one epoch) are in
:mod:`wsol.runtime.training`; the checkpoint files in
:mod:`wsol.runtime.checkpoint`; the folder in :mod:`wsol.runtime.experiment`.
"""
from __future__ import annotations

import logging
import os
import sys

import torch

from wsol.architectures import ArchitectureSpec
from wsol.model import CAMModel
from wsol.runtime.acceleration import Acceleration
from wsol.runtime.build import loader_settings
from wsol.runtime.checkpoint import (CheckpointError, export_state_dict, link_checkpoint,
                                     load_checkpoint_file, load_into_cam_model, model_record,
                                     save_checkpoint)
from wsol.runtime.distributed import DistContext
from wsol.runtime.experiment import INTERRUPTED, checkpoint_path, resume_candidates
from wsol.runtime.interruption import Interrupted, StopSignals
from wsol.runtime.seeding import rng_state, set_rng_state
from wsol.wsol_methods import batch_augment, method_loss
from wsol.runtime.tracking import Tracker
from wsol.runtime.training import (EpochProgress, OptimConfig, build_optimizer, build_scheduler,
                                   lr_schedule, recam_groups, train_one_epoch)
from wsol.results import write_json
from wsol.settings import RunSettings

__all__ = ["Trainer", "optim_config"]

log = logging.getLogger(__name__)


def optim_config(settings: RunSettings) -> OptimConfig:
    o = settings.optim
    return OptimConfig(o.lr, o.momentum, o.weight_decay, o.lr_classifier_ratio,
                       o.lr_decay_frequency, o.nesterov, o.lr_schedule, o.poly_power)


class Trainer:
    """Trains ``model`` as ``settings`` say, writing into ``folder`` (rank 0)."""

    def __init__(self, settings: RunSettings, model: CAMModel, spec: ArchitectureSpec,
                 device: torch.device, generator: torch.Generator,
                 ctx: DistContext = DistContext(), accel: Acceleration = Acceleration(),
                 tracker: Tracker | None = None):
        self.settings, self.model, self.spec = settings, model, spec
        self.device, self.generator, self.ctx, self.accel = device, generator, ctx, accel
        self.tracker = tracker
        self.folder = settings.log_folder
        self.cfg = optim_config(settings)
        model_settings = settings.model
        self.groups = (recam_groups(model, self.cfg)
                       if model_settings.recam and model_settings.recam_trains == "all" else None)
        # None: the head alone is the classifier part (ReCAM's "newly added" group).
        self.rule = spec.lr_rule if settings.optim.lr_groups == "published" else None
        self.optimizer = build_optimizer(model, self.cfg, self.rule, self.groups)
        w = settings.wsol
        self.augment = batch_augment(
            w.method, has_grid_size=w.has_grid_size, has_drop_rate=w.has_drop_rate,
            cutmix_beta=w.cutmix_beta, cutmix_prob=w.cutmix_prob,
            seed=settings.choices.seed, rank=ctx.rank)
        self.method_loss = method_loss(w.method, w.spg_thresholds)

    # -- the run ---------------------------------------------------------------
    def fit(self) -> None:
        """Every epoch (from the resumed one), a checkpoint after each."""
        settings, model, ctx = self.settings, self.model, self.ctx
        epochs = settings.optim.epochs
        loader = self._loader()
        steps = len(loader)
        self.scheduler = build_scheduler(self.optimizer, self.cfg, steps * epochs)
        self._write_schedule(steps)
        first_epoch, position = 1, None
        if settings.runtime.resume:
            first_epoch, position = self.resume()
        log.info("training %s (%s%s) for epochs %d..%d on %d images", settings.model.network,
                 settings.model.model_structure,
                 "" if settings.wsol.method == "cam" else f", --wsol_method {settings.wsol.method}",
                 first_epoch, epochs, len(loader.dataset))
        forward = model
        if ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel
            forward = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        sampler = loader.sampler
        batch_size = settings.optim.batch_size
        with StopSignals() as signals:
            signals.deferred = True  # checked after each step (wsol.runtime.interruption)
            for epoch in range(first_epoch, epochs + 1):
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)
                epoch_start = self.generator.get_state()  # what the epoch's order is drawn from
                if position is not None:
                    self.generator.set_state(position.pop("generator"))
                    epoch_start = self.generator.get_state()
                    sampler.resume_after(position["batches"] * batch_size)
                    position = EpochProgress(**{k: position[k] for k in
                                                ("batches", "loss_sum", "correct", "seen")})
                stats, done = train_one_epoch(
                    model, loader, self.optimizer, self.device, epoch,
                    show_progress=sys.stderr.isatty() and ctx.is_main, forward=forward,
                    accel=self.accel, start=position, stop=lambda: self._agreed(signals.received),
                    recam_weight=settings.optim.recam_weight if settings.model.recam else None,
                    step_scheduler=self.scheduler.step if self.scheduler.per_step else None,
                    augment=self.augment, method_loss=self.method_loss)
                position = None
                if stats is None:
                    raise self._preempted(epoch, done, steps, epoch_start, signals)
                if not self.scheduler.per_step:
                    self.scheduler.step()
                if ctx.is_main:
                    if self.tracker is not None:
                        self.tracker.log({**stats, "lr": self.optimizer.param_groups[0]["lr"]},
                                         step=epoch)
                    path = checkpoint_path(self.folder, str(epoch))
                    save_checkpoint(self.payload(epoch), path)
                    link_checkpoint(path, checkpoint_path(self.folder, "last"))
                    _remove(checkpoint_path(self.folder, INTERRUPTED))
                if self._agreed(signals.received):  # arrived during the save
                    raise Interrupted(signals.received, f"stopped by {signals.name} after epoch "
                                      f"{epoch}; continue with --resume (from "
                                      f"{checkpoint_path(self.folder, str(epoch))})")
        if epochs == 0 and ctx.is_main:
            save_checkpoint(self.payload(0), checkpoint_path(self.folder, "last"))

    def _loader(self):
        from torch.utils.data import DistributedSampler

        from wsol.data.loaders import get_data_loader
        settings, ctx = self.settings, self.ctx
        data = settings.data
        split = data.train_split
        sampler_factory = None
        if ctx.enabled:
            sampler_factory = lambda dataset, _split: DistributedSampler(  # noqa: E731
                dataset, ctx.world_size, ctx.rank, shuffle=True, seed=settings.choices.seed)
        return get_data_loader(
            {split: data.image_root}, data.metadata_folder,
            loader_settings(settings, self.spec, train=True, device=self.device),
            splits=(split,), num_classes=settings.model.num_classes, generator=self.generator,
            sampler_factory=sampler_factory, train_split=split)[split]

    def _write_schedule(self, steps_per_epoch: int) -> None:
        epochs = self.settings.optim.epochs
        schedule = lr_schedule(self.model, self.cfg, self.rule, epochs, self.groups,
                               steps_per_epoch)
        if self.ctx.is_main:
            write_json(schedule, os.path.join(self.folder, "lr_schedule.json"))
            for group in schedule["groups"] if epochs else ():
                log.info("lr by epoch %s for %s", " ".join(f"{lr:.3g}" for lr in group["lr"]),
                         ", ".join(group["params"]))

    # -- checkpoints --------------------------------------------------------------
    def payload(self, epoch: int) -> dict:
        """Weights, training state, and the settings that rebuild the model
        (``--eval_only`` and explain.py read them)."""
        return {"state_dict": export_state_dict(self.model), "epoch": epoch,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng_state(self.generator),
                **model_record(self.settings)}

    def resume(self) -> tuple[int, dict | None]:
        """Restore the newest complete checkpoint of any kind (mid-epoch, last,
        or an epoch's; one that cannot be read is passed over with a warning):
        model, optimizer, LR schedule and random states.  Returns the epoch to
        run next and, for a mid-epoch checkpoint, where that epoch stands."""
        candidates = []
        paths = resume_candidates(self.folder)
        for path in paths:
            if any(other != path and os.path.samefile(other, path) for other in paths
                   if other < path):
                continue  # last_checkpoint is a link to an epoch's
            try:
                checkpoint = load_checkpoint_file(path)
            except CheckpointError as error:
                log.warning("--resume: passing over %s", error)
                continue
            missing = [k for k in ("optimizer", "scheduler", "rng", "epoch")
                       if k not in checkpoint]
            if missing:
                log.warning("--resume: passing over %s: it lacks %s", path, ", ".join(missing))
                continue
            position = checkpoint.get("position")
            rank = (int(checkpoint["epoch"]), position["batches"] if position else 0)
            candidates.append((rank, path, checkpoint))
        if not candidates:
            raise CheckpointError(f"--resume: no complete checkpoint in {self.folder} was "
                                  f"written by a training run of this toolkit")
        (epoch, batches), path, checkpoint = max(candidates, key=lambda c: c[0])
        load_into_cam_model(self.model, path, checkpoint)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        set_rng_state(checkpoint["rng"], self.generator)
        position = checkpoint.get("position")
        if position:
            log.info("resuming epoch %d after batch %d from %s", position["epoch"], batches,
                     path)
            return int(position["epoch"]), dict(position)
        log.info("resuming after epoch %d from %s", epoch, path)
        return epoch + 1, None

    # -- stopping -----------------------------------------------------------------
    def _agreed(self, received: int | None) -> bool:
        """Whether to stop now; under torchrun every rank stops at the same
        step (a one-element all-reduce per step)."""
        if not self.ctx.enabled:
            return received is not None
        import torch.distributed as dist
        flag = torch.tensor([int(received is not None)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _preempted(self, epoch: int, done: EpochProgress, batches_per_epoch: int,
                   epoch_start, signals: StopSignals) -> Interrupted:
        """Write the mid-epoch checkpoint (model, optimizer, scheduler, random
        states, and where the epoch stands) and say how to continue."""
        path = checkpoint_path(self.folder, INTERRUPTED)
        if self.ctx.is_main:
            payload = self.payload(epoch - 1)
            payload["position"] = {"epoch": epoch, "generator": epoch_start, **done.as_dict()}
            save_checkpoint(payload, path)
        signum = signals.received or 15
        return Interrupted(signum, f"stopped by {signals.name or 'a signal'} in epoch {epoch} "
                           f"after batch {done.batches} of {batches_per_epoch}; its state is in "
                           f"{path}: continue with --resume")


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass

"""Training: learning-rate groups and schedule as published, and the epoch loop.

Learning rates follow wsolevaluation's rule, which the method's public code
inherits and which its published ``--lr`` values mean (docs/reproducing.md):
each network's "feature" part trains at ``lr`` and the rest at
``lr * lr_classifier_ratio``, the parts told apart by substrings of the
parameter names (:class:`wsol.architectures.LRRule`).  Networks without a
published rule put the head and the sigmoid branch in the classifier part.
Frozen parameters are in no group.

The learning rate is multiplied by 0.1 *before* epochs ``f, 2f, 3f, ...``
(1-based; ``f = lr_decay_frequency``), by repeated multiplication as the
public code does: with ``f = 3``, epochs 1-2 run at ``lr``, 3-5 at ``0.1 lr``,
6-8 at ``0.01 lr`` and 9-10 at ``0.001 lr``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import DataLoader

from wsol.architectures import LRRule
from wsol.errors import UserError
from wsol.dual_branch import SIGMOID_BRANCH, training_loss
from wsol.recam import multi_hot, reactivation_loss
from wsol.wsol_methods import BatchMix
from wsol.model import CAMModel
from wsol.runtime.acceleration import Acceleration, autocast, to_device
from wsol.runtime.progress import progress

__all__ = ["OptimConfig", "ParamGroup", "parameter_groups", "build_optimizer",
           "build_scheduler", "decayed_lr", "lr_schedule", "train_one_epoch", "EpochProgress",
           "recam_groups",
           "TrainingDiverged"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimConfig:
    lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_classifier_ratio: float = 10.0
    lr_decay_frequency: int = 3
    nesterov: bool = True
    schedule: str = "step"      # "step" (the method's) or "poly" (ReCAM's, per step)
    poly_power: float = 0.9


@dataclass
class ParamGroup:
    names: list[str]               # public parameter names
    params: list[torch.nn.Parameter]
    lr: float
    classifier: bool               # trains at lr x lr_classifier_ratio


def _is_classifier(public: str, internal: str, model: CAMModel, rule: LRRule | None) -> bool:
    if rule is None:
        head = model.head_name
        return (public == head or public.startswith(head + ".")
                or internal.startswith(SIGMOID_BRANCH + "."))
    matched = any(pattern in public for pattern in rule.patterns)
    return matched if rule.matched_is_classifier else not matched


def parameter_groups(model: CAMModel, cfg: OptimConfig, rule: LRRule | None) -> list[ParamGroup]:
    """The trainable parameters in the public code's two groups (feature part
    at ``lr`` first, then the classifier part); empty groups are dropped."""
    feature = ParamGroup([], [], cfg.lr, False)
    classifier = ParamGroup([], [], cfg.lr * cfg.lr_classifier_ratio, True)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        public = model.public_name(name)
        group = classifier if _is_classifier(public, name, model, rule) else feature
        group.names.append(public)
        group.params.append(p)
    groups = [g for g in (feature, classifier) if g.params]
    if not groups:
        raise ValueError("no trainable parameters: check --unfreeze_layer")
    return groups


def recam_groups(model: CAMModel, cfg: OptimConfig) -> list[ParamGroup]:
    """ReCAM's groups when everything trains: the re-activation head at
    ``lr``, everything else (backbone and BCE head) at ``0.1 lr``."""
    rest = ParamGroup([], [], cfg.lr * 0.1, False)
    head = ParamGroup([], [], cfg.lr, True)
    for name, p in model.named_parameters():
        if p.requires_grad:
            group = head if name.startswith("fc_re.") else rest
            group.names.append(model.public_name(name))
            group.params.append(p)
    return [g for g in (rest, head) if g.params]


def build_optimizer(model: CAMModel, cfg: OptimConfig, rule: LRRule | None = None,
                    groups: list[ParamGroup] | None = None) -> torch.optim.Optimizer:
    """SGD (Nesterov unless ``cfg.nesterov`` is off) over
    :func:`parameter_groups` (or the given ``groups``)."""
    groups = groups if groups is not None else parameter_groups(model, cfg, rule)
    return torch.optim.SGD([{"params": g.params, "lr": g.lr} for g in groups], lr=cfg.lr,
                           momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov and cfg.momentum > 0)


def decayed_lr(base: float, epoch: int, frequency: int) -> float:
    """The learning rate of 1-based ``epoch``: ``base`` times 0.1 once for
    every multiple of ``frequency`` reached, multiplied as the public code does."""
    lr = base
    for _ in range(epoch // frequency):
        lr *= 0.1
    return lr


class _StepDecayBeforeEpoch(torch.optim.lr_scheduler.LRScheduler):
    """:func:`decayed_lr` as a scheduler stepped after each epoch
    (``last_epoch`` = epochs completed)."""

    def __init__(self, optimizer: torch.optim.Optimizer, frequency: int):
        self.frequency = frequency
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [decayed_lr(base, self.last_epoch + 1, self.frequency) for base in self.base_lrs]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    total_steps: int = 0):
    """The epoch-level step decay, or ReCAM's poly schedule stepped after
    every optimisation step: ``lr x (1 - step / total_steps) ** power``
    (its ``per_step`` attribute says which)."""
    if cfg.schedule == "poly":
        if total_steps < 1:
            raise ValueError("the poly schedule needs the number of training steps")
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: (1.0 - min(step, total_steps) / total_steps) ** cfg.poly_power)
        scheduler.per_step = True
        return scheduler
    scheduler = _StepDecayBeforeEpoch(optimizer, cfg.lr_decay_frequency)
    scheduler.per_step = False
    return scheduler


def _prefixes(names: list[str], all_names: list[str]) -> list[str]:
    """The shortest dotted prefixes that cover ``names`` and nothing else of
    ``all_names`` (e.g. ``features``, ``fc2``, ``layer4``)."""
    chosen: list[str] = []
    wanted = set(names)
    for name in names:
        parts = name.split(".")
        for cut in range(1, len(parts) + 1):
            prefix = ".".join(parts[:cut])
            under = [n for n in all_names if n == prefix or n.startswith(prefix + ".")]
            if all(n in wanted for n in under):
                if prefix not in chosen:
                    chosen.append(prefix)
                break
    return chosen


def lr_schedule(model: CAMModel, cfg: OptimConfig, rule: LRRule | None,
                epochs: int, groups: list[ParamGroup] | None = None,
                steps_per_epoch: int = 0) -> dict:
    """The effective schedule, ``{"groups": [{"params": [prefixes], "lr": [lr of
    epoch 1, ...]}], "frozen": [prefixes]}`` (written as ``lr_schedule.json``);
    for the poly schedule the lr at the start of each epoch."""
    all_names = [model.public_name(n) for n, _ in model.named_parameters()]
    groups = groups if groups is not None else parameter_groups(model, cfg, rule)
    trained = {n for g in groups for n in g.names}
    frozen = [n for n in all_names if n not in trained]
    total = steps_per_epoch * epochs

    def lr(base: float, epoch: int) -> float:
        if cfg.schedule == "poly":
            return base * (1.0 - (epoch - 1) * steps_per_epoch / max(total, 1)) ** cfg.poly_power
        return decayed_lr(base, epoch, cfg.lr_decay_frequency)
    return {"groups": [{"params": _prefixes(g.names, all_names),
                        "lr": [lr(g.lr, e) for e in range(1, epochs + 1)]} for g in groups],
            "frozen": _prefixes(frozen, all_names), "schedule": cfg.schedule}


@dataclass
class EpochProgress:
    """How far an epoch got: batches trained and the running sums of its
    statistics, enough to continue an interrupted epoch bit for bit."""
    batches: int = 0
    loss_sum: float = 0.0      # sum over images of the loss (float64)
    correct: int = 0
    seen: int = 0

    def as_dict(self) -> dict:
        return {"batches": self.batches, "loss_sum": self.loss_sum, "correct": self.correct,
                "seen": self.seen}


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def train_one_epoch(model: CAMModel, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, show_progress: bool = True,
                    forward: torch.nn.Module | None = None,
                    accel: Acceleration = Acceleration(),
                    start: EpochProgress | None = None,
                    stop: Callable[[], bool] | None = None,
                    recam_weight: float | None = None,
                    step_scheduler: Callable[[], None] | None = None,
                    augment: Callable[..., BatchMix] | None = None,
                    method_loss: Callable[[dict, torch.Tensor], torch.Tensor] | None = None
                    ) -> tuple[dict[str, float] | None, EpochProgress]:
    """One pass over ``loader`` with :func:`wsol.dual_branch.training_loss`.

    Loss, accuracy and a non-finite-loss flag are kept on the device and read
    once at the end, so no step waits for the GPU.  ``forward`` is the module
    to call (the DistributedDataParallel wrapper under torchrun, or the
    model), ``model`` the CAMModel it wraps; ``accel`` its autocast and memory
    format (the model must already be prepared with
    :func:`wsol.runtime.acceleration.prepare_model`).  The losses are computed
    in float32 under ``--amp``.

    ``start``: the progress of an interrupted pass being continued (the
    loader then starts after those batches, see
    :meth:`wsol.data.loaders.AugmentationSeeds.resume_after`).  ``stop``:
    asked after every step; True ends the pass early.  Returns the epoch's
    statistics (None when stopped early) and its progress.  A NaN or infinite
    loss raises :class:`TrainingDiverged` naming the batch and the
    non-finite weights.

    ``recam_weight``: add ReCAM's SCE term (:func:`wsol.recam.reactivation_loss`)
    times this weight; the model needs its re-activation head.
    ``step_scheduler``: called after every optimisation step (a per-step
    learning-rate schedule, e.g. ReCAM's poly).  ``augment``: a WSOL method's
    batch augmentation (:func:`wsol.wsol_methods.batch_augment`; CutMix's loss
    mixes the two label sets' losses); ``method_loss``: its objective for the
    softmax head (ACoL's, SPG's: :func:`wsol.wsol_methods.method_loss`; the
    labels go into the forward of networks that take them).  Multi-label labels
    (multi-hot [B, C]) count a hit when the top class is one of the image's.
    """
    forward = forward or model
    model.train()
    dual = model.is_dual
    start = start or EpochProgress()
    total_loss = torch.full((), start.loss_sum, device=device, dtype=torch.float64)
    correct = torch.full((), start.correct, device=device, dtype=torch.long)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)  # batch of a NaN/inf loss
    seen = start.seen
    batch = start.batches
    stopped = False
    captured: dict[str, torch.Tensor] = {}
    hook = None
    if recam_weight is not None:
        hook = model.feature_module.register_forward_hook(
            lambda module, inputs, output: captured.__setitem__("A", output))
    try:
        batch, seen, stopped = _epoch_steps(
            model, loader, optimizer, device, epoch, show_progress, forward, accel, stop,
            recam_weight, step_scheduler, captured, total_loss, correct, first_bad, batch, seen,
            augment, method_loss)
    finally:
        if hook is not None:
            hook.remove()
    bad_batch = int(first_bad)
    if bad_batch >= 0:
        broken = [model.public_name(n) for n, p in model.named_parameters()
                  if not bool(torch.isfinite(p.detach()).all())]
        raise TrainingDiverged(
            f"epoch {epoch}, batch {bad_batch}: the training loss is NaN or infinite"
            + (f" and these weights are no longer finite: {', '.join(broken[:3])}"
               + (f" (+{len(broken) - 3} more)" if len(broken) > 3 else "") if broken else "")
            + "; the run stops without saving this epoch (lower --lr, or check the data)")
    done = EpochProgress(batch, float(total_loss), int(correct), seen)
    if stopped:
        return None, done
    if seen == 0:
        raise UserError("no training image could be read: every one was unreadable and "
                        "skipped (--skip_bad_images); fix or replace the images")
    stats = {"loss": done.loss_sum / seen, "train_top1": 100.0 * done.correct / seen}
    log.info("epoch %d: loss %.4f, train top-1 %.2f%% (%s branch)", epoch, stats["loss"],
             stats["train_top1"], "sigmoid" if dual else "softmax")
    return stats, done


def _epoch_steps(model, loader, optimizer, device, epoch, show_progress, forward, accel,
                 stop, recam_weight, step_scheduler, captured, total_loss, correct,
                 first_bad, batch, seen, augment=None,
                 method_loss=None) -> tuple[int, int, bool]:
    """The optimisation steps of :func:`train_one_epoch` (its sums are updated
    in place); returns (batches done, images seen, stopped early)."""
    dual = model.is_dual
    joint = dual and not model._only_branch_trains
    for images, labels, _ in progress(loader, f"epoch {epoch}", show_progress):
        batch += 1
        if labels.numel() == 0:  # every image of the batch was unreadable and skipped
            continue
        images = to_device(images, device, accel)
        labels = labels.to(device, non_blocking=True)
        mix = None if augment is None else augment(images, labels, epoch, batch)
        if mix is not None:
            images = mix.images
        with autocast(device, accel):
            out = forward(images, labels) if model.takes_labels else forward(images)
        scores = out["logits_sigmoid"] if dual else out["logits"]
        loss = training_loss(out, labels, joint, method_loss)
        if mix is not None and mix.labels_b is not None:  # CutMix: both images' labels
            loss = mix.lam * loss + (1.0 - mix.lam) * training_loss(out, mix.labels_b, joint)
        if recam_weight is not None:
            features = model.resolve_layout(captured["A"].shape,
                                            images.shape[-2:]).to_nchw(captured["A"])
            loss = loss + recam_weight * reactivation_loss(
                features.float(), model.mask_weights(detach=False), model.fc_re.weight,
                multi_hot(labels, model.num_classes))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step_scheduler is not None:
            step_scheduler()
        loss = loss.detach()
        first_bad.copy_(torch.where((first_bad < 0) & ~torch.isfinite(loss),
                                    torch.full_like(first_bad, batch), first_bad))
        total_loss += loss.double() * labels.shape[0]
        top = scores.detach().argmax(1)
        if labels.dim() == 2:  # multi-label: the top class is one of the image's
            correct += labels.gather(1, top[:, None]).gt(0).sum()
        else:
            correct += (top == labels).sum()
        seen += labels.shape[0]
        if stop is not None and stop():
            return batch, seen, True
    return batch, seen, False

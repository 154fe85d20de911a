"""Training loops: vanilla softmax training and sigmoid-branch fine-tuning."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from wsol.acceleration import Acceleration, autocast, to_device
from wsol.dual_branch import CAMModel
from wsol.losses import class_balanced_bce, softmax_cross_entropy

__all__ = ["OptimConfig", "build_optimizer", "build_scheduler", "train_one_epoch"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimConfig:
    lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_classifier_ratio: float = 10.0
    lr_decay_frequency: int = 3


def build_optimizer(model: CAMModel, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD Nesterov.  Vanilla: the head at ``lr * lr_classifier_ratio`` and the
    backbone at ``lr`` (wsolevaluation's recipe).  Fine-tuning: only the
    trainable parameters (the sigmoid branch), at ``lr``."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters: check --unfreeze_layer")
    if model.backbone_frozen:
        groups = [{"params": [p for _, p in trainable], "lr": cfg.lr}]
    else:
        head = f"model.{model.head_name}."
        groups = [
            {"params": [p for n, p in trainable if not n.startswith(head)], "lr": cfg.lr},
            {"params": [p for n, p in trainable if n.startswith(head)],
             "lr": cfg.lr * cfg.lr_classifier_ratio},
        ]
        groups = [g for g in groups if g["params"]]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=True)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig):
    """x0.1 every ``lr_decay_frequency`` epochs (stepped once per epoch)."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_decay_frequency, gamma=0.1)


def train_one_epoch(model: CAMModel, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, show_progress: bool = True,
                    forward: torch.nn.Module | None = None,
                    accel: Acceleration = Acceleration()) -> dict[str, float]:
    """One pass over ``loader``.  A dual-branch model trains its sigmoid branch
    with the class-balanced BCE; a vanilla model trains with cross-entropy.
    Loss and accuracy are summed on the device and read once at the end, so
    no step waits for the GPU.  ``forward`` is the module to call (the
    DistributedDataParallel wrapper under torchrun, or the model), ``model``
    the CAMModel it wraps; ``accel`` its autocast and memory format (the
    model must already be prepared with :func:`wsol.acceleration.prepare_model`).
    The losses are computed in float32 under ``--amp``."""
    forward = forward or model
    model.train()
    dual = model.is_dual
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not show_progress)
    for images, labels, _ in bar:
        if labels.numel() == 0:  # every image of the batch was unreadable and skipped
            continue
        images = to_device(images, device, accel)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, accel):
            out = forward(images)
        scores = (out["logits_sigmoid"] if dual else out["logits"]).float()
        if dual:
            loss = class_balanced_bce(scores, labels)
        else:
            loss = softmax_cross_entropy(scores, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach().double() * labels.shape[0]
        correct += (scores.detach().argmax(1) == labels).sum()
        seen += labels.shape[0]
    if seen == 0:
        raise ValueError("the training loader yielded no images")
    stats = {"loss": (total_loss / seen).item(), "train_top1": 100.0 * correct.item() / seen}
    log.info("epoch %d: loss %.4f, train top-1 %.2f%% (%s branch)", epoch, stats["loss"],
             stats["train_top1"], "sigmoid" if dual else "softmax")
    return stats

"""What a classification head is: its classes, its input, its class weights,
and where the logits are in a model's output.

CAM (class weights) exists only for a head that is an affine map of the
pooled activations: ``Linear``, a 1x1 ``Conv2d``, or a ``Sequential`` of
those with parts that fold into them (Flatten, Dropout, Identity, and a
BatchNorm1d with its running statistics).  Anything that depends on the
input in another way -- a ReLU of an MLP, a LayerNorm (it divides by each
image's own spread) -- has no class weights, and :func:`class_weights` says
so in one sentence (:class:`HeadNotLinear`).  Every gradient method works
for every head.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from wsol.errors import ModelCheckError

__all__ = ["HeadNotLinear", "head_classes", "head_channels", "class_dim", "class_weights",
           "LogitsExtractor", "check_weight_channels"]

_PASS_THROUGH = (nn.Flatten, nn.Dropout, nn.Identity)


class HeadNotLinear(ValueError):
    """The head is not an affine map of its input: CAM's class weights do not exist."""


def _layers(head: nn.Module) -> list[nn.Module]:
    return [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def head_classes(head: nn.Module, name: str) -> int:
    """Number of classes: the output size of the head's last Linear or conv."""
    layers = _layers(head)
    if not layers:
        raise ValueError(f"the head {name!r} ({type(head).__name__}) contains no Linear or "
                         f"Conv2d layer: name the module that outputs the logits")
    last = layers[-1]
    return last.out_features if isinstance(last, nn.Linear) else last.out_channels


def head_channels(head: nn.Module) -> int | None:
    """Number of input features of the head's first Linear or conv."""
    layers = _layers(head)
    if not layers:
        return None
    first = layers[0]
    return first.in_features if isinstance(first, nn.Linear) else first.in_channels


def class_dim(head: nn.Module) -> int:
    """Dimension of the head's output that holds the classes: 1 for a conv
    head (``[B, C, h, w]``), the last one otherwise."""
    return 1 if isinstance(_layers(head)[-1], nn.Conv2d) else -1


def class_weights(head: nn.Module, name: str, detach: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W [C, K], b [C])`` with ``head(x) = W x + b`` for a pooled input ``x``;
    :class:`HeadNotLinear` naming the part that is not affine otherwise.
    ``detach=False`` keeps them in the autograd graph (ReCAM's mask trains the
    head through them)."""
    parts = list(head) if isinstance(head, nn.Sequential) else [head]
    weight: torch.Tensor | None = None  # composed so far: y = weight @ x + bias
    bias: torch.Tensor | None = None
    for part in parts:
        if isinstance(part, _PASS_THROUGH):
            continue
        if isinstance(part, nn.Linear):
            w = part.weight
            b = part.bias if part.bias is not None else torch.zeros(w.shape[0], device=w.device)
        elif isinstance(part, nn.Conv2d) and part.kernel_size == (1, 1) and part.groups == 1:
            w = part.weight.reshape(part.out_channels, part.in_channels)
            b = part.bias if part.bias is not None else torch.zeros(w.shape[0], device=w.device)
        elif isinstance(part, nn.BatchNorm1d) and part.running_mean is not None and \
                not part.training:
            scale = torch.rsqrt(part.running_var + part.eps)
            if part.weight is not None:
                scale = scale * part.weight
            w = torch.diag(scale)
            b = -part.running_mean * scale + (part.bias if part.bias is not None else 0)
        else:
            raise HeadNotLinear(
                f"cam needs class weights, and the head {name!r} is not a linear map of the "
                f"pooled activations (it contains {type(part).__name__}): use a gradient "
                f"method (gradcam, gradcam++, xgradcam, layercam, ...)")
        if detach:
            w, b = w.detach(), b.detach()
        if weight is None:
            weight, bias = w, b
        else:
            weight, bias = w @ weight, w @ bias + b
    if weight is None:
        raise HeadNotLinear(f"the head {name!r} has no layer with class weights")
    return weight, bias


class LogitsExtractor:
    """Finds the logits in a model's output: a tensor as it is; a dict's
    ``"logits"`` entry (or its only tensor); a tuple's first element; an
    object's ``.logits``.  ``spec`` overrides: a key, an index or a callable."""

    def __init__(self, spec: str | int | Callable[[Any], torch.Tensor] | None = None):
        self.spec = spec

    def __call__(self, output: Any) -> torch.Tensor:
        spec = self.spec
        if callable(spec):
            found = spec(output)
        elif spec is not None:
            found = output[spec]
        elif isinstance(output, torch.Tensor):
            found = output
        elif isinstance(output, dict):
            tensors = {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}
            if "logits" in tensors:
                found = tensors["logits"]
            elif len(tensors) == 1:
                found = next(iter(tensors.values()))
            else:
                raise ValueError(f"the model returns a dict with keys {sorted(output)}: say "
                                 f"which holds the logits (CAMModel(..., output='key'))")
        elif isinstance(output, (tuple, list)) and output:
            found = output[0]
        elif isinstance(getattr(output, "logits", None), torch.Tensor):
            found = output.logits
        else:
            raise ValueError(f"cannot find the logits in the model's output "
                             f"({type(output).__name__}): pass CAMModel(..., output=...)")
        if not isinstance(found, torch.Tensor):
            raise ValueError(f"the model's logits are a {type(found).__name__}, not a tensor")
        return found


def check_weight_channels(weight: torch.Tensor, channels: int, head: str, layer: str) -> None:
    """The head's class weights ``[C, K]`` must act on the ``channels`` of the
    CAM layer: a :class:`wsol.errors.ModelCheckError` naming both otherwise."""
    if weight.shape[1] != channels:
        raise ModelCheckError(
            f"the head {head!r} reads {weight.shape[1]} features but the CAM layer "
            f"{layer!r} has {channels} channels: cam needs the head to act "
            f"on the spatial mean of the CAM layer's output")

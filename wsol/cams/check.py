"""Checking, once per model, that its CAM layer and head give meaningful maps.

A model wrapped with the wrong layer or head would give maps that look
plausible and are wrong; :func:`verify_cam_model` runs a real forward and
refuses such a model with one sentence naming the layer and what to pass
instead (README, "Your own model").
"""
from __future__ import annotations

from typing import Sequence

import torch

from wsol.cams.capture import branch_logits, capture, captured, full_precision
from wsol.cams.base import CAMMethod
from wsol.cams.registry import resolve_methods
from wsol.errors import ModelCheckError
from wsol.heads import check_weight_channels
from wsol.model import CAMModel

__all__ = ["ModelCheckError", "verify_cam_model", "supported_methods"]

Tensor = torch.Tensor


def verify_cam_model(model: CAMModel, images: Tensor,
                     methods: Sequence[CAMMethod | str] = ("cam",),
                     branches: Sequence[str] = ("softmax",)) -> None:
    """Check, on up to two of ``images``, that the model's CAM layer and head
    give meaningful maps for ``methods`` and ``branches``; a failed check is a
    :class:`ModelCheckError` naming the layer and what to pass instead.

    * the CAM layer runs exactly once per forward;
    * with a sigmoid branch, the model's output carries the head's output
      unchanged (the branch rides along the head's output, see
      :mod:`wsol.model`);
    * gradient methods: the target logit's gradient reaches the layer's map
      (a ViT's final tokens, for instance, only reach the class token);
    * ``cam``: the head has class weights and, for every class, the mean of the
      class map plus the bias equals the logit;
    * every method's own requirement (:meth:`CAMMethod.misfit`: LeGrad reads
      a ViT's attention, RefineCAM needs its layers).

    Runs once per model, CAM-layer layout, method kind and branch set (cached
    on the model; not per input size: seed maps come at every image's size), in
    float32, in eval mode.
    """
    chosen = resolve_methods(methods)
    for method in chosen:
        reason = method.misfit(model)
        if reason:
            raise ModelCheckError(reason)
    needs = {"layer"}
    needs |= {"weights"} if any(m.needs_class_weights for m in chosen) else set()
    needs |= {"gradients"} if any(m.uses_gradients for m in chosen) else set()
    key = (model.layout, tuple(branches))
    done = model.verified.get(key, set())
    if needs <= done:
        return
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(images.device.type, enabled=False):
            probe = images[:2].detach()
            _check_layer_and_branch(model, probe)
            if needs - {"layer"}:
                _check_maps(model, probe, branches, "gradients" in needs, "weights" in needs)
    finally:
        model.train(was_training)
    model.verified[key] = done | needs


def supported_methods(model: CAMModel, images: Tensor,
                      methods: Sequence[CAMMethod | str], branches: Sequence[str],
                      drop: bool = True) -> tuple[list[CAMMethod], str]:
    """The methods (checked with :func:`verify_cam_model`) and, with ``drop``,
    without those the model cannot give (cam without class weights -- a ViT's
    class-token head, a LayerNorm before the Linear --, legrad on a CNN, ...):
    then also the reasons, for a note.  Without ``drop`` a misfit is the
    check's error."""
    chosen = resolve_methods(methods)
    reasons = []
    if drop:
        fitting = []
        for method in chosen:
            reason = method.misfit(model)
            if reason:
                reasons.append(f"{method.name}: {reason}")
            else:
                fitting.append(method)
        chosen = fitting or chosen
    try:
        verify_cam_model(model, images, chosen, branches)
        return chosen, "; ".join(reasons)
    except ModelCheckError as error:
        rest = [m for m in chosen if not m.needs_class_weights]
        if not drop or not rest or len(rest) == len(chosen):
            raise
        verify_cam_model(model, images, rest, branches)
        return rest, "; ".join(reasons + [str(error)])


def _check_layer_and_branch(model: CAMModel, probe: Tensor) -> None:
    """The layer runs once; the branch does not change the head's logits."""
    layer = model.feature_layer_name
    names = {module: name for name, module in model.model.named_modules()}
    calls: dict[str, int] = {}
    order: list[str] = []

    def record(module, inputs, output):
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        order.append(name)

    handles = [m.register_forward_hook(record) for m in names]
    model._branch_enabled = False
    try:
        with torch.no_grad():
            base = model(probe)["logits"]
    finally:
        model._branch_enabled = True
        for handle in handles:
            handle.remove()
    runs = calls.get(layer, 0)
    if runs == 0:
        raise ModelCheckError(f"the CAM layer {layer!r} does not run in the model's forward: "
                              f"pass a module the forward uses")
    if runs > 1:
        raise ModelCheckError(f"the CAM layer {layer!r} runs {runs} times in one forward (a "
                              f"module used in several places): hook a module that runs "
                              f"once, e.g. {_runs_once_instead(layer, calls, order)!r}")
    if model.is_dual or model.has_recam:
        with torch.no_grad():
            both = model(probe)["logits"]
        if not torch.allclose(both, base, rtol=1e-5, atol=1e-6):
            raise ModelCheckError(
                f"the model changes the output of its head {model.head_name!r} across classes "
                f"before returning it, so the sigmoid branch cannot ride along: give as head "
                f"the module whose output the model returns")


def _runs_once_instead(layer: str, calls: dict[str, int], order: list[str]) -> str:
    """A module to hook instead of one that runs several times: its innermost
    parent that runs once, else the module that finished right after its last run."""
    parts = layer.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:cut])
        if calls.get(parent) == 1:
            return parent
    last = len(order) - 1 - order[::-1].index(layer)
    after = [n for n in order[last + 1:] if calls.get(n) == 1]
    return after[0] if after else "(none: wrap the second use in its own module)"


def _check_maps(model: CAMModel, probe: Tensor, branches: Sequence[str],
                needs_grad: bool, needs_weights: bool) -> None:
    """Checks that do not depend on the weights' values (a fresh torchvision
    ViT's head is all zeros): what the head reads, and whether it depends on
    the layer's map, then the sum identity with the weights as they are."""
    layer = model.feature_layer_name
    kept: dict[str, Tensor] = {}

    def keep_input(module, inputs, output) -> None:
        kept.setdefault("x", inputs[0])

    handle = model.head_module.register_forward_hook(keep_input)
    try:
        with capture(model, requires_grad=True) as hooked:
            outputs = model(probe)
            activation = captured(hooked)
            head_input = kept["x"]
            # The head's input along a random direction (inside: grad mode is on).
            direction = torch.randn(head_input.shape, generator=torch.Generator().manual_seed(0),
                                    dtype=head_input.dtype).to(head_input.device)
            projection = (head_input * direction).sum()
    finally:
        handle.remove()
    layout = model.resolve_layout(activation.shape, probe.shape[-2:])
    if needs_grad:
        # Zero gradient on the map means the map does not feed the head (true
        # for every weight value).
        grad = None
        if projection.requires_grad:
            (grad,) = torch.autograd.grad(projection, activation, allow_unused=True)
        if grad is None or not bool(layout.to_nchw(grad).ne(0).any()):
            raise ModelCheckError(
                f"the gradient of the logits does not reach the map of the CAM layer "
                f"{layer!r} (it is zero everywhere): the head reads something this layer's "
                f"map does not feed (for a ViT, the final tokens only reach the class "
                f"token); hook an earlier layer, e.g. the last block's first norm")
    if not needs_weights:
        return
    activations = layout.to_nchw(activation.detach())
    weights = {}
    for branch in branches:
        try:
            weights[branch] = model.class_weights(branch)
        except ValueError as error:
            raise ModelCheckError(str(error)) from None
        check_weight_channels(weights[branch][0], activations.shape[1], model.head_name,
                              model.feature_layer_name)
    pooled = activations.mean((2, 3))
    read = head_input.detach()
    read = read.mean((2, 3)) if read.dim() == 4 else read.flatten(1)
    if read.shape != pooled.shape or not torch.allclose(
            read, pooled, rtol=1e-4, atol=1e-5 * float(pooled.abs().max().clamp_min(1))):
        raise ModelCheckError(
            f"cam is not defined for the CAM layer {layer!r} with the head "
            f"{model.head_name!r}: the head does not read the spatial mean of this layer's "
            f"output, so class maps would not add up to the logits; "
            + _pooled_layer_hint(model, probe, read))
    for branch, (weight, bias) in weights.items():
        logits = full_precision(branch_logits(outputs, branch).detach())
        predicted = pooled @ weight.t() + bias
        scale = pooled.abs() @ weight.abs().t() + bias.abs()
        if bool(((predicted - logits).abs() > 1e-3 * scale + 1e-5).any()):
            raise ModelCheckError(
                f"cam is not defined for the model's {branch} logits: the head "
                f"{model.head_name!r} reads the mean of {layer!r}, but the model changes the "
                f"head's output before returning it; give as head the module whose output "
                f"the model returns")


def _pooled_layer_hint(model: CAMModel, probe: Tensor, head_input: Tensor) -> str:
    """Which module (run once) has the head's input as its spatial mean, if any."""
    pooled: dict[str, Tensor] = {}
    calls: dict[str, int] = {}

    def record(module, inputs, output, name):
        calls[name] = calls.get(name, 0) + 1
        if isinstance(output, torch.Tensor) and output.dim() in (3, 4):
            try:
                layout = model.resolve_layout(output.shape, probe.shape[-2:])
            except ValueError:
                return
            maps = layout.to_nchw(output.detach().float())
            if maps.shape[1] == head_input.shape[1] and maps.shape[2] * maps.shape[3] > 1:
                pooled[name] = maps.mean((2, 3))

    handles = [m.register_forward_hook(lambda mod, i, o, n=n: record(mod, i, o, n))
               for n, m in model.model.named_modules() if n]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    target = head_input.float()
    found = [n for n, p in pooled.items() if calls[n] == 1 and p.shape == target.shape
             and torch.allclose(p, target, rtol=1e-4, atol=1e-5)]
    if found:  # the last to finish: the outermost module holding that output
        return f"pass the layer whose output it pools: {found[-1]!r}"
    return ("no module's averaged output is its input (it reads e.g. a class token or "
            "normalised features): use a gradient method (gradcam, gradcam++, layercam, ...)")

"""CAM methods that read several layers of the shared forward (docs/method.md):
FullGrad (every bias and the input) and RefineCAM (Grad-CAM++ at several
layers, multiplied).  Their maps are at the input's size.

Both take their gradients from the shared backward: the forward records the
extra layers' outputs, and the one backward per branch and target set that
the other gradient methods use reaches them too (from the earliest recorded
layer on; FullGrad's from the input).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from wsol.cams.base import CAMInputs, CAMMethod
from wsol.cams.capture import PassNeeds
from wsol.cams.methods import gradcampp_weights
from wsol.dual_branch import clamp_weights
from wsol.model import CAMModel

__all__ = ["FullGrad", "RefineCAM", "bias_layers", "refine_layers"]

Tensor = torch.Tensor


def _normalise_each(maps: Tensor) -> Tensor:
    """pytorch-grad-cam's ``scale_cam_image``: (x - min) / (1e-7 + max(x - min))
    over the last two dimensions."""
    shifted = maps - maps.amin((-2, -1), keepdim=True)
    return shifted / (1e-7 + shifted.amax((-2, -1), keepdim=True))


def _resize(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, h, w] -> [B, *size], bilinear with half-pixel centres (OpenCV's
    INTER_LINEAR, which pytorch-grad-cam resizes with)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _nchw(name: str, tensor: Tensor) -> Tensor:
    if tensor.dim() != 4:
        raise ValueError(f"the layer {name!r} outputs {tuple(tensor.shape)}; this method "
                         f"reads feature maps [B, C, h, w]")
    return tensor


def bias_layers(model: CAMModel) -> dict[str, nn.Module]:
    """FullGrad's layers: every Conv2d and BatchNorm2d with a bias (exactly
    those types, as pytorch-grad-cam), by name -- but the head: the branches
    ride on its output, and for a 1x1-conv head before the pooling its term
    is a constant map, which normalises to zero anyway."""
    head = model.head_name
    return {name: m for name, m in model.model.named_modules()
            if type(m) in (nn.Conv2d, nn.BatchNorm2d) and m.bias is not None
            and name != head and not name.startswith(head + ".")}


def _effective_bias(module: nn.Module) -> Tensor:
    """The bias a layer adds: a conv's own; BatchNorm's b - mean * w / sqrt(var + eps)
    (the FullGrad paper's code)."""
    if isinstance(module, nn.BatchNorm2d):
        weight = module.weight if module.weight is not None else torch.ones_like(module.bias)
        return (module.bias - module.running_mean * weight /
                torch.sqrt(module.running_var + module.eps)).detach()
    return module.bias.detach()


class FullGrad(CAMMethod):
    """FullGrad (Srinivas & Fleuret, NeurIPS 2019), as pytorch-grad-cam computes it.
    map = N(|x * dy/dx|) summed over input channels
          + sum_layers sum_c U(N(|b_c * dy/dz_c|)),

    ``z`` the output of every Conv2d/BatchNorm2d with a bias, ``b`` its
    (effective) bias, ``N`` min-max normalisation of each channel of each
    image (1e-7 guard), ``U`` bilinear resizing to the input.  The map is at
    the input's size.  The resizing is linear, so each layer's channels are
    summed before it is resized once.  No channel weights: on the sigmoid
    branch only the target changes (the branch's logit); the absolute values
    leave nothing to clamp."""
    name = "fullgrad"
    uses_gradients = True

    def pass_needs(self, model: CAMModel) -> PassNeeds:
        return PassNeeds(layers=tuple(bias_layers(model)), input_gradient=True)

    def raw_map(self, inputs: CAMInputs) -> Tensor:
        grads, shared = inputs.grads, inputs.shared
        size = tuple(inputs.images.shape[-2:])
        total = _normalise_each((inputs.images.float() * grads.input).abs()).sum(1)
        for name, module in bias_layers(inputs.model).items():
            grad = _nchw(name, grads.layers[name])
            bias = _effective_bias(module).float().view(1, -1, 1, 1)
            total = total + _resize(_normalise_each((bias * grad).abs()).sum(1), size)
        del shared
        return total


def refine_layers(model: CAMModel) -> tuple[str, ...]:
    """RefineCAM's default layers for a built-in architecture (its table), else ()."""
    from wsol.architectures import ARCHITECTURES
    spec = ARCHITECTURES.get(model.architecture)
    return spec.refine_layers if spec is not None else ()


class RefineCAM(CAMMethod):
    """RefineCAM (pytorch-grad-cam, 2026): Grad-CAM++ at several layers, multiplied.

    From "How to Evaluate and Refine your CAM" (arXiv 2605.14641).
    map = prod_l N(U(N(ReLU(GradCAM++_l)))),

    ``N`` min-max normalisation (1e-7 guard), ``U`` bilinear resizing to the
    input, as pytorch-grad-cam's per-layer Grad-CAM++ calls.  ``layers``:
    module names; None takes the architecture's stages (the CAM layer and the
    two stages before it, e.g. layer2, layer3, layer4 of a ResNet; the table
    in wsol.architectures).  On the sigmoid branch each layer's channel
    weights are clamped at zero.  The map is at the input's size."""
    name = "refinecam"
    needs_gradients = True
    uses_gradients = True

    def __init__(self, layers: tuple[str, ...] | None = None):
        self.layers = tuple(layers) if layers else None
        if self.layers is not None and len(self.layers) < 2:
            raise ValueError(f"RefineCAM combines at least two layers, got {self.layers}")

    def chosen_layers(self, model: CAMModel) -> tuple[str, ...]:
        layers = self.layers or refine_layers(model)
        if not layers:
            raise ValueError(f"refinecam has no default layers for {model.architecture!r}: "
                             f"name them, e.g. --cam_option refinecam.layers=layer2+layer3+layer4")
        return layers

    def misfit(self, model: CAMModel) -> str | None:
        try:
            layers = self.chosen_layers(model)
        except ValueError as error:
            return str(error)
        modules = dict(model.model.named_modules())
        missing = [n for n in layers if n not in modules]
        if missing:
            return (f"refinecam: {', '.join(map(repr, missing))} is not a module of the model; "
                    f"name its layers, e.g. --cam_option refinecam.layers=layer3+layer4")
        return None

    def pass_needs(self, model: CAMModel) -> PassNeeds:
        others = tuple(n for n in self.chosen_layers(model) if n != model.feature_layer_name)
        return PassNeeds(gradients=True, layers=others)

    def raw_map(self, inputs: CAMInputs) -> Tensor:
        size = tuple(inputs.images.shape[-2:])
        product = None
        for name in self.chosen_layers(inputs.model):
            if name == inputs.model.feature_layer_name:
                a, g = inputs.activations, inputs.gradients
            else:
                a = _nchw(name, inputs.shared.layers[name]).float()
                g = inputs.grads.layers[name]
            g2 = g * g
            weights = gradcampp_weights(a, g, g2, g2 * g)
            if inputs.clamp:
                weights = clamp_weights(weights)
            cam = torch.einsum("bk,bkhw->bhw", weights, a).clamp_min(0)
            layer = _normalise_each(_resize(_normalise_each(cam), size).clamp_min(0))
            product = layer if product is None else product * layer
        return product

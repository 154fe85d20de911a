"""The one mechanism every CAM method shares: capture the CAM layer's output
during a forward and, when asked, differentiate target logits with respect
to it -- one forward, then one backward per branch through the head only.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from wsol.branches import branch_rule
from wsol.model import CAMModel

__all__ = ["ActivationCapture", "branch_logits", "full_precision", "target_gradients",
           "target_set_gradients",
           "forward_activations", "capture", "captured"]

Tensor = torch.Tensor


class ActivationCapture:
    """Context manager: records the output of ``module`` during one forward.

    With ``requires_grad`` the recorded activation is a fresh leaf that
    requires grad, and the rest of the forward runs on it, so the target
    logit can be differentiated with respect to ``A`` even when every
    parameter is frozen, the model is in eval mode, or the caller is inside
    ``torch.no_grad()``.  Everything before the CAM layer runs without a graph
    (nothing there needs one), so the backward only goes through the head.
    The grad mode and the hook are restored/removed on exit, even on errors.
    The activation is kept in the layer's own layout (``[B, K, h, w]``,
    channels-last or tokens); :class:`wsol.layouts.ResolvedLayout` reads it
    as maps.
    """

    def __init__(self, module: nn.Module, requires_grad: bool, name: str = "the CAM layer"):
        self.module = module
        self.name = name
        self.requires_grad = requires_grad
        self.activation: Tensor | None = None
        self._handle = None
        self._grad_mode = True

    def __enter__(self) -> "ActivationCapture":
        self._handle = self.module.register_forward_hook(self._hook)
        self._grad_mode = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        self._handle = None
        torch.set_grad_enabled(self._grad_mode)

    def _hook(self, module: nn.Module, inputs, output) -> Tensor:
        if not isinstance(output, torch.Tensor) or output.dim() not in (3, 4):
            raise TypeError(f"the CAM layer {self.name!r} must output a tensor [B, K, h, w], "
                            f"[B, h, w, K] or tokens [B, N, D], got "
                            f"{getattr(output, 'shape', type(output).__name__)}")
        if self.activation is not None:
            raise RuntimeError(f"the CAM layer {self.name!r} ran twice in one forward; hook a "
                               f"layer that runs once")
        # float32 even under bf16 autocast: the maps and dy/dA are formed in
        # float32 (the head itself still runs under the caller's autocast).
        activation = full_precision(output.detach())
        if self.requires_grad:
            # The head after this point must build a graph; the backbone before
            # it did not (grad mode was off), which is what makes it cheap.
            torch.set_grad_enabled(True)
            self.activation = activation.requires_grad_(True)
        else:
            self.activation = activation
        # The model continues on a copy: an in-place op after the CAM layer
        # (e.g. ReLU(inplace=True)) must not change the recorded A, and would
        # be illegal on a leaf that requires grad.
        return self.activation.clone()


def full_precision(tensor: Tensor) -> Tensor:
    """float16/bfloat16 (autocast outputs) -> float32; other dtypes unchanged."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def branch_logits(outputs: dict[str, Tensor | None], branch: str) -> Tensor:
    """The logits of ``branch`` among a CAMModel's outputs (wsol.branches)."""
    return outputs[branch_rule(branch).logits_key]


def capture(model: CAMModel, requires_grad: bool) -> ActivationCapture:
    return ActivationCapture(model.feature_module, requires_grad, model.feature_layer_name)


def target_gradients(model: CAMModel, images: Tensor, targets: Tensor | None,
                      branches: Sequence[str]) -> tuple[dict, Tensor, Tensor, dict]:
    """One forward, then one backward per branch through the head only:
    (outputs, targets, A, {branch: dy/dA}), ``A`` and the gradients as
    ``[B, K, h, w]``.

    The batch is differentiated as the sum of each image's target logit; in
    eval mode the images do not interact, so each image gets its own gradient.
    """
    outputs, sets, activation, gradients = target_set_gradients(
        model, images, None if targets is None else targets[None], branches)
    return outputs, sets[0], activation, {b: g[0] for b, g in gradients.items()}


def target_set_gradients(model: CAMModel, images: Tensor, target_sets: Tensor | None,
                         branches: Sequence[str]) -> tuple[dict, Tensor, Tensor, dict]:
    """:func:`target_gradients` for ``J`` target sets at once (``[J, B]``: e.g.
    each image's j-th ground-truth class of multi-label data), sharing the
    forward: (outputs, target sets, A, {branch: [J gradients]})."""
    with capture(model, requires_grad=True) as hooked:
        outputs = model(images)
        activation = captured(hooked)
        if target_sets is None:
            target_sets = outputs["logits"].argmax(1)[None]
        # Still inside: grad mode is on from the CAM layer to here.
        scores = [(b, full_precision(branch_logits(outputs, b).gather(1, t[:, None])).sum())
                  for b in branches for t in target_sets]
    if not all(score.requires_grad for _, score in scores):
        raise RuntimeError("the target logit does not depend on the CAM layer output "
                           f"({model.feature_layer_name!r}); check the CAM layer and "
                           "that the model does not disable autograd in its forward")
    layout = model.resolve_layout(activation.shape, images.shape[-2:])
    gradients: dict[str, list[Tensor]] = {b: [] for b in branches}
    for i, (branch, score) in enumerate(scores):
        (grad,) = torch.autograd.grad(score, activation, retain_graph=i < len(scores) - 1)
        gradients[branch].append(layout.to_nchw(grad))
    return outputs, target_sets, layout.to_nchw(activation.detach()), gradients


def forward_activations(model: CAMModel, images: Tensor) -> tuple[dict, Tensor]:
    """One forward without gradients: (outputs, A as [B, K, h, w])."""
    with capture(model, requires_grad=False) as hooked:
        outputs = model(images)
    activation = captured(hooked)
    return outputs, model.resolve_layout(activation.shape, images.shape[-2:]).to_nchw(activation)


def captured(hook: ActivationCapture) -> Tensor:
    if hook.activation is None:
        raise RuntimeError(f"the CAM layer {hook.name!r} did not run in the forward")
    return hook.activation

"""What every CAM method is: a class that owns its settings and turns the
tensors of one batch and branch (:class:`CAMInputs`) into maps.

``A_k`` is the activation map of channel ``k``, ``g_k = dy/dA_k`` with ``y``
the *raw logit* of the target class on the chosen branch, ``Z = h * w``.
Channel-weight methods implement :meth:`CAMMethod.channel_weights` (the clamp
and the weighted sum are shared); element-wise methods override
:meth:`CAMMethod.raw_map`.  What a method needs from the shared forward
(gradients, other layers, the input's gradient, a differentiable gradient)
it says in :meth:`CAMMethod.pass_needs`; passes of its own (noisy or masked
inputs) it runs in :meth:`CAMMethod.prepare`, batched, under the caller's
autocast.  docs/method.md has every method's formula and what the sigmoid
branch changes.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from wsol.cams.capture import PassGradients, PassNeeds, SharedPass
from wsol.dual_branch import clamp_weights
from wsol.heads import check_weight_channels
from wsol.model import CAMModel

__all__ = ["CAMInputs", "CAMMethod"]

Tensor = torch.Tensor


@dataclass
class CAMInputs:
    """The tensors of one batch, branch and target set that methods turn into maps.

    ``gradients`` is dy/dA from the shared backward (``None`` when no
    requested method needs it); ``grads`` all gradients of that backward
    (other layers, the input); ``shared`` the forward itself, for methods
    that differentiate a score of their own or run the head again; ``extra``
    holds what a method's :meth:`CAMMethod.prepare` computed for this batch.
    """
    model: CAMModel
    images: Tensor                 # [B, 3, H, W], as given to the model
    targets: Tensor                # [B] class indices
    branch: str                    # "softmax" | "sigmoid" | "recam"
    clamp: bool                    # clamp the weights at zero (the sigmoid branch)
    activations: Tensor            # A: [B, K, h, w], detached
    gradients: Tensor | None = None  # dy/dA: [B, K, h, w]
    grads: PassGradients | None = None
    shared: SharedPass | None = field(default=None, repr=False)
    extra: dict = field(default_factory=dict, repr=False)

    def class_weights(self) -> Tensor:
        """Head weights of each image's target class on the branch: [B, K]."""
        weight, _ = self.model.class_weights(self.branch)
        check_weight_channels(weight, self.activations.shape[1], self.model.head_name,
                              self.model.feature_layer_name)
        return weight[self.targets].to(self.activations.dtype)

    def branch_logits(self) -> Tensor:
        """The branch's logits of the shared forward, detached, float32: [B, C]."""
        return self.shared.logits(self.branch).detach().float()


class CAMMethod:
    """A CAM variant, with its settings as constructor arguments."""

    name: ClassVar[str]
    needs_gradients: ClassVar[bool] = False      # uses the shared backward's dy/dA
    uses_gradients: ClassVar[bool] = False       # any gradient of the target logit
    needs_class_weights: ClassVar[bool] = False  # the head's class weights (CAM)
    rectify: ClassVar[bool] = True               # the definition ends with a ReLU
    random: ClassVar[bool] = False               # takes a generator (noise)
    token_models_only: ClassVar[bool] = False    # reads a ViT's attention (LeGrad)

    def pass_needs(self, model: CAMModel) -> PassNeeds:
        """What the shared forward must record for this method."""
        return PassNeeds(gradients=self.needs_gradients)

    def misfit(self, model: CAMModel) -> str | None:
        """Why this method cannot run on ``model`` (one line), or None."""
        return None

    def prepare(self, inputs: CAMInputs) -> None:
        """Passes of the method's own (under the caller's autocast)."""

    def channel_weights(self, inputs: CAMInputs) -> Tensor:
        raise NotImplementedError

    def raw_map(self, inputs: CAMInputs) -> Tensor:
        """The map before rectification, resizing and normalisation: [B, h, w]
        (the input's [B, H, W] for methods defined at the input's size)."""
        weights = self.channel_weights(inputs)
        if inputs.clamp:
            weights = clamp_weights(weights)
        return torch.einsum("bk,bkhw->bhw", weights, inputs.activations)

    def settings(self) -> dict[str, Any]:
        """The constructor's settings and their values (``generator`` aside)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters
                 if p not in ("self", "generator")]
        return {n: getattr(self, n) for n in names if hasattr(self, n)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"

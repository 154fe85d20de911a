"""The one mechanism every CAM method shares: one forward that records the
CAM layer's output (and, for the methods that need them, other layers'
outputs), kept as a :class:`SharedPass` from which every method reads its
activations and differentiates the scores it needs -- one backward per branch
and target set, through the head only unless a method needs more.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from wsol.branches import branch_rule
from wsol.model import CAMModel

__all__ = ["ActivationCapture", "PassNeeds", "SharedPass", "PassGradients", "branch_logits",
           "full_precision", "target_gradients", "capture", "captured"]

Tensor = torch.Tensor


class ActivationCapture:
    """Context manager: records the outputs of ``modules`` during one forward.

    ``modules`` maps names to modules; the first is the CAM layer (read as
    :attr:`activation`).  With ``requires_grad`` the first recorded output (in
    execution order) becomes a fresh leaf that requires grad and the rest of
    the forward runs on it, so targets can be differentiated with respect to
    every recorded output even when every parameter is frozen, the model is in
    eval mode, or the caller is inside ``torch.no_grad()``.  Everything before
    that point runs without a graph (nothing there needs one), so with the CAM
    layer alone the backward only goes through the head.  ``from_input``: the
    caller feeds an input that requires grad, and the graph starts there.
    Grad mode and hooks are restored/removed on exit, even on errors.  Outputs
    are kept in the layer's own layout (``[B, K, h, w]``, channels-last or
    tokens); :class:`wsol.layouts.ResolvedLayout` reads them as maps.
    """

    def __init__(self, modules: nn.Module | Mapping[str, nn.Module], requires_grad: bool,
                 name: str = "the CAM layer", from_input: bool = False):
        if isinstance(modules, nn.Module):
            modules = {name: modules}
        self.modules = dict(modules)
        self.name = next(iter(self.modules))
        self.requires_grad = requires_grad
        self.from_input = from_input
        self.outputs: dict[str, Tensor] = {}
        self._handles: list = []
        self._grad_mode = True

    @property
    def activation(self) -> Tensor | None:
        return self.outputs.get(self.name)

    def __enter__(self) -> "ActivationCapture":
        self._handles = [m.register_forward_hook(lambda mod, i, o, n=n: self._hook(n, o))
                         for n, m in self.modules.items()]
        self._grad_mode = torch.is_grad_enabled()
        torch.set_grad_enabled(self.from_input)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        torch.set_grad_enabled(self._grad_mode)

    def _hook(self, name: str, output) -> Tensor:
        if not isinstance(output, torch.Tensor) or output.dim() not in (3, 4):
            raise TypeError(f"the layer {name!r} must output a tensor [B, K, h, w], "
                            f"[B, h, w, K] or tokens [B, N, D], got "
                            f"{getattr(output, 'shape', type(output).__name__)}")
        if name in self.outputs:
            raise RuntimeError(f"the layer {name!r} ran twice in one forward; hook a "
                               f"layer that runs once")
        if self.requires_grad and not torch.is_grad_enabled():
            # The first recorded layer: the graph starts here; the layers before
            # it ran without one, which is what makes the backward cheap.  float32
            # even under bf16 autocast: maps and gradients are formed in float32
            # (the rest of the model still runs under the caller's autocast).
            recorded = full_precision(output.detach()).requires_grad_(True)
            torch.set_grad_enabled(True)
        elif self.requires_grad:
            recorded = output            # inside the graph: differentiable as it is
        else:
            recorded = full_precision(output.detach())
        self.outputs[name] = recorded
        # The model continues on a copy: an in-place op after the layer (e.g.
        # ReLU(inplace=True)) must not change the recorded output, and would be
        # illegal on a leaf that requires grad.
        return recorded.clone()


def full_precision(tensor: Tensor) -> Tensor:
    """float16/bfloat16 (autocast outputs) -> float32; other dtypes unchanged."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def branch_logits(outputs: dict[str, Tensor | None], branch: str) -> Tensor:
    """The logits of ``branch`` among a CAMModel's outputs (wsol.branches)."""
    return outputs[branch_rule(branch).logits_key]


def capture(model: CAMModel, requires_grad: bool) -> ActivationCapture:
    return ActivationCapture(model.feature_module, requires_grad, model.feature_layer_name)


def captured(hook: ActivationCapture) -> Tensor:
    if hook.activation is None:
        raise RuntimeError(f"the CAM layer {hook.name!r} did not run in the forward")
    return hook.activation


@dataclass(frozen=True)
class PassNeeds:
    """What the methods of one call need from the shared forward (the union of
    :meth:`wsol.cams.base.CAMMethod.pass_needs`)."""
    gradients: bool = False          # dy/dA at the CAM layer
    layers: tuple[str, ...] = ()     # other layers whose outputs and dy/d(output) are needed
    input_gradient: bool = False     # dy/dx (FullGrad)
    create_graph: bool = False       # dy/dA differentiable again (ShapleyCAM's Hessian term)

    def __or__(self, other: "PassNeeds") -> "PassNeeds":
        return PassNeeds(self.gradients or other.gradients,
                         tuple(dict.fromkeys(self.layers + other.layers)),
                         self.input_gradient or other.input_gradient,
                         self.create_graph or other.create_graph)

    @property
    def graph(self) -> bool:
        return self.gradients or bool(self.layers) or self.input_gradient


@dataclass
class PassGradients:
    """Gradients of one score of the shared forward."""
    cam: Tensor | None                    # dy/dA as [B, K, h, w]
    raw: Tensor | None = None             # dy/dA in the layer's layout (with its graph
                                          # when the pass was asked to create one)
    layers: dict[str, Tensor] = field(default_factory=dict)  # dy/d(output), layer's layout
    input: Tensor | None = None           # dy/dx


class SharedPass:
    """One forward of a batch, kept while the methods read it.

    ``activations`` is the CAM layer's ``A`` as ``[B, K, h, w]`` (float32,
    detached), ``layers`` the other recorded outputs (detached), ``outputs``
    the model's outputs.  :meth:`gradients` differentiates a score of this
    forward with respect to everything recorded; the graph is kept until the
    pass is dropped, so several scores (branches, target sets, a method's own
    target) share the one forward.
    """

    def __init__(self, model: CAMModel, images: Tensor, needs: PassNeeds,
                 labels: Tensor | None = None):
        self.model, self.needs = model, needs
        modules = {model.feature_layer_name: model.feature_module}
        for name in needs.layers:
            try:
                modules.setdefault(name, model.model.get_submodule(name))
            except AttributeError:
                raise ValueError(f"{name!r} is not a module of the model (a layer a CAM method "
                                 f"was asked to read)") from None
        self.images = images.detach()
        if needs.input_gradient:
            self.images = self.images.clone().requires_grad_(True)
        with ActivationCapture(modules, needs.graph, from_input=needs.input_gradient) as hooked:
            self.outputs = model(self.images, labels)
            if needs.graph and not torch.is_grad_enabled():
                raise RuntimeError("no recorded layer ran in the forward")
        for name in modules:
            if name not in hooked.outputs:
                raise RuntimeError(f"the layer {name!r} did not run in the forward")
        self._recorded = hooked.outputs
        self.raw_activation = hooked.outputs[model.feature_layer_name]
        self.layout = model.resolve_layout(self.raw_activation.shape, images.shape[-2:])
        self.activations = full_precision(self.layout.to_nchw(self.raw_activation.detach()))
        self.layers = {n: full_precision(t.detach()) for n, t in hooked.outputs.items()
                       if n != model.feature_layer_name}

    def logits(self, branch: str) -> Tensor:
        """The branch's logits, inside the graph when there is one."""
        return branch_logits(self.outputs, branch)

    def target_scores(self, branch: str, targets: Tensor) -> Tensor:
        """Sum over the batch of each image's target logit on the branch (in the
        graph, whatever the caller's grad mode)."""
        with torch.enable_grad():
            return full_precision(self.logits(branch).gather(1, targets[:, None])).sum()

    def gradients(self, score: Tensor, create_graph: bool = False,
                  cam_only: bool = False) -> PassGradients:
        """d score / d(everything recorded) -- or, with ``cam_only``, d score / dA
        alone (a backward through the head only, whatever else was recorded);
        in eval mode the images do not interact, so a batch sum gives each
        image its own gradient."""
        if not score.requires_grad:
            raise RuntimeError("the target logit does not depend on the CAM layer output "
                               f"({self.model.feature_layer_name!r}); check the CAM layer and "
                               "that the model does not disable autograd in its forward")
        names = [self.model.feature_layer_name, *([] if cam_only else self.layers)]
        wrt = [self._recorded[n] for n in names]
        with_input = self.needs.input_gradient and not cam_only
        if with_input:
            wrt.append(self.images)
        if create_graph and len(wrt) > 1:
            # Only dy/dA needs a graph of its own (ShapleyCAM's Hessian term, through the
            # head): a second, plain backward for the other layers and the input, so the
            # double-backward graph never spans the whole network.
            (first,) = torch.autograd.grad(score, wrt[:1], retain_graph=True,
                                           create_graph=True, allow_unused=True)
            rest = torch.autograd.grad(score, wrt[1:], retain_graph=True, allow_unused=True)
            grads = [first, *rest]
        else:
            grads = torch.autograd.grad(score, wrt, retain_graph=True,
                                        create_graph=create_graph, allow_unused=True)
        grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt)]
        raw = grads[0]
        return PassGradients(
            cam=full_precision(self.layout.to_nchw(raw.detach())), raw=raw,
            layers={n: full_precision(g.detach()) for n, g in zip(names[1:], grads[1:])},
            input=full_precision(grads[-1].detach()) if with_input else None)

    def hessian_product(self, grad: PassGradients) -> Tensor:
        """``H A`` (the Hessian of the score with respect to ``A``, times ``A``)
        from a gradient taken with ``create_graph``, as ``[B, K, h, w]``; zero
        where the score is linear in ``A`` (a GAP + linear head)."""
        leaf = self._recorded[self.model.feature_layer_name]
        if grad.raw is None or not grad.raw.requires_grad:
            return torch.zeros_like(self.activations)
        (hvp,) = torch.autograd.grad(grad.raw, leaf, grad_outputs=leaf.detach(),
                                     retain_graph=True, allow_unused=True)
        if hvp is None:
            return torch.zeros_like(self.activations)
        return full_precision(self.layout.to_nchw(hvp.detach()))


def target_gradients(model: CAMModel, images: Tensor, targets: Tensor | None,
                     branches: Sequence[str]) -> tuple[dict, Tensor, Tensor, dict]:
    """One forward, then one backward per branch through the head only:
    (outputs, targets, A, {branch: dy/dA}), ``A`` and the gradients as
    ``[B, K, h, w]``."""
    shared = SharedPass(model, images, PassNeeds(gradients=True))
    if targets is None:
        targets = shared.outputs["logits"].argmax(1)
    grads = {b: shared.gradients(shared.target_scores(b, targets)).cam for b in branches}
    return shared.outputs, targets, shared.activations, grads

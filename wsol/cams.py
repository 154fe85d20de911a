"""Every CAM variant from one batched pass, on either branch of a :class:`CAMModel`.

One mechanism serves all methods.  :class:`ActivationCapture` hooks the CAM
layer for one forward; :func:`compute_cams` runs that forward once per batch,
backpropagates the target logit once to the CAM activation ``A`` when any
requested method needs gradients, and hands every method the same
:class:`CAMInputs`.  A method only says how it turns those tensors into a map
(see :class:`CAMMethod`).  Smooth Grad-CAM++ (noisy copies of the input) and
Score-CAM (masked copies of the input) need passes of their own by
definition; they draw them lazily through :class:`CAMInputs`, batched.

Definitions (SPEC §2; ``A_k`` activation map of channel ``k``, ``g_k = dy/dA_k``
with ``y`` the *raw logit* of the target class on the chosen branch, ``Z = h*w``):

================ ========================================================= =========
method           raw map                                                   rectified
================ ========================================================= =========
cam              sum_k w_k A_k, ``w`` = head weights of the class          no
gradcam          sum_k mean_ij(g_k) A_k                                    ReLU
gradcam++        sum_k (sum_ij alpha_k ReLU(g_k)) A_k, alpha =             ReLU
                 g^2 / (2 g^2 + sum_ab(A_k) g^3), 0 where the
                 denominator is 0
smoothgradcam++  gradcam++ with g, g^2, g^3 each averaged over noisy inputs ReLU
xgradcam         sum_k (sum_ij g_k A_k / sum_ij A_k) A_k                   ReLU
layercam         sum_k ReLU(g_k) * A_k (element-wise)                      ReLU
scorecam         sum_k p_k A_k, p_k = class probability of input * mask_k  ReLU
hirescam         sum_k g_k * A_k (element-wise)                            no
eigencam         projection of A on its first principal direction          no
================ ========================================================= =========

Grad-CAM++'s alpha is its published closed form, which assumes an exponential
of the score so that higher derivatives are powers of ``g``; the weights then
carry a positive factor ``exp(y)`` per image, dropped here because every map
is min-max normalised.

"Rectified" is the method's final ReLU, applied by :func:`evaluation_maps`;
the raw maps of :class:`CAMOutput` are always before it.  CAM has none (as in
wsolevaluation, which min-max normalises the raw CAM).  HiResCAM has none
either: its paper proves it equal to CAM (up to ``1/Z``) for a GAP + linear
head, so it is treated like CAM.  EigenCAM's sign is fixed so that the
projection sums to a non-negative value (an SVD's sign is arbitrary).

The sigmoid branch (SPEC §1): with ``clamp=True`` every *weight* is clamped at
zero before the weighted sum -- channel weights of cam, gradcam, gradcam++,
smoothgradcam++ and xgradcam, and the element-wise weights ``g`` of hirescam
(so clamped HiResCAM keeps only the positive evidence, like the others, and
for a GAP + linear head equals the clamped CAM / Z).  layercam already uses
``ReLU(g)``; scorecam's weights are probabilities (never negative); eigencam
has no weights and no class.  Softmax-branch maps are never clamped.

Conventions chosen where the papers leave room (documented here, tested):

* Score-CAM: the mask of channel ``k`` is ``A_k`` bilinearly upsampled to the
  input size and min-max normalised to [0, 1]; the masked input is the
  (normalised) image times the mask; the score is the class *probability* --
  softmax over the softmax-branch logits, or the sigmoid of the
  sigmoid-branch logit (each sigmoid is independent, which is the point of the
  method).  A constant channel gets weight 0 (its mask is undefined).
  ``scorecam_topk`` keeps, per image, the ``k`` channels with the largest mean
  activation; the others get weight 0.
* Smooth Grad-CAM++: noise ``N(0, (sigma * (max(x) - min(x)))^2)`` per image
  (SmoothGrad's relative noise level), ``smooth_samples`` noisy copies; the
  mean gradient powers replace ``g``, ``g^2``, ``g^3`` in the Grad-CAM++
  formula, with ``A`` from the clean image.  Deterministic: the noise comes
  from ``generator`` (a fresh one seeded with 0 when none is given).

Maps are computed in torch, batched, on the model's device.  Call
``model.eval()`` first: a model in training mode would update BatchNorm
statistics and apply dropout during the extra passes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from wsol.dual_branch import BRANCHES, CAMModel

__all__ = ["CAM_METHODS", "CAMMethod", "CAMInputs", "CAMOutput", "ActivationCapture",
           "ModelCheckError", "parse_methods", "compute_cams", "compute_cams_per_branch",
           "evaluation_maps", "normalize_maps", "gradcampp_weights", "verify_cam_model"]

Tensor = torch.Tensor


# ---------------------------------------------------------------------------
# Capturing the CAM activation
# ---------------------------------------------------------------------------
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
        activation = _full_precision(output.detach())
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


def _full_precision(tensor: Tensor) -> Tensor:
    """float16/bfloat16 (autocast outputs) -> float32; other dtypes unchanged."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _branch_logits(outputs: dict[str, Tensor | None], branch: str) -> Tensor:
    return outputs["logits"] if branch == "softmax" else outputs["logits_sigmoid"]


def _capture(model: CAMModel, requires_grad: bool) -> ActivationCapture:
    return ActivationCapture(model.feature_module, requires_grad, model.feature_layer_name)


def _target_gradients(model: CAMModel, images: Tensor, targets: Tensor | None,
                      branches: Sequence[str]) -> tuple[dict, Tensor, Tensor, dict]:
    """One forward, then one backward per branch through the head only:
    (outputs, targets, A, {branch: dy/dA}), ``A`` and the gradients as
    ``[B, K, h, w]``.

    The batch is differentiated as the sum of each image's target logit; in
    eval mode the images do not interact, so each image gets its own gradient.
    """
    with _capture(model, requires_grad=True) as capture:
        outputs = model(images)
        activation = _captured(capture)
        if targets is None:
            targets = outputs["logits"].argmax(1)
        # Still inside: grad mode is on from the CAM layer to here.
        scores = [_full_precision(_branch_logits(outputs, b).gather(1, targets[:, None])).sum()
                  for b in branches]
    if not all(score.requires_grad for score in scores):
        raise RuntimeError("the target logit does not depend on the CAM layer output "
                           f"({model.feature_layer_name!r}); check the CAM layer and "
                           "that the model does not disable autograd in its forward")
    layout = model.resolve_layout(activation.shape, images.shape[-2:])
    gradients = {}
    for i, (branch, score) in enumerate(zip(branches, scores)):
        (grad,) = torch.autograd.grad(score, activation, retain_graph=i < len(scores) - 1)
        gradients[branch] = layout.to_nchw(grad)
    return outputs, targets, layout.to_nchw(activation.detach()), gradients


def _forward_activations(model: CAMModel, images: Tensor) -> tuple[dict, Tensor]:
    """One forward without gradients: (outputs, A as [B, K, h, w])."""
    with _capture(model, requires_grad=False) as capture:
        outputs = model(images)
    activation = _captured(capture)
    return outputs, model.resolve_layout(activation.shape, images.shape[-2:]).to_nchw(activation)


def _captured(capture: ActivationCapture) -> Tensor:
    if capture.activation is None:
        raise RuntimeError(f"the CAM layer {capture.name!r} did not run in the forward")
    return capture.activation


# ---------------------------------------------------------------------------
# What every method sees
# ---------------------------------------------------------------------------
@dataclass
class CAMInputs:
    """The tensors of one batch that CAM methods turn into maps.

    ``gradients`` is the shared backward (``None`` when no requested method
    needs it).  The extra passes of Smooth Grad-CAM++ and Score-CAM are drawn
    on demand through :meth:`noisy_gradient_moments` and
    :meth:`masked_scores` and cached, so each runs at most once per batch.
    """
    model: CAMModel
    images: Tensor                 # [B, 3, H, W], as given to the model
    targets: Tensor                # [B] class indices
    branch: str                    # "softmax" | "sigmoid"
    clamp: bool                    # clamp weights at zero (sigmoid branch only)
    activations: Tensor            # A: [B, K, h, w], detached
    gradients: Tensor | None = None  # dy/dA: [B, K, h, w]
    scorecam_batch_size: int = 32
    scorecam_topk: int | None = None
    smooth_samples: int = 8
    smooth_sigma: float = 0.15
    generator: torch.Generator | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def class_weights(self) -> Tensor:
        """Head weights of each image's target class on the branch: [B, K]."""
        weight, _ = self.model.class_weights(self.branch)
        _check_weight_channels(self.model, weight, self.activations.shape[1])
        return weight[self.targets].to(self.activations.dtype)

    def noisy_gradient_moments(self) -> tuple[Tensor, Tensor, Tensor]:
        """Means of ``g``, ``g^2`` and ``g^3`` over ``smooth_samples`` noisy copies."""
        if "moments" not in self._cache:
            self._cache["moments"] = _noisy_gradient_moments(self)
        return self._cache["moments"]

    def masked_scores(self) -> Tensor:
        """Score-CAM channel scores [B, K] (0 for skipped channels)."""
        if "scores" not in self._cache:
            self._cache["scores"] = _masked_scores(self)
        return self._cache["scores"]


def _noise_generator(inputs: CAMInputs) -> torch.Generator:
    if inputs.generator is not None:
        return inputs.generator
    return torch.Generator(device=inputs.images.device).manual_seed(0)


def _noisy_gradient_moments(inputs: CAMInputs) -> tuple[Tensor, Tensor, Tensor]:
    images = inputs.images
    generator = _noise_generator(inputs)
    flat = images.flatten(1)
    spread = (flat.amax(1) - flat.amin(1)).view(-1, 1, 1, 1)
    std = inputs.smooth_sigma * spread
    moments = [torch.zeros_like(inputs.activations) for _ in range(3)]
    for _ in range(inputs.smooth_samples):
        # Drawn on the generator's device, then moved: a CPU generator gives the
        # same noise whatever device the model is on.
        noise = torch.randn(images.shape, generator=generator, device=generator.device,
                            dtype=images.dtype).to(images.device)
        _, _, _, grads = _target_gradients(inputs.model, images + std * noise,
                                           inputs.targets, [inputs.branch])
        grad = grads[inputs.branch]
        moments[0] += grad
        moments[1] += grad.pow(2)
        moments[2] += grad.pow(3)
    n = max(inputs.smooth_samples, 1)
    return tuple(m / n for m in moments)


@torch.no_grad()
def _masked_scores(inputs: CAMInputs) -> Tensor:
    activations = inputs.activations
    images = inputs.images
    batch, channels = activations.shape[:2]
    size = images.shape[-2:]
    if inputs.scorecam_topk is not None and inputs.scorecam_topk < channels:
        if inputs.scorecam_topk < 1:
            raise ValueError(f"scorecam_topk must be positive, got {inputs.scorecam_topk}")
        chosen = activations.mean((2, 3)).topk(inputs.scorecam_topk, dim=1).indices
    else:
        chosen = torch.arange(channels, device=activations.device).expand(batch, channels)
    # One (image, channel) pair per masked input, in chunks across images so
    # every forward is full whatever K and B are.
    image_index = torch.arange(batch, device=activations.device).repeat_interleave(chosen.shape[1])
    channel_index = chosen.reshape(-1)
    scores = torch.zeros(batch, channels, dtype=activations.dtype, device=activations.device)
    step = max(int(inputs.scorecam_batch_size), 1)
    for start in range(0, image_index.numel(), step):
        b = image_index[start:start + step]
        k = channel_index[start:start + step]
        # Upsample only this chunk's channels: all K masks at input size would
        # not fit in memory for K = 2048.
        masks = F.interpolate(activations[b, k][:, None].to(images.dtype), size=size,
                              mode="bilinear", align_corners=False)
        low = masks.amin((2, 3), keepdim=True)
        spread = masks.amax((2, 3), keepdim=True) - low
        valid = spread > 0
        masks = torch.where(valid, (masks - low) / torch.where(valid, spread, 1.0), 0.0)
        logits = _branch_logits(inputs.model(images[b] * masks), inputs.branch)
        if inputs.branch == "softmax":
            prob = logits.softmax(1)
        else:
            prob = logits.sigmoid()
        prob = prob.gather(1, inputs.targets[b][:, None])[:, 0]
        scores[b, k] = (prob * valid.flatten()).to(scores.dtype)
    return scores


# ---------------------------------------------------------------------------
# The methods: each says only how it computes its weights or map
# ---------------------------------------------------------------------------
class CAMMethod:
    """A CAM variant.  Channel-weight methods implement :meth:`channel_weights`
    (the clamp and the weighted sum are shared); element-wise methods override
    :meth:`raw_map`."""

    name: ClassVar[str]
    needs_gradients: ClassVar[bool] = False      # uses the shared backward
    uses_gradients: ClassVar[bool] = False       # any gradient of the target logit
    needs_class_weights: ClassVar[bool] = False  # the head's class weights (CAM)
    rectify: ClassVar[bool] = True               # the definition ends with a ReLU

    def channel_weights(self, inputs: CAMInputs) -> Tensor:
        raise NotImplementedError

    def raw_map(self, inputs: CAMInputs) -> Tensor:
        """The map before rectification, resizing and normalisation: [B, h, w]."""
        weights = self.channel_weights(inputs)
        if inputs.clamp:
            weights = weights.clamp_min(0)
        return torch.einsum("bk,bkhw->bhw", weights, inputs.activations)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CAM(CAMMethod):
    name = "cam"
    needs_class_weights = True
    rectify = False

    def channel_weights(self, inputs):
        return inputs.class_weights()


class GradCAM(CAMMethod):
    name = "gradcam"
    needs_gradients = True
    uses_gradients = True

    def channel_weights(self, inputs):
        return inputs.gradients.mean((2, 3))


def gradcampp_weights(activations: Tensor, grad: Tensor, grad2: Tensor,
                      grad3: Tensor) -> Tensor:
    """Grad-CAM++ channel weights from the first three gradient powers.

    alpha = g2 / (2 g2 + sum_ab(A) g3), set to 0 where the denominator is 0:
    where g = 0 (alpha's 0/0; ReLU(g) = 0 anyway) and in the degenerate case
    2 + sum_ab(A) g = 0, as the Grad-CAM++ reference code does.
    """
    denominator = torch.addcmul(2 * grad2, activations.sum((2, 3), keepdim=True), grad3)
    undefined = denominator == 0
    terms = grad2 * grad.clamp_min(0) / denominator.masked_fill_(undefined, 1.0)
    return terms.masked_fill_(undefined, 0.0).sum((2, 3))


class GradCAMPlusPlus(CAMMethod):
    name = "gradcam++"
    needs_gradients = True
    uses_gradients = True

    def channel_weights(self, inputs):
        g = inputs.gradients
        g2 = g * g
        return gradcampp_weights(inputs.activations, g, g2, g2 * g)


class SmoothGradCAMPlusPlus(CAMMethod):
    name = "smoothgradcam++"
    uses_gradients = True

    def channel_weights(self, inputs):
        return gradcampp_weights(inputs.activations, *inputs.noisy_gradient_moments())


class XGradCAM(CAMMethod):
    name = "xgradcam"
    needs_gradients = True
    uses_gradients = True

    def channel_weights(self, inputs):
        a = inputs.activations
        mass = a.sum((2, 3))
        weighted = (inputs.gradients * a).sum((2, 3))
        # A channel with no mass has no normalised activation: weight 0.
        return torch.where(mass != 0, weighted / torch.where(mass != 0, mass, 1.0), 0.0)


class LayerCAM(CAMMethod):
    name = "layercam"
    needs_gradients = True
    uses_gradients = True

    def raw_map(self, inputs):
        return (inputs.gradients.clamp_min(0) * inputs.activations).sum(1)


class ScoreCAM(CAMMethod):
    name = "scorecam"

    def channel_weights(self, inputs):
        return inputs.masked_scores()


class HiResCAM(CAMMethod):
    name = "hirescam"
    needs_gradients = True
    uses_gradients = True
    rectify = False

    def raw_map(self, inputs):
        grad = inputs.gradients
        if inputs.clamp:  # the element-wise weights are the gradients
            grad = grad.clamp_min(0)
        return (grad * inputs.activations).sum(1)


class EigenCAM(CAMMethod):
    name = "eigencam"
    rectify = False

    def raw_map(self, inputs):
        a = inputs.activations
        flat = a.flatten(2).transpose(1, 2)  # [B, hw, K]: one row per position
        # The projection on the first right singular vector v1 is flat @ v1 =
        # s1 * u1.  Found from the smaller Gram matrix (eigh of [hw, hw] or
        # [K, K]): a full SVD of [hw, K] is ~50x slower for ResNet50 maps.
        if flat.shape[1] <= flat.shape[2]:
            values, vectors = torch.linalg.eigh(flat @ flat.transpose(1, 2))
            projection = vectors[:, :, -1] * values[:, -1:].clamp_min(0).sqrt()
        else:
            _, vectors = torch.linalg.eigh(flat.transpose(1, 2) @ flat)
            projection = (flat @ vectors[:, :, -1:])[:, :, 0]
        sign = 1 - 2 * (projection.sum(1, keepdim=True) < 0).to(a.dtype)
        return (projection * sign).view(a.shape[0], *a.shape[2:])


CAM_METHODS: dict[str, CAMMethod] = {
    m.name: m for m in (CAM(), GradCAM(), GradCAMPlusPlus(), SmoothGradCAMPlusPlus(),
                        XGradCAM(), LayerCAM(), ScoreCAM(), HiResCAM(), EigenCAM())
}


def parse_methods(spec: str | Sequence[str]) -> list[str]:
    """``"cam,gradcam"``, ``["cam", "gradcam"]`` or ``"all"`` -> method names,
    in the given order, without repeats."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise ValueError(f"CAM method names must be strings, got {part!r}")
        for name in part.split(","):
            name = name.strip()
            if not name:
                continue
            expanded = list(CAM_METHODS) if name == "all" else [name]
            for n in expanded:
                if n not in CAM_METHODS:
                    raise ValueError(f"unknown CAM method {n!r}; known methods: "
                                     f"{', '.join(CAM_METHODS)} (or 'all')")
                if n not in names:
                    names.append(n)
    if not names:
        raise ValueError(f"no CAM method given; known methods: {', '.join(CAM_METHODS)}")
    return names


# ---------------------------------------------------------------------------
# Checking a model once, on a real forward
# ---------------------------------------------------------------------------
class ModelCheckError(ValueError):
    """The CAM layer and head of a :class:`CAMModel` do not fit together."""


def verify_cam_model(model: CAMModel, images: Tensor,
                     methods: Sequence[CAMMethod | str] = ("cam",),
                     branches: Sequence[str] = ("softmax",)) -> None:
    """Check, on up to two of ``images``, that the model's CAM layer and head
    give meaningful maps for ``methods`` and ``branches``; a failed check is a
    :class:`ModelCheckError` naming the layer and what to pass instead.

    * the CAM layer runs exactly once per forward;
    * with a sigmoid branch, the model's output carries the head's output
      unchanged (the branch rides along the head's output, see
      :mod:`wsol.dual_branch`);
    * gradient methods: the target logit's gradient reaches the layer's map
      (a ViT's final tokens, for instance, only reach the class token);
    * ``cam``: the head has class weights and, for every class, the mean of the
      class map plus the bias equals the logit.

    Runs once per model, input size, method kind and branch set (cached on the
    model), in float32, in eval mode.
    """
    chosen = [CAM_METHODS[m] if isinstance(m, str) else m for m in methods]
    needs = {"layer"}
    needs |= {"weights"} if any(m.needs_class_weights for m in chosen) else set()
    needs |= {"gradients"} if any(m.uses_gradients for m in chosen) else set()
    key = (tuple(images.shape[-2:]), tuple(branches))
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
    if model.is_dual:
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
        with _capture(model, requires_grad=True) as capture:
            outputs = model(probe)
            activation = _captured(capture)
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
        _check_weight_channels(model, weights[branch][0], activations.shape[1])
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
        logits = _full_precision(_branch_logits(outputs, branch).detach())
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


def _check_weight_channels(model: CAMModel, weight: Tensor, channels: int) -> None:
    if weight.shape[1] != channels:
        raise ModelCheckError(
            f"the head {model.head_name!r} reads {weight.shape[1]} features but the CAM layer "
            f"{model.feature_layer_name!r} has {channels} channels: cam needs the head to act "
            f"on the spatial mean of the CAM layer's output")


# ---------------------------------------------------------------------------
# The public entry points
# ---------------------------------------------------------------------------
@dataclass
class CAMOutput:
    maps: dict[str, Tensor]        # method -> raw maps [B, h, w], float32, detached
    logits: Tensor                 # softmax-branch logits [B, C] of the same forward
    logits_sigmoid: Tensor | None  # sigmoid-branch logits [B, C] or None
    targets: Tensor | None = None  # [B] the classes the maps explain
    branch: str = "softmax"        # the branch the maps come from


def compute_cams(model: CAMModel, images: Tensor, targets: Tensor | None = None,
                 methods: str | Sequence[str] = ("cam",), branch: str | None = None,
                 clamp: bool = True, scorecam_batch_size: int = 32,
                 scorecam_topk: int | None = None, smooth_samples: int = 8,
                 smooth_sigma: float = 0.15,
                 generator: torch.Generator | None = None) -> CAMOutput:
    """Raw CAM maps of ``images`` for each method, from one forward.

    Args:
        model: a :class:`CAMModel` on the images' device, in eval mode; it may
            be frozen and the call may sit inside ``torch.no_grad()``.
        images: [B, 3, H, W] as the model takes them (normalised).
        targets: [B] classes to explain; None -> the softmax head's top-1.
        methods: names, a comma-separated string or "all" (:data:`CAM_METHODS`).
        branch: "softmax" or "sigmoid"; None -> "sigmoid" for a dual-branch
            model, "softmax" otherwise.
        clamp: on the sigmoid branch, clamp the weights at zero (SPEC §1);
            False for ablations.  Softmax-branch maps are never clamped.
        scorecam_batch_size: masked images per Score-CAM forward.
        scorecam_topk: Score-CAM only scores the k channels of largest mean
            activation per image (None: all K channels, B * K forwards).
        smooth_samples, smooth_sigma: Smooth Grad-CAM++ noisy copies and their
            noise level relative to each image's value range.
        generator: Smooth Grad-CAM++ noise; None -> seeded with 0.

    Cost: one forward; plus one backward through the head only (the layers
    after the CAM layer) when a gradient method is asked for, shared by all of
    them; plus ``smooth_samples`` such forward/backward pairs for
    smoothgradcam++ and ``ceil(B * k / scorecam_batch_size)`` forwards for
    scorecam.  The returned logits come from the first forward.

    Under an outer ``torch.autocast`` the model's passes run in reduced
    precision; the activations are captured and the maps formed in float32.
    """
    if branch is None:
        branch = "sigmoid" if model.is_dual else "softmax"
    return compute_cams_per_branch(
        model, images, targets, methods, [branch], clamp, scorecam_batch_size,
        scorecam_topk, smooth_samples, smooth_sigma, generator)[branch]


def compute_cams_per_branch(model: CAMModel, images: Tensor, targets: Tensor | None,
                            methods: str | Sequence[str], branches: Sequence[str],
                            clamp: bool = True, scorecam_batch_size: int = 32,
                            scorecam_topk: int | None = None, smooth_samples: int = 8,
                            smooth_sigma: float = 0.15,
                            generator: torch.Generator | None = None) -> dict[str, CAMOutput]:
    """:func:`compute_cams` for several branches from one shared forward:
    ``{branch: CAMOutput}``.  The branches share the forward and the CAM
    activations; each adds one backward through the head (and its own
    Smooth Grad-CAM++ / Score-CAM passes).  Same maps as one
    :func:`compute_cams` call per branch, at the cost of one forward."""
    chosen = [CAM_METHODS[n] for n in parse_methods(methods)]
    branches = list(dict.fromkeys(branches))
    if not branches:
        raise ValueError(f"no branch given; choose from {BRANCHES}")
    for branch in branches:
        if branch not in BRANCHES:
            raise ValueError(f"unknown branch {branch!r}; choose one of {BRANCHES}")
        if branch == "sigmoid" and not model.is_dual:
            raise ValueError("this model has no sigmoid branch; use branch='softmax'")
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
    settings = dict(clamp=clamp, scorecam_batch_size=scorecam_batch_size,
                    scorecam_topk=scorecam_topk, smooth_samples=smooth_samples,
                    smooth_sigma=smooth_sigma, generator=generator)
    if torch.is_inference_mode_enabled():
        # Inference tensors cannot take part in autograd: step out of it.
        with torch.inference_mode(False):
            images = images.clone()
            targets = None if targets is None else targets.clone()
            verify_cam_model(model, images, chosen, branches)
            return _compute(model, images, targets, chosen, branches, settings)
    verify_cam_model(model, images, chosen, branches)
    return _compute(model, images, targets, chosen, branches, settings)


def _compute(model, images, targets, chosen, branches, settings) -> dict[str, CAMOutput]:
    images = images.detach()
    if targets is not None:
        targets = torch.as_tensor(targets, device=images.device).long().view(-1)
        if targets.numel() != images.shape[0]:
            raise ValueError(f"{targets.numel()} targets for {images.shape[0]} images")
        if targets.numel():
            bad = (targets.min() < 0) | (targets.max() >= model.num_classes)
            if targets.is_cuda:
                torch._assert_async(~bad)  # fails on the GPU without making the host wait
            elif bool(bad):
                raise ValueError(f"targets must lie in [0, {model.num_classes})")
    if any(m.needs_gradients for m in chosen):
        outputs, targets, activations, gradients = _target_gradients(
            model, images, targets, branches)
    else:
        outputs, activations = _forward_activations(model, images)
        gradients = {}
        if targets is None:
            targets = outputs["logits"].argmax(1)
    clamp = settings.pop("clamp")
    logits = _full_precision(outputs["logits"].detach())
    sigmoid_logits = outputs["logits_sigmoid"]
    if sigmoid_logits is not None:
        sigmoid_logits = _full_precision(sigmoid_logits.detach())
    results = {}
    for branch in branches:
        inputs = CAMInputs(model=model, images=images, targets=targets, branch=branch,
                           clamp=clamp and branch == "sigmoid", activations=activations,
                           gradients=gradients.get(branch), **settings)
        # The extra passes run under the caller's autocast, like the forward ...
        if any(isinstance(m, SmoothGradCAMPlusPlus) for m in chosen):
            inputs.noisy_gradient_moments()
        if any(isinstance(m, ScoreCAM) for m in chosen):
            inputs.masked_scores()
        # ... the maps are formed in float32 whatever it is.
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            maps = {m.name: m.raw_map(inputs).detach().float() for m in chosen}
        results[branch] = CAMOutput(maps=maps, logits=logits, logits_sigmoid=sigmoid_logits,
                                    targets=targets, branch=branch)
    return results


def normalize_maps(maps: Tensor) -> Tensor:
    """Min-max normalise each map of [B, H, W] to [0, 1]; a constant map or
    one with a NaN or infinite value becomes all zeros (wsolevaluation)."""
    low = maps.amin((1, 2), keepdim=True)  # amin/amax propagate NaN
    spread = maps.amax((1, 2), keepdim=True) - low
    ok = torch.isfinite(spread) & (spread > 0)
    return torch.where(ok, (maps - low) / torch.where(ok, spread, 1.0), 0.0)


MAP_STYLES = ("wsolevaluation", "public_code")


def evaluation_maps(output: CAMOutput | dict[str, Tensor], size: tuple[int, int],
                    mode: str = "bicubic", normalize: bool = True,
                    style: str = "wsolevaluation") -> dict[str, Tensor]:
    """Evaluation-ready maps: per method its final ReLU where its definition
    has one, resize to ``size`` (``mode``, align_corners=False; bicubic is
    OpenCV's INTER_CUBIC, which wsolevaluation uses), min-max normalisation
    per map, constant or NaN maps -> zeros.  Values in [0, 1], float32,
    [B, *size].  ``normalize=False`` stops before the normalisation (for
    evaluators that normalise, and count NaN maps).

    ``style="public_code"`` post-processes as the method's public code does
    (docs/reproducing.md): ``cam`` as above with bicubic resizing; every other
    method ReLU, min-max normalised with a 1e-7 guard, then resized
    *bilinearly* (its Grad-CAM library), before the final normalisation."""
    maps = output.maps if isinstance(output, CAMOutput) else output
    if mode not in ("bilinear", "bicubic", "nearest", "area"):
        raise ValueError(f"unsupported resize mode {mode!r}")
    if style not in MAP_STYLES:
        raise ValueError(f"unknown map style {style!r}; choose one of {MAP_STYLES}")
    result = {}
    for name, raw in maps.items():
        if name not in CAM_METHODS:
            raise ValueError(f"unknown CAM method {name!r}; known methods: "
                             f"{', '.join(CAM_METHODS)}")
        raw = raw.float()
        how = mode
        if style == "public_code":
            how = "bicubic"
            if name != "cam":
                raw = raw.clamp_min(0)
                low = raw.amin((1, 2), keepdim=True)
                raw = (raw - low) / (1e-7 + (raw - low).amax((1, 2), keepdim=True))
                how = "bilinear"
        elif CAM_METHODS[name].rectify:
            raw = raw.clamp_min(0)  # NaN stays NaN, so such a map still becomes zeros
        resized = F.interpolate(raw[:, None], size=tuple(size), mode=how,
                                align_corners=False if how in ("bilinear", "bicubic")
                                else None)[:, 0]
        result[name] = normalize_maps(resized) if normalize else resized
    return result

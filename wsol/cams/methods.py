"""The CAM methods: each says only how it turns the shared tensors of a batch
(:class:`CAMInputs`) into maps, and owns its settings (docs/method.md).

``A_k`` is the activation map of channel ``k``, ``g_k = dy/dA_k`` with ``y``
the *raw logit* of the target class on the chosen branch, ``Z = h * w``.
Channel-weight methods implement :meth:`CAMMethod.channel_weights` (the clamp
and the weighted sum are shared); element-wise methods override
:meth:`CAMMethod.raw_map`.  Methods that need passes of their own
(Smooth Grad-CAM++: noisy inputs; Score-CAM: masked inputs) run them in
:meth:`CAMMethod.prepare`, batched, under the caller's autocast.

"Rectified" (``rectify``) is a method's final ReLU, applied by
:func:`wsol.cams.evaluation_maps`.  CAM has none (wsolevaluation min-max
normalises the raw CAM).  HiResCAM has none either: its paper proves it equal
to CAM (up to ``1/Z``) for a GAP + linear head.  On the sigmoid branch every
weight is clamped at zero (:func:`wsol.dual_branch.clamp_weights`): the channel
weights of cam, gradcam, gradcam++, smoothgradcam++ and xgradcam and the
element-wise weights ``g`` of hirescam; layercam already uses ``ReLU(g)``,
scorecam's weights are probabilities, eigencam has no weights and no class.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

from wsol.branches import branch_rule
from wsol.cams.capture import branch_logits, target_gradients
from wsol.heads import check_weight_channels
from wsol.dual_branch import clamp_weights
from wsol.model import CAMModel
from wsol.protocol import normalize_maps

__all__ = ["CAMInputs", "CAMMethod", "CAM", "GradCAM", "GradCAMPlusPlus",
           "SmoothGradCAMPlusPlus", "XGradCAM", "LayerCAM", "ScoreCAM", "HiResCAM",
           "EigenCAM", "CAM_METHODS", "parse_methods", "resolve_methods", "gradcampp_weights"]

Tensor = torch.Tensor


@dataclass
class CAMInputs:
    """The tensors of one batch and branch that CAM methods turn into maps.

    ``gradients`` is the shared backward (``None`` when no requested method
    needs it); ``extra`` holds what a method's :meth:`CAMMethod.prepare`
    computed for this batch.
    """
    model: CAMModel
    images: Tensor                 # [B, 3, H, W], as given to the model
    targets: Tensor                # [B] class indices
    branch: str                    # "softmax" | "sigmoid" | "recam"
    clamp: bool                    # clamp the weights at zero (the sigmoid branch)
    activations: Tensor            # A: [B, K, h, w], detached
    gradients: Tensor | None = None  # dy/dA: [B, K, h, w]
    extra: dict = field(default_factory=dict, repr=False)

    def class_weights(self) -> Tensor:
        """Head weights of each image's target class on the branch: [B, K]."""
        weight, _ = self.model.class_weights(self.branch)
        check_weight_channels(weight, self.activations.shape[1], self.model.head_name,
                              self.model.feature_layer_name)
        return weight[self.targets].to(self.activations.dtype)


class CAMMethod:
    """A CAM variant, with its settings as constructor arguments."""

    name: ClassVar[str]
    needs_gradients: ClassVar[bool] = False      # uses the shared backward
    uses_gradients: ClassVar[bool] = False       # any gradient of the target logit
    needs_class_weights: ClassVar[bool] = False  # the head's class weights (CAM)
    rectify: ClassVar[bool] = True               # the definition ends with a ReLU

    def prepare(self, inputs: CAMInputs) -> None:
        """Passes of the method's own (under the caller's autocast)."""

    def channel_weights(self, inputs: CAMInputs) -> Tensor:
        raise NotImplementedError

    def raw_map(self, inputs: CAMInputs) -> Tensor:
        """The map before rectification, resizing and normalisation: [B, h, w]."""
        weights = self.channel_weights(inputs)
        if inputs.clamp:
            weights = clamp_weights(weights)
        return torch.einsum("bk,bkhw->bhw", weights, inputs.activations)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CAM(CAMMethod):
    """CAM (Zhou et al., CVPR 2016): the head's class weights.
    map = sum_k w_k A_k."""
    name = "cam"
    needs_class_weights = True
    rectify = False

    def channel_weights(self, inputs):
        return inputs.class_weights()


class GradCAM(CAMMethod):
    """Grad-CAM (Selvaraju et al., ICCV 2017): spatially averaged gradients.
    map = ReLU(sum_k mean_ij(g_k) A_k)."""
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
    2 + sum_ab(A) g = 0, as the Grad-CAM++ reference code does.  The closed
    form assumes an exponential of the score (higher derivatives are powers
    of g); its positive factor exp(y) per image is dropped, every map being
    min-max normalised.
    """
    denominator = torch.addcmul(2 * grad2, activations.sum((2, 3), keepdim=True), grad3)
    undefined = denominator == 0
    terms = grad2 * grad.clamp_min(0) / denominator.masked_fill_(undefined, 1.0)
    return terms.masked_fill_(undefined, 0.0).sum((2, 3))


class GradCAMPlusPlus(CAMMethod):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018): pixel-weighted positive gradients.
    map = ReLU(sum_k (sum_ij alpha_k ReLU(g_k)) A_k), alpha = g^2 / (2 g^2 + sum(A_k) g^3)."""
    name = "gradcam++"
    needs_gradients = True
    uses_gradients = True

    def channel_weights(self, inputs):
        g = inputs.gradients
        g2 = g * g
        return gradcampp_weights(inputs.activations, g, g2, g2 * g)


class SmoothGradCAMPlusPlus(CAMMethod):
    """Smooth Grad-CAM++ (Omeiza et al., 2019): Grad-CAM++ over noisy copies of the input.
    g, g^2, g^3 averaged over ``samples`` inputs x + N(0, (sigma (max x - min x))^2).

    ``A`` comes from the clean image.  Deterministic: the noise is drawn from
    ``generator`` (a fresh one seeded with 0 for every batch when None), on the
    generator's device, so a CPU generator gives the same noise on any device.
    """
    name = "smoothgradcam++"
    uses_gradients = True

    def __init__(self, samples: int = 8, sigma: float = 0.15,
                 generator: torch.Generator | None = None):
        if samples < 1:
            raise ValueError(f"Smooth Grad-CAM++ needs samples >= 1, got {samples}")
        self.samples, self.sigma, self.generator = int(samples), float(sigma), generator

    def prepare(self, inputs):
        images = inputs.images
        generator = self.generator or torch.Generator(device=images.device).manual_seed(0)
        flat = images.flatten(1)
        std = self.sigma * (flat.amax(1) - flat.amin(1)).view(-1, 1, 1, 1)
        moments = [torch.zeros_like(inputs.activations) for _ in range(3)]
        for _ in range(self.samples):
            noise = torch.randn(images.shape, generator=generator, device=generator.device,
                                dtype=images.dtype).to(images.device)
            _, _, _, grads = target_gradients(inputs.model, images + std * noise,
                                              inputs.targets, [inputs.branch])
            grad = grads[inputs.branch]
            moments[0] += grad
            moments[1] += grad.pow(2)
            moments[2] += grad.pow(3)
        inputs.extra[id(self)] = [m / self.samples for m in moments]

    def channel_weights(self, inputs):
        return gradcampp_weights(inputs.activations, *inputs.extra[id(self)])

    def __repr__(self) -> str:
        return f"SmoothGradCAMPlusPlus(samples={self.samples}, sigma={self.sigma})"


class XGradCAM(CAMMethod):
    """XGrad-CAM (Fu et al., BMVC 2020): gradients weighted by the normalised activation.
    map = ReLU(sum_k (sum_ij g_k A_k / sum_ij A_k) A_k)."""
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
    """LayerCAM (Jiang et al., TIP 2021): element-wise positive gradients.
    map = ReLU(sum_k ReLU(g_k) * A_k)."""
    name = "layercam"
    needs_gradients = True
    uses_gradients = True

    def raw_map(self, inputs):
        return (inputs.gradients.clamp_min(0) * inputs.activations).sum(1)


class ScoreCAM(CAMMethod):
    """Score-CAM (Wang et al., CVPRW 2020): the class score of the input masked by each channel.
    map = ReLU(sum_k p_k A_k).

    The mask of channel ``k`` is ``A_k`` bilinearly upsampled to the input and
    min-max normalised; the score is the softmax probability of the class on
    the softmax branch and its sigmoid on the sigmoid branch (independent
    sigmoids are the point of the method).  A constant channel gets weight 0.
    ``topk`` scores only the ``k`` channels of largest mean activation per
    image; ``batch_size`` masked inputs go through the model at once.
    """
    name = "scorecam"

    def __init__(self, batch_size: int = 32, topk: int | None = None):
        if batch_size < 1 or (topk is not None and topk < 1):
            raise ValueError(f"Score-CAM needs batch_size >= 1 and topk >= 1, got "
                             f"{batch_size} and {topk}")
        self.batch_size, self.topk = int(batch_size), topk

    @torch.no_grad()
    def prepare(self, inputs):
        activations, images = inputs.activations, inputs.images
        batch, channels = activations.shape[:2]
        if self.topk is not None and self.topk < channels:
            chosen = activations.mean((2, 3)).topk(self.topk, dim=1).indices
        else:
            chosen = torch.arange(channels, device=activations.device).expand(batch, channels)
        # One (image, channel) pair per masked input, in chunks across images so
        # every forward is full whatever K and B are.
        image_index = torch.arange(batch, device=activations.device).repeat_interleave(
            chosen.shape[1])
        channel_index = chosen.reshape(-1)
        scores = torch.zeros(batch, channels, dtype=activations.dtype, device=activations.device)
        for start in range(0, image_index.numel(), self.batch_size):
            b = image_index[start:start + self.batch_size]
            k = channel_index[start:start + self.batch_size]
            # Upsample only this chunk's channels: all K masks at input size
            # would not fit in memory for K = 2048.
            masks = F.interpolate(activations[b, k][:, None].to(images.dtype),
                                  size=images.shape[-2:], mode="bilinear", align_corners=False)
            flat = masks.flatten(1)
            valid = flat.amax(1) > flat.amin(1)
            masks = normalize_maps(masks[:, 0])[:, None]
            logits = branch_logits(inputs.model(images[b] * masks), inputs.branch)
            prob = (logits.sigmoid() if branch_rule(inputs.branch).probability == "sigmoid"
                    else logits.softmax(1))
            prob = prob.gather(1, inputs.targets[b][:, None])[:, 0]
            scores[b, k] = (prob * valid).to(scores.dtype)
        inputs.extra[id(self)] = scores

    def channel_weights(self, inputs):
        return inputs.extra[id(self)]

    def __repr__(self) -> str:
        return f"ScoreCAM(batch_size={self.batch_size}, topk={self.topk})"


class HiResCAM(CAMMethod):
    """HiResCAM (Draelos & Carin, 2020): element-wise gradients, no averaging.
    map = sum_k g_k * A_k (for a GAP + linear head, CAM / Z)."""
    name = "hirescam"
    needs_gradients = True
    uses_gradients = True
    rectify = False

    def raw_map(self, inputs):
        grad = inputs.gradients
        if inputs.clamp:  # the element-wise weights are the gradients
            grad = clamp_weights(grad)
        return (grad * inputs.activations).sum(1)


class EigenCAM(CAMMethod):
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): no class, no weights.
    map = projection of A on its first principal direction, signed to sum >= 0."""
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


# The methods with their default settings, by name.
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


def resolve_methods(methods: str | CAMMethod | Sequence[str | CAMMethod]) -> list[CAMMethod]:
    """Method instances from names (their default settings), instances, a
    comma-separated string or "all"; one per name, in order."""
    if isinstance(methods, (str, CAMMethod)):
        methods = [methods]
    chosen: list[CAMMethod] = []
    for method in methods:
        found = [method] if isinstance(method, CAMMethod) else \
            [CAM_METHODS[n] for n in parse_methods(method)]
        for m in found:
            if all(c.name != m.name for c in chosen):
                chosen.append(m)
    if not chosen:
        raise ValueError(f"no CAM method given; known methods: {', '.join(CAM_METHODS)}")
    return chosen

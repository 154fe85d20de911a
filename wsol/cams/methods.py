"""The gradient and class-weight CAM methods (docs/method.md).

Each says only how it turns the shared tensors of a batch
(:class:`wsol.cams.base.CAMInputs`) into maps, and owns its settings.  All of
them share one forward and one backward per branch and target set (FinerCAM
adds a backward of its own target through the same forward; ShapleyCAM
differentiates the shared gradient once more).

"Rectified" (``rectify``) is a method's final ReLU, applied by
:func:`wsol.cams.evaluation_maps`.  CAM has none (wsolevaluation min-max
normalises the raw CAM).  HiResCAM has none either: its paper proves it equal
to CAM (up to ``1/Z``) for a GAP + linear head.  On the sigmoid branch every
weight is clamped at zero (:func:`wsol.dual_branch.clamp_weights`): the channel
weights of cam, gradcam, gradcam++, smoothgradcam++, xgradcam, shapleycam and
finercam and the element-wise weights ``g`` of hirescam and gradcamelementwise;
layercam already uses ``ReLU(g)``; fem's weights are fractions.
"""
from __future__ import annotations

import torch

from wsol.branches import branch_rule
from wsol.cams.base import CAMMethod
from wsol.cams.capture import PassNeeds, target_gradients
from wsol.dual_branch import clamp_weights
from wsol.model import CAMModel

__all__ = ["CAM", "GradCAM", "GradCAMPlusPlus", "SmoothGradCAMPlusPlus", "XGradCAM",
           "LayerCAM", "HiResCAM", "GradCAMElementWise", "FEM", "ShapleyCAM", "FinerCAM",
           "gradcampp_weights"]

Tensor = torch.Tensor


class CAM(CAMMethod):
    """CAM (Zhou et al., CVPR 2016): the head's class weights.
    map = sum_k w_k A_k.  On the softmax branch of a network with a class map
    of its own (ACoL's two classifiers, :mod:`wsol.wsol_networks`), that map,
    as wsolevaluation scores it."""
    name = "cam"
    needs_class_weights = True
    rectify = False

    def channel_weights(self, inputs):
        return inputs.class_weights()

    def raw_map(self, inputs):
        aux = inputs.shared.outputs.get("aux") if inputs.shared is not None else None
        if inputs.branch != "softmax" or not aux or "class_maps" not in aux:
            return super().raw_map(inputs)
        if not torch.equal(aux["class_map_labels"], inputs.targets):
            raise ValueError("the network's class maps were made for other classes than the "
                             "ones explained: give one set of targets per call")
        return aux["class_maps"]


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
    random = True

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




class GradCAMElementWise(CAMMethod):
    """Grad-CAM element-wise (pytorch-grad-cam): the element-wise products rectified.
    map = ReLU(sum_k ReLU(g_k * A_k))."""
    name = "gradcamelementwise"
    needs_gradients = True
    uses_gradients = True

    def raw_map(self, inputs):
        grad = inputs.gradients
        if inputs.clamp:  # the element-wise weights are the gradients, as for hirescam
            grad = clamp_weights(grad)
        return (grad * inputs.activations).clamp_min(0).sum(1)


class FEM(CAMMethod):
    """FEM (Fuad et al., IPTA 2020): the share of each channel above its k-sigma level.
    map = ReLU(sum_k w_k A_k), w_k = mean_ij [A_k > mean(A_k) + k std(A_k)].

    No gradient and no class; ``std`` is the population standard deviation,
    as pytorch-grad-cam's (numpy's default)."""
    name = "fem"

    def __init__(self, k: float = 2.0):
        self.k = float(k)

    def channel_weights(self, inputs):
        a = inputs.activations
        std, mean = torch.std_mean(a, dim=(2, 3), correction=0, keepdim=True)
        return (a > mean + self.k * std).to(a.dtype).mean((2, 3))


class ShapleyCAM(CAMMethod):
    """ShapleyCAM (Cai et al., 2025): gradient and Hessian-vector product.
    map = ReLU(sum_k mean_ij(g_k - H A / 2)_k A_k), H the Hessian of y in A.

    The shared backward is taken with a graph, and differentiated once more
    with ``A`` as the vector; for a GAP + linear head (or anything piecewise
    linear after the CAM layer) ``H A = 0`` and ShapleyCAM is Grad-CAM.  The
    target is the raw logit, pytorch-grad-cam's default target."""
    name = "shapleycam"
    needs_gradients = True
    uses_gradients = True

    def pass_needs(self, model: CAMModel) -> PassNeeds:
        return PassNeeds(gradients=True, create_graph=True)

    def prepare(self, inputs):
        inputs.extra[id(self)] = inputs.shared.hessian_product(inputs.grads)

    def channel_weights(self, inputs):
        return (inputs.gradients - 0.5 * inputs.extra[id(self)]).mean((2, 3))


class FinerCAM(CAMMethod):
    """Finer-CAM (Zhang et al., CVPR 2025): Grad-CAM of the target minus similar classes.
    map = ReLU(sum_k mean_ij(ds/dA_k) A_k),
    s = sum_j p_j (y_c - alpha y_j) / (sum_j p_j + 1e-9),

    ``j`` running over the classes at ranks ``comparison_ranks`` when sorted by
    ``|y_j - y_c|`` (rank 0 is the target itself), ``p`` the branch's
    probabilities (softmax on the softmax branch, as pytorch-grad-cam; sigmoid
    on the sigmoid branch), differentiated through ``p`` too, as the library
    does.  Its backward runs through the shared forward."""
    name = "finercam"
    needs_gradients = True
    uses_gradients = True

    def __init__(self, alpha: float = 1.0, comparison_ranks: tuple[int, ...] = (1, 2, 3)):
        if not comparison_ranks or min(comparison_ranks) < 1:
            raise ValueError(f"Finer-CAM compares with classes of rank >= 1, got "
                             f"{comparison_ranks}")
        self.alpha, self.comparison_ranks = float(alpha), tuple(int(r) for r in comparison_ranks)

    def prepare(self, inputs):
        with torch.enable_grad():
            logits = inputs.shared.logits(inputs.branch).float()
        targets = inputs.targets[:, None]
        with torch.no_grad():
            distance = (logits - logits.gather(1, targets)).abs()
            distance.scatter_(1, targets, -1.0)  # the target first, whatever ties
            order = distance.argsort(dim=1, stable=True)
            ranks = [r for r in self.comparison_ranks if r < logits.shape[1]]
            compared = order[:, ranks]
        if not ranks:
            raise ValueError(f"Finer-CAM needs at least 2 classes, the model has "
                             f"{logits.shape[1]}")
        with torch.enable_grad():  # in the shared forward's graph
            probability = (logits.sigmoid() if branch_rule(inputs.branch).probability ==
                           "sigmoid" else logits.softmax(1)).gather(1, compared)
            target = logits.gather(1, targets)
            score = (probability * (target - self.alpha * logits.gather(1, compared))).sum(1) / (
                probability.sum(1) + 1e-9)
        inputs.extra[id(self)] = inputs.shared.gradients(score.sum(), cam_only=True).cam

    def channel_weights(self, inputs):
        return inputs.extra[id(self)].mean((2, 3))

"""The perturbation CAM methods: channel weights from the class score of
perturbed inputs or features (docs/method.md).

All of them batch their perturbed copies across the images of a batch
(chunks of ``batch_size`` whatever ``K`` and ``B`` are), take the unperturbed
score from the shared forward, and skip the copies whose score their
definition already fixes:

* Score-CAM: a constant channel has weight 0 -- no forward;
* AblationCAM: ablating a channel that already holds the ablation value
  changes nothing (weight 0) -- no forward; the others run *only the layers
  after the CAM layer* on the ablated features when the model allows it
  (checked once per model), where the library runs the whole network;
* IS-CAM: a constant channel masks the input to all zeros, the same input
  for every image, channel and step -- one forward for all of them.

The masks of SS-CAM and IS-CAM are torchcam's: normalised at the layer's
resolution, then upsampled; Score-CAM's are the Score-CAM paper's (upsampled,
then normalised).
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from wsol.branches import branch_rule
from wsol.cams.base import CAMInputs, CAMMethod
from wsol.cams.capture import branch_logits, capture, captured
from wsol.model import CAMModel
from wsol.protocol import normalize_maps

__all__ = ["ScoreCAM", "AblationCAM", "SSCAM", "ISCAM", "run_after_cam_layer",
           "head_runs_alone"]

Tensor = torch.Tensor


def _chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def _check_batch_size(name: str, batch_size: int) -> int:
    if batch_size < 1:
        raise ValueError(f"{name} needs batch_size >= 1, got {batch_size}")
    return int(batch_size)


def _target_logits(model: CAMModel, images: Tensor, branch: str, targets: Tensor) -> Tensor:
    """Raw target logits of the branch for a batch of perturbed inputs: [N]."""
    logits = branch_logits(model(images), branch)
    return logits.gather(1, targets[:, None])[:, 0].float()


class ScoreCAM(CAMMethod):
    """Score-CAM (Wang et al., CVPRW 2020): the class score of the input masked by each channel.
    map = ReLU(sum_k p_k A_k).

    The mask of channel ``k`` is ``A_k`` bilinearly upsampled to the input and
    min-max normalised; the score is the softmax probability of the class on
    the softmax branch and its sigmoid on the sigmoid branch (independent
    sigmoids are the point of the method).  A constant channel gets weight 0
    (and no forward).  ``topk`` scores only the ``k`` channels of largest mean
    activation per image; ``batch_size`` masked inputs go through the model at
    once.
    """
    name = "scorecam"

    def __init__(self, batch_size: int = 32, topk: int | None = None):
        if topk is not None and topk < 1:
            raise ValueError(f"Score-CAM needs topk >= 1, got {topk}")
        self.batch_size, self.topk = _check_batch_size("Score-CAM", batch_size), topk

    @torch.no_grad()
    def prepare(self, inputs):
        activations, images = inputs.activations, inputs.images
        batch, channels = activations.shape[:2]
        if self.topk is not None and self.topk < channels:
            chosen = activations.mean((2, 3)).topk(self.topk, dim=1).indices
        else:
            chosen = torch.arange(channels, device=activations.device).expand(batch, channels)
        image_index = torch.arange(batch, device=activations.device).repeat_interleave(
            chosen.shape[1])
        channel_index = chosen.reshape(-1)
        # A constant channel is a constant mask, normalised to zeros: weight 0.
        flat = activations[image_index, channel_index].flatten(1)
        live = flat.amax(1) > flat.amin(1)
        image_index, channel_index = image_index[live], channel_index[live]
        scores = torch.zeros(batch, channels, dtype=activations.dtype, device=activations.device)
        probability = branch_rule(inputs.branch).probability
        for part in _chunks(image_index.numel(), self.batch_size):
            b, k = image_index[part], channel_index[part]
            # Upsample only this chunk's channels: all K masks at input size
            # would not fit in memory for K = 2048.
            masks = F.interpolate(activations[b, k][:, None].to(images.dtype),
                                  size=images.shape[-2:], mode="bilinear", align_corners=False)
            masks = normalize_maps(masks[:, 0])[:, None]
            logits = branch_logits(inputs.model(images[b] * masks), inputs.branch)
            prob = logits.sigmoid() if probability == "sigmoid" else logits.softmax(1)
            scores[b, k] = prob.gather(1, inputs.targets[b][:, None])[:, 0].to(scores.dtype)
        inputs.extra[id(self)] = scores

    def channel_weights(self, inputs):
        return inputs.extra[id(self)]


# ---------------------------------------------------------------------------
# Running the layers after the CAM layer alone (AblationCAM)
# ---------------------------------------------------------------------------
def run_after_cam_layer(model: CAMModel, features: Tensor, backbone_input: Tensor) -> dict:
    """The model's outputs when its CAM layer outputs ``features`` (the
    layer's own layout) instead of what ``backbone_input`` gives: the layers
    before it run on ``backbone_input``, those after it on ``features``."""
    handle = model.feature_module.register_forward_hook(lambda m, i, o: features)
    try:
        with torch.no_grad():
            return model(backbone_input)
    finally:
        handle.remove()


def head_runs_alone(model: CAMModel, images: Tensor) -> bool:
    """Whether the layers after the CAM layer depend on the input only through
    it (no skip connection around it, nothing that keeps the batch size), so
    a batch of features can go through them after a one-image backbone.
    Checked once per model on two images: their features swapped and repeated
    must give their own logits."""
    key = ("head_alone", model.feature_layer_name)
    if key in model.verified:
        return model.verified[key]
    probe = images[:2] if images.shape[0] >= 2 else torch.cat([images, images.flip(-1)])
    with torch.no_grad(), capture(model, requires_grad=False) as hooked:
        direct = model(probe)
    features = captured(hooked)[[1, 0, 1]]
    try:
        swapped = run_after_cam_layer(model, features, probe)
        alone = all(
            direct[key_] is None or torch.allclose(
                swapped[key_].float(), direct[key_][[1, 0, 1]].float(), rtol=1e-4, atol=1e-5)
            for key_ in direct)
    except RuntimeError:  # a skip connection around the layer: the batch sizes differ
        alone = False
    model.verified[key] = alone
    return alone


class AblationCAM(CAMMethod):
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020): the score's drop without each channel.
    map = ReLU(sum_k w_k A_k), w_k = (y - y_k) / y,

    ``y_k`` the raw target logit with channel ``k`` of the CAM layer's output
    set to 0 -- or, when the image's output is not non-negative, to its
    minimum minus 1e7 (pytorch-grad-cam's AblationLayer); for token layers the
    channel is ablated in every token (its AblationLayerVit).  ``batch_size``
    ablated copies per forward of the whole network; when the layers after the
    CAM layer run alone, ``head_batch_size`` copies per run of those layers.
    """
    name = "ablationcam"

    def __init__(self, batch_size: int = 32, head_batch_size: int = 512):
        self.batch_size = _check_batch_size("Ablation-CAM", batch_size)
        self.head_batch_size = _check_batch_size("Ablation-CAM", head_batch_size)

    @torch.no_grad()
    def prepare(self, inputs):
        model, shared = inputs.model, inputs.shared
        raw = shared.raw_activation.detach()
        channel_dim = {"nchw": 1, "nhwc": 3, "tokens": 2}[shared.layout.kind]
        batch, channels = raw.shape[0], raw.shape[channel_dim]
        original = shared.logits(inputs.branch).detach().float().gather(
            1, inputs.targets[:, None])[:, 0]
        low = raw.flatten(1).amin(1)
        value = torch.where(low == 0, torch.zeros_like(low), low - 1e7)  # [B]
        per_channel = raw.movedim(channel_dim, 1).flatten(2)               # [B, K, n]
        # Ablating a channel that already holds the value changes nothing: y_k = y.
        changes = (per_channel != value[:, None, None]).any(2)
        image_index, channel_index = changes.nonzero(as_tuple=True)
        ablated = original[:, None].expand(batch, channels).clone()
        alone = head_runs_alone(model, inputs.images)
        size = self.head_batch_size if alone else self.batch_size
        for part in _chunks(image_index.numel(), size):
            b, k = image_index[part], channel_index[part]
            features = raw[b].movedim(channel_dim, 1).clone()
            features[torch.arange(b.numel(), device=b.device), k] = value[b].to(
                features.dtype).view(-1, *([1] * (features.dim() - 2)))
            features = features.movedim(1, channel_dim)
            backbone_input = inputs.images[b[:1]] if alone else inputs.images[b]
            outputs = run_after_cam_layer(model, features, backbone_input)
            ablated[b, k] = branch_logits(outputs, inputs.branch).gather(
                1, inputs.targets[b][:, None])[:, 0].float()
        inputs.extra[id(self)] = (original[:, None] - ablated) / original[:, None]

    def channel_weights(self, inputs):
        return inputs.extra[id(self)].to(inputs.activations.dtype)


# ---------------------------------------------------------------------------
# torchcam's score family: SS-CAM and IS-CAM
# ---------------------------------------------------------------------------
def _torchcam_masks(activations: Tensor) -> Tensor:
    """Each channel min-max normalised at the layer's resolution, with
    torchcam's 1e-8 guard (a constant channel becomes zeros): [B, K, h, w]."""
    low = activations.amin((2, 3), keepdim=True)
    shifted = activations - low
    return shifted / (shifted.amax((2, 3), keepdim=True) + 1e-8)


def _upsample(masks: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(masks[:, None], size=size, mode="bilinear", align_corners=False)


class _ScoreDifferences(CAMMethod):
    """Shared by SS-CAM and IS-CAM: weights softmax_k of the mean, over the
    method's ``samples`` perturbed inputs, of the raw target logit minus the
    unperturbed one (torchcam)."""
    batch_size: int
    samples: int

    def channel_weights(self, inputs):
        return inputs.extra[id(self)]

    def _finish(self, inputs: CAMInputs, total: Tensor) -> None:
        inputs.extra[id(self)] = torch.softmax(total / self.samples, dim=1).to(
            inputs.activations.dtype)

    @staticmethod
    def _baseline(inputs: CAMInputs) -> Tensor:
        return inputs.branch_logits().gather(1, inputs.targets[:, None])[:, 0]


class SSCAM(_ScoreDifferences):
    """SS-CAM (Wang et al., 2020): Score-CAM with noisy masks.
    map = ReLU(sum_k w_k A_k), w = softmax_k(mean_s [y((M_k + d_s) * x) - y(x)]),

    ``M_k`` the normalised channel upsampled to the input, ``d_s ~
    N(0, std^2)`` per pixel, ``y`` the raw target logit (torchcam).  The noise
    is drawn from ``generator`` (a fresh one seeded with 0 for every batch when
    None) on the generator's device, sample by sample, image by image, channel
    by channel -- torchcam's order, so a CPU generator seeded as torch's
    global one gives torchcam's noise."""
    name = "sscam"
    random = True

    def __init__(self, samples: int = 35, std: float = 2.0, batch_size: int = 32,
                 generator: torch.Generator | None = None):
        if samples < 1:
            raise ValueError(f"SS-CAM needs samples >= 1, got {samples}")
        self.samples, self.std, self.generator = int(samples), float(std), generator
        self.batch_size = _check_batch_size("SS-CAM", batch_size)

    @torch.no_grad()
    def prepare(self, inputs):
        images, activations = inputs.images, inputs.activations
        generator = self.generator or torch.Generator(device=images.device).manual_seed(0)
        batch, channels = activations.shape[:2]
        masks = _torchcam_masks(activations).flatten(0, 1)       # [B*K, h, w]
        size = tuple(images.shape[-2:])
        total = torch.zeros(batch * channels, device=images.device)
        pairs = batch * channels
        for part in _chunks(self.samples * pairs, self.batch_size):
            flat = torch.arange(part.start, part.stop, device=images.device) % pairs
            noise = self.std * torch.randn((flat.numel(), 1, *size), generator=generator,
                                           device=generator.device).to(images.device)
            masked = (_upsample(masks[flat], size) + noise) * images[flat // channels]
            total.index_add_(0, flat, _target_logits(inputs.model, masked.to(images.dtype),
                                                     inputs.branch,
                                                     inputs.targets[flat // channels]))
        baseline = self._baseline(inputs)
        self._finish(inputs, total.view(batch, channels) - self.samples * baseline[:, None])


class ISCAM(_ScoreDifferences):
    """IS-CAM (Naidu et al., 2020): Score-CAM integrated over mask scales.
    map = ReLU(sum_k w_k A_k), w = softmax_k(mean_i [y(c_i M_k * x) - y(x)]),
    c_i = sum_{j <= i} j / N for i = 1..N.

    ``M_k`` as SS-CAM's; the scales ``c_i`` are torchcam's running sum (so the
    last is (N + 1) / 2, not 1).  A constant channel's masked input is zeros
    at every scale: scored once for the whole batch."""
    name = "iscam"

    def __init__(self, samples: int = 10, batch_size: int = 32):
        if samples < 1:
            raise ValueError(f"IS-CAM needs samples >= 1, got {samples}")
        self.samples, self.batch_size = int(samples), _check_batch_size("IS-CAM", batch_size)

    @torch.no_grad()
    def prepare(self, inputs):
        images, activations = inputs.images, inputs.activations
        batch, channels = activations.shape[:2]
        masks = _torchcam_masks(activations)
        size = tuple(images.shape[-2:])
        live = masks.flatten(2).amax(2) > 0                       # [B, K]
        image_index, channel_index = live.nonzero(as_tuple=True)
        scales = torch.tensor([(i + 1) / self.samples for i in range(self.samples)],
                              dtype=torch.float64).cumsum(0).tolist()
        total = torch.zeros(batch, channels, device=images.device)
        pairs = image_index.numel()
        for part in _chunks(self.samples * pairs, self.batch_size):
            flat = torch.arange(part.start, part.stop, device=images.device)
            b, k = image_index[flat % pairs], channel_index[flat % pairs]
            scale = torch.tensor(scales, device=images.device,
                                 dtype=images.dtype)[flat // pairs].view(-1, 1, 1, 1)
            masked = scale * (_upsample(masks[b, k], size) * images[b])
            total.index_put_((b, k), _target_logits(inputs.model, masked.to(images.dtype),
                                                    inputs.branch, inputs.targets[b]),
                             accumulate=True)
        if not bool(live.all()):  # one forward of the blank input serves every image
            blank = branch_logits(inputs.model(torch.zeros_like(images[:1])), inputs.branch)
            blank = blank[0, inputs.targets].float()[:, None]
            total = torch.where(live, total, self.samples * blank)
        self._finish(inputs, total - self.samples * self._baseline(inputs)[:, None])

"""The networks of wsolevaluation's ACoL, SPG and ADL (docs/method.md), on
VGG16, ResNet50 and InceptionV3, with its parameter names so that its
checkpoints load, and the two methods' losses.

* **ADL** (Choe & Shim, CVPR 2019): parameter-free layers inside the
  backbone that, while training, multiply the features by either their
  sigmoid importance map or a mask dropping the most activated region.  The
  network is otherwise the CAM network; in eval mode the layers are identity.
* **ACoL** (Zhang et al., CVPR 2018): two convolutional classifiers (``A``,
  ``B``) on the backbone's feature; ``B`` sees the feature with the region
  where ``A``'s normalised class map reaches ``--acol_threshold`` erased.  The
  class map is the element-wise maximum of both classifiers' normalised class
  channels (:func:`acol_class_map`).
* **SPG** (Zhang et al., ECCV 2018): a convolutional classifier
  (``SPG_A4``) and three one-channel heads (``SPG_B_*`` at two depths,
  ``SPG_C``) trained to reproduce the foreground/background masks that the
  class map and the heads' own maps give at the six ``--spg_threshold_*``
  (:func:`spg_loss`).  The class map is ``SPG_A4``'s class channel.

Each network returns ``{"logits": ..., <what its loss reads>}``; the
classifier (``classifier_A.4``, ``SPG_A4``/``SPG_A_4``) is the head that the
sigmoid branch copies, so its output may carry the branch's channels after
the ``C`` classes (:class:`wsol.model.CAMModel`): the networks read only the
first ``C`` channels for their own rules.
"""
from __future__ import annotations

import functools
import re
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from wsol.backbones import (InceptionCam, InceptionTrunk, VggCam, init_weights, resnet_cam,
                            vgg_features)

__all__ = ["ADL", "vgg_adl", "resnet_adl", "inception_adl", "VggAcol", "ResNetAcol",
           "InceptionAcol", "VggSpg", "ResNetSpg", "InceptionSpg", "minmax_per_channel",
           "acol_class_map", "acol_loss", "spg_mask", "spg_loss", "SPG_MASK_SIZE",
           "RESNET_ADL_POSITIONS", "resnet_adl_keys", "resnet_spg_keys", "drop_fc_keys",
           "vgg_spg_keys"]

Tensor = torch.Tensor


class ADL(nn.Module):
    """Attention-based Dropout Layer: while training, ``x * m`` with ``m`` the
    importance map ``sigmoid(mean_c x)`` or, with probability ``drop_rate``
    (one draw per batch), the drop mask ``mean_c x < threshold * max``
    (per image); identity in eval mode.  The draw comes from torch's global
    generator, as in wsolevaluation."""

    def __init__(self, drop_rate: float = 0.75, threshold: float = 0.8):
        super().__init__()
        for name, value in (("drop rate", drop_rate), ("threshold", threshold)):
            if not 0 <= value <= 1:
                raise ValueError(f"ADL's {name} must lie in [0, 1], got {value}")
        self.drop_rate, self.threshold = drop_rate, threshold

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        attention = x.mean(1, keepdim=True)
        drop = float((torch.rand([]) + self.drop_rate).floor())  # 1 with probability drop_rate
        if drop:
            peak = attention.flatten(1).amax(1).view(-1, 1, 1, 1)
            return x * (attention < peak * self.threshold).to(x.dtype)
        return x * torch.sigmoid(attention)

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, threshold={self.threshold}"


def _adl_factory(drop_rate: float, threshold: float) -> Callable[[], ADL]:
    return functools.partial(ADL, drop_rate, threshold)


def vgg_adl(num_classes: int, large_feature_map: bool = False, adl_drop_rate: float = 0.75,
            adl_threshold: float = 0.9) -> VggCam:
    """VGG16-CAM with ADL after the third and fourth blocks and the last conv
    (wsolevaluation's ``adl`` layout; the layers shift the ``features.N``
    numbering)."""
    adl = _adl_factory(adl_drop_rate, adl_threshold)
    return VggCam(num_classes, large_feature_map, vgg_features(large_feature_map, "adl", adl))


# After which blocks of layer3 and layer4 ADL sits (wsolevaluation).
RESNET_ADL_POSITIONS = {"layer3": (0,), "layer4": (0, 2)}


def resnet_adl(num_classes: int, large_feature_map: bool = False, adl_drop_rate: float = 0.75,
               adl_threshold: float = 0.9) -> nn.Module:
    """ResNet50-CAM with ADL after blocks 0 of layer3 and 0 and 2 of layer4
    (``layer3.1`` and ``layer4.1``, ``layer4.4`` are ADL: the blocks after
    them are renumbered)."""
    model = resnet_cam(50, num_classes, large_feature_map)
    adl = _adl_factory(adl_drop_rate, adl_threshold)
    for stage, positions in RESNET_ADL_POSITIONS.items():
        blocks: list[nn.Module] = []
        for i, block in enumerate(getattr(model, stage)):
            blocks.append(block)
            if i in positions:
                blocks.append(adl())
        setattr(model, stage, nn.Sequential(*blocks))
    return model


def inception_adl(num_classes: int, large_feature_map: bool = False,
                  adl_drop_rate: float = 0.75, adl_threshold: float = 0.9) -> nn.Module:
    return InceptionCam(num_classes, large_feature_map, _adl_factory(adl_drop_rate, adl_threshold))


# ---------------------------------------------------------------------------
# ACoL
# ---------------------------------------------------------------------------
def minmax_per_channel(x: Tensor) -> Tensor:
    """Each channel scaled to [0, 1] over its spatial positions (wsolevaluation's
    ``normalize_tensor``; a constant channel gives NaN there and here)."""
    flat = x.flatten(2)
    low, high = flat.amin(2, keepdim=True), flat.amax(2, keepdim=True)
    return ((flat - low) / (high - low)).view_as(x)


def _conv_classifier(in_channels: int, num_classes: int, inplace: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, 1024, kernel_size=3, stride=1, padding=1), nn.ReLU(inplace),
        nn.Conv2d(1024, 1024, kernel_size=3, stride=1, padding=1), nn.ReLU(inplace),
        nn.Conv2d(1024, num_classes, kernel_size=1, stride=1, padding=0))


class _Acol(nn.Module):
    """ACoL's two classifiers on a backbone feature (a subclass's ``backbone``:
    image -> feature).  ``forward(x, labels)``: the erasing uses the labels
    while training and, for maps, the classes they explain; without labels
    the top-1 class of classifier A, as in wsolevaluation."""

    def _add_classifiers(self, in_channels: int, num_classes: int, threshold: float,
                         inplace: bool) -> None:
        if not 0 <= threshold <= 1:
            raise ValueError(f"--acol_threshold must lie in [0, 1], got {threshold}")
        self.num_classes, self.threshold = num_classes, threshold
        self.classifier_A = _conv_classifier(in_channels, num_classes, inplace)
        self.classifier_B = _conv_classifier(in_channels, num_classes, inplace)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def backbone(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        feature = self.backbone(x)
        feat_map_a = self.classifier_A(feature)  # the class channels, then any branch's
        logits = torch.flatten(self.avgpool(feat_map_a), 1)
        own_a = feat_map_a[:, :self.num_classes]
        if labels is None:
            labels = logits[:, :self.num_classes].argmax(1)
        with torch.no_grad():
            attention = minmax_per_channel(own_a[torch.arange(len(labels)), labels][:, None])
            # Erased where the attention reaches the threshold (a NaN one is kept).
            keep = (~(attention >= self.threshold)).to(feature.dtype)
        feat_map_b = self.classifier_B(feature * keep)
        return {"logits": logits, "logit_b": torch.flatten(self.avgpool(feat_map_b), 1),
                "feat_map_a": own_a, "feat_map_b": feat_map_b,
                "class_maps": acol_class_map(own_a, feat_map_b, labels),
                "class_map_labels": labels}


def acol_class_map(feat_map_a: Tensor, feat_map_b: Tensor, labels: Tensor) -> Tensor:
    """ACoL's map of each image's class ``[B, h, w]``: the maximum of both
    classifiers' class channels, each min-max normalised (detached)."""
    index = torch.arange(len(labels), device=labels.device)
    a = minmax_per_channel(feat_map_a.detach()[index, labels][:, None])
    b = minmax_per_channel(feat_map_b.detach()[index, labels][:, None])
    return torch.maximum(a, b)[:, 0]


class VggAcol(_Acol):
    """VGG16 (ACoL layout: 3x3 max-pools, the last at stride 1) and a 3x3
    average pool before the classifiers."""

    def __init__(self, num_classes: int, large_feature_map: bool = False,
                 acol_threshold: float = 0.7):
        super().__init__()
        self.features = vgg_features(large_feature_map, "acol")
        self._add_classifiers(512, num_classes, acol_threshold, inplace=False)
        init_weights(self, "xavier")

    def backbone(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.features(x), kernel_size=3, stride=1, padding=1)


class ResNetAcol(_Acol):
    """ResNet50-CAM's backbone (layer4 at stride 1) and the classifiers on layer4."""

    def __init__(self, num_classes: int, large_feature_map: bool = False,
                 acol_threshold: float = 0.7):
        super().__init__()
        trunk = resnet_cam(50, 1, large_feature_map)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(trunk, name))
        self._add_classifiers(2048, num_classes, acol_threshold, inplace=False)
        init_weights(self, "he")

    def backbone(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class InceptionAcol(_Acol, InceptionTrunk):
    """InceptionV3 to Mixed_6e and the classifiers on it."""

    def __init__(self, num_classes: int, large_feature_map: bool = False,
                 acol_threshold: float = 0.7):
        super().__init__(large_feature_map)
        self._add_classifiers(768, num_classes, acol_threshold, inplace=True)
        init_weights(self, "xavier")

    def backbone(self, x: Tensor) -> Tensor:
        return self.Mixed_6e(self.to_mixed_6d(self.pool_5d(self.to_mixed_5d(x))))


def acol_loss(outputs: dict, labels: Tensor) -> Tensor:
    """ACoL's loss: the cross-entropy of both classifiers."""
    return F.cross_entropy(outputs["logits"].float(), labels) + \
        F.cross_entropy(outputs["aux"]["logit_b"].float(), labels)


# ---------------------------------------------------------------------------
# SPG
# ---------------------------------------------------------------------------
SPG_MASK_SIZE = (224, 224)  # wsolevaluation's masks are 224x224 whatever the input size


def _conv_relu(cin: int, cout: int, n: int = 1) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, kernel_size=3, padding=1),
                   nn.ReLU(inplace=True)]
    return layers


def _one_channel_head(cin: int, width: int) -> nn.Sequential:
    return nn.Sequential(*_conv_relu(cin, width), nn.Conv2d(width, 1, kernel_size=1))


class _Spg(nn.Module):
    """SPG's outputs from its network's maps: the class map of each image's
    class (labels, else the top-1), its fused side-branch attention and the
    logits."""
    num_classes: int

    def _add_side_heads(self, b_in: tuple[int, int], b_width: int, c_in: int) -> None:
        """GAP, ``SPG_B_1a``/``SPG_B_2a`` (3x3 conv + ReLU at the two depths),
        the shared ``SPG_B_shared`` and ``SPG_C`` (3x3 conv + ReLU, 1x1 to one channel)."""
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.SPG_B_1a = nn.Sequential(*_conv_relu(b_in[0], b_width))
        self.SPG_B_2a = nn.Sequential(*_conv_relu(b_in[1], b_width))
        self.SPG_B_shared = _one_channel_head(b_width, b_width)
        self.SPG_C = _one_channel_head(c_in, 512)

    def _outputs(self, feat_map: Tensor, logits_b1: Tensor, logits_b2: Tensor,
                 logits_c: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        logits = torch.flatten(self.avgpool(feat_map), 1)
        own = feat_map[:, :self.num_classes]
        if labels is None:
            labels = logits[:, :self.num_classes].argmax(1)
        up = functools.partial(F.interpolate, size=SPG_MASK_SIZE, mode="bilinear",
                               align_corners=False)
        with torch.no_grad():
            index = torch.arange(len(labels), device=labels.device)
            attention = minmax_per_channel(up(own.detach()[index, labels][:, None]))
            fused = (torch.sigmoid(up(logits_b1.detach())) +
                     torch.sigmoid(up(logits_b2.detach()))) / 2
        return {"logits": logits, "attention": attention, "fused_attention": fused,
                "logits_b1": logits_b1, "logits_b2": logits_b2, "logits_c": logits_c}


class VggSpg(_Spg):
    def __init__(self, num_classes: int, large_feature_map: bool = False):
        super().__init__()
        self.num_classes, self.large_feature_map = num_classes, large_feature_map
        self.features = vgg_features(large_feature_map, "spg")
        self.SPG_A_1 = nn.Sequential(*_conv_relu(256, 512, 3))
        self.SPG_A_2 = nn.Sequential(*_conv_relu(512, 512, 3))
        self.SPG_A_3 = nn.Sequential(*_conv_relu(512, 512, 2))
        self.SPG_A_4 = nn.Conv2d(512, num_classes, kernel_size=1)
        self._add_side_heads((512, 512), 512, 512)
        init_weights(self, "xavier")

    def forward(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        x = self.SPG_A_1(self.features(x))
        if not self.large_feature_map:
            x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        logits_b1 = self.SPG_B_shared(self.SPG_B_1a(x))
        x = self.SPG_A_2(x)
        logits_b2 = self.SPG_B_shared(self.SPG_B_2a(x))
        x = self.SPG_A_3(x)
        return self._outputs(self.SPG_A_4(x), logits_b1, logits_b2, self.SPG_C(x), labels)


class ResNetSpg(_Spg):
    """ResNet50 with layer3 split after its first block (``SPG_A1``,
    ``SPG_A2``) and the classifier ``SPG_A4`` on layer4."""

    def __init__(self, num_classes: int, large_feature_map: bool = False):
        super().__init__()
        self.num_classes = num_classes
        trunk = resnet_cam(50, 1, large_feature_map)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer4"):
            setattr(self, name, getattr(trunk, name))
        self.SPG_A1 = nn.Sequential(trunk.layer3[0])
        self.SPG_A2 = nn.Sequential(*trunk.layer3[1:])
        self.SPG_A4 = nn.Conv2d(2048, num_classes, kernel_size=1)
        self._add_side_heads((1024, 1024), 1024, 2048)
        init_weights(self, "xavier")

    def forward(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.SPG_A1(self.layer2(self.layer1(x)))
        logits_b1 = self.SPG_B_shared(self.SPG_B_1a(x))
        x = self.SPG_A2(x)
        logits_b2 = self.SPG_B_shared(self.SPG_B_2a(x))
        x = self.layer4(x)
        return self._outputs(self.SPG_A4(x), logits_b1, logits_b2, self.SPG_C(x), labels)


class InceptionSpg(_Spg, InceptionTrunk):
    """InceptionV3-CAM with SPG's heads: ``SPG_B_1a`` after Mixed_5d's pool,
    ``SPG_B_2a`` on Mixed_6d's output (as wsolevaluation wires it), ``SPG_C``
    beside the classifier."""

    def __init__(self, num_classes: int, large_feature_map: bool = False):
        super().__init__(large_feature_map)
        self.num_classes = num_classes
        self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, 1024, 3, padding=1), nn.ReLU(True))
        self.SPG_A3_2b = nn.Sequential(nn.Conv2d(1024, 1024, 3, padding=1), nn.ReLU(True))
        self.SPG_A4 = nn.Conv2d(1024, num_classes, 1)
        self._add_side_heads((288, 768), 512, 1024)
        init_weights(self, "xavier")

    def forward(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        x = self.pool_5d(self.to_mixed_5d(x))
        logits_b1 = self.SPG_B_shared(self.SPG_B_1a(x))
        x = self.to_mixed_6d(x)
        logits_b2 = self.SPG_B_shared(self.SPG_B_2a(x))
        x = F.dropout(self.Mixed_6e(x), 0.5, self.training)
        x = F.dropout(self.SPG_A3_1b(x), 0.5, self.training)
        x = F.dropout(self.SPG_A3_2b(x), 0.5, self.training)
        return self._outputs(self.SPG_A4(x), logits_b1, logits_b2, self.SPG_C(x), labels)


def spg_mask(attention: Tensor, high: float, low: float, min_foreground: int = 30) -> Tensor:
    """SPG's target mask ``[B, 1, 224, 224]``: 1 where ``attention > high``
    (where fewer than ``min_foreground`` pixels pass, ``> 0.7 * max`` of that
    image instead), 0 where ``attention < low`` (this wins), 255 (ignored)
    elsewhere."""
    fg = attention > high
    few = fg.flatten(1).sum(1) < min_foreground
    peak = attention.flatten(1).amax(1) * 0.7
    fg = torch.where(few.view(-1, 1, 1, 1), attention > peak.view(-1, 1, 1, 1), fg)
    mask = torch.full_like(attention, 255.0)
    mask = mask.masked_fill(fg, 1.0)
    return mask.masked_fill(attention < low, 0.0)


def _masked_bce(logits: Tensor, mask: Tensor) -> Tensor:
    """BCE with logits (upsampled to the mask's size) over the pixels the mask
    does not ignore, averaged over them."""
    logits = F.interpolate(logits.float(), size=SPG_MASK_SIZE, mode="bilinear",
                           align_corners=False)
    keep = mask < 255
    return F.binary_cross_entropy_with_logits(logits[keep], mask[keep])


def spg_loss(outputs: dict, labels: Tensor,
             thresholds: tuple[tuple[float, float], ...]) -> Tensor:
    """SPG's loss: the classifier's cross-entropy, plus masked BCEs of
    ``logits_b2`` against the class map's mask (thresholds 1), of
    ``logits_b1`` against ``sigmoid(logits_b2)``'s (thresholds 2) and of
    ``logits_c`` against the fused attention's (thresholds 3)."""
    (h1, l1), (h2, l2), (h3, l3) = thresholds
    aux = outputs["aux"]
    b2 = torch.sigmoid(F.interpolate(aux["logits_b2"].float(), size=SPG_MASK_SIZE,
                                     mode="bilinear", align_corners=False))
    return (F.cross_entropy(outputs["logits"].float(), labels)
            + _masked_bce(aux["logits_b2"], spg_mask(aux["attention"], h1, l1))
            + _masked_bce(aux["logits_b1"], spg_mask(b2.detach(), h2, l2))
            + _masked_bce(aux["logits_c"], spg_mask(aux["fused_attention"], h3, l3)))


# ---------------------------------------------------------------------------
# ImageNet weights (torchvision's names) -> these networks, as wsolevaluation maps them
# ---------------------------------------------------------------------------
_BLOCK = re.compile(r"^(layer\d)\.(\d+)\.")


def resnet_adl_keys(state: dict, model: nn.Module) -> dict:
    """Blocks after an ADL layer move up by the ADL layers before them."""
    out = {}
    for key, value in state.items():
        m = _BLOCK.match(key)
        if m and m.group(1) in RESNET_ADL_POSITIONS:
            block = int(m.group(2))
            block += sum(pos < block for pos in RESNET_ADL_POSITIONS[m.group(1)])
            key = f"{m.group(1)}.{block}.{key[m.end():]}"
        out[key] = value
    return out


def resnet_spg_keys(state: dict, model: nn.Module) -> dict:
    """layer3's first block is ``SPG_A1.0``, the others ``SPG_A2.(k-1)``; no fc."""
    out = {}
    for key, value in state.items():
        m = _BLOCK.match(key)
        if m and m.group(1) == "layer3":
            block = int(m.group(2))
            key = (f"SPG_A1.0.{key[m.end():]}" if block == 0
                   else f"SPG_A2.{block - 1}.{key[m.end():]}")
        if not key.startswith("fc."):
            out[key] = value
    return out


def drop_fc_keys(state: dict, model: nn.Module) -> dict:
    """ResNet50-ACoL has no ``fc``."""
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


# torchvision's VGG16 convolutions 17-28 are VGG16-SPG's SPG_A_1 and SPG_A_2.
_VGG_SPG_RENAMES = {17: "SPG_A_1.0", 19: "SPG_A_1.2", 21: "SPG_A_1.4",
                    24: "SPG_A_2.0", 26: "SPG_A_2.2", 28: "SPG_A_2.4"}


def vgg_spg_keys(state: dict, model: nn.Module) -> dict:
    out = {}
    for key, value in state.items():
        m = re.match(r"^features\.(\d+)\.", key)
        if m and int(m.group(1)) in _VGG_SPG_RENAMES:
            out[f"{_VGG_SPG_RENAMES[int(m.group(1))]}.{key[m.end():]}"] = value
        elif m:
            out[key] = value
    return out

"""Architectures by name: the paper's CAM and Grad-CAM networks, stock
torchvision classifiers, DeiT-Tiny and any timm model.

Each entry builds a plain classifier ``x -> logits`` and says which module is
its CAM layer and which its classification head; that is all
:class:`wsol.model.CAMModel` needs.  Parameter names are the ones the
released checkpoints use, so those load unchanged:

* ``vgg16``, ``resnet50``, ``inception_v3`` (and ``resnet18``): the CAM
  networks of wsolevaluation (``features.N``, ``conv6``, ``fc``, ``layerX``,
  ``Mixed_*``, ``SPG_A3_*``, ``SPG_A4``).
* ``vgg16_gradcam``, ``inception_v3_gradcam``: the networks the method's public
  code trains for its Grad-CAM rows (docs/reproducing.md): torchvision's VGG16
  without its last max-pool (14x14 maps at 224 px) with its 3-layer MLP
  classifier, and torchvision's Inception-v3 (CAM layer ``Mixed_7c``).  The
  Grad-CAM ResNet50 is ``resnet50`` without the large feature map.
* ``vit``: DeiT-Tiny as the method's earlier public code builds it (timm).
* torchvision stock classifiers, and ``timm:<model name>``.

``sigmoid_branch`` is the name the public code gives the sigmoid branch of
each network (``fc2``, ``SPG_A4_2``, ``classifier_2``, ``head2``);
``lr_rule`` is the wsolevaluation learning-rate rule of the network
(:mod:`wsol.runtime.training`); ``branch_init`` the public code's random
initialisation of the branch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models import inception as tv_inception

from wsol.dual_branch import normal_branch_init
from wsol.model import CAMModel
from wsol.protocol import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ArchitectureSpec", "LRRule", "ARCHITECTURES", "GRADCAM_NETWORKS",
           "architecture_names", "get_spec", "build_architecture", "build_cam_model",
           "network_for", "recognise_network", "import_timm"]


@dataclass(frozen=True)
class LRRule:
    """wsolevaluation's learning-rate groups, as its public code applies them:
    a parameter whose (public) name *contains* one of ``patterns`` is matched;
    matched parameters get ``lr * lr_classifier_ratio`` when
    ``matched_is_classifier``, the others ``lr`` (and the reverse otherwise)."""
    patterns: tuple[str, ...]
    matched_is_classifier: bool


# The rules of the public code (docs/reproducing.md, "Learning-rate groups").
VGG_RULE = LRRule(("features.",), matched_is_classifier=False)
RESNET_RULE = LRRule(("layer4.", "fc."), matched_is_classifier=True)
INCEPTION_RULE = LRRule(("Mixed", "Conv2d_1", "Conv2d_2", "Conv2d_3", "Conv2d_4"),
                        matched_is_classifier=False)
VIT_RULE = LRRule(("patch_embed.", "blocks.", "norm"), matched_is_classifier=False)


def xavier_branch_init(branch: nn.Module) -> None:
    """InceptionV3-CAM's conv branch (``SPG_A4_2``): xavier-uniform, bias 0."""
    for m in branch.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def inception_tv_branch_init(branch: nn.Module) -> None:
    """torchvision Inception-v3's own initialisation, which the public code
    applies to its ``fc2``: truncated normal (std 0.1, cut at +-2) weights,
    PyTorch's default bias."""
    for m in branch.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.reset_parameters()
            nn.init.trunc_normal_(m.weight, mean=0.0, std=0.1, a=-2, b=2)


@dataclass(frozen=True)
class ArchitectureSpec:
    name: str
    build: Callable[..., nn.Module] = field(repr=False)  # (num_classes, lfm, input_size)
    feature_layer: str                # the module whose output is the CAM activation A
    head: str                         # the classification head (its copy is the branch)
    description: str = ""
    sigmoid_branch: str = "fc2"       # the public code's name of the branch
    lr_rule: LRRule | None = None     # None: head and branch are the "classifier" part
    branch_init: Callable[[nn.Module], None] = field(default=normal_branch_init, repr=False)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    torchvision_weights: str | None = None  # torchvision weight enum, "VGG16_Weights"
    timm_name: str | None = None             # timm model for its weights cache
    pretrained_keys: Callable[[dict, nn.Module], dict] | None = field(default=None, repr=False)
    fresh_layers: tuple[str, ...] = ()       # layers ImageNet weights do not have
    needs_timm: bool = False
    # Top-level modules only this network has among the networks of its
    # backbone: how a checkpoint that records only the backbone's name is
    # told apart (recognise_network).
    signature: tuple[str, ...] = ()
    # RefineCAM's default layers: the CAM layer and the two stages before it.
    refine_layers: tuple[str, ...] = ()


# ---------------------------------------------------------------------------
# wsolevaluation's CAM networks
# ---------------------------------------------------------------------------
def _set_stride_one(block: nn.Module) -> None:
    """Make the first block of a torchvision ResNet stage keep the resolution."""
    bottleneck = isinstance(block, torchvision.models.resnet.Bottleneck)
    strided = block.conv2 if bottleneck else block.conv1
    strided.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)


def resnet_cam(depth: int, num_classes: int, large_feature_map: bool = False) -> nn.Module:
    """ResNet-CAM: layer4 at stride 1 (14x14 maps at 224 px); with
    ``large_feature_map`` layer3 too (28x28), as in wsolevaluation."""
    model = {18: torchvision.models.resnet18,
             50: torchvision.models.resnet50}[depth](weights=None, num_classes=num_classes)
    _set_stride_one(model.layer4[0])
    if large_feature_map:
        _set_stride_one(model.layer3[0])
    return model


_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def _vgg_features(large_feature_map: bool) -> nn.Sequential:
    """VGG16's 13 convolutions without the last max-pool (14x14 at 224 px);
    ``large_feature_map`` also drops the fourth (28x28)."""
    cfg = list(_VGG_CFG)
    if large_feature_map:
        del cfg[13]
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


def _he_init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class VggCam(nn.Module):
    """VGG16 convolutions, conv6 (512->1024) + ReLU, GAP and ``fc``."""

    def __init__(self, num_classes: int = 1000, large_feature_map: bool = False):
        super().__init__()
        self.features = _vgg_features(large_feature_map)
        self.conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1024, num_classes)
        _he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv6(self.features(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VggGradCam(nn.Module):
    """The public code's Grad-CAM VGG16: torchvision's VGG16 without its last
    max-pool, adaptive average pooling to 7x7 and the MLP ``classifier``."""

    def __init__(self, num_classes: int = 1000, large_feature_map: bool = False,
                 dropout: float = 0.5):
        super().__init__()
        self.features = _vgg_features(large_feature_map)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes))
        _he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class _InceptionB(tv_inception.InceptionB):
    """Mixed_6a of the SPG/wsolevaluation variant: stride 1, padding 1."""

    def __init__(self, in_channels: int):
        super().__init__(in_channels)
        for conv in (self.branch3x3.conv, self.branch3x3dbl_3.conv):
            conv.stride, conv.padding = (1, 1), (1, 1)

    def _forward(self, x):
        return [self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, kernel_size=3, stride=1, padding=1)]


class InceptionCam(nn.Module):
    """InceptionV3 up to Mixed_6e, two 3x3 convs to 1024 channels
    (``SPG_A3_1b``, ``SPG_A3_2b``), a 1x1 conv to the classes (``SPG_A4``) and GAP."""

    def __init__(self, num_classes: int = 1000, large_feature_map: bool = False):
        super().__init__()
        conv = tv_inception.BasicConv2d
        self.large_feature_map = large_feature_map
        self.Conv2d_1a_3x3 = conv(3, 32, kernel_size=3, stride=2, padding=1)
        self.Conv2d_2a_3x3 = conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = conv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = conv(80, 192, kernel_size=3)
        self.Mixed_5b = tv_inception.InceptionA(192, pool_features=32)
        self.Mixed_5c = tv_inception.InceptionA(256, pool_features=64)
        self.Mixed_5d = tv_inception.InceptionA(288, pool_features=64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = tv_inception.InceptionC(768, channels_7x7=128)
        self.Mixed_6c = tv_inception.InceptionC(768, channels_7x7=160)
        self.Mixed_6d = tv_inception.InceptionC(768, channels_7x7=160)
        self.Mixed_6e = tv_inception.InceptionC(768, channels_7x7=192)
        self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, 1024, 3, padding=1), nn.ReLU(True))
        self.SPG_A3_2b = nn.Sequential(nn.Conv2d(1024, 1024, 3, padding=1), nn.ReLU(True))
        self.SPG_A4 = nn.Conv2d(1024, num_classes, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        if not self.large_feature_map:
            x = F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))
        x = F.dropout(x, 0.5, self.training)
        x = F.dropout(self.SPG_A3_1b(x), 0.5, self.training)
        x = F.dropout(self.SPG_A3_2b(x), 0.5, self.training)
        return torch.flatten(self.avgpool(self.SPG_A4(x)), 1)


def _inception_tv(num_classes: int, large_feature_map: bool, input_size: int) -> nn.Module:
    """torchvision's Inception-v3 as the public code builds it: no auxiliary
    classifier, no input transform (images are ImageNet-normalised)."""
    return torchvision.models.inception_v3(weights=None, num_classes=num_classes,
                                           aux_logits=False, transform_input=False,
                                           init_weights=True)


# ---------------------------------------------------------------------------
# DeiT-Tiny (the method's earlier public code) and timm models
# ---------------------------------------------------------------------------
def import_timm(what: str):
    try:
        import timm
    except ImportError:
        raise ValueError(f"{what} needs timm, an optional dependency: pip install timm") \
            from None
    return timm


class DeiTCam(nn.Module):
    """DeiT-Tiny (patch 16, 192-dim tokens) as ``features`` and a Linear
    ``head`` on its class token, as the method's earlier code wraps it."""

    def __init__(self, num_classes: int, input_size: int = 224):
        super().__init__()
        timm = import_timm("vit (DeiT-Tiny)")
        self.features = timm.create_model("deit_tiny_patch16_224", pretrained=False,
                                          num_classes=0, img_size=input_size)
        self.head = nn.Linear(192, num_classes)
        # The earlier code re-initialises every layer (xavier mode of its helper).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _deit_keys(state: dict, model: nn.Module) -> dict:
    """timm's DeiT weights -> ``features.*`` (its classifier is not ours)."""
    return {("features." + k): v for k, v in state.items() if not k.startswith("head")}


def _vgg_keys(state: dict, model: nn.Module) -> dict:
    """torchvision numbers VGG's convs with the max-pools in between; a model
    that drops a max-pool (large_feature_map) shifts the indices.  The CAM
    network keeps only the convolutions."""
    pattern = re.compile(r"^features\.(\d+)\.")
    src = sorted({int(m.group(1)) for k in state if (m := pattern.match(k))})
    dst = sorted({int(m.group(1)) for k in model.state_dict() if (m := pattern.match(k))})
    mapping = dict(zip(src, dst))
    out = {}
    for k, v in state.items():
        m = pattern.match(k)
        if m:
            out[f"features.{mapping[int(m.group(1))]}.{k[m.end():]}"] = v
        elif not isinstance(model, VggCam):
            out[k] = v
    return out


def _drop_aux(state: dict, model: nn.Module) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}


def _inception_cam_keys(state: dict, model: nn.Module) -> dict:
    """InceptionV3-CAM ends at Mixed_6e: torchvision's later layers are not its own."""
    return {k: v for k, v in state.items()
            if not k.startswith(("AuxLogits.", "Mixed_7", "fc."))}


# ---------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------
def _tv(name: str, **kwargs) -> Callable[..., nn.Module]:
    def build(num_classes: int, large_feature_map: bool = False, input_size: int = 224):
        if name.startswith("vit_"):
            kwargs["image_size"] = input_size
        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes, **kwargs)
    return build


ARCHITECTURES: dict[str, ArchitectureSpec] = {s.name: s for s in (
    ArchitectureSpec("vgg16", lambda c, lfm=False, size=224: VggCam(c, lfm), "relu", "fc",
                     "VGG16-CAM (wsolevaluation): conv6 + GAP + fc",
                     lr_rule=VGG_RULE, torchvision_weights="VGG16_Weights",
                     pretrained_keys=_vgg_keys, fresh_layers=("conv6.",), signature=("conv6",),
                     refine_layers=("features.15", "features.22", "relu")),
    ArchitectureSpec("vgg16_gradcam", lambda c, lfm=False, size=224: VggGradCam(c, lfm),
                     "features", "classifier",
                     "the paper's Grad-CAM VGG16: torchvision VGG16 without the last max-pool, "
                     "MLP classifier",
                     sigmoid_branch="classifier_2", lr_rule=VGG_RULE,
                     torchvision_weights="VGG16_Weights", pretrained_keys=_vgg_keys,
                     signature=("classifier",),
                     refine_layers=("features.15", "features.22", "features")),
    ArchitectureSpec("resnet18", lambda c, lfm=False, size=224: resnet_cam(18, c, lfm),
                     "layer4", "fc", "ResNet18-CAM (layer4 at stride 1)",
                     lr_rule=RESNET_RULE, torchvision_weights="ResNet18_Weights",
                     refine_layers=("layer2", "layer3", "layer4")),
    ArchitectureSpec("resnet50", lambda c, lfm=False, size=224: resnet_cam(50, c, lfm),
                     "layer4", "fc",
                     "ResNet50-CAM (wsolevaluation; also the paper's Grad-CAM ResNet50 "
                     "without the large feature map)",
                     lr_rule=RESNET_RULE, torchvision_weights="ResNet50_Weights",
                     refine_layers=("layer2", "layer3", "layer4")),
    ArchitectureSpec("inception_v3", lambda c, lfm=False, size=224: InceptionCam(c, lfm),
                     "SPG_A3_2b", "SPG_A4", "InceptionV3-CAM (SPG style, wsolevaluation)",
                     sigmoid_branch="SPG_A4_2", lr_rule=INCEPTION_RULE,
                     branch_init=xavier_branch_init, torchvision_weights="Inception_V3_Weights",
                     pretrained_keys=_inception_cam_keys,
                     fresh_layers=("SPG_A3_1b.", "SPG_A3_2b."), signature=("SPG_A4",),
                     refine_layers=("Conv2d_4a_3x3", "Mixed_5d", "SPG_A3_2b")),
    ArchitectureSpec("inception_v3_gradcam", _inception_tv, "Mixed_7c", "fc",
                     "the paper's Grad-CAM InceptionV3: torchvision Inception-v3, CAM layer "
                     "Mixed_7c", lr_rule=INCEPTION_RULE, branch_init=inception_tv_branch_init,
                     torchvision_weights="Inception_V3_Weights", pretrained_keys=_drop_aux,
                     signature=("Mixed_7c",), refine_layers=("Mixed_5d", "Mixed_6e", "Mixed_7c")),
    ArchitectureSpec("vit", lambda c, lfm=False, size=224: DeiTCam(c, size),
                     "features.blocks.11.norm1", "head",
                     "DeiT-Tiny (timm) as the method's earlier code builds it; CAM layer the "
                     "last block's first LayerNorm (tokens)",
                     sigmoid_branch="head2", lr_rule=VIT_RULE, mean=(0.5, 0.5, 0.5),
                     std=(0.5, 0.5, 0.5), timm_name="deit_tiny_patch16_224",
                     pretrained_keys=_deit_keys, needs_timm=True),
    ArchitectureSpec("mobilenet_v2", _tv("mobilenet_v2"), "features", "classifier.1",
                     "torchvision MobileNetV2", torchvision_weights="MobileNet_V2_Weights"),
    ArchitectureSpec("efficientnet_b0", _tv("efficientnet_b0"), "features", "classifier.1",
                     "torchvision EfficientNet-B0", torchvision_weights="EfficientNet_B0_Weights"),
    ArchitectureSpec("regnet_y_400mf", _tv("regnet_y_400mf"), "trunk_output", "fc",
                     "torchvision RegNetY-400MF", torchvision_weights="RegNet_Y_400MF_Weights"),
    ArchitectureSpec("shufflenet_v2_x0_5", _tv("shufflenet_v2_x0_5"), "conv5", "fc",
                     "torchvision ShuffleNetV2 x0.5",
                     torchvision_weights="ShuffleNet_V2_X0_5_Weights"),
    ArchitectureSpec("convnext_tiny", _tv("convnext_tiny"), "features", "classifier",
                     "torchvision ConvNeXt-Tiny (LayerNorm before its Linear: gradient "
                     "methods only)", torchvision_weights="ConvNeXt_Tiny_Weights"),
    ArchitectureSpec("swin_t", _tv("swin_t"), "norm", "head",
                     "torchvision Swin-T (channels-last CAM layer)",
                     torchvision_weights="Swin_T_Weights"),
    ArchitectureSpec("vit_b_16", _tv("vit_b_16"), "encoder.layers.encoder_layer_11.ln_1",
                     "heads.head", "torchvision ViT-B/16 (class token; gradient methods)",
                     torchvision_weights="ViT_B_16_Weights"),
)}

# The network the public code trains for a gradient --method (docs/reproducing.md).
GRADCAM_NETWORKS = {"vgg16": "vgg16_gradcam", "inception_v3": "inception_v3_gradcam",
                    "resnet50": "resnet50", "resnet18": "resnet18"}
CAM_NETWORKS = {v: k for k, v in GRADCAM_NETWORKS.items() if v != k}


def architecture_names() -> list[str]:
    return [*ARCHITECTURES, "timm:<model name>"]


def network_for(architecture: str, network_type: str) -> str:
    """The architecture a --network_type (cam | gradcam) selects."""
    if network_type == "gradcam":
        return GRADCAM_NETWORKS.get(architecture, architecture)
    if network_type == "cam":
        return CAM_NETWORKS.get(architecture, architecture)
    return architecture


def recognise_network(name: str, keys: Iterable[str]) -> tuple[str, str]:
    """The network a checkpoint's weights belong to among the networks of
    ``name``'s backbone (its CAM and Grad-CAM networks), and why: the method's
    public code writes ``'architecture': 'vgg16'`` (or ``'inception_v3'``)
    into checkpoints of its Grad-CAM network too (it picks the network from
    ``--method``).  The network whose signature modules the keys hold; ``name``
    and an empty reason when they do not decide or agree with it."""
    candidates = list(dict.fromkeys(network_for(name, t) for t in ("cam", "gradcam")))
    if len(candidates) < 2 or not all(c in ARCHITECTURES for c in candidates):
        return name, ""
    tops = {_top_module(k) for k in keys}
    fitting = [c for c in candidates if set(ARCHITECTURES[c].signature) <= tops]
    if len(fitting) != 1 or fitting[0] == name:
        return name, ""
    found = fitting[0]
    others = [m for c in candidates if c != found for m in ARCHITECTURES[c].signature]
    return found, (f"its weights are those of {found} "
                   f"({', '.join(s + '.*' for s in ARCHITECTURES[found].signature)}, no "
                   f"{', '.join(s + '.*' for s in others)}: "
                   f"{ARCHITECTURES[found].description})")


def _top_module(key: str) -> str:
    """``module.features.0.weight`` -> ``features`` (without DataParallel's
    and CAMModel's prefixes)."""
    for prefix in ("module.", "model."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key.split(".", 1)[0]


def get_spec(name: str, input_size: int = 224) -> ArchitectureSpec:
    """The spec of an architecture name (``timm:<model>`` for any timm model);
    an unknown name gets the list of known ones."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    if name.startswith("timm:"):
        return _timm_spec(name, input_size)
    raise ValueError(f"unknown architecture {name!r}; choose one of "
                     f"{', '.join(architecture_names())}")


def build_architecture(name: str, num_classes: int, large_feature_map: bool = False,
                       input_size: int = 224) -> tuple[nn.Module, ArchitectureSpec]:
    """A vanilla classifier and its spec (layer names, branch name, lr rule)."""
    spec = get_spec(name, input_size)
    return spec.build(num_classes, large_feature_map, input_size), spec


def build_cam_model(name: str, num_classes: int, large_feature_map: bool = False,
                    input_size: int = 224, feature_layer: str | None = None,
                    head: str | None = None) -> tuple[CAMModel, ArchitectureSpec]:
    """The vanilla :class:`CAMModel` of an architecture (its CAM layer and
    head may be overridden); add the branch with ``add_sigmoid_branch``."""
    model, spec = build_architecture(name, num_classes, large_feature_map, input_size)
    cam = CAMModel(model, feature_layer or spec.feature_layer, head or spec.head, spec.name,
                   sigmoid_branch=spec.sigmoid_branch, branch_init=spec.branch_init)
    return cam, spec


def _timm_spec(name: str, input_size: int) -> ArchitectureSpec:
    """A timm model: the head its config names; the CAM layer is the last
    block's first norm for token models, else the last module whose output
    has the head's number of channels before global pooling (found on a probe
    forward)."""
    timm = import_timm(name)
    model_name = name[len("timm:"):]
    if model_name not in timm.list_models():
        close = timm.list_models(f"*{model_name}*")[:5]
        raise ValueError(f"timm has no model {model_name!r}"
                         + (f"; did you mean: {', '.join(close)}" if close else ""))

    def build(num_classes: int, large_feature_map: bool = False, size: int = input_size):
        kwargs = {"img_size": size} if "vit" in model_name or "deit" in model_name else {}
        return timm.create_model(model_name, pretrained=False, num_classes=num_classes, **kwargs)

    probe = build(2)
    head = probe.pretrained_cfg.get("classifier") or "head"
    if isinstance(head, (list, tuple)):
        head = head[0]
    blocks = getattr(probe, "blocks", None)
    if hasattr(probe, "patch_embed") and isinstance(blocks, nn.Sequential) and \
            hasattr(blocks[-1], "norm1"):
        layer = f"blocks.{len(blocks) - 1}.norm1"
    else:
        layer = _last_layer_with_channels(probe, int(getattr(probe, "num_features", 0)),
                                          input_size)
    cfg = probe.pretrained_cfg
    return ArchitectureSpec(name, build, layer, head, f"timm {model_name}",
                            mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
                            std=tuple(cfg.get("std", IMAGENET_STD)),
                            timm_name=model_name, needs_timm=True)


def _last_layer_with_channels(model: nn.Module, channels: int, input_size: int) -> str:
    finished: list[tuple[str, tuple]] = []
    handles = [m.register_forward_hook(
        lambda mod, inp, out, n=n: finished.append((n, tuple(getattr(out, "shape", ())))))
        for n, m in model.named_modules() if n]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in handles:
            h.remove()
    candidates = [n for n, shape in finished if len(shape) == 4 and shape[1] == channels]
    if not candidates:
        raise ValueError("cannot find the CAM layer of this timm model: pass --cam_layer")
    # The last module to finish with that output; prefer a named stage over
    # a parameter-free identity (both hold the same tensor).
    return candidates[-1]

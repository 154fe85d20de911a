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

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn as nn
import torchvision

from wsol import wsol_networks as wn
from wsol.backbones import (InceptionCam, VggCam, VggGradCam, init_weights,  # noqa: F401
                            resnet_cam)
from wsol.dual_branch import normal_branch_init
from wsol.model import CAMModel
from wsol.protocol import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ArchitectureSpec", "LRRule", "ARCHITECTURES", "GRADCAM_NETWORKS",
           "architecture_names", "get_spec", "build_architecture", "build_cam_model",
           "network_for", "wsol_network", "WSOL_NETWORKS", "recognise_network", "import_timm"]


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
    # Top-level modules that tell this network apart from the others of its
    # backbone (ADL's networks have the CAM network's: their keys cannot be told
    # apart by top-level modules): how a checkpoint that records only the
    # backbone's name is recognised (recognise_network).
    signature: tuple[str, ...] = ()
    # RefineCAM's default layers: the CAM layer and the two stages before it.
    refine_layers: tuple[str, ...] = ()
    # wsolevaluation's WSOL method whose network this is, and the settings
    # (wsol.settings.WSOLSettings fields) its constructor takes.
    wsol_method: str = "cam"
    options: tuple[str, ...] = ()


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
        init_weights(self, "xavier")  # the earlier code re-initialises every layer

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
        elif isinstance(model, VggGradCam):  # the others have no torchvision classifier
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

def _wsol_specs() -> list[ArchitectureSpec]:
    """wsolevaluation's ACoL, SPG and ADL networks (wsol.wsol_networks) on each
    backbone, named ``<backbone>_<method>``: the CAM layer and head (the
    classifier's last layer, which the sigmoid branch copies), the backbone's
    learning-rate rule, ImageNet weights mapped as wsolevaluation maps them,
    and the layers those weights do not have."""
    acol = ("acol_threshold",)
    adl = ("adl_drop_rate", "adl_threshold")
    spec = functools.partial(ArchitectureSpec, branch_init=xavier_branch_init)
    inception = dict(lr_rule=INCEPTION_RULE, torchvision_weights="Inception_V3_Weights",
                     pretrained_keys=_inception_cam_keys)
    vgg = dict(lr_rule=VGG_RULE, torchvision_weights="VGG16_Weights")
    resnet = dict(lr_rule=RESNET_RULE, torchvision_weights="ResNet50_Weights")
    acol_layers = dict(feature_layer="classifier_A.3", head="classifier_A.4",
                       sigmoid_branch="classifier_A_2", wsol_method="acol", options=acol,
                       fresh_layers=("classifier_A.", "classifier_B."),
                       signature=("classifier_A", "classifier_B"))
    return [
        spec("vgg16_acol", wn.VggAcol, description="VGG16-ACoL (wsolevaluation)",
             pretrained_keys=_vgg_keys, **vgg, **acol_layers),
        spec("resnet50_acol", wn.ResNetAcol, description="ResNet50-ACoL (wsolevaluation)",
             pretrained_keys=wn.drop_fc_keys, **resnet, **acol_layers),
        spec("inception_v3_acol", wn.InceptionAcol,
             description="InceptionV3-ACoL (wsolevaluation)", **inception, **acol_layers),
        spec("vgg16_spg", wn.VggSpg, feature_layer="SPG_A_3", head="SPG_A_4",
             description="VGG16-SPG (wsolevaluation)", sigmoid_branch="SPG_A_4_2",
             wsol_method="spg", pretrained_keys=wn.vgg_spg_keys,
             signature=("SPG_B_shared",),
             fresh_layers=("SPG_A_3.", "SPG_B_", "SPG_C."), **vgg),
        spec("resnet50_spg", wn.ResNetSpg, feature_layer="layer4", head="SPG_A4",
             description="ResNet50-SPG (wsolevaluation)", sigmoid_branch="SPG_A4_2",
             wsol_method="spg", pretrained_keys=wn.resnet_spg_keys,
             signature=("SPG_B_shared",),
             fresh_layers=("SPG_B_", "SPG_C."), **resnet),
        spec("inception_v3_spg", wn.InceptionSpg, feature_layer="SPG_A3_2b", head="SPG_A4",
             description="InceptionV3-SPG (wsolevaluation)", sigmoid_branch="SPG_A4_2",
             wsol_method="spg", signature=("SPG_A4", "SPG_B_shared"),
             fresh_layers=("SPG_A3_1b.", "SPG_A3_2b.", "SPG_B_", "SPG_C."),
             **inception),
        ArchitectureSpec("vgg16_adl", wn.vgg_adl, "relu", "fc", "VGG16-ADL (wsolevaluation)",
                         wsol_method="adl", options=adl, pretrained_keys=_vgg_keys,
                         fresh_layers=("conv6.",), signature=("conv6",), **vgg),
        ArchitectureSpec("resnet50_adl", wn.resnet_adl, "layer4", "fc",
                         "ResNet50-ADL (wsolevaluation)", wsol_method="adl", options=adl,
                         pretrained_keys=wn.resnet_adl_keys, **resnet),
        spec("inception_v3_adl", wn.inception_adl, feature_layer="ADL_A3_2b", head="SPG_A4",
             description="InceptionV3-ADL (wsolevaluation)", sigmoid_branch="SPG_A4_2",
             wsol_method="adl", options=adl, fresh_layers=("SPG_A3_1b.", "SPG_A3_2b."),
             signature=("SPG_A4",),
             **inception),
    ]


ARCHITECTURES.update({s.name: s for s in _wsol_specs()})
# wsolevaluation's methods with networks of their own: {(backbone, method): network}.
WSOL_NETWORKS = {(name.rsplit("_", 1)[0], s.wsol_method): name
                 for name, s in ARCHITECTURES.items() if s.wsol_method != "cam"}

# The network the public code trains for a gradient --method (docs/reproducing.md).
GRADCAM_NETWORKS = {"vgg16": "vgg16_gradcam", "inception_v3": "inception_v3_gradcam",
                    "resnet50": "resnet50", "resnet18": "resnet18"}
CAM_NETWORKS = {v: k for k, v in GRADCAM_NETWORKS.items() if v != k}
# A WSOL method's network belongs to its backbone: --architecture names the backbone.
CAM_NETWORKS.update({network: backbone for (backbone, _), network in WSOL_NETWORKS.items()})


def architecture_names() -> list[str]:
    return [*ARCHITECTURES, "timm:<model name>"]


def wsol_network(architecture: str, method: str) -> str:
    """The network of a WSOL method on a backbone: ``architecture`` itself for
    methods that train the CAM network (cam, has, cutmix), else
    ``<backbone>_<method>``; a ValueError naming the backbones that have one."""
    if not any(m == method for _, m in WSOL_NETWORKS):
        return architecture
    backbone = CAM_NETWORKS.get(architecture, architecture)
    if (backbone, method) not in WSOL_NETWORKS:
        have = sorted(b for b, m in WSOL_NETWORKS if m == method)
        raise ValueError(f"--wsol_method {method}: its network exists for {', '.join(have)} "
                         f"(wsolevaluation's backbones), not --architecture {architecture}")
    return WSOL_NETWORKS[(backbone, method)]


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
    backbone = network_for(name, "cam")
    candidates = list(dict.fromkeys(
        [network_for(name, t) for t in ("cam", "gradcam")]
        + [n for (b, _), n in WSOL_NETWORKS.items() if b == backbone]))
    candidates = [c for c in candidates if c in ARCHITECTURES and ARCHITECTURES[c].signature]
    if len(candidates) < 2:
        return name, ""
    tops = {_top_module(k) for k in keys}
    fitting = [c for c in candidates if set(ARCHITECTURES[c].signature) <= tops]
    # The most specific signature decides (InceptionV3-SPG has InceptionV3-CAM's SPG_A4 too).
    most = max((len(ARCHITECTURES[c].signature) for c in fitting), default=0)
    fitting = [c for c in fitting if len(ARCHITECTURES[c].signature) == most]
    if not fitting or name in fitting:
        return name, ""
    found = fitting[0]  # a tie (CAM and ADL networks): the CAM network, listed first
    others = list(dict.fromkeys(m for c in candidates if c != found
                                for m in ARCHITECTURES[c].signature
                                if m not in ARCHITECTURES[found].signature))
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
                       input_size: int = 224, options: Mapping[str, Any] | None = None
                       ) -> tuple[nn.Module, ArchitectureSpec]:
    """A vanilla classifier and its spec (layer names, branch name, lr rule);
    ``options``: settings of a WSOL method's network (``spec.options``, e.g.
    ``acol_threshold``; the others are ignored, missing ones take their
    defaults)."""
    spec = get_spec(name, input_size)
    if spec.wsol_method != "cam":  # (num_classes, large_feature_map, **its options)
        given = {k: v for k, v in (options or {}).items() if k in spec.options}
        return spec.build(num_classes, large_feature_map, **given), spec
    return spec.build(num_classes, large_feature_map, input_size), spec


def build_cam_model(name: str, num_classes: int, large_feature_map: bool = False,
                    input_size: int = 224, feature_layer: str | None = None,
                    head: str | None = None, options: Mapping[str, Any] | None = None
                    ) -> tuple[CAMModel, ArchitectureSpec]:
    """The vanilla :class:`CAMModel` of an architecture (its CAM layer and
    head may be overridden); add the branch with ``add_sigmoid_branch``."""
    model, spec = build_architecture(name, num_classes, large_feature_map, input_size, options)
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

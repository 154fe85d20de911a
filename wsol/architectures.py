"""The CAM backbones of the wsolevaluation benchmark, with its parameter names.

Parameter names match wsolevaluation's ``wsol/{vgg,resnet,inception}.py`` so
its released vanilla checkpoints load unchanged, and they match torchvision's
ImageNet weights wherever the layers are the same.  Each builder returns a
plain classifier ``x -> logits`` plus the names of its CAM feature layer and
classification head, which is all :class:`wsol.dual_branch.CAMModel` needs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models import inception as tv_inception

__all__ = ["ArchitectureSpec", "ARCHITECTURES", "build_architecture", "TORCHVISION_CAM_LAYERS"]


@dataclass(frozen=True)
class ArchitectureSpec:
    feature_layer: str  # module whose output is the CAM activation A
    head: str           # Linear on GAP(A), or 1x1 conv on A followed by GAP


def _set_stride_one(block: nn.Module) -> None:
    """Make the first block of a torchvision ResNet stage keep the resolution."""
    strided = block.conv2 if isinstance(block, torchvision.models.resnet.Bottleneck) else block.conv1
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


class VggCam(nn.Module):
    """VGG16 conv layers without the last max-pool, conv6 (512->1024) + ReLU,
    GAP and ``fc``; ``large_feature_map`` also drops the fourth max-pool."""

    def __init__(self, num_classes: int = 1000, large_feature_map: bool = False):
        super().__init__()
        cfg = list(_VGG_CFG)
        if large_feature_map:
            del cfg[13]  # the fourth max-pool
        layers: list[nn.Module] = []
        in_channels = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_channels = v
        self.features = nn.Sequential(*layers)
        self.conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1024, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv6(self.features(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


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


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "vgg16": ArchitectureSpec(feature_layer="relu", head="fc"),
    "resnet18": ArchitectureSpec(feature_layer="layer4", head="fc"),
    "resnet50": ArchitectureSpec(feature_layer="layer4", head="fc"),
    "inception_v3": ArchitectureSpec(feature_layer="SPG_A3_2b", head="SPG_A4"),
}

# Stock torchvision classifiers that wrap unchanged (CAM layer, head).
TORCHVISION_CAM_LAYERS: dict[str, ArchitectureSpec] = {
    "mobilenet_v2": ArchitectureSpec(feature_layer="features", head="classifier.1"),
    "efficientnet_b0": ArchitectureSpec(feature_layer="features", head="classifier.1"),
    "regnet_y_400mf": ArchitectureSpec(feature_layer="trunk_output", head="fc"),
    "shufflenet_v2_x0_5": ArchitectureSpec(feature_layer="conv5", head="fc"),
}


def build_architecture(name: str, num_classes: int,
                       large_feature_map: bool = False) -> tuple[nn.Module, ArchitectureSpec]:
    """A vanilla CAM classifier and its layer names; unknown names list the known ones."""
    if name == "vgg16":
        model = VggCam(num_classes, large_feature_map)
    elif name in ("resnet18", "resnet50"):
        model = resnet_cam(int(name[6:]), num_classes, large_feature_map)
    elif name == "inception_v3":
        model = InceptionCam(num_classes, large_feature_map)
    elif name in TORCHVISION_CAM_LAYERS:
        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        return model, TORCHVISION_CAM_LAYERS[name]
    else:
        known = ", ".join(list(ARCHITECTURES) + list(TORCHVISION_CAM_LAYERS))
        raise ValueError(f"unknown architecture {name!r}; choose one of: {known}")
    return model, ARCHITECTURES[name]

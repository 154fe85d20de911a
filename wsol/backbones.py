"""wsolevaluation's CAM networks and their building blocks: VGG16 in each of
its layouts, ResNet-CAM, the InceptionV3 trunk, and its initialisations.
Parameter names are wsolevaluation's (and torchvision's), so its checkpoints
load unchanged.  :mod:`wsol.architectures` registers them by name;
:mod:`wsol.wsol_networks` builds ACoL, SPG and ADL on them.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models import inception as tv_inception

__all__ = ["resnet_cam", "VGG_CFGS", "vgg_features", "init_weights", "VggCam",
           "VggGradCam", "InceptionTrunk", "InceptionCam"]


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


# wsolevaluation's VGG16 layouts ("M": 2x2 max-pool; "M1"/"M2": 3x3 max-pool
# at stride 2/1 (ACoL); "A": an ADL layer), at 14x14 and 28x28 maps.
VGG_CFGS = {
    "cam": {14: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                 512, 512, 512],
            28: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512,
                 512, 512, 512]},
    "acol": {14: [64, 64, "M1", 128, 128, "M1", 256, 256, 256, "M1", 512, 512, 512, "M1",
                  512, 512, 512, "M2"],
             28: [64, 64, "M1", 128, 128, "M1", 256, 256, 256, "M1", 512, 512, 512, "M2",
                  512, 512, 512, "M2"]},
    "spg": {14: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"],
            28: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]},
    "adl": {14: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", "A", 512, 512, 512, "A",
                 "M", 512, 512, 512, "A"],
            28: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", "A", 512, 512, 512, "A",
                 512, 512, 512, "A"]},
}


def vgg_features(large_feature_map: bool, layout: str = "cam",
                 adl: Callable[[], nn.Module] | None = None) -> nn.Sequential:
    """VGG16's convolutions in one of wsolevaluation's layouts (:data:`VGG_CFGS`):
    the CAM network's 13 without the last max-pool (14x14 at 224 px),
    ``large_feature_map`` also without the fourth (28x28); ``adl`` makes the
    ADL layers of the ``adl`` layout."""
    layers: list[nn.Module] = []
    in_channels = 3
    for v in VGG_CFGS[layout][28 if large_feature_map else 14]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif v in ("M1", "M2"):
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2 if v == "M1" else 1, padding=1))
        elif v == "A":
            layers.append(adl())
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


def init_weights(model: nn.Module, mode: str) -> None:
    """wsolevaluation's initialisations (``he`` or ``xavier``): convs He normal
    (fan out) or xavier-uniform, bias 0; BatchNorm (1, 0); Linear N(0, 0.01), bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if mode == "he":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class VggCam(nn.Module):
    """VGG16 convolutions, conv6 (512->1024) + ReLU, GAP and ``fc``."""

    def __init__(self, num_classes: int = 1000, large_feature_map: bool = False,
                 features: nn.Sequential | None = None):
        super().__init__()
        self.features = features if features is not None else vgg_features(large_feature_map)
        self.conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1024, num_classes)
        init_weights(self, "he")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv6(self.features(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VggGradCam(nn.Module):
    """The public code's Grad-CAM VGG16: torchvision's VGG16 without its last
    max-pool, adaptive average pooling to 7x7 and the MLP ``classifier``."""

    def __init__(self, num_classes: int = 1000, large_feature_map: bool = False,
                 dropout: float = 0.5):
        super().__init__()
        self.features = vgg_features(large_feature_map)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes))
        init_weights(self, "he")

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


class InceptionTrunk(nn.Module):
    """InceptionV3 up to Mixed_6e as wsolevaluation builds it (torchvision's
    names; Mixed_6a at stride 1), shared by its CAM, ACoL, SPG and ADL networks."""

    def __init__(self, large_feature_map: bool = False):
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

    def to_mixed_5d(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
        return self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))

    def pool_5d(self, x: torch.Tensor) -> torch.Tensor:
        """The max-pool after Mixed_5d (none with the large feature map)."""
        if self.large_feature_map:
            return x
        return F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)

    def to_mixed_6d(self, x: torch.Tensor) -> torch.Tensor:
        return self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x))))


class InceptionCam(InceptionTrunk):
    """InceptionV3 up to Mixed_6e, two 3x3 convs to 1024 channels
    (``SPG_A3_1b``, ``SPG_A3_2b``), a 1x1 conv to the classes (``SPG_A4``) and
    GAP; dropout after Mixed_6e and each 3x3 conv.  With ``adl`` (a factory of
    ADL layers) wsolevaluation's ADL network: ADL after Mixed_5d, Mixed_6e and
    SPG_A3_2b (``ADL_5d``, ``ADL_6e``, ``ADL_A3_2b``) and no dropout."""

    def __init__(self, num_classes: int = 1000, large_feature_map: bool = False,
                 adl: Callable[[], nn.Module] | None = None):
        super().__init__(large_feature_map)
        self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, 1024, 3, padding=1), nn.ReLU(True))
        self.SPG_A3_2b = nn.Sequential(nn.Conv2d(1024, 1024, 3, padding=1), nn.ReLU(True))
        self.SPG_A4 = nn.Conv2d(1024, num_classes, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.adl = adl is not None
        if adl is not None:
            self.ADL_5d, self.ADL_6e, self.ADL_A3_2b = adl(), adl(), adl()
        init_weights(self, "xavier")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.to_mixed_5d(x)
        if self.adl:
            x = self.ADL_5d(x)
        x = self.Mixed_6e(self.to_mixed_6d(self.pool_5d(x)))
        if self.adl:
            x = self.ADL_A3_2b(self.SPG_A3_2b(self.SPG_A3_1b(self.ADL_6e(x))))
        else:
            x = F.dropout(x, 0.5, self.training)
            x = F.dropout(self.SPG_A3_1b(x), 0.5, self.training)
            x = F.dropout(self.SPG_A3_2b(x), 0.5, self.training)
        return torch.flatten(self.avgpool(self.SPG_A4(x)), 1)

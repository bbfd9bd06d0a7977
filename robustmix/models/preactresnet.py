"""Pre-activation ResNets for CIFAR-sized inputs.

He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks" (ECCV 2016), in the
form of Kuang Liu's pytorch-cifar ``preact_resnet.py``, which the PuzzleMix/Co-Mixup code
(``models/preresnet.py``) uses: a 3x3 stride-1 stem conv with 64 channels, four stages
(64, 128, 256, 512 planes; strides 1, 2, 2, 2), 1x1 conv projection shortcuts taken from
the pre-activated input, no final BN-ReLU before pooling, PyTorch default initialization.
The fixed 4x4 average pool of the reference is replaced by adaptive average pooling
(identical at 32x32) so any input size works.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1 (x4)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Stem conv3x3(C, 64), four pre-activation stages, global average pool, linear.

    ``conv1`` is the stem conv, the first layer applied to the input.
    """

    def __init__(
        self,
        block: type[PreActBlock] | type[PreActBottleneck],
        num_blocks: tuple[int, int, int, int],
        *,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        in_planes = 64
        stages = []
        for planes, blocks, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            layers = []
            for s in [stride] + [1] * (blocks - 1):
                layers.append(block(in_planes, planes, s))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.pool(out), 1))


def preactresnet(depth: int, *, num_classes: int, in_channels: int) -> PreActResNet:
    """PreActResNet-18/34 (basic blocks [2,2,2,2]/[3,4,6,3]) or -50 (bottlenecks [3,4,6,3])."""
    configs: dict[int, tuple[type[PreActBlock] | type[PreActBottleneck], tuple[int, int, int, int]]] = {
        18: (PreActBlock, (2, 2, 2, 2)),
        34: (PreActBlock, (3, 4, 6, 3)),
        50: (PreActBottleneck, (3, 4, 6, 3)),
    }
    block, num_blocks = configs[depth]
    return PreActResNet(block, num_blocks, num_classes=num_classes, in_channels=in_channels)

"""Wide Residual Networks.

Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016), WRN-depth-k as in the
authors' PyTorch code and its common port (xternalz/WideResNet-pytorch): stem
conv3x3(C, 16), three groups of n = (depth-4)/6 pre-activation basic blocks with widths
16k, 32k, 64k (strides 1, 2, 2), a final BN-ReLU, global average pooling and a linear
head. Convs have no bias; when a block changes shape, its shortcut is a 1x1 conv applied
to the pre-activated input. Dropout is 0 (omitted). Kaiming-normal (fan_out) conv init,
BN weight 1 / bias 0, linear bias 0, as the reference.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class WideBasic(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3 plus identity or 1x1 projection shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-depth-width. ``conv1`` is the stem conv, the first layer applied to the input.

    The caller validates ``depth`` ((depth-4) % 6 == 0, depth >= 10) and ``width`` (>= 1).
    """

    def __init__(self, depth: int, width: int, *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        in_planes = 16
        groups = []
        for planes, stride in zip(widths, (1, 2, 2)):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(WideBasic(in_planes, planes, s))
                in_planes = planes
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn(out))
        return self.linear(torch.flatten(self.pool(out), 1))

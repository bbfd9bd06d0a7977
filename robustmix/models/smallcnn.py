"""SmallCNN: the project's default network, sized to train in seconds on a CPU.

Not from a paper: three 3x3 conv-BN-ReLU layers (32, 64, 128 channels) with two 2x2
max-pools, global average pooling and a linear head. No dropout, so the network is a
deterministic function of its input in eval mode. PyTorch default initialization.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """conv3x3(C,32) - conv3x3(32,64) - pool - conv3x3(64,128) - pool - GAP - linear.

    Works for any input of at least 4x4 pixels (square or not). ``conv1`` is the stem conv,
    the first layer applied to the input.
    """

    def __init__(self, *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.features = nn.Sequential(
            _conv_bn_relu(32, 64),
            nn.MaxPool2d(2),
            _conv_bn_relu(64, 128),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.features(out)
        return self.linear(torch.flatten(self.pool(out), 1))

"""SmallCNN: the project's default network, sized to train in seconds on a CPU.

Not from a paper: three 3x3 conv-BN-ReLU layers (W, 2W, 4W channels; W = 32 for
``smallcnn``, W = 16 for ``smallcnn-16``, a quarter of the arithmetic) with two 2x2
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
    """conv3x3(C,W) - conv3x3(W,2W) - pool - conv3x3(2W,4W) - pool - GAP - linear (W = 32).

    Works for any input of at least 4x4 pixels (square or not). ``conv1`` is the stem conv,
    the first layer applied to the input.
    """

    def __init__(self, *, num_classes: int, in_channels: int, width: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.features = nn.Sequential(
            _conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            _conv_bn_relu(2 * width, 4 * width),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.features(out)
        return self.linear(torch.flatten(self.pool(out), 1))

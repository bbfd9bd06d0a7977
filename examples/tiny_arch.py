"""A tiny convolutional network as a robustmix architecture plug-in: the worked example.

An architecture plug-in is a factory ``factory(*, num_classes, in_channels)`` that returns a
``torch.nn.Module`` mapping normalized (N, in_channels, H, W) images to (N, num_classes)
logits, at the data set's image size (this one takes any H, W, as the zoo's networks do).
robustmix wraps it with the data set's normalization, trains, attacks and reports it as
any built-in architecture; the first ``Conv2d`` is the stem that the first-layer analyses
read. Use it without installing anything (imported from the current directory)::

    robustmix train --arch examples.tiny_arch:tiny
    robustmix import --weights model.safetensors --arch examples.tiny_arch:tiny

or in a study's ``[train]`` section (``arch = "examples.tiny_arch:tiny"``). A package of
your own may declare it as an entry point instead, and ``--arch tiny`` works wherever the
package is installed::

    [project.entry-points."robustmix.architectures"]
    tiny = "mypackage.tiny_arch:tiny"
"""

from __future__ import annotations

from torch import nn


def tiny(*, num_classes: int, in_channels: int, width: int = 8) -> nn.Module:
    """Two 3x3 conv blocks of ``width`` and ``2 * width`` channels, global average
    pooling and a linear classifier."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
        nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))

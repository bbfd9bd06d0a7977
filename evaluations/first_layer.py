"""Norms of the first layer W (out, in, kh, kw), the conv applied to the normalized input.

    frobenius        = ‖W‖_F = sqrt(Σ W²)
    per_offset[a][b] = sqrt(Σ_{out, in} W[:, :, a, b]²)   (so Σ per_offset² = ‖W‖_F²)
    frobenius_input_units = ‖W / std‖_F, each input channel divided by its std: the weight
                            that the [0, 1] input meets, since the layer sees (x − mean)/std
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def first_layer_norms(layer: nn.Conv2d, std: Tensor) -> dict:
    weight = layer.weight.detach().to("cpu", torch.float64)
    scale = std.detach().to("cpu", torch.float64).reshape(1, -1, 1, 1)
    return {
        "shape": list(weight.shape),
        "stride": list(layer.stride),
        "padding": layer.padding if isinstance(layer.padding, str) else list(layer.padding),
        "frobenius": float(torch.linalg.norm(weight)),
        "per_offset": weight.square().sum(dim=(0, 1)).sqrt().tolist(),
        "frobenius_input_units": float(torch.linalg.norm(weight / scale)),
    }

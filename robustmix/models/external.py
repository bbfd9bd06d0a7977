"""Models trained elsewhere: :func:`wrap_model` puts a model's input normalization inside
it, so it takes images in [0, 1] like every robustmix model, and the attacks' ε is
measured in pixel units whatever the model's own preprocessing was."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from robustmix.core.errors import ConfigError


class Normalized(nn.Module):
    """``forward(x) = model((x - mean) / std)`` for x in [0, 1] of shape (N, C, H, W).

    ``mean`` and ``std`` are buffers of shape (1, C, 1, 1) (they move with ``.to()``);
    ``first_layer`` is the model's first ``Conv2d`` or ``Linear`` in module order, the layer
    the paper's first-layer analysis reads.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def first_layer(self) -> nn.Module:
        for module in self.model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                return module
        raise AttributeError("the wrapped model has no Conv2d or Linear layer")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ConfigError("x", f"must be images (N, {self.mean.shape[1]}, H, W) (one "
                                   f"mean and std per channel), got shape {tuple(x.shape)}")
        return self.model((x - self.mean) / self.std)


def _stats(field: str, values) -> list[float]:
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(field, f"must be a sequence of numbers, one per channel, "
                                 f"got {values!r}") from None
    if not floats or not all(math.isfinite(v) for v in floats):
        raise ConfigError(field, f"must be finite numbers, one per channel, got {floats}")
    return floats


def wrap_model(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> Normalized:
    """``model``, which expects inputs normalized by ``(x - mean) / std`` per channel, as a
    model of images in [0, 1] (what :func:`robustmix.attacks.robustness` and the evaluations take).

    ``mean`` and ``std`` hold one number per channel, as the model was trained with (e.g.
    ``(0.4914, 0.4822, 0.4465)`` and ``(0.2470, 0.2435, 0.2616)`` for CIFAR-10); std > 0.
    A model that already takes [0, 1] inputs needs ``mean=(0,) * C, std=(1,) * C``. The
    result shares ``model``'s parameters and keeps its train/eval mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    mean_values, std_values = _stats("mean", mean), _stats("std", std)
    if len(mean_values) != len(std_values):
        raise ConfigError("std", f"must have one value per channel like mean "
                                 f"({len(mean_values)}), got {len(std_values)}")
    if any(v <= 0 for v in std_values):
        raise ConfigError("std", f"must be > 0 in every channel, got {std_values}")
    wrapped = Normalized(model, mean_values, std_values)
    wrapped.train(model.training)
    param = next(model.parameters(), None)
    return wrapped.to(param.device) if param is not None else wrapped

"""Checks on what a Python caller passes to the public API, done where it enters.

Each helper raises :class:`~robustmix.core.errors.ConfigError` (a ValueError) whose
``field`` is the argument's name, with a message that says what came and what is accepted;
a non-tensor where a tensor is required is a :class:`TypeError`. The shape and dtype
checks read only metadata (no host synchronization); the value checks (ranges, NaN) are
whole-tensor reductions that end in one host synchronization each, so callers on a hot
path run them only where they are asked for.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustmix.core.errors import ConfigError


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def tensor(name: str, value, what: str) -> Tensor:
    """``value`` itself if it is a tensor, else a TypeError naming ``name``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor ({what}), got {type(value).__name__}")
    return value


def ndim(name: str, t: Tensor, dims: int, layout: str) -> None:
    """``t`` has ``dims`` dimensions (``layout`` spells them: "(N, C, H, W)")."""
    if t.dim() != dims:
        raise ConfigError(name, f"must be a {dims}-D tensor {layout}, got shape {_shape(t)}")


def is_floating(t: Tensor) -> bool:
    return t.dtype.is_floating_point


def is_integer(t: Tensor) -> bool:
    return not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool


def dtype(name: str, t: Tensor, kind: str) -> None:
    """``t`` has a floating (``kind="floating"``) or an integer (``"integer"``) dtype."""
    ok = is_floating(t) if kind == "floating" else is_integer(t)
    if not ok:
        raise ConfigError(name, f"must have a {kind} dtype, got {t.dtype}")


def nonempty(name: str, t: Tensor, what: str) -> None:
    """No dimension of ``t`` is 0 (an empty batch or a 0-pixel image)."""
    if t.numel() == 0:
        raise ConfigError(name, f"must hold at least one {what}, got shape {_shape(t)}")


def in_unit_range(name: str, t: Tensor, what: str = "values") -> None:
    """All of ``t`` finite and in [0, 1]: one reduction and one host synchronization."""
    if bool((~((t >= 0) & (t <= 1))).any()):
        raise ConfigError(name, f"must be {what} in [0, 1], got {_describe_values(t)}")


def _describe_values(t: Tensor) -> str:
    """What is wrong with a tensor's values, for a message (only on the error path)."""
    t = t.detach().double()
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    if nan or inf:
        return f"{nan} NaN and {inf} infinite value(s)"
    return f"values from {t.min().item():.6g} to {t.max().item():.6g}"


def images(name: str, x, *, check_values: bool = True) -> Tensor:
    """``x`` as float images (N, C, H, W) in [0, 1], N >= 1.

    uint8 images (as :meth:`robustmix.data.Dataset.tensors` gives them) become float32
    divided by 255; other dtypes must be floating, finite and in [0, 1] already.
    """
    x = tensor(name, x, "images (N, C, H, W)")
    ndim(name, x, 4, "(N, C, H, W)")
    nonempty(name, x, "image of at least one pixel")
    if x.dtype == torch.uint8:
        return x.float().div_(255)
    if not is_floating(x):
        raise ConfigError(name, f"must be uint8 images in 0..255 or floating images in "
                                f"[0, 1], got dtype {x.dtype}")
    if check_values:
        in_unit_range(name, x, "images (uint8 in 0..255 or floating)")
    return x


def class_labels(name: str, y, n: int, n_classes: int, images: str = "x") -> Tensor:
    """``y`` as integer class labels (n,) in [0, n_classes): one host synchronization."""
    y = tensor(name, y, "integer class labels (N,)")
    ndim(name, y, 1, "(N,) of class indices")
    if not is_integer(y):
        raise ConfigError(name, f"must be integer class indices, got dtype {y.dtype}")
    if y.shape[0] != n:
        raise ConfigError(name, f"must hold one label per image: {images} has {n} images, "
                                f"{name} has {y.shape[0]} labels")
    bad = (y < 0) | (y >= n_classes)
    if bool(bad.any()):
        raise ConfigError(name, f"must be class indices in [0, {n_classes}) (the model has "
                                f"{n_classes} outputs), got labels from {int(y.min())} "
                                f"to {int(y.max())}")
    return y


def same_device(name: str, t: Tensor, other: str, device: torch.device) -> None:
    """``t`` lives on ``device`` (where ``other`` is)."""
    if t.device != device:
        raise ConfigError(name, f"must be on the device of {other} ({device}), got {t.device}")

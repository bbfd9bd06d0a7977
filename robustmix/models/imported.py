"""Weights trained elsewhere, read safely and fitted to a zoo (or timm) architecture.

A safetensors file, or a PyTorch file read with ``torch.load(weights_only=True)`` (tensors
and plain data only: a pickle that asks for code is refused). Checkpoints that wrap the
state dict (``{"state_dict": ...}``, ``{"model": ...}``, ...) are unwrapped, and the
``module.`` prefix of DataParallel/DDP is dropped.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from robustmix.core.errors import UsageError
from robustmix.models import Classifier, build_model

WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "ema", "model_ema")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict in ``path`` and its format (``safetensors`` or ``torch``)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} not found: give a .safetensors or PyTorch weights file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, "safetensors"
    except (SafetensorError, OSError, ValueError):
        pass   # not safetensors: try PyTorch's format below
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:   # code in the pickle, a truncated or foreign file
        raise UsageError(f"{path} is neither safetensors nor a PyTorch file that loads with "
                         f"weights_only=True ({type(err).__name__}: {_first_line(err)})") from None
    return _unwrapped(loaded, path), "torch"


def _unwrapped(loaded, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(loaded, dict) and not _is_state_dict(loaded):
        inner = next((loaded[k] for k in WRAPPERS if isinstance(loaded.get(k), dict)), None)
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, dict) or not _is_state_dict(loaded):
        raise UsageError(f"{path} holds no state dict (a mapping of names to tensors, "
                         f"possibly under one of {', '.join(WRAPPERS)})")
    if all(key.startswith("module.") for key in loaded):
        loaded = {key[len("module."):]: value for key, value in loaded.items()}
    return dict(loaded)


def _is_state_dict(mapping: dict) -> bool:
    return bool(mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                 for k, v in mapping.items())


def fit_weights(state: dict[str, torch.Tensor], arch: str, *, num_classes: int,
                in_channels: int, mean, std, source: str) -> Classifier:
    """``arch`` with ``state`` loaded into its network (strictly) and its normalization
    ``(x - mean) / std`` inside. A state dict of a robustmix model (``net.*`` keys with its
    own ``mean`` and ``std``) is loaded whole. Keys or shapes that differ: one line naming
    them."""
    model = build_model(arch, num_classes=num_classes, in_channels=in_channels,
                        mean=mean, std=std)
    whole = {"mean", "std"} <= state.keys() and any(k.startswith("net.") for k in state)
    target = model if whole else model.net
    expected = target.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{label} {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected),
                                      ("shapes differ (file vs model):", shapes)) if items]
        raise UsageError(f"{source} does not fit {model.arch} with {num_classes} classes and "
                         f"{in_channels} channels: {'; '.join(parts)}")
    target.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.eval()

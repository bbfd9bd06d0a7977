"""Reading a trained model back: the weights file a run ends with, rebuilt from its spec.

Only safetensors is read, so loading never executes code from the file; the spec in the
file's header (written by :func:`robustmix.core.runs.save_weights`) says which model to build.
A model of a plug-in architecture is rebuilt by importing the module its spec names
(``package.module:factory``, :mod:`robustmix.models`), the user's own code, as a run with a
plug-in MSDA names its factory: load only the runs of plug-ins you trust.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from robustmix.core.errors import UsageError
from robustmix.core.runs import WEIGHTS, is_complete
from robustmix.models import build_model


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except FileNotFoundError:
        raise UsageError(f"{path} not found") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"{path} is not a readable safetensors weights file ({err})") from None
    return tensors, metadata


def load_model(path: str | os.PathLike) -> torch.nn.Module:
    """Load a trained model from a run directory or a ``.safetensors`` weights file.

    Returns the model in eval mode on the CPU (the caller moves it), taking inputs in
    [0, 1]. Only safetensors is read, so loading never executes code from the file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike (a run directory or a "
                        f"{WEIGHTS} file), got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        if not is_complete(path):
            raise UsageError(f"{path} holds no finished run: {WEIGHTS} is missing "
                             f"(resume it with: robustmix train --resume {path})")
        path = path / WEIGHTS
    elif not path.exists():
        raise UsageError(f"{path} not found: give a run directory or a {WEIGHTS} file")
    tensors, metadata = _read_safetensors(path)
    if "robustmix_model" not in metadata:
        raise UsageError(f"{path} has no robustmix model spec in its header; "
                         "it was not written by robustmix")
    try:
        spec = json.loads(metadata["robustmix_model"])
        model = build_model(spec["arch"], num_classes=int(spec["num_classes"]),
                            in_channels=int(spec["in_channels"]),
                            mean=spec["mean"], std=spec["std"])
        model.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError, json.JSONDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{path}: weights do not match their model spec ({first})") from None
    return model.eval()

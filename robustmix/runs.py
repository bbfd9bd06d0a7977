"""Run directories: config, metrics, weights and checkpoints, written atomically, read safely.

A run directory holds

    config.json          every setting, package versions, git commit
    metrics.csv          one row per finished epoch
    checkpoint.pt        resumable state (model, optimizer, step, RNG states, epoch)
    model.safetensors    final weights + the model spec in the header; its presence
                         alone marks the run complete

Every file is written to a temporary name in the same directory and renamed into place,
so a crash leaves either the old file or the new one, never half of one. Weights are read
with safetensors and checkpoints with ``torch.load(weights_only=True)``: loading never
executes code from the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from robustmix.errors import UsageError

CONFIG = "config.json"
METRICS = "metrics.csv"
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, WEIGHTS)


def _file_mode() -> int:
    """The mode an ordinary ``open(path, "w")`` would give (mkstemp's is 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _file_mode())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]],
              fieldnames: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not valid JSON ({err})") from None


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def is_complete(run_dir: str | os.PathLike) -> bool:
    """A run is complete exactly when its weights file exists."""
    return (Path(run_dir) / WEIGHTS).is_file()


def holds_run(run_dir: str | os.PathLike) -> bool:
    """Whether a directory already holds (part of) a run."""
    return any((Path(run_dir) / name).exists() for name in RUN_FILES)


def save_weights(path: str | os.PathLike, model: torch.nn.Module, spec: Mapping[str, Any]) -> None:
    """Save a model's state dict as safetensors, with the spec to rebuild it in the header."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata={"robustmix_model": json.dumps(dict(spec))}))


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Save resumable training state; it must hold tensors, numbers, strings, lists, dicts only."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: tensors and plain data, never code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{path} not found") from None
    except Exception as err:  # a pickle that asks for code, or a truncated file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{path} is not a readable robustmix checkpoint ({first})") from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

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
    from robustmix.models import build_model

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

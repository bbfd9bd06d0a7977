"""`robustmix import`: a model trained elsewhere becomes a run directory.

The run directory holds what training would have left: ``config.json`` (its train
settings, the model spec, the data set, and an ``imported`` record of where the weights
came from and their SHA-256) and ``model.safetensors`` with the normalization inside.
It has no metrics.csv (robustmix did not train it), so the report lists it as not
checked for convergence. Every later command (attack, evaluate, report, runs) works on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path
from typing import Sequence

from robustmix.core import methods, runs
from robustmix.core.config import MixConfig, TrainConfig
from robustmix.core.errors import ConfigError, UsageError
from robustmix.data import load_dataset
from robustmix.mixing.registry import resolved
from robustmix.models.imported import fit_weights, read_state_dict
from robustmix.training.run_files import write_config


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stats(field: str, given: Sequence[float] | None, default: Sequence[float],
           channels: int) -> list[float]:
    values = list(default if given is None else given)
    if len(values) == 1 and channels > 1:
        values = values * channels
    if len(values) != channels:
        raise ConfigError(field, f"must give one value per channel ({channels}), "
                                 f"got {len(values)}")
    return values


def import_run(weights: str | Path, out: str | Path, *, arch: str, dataset: str = "digits",
               data_dir: str = "data", image_size: int | None = None,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               mix: str = "vanilla", alpha: float = 1.0) -> Path:
    """Write the run directory ``out`` for ``weights`` (see the module docstring).

    ``mean``/``std`` are the normalization the model was trained with (default: the data
    set's, as robustmix trains); ``mix``/``alpha`` the MSDA it was trained with (a
    registered name or a factory's ``module:attr`` path), which the report groups by
    (default: vanilla, none).
    """
    weights, out = Path(weights), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError("out", f"{out} exists and is not an empty directory")
    name, factory = methods.split_spec(mix)   # a registered name, or a factory's path
    config = TrainConfig(dataset=dataset, data_dir=data_dir, image_size=image_size, arch=arch,
                         mix=MixConfig(mix=name, alpha=alpha, factory=factory), device="cpu")
    config.validate()
    config = dataclasses.replace(config, mix=resolved(config.mix))
    data = load_dataset(dataset, data_dir=data_dir, image_size=image_size)
    state, kind = read_state_dict(weights)
    model = fit_weights(state, arch, num_classes=data.num_classes, in_channels=data.channels,
                        mean=_stats("mean", mean, data.mean, data.channels),
                        std=_stats("std", std, data.std, data.channels), source=str(weights))
    record = {"weights": str(weights.resolve()), "format": kind, "sha256": _sha256(weights)}
    out.mkdir(parents=True, exist_ok=True)
    try:
        write_config(out, config, model.config, "cpu", 1, data, augment=None,
                     extra={"imported": record})
        runs.save_weights(out / runs.WEIGHTS, model, model.config)  # last: marks it finished
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out

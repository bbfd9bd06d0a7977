"""Run directories: config, metrics, weights and checkpoints, written atomically, read safely.

A run directory holds

    config.json          every setting, package versions, git commit
    metrics.csv          one row per finished epoch
    checkpoint.pt        resumable state (model, optimizer, step, RNG states, epoch)
    model.safetensors    final weights + the model spec in the header; its presence
                         alone marks the run complete

and, once measured, what ``robustmix attack`` and ``robustmix evaluate`` add to it:

    robustness.csv           one row per attack, norm, ε and example subset
    robustness_examples.csv  per-example outcomes behind the worst-case rows
    diagnostics.csv          the attack-failure checks per attack and ε
    .attack-state/           AutoAttack's progress while it runs (removed when done)
    generalization.json      the generalization measurements
    gradient_profile.csv     their gradient-distance profiles
    regularizer.csv          their Q per mask distribution

Every name is one constant here, and :class:`RunDir` owns them: a path per file, the
checked readers, and :func:`test_subset`, the one rule that picks the test examples an
attack or evaluation with ``n_examples`` looks at.

Every file is written atomically (:mod:`robustmix.core.files`: a temporary name in the
same directory, then a rename). Weights are read with safetensors and checkpoints with
``torch.load(weights_only=True)``: loading never executes code from the file. Files read
back are checked before use: :func:`read_config` (types, unknown keys), :func:`read_metrics`
and :func:`robustmix.core.tables.read_table` (columns, numbers, ranges) turn anything
malformed into a one-line :class:`UsageError` that names the file and the problem.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from safetensors.torch import save

from robustmix.core.errors import ConfigError, UsageError
# Re-exported so that ``runs.write_csv(...)``, ``runs.read_table(...)`` and the rest keep
# working: the atomic files live in :mod:`robustmix.core.files`, the checked settings and
# tables in :mod:`robustmix.core.tables`.
from robustmix.core.files import (WriteError, atomic_write_bytes,  # noqa: F401
                                  atomic_write_text, read_csv, read_json,
                                  remove_stale_temporaries, write_csv, write_json)
from robustmix.core.tables import (check_fields, choice, kind_name, number,  # noqa: F401
                                   read_table, short_value, text)

CONFIG = "config.json"
METRICS = "metrics.csv"
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, WEIGHTS)  # what training writes
ROBUSTNESS = "robustness.csv"
ROBUSTNESS_EXAMPLES = "robustness_examples.csv"
DIAGNOSTICS = "diagnostics.csv"
ATTACK_STATE = ".attack-state"
SQUARE_PENDING = "square-pending.json"   # in ATTACK_STATE while Square's escalation runs
GENERALIZATION = "generalization.json"
PROFILE_CSV = "gradient_profile.csv"
REGULARIZER_CSV = "regularizer.csv"
CORRUPTIONS = "corruptions.csv"
# The sections of config.json, as robustmix train writes them.
CONFIG_SECTIONS = {"train": dict, "model": dict, "dataset": dict,
                   "augment": (dict, type(None)),   # None: imported, not trained here
                   "versions": dict, "git_commit": (str, type(None)), "device": str,
                   "world_size": int, "threads": int,
                   "imported": dict}                # robustmix import: the weights' origin
# metrics.csv's columns, each with its check; the held-out ones in runs with a held-out slice
METRIC_COLUMNS: dict[str, Callable[[str], Any]] = {
    "epoch": number(1, integer=True), "train_loss": number(0), "train_acc": number(0, 1),
    "test_loss": number(0), "test_acc": number(0, 1), "lr": number(0), "seconds": number(0),
    "images_per_s": number(0)}
HOLDOUT_COLUMNS: dict[str, Callable[[str], Any]] = {"holdout_loss": number(0),
                                                   "holdout_acc": number(0, 1)}
METRIC_FIELDS = list(METRIC_COLUMNS)
HOLDOUT_FIELDS = list(HOLDOUT_COLUMNS)


def metric_fields(holdout: bool) -> list[str]:
    """metrics.csv's columns: with a held-out slice, its loss and accuracy at the end."""
    return METRIC_FIELDS + HOLDOUT_FIELDS if holdout else list(METRIC_FIELDS)


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run's ``config.json``: a JSON object with the sections robustmix train writes.

    Unknown sections and sections of the wrong type are refused; the training settings
    themselves are checked by ``TrainConfig.from_dict`` (see :func:`check_fields`).
    """
    path = Path(run_dir) / CONFIG
    config = read_json(path)
    if not isinstance(config, dict):
        raise UsageError(f"{path} holds a JSON {type(config).__name__}, not an object with "
                         f"the sections {', '.join(CONFIG_SECTIONS)}")
    unknown = sorted(set(config) - set(CONFIG_SECTIONS))
    if unknown:
        raise UsageError(f"{path} has unknown keys {', '.join(map(repr, unknown))}; a "
                         f"robustmix config holds {', '.join(CONFIG_SECTIONS)}")
    if "train" not in config:
        raise UsageError(f"{path} lacks the 'train' section; it was not written by "
                         "robustmix train")
    for key, kind in CONFIG_SECTIONS.items():
        if key in config and not isinstance(config[key], kind):
            raise UsageError(f"{path}: '{key}' must be {kind_name(kind)}, got "
                             f"{short_value(config[key])}")
    return config


def read_metrics(path: str | os.PathLike, *, epochs: int | None = None) -> list[dict[str, str]]:
    """A run's ``metrics.csv``, checked: its columns, numbers, and epochs 1, 2, 3, ...

    With ``epochs`` (the epoch of the checkpoint being resumed) the file must hold at
    least that many rows, and only those are returned.
    """
    rows = read_table(path, {**METRIC_COLUMNS, **HOLDOUT_COLUMNS}, optional=HOLDOUT_FIELDS)
    for number_, row in enumerate(rows, start=1):
        if int(row["epoch"]) != number_:
            raise UsageError(f"{path}, line {number_ + 1}: epoch is {row['epoch']}, expected "
                             f"{number_} (one row per epoch, in order)")
    if epochs is not None:
        if len(rows) < epochs:
            raise UsageError(f"{path} holds {len(rows)} epochs, but {CHECKPOINT} was saved "
                             f"after epoch {epochs}")
        rows = rows[:epochs]
    return rows


def is_complete(run_dir: str | os.PathLike) -> bool:
    """A run is complete exactly when its weights file exists."""
    return (Path(run_dir) / WEIGHTS).is_file()


def holds_run(run_dir: str | os.PathLike) -> bool:
    """Whether a directory already holds (part of) a run."""
    return any((Path(run_dir) / name).exists() for name in RUN_FILES)


def save_weights(path: str | os.PathLike, model: torch.nn.Module, spec: Mapping[str, Any]) -> None:
    """Save a model's state dict as safetensors, with the spec to rebuild it in the header."""
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


# ---------------------------------------------------------------------------- the directory


def test_subset(n_total: int, n_examples: int | None) -> np.ndarray:
    """The test examples an attack or evaluation with ``n_examples`` looks at (sorted indices).

    All of 0..n_total−1 when ``n_examples`` is None or at least ``n_total``; otherwise the
    sorted first ``n_examples`` of ``default_rng(0).permutation(n_total)``: fixed, the same
    for every model and seed, so ``robustmix attack`` and ``robustmix evaluate`` with one
    --n-examples look at the same test images.
    """
    if n_examples is None or n_examples >= n_total:
        return np.arange(n_total)
    if n_examples < 1:
        raise ConfigError("n_examples", f"must be >= 1, got {n_examples}")
    return np.sort(np.random.default_rng(0).permutation(n_total)[:n_examples])


test_subset.__test__ = False  # a rule, not a test: pytest must not collect it where imported


# What identifies a data set: two runs are comparable only when all of these agree.
DATA_KEYS = ("name", "channels", "height", "width", "n_train", "n_test", "num_classes")


@dataclasses.dataclass(frozen=True)
class RunDir:
    """One run directory: where each of its files lies, and their checked readers.

    ``RunDir(path)`` touches nothing on disk; :meth:`open` checks that it holds a finished
    run and reads its config (a :class:`FinishedRun`).
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ---- the files (the module-level functions of the same names do the reading)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    @property
    def robustness_path(self) -> Path:
        return self.path / ROBUSTNESS

    @property
    def robustness_examples_path(self) -> Path:
        return self.path / ROBUSTNESS_EXAMPLES

    @property
    def diagnostics_path(self) -> Path:
        return self.path / DIAGNOSTICS

    @property
    def attack_state_dir(self) -> Path:
        return self.path / ATTACK_STATE

    @property
    def square_pending_path(self) -> Path:
        """Present while Square attacks where a check flagged: the attack is not complete."""
        return self.path / ATTACK_STATE / SQUARE_PENDING

    @property
    def generalization_path(self) -> Path:
        return self.path / GENERALIZATION

    @property
    def profile_path(self) -> Path:
        return self.path / PROFILE_CSV

    @property
    def regularizer_path(self) -> Path:
        return self.path / REGULARIZER_CSV

    @property
    def corruptions_path(self) -> Path:
        return self.path / CORRUPTIONS

    # ---- what they hold

    def read_config(self) -> dict[str, Any]:
        """``config.json``, checked (:func:`read_config`)."""
        return read_config(self.path)

    def read_metrics(self, *, epochs: int | None = None) -> list[dict[str, str]]:
        """``metrics.csv``, checked (:func:`read_metrics`)."""
        return read_metrics(self.metrics_path, epochs=epochs)

    def is_complete(self) -> bool:
        """Whether training finished: its weights file exists."""
        return is_complete(self.path)

    def holds_run(self) -> bool:
        """Whether the directory holds (part of) a training run."""
        return holds_run(self.path)

    def read_generalization(self) -> Any:
        """``generalization.json`` as written by ``robustmix evaluate``; None when absent."""
        path = self.generalization_path
        return read_json(path) if path.is_file() else None

    def open(self) -> FinishedRun:
        """Check that the directory holds a finished run and read its config."""
        path = self.path
        if not path.exists():
            raise UsageError(f"run directory {path} not found")
        if not path.is_dir():
            raise UsageError(f"{path} is not a run directory (give the folder that holds "
                             f"{CONFIG} and {WEIGHTS})")
        if not self.is_complete():
            raise UsageError(f"{path} holds no finished run: {WEIGHTS} is missing "
                             f"(finish it with: robustmix train --resume {path})")
        config = self.read_config()  # types and unknown keys checked
        if "dataset" not in config:
            raise UsageError(f"{self.config_path} lacks the 'dataset' section; "
                             "it was not written by robustmix train")
        return FinishedRun(path, config)


@dataclasses.dataclass(frozen=True)
class FinishedRun(RunDir):
    """A finished run directory and its ``config.json`` (from :meth:`RunDir.open`)."""

    config: dict[str, Any]

    @property
    def train(self) -> dict[str, Any]:
        return self.config["train"]

    @property
    def mix(self) -> str:
        return str(self.train.get("mix", {}).get("mix", "vanilla"))

    @property
    def seed(self) -> int:
        return int(self.train.get("seed", 0))

    @property
    def dataset(self) -> dict[str, Any]:
        return self.config["dataset"]

    def data_identity(self) -> tuple:
        return tuple(self.dataset.get(key) for key in DATA_KEYS)

    def data_label(self) -> str:
        d = self.dataset
        return (f"{d.get('name')} {d.get('channels')}x{d.get('height')}x{d.get('width')} "
                f"({d.get('n_train')} train / {d.get('n_test')} test)")


def open_run(path: str | os.PathLike) -> FinishedRun:
    """Check that ``path`` holds a finished run and read its config (:meth:`RunDir.open`)."""
    return RunDir(path).open()

"""One run directory as the evaluations see it: its path, settings and data set.

Opening a run checks what every evaluation needs (the directory, its finished weights,
its config) and turns each failure into a one-line :class:`UsageError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustmix.core import runs
from robustmix.core.errors import UsageError

GENERALIZATION = "generalization.json"
PROFILE_CSV = "gradient_profile.csv"
REGULARIZER_CSV = "regularizer.csv"
ROBUSTNESS = "robustness.csv"

# What identifies a data set: two runs are comparable only when all of these agree.
DATA_KEYS = ("name", "channels", "height", "width", "n_train", "n_test", "num_classes")


@dataclass(frozen=True)
class RunInfo:
    """A finished run directory and its ``config.json``."""

    path: Path
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


def open_run(path: str | Path) -> RunInfo:
    """Check that ``path`` holds a finished run and read its config."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"run directory {path} not found")
    if not path.is_dir():
        raise UsageError(f"{path} is not a run directory (give the folder that holds "
                         f"{runs.CONFIG} and {runs.WEIGHTS})")
    if not runs.is_complete(path):
        raise UsageError(f"{path} holds no finished run: {runs.WEIGHTS} is missing "
                         f"(finish it with: robustmix train --resume {path})")
    config = runs.read_config(path)  # types and unknown keys checked
    if "dataset" not in config:
        raise UsageError(f"{path / runs.CONFIG} lacks the 'dataset' section; "
                         "it was not written by robustmix train")
    return RunInfo(path, config)

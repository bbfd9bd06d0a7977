"""TensorBoard event files in the run directory (``train --tensorboard``), beside
metrics.csv: each epoch's losses, accuracies, learning rate and images/s, and once, when
the run starts, a gallery of the run's masks at λ = 0.2, 0.5, 0.8.

The gallery is drawn with a generator of its own, so a run with TensorBoard trains exactly
as one without. The tensorboard package is an optional extra (``pip install
'robustmix[tensorboard]'``); without it the setting is refused before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robustmix.core.config import TrainConfig
from robustmix.core.errors import ConfigError
from robustmix.mixing.registry import sampler_of
from robustmix.mixing.samplers import is_data_dependent

GALLERY_LAMS = (0.2, 0.5, 0.8)
SCALARS = {"train_loss": "loss/train", "test_loss": "loss/test", "train_acc": "accuracy/train",
           "test_acc": "accuracy/test", "lr": "lr", "images_per_s": "images_per_s"}


def require() -> None:
    """Refuse ``tensorboard`` when its package is missing (a one-line ConfigError)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError("tensorboard", "needs the tensorboard package: pip install "
                          "'robustmix[tensorboard]'") from None


class Board:
    """One run's event file writer (on rank 0 only)."""

    def __init__(self, out: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out))

    def epoch(self, row: dict[str, str]) -> None:
        """An epoch's row of metrics.csv, as scalars at step = epoch."""
        for key, tag in SCALARS.items():
            self.writer.add_scalar(tag, float(row[key]), int(row["epoch"]))
        self.writer.flush()

    def masks(self, config: TrainConfig, height: int, width: int) -> None:
        """The run's masks at a few λ (white: the image, black: its partner); none for a
        data-dependent MSDA (PuzzleMix's mask needs the batch)."""
        sampler = sampler_of(config.mix)
        if is_data_dependent(sampler):
            return
        lam = torch.tensor(GALLERY_LAMS)
        masks = sampler(lam, height, width, np.random.default_rng(0), "cpu")
        self.writer.add_images(f"masks/{config.mix.mix} (lambda {GALLERY_LAMS})",
                               masks.clamp(0, 1), 0)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

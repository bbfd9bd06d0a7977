"""The configuration of a run as one typed tree, and the names it may hold.

:class:`TrainConfig` is saved as ``config.json["train"]`` (its ``mix`` key holds the
:class:`MixConfig`); its keys are the file format of a run directory, so they do not change.
The MSDA names come from the registry, :mod:`robustmix.core.methods`, below the samplers,
so that configuration, command line and study agree on them without importing the mixing
code. Every default lives here once: the flags of ``robustmix train`` are these fields with
these defaults (a test holds the parser to them); each method's options, their defaults,
help and ranges live in its registry entry, and the flags for them are generated from it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustmix.core import methods, tables
from robustmix.core.errors import ConfigError, UsageError
from robustmix.core.methods import DATA_FREE_MIX_NAMES, MIX_NAMES  # noqa: F401 (re-exported)

LAM_PER = ("batch", "sample")
PAIRINGS = ("flip", "shuffle")
SCHEDULES = ("cosine", "multistep")
MAX_IMAGE_SIZE = 1024  # larger --image-size values would resize whole data sets into RAM


@dataclass(frozen=True)
class MixConfig:
    """How a training run mixes its batches (the flags of ``robustmix train``).

    ``mix`` names a registered method (:mod:`robustmix.core.methods`); ``options`` holds
    that method's options, its defaults filled in wherever they are known, so two configs
    of one run compare equal however they were spelled. ``factory`` is the ``module:attr``
    path of a method that is not built in (given by path, ``--mix examples.fmix:fmix``, or
    registered by an entry point or :func:`robustmix.register_method`), kept so that every
    later command, on any machine, loads the same code; None for the built-ins.
    """

    mix: str = "vanilla"
    alpha: float = 1.0
    lam_per: str = "batch"       # one λ and mask per batch (the paper's code) or per sample
    pairing: str = "flip"        # partner of sample k: B−1−k (the paper's code) or a permutation
    mix_prob: float = 1.0        # probability that a batch (or sample) is mixed at all
    options: dict[str, Any] = field(default_factory=dict)   # the method's: {"hmix_r": 0.5}
    factory: str | None = None   # "package.module:factory" of a method given by path

    def __post_init__(self) -> None:
        # a method's defaults, filled in: MixConfig(mix="hmix").options == {"hmix_r": 0.5};
        # a plugin's path too, however it was registered, so its runs name their code
        object.__setattr__(self, "options", methods.full_options(self.mix, self.options))
        method = methods.find(self.mix)
        if self.factory is None and method is not None and not method.builtin:
            object.__setattr__(self, "factory", method.path)

    def validate(self) -> None:
        if not isinstance(self.factory, (str, type(None))):
            raise ConfigError("factory", f"must be 'package.module:factory' or None, "
                              f"got {self.factory!r}")
        if not isinstance(self.mix, str):
            raise ConfigError("mix", f"must be a method's name, got {self.mix!r}")
        methods.get(self.mix, self.factory)
        if not 0 < self.alpha < math.inf:
            raise ConfigError("alpha", f"must be > 0 and finite (λ ~ Beta(α, α)), "
                              f"got {self.alpha}")
        if self.lam_per not in LAM_PER:
            raise ConfigError("lam_per", f"must be one of {', '.join(LAM_PER)}, "
                              f"got '{self.lam_per}'")
        if self.pairing not in PAIRINGS:
            raise ConfigError("pairing", f"must be one of {', '.join(PAIRINGS)}, "
                              f"got '{self.pairing}'")
        if not 0.0 <= self.mix_prob <= 1.0:
            raise ConfigError("mix_prob", f"must lie in [0, 1], got {self.mix_prob}")
        methods.check_options(self.mix, self.options)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; saved as ``config.json["train"]``."""

    dataset: str = "digits"
    data_dir: str = "data"
    image_size: int | None = None          # None: the data set's own size (digits: 16)
    download: bool = False
    skip_bad_images: bool = False         # image folders: leave out files that cannot be decoded
    crop_scale: tuple[float, float] | None = None
    # training images set aside, never trained on, scored each epoch to judge convergence
    # (0: none)
    holdout: int = 0
    pad: int | None = None                 # None: the data set's default crop padding
    flip: bool | None = None               # None: the data set's default (off for digits)
    arch: str = "smallcnn"
    mix: MixConfig = field(default_factory=MixConfig)
    epochs: int = 15
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True                       # bf16 autocast on CUDA
    channels_last: bool = True             # on CUDA
    compile: bool = False                  # torch.compile the training forward and backward
    sync_bn: bool = False                  # under torchrun: batch norm over the global batch
    log_interval: int = 20                 # steps between host synchronizations
    # TensorBoard event files in the run directory: logging only, so not compared (a run
    # resumed with or without it is the same run)
    tensorboard: bool = field(default=False, compare=False)

    def validate(self) -> None:
        self.mix.validate()
        if self.epochs < 1:
            raise ConfigError("epochs", f"must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or (self.batch_size < 2 and self.mix.mix != "vanilla"):
            raise ConfigError("batch_size", f"must be >= 2 when mixing (>= 1 without), "
                              f"got {self.batch_size}")
        if not 0 < self.lr < math.inf:
            raise ConfigError("lr", f"must be a finite number > 0, got {self.lr}")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError("weight_decay", f"must be a finite number >= 0, "
                              f"got {self.weight_decay}")
        if self.image_size is not None and not 8 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ConfigError("image_size", f"must lie in [8, {MAX_IMAGE_SIZE}], "
                              f"got {self.image_size}")
        if not 0 <= self.momentum < 1:
            raise ConfigError("momentum", f"must lie in [0, 1), got {self.momentum}")
        if self.schedule not in SCHEDULES:
            raise ConfigError("schedule", f"must be one of {', '.join(SCHEDULES)}, "
                              f"got '{self.schedule}'")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("label_smoothing", f"must lie in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ConfigError("warmup_epochs", f"must lie in [0, epochs), got {self.warmup_epochs}")
        if list(self.milestones) != sorted(set(self.milestones)) or any(
                not 0 < m < self.epochs for m in self.milestones):
            raise ConfigError("milestones", f"must be increasing epochs between 1 and "
                              f"{self.epochs - 1}, got {','.join(map(str, self.milestones))}")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError("lr_gamma", f"must lie in (0, 1], got {self.lr_gamma}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N, got '{self.device}'")
        if self.log_interval < 1:
            raise ConfigError("log_interval", f"must be >= 1, got {self.log_interval}")
        if self.pad is not None and self.pad < 0:
            raise ConfigError("pad", f"must be >= 0, got {self.pad}")
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, int) \
                or self.holdout < 0:
            raise ConfigError("holdout", f"must be an integer >= 0 (training images held "
                              f"out), got {self.holdout!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        """Rebuild from ``to_dict`` output; unknown keys or wrong types are refused."""
        values = dict(values)
        try:
            tables.check_fields(values, cls, source, what="training settings")
            mix_values = values.pop("mix", {})
            for key in ("crop_scale", "milestones"):
                if values.get(key) is not None:
                    values[key] = tuple(values[key])
            config = cls(mix=MixConfig(**mix_values), **values)
            config.validate()
        except ConfigError as err:
            raise ConfigError(err.field, err.problem, source=source) from None
        except TypeError as err:
            raise UsageError(f"{source}: malformed training settings ({err})") from None
        return config

    def default_out(self) -> str:
        name = self.dataset
        if name.startswith("imagefolder:"):
            name = "imagefolder-" + Path(name.split(":", 1)[1]).name
        return f"runs/{name}-{self.arch}-{self.mix.mix}-s{self.seed}"

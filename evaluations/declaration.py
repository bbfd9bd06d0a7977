"""What a study declares before any data: its primary comparisons and the margins of its
claims of "no effect".

A :class:`Declaration` is the ``[verdicts]`` table of a study (its preset or TOML, written
to ``OUT/study.toml`` before the first run trains). The report reads it back, so that
which comparisons are primary, on which ε grid, and what counts as "no effect" are fixed
before the numbers exist. Without one (runs reported outside a study) the report derives
the primary ε grid from the runs and says that the primaries were not declared.

Primary comparisons: one per MSDA against vanilla, on the per-example worst case over
every attack run at each ε (the strong attack included); the statistic is
:func:`grid_mean`. Holm over them at ``level``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from robustmix.attacks.eps import parse_eps
from robustmix.core.errors import ConfigError

NORMS = ("linf", "l2")
# what counts as a primary replicated by a confirmation on fresh seeds
# (robustmix.evaluations.confirmation): the same decided verdict at the same level, and
# with "beyond-bound" the new effect beyond the original interval's end nearer zero too
REPLICATION = ("same-verdict", "same-verdict-beyond-bound")


@dataclass(frozen=True)
class Declaration:
    """``[verdicts]``: the study's primary comparisons and margins, declared in advance.

    - ``primary_eps``: the primary ε grid (text, e.g. ``"12/255,16/255,20/255"``, read as
      ``robustmix attack --eps`` reads it: sorted, without repeats; the presets' are uniform; :func:`grid_mean` is the same integral on any grid); "" in
      a study means its ``[attack] eps``, and in a report "not declared".
    - ``norm``: the norm of the primary grid.
    - ``level``: the family-wise error of every family (Holm).
    - ``gap_margin_acc`` / ``gap_margin_loss``: (a)'s margin for "no effect" on the
      train−test accuracy gap (a fraction: 0.005 = 0.5 pp) and loss gap (nats).
    - ``profile_margin``: (c)'s margin for "Mixup's profile is vanilla's" on the decay D.
    - ``replication``: what a confirmation on fresh seeds counts as replicated
      (``REPLICATION``).
    - ``methods``: the MSDAs with a primary comparison; () in a study means its methods
      but vanilla, and in a report without a declaration every MSDA present. A declared
      method without runs keeps its place in the family, "not measured".
    """

    primary_eps: str = ""
    norm: str = "linf"
    level: float = 0.05
    gap_margin_acc: float = 0.005
    gap_margin_loss: float = 0.01
    profile_margin: float = 0.02
    methods: tuple[str, ...] = ()
    replication: str = "same-verdict-beyond-bound"
    source: str = ""                       # where it was declared; "" for none
    phase: str = ""                        # the study's phase; "" outside a study

    def validate(self) -> None:
        if self.primary_eps:
            try:
                parse_eps(self.primary_eps)     # sorted, without repeats
            except ConfigError as err:
                raise ConfigError("primary_eps", err.problem) from None
        if self.norm not in NORMS:
            raise ConfigError("norm", f"must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if not 0 < self.level < 0.5:
            raise ConfigError("level", f"must lie in (0, 0.5), got {self.level}")
        for name in ("gap_margin_acc", "gap_margin_loss", "profile_margin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 < value < math.inf:
                raise ConfigError(name, f"must be a finite number > 0, got {value!r}")
        if self.replication not in REPLICATION:
            raise ConfigError("replication", f"must be one of {', '.join(REPLICATION)}, "
                              f"got {self.replication!r}")

    @property
    def declared(self) -> bool:
        return bool(self.primary_eps)

    def grid(self) -> list[tuple[float, str]]:
        """The declared grid as (eps_key, text): eps_key as the report keys ε (the float of
        its exact value, :mod:`robustmix.attacks.eps`)."""
        return [(e.value, e.text) for e in parse_eps(self.primary_eps)] \
            if self.primary_eps else []


def uniform(grid: Sequence[float]) -> bool:
    """Equal steps, up to the rounding of ε written as decimals (1e-6 of the span)."""
    if len(grid) < 3:
        return True
    steps = np.diff(np.asarray(grid, dtype=float))
    return bool(np.ptp(steps) <= 1e-6 * (grid[-1] - grid[0]))


def grid_mean(values: Sequence[float], grid: Sequence[float]) -> float:
    """The mean of a curve over [ε_min, ε_max]: (1/(ε_max − ε_min)) ∫ r(ε) dε by the
    trapezoid rule through the grid's points (one point: its value).

    On a uniform grid this is the average of the values with the two end points
    half-weighted. It estimates the same integral on any grid over the same interval (a
    finer grid only refines it), unlike an area that starts from 1 at ε = 0 and so
    depends on ε_max and the spacing.
    """
    y, x = np.asarray(values, dtype=float), np.asarray(grid, dtype=float)
    if y.size == 1:
        return float(y[0])
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))

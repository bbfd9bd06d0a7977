"""Whether a run converged: the criterion every verdict of a report relies on.

A run counts as converged when it finished its planned epochs and its test accuracy over
the last quarter of them (at least ``MIN_WINDOW`` epochs) stayed within a band of
``ACC_BAND`` (max − min). The band is wider than the noise of a settled model (a few test
images between epochs) and narrower than the climb of one still learning (several points
an epoch).

The training loss of ``metrics.csv`` is not used: it is measured on the mixed batches, and
with one λ per batch its epoch mean moves by 10–20% from the λ draws alone, so it says
more about the draws than about convergence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

WINDOW = 0.25
MIN_WINDOW = 3
ACC_BAND = 0.015
CRITERION = (f"finished its planned epochs, and its test accuracy over the last quarter of "
             f"them (at least {MIN_WINDOW} epochs) within a band of {ACC_BAND * 100:g} "
             "percentage points (max − min)")


@dataclass(frozen=True)
class Convergence:
    converged: bool
    reason: str          # why not; "" when converged
    band: float          # max − min test accuracy over the window (NaN without epochs)
    window: int          # epochs in the window


def window_size(epochs: int) -> int:
    return max(MIN_WINDOW, math.ceil(WINDOW * epochs))


def check(test_acc: Sequence[float], planned: int) -> Convergence:
    """The verdict for a run with per-epoch test accuracies ``test_acc`` of ``planned``."""
    done = len(test_acc)
    size = min(window_size(planned), done)
    if done == 0:
        return Convergence(False, "no epoch finished", math.nan, 0)
    tail = [float(v) for v in test_acc[-size:]]
    band = max(tail) - min(tail)
    if done < planned:
        return Convergence(False, f"{done} of {planned} epochs", band, size)
    if done < MIN_WINDOW:
        return Convergence(False, f"{done} epochs: too few to judge", band, size)
    if band > ACC_BAND + 1e-9:
        return Convergence(False, f"test accuracy moved {band * 100:.1f} pp over the last "
                                  f"{size} epochs", band, size)
    return Convergence(True, "", band, size)

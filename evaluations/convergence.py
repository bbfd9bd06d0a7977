"""Whether a run converged, judged on held-out training images, never on the test set.

A run trained with ``holdout`` > 0 sets that many training images aside (a fixed choice,
the same for every run, never trained on) and scores them after every epoch
(``holdout_acc``, ``holdout_loss`` in metrics.csv). It counts as converged when

1. it finished its planned epochs (at least ``MIN_EPOCHS``);
2. it learned: its final held-out loss is at most half of ln(classes), the loss of a
   uniform guess (a run stuck near chance by too high a learning rate fails here);
3. it had settled: its final held-out accuracy is at most ``GAIN`` above the best it
   reached in the third quarter of the epochs (after half of them, up to three quarters).
   A run still climbing there (too few epochs; a learning rate too high for the model to
   settle before the schedule anneals) fails, whatever the schedule does in its last
   epochs. The best, not the mean, of the third quarter, so that one noisy epoch of a
   settled run at a still high learning rate does not fail it.

How the thresholds were set (runs that pass and runs that fail them) is in
benchmarks/RESULTS.md, under this module's name. A run without held-out data (trained
with ``holdout`` = 0) is *not judged*: ``converged`` is None, and the report names such runs
in the runs table and in the note of every verdict they enter, so they are never passed
silently. The test accuracy is not used: reading it to decide which runs count would let
the test set choose the verdicts. The training loss is not used either: it is measured on
the mixed batches, and with one λ per batch it moves 10-20% from the λ draws alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

MIN_EPOCHS = 4
LEARNED = 0.5     # of ln(classes)
GAIN = 0.02
CRITERION = (f"judged on the held-out training images (never the test set): finished its "
             f"planned epochs (at least {MIN_EPOCHS}); final held-out loss at most half of "
             f"ln(classes), the loss of a uniform guess; final held-out accuracy at most "
             f"{GAIN * 100:g} percentage points above the best it reached in the third quarter of "
             "the epochs")
NOT_JUDGED = "not judged (no held-out data)"


@dataclass(frozen=True)
class Convergence:
    converged: bool | None   # None: not judged (no held-out data)
    reason: str              # why not, or why not judged; "" when converged
    gain: float              # final − best third-quarter held-out accuracy (NaN: none)


def third_quarter(epochs: int) -> slice:
    """The epochs after half of ``epochs`` and up to three quarters (0-based slice)."""
    start = epochs // 2
    return slice(start, max(start + 1, (3 * epochs) // 4))


def check(holdout_acc: Sequence[float] | None, holdout_loss: Sequence[float] | None,
          planned: int, classes: int) -> Convergence:
    """The verdict for a run with per-epoch held-out accuracies and losses (None or empty:
    no held-out data) of ``planned`` epochs, on ``classes`` classes."""
    if not holdout_acc:
        return Convergence(None, NOT_JUDGED, math.nan)
    done = len(holdout_acc)
    if done < planned:
        return Convergence(False, f"{done} of {planned} epochs", math.nan)
    if done < MIN_EPOCHS:
        return Convergence(False, f"{done} epochs: too few to judge (at least {MIN_EPOCHS})",
                           math.nan)
    acc = [float(v) for v in holdout_acc]
    gain = acc[-1] - max(acc[third_quarter(done)])
    final_loss = float(holdout_loss[-1]) if holdout_loss else math.nan
    if not final_loss <= LEARNED * math.log(classes):
        return Convergence(False, f"held-out loss {final_loss:.3g} above ln({classes}) / 2 = "
                                  f"{LEARNED * math.log(classes):.3g}: it barely learned", gain)
    if gain > GAIN + 1e-9:
        return Convergence(False, f"held-out accuracy still climbing: +{gain * 100:.1f} pp "
                                  "over the third quarter of the epochs", gain)
    return Convergence(True, "", gain)

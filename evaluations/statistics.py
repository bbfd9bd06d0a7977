"""The statistics behind every verdict of a report.

A comparison sets the per-run values of one group (an MSDA, one value per seed) against
those of another (vanilla, or the runner-up), on one statistic. The unit of replication is
the training run: every run of a group is the same recipe with another seed, and every run
is measured on the same test examples, so seed-to-seed spread is the noise a verdict must
beat.

- **Test:** Welch's unequal-variance t-test, two-sided (``scipy.stats.ttest_ind`` with
  ``equal_var=False``), with its own Welch–Satterthwaite degrees of freedom; only the two
  groups' own data enter it.
- **Effect size:** the difference of the group means, with Welch's 95% confidence interval.
- **Multiple comparisons:** Benjamini–Hochberg over every tested comparison of a report
  (``scipy.stats.false_discovery_control``), false discovery rate ``LEVEL`` = 5%.
- **Verdict:** adjusted p ≤ ``LEVEL``: "holds" when the difference has the predicted sign,
  "does not hold" otherwise; else "inconclusive". A group with one seed has no spread and
  gives "inconclusive (one seed)"; a comparison whose premise is absent (an unconverged
  model, a reference that does not overfit) is not tested and says why.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

LEVEL = 0.05
CONFIDENCE = 0.95
TEST = "Welch's t-test, two-sided"
CORRECTION = f"Benjamini-Hochberg over all tested comparisons, FDR {LEVEL:g}"

HOLDS = "holds"
FAILS = "does not hold"
INCONCLUSIVE = "inconclusive"
ONE_SEED = "inconclusive (one seed)"
UNCONVERGED = "inconclusive (unconverged model)"
NOT_TESTABLE = "not testable"
NOT_MEASURED = "not measured"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, ONE_SEED, UNCONVERGED, NOT_TESTABLE, NOT_MEASURED)


@dataclass(frozen=True)
class Welch:
    """Welch's t-test of mean(a) − mean(b) = 0."""

    effect: float        # mean(a) − mean(b)
    ci_low: float
    ci_high: float
    p_value: float
    df: float


def finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray([float(v) for v in values if v is not None], dtype=float)
    return array[np.isfinite(array)]


def welch(a: Sequence[float], b: Sequence[float]) -> Welch:
    """Welch's t-test on two samples of at least two finite values each.

    Two samples without any spread (every value of each equal) have an exact answer that
    the t statistic cannot give (0/0 or x/0): p = 1 for equal means, else 0.
    """
    a, b = finite(a), finite(b)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"Welch's t-test needs two values per group, got {a.size} and {b.size}")
    effect = float(a.mean() - b.mean())
    if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:
        return Welch(effect, effect, effect, 1.0 if effect == 0 else 0.0, math.inf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(a, b, equal_var=False)
        interval = result.confidence_interval(CONFIDENCE)
    return Welch(effect, float(interval.low), float(interval.high), float(result.pvalue),
                 float(result.df))


def adjust(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (reject where ≤ ``LEVEL``)."""
    p = np.asarray(p_values, dtype=float)
    if p.size == 0:
        return p
    return stats.false_discovery_control(p, method="bh")


def decide(effect: float, p_adjusted: float, claim: str) -> str:
    """The verdict on a claim that a − b is "lower" (< 0) or "higher" (> 0)."""
    if not p_adjusted <= LEVEL:
        return INCONCLUSIVE
    wanted = effect < 0 if claim == "lower" else effect > 0
    return HOLDS if wanted else FAILS


def exceeds_zero(values: Sequence[float]) -> tuple[bool, float]:
    """Whether the mean of ``values`` is above zero: one-sided one-sample t-test at ``LEVEL``.

    Used for a premise (does the reference overfit?), not for a verdict, so it is not part
    of the corrected family. Returns (above, p-value); fewer than two values: (False, nan).
    """
    values = finite(values)
    if values.size < 2:
        return False, math.nan
    if values.var(ddof=1) == 0:
        return bool(values[0] > 0), 0.0 if values[0] > 0 else 1.0
    p = float(stats.ttest_1samp(values, 0.0, alternative="greater").pvalue)
    return p <= LEVEL, p

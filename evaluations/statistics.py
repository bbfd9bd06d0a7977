"""The statistics behind every verdict of a report: the tests, the correction, the words.

A comparison sets the per-run values of one group (an MSDA, one value per seed) against
those of another (vanilla, or another model of its family), on one statistic. The
unit of replication is the training run: every run of a group is the same recipe with
another seed, and every run is measured on the same test examples, so seed-to-seed spread
is the noise a verdict must beat.

- **Tests.** Welch's unequal-variance t-test (as ``scipy.stats.ttest_ind`` with
  ``equal_var=False``: Welch–Satterthwaite degrees of freedom) on the two groups' own
  values (for the secondary predictions its df capped at n − 1 of the group dominating the
  standard error, :func:`welch_capped`, which holds their families' level at 4 against 6
  runs); or, where the runs of one seed share their initial weights and the statistic
  keeps that imprint (the first-layer regularizer Q), the paired t-test over the seeds
  both groups have (as ``scipy.stats.ttest_rel``). The statistics are written out (tests
  hold them equal to scipy's) and the t distribution is scipy's. Two-sided. A claim of "no effect" is tested for what it
  claims: the two one-sided tests (TOST) of |difference| ≥ a margin stated in advance.
- **Correction.** Holm's step-down procedure over the hypotheses of one family (family-wise
  error ≤ ``LEVEL``); each prediction is its own family, so real effects in one never
  loosen another. Holm is written here because scipy has no family-wise step-down (its
  ``false_discovery_control`` is Benjamini–Hochberg / –Yekutieli).
- **Intervals named for what they cover** (:mod:`robustmix.evaluations.verdicts`). Holm's
  hypotheses are tested at step levels α/m, α/(m−1), ...; a secondary's "Holm-step
  interval" is the two-sided interval at the level of its own step (rejected) or of the
  step where the procedure stopped (retained), so a rejected comparison's excludes 0 and a
  retained one's includes it (the t-test and its interval are dual). The primaries' are
  simultaneous: Bonferroni at 1 − α/K each (joint coverage ≥ 1 − α). An equivalence
  verdict's is the TOST interval (1 − 2α).
- **Verdicts.** "holds" / "does not hold" where the difference is rejected (by the sign of
  the effect), "no effect within ±margin" where the equivalence is rejected, else
  "inconclusive"; a claim of equivalence holds where TOST rejects and does not hold only
  where |difference| ≤ margin is rejected (:func:`p_beyond_margin`). "Below every rival"
  is an intersection–union test (:func:`union_p`). A comparison whose premise is absent is
  not tested and says why; it still counts in its family (as a retained hypothesis), whose
  size is fixed by the design.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

LEVEL = 0.05
CONFIDENCE = 0.95
WELCH = "Welch's t-test, two-sided"
WELCH_CAPPED = ("Welch's t-test, df capped at n - 1 of the group dominating the standard "
                "error, two-sided")
PAIRED = "paired t-test over seeds, two-sided"
TOST = "two one-sided t-tests (TOST)"
HOLM = "Holm"
TEST = WELCH                                  # the default test, named in the report

HOLDS = "holds"
FAILS = "does not hold"
EQUIVALENT = "no effect (equivalent within the margin)"
INCONCLUSIVE = "inconclusive"
ONE_SEED = "inconclusive (one seed)"
UNCONVERGED = "inconclusive (unconverged model)"
NOT_TESTABLE = "not testable"
NOT_MEASURED = "not measured"
ATTACK_FAILURE = "attack failure suspected"   # followed by ": CHECK,..."
VERDICTS = (HOLDS, FAILS, EQUIVALENT, INCONCLUSIVE, ONE_SEED, UNCONVERGED, NOT_TESTABLE,
            NOT_MEASURED)
DECIDED = (HOLDS, FAILS, EQUIVALENT)


def is_verdict(text: str) -> bool:
    """Whether ``text`` is one of the report's verdict words ("" for an estimate)."""
    return text in VERDICTS or text == "" or text.startswith(ATTACK_FAILURE + ": ")


def finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray([float(v) for v in values if v is not None], dtype=float)
    return array[np.isfinite(array)]


@dataclass(frozen=True)
class TTest:
    """A t-test of mean(a) − mean(b) = 0 (Welch) or of the mean paired difference = 0.

    ``effect`` is the difference, ``se`` its standard error, ``df`` the degrees of freedom;
    the p-values and intervals follow from the t distribution with ``df``. Two samples
    without any spread (``se`` = 0) have an exact answer: p = 1 for no difference, else 0.
    """

    effect: float
    se: float
    df: float
    test: str
    n_a: int
    n_b: int

    def p_value(self) -> float:
        """Two-sided p of "no difference"."""
        if self.se == 0:
            return 1.0 if self.effect == 0 else 0.0
        return float(2 * stats.t.sf(abs(self.effect) / self.se, self.df))

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float]:
        """The two-sided interval for the difference at ``confidence``."""
        if self.se == 0:
            return self.effect, self.effect
        half = float(stats.t.ppf(0.5 + confidence / 2, self.df)) * self.se
        return self.effect - half, self.effect + half

    def p_equivalence(self, margin: float) -> float:
        """TOST p of "|difference| ≥ margin": the larger of the two one-sided p-values."""
        if self.se == 0:
            return 0.0 if abs(self.effect) < margin else 1.0
        lower = stats.t.sf((self.effect + margin) / self.se, self.df)
        upper = stats.t.cdf((self.effect - margin) / self.se, self.df)
        return float(max(lower, upper))


def welch(a: Sequence[float], b: Sequence[float]) -> TTest:
    """Welch's t-test on two samples of at least two finite values each."""
    a, b = finite(a), finite(b)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"Welch's t-test needs two values per group, got {a.size} and {b.size}")
    effect = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0:
        return TTest(effect, 0.0, math.inf, WELCH, a.size, b.size)
    # scipy.stats.ttest_ind(a, b, equal_var=False)'s statistic and Welch–Satterthwaite
    # degrees of freedom (a test holds them equal), written out: a study judges hundreds
    # of comparisons and the call's overhead was most of the report's time
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    return TTest(effect, float(math.sqrt(va + vb)), float(df), WELCH, a.size, b.size)


def welch_capped(a: Sequence[float], b: Sequence[float]) -> TTest:
    """Welch's statistic with its df capped at n − 1 of the group whose mean is the less
    precise (the larger s²/n): the secondary families' test.

    Where one group dominates the standard error the statistic is t with that group's
    n − 1 df; the Welch–Satterthwaite estimate is larger exactly when that group's variance
    came out small, which is when |t| came out large, so at 4 against 6 runs with variance
    ratios near 100 a family of six ran at 7-8% (benchmarks/bench_calibration.py). The cap
    holds it; between Hsu's min(n_a, n_b) − 1 and Welch's df, it keeps more power than Hsu's.
    """
    test = welch(a, b)
    if test.se == 0:
        return TTest(test.effect, 0.0, math.inf, WELCH_CAPPED, test.n_a, test.n_b)
    a, b = finite(a), finite(b)
    dominant = a if a.var(ddof=1) / a.size >= b.var(ddof=1) / b.size else b
    return TTest(test.effect, test.se, min(test.df, float(dominant.size - 1)), WELCH_CAPPED,
                 test.n_a, test.n_b)


def paired(a: Sequence[float], b: Sequence[float]) -> TTest:
    """The paired t-test on ``a[k] − b[k]`` (at least two finite pairs)."""
    pairs = [(float(x), float(y)) for x, y in zip(a, b)
             if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 2:
        raise ValueError(f"the paired t-test needs two pairs, got {len(pairs)}")
    x, y = np.array(pairs).T
    d = x - y   # scipy.stats.ttest_rel(x, y) written out (a test holds them equal)
    se = float(d.std(ddof=1) / math.sqrt(d.size))
    return TTest(float(d.mean()), se, float(d.size - 1), PAIRED, d.size, d.size)


def tost_interval(test: TTest, alpha: float) -> tuple[float, float]:
    """The TOST interval at ``alpha``: the two-sided 1 − 2α interval. It lies inside
    (−m, m) exactly where TOST rejects |difference| ≥ m at ``alpha``, and wholly beyond
    [−m, m] exactly where :func:`p_beyond_margin` rejects |difference| ≤ m at ``alpha``."""
    return test.interval(1 - 2 * alpha)


def p_beyond_margin(test: TTest, margin: float) -> float:
    """p of "|difference| ≤ margin" against "|difference| > margin": the smaller of the
    one-sided p-values of difference > margin and of difference < −margin.

    Size: the two rejection regions are disjoint, and at |difference| = margin the near
    one has probability exactly α (the t statistic about the margin is t_df), the far one
    P(T_df < −t_(1−α) − 2·margin/SE). So the size is α plus a term that vanishes as the
    margin grows in standard errors, and never above 2α (at margin = 1 SE, df = 5,
    α = 0.05: about 0.055)."""
    if test.se == 0:
        return 0.0 if abs(test.effect) > margin else 1.0
    above = stats.t.sf((test.effect - margin) / test.se, test.df)
    below = stats.t.cdf((test.effect + margin) / test.se, test.df)
    return float(min(above, below))


def union_p(tests: Sequence[TTest], claim: str) -> float:
    """The intersection–union test of "a is below (``claim`` "lower") or above ("higher")
    every rival": the largest of the pairwise two-sided p-values, 1 where any pairwise
    effect has the wrong sign (or is 0). It rejects at α only where every pairwise test
    does, so its size is at most α with no correction for the number of rivals."""
    if not tests:
        return 1.0
    right = [t.effect < 0 if claim == "lower" else t.effect > 0 for t in tests]
    return 1.0 if not all(right) else max(t.p_value() for t in tests)


# ---------------------------------------------------------------------- Holm's procedure


@dataclass(frozen=True)
class Holm:
    """Holm's step-down procedure at ``level`` over p-values (one family)."""

    rejected: tuple[bool, ...]
    adjusted: tuple[float, ...]     # reject exactly where adjusted ≤ level
    step_level: tuple[float, ...]   # the level each hypothesis' interval is taken at


def holm(p_values: Sequence[float], level: float = LEVEL) -> Holm:
    """Sorted p_(1) ≤ ... ≤ p_(m): reject H_(j) while p_(j) ≤ level/(m − j + 1), stop at
    the first that is not. Adjusted p_(j) = max over i ≤ j of min(1, (m − i + 1) p_(i)).
    Step levels: a rejected H_(j) its own level/(m − j + 1); the retained ones all the
    level of the step where the procedure stopped."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    rejected, adjusted, step = np.zeros(m, bool), np.ones(m), np.full(m, level)
    running, stopped = 0.0, None
    for rank, index in enumerate(order):
        critical = level / (m - rank)
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
        if stopped is None and p[index] <= critical:
            rejected[index], step[index] = True, critical
        elif stopped is None:
            stopped = critical
        if stopped is not None:
            step[index] = stopped
    return Holm(tuple(bool(r) for r in rejected), tuple(float(v) for v in adjusted),
                tuple(float(v) for v in step))


def correction_text(m: int, level: float = LEVEL) -> str:
    return f"{HOLM} over {m} hypothes{'is' if m == 1 else 'es'}, family-wise {level:g}"


def decide(effect: float, rejected: bool, claim: str) -> str:
    """The verdict on a claim that a − b is "lower" (< 0) or "higher" (> 0), once the
    difference is rejected (or not) by the family's correction."""
    if not rejected:
        return INCONCLUSIVE
    wanted = effect < 0 if claim == "lower" else effect > 0
    return HOLDS if wanted else FAILS

"""Simulated error rates of the verdict families at a study's shape.

A family's level is a promise about few runs per group (4 against 6 in the digits study) of
statistics that are bounded (accuracies, ECE, Q ratios), skewed, heavy-tailed and whose
seed variances differ up to ~100-fold between groups: asymptotics do not settle it, a
simulation does. Here null studies are drawn with each group's mean and seed sd (a
statistic's groups share one mean under the null), seeds from Student's t with
``TAIL_DF`` = 3 degrees of freedom (heavy tails; ``df=None``: normal), and a statistic whose
measured values all lie in (0, 1) drawn in (0, 1) from Beta distributions with that mean
and sd exactly (skewed towards the near bound), heavy-tailed as a contaminated Beta (10%
of seeds three times as spread). Each family's tests and Holm run vectorized
over thousands of studies; a study carries a false verdict in a family when a true null is
rejected (or a real effect is found with the wrong sign, or an equivalence claim that is
true is refuted). The report states the chance that a study with no secondary effect
carries at least one false secondary verdict (:func:`secondary_error`).

The vectorized tests equal :mod:`robustmix.evaluations.statistics`' scalar ones (a test
holds them so). Paired comparisons are drawn as their per-seed differences (the only thing
the paired test sees), symmetric and heavy-tailed with the measured sd of differences.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import special, stats

from robustmix.evaluations import statistics as st

TAIL_DF = 3
CONTAMINATION, WIDE = 0.1, 3.0    # the heavy tails of a bounded statistic
STUDIES = 2000


@dataclass(frozen=True)
class Arm:
    """One group's statistic as the simulation draws it; arms with one ``key`` are one group
    (vanilla, shared by every comparison of its statistic) and drawn once per study."""

    key: str
    mean: float
    sd: float
    n: int
    bounded: bool = False


@dataclass(frozen=True)
class Hypothesis:
    """One comparison a − b of a family: its claim ("lower", "higher", "equivalent"), the
    margin of its TOST (None: none), its test (a key of ``TESTS``; "paired" draws the
    per-seed differences, sd ``sd_diff`` over ``a.n`` pairs) and the true effect (0: null).
    ``tested=False``: a comparison that counts in its family as retained (p = 1)."""

    family: str
    a: Arm
    b: Arm
    claim: str = "lower"
    margin: float | None = None
    test: str = "welch"
    sd_diff: float = 0.0
    effect: float = 0.0
    tested: bool = True


@dataclass(frozen=True)
class Rate:
    """Studies with at least one false verdict, of ``studies``, with the Clopper–Pearson
    interval at ``CONFIDENCE``."""

    count: int
    studies: int

    @property
    def rate(self) -> float:
        return self.count / self.studies

    def interval(self, confidence: float = st.CONFIDENCE) -> tuple[float, float]:
        ci = stats.binomtest(self.count, self.studies).proportion_ci(confidence, "exact")
        return float(ci.low), float(ci.high)

    def text(self) -> str:
        low, high = self.interval()
        return f"{self.rate:.1%} [{low:.1%}, {high:.1%}]"


# ------------------------------------------------------------------------------ drawing


def beta(mean: float, sd: float) -> tuple[float, float]:
    """The Beta distribution's (α, β) with ``mean`` and ``sd``."""
    if not (0 < mean < 1 and 0 < sd < math.sqrt(mean * (1 - mean))):
        raise ValueError(f"a statistic in (0, 1) cannot have mean {mean:g} and sd {sd:g}: "
                         "needs 0 < mean < 1 and 0 < sd < sqrt(mean (1 - mean))")
    size = mean * (1 - mean) / sd ** 2 - 1
    return mean * size, (1 - mean) * size


def bounded_fits(mean: float, sd: float) -> bool:
    """Whether ``draw`` can give a statistic in (0, 1) this mean and sd, heavy tails too."""
    wide = WIDE * sd / math.sqrt(1 - CONTAMINATION + CONTAMINATION * WIDE ** 2)
    return 0 < mean < 1 and 0 < max(sd, wide) < math.sqrt(mean * (1 - mean))


def noise(rng: np.random.Generator, shape, df: int | None = TAIL_DF) -> np.ndarray:
    """Unit-variance draws: standardized t with ``df`` (heavy tails) or normal (None)."""
    if df is None:
        return rng.standard_normal(shape)
    return rng.standard_t(df, shape) / math.sqrt(df / (df - 2))


def draw(rng: np.random.Generator, arm: Arm, studies: int, mean: float,
         df: int | None = TAIL_DF) -> np.ndarray:
    """``studies`` × ``arm.n`` values with mean ``mean`` and sd ``arm.sd``: unbounded, from
    ``noise``; bounded, from Beta distributions with that mean, heavy-tailed (``df`` not
    None) as a contaminated Beta: a share ``CONTAMINATION`` of the seeds ``WIDE`` times as
    spread as the rest (the bound rules out a t)."""
    shape = (studies, arm.n)
    if not arm.bounded:
        return mean + arm.sd * noise(rng, shape, df)
    if df is None:
        return rng.beta(*beta(mean, arm.sd), shape)
    core = arm.sd / math.sqrt(1 - CONTAMINATION + CONTAMINATION * WIDE ** 2)
    wide = rng.random(shape) < CONTAMINATION
    return np.where(wide, rng.beta(*beta(mean, WIDE * core), shape),
                    rng.beta(*beta(mean, core), shape))


# ------------------------------------------------------------- the tests, vectorized


def _welch_parts(a: np.ndarray, b: np.ndarray):
    va, vb = a.var(axis=1, ddof=1) / a.shape[1], b.var(axis=1, ddof=1) / b.shape[1]
    df = (va + vb) ** 2 / (va ** 2 / (a.shape[1] - 1) + vb ** 2 / (b.shape[1] - 1))
    return a.mean(axis=1) - b.mean(axis=1), np.sqrt(va + vb), df


def welch(a, b, bounded=False):
    """Welch's t-test (Welch–Satterthwaite df): (p, effect, se, df), one per study."""
    effect, se, df = _welch_parts(a, b)
    return _p(effect, se, df), effect, se, df


def welch_hsu(a, b, bounded=False):
    """Welch's statistic with Hsu's df = min(n_a, n_b) − 1 (a candidate, measured)."""
    effect, se, _ = _welch_parts(a, b)
    df = np.full_like(effect, min(a.shape[1], b.shape[1]) - 1)
    return _p(effect, se, df), effect, se, df


def welch_capped(a, b, bounded=False):
    """Welch's statistic, df capped at n − 1 of the group with the larger s²/n
    (``st.welch_capped``)."""
    effect, se, df = _welch_parts(a, b)
    va, vb = a.var(axis=1, ddof=1) / a.shape[1], b.var(axis=1, ddof=1) / b.shape[1]
    cap = np.where(va >= vb, a.shape[1] - 1, b.shape[1] - 1)
    df = np.minimum(df, cap)
    return _p(effect, se, df), effect, se, df


def logit_welch(a, b, bounded=False):
    """Welch's test on logit(x) for a statistic in (0, 1) (else on x); effect, se and df
    of the raw values for the intervals and TOST."""
    x, y = a, b
    if bounded:   # a draw can round to 0 or 1 where the Beta is steep
        x, y = (special.logit(np.clip(v, 1e-12, 1 - 1e-12)) for v in (a, b))
    return (welch(x, y)[0], *_welch_parts(a, b))


def permutation(a, b, bounded=False):
    """Welch's statistic against all C(n_a + n_b, n_a) relabelings (two-sided; the
    observed labeling counts): p ≥ 1 / C(n_a + n_b, n_a)."""
    pooled, n_a = np.concatenate([a, b], axis=1), a.shape[1]
    splits = [list(s) for s in itertools.combinations(range(pooled.shape[1]), n_a)]
    rest = [[k for k in range(pooled.shape[1]) if k not in s] for s in splits]
    t_all = np.abs(np.stack([np.divide(*_welch_parts(pooled[:, s], pooled[:, r])[:2])
                             for s, r in zip(splits, rest)], axis=1))
    observed = t_all[:, 0]            # splits[0] is the observed labeling: a first
    p = (t_all >= observed[:, None] * (1 - 1e-12)).mean(axis=1)
    return (p, *_welch_parts(a, b))


def paired(d: np.ndarray):
    """The paired t-test on per-seed differences d (studies × pairs)."""
    effect = d.mean(axis=1)
    se = d.std(axis=1, ddof=1) / math.sqrt(d.shape[1])
    df = np.full_like(effect, d.shape[1] - 1)
    return _p(effect, se, df), effect, se, df


def _p(effect, se, df):
    return 2 * stats.t.sf(np.abs(effect) / se, df)


def tost(effect, se, df, margin: float) -> np.ndarray:
    """TOST p of |difference| ≥ margin, per study (as ``TTest.p_equivalence``)."""
    return np.maximum(stats.t.sf((effect + margin) / se, df),
                      stats.t.cdf((effect - margin) / se, df))


TESTS = {"welch": welch, "hsu": welch_hsu, "capped df": welch_capped,
         "logit welch": logit_welch, "permutation": permutation}


def holm(p: np.ndarray, level: float = st.LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Holm per row of p (studies × hypotheses): (rejected, step level), as ``st.holm``."""
    m = p.shape[1]
    order = np.argsort(p, axis=1, kind="stable")
    critical = level / (m - np.arange(m))
    passed = np.cumprod(np.take_along_axis(p, order, axis=1) <= critical, axis=1).astype(bool)
    stop = passed.sum(axis=1)                                   # rejected count
    stop_level = np.where(stop < m, critical[np.minimum(stop, m - 1)], level)
    sorted_step = np.where(passed, critical, stop_level[:, None])
    rejected, step = np.empty_like(passed), np.empty_like(p)
    np.put_along_axis(rejected, order, passed, axis=1)
    np.put_along_axis(step, order, sorted_step, axis=1)
    return rejected, step


# ------------------------------------------------------------ families, simulated


@dataclass
class Outcome:
    """Per family, per study: a false verdict in it (``false``), every interval of it
    covering its true effect (``covered``); and per family the share of real effects
    found with the right sign (``found``, NaN where none is real)."""

    studies: int
    false: dict[str, np.ndarray]
    covered: dict[str, np.ndarray]
    found: dict[str, float]

    def rate(self, family: str | None = None) -> Rate:
        """Studies with a false verdict in ``family`` (None: in any family)."""
        flags = (np.any(list(self.false.values()), axis=0) if family is None
                 else self.false[family])
        return Rate(int(np.sum(flags)), self.studies)


def simulate(hypotheses: list[Hypothesis], studies: int = STUDIES, seed: int = 0,
             df: int | None = TAIL_DF, level: float = st.LEVEL) -> Outcome:
    """``studies`` studies of ``hypotheses`` (true effect: a.mean − b.mean), each family
    under Holm at ``level``; seeded and deterministic."""
    rng = np.random.default_rng(seed)
    arms: dict[str, Arm] = {}
    for h in hypotheses:
        for arm in (h.a, h.b):
            if arms.setdefault(arm.key, arm) != arm:
                raise ValueError(f"two different arms share the key {arm.key!r}")
    unpaired = {h.a.key for h in hypotheses if h.test != "paired"} | \
        {h.b.key for h in hypotheses if h.test != "paired"}
    values = {k: draw(rng, arms[k], studies, arms[k].mean, df) for k in arms if k in unpaired}
    results = [_test(rng, h, values, studies, df) for h in hypotheses]
    out = Outcome(studies, {}, {}, {})
    for family in dict.fromkeys(h.family for h in hypotheses):
        members = [(h, r) for h, r in zip(hypotheses, results) if h.family == family]
        _family(out, family, members, level)
    return out


def _test(rng, h: Hypothesis, values, studies: int, df):
    if not h.tested:
        return None
    if h.test == "paired":
        pairs = min(h.a.n, h.b.n)
        return paired(h.a.mean - h.b.mean + h.sd_diff * noise(rng, (studies, pairs), df))
    return TESTS[h.test](values[h.a.key], values[h.b.key], h.a.bounded and h.b.bounded)


def _family(out: Outcome, family: str, members, level: float) -> None:
    columns = []
    for h, r in members:
        ones = np.ones(out.studies)
        columns.append(ones if r is None else r[0])
        if h.margin is not None:
            columns.append(ones if r is None else tost(*r[1:], h.margin))
    rejected, step = holm(np.stack(columns, axis=1), level)
    false, covered = np.zeros(out.studies, bool), np.ones(out.studies, bool)
    found, real, k = 0.0, 0, 0
    for h, r in members:
        differs, k = rejected[:, k], k + 1
        equivalent = None
        if h.margin is not None:
            equivalent, k = rejected[:, k], k + 1
        if r is None:
            continue
        _, effect, se, dfv = r
        true = h.a.mean - h.b.mean
        false |= _false(h, true, effect, differs, equivalent)
        half = stats.t.ppf(1 - step[:, k - 1 - (h.margin is not None)] / 2, dfv) * se
        covered &= np.abs(effect - true) <= half
        if true != 0 and h.claim != "equivalent":
            found += float(np.mean(differs & (np.sign(effect) == np.sign(true))))
            real += 1
    out.false[family], out.covered[family] = false, covered
    out.found[family] = found / real if real else math.nan


def _false(h: Hypothesis, true: float, effect, differs, equivalent) -> np.ndarray:
    """Where the family's verdict on ``h`` is false (the rules of ``verdicts._verdict``)."""
    inside = h.margin is not None and abs(true) < h.margin
    if h.claim == "equivalent":
        holds = equivalent if equivalent is not None else np.zeros_like(differs)
        return (holds & (not inside)) | (~holds & differs & inside)
    wrong_sign = (true == 0) | (np.sign(effect) != np.sign(true))
    false = differs & wrong_sign
    if equivalent is not None and not inside:
        false |= ~differs & equivalent
    return false


# ----------------------------------------------------------- a study's own families


def from_comparisons(comparisons, test: str = "capped df", null: bool = True) -> list[Hypothesis]:
    """The hypotheses of ``comparisons`` (``verdicts.Comparison``, confirmatory, untested)
    with each group's own mean, seed sd and run count: ``test`` for the unpaired ones, the
    paired test (sd of the per-seed differences) for the paired ones. ``null``: the groups
    of one statistic share the mean of their means (no effect anywhere). A group is one
    arm per statistic (vanilla enters each comparison of its statistic with the same
    runs); a statistic whose values all lie in (0, 1) is drawn bounded where its mean and
    sd allow (``bounded_fits``), else unbounded."""
    counted = [c for c in comparisons if c.counted]
    samples: dict[tuple, np.ndarray] = {}
    for c in counted:
        for side in (c.a, c.b):
            values = st.finite(side)
            samples.setdefault((c.statistic, tuple(values)), values)
    bounded = {s: all(v.size and v.min() > 0 and v.max() < 1
                      for (name, _), v in samples.items() if name == s)
               for s, _ in samples}
    means = {s: [v.mean() for (name, _), v in samples.items() if name == s and v.size]
             for s, _ in samples}   # none where no run measured the statistic
    centre = {s: float(np.mean(m)) if m else math.nan for s, m in means.items()}
    return [_hypothesis(c, samples, bounded, centre, test, null) for c in counted]


def _hypothesis(c, samples, bounded, centre, test: str, null: bool) -> Hypothesis:
    arms = []
    for k, side in enumerate((c.a, c.b)):
        values = samples[(c.statistic, tuple(st.finite(side)))]
        key = f"{c.statistic}: group {list(samples).index((c.statistic, tuple(values)))}"
        ok = values.size >= 2 and values.std(ddof=1) > 0
        mean = centre[c.statistic] if null else float(values.mean()) if ok else 0.0
        sd = float(values.std(ddof=1)) if ok else 0.0
        arms.append(Arm(key, mean, sd, int(values.size),
                        bounded[c.statistic] and ok and bounded_fits(mean, sd)))
    tested = c.premise is None and all(a.sd > 0 for a in arms)
    sd_diff = 0.0
    if c.paired and tested:
        pairs = [(x, y) for x, y in zip(c.a, c.b) if math.isfinite(x) and math.isfinite(y)]
        d = np.subtract(*np.array(pairs).T) if len(pairs) >= 2 else np.zeros(1)
        tested, sd_diff = len(pairs) >= 2 and d.std(ddof=1) > 0, float(np.std(d, ddof=1))
        arms = [replace(a, n=len(pairs), key=f"{a.key} ({c.comparison})") for a in arms]
    return Hypothesis(c.family, *arms, claim=c.claim, margin=c.margin,
                      test="paired" if c.paired else test, sd_diff=sd_diff, tested=tested)


def secondary_error(comparisons, test: str = "capped df", studies: int = STUDIES, seed: int = 0,
                    df: int | None = TAIL_DF, level: float = st.LEVEL) -> Outcome | None:
    """Null studies (no secondary effect) of the shape of ``comparisons``: the chance of
    at least one false secondary verdict is ``.rate()``, per family ``.rate(family)``;
    None where no comparison can be tested."""
    hypotheses = from_comparisons(comparisons, test)
    if not any(h.tested for h in hypotheses):
        return None
    return simulate(hypotheses, studies, seed, df, level)


GENERATOR = ("each group's run count and seed sd as measured, no secondary effect, seeds "
             f"from Student's t with {TAIL_DF} df; a statistic in (0, 1) from Beta "
             f"distributions, {CONTAMINATION:.0%} of seeds {WIDE:g} times as spread")
CSV_COLUMNS = ["family", "studies", "false_studies", "rate", "ci_low", "ci_high", "generator"]


def table(outcome: Outcome, any_label: str = "any secondary family") -> list[dict]:
    """error_rates.csv's rows: each family's false-study rate, then any family's."""
    rows = []
    for family, rate in [*((f, outcome.rate(f)) for f in outcome.false),
                         (any_label, outcome.rate())]:
        low, high = rate.interval()
        rows.append({"family": family, "studies": rate.studies, "false_studies": rate.count,
                     "rate": rate.rate, "ci_low": low, "ci_high": high,
                     "generator": GENERATOR})
    return rows


def statement(outcome: Outcome) -> str:
    """The report's sentence on the per-study error of the secondary verdicts."""
    each = [outcome.rate(f).rate for f in outcome.false]
    return (f"Per-study error of the secondary verdicts: each family is held at its own "
            f"level, the study as a whole is not. Of {outcome.studies:,} simulated studies "
            f"of this shape ({GENERATOR}), {outcome.rate().text()} carry at least one false "
            f"secondary verdict (95% Clopper–Pearson interval; each family alone "
            f"{min(each):.1%}–{max(each):.1%}). Read any one secondary verdict with that "
            "chance in mind.")

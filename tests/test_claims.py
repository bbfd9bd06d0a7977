"""Each secondary claim judged by what its test shows, on constructed data whose answer is
known: an equivalence claim refuted only beyond its margin (TOST interval inside the
margin: holds; wholly beyond it: does not hold; else inconclusive), the intersection–union
p of "below every rival", and primary intervals that are simultaneous (Bonferroni) while
Holm decides."""

import numpy as np
import pytest
from scipy import stats

from robustmix.evaluations import statistics as st
from robustmix.evaluations.verdicts import Comparison, judge, row

MARGIN = 0.02


def _values(mean: float, sd: float, n: int) -> list[float]:
    """n values with exactly this mean and sample sd."""
    z = np.random.default_rng(n).normal(size=n)
    z = (z - z.mean()) / z.std(ddof=1)
    return list(mean + sd * z)


def _equivalence(difference: float, sd: float, others: int = 1, rng=None):
    """Mixup's D against vanilla's (4 against 6 runs), claimed equal within ±0.02, in a
    family with ``others`` comparisons more (as (c) has), judged; its row."""
    if rng is None:
        a, b = _values(0.6 + difference, sd, 4), _values(0.6, sd, 6)
    else:
        a = list(0.6 + difference + sd * rng.normal(size=4))
        b = list(0.6 + sd * rng.normal(size=6))
    claim = Comparison("c", "secondary", "(c)", "mixup vs vanilla", "D", a, b, "equivalent",
                       margin=MARGIN)
    rivals = [Comparison("c", "secondary", "(c)", f"x{i}", "D", [1.0, 1.1, 0.9],
                         [1.0, 1.1, 0.9], "higher") for i in range(others)]
    judged = judge([claim, *rivals])
    return row("claim", judged[0]), judged[0]


def test_an_equivalence_claim_is_refuted_only_beyond_its_margin():
    assert _equivalence(0.0, 0.001)[0]["verdict"] == st.HOLDS
    assert _equivalence(0.05, 0.001)[0]["verdict"] == st.FAILS
    assert _equivalence(-0.05, 0.001)[0]["verdict"] == st.FAILS
    assert _equivalence(0.019, 0.0001)[0]["verdict"] == st.HOLDS
    # the digits study's (c): mixup 0.621 ± 0.0032 (n=4), vanilla 0.598 ± 0.014 (n=6): a
    # TOST interval from about 0 to 0.04 straddles the margin: the data cannot decide
    a, b = _values(0.621, 0.0032, 4), _values(0.598, 0.014, 6)
    c = Comparison("c", "secondary", "(c)", "mixup vs vanilla", "D", a, b, "equivalent",
                   margin=MARGIN)
    j, _ = judge([c, Comparison("c", "secondary", "(c)", "x", "D", [1.0, 1.1, 0.9],
                                [1.0, 1.1, 0.9], "higher")])
    r = row("claim", j)
    assert r["verdict"] == st.INCONCLUSIVE
    assert float(r["ci_low"]) < MARGIN < float(r["ci_high"])


def test_a_difference_just_inside_the_margin_is_not_called_beyond_it():
    """A true difference of 0.019 with margin 0.02: "does not hold" would be false. With a
    small spread it never comes; with the study's spread it comes at most at the level
    (it came in 56% of studies when any difference from 0 refuted the claim)."""
    rng = np.random.default_rng(0)
    assert all(_equivalence(0.019, 0.0005, rng=rng)[0]["verdict"] != st.FAILS
               for _ in range(100))
    studies = 400
    fails = sum(_equivalence(0.019, 0.01, rng=rng)[0]["verdict"] == st.FAILS
                for _ in range(studies))
    assert fails <= stats.binom.ppf(0.999, studies, st.LEVEL)


@pytest.mark.parametrize("difference", [0.0, 0.012, 0.025, 0.05])
def test_the_printed_interval_is_the_tost_interval_and_agrees_with_the_verdict(difference):
    r, j = _equivalence(difference, 0.004)
    alpha = j.step_level
    low, high = st.tost_interval(j.test, alpha)
    assert (float(r["ci_low"]), float(r["ci_high"])) == pytest.approx((low, high), rel=1e-3)
    assert r["ci_level"].startswith("TOST interval, 1−2α = ")
    inside, beyond = -MARGIN < low and high < MARGIN, low > MARGIN or high < -MARGIN
    assert (r["verdict"] == st.HOLDS) == inside
    assert (r["verdict"] == st.FAILS) == beyond


def test_beyond_the_margin_is_the_smaller_one_sided_p_and_agrees_with_the_interval():
    rng = np.random.default_rng(3)
    for _ in range(50):
        test = st.welch(list(rng.normal(rng.uniform(-3, 3), 1, 4)), list(rng.normal(0, 1, 6)))
        margin = rng.uniform(0.1, 2)
        above = stats.t.sf((test.effect - margin) / test.se, test.df)
        below = stats.t.cdf((test.effect + margin) / test.se, test.df)
        assert st.p_beyond_margin(test, margin) == pytest.approx(min(above, below))
        for level in (0.01, 0.05, 0.2):
            low, high = st.tost_interval(test, level)
            assert (st.p_beyond_margin(test, margin) <= level) == \
                (low > margin or high < -margin)
    exact = st.TTest(0.5, 0.0, np.inf, st.WELCH, 2, 2)
    assert st.p_beyond_margin(exact, 0.4) == 0.0 and st.p_beyond_margin(exact, 0.6) == 1.0


def test_the_union_p_is_the_largest_pairwise_p_or_one():
    tests = [st.TTest(-1.0, se, 5, st.PAIRED, 6, 6) for se in (0.1, 0.3, 0.2)]
    assert st.union_p(tests, "lower") == max(t.p_value() for t in tests)
    assert st.union_p(tests + [st.TTest(0.01, 1.0, 5, st.PAIRED, 6, 6)], "lower") == 1.0
    assert st.union_p(tests, "higher") == 1.0 and st.union_p([], "lower") == 1.0


@pytest.mark.parametrize("seed", range(20))
def test_primary_intervals_are_simultaneous_bonferroni_and_holm_decides(seed):
    rng = np.random.default_rng(seed)
    comparisons = [Comparison("b", "primary", "f", f"m{i}", "s",
                              list(rng.normal(rng.uniform(0, 3), 1, 4)),
                              list(rng.normal(0, 1, 6)), "higher") for i in range(6)]
    judged = judge(comparisons)
    for j in judged:
        r = row("claim", j)
        low, high = float(r["ci_low"]), float(r["ci_high"])
        assert r["ci_level"] == "simultaneous 95% (Bonferroni over 6)"
        assert (low, high) == pytest.approx(j.test.interval(1 - st.LEVEL / 6), rel=1e-3)
        # Bonferroni's decision is the interval's; Holm's may go further, and says so
        assert (j.test.p_value() * 6 <= st.LEVEL) == (low > 0 or high < 0)
        holm = float(r["p_adjusted"]) <= st.LEVEL
        assert holm == (r["verdict"] in (st.HOLDS, st.FAILS))
        assert ("yet the simultaneous interval includes 0" in r["note"]) == \
            (holm and low <= 0 <= high)


def test_a_holm_rejection_at_a_later_step_names_its_interval():
    """p = 0.005 and 0.03 (two primaries): Holm rejects both (0.005 ≤ 0.05/2, then
    0.03 ≤ 0.05/1), Bonferroni only the first (0.03 > 0.05/2): the second's simultaneous
    interval includes 0 and its note says so."""
    def with_p(p):      # a paired test whose two-sided p is p (df 9)
        t = stats.t.isf(p / 2, 9)
        d = np.array([-1.0, 1.0] * 5)
        d = (d - d.mean()) / d.std(ddof=1)
        return list(d + t / np.sqrt(10)), [0.0] * 10
    comparisons = [Comparison("b", "primary", "f", f"m{i}", "s", *with_p(p), "higher",
                              paired=True) for i, p in enumerate((0.005, 0.03))]
    rows = [row("claim", j) for j in judge(comparisons)]
    assert [r["verdict"] for r in rows] == [st.HOLDS, st.HOLDS]
    assert float(rows[1]["ci_low"]) < 0 < float(rows[1]["ci_high"])
    assert "yet the simultaneous interval includes 0" in rows[1]["note"]
    assert "simultaneous interval" not in rows[0]["note"]


@pytest.mark.parametrize("seed", range(30))
def test_the_gap_no_effect_path_prints_its_tost_interval_and_agrees_with_it(seed):
    """(a): "lower" with a margin. A rejected difference decides by its sign; otherwise
    "no effect" exactly where the printed TOST interval lies inside the margin."""
    rng = np.random.default_rng(seed)
    shift, sd = rng.uniform(-0.03, 0.03), rng.uniform(0.002, 0.02)
    c = Comparison("a", "secondary", "(a)", "m vs vanilla", "gap",
                   list(shift + sd * rng.normal(size=4)), list(sd * rng.normal(size=6)),
                   "lower", margin=MARGIN)
    j, = judge([c])
    r = row("claim", j)
    low, high = float(r["ci_low"]), float(r["ci_high"])
    if r["verdict"] in (st.HOLDS, st.FAILS):    # the difference rejected: its sign decides
        assert r["verdict"] == (st.HOLDS if j.test.effect < 0 else st.FAILS)
        assert float(r["p_adjusted"]) <= st.LEVEL
        assert r["ci_level"].startswith("Holm-step interval") and (high < 0 or low > 0)
    elif r["verdict"] == st.EQUIVALENT:
        assert r["ci_level"].startswith("TOST interval") and -MARGIN < low < high < MARGIN
        assert float(r["p_value"]) == pytest.approx(j.test.p_equivalence(MARGIN), rel=1e-3)
    else:
        assert r["verdict"] == st.INCONCLUSIVE and low <= 0 <= high
        assert not (-MARGIN < st.tost_interval(j.test, j.step_level)[0]
                    and st.tost_interval(j.test, j.step_level)[1] < MARGIN)

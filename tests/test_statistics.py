"""The verdicts' statistics in closed form: Welch's and the paired t-test against scipy,
TOST, Holm's step-down by hand, and intervals that agree with the correction."""

import math

import numpy as np
import pytest
from scipy import stats

from robustmix.evaluations import statistics as st
from robustmix.evaluations.verdicts import Comparison, judge, row


def test_welch_matches_its_closed_form_and_scipy():
    a, b = [1.0, 2.0, 4.0, 7.0], [0.5, 0.7, 0.6]
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)          # Welch–Satterthwaite
    result = st.welch(a, b)
    scipy_result = stats.ttest_ind(a, b, equal_var=False)
    assert result.effect == pytest.approx(np.mean(a) - np.mean(b), rel=1e-12)
    assert result.df == pytest.approx(df, rel=1e-12) == pytest.approx(scipy_result.df)
    assert result.p_value() == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    assert result.p_value() == pytest.approx(scipy_result.pvalue, rel=1e-9)
    interval = scipy_result.confidence_interval(0.9)
    assert result.interval(0.9) == pytest.approx((interval.low, interval.high), rel=1e-9)


def test_welch_capped_is_welchs_statistic_with_the_dominant_groups_df_at_most():
    spread, tight = [1.0, 2.0, 4.0, 7.0], [0.5, 0.7, 0.6, 0.9, 0.4, 0.8]
    welch, capped = st.welch(spread, tight), st.welch_capped(spread, tight)
    assert (capped.effect, capped.se) == (welch.effect, welch.se) and capped.df == 3
    t = abs(welch.effect) / welch.se
    assert capped.p_value() == pytest.approx(2 * stats.t.sf(t, 3), rel=1e-12)
    assert capped.test == st.WELCH_CAPPED != welch.test
    # the six-run group dominates: its n - 1 = 5 (below Welch-Satterthwaite's here)
    wide6 = [0.0, 3.0, 6.0, 9.0, 12.0, 15.0]
    narrow = [1.0, 1.1, 0.9, 1.05]
    assert st.welch_capped(narrow, wide6).df == 5 < st.welch(narrow, wide6).df
    # never above Welch-Satterthwaite: ten runs dominating two (s²/n 0.92 against 0.49)
    ten, two = list(np.linspace(0, 9, 10)), [4.3, 5.7]
    assert st.welch_capped(ten, two).df == st.welch(ten, two).df < 9
    assert st.welch_capped([2.0, 2.0], [1.0, 1.0]).p_value() == 0.0


def test_confirmatory_comparisons_use_the_capped_test_and_estimates_welch():
    a, b = [1.0, 2.0, 4.0, 7.0], [0.5, 0.7, 0.6, 0.9, 0.4, 0.8]
    made = [Comparison("c", role, role, "x vs y", "s", a, b, "higher")
            for role in ("secondary", "primary", "exploratory")]
    tests = {j.comparison.role: j.test for j in judge(made)}
    assert tests["secondary"].test == tests["primary"].test == st.WELCH_CAPPED
    assert tests["exploratory"].test == st.WELCH
    assert tests["primary"].df == 3 < tests["exploratory"].df, "the 4 runs dominate"


def test_paired_matches_scipy_and_uses_the_pairs():
    a, b = [1.0, 2.1, 2.9, 4.2], [0.8, 2.0, 2.5, 4.0]
    result = st.paired(a, b)
    scipy_result = stats.ttest_rel(a, b)
    assert result.effect == pytest.approx(np.mean(np.subtract(a, b)), rel=1e-12)
    assert result.df == 3 and result.p_value() == pytest.approx(scipy_result.pvalue, rel=1e-9)
    # a shared per-seed shift cancels in the pairs but not in Welch's test
    shifted = [x + s for x, s in zip(a, (0, 10, 20, 30))]
    base = [y + s for y, s in zip(b, (0, 10, 20, 30))]
    assert st.paired(shifted, base).p_value() == pytest.approx(result.p_value(), rel=1e-9)
    assert st.welch(shifted, base).p_value() > 0.9


def test_no_spread_is_exact_and_two_values_are_needed():
    assert st.welch([1.0, 1.0], [1.0, 1.0]).p_value() == 1.0
    assert st.welch([2.0, 2.0], [1.0, 1.0]).p_value() == 0.0
    assert st.welch([2.0, 2.0], [1.0, 1.0]).interval(0.99) == (1.0, 1.0)
    assert st.welch([1.0, 1.0], [1.2, 1.2]).p_equivalence(0.5) == 0.0
    with pytest.raises(ValueError, match="two values per group"):
        st.welch([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="two pairs"):
        st.paired([1.0, math.nan], [1.0, 2.0])


def test_tost_is_the_larger_one_sided_p_and_agrees_with_the_interval():
    test = st.welch([0.1, 0.3, 0.2, 0.25], [0.0, 0.15, 0.1, 0.05])
    margin = 0.4
    lower = stats.t.sf((test.effect + margin) / test.se, test.df)
    upper = stats.t.cdf((test.effect - margin) / test.se, test.df)
    assert test.p_equivalence(margin) == pytest.approx(max(lower, upper), rel=1e-12)
    # TOST at level a rejects exactly when the (1 - 2a) interval lies inside the margin
    for level in (0.01, 0.05, 0.2):
        low, high = test.interval(1 - 2 * level)
        inside = -margin < low and high < margin
        assert (test.p_equivalence(margin) <= level) == inside


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 against 0.05/4, /3, /2, /1 = .0125, .0167, .025, .05:
    # the first two pass, 0.03 > 0.025 stops the procedure
    result = st.holm(p, 0.05)
    assert result.rejected == (True, False, False, True)
    # adjusted: 4*0.005, max(., 3*0.01), max(., 2*0.03), max(., 1*0.04) = .02 .03 .06 .06
    assert result.adjusted == pytest.approx((0.03, 0.06, 0.06, 0.02))
    # step levels: rejected at their own step, retained at the step that stopped it
    assert result.step_level == pytest.approx((0.05 / 3, 0.025, 0.025, 0.0125))
    assert all((a <= 0.05) == r for a, r in zip(result.adjusted, result.rejected))


@pytest.mark.parametrize("seed", range(20))
def test_intervals_agree_with_the_correction(seed):
    """Through judge(): a secondary comparison rejected by Holm has a Holm-step interval
    that excludes 0, one retained has one that includes it, in any family."""
    rng = np.random.default_rng(seed)
    comparisons = [Comparison("b", "secondary", "f", f"m{i}", "s",
                              list(rng.normal(rng.uniform(0, 3), 1, 4)),
                              list(rng.normal(0, 1, 6)), "higher") for i in range(6)]
    rows = [row("claim", j) for j in judge(comparisons)]
    for r in rows:
        low, high = float(r["ci_low"]), float(r["ci_high"])
        decided = r["verdict"] in (st.HOLDS, st.FAILS)
        assert decided == (float(r["p_adjusted"]) <= st.LEVEL)
        assert decided == (low > 0 or high < 0), r
        assert r["ci_level"].startswith("Holm-step interval (level ")
        assert float(r["ci_level"].split()[-1].rstrip(")")) >= 1 - st.LEVEL


def test_decide_by_the_sign_of_a_rejected_difference():
    assert st.decide(-1.0, True, "lower") == st.HOLDS
    assert st.decide(-1.0, True, "higher") == st.FAILS
    assert st.decide(-1.0, False, "lower") == st.INCONCLUSIVE
    assert st.is_verdict("attack failure suspected: gradient_zero")
    assert st.is_verdict("") and not st.is_verdict("maybe")


def test_an_untested_comparison_counts_in_its_family():
    """The family's size is the design's: a comparison without values is retained, and
    the others are corrected as if it were tested."""
    tested = Comparison("a", "secondary", "f", "x", "s", [1.0, 1.1, 0.9], [0.0, 0.1, -0.1],
                        "higher")
    empty = Comparison("a", "secondary", "f", "y", "s", [], [], "higher")
    alone, = judge([Comparison(**{**tested.__dict__, "notes": []})])
    both = judge([tested, empty])
    assert both[0].p_adjusted == pytest.approx(min(1, 2 * alone.p_adjusted))
    assert both[1].verdict == st.NOT_MEASURED and "over 2 hypotheses" in both[0].correction

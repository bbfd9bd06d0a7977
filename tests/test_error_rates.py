"""The simulated error rates (robustmix.evaluations.error_rates): its vectorized tests and
Holm equal the scalar ones the verdicts use, its generator has the moments, bounds and
tails it claims, a study of independent exact families has the closed-form rate, and the
per-study rate is deterministic."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import special, stats

from robustmix.evaluations import error_rates as er
from robustmix.evaluations import statistics as st
from robustmix.evaluations.report_predictions import _per_study_error
from robustmix.evaluations.verdicts import SECONDARY, Comparison


def samples(seed: int, n_a: int = 4, n_b: int = 6, studies: int = 5):
    rng = np.random.default_rng(seed)
    return rng.normal(0.5, 0.1, (studies, n_a)), rng.normal(0.52, 0.02, (studies, n_b))


@pytest.mark.parametrize("vectorized, scalar, sds", [
    (er.welch, st.welch, (0.1, 0.02)), (er.welch_capped, st.welch_capped, (0.1, 0.02)),
    (er.welch_capped, st.welch_capped, (0.05, 0.06))])    # either group dominating
def test_vectorized_unpaired_tests_equal_the_scalar_ones(vectorized, scalar, sds):
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.5, sds[0], (20, 4)), rng.normal(0.52, sds[1], (20, 6))
    p, effect, se, df = vectorized(a, b)
    for k in range(a.shape[0]):
        test = scalar(a[k], b[k])
        assert p[k] == pytest.approx(test.p_value(), rel=1e-9)
        assert (effect[k], se[k], df[k]) == pytest.approx((test.effect, test.se, test.df))
        tost = er.tost(effect[k:k + 1], se[k:k + 1], df[k:k + 1], 0.03)[0]
        assert tost == pytest.approx(test.p_equivalence(0.03), rel=1e-9)


def test_vectorized_paired_test_equals_the_scalar_one():
    a, b = samples(2, 4, 4)
    p, effect, _, df = er.paired(a - b)
    for k in range(a.shape[0]):
        test = st.paired(a[k], b[k])
        assert (p[k], effect[k], df[k]) == pytest.approx((test.p_value(), test.effect, test.df))


def test_hsu_has_the_smaller_groups_df():
    a, b = samples(3)
    p, effect, se, df = er.welch_hsu(a, b)
    assert np.all(df == 3) and np.allclose(se, er.welch(a, b)[2])
    assert np.allclose(p, 2 * stats.t.sf(np.abs(effect) / se, 3))


def test_logit_welch_is_welch_on_the_logit_and_permutation_counts_relabelings():
    a, b = samples(3)
    assert er.logit_welch(a, b, True)[0] == pytest.approx(
        er.welch(special.logit(a), special.logit(b))[0])
    assert er.logit_welch(a, b, False)[0] == pytest.approx(er.welch(a, b)[0])
    # a labeling far apart from the rest: the smallest p there is, 2 of C(10, 4) (a and b
    # swapped is as extreme only for equal sizes; here only the observed one is)
    far = np.array([[10.0, 10.1, 10.2, 10.3]]), np.array([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5]])
    assert er.permutation(*far)[0][0] == pytest.approx(1 / math.comb(10, 4))
    p = er.permutation(a, b)[0]
    assert np.all((p > 0) & (p <= 1)) and np.allclose(p * 210, np.round(p * 210))


def test_vectorized_holm_equals_the_scalar_one():
    rng = np.random.default_rng(4)
    p = rng.uniform(0, 0.05, (200, 5)) ** rng.uniform(0.5, 2, (200, 1))
    rejected, step = er.holm(p)
    for k in range(p.shape[0]):
        holm = st.holm(p[k])
        assert tuple(rejected[k]) == holm.rejected
        assert step[k] == pytest.approx(holm.step_level)


@pytest.mark.parametrize("mean, sd, df", [(0.09, 0.018, 3), (0.0124, 0.002, 3),
                                          (0.8, 0.02, None), (0.4, 0.045, 3)])
def test_bounded_draws_have_the_mean_and_sd_and_stay_in_the_unit_interval(mean, sd, df):
    values = er.draw(np.random.default_rng(5), er.Arm("x", mean, sd, 1, True), 200_000, mean,
                     df).ravel()
    assert values.min() > 0 and values.max() < 1
    # the sample mean's error is sd/sqrt(n) ~ 0.2% of sd; heavy tails make the sd's slower
    assert values.mean() == pytest.approx(mean, abs=6 * sd / math.sqrt(values.size))
    assert values.std() == pytest.approx(sd, rel=0.03)
    if sd / mean > 0.15:                                       # skewed away from 0
        assert stats.skew(values) > 0.4
    # heavy tails: 10% of seeds 3 times as spread, excess kurtosis 3 (0.9 + 8.1) / 1.8² − 3
    # = 5.3 for a symmetric core; a Beta alone has little
    assert (stats.kurtosis(values) > 2) == (df is not None)


def test_heavy_tails_are_heavier_than_normal():
    rng = np.random.default_rng(6)
    t3, normal = er.noise(rng, 100_000, 3), er.noise(rng, 100_000, None)
    assert t3.std() == pytest.approx(1, rel=0.1) and normal.std() == pytest.approx(1, rel=0.01)
    # beyond 4 sd: t3 (scaled) 2 t3.sf(4 sqrt 3) = 0.62%, normal 0.006%
    expected = 2 * stats.t.sf(4 * math.sqrt(3), 3)
    assert abs(np.sum(np.abs(t3) > 4) - expected * 1e5) < 5 * math.sqrt(expected * 1e5)
    assert np.sum(np.abs(normal) > 4) < 30


def test_a_statistic_too_spread_for_its_bounds_is_drawn_unbounded_not_refused():
    # one run far off: sd 0.149 about a shared null mean of 0.039, whose widest Beta has
    # sd sqrt(0.039 * 0.961) = 0.19: the contaminated seeds (3 x 0.149 / 1.34) do not fit
    near_zero = [Comparison("calibration", SECONDARY, "ECE", "m vs vanilla", "ECE",
                            [0.001, 0.002, 0.003, 0.3],
                            [0.001, 0.0012, 0.0015, 0.0018, 0.0011, 0.002], "lower")]
    (h,) = er.from_comparisons(near_zero)
    assert not er.bounded_fits(h.a.mean, h.a.sd) and not h.a.bounded and h.b.bounded
    assert er.secondary_error(near_zero, studies=100).rate().studies == 100


def test_an_impossible_bounded_statistic_is_refused():
    with pytest.raises(ValueError, match="cannot have mean"):
        er.beta(0.01, 0.2)
    with pytest.raises(ValueError, match="cannot have mean"):     # its wide part cannot
        er.draw(np.random.default_rng(0), er.Arm("x", 0.01, 0.05, 1, True), 1, 0.01)


def test_independent_exact_families_have_the_closed_form_rate():
    """F families of one paired comparison each, normal seeds: each is an exact t-test at
    α, so the chance of a false verdict somewhere is 1 − (1 − α)^F."""
    families = 6
    hypotheses = [er.Hypothesis(f"f{k}", er.Arm(f"a{k}", 0.5, 0.1, 5), er.Arm(f"b{k}", 0.5, 0.1, 5),
                                test="paired", sd_diff=0.1) for k in range(families)]
    studies = 20_000
    out = er.simulate(hypotheses, studies, seed=7, df=None)
    expected = 1 - (1 - st.LEVEL) ** families
    assert out.rate().rate == pytest.approx(expected, abs=4 * math.sqrt(expected / studies))
    for k in range(families):
        assert out.rate(f"f{k}").rate == pytest.approx(st.LEVEL, abs=4 * math.sqrt(0.05 / studies))


def comparisons() -> list[Comparison]:
    rng = np.random.default_rng(8)
    vanilla = list(rng.normal(0.1, 0.002, 6))
    out = [Comparison("calibration", SECONDARY, "ECE", f"m{k} vs vanilla", "ECE",
                      list(rng.normal(0.1, 0.01 * (k + 1), 4)), vanilla, "lower")
           for k in range(3)]
    a, b = rng.normal(0.4, 0.003, 4), rng.normal(0.4, 0.003, 4)
    out.append(Comparison("e", SECONDARY, "(e)", "m0 vs vanilla", "Q", list(a), list(b),
                          "lower", paired=True))
    out.append(Comparison("a", SECONDARY, "(a)", "m0 vs vanilla", "gap", list(a - 0.4),
                          list(b - 0.4), "lower", margin=0.005))
    return out


def test_hypotheses_of_a_study_share_its_groups_and_its_null():
    hypotheses = er.from_comparisons(comparisons())
    ece = [h for h in hypotheses if h.family == "ECE"]
    assert len({h.b.key for h in ece}) == 1 and len({h.a.key for h in ece}) == 3
    assert len({h.a.mean for h in ece} | {h.b.mean for h in ece}) == 1     # one null mean
    assert all(h.a.bounded and h.test == "capped df" for h in ece)
    gap = next(h for h in hypotheses if h.family == "(a)")
    assert not gap.a.bounded and gap.margin == 0.005                  # negative values
    paired = next(h for h in hypotheses if h.test == "paired")
    c = comparisons()[3]
    assert paired.sd_diff == pytest.approx(np.std(np.subtract(c.a, c.b), ddof=1))


def test_the_per_study_rate_is_deterministic_and_counts_every_family():
    first = er.secondary_error(comparisons(), seed=3)
    again = er.secondary_error(comparisons(), seed=3)
    assert first.rate() == again.rate() and set(first.false) == {"ECE", "(e)", "(a)"}
    assert max(first.rate(f).count for f in first.false) <= first.rate().count <= \
        sum(first.rate(f).count for f in first.false)
    low, high = first.rate().interval()
    assert low <= first.rate().rate <= high


class Context:
    """What ``_per_study_error`` uses of a report's context."""

    def __init__(self, groups, per_run, robust, declaration):
        self.groups, self.per_run, self.robust = groups, per_run, robust
        self.declaration, self.lines, self.frames = declaration, [], {}

    def csv(self, name, frame):
        self.frames[name] = frame

    def paragraph(self, text):
        self.lines.append(text)

    def link(self, name, what):
        self.lines.append(f"[{name}]({name})")


def test_the_report_states_the_per_study_error_and_writes_it():
    import synthetic_study as ss
    ctx = Context(*ss.study(np.random.default_rng(0), ss.allocation(4, 3)), ss.DECLARATION)
    _per_study_error(ctx)
    frame = ctx.frames["error_rates.csv"]
    assert list(frame.columns) == er.CSV_COLUMNS
    assert frame["family"].iloc[-1] == "any secondary family"
    assert set(frame["family"].iloc[:-1]) == {"(a) gap", "(c) profile", "(d) own mask",
                                              "(e) regularizer", "corruption accuracy",
                                              "calibration (ECE)"}
    rates = frame["rate"].to_numpy()
    assert rates[:-1].max() <= rates[-1] <= rates[:-1].sum()
    assert (frame["ci_low"] <= frame["rate"]).all() and (frame["rate"] <= frame["ci_high"]).all()
    assert f"{rates[-1]:.1%}" in ctx.lines[0] and "Per-study error" in ctx.lines[0]
    assert ctx.lines[1] == "[error_rates.csv](error_rates.csv)"


def test_a_statistic_no_run_measured_is_untested_without_a_warning():
    # imagenet100-scenarios (no vanilla): a statistic with no finite value on either side
    # has no shared null mean; numpy's mean of nothing warned "Mean of empty slice"
    empty = [Comparison("calibration", SECONDARY, "ECE", "m vs n", "ECE",
                        [math.nan], [math.nan], "lower")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (h,) = er.from_comparisons(empty)
        assert not h.tested and er.secondary_error(empty) is None

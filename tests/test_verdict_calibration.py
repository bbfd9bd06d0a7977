"""The error rates of the whole verdict path, on synthetic studies shaped like the real one.

Each study goes through :func:`robustmix.evaluations.predictions.prediction_table`, the function the
report calls (premises, the primary statistic over the ε grid, families, Holm, TOST), with
one vanilla group shared by every comparison and ε and attacks correlated within a run
(:mod:`synthetic_study`). Shown:

1. all null: the studies with a false verdict in a family are at most the family's level
   (5%), for the primaries and for each secondary family;
2. partial null, real (b) effects and none elsewhere: each secondary family stays at 5%;
3. power at stated effect sizes: what the primaries find agrees with the power
   calculation (:mod:`robustmix.evaluations.power`), two paths that share only the test and Holm.

Each bound is a binomial test sized so that a procedure twice as bad (a family-wise rate
of 10%) fails it with probability at least 95% (checked in closed form in the test), and
one at the level fails it with probability at most 0.1% (0.5% in the fast tier). The slack matters: Welch's test
with few runs per group is slightly liberal (with 5 against 10 runs its size was 1.07-1.08
times the level at the levels Holm uses, measured on 200,000 normal samples), so Holm at
5% over the six primaries makes a little over 5% family-wise, within the bound and far
from 10%. The slow tier runs the default study's shape (its vanilla and MSDA runs, read
from the digits preset); the fast tier a smaller one.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import synthetic_study as ss
from robustmix.app.presets import PRESETS
from robustmix.evaluations import power
from robustmix.evaluations import statistics as st
from robustmix.evaluations.predictions import prediction_table
from robustmix.evaluations.primary import WORST, run_values
from robustmix.evaluations.study_data import Runs

SMALL = ("vanilla", "mixup", "cutmix", "hmix")     # (c) needs CutMix and Mixup
# the default study's shape: its vanilla runs and each MSDA's, as the digits preset has them
N_VANILLA = len(PRESETS["digits"]["seeds_by_method"]["vanilla"])
N_MSDA = len(PRESETS["digits"]["seeds"])
EQUIVALENCE_CLAIMS = {("(c) profile", "mixup vs vanilla")}


def bound(studies: int, level: float, *, miss: float = 0.001) -> int:
    """The largest count of studies with a false verdict that passes: a correct procedure
    (rate ``level``) exceeds it with probability at most ``miss``, and one twice as bad
    stays within it with probability at most 5% (asserted)."""
    limit = int(stats.binom.ppf(1 - miss, studies, level))
    assert stats.binom.cdf(limit, studies, 2 * level) <= 0.05, "too few studies"
    return limit


def false_families(rows: list[dict[str, str]], families=None) -> set[str]:
    """Families with at least one false verdict when every effect is null: a rejected
    difference ("holds" / "does not hold"), or for an equivalence claim a rejected one."""
    wrong = set()
    for r in rows:
        if r["role"] == "exploratory" or (families and r["family"] not in families):
            continue
        if (r["family"], r["comparison"]) in EQUIVALENCE_CLAIMS:
            bad = r["verdict"] == st.FAILS
        else:
            bad = r["verdict"] in (st.HOLDS, st.FAILS)
        if bad:
            wrong.add(r["family"])
    return wrong


def run_null(studies: int, methods, eps, effects=None, seed=0) -> tuple[dict[str, int], set]:
    rng = np.random.default_rng(seed)
    declaration = ss.declaration(eps)
    counts: dict[str, int] = {}
    families = set()
    for _ in range(studies):
        rows = prediction_table(*ss.study(rng, ss.allocation(N_VANILLA, N_MSDA, methods), effects,
                                          eps=eps), declaration)
        families |= {r["family"] for r in rows if r["role"] != "exploratory"}
        for family in false_families(rows):
            counts[family] = counts.get(family, 0) + 1
    return counts, families


SECONDARY = {"(a) gap", "(c) profile", "(d) own mask", "(e) regularizer",
             "corruption accuracy", "calibration (ECE)"}


def test_all_null_small_study_keeps_every_family_at_its_level():
    studies = 500
    limit = bound(studies, st.LEVEL, miss=0.005)
    counts, families = run_null(studies, SMALL, ss.EPS[::2])
    assert families == SECONDARY | {"(b) primary"}
    assert all(counts.get(f, 0) <= limit for f in families), (counts, limit)


@pytest.mark.slow
def test_all_null_full_study_keeps_every_family_at_its_level():
    studies = 650
    limit = bound(studies, st.LEVEL)
    counts, families = run_null(studies, ss.METHODS, ss.EPS, seed=1)
    assert families == SECONDARY | {"(b) primary"}
    assert all(counts.get(f, 0) <= limit for f in families), (counts, limit)


@pytest.mark.slow
def test_real_robustness_effects_do_not_loosen_the_secondary_families():
    studies = 650
    limit = bound(studies, st.LEVEL)
    effects = ss.Effects(robust={m: 5.0 for m in ss.METHODS[1:]})
    counts, _ = run_null(studies, ss.METHODS, ss.EPS, effects, seed=2)
    assert counts.get("(b) primary", 0) > studies * 0.9          # the effects are found
    assert all(counts.get(f, 0) <= limit for f in SECONDARY), (counts, limit)


@pytest.mark.slow
def test_no_effect_at_the_margin_is_found_at_most_at_the_level():
    """A true gap difference exactly at the declared margin: "no effect" is then false,
    and TOST under Holm finds it in at most 5% of studies."""
    studies = 650
    limit = bound(studies, st.LEVEL)
    sd = ss.SECONDARY["gap_acc"][1]
    margin = ss.DECLARATION.gap_margin_acc / sd              # in seed sds
    effects = ss.Effects(secondary={m: {"gap_acc": margin} for m in SMALL[1:]})
    rng = np.random.default_rng(3)
    wrong = 0
    for _ in range(studies):
        rows = prediction_table(*ss.study(rng, ss.allocation(N_VANILLA, N_MSDA, SMALL), effects,
                                          eps=ss.EPS[::2]), ss.declaration(ss.EPS[::2]))
        wrong += any(r["verdict"] == st.EQUIVALENT and r["statistic"].startswith("clean acc")
                     for r in rows)
    assert wrong <= limit


def _pilot_of_the_generator(effects: ss.Effects, runs_per_method: int = 400) -> power.Pilot:
    """The primary statistic's mean and sd per method, from many synthetic runs."""
    rng = np.random.default_rng(11)
    groups, per_run, robust = ss.study(rng, ss.allocation(runs_per_method, runs_per_method),
                                       effects)
    data = Runs(groups, per_run, robust, ss.DECLARATION)
    table = {g.method: ss_summary(run_values(data, g, WORST, ss.DECLARATION.grid())[0])
             for g in groups}
    return power.Pilot(table, ss.GRID, WORST)


def ss_summary(values):
    values = np.asarray(values)
    return float(values.mean()), float(values.std(ddof=1)), int(values.size)


@pytest.mark.slow
def test_power_of_the_primaries_agrees_with_the_power_calculation():
    """Effects near those the power calculation assumed for the digits study (in seed
    sds): the share of studies in which each primary holds, through the report's path,
    agrees with robustmix.evaluations.power's simulation from the same means and sds."""
    d = {"mixup": 1.0, "cutmix": 2.5, "stochastic": 5.0, "hmix": 4.0, "gmix": 2.0,
         "puzzlemix": 3.7}
    effects = ss.Effects(robust=d)
    studies = 300
    rng = np.random.default_rng(5)
    holds = dict.fromkeys(d, 0)
    for _ in range(studies):
        rows = prediction_table(*ss.study(rng, ss.allocation(N_VANILLA, N_MSDA), effects), ss.DECLARATION)
        for r in rows:
            if r["role"] == "primary" and r["verdict"] == st.HOLDS:
                holds[r["comparison"].split()[0]] += 1
    predicted = power.simulate(_pilot_of_the_generator(effects), N_VANILLA, N_MSDA,
                               studies=20000)
    for method in d:
        found = holds[method] / studies
        # binomial error of both simulations (4 sds), plus 0.02 for the pilot's mean and sd
        # estimated from 400 runs and the statistic's slight non-normality (min of attacks)
        tolerance = 4 * np.sqrt(found * (1 - found) / studies + 1e-6) + 0.02
        assert found == pytest.approx(predicted[method], abs=tolerance), method
    assert holds["stochastic"] / studies > 0.95 and holds["mixup"] / studies < 0.5

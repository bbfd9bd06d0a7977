"""Judging comparisons family by family: the test of each, Holm within each family, the
verdict and an interval named for what it covers.

A :class:`Comparison` carries its role (primary, secondary or exploratory), its family and
its claim: "lower" or "higher" (a − b < 0 or > 0), or "equivalent" (|a − b| < margin).
Within a confirmatory family every comparison contributes its hypotheses: for "lower" /
"higher" "no difference", and with a margin "|difference| ≥ margin" (TOST) too; for
"equivalent" the TOST hypothesis and "|difference| ≤ margin" (its refutation: the
difference lies beyond the margin). Holm runs over all of them at the declared level; the
family's size is fixed by the design, so a comparison that cannot be tested (no value, one
seed, an unconverged run, a suspected attack failure) counts as a retained hypothesis.
A comparison may carry its own p (an intersection–union test over several rivals, (d)).

Intervals: a primary's is simultaneous (Bonferroni, 1 − level/K each over the K primaries
of its family: joint coverage ≥ 1 − level), while the decision stays Holm's; a secondary's
is the interval at its Holm step's level (a "Holm-step interval"); an equivalence verdict
prints the TOST interval (1 − 2α, α its Holm step level). Exploratory comparisons are
estimates: the effect with an unadjusted 95% interval, labelled so, and no verdict word.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from robustmix.evaluations import statistics as st
from robustmix.evaluations.grouping import summarize

PRIMARY, SECONDARY, EXPLORATORY = "primary", "secondary", "exploratory"
PILOT = "pilot"      # a study's exploratory phase (robustmix.app.protocol)
COLUMNS = ["role", "family", "prediction", "comparison", "statistic", "eps", "measured",
           "test", "effect", "ci_low", "ci_high", "ci_level", "p_value", "p_adjusted",
           "correction", "verdict", "note"]
UNADJUSTED = f"{st.CONFIDENCE:.0%}, unadjusted"
# the unpaired test by role: Welch-Satterthwaite df let the ECE family run at 7-8% at 4
# against 6 runs, and the primaries at 6.7% with four real effects beside two null ones
# (benchmarks/bench_calibration.py); the capped df hold every family, the primaries' too,
# and bring their simultaneous intervals' joint coverage to 95%. Estimates keep Welch's.
UNPAIRED = {PRIMARY: st.welch_capped, SECONDARY: st.welch_capped}


@dataclass
class Comparison:
    key: str                       # the prediction: a, b, c, d, e, corruption, calibration
    role: str
    family: str
    comparison: str
    statistic: str
    a: list[float]
    b: list[float]
    claim: str                     # "lower", "higher" or "equivalent"
    measured: str = ""
    eps: str = ""
    scale: float = 1.0             # 100 for values printed in percent
    margin: float | None = None    # of "no effect", in the statistic's own units
    paired: bool = False           # a[k] and b[k] are runs of one seed
    premise: tuple[str, str] | None = None   # (verdict, why) of a comparison not tested
    notes: list[str] = field(default_factory=list)
    counted: bool = True           # False: not testable by design, outside the family
    p: float | None = None         # its own p (an intersection–union test), else the t-test's
    test_name: str = ""            # the name of that test, else the t-test's


@dataclass
class Judged:
    """A comparison with its test (None: not tested) and its family's decisions."""

    comparison: Comparison
    test: st.TTest | None = None
    verdict: str = ""
    p_adjusted: float | None = None
    step_level: float | None = None
    correction: str = ""
    notes: list[str] = field(default_factory=list)
    decisive: str = "difference"   # the hypothesis whose p, level and interval are printed
    simultaneous: int = 0          # a primary: the K of its Bonferroni intervals
    level: float = st.LEVEL


def run_test(c: Comparison) -> st.TTest | None:
    """The comparison's t-test, or None with its premise set to why it cannot be tested."""
    if c.premise is not None:
        return None
    n_a, n_b = summarize(c.a)[2], summarize(c.b)[2]
    if not n_a or not n_b:
        c.premise = (st.NOT_MEASURED, c.measured or "no value on one side")
        return None
    if min(n_a, n_b) < 2:
        c.premise = (st.ONE_SEED, "no spread: a group has one run")
        return None
    if c.paired:
        pairs = sum(1 for x, y in zip(c.a, c.b) if math.isfinite(x) and math.isfinite(y))
        if pairs < 2:
            c.premise = (st.ONE_SEED, f"{pairs} seed(s) in common: a paired test needs two")
            return None
        return st.paired(c.a, c.b)
    return UNPAIRED.get(c.role, st.welch)(c.a, c.b)


def in_phase(comparisons: list[Comparison], phase: str) -> list[Comparison]:
    """In a pilot every comparison is an estimate (no verdict word): its numbers choose
    the confirmatory seeds, so they must not also be read as findings."""
    if phase == PILOT:
        for c in comparisons:
            c.role = EXPLORATORY
    return comparisons


def judge(comparisons: list[Comparison], level: float = st.LEVEL) -> list[Judged]:
    """Every comparison tested where it can be, each confirmatory family under Holm."""
    judged = [Judged(c, run_test(c)) for c in comparisons]
    families = dict.fromkeys(j.comparison.family for j in judged)
    for family in families:
        members = [j for j in judged if j.comparison.family == family]
        if members[0].comparison.role == EXPLORATORY:
            continue
        _judge_family(members, level)
    return judged


def hypotheses(j: Judged) -> list[tuple[str, float]]:
    """(kind, p) of a comparison: "difference" (its own p where it has one) and, with a
    margin, "equivalence" (TOST); for an equivalence claim "equivalence" and "beyond"
    (|difference| ≤ margin refuted). p = 1 (retained) where it could not be tested."""
    c, test = j.comparison, j.test
    if c.claim == "equivalent":
        kinds = ["equivalence", "beyond"]
    else:
        kinds = ["difference"] + (["equivalence"] if c.margin is not None else [])
    if test is None:
        return [(kind, 1.0) for kind in kinds]
    p = {"difference": lambda: test.p_value() if c.p is None else c.p,
         "equivalence": lambda: test.p_equivalence(c.margin),
         "beyond": lambda: st.p_beyond_margin(test, c.margin)}
    return [(kind, p[kind]()) for kind in kinds]


def _judge_family(members: list[Judged], level: float) -> None:
    for j in members:
        if not j.comparison.counted:
            j.verdict, j.correction = j.comparison.premise[0], "not in the family"
    members = [j for j in members if j.comparison.counted]
    entries = [(j, kind, p) for j in members for kind, p in hypotheses(j)]
    if not entries:
        return
    result = st.holm([p for _, _, p in entries], level)
    correction = st.correction_text(len(entries), level)
    by: dict[int, dict[str, tuple[bool, float, float]]] = {}
    for (j, kind, _), rejected, adjusted, step in zip(entries, result.rejected,
                                                      result.adjusted, result.step_level):
        by.setdefault(id(j), {})[kind] = (rejected, adjusted, step)
    for j in members:
        j.correction, j.level = correction, level
        j.simultaneous = len(entries) if j.comparison.role == PRIMARY else 0
        outcome = by[id(j)]
        if j.test is None:
            j.verdict = j.comparison.premise[0] if j.comparison.premise else st.NOT_MEASURED
        else:
            j.verdict = _verdict(j, outcome)
        j.decisive = j.decisive if j.decisive in outcome else next(iter(outcome))
        j.p_adjusted, j.step_level = outcome[j.decisive][1], outcome[j.decisive][2]


def _verdict(j: Judged, outcome: dict[str, tuple[bool, float, float]]) -> str:
    c, test = j.comparison, j.test
    if c.claim == "equivalent":
        return _equivalence(j, outcome)
    if "equivalence" in outcome:
        j.notes.append(_tost_note(j, outcome))
    if outcome["difference"][0]:
        return st.decide(test.effect, True, c.claim)
    if "equivalence" in outcome and outcome["equivalence"][0]:
        j.decisive = "equivalence"
        return st.EQUIVALENT
    return st.INCONCLUSIVE


def _equivalence(j: Judged, outcome: dict[str, tuple[bool, float, float]]) -> str:
    """"holds" where TOST rejects |d| ≥ m (the TOST interval inside (−m, m)), "does not
    hold" where |d| ≤ m is rejected (the interval wholly beyond [−m, m]), else
    "inconclusive"."""
    c, test = j.comparison, j.test
    margin = _g(c.margin * c.scale)
    j.notes += [_tost_note(j, outcome),
                f"test of |difference| ≤ {margin} (refuted only beyond the margin): p = "
                f"{_g(st.p_beyond_margin(test, c.margin))}, Holm-adjusted "
                f"{_g(outcome['beyond'][1])}"]
    if outcome["equivalence"][0]:
        j.decisive = "equivalence"
        return st.HOLDS
    if outcome["beyond"][0]:
        j.decisive = "beyond"
        return st.FAILS
    j.decisive = "equivalence"
    return st.INCONCLUSIVE


def _tost_note(j: Judged, outcome: dict[str, tuple[bool, float, float]]) -> str:
    c = j.comparison
    return (f"TOST of |difference| ≥ {_g(c.margin * c.scale)}: p = "
            f"{_g(j.test.p_equivalence(c.margin))}, Holm-adjusted "
            f"{_g(outcome['equivalence'][1])}")


def row(prediction: str, j: Judged) -> dict[str, str]:
    """The predictions.csv row of one judged comparison."""
    c, test = j.comparison, j.test
    out = dict.fromkeys(COLUMNS, "")
    out.update(role=c.role, family=c.family, prediction=prediction, comparison=c.comparison,
               statistic=c.statistic, eps=c.eps, measured=c.measured,
               correction=j.correction if c.role != EXPLORATORY else "none (an estimate)")
    notes = list(c.notes)
    if test is None:
        out["verdict"] = j.verdict if c.role != EXPLORATORY else ""
        why = c.premise[1] if c.premise else ""
        if c.role == EXPLORATORY and c.premise:
            why = f"{c.premise[0]}: {why}"
        out["note"] = "; ".join([n for n in (why, *notes) if n])
        return out
    (low, high), label, extra = interval(j)
    out.update(test=c.test_name or test.test, effect=_g(test.effect * c.scale),
               ci_low=_g(low * c.scale), ci_high=_g(high * c.scale), ci_level=label)
    if c.role != EXPLORATORY:
        out.update(p_value=_g(_raw_p(j)), p_adjusted=_g(j.p_adjusted), verdict=j.verdict)
    df = f"df = {test.df:.3g}" if math.isfinite(test.df) else "no spread"
    out["note"] = "; ".join([df, *notes, *j.notes, *extra])
    return out


def interval(j: Judged) -> tuple[tuple[float, float], str, list[str]]:
    """The printed interval of a tested comparison, its label, and a note where a primary's
    Holm decision and its simultaneous interval disagree about 0."""
    test = j.test
    if j.comparison.role == EXPLORATORY:
        return test.interval(st.CONFIDENCE), UNADJUSTED, []
    if j.decisive in ("equivalence", "beyond"):
        alpha = j.step_level
        return (st.tost_interval(test, alpha),
                f"TOST interval, 1−2α = {1 - 2 * alpha:.4g} (α: Holm step level)", [])
    if j.simultaneous:
        k = j.simultaneous
        low, high = test.interval(1 - j.level / k)
        label = f"simultaneous {1 - j.level:.0%} (Bonferroni over {k})"
        rejected = j.p_adjusted is not None and j.p_adjusted <= j.level
        extra = [f"rejected by Holm (step level {j.step_level:.4g}), yet the simultaneous "
                 "interval includes 0 (Holm's later steps test at a laxer level than "
                 "Bonferroni's)"] if rejected and low <= 0 <= high else []
        return (low, high), label, extra
    confidence = 1 - j.step_level
    return test.interval(confidence), f"Holm-step interval (level {confidence:.4g})", []


def _raw_p(j: Judged) -> float:
    c, test = j.comparison, j.test
    if j.decisive == "equivalence":
        return test.p_equivalence(c.margin)
    if j.decisive == "beyond":
        return st.p_beyond_margin(test, c.margin)
    return test.p_value() if c.p is None else c.p


def _g(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.4g}"

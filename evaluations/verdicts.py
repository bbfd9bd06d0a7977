"""Judging comparisons family by family: the test of each, Holm within each family, the
verdict and an interval that agrees with it.

A :class:`Comparison` carries its role (primary, secondary or exploratory), its family and
its claim: "lower" or "higher" (a − b < 0 or > 0), or "equivalent" (|a − b| < margin).
Within a confirmatory family every comparison contributes its hypotheses: "no
difference" for every claim, and with a margin "|difference| ≥ margin" (TOST) too. Holm
runs over all of them at the declared level; the family's size is fixed by the design, so
a comparison that cannot be tested (no value, one seed, an unconverged run, a suspected
attack failure) counts as a retained hypothesis. Exploratory comparisons are estimates:
the effect with an unadjusted 95% interval, labelled so, and no verdict word.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from robustmix.evaluations import statistics as st
from robustmix.evaluations.grouping import summarize

PRIMARY, SECONDARY, EXPLORATORY = "primary", "secondary", "exploratory"
COLUMNS = ["role", "family", "prediction", "comparison", "statistic", "eps", "measured",
           "test", "effect", "ci_low", "ci_high", "ci_level", "p_value", "p_adjusted",
           "correction", "verdict", "note"]
UNADJUSTED = f"{st.CONFIDENCE:.0%}, unadjusted"
# the unpaired test by role: Welch-Satterthwaite df let the ECE family run at 7-8% at 4
# against 6 runs (benchmarks/bench_calibration.py); the capped df hold every secondary family
UNPAIRED = {SECONDARY: st.welch_capped}


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
    """(kind, p) of a comparison: the difference, and the equivalence where it has a
    margin; p = 1 (retained) where it could not be tested."""
    c, test = j.comparison, j.test
    kinds = ["difference"] + (["equivalence"] if c.margin is not None else [])
    if test is None:
        return [(kind, 1.0) for kind in kinds]
    return [(kind, test.p_value() if kind == "difference" else test.p_equivalence(c.margin))
            for kind in kinds]


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
        j.correction = correction
        outcome = by[id(j)]
        j.p_adjusted, j.step_level = outcome["difference"][1], outcome["difference"][2]
        if j.test is None:
            j.verdict = j.comparison.premise[0] if j.comparison.premise else st.NOT_MEASURED
            continue
        j.verdict = _verdict(j, outcome)


def _verdict(j: Judged, outcome: dict[str, tuple[bool, float, float]]) -> str:
    c, test = j.comparison, j.test
    differs = outcome["difference"][0]
    equivalent = "equivalence" in outcome and outcome["equivalence"][0]
    if "equivalence" in outcome:
        j.notes.append(f"TOST of |difference| ≥ {_g(c.margin * c.scale)}: p = "
                       f"{_g(test.p_equivalence(c.margin))}, Holm-adjusted "
                       f"{_g(outcome['equivalence'][1])}")
    if c.claim == "equivalent":
        if equivalent:
            if differs:
                j.notes.append("the difference is not 0, but lies within the margin")
            return st.HOLDS
        return st.FAILS if differs else st.INCONCLUSIVE
    if differs:
        return st.decide(test.effect, True, c.claim)
    return st.EQUIVALENT if equivalent else st.INCONCLUSIVE


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
        if c.role != EXPLORATORY:
            out["p_adjusted"] = ""
        return out
    confidence = st.CONFIDENCE if c.role == EXPLORATORY else 1 - j.step_level
    low, high = test.interval(confidence)
    out.update(test=test.test, effect=_g(test.effect * c.scale), ci_low=_g(low * c.scale),
               ci_high=_g(high * c.scale))
    if c.role == EXPLORATORY:
        out["ci_level"] = UNADJUSTED
    else:
        out.update(ci_level=f"{confidence:.4g} (Holm step level)", p_value=_g(test.p_value()),
                   p_adjusted=_g(j.p_adjusted), verdict=j.verdict)
    df = f"df = {test.df:.3g}" if math.isfinite(test.df) else "no spread"
    out["note"] = "; ".join([df, *notes, *j.notes])
    return out


def _g(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.4g}"

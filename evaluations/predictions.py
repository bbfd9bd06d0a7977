"""The paper's predictions, checked on the measured runs.

Each comparison sets one group (runs equal but for their seed) against another of the
same family (runs equal but for their MSDA) on one per-run statistic, and is judged by
:mod:`evaluations.statistics`: Welch's t-test on the two groups' own values, the effect
with its 95% confidence interval, and Benjamini–Hochberg over every tested comparison of
the report. A comparison is not tested, and says why, when a side has no value ("not
measured"), one seed ("inconclusive (one seed)"), a run that did not converge
(:mod:`evaluations.convergence`) or, for (a), a reference that does not overfit.

(a) gap: the train−test gap of an MSDA (accuracy, and loss) is below vanilla's; testable
    only where vanilla overfits (its gap is above zero, one-sided t-test at 5%).
(b) robustness: among the examples a model classifies correctly, the share that an attack
    leaves standing (robust / clean accuracy on the same examples) is higher for an MSDA
    than for vanilla; at every ε of the grid common to both, and as one ε-free summary,
    the area under that curve over [0, ε_max] (with 1 at ε = 0) divided by ε_max. For
    FGSM, PGD and the per-example worst case over every attack run (AutoAttack included).
(c) profile: the decay statistic D (:mod:`evaluations.profiles`) of CutMix is above that
    of Mixup and of vanilla: CutMix suppresses near pairs more, so its normalized profile
    falls less with distance, while Mixup's uniform c(p) leaves the shape as vanilla's.
(d) own mask: ρ_m = Q_A(model m) / mean Q_A(vanilla) is smallest for the model trained
    with A; compared with the runner-up (vanilla itself has ρ = 1).
(e) regularizer: Q_A(model A) < Q_A(vanilla) on A's own mask distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd

from evaluations import statistics as st
from evaluations.grouping import Group, summarize
from robustmix.core import runs

COLUMNS = ["prediction", "comparison", "statistic", "eps", "measured", "effect", "ci_low",
           "ci_high", "p_value", "p_adjusted", "verdict", "note"]
CLAIMS = {
    "a": "(a) MSDA shrinks the train-test gap relative to vanilla",
    "b": "(b) MSDA keeps more correctly classified examples standing under attack than vanilla",
    "c": "(c) CutMix suppresses near gradient products more than Mixup (flatter profile)",
    "d": "(d) each model has the smallest Q on its own mask distribution, relative to vanilla",
    "e": "(e) the first-layer regularizer shrinks: Q_A(model A) < Q_A(vanilla)",
}
ROBUST_ATTACKS = ("fgsm", "pgd", "worst-case")
AUC = "AUC"


@dataclass
class Comparison:
    key: str
    comparison: str
    statistic: str
    a: list[float]
    b: list[float]
    claim: str                        # "lower" or "higher": the sign of mean(a) − mean(b)
    measured: str = ""
    eps: str = ""
    scale: float = 1.0                # 100 for values printed in percent
    premise: tuple[str, str] | None = None   # (verdict, note) of a comparison not tested


class Runs:
    """The per-run values the predictions read, by group."""

    def __init__(self, groups: list[Group], per_run: pd.DataFrame, robust: pd.DataFrame | None):
        self.groups, self.per_run, self.robust = groups, per_run, robust

    def values(self, group: Group, metric: str) -> list[float]:
        if metric not in self.per_run.columns:
            return []
        return [float(v) for v in
                self.per_run.loc[self.per_run["group"] == group.name, metric].tolist()]

    def vanilla_of(self, group: Group) -> Group | None:
        same = [g for g in self.groups if g.family == group.family and g.method == "vanilla"]
        return same[0] if len(same) == 1 else None

    def unconverged(self, *groups: Group) -> list[str]:
        if "converged" not in self.per_run.columns:
            return []
        rows = self.per_run[self.per_run["group"].isin([g.name for g in groups])]
        return [f"{r.run} ({r.convergence})" for r in rows.itertuples() if not r.converged]


def prediction_table(groups: list[Group], per_run: pd.DataFrame,
                     robust: pd.DataFrame | None) -> list[dict[str, str]]:
    """Rows (``COLUMNS``) of the predictions table, every comparison judged."""
    data = Runs(groups, per_run, robust)
    comparisons = [*gap(data), *robustness(data), *profile(data), *own_mask(data),
                   *regularizer(data)]
    if not comparisons:
        comparisons = [Comparison(k, "", "", [], [], "lower", premise=(
            st.NOT_MEASURED, "no MSDA run: every prediction compares an MSDA with vanilla"))
            for k in CLAIMS]
    return judge(comparisons)


def judge(comparisons: list[Comparison]) -> list[dict[str, str]]:
    """Test every comparison whose premise holds, correct over them all, and decide."""
    tests: dict[int, st.Welch] = {}
    for index, c in enumerate(comparisons):
        if c.premise is None:
            if not summarize(c.a)[2] or not summarize(c.b)[2]:
                c.premise = (st.NOT_MEASURED, c.measured or "no value on one side")
            elif min(summarize(c.a)[2], summarize(c.b)[2]) < 2:
                c.premise = (st.ONE_SEED, "no spread: a group has one run")
            else:
                tests[index] = st.welch(c.a, c.b)
    adjusted = dict(zip(tests, st.adjust([t.p_value for t in tests.values()])))
    return [_row(c, tests.get(i), adjusted.get(i)) for i, c in enumerate(comparisons)]


def _row(c: Comparison, test: st.Welch | None, p_adjusted: float | None) -> dict[str, str]:
    row = {"prediction": CLAIMS[c.key], "comparison": c.comparison, "statistic": c.statistic,
           "eps": c.eps, "measured": c.measured, "effect": "", "ci_low": "", "ci_high": "",
           "p_value": "", "p_adjusted": "", "verdict": "", "note": ""}
    if test is None:
        row["verdict"], row["note"] = c.premise or (st.NOT_MEASURED, "")
        return row
    row.update(effect=_g(test.effect * c.scale), ci_low=_g(test.ci_low * c.scale),
               ci_high=_g(test.ci_high * c.scale), p_value=_g(test.p_value),
               p_adjusted=_g(p_adjusted), verdict=st.decide(test.effect, p_adjusted, c.claim))
    row["note"] = f"Welch df = {test.df:.3g}"
    return row


def _compare(data: Runs, key: str, ga: Group, gb: Group, statistic: str, a: list[float],
             b: list[float], claim: str, scale: float = 1.0, eps: str = "",
             comparison: str | None = None) -> Comparison:
    """A comparison of ``ga`` (values ``a``) with ``gb`` (``b``), unconverged runs flagged."""
    c = Comparison(key, comparison or f"{ga.name} vs {gb.name}", statistic, a, b, claim,
                   measured=_pair(ga, a, gb, b, scale), eps=eps, scale=scale)
    late = data.unconverged(ga, gb)
    if late:
        c.premise = (st.UNCONVERGED, "unconverged: " + ", ".join(late))
    return c


def _missing(key: str, comparison: str, why: str) -> Comparison:
    return Comparison(key, comparison, "", [], [], "lower", premise=(st.NOT_MEASURED, why))


def _msda(data: Runs) -> Iterator[tuple[Group, Group | None]]:
    for group in data.groups:
        if group.method != "vanilla":
            yield group, data.vanilla_of(group)


NO_VANILLA = "no vanilla run with the same settings"
GAPS = (("gap_acc", "clean accuracy gap train - test (pp)", 100.0),
        ("gap_loss", "clean loss gap test - train (nats)", 1.0))


# (a)
def gap(data: Runs) -> Iterator[Comparison]:
    for group, base in _msda(data):
        if base is None:
            yield _missing("a", f"{group.name} vs vanilla", NO_VANILLA)
            continue
        for metric, statistic, scale in GAPS:
            a, b = data.values(group, metric), data.values(base, metric)
            c = _compare(data, "a", group, base, statistic, a, b, "lower", scale)
            overfits, p = st.exceeds_zero(b)
            if c.premise is None and summarize(b)[2] >= 2 and not overfits:
                c.premise = (st.NOT_TESTABLE, f"vanilla does not overfit: its gap "
                             f"{_fmt(b, scale)} is not above zero (one-sided t-test, "
                             f"p = {p:.3g} > {st.LEVEL:g})")
            yield c


# (b)
def robustness(data: Runs) -> Iterator[Comparison]:
    if data.robust is None:
        return
    norm = "linf" if (data.robust["norm"] == "linf").any() else "l2"
    rows = data.robust[(data.robust["norm"] == norm) & (data.robust["eps_key"] > 0)]
    for group, base in _msda(data):
        for attack in (a for a in ROBUST_ATTACKS if a in set(rows["attack"])):
            yield from _robust_attack(data, rows[rows["attack"] == attack], group, base,
                                      attack, norm)


def _robust_attack(data: Runs, rows: pd.DataFrame, group: Group, base: Group | None,
                   attack: str, norm: str) -> Iterator[Comparison]:
    comparison = f"{group.name} vs vanilla, {attack}"
    if base is None:
        yield _missing("b", comparison, NO_VANILLA)
        return
    mine, theirs = (rows[rows["group"] == g.name] for g in (group, base))
    grid = sorted(set(mine["eps_key"]) & set(theirs["eps_key"]))
    if not grid:
        yield _missing("b", comparison, f"no {attack} result at a common eps "
                                        "(run robustmix attack)")
        return
    label = dict(zip(rows["eps_key"], rows["eps"]))
    both = pd.concat([mine, theirs])
    for eps_key in grid:
        c = _compare(data, "b", group, base, f"{attack}: robust / clean accuracy, {norm} (%)",
                     _at(mine, eps_key), _at(theirs, eps_key), "higher", 100,
                     label[eps_key], comparison)
        yield _same_examples(c, both[both["eps_key"] == eps_key])
    c = _compare(data, "b", group, base, f"{attack}: area under robust / clean over eps in "
                 f"[0, {label[grid[-1]]}], / eps_max (%)", _areas(mine, grid),
                 _areas(theirs, grid), "higher", 100, AUC, comparison)
    yield _same_examples(c, both)


def _same_examples(c: Comparison, rows: pd.DataFrame) -> Comparison:
    """Not measured where the runs compared were attacked on different example subsets."""
    subsets = sorted(set(rows["n_examples"]))
    if len(subsets) > 1 and c.premise is None:
        c.premise = (st.NOT_MEASURED, f"attacked on different example subsets "
                                      f"(n = {', '.join(map(str, subsets))}): not like with like")
    return c


def _at(rows: pd.DataFrame, eps_key: float) -> list[float]:
    return rows.loc[rows["eps_key"] == eps_key].sort_values("run")["conditional"].tolist()


def _areas(rows: pd.DataFrame, grid: list[float]) -> list[float]:
    """Per run: the area under robust/clean over [0, ε_max] (1 at ε = 0), / ε_max."""
    areas = []
    for _, run in rows.groupby("run", sort=True):
        curve = dict(zip(run["eps_key"], run["conditional"]))
        if not all(e in curve for e in grid):
            continue
        x, y = np.array([0.0, *grid]), np.array([1.0, *(curve[e] for e in grid)])
        areas.append(float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / grid[-1]))
    return areas


# (c)
def profile(data: Runs) -> Iterator[Comparison]:
    for cutmix in (g for g in data.groups if g.method == "cutmix"):
        others = [g for g in data.groups if g.family == cutmix.family
                  and g.method in ("mixup", "vanilla")]
        if not others:
            yield _missing("c", f"{cutmix.name} vs mixup / vanilla",
                           "no mixup or vanilla run with the same settings")
        for other in others:
            yield _compare(data, "c", cutmix, other, "profile decay D (higher: flatter)",
                           data.values(cutmix, "profile_decay"),
                           data.values(other, "profile_decay"), "higher")


# (d)
def own_mask(data: Runs) -> Iterator[Comparison]:
    for group, base in _msda(data):
        comparison = f"{group.name} model on the {group.method} mask"
        metric = f"q.{group.method}"
        if base is None:
            yield _missing("d", comparison, NO_VANILLA)
            continue
        reference, _, n = summarize(data.values(base, metric))
        if n == 0 or not reference > 0:
            yield _missing("d", comparison, f"no Q_{group.method} (run robustmix evaluate)")
            continue
        family = [g for g in data.groups if g.family == group.family]
        ratios = {g.name: [v / reference for v in data.values(g, metric)] for g in family}
        means = {k: summarize(v)[0] for k, v in ratios.items() if summarize(v)[2]}
        rivals = {k: v for k, v in means.items() if k != group.name}
        if group.name not in means or not rivals:
            yield _missing("d", comparison, f"no Q_{group.method} of this model")
            continue
        rival = next(g for g in family if g.name == min(rivals, key=rivals.get))
        c = _compare(data, "d", group, rival, f"rho = Q_{group.method}(model) / "
                     f"Q_{group.method}(vanilla); runner-up {rival.name}",
                     ratios[group.name], ratios[rival.name], "lower", comparison=comparison)
        c.measured = ", ".join(f"{k} {v:.3g}" for k, v in sorted(means.items(),
                                                                  key=lambda kv: kv[1]))
        yield c


# (e)
def regularizer(data: Runs) -> Iterator[Comparison]:
    for group, base in _msda(data):
        comparison = f"{group.name} vs vanilla on the {group.method} mask"
        if base is None:
            yield _missing("e", comparison, NO_VANILLA)
            continue
        metric = f"q.{group.method}"
        a, b = data.values(group, metric), data.values(base, metric)
        c = _compare(data, "e", group, base, f"Q_{group.method}(W)", a, b, "lower",
                     comparison=comparison)
        if summarize(a)[2] and summarize(b)[0] > 0:
            c.measured += f" (ratio {summarize(a)[0] / summarize(b)[0]:.3g})"
        yield c


def _pair(ga: Group, a: list[float], gb: Group, b: list[float], scale: float) -> str:
    if not summarize(a)[2] or not summarize(b)[2]:
        return (f"no {runs.GENERALIZATION} or {runs.ROBUSTNESS} (run robustmix evaluate / "
                "attack)")
    return f"{ga.name} {_fmt(a, scale)} vs {gb.name} {_fmt(b, scale)}"


def _fmt(values: list[float], scale: float) -> str:
    mean, std, n = summarize(values)
    text = f"{mean * scale:.3g}"
    if n > 1:
        text += f" ± {std * scale:.2g}"
    return f"{text} (n={n})"


def _g(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.4g}"

"""The paper's predictions, checked on the measured runs.

Each row compares two groups of the same family (runs equal but for their MSDA) on one
per-run statistic. The verdict uses the pooled seed std s of that statistic
(:func:`evaluations.grouping.pooled_std`) and the group sizes n_a, n_b:

- |mean_a − mean_b| ≤ 2·s·√(1/n_a + 1/n_b): "inconclusive (within spread)";
- otherwise "holds" or "does not hold" by the sign of the difference;
- s unknown (no group has two seeds): by the sign alone, and the spread column says so;
- a statistic missing on either side: "not measured".

(a) gap: the clean train−test accuracy gap of an MSDA is below vanilla's.
(b) robustness: FGSM / PGD robust accuracy of an MSDA is above vanilla's at the smallest
    ε > 0 both were attacked at (L∞ when measured, else L2).
(c) profile: the decay statistic D (:mod:`evaluations.profiles`) of CutMix is above that
    of Mixup and of vanilla: CutMix suppresses near pairs more, so its normalized profile
    falls less with distance, while Mixup's uniform c(p) leaves the shape as vanilla's.
(d) own mask: ρ_m = Q_A(model m) / mean Q_A(vanilla) is smallest for the model trained
    with A; compared with the runner-up (vanilla itself has ρ = 1).
(e) regularizer: Q_A(model A) < Q_A(vanilla) on A's own mask distribution.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from evaluations.grouping import Group, pooled_std, summarize

HOLDS = "holds"
FAILS = "does not hold"
WITHIN = "inconclusive (within spread)"
NOT_MEASURED = "not measured"
COLUMNS = ["prediction", "comparison", "statistic", "measured", "verdict", "spread"]
CLAIMS = {
    "a": "(a) MSDA shrinks the train-test gap relative to vanilla",
    "b": "(b) MSDA adds FGSM/PGD robustness at small eps relative to vanilla",
    "c": "(c) CutMix suppresses near gradient products more than Mixup (flatter profile)",
    "d": "(d) each model has the smallest Q on its own mask distribution, relative to vanilla",
    "e": "(e) the first-layer regularizer shrinks: Q_A(model A) < Q_A(vanilla)",
}


def judge(a: Sequence[float], b: Sequence[float], spread: float | None,
          claim: str, scale: float = 1.0) -> tuple[str, str]:
    """Verdict on ``mean(a) < mean(b)`` (claim "lower") or ``>`` ("higher"), and the spread
    text (its numbers multiplied by ``scale``, e.g. 100 for percentage points)."""
    mean_a, _, n_a = summarize(a)
    mean_b, _, n_b = summarize(b)
    if n_a == 0 or n_b == 0:
        return NOT_MEASURED, ""
    diff = mean_a - mean_b
    wanted = diff < 0 if claim == "lower" else diff > 0
    if spread is None:
        return (HOLDS if wanted else FAILS), "unknown (one seed per method): sign only"
    threshold = 2 * spread * math.sqrt(1 / n_a + 1 / n_b)
    text = (f"2s*sqrt(1/{n_a}+1/{n_b}) = {threshold * scale:.3g} "
            f"(pooled seed std s = {spread * scale:.3g})")
    if abs(diff) <= threshold:
        return WITHIN, text
    return (HOLDS if wanted else FAILS), text


class Predictions:
    """Builds the predictions table from per-run metrics and robustness rows."""

    def __init__(self, groups: list[Group], per_run: pd.DataFrame, robust: pd.DataFrame | None):
        self.groups = groups
        self.per_run = per_run          # index: run name; columns: group + metrics
        self.robust = robust            # columns: run, group, attack, norm, eps_key, robust_acc
        self.rows: list[dict[str, str]] = []

    def values(self, group: Group, metric: str) -> list[float]:
        if metric not in self.per_run.columns:
            return []
        return self.per_run.loc[self.per_run["group"] == group.name, metric].tolist()

    def spread(self, metric: str, family: str) -> float | None:
        return pooled_std(self.values(g, metric) for g in self.groups if g.family == family)

    def vanilla_of(self, group: Group) -> Group | None:
        same = [g for g in self.groups if g.family == group.family and g.method == "vanilla"]
        return same[0] if len(same) == 1 else None

    def add(self, key: str, comparison: str, statistic: str, measured: str,
            verdict: tuple[str, str]) -> None:
        self.rows.append({"prediction": CLAIMS[key], "comparison": comparison,
                          "statistic": statistic, "measured": measured,
                          "verdict": verdict[0], "spread": verdict[1]})

    def not_measured(self, key: str, comparison: str, why: str) -> None:
        self.add(key, comparison, "", why, (NOT_MEASURED, ""))

    def table(self) -> list[dict[str, str]]:
        msda = [g for g in self.groups if g.method != "vanilla"]
        for group in msda:
            self.gap(group)
        for group in msda:
            for attack in ("fgsm", "pgd"):
                self.robustness(group, attack)
        self.profile()
        for group in msda:
            self.own_mask(group)
        for group in msda:
            self.regularizer(group)
        if not self.rows:
            for key in CLAIMS:
                self.not_measured(key, "", "no MSDA run: every prediction compares an MSDA "
                                            "with vanilla")
        return self.rows

    # (a)
    def gap(self, group: Group) -> None:
        base = self.vanilla_of(group)
        comparison = f"{group.name} vs vanilla"
        if base is None:
            return self.not_measured("a", comparison, "no vanilla run with the same settings")
        a, b = self.values(group, "gap_acc"), self.values(base, "gap_acc")
        verdict = judge(a, b, self.spread("gap_acc", group.family), "lower", 100)
        measured = _pair(group, a, base, b, percent=True) if verdict[0] != NOT_MEASURED \
            else "no generalization.json (run robustmix evaluate)"
        self.add("a", comparison, "clean accuracy gap train - test (pp)", measured, verdict)

    # (b)
    def robustness(self, group: Group, attack: str) -> None:
        base = self.vanilla_of(group)
        comparison = f"{group.name} vs vanilla, {attack}"
        if base is None:
            return self.not_measured("b", comparison, "no vanilla run with the same settings")
        found = self.smallest_common_eps(group, base, attack)
        if found is None:
            return self.not_measured("b", comparison, f"no {attack} result at a common eps "
                                                      "(run robustmix attack)")
        norm, eps_key, label = found
        a, b = (self.robust_values(g, attack, norm, eps_key) for g in (group, base))
        verdict = judge(a, b, self.robust_spread(attack, norm, eps_key, group.family),
                        "higher", 100)
        self.add("b", comparison, f"{attack} robust accuracy at {norm} eps = {label} (%)",
                 _pair(group, a, base, b, percent=True), verdict)

    def smallest_common_eps(self, group: Group, base: Group, attack: str):
        if self.robust is None:
            return None
        rows = self.robust[(self.robust["attack"] == attack) & (self.robust["eps_key"] > 0)]
        for norm in ("linf", "l2"):
            sets = [set(rows.loc[(rows["group"] == g.name) & (rows["norm"] == norm), "eps_key"])
                    for g in (group, base)]
            common = sorted(sets[0] & sets[1])
            if common:
                label = rows.loc[(rows["norm"] == norm) & (rows["eps_key"] == common[0]),
                                 "eps"].iloc[0]
                return norm, common[0], label
        return None

    def robust_values(self, group: Group, attack: str, norm: str, eps_key: float) -> list[float]:
        r = self.robust
        return r.loc[(r["group"] == group.name) & (r["attack"] == attack) & (r["norm"] == norm)
                     & (r["eps_key"] == eps_key), "robust_acc"].tolist()

    def robust_spread(self, attack, norm, eps_key, family) -> float | None:
        return pooled_std(self.robust_values(g, attack, norm, eps_key)
                          for g in self.groups if g.family == family)

    # (c)
    def profile(self) -> None:
        for cutmix in (g for g in self.groups if g.method == "cutmix"):
            others = [g for g in self.groups if g.family == cutmix.family
                      and g.method in ("mixup", "vanilla")]
            if not others:
                self.not_measured("c", f"{cutmix.name} vs mixup / vanilla",
                                  "no mixup or vanilla run with the same settings")
            for other in others:
                a, b = self.values(cutmix, "profile_decay"), self.values(other, "profile_decay")
                verdict = judge(a, b, self.spread("profile_decay", cutmix.family), "higher")
                measured = _pair(cutmix, a, other, b) if verdict[0] != NOT_MEASURED \
                    else "no generalization.json (run robustmix evaluate)"
                self.add("c", f"{cutmix.name} vs {other.name}", "profile decay D (higher: "
                         "flatter)", measured, verdict)

    # (d)
    def own_mask(self, group: Group) -> None:
        base = self.vanilla_of(group)
        comparison = f"{group.name} model on the {group.method} mask"
        metric = f"q.{group.method}"
        if base is None:
            return self.not_measured("d", comparison, "no vanilla run with the same settings")
        reference, _, n = summarize(self.values(base, metric))
        if n == 0 or not reference > 0:
            return self.not_measured("d", comparison, f"no Q_{group.method} (run robustmix "
                                                      "evaluate)")
        family = [g for g in self.groups if g.family == group.family]
        ratios = {g.name: [v / reference for v in self.values(g, metric)] for g in family}
        means = {name: summarize(v)[0] for name, v in ratios.items() if summarize(v)[2]}
        rivals = {k: v for k, v in means.items() if k != group.name}
        if group.name not in means or not rivals:
            return self.not_measured("d", comparison, f"no Q_{group.method} of this model")
        rival = min(rivals, key=rivals.get)
        verdict = judge(ratios[group.name], ratios[rival],
                        pooled_std(ratios.values()), "lower")
        listing = ", ".join(f"{k} {v:.3g}" for k, v in sorted(means.items(), key=lambda kv: kv[1]))
        self.add("d", comparison, f"rho = Q_{group.method}(model) / Q_{group.method}(vanilla); "
                 f"runner-up {rival}", listing, verdict)

    # (e)
    def regularizer(self, group: Group) -> None:
        base = self.vanilla_of(group)
        comparison = f"{group.name} vs vanilla on the {group.method} mask"
        if base is None:
            return self.not_measured("e", comparison, "no vanilla run with the same settings")
        metric = f"q.{group.method}"
        a, b = self.values(group, metric), self.values(base, metric)
        verdict = judge(a, b, self.spread(metric, group.family), "lower")
        measured = _pair(group, a, base, b) if verdict[0] != NOT_MEASURED \
            else f"no Q_{group.method} (run robustmix evaluate)"
        if verdict[0] != NOT_MEASURED and summarize(b)[0] > 0:
            measured += f" (ratio {summarize(a)[0] / summarize(b)[0]:.3g})"
        self.add("e", comparison, f"Q_{group.method}(W)", measured, verdict)


def _pair(ga: Group, a: list[float], gb: Group, b: list[float], percent: bool = False) -> str:
    return f"{ga.name} {_fmt(a, percent)} vs {gb.name} {_fmt(b, percent)}"


def _fmt(values: list[float], percent: bool) -> str:
    mean, std, n = summarize(values)
    scale = 100 if percent else 1
    text = f"{mean * scale:.3g}"
    if n > 1:
        text += f" ± {std * scale:.2g}"
    return f"{text} (n={n})"


def prediction_table(groups: list[Group], per_run: pd.DataFrame,
                     robust: pd.DataFrame | None) -> list[dict[str, str]]:
    """Rows (``COLUMNS``) of the predictions table."""
    return Predictions(groups, per_run, robust).table()

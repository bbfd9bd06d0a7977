"""The paper's predictions, checked on the measured runs: primary, secondary, exploratory.

Each comparison sets one group (runs equal but for their seed) against another of the
same family (runs equal but for their MSDA) on one per-run statistic, and is judged by
:mod:`robustmix.evaluations.verdicts` (tests in :mod:`robustmix.evaluations.statistics`). Roles:

- **primary** (declared before the data, :mod:`robustmix.evaluations.declaration`): (b), one per
  MSDA against vanilla on the worst case over every attack, the strong one included
  (:mod:`robustmix.evaluations.primary`); Holm over them.
- **secondary**, each prediction its own family under Holm at the declared level:
  (a) gap: the train−test gap (accuracy; loss) of an MSDA is below vanilla's; "no effect"
      only through TOST with the declared margin. No premise gate: the difference test
      keeps its error rate whether or not vanilla overfits (a gate on three vanilla values
      switched the block on and off at random), and vanilla's gap is shown beside it.
  (c) profile: CutMix's decay D is above Mixup's and vanilla's (flatter profile), and
      Mixup's D equals vanilla's within the declared margin (TOST), the other half of
      the claim; a difference there is reported as against the claim.
  (d) own mask: on mask A, Q_A / Q_ref of the model trained with A is below that of every
      other model of its family (vanilla and every other MSDA, Mixup included); paired by
      seed, an intersection–union test: every pairwise difference negative and
      significant, p the largest pairwise p (no cost in multiplicity); the effect and
      interval printed are those against the decisive (largest-p) rival. Where A's model
      is not the lowest point estimate, (d) cannot hold.
  (e) regularizer: Q_A / Q_ref of the model trained with A is below vanilla's; paired.
  corruption accuracy (higher than vanilla's) and calibration (ECE lower than vanilla's).
- **exploratory**: every (b) cell per ε and attack, and the primary statistic under FGSM
  or PGD alone: an effect with an unadjusted 95% interval, no verdict word.

Q normalized: Q_A(W) and Q_ref(W) are both quadratic in the first layer W, so
Q_A(cW) / Q_ref(cW) = Q_A(W) / Q_ref(W): the overall scale of a model's weights cancels and
what is left is how much of the pairs' first-layer energy mask A's (1 − M) lets through.
For Mixup (1 − M) = (1 − λ) everywhere, so Q_mixup / Q_ref = E[(1 − λ)²] for every model:
(d) and (e) are not testable for Mixup, by design, and not counted in their families.
Pairing: runs of one seed start from the same initial weights whatever their MSDA (the
trainer seeds torch with the run's seed right before it builds the model), and Q keeps
that imprint, so (d) and (e) pair by seed; the robustness statistics are not paired.
"""

from __future__ import annotations

import math
from typing import Iterator

import pandas as pd

from robustmix.evaluations import primary
from robustmix.evaluations import statistics as st
from robustmix.evaluations.declaration import Declaration
from robustmix.evaluations.grouping import Group
from robustmix.evaluations.study_data import (NO_VANILLA, Runs, flag_convergence, msda,  # noqa: F401
                                    pair_text)
from robustmix.evaluations.verdicts import (  # noqa: F401
    COLUMNS, SECONDARY, Comparison, in_phase, judge, row, run_test)

CLAIMS = {
    "b": "(b) MSDA keeps more correctly classified examples standing under attack than vanilla",
    "a": "(a) MSDA shrinks the train-test gap relative to vanilla",
    "c": "(c) CutMix's gradient profile is flatter than Mixup's and vanilla's; Mixup's is "
         "vanilla's",
    "d": "(d) each model has the smallest normalized Q on its own mask distribution",
    "e": "(e) the first-layer regularizer shrinks: Q_A/Q_ref(model A) < Q_A/Q_ref(vanilla)",
    "corruption": "MSDA keeps more accuracy under common corruptions than vanilla",
    "calibration": "MSDA is better calibrated than vanilla (lower ECE)",
}
FAMILIES = {"a": "(a) gap", "c": "(c) profile", "d": "(d) own mask", "e": "(e) regularizer",
            "corruption": "corruption accuracy", "calibration": "calibration (ECE)"}
GAPS = (("gap_acc", "clean accuracy gap train - test (pp)", 100.0, "gap_margin_acc"),
        ("gap_loss", "clean loss gap test - train (nats)", 1.0, "gap_margin_loss"))
UNION = "intersection-union of paired t-tests over seeds: the largest two-sided p"
MIXUP_Q = ("not testable: Q_mixup / Q_ref = E[(1 - lam)^2] for every model (Mixup's mask "
           "is the same everywhere), so no model can be special on it")


def prediction_table(groups: list[Group], per_run: pd.DataFrame, robust: pd.DataFrame | None,
                     declaration: Declaration | None = None) -> list[dict[str, str]]:
    """Rows (``COLUMNS``) of the predictions table: every comparison, by role and family."""
    declaration = declaration or Declaration()
    data = Runs(groups, per_run, robust, declaration)
    comparisons = secondary_comparisons(data)
    if not any(g.method != "vanilla" for g in groups):
        comparisons = [Comparison(k, SECONDARY, FAMILIES[k], "", "", [], [], "lower",
                                  premise=(st.NOT_MEASURED, "no MSDA run: every prediction "
                                                            "compares an MSDA with vanilla"))
                       for k in FAMILIES]
    rows = primary.rows(data, CLAIMS["b"])
    judged = judge(in_phase(comparisons, declaration.phase), declaration.level)
    return rows + [row(CLAIMS[j.comparison.key], j) for j in judged]


def secondary_comparisons(data: Runs) -> list[Comparison]:
    """Every secondary comparison of the study, untested (the families' hypotheses)."""
    return [*gap(data), *profile(data), *own_mask(data), *regularizer(data),
            *versus_vanilla(data, "corruption", "corrupted_acc",
                            "mean accuracy over the corrupted test cells (%)", "higher", 100.0),
            *versus_vanilla(data, "calibration", "ece", "ECE of the clean test set", "lower",
                            1.0)]


def compare(data: Runs, key: str, ga: Group, gb: Group, statistic: str, metric: str,
            claim: str, scale: float = 1.0, *, paired: bool = False,
            comparison: str | None = None, margin: float | None = None) -> Comparison:
    """A secondary comparison of ``ga`` with ``gb`` on ``metric``, unconverged runs
    flagged and runs not judged for convergence named."""
    a, b = data.by_seed(ga, metric), data.by_seed(gb, metric)
    if paired:   # the seeds both have, with a value on both sides: what the test uses
        common = sorted(s for s in set(a) & set(b)
                        if math.isfinite(a[s]) and math.isfinite(b[s]))
        a, b = {s: a[s] for s in common}, {s: b[s] for s in common}
    c = Comparison(key, SECONDARY, FAMILIES[key], comparison or f"{ga.name} vs {gb.name}",
                   statistic, list(a.values()), list(b.values()), claim,
                   measured=pair_text(ga, list(a.values()), gb, list(b.values()), scale),
                   scale=scale, margin=margin, paired=paired)
    if paired:
        c.notes.append(f"paired over seeds {','.join(map(str, common))}")
    flag_convergence(data, c, ga, gb)
    return c


def missing(key: str, comparison: str, why: str, counted: bool = True) -> Comparison:
    """A comparison that cannot be tested; ``counted=False``: not testable by design,
    so not a hypothesis of its family."""
    return Comparison(key, SECONDARY, FAMILIES[key], comparison, "", [], [], "lower",
                      premise=(st.NOT_MEASURED if counted else st.NOT_TESTABLE, why),
                      counted=counted)


# (a)
def gap(data: Runs) -> Iterator[Comparison]:
    for group, base in msda(data):
        if base is None:
            yield missing("a", f"{group.name} vs vanilla", NO_VANILLA)
            continue
        for metric, statistic, scale, margin in GAPS:
            yield compare(data, "a", group, base, statistic, metric, "lower", scale,
                          margin=getattr(data.declaration, margin))


# (c)
def profile(data: Runs) -> Iterator[Comparison]:
    statistic, metric = "profile decay D (higher: flatter)", "profile_decay"
    margin = data.declaration.profile_margin
    for cutmix in (g for g in data.groups if g.method == "cutmix"):
        for other in ("mixup", "vanilla"):
            rival = data.of_method(cutmix.family, other)
            if rival is None:
                yield missing("c", f"{cutmix.name} vs {other}", f"no {other} run with the "
                                                                "same settings")
            else:
                yield compare(data, "c", cutmix, rival, statistic, metric, "higher")
    for mixup in (g for g in data.groups if g.method == "mixup"):
        vanilla = data.vanilla_of(mixup)
        if vanilla is None:
            yield missing("c", f"{mixup.name} vs vanilla", NO_VANILLA)
        else:
            yield compare(data, "c", mixup, vanilla, statistic, metric, "equivalent",
                          margin=margin)


# (d)
def own_mask(data: Runs) -> Iterator[Comparison]:
    for group, _ in msda(data):
        mask = group.method
        comparison = f"{group.name} vs every other model on the {mask} mask"
        if mask == "mixup":
            yield missing("d", comparison, MIXUP_Q, counted=False)
            continue
        rivals = [g for g in data.groups if g.family == group.family and g is not group]
        if not rivals:
            yield missing("d", comparison, "no other model with the same settings")
            continue
        yield lowest(data, group, rivals, comparison)


def lowest(data: Runs, group: Group, rivals: list[Group], comparison: str) -> Comparison:
    """(d) for one model: Q_A / Q_ref below every rival's, as one intersection–union test
    of the paired t-tests; shown as the comparison with the decisive (largest-p) rival.
    A rival that cannot be tested leaves the claim untested (its premise says why)."""
    mask = group.method
    pairs = [compare(data, "d", group, rival, f"Q_{mask} / Q_ref", f"q_relative.{mask}",
                     "lower", paired=True, comparison=comparison) for rival in rivals]
    tests = [run_test(c) for c in pairs]
    names = ", ".join(r.name for r in rivals)
    for rival, c, test in zip(rivals, pairs, tests):
        if test is None:
            c.notes.append(f"against every other model ({names}): {rival.name} could not be "
                           "compared, so the claim is not tested")
            return c
    own = [t.p_value() if t.effect < 0 else 1.0 for t in tests]
    k = max(range(len(tests)), key=lambda i: (own[i], tests[i].effect))
    decisive = pairs[k]
    decisive.p, decisive.test_name = st.union_p(tests, "lower"), UNION
    pairwise = ", ".join(f"{r.name} {t.effect:+.3g} (p {t.p_value():.3g})"
                         for r, t in zip(rivals, tests))
    decisive.notes.append(f"against every other model, paired differences: {pairwise}; "
                          f"decisive rival {rivals[k].name} (the effect and interval shown)")
    below = [f"{r.name} (paired p {t.p_value():.3g})" for r, t in zip(rivals, tests)
             if t.effect >= 0]
    if below:
        decisive.notes.append(f"not the lowest on its own mask: {', '.join(below)} at or "
                              "below it, so the claim cannot hold")
    return decisive


# (e)
def regularizer(data: Runs) -> Iterator[Comparison]:
    for group, base in msda(data):
        mask = group.method
        comparison = f"{group.name} vs vanilla on the {mask} mask"
        if mask == "mixup":
            yield missing("e", comparison, MIXUP_Q, counted=False)
        elif base is None:
            yield missing("e", comparison, NO_VANILLA)
        else:
            yield compare(data, "e", group, base, f"Q_{mask} / Q_ref", f"q_relative.{mask}",
                          "lower", paired=True, comparison=comparison)


def versus_vanilla(data: Runs, key: str, metric: str, statistic: str, claim: str,
                   scale: float) -> Iterator[Comparison]:
    for group, base in msda(data):
        if base is None:
            yield missing(key, f"{group.name} vs vanilla", NO_VANILLA)
        else:
            yield compare(data, key, group, base, statistic, metric, claim, scale)



"""The report's section on the paper's predictions: the primary verdicts first, then the
secondary ones by family, then the exploratory estimates; and predictions.csv.

Takes the :class:`robustmix.evaluations.report.ReportContext`; the comparisons and their verdicts
come from :func:`robustmix.evaluations.predictions.prediction_table`.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from robustmix.evaluations import error_rates
from robustmix.evaluations import statistics as st
from robustmix.evaluations.convergence import NOT_JUDGED
from robustmix.evaluations.markdown import md
from robustmix.evaluations.predictions import (CLAIMS, MIXUP_Q, prediction_table,
                                               secondary_comparisons)
from robustmix.evaluations.primary import CELL_FAMILY
from robustmix.evaluations.study_data import Runs
from robustmix.evaluations.verdicts import COLUMNS, EXPLORATORY, PRIMARY, SECONDARY
from robustmix.core import runs

CONFIRMATORY = ["comparison", "statistic", "measured", "effect", "ci_low", "ci_high",
                "ci_level", "p_value", "p_adjusted", "verdict", "note"]
ESTIMATE = ["comparison", "statistic", "measured", "effect", "ci_low", "ci_high", "note"]


def how_text(ctx) -> str:
    d = ctx.declaration
    origin = (f"those declared in {d.source}" if d.declared else
              "**not declared before the data** (no study declaration was given): the "
              "primary ε grid is the one at which every run has a worst-case row")
    return (
        f"How a verdict is reached. Roles: *primary*, *secondary*, *exploratory*. The "
        f"primary comparisons are {origin}: one per MSDA against vanilla, on the per-example "
        "worst case over every attack run at each ε (APGD / AutoAttack included), per run "
        "the robust ÷ clean accuracy averaged over the declared ε grid (the trapezoid mean "
        "over [ε_min, ε_max]: the same integral on any grid over that interval). Each "
        "comparison: Welch's t-test on the groups' per-run values (one per seed; for the "
        "primaries and secondaries its df capped at n − 1 of the group that dominates the "
        "standard error, which holds their level at a few runs with unequal variances), "
        "or where "
        "the runs of one seed share their initial weights and the statistic keeps that "
        "imprint (Q, for (d) and (e)) the paired t-test over seeds. Every family (the "
        "primaries; each secondary prediction) has its own Holm correction at a "
        f"family-wise {d.level:g}, over a number of hypotheses fixed by the design; a "
        "comparison that cannot be tested counts in it as retained. Intervals are named "
        "for what they cover: the primaries' are simultaneous (Bonferroni, each at 1 − "
        f"{d.level:g}/K over the K primaries, so all K cover their effects together with "
        f"probability ≥ {1 - d.level:.0%}) while the decisions stay Holm's (a primary "
        "rejected at a later Holm step whose simultaneous interval includes 0 says so); "
        "a secondary's is its \"Holm-step interval\", at the level of its Holm step, so "
        "a decided comparison's interval excludes 0 and an undecided one's includes it; the "
        "exploratory estimates carry unadjusted 95% intervals, labelled so, and no verdict "
        "word. \"No effect\" is a verdict only through an equivalence test (TOST) with a "
        f"margin declared in advance: (a) ±{d.gap_margin_acc * 100:g} pp accuracy gap and "
        f"±{d.gap_margin_loss:g} nats loss gap; (c) ±{d.profile_margin:g} in D. An "
        "equivalence claim (Mixup's D is vanilla's) holds where its TOST interval (1 − 2α) "
        "lies inside the margin, does not hold only where it lies wholly beyond it (the "
        "test of |difference| ≤ margin rejected), and is inconclusive otherwise. (d) is an "
        "intersection–union test: each model against every other model on its own mask, "
        "paired by seed; it holds only where every pairwise difference is negative and "
        "significant (p: the largest pairwise p), and the effect shown is against the "
        "decisive rival. A run whose worst case at a "
        "primary ε failed an attack-failure check gives its comparisons \"attack failure "
        "suspected\", not a verdict. Convergence: see the runs table; a run "
        f"{NOT_JUDGED} is named in the note of every verdict it enters.")


def predictions_section(ctx) -> None:
    """The paper's predictions: how they are tested, primary, secondary, exploratory."""
    rows = prediction_table(ctx.groups, ctx.per_run, ctx.robust, ctx.declaration)
    ctx.csv("predictions.csv", pd.DataFrame(rows, columns=COLUMNS))
    ctx.section("The paper's predictions on these runs", how_text(ctx))
    primary = [r for r in rows if r["role"] == PRIMARY]
    ctx.lines += [f"### Primary: {CLAIMS['b']}", ""]
    if primary:
        ctx.paragraph(_counts(primary) + f" Correction: {primary[0]['correction']}.")
        ctx.lines += md(CONFIRMATORY, [[r[c] for c in CONFIRMATORY] for r in primary])
    else:
        ctx.paragraph(f"None: no run has {runs.ROBUSTNESS} (run `robustmix attack`).")
    _secondary(ctx, [r for r in rows if r["role"] == SECONDARY])
    _per_study_error(ctx)
    _exploratory(ctx, [r for r in rows if r["role"] == EXPLORATORY])
    ctx.link("predictions.csv", "every comparison with its role, family, correction, "
                                "effect, interval (and its level), p and adjusted p")


def _counts(rows: list[dict[str, str]]) -> str:
    counts = Counter(r["verdict"] for r in rows)
    return "Verdicts: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "."


def _secondary(ctx, rows: list[dict[str, str]]) -> None:
    ctx.lines += ["### Secondary, one family each", ""]
    for family in dict.fromkeys(r["family"] for r in rows):
        mine = [r for r in rows if r["family"] == family]
        corrections = [r["correction"] for r in mine if r["correction"].startswith(st.HOLM)]
        ctx.lines += [f"**{mine[0]['prediction']}** (family {family}; "
                      f"{corrections[0] if corrections else 'nothing tested'})", ""]
        ctx.lines += md(CONFIRMATORY, [[r[c] for c in CONFIRMATORY] for r in mine])
    if any(MIXUP_Q in r["note"] for r in rows):
        ctx.paragraph("(d) and (e) use Q_A / Q_ref, in which the overall scale of the first "
                      "layer cancels (both are quadratic in W). For Mixup it is E[(1 − λ)²] "
                      "whatever the weights, so Mixup's (d) and (e) are not testable and "
                      "are not counted in their families.")


def _per_study_error(ctx) -> None:
    """The simulated chance of a false secondary verdict somewhere, and error_rates.csv."""
    data = Runs(ctx.groups, ctx.per_run, ctx.robust, ctx.declaration)
    outcome = error_rates.secondary_error(secondary_comparisons(data),
                                          level=ctx.declaration.level)
    if outcome is not None:
        ctx.csv("error_rates.csv", pd.DataFrame(error_rates.table(outcome),
                                                columns=error_rates.CSV_COLUMNS))
        ctx.paragraph(error_rates.statement(outcome))
        ctx.link("error_rates.csv", "each secondary family's simulated false-study rate")


def _exploratory(ctx, rows: list[dict[str, str]]) -> None:
    ctx.lines += ["### Exploratory estimates (no verdicts)", ""]
    shadows = [r for r in rows if r["family"] != CELL_FAMILY]
    if shadows:
        ctx.paragraph("The primary statistic under one attack alone (FGSM, PGD), with the "
                      "primaries' test and Holm family size: how the decision would have "
                      "gone on a weaker attack (unadjusted 95% intervals; the would-be "
                      "decision in the note). Where it differs from the primary verdict, "
                      "that verdict's note says so.")
        ctx.lines += md(ESTIMATE, [[r[c] for c in ESTIMATE] for r in shadows])
    cells = [r for r in rows if r["family"] == CELL_FAMILY]
    if cells:
        ctx.paragraph("Every (attack, ε) cell: MSDA − vanilla in percentage points of robust "
                      "÷ clean accuracy, with its unadjusted 95% interval; measured values "
                      "in predictions.csv.")
        ctx.lines += _cell_matrix(cells)


def _cell_matrix(rows: list[dict[str, str]]) -> list[str]:
    columns = list(dict.fromkeys(r["eps"] for r in rows))
    by = {(r["comparison"], r["eps"]): r for r in rows}
    lines = []
    for comparison in dict.fromkeys(r["comparison"] for r in rows):
        cells = [comparison]
        for eps in columns:
            r = by.get((comparison, eps))
            if r is None:
                cells.append("–")
            elif r["effect"]:
                cells.append(f"{float(r['effect']):+.1f} [{float(r['ci_low']):+.1f}, "
                             f"{float(r['ci_high']):+.1f}]")
            else:
                cells.append(r["note"].split(":")[0] or "–")
        lines.append(cells)
    return md(["comparison"] + columns, lines)

"""Two report sections on how much a robustness number can be trusted.

- **How much each weaker attack overstates**: per run, attack and ε, the attack's robust
  accuracy minus the worst case's on the same examples (percentage points; 0 when the
  attack found everything any attack found), and per method the mean over its runs.
- **Attack-failure diagnostics**: per run and ε, what the checks of
  :mod:`robustmix.attacks.diagnostics` found on the worst case (``passed`` or the failed checks),
  and every check of every run in one table. A run whose worst case failed a check has
  its robustness verdicts withheld ("attack failure suspected").
"""

from __future__ import annotations

import pandas as pd

from robustmix.attacks import diagnostics as checks_module
from robustmix.attacks.worst_case import WORST
from robustmix.evaluations.grouping import Group, summarize
from robustmix.evaluations.markdown import md as _md
from robustmix.evaluations.plots import attack_order

OVERSTATEMENT = "overstatement.csv"
DIAGNOSTICS = "diagnostics_by_run.csv"
OUTPUTS = (OVERSTATEMENT, DIAGNOSTICS)


def overstatement(robust: pd.DataFrame) -> pd.DataFrame:
    """Per run, attack, norm, ε and subset: robust accuracy minus the worst case's (pp)."""
    keys = ["run", "norm", "eps_key", "n_examples"]
    worst = robust[robust["attack"] == WORST][keys + ["robust_acc"]].rename(
        columns={"robust_acc": "worst_acc"})
    attacked = robust[robust["attack"] != WORST]
    frame = attacked.merge(worst, on=keys, how="inner")
    frame["overstates_pp"] = 100 * (frame["robust_acc"] - frame["worst_acc"])
    return frame[["run", "group", "attack", "norm", "eps", "eps_key", "n_examples",
                  "robust_acc", "worst_acc", "overstates_pp"]]


def overstatement_section(ctx) -> None:
    ctx.section("How much each weaker attack overstates robustness")
    if ctx.robust is None or not (ctx.robust["attack"] == WORST).any():
        ctx.paragraph("Skipped: no run has worst-case rows (run `robustmix attack`).")
        return
    frame = overstatement(ctx.robust)
    ctx.csv(OVERSTATEMENT, frame)
    ctx.paragraph(
        "Robust accuracy under each attack minus the per-example worst case over every "
        "attack run at that ε on the same examples, in percentage points (mean ± std over "
        "a method's runs): what a report on that attack alone would have overstated. 0: "
        "the attack broke everything any attack broke.")
    for norm in ("linf", "l2"):
        part = frame[frame["norm"] == norm]
        if not part.empty:
            ctx.lines += _table(part, ctx.groups, norm)
    ctx.lines += _sentences(frame, ctx.groups)
    ctx.link(OVERSTATEMENT, "per run, attack and ε: robust, worst case and the difference")


def _table(frame: pd.DataFrame, groups: list[Group], norm: str) -> list[str]:
    attacks = attack_order(frame["attack"].unique().tolist())
    header = ["attack", "ε"] + [g.name for g in groups]
    rows = []
    for attack in attacks:
        for (eps_key, n), at in frame[frame["attack"] == attack].groupby(
                ["eps_key", "n_examples"], sort=True):
            cells = [attack, f"{at['eps'].iloc[0]} ({int(n)} ex.)"]
            for group in groups:
                mean, std, count = summarize(at.loc[at["group"] == group.name,
                                                    "overstates_pp"].tolist())
                cells.append("–" if count == 0 else f"{mean:+.1f}" + (
                    f" ± {std:.1f}" if count > 1 else ""))
            rows.append(cells)
    return [f"**{norm}**", ""] + _md(header, rows)


def _sentences(frame: pd.DataFrame, groups: list[Group]) -> list[str]:
    """Per weaker attack: at the ε where it overstates some method most, by how much it
    overstates each method there."""
    lines = []
    means = frame.groupby(["attack", "eps_key", "eps", "group"], sort=False)[
        "overstates_pp"].mean().reset_index()
    for attack in attack_order(means["attack"].unique().tolist()):
        mine = means[means["attack"] == attack]
        if mine.empty or mine["overstates_pp"].max() <= 0:
            continue
        top = mine.loc[mine["overstates_pp"].idxmax()]
        at = mine[mine["eps_key"] == top["eps_key"]].set_index("group")["overstates_pp"]
        parts = [f"{g.name} by {at[g.name]:.1f}" for g in groups if g.name in at.index]
        lines.append(f"- {attack} overstates at {top['eps']}: " + ", ".join(parts)
                     + " points.")
    return (lines + [""]) if lines else []


def diagnostics_section(ctx) -> None:
    ctx.section("Attack-failure diagnostics")
    rows = _all_checks(ctx)
    if not rows:
        ctx.paragraph("Skipped: no run has diagnostics (`robustmix attack` runs them "
                      "unless `--no-diagnostics`).")
        return
    frame = pd.DataFrame(rows)
    ctx.csv(DIAGNOSTICS, frame)
    ctx.paragraph(
        "The checks that would reveal a failing attack (Carlini et al. 2019; Pintor et al. "
        "2022; AutoAttack's own), on the examples the worst case leaves standing at each "
        "ε. A run whose worst case fails one gets \"attack failure suspected: CHECK\" "
        "instead of a robustness verdict.")
    ctx.lines += _md(["check", "fails when", "threshold"],
                     [[name, *checks_module.descriptions()[name]]
                      for name in checks_module.CHECKS])
    ctx.lines += _worst_table(ctx)
    failed = frame[frame["passed"] == "no"]
    ctx.paragraph(f"{len(failed)} of {len(frame)} checks failed"
                  + (": " + "; ".join(f"{r.run} {r.check} on {r.attack} at {r.eps} "
                                       f"({r.detail})" for r in failed.head(12).itertuples())
                     + ("; ..." if len(failed) > 12 else "") if len(failed) else "") + ".")
    ctx.link(DIAGNOSTICS, "every check of every run: value, threshold, passed")


def _all_checks(ctx) -> list[dict]:
    rows = []
    for record in ctx.records:
        path = record.info.diagnostics_path
        if path.is_file():
            rows += [{"run": record.name, **row} for row in checks_module.read(path)]
    return rows


def _worst_table(ctx) -> list[str]:
    """Per run, the worst case's diagnostics at each ε (from robustness.csv)."""
    if ctx.robust is None or "diagnostics" not in ctx.robust.columns:
        return []
    worst = ctx.robust[ctx.robust["attack"] == WORST]
    columns = list(dict.fromkeys(worst.sort_values("eps_key")["eps"]))
    rows = []
    for run, mine in worst.groupby("run", sort=False):
        by_eps = dict(zip(mine["eps"], mine["diagnostics"]))
        rows.append([run] + [by_eps.get(e, "–") or "not run" for e in columns])
    return ["Worst case per run and ε:", ""] + _md(["run"] + columns, rows)


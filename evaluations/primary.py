"""Prediction (b), robustness: the primary comparisons, and every cell as an estimate.

Primary (declared before the data, :mod:`robustmix.evaluations.declaration`): per MSDA against
vanilla, per run the robust ÷ clean accuracy of the worst-case rows (per example the
worst over every attack run at that ε, the strong attack included) averaged over the
declared uniform ε grid (:func:`~robustmix.evaluations.declaration.grid_mean`); Welch's t-test; Holm
over the primaries at the declared level. A comparison is "not measured", with the reason,
when a run lacks a worst-case row at a grid ε, or its worst case there was made without the
strong attack (one as strong as APGD by the attack registry's strength: APGD, AutoAttack or a
plugin registered so); "attack failure suspected: CHECK" when a run's
worst-case row at a grid ε failed an attack-failure check. Both stay in the family.

The same statistic under FGSM alone and under PGD alone is computed too, with the same
test and the same Holm family size; where it would have decided otherwise the primary's
note says so. Those, and every per-ε, per-attack cell, are exploratory estimates.
"""

from __future__ import annotations

from robustmix.attacks.registry import is_strong
from robustmix.attacks.worst_case import WORST, attacks_of
from robustmix.evaluations import statistics as st
from robustmix.evaluations.declaration import grid_mean
from robustmix.evaluations.grouping import Group
from robustmix.evaluations.study_data import flag_convergence, msda, pair_text
from robustmix.evaluations.verdicts import (EXPLORATORY, PRIMARY, Comparison, Judged, in_phase,
                                            judge, row)
from robustmix.core import runs

FAMILY = "(b) primary"
SHADOWS = ("fgsm", "pgd")
CELL_FAMILY = "(b) per eps and attack"


def rows(data, prediction: str) -> list[dict[str, str]]:
    """Every (b) row: the primaries (judged), their FGSM/PGD shadows and the cells."""
    if data.robust is None:
        missing = [_absent(m, f"no run has {runs.ROBUSTNESS} (run robustmix attack)")
                   for m in data.declaration.methods or (g.method for g, _ in msda(data))]
        return [row(prediction, j) for j in judge(in_phase(missing, data.declaration.phase),
                                                  data.declaration.level)]
    grid, note = primary_grid(data)
    primaries = [build(data, g, base, WORST, grid, note) for g, base in msda(data)]
    phase = data.declaration.phase
    judged = judge(in_phase(primaries + _undeclared(data), phase), data.declaration.level)
    out = []
    shadows: list[Judged] = []
    for attack in SHADOWS:
        mine = [build(data, g, base, attack, grid, note) for g, base in msda(data)]
        would = judge(in_phase(mine + _undeclared(data, attack), phase),
                      data.declaration.level)
        _compare_decisions(judged, would, attack)
        shadows += [_as_estimate(j, attack) for j in would]
    out += [row(prediction, j) for j in judged] + [row(prediction, j) for j in shadows]
    cells = [c for g, base in msda(data) for c in _cells(data, g, base)]
    return out + [row(prediction, j) for j in judge(cells)]


def _absent(method: str, why: str, family: str = FAMILY) -> Comparison:
    return Comparison("b", PRIMARY, family, f"{method} vs vanilla", "", [], [], "higher",
                      premise=(st.NOT_MEASURED, why))


def _undeclared(data, attack: str = WORST) -> list[Comparison]:
    """The declared primaries with no group: not measured, still in the family."""
    present = {g.method for g, _ in msda(data)}
    return [_absent(m, f"no run of {m}", _family(attack)) for m in data.declaration.methods
            if m not in present]


def _family(attack: str) -> str:
    return FAMILY if attack == WORST else f"(b) primary statistic under {attack} alone"


def primary_grid(data) -> tuple[list[tuple[float, str]], str]:
    """The declared grid, or where none was declared the ε (of the declared norm) at which
    every run has a worst-case row, with a note saying so."""
    declared = data.declaration.grid()
    if declared:
        return declared, f"declared in {data.declaration.source or 'the study'}"
    norm = data.declaration.norm
    worst = data.robust[(data.robust["attack"] == WORST) & (data.robust["norm"] == norm)
                        & (data.robust["eps_key"] > 0)]
    counts = worst.groupby("eps_key")["run"].nunique()
    everyone = counts[counts == len(set(data.per_run["run"]))].index
    label = dict(zip(worst["eps_key"], worst["eps"]))
    grid = [(key, label[key]) for key in sorted(everyone)]
    return grid, ("not declared before the data: the eps at which every run has a "
                  "worst-case row")


def build(data, group: Group, base: Group | None, attack: str,
          grid: list[tuple[float, str]], origin: str) -> Comparison:
    """One MSDA's primary comparison (or its shadow under ``attack`` alone)."""
    # a shadow (FGSM or PGD alone) is judged as a primary, then shown as an estimate
    role, family = PRIMARY, _family(attack)
    span = f"[{grid[0][1]}, {grid[-1][1]}]" if grid else "[]"
    statistic = (f"{attack}: robust / clean accuracy, mean over eps in {span} "
                 f"({data.declaration.norm}, %)")
    c = Comparison("b", role, family, f"{group.name} vs vanilla", statistic, [], [], "higher",
                   eps=f"mean {span}", scale=100.0)
    c.notes.append(f"grid {', '.join(text for _, text in grid)} ({origin})")
    if base is None:
        c.premise = (st.NOT_MEASURED, "no vanilla run with the same settings")
        return c
    if not grid:
        c.premise = (st.NOT_MEASURED, "no eps at which every run has a worst-case row")
        return c
    a, problems_a = run_values(data, group, attack, grid)
    b, problems_b = run_values(data, base, attack, grid)
    c.a, c.b = a, b
    problems = {k: problems_a[k] + problems_b[k] for k in problems_a}
    if problems["missing"]:
        c.premise = (st.NOT_MEASURED, _by_reason(problems["missing"]))
        return c
    c.measured = pair_text(group, a, base, b, 100.0)
    if problems["failed"]:
        names = sorted({n for _, n in problems["failed"]})
        c.premise = (f"{st.ATTACK_FAILURE}: {','.join(names)}", _by_reason(
            [(run, f"worst case at a primary eps failed {name}")
             for run, name in dict.fromkeys(problems["failed"])]))
    elif _subsets(data, group, base, attack, grid):
        c.premise = (st.NOT_MEASURED, _subsets(data, group, base, attack, grid))
    flag_convergence(data, c, group, base)
    return c


def run_values(data, group: Group, attack: str, grid: list[tuple[float, str]], *,
               strong: bool = True) -> tuple[list[float], dict[str, list]]:
    """Per run of ``group``: the grid mean of ``attack``'s robust / clean; and the problems
    ("missing": why a run has no value; "failed": (run, check) of failed diagnostics).
    ``strong=False`` takes worst-case rows made without the strong attack too (for a
    power calculation on a pilot, never for a verdict)."""
    norm = data.declaration.norm
    values, missing, failed = [], [], []
    for run in data.members(group):
        at = {key: data.cells.get((run, norm, attack, key)) for key, _ in grid}
        absent = [text for key, text in grid if at[key] is None]
        if absent:
            missing.append((run, f"no {attack} row at eps {', '.join(absent)}"))
            continue
        if attack == WORST:
            weak = [text for key, text in grid if strong and not _strong(at[key])]
            if weak:
                missing.append((run, f"the worst case at eps {', '.join(weak)} was made "
                                     "without the strong attack (APGD / AutoAttack)"))
                continue
            failed += [(run, name) for key, _ in grid for name in _failed_checks(at[key])]
        values.append(grid_mean([at[key]["conditional"] for key, _ in grid],
                                [key for key, _ in grid]))
    return values, {"missing": missing, "failed": failed}


def _by_reason(problems: list[tuple[str, str]]) -> str:
    """"REASON: run, run; REASON2: run" from (run, reason) pairs."""
    reasons: dict[str, list[str]] = {}
    for run, reason in problems:
        reasons.setdefault(reason, []).append(run)
    return "; ".join(f"{reason} ({len(names)} run{'s' if len(names) > 1 else ''}: "
                     f"{', '.join(names)})" for reason, names in reasons.items())


def _strong(worst: dict) -> bool:
    """Whether a worst-case row includes the strong attack: one of the attacks its
    ``settings`` name is as strong as APGD (:func:`robustmix.attacks.registry.is_strong`)."""
    return any(is_strong(name) for name in attacks_of(str(worst.get("settings", "") or "")))


def _failed_checks(worst: dict) -> list[str]:
    text = str(worst.get("diagnostics", "") or "").strip()
    if not text.startswith("failed"):
        return []
    names = text.split(":", 1)[1] if ":" in text else "unnamed"
    return [n.strip() for n in names.split(",") if n.strip()] or ["unnamed"]


def _subsets(data, group: Group, base: Group, attack: str, grid) -> str:
    norm = data.declaration.norm
    sizes = sorted({data.cells[key]["n_examples"] for g in (group, base)
                    for run in data.members(g) for k, _ in grid
                    if (key := (run, norm, attack, k)) in data.cells})
    if len(sizes) > 1:
        return (f"attacked on different example subsets (n = {', '.join(map(str, sizes))}): "
                "not like with like")
    return ""


def _compare_decisions(primaries: list[Judged], would: list[Judged], attack: str) -> None:
    """Note on each primary where ``attack`` alone would have decided otherwise."""
    for real, shadow in zip(primaries, would):
        decided = (st.HOLDS, st.FAILS)
        if shadow.verdict in decided and shadow.verdict != real.verdict:
            real.notes.append(f"{shadow.verdict} under {attack} alone, not under the worst "
                              "case")
        elif real.verdict in decided and shadow.verdict != real.verdict:
            real.notes.append(f"{real.verdict} under the worst case; under {attack} alone: "
                              f"{shadow.verdict}")


def _as_estimate(j: Judged, attack: str) -> Judged:
    """A shadow comparison shown as an estimate, its would-be decision in the note."""
    c = j.comparison
    c.role = EXPLORATORY
    if j.test is not None and j.p_adjusted is not None:   # none in a pilot: no decisions
        c.notes.append(f"under {attack} alone, with the primaries' test and Holm family, "
                       f"this would be: {j.verdict} (adjusted p {j.p_adjusted:.3g})")
    return Judged(c, j.test)


def _cells(data, group: Group, base: Group | None):
    """Every (attack, ε) cell of one MSDA against vanilla: an estimate."""
    if base is None:
        return
    present = {(key[1], key[2], key[3]) for key in data.cells if key[3] > 0}
    named = {attack for _, attack, _ in present}
    attacks = [a for a in (*SHADOWS, *sorted(named - {*SHADOWS, WORST}), WORST) if a in named]
    for norm in ("linf", "l2"):
        for attack in attacks:
            for key in sorted(k for n, a, k in present if (n, a) == (norm, attack)):
                yield from _cell(data, group, base, norm, attack, key)


def _cell(data, group: Group, base: Group, norm: str, attack: str, key: float):
    rows = [[data.cells[c] for run in sorted(data.members(g))
             if (c := (run, norm, attack, key)) in data.cells] for g in (group, base)]
    if not rows[0] or not rows[1]:
        return
    a, b = ([r["conditional"] for r in part] for part in rows)
    c = Comparison("b", EXPLORATORY, CELL_FAMILY, f"{group.name} vs vanilla, {attack}",
                   f"{attack}: robust / clean accuracy, {norm} (%)", a, b, "higher",
                   eps=rows[0][0]["eps"], scale=100.0)
    c.measured = pair_text(group, a, base, b, 100.0)
    if len({r["n_examples"] for part in rows for r in part}) > 1:
        c.premise = (st.NOT_MEASURED, "attacked on different example subsets")
    flag_convergence(data, c, group, base)
    yield c

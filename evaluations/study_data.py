"""What the predictions read: the runs' per-run values by group and seed, the robustness
rows and the declaration; and the helpers every prediction's builder shares (convergence
flags, the measured text)."""

from __future__ import annotations

from typing import Iterator

import pandas as pd

from robustmix.evaluations import statistics as st
from robustmix.evaluations.declaration import Declaration
from robustmix.evaluations.grouping import Group, summarize
from robustmix.evaluations.verdicts import Comparison
from robustmix.core import runs

NO_VANILLA = "no vanilla run with the same settings"


class Runs:
    """The per-run values the predictions read, by group, and the declaration.

    The frames are indexed once here (by group, run, attack and ε), so that the hundreds
    of comparisons of a study read plain dicts rather than filter frames each time.
    """

    def __init__(self, groups: list[Group], per_run: pd.DataFrame, robust: pd.DataFrame | None,
                 declaration: Declaration):
        self.groups, self.per_run, self.robust = groups, per_run, robust
        self.declaration = declaration
        self._rows = {name: part for name, part in per_run.groupby("group", sort=False)}
        self._state = {r["run"]: (r.get("converged", True), r.get("convergence", ""))
                       for r in per_run.to_dict("records")}
        self.cells: dict[tuple, dict] = {}
        if robust is not None:
            for r in robust.to_dict("records"):
                self.cells[(r["run"], r["norm"], r["attack"], r["eps_key"])] = r

    def members(self, group: Group) -> list[str]:
        rows = self._rows.get(group.name)
        return [] if rows is None else rows["run"].tolist()

    def values(self, group: Group, metric: str) -> list[float]:
        return list(self.by_seed(group, metric).values())

    def by_seed(self, group: Group, metric: str) -> dict[int, float]:
        """The group's values of ``metric`` keyed by seed (in the order of its runs)."""
        rows = self._rows.get(group.name)
        if rows is None or metric not in rows.columns:
            return {}
        seeds = rows["seed"] if "seed" in rows.columns else range(len(rows))
        return {int(s): float(v) for s, v in zip(seeds, rows[metric])}

    def of_method(self, family: str, method: str) -> Group | None:
        same = [g for g in self.groups if g.family == family and g.method == method]
        return same[0] if len(same) == 1 else None

    def vanilla_of(self, group: Group) -> Group | None:
        return self.of_method(group.family, "vanilla")

    def unconverged(self, *groups: Group) -> list[str]:
        states = [(run, self._state[run]) for g in groups for run in self.members(g)]
        return [f"{run} ({why})" for run, (ok, why) in states
                if ok is not None and not pd.isna(ok) and not ok]

    def not_judged(self, *groups: Group) -> list[str]:
        """Runs whose convergence could not be judged (no held-out data)."""
        states = [(run, self._state[run]) for g in groups for run in self.members(g)]
        return [run for run, (ok, _) in states if ok is None or pd.isna(ok)]


def flag_convergence(data: Runs, c: Comparison, *groups: Group) -> None:
    late = data.unconverged(*groups)
    if late and c.premise is None:
        c.premise = (st.UNCONVERGED, "unconverged: " + ", ".join(late))
    unjudged = data.not_judged(*groups)
    if unjudged:
        c.notes.append(f"convergence not judged (no held-out data): {len(unjudged)} run"
                       f"{'s' if len(unjudged) > 1 else ''}")


def msda(data: Runs) -> Iterator[tuple[Group, Group | None]]:
    for group in data.groups:
        if group.method != "vanilla":
            yield group, data.vanilla_of(group)


def pair_text(ga: Group, a: list[float], gb: Group, b: list[float], scale: float) -> str:
    if not summarize(a)[2] or not summarize(b)[2]:
        return (f"no {runs.GENERALIZATION}, {runs.ROBUSTNESS} or {runs.CORRUPTIONS} value "
                "(run robustmix evaluate / attack)")
    return f"{ga.name} {fmt(a, scale)} vs {gb.name} {fmt(b, scale)}"


def fmt(values: list[float], scale: float) -> str:
    mean, std, n = summarize(values)
    text = f"{mean * scale:.3g}"
    if n > 1:
        text += f" ± {std * scale:.2g}"
    return f"{text} (n={n})"

"""What the predictions read: the runs' per-run values by group and seed, the robustness
rows and the declaration; and the helpers every prediction's builder shares (convergence
flags, the measured text)."""

from __future__ import annotations

from typing import Iterator

import pandas as pd

from evaluations import statistics as st
from evaluations.declaration import Declaration
from evaluations.grouping import Group, summarize
from evaluations.verdicts import Comparison
from robustmix.core import runs

NO_VANILLA = "no vanilla run with the same settings"


class Runs:
    """The per-run values the predictions read, by group, and the declaration."""

    def __init__(self, groups: list[Group], per_run: pd.DataFrame, robust: pd.DataFrame | None,
                 declaration: Declaration):
        self.groups, self.per_run, self.robust = groups, per_run, robust
        self.declaration = declaration

    def values(self, group: Group, metric: str) -> list[float]:
        return list(self.by_seed(group, metric).values())

    def by_seed(self, group: Group, metric: str) -> dict[int, float]:
        """The group's values of ``metric`` keyed by seed (in the order of its runs)."""
        if metric not in self.per_run.columns:
            return {}
        rows = self.per_run[self.per_run["group"] == group.name]
        seeds = rows["seed"] if "seed" in rows.columns else range(len(rows))
        return {int(s): float(v) for s, v in zip(seeds, rows[metric])}

    def of_method(self, family: str, method: str) -> Group | None:
        same = [g for g in self.groups if g.family == family and g.method == method]
        return same[0] if len(same) == 1 else None

    def vanilla_of(self, group: Group) -> Group | None:
        return self.of_method(group.family, "vanilla")

    def unconverged(self, *groups: Group) -> list[str]:
        if "converged" not in self.per_run.columns:
            return []
        rows = self.per_run[self.per_run["group"].isin([g.name for g in groups])]
        return [f"{r.run} ({r.convergence})" for r in rows.itertuples()
                if r.converged is False or r.converged == 0]

    def not_judged(self, *groups: Group) -> list[str]:
        """Runs whose convergence could not be judged (no held-out data)."""
        if "converged" not in self.per_run.columns:
            return []
        rows = self.per_run[self.per_run["group"].isin([g.name for g in groups])]
        return [str(r.run) for r in rows.itertuples() if pd.isna(r.converged)]


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

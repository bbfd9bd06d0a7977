"""Synthetic studies shaped like the real one, for the verdict path's calibration tests.

One vanilla group and six MSDA groups with the seeds per method of an allocation; per run
every measurement the predictions read: the per-run metrics of (a), (c), (d), (e),
corruptions and calibration, and robustness rows for FGSM, PGD, APGD and the worst case
at every ε of a uniform grid. Robustness is correlated as in a study: a run's own level
shifts every ε and attack together, ε adds a falling curve, and the attacks are nested
(worst ≤ APGD ≤ PGD ≤ FGSM). Effects are in units of the seed standard deviation of each
statistic, so "a real effect of size d" means the same thing for every prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from robustmix.attacks.eps import Eps
from robustmix.evaluations.declaration import Declaration
from robustmix.evaluations.grouping import Group

METHODS = ("vanilla", "mixup", "cutmix", "stochastic", "hmix", "gmix", "puzzlemix")
EPS = tuple(k / 255 for k in (12, 16, 20, 24, 28, 32))
GRID = ",".join(f"{k}/255" for k in (12, 16, 20, 24, 28, 32))
# per-run statistics: (column, mean, seed sd); a Q column per mask
SECONDARY = {"gap_acc": (0.005, 0.002), "gap_loss": (0.013, 0.003),
             "profile_decay": (0.6, 0.01), "corrupted_acc": (0.78, 0.01),
             "ece": (0.05, 0.01), **{f"q_relative.{m}": (0.4, 0.004) for m in METHODS}}
ROBUST_SD = 0.02          # the seed sd of a run's robust / clean level
CELL_SD = 0.01            # what each (ε, attack) cell adds on top, per run


@dataclass
class Effects:
    """True effects (MSDA − vanilla) in seed sds: ``robust`` for (b), ``secondary`` per
    statistic column (e.g. {"gap_acc": -3}); everything unlisted is null."""

    robust: dict[str, float] = field(default_factory=dict)
    secondary: dict[str, dict[str, float]] = field(default_factory=dict)


def allocation(n_vanilla: int, n_msda: int, methods=METHODS) -> dict[str, int]:
    return {m: n_vanilla if m == "vanilla" else n_msda for m in methods}


def declaration(eps=EPS) -> Declaration:
    return Declaration(primary_eps=",".join(f"{round(e * 255)}/255" for e in eps),
                       source="the synthetic study")


def study(rng: np.random.Generator, seeds: dict[str, int], effects: Effects | None = None,
          eps=EPS) -> tuple[list[Group], pd.DataFrame, pd.DataFrame]:
    """(groups, per-run frame, robustness frame) of one synthetic study of the methods
    in ``seeds`` (vanilla first), at the ε of ``eps``."""
    effects = effects or Effects()
    methods = list(seeds)
    groups = [Group(m, m, {"mix.mix": m}, "digits", [f"{m}-s{s}" for s in range(seeds[m])])
              for m in methods]
    init = {s: rng.normal(0, 1) for s in range(max(seeds.values()))}   # a seed's imprint
    per_run, robust = [], []
    for method in methods:
        for seed in range(seeds[method]):
            run = f"{method}-s{seed}"
            per_run.append(_metrics(rng, run, method, seed, init[seed], effects))
            robust += _robust_rows(rng, run, method, effects.robust.get(method, 0.0), eps)
    return groups, pd.DataFrame(per_run), pd.DataFrame(robust)


def _metrics(rng, run: str, method: str, seed: int, imprint: float, effects: Effects) -> dict:
    row = {"run": run, "group": method, "method": method, "seed": seed, "converged": True,
           "convergence": ""}
    for column, (mean, sd) in SECONDARY.items():
        shift = effects.secondary.get(method, {}).get(column, 0.0)
        if column.startswith("q_relative."):   # Q keeps the seed's initialization: paired
            value = mean + sd * (0.7 * imprint + np.sqrt(1 - 0.49) * rng.normal() + shift)
        else:
            value = mean + sd * (rng.normal() + shift)
        row[column] = value
    return row


def _robust_rows(rng, run: str, method: str, effect: float, grid=EPS) -> list[dict]:
    level = ROBUST_SD * (rng.normal() + effect)
    rows = []
    for eps in grid:
        base = 0.95 - 2.5 * eps + level
        fgsm = base + 0.10 + CELL_SD * rng.normal()
        pgd = min(fgsm, base + 0.05 + CELL_SD * rng.normal())
        apgd = min(pgd, base + CELL_SD * rng.normal())
        worst = min(apgd, base - 0.01 + CELL_SD * rng.normal())
        for attack, value, evaluation in (("fgsm", fgsm, "FGSM"), ("pgd", pgd, "PGD"),
                                          ("apgd", apgd, "APGD"),
                                          ("worst-case", worst, "worst of FGSM, PGD, APGD")):
            rows.append({"run": run, "group": method, "attack": attack, "norm": "linf",
                         "eps": f"{round(eps * 255)}/255",
                         "eps_key": Eps(f"{round(eps * 255)}/255").value,
                         "n_examples": 200, "clean_acc": 1.0, "robust_acc": value,
                         "conditional": value, "evaluation": evaluation,
                         "diagnostics": "passed"})
    return rows


DECLARATION = declaration()

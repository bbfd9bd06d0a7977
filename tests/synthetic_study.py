"""Synthetic studies shaped like the real one, for the verdict path's calibration tests.

One vanilla group and six MSDA groups with the seeds per method of an allocation; per run
every measurement the predictions read: the per-run metrics of (a), (c), (d), (e),
corruptions and calibration, and robustness rows for FGSM, PGD, APGD and the worst case
at every ε of the digits preset's grid. Each method's statistics have the seed sd the
committed study measured (docs/study/predictions.csv, as its "measured" texts print them,
2-3 significant digits), so variances differ between groups as much as there (ECE: ~85
times); under the null every method of a statistic shares one mean (the mean of the
measured method means). Seeds are heavy-tailed (Student's t with 3 df, scaled to the sd;
``tails=None``: normal), and a statistic in (0, 1) is drawn in (0, 1), skewed towards its
near bound (:func:`robustmix.evaluations.error_rates.draw`). Robustness is correlated as
in a study: a run's own level shifts every ε and attack together, ε adds a falling curve,
and the attacks are nested (worst ≤ APGD ≤ PGD ≤ FGSM). Effects are in units of each
method's own seed sd, so "a real effect of size d" means the same for every prediction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from robustmix.app.presets import PRESETS
from robustmix.attacks.eps import Eps
from robustmix.attacks.worst_case import describe as worst_settings
from robustmix.evaluations import error_rates as er
from robustmix.evaluations.declaration import Declaration
from robustmix.evaluations.grouping import Group

METHODS = ("vanilla", "mixup", "cutmix", "stochastic", "hmix", "gmix", "puzzlemix")
GRID = PRESETS["digits"]["attack"]["eps"]                  # the preset's current grid
EPS = tuple(Eps(text).value for text in GRID.split(","))
STUDY = Path(__file__).resolve().parents[1] / "docs" / "study"
TAILS = er.TAIL_DF
Q_RHO = 0.9       # a seed's imprint on Q (q_matrix.csv's rho_vs_vanilla: 0.81-0.93)
CELL_SD = 0.01    # what each (ε, attack) cell adds on top of a run's level, per run
WORST_SETTINGS = worst_settings(["apgd", "fgsm", "pgd"])   # as robustmix attack writes it
# the predictions' statistic texts -> (per-run column, the scale they are printed at)
COLUMNS = {"clean accuracy gap train - test (pp)": ("gap_acc", 100.0),
           "clean loss gap test - train (nats)": ("gap_loss", 1.0),
           "profile decay D (higher: flatter)": ("profile_decay", 1.0),
           "mean accuracy over the corrupted test cells (%)": ("corrupted_acc", 100.0),
           "ECE of the clean test set": ("ece", 1.0)}
UNBOUNDED = {"gap_acc", "gap_loss"}   # differences: negative values happen
_PAIR = re.compile(r"(\S+) (-?[\d.e+-]+) ± ([\d.e+-]+) \(n=(\d+)\)")


def measured(folder: Path = STUDY) -> dict[str, dict[str, tuple[float, float]]]:
    """Per statistic column ("robust" for the primary), per method, (mean, seed sd) in the
    statistic's own units, read from the "measured" texts of a study's predictions.csv."""
    rows = pd.read_csv(folder / "predictions.csv", keep_default_na=False)
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for r in rows[rows["role"] != "exploratory"].to_dict("records"):
        column, scale = _column(r["statistic"], r["role"])
        for name, mean, sd, _ in _PAIR.findall(r["measured"]) if column else ():
            out.setdefault(column, {})[name] = (float(mean) / scale, float(sd) / scale)
    return out


def _column(statistic: str, role: str) -> tuple[str | None, float]:
    if role == "primary":
        return "robust", 100.0
    if statistic.startswith("Q_"):
        return "q_relative." + statistic[2:].split(" ")[0], 1.0
    return COLUMNS.get(statistic, (None, 1.0))


MEASURED = measured()
# per column: (the null mean shared by every method, {method: seed sd})
SECONDARY = {column: (float(np.mean([m for m, _ in by.values()])),
                      {k: sd for k, (_, sd) in by.items()})
             for column, by in MEASURED.items() if column != "robust"}
ROBUST = MEASURED["robust"]
ROBUST_SD = ROBUST["vanilla"][1]


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
          eps=EPS, tails=TAILS) -> tuple[list[Group], pd.DataFrame, pd.DataFrame]:
    """(groups, per-run frame, robustness frame) of one synthetic study of the methods
    in ``seeds`` (vanilla first), at the ε of ``eps``; seeds drawn with ``tails``
    (Student's t df, None: normal)."""
    effects = effects or Effects()
    methods = list(seeds)
    groups = [Group(m, m, {"mix.mix": m}, "digits", [f"{m}-s{s}" for s in range(seeds[m])])
              for m in methods]
    init = {s: er.noise(rng, 1, tails)[0] for s in range(max(seeds.values()))}  # a seed's imprint
    per_run, robust = [], []
    for method in methods:
        for seed in range(seeds[method]):
            run = f"{method}-s{seed}"
            per_run.append(_metrics(rng, run, method, seed, init[seed], effects, tails))
            robust += _robust_rows(rng, run, method, effects.robust.get(method, 0.0), eps,
                                   tails)
    return groups, pd.DataFrame(per_run), pd.DataFrame(robust)


def robust_sd(method: str) -> float:
    """The seed sd of a method's primary statistic (vanilla's for a method not measured)."""
    return ROBUST.get(method, ROBUST["vanilla"])[1]


def _metrics(rng, run: str, method: str, seed: int, imprint: float, effects: Effects,
             tails) -> dict:
    row = {"run": run, "group": method, "method": method, "seed": seed, "converged": True,
           "convergence": ""}
    for column, (mean, sds) in SECONDARY.items():
        sd = sds.get(method, float(np.median(list(sds.values()))))
        mean = mean + sd * effects.secondary.get(method, {}).get(column, 0.0)
        if column.startswith("q_relative."):   # Q keeps the seed's initialization: paired
            e = er.noise(rng, 1, tails)[0]
            row[column] = mean + sd * (Q_RHO * imprint + np.sqrt(1 - Q_RHO ** 2) * e)
        else:
            arm = er.Arm(column, mean, sd, 1, column not in UNBOUNDED)
            row[column] = float(er.draw(rng, arm, 1, mean, tails)[0, 0])
    return row


def _robust_rows(rng, run: str, method: str, effect: float, grid=EPS, tails=TAILS) -> list[dict]:
    # the run's level: its method's measured sd less what the cells add to a grid mean
    sd = robust_sd(method)
    level = np.sqrt(max(sd ** 2 - (CELL_SD / 2) ** 2, (sd / 2) ** 2)) * er.noise(rng, 1, tails)[0]
    level += sd * effect
    centre = ROBUST["vanilla"][0] + 0.01 + 2.5 * np.mean(grid)   # vanilla's grid mean
    rows = []
    for eps in grid:
        base = centre - 2.5 * eps + level
        fgsm = base + 0.10 + CELL_SD * rng.normal()
        pgd = min(fgsm, base + 0.05 + CELL_SD * rng.normal())
        apgd = min(pgd, base + CELL_SD * rng.normal())
        worst = min(apgd, base - 0.01 + CELL_SD * rng.normal())
        for attack, value, evaluation in (("fgsm", fgsm, "FGSM"), ("pgd", pgd, "PGD"),
                                          ("apgd", apgd, "APGD"),
                                          ("worst-case", worst, "worst of FGSM, PGD, APGD")):
            settings = WORST_SETTINGS if attack == "worst-case" else ""
            rows.append({"run": run, "group": method, "attack": attack, "settings": settings,
                         "norm": "linf",
                         "eps": f"{round(eps * 255)}/255",
                         "eps_key": Eps(f"{round(eps * 255)}/255").value,
                         "n_examples": 200, "clean_acc": 1.0, "robust_acc": value,
                         "conditional": value, "evaluation": evaluation,
                         "diagnostics": "passed"})
    return rows


DECLARATION = declaration()

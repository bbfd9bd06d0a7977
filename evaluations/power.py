"""How many seeds the primary comparisons need: power and flip rate from a pilot study.

Reads the per-run values of the primary statistic (robust ÷ clean accuracy of the
worst-case rows, the trapezoid mean over the ε grid: :mod:`robustmix.evaluations.primary`) from a
study folder, per method: the mean and the seed standard deviation. For each candidate
allocation (``n0`` vanilla runs, ``n1`` runs of every MSDA) it gives, per primary:

- **power**: the probability that the primary "holds", by simulation of whole studies
  through the report's own test and correction: every group's runs drawn from a normal
  law with the pilot's mean and sd, one vanilla group shared by every comparison (as in a
  study), Welch's t-test (``scipy.stats.ttest_ind``, as :func:`robustmix.evaluations.statistics.welch`)
  and Holm over the primaries (:func:`robustmix.evaluations.statistics.holm`);
- an analytic cross-check, ``nct``: the noncentral-t power of Welch's test at the
  Bonferroni level α/K (Holm rejects at least what Bonferroni does) with the
  Welch–Satterthwaite degrees of freedom at the pilot's sds; below the simulation where
  that approximation holds, above it with 3 or 4 runs a group, where Welch's statistic is
  further from a t than its degrees of freedom say (trust the simulation);
- the expected **flip rate** between two independent reruns, 2p(1 − p) for decision
  probability p: how often a rerun of the same study decides the other way.

The target (the README's): at least 80% power at the effects of the clearly robust MSDAs,
and a flip rate of at most 5% per primary. Run it::

    python -m robustmix.evaluations.power STUDY_DIR [--grid 12/255,...] [--allocations 4x4,10x5]
                                          [--studies 4000] [--scale-effects F|M=F,...]

``--no-strong`` reads worst-case rows made without the strong attack (a pilot of FGSM and
PGD only); the APGD worst case is lower, so treat such effects as optimistic unless
``--scale-effects`` shrinks them. Written as code so that the lead reruns it on the final
study.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from robustmix.evaluations import statistics as st
from robustmix.evaluations.collect import load_record, robustness_rows, unique_names
from robustmix.evaluations.declaration import Declaration
from robustmix.evaluations.grouping import group_runs, summarize
from robustmix.evaluations.primary import WORST, primary_grid, run_values
from robustmix.evaluations.study_data import Runs
from robustmix.core import runs

DEFAULT_ALLOCATIONS = ((3, 3), (5, 5), (6, 4), (8, 4), (10, 4), (6, 5), (8, 5), (10, 5),
                       (16, 4), (4, 6), (6, 6), (8, 6))
TARGET_POWER, TARGET_FLIP = 0.80, 0.05


@dataclass(frozen=True)
class Pilot:
    """Per method: (mean, seed sd, n) of the primary statistic; vanilla is the reference."""

    stats: dict[str, tuple[float, float, int]]
    grid: str
    attack: str


def read_pilot(folder: str | Path, *, attack: str = WORST, grid: str = "",
               strong: bool = True) -> Pilot:
    """The per-method mean, sd and n of the primary statistic of the runs in
    ``folder/runs`` (each complete run directory)."""
    paths = sorted(p for p in (Path(folder) / "runs").iterdir() if runs.is_complete(p))
    if not paths:
        raise runs.UsageError(f"{folder}/runs holds no finished run")
    infos = [runs.RunDir(p).open() for p in paths]
    records = [load_record(i, n) for i, n in zip(infos, unique_names([i.path for i in infos]))]
    groups = group_runs([(r.name, r.info.train) for r in records])
    group_of = {m: g for g in groups for m in g.members}
    per_run = pd.DataFrame([{"run": r.name, "group": group_of[r.name].name,
                             "seed": r.info.seed} for r in records])
    frames = [f.assign(group=group_of[r.name].name) for r in records
              if (f := robustness_rows(r)) is not None]
    data = Runs(groups, per_run, pd.concat(frames, ignore_index=True),
                Declaration(primary_eps=grid))
    chosen, _ = primary_grid(data)
    table = {}
    for group in groups:
        values, _ = run_values(data, group, attack, chosen, strong=strong)
        if values:
            table[group.method] = summarize(values)
    return Pilot(table, ",".join(text for _, text in chosen), attack)


Scale = dict[str, float]   # per method, the factor its pilot effect is multiplied by


def factor(scale: Scale | float, method: str) -> float:
    return scale if isinstance(scale, (int, float)) else scale.get(method, 1.0)


def simulate(pilot: Pilot, n0: int, n1: int, *, studies: int = 4000, level: float = st.LEVEL,
             scale: Scale | float = 1.0, seed: int = 0) -> dict[str, float]:
    """P(primary holds) per MSDA, over ``studies`` simulated studies with ``n0`` vanilla
    and ``n1`` runs per MSDA (each effect multiplied by its ``scale``)."""
    rng = np.random.default_rng(seed)
    mean0, sd0, _ = pilot.stats["vanilla"]
    methods = [m for m in pilot.stats if m != "vanilla"]
    vanilla = rng.normal(mean0, sd0, (studies, n0))
    p_values, effects = [], []
    for method in methods:
        mean, sd, _ = pilot.stats[method]
        runs_ = rng.normal(mean0 + factor(scale, method) * (mean - mean0), sd, (studies, n1))
        p_values.append(stats.ttest_ind(runs_, vanilla, axis=1, equal_var=False).pvalue)
        effects.append(runs_.mean(axis=1) - vanilla.mean(axis=1))
    p_values, effects = np.array(p_values).T, np.array(effects).T
    holds = np.zeros(len(methods))
    for p, effect in zip(p_values, effects):
        holds += np.array(st.holm(p, level).rejected) & (effect > 0)
    return dict(zip(methods, holds / studies))


def bonferroni_nct(pilot: Pilot, method: str, n0: int, n1: int, *, level: float = st.LEVEL,
                     scale: Scale | float = 1.0) -> float:
    """The noncentral-t power of Welch's test at level α/K (K primaries), an approximation."""
    mean0, sd0, _ = pilot.stats["vanilla"]
    mean, sd, _ = pilot.stats[method]
    k = len(pilot.stats) - 1
    v1, v0 = sd ** 2 / n1, sd0 ** 2 / n0
    df = (v1 + v0) ** 2 / (v1 ** 2 / (n1 - 1) + v0 ** 2 / (n0 - 1))
    delta = factor(scale, method) * (mean - mean0) / math.sqrt(v1 + v0)
    critical = stats.t.ppf(1 - level / (2 * k), df)
    near = float(stats.nct.sf(critical, df, abs(delta)))
    far = float(stats.nct.cdf(-critical, df, abs(delta)))
    # scipy's noncentral t gives NaN deep in the far tail, where it is below 1e-15
    return near + (far if math.isfinite(far) else 0.0)


def flip_rate(p: float) -> float:
    """The chance that two independent reruns decide a primary differently."""
    return 2 * p * (1 - p)


def report(pilot: Pilot, allocations, *, studies: int, scale: Scale | float) -> list[str]:
    """The printed tables: the pilot's numbers, then one line per allocation and primary."""
    mean0, sd0, n0 = pilot.stats["vanilla"]
    lines = [f"primary statistic: {pilot.attack} robust / clean, trapezoid mean over "
             f"{pilot.grid}; effects scaled by {scale}",
             f"{'method':<12}{'pilot %':>8}{'sd pp':>8}{'n':>4}{'effect pp':>11}{'d':>7}"]
    for method, (mean, sd, n) in pilot.stats.items():
        effect = factor(scale, method) * (mean - mean0) if method != "vanilla" else math.nan
        d = effect / math.sqrt((sd ** 2 + sd0 ** 2) / 2) if method != "vanilla" else math.nan
        lines.append(f"{method:<12}{mean * 100:8.2f}{sd * 100:8.2f}{n:4d}"
                     f"{effect * 100:11.2f}{d:7.2f}")
    lines += ["", f"{'n0 x n1':<9}{'runs':>5}  {'method':<12}{'power':>7}{'nct':>7}"
                  f"{'flip':>7}  target"]
    k = len(pilot.stats) - 1
    for n0_, n1_ in allocations:
        power = simulate(pilot, n0_, n1_, studies=studies, scale=scale)
        for method, p in power.items():
            ok = p >= TARGET_POWER and flip_rate(p) <= TARGET_FLIP
            lines.append(f"{n0_:>3} x {n1_:<3}{n0_ + k * n1_:>5}  {method:<12}{p:7.3f}"
                         f"{bonferroni_nct(pilot, method, n0_, n1_, scale=scale):7.3f}"
                         f"{flip_rate(p):7.3f}  {'met' if ok else '-'}")
    return lines


def _scale(text: str) -> Scale | float:
    """``0.5`` (every effect) or ``mixup=0.26,cutmix=0.66`` (per method, others 1)."""
    try:
        if "=" not in text:
            return float(text)
        return {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or METHOD=FACTOR,..., got "
                                         f"{text!r}") from None


def _allocation(text: str) -> tuple[int, int]:
    try:
        n0, n1 = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N0xN1 (vanilla x each MSDA), got {text!r}")
    if n0 < 2 or n1 < 2:
        raise argparse.ArgumentTypeError(f"each group needs at least 2 runs, got {text!r}")
    return n0, n1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robustmix.evaluations.power",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="a study folder (its runs/ are read)")
    parser.add_argument("--grid", default="", help="the primary eps grid (default: where "
                                                   "every run has a worst-case row)")
    parser.add_argument("--allocations", type=lambda t: [_allocation(a) for a in t.split(",")],
                        default=list(DEFAULT_ALLOCATIONS), help="e.g. 4x4,10x5")
    parser.add_argument("--studies", type=int, default=4000, help="simulated studies")
    parser.add_argument("--scale-effects", type=_scale, default=1.0,
                        help="multiply the pilot's effects: 0.5, or mixup=0.26,cutmix=0.66")
    parser.add_argument("--no-strong", action="store_true",
                        help="accept worst-case rows made without APGD / AutoAttack")
    args = parser.parse_args(argv)
    try:
        pilot = read_pilot(args.study, grid=args.grid, strong=not args.no_strong)
    except runs.UsageError as err:
        print(f"python -m robustmix.evaluations.power: {err}", file=sys.stderr)
        return 2
    if "vanilla" not in pilot.stats or len(pilot.stats) < 2:
        print(f"python -m robustmix.evaluations.power: {args.study} needs vanilla and an MSDA with the "
              "primary statistic (try --no-strong for a pilot without APGD)", file=sys.stderr)
        return 2
    print("\n".join(report(pilot, args.allocations, studies=args.studies,
                           scale=args.scale_effects)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

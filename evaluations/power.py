"""How many seeds the primary comparisons need: power and flip rate from a pilot study.

Reads the per-run values of the primary statistic (robust ÷ clean accuracy of the
worst-case rows, the trapezoid mean over the ε grid: :mod:`robustmix.evaluations.primary`) from a
study folder, per method: the mean and the seed standard deviation. For each candidate
allocation (``n0`` vanilla runs, ``n1`` runs of every MSDA) it gives, per primary:

- **power**: the probability that the primary "holds", by simulation of whole studies
  through the report's own test and correction: every group's runs drawn from a normal
  law with the pilot's mean and sd, one vanilla group shared by every comparison (as in a
  study), Welch's statistic with capped df (:func:`robustmix.evaluations.statistics.welch_capped`)
  and Holm over the primaries (:func:`robustmix.evaluations.statistics.holm`);
- an analytic cross-check, ``nct``: the noncentral-t power of Welch's test at the
  Bonferroni level α/K (Holm rejects at least what Bonferroni does) with the
  Welch–Satterthwaite degrees of freedom at the pilot's sds; below the simulation where
  that approximation holds, above it with 3 or 4 runs a group, where Welch's statistic is
  further from a t than its degrees of freedom say (trust the simulation);
- the expected **flip rate** between two independent reruns, 2p(1 − p) for decision
  probability p: how often a rerun of the same study decides the other way.

The target (declared with the study): at least 80% power per primary, within a budget
of runs; :func:`choose` picks the allocation, and says for each primary that misses the
target the runs it would need. ``robustmix power STUDY`` runs it on a study's pilot
(``--no-strong`` reads worst-case rows made without the strong attack: the APGD worst case
is lower, so treat such effects as optimistic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from robustmix.evaluations import error_rates
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
    folder = Path(folder) / "runs"
    paths = sorted(p for p in folder.iterdir() if runs.is_complete(p)) if folder.is_dir() else []
    if not paths:
        raise runs.UsageError(f"{folder} holds no finished run")
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


def planning_sd(pilot: Pilot, confidence: float = 0.8) -> Pilot:
    """The pilot with every method's sd replaced by the pooled seed sd of all its methods
    at its upper ``confidence`` limit (chi-square, the pooled df), the sd to plan on.

    A pilot of two or three seeds per method measures each method's spread with one or two
    degrees of freedom: half the time far below the truth, and a plan on it is then badly
    underpowered. Pooling the methods' variances and taking the upper confidence limit
    (Browne 1995) plans on a spread the confirmatory study is unlikely to exceed."""
    parts = [(sd ** 2, n - 1) for _, sd, n in pilot.stats.values() if n > 1]
    df = sum(d for _, d in parts)
    if not df:
        return pilot
    pooled = math.sqrt(sum(v * d for v, d in parts) / df)
    upper = pooled * math.sqrt(df / stats.chi2.ppf(1 - confidence, df))
    return Pilot({m: (mean, upper, n) for m, (mean, _, n) in pilot.stats.items()},
                 pilot.grid, pilot.attack)


Scale = dict[str, float]   # per method, the factor its pilot effect is multiplied by


def factor(scale: Scale | float, method: str) -> float:
    return scale if isinstance(scale, (int, float)) else scale.get(method, 1.0)


def simulate(pilot: Pilot, n0: int, n1: int | dict[str, int], *, studies: int = 4000,
             level: float = st.LEVEL, scale: Scale | float = 1.0, seed: int = 0
             ) -> dict[str, float]:
    """P(primary holds) per MSDA, over ``studies`` simulated studies with ``n0`` vanilla
    and ``n1`` runs per MSDA (a number, or one per method), each effect multiplied by its
    ``scale``: normal runs at the pilot's means and sds, one vanilla group shared by every
    comparison, Welch's statistic with capped df and Holm over the primaries, as the report
    judges them."""
    rng = np.random.default_rng(seed)
    mean0, sd0, _ = pilot.stats["vanilla"]
    methods = [m for m in pilot.stats if m != "vanilla"]
    vanilla = rng.normal(mean0, sd0, (studies, n0))
    p_values, effects = [], []
    for method in methods:
        mean, sd, _ = pilot.stats[method]
        n = n1[method] if isinstance(n1, dict) else n1
        runs_ = rng.normal(mean0 + factor(scale, method) * (mean - mean0), sd, (studies, n))
        p_values.append(error_rates.welch_capped(runs_, vanilla)[0])   # the primaries' test
        effects.append(runs_.mean(axis=1) - vanilla.mean(axis=1))
    rejected = holm_rejections(np.array(p_values).T, level)
    holds = (rejected & (np.array(effects).T > 0)).mean(axis=0)
    return dict(zip(methods, (float(h) for h in holds)))


def holm_rejections(p: np.ndarray, level: float) -> np.ndarray:
    """Holm's decisions for every row of ``p`` (studies × hypotheses) at once; equal to
    :func:`robustmix.evaluations.statistics.holm` row by row (a test holds them equal)."""
    p = np.nan_to_num(p, nan=1.0)
    m = p.shape[1]
    order = np.argsort(p, axis=1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=1)
    passed = np.cumprod(ranked <= level / (m - np.arange(m)), axis=1).astype(bool)
    rejected = np.zeros_like(passed)
    np.put_along_axis(rejected, order, passed, axis=1)
    return rejected


def bonferroni_nct(pilot: Pilot, method: str, n0: int, n1: int, *, level: float = st.LEVEL,
                     scale: Scale | float = 1.0) -> float:
    """The noncentral-t power of Welch's test at level α/K (K primaries), an approximation."""
    mean0, sd0, _ = pilot.stats["vanilla"]
    mean, sd, _ = pilot.stats[method]
    k = len(pilot.stats) - 1
    v1, v0 = sd ** 2 / n1, sd0 ** 2 / n0
    df = (v1 + v0) ** 2 / (v1 ** 2 / (n1 - 1) + v0 ** 2 / (n0 - 1))
    df = min(df, (n1 if v1 >= v0 else n0) - 1)     # capped as the primaries' test is
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


def within(k: int, budget: int, least: int = 2) -> list[tuple[int, int]]:
    """Every allocation (n0 vanilla runs, n1 per MSDA, n0 ≥ n1 ≥ ``least``: vanilla enters
    every primary) of at most ``budget`` runs for ``k`` MSDAs."""
    return [(n0, n1) for n1 in range(least, budget) for n0 in range(n1, budget + 1)
            if n0 + k * n1 <= budget]


@dataclass(frozen=True)
class Choice:
    """The allocation chosen within a budget, its power per primary, and for each primary
    below the target the runs per group it would need."""

    n0: int
    n1: int
    power: dict[str, float]
    target: float
    budget: int
    needs: dict[str, int | None]     # runs per group (n0 = n1) for the target; None: > 200

    @property
    def runs(self) -> int:
        return self.n0 + len(self.power) * self.n1


def choose(pilot: Pilot, budget: int, target: float = TARGET_POWER, *, studies: int = 2000,
           level: float = st.LEVEL) -> Choice:
    """The allocation within ``budget`` runs that brings the most primaries to ``target``
    power; among those, the fewest runs, then the highest smallest power of the primaries
    that reach it. The rule is fixed here, before any confirmatory data."""
    k = len(pilot.stats) - 1
    options = within(k, budget)
    if not options:
        raise runs.UsageError(f"a budget of {budget} runs cannot give vanilla and each of "
                              f"the {k} MSDAs two runs ({2 + 2 * k} at least)")
    best, key = None, None
    for n0, n1 in options:
        power = simulate(pilot, n0, n1, studies=studies, level=level)
        met = [p for p in power.values() if p >= target]
        rank = (len(met), -(n0 + k * n1), min(met, default=0.0))
        if key is None or rank > key:
            best, key = (n0, n1, power), rank
    n0, n1, power = best
    needs = {m: _needed(pilot, m, target, level) for m, p in power.items() if p < target}
    return Choice(n0, n1, power, target, budget, needs)


def _needed(pilot: Pilot, method: str, target: float, level: float) -> int | None:
    """The runs per group (vanilla and this MSDA alike) at which the Bonferroni
    noncentral-t power (below Holm's) reaches ``target``; None beyond 200."""
    for n in range(2, 201):
        if bonferroni_nct(pilot, method, n, n, level=level) >= target:
            return n
    return None


def choice_lines(choice: Choice) -> list[str]:
    """What ``robustmix power`` says of its choice, one line per primary."""
    lines = [f"chosen: {choice.n0} vanilla and {choice.n1} runs per MSDA ({choice.runs} runs, "
             f"budget {choice.budget}), the most primaries at power >= {choice.target:g}, "
             "then the fewest runs"]
    for method, p in choice.power.items():
        if p >= choice.target:
            lines.append(f"  {method:<12} power {p:.3f}")
            continue
        n = choice.needs.get(method)
        need = f"about {n} runs per group ({n * (len(choice.power) + 1)} in a study of this " \
               "shape)" if n else "more than 200 runs per group"
        lines.append(f"  {method:<12} power {p:.3f}: likely inconclusive; the target needs "
                     f"{need}")
    return lines


def detectable(n0: int, n1: int, k: int, *, target: float = TARGET_POWER,
               level: float = st.LEVEL, studies: int = 4000) -> float:
    """The smallest effect, in seed standard deviations, that one primary detects with
    probability ``target`` when the study has ``n0`` vanilla runs, ``n1`` runs of each of
    ``k`` MSDAs, and the other ``k - 1`` have no effect (Holm's hardest case: its first
    step, Bonferroni): by bisection over :func:`simulate` on common random numbers, so
    power rises with the effect and the bisection is exact to 0.01 sd."""
    def power(effect: float) -> float:
        stats_ = {"vanilla": (0.0, 1.0, n0), "msda": (effect, 1.0, n1)}
        stats_ |= {f"null{i}": (0.0, 1.0, n1) for i in range(k - 1)}
        return simulate(Pilot(stats_, "", WORST), n0, n1, studies=studies, level=level)["msda"]

    low, high = 0.0, 1.0
    while power(high) < target:
        low, high = high, 2 * high
        if high > 1e3:
            return math.inf
    while high - low > 0.01:
        middle = (low + high) / 2
        low, high = (middle, high) if power(middle) < target else (low, middle)
    return high

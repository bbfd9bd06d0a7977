"""Does each verdict family hold its level at the digits study's shape, and which test does?

Run by hand from the repository root (a few minutes of one core)::

    python -m benchmarks.bench_calibration [--studies 4000] [--path-studies 1000]

The digits preset's shape (its vanilla runs, its runs per MSDA, its six MSDAs, its ε grid)
with each method's mean and seed sd as docs/study measured them
(``tests/synthetic_study.py``). Two generators of the seeds: Student's t with 3 df (heavy
tails) and normal; statistics in (0, 1) drawn in (0, 1) (logit-t / logit-normal with the
measured mean and sd). Under the null every method of a statistic shares one mean.

Printed per family, for each candidate test of the unpaired comparisons (Welch's t-test;
Welch's statistic with Hsu's df = min(n_a, n_b) − 1; with Welch's df capped at n − 1 of the
group dominating the standard error, the one the report uses for the secondaries; Welch on
logit(x) for a statistic in (0, 1); the exact permutation test of Welch's statistic, whose
p is at least 1/210 at 4 against 6 runs): the share of null
studies with at least one false verdict, with its 95% Clopper–Pearson interval, and the
share of real effects found where each comparison's true effect is 3 of its standard
errors (power). (d) and (e) are paired (the paired t-test whatever the candidate). For
the primaries: all-null, and partial-null (stochastic, HMix, GMix, PuzzleMix at their
measured effects, Mixup and CutMix none), with the joint coverage of the six Holm-step
intervals. The families are simulated vectorized (:mod:`robustmix.evaluations.error_rates`);
then the chosen procedure once more through ``prediction_table`` itself, all-null and
partial-null (real primary effects, none elsewhere).
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import synthetic_study as ss  # noqa: E402
from robustmix.evaluations import error_rates as er  # noqa: E402
from robustmix.evaluations import statistics as st  # noqa: E402
from robustmix.evaluations.predictions import prediction_table, secondary_comparisons  # noqa: E402
from robustmix.evaluations.study_data import Runs  # noqa: E402
from benchmarks.common import cpu_model  # noqa: E402

N_VANILLA = len(ss.PRESETS["digits"]["seeds_by_method"]["vanilla"])
N_MSDA = len(ss.PRESETS["digits"]["seeds"])
CANDIDATES = ("welch", "hsu", "capped df", "logit welch", "permutation")
GENERATORS = {"t, 3 df": 3, "normal": None}
REAL = ("stochastic", "hmix", "gmix", "puzzlemix")      # the primaries that hold in docs/study
POWER_SE = 3.0


@functools.lru_cache(maxsize=1)
def secondary_hypotheses() -> tuple[er.Hypothesis, ...]:
    """The study's secondary hypotheses (shape from one study of the preset's runs), each
    arm's sd from 2,000 normal runs of the generator (within ~2% of the measured one)."""
    rng = np.random.default_rng(0)
    def comparisons(n_vanilla, n_msda, tails):
        groups, per_run, _ = ss.study(rng, ss.allocation(n_vanilla, n_msda), tails=tails)
        return secondary_comparisons(Runs(groups, per_run, None, ss.DECLARATION))
    shape = er.from_comparisons(comparisons(N_VANILLA, N_MSDA, ss.TAILS))
    population = er.from_comparisons(comparisons(2000, 2000, None))
    return tuple(replace(h, a=replace(h.a, mean=p.a.mean, sd=p.a.sd, bounded=p.a.bounded),
                         b=replace(h.b, mean=p.b.mean, sd=p.b.sd, bounded=p.b.bounded),
                         sd_diff=p.sd_diff)
            for h, p in zip(shape, population))


def with_test(hypotheses, test: str) -> list[er.Hypothesis]:
    return [h if h.test == "paired" else replace(h, test=test) for h in hypotheses]


def primary_hypotheses(test: str, real=()) -> list[er.Hypothesis]:
    """The six primaries: each MSDA's measured sd; its measured mean if in ``real``, else
    vanilla's (no effect)."""
    base = ss.ROBUST["vanilla"]
    vanilla = er.Arm("robust: vanilla", base[0], base[1], N_VANILLA, True)
    return [er.Hypothesis("(b) primary", er.Arm(f"robust: {m}", mean if m in real else base[0],
                                                sd, N_MSDA, True), vanilla, "higher", test=test)
            for m, (mean, sd) in ss.ROBUST.items() if m != "vanilla"]


def shifted(hypotheses: list[er.Hypothesis], k: float = POWER_SE) -> list[er.Hypothesis]:
    """Each directional comparison's a-arm moved by k standard errors the claimed way
    (an arm in two comparisons: by the first); the equivalence claims stay null."""
    moved: dict[str, er.Arm] = {}
    out = []
    for h in hypotheses:
        sign = -1.0 if h.claim == "lower" else 1.0
        if h.claim == "equivalent" or not h.tested:
            out.append(h)
            continue
        if h.test == "paired":
            out.append(replace(h, a=replace(h.a, mean=h.b.mean + sign * k * h.sd_diff
                                            / np.sqrt(min(h.a.n, h.b.n)))))
            continue
        se = np.sqrt(h.a.sd ** 2 / h.a.n + h.b.sd ** 2 / h.b.n)
        a = moved.setdefault(h.a.key, replace(h.a, mean=h.b.mean + sign * k * se))
        out.append(replace(h, a=a))
    return [replace(h, a=moved.get(h.a.key, h.a), b=moved.get(h.b.key, h.b))
            if h.test != "paired" else h for h in out]


def measure(studies: int) -> dict:
    """{(generator, test): (null Outcome, power Outcome, primary partial-null Outcome)}."""
    out = {}
    for label, tails in GENERATORS.items():
        for k, test in enumerate(CANDIDATES):
            secondary = with_test(secondary_hypotheses(), test)
            null = er.simulate(secondary + primary_hypotheses(test), studies, 10 + k, tails)
            power = er.simulate(shifted(secondary) + primary_hypotheses(test, REAL), studies,
                                20 + k, tails)
            partial = er.simulate(primary_hypotheses(test, REAL), studies, 30 + k, tails)
            out[(label, test)] = (null, power, partial)
    return out


def print_tables(results: dict, studies: int) -> None:
    families = list(next(iter(results.values()))[0].false)
    for family in families:
        print(f"\n{family}: studies with a false verdict, of {studies} null studies "
              f"(95% interval); power: share of effects of {POWER_SE:g} se found")
        extra = "| partial null | joint coverage " if family == "(b) primary" else ""
        print(f"| generator | test | all null {extra}| power |")
        print("|---|---|---|" + ("---|---|" if extra else "") + "---|")
        for (label, test), (null, power, partial) in results.items():
            cells = [label, test, null.rate(family).text()]
            if extra:
                coverage = er.Rate(int(partial.covered[family].sum()), studies)
                cells += [partial.rate(family).text(), coverage.text()]
            cells.append(f"{power.found[family]:.1%}")
            print("| " + " | ".join(cells) + " |")
    print(f"\nAny secondary family, all null (of {studies}):")
    for (label, test), (null, _, _) in results.items():
        rate = er.Rate(int(np.any([v for f, v in null.false.items()
                                   if f != "(b) primary"], axis=0).sum()), studies)
        print(f"| {label} | {test} | {rate.text()} |")


def false_families(rows: list[dict[str, str]], real=()) -> set[str]:
    """Families with a false verdict: a rejected null, a real primary effect found the
    wrong way, or the true equivalence claim refuted."""
    wrong = set()
    for r in rows:
        if r["role"] == "exploratory" or not r["verdict"]:
            continue
        method = r["comparison"].split()[0]
        if r["family"] == "(c) profile" and r["comparison"] == "mixup vs vanilla":
            bad = r["verdict"] == st.FAILS
        elif r["role"] == "primary" and method in real:
            bad = r["verdict"] == st.FAILS
        else:
            bad = r["verdict"] in (st.HOLDS, st.FAILS)
        if bad:
            wrong.add(r["family"])
    return wrong


def path_check(studies: int, real=(), seed: int = 0) -> tuple[dict[str, int], int]:
    """Per family, studies with a false verdict through ``prediction_table``; and studies
    with one in any secondary family."""
    rng = np.random.default_rng(seed)
    effects = ss.Effects(robust={m: (ss.ROBUST[m][0] - ss.ROBUST["vanilla"][0]) / ss.robust_sd(m)
                                 for m in real})
    counts: dict[str, int] = {}
    anywhere = 0
    for _ in range(studies):
        rows = prediction_table(*ss.study(rng, ss.allocation(N_VANILLA, N_MSDA), effects),
                                ss.DECLARATION)
        wrong = false_families(rows, real)
        for family in wrong:
            counts[family] = counts.get(family, 0) + 1
        anywhere += bool(wrong - {"(b) primary"})
    return counts, anywhere


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4000)
    parser.add_argument("--path-studies", type=int, default=1000)
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_model()}; shape {N_VANILLA} vanilla runs, {N_MSDA} per MSDA, grid "
          f"{ss.GRID}; secondary test in the report: {st.WELCH_CAPPED}")
    print_tables(measure(args.studies), args.studies)
    for label, real in (("all null", ()), ("partial null", REAL)):
        if args.path_studies:
            counts, anywhere = path_check(args.path_studies, real, seed=len(real))
            cells = ", ".join(f"{f} {er.Rate(c, args.path_studies).text()}"
                              for f, c in sorted(counts.items()))
            print(f"\nprediction_table, {label}, {args.path_studies} studies (t, 3 df): "
                  f"{cells or 'no false verdict'}; any secondary "
                  f"{er.Rate(anywhere, args.path_studies).text()}")


if __name__ == "__main__":
    main()

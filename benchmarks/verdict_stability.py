"""How many verdicts differ between two runs of the same study with different numerics.

Run the default study twice with different numerics (another thread count: float sums in
another order, so every model trains a little differently; another CPU model where you
have one), then compare their predictions tables::

    OMP_NUM_THREADS=1 robustmix study --out study-t1
    OMP_NUM_THREADS=2 robustmix study --out study-t2
    python -m benchmarks.verdict_stability study-t1 study-t2

Prints, per role (primary, then secondary by family), how many comparisons both tables
have and how many verdicts differ, then each difference with both adjusted p-values.
Exploratory rows carry no verdict and are not counted. Tables written before roles
existed (no ``role`` column) count as one group, "(no role)".
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from robustmix.core import runs

KEY = ("role", "family", "prediction", "comparison", "statistic", "eps")
FILE = "predictions.csv"


def _table(folder: Path) -> dict[tuple, dict[str, str]]:
    rows = runs.read_csv(Path(folder) / FILE)
    return {tuple(r.get(k, "") for k in KEY): r for r in rows
            if r.get("role", "") != "exploratory"}


def _group(key: tuple) -> str:
    role, family = key[0], key[1]
    if not role:
        return "(no role)"
    return role if role == "primary" else f"{role}: {family}"


def differences(a: Path, b: Path) -> tuple[Counter, Counter, list[str]]:
    """(comparisons in common per group, differing verdicts per group, one line each)."""
    first, second = _table(a), _table(b)
    common = sorted(set(first) & set(second))
    total, differ, lines = Counter(), Counter(), []
    for key in common:
        total[_group(key)] += 1
        x, y = first[key], second[key]
        if x["verdict"] != y["verdict"]:
            differ[_group(key)] += 1
            lines.append(f"{_group(key)} | {key[3]} | {key[4]} {key[5]}: {x['verdict']} "
                         f"(p_adj {x['p_adjusted']}) vs {y['verdict']} "
                         f"(p_adj {y['p_adjusted']})")
    return total, differ, lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    try:
        total, differ, lines = differences(Path(argv[0]), Path(argv[1]))
    except (OSError, runs.UsageError) as err:
        print(f"verdict_stability: {err}", file=sys.stderr)
        return 2
    order = sorted(total, key=lambda g: (g != "primary", g))
    for group in order:
        print(f"{group}: {differ[group]} of {total[group]} verdicts differ")
    print(f"all: {sum(differ.values())} of {sum(total.values())} verdicts differ")
    for line in lines:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

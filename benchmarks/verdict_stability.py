"""How many verdicts differ between two runs of the same study with different numerics.

Run the default study twice with different thread counts (float sums in another order,
so last bits differ), then compare their predictions tables::

    OMP_NUM_THREADS=1 robustmix study --out study-t1
    OMP_NUM_THREADS=2 robustmix study --out study-t2
    python -m benchmarks.verdict_stability study-t1 study-t2

Prints the number of comparisons, how many verdicts differ, and each difference.
"""

from __future__ import annotations

import sys
from pathlib import Path

from robustmix.core import runs

KEY = ("prediction", "comparison", "statistic", "eps")


def differences(a: Path, b: Path) -> tuple[int, list[str]]:
    """(comparisons in common, one line per comparison whose verdict differs)."""
    rows = [{tuple(r[k] for k in KEY): r for r in runs.read_csv(Path(d) / "predictions.csv")}
            for d in (a, b)]
    common = sorted(set(rows[0]) & set(rows[1]))
    lines = [f"{' | '.join(key)}: {rows[0][key]['verdict']} (p_adj {rows[0][key]['p_adjusted']}) "
             f"vs {rows[1][key]['verdict']} (p_adj {rows[1][key]['p_adjusted']})"
             for key in common if rows[0][key]["verdict"] != rows[1][key]["verdict"]]
    return len(common), lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    total, lines = differences(Path(argv[0]), Path(argv[1]))
    print(f"{len(lines)} of {total} verdicts differ")
    for line in lines:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Print the README's results table from a study's report tables, or its table of the
on-the-fly corruptions' parameters.

    python docs/readme_table.py study        # after `robustmix study`; prints Markdown
    python docs/readme_table.py corruptions  # robustmix.evaluations.corruptions.CORRUPTIONS

Columns: clean test accuracy (mean ± std over seeds, generalization_by_method.csv), the
runs that converged (runs.csv), the primary statistic (per run the worst case's robust ÷
clean accuracy averaged over the declared ε grid, mean ± std over seeds, from the primary
rows of predictions.csv), then robust accuracy / robust ÷ clean accuracy (mean over seeds,
%) for the attacks and ε of ``CELLS`` (robustness_by_method.csv), and the verdict counts
of predictions.csv: the primaries first, then each secondary family.
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from pathlib import Path

CELLS = (("fgsm", "20/255"), ("pgd", "20/255"), ("worst-case", "20/255"), ("pgd", "26/255"),
         ("worst-case", "26/255"), ("worst-case", "32/255"))


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _pm(mean: str, std: str) -> str:
    return f"{100 * float(mean):.1f} ± {100 * float(std):.1f}" if std else \
        f"{100 * float(mean):.1f}"


def table(study: Path) -> str:
    general = {r["method"]: r for r in _rows(study / "generalization_by_method.csv")}
    robust = {(r["group"], r["attack"], r["eps"]): r
              for r in _rows(study / "robustness_by_method.csv")}
    converged = Counter(r["group"] for r in _rows(study / "runs.csv") if r["converged"] == "True")
    runs = Counter(r["group"] for r in _rows(study / "runs.csv"))
    # runs without held-out data (made before it existed) are not judged, not unconverged
    unjudged = Counter(r["group"] for r in _rows(study / "runs.csv") if r["converged"] == "")
    primary = _primary(_rows(study / "predictions.csv"))
    header = ["method", "test acc", "converged", "primary"] + [f"{a} {e}" for a, e in CELLS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in general.items():
        cells = [_pm(row["test_acc_mean"], row["test_acc_std"]),
                 f"{converged[method]} of {runs[method]}"
                 + (f" ({unjudged[method]} not judged)" if unjudged[method] else ""),
                 primary.get(method, "-")]
        for attack, eps in CELLS:
            found = robust.get((method, attack, eps))
            cells.append(f"{100 * float(found['robust_acc_mean']):.1f} / "
                         f"{100 * float(found['conditional_mean']):.1f}" if found else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + verdict_lines(_rows(study / "predictions.csv")))


def _primary(rows: list[dict[str, str]]) -> dict[str, str]:
    """Per method, "mean ± std" of the primary statistic, read from the primary rows'
    ``measured`` text ("hmix 53.3 ± 2.2 (n=5) vs vanilla 40.9 ± 2.2 (n=10)")."""
    found = {}
    for r in rows:
        if r.get("role") == "primary" and " vs " in r.get("measured", ""):
            for side in r["measured"].split(" vs "):
                name, _, value = side.partition(" ")
                found[name] = value.split(" (n=")[0]
    return found


def verdict_lines(rows: list[dict[str, str]]) -> list[str]:
    """The verdict counts: the primaries, then each secondary family (exploratory rows
    carry no verdict); a table without roles (older) as one count."""
    groups: dict[str, Counter] = {}
    for r in rows:
        role = r.get("role", "")
        if role == "exploratory":
            continue
        name = "Primary" if role == "primary" else r.get("family") or "Verdicts"
        groups.setdefault(name, Counter())[r["verdict"]] += 1
    return [f"{name} ({sum(c.values())} comparisons): "
            + ", ".join(f"{k} {v}" for k, v in c.most_common()) + "."
            for name, c in groups.items()]


def corruption_table() -> str:
    """The on-the-fly suite's parameters by severity, from the one dict that applies them."""
    from robustmix.evaluations.corruptions import SEVERITIES, parameter_table

    header = ["corruption", "family", "parameter"] + [str(s) for s in SEVERITIES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in parameter_table()])


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "study"
    print(corruption_table() if which == "corruptions" else table(Path(which)))

"""Print the README's results table from a study's report tables.

    python docs/readme_table.py study        # after `robustmix study`; prints Markdown

Columns: clean test accuracy and the train−test gap (mean ± std over seeds, from
generalization_by_method.csv), FGSM and PGD at 8/255, PGD at 16/255, and standard
AutoAttack at 16/255 (robustness_by_method.csv), all in percent.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def _pm(mean: str, std: str) -> str:
    mean_pct = 100 * float(mean)
    return f"{mean_pct:.1f} ± {100 * float(std):.1f}" if std else f"{mean_pct:.1f}"


def table(study: Path) -> str:
    general = {r["method"]: r for r in csv.DictReader(open(study / "generalization_by_method.csv"))}
    robust = {(r["group"], r["attack"], r["eps"]): r
              for r in csv.DictReader(open(study / "robustness_by_method.csv"))}
    auto = [r for r in robust.values() if r["attack"] == "autoattack"]
    auto_label = (f"AutoAttack {auto[0]['eps']} (seed 0, {auto[0]['n_examples']} images)"
                  if auto else "AutoAttack")
    lines = [f"| method | test acc | train−test gap (pp) | FGSM 8/255 | PGD 8/255 | PGD 16/255 "
             f"| {auto_label} |", "|---|---|---|---|---|---|---|"]
    for method, row in general.items():
        cells = [_pm(row["test_acc_mean"], row["test_acc_std"]),
                 _pm(row["gap_acc_mean"], row["gap_acc_std"])]
        for attack, eps in (("fgsm", "8/255"), ("pgd", "8/255"), ("pgd", "16/255")):
            found = robust.get((method, attack, eps))
            cells.append(_pm(found["robust_acc_mean"], found["robust_acc_std"]) if found else "-")
        found = robust.get((method, "autoattack", auto[0]["eps"])) if auto else None
        cells.append(f"{100 * float(found['robust_acc_mean']):.1f}" if found else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else "study")))

"""Print the README's results table from a study's report tables, or the table of the
on-the-fly corruptions' parameters in docs/guide/evaluate.md.

    python docs/readme_table.py study        # after `robustmix study`; prints Markdown
    python docs/readme_table.py corruptions  # robustmix.evaluations.corruptions.CORRUPTIONS

The README's whole findings section (this table, the verdicts, the verdict sentences) is
``python -m robustmix.evaluations.findings STUDY`` (``--write README.md`` replaces it in
place); the results table here is that module's.
"""

from __future__ import annotations

import sys
from pathlib import Path


def table(study: Path) -> str:
    from robustmix.evaluations.findings import results_table, verdict_lines
    from robustmix.core.files import read_csv

    rows = read_csv(Path(study) / "predictions.csv")
    return "\n".join(results_table(Path(study)) + verdict_lines(rows))


def corruption_table() -> str:
    """The on-the-fly suite's parameters by severity, from the one dict that applies them."""
    from robustmix.evaluations.corruptions import SEVERITIES, parameter_table

    header = ["corruption", "family", "parameter"] + [str(s) for s in SEVERITIES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in parameter_table()])


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "study"
    print(corruption_table() if which == "corruptions" else table(Path(which)))

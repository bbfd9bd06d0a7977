"""The report's section that sets a study's clean test accuracies beside a paper's table."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from robustmix.core import runs

OUTPUTS = ("paper_comparison.csv",)
COLUMNS = ["method", "paper", "measured_mean", "measured_std", "n"]


@dataclass(frozen=True)
class PaperTable:
    """A paper's numbers: ``rows`` maps a key (``METHOD``, or ``VARIANT/METHOD`` where the
    study has variants) to the paper's top-1 accuracy in percent."""

    title: str
    rows: dict[str, float]
    variants: tuple[str, ...] = field(default=())


def paper_key(run_name: str, variants) -> str:
    """The paper table's key of a study run ``[VARIANT-]METHOD-sSEED``: ``VARIANT/METHOD``
    (a variant's name may hold dashes: ``large-crop``), or ``METHOD`` without variants."""
    name = run_name.rsplit("-s", 1)[0]
    for variant in sorted(variants, key=len, reverse=True):
        if variant and name.startswith(variant + "-"):
            return f"{variant}/{name[len(variant) + 1:]}"
    return name


def _measured(ctx, paper: PaperTable) -> dict[str, list[float]]:
    """Each key's final clean test accuracies (%), one per run."""
    measured: dict[str, list[float]] = {}
    for record in ctx.records:
        key = paper_key(record.info.path.name, paper.variants)
        rows = runs.read_metrics(record.info.path / runs.METRICS)
        measured.setdefault(key, []).append(100 * float(rows[-1]["test_acc"]))
    return measured


def paper_section(ctx, paper: PaperTable | None) -> None:
    """The table beside the paper, and OUT/paper_comparison.csv; nothing without a paper."""
    if paper is None:
        return
    measured = _measured(ctx, paper)
    lines = ["| method | paper | this study (mean ± std over seeds) | difference |",
             "|---|---|---|---|"]
    csv_rows = []
    for key, reference in paper.rows.items():
        values = measured.get(key)
        if not values:
            lines.append(f"| {key} | {reference:.2f} | not run | - |")
            continue
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) \
            if len(values) > 1 else float("nan")
        lines.append(f"| {key} | {reference:.2f} | {mean:.2f} ± {std:.2f} ({len(values)}) | "
                     f"{mean - reference:+.2f} |")
        csv_rows.append({"method": key, "paper": reference, "measured_mean": f"{mean:.4f}",
                         "measured_std": f"{std:.4f}", "n": len(values)})
    ctx.section(f"Beside the paper: {paper.title}", *lines, "",
                "The paper's recipes are not published beside its code; differences of a "
                "point or two are expected from the recipe alone.")
    ctx.csv("paper_comparison.csv", pd.DataFrame(csv_rows, columns=COLUMNS))

"""The report's Markdown table helpers: one table writer and the cell formats every
section shares (:mod:`robustmix.evaluations.report`, :mod:`robustmix.evaluations.report_calibration`,
:mod:`robustmix.evaluations.report_predictions`), so that no section module imports another."""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from robustmix.evaluations.grouping import summarize


def md(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    """A Markdown table (with a blank line after it); "|" in a cell is escaped."""
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(cell, header)) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return lines + [""]


def cell(values: list[float], percent: bool) -> str:
    """Mean ± std over runs and the run count ("–" without a value)."""
    mean, std, n = summarize(values)
    if n == 0:
        return "–"
    scale = 100 if percent else 1
    text = f"{mean * scale:.1f}" if percent else f"{mean:.4g}"
    if n > 1:
        text += f" ± {std * scale:.1f}" if percent else f" ± {std:.2g}"
    return f"{text} ({n})"


def robust_cell(rows: pd.DataFrame) -> str:
    """Robust accuracy and robust / clean, mean ± std over runs (%), and the run count."""
    if rows.empty:
        return "–"
    robust, _, n = summarize(rows["robust_acc"].tolist())
    conditional = rows["conditional"].tolist()
    text = f"{robust * 100:.1f} / {summarize(conditional)[0] * 100:.1f}"
    if n > 1:
        text += f" ± {summarize(conditional)[1] * 100:.1f}"
    return f"{text} ({n})"


def pct(value: float) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value * 100:.1f}"


def num(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:.3g}"


def yes(flag: bool | None) -> str:
    """yes / no; None (a check that could not be made) is "not judged"."""
    if flag is None or (isinstance(flag, float) and math.isnan(flag)):
        return "not judged"
    return "yes" if flag else "no"

"""The report's sections on calibration and common corruptions, and its opening summary.

- :func:`summary_section`: one row per method: clean test accuracy, robust accuracy under
  the strongest attack at the main ε, mean corrupted accuracy and ECE, each mean ± std
  over seeds (n runs).
- :func:`calibration_section`: ECE / NLL / Brier of the clean test set per method
  (``generalization.json``'s ``calibration``) and a reliability diagram per method (the
  runs' bins added up).
- :func:`corruptions_section`: accuracy and ECE per method and severity from each run's
  ``corruptions.csv`` (mean over the corruptions at a severity, then over seeds).

Each takes the :class:`robustmix.evaluations.report.ReportContext` and skips itself, saying why,
where its files are missing (a run not evaluated, or without corruptions.csv).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from robustmix.attacks.worst_case import WORST
from robustmix.evaluations import plots
from robustmix.evaluations.calibration import BINS, DEFINITION as CALIBRATION_DEFINITION
from robustmix.evaluations.corruption_eval import SUITE
from robustmix.evaluations.collect import CORRUPTED_SETS
from robustmix.evaluations.grouping import summarize
from robustmix.evaluations.markdown import cell as _cell
from robustmix.evaluations.markdown import md as _md
from robustmix.core import runs
from robustmix.core.errors import UsageError

OUTPUTS = ("calibration_by_method.csv", "reliability.png", "corruptions_by_method.csv",
           "corruption_accuracy.png", "summary_by_method.csv")
CALIBRATION_METRICS = (("ece", "ECE"), ("nll", "NLL (nats)"), ("brier", "Brier"))
MAIN_SETS = CORRUPTED_SETS   # the cells a mean corrupted accuracy is taken over


# ---------------------------------------------------------------------- what the runs hold


def corruption_frame(ctx) -> pd.DataFrame | None:
    """Every run's corruptions.csv rows with run and group; None where no run has one."""
    frames = []
    for record in ctx.records:
        path = runs.RunDir(record.info.path).corruptions_path
        if not path.is_file():
            continue
        frame = pd.DataFrame(runs.read_csv(path))
        try:
            for column in ("severity", "n_examples", "accuracy", "ece", "nll", "brier"):
                frame[column] = pd.to_numeric(frame[column])
        except (KeyError, ValueError) as error:
            raise UsageError(f"{path}: not a corruptions table as robustmix evaluate "
                             f"writes it ({error}); delete it and run robustmix evaluate "
                             "--corruptions again") from None
        frames.append(frame.assign(run=record.name, group=ctx.group_of[record.name].name))
    return pd.concat(frames, ignore_index=True) if frames else None


def per_run_severity(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per run and severity: the mean of ``column`` over the corruptions (severity 0: clean)."""
    cells = frame[frame["set"].isin(MAIN_SETS + ("clean",))]
    return cells.groupby(["group", "run", "severity"], as_index=False)[column].mean()


def mean_corrupted_accuracy(frame: pd.DataFrame) -> pd.Series:
    """Per run: the mean accuracy over every corrupted cell (severities 1-5)."""
    cells = frame[frame["set"].isin(MAIN_SETS)]
    return cells.groupby("run")["accuracy"].mean()


def main_eps(robust: pd.DataFrame | None):
    """The ε the summary reports: the largest at which a worst-case row exists (L∞ first),
    else the largest attacked; (norm, eps_key, eps text) or None."""
    if robust is None or robust.empty:
        return None
    for norm in ("linf", "l2"):
        part = robust[robust["norm"] == norm]
        worst = part[part["attack"] == WORST]
        pick = worst if not worst.empty else part
        if not pick.empty:
            row = pick.sort_values("eps_key").iloc[-1]
            return norm, row["eps_key"], row["eps"]
    return None


def strongest_per_run(robust: pd.DataFrame, norm: str, eps_key: float) -> pd.Series:
    """Per run: the lowest robust accuracy over the attacks run at that ε."""
    at = robust[(robust["norm"] == norm) & (robust["eps_key"] == eps_key)]
    return at.groupby("run")["robust_acc"].min()


# ---------------------------------------------------------------------- the sections


def summary_section(ctx) -> None:
    """The opening table: one row per method, the numbers a reader asks for first."""
    corrupted = corruption_frame(ctx)
    eps = main_eps(ctx.robust)
    strongest = strongest_per_run(ctx.robust, eps[0], eps[1]) if eps else pd.Series(dtype=float)
    mean_c = mean_corrupted_accuracy(corrupted) if corrupted is not None else \
        pd.Series(dtype=float)
    table, rows = [], []
    for group in ctx.groups:
        members = [r.name for r in ctx.records_of(group)]
        values = {"clean": ctx.values(group, "test_acc"),
                  "robust": [strongest[m] for m in members if m in strongest.index],
                  "corrupted": [mean_c[m] for m in members if m in mean_c.index],
                  "ece": ctx.values(group, "ece")}
        row = {"group": group.name, "method": group.method}
        for key, v in values.items():
            row.update(zip((f"{key}_mean", f"{key}_std", f"{key}_n"), summarize(v)))
        table.append(row)
        rows.append([group.name, _cell(values["clean"], True), _cell(values["robust"], True),
                     _cell(values["corrupted"], True), _cell(values["ece"], False)])
    robust_head = f"robust acc at ε = {eps[2]} ({eps[0]})" if eps else "robust acc"
    ctx.section("Summary", (
        "Per method, mean ± std over seeds (n runs): clean test accuracy (%); robust "
        "accuracy (%) under the strongest attack at the main ε (per run the lowest robust "
        "accuracy over every attack run there, the per-example worst case included; the main "
        "ε is the largest with a worst-case row); mean accuracy (%) over every corrupted "
        f"test cell ({runs.CORRUPTIONS}, severities 1-5); ECE of the clean test set ({BINS} "
        "bins). – where a run lacks the measurement. The paper's predictions follow."))
    ctx.lines += _md(["method", "clean acc", robust_head, "mean corrupted acc", "ECE"], rows)
    ctx.csv("summary_by_method.csv", pd.DataFrame(table))
    ctx.link("summary_by_method.csv", "mean, std and n per measurement and method")


def calibration_section(ctx) -> None:
    """ECE, NLL and Brier per method, and one reliability diagram per method."""
    ctx.section("Calibration")
    if "ece" not in ctx.per_run.columns or ctx.per_run["ece"].isna().all():
        ctx.paragraph(f"Skipped: no run's {runs.GENERALIZATION} has calibration (run "
                      "`robustmix evaluate` again).")
        return
    table, rows = [], []
    for group in ctx.groups:
        row, cells = {"group": group.name, "method": group.method}, [group.name]
        for column, _ in CALIBRATION_METRICS:
            values = ctx.values(group, column)
            row.update(zip((f"{column}_mean", f"{column}_std", f"{column}_n"),
                           summarize(values)))
            cells.append(_cell(values, False))
        table.append(row)
        rows.append(cells)
    ctx.csv("calibration_by_method.csv", pd.DataFrame(table))
    ctx.paragraph(f"The clean test set, mean ± std over seeds (n runs). Definitions: "
                  f"{CALIBRATION_DEFINITION}. Lower is better for all three.")
    ctx.lines += _md(["method"] + [h for _, h in CALIBRATION_METRICS], rows)
    bins = {g.name: _reliability(ctx, g) for g in ctx.groups}
    ctx.png("reliability.png", reliability_figure,
            {k: v for k, v in bins.items() if v is not None}, ctx.groups)
    ctx.link("calibration_by_method.csv", "mean, std and n per metric and method")


def corruptions_section(ctx) -> None:
    """Accuracy and ECE per method and severity, with the source of the corrupted images."""
    ctx.section("Common corruptions")
    frame = corruption_frame(ctx)
    if frame is None:
        ctx.paragraph(f"Skipped: no run has {runs.CORRUPTIONS} (run `robustmix evaluate "
                      "--corruptions`).")
        return
    sources = sorted(frame.loc[frame["set"] != "clean", "source"].unique())
    ctx.paragraph(
        f"Images: {', '.join(sources)}"
        + (" (this project's suite, parameters in the README; not comparable with "
           "CIFAR-10-C numbers)" if SUITE in sources else " (the 15 standard corruptions; "
           "the 4 extras are in the CSV)")
        + ". Per run the mean over the corruptions at each severity (0: clean), then mean ± "
          "std over seeds (n runs). Runs without the file: "
        + (", ".join(sorted(set(ctx.per_run["run"]) - set(frame["run"]))) or "none") + ".")
    severities = sorted(frame["severity"].unique())
    summary = []
    for column, label, percent in (("accuracy", "accuracy (%)", True), ("ece", "ECE", False)):
        per = per_run_severity(frame, column)
        rows = []
        for group in ctx.groups:
            mine = per[per["group"] == group.name]
            if mine.empty:
                continue
            cells = [mine.loc[mine["severity"] == s, column].tolist() for s in severities]
            rows.append([group.name] + [_cell(c, percent) for c in cells])
            summary += [{"group": group.name, "metric": column, "severity": int(s),
                         **dict(zip(("mean", "std", "n"), summarize(c)))}
                        for s, c in zip(severities, cells)]
        ctx.lines += [f"**{label}**", ""] + _md(
            ["method"] + [f"severity {int(s)}" if s else "clean" for s in severities], rows)
    table = pd.DataFrame(summary)
    ctx.csv("corruptions_by_method.csv", table)
    ctx.png("corruption_accuracy.png", corruption_figure, table, ctx.groups)
    ctx.link("corruptions_by_method.csv", "mean, std and n per method, metric and severity")


def _reliability(ctx, group) -> dict[str, np.ndarray] | None:
    """The group's reliability bins, added over its runs."""
    total = None
    for record in ctx.records_of(group):
        table = ((record.generalization or {}).get("calibration") or {}).get("reliability")
        if not isinstance(table, dict):
            continue
        try:
            part = {k: np.asarray(table[k], dtype=float)
                    for k in ("count", "confidence_sum", "correct")}
        except (KeyError, TypeError, ValueError):
            continue
        if any(v.shape != (BINS,) for v in part.values()):
            continue
        total = part if total is None else {k: total[k] + part[k] for k in total}
    return total


# ---------------------------------------------------------------------- figures


def reliability_figure(path, bins: dict[str, dict[str, np.ndarray]], groups) -> None:
    """One panel per method: accuracy per confidence bin (bars) against the diagonal."""
    shown = [g for g in groups if g.name in bins]
    cols = min(4, max(1, len(shown)))
    rows = math.ceil(len(shown) / cols)
    fig = plots._new_figure(figsize=(max(3.6 * cols, 5.5), 3.4 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    edges = np.linspace(0, 1, BINS + 1)
    for ax, group in zip(axes, shown):
        b = bins[group.name]
        filled = b["count"] > 0
        accuracy = np.where(filled, b["correct"] / np.maximum(b["count"], 1), np.nan)
        ax.bar(edges[:-1], accuracy, width=1 / BINS, align="edge", alpha=0.75,
               color=plots.style(group)["color"], edgecolor="black", linewidth=0.4)
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        ece = float(np.abs(b["correct"] - b["confidence_sum"]).sum() / b["count"].sum())
        ax.set_title(f"{group.name}\nECE {ece:.3f}", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1)")
        ax.set_ylabel("accuracy")
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    fig.suptitle("Reliability on the clean test set (runs of a method added up)")
    plots.save(fig, path)


def corruption_figure(path, table: pd.DataFrame, groups) -> None:
    """Accuracy and ECE against severity, one line per method; error bars: std over seeds."""
    fig, axes = plots._figure(2)
    for ax, (metric, label, scale) in zip(axes, (("accuracy", "accuracy (%)", 100),
                                                 ("ece", "ECE", 1))):
        for group in groups:
            part = table[(table["group"] == group.name) & (table["metric"] == metric)]
            if part.empty:
                continue
            ax.errorbar(part["severity"], part["mean"] * scale,
                        yerr=np.nan_to_num(part["std"].to_numpy() * scale), capsize=3,
                        markersize=4, label=group.name, **plots.style(group))
        ax.set_xlabel("severity (0: clean)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("Corrupted test images: mean over the corruptions per severity")
    plots._legend(fig, axes)
    plots.save(fig, path)


"""`write_report`: comparison tables, plots and the paper's predictions for a set of runs.

Reads each run's config.json, generalization.json (from ``robustmix evaluate``),
robustness.csv (from ``robustmix attack``) and corruptions.csv (``evaluate --corruptions``); sections whose files are missing are skipped
and the report says which runs lack what. Runs that differ only in seed are grouped
(:mod:`robustmix.evaluations.grouping`) and shown as mean ± std over seeds (n runs). Every file is
written atomically into ``OUT``; files of an earlier report there that this one does not
produce are removed, so report.md links exactly the files present.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from robustmix.attacks.worst_case import WORST
from robustmix.evaluations import plots
from robustmix.evaluations.collect import (RunRecord, load_record, robustness_rows, run_metrics,
                                 unique_names)
from robustmix.evaluations.convergence import CRITERION as CONVERGENCE
from robustmix.evaluations.declaration import Declaration
from robustmix.evaluations.grouping import Group, group_runs, summarize
from robustmix.evaluations.markdown import cell as _cell
from robustmix.evaluations.markdown import md as _md
from robustmix.evaluations.markdown import pct as _pct
from robustmix.evaluations.markdown import robust_cell as _robust_cell
from robustmix.evaluations.markdown import yes as _yes
from robustmix.evaluations.report_attacks import OUTPUTS as ATTACK_OUTPUTS
from robustmix.evaluations.report_attacks import diagnostics_section, overstatement_section
from robustmix.evaluations.report_calibration import OUTPUTS as CALIBRATION_OUTPUTS
from robustmix.evaluations.report_mechanism import NO_GENERALIZATION
from robustmix.evaluations.report_mechanism import OUTPUTS as MECHANISM_OUTPUTS
from robustmix.evaluations.report_mechanism import gallery_section, profile_section, q_section
from robustmix.evaluations.robustbench import robustbench_section
from robustmix.evaluations.report_calibration import (calibration_section, corruptions_section,
                                            summary_section)
from robustmix.evaluations.report_paper import OUTPUTS as PAPER_OUTPUTS
from robustmix.evaluations.report_paper import PaperTable, paper_section
from robustmix.evaluations.report_predictions import predictions_section
from robustmix.core import runs
from robustmix.core.errors import UsageError

REPORT = "report.md"
OUTPUTS = ("runs.csv", "generalization_by_method.csv", "robustness_by_method.csv",
           "robust_accuracy_linf.png", "robust_accuracy_l2.png",
           "robust_given_clean_linf.png", "robust_given_clean_l2.png", "generalization.png",
           "predictions.csv", REPORT, *CALIBRATION_OUTPUTS, *ATTACK_OUTPUTS,
           *MECHANISM_OUTPUTS, *PAPER_OUTPUTS)
GENERALIZATION_METRICS = (  # column, header, percent
    ("test_acc", "test acc (%)", True), ("train_acc", "clean train acc (%)", True),
    ("gap_acc", "acc gap train-test (pp)", True), ("gap_loss", "loss gap test-train", False),
    ("first_layer_frobenius", "first layer ‖W‖_F", False),
    ("first_layer_frobenius_input_units", "‖W/std‖_F", False),
    ("grad_loss_l2", "mean ‖∇ₓℓ‖₂", False), ("grad_logit_l2", "mean ‖∇ₓf_y‖₂", False),
    ("profile_decay", "profile decay D", False),
)


def write_report(run_dirs: Iterable[str | Path], out_dir: str | Path, *,
                 declaration: Declaration | None = None,
                 paper: PaperTable | None = None) -> Path:
    """Write ``OUT/report.md`` with its CSV tables and PNG plots; returns its path.

    ``run_dirs`` is an iterable (a list, a tuple, a generator) of finished run directories
    (str or path), all trained on the same data set; ``out_dir`` a str or path, created
    if missing. ``declaration`` is what the study declared before its data (primary ε
    grid, level, margins; :class:`~robustmix.evaluations.declaration.Declaration`); None: no
    declaration, the primary grid is derived from the runs and the report says so.
    ``paper`` (:class:`~robustmix.evaluations.report_paper.PaperTable`) adds a section that
    sets the runs' clean test accuracies beside a paper's table. A
    single path where a list belongs, or another type, is a TypeError; no runs, a missing
    or unfinished run, or runs of different data sets a
    :class:`~robustmix.core.errors.UsageError`, raised before anything is written.
    """
    if declaration is not None and not isinstance(declaration, Declaration):
        raise TypeError(f"declaration must be a robustmix.evaluations.declaration.Declaration or None, "
                        f"got {type(declaration).__name__}")
    records = _load(_checked_paths(run_dirs, out_dir))
    groups = group_runs([(r.name, r.info.train) for r in records])
    ctx = ReportContext(records, groups, Path(out_dir), declaration or Declaration())
    ctx.out.mkdir(parents=True, exist_ok=True)
    title_section(ctx)
    summary_section(ctx)
    runs_section(ctx)
    predictions_section(ctx)
    robustness_section(ctx)
    overstatement_section(ctx)
    diagnostics_section(ctx)
    generalization_section(ctx)
    calibration_section(ctx)
    corruptions_section(ctx)
    profile_section(ctx)
    q_section(ctx)
    gallery_section(ctx)
    robustbench_section(ctx)   # OUT/robustbench/<run>.json, its own stale files removed
    paper_section(ctx, paper)
    return _finish(ctx)


def _checked_paths(run_dirs, out_dir) -> list:
    if isinstance(run_dirs, (str, os.PathLike)):
        raise TypeError(f"run_dirs must be a list of run directories, got one "
                        f"{type(run_dirs).__name__}: write_report([{str(run_dirs)!r}], ...)")
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a str or os.PathLike, got {type(out_dir).__name__}")
    try:
        paths = list(run_dirs)
    except TypeError:
        raise TypeError(f"run_dirs must be an iterable of run directories, "
                        f"got {type(run_dirs).__name__}") from None
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UsageError(f"{out_dir} is a file; the report needs a directory")
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"run_dirs must hold str or os.PathLike run directories, "
                            f"got a {type(path).__name__}")
    return paths


def _load(run_dirs: list) -> list[RunRecord]:
    if not run_dirs:
        raise UsageError("no runs given: pass one or more run directories")
    infos: list[runs.FinishedRun] = []
    seen = set()
    for path in run_dirs:
        info = runs.RunDir(path).open()
        if info.path.resolve() not in seen:
            seen.add(info.path.resolve())
            infos.append(info)
    datasets: dict[tuple, list[str]] = {}
    for info in infos:
        datasets.setdefault(info.data_identity(), []).append(str(info.path))
    if len(datasets) > 1:
        labels = {info.data_identity(): info.data_label() for info in infos}
        parts = "; ".join(f"{labels[key]}: {', '.join(paths)}" for key, paths in datasets.items())
        raise UsageError(f"runs of different data sets cannot be compared in one report "
                         f"({parts}); make one report per data set")
    names = unique_names([info.path for info in infos])
    return [load_record(info, name) for info, name in zip(infos, names)]


def _finish(ctx: ReportContext) -> Path:
    """Write report.md, then remove the files of an earlier report that this one lacks."""
    report = ctx.out / REPORT
    runs.atomic_write_text(report, "\n".join(ctx.lines).rstrip() + "\n")
    ctx.written.append(REPORT)
    for stale in set(OUTPUTS) - set(ctx.written):
        (ctx.out / stale).unlink(missing_ok=True)
    return report


# ---------------------------------------------------------------------- what sections share


class ReportContext:
    """What every section reads (the runs, their groups, the per-run and robustness
    tables, the output folder) and what it adds to: the report's Markdown lines and the
    list of files written."""

    def __init__(self, records: list[RunRecord], groups: list[Group], out: Path,
                 declaration: Declaration | None = None):
        self.records, self.groups, self.out = records, groups, out
        self.declaration = declaration or Declaration()
        self.group_of = {m: g for g in groups for m in g.members}
        self.per_run = _per_run_frame(records, self.group_of)
        self.robust = _robustness_frame(records, self.group_of)
        self.dataset = records[0].info.dataset
        self.written: list[str] = []
        self.lines: list[str] = []

    def csv(self, name: str, frame: pd.DataFrame) -> None:
        runs.atomic_write_text(self.out / name, frame.to_csv(index=False, float_format="%.8g"))
        self.written.append(name)

    def png(self, name: str, draw, *args) -> None:
        draw(self.out / name, *args)
        self.written.append(name)
        self.lines += [f"![{name}]({name})", ""]

    def link(self, name: str, what: str) -> None:
        self.lines += [f"Table: [{name}]({name}) ({what}).", ""]

    def section(self, title: str, *text: str) -> None:
        self.lines += [f"## {title}", "", *text, ""] if text else [f"## {title}", ""]

    def paragraph(self, text: str) -> None:
        self.lines += [text, ""]

    def records_of(self, group: Group) -> list[RunRecord]:
        return [r for r in self.records if r.name in group.members]

    def values(self, group: Group, column: str) -> list[float]:
        if column not in self.per_run.columns:
            return []
        return self.per_run.loc[self.per_run["group"] == group.name, column].tolist()


def _per_run_frame(records: list[RunRecord], group_of: dict[str, Group]) -> pd.DataFrame:
    """One row per run, indexed by run: group, method, seed and :func:`run_metrics`."""
    rows = [{"run": r.name, "group": group_of[r.name].name, "method": group_of[r.name].method,
             "seed": r.info.seed, **run_metrics(r)} for r in records]
    return pd.DataFrame(rows).set_index("run", drop=False)


def _robustness_frame(records: list[RunRecord], group_of: dict[str, Group]
                      ) -> pd.DataFrame | None:
    """Every run's robustness rows with its group; None where no run has robustness.csv."""
    frames = [f.assign(group=group_of[r.name].name) for r in records
              if (f := robustness_rows(r)) is not None]
    return pd.concat(frames, ignore_index=True) if frames else None


# ---------------------------------------------------------------------- the sections, in order


PHASES = {  # the study's phase (robustmix.app.protocol), said under the title
    "pilot": "**Phase: pilot** (exploratory). Every comparison below is an estimate with an "
             "unadjusted 95% interval and no verdict word: the pilot's spreads choose the "
             "confirmatory study's seeds (`robustmix power`), so they are not findings.",
    "confirmatory": "**Phase: confirmatory.** Everything that decides a verdict (methods, "
                    "seeds, recipe, attack budget and grid, diagnostic rules and thresholds, "
                    "primaries and margins) was frozen in the study's study.toml, with its "
                    "SHA-256, before its first run trained.",
    "confirmation": "**Phase: confirmation.** The declared study again, on seeds no earlier "
                    "run of its folder used; confirmation.md beside the original report says "
                    "which primaries replicated, by the declared rule.",
}


def title_section(ctx: ReportContext) -> None:
    d = ctx.dataset
    phase = PHASES.get(ctx.declaration.phase)
    ctx.lines += [
        "# robustmix report", "", *([phase, ""] if phase else []),
        f"{len(ctx.records)} runs in {len(ctx.groups)} groups on {d.get('name')} "
        f"({d.get('channels')}×{d.get('height')}×{d.get('width')}, {d.get('n_train')} train / "
        f"{d.get('n_test')} test images). Runs that differ only in seed form a group, "
        "shown as mean ± std over seeds (n runs); std needs two seeds.", ""]


def runs_section(ctx: ReportContext) -> None:
    """Every run: its group, seed, accuracy, convergence and which measurements it has."""
    frame = _runs_frame(ctx)
    ctx.csv("runs.csv", frame)
    ctx.section("Runs", f"Converged: {CONVERGENCE}. A comparison that involves an "
                        "unconverged run is not judged (\"inconclusive (unconverged model)\"). "
                        "A run without held-out data (trained before it existed, or with "
                        "holdout = 0) is \"not judged\": its comparisons are tested, and each "
                        "verdict it enters says so in its note.")
    rows = [[r["run"], r["group"], r["seed"], _pct(r["final_test_acc"]),
             _converged_cell(r["converged"], r["convergence"]),
             _yes(r["generalization"]), _yes(r["robustness"])] for _, r in frame.iterrows()]
    ctx.lines += _md(["run", "group", "seed", f"final test acc (%, {runs.METRICS})",
                      "converged", runs.GENERALIZATION, runs.ROBUSTNESS], rows)
    for line in _missing_measurements(ctx.records):
        ctx.paragraph(line)
    ctx.link("runs.csv", "one row per run")


def _converged_cell(converged, why: str) -> str:
    if _yes(converged) == "not judged":
        return why
    return _yes(converged) + (f" ({why})" if why else "")


def _runs_frame(ctx: ReportContext) -> pd.DataFrame:
    frame = ctx.per_run[["run", "group", "method", "seed", "final_test_acc", "converged",
                         "convergence"]].copy()
    frame["path"] = [str(r.info.path) for r in ctx.records]
    frame["generalization"] = [r.generalization is not None for r in ctx.records]
    frame["robustness"] = [r.robustness is not None for r in ctx.records]
    return frame


def _missing_measurements(records: list[RunRecord]) -> list[str]:
    """For each measurement that some runs lack: which runs, and the command that makes it."""
    lines = []
    for attribute, file, verb, command in (
            ("generalization", runs.GENERALIZATION, "measure", "evaluate"),
            ("robustness", runs.ROBUSTNESS, "attack", "attack")):
        missing = [r for r in records if getattr(r, attribute) is None]
        if missing:
            lines.append(f"Without {file}: {', '.join(r.name for r in missing)}; {verb} them "
                         f"with `robustmix {command} "
                         f"{' '.join(str(r.info.path) for r in missing)}`.")
    return lines


ROBUSTNESS_TEXT = (
    "Accuracy (%) on each run's attacked test subset (examples: its size; a subset "
    "of a given size is the same examples for every run), mean ± std over seeds "
    "(n runs), as robust accuracy / robust ÷ clean accuracy: the second number is the "
    "share of the correctly classified examples that the attack leaves standing, "
    "which prediction (b) compares. clean: the same subset unattacked. worst-case: "
    "per example, the worst over every attack run at that ε on those examples, "
    "whichever command ran it; which attacks that covers is listed below. Where a run "
    "lists one attack at one ε several times, the row on the most examples is used, "
    "then the strongest setting (lowest accuracy).")


def robustness_section(ctx: ReportContext) -> None:
    """Clean and robust accuracy: a table and two plots per norm, then the attack notes."""
    ctx.section("Clean and robust accuracy")
    if ctx.robust is None:
        ctx.paragraph(f"Skipped: no run has {runs.ROBUSTNESS} (run `robustmix attack`).")
        return
    summary = _robust_summary(ctx.robust)
    ctx.csv("robustness_by_method.csv", summary.rename(columns={
        "eps_key": "eps_value", "mean": "robust_acc_mean", "std": "robust_acc_std",
        "n": "n_runs", "clean_acc": "clean_acc_mean"}))
    ctx.paragraph(ROBUSTNESS_TEXT)
    for norm in ("linf", "l2"):
        if (ctx.robust["norm"] == norm).any():
            ctx.lines += _robust_table(ctx.robust, ctx.groups, norm)
            ctx.png(f"robust_accuracy_{norm}.png", plots.robustness_figure, summary,
                    ctx.groups, norm)
            ctx.png(f"robust_given_clean_{norm}.png", plots.robustness_figure, summary,
                    ctx.groups, norm, "conditional")
    ctx.link("robustness_by_method.csv", "per method, attack, norm, ε and subset")
    ctx.lines += _worst_case_note(ctx.robust)
    ctx.lines += _flagged_checks(ctx.robust)


def _robust_summary(robust: pd.DataFrame) -> pd.DataFrame:
    return (robust.groupby(["group", "attack", "norm", "eps_key", "n_examples"], sort=False)
            .agg(eps=("eps", "first"), mean=("robust_acc", "mean"),
                 std=("robust_acc", "std"), n=("robust_acc", "count"),
                 clean_acc=("clean_acc", "mean"), conditional_mean=("conditional", "mean"),
                 conditional_std=("conditional", "std"))
            .reset_index())


def _robust_table(robust: pd.DataFrame, groups: list[Group], norm: str) -> list[str]:
    """One row per ε, subset size and group; one column per attack."""
    part = robust[robust["norm"] == norm]
    attacks = plots.attack_order(part["attack"].unique().tolist())
    rows = []
    for (eps_key, n), at in part.groupby(["eps_key", "n_examples"], sort=True):
        for group in groups:
            mine = at[at["group"] == group.name]
            if mine.empty:
                continue
            clean = mine.groupby("run")["clean_acc"].first().tolist()
            rows.append([at["eps"].iloc[0], int(n), group.name, _cell(clean, True)]
                        + [_robust_cell(mine[mine["attack"] == a]) for a in attacks])
    return [f"**{norm}**", ""] + _md(["ε", "examples", "method", "clean"] + attacks, rows)


def _worst_case_note(robust: pd.DataFrame) -> list[str]:
    worst = robust[robust["attack"] == WORST]
    covers = worst.groupby("settings")["eps"].agg(lambda e: ", ".join(dict.fromkeys(e)))
    if covers.empty:
        return []
    return ["Worst-case rows: " + "; ".join(
        f"{settings} at ε = {eps}" for settings, eps in covers.items()) + ".", ""]


def _flagged_checks(robust: pd.DataFrame) -> list[str]:
    flagged = robust[robust["checks"].astype(str).str.strip() != ""]
    if flagged.empty:
        return []
    return (["Attack checks raised (read before trusting these numbers):", ""]
            + [f"- {x.run}, {x.attack} {x.norm} ε = {x.eps}: {x.checks}"
               for x in flagged.itertuples()]
            + [""])


def generalization_section(ctx: ReportContext) -> None:
    """Generalization gaps, first-layer norms and input-gradient norms per group."""
    ctx.section("Generalization and the first layer")
    if ctx.per_run.get("test_acc") is None or ctx.per_run["test_acc"].isna().all():
        ctx.paragraph(NO_GENERALIZATION)
        return
    table, rows = _generalization_table(ctx)
    ctx.csv("generalization_by_method.csv", pd.DataFrame(table))
    ctx.paragraph("Clean (unmixed, unaugmented) splits. Gaps: accuracy train − test, loss "
                  "test − train. ‖W/std‖_F: the first layer as the [0, 1] input meets it. "
                  "Input-gradient norms: L2 per test example, then the mean.")
    ctx.lines += _md(["method"] + [h for _, h, _ in GENERALIZATION_METRICS], rows)
    ctx.png("generalization.png", plots.bars_figure, _generalization_panels(ctx), ctx.groups,
            "Generalization gap and first-layer norm per method (bars: mean, dots: runs)")
    ctx.link("generalization_by_method.csv", "mean, std and n per metric and method")


def _generalization_table(ctx: ReportContext) -> tuple[list[dict], list[list[str]]]:
    """Per group: the CSV row (mean, std, n per metric) and the Markdown cells."""
    table, rows = [], []
    for group in ctx.groups:
        row = {"group": group.name, "method": group.method}
        cells = [group.name]
        for column, _, percent in GENERALIZATION_METRICS:
            values = ctx.values(group, column)
            mean, std, n = summarize(values)
            row.update({f"{column}_mean": mean, f"{column}_std": std, f"{column}_n": n})
            cells.append(_cell(values, percent))
        table.append(row)
        rows.append(cells)
    return table, rows


def _generalization_panels(ctx: ReportContext) -> list[tuple[str, str, dict]]:
    groups = ctx.groups
    return [("train − test accuracy gap", "gap (percentage points)",
             {g.name: [v * 100 for v in ctx.values(g, "gap_acc")] for g in groups}),
            ("test − train loss gap", "gap (cross-entropy, nats)",
             {g.name: ctx.values(g, "gap_loss") for g in groups}),
            ("first-layer weight norm", "‖W‖_F",
             {g.name: ctx.values(g, "first_layer_frobenius") for g in groups})]

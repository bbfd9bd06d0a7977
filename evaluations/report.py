"""`write_report`: comparison tables, plots and the paper's predictions for a set of runs.

Reads each run's config.json, generalization.json (from ``robustmix evaluate``),
robustness.csv (from ``robustmix attack``) and corruptions.csv (``evaluate --corruptions``); sections whose files are missing are skipped
and the report says which runs lack what. Runs that differ only in seed are grouped
(:mod:`robustmix.evaluations.grouping`) and shown as mean ± std over seeds (n runs). Every file is
written atomically into ``OUT``; files of an earlier report there that this one does not
produce are removed, so report.md links exactly the files present.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from robustmix.evaluations import plots
from robustmix.evaluations.collect import (RunRecord, load_record, robustness_rows, run_metrics,
                                 unique_names)
from robustmix.evaluations.convergence import CRITERION as CONVERGENCE
from robustmix.evaluations.declaration import Declaration
from robustmix.evaluations.grouping import Group, group_runs, method_rank, summarize
from robustmix.evaluations.markdown import cell as _cell
from robustmix.evaluations.markdown import md as _md
from robustmix.evaluations.markdown import num as _num
from robustmix.evaluations.markdown import pct as _pct
from robustmix.evaluations.markdown import robust_cell as _robust_cell
from robustmix.evaluations.markdown import yes as _yes
from robustmix.evaluations.profiles import DECAY, NORMALIZATION
from robustmix.evaluations.regularizer import DEFINITION as Q_DEFINITION
from robustmix.evaluations.report_attacks import OUTPUTS as ATTACK_OUTPUTS
from robustmix.evaluations.report_attacks import diagnostics_section, overstatement_section
from robustmix.evaluations.report_calibration import OUTPUTS as CALIBRATION_OUTPUTS
from robustmix.evaluations.robustbench import robustbench_section
from robustmix.evaluations.report_calibration import (calibration_section, corruptions_section,
                                            summary_section)
from robustmix.evaluations.report_predictions import predictions_section
from robustmix.core import methods, runs
from robustmix.core.errors import UsageError
from robustmix.mixing import is_data_dependent, make_sampler, mask_kernel

REPORT = "report.md"
KERNEL_DRAWS = 2048
GALLERY_MAX_SIZE = 128
OUTPUTS = ("runs.csv", "generalization_by_method.csv", "robustness_by_method.csv",
           "robust_accuracy_linf.png", "robust_accuracy_l2.png",
           "robust_given_clean_linf.png", "robust_given_clean_l2.png", "generalization.png",
           "gradient_profiles.csv", "mask_kernels.csv", "gradient_profile.png",
           "q_matrix.csv", "q_matrix.png", "mask_gallery.png", "predictions.csv", REPORT,
           *CALIBRATION_OUTPUTS, *ATTACK_OUTPUTS)
GENERALIZATION_METRICS = (  # column, header, percent
    ("test_acc", "test acc (%)", True), ("train_acc", "clean train acc (%)", True),
    ("gap_acc", "acc gap train-test (pp)", True), ("gap_loss", "loss gap test-train", False),
    ("first_layer_frobenius", "first layer ‖W‖_F", False),
    ("first_layer_frobenius_input_units", "‖W/std‖_F", False),
    ("grad_loss_l2", "mean ‖∇ₓℓ‖₂", False), ("grad_logit_l2", "mean ‖∇ₓf_y‖₂", False),
    ("profile_decay", "profile decay D", False),
)


def write_report(run_dirs: Iterable[str | Path], out_dir: str | Path, *,
                 declaration: Declaration | None = None) -> Path:
    """Write ``OUT/report.md`` with its CSV tables and PNG plots; returns its path.

    ``run_dirs`` is an iterable (a list, a tuple, a generator) of finished run directories
    (str or path), all trained on the same data set; ``out_dir`` a str or path, created
    if missing. ``declaration`` is what the study declared before its data (primary ε
    grid, level, margins; :class:`~robustmix.evaluations.declaration.Declaration`); None: no
    declaration, the primary grid is derived from the runs and the report says so. A
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


NO_GENERALIZATION = f"Skipped: no run has {runs.GENERALIZATION} (run `robustmix evaluate`)."


def title_section(ctx: ReportContext) -> None:
    d = ctx.dataset
    ctx.lines += [
        "# robustmix report", "",
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
                         f"with `robustmix {command} --run "
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
    worst = robust[robust["attack"] == "worst-case"]
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


def profile_section(ctx: ReportContext) -> None:
    """Figure 4: the measured gradient-distance profiles against the mask kernels c(p)."""
    ctx.section("Gradient-distance profile (Figure 4) and the mask kernel c(p)")
    measured, rows = _measured_profiles(ctx)
    if not measured:
        ctx.paragraph(NO_GENERALIZATION)
        return
    frame = pd.DataFrame(rows).pivot_table(index=["group", "direction", "offset", "n_runs"],
                                           columns="column", values="mean_over_runs",
                                           sort=False).reset_index()
    ctx.csv("gradient_profiles.csv", frame)
    kernels, kernel_rows = _kernels(ctx)
    ctx.csv("mask_kernels.csv", pd.DataFrame(kernel_rows))
    ctx.paragraph(
        "g = the input gradient of the true-class logit, channels summed. Normalization "
        f"(the paper's is not published): {NORMALIZATION}. Curves are the mean over a "
        "group's runs. Predicted: c(p) = E[(1 − M_u)(1 − M_u+p)] of the run's own mask "
        f"sampler and α ({KERNEL_DRAWS} masks), divided by c(0) to compare shapes. "
        f"Statistic of prediction (c): {DECAY} (in the generalization table).")
    ctx.png("gradient_profile.png", plots.profile_figure, measured, kernels, ctx.groups)
    ctx.link("gradient_profiles.csv", "horizontal, vertical and radial profiles per method")
    ctx.link("mask_kernels.csv", "c(p) and c(p)/c(0) per method")


def _measured_profiles(ctx: ReportContext) -> tuple[dict[str, dict], list[dict]]:
    """Per group with a measured profile: its horizontal mean curves (plotted), and every
    direction's mean curves as rows (offset, column, mean over runs)."""
    measured, rows = {}, []
    for group in ctx.groups:
        curves = [r.generalization["gradient_profile"] for r in ctx.records_of(group)
                  if r.generalization and "gradient_profile" in r.generalization]
        if not curves:
            continue
        measured[group.name] = {}
        for direction in ("horizontal", "vertical", "radial"):
            for column in ("max_abs_over_p0", "mean_abs_over_p0"):
                mean = _mean_curve(curves, direction, column)
                if direction == "horizontal":
                    measured[group.name][column] = mean
                rows += [{"group": group.name, "direction": direction, "offset": offset,
                          "column": column, "mean_over_runs": value, "n_runs": len(curves)}
                         for offset, value in enumerate(mean)]
    return measured, rows


def _mean_curve(curves: list[dict], direction: str, column: str) -> np.ndarray:
    """The mean over runs of one profile curve, per offset (missing values skipped)."""
    stack = np.array([[np.nan if v is None else v for v in c[direction][column]]
                      for c in curves], dtype=float)
    with warnings.catch_warnings():  # an offset with no value in any run
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(stack, axis=0)


def _kernels(ctx: ReportContext) -> tuple[dict[str, np.ndarray], list[dict]]:
    """c(p)/c(0) per MSDA group (for the plot), and c(p) with c(p)/c(0) as rows."""
    size = (int(ctx.dataset["height"]), int(ctx.dataset["width"]))
    kernels, rows, cache = {}, [], {}
    for group in ctx.groups:
        kernel = _group_kernel(ctx, group, size, cache)
        if kernel is None:
            continue
        kernels[group.name] = kernel / kernel[0] if kernel[0] > 0 else kernel
        rows += [{"group": group.name, "method": group.method, "offset": p, "c": c,
                  "c_over_c0": kernels[group.name][p]} for p, c in enumerate(kernel)]
    return kernels, rows


def _group_kernel(ctx: ReportContext, group: Group, size: tuple[int, int],
                  cache: dict) -> np.ndarray | None:
    """A group's c(p): drawn from its sampler (with its options), or for a data-dependent
    MSDA the mean of its runs' measured kernels; None for vanilla or where none was measured."""
    if group.method == "vanilla":
        return None
    s = group.settings
    options = {key[4:]: value for key, value in s.items()
               if key.startswith("mix.") and key[4:] not in methods.RESERVED_OPTIONS}
    key = (group.method, s.get("mix.alpha", 1.0), tuple(sorted(options.items())))
    if key not in cache:
        sampler = make_sampler(group.method, **options)
        cache[key] = None if is_data_dependent(sampler) else \
            mask_kernel(sampler, size, alpha=key[1], draws=KERNEL_DRAWS)
    if cache[key] is None:
        # PuzzleMix's masks depend on the data: c(p) measured by `robustmix evaluate`
        stored = [np.asarray(r.generalization["mask_kernel"]["c"], dtype=float)
                  for r in ctx.records_of(group)
                  if r.generalization and "mask_kernel" in r.generalization]
        return np.mean(stored, axis=0) if stored else None
    return cache[key]


def q_section(ctx: ReportContext) -> None:
    """The first-layer regularizer Q per model and mask distribution, as a heatmap."""
    ctx.section("First-layer regularizer Q (models × mask distributions)")
    present = {c.split(".", 1)[1] for c in ctx.per_run.columns if c.startswith("q.")}
    masks = sorted(present, key=lambda m: (method_rank(m), m))
    if not masks:
        ctx.paragraph(NO_GENERALIZATION)
        return
    vanilla = {g.family: g for g in ctx.groups if g.method == "vanilla"}
    use_rho = all(g.family in vanilla for g in ctx.groups)
    rows, matrix = _q_matrix(ctx, masks, vanilla, use_rho)
    ctx.csv("q_matrix.csv", pd.DataFrame(rows))
    shown = [j for j, m in enumerate(masks) if m != "vanilla"]
    if not shown:
        ctx.paragraph("Skipped: Q was measured on no mask distribution but vanilla's.")
        return
    what = ("ρ = Q_A(model) / Q_A(vanilla model)" if use_rho
            else "Q_A / Q_ref (no vanilla run to divide by)")
    ctx.paragraph(f"{Q_DEFINITION}. Vanilla's mask (M = 1) "
                  "gives Q = 0 and is left out of the heatmap. The heatmap shows "
                  f"{what}, mean over seeds; prediction (d): the smallest value in each "
                  "column sits on the model trained with that mask. ρ carries both the "
                  "mask-specific effect and the overall scale of each model's first layer; "
                  "Q_A / Q_ref (q_relative_mean in q_matrix.csv) divides the scale out.")
    ctx.lines += _q_settings_note(ctx.records)
    ctx.png("q_matrix.png", plots.heatmap_figure, matrix[:, shown],
            [g.name for g in ctx.groups], [masks[j] for j in shown],
            f"First-layer regularizer: {what}", what.split(" (")[0])
    header = ["model"] + [masks[j] for j in shown]
    cells = [[g.name] + [_num(matrix[i, j]) for j in shown] for i, g in enumerate(ctx.groups)]
    ctx.lines += _md(header, cells)
    ctx.link("q_matrix.csv", "Q mean, std, n, Q/Q_ref and ρ per model and mask")


def _q_matrix(ctx: ReportContext, masks: list[str], vanilla: dict[str, Group],
              use_rho: bool) -> tuple[list[dict], np.ndarray]:
    """A row per group and mask; the matrix holds ρ (or Q/Q_ref where not use_rho)."""
    rows, matrix = [], np.full((len(ctx.groups), len(masks)), np.nan)
    for i, group in enumerate(ctx.groups):
        for j, mask in enumerate(masks):
            row = _q_row(ctx, group, mask, vanilla.get(group.family))
            rows.append(row)
            matrix[i, j] = row["rho_vs_vanilla"] if use_rho else row["q_relative_mean"]
    return rows, matrix


def _q_row(ctx: ReportContext, group: Group, mask: str, vanilla: Group | None) -> dict:
    """Q of a group's models on one mask: mean, std, n, Q/Q_ref, and ρ against vanilla."""
    mean, std, n = summarize(ctx.values(group, f"q.{mask}"))
    rel = summarize(ctx.values(group, f"q_relative.{mask}"))[0]
    base = summarize(ctx.values(vanilla, f"q.{mask}"))[0] if vanilla is not None else math.nan
    rho = mean / base if base > 0 else math.nan
    return {"group": group.name, "mask": mask, "q_mean": mean, "q_std": std,
            "n": n, "q_relative_mean": rel, "rho_vs_vanilla": rho}


def _q_settings_note(records: list[RunRecord]) -> list[str]:
    settings = {}
    for r in records:
        q = (r.generalization or {}).get("regularizer")
        if q:
            key = tuple((k, q.get(k)) for k in ("alpha", "hmix_r", "switch_prob", "draws",
                                                 "seed"))
            settings.setdefault(key, []).append(r.name)
    if len(settings) <= 1:
        text = ", ".join(f"{k} = {v}" for k, v in next(iter(settings))) if settings else ""
        return [f"All runs share the mask settings and draws ({text}): every model met the "
                "same pairs and masks.", ""]
    parts = "; ".join(f"{', '.join(f'{k}={v}' for k, v in key)}: {', '.join(names)}"
                      for key, names in settings.items())
    return [f"Warning: Q was computed with different mask settings or draws across runs "
            f"({parts}); Q_A values are comparable only within equal settings.", ""]


def gallery_section(ctx: ReportContext) -> None:
    size = max(8, min(int(ctx.dataset["height"]), int(ctx.dataset["width"]),
                      GALLERY_MAX_SIZE))
    ctx.section("Mask gallery", f"Each MSDA's mask at λ = 0.65 on {size}×{size} digits "
                                "(the training samplers).")
    ctx.png("mask_gallery.png", plots.draw_gallery, size)

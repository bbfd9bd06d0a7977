"""The report's sections on the paper's mechanism: the measured input-gradient profiles
against each mask's kernel c(p) (Figure 4), the first-layer regularizer Q per model and
mask distribution, and the mask gallery. Each section takes the report's context
(:class:`robustmix.evaluations.report.ReportContext`) and adds its lines, tables and plots.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from robustmix.evaluations import plots
from robustmix.evaluations.collect import RunRecord
from robustmix.evaluations.grouping import Group, method_rank, summarize
from robustmix.evaluations.markdown import md as _md
from robustmix.evaluations.markdown import num as _num
from robustmix.evaluations.profiles import DECAY, NORMALIZATION
from robustmix.evaluations.regularizer import DEFINITION as Q_DEFINITION
from robustmix.core import methods, runs
from robustmix.mixing import is_data_dependent, make_sampler, mask_kernel

KERNEL_DRAWS = 2048
GALLERY_MAX_SIZE = 128
NO_GENERALIZATION = f"Skipped: no run has {runs.GENERALIZATION} (run `robustmix evaluate`)."
OUTPUTS = ("gradient_profiles.csv", "mask_kernels.csv", "gradient_profile.png",
           "q_matrix.csv", "q_matrix.png", "mask_gallery.png")


def profile_section(ctx) -> None:
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


def _measured_profiles(ctx) -> tuple[dict[str, dict], list[dict]]:
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


def _kernels(ctx) -> tuple[dict[str, np.ndarray], list[dict]]:
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


def _group_kernel(ctx, group: Group, size: tuple[int, int],
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


def q_section(ctx) -> None:
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


def _q_matrix(ctx, masks: list[str], vanilla: dict[str, Group],
              use_rho: bool) -> tuple[list[dict], np.ndarray]:
    """A row per group and mask; the matrix holds ρ (or Q/Q_ref where not use_rho)."""
    rows, matrix = [], np.full((len(ctx.groups), len(masks)), np.nan)
    for i, group in enumerate(ctx.groups):
        for j, mask in enumerate(masks):
            row = _q_row(ctx, group, mask, vanilla.get(group.family))
            rows.append(row)
            matrix[i, j] = row["rho_vs_vanilla"] if use_rho else row["q_relative_mean"]
    return rows, matrix


def _q_row(ctx, group: Group, mask: str, vanilla: Group | None) -> dict:
    """Q of a group's models on one mask: mean, std, n, Q/Q_ref, and ρ against vanilla."""
    mean, std, n = summarize(ctx.values(group, f"q.{mask}"))
    rel = summarize(ctx.values(group, f"q_relative.{mask}"))[0]
    base = summarize(ctx.values(vanilla, f"q.{mask}"))[0] if vanilla is not None else math.nan
    rho = mean / base if base > 0 else math.nan
    return {"group": group.name, "mask": mask, "q_mean": mean, "q_std": std,
            "n": n, "q_relative_mean": rel, "rho_vs_vanilla": rho}


Q_SETTINGS = ("alpha", "hmix_r", "switch_prob", "draws", "seed")   # in every file


def _q_settings_note(records: list[RunRecord]) -> list[str]:
    """Whether every run's Q met the same masks: the settings every regularizer record
    holds, and every method's options (a plugin's too) where all records hold them (files
    of before the options dict lack them, so they are compared on the settings alone)."""
    q_of = {r.name: q for r in records if (q := (r.generalization or {}).get("regularizer"))}
    with_options = all("options" in q for q in q_of.values())
    settings = {}
    for name, q in q_of.items():
        key = tuple((k, q.get(k)) for k in Q_SETTINGS)
        if with_options:
            key += tuple((f"{method}.{k}", v) for method, options in sorted(
                q["options"].items()) for k, v in sorted(options.items()))
        settings.setdefault(key, []).append(name)
    if len(settings) <= 1:
        shared = next(iter(settings))[:len(Q_SETTINGS)] if settings else ()
        text = ", ".join(f"{k} = {v}" for k, v in shared)
        return [f"All runs share the mask settings and draws ({text}): every model met the "
                "same pairs and masks.", ""]
    parts = "; ".join(f"{', '.join(f'{k}={v}' for k, v in key)}: {', '.join(names)}"
                      for key, names in settings.items())
    return [f"Warning: Q was computed with different mask settings or draws across runs "
            f"({parts}); Q_A values are comparable only within equal settings.", ""]


def gallery_section(ctx) -> None:
    size = max(8, min(int(ctx.dataset["height"]), int(ctx.dataset["width"]),
                      GALLERY_MAX_SIZE))
    ctx.section("Mask gallery", f"Each MSDA's mask at λ = 0.65 on {size}×{size} digits "
                                "(the training samplers).")
    ctx.png("mask_gallery.png", plots.draw_gallery, size)

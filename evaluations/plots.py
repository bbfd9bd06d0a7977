"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot,
no global backend switch) and written atomically as PNG.

The mask gallery (:func:`draw_gallery`) is the paper's figure of what each MSDA does; the
report and ``robustmix masks --out`` share it.

One colour per method in every figure (the registry's, :mod:`robustmix.core.methods`: a
registered colour, else one from a palette chosen by the name); groups that share a method
differ by line style and marker. Legends sit outside the axes so they hide no data.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from robustmix.attacks.registry import find, registered
from robustmix.attacks.worst_case import WORST
from robustmix.evaluations.grouping import Group
from robustmix.core import runs
from robustmix.core import methods
from robustmix.core.methods import colour
from robustmix.data import load_dataset
from robustmix.mixing import is_data_dependent, make_sampler

LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D")


def style(group: Group) -> dict:
    """Colour by method, line style and marker by the group's index within its method."""
    return {"color": colour(group.method),
            "linestyle": LINESTYLES[group.style % len(LINESTYLES)],
            "marker": MARKERS[group.style % len(MARKERS)]}


def _new_figure(**kwargs):
    # matplotlib (about 0.3 s) loads with the first figure, not with the evaluations package
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _figure(ncols: int, width: float = 4.2, height: float = 3.6):
    fig = _new_figure(figsize=(width * ncols + 2.2, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def save(fig, path: Path, dpi: int = 100) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    runs.atomic_write_bytes(path, buffer.getvalue())


def _legend(fig, axes) -> None:
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, title="method")


def attack_order(attacks: Sequence[str]) -> list[str]:
    """The attacks in the report's order: those whose record has an ``order`` by it, then
    the worst case, then the rest by name."""
    def place(name: str) -> tuple:
        if name == WORST:
            return (1, 0, name)
        attack = find(name) if name in registered() else None
        ordered = attack is not None and attack.order is not None
        return (0, attack.order, name) if ordered else (2, 0, name)
    return sorted(dict.fromkeys(attacks), key=place)


def robustness_figure(path: Path, summary, groups: list[Group], norm: str,
                      value: str = "robust") -> None:
    """Robust accuracy (%) against ε, one panel per attack; error bars: std over seeds.

    ``summary`` rows: group, attack, norm, eps_key, mean, std, n (and conditional_mean,
    conditional_std: robust / clean, plotted with ``value="conditional"``). Where a group
    was attacked on several subsets at one ε, the largest is drawn.
    """
    rows = summary[summary["norm"] == norm].sort_values("n_examples", ascending=False)
    rows = rows.drop_duplicates(["group", "attack", "eps_key"])
    mean, std, what = ("mean", "std", "robust accuracy (%)") if value == "robust" else \
        ("conditional_mean", "conditional_std", "robust / clean accuracy (%)")
    attacks = attack_order(rows["attack"].unique().tolist())
    fig, axes = _figure(len(attacks))
    scale, unit = (255.0, "ε (×1/255, L∞)") if norm == "linf" else (1.0, "ε (L2, [0,1] pixels)")
    for ax, attack in zip(axes, attacks):
        for group in groups:
            part = rows[(rows["attack"] == attack) & (rows["group"] == group.name)]
            if part.empty:
                continue
            part = part.sort_values("eps_key")
            ax.errorbar(part["eps_key"] * scale, part[mean] * 100,
                        yerr=np.nan_to_num(part[std].to_numpy() * 100), label=group.name,
                        capsize=3, markersize=4, **style(group))
        ax.set_title(f"{attack} ({norm})")
        ax.set_xlabel(unit)
        ax.set_ylabel(what)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{what.split(' (')[0].capitalize()} against ε ({norm}); error bars: std "
                 "over seeds")
    _legend(fig, axes)
    save(fig, path)


def bars_figure(path: Path, panels: list[tuple[str, str, dict[str, list[float]]]],
                groups: list[Group], title: str) -> None:
    """One bar chart per panel (title, y label, group name -> per-run values): the bar is the
    mean over seeds, the error bar the std, the dots the single runs."""
    fig, axes = _figure(len(panels), width=3.6)
    for ax, (panel_title, ylabel, values) in zip(axes, panels):
        for x, group in enumerate(groups):
            points = [v for v in values.get(group.name, []) if v is not None and math.isfinite(v)]
            if not points:
                continue
            s = style(group)
            std = float(np.std(points, ddof=1)) if len(points) > 1 else 0.0
            ax.bar(x, float(np.mean(points)), yerr=std, color=s["color"], alpha=0.75,
                   capsize=4, label=group.name, hatch=("", "//", "..", "xx")[group.style % 4])
            ax.plot([x] * len(points), points, "k.", markersize=5)
        ax.set_xticks(range(len(groups)), [g.name for g in groups], rotation=30, ha="right",
                      fontsize=8)
        ax.set_title(panel_title)
        ax.set_ylabel(ylabel)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    _legend(fig, axes)
    save(fig, path)


def profile_figure(path: Path, measured: dict[str, dict[str, np.ndarray]],
                   kernels: dict[str, np.ndarray], groups: list[Group]) -> None:
    """Measured horizontal profiles (max- and mean-normalized, mean over seeds) beside the
    predicted kernel c(p)/c(0) of each group's MSDA, against the pixel offset."""
    fig, axes = _figure(3)
    panels = (("max_abs_over_p0", "measured: max_k,v |g_v g_v+p| / value at p=0"),
              ("mean_abs_over_p0", "measured: mean_k,v |g_v g_v+p| / value at p=0"))
    for ax, (column, label) in zip(axes[:2], panels):
        for group in groups:
            if group.name in measured:
                curve = measured[group.name][column]
                ax.plot(np.arange(len(curve)), curve, label=group.name, markersize=3,
                        **style(group))
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("normalized product (1 at p = 0)")
    for group in groups:
        if group.name in kernels:
            curve = kernels[group.name]
            axes[2].plot(np.arange(len(curve)), curve, label=group.name, markersize=3,
                         **style(group))
    axes[2].set_title("predicted: mask kernel c(p) / c(0) (vanilla: c = 0)", fontsize=9)
    axes[2].set_ylabel("c(p) / c(0)")
    for ax in axes:
        ax.set_xlabel("horizontal offset p (pixels)")
        ax.grid(alpha=0.3)
    fig.suptitle("Gradient-distance profile (Figure 4) beside each MSDA's kernel c(p)")
    _legend(fig, axes)
    save(fig, path)


def heatmap_figure(path: Path, matrix: np.ndarray, rows: list[str], cols: list[str],
                   title: str, colour_label: str) -> None:
    """A models × mask-distributions heatmap, each cell annotated with its value."""
    fig = _new_figure(figsize=(1.3 * len(cols) + 3.5, 0.6 * len(rows) + 2.2), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("mask distribution A")
    ax.set_ylabel("model (trained with)")
    finite = matrix[np.isfinite(matrix)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(len(rows)):
        for j in range(len(cols)):
            value = matrix[i, j]
            text = "–" if not math.isfinite(value) else f"{value:.3g}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if math.isfinite(value) and value < middle else "black")
    fig.colorbar(image, ax=ax, label=colour_label)
    ax.set_title(title, fontsize=10)
    save(fig, path)


def gallery_masks(size: int, lam: float, *,
                  options: Mapping[str, Mapping[str, Any]] | None = None, seed: int = 0
                  ) -> dict[str, torch.Tensor]:
    """One (1, 1, size, size) mask per registered MSDA whose masks need no images (in the
    registry's order, plugins too) at a fixed λ, drawn from the training samplers with
    ``options[name]`` (an MSDA's own options; its defaults where not given)."""
    masks, options = {}, options or {}
    for mix in methods.names():
        rng = np.random.default_rng(seed)
        sampler = make_sampler(mix, **options.get(mix, {}))
        if not is_data_dependent(sampler):
            masks[mix] = sampler(torch.tensor([lam]), size, size, rng, "cpu")
    return masks


def draw_gallery(path: str | Path, size: int, *, lam: float = 0.65,
                 options: Mapping[str, Mapping[str, Any]] | None = None,
                 seed: int = 0) -> None:
    """The paper's figure: two digits, then for each MSDA the mixed image above its mask
    (``options`` as :func:`gallery_masks` takes them)."""
    images, labels = load_dataset("digits", image_size=size).tensors("test")
    first = int((labels == 0).nonzero()[0])
    second = int((labels == 8).nonzero()[0])
    x_i, x_j = images[first].float() / 255, images[second].float() / 255
    masks = gallery_masks(size, lam, options=options, seed=seed)
    hmix_r = {**methods.get("hmix").options, **(options or {}).get("hmix", {})}["hmix_r"]
    fig = _new_figure(figsize=(1.7 * (len(masks) + 2), 3.8))
    axes = fig.subplots(2, len(masks) + 2)
    for ax, image, title in ((axes[0, 0], x_i, "x_i"), (axes[0, 1], x_j, "x_j")):
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title)
    for col, (mix, mask) in enumerate(masks.items(), start=2):
        mixed = mask[0] * x_i + (1 - mask[0]) * x_j
        axes[0, col].imshow(mixed[0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[0, col].set_title(f"{mix}\nmean M = {mask.mean():.2f}", fontsize=9)
        axes[1, col].imshow(mask[0, 0].numpy(), cmap="viridis", vmin=0, vmax=1)
    axes[1, 0].text(0.0, 0.5, f"masks M\n(λ = {lam},\nr = {hmix_r})", fontsize=9,
                    va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[1, :2]:
        ax.axis("off")
    fig.suptitle("Each MSDA is a mask: x̃ = M ⊙ x_i + (1 − M) ⊙ x_j (yellow: M = 1, from x_i)")
    fig.tight_layout()
    save(fig, Path(path), dpi=110)

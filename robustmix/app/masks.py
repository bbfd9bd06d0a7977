"""`robustmix masks`: the mask kernel c(p) as CSV, and a gallery of mixed images and masks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from robustmix import runs
from robustmix.mixing import DATA_FREE_MIX_NAMES, make_sampler, mask_kernel


def write_kernel(path: str | Path, mix: str, size: int, *, draws: int, alpha: float,
                 hmix_r: float = 0.5, switch_prob: float = 0.5, seed: int = 0) -> np.ndarray:
    """Write ``offset,c`` rows: c(p) for horizontal offsets p = 0..size−1."""
    sampler = make_sampler(mix, hmix_r=hmix_r, switch_prob=switch_prob)
    kernel = mask_kernel(sampler, size, alpha=alpha, draws=draws, seed=seed)
    rows = [{"offset": p, "c": f"{c:.8f}"} for p, c in enumerate(kernel)]
    runs.write_csv(path, rows, ["offset", "c"])
    return kernel


def gallery_masks(size: int, lam: float, *, hmix_r: float = 0.5,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """One (1, 1, size, size) mask per MSDA at a fixed λ, drawn from the training samplers."""
    masks = {}
    for mix in DATA_FREE_MIX_NAMES:
        rng = np.random.default_rng(seed)
        sampler = make_sampler(mix, hmix_r=hmix_r)
        masks[mix] = sampler(torch.tensor([lam]), size, size, rng, "cpu")
    return masks


def draw_gallery(path: str | Path, size: int, *, lam: float = 0.65, hmix_r: float = 0.5,
                 seed: int = 0) -> None:
    """The paper's figure: two digits, then for each MSDA the mixed image above its mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robustmix.data import load_dataset

    images, labels = load_dataset("digits", image_size=size).tensors("test")
    first = int((labels == 0).nonzero()[0])
    second = int((labels == 8).nonzero()[0])
    x_i, x_j = images[first].float() / 255, images[second].float() / 255
    masks = gallery_masks(size, lam, hmix_r=hmix_r, seed=seed)
    fig, axes = plt.subplots(2, len(masks) + 2, figsize=(1.7 * (len(masks) + 2), 3.8))
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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    runs.atomic_write_bytes(path, buffer.getvalue())

"""`robustmix masks --kernel`: the mask kernel c(p) as CSV (the gallery, ``--out``, is drawn by
:func:`robustmix.evaluations.plots.draw_gallery`, which the report shares)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustmix.core import runs
from robustmix.core.config import MixConfig
from robustmix.mixing import mask_kernel, sampler_of


def write_kernel(path: str | Path, mix: MixConfig, size: int, *, draws: int,
                 seed: int = 0) -> np.ndarray:
    """Write ``offset,c`` rows: c(p) of ``mix``'s sampler (its options, λ ~ Beta(α, α))
    for horizontal offsets p = 0..size−1."""
    kernel = mask_kernel(sampler_of(mix), size, alpha=mix.alpha, draws=draws, seed=seed)
    rows = [{"offset": p, "c": f"{c:.8f}"} for p, c in enumerate(kernel)]
    runs.write_csv(path, rows, ["offset", "c"])
    return kernel

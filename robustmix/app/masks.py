"""`robustmix masks --kernel`: the mask kernel c(p) as CSV (the gallery, ``--out``, is drawn by
:func:`evaluations.plots.draw_gallery`, which the report shares)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustmix.core import runs
from robustmix.core.config import MixConfig
from robustmix.mixing import make_sampler, mask_kernel


def write_kernel(path: str | Path, mix: str, size: int, *, draws: int, alpha: float,
                 hmix_r: float = MixConfig.hmix_r, switch_prob: float = MixConfig.switch_prob,
                 seed: int = 0) -> np.ndarray:
    """Write ``offset,c`` rows: c(p) for horizontal offsets p = 0..size−1."""
    sampler = make_sampler(mix, hmix_r=hmix_r, switch_prob=switch_prob)
    kernel = mask_kernel(sampler, size, alpha=alpha, draws=draws, seed=seed)
    rows = [{"offset": p, "c": f"{c:.8f}"} for p, c in enumerate(kernel)]
    runs.write_csv(path, rows, ["offset", "c"])
    return kernel

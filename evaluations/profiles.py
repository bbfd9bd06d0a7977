"""The gradient-distance profile of the paper's Figure 4.

For test images x_k let g_k = Σ_channels ∂f_{y_k}(x_k)/∂x_k, an H×W map. For a pixel
offset p = (dy, dx) the products over every position v with v + p inside the image are

    mean_abs(p) = mean_{k, v} |g_k(v) · g_k(v + p)|
    max_abs(p)  = max_{k, v}  |g_k(v) · g_k(v + p)|

Offsets cover the half plane dy ≥ 0 (dx < 0 only when dy > 0), so every unordered pixel
pair is counted once. Three profiles are read off this table:

- horizontal: p = (0, dx), dx = 0..W−1;
- vertical:   p = (dy, 0), dy = 0..H−1;
- radial:     distance bins r = round(‖p‖), r = 0, 1, ...; mean_abs pools every
  (k, v, p) with p in the bin (pairs-weighted), max_abs is the max over the bin.

Normalization (the paper's is not published): ``max_abs_over_p0`` = max_abs(p) /
max_abs(0) (starts at 1, as the paper plots it), and likewise ``mean_abs_over_p0``.
The decay statistic D = mean_abs_over_p0 at radial distance r = ⌊min(H, W)/2⌋.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

NORMALIZATION = ("max_abs_over_p0 = max_abs(p) / max_abs(p=0); mean_abs_over_p0 = "
                 "mean_abs(p) / mean_abs(p=0); both start at 1")
DEFINITION = ("g_k = sum over channels of d f_{y_k}(x_k) / d x (the [0,1] input); "
              "mean_abs(p) = mean over k, v of |g_k(v) g_k(v+p)|, max_abs(p) = max over k, v; "
              "radial bins r = round(|p|) over the half plane dy >= 0 (each unordered pixel "
              "pair once), mean pooled over all pairs in the bin")
DECAY = "D = mean_abs_over_p0 at radial distance r = floor(min(H, W) / 2)"
COLUMNS = ["direction", "offset", "pairs", "mean_abs", "max_abs", "mean_abs_over_p0",
           "max_abs_over_p0"]


class OffsetTable:
    """Running sums, maxima and pair counts of |g(v) g(v+p)| for every half-plane offset.

    Entries are indexed [dy, dx + W − 1] with dy in 0..H−1 and dx in −(W−1)..W−1; the
    entries dy = 0, dx < 0 stay empty (they repeat dx > 0).
    """

    def __init__(self, height: int, width: int, device="cpu"):
        self.height, self.width = height, width
        shape = (height, 2 * width - 1)
        self.sums = torch.zeros(shape, dtype=torch.float64, device=device)
        self.maxes = torch.zeros(shape, dtype=torch.float64, device=device)
        self.pairs = torch.zeros(shape, dtype=torch.int64)

    def offsets(self):
        for dy in range(self.height):
            for dx in range(-(self.width - 1), self.width):
                if dy > 0 or dx >= 0:
                    yield dy, dx

    def add(self, g: Tensor) -> None:
        """Add maps g of shape (N, H, W); one batched product per offset."""
        g = g.to(self.sums.device, torch.float64)
        h, w = self.height, self.width
        for dy, dx in self.offsets():
            if dx >= 0:
                a, b = g[:, : h - dy, : w - dx], g[:, dy:, dx:]
            else:
                a, b = g[:, : h - dy, -dx:], g[:, dy:, : w + dx]
            products = (a * b).abs()
            col = dx + w - 1
            self.sums[dy, col] += products.sum()
            self.maxes[dy, col] = torch.maximum(self.maxes[dy, col], products.max())
            self.pairs[dy, col] += products.numel()

    def profiles(self) -> dict[str, dict[str, list]]:
        """The horizontal, vertical and radial profiles (see the module docstring)."""
        sums, maxes = self.sums.cpu().numpy(), self.maxes.cpu().numpy()
        pairs = self.pairs.numpy()
        w = self.width
        out = {
            "horizontal": _profile(sums[0, w - 1:], maxes[0, w - 1:], pairs[0, w - 1:]),
            "vertical": _profile(sums[:, w - 1], maxes[:, w - 1], pairs[:, w - 1]),
        }
        dy, dx = np.meshgrid(np.arange(self.height), np.arange(-(w - 1), w), indexing="ij")
        radius = np.round(np.hypot(dy, dx)).astype(int)
        valid = pairs > 0
        bins = radius.max() + 1
        out["radial"] = _profile(
            np.bincount(radius[valid], weights=sums[valid], minlength=bins),
            _binned_max(radius[valid], maxes[valid], bins),
            np.bincount(radius[valid], weights=pairs[valid], minlength=bins).astype(np.int64))
        return out


def _binned_max(bins: np.ndarray, values: np.ndarray, count: int) -> np.ndarray:
    result = np.zeros(count)
    np.maximum.at(result, bins, values)
    return result


def _profile(sums: np.ndarray, maxes: np.ndarray, pairs: np.ndarray) -> dict[str, list]:
    mean = np.divide(sums, pairs, out=np.full(len(sums), np.nan), where=pairs > 0)
    return {"offset": list(range(len(sums))), "pairs": [int(n) for n in pairs],
            "mean_abs": mean.tolist(), "max_abs": list(map(float, maxes)),
            "mean_abs_over_p0": _over_first(mean), "max_abs_over_p0": _over_first(maxes)}


def _over_first(values: np.ndarray) -> list[float]:
    first = float(values[0])
    if not first > 0:
        return [math.nan] * len(values)
    return (np.asarray(values, dtype=np.float64) / first).tolist()


def decay_statistic(radial: dict[str, list], height: int, width: int) -> dict[str, float]:
    """D = mean_abs_over_p0 at r = ⌊min(H, W)/2⌋ (near 1: flat profile; near 0: fast decay)."""
    r = min(height, width) // 2
    return {"radius": r, "value": float(radial["mean_abs_over_p0"][r]), "definition": DECAY}


def profile_rows(profiles: dict[str, dict[str, list]]) -> list[dict]:
    """Long-format rows (``COLUMNS``) for the CSV."""
    rows = []
    for direction, p in profiles.items():
        for i, offset in enumerate(p["offset"]):
            rows.append({"direction": direction, "offset": offset, "pairs": p["pairs"][i],
                         **{k: _fmt(p[k][i]) for k in COLUMNS[3:]}})
    return rows


def _fmt(value: float) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.8g}"

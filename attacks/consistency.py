"""Gradient consistency: does a model's autograd gradient describe the model?

At (a point within h of) each clean input, the derivative of a random combination of the
logits along a few random ±1 directions is taken twice: from autograd, and as a central
difference (f(x + h·v) − f(x − h·v)) / 2h. A network of ReLUs, max-pools, linear layers and
normalizations is piecewise linear, so the two agree up to float32 rounding unless a
unit changes side within h (a few units of thousands: a small error). A model that
quantizes or otherwise steps its input, or whose backward pass returns something other
than the derivative of its forward pass (obfuscated, shattered or random gradients),
disagrees in most directions whatever the ε grid.

Tolerance, from the numerics: an output computed in float32 carries an absolute error of
at most about ``roundings`` × 2⁻²⁴ × |output| (``roundings`` counts the roundings one
forward pass accumulates); the central difference divides the sum of two such errors by
2h. A direction disagrees when |autograd − difference| exceeds ``tolerance`` × the larger
of the gradient's L2 norm (the typical size of a derivative along a ±1 direction, which
does not vanish where one direction's derivative happens to) and |difference|, plus that
rounding bound.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

UNIT_ROUNDOFF = 2.0 ** -24   # float32


def disagreement(model: nn.Module, x: Tensor, indices: Tensor, *, seed: int, directions: int,
                 step: float, tolerance: float, roundings: float, device,
                 batch_size: int = 64) -> Tensor:
    """Per example of ``x`` (images in [0, 1]), the share of ``directions`` random ±1
    directions in which the autograd derivative and the central difference disagree.
    The draws depend on (``seed``, the example's test-set index) alone."""
    shares = []
    if x.shape[0] == 0:
        return torch.zeros(0)
    for xb, ib in zip(x.split(batch_size), indices.split(batch_size)):
        shares.append(_batch(model, xb.to(device), ib, seed, directions, step, tolerance,
                             roundings))
    return torch.cat(shares) if shares else torch.zeros(0)


def _batch(model, x, indices, seed, directions, step, tolerance, roundings) -> Tensor:
    base = x.clamp(step, 1 - step).detach()          # x ± h·v stays in [0, 1]
    with torch.no_grad():
        n_classes = model(base[:1]).shape[1]
    draws = [np.random.default_rng([seed, 13, int(i)]) for i in indices]
    weights = torch.stack([torch.from_numpy(g.standard_normal(n_classes)) for g in draws])
    signs = torch.stack([torch.from_numpy(np.sign(g.uniform(-1, 1, (directions,
                                                                    *x.shape[1:]))))
                         for g in draws]).float().to(x.device)     # (B, D, C, H, W)
    weights = weights.float().to(x.device)
    point = base.clone().requires_grad_(True)
    value = (model(point).float() * weights).sum()
    grad = torch.autograd.grad(value, point)[0]
    auto = (grad.unsqueeze(1) * signs).flatten(2).sum(2)            # (B, D)
    size = grad.flatten(1).norm(dim=1, keepdim=True)
    flat = signs.flatten(0, 1)
    repeated = base.repeat_interleave(directions, 0)
    w = weights.repeat_interleave(directions, 0)
    with torch.no_grad():
        plus = (model(repeated + step * flat).float() * w).sum(1)
        minus = (model(repeated - step * flat).float() * w).sum(1)
        scale = (model(repeated).float().abs() * w.abs()).sum(1)
    diff = ((plus - minus) / (2 * step)).view(-1, directions)
    rounding = (roundings * UNIT_ROUNDOFF * 2 * scale / (2 * step)).view(-1, directions)
    gap = (auto.detach() - diff).abs()
    disagree = ~(gap <= tolerance * torch.maximum(size.detach(), diff.abs()) + rounding)
    return disagree.float().mean(1).cpu()

"""FGSM, and PGD with per-example randomness, early exit and the best iterate.

torchattacks' PGD returns its last iterate and draws the random start from the global RNG
for the whole batch, so its result depends on the batch and on what ran before. The PGD
here follows the same step (sign of the gradient for L∞, the normalized gradient for L2,
projection onto the ε-ball and [0, 1]), but

- draws each example's random start from ``(seed, example index, restart)`` alone,
- stops attacking an example as soon as it is misclassified (that iterate is kept), and
- therefore counts an example as broken if any iterate of any restart broke it.

With the random start off and early exit off it returns exactly torchattacks' iterate
(tested), so the difference is only in what is counted, never in the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PassCounter(nn.Module):
    """Wraps a model and counts forward and backward passes, per example.

    A forward on a batch of 128 adds 128 forward passes; a backward through that output
    adds 128 backward passes. Counting needs no host synchronization.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.forwards = 0
        self.backwards = 0
        self.train(model.training)  # torchattacks restores the mode it finds on the wrapper

    def forward(self, x: Tensor) -> Tensor:
        self.forwards += x.shape[0]
        out = self.model(x)
        if out.requires_grad:
            out = _CountBackward.apply(out, self)
        return out


class _CountBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, out, counter):
        ctx.counter = counter
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        ctx.counter.backwards += grad.shape[0]
        return grad, None


@dataclass(frozen=True)
class PGDSettings:
    steps: int = 20
    step_size: float | None = None   # None: ε/4 (either norm)
    restarts: int = 1
    random_start: bool = True

    def step_for(self, eps: float) -> float:
        return eps / 4 if self.step_size is None else self.step_size

    def describe(self, eps: float) -> str:
        start = "random start" if self.random_start else "no random start"
        return (f"steps={self.steps};step={self.step_for(eps):.6g};restarts={self.restarts};"
                f"{start}")


def example_noise(indices: Tensor, shape: tuple[int, ...], seed: int, restart: int,
                  norm: str) -> Tensor:
    """Per-example random-start directions drawn from (seed, index, restart) alone.

    L∞: uniform in [−1, 1]^d; L2: a uniform direction scaled by a uniform radius in [0, 1]
    (torchattacks' PGDL2 start). The caller multiplies by ε.
    """
    rows = []
    for index in indices.tolist():
        rng = np.random.default_rng([seed, index, restart])
        if norm == "linf":
            rows.append(rng.uniform(-1.0, 1.0, size=shape))
        else:
            direction = rng.standard_normal(size=shape)
            direction /= np.linalg.norm(direction) + 1e-12
            rows.append(direction * rng.uniform(0.0, 1.0))
    return torch.from_numpy(np.stack(rows)).float() if rows else torch.zeros(0, *shape)


def project(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    """Project onto the ε-ball around x (L∞ or L2), then onto [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * torch.clamp(eps / norms, max=1.0).view(-1, *([1] * (x.dim() - 1)))
    return (x + delta).clamp(0, 1)


def _step(x_adv: Tensor, grad: Tensor, step: float, norm: str) -> Tensor:
    if norm == "linf":
        return x_adv + step * grad.sign()
    norms = grad.flatten(1).norm(dim=1) + 1e-10
    return x_adv + step * grad / norms.view(-1, *([1] * (grad.dim() - 1)))


def pgd(model: nn.Module, x: Tensor, y: Tensor, indices: Tensor, eps: float, norm: str,
        settings: PGDSettings, seed: int, early_exit: bool = True) -> tuple[Tensor, Tensor]:
    """Attack a batch; returns (adversarial examples, broken flags).

    ``indices`` are the examples' positions in the evaluated set: they seed the random
    starts, so an example's result depends on nothing else in the batch. Each step's
    forward pass also checks the previous iterate, so early exit costs no extra pass. The
    returned example is the first iterate that broke it (of the first restart that did),
    else the last iterate of the last restart.
    """
    step = settings.step_for(eps)
    x_best = x.clone()
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for restart in range(settings.restarts):
        active = (~broken).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        x0, y0 = x[active], y[active]
        if settings.random_start:
            noise = example_noise(indices[active].cpu(), tuple(x.shape[1:]), seed, restart,
                                  norm).to(x.device)
            x_adv = project(x0 + eps * noise, x0, eps, norm)
        else:
            x_adv = x0.clone()
        for t in range(settings.steps + 1):
            last = t == settings.steps
            x_adv = x_adv.detach().requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                logits = model(x_adv)
            hit = logits.detach().argmax(1) != y0
            if early_exit or last:
                x_best[active[hit]] = x_adv.detach()[hit]
                broken[active[hit]] = True
            if last:
                x_best[active[~hit]] = x_adv.detach()[~hit]
                break
            if early_exit and hit.any():
                keep = ~hit
                if not keep.any():
                    break
                loss = F.cross_entropy(logits[keep], y0[keep], reduction="sum")
                grad = torch.autograd.grad(loss, x_adv)[0][keep]
                active, x0, y0, x_adv = active[keep], x0[keep], y0[keep], x_adv[keep]
            else:
                loss = F.cross_entropy(logits, y0, reduction="sum")
                grad = torch.autograd.grad(loss, x_adv)[0]
            x_adv = project(_step(x_adv.detach(), grad, step, norm), x0, eps, norm)
    return x_best, broken


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str) -> Tensor:
    """FGSM (Goodfellow et al. 2015), L∞ only: clip(x + ε·sign(∇x CE(f(x), y)), 0, 1).

    The mean cross-entropy over the batch, as torchattacks' FGSM takes it; the sign makes
    the step independent of the reduction, so each example's result is its own.
    """
    if norm != "linf":
        raise ValueError("FGSM is an L∞ attack (norm linf); use pgd for norm l2")
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    grad = torch.autograd.grad(loss, x)[0]
    return (x.detach() + eps * grad.sign()).clamp(0, 1)

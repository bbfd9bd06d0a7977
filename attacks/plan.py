"""What an attack command will do, said before it does it, with a bound on its time.

The bound: one forward and backward pass over a batch of the run's own examples, timed
(seconds per example), times each attack's known passes per example at one ε, times the
examples, at every ε, as if every example stood at every ε. The sweep does not attack an
example again once broken at a smaller ε, so a command usually takes less; the command
prints the time it took beside the bound. Passes per example and ε are the attack's own
fact, on its record (:meth:`robustmix.attacks.registry.Attack.passes`; the built-ins' in
:mod:`robustmix.attacks.builtin`): an ensemble's is the sum over its stages, and an attack
registered without a cost counts its ``steps`` setting, else 1 (a guess: the line says so).

The diagnostics add the strongest attack again (a restart) on a few examples per ε, and
forward passes only for the rest (:mod:`robustmix.attacks.diagnostics`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustmix.attacks.registry import get
from robustmix.attacks.sweep import AttackConfig

def passes(name: str, settings: dict, n_classes: int) -> tuple[float, bool]:
    """Forward-and-backward passes per example at one ε, and whether that is known."""
    return get(name).passes(settings, n_classes)


def seconds_per_pass(model: nn.Module, x: Tensor, y: Tensor, device, batch_size: int
                     ) -> float:
    """Measured seconds of one forward and backward pass per example: the fastest of three
    timed passes after a warm-up (the others carry the machine's noise)."""
    xb = x[:batch_size].to(device).float()
    yb = y[:batch_size].to(device)
    was_training = model.training
    model.eval()
    times = []
    try:
        for _ in range(4):
            _synchronize(device)
            start = time.perf_counter()
            xg = xb.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xg), yb), xg)
            _synchronize(device)
            times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return min(times[1:]) / xb.shape[0]


def _synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@dataclass(frozen=True)
class Estimate:
    seconds: float          # the bound
    per_pass: float         # seconds per example and pass, measured
    passes: float           # passes per example, every attack and ε
    guessed: tuple[str, ...]  # attacks whose passes are a guess

    def line(self, run: str, config: AttackConfig, n: int) -> str:
        grid = ",".join(e.text for e in config.eps)
        names = ", ".join(_spelled(a, config) for a in config.attacks)
        guess = f"; {', '.join(self.guessed)}: passes guessed" if self.guessed else ""
        return (f"{run}: {names} on {n} examples at ε {grid} ({config.norm}): at most "
                f"{clock(self.seconds)} ({self.passes:,.0f} passes of "
                f"{self.per_pass * 1e3:.3g} ms per example; less as examples break){guess}")


def _spelled(name: str, config: AttackConfig) -> str:
    given = config.options.get(name, {})
    return name + "".join(f",{k}={v}" for k, v in given.items())


def estimate(model: nn.Module, x: Tensor, y: Tensor, config: AttackConfig, n_classes: int,
             device) -> Estimate:
    """The bound on an attack command's time on (x, y) (see the module)."""
    per_pass = seconds_per_pass(model, x, y, device, config.batch_size)
    return bound(config, n_classes, per_pass, x.shape[0])


def bound(config: AttackConfig, n_classes: int, per_pass: float, n: int) -> Estimate:
    """The bound on attacking ``n`` examples at ``per_pass`` seconds per example and pass."""
    total, guessed = 0.0, []
    for name in config.attacks:
        count, known = passes(name, config.settings_for(name), n_classes)
        total += count * len(config.eps)
        if not known:
            guessed.append(name)
    return Estimate(total * per_pass * n, per_pass, total, tuple(guessed))


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"

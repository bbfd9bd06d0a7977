"""Attack-failure diagnostics: the checks that reveal an evaluation that lies.

After Carlini et al. 2019 ("On Evaluating Adversarial Robustness"), Pintor et al. 2022
("Indicators of Attack Failure") and AutoAttack's own checks. For every ε of a run's grid
they look at the examples the worst case leaves standing, the ones a robustness number
counts:

| check | fails when | threshold |
|---|---|---|
| single-step | an iterative attack leaves standing an example that a single-step attack broke (per example) | 0 examples |
| restart | the strongest attack again from new random starts (another seed, the same budget) on a sample of the standing examples breaks so many that the worst case would fall by more than ``tolerance`` points, and more than a converged attack's tail (``tail``, 5%) could explain (one-sided binomial test at 5%): incomplete optimization | 2 points |
| zero-gradients | the input gradient of the cross-entropy is exactly zero or not finite (float32, at the clean input) | 0 examples |
| saturated-softmax | the float32 softmax is exactly one-hot, so the cross-entropy's gradient vanishes identically | 0 examples |
| noise | random vertices of the ε-ball (L∞; random directions of length ε for L2) break an example | 0 examples |
| transfer | PGD run on another model of the study breaks an example | 0 examples |
| unbounded | at ε = 1 (L∞) or √(C·H·W) (L2), where any image is reachable, the strongest attack leaves more than chance standing | 1 / classes |
| autoattack | AutoAttack's or the model's own checks (randomness, probabilities as outputs, zero gradients of the DLR loss, too few classes, Square beating the gradient attacks) raised a message | 0 messages |

Exact zeros are the float32 facts they say: a softmax is one-hot only when every other
logit trails by more than about 103 (exp underflows), so no trained model meets it by
chance. The examples the diagnostics' own attacks break are not added to the worst case:
they flag the run instead, and its verdicts say "attack failure suspected".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustmix.attacks import worst_case
from robustmix.attacks.eps import Eps
from robustmix.attacks.gradient import PGDSettings, pgd
from robustmix.attacks.registry import get
from robustmix.attacks.sweep import WORST, AttackConfig, robustness
from robustmix.core import runs
from robustmix.core.errors import ConfigError, UsageError

FIELDS = ["check", "attack", "norm", "eps", "eps_value", "n_examples", "value", "threshold",
          "passed", "detail"]
CHECKS = ("single-step", "restart", "zero-gradients", "saturated-softmax", "noise",
          "transfer", "unbounded", "autoattack")
DESCRIPTIONS = {  # check -> (fails when, threshold), as the report shows them
    "single-step": ("an iterative attack leaves standing an example a single-step attack "
                    "broke (per example)", "0 examples"),
    "restart": ("the strongest attack again from new random starts (another seed, the same "
                "budget) on 16 sampled standing examples breaks so many that the worst case "
                "would fall by more than the tolerance, more than a 5% tail explains "
                "(binomial test at 5%)", "2 points"),
    "zero-gradients": ("a standing example's input gradient of the cross-entropy is exactly "
                       "zero or not finite (float32)", "0 examples"),
    "saturated-softmax": ("a standing example's float32 softmax is exactly one-hot",
                          "0 examples"),
    "noise": ("random vertices of the ε-ball (64 per example) break a standing example",
              "0 of 32"),
    "transfer": ("PGD-20 run on another run's model breaks a standing example", "0 examples"),
    "unbounded": ("at ε = 1 (L∞) or √(C·H·W) (L2) the strongest attack leaves more than "
                  "chance standing", "1 / classes"),
    "autoattack": ("AutoAttack's or the model's own checks raised a message", "0 messages"),
}
assert tuple(DESCRIPTIONS) == CHECKS
GATES_ALL = ("unbounded",)                 # a per-run failure: every ε's worst case
MASKING = ("zero-gradients", "saturated-softmax", "noise", "transfer", "unbounded")


@dataclass(frozen=True)
class DiagnosticSettings:
    """How hard the diagnostics look (their cost: see benchmarks/RESULTS.md)."""

    sample: int = 16           # restart: standing examples attacked again per ε
    tolerance: float = 2.0     # restart: the fall of the worst case it may imply (points)
    tail: float = 0.05         # restart: the share a converged attack's restart may break
    noise_sample: int = 32     # noise: standing examples tried per ε
    noise_draws: int = 64      # noise: random points per example
    transfer_steps: int = 20   # transfer: PGD steps on the other model
    square: bool = True        # Square (gradient-free) where the checks suspect masking


@dataclass(frozen=True)
class Check:
    check: str
    attack: str
    eps: Eps
    value: float
    threshold: float
    passed: bool
    detail: str

    def as_csv(self, norm: str, n: int) -> dict[str, Any]:
        return {"check": self.check, "attack": self.attack, "norm": norm,
                "eps": self.eps.text, "eps_value": self.eps.csv_value(), "n_examples": n,
                "value": f"{self.value:.6g}", "threshold": f"{self.threshold:.6g}",
                "passed": "yes" if self.passed else "no", "detail": self.detail}


def _count_check(name: str, attack: str, eps: Eps, flags: Tensor, what: str) -> Check:
    count = int(flags.sum())
    return Check(name, attack, eps, count, 0, count == 0,
                 f"{count} standing example{'s' if count != 1 else ''} {what}")


@dataclass
class Outcomes:
    """Per-example outcomes of every attack run on a subset at one norm: the clean flags,
    and per ε each attack's standing flags (the worst over its settings)."""

    clean: Tensor
    by_eps: dict[Eps, dict[str, Tensor]]

    @classmethod
    def from_rows(cls, rows: list[dict[str, str]], norm: str, n: int) -> "Outcomes":
        clean = torch.ones(n, dtype=torch.bool)
        by_eps: dict[Eps, dict[str, Tensor]] = {}
        for row in rows:
            if row["norm"] != norm or int(row["n_examples"]) != n:
                continue
            clean &= worst_case.decode(row["clean"])
            here = by_eps.setdefault(Eps(row["eps"]), {})
            standing = worst_case.decode(row["standing"])
            here[row["attack"]] = here[row["attack"]] & standing if row["attack"] in here \
                else standing
        return cls(clean, dict(sorted(by_eps.items())))

    def worst(self, eps: Eps) -> Tensor:
        standing = self.clean.clone()
        for flags in self.by_eps[eps].values():
            standing &= flags
        return standing


def _kind(name: str) -> tuple[str, int]:
    try:
        attack = get(name)
        return attack.kind, attack.strength
    except (ConfigError, UsageError):  # a plugin no longer importable: count it iterative
        return "iterative", 2


def strongest(names) -> str:
    """The strongest of the attacks ``names`` (by the registry's strength, then name)."""
    return max(sorted(names), key=lambda name: _kind(name)[1])


def prober(names) -> str:
    """The attack that attacks again (restart, unbounded): the strongest iterative
    one of ``names``; PGD where only single-step or gradient-free attacks ran."""
    iterative = [n for n in names if _kind(n)[0] in ("iterative", "ensemble")]
    return strongest(iterative) if iterative else "pgd"


def single_step(outcomes: Outcomes, eps: Eps) -> list[Check]:
    """Iterative attacks must break whatever a single-step attack broke, per example."""
    here = outcomes.by_eps[eps]
    single = [a for a in here if _kind(a)[0] == "single-step"]
    if not single:
        return []
    broken = torch.zeros_like(outcomes.clean)
    for name in single:
        broken |= outcomes.clean & ~here[name]
    return [_count_check("single-step", name, eps, broken & here[name],
                         f"against {name} that {'/'.join(single)} broke")
            for name in here if _kind(name)[0] in ("iterative", "ensemble")]


@dataclass
class Probe:
    """What the checks that attack again need: the model and the examples."""

    model: nn.Module
    x: Tensor
    y: Tensor
    indices: Tensor
    config: AttackConfig
    n_classes: int
    device: Any

    def attack(self, name: str, eps: Eps, chosen: Tensor, *, restart: bool) -> Tensor:
        """Standing flags of examples ``chosen`` (a bool mask) after ``name`` at ``eps``;
        from other random starts (the next seed) when ``restart``."""
        where = chosen.nonzero().squeeze(1)
        if where.numel() == 0:
            return torch.zeros(0, dtype=torch.bool)
        options = dict(self.config.options.get(name, {})) if name in self.config.attacks else {}
        config = AttackConfig(attacks=(name,), eps=(eps,), norm=self.config.norm,
                              pgd=self.config.pgd, batch_size=self.config.batch_size,
                              seed=self.config.seed + (1 if restart else 0),
                              options={name: options})
        result = robustness(self.model, self.x[where], self.y[where], config,
                            indices=self.indices[where], device=self.device,
                            n_classes=self.n_classes)
        return result.robust[(name, eps)]


def restart(probe: Probe, outcomes: Outcomes, eps: Eps, settings: DiagnosticSettings
            ) -> Check:
    """Incomplete optimization: the strongest attack again, from other random starts (a
    restart), on a sample of the standing examples."""
    name = prober(outcomes.by_eps[eps])
    standing = outcomes.worst(eps)
    chosen = _sample(standing, settings.sample, probe.config.seed, eps)
    after = probe.attack(name, eps, chosen, restart=True)
    broken, sampled = int((~after).sum()), int(chosen.sum())
    share = int(standing.sum()) / standing.numel() if standing.numel() else 0.0
    fall = 100.0 * share * broken / sampled if sampled else 0.0
    # more than a converged attack's tail: P(K >= broken | sampled, tail) at most 5%
    beyond = broken > 0 and stats.binom.sf(broken - 1, sampled, settings.tail) <= 0.05
    return Check("restart", name, eps, fall, settings.tolerance,
                 not (fall > settings.tolerance and beyond),
                 f"a restart (seed + 1) broke {broken} of {sampled} sampled standing examples: "
                 f"the worst case would fall by about {fall:.2g} points "
                 f"({'more' if beyond else 'no more'} than a {settings.tail:.0%} tail explains)")


def _sample(flags: Tensor, size: int, seed: int, eps: Eps) -> Tensor:
    """At most ``size`` of the flagged examples, drawn from (seed, ε) alone."""
    where = flags.nonzero().squeeze(1).numpy()
    rng = np.random.default_rng([seed, 11, eps.exact.numerator, eps.exact.denominator])
    chosen = torch.zeros_like(flags)
    if where.size:
        pick = rng.choice(where, size=min(size, where.size), replace=False)
        chosen[torch.from_numpy(np.sort(pick))] = True
    return chosen


def gradient_flags(model: nn.Module, x: Tensor, y: Tensor, device, batch_size: int
                   ) -> tuple[Tensor, Tensor]:
    """Per example, at the clean input: (∇x CE exactly zero or not finite, float32 softmax
    exactly one-hot)."""
    zero, saturated = [], []
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        xb = xb.to(device).detach().requires_grad_(True)
        logits = model(xb).float()
        loss = F.cross_entropy(logits, yb.to(device), reduction="sum")
        grad = torch.autograd.grad(loss, xb)[0].flatten(1)
        zero.append(((grad.abs().sum(1) == 0) | ~torch.isfinite(grad).all(1)).cpu())
        onehot = F.one_hot(yb.to(device), logits.shape[1]).float()
        saturated.append((logits.detach().softmax(1) == onehot).all(1).cpu())
    return torch.cat(zero), torch.cat(saturated)


def noise(probe: Probe, outcomes: Outcomes, eps: Eps, settings: DiagnosticSettings) -> Check:
    """Random points of the ε-ball must not break what the white-box attacks did not."""
    chosen = _sample(outcomes.worst(eps), settings.noise_sample, probe.config.seed, eps)
    where = chosen.nonzero().squeeze(1)
    broken = torch.zeros(where.numel(), dtype=torch.bool)
    for k, index in enumerate(where.tolist()):
        x = probe.x[index].to(probe.device)
        delta = _random_points(x.shape, settings.noise_draws, eps.value, probe.config.norm,
                               np.random.default_rng([probe.config.seed, 12,
                                                      int(probe.indices[index])]))
        with torch.no_grad():
            logits = probe.model((x + delta.to(probe.device)).clamp(0, 1))
        broken[k] = bool((logits.argmax(1) != probe.y[index].to(probe.device)).any())
    return Check("noise", WORST, eps, int(broken.sum()), 0, not bool(broken.any()),
                 f"{int(broken.sum())} of {where.numel()} standing examples broken by "
                 f"{settings.noise_draws} random points each")


def _random_points(shape, draws: int, eps: float, norm: str, rng) -> Tensor:
    if norm == "linf":  # the ε-cube's vertices: the farthest random points
        return torch.from_numpy(eps * np.sign(rng.uniform(-1, 1, (draws, *shape)))).float()
    direction = rng.standard_normal((draws, math.prod(shape)))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True) + 1e-12
    return torch.from_numpy(eps * direction.reshape(draws, *shape)).float()


def unbounded(probe: Probe, outcomes: Outcomes) -> Check:
    """Where any image is reachable the strongest attack must reach chance."""
    largest = max(outcomes.by_eps)
    name = prober(outcomes.by_eps[largest])
    d = math.prod(probe.x.shape[1:])
    eps = Eps("1") if probe.config.norm == "linf" else Eps.of(float(f"{math.sqrt(d):.6g}"))
    after = probe.attack(name, eps, outcomes.worst(largest), restart=False)
    n = outcomes.clean.numel()
    accuracy = int(after.sum()) / n if n else 0.0
    chance = 1.0 / probe.n_classes
    return Check("unbounded", name, eps, accuracy, chance, accuracy <= chance,
                 f"{int(after.sum())} of {n} examples stand at ε = {eps.text} "
                 f"(chance: {chance:.3g})")


def diagnose(probe: Probe, outcomes: Outcomes, settings: DiagnosticSettings,
             messages: dict[tuple[str, Eps], list[str]]) -> list[Check]:
    """Every check but transfer (:func:`transfer`), for every ε of ``outcomes``."""
    clean = outcomes.clean.nonzero().squeeze(1)
    zero = torch.zeros_like(outcomes.clean)
    saturated = torch.zeros_like(outcomes.clean)
    z, s = gradient_flags(probe.model, probe.x[clean], probe.y[clean], probe.device,
                          probe.config.batch_size)
    zero[clean], saturated[clean] = z, s
    checks = []
    for eps in outcomes.by_eps:
        standing = outcomes.worst(eps)
        checks += single_step(outcomes, eps)
        checks.append(restart(probe, outcomes, eps, settings))
        checks.append(_count_check("zero-gradients", WORST, eps, zero & standing,
                                   "with a zero or non-finite input gradient"))
        checks.append(_count_check("saturated-softmax", WORST, eps, saturated & standing,
                                   "whose float32 softmax is one-hot"))
        checks.append(noise(probe, outcomes, eps, settings))
        for attack in outcomes.by_eps[eps]:
            said = messages.get((attack, eps), [])
            checks.append(Check("autoattack", attack, eps, len(said), 0, not said,
                                "; ".join(said) or "no message"))
    if outcomes.by_eps:
        checks.append(unbounded(probe, outcomes))
    return checks


def diagnose_result(model: nn.Module, x: Tensor, y: Tensor, result, config: AttackConfig, *,
                    indices: Tensor | None = None, n_classes: int | None = None,
                    device="cpu", settings: DiagnosticSettings = DiagnosticSettings()
                    ) -> list[Check]:
    """The checks of :func:`diagnose` for a :func:`~robustmix.attacks.sweep.robustness` result (the
    Python API's path: any model, no run directory). ``x`` as given to ``robustness``."""
    x = x.float().div(255) if x.dtype == torch.uint8 else x
    by_eps: dict[Eps, dict[str, Tensor]] = {}
    for (name, eps), standing in result.robust.items():
        if name != WORST:
            by_eps.setdefault(eps, {})[name] = standing
    outcomes = Outcomes(result.clean.clone(), dict(sorted(by_eps.items())))
    indices = torch.arange(x.shape[0]) if indices is None else indices
    if n_classes is None:
        with torch.no_grad():
            n_classes = int(model(x[:1].to(device)).shape[1])
    messages = {(r.attack, r.eps): list(r.checks) for r in result.rows if r.attack != WORST}
    was_training = model.training
    model.eval()
    try:
        return diagnose(Probe(model, x, y, indices, config, n_classes, device), outcomes,
                        settings, messages)
    finally:
        model.train(was_training)


def failed_worst(checks: list[Check]) -> dict[Eps, list[str]]:
    """Per ε of the grid: the failed checks that withhold a verdict on the worst case
    (as robustness.csv's worst-case rows list them)."""
    rows = [c.as_csv("any", 0) for c in checks]
    return {eps: names for (attack, eps), names in failures(rows, "any", 0).items()
            if attack == WORST}


def transfer(target: nn.Module, source: nn.Module, source_name: str, x: Tensor, y: Tensor,
             indices: Tensor, outcomes: Outcomes, config: AttackConfig, device,
             settings: DiagnosticSettings) -> list[Check]:
    """PGD run on ``source`` must not break what the white-box attacks left standing."""
    checks = []
    pgd_settings = PGDSettings(steps=settings.transfer_steps)
    for eps in outcomes.by_eps:
        where = outcomes.worst(eps).nonzero().squeeze(1)
        broken = 0
        for batch in where.split(config.batch_size):
            xb, yb = x[batch].to(device), y[batch].to(device)
            x_adv, _ = pgd(source, xb, yb, indices[batch], eps.value, config.norm,
                           pgd_settings, config.seed, early_exit=False)
            with torch.no_grad():
                broken += int((target(x_adv).argmax(1) != yb).sum())
        checks.append(Check("transfer", WORST, eps, broken, 0, broken == 0,
                            f"PGD-{settings.transfer_steps} on {source_name} broke {broken} "
                            f"of {where.numel()} standing examples"))
    return checks


def read(path) -> list[dict[str, str]]:
    """A run's diagnostics.csv (checked); [] when absent."""
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        return []
    columns = {name: runs.text for name in FIELDS}
    columns.update(value=runs.number(), threshold=runs.number(),
                   n_examples=runs.number(0, integer=True), passed=runs.choice(("yes", "no")))
    return runs.read_table(path, columns)


def failures(rows: list[dict[str, str]], norm: str, n: int) -> dict[tuple[str, Eps], list[str]]:
    """What robustness.csv's ``diagnostics`` column says per (attack, ε).

    An attack's row: the failed checks on that attack there, and those on the examples
    the worst case leaves standing (masked gradients concern every attack at that ε). The
    ``worst-case`` row: the failed checks on the strongest attack, on the worst case
    itself, the model's and AutoAttack's messages, and a per-run failure (unbounded).
    """
    mine = [r for r in rows if r["norm"] == norm and int(r["n_examples"]) == n]
    failed = [r for r in mine if r["passed"] == "no"]
    result: dict[tuple[str, Eps], list[str]] = {}
    for row in failed:
        result.setdefault((row["attack"], Eps(row["eps"])), []).append(row["check"])
    grid = sorted({Eps(r["eps"]) for r in mine if r["check"] not in GATES_ALL})
    per_run = [r["check"] for r in failed if r["check"] in GATES_ALL]
    for eps in grid:
        here = [r for r in mine if Eps(r["eps"]) == eps]
        attacks = {r["attack"] for r in here if r["attack"] != WORST}
        top = strongest(attacks) if attacks else WORST
        masked = [r["check"] for r in here if r["passed"] == "no" and r["attack"] == WORST]
        for attack in attacks:
            own = result.get((attack, eps), [])
            result[(attack, eps)] = list(dict.fromkeys(own + masked))
        gating = [r["check"] for r in here if r["passed"] == "no" and
                  (r["attack"] in (top, WORST) or r["check"] == "autoattack")]
        result[(WORST, eps)] = list(dict.fromkeys(gating + per_run))
    return result


def column(names: list[str] | None) -> str:
    """robustness.csv's diagnostics text."""
    if names is None:
        return ""
    return "passed" if not names else "failed: " + ",".join(names)

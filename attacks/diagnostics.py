"""Attack-failure diagnostics: the checks that reveal an evaluation that lies.

After Carlini et al. 2019 ("On Evaluating Adversarial Robustness"), Pintor et al. 2022
("Indicators of Attack Failure") and AutoAttack's own checks. For every ε of a run's grid
they look at the examples the worst case leaves standing, the ones a robustness number
counts. The checks are :data:`CHECKS`; every rule and threshold is a field of
:class:`DiagnosticSettings` (a study freezes them in its declaration), and
:func:`descriptions` writes the check table the report shows from those fields.

Two kinds of check:

- **Reporting only** (:data:`REPORTING`): a weaker attack broke what a stronger one left
  standing. The per-example worst case already counts that break, so the check reports it
  on the stronger attack's row and withholds nothing.
- **Withholding** (every other check; the restart once confirmed): the worst case itself is
  in doubt, and the worst-case row of robustness.csv names the check ("attack failure
  suspected").

Every example that a check's own attack breaks (the restart, the noise draws, the transfer
attack; Square where a check flags, :mod:`robustmix.attacks.runner`) is a real adversarial
example: it is recorded in robustness_examples.csv under the check's name (``restart``,
``noise``, ``transfer``), so the worst case is the lowest known, and the check still
reports what it found. Exact zeros are float32 facts: a softmax is one-hot only when every
other logit trails by more than about 103 (exp underflows), so no trained model meets it
by chance. The false-alarm rates and detection rates behind the defaults:
benchmarks/RESULTS.md ("The diagnostics' operating characteristic").
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
from robustmix.attacks.worst_case import WORST
from robustmix.attacks.eps import Eps
from robustmix.attacks.gradient import PGDSettings, pgd
from robustmix.attacks.registry import get
from robustmix.attacks.sweep import AttackConfig, robustness
from robustmix.core import runs
from robustmix.core.errors import ConfigError, UsageError

FIELDS = ["check", "attack", "norm", "eps", "eps_value", "n_examples", "value", "threshold",
          "passed", "detail"]
CHECKS = ("single-step", "restart", "zero-gradients", "saturated-softmax", "noise",
          "transfer", "unbounded", "shattered-gradients", "autoattack")
REPORTING = ("single-step",)               # reported on the attack's row, never withhold
GATES_ALL = ("unbounded",)                 # a per-run failure: every ε's worst case
MASKING = ("zero-gradients", "saturated-softmax", "noise", "transfer", "unbounded",
           "shattered-gradients")
CHECK_ATTACKS = ("restart", "noise", "transfer")  # their breaks' rows in the examples file


@dataclass(frozen=True)
class DiagnosticSettings:
    """Every rule and threshold of the diagnostics (their cost and operating
    characteristic: benchmarks/RESULTS.md). Scalars only: a study freezes
    ``dataclasses.asdict`` of it in its declaration."""

    sample: int = 16           # restart: standing examples attacked again per ε
    tolerance: float = 2.0     # restart: the fall of the worst case it may imply (points)
    tail: float = 0.05         # restart: the share a converged attack's restart may break
    tail_level: float = 0.05   # restart: level of the one-sided binomial test against tail
    escalate_at: int = 1       # restart: breaks in the sample that send it to every standing
    restart_seed: int = 1      # restart: seed offset of the restart (and of its rerun)
    confirm_seed: int = 2      # restart: seed offset of the confirming restart
    noise_sample: int = 32     # noise: standing examples tried per ε
    noise_draws: int = 64      # noise: random points per example
    noise_allowed: int = 1     # noise: breaks (of the sample) tolerated before it withholds
    transfer_steps: int = 20   # transfer: PGD steps on the other model
    transfer_allowed: int = 3  # transfer: breaks tolerated before it withholds
    consistency_sample: int = 32       # shattered: standing examples per ε
    consistency_directions: int = 8    # shattered: random ±1 directions per example
    consistency_step: float = 1e-3     # shattered: h of the central difference
    consistency_tolerance: float = 0.3  # shattered: disagreement of a direction, × |gradient|
    consistency_roundings: float = 1024.0  # shattered: float32 roundings an output carries
    consistency_majority: float = 0.5  # shattered: an example disagrees in more than this share
    consistency_share: float = 0.5     # shattered: share of checked examples that may disagree
    unbounded_chance: float = 1.0      # unbounded: standing share allowed, × 1 / classes
    square: bool = True        # Square (gradient-free) at every ε where a check flags

    def __post_init__(self):
        counts = ("sample", "escalate_at", "noise_sample", "noise_draws", "transfer_steps",
                  "consistency_sample", "consistency_directions")
        for name in counts:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"diagnostics.{name}",
                                  f"must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("tail", "tail_level", "consistency_share", "consistency_majority"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"diagnostics.{name}",
                                  f"must be in (0, 1), got {getattr(self, name)!r}")
        for name in ("tolerance", "consistency_step", "consistency_tolerance",
                     "consistency_roundings", "unbounded_chance", "noise_allowed",
                     "transfer_allowed"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"diagnostics.{name}",
                                  f"must be >= 0, got {getattr(self, name)!r}")


def descriptions(s: DiagnosticSettings = DiagnosticSettings()) -> dict[str, tuple[str, str]]:
    """check -> (fails when, threshold), as the report shows them, from the settings."""
    h = f"{s.consistency_step:g}"
    return {
        "single-step": ("an iterative attack leaves standing an example a single-step attack "
                        "broke (per example); reported on that attack's row, never withholds: "
                        "the worst case counts the break", "0 examples"),
        "restart": (f"the strongest attack from new random starts (seed + {s.restart_seed}) "
                    f"on {s.sample} sampled standing examples; where it breaks at least "
                    f"{s.escalate_at}, on every standing example; then from seed + "
                    f"{s.confirm_seed} on a fresh sample, whose breaks must show (one-sided "
                    f"binomial test at {s.tail_level:.0%}) a restart breaking more than both a "
                    f"converged attack's {s.tail:.0%} tail and the share of the standing "
                    f"examples that would lower the worst case by {s.tolerance:g} points. Every "
                    "break counts in the worst case", f"{s.tolerance:g} points"),
        "zero-gradients": ("a standing example's input gradient of the cross-entropy is exactly "
                           "zero or not finite (float32)", "0 examples"),
        "saturated-softmax": ("a standing example's float32 softmax is exactly one-hot",
                              "0 examples"),
        "noise": (f"random vertices of the ε-ball ({s.noise_draws} per example, "
                  f"{s.noise_sample} standing examples) break more than {s.noise_allowed}; "
                  "its breaks count in the worst case", f"{s.noise_allowed} examples"),
        "transfer": (f"PGD-{s.transfer_steps} run on a model of another recipe breaks more "
                     f"than {s.transfer_allowed} standing examples; its breaks count in the "
                     "worst case", f"{s.transfer_allowed} examples"),
        "unbounded": ("at ε = 1 (L∞) or √(C·H·W) (L2) the strongest attack leaves standing "
                      f"more than {s.unbounded_chance:g} × chance",
                      f"{s.unbounded_chance:g} / classes"),
        "shattered-gradients": (
            f"at the clean input (within {h} of it) the autograd derivative along "
            f"{s.consistency_directions} random ±1 directions disagrees with a central "
            f"difference (h = {h}) by more than {s.consistency_tolerance:g} × the gradient's "
            f"L2 norm, plus {s.consistency_roundings:g} float32 roundings, in more than "
            f"{s.consistency_majority:.0%} of the directions, for more than "
            f"{s.consistency_share:.0%} of {s.consistency_sample} sampled standing examples",
            f"{s.consistency_share:.0%} of examples"),
        "autoattack": ("AutoAttack's or the model's own checks raised a message",
                       "0 messages"),
    }


@dataclass(frozen=True)
class Check:
    check: str
    attack: str
    eps: Eps
    value: float
    threshold: float
    passed: bool
    detail: str
    suspect: bool = False   # passed, yet found something: Square still attacks there

    @property
    def flagged(self) -> bool:
        """Whether the check found anything (failed, or passed with a suspicion)."""
        return not self.passed or self.suspect

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
    and per ε each attack's standing flags (the worst over its settings). The checks'
    own attacks (:data:`CHECK_ATTACKS`) add theirs with :meth:`add`."""

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

    def add(self, attack: str, eps: Eps, broken: Tensor) -> int:
        """Record examples ``broken`` (a bool mask) by a check's ``attack`` at ``eps``;
        returns how many of them the worst case counted standing."""
        new = int((broken & self.worst(eps)).sum())
        here = self.by_eps[eps]
        here[attack] = here.get(attack, self.clean.clone()) & ~broken
        return new

    def found(self) -> list[tuple[str, Eps, Tensor]]:
        """(check attack, ε, standing flags) of every check attack on record."""
        return [(name, eps, flags & self.clean) for eps, here in self.by_eps.items()
                for name, flags in here.items() if name in CHECK_ATTACKS]


def _kind(name: str) -> tuple[str, int]:
    if name in CHECK_ATTACKS:
        return "check", 0
    try:
        attack = get(name)
        return attack.kind, attack.strength
    except (ConfigError, UsageError):  # a plugin no longer importable: count it iterative
        return "iterative", 2


def strongest(names) -> str:
    """The strongest of the attacks ``names`` (by the registry's strength, then name)."""
    names = [n for n in names if n not in CHECK_ATTACKS] or list(names)
    return max(sorted(names), key=lambda name: _kind(name)[1])


def prober(names) -> str:
    """The attack that attacks again (restart, unbounded): the strongest iterative
    one of ``names``; PGD where only single-step or gradient-free attacks ran."""
    iterative = [n for n in names if _kind(n)[0] in ("iterative", "ensemble")]
    return strongest(iterative) if iterative else "pgd"


def single_step(outcomes: Outcomes, eps: Eps) -> list[Check]:
    """Iterative attacks should break whatever a single-step attack broke, per example:
    reported on the iterative attack's row; the worst case already counts the break."""
    here = outcomes.by_eps[eps]
    single = [a for a in here if _kind(a)[0] == "single-step"]
    if not single:
        return []
    broken = torch.zeros_like(outcomes.clean)
    for name in single:
        broken |= outcomes.clean & ~here[name]
    return [_count_check("single-step", name, eps, broken & here[name],
                         f"against {name} that {'/'.join(single)} broke (counted in the "
                         "worst case)")
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

    def attack(self, name: str, eps: Eps, chosen: Tensor, *, offset: int = 0) -> Tensor:
        """Standing flags of examples ``chosen`` (a bool mask) after ``name`` at ``eps``,
        from the random starts of seed + ``offset``."""
        where = chosen.nonzero().squeeze(1)
        if where.numel() == 0:
            return torch.zeros(0, dtype=torch.bool)
        options = dict(self.config.options.get(name, {})) if name in self.config.attacks else {}
        config = AttackConfig(attacks=(name,), eps=(eps,), norm=self.config.norm,
                              pgd=self.config.pgd, batch_size=self.config.batch_size,
                              seed=self.config.seed + offset, options={name: options})
        result = robustness(self.model, self.x[where], self.y[where], config,
                            indices=self.indices[where], device=self.device,
                            n_classes=self.n_classes)
        return result.robust[(name, eps)]


def _broken(chosen: Tensor, after: Tensor) -> Tensor:
    """A mask of the examples of ``chosen`` that ``after`` (their standing flags) broke."""
    broken = torch.zeros_like(chosen)
    broken[chosen.nonzero().squeeze(1)] = ~after
    return broken


@dataclass
class _Round:
    chosen: Tensor
    broken: int
    sampled: int
    fall: float
    beyond: bool

    def text(self, offset: int) -> str:
        return (f"a restart (seed + {offset}) broke {self.broken} of {self.sampled} sampled "
                f"standing examples: the worst case would fall by about {self.fall:.2g} "
                f"points ({'beyond' if self.beyond else 'within'} the rule)")


def _restart_round(probe: Probe, outcomes: Outcomes, eps: Eps, name: str, offset: int,
                   settings: DiagnosticSettings) -> _Round:
    """One restart on a sample of the standing examples; its breaks are recorded."""
    standing = outcomes.worst(eps)
    chosen = _sample(standing, settings.sample, probe.config.seed + offset, eps)
    broken = _broken(chosen, probe.attack(name, eps, chosen, offset=offset))
    outcomes.add("restart", eps, broken)
    count, sampled = int(broken.sum()), int(chosen.sum())
    share = int(standing.sum()) / standing.numel() if standing.numel() else 0.0
    fall = 100.0 * share * count / sampled if sampled else 0.0
    return _Round(chosen, count, sampled, fall, beyond(count, sampled, share, settings))


def beyond(broken: int, sampled: int, share: float, settings: DiagnosticSettings) -> bool:
    """Whether ``broken`` of ``sampled`` standing examples (a ``share`` of the subset
    standing) is evidence that a restart breaks more than a converged attack's tail and
    more than the rate that would lower the worst case by ``tolerance`` points: one-sided
    binomial test at ``tail_level`` against the larger of the two rates."""
    if broken == 0 or sampled == 0 or share == 0:
        return False
    rate = min(1.0, max(settings.tail, settings.tolerance / (100.0 * share)))
    return bool(stats.binom.sf(broken - 1, sampled, rate) <= settings.tail_level)


def restart(probe: Probe, outcomes: Outcomes, eps: Eps, settings: DiagnosticSettings
            ) -> Check:
    """Incomplete optimization, confirmed by more effort: the strongest attack from other
    random starts on a sample of the standing examples; where it breaks ``escalate_at``
    or more, the same restart on every standing example, then a restart from other starts
    again on a fresh sample, whose breaks must be evidence of a material fall
    (:func:`beyond`) for the check to fail. Every break is recorded (the ``restart``
    attack of the examples file)."""
    name = prober(outcomes.by_eps[eps])
    first = _restart_round(probe, outcomes, eps, name, settings.restart_seed, settings)
    detail = first.text(settings.restart_seed)
    if first.broken < settings.escalate_at:
        return Check("restart", name, eps, first.fall, settings.tolerance, True, detail)
    rest = outcomes.worst(eps) & ~first.chosen   # the sample's were restarted already
    more = outcomes.add("restart", eps, _broken(rest, probe.attack(
        name, eps, rest, offset=settings.restart_seed)))
    second = _restart_round(probe, outcomes, eps, name, settings.confirm_seed, settings)
    detail += (f"; the same restart on the other {int(rest.sum())} standing examples broke "
               f"{more} more (counted in the worst case); then "
               f"{second.text(settings.confirm_seed)}")
    return Check("restart", name, eps, second.fall, settings.tolerance, not second.beyond,
                 detail, suspect=True)


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
    """Random points of the ε-ball must not break (many of) what the white-box attacks did
    not; the examples they break are recorded (the ``noise`` attack)."""
    chosen = _sample(outcomes.worst(eps), settings.noise_sample, probe.config.seed, eps)
    where = chosen.nonzero().squeeze(1)
    broken = torch.zeros_like(chosen)
    for index in where.tolist():
        x = probe.x[index].to(probe.device)
        delta = _random_points(x.shape, settings.noise_draws, eps.value, probe.config.norm,
                               np.random.default_rng([probe.config.seed, 12,
                                                      int(probe.indices[index])]))
        with torch.no_grad():
            logits = probe.model((x + delta.to(probe.device)).clamp(0, 1))
        broken[index] = bool((logits.argmax(1) != probe.y[index].to(probe.device)).any())
    outcomes.add("noise", eps, broken)
    count = int(broken.sum())
    return Check("noise", WORST, eps, count, settings.noise_allowed,
                 count <= settings.noise_allowed,
                 f"{count} of {where.numel()} standing examples broken by "
                 f"{settings.noise_draws} random points each (counted in the worst case)",
                 suspect=count > 0)


def _random_points(shape, draws: int, eps: float, norm: str, rng) -> Tensor:
    if norm == "linf":  # the ε-cube's vertices: the farthest random points
        return torch.from_numpy(eps * np.sign(rng.uniform(-1, 1, (draws, *shape)))).float()
    direction = rng.standard_normal((draws, math.prod(shape)))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True) + 1e-12
    return torch.from_numpy(eps * direction.reshape(draws, *shape)).float()


def unbounded(probe: Probe, outcomes: Outcomes, settings: DiagnosticSettings) -> Check:
    """Where any image is reachable the strongest attack must reach chance."""
    largest = max(outcomes.by_eps)
    name = prober(outcomes.by_eps[largest])
    d = math.prod(probe.x.shape[1:])
    eps = Eps("1") if probe.config.norm == "linf" else Eps.of(float(f"{math.sqrt(d):.6g}"))
    after = probe.attack(name, eps, outcomes.worst(largest))
    n = outcomes.clean.numel()
    accuracy = int(after.sum()) / n if n else 0.0
    chance = settings.unbounded_chance / probe.n_classes
    return Check("unbounded", name, eps, accuracy, chance, accuracy <= chance,
                 f"{int(after.sum())} of {n} examples stand at ε = {eps.text} "
                 f"(allowed: {chance:.3g})")


def shattered(probe: Probe, outcomes: Outcomes, settings: DiagnosticSettings
              ) -> list[Check]:
    """Per ε: the share of sampled standing examples whose autograd gradient disagrees
    with a central difference (:mod:`robustmix.attacks.consistency`) in most directions."""
    from robustmix.attacks.consistency import disagreement

    chosen = {eps: _sample(outcomes.worst(eps), settings.consistency_sample,
                           probe.config.seed, eps) for eps in outcomes.by_eps}
    union = torch.zeros_like(outcomes.clean)
    for flags in chosen.values():
        union |= flags
    where = union.nonzero().squeeze(1)
    shares = disagreement(probe.model, probe.x[where], probe.indices[where],
                          seed=probe.config.seed, directions=settings.consistency_directions,
                          step=settings.consistency_step,
                          tolerance=settings.consistency_tolerance,
                          roundings=settings.consistency_roundings, device=probe.device,
                          batch_size=probe.config.batch_size)
    bad = torch.zeros_like(union)
    bad[where] = shares > settings.consistency_majority
    checks = []
    for eps, flags in chosen.items():
        count, checked = int((bad & flags).sum()), int(flags.sum())
        share = count / checked if checked else 0.0
        checks.append(Check(
            "shattered-gradients", WORST, eps, share, settings.consistency_share,
            share <= settings.consistency_share,
            f"{count} of {checked} sampled standing examples have a gradient that disagrees "
            f"with a central difference (h = {settings.consistency_step:g}) in more than "
            f"{settings.consistency_majority:.0%} of {settings.consistency_directions} "
            "directions", suspect=count > 0))
    return checks


def diagnose(probe: Probe, outcomes: Outcomes, settings: DiagnosticSettings,
             messages: dict[tuple[str, Eps], list[str]]) -> list[Check]:
    """Every check but transfer (:func:`transfer`), for every ε of ``outcomes``; the
    breaks of the checks' own attacks are added to ``outcomes``."""
    clean = outcomes.clean.nonzero().squeeze(1)
    zero = torch.zeros_like(outcomes.clean)
    saturated = torch.zeros_like(outcomes.clean)
    z, s = gradient_flags(probe.model, probe.x[clean], probe.y[clean], probe.device,
                          probe.config.batch_size)
    zero[clean], saturated[clean] = z, s
    checks = []
    for eps in outcomes.by_eps:
        checks += single_step(outcomes, eps)
        checks.append(restart(probe, outcomes, eps, settings))
        checks.append(noise(probe, outcomes, eps, settings))
        standing = outcomes.worst(eps)
        checks.append(_count_check("zero-gradients", WORST, eps, zero & standing,
                                   "with a zero or non-finite input gradient"))
        checks.append(_count_check("saturated-softmax", WORST, eps, saturated & standing,
                                   "whose float32 softmax is one-hot"))
        for attack in outcomes.by_eps[eps]:
            if attack in CHECK_ATTACKS:
                continue
            said = messages.get((attack, eps), [])
            checks.append(Check("autoattack", attack, eps, len(said), 0, not said,
                                "; ".join(said) or "no message"))
    if outcomes.by_eps:
        checks += shattered(probe, outcomes, settings)
        checks.append(unbounded(probe, outcomes, settings))
    return checks


def diagnose_result(model: nn.Module, x: Tensor, y: Tensor, result, config: AttackConfig, *,
                    indices: Tensor | None = None, n_classes: int | None = None,
                    device="cpu", settings: DiagnosticSettings = DiagnosticSettings()
                    ) -> list[Check]:
    """The checks of :func:`diagnose` for a :func:`~robustmix.attacks.sweep.robustness` result (the
    Python API's path: any model, no run directory). ``x`` as given to ``robustness``.
    The examples the checks' attacks break are in :func:`diagnose`'s outcomes; here
    only the checks are returned (``robustmix attack`` records the breaks)."""
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


def flagged_eps(checks: list[Check]) -> list[Eps]:
    """The ε of the grid where a check found something about the worst case (every ε
    where a per-run check did): where Square attacks what still stands. A single-step
    break counts where the strongest attack missed it, not where only a weaker one did."""
    grid = sorted({c.eps for c in checks if c.check not in GATES_ALL})
    if any(c.flagged for c in checks if c.check in GATES_ALL):
        return grid
    found = []
    for eps in grid:
        here = [c for c in checks if c.eps == eps and c.check not in GATES_ALL]
        attacks = {c.attack for c in here if c.attack != WORST}
        top = strongest(attacks) if attacks else WORST
        if any(c.flagged for c in here if c.check not in REPORTING or c.attack == top):
            found.append(eps)
    return found


def transfer(target: nn.Module, source: nn.Module, source_name: str, x: Tensor, y: Tensor,
             indices: Tensor, outcomes: Outcomes, config: AttackConfig, device,
             settings: DiagnosticSettings) -> list[Check]:
    """PGD run on ``source`` must not break (many of) what the white-box attacks left
    standing; the examples it breaks are added to ``outcomes`` (the ``transfer`` attack)."""
    checks = []
    pgd_settings = PGDSettings(steps=settings.transfer_steps)
    for eps in outcomes.by_eps:
        where = outcomes.worst(eps).nonzero().squeeze(1)
        broken = torch.zeros_like(outcomes.clean)
        for batch in where.split(config.batch_size):
            xb, yb = x[batch].to(device), y[batch].to(device)
            x_adv, _ = pgd(source, xb, yb, indices[batch], eps.value, config.norm,
                           pgd_settings, config.seed, early_exit=False)
            with torch.no_grad():
                broken[batch] = (target(x_adv).argmax(1) != yb).cpu()
        outcomes.add("transfer", eps, broken)
        count = int(broken.sum())
        checks.append(Check("transfer", WORST, eps, count, settings.transfer_allowed,
                            count <= settings.transfer_allowed,
                            f"PGD-{settings.transfer_steps} on {source_name} broke {count} "
                            f"of {where.numel()} standing examples (counted in the worst "
                            "case)", suspect=count > 0))
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

    An attack's row: the failed checks on that attack there (single-step included), and
    those on the examples the worst case leaves standing (masked gradients concern every
    attack at that ε). The ``worst-case`` row: only the failed checks that put the worst
    case itself in doubt: those on the worst case, the strongest attack's (but for the
    reporting-only :data:`REPORTING`), the model's and AutoAttack's messages, and a
    per-run failure (unbounded).
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
        gating = [r["check"] for r in here if r["passed"] == "no"
                  and r["check"] not in REPORTING
                  and (r["attack"] in (top, WORST) or r["check"] == "autoattack")]
        result[(WORST, eps)] = list(dict.fromkeys(gating + per_run))
    return result


def column(names: list[str] | None) -> str:
    """robustness.csv's diagnostics text."""
    if names is None:
        return ""
    return "passed" if not names else "failed: " + ",".join(names)
